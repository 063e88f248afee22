//! Writing f32 safetensors files: the header exactly as the `safetensors` crate writes it, and a
//! streaming atomic writer. Shared by import (a checkpoint's canonical `model.safetensors`) and
//! export-safetensors (Hugging Face's and the book's layouts), below both.

use emberlm_formats::ember::write_atomically;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

/// Counts bytes on their way to `inner`.
struct Counting<'a> {
    inner: &'a mut dyn Write,
    written: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The element type of a safetensors file written here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StDtype {
    /// `F32`.
    F32,
    /// `F16`.
    F16,
    /// `BF16`.
    Bf16,
}

impl StDtype {
    /// The header's spelling.
    pub fn name(self) -> &'static str {
        match self {
            StDtype::F32 => "F32",
            StDtype::F16 => "F16",
            StDtype::Bf16 => "BF16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StDtype::F32 => 4,
            StDtype::F16 | StDtype::Bf16 => 2,
        }
    }
}

/// The safetensors header for f32 `tensors` laid out back to back in the given order, with
/// `metadata` as `__metadata__`: JSON padded with spaces to a multiple of 8 bytes, as the
/// `safetensors` crate writes it. Deterministic (metadata keys sorted, tensors in order).
pub fn safetensors_header_f32(
    metadata: &BTreeMap<String, String>,
    tensors: &[(String, Vec<usize>)],
) -> Result<Vec<u8>, io::Error> {
    safetensors_header(metadata, tensors, StDtype::F32)
}

/// [`safetensors_header_f32`] for tensors of `dtype`.
pub fn safetensors_header(
    metadata: &BTreeMap<String, String>,
    tensors: &[(String, Vec<usize>)],
    dtype: StDtype,
) -> Result<Vec<u8>, io::Error> {
    let quote = |s: &str| serde_json::to_string(s).map_err(io::Error::other);
    let mut json = String::from("{");
    if !metadata.is_empty() {
        json.push_str("\"__metadata__\":");
        json.push_str(&serde_json::to_string(metadata).map_err(io::Error::other)?);
    }
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| io::Error::other(format!("tensor {name:?}: size overflows")))?;
        let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
        if json.len() > 1 {
            json.push(',');
        }
        json.push_str(&format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            quote(name)?,
            dtype.name(),
            dims.join(","),
            offset,
            offset + numel
        ));
        offset += numel;
    }
    json.push('}');
    let mut bytes = json.into_bytes();
    bytes.resize(bytes.len().next_multiple_of(8), b' ');
    Ok(bytes)
}

/// Writes a safetensors file of f32 `tensors` atomically (temporary file, fsync, rename): the
/// header computed from the shapes, then `fill(i, w)` writes tensor `i`'s values (little-endian
/// f32, e.g. with [`write_f32s`]) in order; a fill that writes the wrong number of bytes is an
/// error. Returns the file size.
pub fn write_safetensors_f32(
    path: &Path,
    metadata: &BTreeMap<String, String>,
    tensors: &[(String, Vec<usize>)],
    fill: impl FnMut(usize, &mut dyn Write) -> io::Result<()>,
) -> io::Result<u64> {
    write_safetensors(path, metadata, tensors, StDtype::F32, fill)
}

/// [`write_safetensors_f32`] for tensors of `dtype` (`fill` writes each tensor's little-endian
/// elements of that type).
pub fn write_safetensors(
    path: &Path,
    metadata: &BTreeMap<String, String>,
    tensors: &[(String, Vec<usize>)],
    dtype: StDtype,
    mut fill: impl FnMut(usize, &mut dyn Write) -> io::Result<()>,
) -> io::Result<u64> {
    let header = safetensors_header(metadata, tensors, dtype)?;
    let mut total = 8 + header.len() as u64;
    write_atomically(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for (i, (name, shape)) in tensors.iter().enumerate() {
            let expected = (shape.iter().product::<usize>() * dtype.size()) as u64;
            let mut c = Counting {
                inner: w,
                written: 0,
            };
            fill(i, &mut c)?;
            if c.written != expected {
                return Err(io::Error::other(format!(
                    "tensor {name:?}: wrote {} bytes, expected {expected}",
                    c.written
                )));
            }
            total += expected;
        }
        Ok(())
    })?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use emberlm_formats::ember::write_f32s;

    /// The `safetensors` crate parses the header written here and finds the data where it is.
    #[test]
    fn header_is_what_the_safetensors_crate_reads() {
        let tensors = vec![
            ("b".to_string(), vec![2, 3]),
            ("a\"quoted\"".to_string(), vec![4]),
            ("empty".to_string(), vec![0, 5]),
        ];
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        let tmp = tempfile::Builder::new()
            .prefix("emberlm-st-header-")
            .tempdir()
            .unwrap();
        let dir = tmp.path();
        let path = dir.join("x.safetensors");
        let size = write_safetensors_f32(&path, &meta, &tensors, |i, w| {
            let n: usize = tensors[i].1.iter().product();
            let v: Vec<f32> = (0..n).map(|k| (10 * i + k) as f32).collect();
            write_f32s(w, &v)
        })
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(size, bytes.len() as u64);
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), 3);
        let a = st.tensor("a\"quoted\"").unwrap();
        assert_eq!(a.shape(), &[4]);
        let a: Vec<f32> = a
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(a, vec![10.0, 11.0, 12.0, 13.0]);
        assert_eq!(st.tensor("b").unwrap().data().len(), 24);
        // A fill that writes too little fails and leaves no file behind.
        let bad = dir.join("bad.safetensors");
        let err = write_safetensors_f32(&bad, &meta, &tensors, |_, w| w.write_all(&[0u8; 4]));
        assert!(err.is_err());
        assert!(!bad.exists());
    }
}
