//! The writer: declare metadata and tensors, then stream the data in table order.

use super::{
    Array, DType, FormatError, MAGIC, MAX_KEY_LEN, MAX_METADATA, MAX_NAME_LEN, MAX_RANK,
    MAX_TENSORS, TensorEntry, VERSION, Value, align_up,
};
use half::f16;
use std::collections::{BTreeMap, HashSet};
use std::io::{self, Write};
use std::path::Path;

/// Builds an `.ember` file. Metadata is written sorted by key and tensors in the order they were
/// added, so the same model always gives the same bytes.
#[derive(Debug, Default)]
pub struct EmberWriter {
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorEntry>,
    names: HashSet<String>,
    data_len: u64,
}

impl EmberWriter {
    /// An empty file.
    pub fn new() -> EmberWriter {
        EmberWriter::default()
    }

    /// Adds a metadata entry; a key may be set once.
    pub fn set(&mut self, key: &str, value: Value) -> Result<&mut Self, FormatError> {
        if key.is_empty() || key.len() as u64 > MAX_KEY_LEN {
            return Err(FormatError::BadLength {
                field: format!("metadata[{key:?}].key"),
                len: key.len() as u64,
                max: MAX_KEY_LEN,
            });
        }
        if self.metadata.len() as u64 >= MAX_METADATA {
            return Err(FormatError::TooMany {
                field: "header.metadata_count".into(),
                count: MAX_METADATA + 1,
                max: MAX_METADATA,
            });
        }
        if self.metadata.contains_key(key) {
            return Err(FormatError::DuplicateKey {
                key: key.to_string(),
            });
        }
        self.metadata.insert(key.to_string(), value);
        Ok(self)
    }

    /// Declares the next tensor; its data is written later, in declaration order.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[usize],
    ) -> Result<&TensorEntry, FormatError> {
        if name.is_empty() || name.len() as u64 > MAX_NAME_LEN {
            return Err(FormatError::BadLength {
                field: format!("tensors[{name:?}].name"),
                len: name.len() as u64,
                max: MAX_NAME_LEN,
            });
        }
        if shape.len() > MAX_RANK {
            return Err(FormatError::RankTooLarge {
                tensor: name.to_string(),
                rank: shape.len().min(255) as u8,
            });
        }
        if self.tensors.len() as u64 >= MAX_TENSORS {
            return Err(FormatError::TooMany {
                field: "header.tensor_count".into(),
                count: MAX_TENSORS + 1,
                max: MAX_TENSORS,
            });
        }
        if !self.names.insert(name.to_string()) {
            return Err(FormatError::DuplicateTensor {
                name: name.to_string(),
            });
        }
        let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        let overflow = || FormatError::ShapeOverflow {
            tensor: name.to_string(),
        };
        let size = dtype.data_size(&shape).ok_or_else(overflow)?;
        let offset = align_up(self.data_len).ok_or_else(overflow)?;
        self.data_len = offset.checked_add(size).ok_or_else(overflow)?;
        self.tensors.push(TensorEntry {
            name: name.to_string(),
            dtype,
            shape,
            offset,
            size,
        });
        Ok(self.tensors.last().expect("just pushed"))
    }

    /// The declared tensors, in order.
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    /// The header bytes, padded to the data section.
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str32(&mut h, key);
            h.push(value.tag());
            put_value(&mut h, value);
        }
        for t in &self.tensors {
            put_str32(&mut h, &t.name);
            h.push(t.dtype.tag());
            h.push(t.shape.len() as u8);
            for d in &t.shape {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.offset.to_le_bytes());
        }
        let padded = align_up(h.len() as u64).unwrap_or(h.len() as u64) as usize;
        h.resize(padded, 0);
        h
    }

    /// Streams the file to `w`. `fill(i, entry, w)` must write exactly `entry.size` bytes of the
    /// i-th tensor's data (see [`write_f32s`], [`write_f16s`], [`write_q8`]). Returns the file size.
    pub fn write_to<W: Write + ?Sized>(
        &self,
        w: &mut W,
        path_for_errors: &Path,
        mut fill: impl FnMut(usize, &TensorEntry, &mut dyn Write) -> io::Result<()>,
    ) -> Result<u64, FormatError> {
        let io_err = |e: io::Error| FormatError::io(path_for_errors, &e);
        let header = self.header_bytes();
        w.write_all(&header).map_err(io_err)?;
        let mut pos = 0u64;
        for (i, t) in self.tensors.iter().enumerate() {
            let pad = t.offset - pos;
            w.write_all(&[0u8; 64][..pad as usize]).map_err(io_err)?;
            let mut counter = Counting {
                inner: &mut *w,
                written: 0,
            };
            fill(i, t, &mut counter).map_err(io_err)?;
            if counter.written != t.size {
                return Err(FormatError::TensorSizeMismatch {
                    tensor: t.name.clone(),
                    expected: t.size,
                    written: counter.written,
                });
            }
            pos = t.offset + t.size;
        }
        Ok(header.len() as u64 + pos)
    }

    /// Writes the file into memory (tests, small models).
    pub fn to_vec(
        &self,
        fill: impl FnMut(usize, &TensorEntry, &mut dyn Write) -> io::Result<()>,
    ) -> Result<Vec<u8>, FormatError> {
        let mut out = Vec::new();
        self.write_to(&mut out, Path::new("<memory>"), fill)?;
        Ok(out)
    }

    /// Writes the file atomically: a temporary file beside `path`, fsync, rename, fsync of the
    /// directory. On any error the temporary file is removed and `path` is untouched.
    pub fn write_file(
        &self,
        path: &Path,
        mut fill: impl FnMut(usize, &TensorEntry, &mut dyn Write) -> io::Result<()>,
    ) -> Result<u64, FormatError> {
        let mut result = Ok(0);
        write_atomically(path, |w| {
            result = self.write_to(w, path, &mut fill);
            match &result {
                Ok(_) => Ok(()),
                Err(e) => Err(io::Error::other(e.to_string())),
            }
        })
        .map_err(|e| match &result {
            Err(inner) => inner.clone(),
            Ok(_) => FormatError::io(path, &e),
        })?;
        result
    }
}

/// Bytes `write_atomically` hands the kernel at once (but a file's last). Whole, aligned 2 MiB
/// pieces let Linux fill the file's page cache with 2 MiB folios, and a memory map of the file
/// then uses 2 MiB pages (`MappedFile`): an exported model runs at full speed straight after
/// export. Small or unaligned writes leave the cache in 4 KiB pages (`ember bench` reports
/// `huge_page_bytes`, how much of a model's map uses 2 MiB pages).
const WRITE_PIECE_BYTES: usize = 8 << 20;
const _: () = assert!(
    WRITE_PIECE_BYTES % (2 << 20) == 0,
    "pieces stay 2 MiB-aligned"
);

/// A write buffer that hands its writer only whole pieces of `piece` bytes
/// ([`WRITE_PIECE_BYTES`] in `write_atomically`), so every piece starts at a multiple of it in
/// the file, then the rest on [`Write::flush`]. Unlike a `BufWriter`, a large write is cut into
/// pieces too rather than passed through.
struct PieceWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
    piece: usize,
}

impl<W: Write> PieceWriter<W> {
    fn new(inner: W, piece: usize) -> PieceWriter<W> {
        PieceWriter {
            inner,
            buf: Vec::new(),
            piece: piece.max(1),
        }
    }
}

impl<W: Write> Write for PieceWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.piece - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.piece {
            self.inner.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        self.inner.flush()
    }
}

/// Writes `path` atomically through `write`: into `.<name>.tmp-<pid>` beside it (buffered), then
/// fsync, rename over `path`, and fsync of the directory so the rename survives a power cut. On
/// error, the temporary file is removed and `path` keeps its previous content.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    remove_dead_temporaries(&dir, &format!(".{}.tmp-", name.to_string_lossy()), "");
    let result = (|| {
        let file = std::fs::File::create(&tmp)?;
        let mut pieces = PieceWriter::new(file, WRITE_PIECE_BYTES);
        write(&mut pieces)?;
        pieces.flush()?;
        pieces.inner.sync_all()?;
        let file = pieces.inner;
        drop(file);
        std::fs::rename(&tmp, path)?;
        // Persist the rename itself; not every platform can open a directory, so best effort.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes the entries of `dir` named `{prefix}{PID}{suffix}` (files or directories) whose
/// process is gone: the temporaries of a writer that crashed or was killed. `{pid}` inside
/// `suffix` stands for the same PID again (a temporary of a per-process file, e.g.
/// `..emberlm-import-7.safetensors.tmp-7`). Best effort, and only where that can be known (Linux
/// `/proc`); a live process's temporaries are never touched.
pub fn remove_dead_temporaries(dir: &Path, prefix: &str, suffix: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let Ok(pid) = rest[..digits].parse::<u32>() else {
            continue;
        };
        if rest[digits..] != suffix.replace("{pid}", &rest[..digits]) {
            continue;
        }
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let p = e.path();
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
    }
}

/// Writes f32 values little-endian.
pub fn write_f32s(w: &mut dyn Write, values: &[f32]) -> io::Result<()> {
    if cfg!(target_endian = "little") {
        w.write_all(bytemuck::cast_slice(values))
    } else {
        values
            .iter()
            .try_for_each(|v| w.write_all(&v.to_le_bytes()))
    }
}

/// Writes f16 values little-endian.
pub fn write_f16s(w: &mut dyn Write, values: &[f16]) -> io::Result<()> {
    if cfg!(target_endian = "little") {
        w.write_all(bytemuck::cast_slice(values))
    } else {
        values
            .iter()
            .try_for_each(|v| w.write_all(&v.to_le_bytes()))
    }
}

/// Writes a Q8 tensor's data: quants, zero padding to a multiple of 64, scales.
pub fn write_q8(w: &mut dyn Write, quants: &[i8], scales: &[f16]) -> io::Result<()> {
    w.write_all(bytemuck::cast_slice(quants))?;
    write_q8_tail(w, quants.len(), scales)
}

/// The end of a Q8 tensor whose `n_quants` quants were already written (streamed in pieces):
/// the zero padding, then the scales ([`write_q8`] = quants + this).
pub fn write_q8_tail(w: &mut dyn Write, n_quants: usize, scales: &[f16]) -> io::Result<()> {
    let pad = align_up(n_quants as u64).unwrap_or(0) - n_quants as u64;
    w.write_all(&[0u8; 64][..pad as usize])?;
    write_f16s(w, scales)
}

/// Writes a Q4 tensor's data: nibbles, zero padding to a multiple of 64, scales.
pub fn write_q4(w: &mut dyn Write, nibbles: &[u8], scales: &[f16]) -> io::Result<()> {
    w.write_all(nibbles)?;
    write_q8_tail(w, nibbles.len(), scales)
}

/// Writes a Q6 tensor's data: blocks, zero padding to a multiple of 64, scales.
pub fn write_q6(w: &mut dyn Write, blocks: &[u8], scales: &[f16]) -> io::Result<()> {
    w.write_all(blocks)?;
    write_q8_tail(w, blocks.len(), scales)
}

struct Counting<'a, W: Write + ?Sized> {
    inner: &'a mut W,
    written: u64,
}

impl<W: Write + ?Sized> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn put_str32(h: &mut Vec<u8>, s: &str) {
    h.extend_from_slice(&(s.len() as u32).to_le_bytes());
    h.extend_from_slice(s.as_bytes());
}

fn put_str64(h: &mut Vec<u8>, s: &str) {
    h.extend_from_slice(&(s.len() as u64).to_le_bytes());
    h.extend_from_slice(s.as_bytes());
}

fn put_value(h: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => h.push(*x as u8),
        Value::Str(s) => put_str64(h, s),
        Value::Bytes(b) => {
            h.extend_from_slice(&(b.len() as u64).to_le_bytes());
            h.extend_from_slice(b);
        }
        Value::Array(a) => {
            h.push(a.elem_tag());
            h.extend_from_slice(&(a.len() as u64).to_le_bytes());
            match a {
                Array::U32(v) => v.iter().for_each(|x| h.extend_from_slice(&x.to_le_bytes())),
                Array::I32(v) => v.iter().for_each(|x| h.extend_from_slice(&x.to_le_bytes())),
                Array::U64(v) => v.iter().for_each(|x| h.extend_from_slice(&x.to_le_bytes())),
                Array::I64(v) => v.iter().for_each(|x| h.extend_from_slice(&x.to_le_bytes())),
                Array::F32(v) => v.iter().for_each(|x| h.extend_from_slice(&x.to_le_bytes())),
                Array::F64(v) => v.iter().for_each(|x| h.extend_from_slice(&x.to_le_bytes())),
                Array::Bool(v) => v.iter().for_each(|x| h.push(*x as u8)),
                Array::Str(v) => v.iter().for_each(|s| put_str64(h, s)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every write it receives.
    #[derive(Default)]
    struct Recorder {
        bytes: Vec<u8>,
        writes: Vec<usize>,
    }

    impl Write for Recorder {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.bytes.extend_from_slice(data);
            self.writes.push(data.len());
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn piece_writer_hands_on_whole_aligned_pieces_and_every_byte() {
        // Small pieces (the logic does not depend on the size, and miri runs this test too).
        const PIECE: usize = 64;
        // Writes of every size class: tiny, around a piece, several pieces at once.
        let sizes = [1, 7, PIECE - 3, 5, 3 * PIECE + 11, 40, PIECE, 2];
        let total: usize = sizes.iter().sum();
        let data: Vec<u8> = (0..total).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut w = PieceWriter::new(Recorder::default(), PIECE);
        let mut at = 0;
        for n in sizes {
            w.write_all(&data[at..at + n]).unwrap();
            at += n;
        }
        w.flush().unwrap();
        let r = w.inner;
        assert!(r.bytes == data, "the bytes arrive whole and in order");
        let (last, whole) = r.writes.split_last().unwrap();
        assert!(whole.iter().all(|&n| n == PIECE), "{:?}", r.writes);
        assert_eq!(*last, total % PIECE);
    }

    #[test]
    fn dead_temporaries_are_swept_by_pattern() {
        let tmp = tempfile::Builder::new()
            .prefix("emberlm-sweep-")
            .tempdir()
            .unwrap();
        let dir = tmp.path();
        let me = std::process::id();
        let mine = format!("..imp-{me}.st.tmp-{me}");
        // 4,000,000,000 exceeds any pid_max: that process is certainly gone.
        let names = [
            ("..imp-4000000000.st.tmp-4000000000", false),
            ("..imp-4000000000.st.tmp-4000000001", true),
            ("..imp-4000000000.st", true),
            (mine.as_str(), true),
            ("other-4000000000.st.tmp-4000000000", true),
        ];
        for (n, _) in &names {
            std::fs::write(dir.join(n), b"x").unwrap();
        }
        remove_dead_temporaries(dir, "..imp-", ".st.tmp-{pid}");
        for (n, kept) in &names {
            assert_eq!(dir.join(n).exists(), *kept, "{n}");
        }
    }
}
