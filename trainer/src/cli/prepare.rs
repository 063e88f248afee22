//! `ember-train prepare`: text files → a directory of token shards and a manifest
//! ([`crate::shards`]), streamed: text is read in pieces of about [`PIECE`] bytes cut where
//! tokenization cannot change (after a newline between two non-space bytes), the pieces of a batch
//! are tokenized in parallel, and tokens go straight to the shards. Memory stays near
//! `threads × 2 × PIECE` of text plus its tokens, however large the corpus.
//!
//! Everything is written into a hidden temporary directory beside `--out`, renamed into place at
//! the end: an interrupted run (a crash, Ctrl-C) leaves no half-written corpus.

use super::progress::{Progress, Status};
use super::{CliError, Console, Outcome, PrepareArgs, count, failed, signal};
use crate::checkpoint;
use crate::data::tokenizer_fingerprint;
use crate::shards::{FORMAT, Manifest, ShardWriter, SourceInfo, Width};
use crate::{note, say};
use emberlm_formats::tokenizer::{EncodeScratch, Tokenizer};
use rayon::prelude::*;
use serde_json::json;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Text bytes per piece (a piece ends at the first safe point after this many bytes).
pub const PIECE: usize = 4 << 20;
/// A piece with no safe point is cut at a character boundary after this many bytes.
const PIECE_MAX: usize = 64 << 20;
/// Default tokens per shard (llm.c's 100 M).
pub const SHARD_TOKENS: u64 = 100_000_000;

/// Whether text may be cut just before byte `i`: after a newline that follows a non-space byte
/// and precedes an ASCII byte that is not whitespace. No pre-tokenizer piece (GPT-2's, Llama 3's
/// or Qwen's) spans such a newline, so tokenizing the two sides apart gives the same ids.
fn safe_cut(b: &[u8], i: usize) -> bool {
    i >= 2
        && i < b.len()
        && b[i - 1] == b'\n'
        && !b[i - 2].is_ascii_whitespace()
        && b[i].is_ascii()
        && !b[i].is_ascii_whitespace()
}

/// Every file under the given paths (directories walked in name order, hidden entries skipped).
fn inputs(paths: &[PathBuf]) -> Result<Vec<PathBuf>, CliError> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) -> Result<(), CliError> {
        let meta =
            std::fs::metadata(p).map_err(|e| failed(format!("--data {}: {e}", p.display())))?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| failed(format!("--data {}: {e}", p.display())))?
                .flatten()
                .map(|e| e.path())
                .filter(|q| {
                    !q.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect();
            entries.sort();
            for e in entries {
                walk(&e, out)?;
            }
        } else if meta.is_file() {
            out.push(p.to_path_buf());
        } else {
            return Err(failed(format!(
                "--data {}: not a regular file or directory",
                p.display()
            )));
        }
        Ok(())
    }
    if paths.is_empty() {
        return Err(CliError::Usage(
            "give at least one --data FILE_OR_DIR".into(),
        ));
    }
    let mut out = Vec::new();
    for p in paths {
        walk(p, &mut out)?;
    }
    if out.is_empty() {
        return Err(failed("--data: the directories hold no files"));
    }
    Ok(out)
}

/// Reads `file` in pieces: `next` gives the bytes of the next piece, ending at a safe cut, at
/// `split` (the start of the validation part) or at the end.
struct Pieces {
    file: std::fs::File,
    path: PathBuf,
    buf: Vec<u8>,
    offset: u64,
    split: u64,
    eof: bool,
}

impl Pieces {
    fn new(path: &Path, split: u64) -> Result<Pieces, CliError> {
        let file = std::fs::File::open(path)
            .map_err(|e| failed(format!("--data {}: {e}", path.display())))?;
        Ok(Pieces {
            file,
            path: path.to_path_buf(),
            buf: Vec::new(),
            offset: 0,
            split,
            eof: false,
        })
    }

    /// Reads up to [`PIECE`] more bytes into the buffer.
    fn fill(&mut self) -> Result<(), CliError> {
        let len = self.buf.len();
        self.buf.resize(len + PIECE, 0);
        let n = self
            .file
            .read(&mut self.buf[len..])
            .map_err(|e| failed(format!("--data {}: {e}", self.path.display())))?;
        self.buf.truncate(len + n);
        if n == 0 {
            self.eof = true;
        }
        Ok(())
    }

    /// The next piece and whether it lies in the validation part; `None` at the end.
    fn next(&mut self) -> Result<Option<(String, bool)>, CliError> {
        let val = self.offset >= self.split;
        // Read until the buffer holds a piece (or the file ends).
        while !self.eof && self.buf.len() < PIECE + 1 {
            self.fill()?;
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        // The validation part starts at `split`: never cross it.
        let to_split = if val {
            usize::MAX
        } else {
            (self.split - self.offset) as usize
        };
        let mut end = self.buf.len();
        if to_split < end {
            end = to_split;
        } else if !self.eof || end > PIECE {
            // Find a safe cut after PIECE bytes; read on if there is none yet.
            loop {
                if let Some(i) =
                    (PIECE.min(self.buf.len())..self.buf.len()).find(|&i| safe_cut(&self.buf, i))
                {
                    end = i;
                    break;
                }
                if self.eof || self.buf.len() >= PIECE_MAX {
                    end = self.buf.len();
                    while end < self.buf.len() && (self.buf[end] & 0xC0) == 0x80 {
                        end += 1;
                    }
                    break;
                }
                self.fill()?;
            }
        }
        let rest = self.buf.split_off(end);
        let piece = std::mem::replace(&mut self.buf, rest);
        let at = self.offset;
        self.offset += piece.len() as u64;
        let text = String::from_utf8(piece).map_err(|e| {
            failed(format!(
                "--data {}: invalid UTF-8 at byte offset {}",
                self.path.display(),
                at + e.utf8_error().valid_up_to() as u64
            ))
        })?;
        Ok(Some((text, val)))
    }
}

/// The first byte of `path`'s validation part: ⌊(1 − f)·size⌋ moved forward to a character
/// boundary (the book splits its text by position the same way).
fn split_offset(path: &Path, size: u64, f: f64) -> Result<u64, CliError> {
    let mut at = ((1.0 - f) * size as f64).floor() as u64;
    if at >= size {
        return Ok(size);
    }
    let mut file =
        std::fs::File::open(path).map_err(|e| failed(format!("--data {}: {e}", path.display())))?;
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(at))
        .map_err(|e| failed(format!("--data {}: {e}", path.display())))?;
    let mut b = [0u8; 4];
    let n = file
        .read(&mut b)
        .map_err(|e| failed(format!("--data {}: {e}", path.display())))?;
    for &byte in &b[..n] {
        if byte & 0xC0 != 0x80 {
            break;
        }
        at += 1;
    }
    Ok(at)
}

/// `ember-train prepare --data FILES_OR_DIRS... --out DIR`.
pub fn prepare(a: PrepareArgs, con: &mut Console<'_>) -> Result<Outcome, CliError> {
    super::with_threads(a.threads, || prepare_inner(&a, con))?
}

fn prepare_inner(a: &PrepareArgs, con: &mut Console<'_>) -> Result<Outcome, CliError> {
    let f = a.val_fraction.unwrap_or(0.1);
    if !(0.0..1.0).contains(&f) {
        return Err(CliError::Usage(format!(
            "--val-fraction {f}: must be in [0, 1)"
        )));
    }
    let shard_tokens = a.shard_tokens.unwrap_or(SHARD_TOKENS);
    if shard_tokens == 0 || shard_tokens > i32::MAX as u64 {
        return Err(CliError::Usage(format!(
            "--shard-tokens {shard_tokens}: must be in 1..={}",
            i32::MAX
        )));
    }
    let files = inputs(&a.data)?;
    let tok: Tokenizer = match &a.tokenizer {
        Some(p) => {
            checkpoint::read_tokenizer_file(p).map_err(|e| failed(format!("--tokenizer {e}")))?
        }
        None => Tokenizer::gpt2().clone(),
    };
    if a.out.exists() {
        return Err(failed(format!(
            "--out {}: already exists (prepare writes a new directory)",
            a.out.display()
        )));
    }
    let parent = match a.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = a.out.file_name().ok_or_else(|| {
        CliError::Usage(format!("--out {}: not a directory name", a.out.display()))
    })?;
    let tmp = parent.join(format!(
        ".{}.prepare-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::create_dir(&tmp).map_err(|e| failed(format!("--out {}: {e}", a.out.display())))?;
    let result = write_corpus(a, con, &files, &tok, f, shard_tokens, &tmp);
    match result {
        Ok(Some(mut outcome)) => {
            std::fs::rename(&tmp, &a.out)
                .map_err(|e| failed(format!("--out {}: {e}", a.out.display())))?;
            outcome.json["out"] = json!(a.out);
            Ok(outcome)
        }
        Ok(None) => {
            let _ = std::fs::remove_dir_all(&tmp);
            note!(
                con,
                "prepare: stopped by Ctrl-C; {} was not written",
                a.out.display()
            );
            Ok(Outcome {
                json: json!({"out": a.out, "interrupted": true}),
                exit_code: 130,
            })
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn write_corpus(
    a: &PrepareArgs,
    con: &mut Console<'_>,
    files: &[PathBuf],
    tok: &Tokenizer,
    f: f64,
    shard_tokens: u64,
    dir: &Path,
) -> Result<Option<Outcome>, CliError> {
    let width = Width::for_vocab(tok.vocab_size());
    let eot = tok.eot_id();
    let mut train = ShardWriter::new(dir, "train", width, shard_tokens);
    let mut val = ShardWriter::new(dir, "val", width, shard_tokens);
    let io = |e: std::io::Error| failed(format!("--out {}: {e}", a.out.display()));
    let mut sources = Vec::with_capacity(files.len());
    let total: u64 = files
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let threads = rayon::current_num_threads().max(1);
    let mut progress = Progress::new(con.tty);
    let t0 = Instant::now();
    let mut done_bytes = 0u64;
    for path in files {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        sources.push(SourceInfo {
            path: path.display().to_string(),
            bytes: size,
        });
        let split = split_offset(path, size, f)?;
        let mut pieces = Pieces::new(path, split)?;
        train.start_document();
        let mut in_val = false;
        loop {
            if signal::interrupted() {
                progress.finish(con.log);
                return Ok(None);
            }
            let mut batch = Vec::with_capacity(4 * threads);
            while batch.len() < 4 * threads {
                match pieces.next()? {
                    Some(p) => batch.push(p),
                    None => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            let ids: Vec<Vec<u32>> = batch
                .par_iter()
                .map_init(EncodeScratch::new, |scratch, (text, _)| {
                    let mut out = Vec::with_capacity(text.len() / 3);
                    tok.encode_ordinary(text, scratch, &mut out);
                    out
                })
                .collect();
            for ((text, is_val), ids) in batch.iter().zip(&ids) {
                if *is_val && !in_val {
                    if let Some(e) = eot {
                        train.push(&[e]).map_err(io)?;
                    }
                    val.start_document();
                    in_val = true;
                }
                let w = if *is_val { &mut val } else { &mut train };
                w.push(ids).map_err(io)?;
                done_bytes += text.len() as u64;
            }
            let secs = t0.elapsed().as_secs_f64().max(1e-9);
            progress.update(
                con.log,
                &Status {
                    step: done_bytes >> 20,
                    total: total >> 20,
                    unit: "MiB",
                    epoch: None,
                    loss: None,
                    lr: None,
                    rate: done_bytes as f64 / 1e6 / secs,
                    rate_unit: "MB/s",
                    eta: Status::eta(secs, done_bytes, total),
                },
                false,
            );
        }
        if let Some(e) = eot {
            let w = if in_val { &mut val } else { &mut train };
            w.push(&[e]).map_err(io)?;
        }
    }
    progress.finish(con.log);
    let secs = t0.elapsed().as_secs_f64();
    let train = train.finish().map_err(io)?;
    let val = val.finish().map_err(io)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        version: 1,
        tokenizer_fingerprint: format!("{:016x}", tokenizer_fingerprint(tok)),
        vocab_size: tok.vocab_size(),
        end_of_text: eot,
        width,
        val_fraction: f,
        train,
        val,
        sources,
    };
    if manifest.train_tokens() == 0 {
        return Err(failed("--data: the files hold no text"));
    }
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| failed(e.to_string()))?;
    emberlm_formats::ember::write_atomically(&dir.join("manifest.json"), |w| {
        w.write_all(text.as_bytes())
    })
    .map_err(io)?;
    let mb_s = total as f64 / 1e6 / secs.max(1e-9);
    note!(
        con,
        "tokenized {} in {secs:.1}s ({mb_s:.1} MB/s)",
        count(total, "byte")
    );
    say!(
        con,
        "{}: {} training and {} validation tokens in {} ({:?}), from {}",
        a.out.display(),
        manifest.train_tokens(),
        manifest.val_tokens(),
        count((manifest.train.len() + manifest.val.len()) as u64, "shard"),
        width,
        count(files.len() as u64, "file")
    );
    Ok(Some(Outcome {
        json: json!({
            "files": files.len(),
            "bytes": total,
            "train_tokens": manifest.train_tokens(),
            "val_tokens": manifest.val_tokens(),
            "shards": manifest.train.len() + manifest.val.len(),
            "width": width,
            "seconds": secs,
            "mb_per_s": mb_s,
        }),
        exit_code: 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use emberlm_formats::tokenizer::SpecialTokens;

    /// Tokenizing the pieces apart gives the ids of the whole text.
    #[test]
    fn safe_cuts_do_not_change_the_tokens() {
        let text = "First line.\nSecond  line, with  spaces \nThird\n\n  indented\nend 42\nLast.\n";
        let tok = Tokenizer::gpt2();
        let whole = tok.encode_to_vec(text, SpecialTokens::AsText);
        let b = text.as_bytes();
        let cuts: Vec<usize> = (0..b.len()).filter(|&i| safe_cut(b, i)).collect();
        assert!(cuts.len() >= 3, "{cuts:?}");
        let mut ids = Vec::new();
        let mut start = 0;
        for &c in cuts.iter().chain([&b.len()]) {
            ids.extend(tok.encode_to_vec(&text[start..c], SpecialTokens::AsText));
            start = c;
        }
        assert_eq!(ids, whole);
        // "spaces \nThird": the newline follows a space, so it is no cut.
        let i = text.find("Third").unwrap();
        assert!(!safe_cut(b, i));
    }
}
