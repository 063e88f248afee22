//! Test support shared by the integration tests of every crate: scratch directories that are
//! removed even when a test panics, spawned children that are killed when a test panics before
//! waiting for them, the real `ember` and `ember-train` binaries ([`bin`]), a seeded generator
//! ([`Rng`]), text corpora made from it, and a counting global allocator ([`alloc`]). Not part of
//! any shipped crate.

pub mod alloc;

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::sync::OnceLock;

/// A test's scratch directory: removed with everything in it when dropped, so also when the
/// test fails or panics. Derefs to the directory's path. Keep it alive until every child process
/// writing into it has exited (see [`KillOnDrop`]).
#[derive(Debug)]
pub struct Scratch(tempfile::TempDir);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

/// A fresh, uniquely named directory `<prefix>*` in the temp directory.
///
/// # Panics
/// If the directory cannot be created (a test setup failure).
pub fn scratch(prefix: &str) -> Scratch {
    Scratch(
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("creating a scratch directory in the temp directory"),
    )
}

/// A spawned child that is killed and reaped when dropped, so a test that panics before waiting
/// for it does not leave it running (and writing into a removed scratch directory). Declare it
/// after the [`Scratch`] it writes into: locals drop in reverse order, the child first.
#[derive(Debug)]
pub struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    /// Guards `child`.
    pub fn new(child: Child) -> Self {
        KillOnDrop(Some(child))
    }

    /// [`Child::wait_with_output`]: waits for the child to exit; the guard is then disarmed.
    pub fn wait_with_output(mut self) -> std::io::Result<Output> {
        self.0
            .take()
            .expect("child present until waited for")
            .wait_with_output()
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("child present until waited for")
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("child present until waited for")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The directory of the binaries built with the running test (`target/<profile>`).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    exe.parent()
        .and_then(Path::parent)
        .expect("a test runs from target/<profile>/deps")
        .to_path_buf()
}

/// Makes sure `ember` and `ember-train` are built and current. `cargo test -p CRATE` does not
/// build other packages' binaries, so when the test runs under cargo (`CARGO` is set) it asks
/// cargo to build both (a no-op under `cargo test --workspace`, which already did); cargo
/// releases its build lock before it runs tests, so this does not deadlock.
fn ensure_built() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let r = BUILT.get_or_init(|| {
        let Ok(cargo) = std::env::var("CARGO") else {
            return Ok(()); // run by hand: use what is there
        };
        let profile = bin_dir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut c = std::process::Command::new(cargo);
        c.args(["build", "-q", "-p", "emberlm-runtime", "--bin", "ember"]);
        c.args(["-p", "emberlm-trainer", "--bin", "ember-train"]);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                c.arg("--release");
            }
            p => {
                c.args(["--profile", p]);
            }
        }
        let out = c.output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    if let Err(e) = r {
        panic!("building ember and ember-train failed: {e}");
    }
}

/// The path of the binary `name` (`ember` or `ember-train`), built and current.
///
/// # Panics
/// If the binary cannot be built or is missing.
pub fn bin(name: &str) -> PathBuf {
    ensure_built();
    let b = bin_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        b.is_file(),
        "{} not found: run `cargo build -p emberlm-runtime -p emberlm-trainer --bins` or \
         `cargo test --workspace`",
        b.display()
    );
    b
}

/// A small seeded generator (xorshift64*): inputs and kill moments are reproducible, and tests
/// need no RNG crate.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in [-0.1, 0.1): small weights.
    pub fn small_f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
    }
}

/// Writes `lines` lines of 12 words drawn (seeded) from a small vocabulary to `path`.
///
/// # Panics
/// If the file cannot be written (a test setup failure).
pub fn write_random_words(path: &Path, lines: usize, seed: u64) {
    let words = [
        "the", "model", "reads", "a", "long", "text", "and", "learns", "every", "word", "of", "it",
        "slowly",
    ];
    let mut r = Rng(seed | 1);
    let mut s = String::new();
    for _ in 0..lines {
        for j in 0..12 {
            if j > 0 {
                s.push(' ');
            }
            s.push_str(words[r.below(words.len() as u64) as usize]);
        }
        s.push('\n');
    }
    std::fs::write(path, s).expect("writing a test corpus");
}

/// Writes `n` short sentences of a fixed pattern to `dir/name` and returns the path.
///
/// # Panics
/// If the file cannot be written (a test setup failure).
pub fn write_sentences(dir: &Path, name: &str, n: usize) -> PathBuf {
    let words = [
        "the", "model", "reads", "a", "long", "text", "and", "learns", "every", "word",
    ];
    let mut s = String::new();
    for i in 0..n {
        for j in 0..8 {
            s.push_str(words[(i * 7 + j * 3) % words.len()]);
            s.push(' ');
        }
        s.push_str(".\n");
    }
    let p = dir.join(name);
    std::fs::write(&p, s).expect("writing a test corpus");
    p
}
