//! Helpers shared by the targets: a forgiving byte cursor, splitting an input into files, and a
//! per-thread scratch directory.

use std::path::{Path, PathBuf};

/// Reads fixed-size values from the front of the input; past the end every read yields zeros,
/// so any input (including an empty one) drives a target deterministically.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// Whether every byte has been consumed.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    /// Everything not consumed yet.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// One bit (the low bit of a byte).
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// An f32: usually one of the values that break numeric code (0, -0, 1, tiny, huge, ∞, NaN,
    /// subnormal), otherwise any bit pattern.
    pub fn f32(&mut self) -> f32 {
        const SPECIAL: [f32; 16] = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            0.7,
            1.3,
            2.0,
            1e-30,
            1e30,
            f32::MIN_POSITIVE / 2.0,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::EPSILON,
        ];
        let tag = self.u8();
        if tag < 0xC0 {
            SPECIAL[tag as usize % SPECIAL.len()]
        } else {
            f32::from_bits(self.u32())
        }
    }

    /// A usize biased to small values: mostly `0..=limit`, sometimes any u64 (truncated).
    pub fn size(&mut self, limit: usize) -> usize {
        let tag = self.u8();
        if tag < 0xF0 {
            self.u16() as usize % (limit + 1)
        } else {
            self.u64() as usize
        }
    }
}

/// Splits `data` at every occurrence of `sep` into at most `max` parts (the last part keeps any
/// further separators).
pub fn split<'a>(data: &'a [u8], sep: &[u8], max: usize) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while parts.len() + 1 < max {
        match rest.windows(sep.len()).position(|w| w == sep) {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + sep.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts
}

/// The scratch root of the current thread, removed when the thread ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

thread_local! {
    static SCRATCH: Scratch = {
        let thread = format!("{:?}", std::thread::current().id());
        let digits: String = thread.chars().filter(char::is_ascii_digit).collect();
        Scratch(std::env::temp_dir().join(format!(
            "emberlm-fuzz-{}-{digits}",
            std::process::id()
        )))
    };
}

/// A directory private to this process and thread (`$TMPDIR/emberlm-fuzz-<pid>-<thread>/<name>`),
/// created on first use and reused: targets overwrite their files on every run. The thread's
/// scratch root is removed when the thread ends (not when the process calls `exit`, as libFuzzer
/// does: `.ci/fuzz.sh` points `TMPDIR` at a directory it removes).
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = SCRATCH.with(|s| s.0.join(name));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// Writes `bytes` to `path`, or removes `path` when `bytes` is `None`. Harness failures (a full
/// disk) panic: they are not findings about the code under test, and must not pass silently.
pub fn put(path: &Path, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => std::fs::write(path, b).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        None => match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("{}: {e}", path.display()),
        },
    }
}
