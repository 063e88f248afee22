//! Helpers shared by the hostile-input tests (`kill_safe`, `resource_limits`, `cli_matrix`): the
//! real `ember` and `ember-train` binaries, scratch directories, a seeded generator, and the
//! one-line error check.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

/// The directory of the binaries built with this test (`target/<profile>`).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// Makes sure `ember` and `ember-train` are built and current. `cargo test -p emberlm-tests`
/// does not build other packages' binaries, so when the test runs under cargo (`CARGO` is set)
/// it asks cargo to build both (a no-op under `cargo test --workspace`, which already did);
/// cargo releases its build lock before it runs tests, so this does not deadlock.
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
        c.args([
            "build",
            "-q",
            "-p",
            "emberlm-runtime",
            "--bin",
            "ember",
            "-p",
            "emberlm-trainer",
            "--bin",
            "ember-train",
        ]);
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

#[allow(unused_imports)] // each test binary includes this module and uses part of it
pub use emberlm_testkit::{KillOnDrop, Scratch};

/// A fresh, uniquely named scratch directory `emberlm-hostile-<name>-*` in the temp directory, removed
/// when dropped (see [`Scratch`]).
pub fn scratch(name: &str) -> Scratch {
    emberlm_testkit::scratch(&format!("emberlm-hostile-{name}-"))
}

/// A small seeded generator (xorshift64*): the kill moments and inputs are reproducible.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A text file of `lines` lines of 12 words from a small vocabulary (seeded).
pub fn write_text(path: &Path, lines: usize, seed: u64) {
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
    std::fs::write(path, s).unwrap();
}

/// Runs `ember-train tokenizer` on `text`: a 300-id tokenizer file at `out`.
pub fn train_tokenizer(text: &Path, out: &Path) {
    let o = std::process::Command::new(bin("ember-train"))
        .args(["tokenizer", "--vocab-size", "300", "--data"])
        .arg(text)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Flags of a tiny `ember-train pretrain` (with `--tokenizer` and `--data` still to add).
pub const TINY: &[&str] = &[
    "--layers",
    "1",
    "--heads",
    "2",
    "--dim",
    "16",
    "--context",
    "16",
    "--batch",
    "4",
    "--eval-every",
    "1000",
    "--eval-batches",
    "1",
    "--sample-tokens",
    "0",
];

/// Checks the failure contract of one bad-input case and returns a description of what is
/// wrong, if anything: non-zero exit, exactly one non-empty stderr line that starts with
/// `<prog>: error: ` and contains `needle` (case-insensitive), no panic text.
pub fn check_one_line_error(prog: &str, out: &Output, needle: &str) -> Option<String> {
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    if out.status.success() {
        return Some(format!("succeeded; stderr {err:?}"));
    }
    if out.status.code().is_none() {
        return Some(format!(
            "killed by a signal: {:?}; stderr {err:?}",
            out.status
        ));
    }
    if err.contains("panicked") || err.contains("RUST_BACKTRACE") {
        return Some(format!("panicked: {err:?}"));
    }
    if lines.len() != 1 {
        return Some(format!("{} stderr lines: {err:?}", lines.len()));
    }
    let prefix = format!("{prog}: error: ");
    if !lines[0].starts_with(&prefix) {
        return Some(format!("stderr does not start with {prefix:?}: {err:?}"));
    }
    if !lines[0].to_lowercase().contains(&needle.to_lowercase()) {
        return Some(format!("expected {needle:?} in {err:?}"));
    }
    None
}
