//! What a Hugging Face tokenizer keeps in memory at today's vocabulary sizes: a byte-level
//! vocabulary generated at Llama 3's size (128,000 tokens, 256 added tokens, 280,147 merges) and
//! at Qwen2/3's (151,643 + 293 added, 151,387 merges), measured by the test
//! kit's counting allocator (this file is its own test binary), against the layout
//! `formats/TOKENIZER.md` states: token bytes and ends, a token table of 8-byte slots and a merge
//! table of 4-byte slots at a load of at most 2/3, 12 bytes per merge, and small change.

use emberlm_formats::tokenizer::{
    EncodeScratch, HfModelKind, HfParts, HfPreTokenizer, Prepend, SpecialTokens, Tokenizer,
    TokenizerParts,
};
use std::collections::HashMap;

#[global_allocator]
static GLOBAL: emberlm_testkit::alloc::Counting = emberlm_testkit::alloc::Counting;

/// Letters of the generated tokens: a small alphabet makes the vocabulary dense in short strings,
/// so that tokens split into two tokens in several ways, as real vocabularies' do.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz .,'-!";

/// A byte-level vocabulary: the 256 bytes, every string of two and of three letters of
/// [`ALPHABET`], then random strings of four or five letters up to `ordinary` tokens, then
/// `added` special tokens. The merges: every split of a token into two tokens, in id order, at
/// most `max_merges` of them. Deterministic.
fn synthetic(ordinary: usize, added: usize, max_merges: usize) -> (TokenizerParts, HfParts) {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    for x in ALPHABET {
        for y in ALPHABET {
            tokens.push(vec![*x, *y]);
        }
    }
    for x in ALPHABET {
        for y in ALPHABET {
            for z in ALPHABET {
                tokens.push(vec![*x, *y, *z]);
            }
        }
    }
    let mut index: HashMap<Vec<u8>, u32> = HashMap::new();
    for (id, t) in tokens.iter().enumerate() {
        index.insert(t.clone(), id as u32);
    }
    while tokens.len() < ordinary {
        let s: Vec<u8> = (0..4 + next(2)).map(|_| ALPHABET[next(32)]).collect();
        if !index.contains_key(&s) {
            index.insert(s.clone(), tokens.len() as u32);
            tokens.push(s);
        }
    }
    let mut merges = Vec::new();
    'all: for t in &tokens {
        for k in 1..t.len() {
            if let (Some(&l), Some(&r)) = (index.get(&t[..k]), index.get(&t[k..])) {
                if merges.len() == max_merges {
                    break 'all;
                }
                merges.push([l, r]);
            }
        }
    }
    let mut parts = TokenizerParts::default();
    for t in &tokens {
        parts.tokens.extend_from_slice(t);
        parts.token_ends.push(parts.tokens.len() as u32);
    }
    for k in 0..added {
        let name = format!("<|reserved_special_token_{k}|>");
        parts.tokens.extend_from_slice(name.as_bytes());
        parts.token_ends.push(parts.tokens.len() as u32);
        parts.special_ids.push((ordinary + k) as u32);
        parts.special_names.push(name);
    }
    // As read from a file: no spare capacity.
    parts.tokens.shrink_to_fit();
    parts.token_ends.shrink_to_fit();
    merges.shrink_to_fit();
    let hf = HfParts {
        model: HfModelKind::ByteLevel,
        pretokenizer: HfPreTokenizer::Llama3,
        add_prefix_space: false,
        nfc: false,
        replace_space: false,
        prepend: Prepend::Never,
        merges,
        ignore_merges: true,
        byte_fallback: false,
        fuse_unk: false,
        unk_id: None,
        post_prefix: vec![ordinary as u32],
        post_suffix: vec![],
        strip_leading_space: false,
        nonspecial: vec![],
        lstrip: vec![],
        rstrip: vec![],
    };
    (parts, hf)
}

/// Builds the generated tokenizer and returns it with the bytes it holds, its vocabulary size,
/// merge count and token bytes.
fn built(ordinary: usize, added: usize, max_merges: usize) -> (Tokenizer, usize, usize, usize) {
    let live = emberlm_testkit::alloc::thread_live_bytes;
    let before = live();
    let (tok, merges, token_bytes) = {
        let (parts, hf) = synthetic(ordinary, added, max_merges);
        let (m, b) = (hf.merges.len(), parts.tokens.len());
        (Tokenizer::from_hf_parts(parts, hf).unwrap(), m, b)
    };
    let held = usize::try_from(live() - before).unwrap();
    (tok, held, merges, token_bytes)
}

/// The bytes `formats/TOKENIZER.md` says a byte-level Hugging Face tokenizer of `v` ids and `m`
/// merges holds, `token_bytes` of them the tokens' own, plus 256 KiB for everything small
/// (specials, settings, the added-token scanner).
fn stated(v: usize, m: usize, token_bytes: usize) -> usize {
    let slots = |n: usize| (n + n / 2).next_power_of_two();
    token_bytes + 4 * v + 8 * slots(v) + 4 * (1 << 16) + 4 * slots(m) + 12 * m + (256 << 10)
}

#[test]
fn a_llama3_sized_tokenizer_holds_under_10_mib() {
    let (tok, held, merges, token_bytes) = built(128_000, 256, 280_147);
    assert_eq!(tok.vocab_size(), 128_256);
    assert_eq!(merges, 280_147);
    let bound = stated(128_256, merges, token_bytes);
    eprintln!(
        "Llama-3-sized: {merges} merges, {token_bytes} token bytes: holds {held} bytes \
         (stated layout {bound})"
    );
    assert!(
        held <= bound,
        "holds {held} bytes, the stated layout {bound}"
    );
    assert!(held < 10 << 20, "holds {held} bytes");
    // It still encodes: a text made of its tokens round-trips.
    let mut scratch = EncodeScratch::new();
    let mut ids = Vec::new();
    let mut text = Vec::new();
    for id in [300u32, 5_000, 77_777, 127_999] {
        text.extend_from_slice(tok.token_bytes(id).unwrap());
    }
    let text = String::from_utf8_lossy(&text).into_owned();
    tok.encode(&text, SpecialTokens::AsText, &mut scratch, &mut ids);
    let mut back = Vec::new();
    tok.decode(&ids, &mut back).unwrap();
    assert_eq!(String::from_utf8_lossy(&back), text);
}

#[test]
fn a_qwen_sized_tokenizer_holds_under_8_mib() {
    let (tok, held, merges, token_bytes) = built(151_643, 293, 151_387);
    assert_eq!(tok.vocab_size(), 151_936);
    assert_eq!(merges, 151_387);
    let bound = stated(151_936, merges, token_bytes);
    eprintln!(
        "Qwen-sized: {merges} merges, {token_bytes} token bytes: holds {held} bytes \
         (stated layout {bound})"
    );
    assert!(
        held <= bound,
        "holds {held} bytes, the stated layout {bound}"
    );
    assert!(held < 8 << 20, "holds {held} bytes");
}
