//! The bodies of emberlm's fuzz targets, one module per target, each with `run(data: &[u8])`.
//!
//! Contract of every `run`: whatever the bytes, the code under test returns `Ok` or a typed error;
//! `run` panics only when the code under test panics or breaks a stated property (a round trip, an
//! independent reference implementation, a documented invariant). Targets are deterministic: the
//! same bytes always do the same thing.
//!
//! This file is also compiled into `tests/tests/fuzz_regressions.rs` (through `#[path]`), which
//! replays `fuzz/regressions/<target>/*` and `fuzz/seeds/<target>/*` in the default `cargo test`;
//! so nothing here may depend on libFuzzer, and modules refer to each other with `super::`.
#![forbid(unsafe_code)]

pub mod bpe_reference;
pub mod dataset_readers;
pub mod ember_reader;
pub mod hf_config;
pub mod hf_family;
pub mod input;
pub mod kernels;
pub mod safetensors_import;
pub mod seeds;
pub mod serve_request;
pub mod session;
pub mod tokenizer_decode;
pub mod tokenizer_encode;
pub mod tokenizer_parts;

/// A target: the name of its `fuzz_targets/` file and `seeds/` / `regressions/` folders, and
/// its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: [Target; 11] = [
    ("ember_reader", ember_reader::run),
    ("safetensors_import", safetensors_import::run),
    ("hf_config", hf_config::run),
    ("hf_family", hf_family::run),
    ("tokenizer_encode", tokenizer_encode::run),
    ("tokenizer_decode", tokenizer_decode::run),
    ("tokenizer_parts", tokenizer_parts::run),
    ("dataset_readers", dataset_readers::run),
    ("session", session::run),
    ("kernels", kernels::run),
    ("serve_request", serve_request::run),
];
