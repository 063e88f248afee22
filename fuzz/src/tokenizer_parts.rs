//! Building tokenizers from untrusted parts (`Tokenizer::from_parts`, what a `.ember` file's
//! `tokenizer.*` keys hold) and from untrusted `vocab.json` + `merges.txt` bytes
//! (`Tokenizer::from_vocab_and_merges`), then using what was accepted.
//!
//! Input: byte 0 picks the mode: raw parts straight from the bytes; structured parts (the 256
//! bytes in a rotated order, merges of existing tokens, special tokens, occasionally a planted
//! defect); or vocabulary and merges files split by [`SEP`]. The rest drives a text.
//!
//! Properties of an accepted tokenizer: `to_parts` → `from_parts` gives the same parts;
//! `max_token_len` is the longest token; encoding any text in both special-token modes equals the
//! plain reference of [`super::bpe_reference`] and decodes back to the text; streaming decode of
//! those ids equals the whole decode.

use super::bpe_reference::Reference;
use super::input::{Input, split};
use emberlm_formats::tokenizer::{SpecialTokens, StreamDecoder, Tokenizer, TokenizerParts};
use std::collections::HashSet;

/// Separates `vocab.json`, `merges.txt` and the text in mode 2.
pub const SEP: &[u8] = b"\n%%FILE%%\n";

/// Longest text checked against the (quadratic) reference, in bytes.
const MAX_TEXT: usize = 2048;

fn raw_parts(input: &mut Input<'_>) -> TokenizerParts {
    let n_bytes = input.u16() as usize % 2048;
    let tokens = input.bytes(n_bytes).to_vec();
    let n_ends = input.u16() as usize % 512;
    let token_ends = (0..n_ends).map(|_| input.u32()).collect();
    let n_names = input.u8() as usize % 4;
    let special_names = (0..n_names)
        .map(|_| {
            let len = input.u8() as usize % 16;
            String::from_utf8_lossy(input.bytes(len)).into_owned()
        })
        .collect();
    let n_ids = input.u8() as usize % 5;
    let special_ids = (0..n_ids).map(|_| input.u32()).collect();
    TokenizerParts {
        tokens,
        token_ends,
        special_names,
        special_ids,
    }
}

fn structured_parts(input: &mut Input<'_>) -> TokenizerParts {
    let rotate = input.u8();
    let mut list: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b.wrapping_add(rotate)]).collect();
    let mut seen: HashSet<Vec<u8>> = list.iter().cloned().collect();
    let merges = input.u8() as usize % 96;
    for _ in 0..merges {
        let (a, b) = (input.u16() as usize, input.u16() as usize);
        let mut t = list[a % list.len()].clone();
        t.extend_from_slice(&list[b % list.len()]);
        if seen.insert(t.clone()) {
            list.push(t);
        }
    }
    let mut special_names = Vec::new();
    let mut special_ids = Vec::new();
    for _ in 0..input.u8() % 3 {
        let name = if input.bool() {
            "<|endoftext|>".to_string()
        } else {
            let len = 1 + input.u8() as usize % 12;
            String::from_utf8_lossy(input.bytes(len)).into_owned()
        };
        if seen.insert(name.as_bytes().to_vec()) {
            special_ids.push(list.len() as u32);
            list.push(name.as_bytes().to_vec());
            special_names.push(name);
        }
    }
    let mut parts = TokenizerParts::default();
    for t in &list {
        parts.tokens.extend_from_slice(t);
        parts.token_ends.push(parts.tokens.len() as u32);
    }
    parts.special_names = special_names;
    parts.special_ids = special_ids;
    // Occasionally plant one defect.
    let defect = input.u8();
    let at = input.u16() as usize;
    match defect {
        0 => parts.tokens.push(0),
        1 if !parts.token_ends.is_empty() => {
            let i = at % parts.token_ends.len();
            parts.token_ends[i] = parts.token_ends[i].wrapping_sub(1);
        }
        2 if !parts.special_ids.is_empty() => {
            let i = at % parts.special_ids.len();
            parts.special_ids[i] = parts.special_ids[i].wrapping_add(1);
        }
        3 => parts.special_names.push("<|x|>".into()),
        4 => {
            parts.token_ends.pop();
        }
        _ => {}
    }
    parts
}

/// The target's body.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8() % 3;
    let (tok, text_bytes): (Tokenizer, Vec<u8>) = match mode {
        0 | 1 => {
            let parts = if mode == 0 {
                raw_parts(&mut input)
            } else {
                structured_parts(&mut input)
            };
            let Ok(tok) = Tokenizer::from_parts(parts) else {
                return;
            };
            // The text: raw bytes, or a sequence of the tokens' own bytes (so merges happen).
            let text = if input.bool() {
                input.rest().to_vec()
            } else {
                let mut t = Vec::new();
                while !input.is_empty() {
                    let id = input.u16() as u32 % tok.vocab_size() as u32;
                    t.extend_from_slice(tok.token_bytes(id).expect("id below vocab_size"));
                }
                t
            };
            (tok, text)
        }
        _ => {
            let files = split(input.rest(), SEP, 3);
            let (vocab, merges) = (files[0], files.get(1).copied().unwrap_or_default());
            let text = files.get(2).copied().unwrap_or_default().to_vec();
            let Ok(tok) =
                Tokenizer::from_vocab_and_merges(vocab, "vocab.json", merges, "merges.txt")
            else {
                return;
            };
            (tok, text)
        }
    };
    check(&tok, &String::from_utf8_lossy(&text_bytes));
}

fn check(tok: &Tokenizer, text: &str) {
    let parts = tok.to_parts();
    let again = Tokenizer::from_parts(parts.clone()).expect("to_parts of a tokenizer is valid");
    assert!(again.to_parts() == parts);
    assert_eq!(tok.vocab_size(), parts.token_ends.len());
    let longest = (0..tok.vocab_size() as u32)
        .map(|id| tok.token_bytes(id).expect("id below vocab_size").len())
        .max()
        .unwrap_or(0);
    assert_eq!(tok.max_token_len(), longest);

    let text = match text.char_indices().nth(MAX_TEXT) {
        Some((i, _)) => &text[..i],
        None => text,
    };
    let reference = Reference::new(tok);
    for (mode, expected) in [
        (SpecialTokens::AsText, reference.encode_ordinary(text)),
        (SpecialTokens::Allow, reference.encode_allow(text)),
    ] {
        let ids = tok.encode_to_vec(text, mode);
        assert_eq!(ids, expected, "{mode:?} differs from the reference BPE");
        let mut bytes = Vec::new();
        tok.decode(&ids, &mut bytes).expect("encoded ids decode");
        assert_eq!(
            bytes,
            text.as_bytes(),
            "{mode:?}: decode(encode(text)) != text"
        );
        let mut stream = StreamDecoder::new(tok);
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(stream.push(id).expect("encoded ids decode"));
        }
        streamed.push_str(stream.finish());
        assert_eq!(streamed, text);
    }
}
