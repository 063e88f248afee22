//! Helpers shared by the hostile-input tests (`kill_safe`, `resource_limits`, `cli_matrix`): the
//! real `ember` and `ember-train` binaries, scratch directories, a seeded generator, and the
//! one-line error check.
#![allow(dead_code)]

use std::path::Path;
use std::process::Output;

#[allow(unused_imports)] // each test binary includes this module and uses part of it
pub use emberlm_testkit::{KillOnDrop, Rng, Scratch, bin, write_random_words};

/// A fresh, uniquely named scratch directory `emberlm-hostile-<name>-*` in the temp directory, removed
/// when dropped (see [`Scratch`]).
pub fn scratch(name: &str) -> Scratch {
    emberlm_testkit::scratch(&format!("emberlm-hostile-{name}-"))
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
