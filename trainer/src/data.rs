//! Text files → token ids → the book's sliding-window batches (`GPTDatasetV1`, ch02/ch05).
//!
//! Letters: N tokens in a split, W windows, B batch size, T context (window length), S stride.
//!
//! Pipeline, as the book's ch05 runs it:
//! 1. read every file (UTF-8, non-empty), join them with `<|endoftext|>` between them;
//! 2. split BY CHARACTERS: the first ⌊0.9 · chars⌋ characters train, the rest validate;
//! 3. tokenize each part separately (special tokens allowed), cached on disk by content;
//! 4. windows: for i in (0..N−T).step_by(S): x = ids[i..i+T], y = ids[i+1..i+T+1];
//! 5. train batches: a seeded shuffle of the windows per epoch, incomplete last batch dropped;
//!    validation batches: in order, the last one may be smaller.

use emberlm_formats::ember::write_atomically;
use emberlm_formats::tokenizer::{ENDOFTEXT, SpecialTokens, Tokenizer};
use std::fmt;
use std::path::{Path, PathBuf};

/// The book's train fraction (`train_ratio = 0.90`).
pub const TRAIN_RATIO: f64 = 0.9;

/// Why data could not be prepared. Every variant names the file (or the split) at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataError {
    /// The file could not be read.
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        reason: String,
    },
    /// A directory was given where a text file was expected.
    IsDirectory {
        /// The path.
        path: PathBuf,
    },
    /// The file holds no bytes.
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file is not UTF-8.
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// A split has too few tokens for one window.
    TooShort {
        /// `training` or `validation`.
        split: &'static str,
        /// Tokens in that split.
        tokens: usize,
        /// The window length T.
        context: usize,
    },
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::Io { path, reason } => write!(f, "{}: {reason}", path.display()),
            DataError::IsDirectory { path } => {
                write!(
                    f,
                    "{}: is a directory, expected a text file",
                    path.display()
                )
            }
            DataError::Empty { path } => write!(f, "{}: the file is empty", path.display()),
            DataError::NotUtf8 { path, offset } => write!(
                f,
                "{}: invalid UTF-8 at byte offset {offset} (the trainer reads UTF-8 text)",
                path.display()
            ),
            DataError::TooShort {
                split,
                tokens,
                context,
            } => write!(
                f,
                "the {split} split has {tokens} tokens, need at least context+1 = {} \
                 (give more text or a smaller --context)",
                context + 1
            ),
        }
    }
}

impl std::error::Error for DataError {}

/// A text file that was read: its path, size and content fingerprint (recorded in checkpoints).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The path as given.
    pub path: PathBuf,
    /// Size in bytes.
    pub bytes: u64,
    /// [`fingerprint`] of the bytes.
    pub hash: u64,
}

/// Reads a UTF-8 text file, refusing directories, empty files and invalid UTF-8.
pub fn read_text(path: &Path) -> Result<(String, Source), DataError> {
    if path.is_dir() {
        return Err(DataError::IsDirectory {
            path: path.to_path_buf(),
        });
    }
    if let Some(kind) = device_kind(path) {
        return Err(DataError::Io {
            path: path.to_path_buf(),
            reason: format!("is a {kind}, expected a text file"),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        reason: io_reason(&e),
    })?;
    if bytes.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    let source = Source {
        path: path.to_path_buf(),
        bytes: bytes.len() as u64,
        hash: fingerprint(&bytes),
    };
    let text = String::from_utf8(bytes).map_err(|e| DataError::NotUtf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })?;
    Ok((text, source))
}

/// `Some("character device")` (or block device, socket) when `path` is one: reading such a
/// "file" to its end may never finish (`/dev/zero`, `/dev/urandom`) while memory grows without
/// bound. Regular files and pipes (`<(command)`, `/dev/stdin`) are readable (`None`).
pub fn device_kind(path: &Path) -> Option<&'static str> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = std::fs::metadata(path).ok()?.file_type();
        if t.is_char_device() {
            return Some("character device");
        }
        if t.is_block_device() {
            return Some("block device");
        }
        if t.is_socket() {
            return Some("socket");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    None
}

/// A short, human reason for an I/O error (`No such file or directory`, …).
pub fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// The texts joined with `<|endoftext|>` between them (the book's convention for several
/// documents).
pub fn join_texts(texts: &[&str]) -> String {
    texts.join(ENDOFTEXT)
}

/// Splits `text` after its first ⌊ratio · chars⌋ characters (Python's `int(0.9 * len(text))`).
pub fn split_chars(text: &str, ratio: f64) -> (&str, &str) {
    let chars = text.chars().count();
    let split = (ratio * chars as f64).floor() as usize;
    let byte = text
        .char_indices()
        .nth(split)
        .map_or(text.len(), |(i, _)| i);
    text.split_at(byte)
}

/// A 64-bit content fingerprint (not cryptographic; stable across runs and platforms): eight
/// bytes at a time through a multiply-rotate mix, with the length folded in.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = 0x243F_6A88_85A3_08D3u64 ^ (bytes.len() as u64).wrapping_mul(K);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ w).wrapping_mul(K).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    mix64(h)
}

/// SplitMix64's finaliser: a bijective scramble of 64 bits.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The identity of a tokenizer: a fingerprint of its whole vocabulary and special tokens.
pub fn tokenizer_fingerprint(tok: &Tokenizer) -> u64 {
    let p = tok.to_parts();
    let mut bytes = p.tokens;
    for e in p.token_ends {
        bytes.extend_from_slice(&e.to_le_bytes());
    }
    for (name, id) in p.special_names.iter().zip(&p.special_ids) {
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend_from_slice(&id.to_le_bytes());
    }
    fingerprint(&bytes)
}

/// Token ids of the two splits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSplits {
    /// The training split's ids.
    pub train: Vec<u32>,
    /// The validation split's ids.
    pub val: Vec<u32>,
}

/// Where the token cache lives: `$EMBER_CACHE`, else `$XDG_CACHE_HOME/emberlm`, else
/// `~/.cache/emberlm`; `None` when none of them is set.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("EMBER_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("emberlm")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("emberlm")))
}

/// How the token ids were obtained (for the user's information).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Read from this cache file; nothing was tokenized.
    Hit(PathBuf),
    /// Tokenized and written to this cache file.
    Stored(PathBuf),
    /// Tokenized; the cache could not be used (the reason).
    Unavailable(String),
}

const CACHE_MAGIC: &[u8; 8] = b"EMBTOK1\0";

/// The two splits of `texts` (joined, split by characters at `ratio`, each tokenized with
/// special tokens allowed), from the cache in `cache` when an entry for the same file contents,
/// tokenizer and ratio exists, else tokenized and stored there atomically.
pub fn load_splits(
    texts: &[&str],
    tok: &Tokenizer,
    ratio: f64,
    cache: Option<&Path>,
) -> (TokenSplits, CacheStatus) {
    let mut key_bytes = Vec::new();
    key_bytes.extend_from_slice(CACHE_MAGIC);
    for t in texts {
        key_bytes.extend_from_slice(&fingerprint(t.as_bytes()).to_le_bytes());
        key_bytes.extend_from_slice(&(t.len() as u64).to_le_bytes());
    }
    key_bytes.extend_from_slice(&tokenizer_fingerprint(tok).to_le_bytes());
    key_bytes.extend_from_slice(&ratio.to_bits().to_le_bytes());
    let key = fingerprint(&key_bytes);
    let file = cache.map(|d| d.join(format!("tokens-{key:016x}.bin")));
    if let Some(f) = &file {
        if let Some(splits) = std::fs::read(f).ok().and_then(|b| decode_cache(&b)) {
            return (splits, CacheStatus::Hit(f.clone()));
        }
    }
    let joined = join_texts(texts);
    let (a, b) = split_chars(&joined, ratio);
    let splits = TokenSplits {
        train: tok.encode_to_vec(a, SpecialTokens::Allow),
        val: tok.encode_to_vec(b, SpecialTokens::Allow),
    };
    let status = match (&file, cache) {
        (Some(f), Some(dir)) => {
            let written = std::fs::create_dir_all(dir)
                .and_then(|_| write_atomically(f, |w| w.write_all(&encode_cache(&splits))));
            match written {
                Ok(()) => CacheStatus::Stored(f.clone()),
                Err(e) => CacheStatus::Unavailable(format!("{}: {e}", f.display())),
            }
        }
        _ => CacheStatus::Unavailable(
            "no cache directory (set EMBER_CACHE, XDG_CACHE_HOME or HOME)".into(),
        ),
    };
    (splits, status)
}

fn encode_cache(s: &TokenSplits) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + 4 * (s.train.len() + s.val.len()));
    out.extend_from_slice(CACHE_MAGIC);
    out.extend_from_slice(&(s.train.len() as u64).to_le_bytes());
    out.extend_from_slice(&(s.val.len() as u64).to_le_bytes());
    for id in s.train.iter().chain(&s.val) {
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// The splits stored in a cache file, `None` if it is malformed in any way.
fn decode_cache(b: &[u8]) -> Option<TokenSplits> {
    let u64_at =
        |o: usize| -> Option<u64> { Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?)) };
    if b.get(..8)? != CACHE_MAGIC {
        return None;
    }
    let nt = usize::try_from(u64_at(8)?).ok()?;
    let nv = usize::try_from(u64_at(16)?).ok()?;
    let body = b.get(24..)?;
    if body.len() != nt.checked_add(nv)?.checked_mul(4)? {
        return None;
    }
    let ids: Vec<u32> = body
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some(TokenSplits {
        train: ids[..nt].to_vec(),
        val: ids[nt..].to_vec(),
    })
}

/// Start offsets of the book's windows over N tokens: `range(0, N − T, S)` (empty when N ≤ T).
pub fn window_starts(n_tokens: usize, context: usize, stride: usize) -> Vec<usize> {
    if n_tokens <= context || stride == 0 {
        return Vec::new();
    }
    (0..n_tokens - context).step_by(stride).collect()
}

/// A split's token ids: in memory, or a run of memory-mapped shards ([`crate::shards`]) read on
/// demand, so that a corpus of any size costs no memory.
#[derive(Debug)]
pub enum Ids {
    /// Held in memory.
    Memory(Vec<u32>),
    /// Shards, in order, with the global index of each one's first token.
    Shards(Vec<(u64, crate::shards::Shard)>),
}

impl Ids {
    /// The shards of `infos` in `dir`, mapped and checked against the manifest.
    pub fn open_shards(
        dir: &Path,
        infos: &[crate::shards::ShardInfo],
        width: crate::shards::Width,
    ) -> Result<Ids, crate::shards::ShardError> {
        let mut at = 0u64;
        let mut v = Vec::with_capacity(infos.len());
        for s in infos {
            v.push((
                at,
                crate::shards::Shard::open(&dir.join(&s.file), width, s.tokens)?,
            ));
            at += s.tokens;
        }
        Ok(Ids::Shards(v))
    }

    /// N.
    pub fn len(&self) -> usize {
        match self {
            Ids::Memory(v) => v.len(),
            Ids::Shards(v) => v.last().map_or(0, |(at, s)| *at as usize + s.len()),
        }
    }

    /// Whether there are no ids.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends ids [start, start + n) to `out`, mapped by `f`.
    fn extend<T>(&self, start: usize, n: usize, out: &mut Vec<T>, f: impl Fn(u32) -> T) {
        match self {
            Ids::Memory(v) => out.extend(v[start..start + n].iter().map(|&x| f(x))),
            Ids::Shards(v) => {
                let mut i = start;
                while i < start + n {
                    // The shard holding token i: the last one starting at or before it.
                    let k = v.partition_point(|(at, _)| *at as usize <= i) - 1;
                    let (at, shard) = &v[k];
                    let local = i - *at as usize;
                    let take = (shard.len() - local).min(start + n - i);
                    out.extend((local..local + take).map(|j| f(shard.get(j))));
                    i += take;
                }
            }
        }
    }
}

/// One split as windows over its ids: window w starts at w·stride (the book's
/// `range(0, N − T, S)`), computed rather than listed so that memory does not grow with N.
#[derive(Debug)]
pub struct Windows {
    /// The split's ids (N).
    pub ids: Ids,
    /// Number of windows (W).
    count: usize,
    /// S.
    pub stride: usize,
    /// T.
    pub context: usize,
}

impl Windows {
    /// The windows of `ids` with length `context` and `stride`; an error naming `split` when
    /// there is not even one.
    pub fn new(
        ids: Vec<u32>,
        context: usize,
        stride: usize,
        split: &'static str,
    ) -> Result<Windows, DataError> {
        Windows::over(Ids::Memory(ids), context, stride, split)
    }

    /// [`Windows::new`] over any [`Ids`].
    pub fn over(
        ids: Ids,
        context: usize,
        stride: usize,
        split: &'static str,
    ) -> Result<Windows, DataError> {
        let n = ids.len();
        let count = if n <= context || stride == 0 {
            0
        } else {
            (n - context).div_ceil(stride)
        };
        if count == 0 {
            return Err(DataError::TooShort {
                split,
                tokens: n,
                context,
            });
        }
        Ok(Windows {
            ids,
            count,
            stride,
            context,
        })
    }

    /// W.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no windows.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Where window `w` starts.
    pub fn start(&self, w: usize) -> usize {
        w * self.stride
    }

    /// Number of batches of `b` windows: ⌊W / B⌋ with `drop_last`, else ⌈W / B⌉.
    pub fn num_batches(&self, b: usize, drop_last: bool) -> usize {
        if b == 0 {
            0
        } else if drop_last {
            self.len() / b
        } else {
            self.len().div_ceil(b)
        }
    }

    /// Fills x (B, T) and y (B, T) with the windows whose indices are `which` (B of them).
    pub fn fill(&self, which: &[usize], x: &mut Vec<u32>, y: &mut Vec<i32>) {
        let t = self.context;
        x.clear();
        y.clear();
        for &w in which {
            let s = self.start(w);
            self.ids.extend(s, t, x, |v| v);
            self.ids.extend(s + 1, t, y, |v| v as i32);
        }
    }
}

/// A deterministic random generator (SplitMix64) for shuffles.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in 0..n (n > 0), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let r = self.next_u64();
            if r < zone {
                return r % n;
            }
        }
    }
}

/// The order of `n` windows in epoch `epoch` of a run seeded with `seed`: a Fisher–Yates shuffle
/// whose generator is seeded by (seed, epoch) alone, so any epoch can be regenerated on resume.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix(mix64(seed ^ 0x5348_5546_464C_4521) ^ mix64(epoch.wrapping_add(1)));
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// A shuffle of 0..n computed one index at a time (constant memory, any position at once): a
/// four-round Feistel network over the smallest power-of-four square covering n, walked in cycles
/// until the result falls in range (a bijection of 0..n). Corpora of token shards use it, so that
/// neither memory nor resuming depends on the number of windows; in-memory corpora keep
/// [`epoch_order`] (their runs stay as they were).
#[derive(Clone, Copy, Debug)]
pub struct Shuffle {
    n: u64,
    half_bits: u32,
    keys: [u64; 4],
}

impl Shuffle {
    /// The shuffle of epoch `epoch` with `seed`.
    pub fn new(n: usize, seed: u64, epoch: u64) -> Shuffle {
        let n = n as u64;
        let bits = (64 - n.saturating_sub(1).leading_zeros()).max(2);
        let half_bits = bits.div_ceil(2);
        let base = mix64(seed ^ 0x4645_4953_5445_4C21) ^ mix64(epoch.wrapping_add(1));
        let keys = [1u64, 2, 3, 4].map(|r| mix64(base.wrapping_add(r)));
        Shuffle { n, half_bits, keys }
    }

    /// The `i`-th index of the shuffled order (i < n).
    pub fn get(&self, i: usize) -> usize {
        let mask = (1u64 << self.half_bits) - 1;
        let mut x = i as u64;
        loop {
            let (mut l, mut r) = (x >> self.half_bits, x & mask);
            for k in self.keys {
                let f = mix64(r ^ k) & mask;
                (l, r) = (r, l ^ f);
            }
            x = (l << self.half_bits) | r;
            if x < self.n {
                return x as usize;
            }
        }
    }
}

/// The order in which an epoch visits the windows.
#[derive(Clone, Debug)]
pub enum Order {
    /// In the listed order ([`epoch_order`]: in-memory corpora).
    Listed(Vec<usize>),
    /// Computed one index at a time ([`Shuffle`]: shard corpora).
    Shuffled(Shuffle),
    /// 0, 1, 2, … (validation).
    Identity,
}

impl Order {
    /// The epoch-`epoch` shuffle of `n` windows with `seed`: listed for in-memory corpora,
    /// computed for shard corpora (`computed`).
    pub fn shuffle(n: usize, seed: u64, epoch: u64, computed: bool) -> Order {
        if computed {
            Order::Shuffled(Shuffle::new(n, seed, epoch))
        } else {
            Order::Listed(epoch_order(n, seed, epoch))
        }
    }

    /// Positions `from..to` of the order, into `out` (cleared first).
    pub fn indices<'o>(&self, from: usize, to: usize, out: &'o mut Vec<usize>) -> &'o [usize] {
        out.clear();
        match self {
            Order::Listed(v) => out.extend_from_slice(&v[from..to.min(v.len())]),
            Order::Shuffled(s) => out.extend((from..to).map(|i| s.get(i))),
            Order::Identity => out.extend(from..to),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffles_are_permutations_that_differ_by_epoch() {
        for n in [1usize, 2, 3, 17, 1000, 4097] {
            let s = Shuffle::new(n, 7, 0);
            let mut seen = vec![false; n];
            for i in 0..n {
                let j = s.get(i);
                assert!(!seen[j], "n {n}: {j} twice");
                seen[j] = true;
            }
        }
        let (a, b) = (Shuffle::new(1000, 7, 0), Shuffle::new(1000, 7, 1));
        let same = (0..1000).filter(|&i| a.get(i) == b.get(i)).count();
        assert!(same < 20, "{same}");
        let moved = (0..1000).filter(|&i| a.get(i) != i).count();
        assert!(moved > 950, "{moved}");
    }

    fn data_dir() -> Option<PathBuf> {
        match std::env::var_os("EMBER_DATA") {
            Some(d) => Some(PathBuf::from(d)),
            None => {
                eprintln!("SKIPPED: EMBER_DATA is not set (the book's data tests did not run)");
                None
            }
        }
    }

    #[test]
    fn windows_follow_the_books_range() {
        // range(0, 10 - 4, 2) = 0, 2, 4
        assert_eq!(window_starts(10, 4, 2), vec![0, 2, 4]);
        assert_eq!(window_starts(5, 4, 1), vec![0]);
        assert_eq!(window_starts(4, 4, 1), Vec::<usize>::new());
        let w = Windows::new((0..10).collect(), 4, 2, "training").unwrap();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        w.fill(&[2, 0], &mut x, &mut y);
        assert_eq!(x, vec![4, 5, 6, 7, 0, 1, 2, 3]);
        assert_eq!(y, vec![5, 6, 7, 8, 1, 2, 3, 4]);
        assert_eq!(w.num_batches(2, true), 1);
        assert_eq!(w.num_batches(2, false), 2);
        assert_eq!(
            Windows::new(vec![1, 2, 3], 4, 4, "validation").unwrap_err(),
            DataError::TooShort {
                split: "validation",
                tokens: 3,
                context: 4
            }
        );
    }

    #[test]
    fn split_is_by_characters() {
        // 10 characters, several of them multi-byte: the split is after 9 characters.
        let s = "aé€😀bcdefg";
        let (a, b) = split_chars(s, 0.9);
        assert_eq!(a.chars().count(), 9);
        assert_eq!(b, "g");
        assert_eq!(split_chars("", 0.9), ("", ""));
    }

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let a = epoch_order(100, 123, 0);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(100, 123, 0));
        assert_ne!(a, epoch_order(100, 123, 1));
        assert_ne!(a, epoch_order(100, 124, 0));
        assert_ne!(a, sorted, "a shuffle of 100 items is not the identity");
    }

    #[test]
    fn fingerprint_sees_every_byte_and_the_length() {
        let base = b"hello world, a little text".to_vec();
        let h = fingerprint(&base);
        for i in 0..base.len() {
            let mut b = base.clone();
            b[i] ^= 1;
            assert_ne!(fingerprint(&b), h, "byte {i}");
        }
        assert_ne!(fingerprint(&base[..base.len() - 1]), h);
        assert_ne!(fingerprint(b"\0"), fingerprint(b""));
    }

    #[test]
    fn cache_round_trips_and_rejects_damage() {
        let s = TokenSplits {
            train: vec![1, 2, 3, 70000],
            val: vec![9],
        };
        let bytes = encode_cache(&s);
        assert_eq!(decode_cache(&bytes), Some(s));
        assert_eq!(decode_cache(&bytes[..bytes.len() - 1]), None);
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert_eq!(decode_cache(&bad), None);
        let mut huge = bytes;
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(decode_cache(&huge), None);
    }

    #[test]
    fn second_load_comes_from_the_cache() {
        // The cache directory does not exist yet: the first load creates it.
        let tmp = tempfile::Builder::new()
            .prefix("emberlm-data-cache-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().join("cache");
        let tok = Tokenizer::gpt2();
        let texts = ["Every effort moves you.", "A second document."];
        let (a, st) = load_splits(&texts, tok, 0.9, Some(&dir));
        assert!(matches!(st, CacheStatus::Stored(_)), "{st:?}");
        let (b, st) = load_splits(&texts, tok, 0.9, Some(&dir));
        assert!(matches!(st, CacheStatus::Hit(_)), "{st:?}");
        assert_eq!(a, b);
        // The separator is GPT-2's end-of-text id, inside the training split.
        assert!(a.train.contains(&50256));
        let joined = join_texts(&texts);
        let (x, y) = split_chars(&joined, 0.9);
        assert_eq!(a.train, tok.encode_to_vec(x, SpecialTokens::Allow));
        assert_eq!(a.val, tok.encode_to_vec(y, SpecialTokens::Allow));
        // Different contents: a different entry.
        let (_, st) = load_splits(&["Other text entirely."], tok, 0.9, Some(&dir));
        assert!(matches!(st, CacheStatus::Stored(_)), "{st:?}");
    }

    #[test]
    fn bad_files_are_named() {
        let tmp = tempfile::Builder::new()
            .prefix("emberlm-data-bad-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        assert_eq!(
            read_text(&dir).unwrap_err(),
            DataError::IsDirectory { path: dir.clone() }
        );
        let empty = dir.join("empty.txt");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(
            read_text(&empty).unwrap_err(),
            DataError::Empty {
                path: empty.clone()
            }
        );
        let bad = dir.join("latin1.txt");
        std::fs::write(&bad, b"caf\xe9 au lait").unwrap();
        assert_eq!(
            read_text(&bad).unwrap_err(),
            DataError::NotUtf8 {
                path: bad.clone(),
                offset: 3
            }
        );
        let missing = dir.join("missing.txt");
        assert!(matches!(read_text(&missing), Err(DataError::Io { .. })));
    }

    /// BOOK.md ch02 [TV]: batch 1, context 4, stride 1 over the whole of the-verdict.
    #[test]
    fn the_verdict_first_windows_match_the_book() {
        let Some(d) = data_dir() else { return };
        let (text, _) = read_text(&d.join("the-verdict.txt")).unwrap();
        let ids = Tokenizer::gpt2().encode_to_vec(&text, SpecialTokens::Allow);
        assert_eq!(ids.len(), 5145);
        let w = Windows::new(ids, 4, 1, "training").unwrap();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        w.fill(&[0], &mut x, &mut y);
        assert_eq!(x, vec![40, 367, 2885, 1464]);
        assert_eq!(y, vec![367, 2885, 1464, 1807]);
        w.fill(&[1], &mut x, &mut y);
        assert_eq!(x, vec![367, 2885, 1464, 1807]);
    }

    /// BOOK.md ch05: split 18431 chars; context 256, stride 256, batch 2 → 9 train batches
    /// (drop_last) and 1 validation batch.
    #[test]
    fn the_verdict_split_gives_nine_train_batches_and_one_val_batch() {
        let Some(d) = data_dir() else { return };
        let (text, _) = read_text(&d.join("the-verdict.txt")).unwrap();
        assert_eq!(text.chars().count(), 20479);
        let (a, _) = split_chars(&text, TRAIN_RATIO);
        assert_eq!(a.chars().count(), 18431);
        let (s, _) = load_splits(&[&text], Tokenizer::gpt2(), TRAIN_RATIO, None);
        let train = Windows::new(s.train, 256, 256, "training").unwrap();
        let val = Windows::new(s.val, 256, 256, "validation").unwrap();
        assert_eq!(train.num_batches(2, true), 9);
        assert_eq!(val.num_batches(2, false), 1);
        // 4,608 training tokens in 18 windows; 512 validation tokens in 2 windows (one batch).
        assert_eq!(train.len(), 18);
        assert_eq!(val.len(), 2);
    }
}
