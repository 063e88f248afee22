//! Pre-tokenized corpora: a directory of token shards and a manifest, written by
//! `ember-train prepare` and read by memory map, so a corpus of any size costs no memory.
//!
//! A shard is llm.c's `.bin` layout: a header of 256 little-endian i32 (`[0]` the magic 20240520,
//! `[1]` the version: 1 = u16 tokens, as llm.c; 2 = u32 tokens, emberlm's extension for
//! vocabularies above 65,536; `[2]` the token count), then the tokens, little-endian. llm.c's own
//! loader reads our u16 shards. Beside each shard, `<shard>.idx` lists the token offsets (u64
//! little-endian) where documents start in it. `manifest.json` names the tokenizer (its
//! fingerprint and size), the token width, every shard with its token and document counts, and
//! the source files with their sizes and fingerprints; it is written last, so a directory without
//! it is an unfinished preparation.
//!
//! Documents and the split: every input file is one document; the tokenizer's end-of-text token
//! (when it has one) ends each document. The validation split takes the end of each document,
//! as the book splits its one text: the last `val_fraction` of its chunks (text pieces of about
//! 4 MiB cut after a newline) or, for a document of one chunk, the last `val_fraction` of its
//! tokens.

use emberlm_formats::ember::MappedFile;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The first header integer of every shard.
pub const MAGIC: i32 = 20240520;
/// Header integers before the tokens.
pub const HEADER_INTS: usize = 256;
/// `manifest.json`'s `format`.
pub const FORMAT: &str = "emberlm-shards";

/// How wide each stored token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Width {
    /// 2 bytes (vocabularies up to 65,536 ids; llm.c's version 1).
    U16,
    /// 4 bytes (version 2).
    U32,
}

impl Width {
    /// The narrowest width for a vocabulary of `vocab_size` ids.
    pub fn for_vocab(vocab_size: usize) -> Width {
        if vocab_size <= 1 << 16 {
            Width::U16
        } else {
            Width::U32
        }
    }

    fn version(self) -> i32 {
        match self {
            Width::U16 => 1,
            Width::U32 => 2,
        }
    }

    fn bytes(self) -> usize {
        match self {
            Width::U16 => 2,
            Width::U32 => 4,
        }
    }
}

/// One shard in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name inside the directory.
    pub file: String,
    /// Tokens it holds.
    pub tokens: u64,
    /// Documents that start in it.
    pub documents: u64,
}

/// One source file in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// The path as given (or found under a given directory).
    pub path: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// 1.
    pub version: u32,
    /// The tokenizer's fingerprint (`data::tokenizer_fingerprint`, hex).
    pub tokenizer_fingerprint: String,
    /// Its number of ids.
    pub vocab_size: usize,
    /// Its end-of-text id, appended after every document (when it has one).
    pub end_of_text: Option<u32>,
    /// Token width of every shard.
    pub width: Width,
    /// The validation fraction used.
    pub val_fraction: f64,
    /// Training shards, in order.
    pub train: Vec<ShardInfo>,
    /// Validation shards, in order.
    pub val: Vec<ShardInfo>,
    /// The inputs, in the order read.
    pub sources: Vec<SourceInfo>,
}

impl Manifest {
    /// Total training tokens.
    pub fn train_tokens(&self) -> u64 {
        self.train.iter().map(|s| s.tokens).sum()
    }

    /// Total validation tokens.
    pub fn val_tokens(&self) -> u64 {
        self.val.iter().map(|s| s.tokens).sum()
    }
}

/// Writes shards of at most `max_tokens` tokens named `<prefix>-NNNNN.bin` in `dir`, rolling over
/// to the next when one is full.
#[derive(Debug)]
pub struct ShardWriter {
    dir: PathBuf,
    prefix: &'static str,
    width: Width,
    max_tokens: u64,
    current: Option<(BufWriter<File>, u64, Vec<u64>)>,
    /// The shards finished so far.
    pub done: Vec<ShardInfo>,
    pending_doc: bool,
}

impl ShardWriter {
    /// A writer of `<prefix>-NNNNN.bin` shards in `dir` (which must exist).
    pub fn new(dir: &Path, prefix: &'static str, width: Width, max_tokens: u64) -> ShardWriter {
        ShardWriter {
            dir: dir.to_path_buf(),
            prefix,
            width,
            max_tokens: max_tokens.max(1),
            current: None,
            done: Vec::new(),
            pending_doc: false,
        }
    }

    fn name(&self, i: usize) -> String {
        format!("{}-{i:05}.bin", self.prefix)
    }

    /// The next token pushed starts a document.
    pub fn start_document(&mut self) {
        self.pending_doc = true;
    }

    /// Appends tokens (each must fit the width: the caller's tokenizer guarantees it).
    pub fn push(&mut self, mut tokens: &[u32]) -> std::io::Result<()> {
        while !tokens.is_empty() {
            if self.current.is_none() {
                let path = self.dir.join(self.name(self.done.len()));
                let mut w = BufWriter::with_capacity(1 << 20, File::create(&path)?);
                w.write_all(&[0u8; HEADER_INTS * 4])?;
                self.current = Some((w, 0, Vec::new()));
            }
            let (w, count, docs) = self.current.as_mut().expect("just opened");
            if std::mem::take(&mut self.pending_doc) {
                docs.push(*count);
            }
            let room = (self.max_tokens - *count) as usize;
            let (now, later) = tokens.split_at(room.min(tokens.len()));
            match self.width {
                Width::U16 => {
                    let narrow: Vec<u16> = now.iter().map(|&t| (t as u16).to_le()).collect();
                    w.write_all(bytemuck::cast_slice(&narrow))?;
                }
                Width::U32 => {
                    let wide: Vec<u32> = now.iter().map(|&t| t.to_le()).collect();
                    w.write_all(bytemuck::cast_slice(&wide))?;
                }
            }
            *count += now.len() as u64;
            tokens = later;
            if *count == self.max_tokens {
                self.close()?;
            }
        }
        Ok(())
    }

    /// Finishes the open shard: header, document index, fsync.
    fn close(&mut self) -> std::io::Result<()> {
        let Some((w, count, docs)) = self.current.take() else {
            return Ok(());
        };
        let mut f = w.into_inner().map_err(|e| e.into_error())?;
        let mut header = [0i32; HEADER_INTS];
        header[0] = MAGIC;
        header[1] = self.width.version();
        header[2] = i32::try_from(count).map_err(|_| std::io::Error::other("shard too large"))?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(bytemuck::cast_slice(&header.map(i32::to_le)))?;
        f.sync_all()?;
        let name = self.name(self.done.len());
        let mut idx = BufWriter::new(File::create(self.dir.join(format!("{name}.idx")))?);
        for d in &docs {
            idx.write_all(&d.to_le_bytes())?;
        }
        idx.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        self.done.push(ShardInfo {
            file: name,
            tokens: count,
            documents: docs.len() as u64,
        });
        Ok(())
    }

    /// Finishes the last shard and returns every shard written.
    pub fn finish(mut self) -> std::io::Result<Vec<ShardInfo>> {
        self.close()?;
        Ok(self.done)
    }
}

/// What is wrong with a shard directory.
#[derive(Debug)]
pub struct ShardError(pub String);

impl std::fmt::Display for ShardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ShardError {}

/// A shard read by memory map.
#[derive(Debug)]
pub struct Shard {
    map: MappedFile,
    width: Width,
    len: usize,
}

impl Shard {
    /// Maps and validates `path` against the manifest's width and token count.
    pub fn open(path: &Path, width: Width, tokens: u64) -> Result<Shard, ShardError> {
        let at = path.display();
        // The formats crate's read-only map (its one `unsafe` block states the contract: files
        // are never rewritten in place, and `prepare` writes shards before their manifest).
        let map = MappedFile::open(path).map_err(|e| ShardError(e.to_string()))?;
        let bytes = map.bytes();
        let head = |i: usize| -> Option<i32> {
            bytes
                .get(i * 4..i * 4 + 4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        if head(0) != Some(MAGIC) {
            return Err(ShardError(format!("{at}: not a token shard (bad magic)")));
        }
        if head(1) != Some(width.version()) {
            return Err(ShardError(format!(
                "{at}: version {:?} does not match the manifest's {width:?} tokens",
                head(1)
            )));
        }
        let n = head(2).unwrap_or(-1);
        let want = (HEADER_INTS * 4) as u64 + tokens * width.bytes() as u64;
        if n < 0 || n as u64 != tokens || bytes.len() as u64 != want {
            return Err(ShardError(format!(
                "{at}: {} bytes with {n} tokens in its header, the manifest says {tokens}",
                bytes.len()
            )));
        }
        Ok(Shard {
            map,
            width,
            len: tokens as usize,
        })
    }

    /// Tokens in the shard.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Token `i`.
    pub fn get(&self, i: usize) -> u32 {
        let at = HEADER_INTS * 4 + i * self.width.bytes();
        let b = &self.map.bytes()[at..at + self.width.bytes()];
        match self.width {
            Width::U16 => u16::from_le_bytes([b[0], b[1]]) as u32,
            Width::U32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        }
    }
}

/// Reads and checks `dir/manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, ShardError> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ShardError(format!(
            "{}: {e} (a directory of token shards needs the manifest `ember-train prepare` writes)",
            path.display()
        ))
    })?;
    let m: Manifest =
        serde_json::from_str(&text).map_err(|e| ShardError(format!("{}: {e}", path.display())))?;
    if m.format != FORMAT || m.version != 1 {
        return Err(ShardError(format!(
            "{}: format {:?} version {} (this build reads {FORMAT:?} version 1)",
            path.display(),
            m.format,
            m.version
        )));
    }
    for s in m.train.iter().chain(&m.val) {
        let plain =
            Path::new(&s.file).file_name().and_then(|f| f.to_str()) == Some(s.file.as_str());
        if !plain {
            return Err(ShardError(format!(
                "{}: shard {:?} is not a file name",
                path.display(),
                s.file
            )));
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_round_trip_and_roll_over() {
        let tmp = tempfile::tempdir().unwrap();
        for (width, big) in [(Width::U16, 65535u32), (Width::U32, 1 << 20)] {
            let mut w = ShardWriter::new(tmp.path(), "train", width, 7);
            w.start_document();
            w.push(&[1, 2, 3]).unwrap();
            w.start_document();
            w.push(&[4, 5, 6, 7, 8, big]).unwrap();
            let shards = w.finish().unwrap();
            assert_eq!(
                shards.iter().map(|s| s.tokens).collect::<Vec<_>>(),
                vec![7, 2]
            );
            assert_eq!(
                shards.iter().map(|s| s.documents).collect::<Vec<_>>(),
                vec![2, 0]
            );
            let mut all = Vec::new();
            for s in &shards {
                let sh = Shard::open(&tmp.path().join(&s.file), width, s.tokens).unwrap();
                all.extend((0..sh.len()).map(|i| sh.get(i)));
            }
            assert_eq!(all, vec![1, 2, 3, 4, 5, 6, 7, 8, big]);
            let idx = std::fs::read(tmp.path().join("train-00000.bin.idx")).unwrap();
            assert_eq!(idx, [0u64.to_le_bytes(), 3u64.to_le_bytes()].concat());
            // A shard whose header disagrees with the manifest is refused.
            assert!(Shard::open(&tmp.path().join("train-00000.bin"), width, 6).is_err());
        }
    }
}
