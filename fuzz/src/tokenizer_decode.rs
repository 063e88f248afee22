//! Decoding arbitrary ids (in and out of the vocabulary) with GPT-2's tokenizer: `decode`,
//! `decode_to_string` and the `StreamDecoder`.
//!
//! Input: 4 bytes per id (little-endian u32 `x`): `x % 50257` when the top bit is clear, else
//! `x & 0x7fff_ffff` (almost always out of range).
//!
//! Properties: `decode` gives the concatenated token bytes, or on the first unknown id an
//! `UnknownId` naming it with the bytes before it already written; the stream decoder returns
//! `UnknownId` for exactly the unknown ids and keeps its state across them: everything it returns
//! plus `finish` equals `from_utf8_lossy` of the valid ids' bytes; `reset` drops held-back bytes.

use emberlm_formats::tokenizer::{StreamDecoder, Tokenizer, TokenizerError};

/// The target's body.
pub fn run(data: &[u8]) {
    let tok = Tokenizer::gpt2();
    let v = tok.vocab_size();
    let ids: Vec<u32> = data
        .chunks(4)
        .map(|c| {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            let x = u32::from_le_bytes(b);
            if x >> 31 == 0 {
                x % v as u32
            } else {
                x & 0x7fff_ffff
            }
        })
        .collect();
    let valid: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|&id| (id as usize) < v)
        .collect();
    let mut expected_bytes = Vec::new();
    for &id in &valid {
        expected_bytes.extend_from_slice(tok.token_bytes(id).expect("a valid id"));
    }

    let mut out = Vec::new();
    let r = tok.decode(&ids, &mut out);
    match ids.iter().position(|&id| id as usize >= v) {
        None => {
            assert_eq!(r, Ok(()));
            assert_eq!(out, expected_bytes);
            let s = tok.decode_to_string(&ids).expect("valid ids decode");
            assert_eq!(s, String::from_utf8_lossy(&expected_bytes));
        }
        Some(k) => {
            assert_eq!(
                r,
                Err(TokenizerError::UnknownId {
                    id: ids[k],
                    vocab_size: v
                })
            );
            let mut prefix = Vec::new();
            tok.decode(&ids[..k], &mut prefix)
                .expect("the ids before are valid");
            assert_eq!(out, prefix);
            assert!(tok.decode_to_string(&ids).is_err());
        }
    }

    let mut stream = StreamDecoder::new(tok);
    let mut text = String::new();
    for &id in &ids {
        match stream.push(id) {
            Ok(s) => {
                assert!((id as usize) < v);
                text.push_str(s);
            }
            Err(e) => {
                assert!(id as usize >= v);
                assert_eq!(e, TokenizerError::UnknownId { id, vocab_size: v });
            }
        }
    }
    text.push_str(stream.finish());
    assert!(!stream.has_pending());
    assert_eq!(text, String::from_utf8_lossy(&expected_bytes));

    // reset: a held-back partial character disappears; the next stream starts clean.
    for &id in &valid {
        let _ = stream.push(id).expect("a valid id");
    }
    stream.reset();
    assert!(!stream.has_pending());
    assert_eq!(stream.finish(), "");
}
