//! Byte-level BPE training (the standard incremental algorithm).
//!
//! Letters used in this module: W = distinct pre-tokenizer pieces ("words") in the corpus,
//! L = symbols in one word.
//!
//! 1. Split each text on `<|endoftext|>` (never merged across), pre-tokenize with GPT-2's rule
//!    and count each distinct piece once: word -> count.
//! 2. Count every adjacent symbol pair (weighted by word count) and remember which words contain
//!    it.
//! 3. Repeatedly take the most frequent pair (ties: the smallest (left id, right id)), give the
//!    concatenation the next id, and rewrite only the words that contain the pair, updating the
//!    pair counts of those words. A max-heap with lazy invalidation finds the best pair: an entry
//!    whose count is stale is re-pushed with the current count. Counts of pairs that do not
//!    involve the new token can only fall, and every pair that involves it is pushed afresh, so
//!    the first up-to-date entry popped is the true maximum.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use super::{ENDOFTEXT, MAX_VOCAB_SIZE, Tokenizer, TokenizerError, pieces};

/// Options of [`train_bpe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainOptions {
    /// Stop merging (with a smaller vocabulary than asked) when the most frequent pair occurs
    /// fewer times than this. Default 2: a pair seen once teaches nothing.
    pub min_pair_count: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions { min_pair_count: 2 }
    }
}

/// A fast, deterministic (unseeded) hasher for the trainer's maps.
#[derive(Default, Clone, Copy)]
struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        let h = self.0.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^ (h >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = (self.0 ^ super::bpe::hash_bytes(bytes)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(23) ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

fn pair_key(a: u32, b: u32) -> u64 {
    (a as u64) << 32 | b as u64
}

/// Trains a byte-level BPE vocabulary of `vocab_size` ids on `texts`.
///
/// Layout of the result: ids 0..=255 are the single bytes in byte-value order (unlike GPT-2's
/// own vocabulary, whose first 256 ids follow its printable-byte alphabet), then one id per merge
/// in the order learned (so id == merge rank, as [`Tokenizer::encode`] requires), and
/// `<|endoftext|>` last. If a merge's bytes already are a token (two different pairs can spell
/// the same bytes), that merge reuses the existing id. Training stops early (a smaller
/// vocabulary) when no pair occurs at least `opts.min_pair_count` times.
///
/// Deterministic: the same texts and arguments give the same vocabulary.
pub fn train_bpe(
    texts: &[&str],
    vocab_size: usize,
    opts: &TrainOptions,
) -> Result<Tokenizer, TokenizerError> {
    const MIN: usize = 257;
    if !(MIN..=MAX_VOCAB_SIZE).contains(&vocab_size) {
        return Err(TokenizerError::TrainVocabSize {
            requested: vocab_size,
            min: MIN,
            max: MAX_VOCAB_SIZE,
        });
    }

    // 1. Distinct pieces and their counts, in order of first appearance.
    let mut index: FastMap<&str, u32> = FastMap::default();
    let mut words: Vec<Vec<u32>> = Vec::new();
    let mut counts: Vec<i64> = Vec::new();
    for text in texts {
        for segment in text.split(ENDOFTEXT) {
            for piece in pieces(segment) {
                match index.entry(piece) {
                    Entry::Occupied(e) => counts[*e.get() as usize] += 1,
                    Entry::Vacant(e) => {
                        e.insert(words.len() as u32);
                        words.push(piece.bytes().map(u32::from).collect());
                        counts.push(1);
                    }
                }
            }
        }
    }
    drop(index);

    // 2. Pair counts and the words containing each pair.
    let mut vocab: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let mut vocab_ids: FastMap<Vec<u8>, u32> = FastMap::default();
    for (id, t) in vocab.iter().enumerate() {
        vocab_ids.insert(t.clone(), id as u32);
    }
    let mut pair_count: FastMap<u64, i64> = FastMap::default();
    let mut where_: FastMap<u64, Vec<u32>> = FastMap::default();
    for (w, word) in words.iter().enumerate() {
        for p in word.windows(2) {
            let k = pair_key(p[0], p[1]);
            *pair_count.entry(k).or_insert(0) += counts[w];
            let list = where_.entry(k).or_default();
            if list.last() != Some(&(w as u32)) {
                list.push(w as u32);
            }
        }
    }
    let mut heap: BinaryHeap<(i64, Reverse<u64>)> =
        pair_count.iter().map(|(&k, &c)| (c, Reverse(k))).collect();

    // 3. Merge.
    let mut last_seen: Vec<u32> = vec![u32::MAX; words.len()];
    let mut changed: Vec<u64> = Vec::new();
    let mut rewritten: Vec<u32> = Vec::new();
    let min_count = i64::try_from(opts.min_pair_count).unwrap_or(i64::MAX);
    let mut merge_no = 0u32;
    while vocab.len() < vocab_size - 1 {
        let Some((count, Reverse(key))) = heap.pop() else {
            break;
        };
        let current = pair_count.get(&key).copied().unwrap_or(0);
        if current != count {
            if current > 0 {
                heap.push((current, Reverse(key)));
            }
            continue;
        }
        if count < min_count {
            break;
        }
        let (a, b) = ((key >> 32) as u32, key as u32);
        let mut joined = vocab[a as usize].clone();
        joined.extend_from_slice(&vocab[b as usize]);
        let id = match vocab_ids.entry(joined) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                let id = vocab.len() as u32;
                vocab.push(e.key().clone());
                e.insert(id);
                id
            }
        };
        changed.clear();
        for w in where_.remove(&key).unwrap_or_default() {
            let wi = w as usize;
            if last_seen[wi] == merge_no {
                continue;
            }
            last_seen[wi] = merge_no;
            let word = &mut words[wi];
            if !word.windows(2).any(|p| p[0] == a && p[1] == b) {
                continue; // stale entry: an earlier merge rewrote this pair away
            }
            let c = counts[wi];
            for p in word.windows(2) {
                if let Some(n) = pair_count.get_mut(&pair_key(p[0], p[1])) {
                    *n -= c;
                }
            }
            rewritten.clear();
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == a && word[i + 1] == b {
                    rewritten.push(id);
                    i += 2;
                } else {
                    rewritten.push(word[i]);
                    i += 1;
                }
            }
            std::mem::swap(word, &mut rewritten);
            for p in word.windows(2) {
                let k = pair_key(p[0], p[1]);
                *pair_count.entry(k).or_insert(0) += c;
                if p[0] == id || p[1] == id {
                    where_.entry(k).or_default().push(w);
                    changed.push(k);
                }
            }
        }
        pair_count.remove(&key);
        changed.sort_unstable();
        changed.dedup();
        for &k in &changed {
            if let Some(&n) = pair_count.get(&k) {
                heap.push((n, Reverse(k)));
            }
        }
        merge_no += 1;
    }

    let eot = vocab.len() as u32;
    vocab.push(ENDOFTEXT.as_bytes().to_vec());
    Tokenizer::from_token_list(vocab.iter().map(Vec::as_slice), &[(ENDOFTEXT, eot)])
}
