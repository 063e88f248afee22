//! GPT-2's tokenizer on arbitrary bytes (made text with `String::from_utf8_lossy`), in both
//! special-token modes, against tiktoken-rs (`r50k_base`, an implementation this project did not
//! write).
//!
//! Properties: ids are in the vocabulary; `AsText` never yields the special id and `Allow` yields
//! it once per occurrence of its name; decode(encode(text)) == text in both modes; encoding with
//! a reused scratch and output appends exactly the tokens of a fresh call; the pre-tokenizer's
//! pieces concatenate to the text; the tokens equal tiktoken-rs's `encode_ordinary` and
//! `encode_with_special_tokens`.

use emberlm_formats::tokenizer::{ENDOFTEXT, EncodeScratch, SpecialTokens, Tokenizer, pieces};

/// The target's body.
pub fn run(data: &[u8]) {
    let tok = Tokenizer::gpt2();
    let eot = tok.eot_id().expect("GPT-2 has <|endoftext|>");
    let text = String::from_utf8_lossy(data);
    assert_eq!(pieces(&text).collect::<String>(), text);

    let mut scratch = EncodeScratch::new();
    let mut plain = Vec::new();
    tok.encode(&text, SpecialTokens::AsText, &mut scratch, &mut plain);
    assert!(
        plain
            .iter()
            .all(|&id| (id as usize) < tok.vocab_size() && id != eot)
    );
    assert_eq!(tok.decode_to_string(&plain).as_deref(), Ok(&*text));

    let mut allowed = Vec::new();
    tok.encode(&text, SpecialTokens::Allow, &mut scratch, &mut allowed);
    assert!(allowed.iter().all(|&id| (id as usize) < tok.vocab_size()));
    let eots = allowed.iter().filter(|&&id| id == eot).count();
    assert_eq!(eots, text.matches(ENDOFTEXT).count());
    assert_eq!(tok.decode_to_string(&allowed).as_deref(), Ok(&*text));

    // A reused scratch and output: appends the same tokens again.
    let before = plain.len();
    tok.encode(&text, SpecialTokens::AsText, &mut scratch, &mut plain);
    assert_eq!(plain[..before], plain[before..]);
    plain.truncate(before);

    let tiktoken = tiktoken_rs::r50k_base_singleton();
    assert_eq!(
        plain,
        tiktoken.encode_ordinary(&text),
        "AsText differs from tiktoken-rs"
    );
    assert_eq!(
        allowed,
        tiktoken.encode_with_special_tokens(&text),
        "Allow differs from tiktoken-rs"
    );
}
