//! A plain reference for byte-level BPE encoding, written from the rule stated in
//! `emberlm_formats::tokenizer` (tiktoken's): split into pre-tokenizer pieces; a piece that is a
//! token is that token; otherwise start from its single bytes and repeatedly merge the adjacent
//! pair whose concatenation is the ordinary token of lowest id (ties: the leftmost pair) until no
//! adjacent concatenation is a token. Special token names become their ids only when allowed:
//! the earliest occurrence first, the longest name on a tie.
//!
//! Deliberately simple (a hash map of byte strings, a vector of parts); only the pre-tokenizer is
//! shared with the code under test (it is checked against tiktoken-rs by `tokenizer_encode`).

use emberlm_formats::tokenizer::{Tokenizer, pieces};
use std::collections::HashMap;

/// Ordinary tokens of one vocabulary, by bytes.
#[derive(Debug)]
pub struct Reference {
    ordinary: HashMap<Vec<u8>, u32>,
    specials: Vec<(String, u32)>,
}

impl Reference {
    /// Indexes every ordinary token of `tok`.
    pub fn new(tok: &Tokenizer) -> Reference {
        let mut ordinary = HashMap::new();
        for id in 0..tok.vocab_size() as u32 {
            if !tok.is_special(id) {
                let b = tok
                    .token_bytes(id)
                    .expect("ids below vocab_size have bytes");
                ordinary.insert(b.to_vec(), id);
            }
        }
        let specials = tok.specials().map(|(n, id)| (n.to_string(), id)).collect();
        Reference { ordinary, specials }
    }

    fn rank(&self, a: &[u8], b: &[u8]) -> Option<u32> {
        let mut cat = Vec::with_capacity(a.len() + b.len());
        cat.extend_from_slice(a);
        cat.extend_from_slice(b);
        self.ordinary.get(&cat).copied()
    }

    /// The tokens of `text`, special names being ordinary text.
    pub fn encode_ordinary(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        for piece in pieces(text) {
            let b = piece.as_bytes();
            if let Some(&id) = self.ordinary.get(b) {
                out.push(id);
                continue;
            }
            let mut parts: Vec<Vec<u8>> = b.iter().map(|&x| vec![x]).collect();
            // ranks[i]: the rank of merging parts[i] and parts[i + 1].
            let mut ranks: Vec<Option<u32>> =
                parts.windows(2).map(|w| self.rank(&w[0], &w[1])).collect();
            loop {
                let mut best: Option<(u32, usize)> = None;
                for (i, r) in ranks.iter().enumerate() {
                    if let Some(r) = *r
                        && best.is_none_or(|(br, _)| r < br)
                    {
                        best = Some((r, i));
                    }
                }
                let Some((_, i)) = best else { break };
                let next = parts.remove(i + 1);
                parts[i].extend_from_slice(&next);
                ranks.remove(i);
                if i < ranks.len() {
                    ranks[i] = self.rank(&parts[i], &parts[i + 1]);
                }
                if i > 0 {
                    ranks[i - 1] = self.rank(&parts[i - 1], &parts[i]);
                }
            }
            for p in &parts {
                out.push(self.ordinary[p]);
            }
        }
        out
    }

    /// The tokens of `text`, special names becoming their ids.
    pub fn encode_allow(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = text;
        loop {
            let mut best: Option<(usize, usize, u32)> = None;
            for (name, id) in &self.specials {
                if let Some(at) = rest.find(name.as_str()) {
                    let better = best.is_none_or(|(s, l, _)| at < s || (at == s && name.len() > l));
                    if better {
                        best = Some((at, name.len(), *id));
                    }
                }
            }
            let Some((at, len, id)) = best else {
                out.extend(self.encode_ordinary(rest));
                return out;
            };
            out.extend(self.encode_ordinary(&rest[..at]));
            out.push(id);
            rest = &rest[at + len..];
        }
    }
}
