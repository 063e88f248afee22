//! The byte-pair merge of one piece (tiktoken's rule: rank == token id) and the rank lookup.
//!
//! Letters used in this module: P = bytes in the piece being merged, V = vocabulary size.
//!
//! Rule: start from the piece's single bytes; repeatedly merge the adjacent pair whose
//! concatenation is a token of lowest rank (ties: the leftmost pair); stop when no adjacent
//! concatenation is a token. Two implementations give identical output: [`merge_small`] (a flat
//! array scanned per merge, O(P²) but cache-friendly, for short pieces) and [`merge_large`]
//! (linked nodes and a min-heap, O(P log P), for long runs such as thousands of spaces).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Rank value meaning "not a token".
pub(crate) const NONE: u32 = u32::MAX;

/// Pieces of at least this many bytes use [`merge_large`].
pub(crate) const LARGE_PIECE: usize = 96;

/// Hash of a byte string (multiply-xorshift over 8-byte words; short strings read with
/// overlapping loads). Not DoS-resistant: the keys are the vocabulary, chosen by the model file.
#[inline]
pub(crate) fn hash_bytes(b: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let n = b.len();
    let mut h = (n as u64).wrapping_mul(0xA076_1D64_78BD_642F);
    let word = if n >= 8 {
        let mut i = 0;
        while i + 8 < n {
            let w = u64::from_le_bytes([
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
                b[i + 4],
                b[i + 5],
                b[i + 6],
                b[i + 7],
            ]);
            h = (h ^ w).wrapping_mul(K).rotate_left(31);
            i += 8;
        }
        let t = &b[n - 8..];
        u64::from_le_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]])
    } else if n >= 4 {
        let lo = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64;
        let t = &b[n - 4..];
        let hi = u32::from_le_bytes([t[0], t[1], t[2], t[3]]) as u64;
        lo | hi << 32
    } else if n > 0 {
        (b[0] as u64) | (b[n / 2] as u64) << 8 | (b[n - 1] as u64) << 16
    } else {
        0
    };
    h = (h ^ word).wrapping_mul(K);
    h ^= h >> 29;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^ (h >> 32)
}

/// Open-addressing (linear probing) map from token bytes to token id. A slot holds the high 32
/// bits of the key's hash and the id; the bytes themselves live in the tokenizer's token table.
#[derive(Clone)]
pub(crate) struct RankMap {
    slots: Vec<(u32, u32)>,
    mask: usize,
}

impl RankMap {
    /// An empty map sized for `n` keys (load factor at most 2/3: GPT-2's 50,257 ids get 2^17
    /// slots as at 1/2, Qwen's 151,936 get 2^18, 2 MiB, not 4).
    pub(crate) fn with_capacity(n: usize) -> Self {
        let cap = (n.max(8) + n / 2).next_power_of_two();
        RankMap {
            slots: vec![(0, NONE); cap],
            mask: cap - 1,
        }
    }

    /// Inserts `key -> id`; returns the id already stored for an equal key instead, if any.
    /// `bytes_of(id)` gives a stored id's bytes.
    pub(crate) fn insert<'a>(
        &mut self,
        key: &[u8],
        id: u32,
        bytes_of: impl Fn(u32) -> &'a [u8],
    ) -> Option<u32> {
        let h = hash_bytes(key);
        let tag = (h >> 32) as u32;
        let mut i = h as usize & self.mask;
        loop {
            let (t, v) = self.slots[i];
            if v == NONE {
                self.slots[i] = (tag, id);
                return None;
            }
            if t == tag && bytes_of(v) == key {
                return Some(v);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// [`RankMap::get`] for the Hugging Face paths, never inlined, so that the GPT-2 encode loop
    /// keeps the code generation it was tuned with.
    #[inline(never)]
    pub(crate) fn get_outlined(&self, key: &[u8], bytes: &[u8], ends: &[u32]) -> u32 {
        self.get(key, bytes, ends)
    }

    /// The id of the token whose bytes are `key`.
    #[inline]
    pub(crate) fn get(&self, key: &[u8], bytes: &[u8], ends: &[u32]) -> u32 {
        let h = hash_bytes(key);
        let tag = (h >> 32) as u32;
        let mut i = h as usize & self.mask;
        loop {
            let (t, v) = self.slots[i];
            if v == NONE {
                return NONE;
            }
            if t == tag {
                let end = ends[v as usize] as usize;
                let start = if v == 0 {
                    0
                } else {
                    ends[v as usize - 1] as usize
                };
                if &bytes[start..end] == key {
                    return v;
                }
            }
            i = (i + 1) & self.mask;
        }
    }
}

/// Rank lookup used by the merges: the byte-pair table for two bytes, the map otherwise.
pub(crate) struct Ranks<'a> {
    pub(crate) map: &'a RankMap,
    pub(crate) pair: &'a [u32],
    pub(crate) bytes: &'a [u8],
    pub(crate) ends: &'a [u32],
}

impl Ranks<'_> {
    #[inline]
    fn of(&self, s: &[u8]) -> u32 {
        if s.len() == 2 {
            self.pair[(s[0] as usize) << 8 | s[1] as usize]
        } else {
            self.map.get(s, self.bytes, self.ends)
        }
    }
}

/// One part of a piece during [`merge_small`]: its start, the rank of merging it with the next
/// part, and its token.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Part {
    start: u32,
    rank: u32,
    tok: u32,
}

/// Merges `piece` (P >= 2 bytes, `byte_tok[b]` the token of byte `b`) and appends its tokens to
/// `out`. `parts` is scratch.
pub(crate) fn merge_small(
    r: &Ranks<'_>,
    byte_tok: &[u32; 256],
    piece: &[u8],
    parts: &mut Vec<Part>,
    out: &mut Vec<u32>,
) {
    let n = piece.len();
    parts.clear();
    for i in 0..n {
        let rank = if i + 1 < n {
            r.pair[(piece[i] as usize) << 8 | piece[i + 1] as usize]
        } else {
            NONE
        };
        parts.push(Part {
            start: i as u32,
            rank,
            tok: byte_tok[piece[i] as usize],
        });
    }
    // Sentinel: its start is the end of the last real part.
    parts.push(Part {
        start: n as u32,
        rank: NONE,
        tok: NONE,
    });
    loop {
        let mut best = NONE;
        let mut at = 0;
        for (i, p) in parts.iter().enumerate() {
            if p.rank < best {
                best = p.rank;
                at = i;
            }
        }
        if best == NONE {
            break;
        }
        // Merge parts `at` and `at + 1`: the new part spans parts[at].start..parts[at + 2].start.
        parts[at].tok = best;
        parts[at].rank = if at + 3 < parts.len() {
            r.of(&piece[parts[at].start as usize..parts[at + 3].start as usize])
        } else {
            NONE
        };
        if at > 0 {
            parts[at - 1].rank =
                r.of(&piece[parts[at - 1].start as usize..parts[at + 2].start as usize]);
        }
        parts.remove(at + 1);
    }
    out.extend(parts[..parts.len() - 1].iter().map(|p| p.tok));
}

/// A part of a piece during [`merge_large`], indexed by its start byte.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Node {
    /// End of this part (start of the next one).
    end: u32,
    /// Start of the previous part (`NONE` for the first).
    prev: u32,
    /// Rank of merging this part with the next (`NONE`: not a token, or no next part).
    rank: u32,
    tok: u32,
}

/// Same contract as [`merge_small`], in O(P log P). `nodes` and `heap` are scratch.
pub(crate) fn merge_large(
    r: &Ranks<'_>,
    byte_tok: &[u32; 256],
    piece: &[u8],
    nodes: &mut Vec<Node>,
    heap: &mut BinaryHeap<Reverse<u64>>,
    out: &mut Vec<u32>,
) {
    let n = piece.len();
    nodes.clear();
    heap.clear();
    for i in 0..n {
        let rank = if i + 1 < n {
            r.pair[(piece[i] as usize) << 8 | piece[i + 1] as usize]
        } else {
            NONE
        };
        if rank != NONE {
            heap.push(Reverse((rank as u64) << 32 | i as u64));
        }
        nodes.push(Node {
            end: i as u32 + 1,
            prev: if i == 0 { NONE } else { i as u32 - 1 },
            rank,
            tok: byte_tok[piece[i] as usize],
        });
    }
    // A heap entry (rank, start) is live iff the part at `start` still exists (its `end` is set
    // only on live parts we reach through `prev`/`end`) and still has this merge rank: a
    // merged-away part gets rank NONE, and a grown part gets a new rank.
    while let Some(Reverse(key)) = heap.pop() {
        let rank = (key >> 32) as u32;
        let left = (key & 0xFFFF_FFFF) as usize;
        if nodes[left].rank != rank {
            continue;
        }
        let right = nodes[left].end as usize;
        let right_end = nodes[right].end as usize;
        nodes[right].rank = NONE;
        nodes[left].end = right_end as u32;
        nodes[left].tok = rank;
        nodes[left].rank = if right_end < n {
            r.of(&piece[left..nodes[right_end].end as usize])
        } else {
            NONE
        };
        if nodes[left].rank != NONE {
            heap.push(Reverse((nodes[left].rank as u64) << 32 | left as u64));
        }
        if right_end < n {
            nodes[right_end].prev = left as u32;
        }
        let prev = nodes[left].prev;
        if prev != NONE {
            let p = prev as usize;
            nodes[p].rank = r.of(&piece[p..right_end]);
            if nodes[p].rank != NONE {
                heap.push(Reverse((nodes[p].rank as u64) << 32 | p as u64));
            }
        }
    }
    let mut i = 0;
    while i < n {
        out.push(nodes[i].tok);
        i = nodes[i].end as usize;
    }
}
