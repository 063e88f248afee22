//! Helpers shared by the `cli_*` tests: run the real `ember-train` binary in a scratch directory.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ember-train")
}

#[allow(unused_imports)] // each test binary includes this module and uses part of it
pub use emberlm_testkit::{KillOnDrop, Scratch, write_sentences};

/// A fresh, uniquely named scratch directory `emberlm-cli-<name>-*` in the temp directory, removed
/// when dropped (see [`Scratch`]).
pub fn scratch(name: &str) -> Scratch {
    emberlm_testkit::scratch(&format!("emberlm-cli-{name}-"))
}

/// A command for `ember-train ARGS` in `dir`, with its own token cache.
pub fn cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .current_dir(dir)
        .env("EMBER_CACHE", dir.join("cache"))
        .env_remove("EMBER_DATA");
    c
}

/// Runs and returns the output.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    cmd(dir, args).output().unwrap()
}

/// Runs, asserts success, and parses the JSON object on stdout.
pub fn run_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "ember-train {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.lines().count(),
        1,
        "one JSON line on stdout: {stdout}"
    );
    serde_json::from_str(&stdout).unwrap()
}

/// Runs, asserts failure with `code`, returns stderr; checks the one-line error format.
pub fn run_err(dir: &Path, args: &[&str], code: i32) -> String {
    let out = run(dir, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "ember-train {args:?}: {err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ember-train: error: "),
        "last stderr line is the error: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    last.to_string()
}

/// A tiny model on the built-in corpus (vocabulary 300): fast in debug builds.
pub const TINY: &[&str] = &[
    "--vocab",
    "300",
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
    "--eval-batches",
    "2",
];

/// `pretrain` with the tiny model plus `extra`.
pub fn tiny_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["pretrain"];
    v.extend_from_slice(TINY);
    v.extend_from_slice(extra);
    v
}
