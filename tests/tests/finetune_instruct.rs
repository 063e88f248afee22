//! `ember-train finetune instruct` end to end, in process, on a tiny model: a generated Alpaca
//! file (40 entries), a BPE tokenizer trained on it, a fresh 1-block model written as a
//! checkpoint; then the command, and checks of everything it promises (loss falls, loss.csv and
//! loss.svg, a checkpoint, model.ember with the template, responses.json = the test split with
//! the four keys), and of its bad-input errors.

use emberlm_formats::config::GptConfig;
use emberlm_formats::meta::PromptTemplate;
use emberlm_formats::tokenizer::{Tokenizer, TrainOptions, train_bpe};
use emberlm_trainer::checkpoint::{self, Contents, RngState, TokenizerRef, TrainerState};
use emberlm_trainer::cli::instruct::{self, InstructArgs};
use emberlm_trainer::cli::{CliError, Console, Outcome};
use emberlm_trainer::model::{Gpt, Init};
use std::path::{Path, PathBuf};

/// A fresh, uniquely named directory `emberlm-instruct-<name>-*` in the temp directory, removed
/// with everything in it when the returned guard drops (also when the test panics).
fn tempdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("emberlm-instruct-{name}-"))
        .tempdir()
        .unwrap()
}

/// 40 entries of a few learnable patterns; every third has an input.
fn alpaca_entries() -> Vec<serde_json::Value> {
    let colours = [
        "red", "green", "blue", "yellow", "black", "white", "pink", "grey",
    ];
    let animals = ["cat", "dog", "cow", "fox", "owl"];
    let mut v = Vec::new();
    for i in 0..40 {
        let c = colours[i % colours.len()];
        let a = animals[i % animals.len()];
        let e = match i % 3 {
            0 => serde_json::json!({
                "instruction": format!("What colour is the {a}?"),
                "input": "",
                "output": format!("The {a} is {c}."),
            }),
            1 => serde_json::json!({
                "instruction": "Rewrite the sentence in the plural.",
                "input": format!("The {a} is {c}."),
                "output": format!("The {a}s are {c}."),
            }),
            _ => serde_json::json!({
                "instruction": format!("Name an animal that is {c}."),
                "output": format!("A {c} {a}."),
            }),
        };
        v.push(e);
    }
    v
}

/// Writes the data file and a fresh tiny model's checkpoint; returns (data, checkpoint dir).
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let entries = alpaca_entries();
    let data = dir.join("tiny-alpaca.json");
    std::fs::write(&data, serde_json::to_string_pretty(&entries).unwrap()).unwrap();
    // A small BPE vocabulary trained on the prompts and outputs keeps the model tiny.
    let t = PromptTemplate::alpaca();
    let texts: Vec<String> = entries
        .iter()
        .map(|e| {
            let s = |k: &str| e.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
            format!(
                "{}{}",
                t.render(&s("instruction"), &s("input")),
                s("output")
            )
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tok: Tokenizer = train_bpe(&refs, 400, &TrainOptions::default()).unwrap();
    let cfg = GptConfig {
        vocab_size: tok.vocab_size(),
        context_length: 96,
        dim: 32,
        n_layers: 1,
        n_heads: 2,
        qkv_bias: true,
        tied_head: false,
    };
    let model = Gpt::new(cfg, Init::Gpt2, 5).unwrap();
    let state = TrainerState {
        format: checkpoint::FORMAT.into(),
        version: checkpoint::VERSION,
        kind: "test".into(),
        config: cfg.into(),
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        tokens_seen: 0,
        first_loss: None,
        train_seconds: 0.0,
        adam_step: None,
        rng: RngState {
            shuffle_seed: 1,
            dropout_seed: 2,
            eval_seed: 3,
        },
        hyper: None,
        data: vec![],
        tokenizer: TokenizerRef {
            kind: "bpe".into(),
            vocab_size: tok.vocab_size(),
            hash: "0".into(),
        },
        history: vec![],
        source: None,
        classifier: None,
        family: None,
        hf: None,
    };
    let ck = dir.join("init");
    checkpoint::write_dir(
        &ck,
        &Contents {
            state: &state,
            shapes: &cfg.tensor_shapes(),
            params: model.params(),
            moments: None,
            tokenizer: &tok,
        },
    )
    .unwrap();
    (data, ck)
}

/// Runs the command with `a` (the flags as fields: `InstructArgs` is what argh parses into).
fn run(a: InstructArgs) -> (Result<Outcome, CliError>, String) {
    let (mut log, mut out) = (Vec::new(), Vec::new());
    let r = instruct::run(
        a,
        &mut Console {
            log: &mut log,
            out: &mut out,
            tty: false,
        },
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&log),
        String::from_utf8_lossy(&out)
    );
    (r, text)
}

fn base(ck: &Path, data: &Path, out: &Path) -> InstructArgs {
    InstructArgs {
        init: Some(ck.to_path_buf()),
        data: Some(data.to_path_buf()),
        out: Some(out.to_path_buf()),
        ..InstructArgs::default()
    }
}

#[test]
fn instruct_fine_tunes_exports_and_answers_the_test_split() {
    let tmp = tempdir("run");
    let dir = tmp.path();
    let (data, ck) = setup(dir);
    let out = dir.join("out");
    let (r, text) = run(InstructArgs {
        epochs: Some(4),
        batch: Some(4),
        lr: Some(3e-3),
        eval_every: Some(4),
        eval_batches: Some(2),
        max_new_tokens: Some(24),
        threads: Some(2),
        json: true,
        ..base(&ck, &data, &out)
    });
    let o = r.unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(o.exit_code, 0);
    let j = &o.json;
    // 40 entries: 34 train (8 batches of 4 per epoch), 4 test, 2 validation.
    assert_eq!(j["steps"], 32, "{j}");
    assert_eq!(
        j["split"],
        serde_json::json!({"train": 34, "val": 2, "test": 4})
    );
    let f = |k: &str| j[k].as_f64().unwrap_or_else(|| panic!("{k} in {j}"));
    assert!(
        f("train_loss") < 0.7 * f("initial_train_loss"),
        "train loss did not fall enough: {j}\n{text}"
    );
    assert!(f("val_loss") < f("initial_val_loss"), "{j}");
    assert!(f("test_loss").is_finite() && f("tokens_per_s") > 0.0);
    assert_eq!(
        j["trainable_params"].as_u64().unwrap(),
        j["parameters"].as_u64().unwrap()
    );

    // The loss curve: a header, the step-0 row, then one row per evaluation.
    let csv = std::fs::read_to_string(out.join("loss.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "step,epoch,tokens_seen,lr,train_loss,val_loss");
    assert!(rows[1].starts_with("0,"), "{csv}");
    assert!(rows.last().unwrap().starts_with("32,"), "{csv}");
    assert!(
        std::fs::read_to_string(out.join("loss.svg"))
            .unwrap()
            .contains("<svg")
    );

    // The checkpoint holds the fine-tuned weights.
    let l = checkpoint::load(&out, false).unwrap();
    assert_eq!(l.state.kind, "instruct");
    assert_eq!(l.state.step, 32);

    // The model file: the template is stored, and the runtime opens it.
    let m = emberlm_runtime::Model::open(&out.join("model.ember")).unwrap();
    assert_eq!(m.prompt_template(), Some(&PromptTemplate::alpaca()));
    assert!(m.tokenizer().unwrap().is_some());

    // responses.json: the test split (entries 34..38, by order) with the four keys.
    let entries = alpaca_entries();
    let resp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("responses.json")).unwrap())
            .unwrap();
    let resp = resp.as_array().unwrap();
    assert_eq!(resp.len(), 4);
    for (k, r) in resp.iter().enumerate() {
        let o = r.as_object().unwrap();
        let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["input", "instruction", "model_response", "output"]);
        let e = &entries[34 + k];
        assert_eq!(o["instruction"], e["instruction"]);
        assert_eq!(o["output"], e["output"]);
        assert_eq!(o["input"], e.get("input").cloned().unwrap_or("".into()));
        assert!(o["model_response"].is_string());
    }
    // The model learned the patterns well enough to answer in their shape.
    let answers: Vec<&str> = resp
        .iter()
        .map(|r| r["model_response"].as_str().unwrap())
        .collect();
    assert!(
        answers.iter().any(|a| a.ends_with('.')),
        "no response looks like a trained answer: {answers:?}"
    );
    // A second run into the same directory is refused rather than mixed in.
    let (again, _) = run(base(&ck, &data, &out));
    assert!(matches!(again, Err(CliError::Usage(m)) if m.contains("already holds a run")));
}

#[test]
fn lora_trains_only_adapters_and_exports_the_merged_model() {
    let tmp = tempdir("lora");
    let dir = tmp.path();
    let (data, ck) = setup(dir);
    let out = dir.join("out");
    let (r, text) = run(InstructArgs {
        epochs: Some(2),
        batch: Some(4),
        lr: Some(1e-2),
        eval_every: Some(4),
        eval_batches: Some(2),
        max_new_tokens: Some(4),
        lora_rank: Some(2),
        lora_alpha: Some(4.0),
        ..base(&ck, &data, &out)
    });
    let o = r.unwrap_or_else(|e| panic!("{e}\n{text}"));
    let j = &o.json;
    // Rank R on every linear layer: per block three (C, C) query/key/value adapters, the
    // projection (C, C), fc (4C, C) and ff-proj (C, 4C); plus the head (V, C). An adapter of a
    // (O, I) weight has R·(O + I) parameters.
    let base_ck = checkpoint::load(&ck, false).unwrap();
    let (c, v, r) = (base_ck.config.dim, base_ck.config.vocab_size, 2);
    let per_block = 3 * r * (c + c) + r * (c + c) + r * (4 * c + c) + r * (c + 4 * c);
    let want = base_ck.config.n_layers * per_block + r * (v + c);
    assert_eq!(
        j["trainable_params"].as_u64().unwrap() as usize,
        want,
        "{j}"
    );
    assert!(
        j["train_loss"].as_f64().unwrap() < j["initial_train_loss"].as_f64().unwrap(),
        "{j}\n{text}"
    );
    // Biases and norms are frozen; the adapted weights moved (the checkpoint holds the merge).
    let tuned = checkpoint::load(&out, false).unwrap();
    let m0 = Gpt::from_params(base_ck.config, base_ck.params).unwrap();
    let m1 = Gpt::from_params(tuned.config, tuned.params).unwrap();
    for name in [
        "blocks.0.att.proj.bias",
        "final_norm.scale",
        "pos_emb.weight",
    ] {
        assert_eq!(m0.param(name), m1.param(name), "{name} must stay frozen");
    }
    assert_ne!(
        m0.param("blocks.0.att.proj.weight"),
        m1.param("blocks.0.att.proj.weight")
    );
    assert!(matches!(
        run(InstructArgs {
            lora_rank: Some(2),
            trainable: Some("head".into()),
            ..base(&ck, &data, &dir.join("out2"))
        })
        .0,
        Err(CliError::Usage(_))
    ));
}

#[test]
fn bad_input_gives_one_line_errors_naming_the_file_and_entry() {
    let tmp = tempdir("bad");
    let dir = tmp.path();
    let (_, ck) = setup(dir);
    let out = dir.join("out");
    let go = |a: InstructArgs| run(a).0.expect_err("the command must fail");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "[{\"instruction\": \"x\", \"output\": ").unwrap();
    let e = go(base(&ck, &bad, &out));
    let m = e.to_string();
    assert!(matches!(e, CliError::Failed(_)), "{e:?}");
    assert!(m.contains("bad.json") && m.contains("invalid JSON"), "{m}");
    assert!(!m.contains('\n'), "{m}");

    let mut entries = alpaca_entries();
    entries[7] = serde_json::json!({"instruction": "x", "output": 3});
    std::fs::write(&bad, serde_json::to_string(&entries).unwrap()).unwrap();
    let m = go(base(&ck, &bad, &out)).to_string();
    assert!(
        m.contains("bad.json") && m.contains("entry 7") && m.contains("\"output\""),
        "{m}"
    );

    let missing = dir.join("nope.json");
    let m = go(base(&ck, &missing, &out)).to_string();
    assert!(m.contains("nope.json"), "{m}");

    let good = dir.join("good.json");
    std::fs::write(&good, serde_json::to_string(&alpaca_entries()).unwrap()).unwrap();
    assert!(
        matches!(go(InstructArgs { batch: Some(0), ..base(&ck, &good, &out) }), CliError::Usage(m) if m.contains("--batch"))
    );
    assert!(
        matches!(go(InstructArgs { max_length: Some(100_000), ..base(&ck, &good, &out) }), CliError::Usage(m) if m.contains("--max-length"))
    );
    // 34 training examples cannot fill one batch of 64.
    assert!(
        matches!(go(InstructArgs { batch: Some(64), ..base(&ck, &good, &out) }), CliError::Failed(m) if m.contains("--batch 64"))
    );
    assert!(
        matches!(go(InstructArgs { trainable: Some("middle".into()), ..base(&ck, &good, &out) }), CliError::Usage(m) if m.contains("--trainable"))
    );
}
