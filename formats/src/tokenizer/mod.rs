//! Byte-level BPE (GPT-2, and Hugging Face BPE files): encode, decode, streaming decode, loading
//! and training.
//!
//! The model is tiktoken's: a vocabulary of byte strings whose id is also its merge rank. Text is
//! split into pieces by GPT-2's pre-tokenizer ([`pieces`], written by hand, exact against
//! tiktoken-rs), and inside each piece the adjacent pair whose concatenation is the token of
//! lowest id is merged until no adjacent concatenation is a token. Special tokens (GPT-2 has one,
//! [`ENDOFTEXT`] = 50256) are never produced by merges; [`Tokenizer::encode`] recognises their
//! names in the text only with [`SpecialTokens::Allow`].
//!
//! - `Tokenizer::gpt2()` (feature `gpt2`): OpenAI's GPT-2 vocabulary, embedded.
//! - [`Tokenizer::from_openai_files`] / [`Tokenizer::from_hf_files`]: `encoder.json` + `vocab.bpe`
//!   or `vocab.json` + `merges.txt`.
//! - [`Tokenizer::to_parts`] / [`Tokenizer::from_parts`]: the compact form stored in `.ember`
//!   metadata (validated: untrusted input gives a [`TokenizerError`], never a panic).
//! - [`train_bpe`]: train a vocabulary on texts.
//! - [`StreamDecoder`]: token-by-token decoding that never splits a UTF-8 character.
//! - [`Tokenizer::from_hf_json`] (feature `hf`): a Hugging Face `tokenizer.json` with a BPE model
//!   (GPT-2, SmolLM2, Llama 3, Qwen2/2.5/3 byte-level; Llama 2 / Gemma SentencePiece-style with
//!   byte fallback), exact against the `tokenizers` library. Its merges are ranked by their
//!   position in the file, not by id ([`HfParts`], `hf_model.rs`); the GPT-2 path above is
//!   untouched by it. [`Tokenizer::encode_with_post`] adds the post-processor's BOS/EOS.
//!
//! Encoding into a reused `Vec<u32>` with a reused [`EncodeScratch`] allocates nothing once the
//! buffers have grown to the largest input seen.

mod bpe;
#[cfg(feature = "hf")]
mod hf;
mod hf_encode;
mod hf_model;
mod load;
mod pretok;
mod pretok_llama3;
mod stream;
mod train;
mod unicode_tables;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;

use bpe::{NONE, Node, Part, RankMap, Ranks};

#[cfg(feature = "hf")]
pub use hf::MAX_JSON_BYTES;
pub use hf_model::{HfModelKind, HfParts, HfPreTokenizer, MAX_MERGES, MAX_POST_IDS, Prepend};
pub use pretok::{Pieces, pieces};
pub use stream::StreamDecoder;
pub use train::{TrainOptions, train_bpe};

/// GPT-2's end-of-text special token (id 50256 in GPT-2; the last id of a trained vocabulary).
pub const ENDOFTEXT: &str = "<|endoftext|>";

/// Largest vocabulary accepted from untrusted parts or files.
pub const MAX_VOCAB_SIZE: usize = 1 << 24;

/// Longest token (in bytes) accepted from untrusted parts or files.
pub const MAX_TOKEN_BYTES: usize = 1 << 16;

/// Unicode version of the pre-tokenizer's character classes (that of the `regex-syntax` crate
/// used by tiktoken-rs).
pub const UNICODE_VERSION: &str = unicode_tables::UNICODE_VERSION;

/// Whether [`Tokenizer::encode`] turns special-token names found in the text into their ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialTokens {
    /// Every special token name in the text becomes its id (tiktoken's
    /// `encode_with_special_tokens`).
    Allow,
    /// Special token names are ordinary text (tiktoken's `encode_ordinary`).
    AsText,
}

/// A tokenizer in compact, serialisable form (the `tokenizer.*` keys of `.ember` metadata).
///
/// Contract checked by [`Tokenizer::from_parts`]: `token_ends` is strictly increasing (no empty
/// token), its last value is `tokens.len()`; at most [`MAX_VOCAB_SIZE`] ids and tokens of at most
/// [`MAX_TOKEN_BYTES`]; no two ids have the same bytes; every single byte 0..=255 is an ordinary
/// (non-special) token (not required of a SentencePiece-style [`HfParts`] tokenizer);
/// `special_names` and `special_ids` have equal lengths, the ids are in range and distinct, and
/// the bytes stored for a special id are its name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenizerParts {
    /// All token byte strings concatenated, in id order.
    pub tokens: Vec<u8>,
    /// Cumulative end offsets into `tokens`, one per id: token `i` is
    /// `tokens[token_ends[i-1]..token_ends[i]]` (from 0 for id 0).
    pub token_ends: Vec<u32>,
    /// Names of the special tokens (e.g. `<|endoftext|>`).
    pub special_names: Vec<String>,
    /// Ids of the special tokens, parallel to `special_names`.
    pub special_ids: Vec<u32>,
}

/// Everything that can go wrong building or using a tokenizer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenizerError {
    /// A file could not be read.
    Io {
        /// The path given.
        path: String,
        /// What the OS said.
        kind: std::io::ErrorKind,
    },
    /// A JSON vocabulary is not an object of strings to non-negative integers.
    Json {
        /// File name.
        file: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in bytes) of the error.
        column: usize,
        /// What was expected.
        detail: &'static str,
    },
    /// A vocabulary entry is invalid (bad characters, duplicate, id out of place).
    VocabEntry {
        /// File name.
        file: String,
        /// The entry's key as written in the file (unescaped).
        entry: String,
        /// What is wrong.
        detail: String,
    },
    /// A line of a merges file is invalid.
    MergeLine {
        /// File name.
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// A token id is not in the vocabulary.
    UnknownId {
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// [`TokenizerParts`] break their contract.
    Parts {
        /// The field at fault (`tokens`, `token_ends`, `special_names`, `special_ids`).
        field: &'static str,
        /// The entry (id or list index) at fault.
        index: usize,
        /// What is wrong.
        detail: &'static str,
    },
    /// A Hugging Face `tokenizer.json` is not valid JSON, or a field has the wrong shape.
    HfJson {
        /// The field at fault (a dotted path such as `model.merges[3]`), or empty for syntax.
        field: String,
        /// What is wrong.
        detail: String,
    },
    /// A Hugging Face `tokenizer.json` uses a component or setting emberlm does not implement.
    HfUnsupported {
        /// The field (a dotted path such as `pre_tokenizer.pretokenizers[0].pattern.Regex`).
        field: String,
        /// The value found there.
        value: String,
    },
    /// [`train_bpe`] was asked for a vocabulary size outside `min..=max`.
    TrainVocabSize {
        /// The size asked for.
        requested: usize,
        /// Smallest possible: 256 bytes and the end-of-text token.
        min: usize,
        /// [`MAX_VOCAB_SIZE`].
        max: usize,
    },
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenizerError::Io { path, kind } => write!(f, "cannot read {path}: {kind}"),
            TokenizerError::Json {
                file,
                line,
                column,
                detail,
            } => write!(f, "{file}:{line}:{column}: {detail}"),
            TokenizerError::VocabEntry {
                file,
                entry,
                detail,
            } => write!(f, "{file}: entry {entry:?}: {detail}"),
            TokenizerError::MergeLine { file, line, detail } => {
                write!(f, "{file}:{line}: {detail}")
            }
            TokenizerError::UnknownId { id, vocab_size } => {
                write!(
                    f,
                    "token id {id} is not in the vocabulary (size {vocab_size})"
                )
            }
            TokenizerError::Parts {
                field,
                index,
                detail,
            } => write!(f, "tokenizer.{field}[{index}]: {detail}"),
            TokenizerError::HfJson { field, detail } => {
                write!(f, "tokenizer.json: {field}: {detail}")
            }
            TokenizerError::HfUnsupported { field, value } => {
                write!(f, "tokenizer.json: {field}: unsupported: {value}")
            }
            TokenizerError::TrainVocabSize {
                requested,
                min,
                max,
            } => write!(f, "vocabulary size {requested} is not in {min}..={max}"),
        }
    }
}

impl std::error::Error for TokenizerError {}

/// Reusable buffers for [`Tokenizer::encode`]: keep one per thread and pass it to every call.
#[derive(Debug, Default, Clone)]
pub struct EncodeScratch {
    parts: Vec<Part>,
    nodes: Vec<Node>,
    heap: BinaryHeap<Reverse<u64>>,
    next_special: Vec<usize>,
    syms: Vec<hf_model::Sym>,
    norm: String,
}

impl EncodeScratch {
    /// Empty buffers (they grow to fit the longest piece seen, then stay).
    pub fn new() -> Self {
        Self::default()
    }
}

/// A byte-level BPE vocabulary with its lookup structures. Immutable; share it by reference.
#[derive(Clone)]
pub struct Tokenizer {
    bytes: Vec<u8>,
    ends: Vec<u32>,
    special_names: Vec<String>,
    special_ids: Vec<u32>,
    /// Ordinary tokens' bytes -> id.
    map: RankMap,
    /// Token of each two-byte string (`NONE` if not a token), indexed `b0 << 8 | b1`.
    pair: Vec<u32>,
    /// Token of each single byte.
    byte_tok: [u32; 256],
    max_token_len: usize,
    /// Hugging Face model settings (`None`: tiktoken-style, rank == id).
    hf: Option<Box<hf_model::HfModel>>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("special_names", &self.special_names)
            .field("special_ids", &self.special_ids)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds a tokenizer from compact parts, validating all of them (see [`TokenizerParts`]).
    pub fn from_parts(parts: TokenizerParts) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::build(parts, None)
    }

    /// Builds a Hugging Face BPE tokenizer (merge ranks separate from ids, see [`HfParts`]) from
    /// its vocabulary and added tokens (`parts`, whose special tokens are all the added tokens)
    /// and its settings, validating both. A SentencePiece-style vocabulary need not hold every
    /// byte value as a token.
    pub fn from_hf_parts(parts: TokenizerParts, hf: HfParts) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::build(parts, Some(hf))
    }

    /// The Hugging Face settings of this tokenizer (`None` for a tiktoken-style vocabulary),
    /// rebuilt: the merges live only in the lookup table (a copy of Llama 3's is 2.2 MB).
    pub fn hf_parts(&self) -> Option<HfParts> {
        self.hf.as_ref().map(|m| HfParts {
            merges: m.pairs.merge_list(),
            ..m.parts.clone()
        })
    }

    fn build(parts: TokenizerParts, hf: Option<HfParts>) -> Result<Tokenizer, TokenizerError> {
        let needs_all_bytes = hf
            .as_ref()
            .is_none_or(|h| h.model == HfModelKind::ByteLevel);
        let TokenizerParts {
            tokens,
            token_ends,
            special_names,
            special_ids,
        } = parts;
        let err = |field, index, detail| TokenizerError::Parts {
            field,
            index,
            detail,
        };
        let n = token_ends.len();
        if n > MAX_VOCAB_SIZE {
            return Err(err(
                "token_ends",
                MAX_VOCAB_SIZE,
                "more ids than MAX_VOCAB_SIZE",
            ));
        }
        let mut prev = 0u32;
        let mut max_token_len = 0usize;
        for (i, &end) in token_ends.iter().enumerate() {
            if end <= prev {
                return Err(err(
                    "token_ends",
                    i,
                    "not strictly increasing (empty token)",
                ));
            }
            if end as usize > tokens.len() {
                return Err(err("token_ends", i, "beyond the end of tokens"));
            }
            let len = (end - prev) as usize;
            if len > MAX_TOKEN_BYTES {
                return Err(err("token_ends", i, "token longer than MAX_TOKEN_BYTES"));
            }
            max_token_len = max_token_len.max(len);
            prev = end;
        }
        if prev as usize != tokens.len() {
            return Err(err(
                "tokens",
                prev as usize,
                "bytes after the last token end",
            ));
        }
        if special_names.len() != special_ids.len() {
            let first_unpaired = special_names.len().min(special_ids.len());
            return Err(err(
                "special_ids",
                first_unpaired,
                "length differs from special_names",
            ));
        }
        let mut is_special = vec![false; n];
        for (k, (name, &id)) in special_names.iter().zip(&special_ids).enumerate() {
            let Some(slot) = is_special.get_mut(id as usize) else {
                return Err(err("special_ids", k, "id out of range"));
            };
            if *slot {
                return Err(err("special_ids", k, "duplicate special id"));
            }
            *slot = true;
            if token_slice(&tokens, &token_ends, id) != Some(name.as_bytes()) {
                return Err(err("special_names", k, "differs from the token's bytes"));
            }
        }
        let mut map = RankMap::with_capacity(n);
        let mut pair = vec![NONE; 1 << 16];
        let mut byte_tok = [NONE; 256];
        for id in 0..n as u32 {
            let t = token_slice(&tokens, &token_ends, id).unwrap_or_default();
            let bytes_of = |v: u32| token_slice(&tokens, &token_ends, v).unwrap_or_default();
            if map.insert(t, id, bytes_of).is_some() {
                return Err(err("tokens", id as usize, "duplicate token bytes"));
            }
            if is_special[id as usize] {
                continue;
            }
            match *t {
                [b] => byte_tok[b as usize] = id,
                [b0, b1] => pair[(b0 as usize) << 8 | b1 as usize] = id,
                _ => {}
            }
        }
        if let Some(b) = byte_tok.iter().position(|&t| t == NONE) {
            if needs_all_bytes {
                return Err(err("tokens", b, "this byte value is not a token"));
            }
        }
        // The map must hold ordinary tokens only: rebuild it without the specials (they were
        // inserted above only to detect duplicates across all ids).
        if !special_ids.is_empty() {
            map = RankMap::with_capacity(n);
            for id in (0..n as u32).filter(|&id| !is_special[id as usize]) {
                let t = token_slice(&tokens, &token_ends, id).unwrap_or_default();
                map.insert(t, id, |v| {
                    token_slice(&tokens, &token_ends, v).unwrap_or_default()
                });
            }
        }
        let hf = match hf {
            None => None,
            Some(h) => Some(Box::new(hf_model::build(
                h,
                special_names
                    .iter()
                    .map(String::as_str)
                    .zip(special_ids.iter().copied()),
                n,
                &map,
                &tokens,
                &token_ends,
                |id| token_slice(&tokens, &token_ends, id),
            )?)),
        };
        Ok(Tokenizer {
            bytes: tokens,
            ends: token_ends,
            special_names,
            special_ids,
            map,
            pair,
            byte_tok,
            max_token_len,
            hf,
        })
    }

    /// The compact form of this tokenizer ([`Tokenizer::from_parts`] gives it back).
    pub fn to_parts(&self) -> TokenizerParts {
        TokenizerParts {
            tokens: self.bytes.clone(),
            token_ends: self.ends.clone(),
            special_names: self.special_names.clone(),
            special_ids: self.special_ids.clone(),
        }
    }

    /// Builds parts from a token list in id order plus special tokens placed at the given ids
    /// (whose bytes in `tokens` must already be their names).
    pub(crate) fn from_token_list<'a>(
        tokens: impl IntoIterator<Item = &'a [u8]>,
        specials: &[(&str, u32)],
    ) -> Result<Tokenizer, TokenizerError> {
        let mut parts = TokenizerParts::default();
        for t in tokens {
            parts.tokens.extend_from_slice(t);
            let end = u32::try_from(parts.tokens.len()).map_err(|_| TokenizerError::Parts {
                field: "tokens",
                index: parts.token_ends.len(),
                detail: "more than 4 GiB of token bytes",
            })?;
            parts.token_ends.push(end);
        }
        for &(name, id) in specials {
            parts.special_names.push(name.to_string());
            parts.special_ids.push(id);
        }
        Tokenizer::from_parts(parts)
    }

    /// OpenAI's GPT-2 vocabulary (50,257 ids, `<|endoftext|>` = 50256), built once from the
    /// tiktoken-rs crate's embedded `r50k_base` table and cached for the process.
    ///
    /// Panics only if that embedded table is corrupt (a build defect, not an input error).
    #[cfg(any(test, feature = "gpt2"))]
    pub fn gpt2() -> &'static Tokenizer {
        static GPT2: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
        GPT2.get_or_init(|| {
            let bpe = tiktoken_rs::r50k_base().expect("tiktoken-rs embeds r50k_base");
            let tokens: Vec<Vec<u8>> = (0..50256u32)
                .map(|id| bpe.decode_bytes(&[id]).expect("r50k_base has ids 0..50256"))
                .chain(std::iter::once(ENDOFTEXT.as_bytes().to_vec()))
                .collect();
            Tokenizer::from_token_list(tokens.iter().map(|t| t.as_slice()), &[(ENDOFTEXT, 50256)])
                .expect("r50k_base is a valid vocabulary")
        })
    }

    /// Number of ids (ordinary and special).
    pub fn vocab_size(&self) -> usize {
        self.ends.len()
    }

    /// Bytes of token `id` (a special token's bytes are its name), or `None` if out of range.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        token_slice(&self.bytes, &self.ends, id)
    }

    /// Length in bytes of the longest token.
    pub fn max_token_len(&self) -> usize {
        self.max_token_len
    }

    /// Id of the special token `name`.
    pub fn special_id(&self, name: &str) -> Option<u32> {
        let k = self.special_names.iter().position(|n| n == name)?;
        self.special_ids.get(k).copied()
    }

    /// Id of `<|endoftext|>`, if this vocabulary has it.
    pub fn eot_id(&self) -> Option<u32> {
        self.special_id(ENDOFTEXT)
    }

    /// Whether `id` is a special token (for a Hugging Face tokenizer: an added token marked
    /// `special`).
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
            && !self
                .hf
                .as_ref()
                .is_some_and(|h| h.parts.nonspecial.contains(&id))
    }

    /// The special tokens as (name, id) pairs.
    pub fn specials(&self) -> impl Iterator<Item = (&str, u32)> {
        self.special_names
            .iter()
            .map(String::as_str)
            .zip(self.special_ids.iter().copied())
    }

    /// Appends the tokens of `text` to `out` (which is not cleared). Allocates nothing once
    /// `scratch` and `out` have grown to fit.
    pub fn encode(
        &self,
        text: &str,
        special: SpecialTokens,
        scratch: &mut EncodeScratch,
        out: &mut Vec<u32>,
    ) {
        if special == SpecialTokens::AsText || self.special_ids.is_empty() {
            self.encode_ordinary(text, scratch, out);
            return;
        }
        if let Some(hf) = &self.hf {
            self.encode_hf(hf, text, scratch, out);
            return;
        }
        let find = |from: usize, name: &str| {
            text.get(from..)
                .and_then(|rest| rest.find(name))
                .map_or(usize::MAX, |p| p + from)
        };
        // Next occurrence of each special name at or after `pos` (usize::MAX: none), refreshed
        // only when `pos` passes it, so the scan stays linear.
        scratch.next_special.clear();
        for name in &self.special_names {
            scratch.next_special.push(find(0, name));
        }
        let mut pos = 0;
        loop {
            let mut best: Option<(usize, usize, u32)> = None; // (start, len, id)
            for (k, (name, &id)) in self.special_names.iter().zip(&self.special_ids).enumerate() {
                if scratch.next_special[k] < pos {
                    scratch.next_special[k] = find(pos, name);
                }
                let at = scratch.next_special[k];
                if at == usize::MAX {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some((s, l, _)) => at < s || (at == s && name.len() > l),
                };
                if better {
                    best = Some((at, name.len(), id));
                }
            }
            let Some((start, len, id)) = best else {
                self.encode_ordinary(text.get(pos..).unwrap_or_default(), scratch, out);
                return;
            };
            self.encode_ordinary(text.get(pos..start).unwrap_or_default(), scratch, out);
            out.push(id);
            pos = start + len;
        }
    }

    /// Appends the tokens of `text` to `out`, special token names being ordinary text.
    pub fn encode_ordinary(&self, text: &str, scratch: &mut EncodeScratch, out: &mut Vec<u32>) {
        if let Some(hf) = &self.hf {
            self.encode_hf_segment(hf, text, true, scratch, out);
            return;
        }
        let b = text.as_bytes();
        let ranks = Ranks {
            map: &self.map,
            pair: &self.pair,
            bytes: &self.bytes,
            ends: &self.ends,
        };
        let mut i = 0;
        while i < b.len() {
            let e = pretok::piece_end(text, i);
            let piece = &b[i..e];
            i = e;
            let id = match *piece {
                [b0] => {
                    out.push(self.byte_tok[b0 as usize]);
                    continue;
                }
                [b0, b1] => self.pair[(b0 as usize) << 8 | b1 as usize],
                _ => self.map.get(piece, &self.bytes, &self.ends),
            };
            if id != NONE {
                out.push(id);
            } else if piece.len() < bpe::LARGE_PIECE {
                bpe::merge_small(&ranks, &self.byte_tok, piece, &mut scratch.parts, out);
            } else {
                bpe::merge_large(
                    &ranks,
                    &self.byte_tok,
                    piece,
                    &mut scratch.nodes,
                    &mut scratch.heap,
                    out,
                );
            }
        }
    }

    /// Convenience: the tokens of `text` in a new vector (allocates; use [`Tokenizer::encode`]
    /// on hot paths).
    pub fn encode_to_vec(&self, text: &str, special: SpecialTokens) -> Vec<u32> {
        let mut out = Vec::new();
        self.encode(text, special, &mut EncodeScratch::new(), &mut out);
        out
    }

    /// Appends the bytes of `ids` to `out` (special tokens as their names). The bytes need not be
    /// valid UTF-8 (use `String::from_utf8_lossy` or a [`StreamDecoder`]). On an unknown id,
    /// returns the error and leaves `out` with the bytes of the ids before it. A SentencePiece-style
    /// tokenizer writes `▁` as a space, `<0xNN>` tokens as their byte, and drops the first space
    /// of the text when its decoder says so.
    pub fn decode(&self, ids: &[u32], out: &mut Vec<u8>) -> Result<(), TokenizerError> {
        if let Some(hf) = &self.hf {
            return self.decode_hf(hf, ids, out);
        }
        for &id in ids {
            let t = self.token_bytes(id).ok_or(TokenizerError::UnknownId {
                id,
                vocab_size: self.vocab_size(),
            })?;
            out.extend_from_slice(t);
        }
        Ok(())
    }

    /// Convenience: `decode` into a new string, invalid UTF-8 replaced by U+FFFD (for a
    /// SentencePiece-style tokenizer, exactly as `tokenizers`' `ByteFallback` decoder does: one
    /// U+FFFD per byte of an invalid run of `<0xNN>` tokens).
    pub fn decode_to_string(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        if let Some(hf) = &self.hf {
            return self.decode_hf_to_string(hf, ids);
        }
        let mut out = Vec::new();
        self.decode(ids, &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// Token `id` of a (tokens, ends) table, `None` when out of range or inconsistent.
fn token_slice<'a>(tokens: &'a [u8], ends: &[u32], id: u32) -> Option<&'a [u8]> {
    let i = id as usize;
    let end = *ends.get(i)? as usize;
    let start = if i == 0 {
        0
    } else {
        *ends.get(i - 1)? as usize
    };
    tokens.get(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Plain reference BPE (the slow twin of `bpe::merge_small`/`merge_large`): parts as byte
    /// vectors, a full rescan per merge, ranks from a std HashMap.
    fn reference_bpe(ranks: &HashMap<Vec<u8>, u32>, piece: &[u8]) -> Vec<u32> {
        let mut parts: Vec<Vec<u8>> = piece.iter().map(|&b| vec![b]).collect();
        loop {
            let mut best: Option<(u32, usize)> = None;
            for i in 0..parts.len().saturating_sub(1) {
                let joined = [parts[i].as_slice(), parts[i + 1].as_slice()].concat();
                if let Some(&r) = ranks.get(&joined) {
                    if best.is_none_or(|(br, _)| r < br) {
                        best = Some((r, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            let right = parts.remove(i + 1);
            parts[i].extend_from_slice(&right);
        }
        parts.iter().map(|p| ranks[p]).collect()
    }

    fn rank_table(tok: &Tokenizer) -> HashMap<Vec<u8>, u32> {
        (0..tok.vocab_size() as u32)
            .filter(|&id| !tok.is_special(id))
            .map(|id| (tok.token_bytes(id).unwrap().to_vec(), id))
            .collect()
    }

    /// A small xorshift generator (tests only; seeded, reproducible).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn fast_merges_equal_the_reference_on_random_pieces() {
        let tok = Tokenizer::gpt2();
        let ranks = rank_table(tok);
        let r = Ranks {
            map: &tok.map,
            pair: &tok.pair,
            bytes: &tok.bytes,
            ends: &tok.ends,
        };
        let alphabets: [&[u8]; 4] = [
            b" eatn",
            b"abcdefghijklmnopqrstuvwxyz",
            b" \n\t",
            b"0123456789",
        ];
        let mut rng = Rng(0x5EED);
        let (mut parts, mut nodes, mut heap) = (Vec::new(), Vec::new(), BinaryHeap::new());
        for case in 0..3000 {
            let alpha = alphabets[case % alphabets.len()];
            let len = 2 + rng.below(if case % 10 == 0 { 400 } else { 40 });
            let piece: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.below(50) == 0 {
                        rng.below(256) as u8
                    } else {
                        alpha[rng.below(alpha.len())]
                    }
                })
                .collect();
            let want = reference_bpe(&ranks, &piece);
            let mut small = Vec::new();
            bpe::merge_small(&r, &tok.byte_tok, &piece, &mut parts, &mut small);
            let mut large = Vec::new();
            bpe::merge_large(&r, &tok.byte_tok, &piece, &mut nodes, &mut heap, &mut large);
            assert_eq!(small, want, "merge_small on {piece:?}");
            assert_eq!(large, want, "merge_large on {piece:?}");
        }
    }

    #[test]
    fn gpt2_encodes_the_books_examples() {
        let tok = Tokenizer::gpt2();
        assert_eq!(tok.vocab_size(), 50257);
        assert_eq!(tok.eot_id(), Some(50256));
        let text =
            "Hello, do you like tea? <|endoftext|> In the sunlit terracesof someunknownPlace.";
        assert_eq!(
            tok.encode_to_vec(text, SpecialTokens::Allow),
            [
                15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114,
                1659, 617, 34680, 27271, 13
            ]
        );
        let as_text = tok.encode_to_vec("<|endoftext|>", SpecialTokens::AsText);
        assert!(!as_text.contains(&50256));
        assert_eq!(tok.decode_to_string(&as_text).unwrap(), "<|endoftext|>");
        assert_eq!(tok.encode_to_vec("\n", SpecialTokens::Allow), [198]);
    }

    #[test]
    fn encode_appends_and_handles_adjacent_specials() {
        let tok = Tokenizer::gpt2();
        let mut out = vec![7];
        let mut s = EncodeScratch::new();
        tok.encode(
            "<|endoftext|><|endoftext|>a<|endoftext|",
            SpecialTokens::Allow,
            &mut s,
            &mut out,
        );
        assert_eq!(&out[..3], [7, 50256, 50256]);
        assert_eq!(tok.decode_to_string(&out[3..]).unwrap(), "a<|endoftext|");
    }

    #[test]
    fn decode_names_the_bad_id() {
        let tok = Tokenizer::gpt2();
        let mut out = Vec::new();
        assert_eq!(
            tok.decode(&[15496, 50257], &mut out),
            Err(TokenizerError::UnknownId {
                id: 50257,
                vocab_size: 50257
            })
        );
        assert_eq!(out, b"Hello");
    }

    fn bytes_parts(extra: &[&[u8]]) -> TokenizerParts {
        let mut p = TokenizerParts::default();
        for b in 0..=255u8 {
            p.tokens.push(b);
            p.token_ends.push(p.tokens.len() as u32);
        }
        for t in extra {
            p.tokens.extend_from_slice(t);
            p.token_ends.push(p.tokens.len() as u32);
        }
        p
    }

    #[test]
    fn from_parts_rejects_each_broken_contract() {
        let check = |p: TokenizerParts, field: &'static str, index: usize, detail: &'static str| {
            assert_eq!(
                Tokenizer::from_parts(p).unwrap_err(),
                TokenizerError::Parts {
                    field,
                    index,
                    detail
                }
            );
        };
        let ok = bytes_parts(&[b"ab", b"<|endoftext|>"]);
        let mut p = ok.clone();
        p.special_names.push(ENDOFTEXT.into());
        p.special_ids.push(257);
        let tok = Tokenizer::from_parts(p.clone()).unwrap();
        assert_eq!(tok.to_parts(), p);
        assert_eq!(tok.eot_id(), Some(257));

        let mut q = p.clone();
        q.token_ends[10] = q.token_ends[9];
        check(q, "token_ends", 10, "not strictly increasing (empty token)");
        let mut q = p.clone();
        q.token_ends[0] = 0;
        check(q, "token_ends", 0, "not strictly increasing (empty token)");
        let mut q = p.clone();
        *q.token_ends.last_mut().unwrap() += 1;
        check(q, "token_ends", 257, "beyond the end of tokens");
        let mut q = p.clone();
        q.tokens.push(b'x');
        check(q, "tokens", 271, "bytes after the last token end");
        let mut q = p.clone();
        q.special_ids.push(3);
        check(q, "special_ids", 1, "length differs from special_names");
        let mut q = p.clone();
        q.special_ids[0] = 258;
        check(q, "special_ids", 0, "id out of range");
        let mut q = p.clone();
        q.special_ids[0] = 256;
        check(q, "special_names", 0, "differs from the token's bytes");
        let mut q = p.clone();
        q.special_names.push(ENDOFTEXT.into());
        q.special_ids.push(257);
        check(q, "special_ids", 1, "duplicate special id");
        let q = bytes_parts(&[b"ab", b"ab"]);
        check(q, "tokens", 257, "duplicate token bytes");
        let mut q = bytes_parts(&[b"ab"]);
        q.tokens[65] = b'B'; // byte 'A' (65) is now missing, 'B' twice
        check(q, "tokens", 66, "duplicate token bytes");
        let mut q = bytes_parts(&[]);
        q.special_names.push("\u{7}".into());
        q.special_ids.push(7); // byte 7 only as a special: text with it would be unencodable
        check(q, "tokens", 7, "this byte value is not a token");
        let mut q = bytes_parts(&[]);
        q.token_ends.truncate(255);
        q.tokens.truncate(255);
        check(q, "tokens", 255, "this byte value is not a token");
    }

    #[test]
    fn from_parts_never_panics_on_garbage() {
        let mut rng = Rng(42);
        let good = Tokenizer::gpt2().to_parts();
        for _ in 0..200 {
            let mut p = good.clone();
            match rng.below(4) {
                0 => {
                    let i = rng.below(p.token_ends.len());
                    p.token_ends[i] = rng.next() as u32;
                }
                1 => {
                    let i = rng.below(p.tokens.len());
                    p.tokens[i] = rng.next() as u8;
                }
                2 => p.special_ids[0] = rng.next() as u32 % 60000,
                _ => {
                    let n = rng.below(p.tokens.len());
                    p.tokens.truncate(n);
                }
            }
            let _ = Tokenizer::from_parts(p);
        }
    }

    #[test]
    fn stream_decoder_holds_back_split_characters() {
        let tok = Tokenizer::gpt2();
        // "é" is 0xC3 0xA9; byte tokens exist for both halves.
        let half = |b: u8| tok.map.get(&[b], &tok.bytes, &tok.ends);
        let (c3, a9) = (half(0xC3), half(0xA9));
        let mut d = StreamDecoder::new(tok);
        assert_eq!(d.push(15496).unwrap(), "Hello");
        assert_eq!(d.push(c3).unwrap(), "");
        assert!(d.has_pending());
        assert_eq!(d.push(a9).unwrap(), "é");
        // A lone continuation byte can never become valid: replaced at once.
        assert_eq!(d.push(a9).unwrap(), "\u{FFFD}");
        // A lead byte followed by a non-continuation: replaced when the next token shows it.
        assert_eq!(d.push(c3).unwrap(), "");
        assert_eq!(d.push(15496).unwrap(), "\u{FFFD}Hello");
        assert_eq!(d.push(c3).unwrap(), "");
        assert_eq!(d.finish(), "\u{FFFD}");
        assert_eq!(d.finish(), "");
        assert_eq!(
            d.push(60000).unwrap_err(),
            TokenizerError::UnknownId {
                id: 60000,
                vocab_size: 50257
            }
        );
    }

    const SAMPLE: &str = "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox \
        runs away, and the quick fox is quicker than the lazy dog. It's the fox's day: 123 foxes, \
        456 dogs!\n\nThe end.<|endoftext|>Another document: the fox, the dog, the end.";

    #[test]
    fn training_is_deterministic_and_round_trips() {
        let texts = [SAMPLE, "the the the the fox fox"];
        let a = train_bpe(&texts, 300, &TrainOptions::default()).unwrap();
        let b = train_bpe(&texts, 300, &TrainOptions::default()).unwrap();
        assert_eq!(a.to_parts(), b.to_parts());
        assert!(
            a.vocab_size() > 257 && a.vocab_size() <= 300,
            "{}",
            a.vocab_size()
        );
        assert_eq!(a.eot_id(), Some(a.vocab_size() as u32 - 1));
        // The most frequent pair in this corpus is " t"+"h" or "t"+"h": "th" or " t" is learned.
        assert_eq!(a.token_bytes(b'e' as u32), Some(&b"e"[..]));
        let ids = a.encode_to_vec(SAMPLE, SpecialTokens::Allow);
        assert!(
            ids.len() * 2 < SAMPLE.len(),
            "{} tokens for {} bytes",
            ids.len(),
            SAMPLE.len()
        );
        assert_eq!(ids.iter().filter(|&&i| Some(i) == a.eot_id()).count(), 1);
        assert_eq!(a.decode_to_string(&ids).unwrap(), SAMPLE);
        // No token spans the end-of-text marker or a piece boundary.
        for id in 256..a.vocab_size() as u32 - 1 {
            let t = std::str::from_utf8(a.token_bytes(id).unwrap()).unwrap_or("");
            assert!(
                t.is_empty() || pieces(t).count() == 1,
                "token {t:?} spans pieces"
            );
        }
        let back = Tokenizer::from_parts(a.to_parts()).unwrap();
        assert_eq!(back.encode_to_vec(SAMPLE, SpecialTokens::Allow), ids);
    }

    #[test]
    fn training_counts_pairs_like_a_full_recount() {
        // Reference: the naive algorithm (recount every pair over all words per merge) must pick
        // the same merges as the incremental one.
        let tok = train_bpe(&[SAMPLE], 280, &TrainOptions { min_pair_count: 1 }).unwrap();
        let mut counts: HashMap<&str, i64> = HashMap::new();
        for seg in SAMPLE.split(ENDOFTEXT) {
            for p in pieces(seg) {
                *counts.entry(p).or_default() += 1;
            }
        }
        let mut order: Vec<&str> = Vec::new();
        for seg in SAMPLE.split(ENDOFTEXT) {
            for p in pieces(seg) {
                if !order.contains(&p) {
                    order.push(p);
                }
            }
        }
        let mut ids_of: Vec<Vec<u32>> = order
            .iter()
            .map(|w| w.bytes().map(u32::from).collect())
            .collect();
        let mut vocab: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        while vocab.len() < 279 {
            let mut pc: HashMap<(u32, u32), i64> = HashMap::new();
            for (w, ids) in order.iter().zip(&ids_of) {
                for p in ids.windows(2) {
                    *pc.entry((p[0], p[1])).or_default() += counts[w];
                }
            }
            let Some((&(a, b), _)) = pc.iter().max_by_key(|&(&(a, b), &c)| (c, Reverse((a, b))))
            else {
                break;
            };
            let joined = [vocab[a as usize].clone(), vocab[b as usize].clone()].concat();
            let id = match vocab.iter().position(|v| *v == joined) {
                Some(i) => i as u32,
                None => {
                    vocab.push(joined);
                    vocab.len() as u32 - 1
                }
            };
            for ids in &mut ids_of {
                let mut out = Vec::new();
                let mut i = 0;
                while i < ids.len() {
                    if i + 1 < ids.len() && ids[i] == a && ids[i + 1] == b {
                        out.push(id);
                        i += 2;
                    } else {
                        out.push(ids[i]);
                        i += 1;
                    }
                }
                *ids = out;
            }
        }
        assert_eq!(tok.vocab_size(), vocab.len() + 1);
        for (id, v) in vocab.iter().enumerate() {
            assert_eq!(tok.token_bytes(id as u32), Some(v.as_slice()), "id {id}");
        }
    }

    #[test]
    fn train_rejects_bad_vocab_sizes() {
        assert_eq!(
            train_bpe(&["x"], 256, &TrainOptions::default()).unwrap_err(),
            TokenizerError::TrainVocabSize {
                requested: 256,
                min: 257,
                max: MAX_VOCAB_SIZE
            }
        );
        let t = train_bpe(&[], 1000, &TrainOptions::default()).unwrap();
        assert_eq!(t.vocab_size(), 257);
    }
}
