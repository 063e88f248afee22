//! Hugging Face BPE models (`tokenizer.json` with `model.type == "BPE"`): the parts stored in
//! `.ember`, the merge table, and the encode and decode paths.
//!
//! Two model kinds, recorded in [`HfParts::model`]:
//!
//! - [`HfModelKind::ByteLevel`] (GPT-2, SmolLM2, Llama 3, Qwen2/2.5/3): token strings spell bytes
//!   in GPT-2's printable alphabet; emberlm stores the bytes themselves. Every byte must be a
//!   token (as in every real file), so no input is unencodable.
//! - [`HfModelKind::SentencePiece`] (Llama 2, Gemma): token strings are text with `▁` for a space,
//!   stored as their UTF-8; a character that is not a token becomes its `<0xNN>` byte tokens
//!   (`byte_fallback`) or the unknown token.
//!
//! Merges are ranked by their position in `model.merges`, not by token id: the rule is that of
//! `tokenizers` (start from one symbol per byte / character, repeatedly merge the adjacent pair of
//! lowest rank, leftmost first, where only pairs listed in `merges` may merge). With
//! `ignore_merges` (Llama 3), a whole pre-token that is a token is emitted as is. Added tokens
//! (the special tokens of [`super::TokenizerParts`]) are cut out of the raw text first, leftmost
//! and then longest first, as `tokenizers` does; every other segment is normalized,
//! pre-tokenized and merged on its own.
//!
//! The GPT-2 path (`tokenizer.kind = "bpe-bytes"`, rank == id) does not come through here.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::bpe::{NONE, RankMap};
use super::{TokenizerError, pretok, pretok_llama3};

/// Largest number of merges accepted from untrusted parts or files.
pub const MAX_MERGES: usize = 1 << 24;

/// Largest number of ids in the post-processor's prefix or suffix.
pub const MAX_POST_IDS: usize = 16;

/// How token strings spell their content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfModelKind {
    /// Byte-level BPE: tokens are byte strings (GPT-2's printable alphabet in the JSON file).
    ByteLevel,
    /// SentencePiece-style BPE: tokens are text with `▁` for a space, `<0xNN>` byte tokens.
    SentencePiece,
}

/// The pre-tokenizer's split of each normalized segment into pre-tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfPreTokenizer {
    /// No split: the whole segment is one pre-token (ByteLevel with `use_regex: false`, or a
    /// SentencePiece file without pre-tokenizer).
    Whole,
    /// GPT-2's regex (ByteLevel with `use_regex: true`), the pieces of `pretok.rs`.
    Gpt2,
    /// Llama 3's split regex (numbers in runs of up to three).
    Llama3,
    /// Qwen2's split regex (one number per piece).
    Qwen2,
    /// SmolLM2: every number character alone (`Digits` with `individual_digits`), then GPT-2's
    /// regex on the text between them.
    Gpt2Digits,
}

impl HfPreTokenizer {
    /// Name in `.ember` metadata (`tokenizer.pretokenizer`).
    pub fn name(self) -> &'static str {
        match self {
            HfPreTokenizer::Whole => "whole",
            HfPreTokenizer::Gpt2 => "gpt2",
            HfPreTokenizer::Llama3 => "llama3",
            HfPreTokenizer::Qwen2 => "qwen2",
            HfPreTokenizer::Gpt2Digits => "gpt2-digits",
        }
    }

    /// The pre-tokens of an already normalized `text` (they concatenate to it). A convenience
    /// for tests and tools; the encoder walks the same boundaries without collecting them.
    pub fn split(self, text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        let b = text.as_bytes();
        let mut start = 0;
        while start < b.len() {
            // Gpt2Digits: cut at every number character first.
            let mut stop = b.len();
            if self == HfPreTokenizer::Gpt2Digits {
                let (class, len) = pretok::char_at(b, start);
                stop = start + len;
                if class != pretok::NUMBER {
                    while stop < b.len() && pretok::char_at(b, stop).0 != pretok::NUMBER {
                        stop += pretok::char_at(b, stop).1;
                    }
                }
            }
            let stretch = text.get(start..stop).unwrap_or_default();
            let mut i = 0;
            while i < stretch.len() {
                let e = pretoken_end(self, stretch, i).max(i + 1);
                out.push(stretch.get(i..e).unwrap_or_default());
                i = e;
            }
            start = stop;
        }
        out
    }

    /// Inverse of [`HfPreTokenizer::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        [
            Self::Whole,
            Self::Gpt2,
            Self::Llama3,
            Self::Qwen2,
            Self::Gpt2Digits,
        ]
        .into_iter()
        .find(|p| p.name() == s)
    }
}

/// When a SentencePiece tokenizer puts `▁` in front of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepend {
    /// Never.
    Never,
    /// To every non-empty segment (the normalizer `Prepend`, Llama 2).
    Always,
    /// To the segment at the start of the text unless it starts with `▁` (Metaspace
    /// `prepend_scheme: "first"`).
    MetaspaceFirst,
    /// To every segment unless it starts with `▁` (Metaspace `prepend_scheme: "always"`).
    MetaspaceAlways,
}

impl Prepend {
    const ALL: [Prepend; 4] = [
        Prepend::Never,
        Prepend::Always,
        Prepend::MetaspaceFirst,
        Prepend::MetaspaceAlways,
    ];

    /// Name in `.ember` metadata (`tokenizer.prepend`).
    pub fn name(self) -> &'static str {
        match self {
            Prepend::Never => "never",
            Prepend::Always => "always",
            Prepend::MetaspaceFirst => "metaspace-first",
            Prepend::MetaspaceAlways => "metaspace-always",
        }
    }

    /// Inverse of [`Prepend::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// The Hugging Face model, normalizer, pre-tokenizer, post-processor and decoder settings that
/// [`super::TokenizerParts`] (vocabulary and added tokens) does not hold.
///
/// Contract checked by [`super::Tokenizer::from_hf_parts`]: every id is in the vocabulary; the
/// result of each merge (the concatenation of its two tokens) is an ordinary token; at most
/// [`MAX_MERGES`] merges and [`MAX_POST_IDS`] ids in `post_prefix` and `post_suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfParts {
    /// How token strings spell their content.
    pub model: HfModelKind,
    /// The split into pre-tokens.
    pub pretokenizer: HfPreTokenizer,
    /// ByteLevel `add_prefix_space`: a segment not starting with a space gets one.
    pub add_prefix_space: bool,
    /// The normalizer applies Unicode NFC (Qwen2).
    pub nfc: bool,
    /// SentencePiece: spaces become `▁` before the model.
    pub replace_space: bool,
    /// SentencePiece: when a `▁` is put in front of a segment.
    pub prepend: Prepend,
    /// Merges in rank order, as (left id, right id).
    pub merges: Vec<[u32; 2]>,
    /// A pre-token that is a token is emitted whole, without merging (Llama 3).
    pub ignore_merges: bool,
    /// Characters that are not tokens become their `<0xNN>` tokens.
    pub byte_fallback: bool,
    /// Consecutive unknown characters give one unknown token.
    pub fuse_unk: bool,
    /// The unknown token, if the model has one.
    pub unk_id: Option<u32>,
    /// Ids the post-processor puts before the text (BOS) when special tokens are added.
    pub post_prefix: Vec<u32>,
    /// Ids the post-processor puts after the text (EOS) when special tokens are added.
    pub post_suffix: Vec<u32>,
    /// The decoder drops one leading space of the decoded text (SentencePiece `Strip`).
    pub strip_leading_space: bool,
    /// Added tokens whose `special` is false (e.g. Qwen2.5's `<tool_call>`): cut out of the text
    /// like the others, but not special for [`super::Tokenizer::is_special`].
    pub nonspecial: Vec<u32>,
    /// Added tokens that take the white space before them into their match (`lstrip`).
    pub lstrip: Vec<u32>,
    /// Added tokens that take the white space after them into their match (`rstrip`).
    pub rstrip: Vec<u32>,
}

/// Lookup structures built from [`HfParts`].
#[derive(Debug, Clone)]
pub(crate) struct HfModel {
    /// The settings, without the merges (`merges` is empty: [`PairMap`] holds them).
    pub(crate) parts: HfParts,
    pub(crate) pairs: PairMap,
    /// `<0xNN>` token of each byte (`NONE` if absent): byte fallback and decoding.
    pub(crate) byte_fallback_tok: [u32; 256],
    /// For each id: the byte it stands for if it is a `<0xNN>` token, else 256 (decoding);
    /// empty for a byte-level vocabulary.
    pub(crate) byte_of: Vec<u16>,
    /// Added tokens by first byte, longest first, as (name, id): a text is scanned once, and
    /// only at bytes that start some added token (`<` for most models) are names compared.
    pub(crate) added_by_first: Vec<Vec<AddedMatch>>,
}

/// An added token as the text scanner sees it.
#[derive(Debug, Clone)]
pub(crate) struct AddedMatch {
    pub(crate) name: Box<[u8]>,
    pub(crate) id: u32,
    pub(crate) lstrip: bool,
    pub(crate) rstrip: bool,
}

/// Open-addressing map (left id, right id) -> (rank, merged id), compact: a hash slot is 4 bytes
/// (7 bits of the pair's hash over the 24-bit rank, [`MAX_MERGES`] = 2^24), the merges 12 bytes
/// each in rank order, at a load of at most 2/3. Llama 3's 280,147 merges take 2 MiB of slots and
/// 3.2 MiB of merges (16-byte slots holding the whole entry at load ≤ 1/2 took 16 MiB); a lookup
/// reads the merge only when the 7 bits match.
#[derive(Debug, Clone)]
pub(crate) struct PairMap {
    /// `tag << 24 | rank`, or [`EMPTY_SLOT`].
    slots: Vec<u32>,
    mask: usize,
    /// (left id, right id, merged id) of each merge, indexed by rank.
    merges: Vec<[u32; 3]>,
}

/// An unused slot (tags are 7 bits, so no used slot has the top bit set).
const EMPTY_SLOT: u32 = u32::MAX;
/// The rank bits of a slot.
const RANK_MASK: u32 = (1 << 24) - 1;

/// Slot index hash and 7-bit tag of the pair (a, b).
#[inline]
fn pair_hash(a: u32, b: u32) -> (usize, u32) {
    let h = ((a as u64) << 32 | b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((h ^ (h >> 29)) as usize, (h >> 57) as u32)
}

impl PairMap {
    /// An empty map for `n` merges.
    pub(crate) fn with_capacity(n: usize) -> Self {
        let cap = (n.max(8) + n / 2).next_power_of_two();
        PairMap {
            slots: vec![EMPTY_SLOT; cap],
            mask: cap - 1,
            merges: Vec::with_capacity(n),
        }
    }

    /// Appends the merge of next rank (ranks are insertion order); a later duplicate of a pair
    /// wins, as in `tokenizers`. At most [`MAX_MERGES`] merges (the caller checks).
    pub(crate) fn insert(&mut self, a: u32, b: u32, merged: u32) {
        let rank = self.merges.len() as u32;
        debug_assert!(rank <= RANK_MASK, "more than MAX_MERGES merges");
        self.merges.push([a, b, merged]);
        let (h, tag) = pair_hash(a, b);
        let mut i = h & self.mask;
        loop {
            let s = self.slots[i];
            if s == EMPTY_SLOT {
                self.slots[i] = tag << 24 | rank;
                return;
            }
            if s >> 24 == tag {
                let [ea, eb, _] = self.merges[(s & RANK_MASK) as usize];
                if (ea, eb) == (a, b) {
                    self.slots[i] = tag << 24 | rank;
                    return;
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    /// (rank, merged id) of the pair, or (`NONE`, `NONE`).
    #[inline]
    pub(crate) fn get(&self, a: u32, b: u32) -> (u32, u32) {
        let (h, tag) = pair_hash(a, b);
        let mut i = h & self.mask;
        loop {
            let s = self.slots[i];
            if s == EMPTY_SLOT {
                return (NONE, NONE);
            }
            if s >> 24 == tag {
                let rank = s & RANK_MASK;
                let [ea, eb, merged] = self.merges[rank as usize];
                if (ea, eb) == (a, b) {
                    return (rank, merged);
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The merges as (left id, right id) in rank order (duplicates included): `HfParts::merges`.
    pub(crate) fn merge_list(&self) -> Vec<[u32; 2]> {
        self.merges.iter().map(|&[a, b, _]| [a, b]).collect()
    }
}

/// A symbol during [`merge`]: its token, and the previous / next live symbol (`NONE`: none).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sym {
    tok: u32,
    prev: u32,
    next: u32,
}

impl Sym {
    /// A symbol for token `tok` (links are set by [`merge`]).
    pub(crate) fn new(tok: u32) -> Self {
        Sym {
            tok,
            prev: NONE,
            next: NONE,
        }
    }
}

/// Merges the symbols `syms` (tokens in order, links unset) with the pair table and appends the
/// result to `out`. `heap` is scratch. Identical to `tokenizers`' `Word::merge_all` without
/// dropout: the live pair of lowest (rank, position) merges first.
pub(crate) fn merge(
    pairs: &PairMap,
    syms: &mut [Sym],
    heap: &mut BinaryHeap<Reverse<u64>>,
    out: &mut Vec<u32>,
) {
    let n = syms.len();
    heap.clear();
    for i in 0..n {
        syms[i].prev = if i == 0 { NONE } else { i as u32 - 1 };
        syms[i].next = if i + 1 < n { i as u32 + 1 } else { NONE };
        if i + 1 < n {
            let (rank, _) = pairs.get(syms[i].tok, syms[i + 1].tok);
            if rank != NONE {
                heap.push(Reverse((rank as u64) << 32 | i as u64));
            }
        }
    }
    // An entry is stale when its left symbol was merged away (tok NONE), has no right
    // neighbour, or the pair there now has another rank (ranks are unique per pair).
    while let Some(Reverse(key)) = heap.pop() {
        let rank = (key >> 32) as u32;
        let left = (key & 0xFFFF_FFFF) as usize;
        let l = syms[left];
        if l.tok == NONE || l.next == NONE {
            continue;
        }
        let right = l.next as usize;
        let (r, merged) = pairs.get(l.tok, syms[right].tok);
        if r != rank {
            continue;
        }
        let after = syms[right].next;
        syms[right].tok = NONE;
        syms[left].tok = merged;
        syms[left].next = after;
        if after != NONE {
            syms[after as usize].prev = left as u32;
            let (r, _) = pairs.get(merged, syms[after as usize].tok);
            if r != NONE {
                heap.push(Reverse((r as u64) << 32 | left as u64));
            }
        }
        if l.prev != NONE {
            let p = l.prev as usize;
            let (r, _) = pairs.get(syms[p].tok, merged);
            if r != NONE {
                heap.push(Reverse((r as u64) << 32 | p as u64));
            }
        }
    }
    let mut i = if n == 0 { NONE } else { 0 };
    while i != NONE {
        out.push(syms[i as usize].tok);
        i = syms[i as usize].next;
    }
}

/// End of the pre-token starting at `i` of `text` (`i < text.len()`). For
/// [`HfPreTokenizer::Gpt2Digits`], `text` must hold no number character after `i` (the caller
/// cuts the numbers out first).
#[inline]
pub(crate) fn pretoken_end(p: HfPreTokenizer, text: &str, i: usize) -> usize {
    match p {
        HfPreTokenizer::Whole => text.len(),
        HfPreTokenizer::Gpt2 | HfPreTokenizer::Gpt2Digits => pretok::piece_end_outlined(text, i),
        HfPreTokenizer::Llama3 => pretok_llama3::piece_end(text, i, 3),
        HfPreTokenizer::Qwen2 => pretok_llama3::piece_end(text, i, 1),
    }
}

/// Parses a `<0xNN>` token name (upper-case hex, as `tokenizers` writes and reads it).
pub(crate) fn byte_token_value(t: &[u8]) -> Option<u8> {
    match *t {
        [b'<', b'0', b'x', h, l, b'>'] => {
            let hex = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'A'..=b'F' => Some(c - b'A' + 10),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            };
            Some(hex(h)? << 4 | hex(l)?)
        }
        _ => None,
    }
}

/// Builds the lookup structures, validating `parts` against the vocabulary (`token(id)` gives
/// an id's bytes, `map` the ordinary tokens, `n` ids).
pub(crate) fn build<'a>(
    mut parts: HfParts,
    added: impl Iterator<Item = (&'a str, u32)>,
    n: usize,
    map: &RankMap,
    bytes: &[u8],
    ends: &[u32],
    token: impl Fn(u32) -> Option<&'a [u8]>,
) -> Result<HfModel, TokenizerError> {
    let err = |field, index, detail| TokenizerError::Parts {
        field,
        index,
        detail,
    };
    if parts.merges.len() > MAX_MERGES {
        return Err(err("merges", MAX_MERGES, "more merges than MAX_MERGES"));
    }
    let mut pairs = PairMap::with_capacity(parts.merges.len());
    let mut joined = Vec::new();
    for (rank, &[a, b]) in parts.merges.iter().enumerate() {
        let (Some(ta), Some(tb)) = (token(a), token(b)) else {
            return Err(err("merges", rank, "id out of range"));
        };
        joined.clear();
        joined.extend_from_slice(ta);
        joined.extend_from_slice(tb);
        let merged = map.get_outlined(&joined, bytes, ends);
        if merged == NONE {
            return Err(err("merges", rank, "merge result is not an ordinary token"));
        }
        pairs.insert(a, b, merged);
    }
    // The pair table holds the merges from here on (`Tokenizer::hf_parts` lists them again).
    parts.merges = Vec::new();
    for (field, ids) in [
        ("post_prefix", &parts.post_prefix),
        ("post_suffix", &parts.post_suffix),
    ] {
        if ids.len() > MAX_POST_IDS {
            return Err(err(field, MAX_POST_IDS, "more than MAX_POST_IDS ids"));
        }
        if let Some(k) = ids.iter().position(|&id| id as usize >= n) {
            return Err(err(field, k, "id out of range"));
        }
    }
    if let Some(k) = parts.nonspecial.iter().position(|&id| id as usize >= n) {
        return Err(err("nonspecial", k, "id out of range"));
    }
    if parts.unk_id.is_some_and(|id| id as usize >= n) {
        return Err(err("unk_id", 0, "id out of range"));
    }
    let mut byte_fallback_tok = [NONE; 256];
    // Byte-level vocabularies have no `<0xNN>` tokens: no table (every lookup misses, as 256).
    let mut byte_of = Vec::new();
    if parts.model == HfModelKind::SentencePiece {
        byte_of = vec![256u16; n];
        for id in 0..n as u32 {
            if let Some(v) = token(id).and_then(byte_token_value) {
                byte_of[id as usize] = v as u16;
                if byte_fallback_tok[v as usize] == NONE {
                    byte_fallback_tok[v as usize] = id;
                }
            }
        }
    }
    for (field, ids) in [("lstrip", &parts.lstrip), ("rstrip", &parts.rstrip)] {
        if let Some(k) = ids.iter().position(|&id| id as usize >= n) {
            return Err(err(field, k, "id out of range"));
        }
    }
    let mut added_by_first: Vec<Vec<AddedMatch>> = vec![Vec::new(); 256];
    for (name, id) in added {
        if let Some(&b0) = name.as_bytes().first() {
            added_by_first[b0 as usize].push(AddedMatch {
                name: name.as_bytes().into(),
                id,
                lstrip: parts.lstrip.contains(&id),
                rstrip: parts.rstrip.contains(&id),
            });
        }
    }
    for list in &mut added_by_first {
        list.sort_by_key(|m| std::cmp::Reverse(m.name.len()));
    }
    Ok(HfModel {
        parts,
        pairs,
        byte_fallback_tok,
        byte_of,
        added_by_first,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Slow twin of [`merge`]: a full rescan per merge for the pair of lowest (rank, position).
    fn reference_merge(pairs: &HashMap<(u32, u32), (u32, u32)>, toks: &[u32]) -> Vec<u32> {
        let mut t = toks.to_vec();
        loop {
            let best = (0..t.len().saturating_sub(1))
                .filter_map(|i| pairs.get(&(t[i], t[i + 1])).map(|&(r, m)| (r, i, m)))
                .min();
            let Some((_, i, m)) = best else { break };
            t[i] = m;
            t.remove(i + 1);
        }
        t
    }

    #[test]
    fn heap_merge_equals_the_reference_on_random_words() {
        let mut state = 0x1234_5678_9ABC_DEF1u64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n) as u32
        };
        for round in 0..200 {
            // Symbols 0..6, merged ids 10.. ; random pairs with distinct ranks.
            let mut map = HashMap::new();
            let mut pairs = PairMap::with_capacity(64);
            let mut rank = 0;
            for _ in 0..30 {
                let (a, b) = (next(6 + round % 20), next(6 + round % 20));
                if let std::collections::hash_map::Entry::Vacant(e) = map.entry((a, b)) {
                    let merged = 6 + next(20);
                    e.insert((rank, merged));
                    pairs.insert(a, b, merged);
                    rank += 1;
                }
            }
            for _ in 0..20 {
                let len = 1 + next(40) as usize;
                let toks: Vec<u32> = (0..len).map(|_| next(6)).collect();
                let mut syms: Vec<Sym> = toks.iter().map(|&t| Sym::new(t)).collect();
                let mut out = Vec::new();
                merge(&pairs, &mut syms, &mut BinaryHeap::new(), &mut out);
                assert_eq!(out, reference_merge(&map, &toks), "{toks:?}");
            }
        }
    }

    #[test]
    fn a_later_duplicate_pair_wins_and_every_merge_is_listed() {
        let mut pairs = PairMap::with_capacity(4);
        pairs.insert(1, 2, 10);
        pairs.insert(3, 4, 11);
        pairs.insert(1, 2, 12);
        assert_eq!(pairs.get(1, 2), (2, 12));
        assert_eq!(pairs.get(3, 4), (1, 11));
        assert_eq!(pairs.get(2, 1), (NONE, NONE));
        assert_eq!(pairs.merge_list(), [[1, 2], [3, 4], [1, 2]]);
    }

    #[test]
    fn a_full_table_finds_every_pair() {
        // 2/3 load at most: probe runs cross slot boundaries and wrap around.
        let n = 5000;
        let mut pairs = PairMap::with_capacity(n);
        let key = |i: u32| (3 * i + 1, i % 7); // distinct pairs
        for i in 0..n as u32 {
            let (a, b) = key(i);
            pairs.insert(a, b, i + 1_000_000);
        }
        for i in 0..n as u32 {
            let (a, b) = key(i);
            assert_eq!(pairs.get(a, b), (i, i + 1_000_000), "{i}");
            assert_eq!(pairs.get(a, b + 7), (NONE, NONE), "{i}");
        }
    }

    #[test]
    fn byte_token_names_parse() {
        assert_eq!(byte_token_value(b"<0x0A>"), Some(10));
        assert_eq!(byte_token_value(b"<0xff>"), Some(255));
        assert_eq!(byte_token_value(b"<0xG0>"), None);
        assert_eq!(byte_token_value(b"<0x0A"), None);
    }
}
