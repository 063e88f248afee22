//! `EMBER_KERNELS` picks the kernel set a session runs (e.g. `avx2` on an AVX-512 host, to
//! compare the two), and an unknown name is an error naming the request and what the host runs.
#![cfg(feature = "cli")]

use emberlm_formats::config::ModelConfig;
use emberlm_formats::ember::DType;
use emberlm_runtime::kernels::Kernels;
use emberlm_runtime::random::write_random_model;
use std::process::{Command, Output};

fn generate(model: &str, kernels: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ember"));
    cmd.args([
        "generate",
        "--tokens",
        "1,2,3",
        "--max-tokens",
        "3",
        "--json",
        model,
    ]);
    match kernels {
        Some(k) => cmd.env("EMBER_KERNELS", k),
        None => cmd.env_remove("EMBER_KERNELS"),
    };
    cmd.output().unwrap()
}

fn kernels_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    j["kernels"].as_str().unwrap().to_string()
}

#[test]
fn ember_kernels_picks_the_set_and_rejects_unknown_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.ember");
    let mut cfg = ModelConfig::preset("gemma3-270m").unwrap();
    (cfg.vocab_size, cfg.context_length, cfg.dim, cfg.n_layers) = (120, 32, 64, 1);
    (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim) = (2, 1, 32, 96);
    write_random_model(&path, &cfg, DType::Q8, 5, None).unwrap();
    let p = path.to_str().unwrap();
    assert_eq!(kernels_of(&generate(p, None)), Kernels::detect().name());
    for k in Kernels::available() {
        assert_eq!(kernels_of(&generate(p, Some(k.name()))), k.name());
    }
    let out = generate(p, Some("avx9000"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("EMBER_KERNELS") && err.contains("\"avx9000\"") && err.contains("reference"),
        "{err}"
    );
}
