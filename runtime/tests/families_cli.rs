//! `ember` on a Llama-style family file: `inspect` shows the family and its settings (text and
//! `--json`, GPT-2's keys kept), `generate --tokens` and `score --tokens` run, and
//! `bench --random` names the presets when given an unknown one.
#![cfg(feature = "cli")]

use emberlm_formats::config::ModelConfig;
use emberlm_formats::ember::DType;
use emberlm_runtime::random::write_random_model;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn tiny_gemma() -> ModelConfig {
    let mut cfg = ModelConfig::preset("gemma3-270m").unwrap();
    (cfg.vocab_size, cfg.context_length, cfg.dim, cfg.n_layers) = (120, 32, 32, 2);
    (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim) = (2, 1, 16, 48);
    if let Some(s) = cfg.sliding.as_mut() {
        (s.window, s.every) = (4, 2);
    }
    cfg
}

#[test]
fn inspect_generate_and_score_a_family_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gemma.ember");
    write_random_model(&path, &tiny_gemma(), DType::Q8, 3, None).unwrap();
    let p = path.to_str().unwrap();
    let text = ok(&run(&["inspect", p]));
    assert!(
        text.contains("gemma3: 2 layers, 2 heads (1 key/value), head dim 16"),
        "{text}"
    );
    assert!(
        text.contains("sliding window 4, every 2-th layer global"),
        "{text}"
    );
    let j: serde_json::Value = serde_json::from_str(&ok(&run(&["inspect", "--json", p]))).unwrap();
    assert_eq!(j["kind"], "model");
    assert_eq!(j["family"], "gemma3");
    assert_eq!(j["config"]["n_kv_heads"], 1);
    assert_eq!(j["config"]["sliding"]["window"], 4);
    assert!(j["bytes_per_token"].as_u64().unwrap() > 0);
    let args = [
        "generate",
        "--tokens",
        "1,2,3",
        "--max-tokens",
        "6",
        "--json",
        p,
    ];
    let g: serde_json::Value = serde_json::from_str(&ok(&run(&args))).unwrap();
    assert_eq!(g["tokens"].as_array().unwrap().len(), 6);
    let s = ok(&run(&["score", "--tokens", "1,2,3,4,5,6,7", p]));
    assert!(s.contains("over 6 predicted tokens"), "{s}");
}

#[test]
fn bench_names_every_preset_for_an_unknown_size() {
    let out = run(&["bench", "--random", "7b"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for name in ModelConfig::PRESETS {
        assert!(err.contains(name), "{err}");
    }
}
