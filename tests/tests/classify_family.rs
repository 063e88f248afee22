//! `finetune classify` on imported modern-family models (Qwen2, Qwen3, Gemma 3): the classifier
//! learns a keyword rule, the exported `.ember` gives the trainer's own logits through
//! `ember classify --json`, LoRA trains the parameter count its shapes predict, and bad flags are
//! usage errors.
//!
//! Models: chatml_util's tiny Qwen2 (a real tokenizer), and the Qwen3 / Gemma 3 fixtures of
//! tests/fixtures/families given the same tokenizer (their embedding, and an untied head, grown
//! to its 1003 ids). The data is a tiny TSV written here.

mod chatml_util;
mod hostile_util;

use chatml_util::{grow_fixture, tokenizer_json, write_model};
use emberlm_trainer::checkpoint;
use emberlm_trainer::family::FamilyModel;
use emberlm_trainer::finetune::classify::ClassifierLogits;
use hostile_util::{bin, scratch};
use std::path::Path;
use std::process::{Command, Output};

fn ember_train(args: &[&str], dir: &Path) -> Output {
    Command::new(bin("ember-train"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn run(args: &[&str], dir: &Path) -> serde_json::Value {
    let o = ember_train(args, dir);
    assert!(
        o.status.success(),
        "ember-train {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A Hugging Face directory of the fixture `name` with chatml_util's tokenizer: every (101, C)
/// embedding or head grown to the tokenizer's 1003 rows.
fn write_fixture(dir: &Path, name: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/families")
        .join(name);
    grow_fixture(&src, dir, 1003, false);
    std::fs::copy(tokenizer_json(), dir.join("tokenizer.json")).unwrap();
}

const WORDS: &[&str] = &[
    "the", "a", "house", "river", "green", "walk", "table", "light", "stone", "music", "paper",
    "blue", "city", "quiet", "morning", "window", "garden", "small", "letter", "road",
];

/// `n` rows of label<TAB>text: `spam` exactly when the text holds the word "prize" (anywhere).
fn keyword_tsv(n: usize) -> String {
    let mut s = String::new();
    let mut state = 0x1234_5678u64;
    let mut next = |m: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % m
    };
    for i in 0..n {
        let len = 3 + next(5);
        let mut words: Vec<&str> = (0..len).map(|_| WORDS[next(WORDS.len())]).collect();
        let spam = i % 2 == 0;
        if spam {
            let at = next(len + 1);
            words.insert(at, "prize");
        }
        s.push_str(if spam { "spam\t" } else { "ham\t" });
        s.push_str(&words.join(" "));
        s.push('\n');
    }
    s
}

fn import(d: &Path, hf: &str, ckpt: &str) {
    run(&["import", "--from", hf, "--out", ckpt, "--json"], d);
}

#[test]
fn a_qwen2_classifier_learns_a_keyword_rule() {
    let dir = scratch("classify-family-keyword");
    let d: &Path = &dir;
    write_model(&d.join("hf"), "1002", false);
    import(d, "hf", "ckpt");
    std::fs::write(d.join("data.tsv"), keyword_tsv(240)).unwrap();
    let j = run(
        &[
            "finetune",
            "classify",
            "--init",
            "ckpt",
            "--data",
            "data.tsv",
            "--out",
            "clf",
            "--trainable",
            "all",
            "--readout",
            "last-real",
            "--lr",
            "3e-3",
            "--weight-decay",
            "0",
            "--epochs",
            "8",
            "--batch",
            "8",
            "--threads",
            "2",
            "--json",
        ],
        d,
    );
    let test = j["test_accuracy"].as_f64().unwrap();
    assert!(test >= 0.95, "test accuracy {test}: {j}");
    assert_eq!(j["labels"], serde_json::json!(["ham", "spam"]));
    // The checkpoint keeps the family, the labels and the imported HF files.
    let ckpt = d.join(j["checkpoint"].as_str().unwrap());
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ckpt.join("trainer.json")).unwrap()).unwrap();
    assert!(state["family"].is_object(), "{state}");
    assert_eq!(
        state["classifier"]["labels"],
        serde_json::json!(["ham", "spam"])
    );
    let l = checkpoint::load(&ckpt, false).unwrap();
    assert!(l.state.hf.is_some(), "the imported HF files are kept");
    // The exported classifier runs in `ember classify` and agrees on a clear case.
    let o = Command::new(bin("ember"))
        .arg("classify")
        .arg(d.join("clf/model.ember"))
        .args(["--text", "the river prize walk", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(c["label"], "spam", "{c}");
}

/// Trains a classifier of the fixture for one epoch, then compares `ember classify --tokens
/// --json` logits of a few sequences with the trainer's forward of the saved checkpoint.
fn exported_logits_match(name: &str, tuning: &[&str]) {
    let dir = scratch(&format!("classify-family-parity-{name}"));
    let d: &Path = &dir;
    write_fixture(&d.join("hf"), name);
    import(d, "hf", "ckpt");
    std::fs::write(d.join("data.tsv"), keyword_tsv(40)).unwrap();
    let mut args = vec![
        "finetune",
        "classify",
        "--init",
        "ckpt",
        "--data",
        "data.tsv",
        "--out",
        "clf",
        "--readout",
        "last-real",
        "--lr",
        "1e-2",
        "--epochs",
        "1",
        "--batch",
        "4",
        "--json",
    ];
    args.extend_from_slice(tuning);
    let j = run(&args, d);
    let ckpt = d.join(j["checkpoint"].as_str().unwrap());
    let l = checkpoint::load(&ckpt, false).unwrap();
    let fam = l.family.expect("a family checkpoint");
    let labels = l.state.classifier.as_ref().unwrap().labels.len();
    let mut m = FamilyModel::classifier_from_params(&fam, labels, l.params).unwrap();
    // The head trained away from its initialisation: the run changed the weights that matter.
    for seq in [&[5u32, 17, 300][..], &[1000, 2, 3, 4, 5, 6, 7, 8], &[42]] {
        let want = m.eval_logits(seq, 1, seq.len()).unwrap();
        let want = &want[(seq.len() - 1) * labels..];
        let ids: Vec<String> = seq.iter().map(u32::to_string).collect();
        let o = Command::new(bin("ember"))
            .arg("classify")
            .arg(d.join("clf/model.ember"))
            .args(["--tokens", &ids.join(","), "--json", "--threads", "1"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let got: Vec<f32> = c["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got.len(), labels);
        let scale = want.iter().fold(1e-3f32, |a, v| a.max(v.abs()));
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= 1e-4 * scale,
                "{name} {seq:?}: ember {got:?} vs trainer {want:?}"
            );
        }
    }
}

#[test]
fn a_gemma3_classifier_exports_the_trainers_logits() {
    exported_logits_match("gemma3", &["--trainable", "all", "--weight-decay", "0"]);
}

#[test]
fn a_qwen3_lora_classifier_exports_the_trainers_logits() {
    exported_logits_match("qwen3", &["--lora-rank", "4", "--lora-alpha", "8"]);
}

/// LoRA at rank r on every linear layer of a classifier, from config.json's shapes:
/// Σ r·(in + out) over q, k, v, o, gate, up, down of every layer, and r·(C + K) for the (K, C)
/// head.
fn lora_count(hf: &Path, r: u64, k: u64) -> u64 {
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hf.join("config.json")).unwrap()).unwrap();
    let get = |key: &str| c[key].as_u64().unwrap();
    let (d, f, l, h, hk) = (
        get("hidden_size"),
        get("intermediate_size"),
        get("num_hidden_layers"),
        get("num_attention_heads"),
        get("num_key_value_heads"),
    );
    let hd = c["head_dim"].as_u64().unwrap_or(d / h);
    let (q, kv) = (h * hd, hk * hd);
    let per_layer = (d + q) + 2 * (d + kv) + (q + d) + 2 * (d + f) + (f + d);
    r * (per_layer * l + d + k)
}

#[test]
fn lora_trains_the_parameters_its_shapes_predict() {
    let dir = scratch("classify-family-lora-count");
    let d: &Path = &dir;
    write_model(&d.join("hf"), "1002", false);
    import(d, "hf", "ckpt");
    std::fs::write(d.join("data.tsv"), keyword_tsv(20)).unwrap();
    let j = run(
        &[
            "finetune",
            "classify",
            "--init",
            "ckpt",
            "--data",
            "data.tsv",
            "--out",
            "lora",
            "--lora-rank",
            "3",
            "--epochs",
            "1",
            "--batch",
            "4",
            "--json",
        ],
        d,
    );
    assert_eq!(
        j["trainable_params"].as_u64().unwrap(),
        lora_count(&d.join("hf"), 3, 2),
        "{j}"
    );
}

#[test]
fn bad_flags_name_what_is_wrong() {
    let dir = scratch("classify-family-flags");
    let d: &Path = &dir;
    write_model(&d.join("hf"), "1002", false);
    import(d, "hf", "ckpt");
    std::fs::write(d.join("data.tsv"), keyword_tsv(20)).unwrap();
    let base = [
        "finetune", "classify", "--init", "ckpt", "--data", "data.tsv", "--out", "x",
    ];
    for (extra, needle) in [
        (
            &["--dropout", "0.1"][..],
            "the qwen2 family trains without dropout",
        ),
        (&["--trainable", "last-9"][..], "--trainable"),
        (&["--lora-rank", "0"][..], "--lora-rank"),
        (&["--lora-rank", "2", "--lora-targets", "nope"][..], "nope"),
        (&["--readout", "first"][..], "--readout"),
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let o = ember_train(&args, d);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
