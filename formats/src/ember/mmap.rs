//! Memory-mapped model files.
#![allow(unsafe_code)]

use super::FormatError;
use std::path::Path;

/// A read-only memory map of a whole file (page-aligned, so tensors can be read in place).
#[derive(Debug)]
pub struct MappedFile {
    map: Option<memmap2::Mmap>,
}

impl MappedFile {
    /// Maps `path` read-only. An empty file maps to an empty slice.
    pub fn open(path: &Path) -> Result<MappedFile, FormatError> {
        let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, &e))?;
        let meta = file.metadata().map_err(|e| FormatError::io(path, &e))?;
        if meta.is_dir() {
            return Err(FormatError::Io {
                path: path.display().to_string(),
                message: "is a directory, expected a model file".into(),
            });
        }
        if meta.len() == 0 {
            return Ok(MappedFile { map: None });
        }
        // SAFETY: the map is read-only and private to this process. Another process truncating or
        // rewriting the file while it is mapped could change the bytes under us (or fault on
        // access); emberlm's own writers never modify a file in place (they write a temporary
        // file and rename it), which is the documented contract for model files.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(path, &e))?;
        Ok(MappedFile { map: Some(map) })
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or_default()
    }
}
