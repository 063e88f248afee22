//! A Hugging Face GPT-2 checkpoint whose vocabulary is not GPT-2's and that has no vocab.json /
//! merges.txt (issue 22, item 3): `ember-train import` takes it without a tokenizer and says so,
//! `ember-train export` writes a `.ember` without one, and `ember generate --tokens` / `ember
//! score --tokens` run it; the commands of `ember-train` that need text refuse it by name.
//!
//! The checkpoint is built at run time from the committed `fixtures/hf_tiny` (vocabulary 97,
//! tied head): its token embedding cut to 96 rows and `vocab_size` set to 96.

mod hostile_util;

use hostile_util::{bin, scratch};
use safetensors::tensor::TensorView;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const VOCAB: usize = 96;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Writes the 96-id checkpoint (model.safetensors + config.json, nothing else) into `dir`.
fn write_hf_96(dir: &Path) {
    let src = fixtures().join("hf_tiny");
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in st.tensors() {
        let (mut shape, mut data) = (t.shape().to_vec(), t.data().to_vec());
        if name.ends_with("wte.weight") || name == "lm_head.weight" {
            assert_eq!(shape[0], 97, "{name}: the fixture's vocabulary changed");
            let row = data.len() / shape[0];
            shape[0] = VOCAB;
            data.truncate(row * VOCAB);
        }
        tensors.push((name, t.dtype(), shape, data));
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["vocab_size"] = serde_json::json!(VOCAB);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    assert!(!dir.join("vocab.json").exists() && !dir.join("merges.txt").exists());
}

fn run(name: &str, dir: &Path, args: &[&str]) -> Output {
    Command::new(bin(name))
        .args(args)
        .current_dir(dir)
        .env("EMBER_CACHE", dir.join("cache"))
        .output()
        .unwrap()
}

fn ok(name: &str, dir: &Path, args: &[&str]) -> (String, String) {
    let out = run(name, dir, args);
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{name} {args:?}: {}\n{o}\n{e}",
        out.status
    );
    (o, e)
}

/// Fails with exit code 1 and one error line that contains every needle.
fn fails(name: &str, dir: &Path, args: &[&str], needles: &[&str]) {
    let out = run(name, dir, args);
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{name} {args:?}: {e}");
    assert!(!e.contains("panicked"), "{e}");
    for n in needles {
        assert!(e.contains(n), "{name} {args:?}: {n:?} not in {e}");
    }
}

#[test]
fn a_model_without_tokenizer_imports_exports_and_runs_on_token_ids() {
    let tmp = scratch("no-tok");
    let d: &Path = &tmp;
    std::fs::create_dir(d.join("hf")).unwrap();
    write_hf_96(&d.join("hf"));

    let (stdout, _) = ok(
        "ember-train",
        d,
        &["import", "--from", "hf", "--out", "ck", "--json"],
    );
    let j: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(j["tokenizer"], "none", "{j}");
    assert_eq!(j["config"]["vocab_size"], VOCAB, "{j}");
    assert!(!d.join("ck/tokenizer.ember").exists());
    // The human output says what it means.
    let (stdout, _) = ok(
        "ember-train",
        d,
        &["import", "--from", "hf", "--out", "ck2"],
    );
    assert!(
        stdout.contains("no tokenizer") && stdout.contains("(96)") && stdout.contains("--tokens"),
        "{stdout}"
    );

    ok(
        "ember-train",
        d,
        &["export", "ck", "--dtype", "f32", "--out", "m.ember"],
    );
    let m = emberlm_runtime::Model::open(&d.join("m.ember")).unwrap();
    assert!(
        m.tokenizer().unwrap().is_none(),
        "the .ember has no tokenizer"
    );
    assert_eq!(m.config().vocab_size, VOCAB);

    let (g, _) = ok(
        "ember",
        d,
        &[
            "generate",
            "m.ember",
            "--tokens",
            "1,2,3",
            "--max-tokens",
            "4",
            "--temperature",
            "0",
            "--json",
        ],
    );
    let g: serde_json::Value = serde_json::from_str(g.trim()).unwrap();
    let ids = g["tokens"].as_array().unwrap_or_else(|| panic!("{g}"));
    assert!(!ids.is_empty(), "{g}");
    assert!(
        ids.iter().all(|t| (t.as_u64().unwrap() as usize) < VOCAB),
        "{g}"
    );
    let (s, _) = ok(
        "ember",
        d,
        &["score", "m.ember", "--tokens", "5,6,7,8", "--json"],
    );
    let s: serde_json::Value = serde_json::from_str(s.trim()).unwrap();
    let loss = s["loss"].as_f64().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{s}");

    // Text needs a tokenizer: the runtime and every text command of ember-train say so.
    fails(
        "ember",
        d,
        &["generate", "m.ember", "--prompt", "hi"],
        &["no tokenizer", "--tokens"],
    );
    std::fs::write(d.join("text.txt"), "some text to read. ".repeat(50)).unwrap();
    for args in [
        &["eval", "ck", "--data", "text.txt"][..],
        &[
            "pretrain", "--init", "ck", "--data", "text.txt", "--steps", "1",
        ][..],
        &[
            "finetune", "classify", "--init", "ck", "--data", "text.txt", "--out", "c",
        ][..],
        &[
            "finetune", "instruct", "--init", "ck", "--data", "text.txt", "--out", "i",
        ][..],
    ] {
        fails(
            "ember-train",
            d,
            args,
            &["has no tokenizer", "vocab.json", "--tokens"],
        );
    }
}
