//! `ember-train finetune classify` end to end on a tiny model: accuracy on a separable synthetic
//! dataset, the exported classifier against the trainer's forward, LoRA's parameter count and
//! merged export, and bad input.

mod cli_util;

use cli_util::{run_err, run_json, scratch};
use emberlm_formats::meta::{Readout, Task};
use emberlm_runtime::{Model, Session, SessionOptions};
use emberlm_trainer::checkpoint;
use emberlm_trainer::finetune::tune::{LoraSpec, LoraTargets, lora_param_count};
use emberlm_trainer::model::{Gpt, Mode, tensor_layout};
use std::path::Path;

/// Runtime logits vs the trainer's forward of the same weights (both f32).
const PARITY_ATOL: f32 = 1e-4;

/// A GPT-2-vocabulary language model checkpoint (2 pretraining steps on a tiny text) in `dir/lm`.
fn tiny_lm(dir: &Path) {
    let text: String = (0..200)
        .map(|i| format!("the cat sat on mat number {i} and then it slept. "))
        .collect();
    std::fs::write(dir.join("lm.txt"), text).unwrap();
    run_json(
        dir,
        &[
            "pretrain",
            "--data",
            "lm.txt",
            "--layers",
            "1",
            "--heads",
            "2",
            "--dim",
            "16",
            "--context",
            "32",
            "--batch",
            "2",
            "--steps",
            "2",
            "--tied-head",
            "--init-scheme",
            "gpt2",
            "--out",
            "lm",
            "--json",
        ],
    );
}

/// A separable two-class TSV: "spam" rows talk about prizes, "ham" rows about dinner; 160 rows,
/// 3:1 ham, plus one malformed row (no text) that must be skipped and counted.
fn write_sms(dir: &Path) {
    let spam = [
        "WINNER! claim your free prize now, call",
        "Free cash award waiting, text WIN to",
        "URGENT you won a holiday voucher, reply",
    ];
    let ham = [
        "are we still on for dinner at",
        "ok see you at the station around",
        "can you pick up some milk on the way home at",
    ];
    let mut s = String::new();
    for i in 0..160 {
        if i % 4 == 0 {
            s.push_str(&format!("spam\t{} {}\n", spam[i % 3], 80000 + i));
        } else {
            s.push_str(&format!("ham\t{} {} pm\n", ham[i % 3], i % 12));
        }
    }
    s.push_str("ham\t\n");
    std::fs::write(dir.join("sms.tsv"), s).unwrap();
}

/// The runtime's class logits after `tokens` equal the trainer's forward of the checkpoint in
/// `run` at the last position.
fn assert_runtime_matches_trainer(dir: &Path, run: &str, tokens: &[u32]) {
    let model = Model::open(&dir.join(run).join("model.ember")).unwrap();
    let mut s = Session::new(&model, &SessionOptions::default()).unwrap();
    let got = s.prefill(tokens).unwrap().to_vec();
    let ck = checkpoint::load(&dir.join(run), false).unwrap();
    let mut gpt = Gpt::classifier_from_params(ck.config, 2, ck.params).unwrap();
    gpt.forward(tokens, None, 1, tokens.len(), Mode::Eval)
        .unwrap();
    let want = &gpt.logits().unwrap()[(tokens.len() - 1) * 2..];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= PARITY_ATOL, "{got:?} vs {want:?}");
    }
}

fn encode(dir: &Path, run: &str, text: &str) -> Vec<u32> {
    checkpoint::load(&dir.join(run), false)
        .unwrap()
        .tokenizer
        .as_ref()
        .unwrap()
        .encode_to_vec(text, emberlm_formats::tokenizer::SpecialTokens::AsText)
}

#[test]
fn classify_trains_exports_and_matches_the_trainer() {
    let dir = scratch("ft-classify");
    tiny_lm(&dir);
    write_sms(&dir);
    let j = run_json(
        &dir,
        &[
            "finetune",
            "classify",
            "--init",
            "lm",
            "--data",
            "sms.tsv",
            "--out",
            "cls",
            "--trainable",
            "all",
            "--lr",
            "2e-3",
            "--epochs",
            "3",
            "--batch",
            "8",
            "--eval-every",
            "10",
            "--json",
        ],
    );
    assert_eq!(j["labels"], serde_json::json!(["ham", "spam"]));
    assert_eq!(j["skipped_rows"], 1);
    assert_eq!(j["train_examples"], 112);
    assert_eq!(j["val_examples"], 16);
    assert_eq!(j["test_examples"], 32);
    for k in ["train_accuracy", "val_accuracy", "test_accuracy"] {
        assert!(j[k].as_f64().unwrap() >= 0.9, "{k}: {j}");
    }
    for k in ["train_loss", "val_loss", "test_loss"] {
        assert!(j[k].as_f64().unwrap().is_finite(), "{k}: {j}");
    }
    let metrics = std::fs::read_to_string(dir.join("cls/metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 1 + 3, "{metrics}");
    // Issue 22, item 11: --json has every epoch's figures, the same as metrics.csv, and the
    // last one equals the final keys.
    let acc = std::fs::read_to_string(dir.join(j["accuracy_plot"].as_str().unwrap())).unwrap();
    assert_eq!(
        acc.matches("<polyline").count(),
        3,
        "train, validation and test accuracy"
    );
    let per_epoch = j["epoch_metrics"]
        .as_array()
        .unwrap_or_else(|| panic!("{j}"));
    assert_eq!(per_epoch.len(), 3, "{j}");
    let header: Vec<&str> = metrics.lines().next().unwrap().split(',').collect();
    for (line, e) in metrics.lines().skip(1).zip(per_epoch) {
        for (col, v) in header.iter().zip(line.split(',')) {
            // (serde_json's float parsing may differ from Rust's in the last bit)
            let want: f64 = v.parse().unwrap();
            let got = e[*col].as_f64().unwrap_or_else(|| panic!("{col}: {e}"));
            assert!((got - want).abs() <= 1e-12 * want.abs(), "{col}: {e}");
        }
    }
    for k in ["train_accuracy", "val_loss", "test_accuracy"] {
        assert_eq!(per_epoch[2][k], j[k], "{k}");
    }

    // The exported model is a classifier with the labels, the readout and the length.
    let model = Model::open(&dir.join("cls/model.ember")).unwrap();
    let length = j["length"].as_u64().unwrap() as usize;
    match model.task() {
        Task::Classifier {
            labels,
            readout,
            pad_id,
            length: l,
        } => {
            assert_eq!(labels, &["ham", "spam"]);
            assert_eq!(*readout, Readout::Last);
            assert_eq!(*pad_id, 50256);
            assert_eq!(*l, Some(length as u32));
        }
        other => panic!("not a classifier: {other:?}"),
    }
    // Its logits equal the trainer's forward of the checkpoint at the last padded position.
    let mut tokens = encode(&dir, "cls", "claim your free prize");
    tokens.resize(length, 50256);
    assert_runtime_matches_trainer(&dir, "cls", &tokens);
    // A classifier checkpoint is not a language model for eval.
    let err = run_err(&dir, &["eval", "cls", "--data", "lm.txt"], 1);
    assert!(err.contains("classifier"), "{err}");
}

#[test]
fn lora_counts_its_parameters_and_exports_merged_weights() {
    let dir = scratch("ft-lora");
    tiny_lm(&dir);
    write_sms(&dir);
    let j = run_json(
        &dir,
        &[
            "finetune",
            "classify",
            "--init",
            "lm",
            "--data",
            "sms.tsv",
            "--out",
            "lora",
            "--lora-rank",
            "2",
            "--lora-alpha",
            "8",
            "--lr",
            "5e-3",
            "--epochs",
            "2",
            "--readout",
            "last-real",
            "--json",
        ],
    );
    let ck = checkpoint::load(&dir.join("lora"), false).unwrap();
    let spec = LoraSpec {
        rank: 2,
        alpha: 8.0,
        targets: LoraTargets::ALL,
    };
    // Per block: q, k, v, proj 2·(16+16) each, fc and ff.proj 2·(16+64) each; head 2·(16+2).
    let expected = 4 * 2 * 32 + 2 * 2 * 80 + 2 * 18;
    assert_eq!(lora_param_count(&ck.config, Some(2), &spec), expected);
    assert_eq!(j["trainable_params"], expected);
    // The base weights changed only where adapters sit (merged at export), norms did not.
    let base = checkpoint::load(&dir.join("lm"), false).unwrap();
    let range = |classes: Option<usize>, name: &str| {
        tensor_layout(&ck.config, classes)
            .into_iter()
            .find(|t| t.name == name)
            .map(|t| t.range())
            .unwrap()
    };
    for (name, changed) in [
        ("blocks.0.att.qkv.weight", true),
        ("blocks.0.ff.fc.weight", true),
        ("blocks.0.norm1.scale", false),
        ("blocks.0.ff.fc.bias", false),
        ("tok_emb.weight", false),
    ] {
        let a = &base.params[range(None, name)];
        let b = &ck.params[range(Some(2), name)];
        assert_eq!(a != b, changed, "{name}");
    }
    // The exported (merged) model equals the trainer's forward of the checkpoint; last-real
    // readout: no padding.
    let tokens = encode(&dir, "lora", "see you at dinner");
    assert_runtime_matches_trainer(&dir, "lora", &tokens);
}

#[test]
fn classify_rejects_bad_input_with_one_line() {
    let dir = scratch("ft-bad");
    tiny_lm(&dir);
    write_sms(&dir);
    std::fs::write(dir.join("one.tsv"), "ham\thello\nham\tthere\n").unwrap();
    let base = [
        "finetune", "classify", "--init", "lm", "--data", "sms.tsv", "--out", "o",
    ];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        v
    };
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["finetune", "classify", "--data", "sms.tsv", "--out", "o"],
            2,
            "--init",
        ),
        (with(&["--batch", "0"]), 2, "--batch"),
        (with(&["--readout", "first"]), 2, "--readout"),
        (with(&["--trainable", "last-9"]), 2, "last-9"),
        (with(&["--trainable", "some"]), 2, "--trainable"),
        (with(&["--lora-alpha", "4"]), 2, "--lora-rank"),
        (with(&["--lora-rank", "0"]), 2, "--lora-rank"),
        (
            with(&["--lora-rank", "2", "--lora-targets", "mlp"]),
            2,
            "--lora-targets",
        ),
        (with(&["--max-length", "999"]), 2, "--max-length"),
        (with(&["--dtype", "int3"]), 2, "--dtype"),
        (with(&["--lr", "-1"]), 2, "--lr"),
        (
            vec![
                "finetune", "classify", "--init", "lm", "--data", "one.tsv", "--out", "o",
            ],
            1,
            "one label",
        ),
        (
            vec![
                "finetune",
                "classify",
                "--init",
                "lm",
                "--data",
                "missing.tsv",
                "--out",
                "o",
            ],
            1,
            "missing.tsv",
        ),
        (
            vec![
                "finetune", "classify", "--init", "nope", "--data", "sms.tsv", "--out", "o",
            ],
            1,
            "nope",
        ),
    ];
    for (args, code, needle) in &cases {
        let err = run_err(&dir, args, *code);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// Issue 22, item 6: without a terminal a status line (with its ETA) comes after the first step;
/// the first Ctrl-C says at once that the run is stopping, skips the evaluation of every split,
/// saves the model so far with its curves, names them, and exits 130.
#[test]
fn ctrl_c_saves_the_model_so_far_and_exits_130() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let d = scratch("clf-sigint");
    tiny_lm(&d);
    write_sms(&d);
    let mut child = cli_util::KillOnDrop::new(
        cli_util::cmd(
            &d,
            &[
                "finetune", "classify", "--init", "lm", "--data", "sms.tsv", "--out", "clf",
                "--epochs", "100000", "--batch", "2", "--json",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = loop {
        let l = lines
            .next()
            .expect("stderr closed before the first step")
            .unwrap();
        if l.starts_with("step ") {
            break l;
        }
    };
    assert!(
        first.contains("ETA") && first.contains("examples/s"),
        "{first}"
    );
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let out = child.wait_with_output().unwrap();
    let text = rest.join("\n");
    assert_eq!(out.status.code(), Some(130), "{text}");
    assert!(text.contains("Ctrl-C: stopping"), "{text}");
    assert!(text.contains("saved the model so far"), "{text}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["interrupted"], true, "{j}");
    for key in [
        "model",
        "checkpoint",
        "loss_csv",
        "loss_plot",
        "metrics_csv",
    ] {
        let p = j[key].as_str().unwrap_or_else(|| panic!("{key}: {j}"));
        assert!(d.join(p).exists(), "{key}: {p}");
    }
    assert!(
        checkpoint::load(&d.join("clf"), false)
            .unwrap()
            .state
            .classifier
            .is_some()
    );
}
