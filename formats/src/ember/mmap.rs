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
        // Ask for 2 MiB pages (a hint; best effort). Linux maps a file with them where its page
        // cache holds 2 MiB folios: the cache fills with them on a read fault in a mapping so
        // advised, or on large writes (see `write_atomically`). A decode step streams every
        // weight, and with 4 KiB pages each 4 KiB costs a TLB miss (a two-level page walk in a
        // virtual machine): README § Runtime kernel decisions, "Weights are read through 2 MiB pages".
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        Ok(MappedFile { map: Some(map) })
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or_default()
    }
}

/// A zeroed anonymous memory map advised to use huge pages (a hint; Linux), for large buffers
/// streamed the way a model's weights are, so they compare like with like with a model file's map
/// ([`MappedFile::open`]): the bandwidth probe, a benchmark's weight copies.
#[derive(Debug)]
pub struct HugeBuffer {
    map: memmap2::MmapMut,
}

impl HugeBuffer {
    /// `bytes` zeroed bytes (an error for 0 bytes, as for any failed map).
    pub fn zeroed(bytes: usize) -> std::io::Result<HugeBuffer> {
        let map = memmap2::MmapMut::map_anon(bytes)?;
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        Ok(HugeBuffer { map })
    }
}

impl std::ops::Deref for HugeBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl std::ops::DerefMut for HugeBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }
}

/// How many bytes of `bytes` this process maps with huge pages (2 MiB on x86-64): the sum of
/// `FilePmdMapped` and `AnonHugePages` of every mapping in `/proc/self/smaps` that overlaps
/// `bytes` (meant for a buffer that is a mapping of its own: a model file's, or a large
/// allocation's). `None` where that file cannot be read or parsed (not Linux).
pub fn huge_page_bytes(bytes: &[u8]) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let lo = bytes.as_ptr() as usize;
    smaps_huge_bytes(&smaps, lo..lo + bytes.len())
}

/// [`huge_page_bytes`] over the text of an `smaps` file (format: proc(5)).
fn smaps_huge_bytes(smaps: &str, range: std::ops::Range<usize>) -> Option<u64> {
    let mut inside = false;
    let mut total = 0u64;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        // A mapping's header line: "start-end perms offset dev inode [path]" (hex addresses).
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                inside = a < range.end && b > range.start;
                continue;
            }
        }
        if inside && (first == "FilePmdMapped:" || first == "AnonHugePages:") {
            total += words.next()?.parse::<u64>().ok()? * 1024;
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_huge_bytes_sums_the_mappings_over_the_range() {
        // Three mappings in the layout of proc(5): a file mapped partly with PMDs, an anonymous
        // one with huge pages, and one outside the range.
        let smaps = "\
7f0000000000-7f0000600000 r--s 00000000 fe:00 7036950                    /m.ember
Size:               6144 kB
Rss:                6144 kB
AnonHugePages:         0 kB
FilePmdMapped:      4096 kB
VmFlags: rd mr me ms hg
7f0000600000-7f0000a00000 rw-p 00000000 00:00 0
Size:               4096 kB
AnonHugePages:      2048 kB
FilePmdMapped:         0 kB
7f0000a00000-7f0000c00000 rw-p 00000000 00:00 0
AnonHugePages:      2048 kB
";
        let at = |a: usize| 0x7f00_0000_0000 + a;
        let whole = smaps_huge_bytes(smaps, at(0)..at(0xa0_0000));
        assert_eq!(whole, Some(6 << 20));
        assert_eq!(smaps_huge_bytes(smaps, at(0x10)..at(0x20)), Some(4 << 20));
        assert_eq!(
            smaps_huge_bytes(smaps, at(0x60_0000)..at(0x61_0000)),
            Some(2 << 20)
        );
        assert_eq!(smaps_huge_bytes(smaps, 0x1000..0x2000), Some(0));
        assert_eq!(
            smaps_huge_bytes("1000-2000 r\nAnonHugePages: x kB\n", 0x1000..0x1800),
            None
        );
    }
}
