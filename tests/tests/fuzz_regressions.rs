//! Replays fuzz inputs through the fuzz targets' own code (`fuzz/src/`, compiled in here): every
//! file of `fuzz/regressions/<target>/` (inputs that once crashed, kept after the fix) and of
//! `fuzz/seeds/<target>/` (the committed seeds). A target panics when the code under test panics
//! or breaks one of the properties the target states, so each replay must return normally.
//!
//! Add a crash: copy `fuzz/artifacts/<target>/crash-…` to `fuzz/regressions/<target>/` with a
//! name saying what it was (see `fuzz/regressions/README.md`).

#[path = "../../fuzz/src/lib.rs"]
mod fuzz;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir`, sorted (none when `dir` does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    v.sort();
    v
}

/// Runs every input of `target` from `kind` (`regressions` or `seeds`); returns how many ran.
/// Panics naming every input that failed.
fn replay(target: &str, kind: &str) -> usize {
    let run = fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, run)| *run)
        .unwrap_or_else(|| panic!("no fuzz target {target}"));
    let inputs = files(&fuzz_dir().join(kind).join(target));
    let mut failed = Vec::new();
    for path in &inputs {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: these inputs fail: {failed:#?}"
    );
    inputs.len()
}

/// Every folder under `fuzz/regressions/` and `fuzz/seeds/` names a target.
#[test]
fn every_input_folder_is_a_target() {
    for kind in ["regressions", "seeds"] {
        for e in std::fs::read_dir(fuzz_dir().join(kind))
            .expect("fuzz/ folder")
            .flatten()
        {
            if e.path().is_dir() {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(
                    fuzz::TARGETS.iter().any(|(t, _)| *t == name),
                    "fuzz/{kind}/{name} is not a fuzz target"
                );
            }
        }
    }
}

macro_rules! target_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn regressions() {
                let n = super::replay(stringify!($name), "regressions");
                eprintln!("{}: {n} regression inputs replayed", stringify!($name));
            }

            #[test]
            fn seeds() {
                let n = super::replay(stringify!($name), "seeds");
                assert!(n >= 1, "fuzz/seeds/{} has no seed", stringify!($name));
            }
        }
    )*};
}

target_tests!(
    ember_reader,
    safetensors_import,
    hf_config,
    hf_family,
    tokenizer_encode,
    tokenizer_decode,
    tokenizer_parts,
    dataset_readers,
    session,
    kernels,
    serve_request,
);

/// Rewrites `fuzz/seeds/<target>/` from `fuzz/src/seeds.rs` (except `ember_reader`, whose seeds
/// are `.ember` files kept as committed). Run by hand after changing a target's input layout.
#[test]
#[ignore = "rewrites committed files; run by hand"]
fn write_seeds() {
    for (target, name, bytes) in fuzz::seeds::all() {
        let dir = fuzz_dir().join("seeds").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
