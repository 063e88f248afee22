//! Parity of the runtime with Hugging Face transformers on a random tiny GPT-2
//! (tests/fixtures/hf_tiny, made by tests/fixtures/make_hf_tiny.py): import → export → run.

use emberlm_formats::meta::Task;
use emberlm_runtime::{GenerateOptions, KvDtype, Model, Sampling, Session, SessionOptions, Stop};
use emberlm_trainer::export::{ExportDtype, ExportMeta, export_ember};
use emberlm_trainer::import::{Layout, import_safetensors};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// f32 export: logits relative to the largest |logit| (the bound).
const F32_REL_TOL: f32 = 1e-5;
/// f16 weights: loss within this of transformers' (stated in README / the closing note).
const F16_LOSS_TOL: f64 = 2e-3;
/// int8 weights: loss within this.
const INT8_LOSS_TOL: f64 = 2e-2;

struct Expected {
    tokens: Vec<u32>,
    loss: f64,
    logits: Vec<Vec<f32>>,
    greedy_prompt: Vec<u32>,
    greedy_tokens: Vec<u32>,
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hf_tiny")
}

fn expected() -> Expected {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |k: &str| {
        j[k].as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    Expected {
        tokens: ids("tokens"),
        loss: j["loss"].as_f64().unwrap(),
        logits: j["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect(),
        greedy_prompt: ids("greedy_prompt"),
        greedy_tokens: ids("greedy_tokens"),
    }
}

fn export(dtype: ExportDtype, dir: &Path) -> PathBuf {
    let imp = import_safetensors(&fixture_dir(), None).unwrap();
    assert_eq!(imp.layout, Layout::HuggingFace);
    let path = dir.join(format!("tiny-{}.ember", dtype.name()));
    let meta = ExportMeta {
        config: imp.config,
        task: Task::LanguageModel,
        prompt: None,
        tokenizer: None,
        provenance: vec![(
            "source".into(),
            "tests/fixtures/hf_tiny (random weights)".into(),
        )],
    };
    export_ember(&path, &meta, dtype, &|n| {
        imp.tensors.get(n).map(|v| v.as_slice())
    })
    .unwrap();
    path
}

/// A fresh, uniquely named directory `emberlm-<name>-*` in the temp directory, removed with
/// everything in it when the returned guard drops (also when the test panics).
fn tempdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("emberlm-{name}-"))
        .tempdir()
        .unwrap()
}

/// Logits at every position, fed one token at a time.
fn stepwise_logits(model: &Model<'_>, tokens: &[u32], opts: &SessionOptions) -> Vec<Vec<f32>> {
    let mut s = Session::new(model, opts).unwrap();
    tokens
        .iter()
        .map(|&t| s.step(t).unwrap().to_vec())
        .collect()
}

fn loss(logits: &[Vec<f32>], tokens: &[u32]) -> f64 {
    let mut total = 0.0;
    for (row, &target) in logits.iter().zip(&tokens[1..]) {
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = row
            .iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        total += lse - row[target as usize] as f64;
    }
    total / (tokens.len() - 1) as f64
}

fn max_rel_err(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    let scale = b.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

#[test]
fn f32_export_matches_transformers_logits_loss_and_greedy_tokens() {
    let e = expected();
    let tmp = tempdir("hf-f32");
    let dir = tmp.path();
    let model = Model::open(&export(ExportDtype::F32, dir)).unwrap();
    for reference_kernels in [true, false] {
        for threads in [1, 2] {
            let opts = SessionOptions {
                reference_kernels,
                threads,
                ..SessionOptions::default()
            };
            let logits = stepwise_logits(&model, &e.tokens, &opts);
            let err = max_rel_err(&logits, &e.logits);
            assert!(
                err <= F32_REL_TOL,
                "reference={reference_kernels} threads={threads}: {err}"
            );
            let l = loss(&logits, &e.tokens);
            assert!(
                (l - e.loss).abs() <= 1e-5 * e.loss,
                "loss {l} vs {}",
                e.loss
            );

            // Batched prefill gives the same last-position logits.
            let mut s = Session::new(&model, &opts).unwrap();
            let last = s.prefill(&e.tokens).unwrap().to_vec();
            let err = max_rel_err(&[last], &e.logits[e.logits.len() - 1..]);
            assert!(err <= F32_REL_TOL, "prefill: {err}");

            // Greedy continuation equals transformers' generate(do_sample=False).
            let mut s = Session::new(&model, &opts).unwrap();
            let mut got = Vec::new();
            let limits = GenerateOptions {
                max_tokens: e.greedy_tokens.len(),
                stop: Stop::None, // transformers generated exactly this many
                slide: false,
            };
            s.generate(&e.greedy_prompt, &Sampling::default(), &limits, |t| {
                got.push(t);
                ControlFlow::Continue(())
            })
            .unwrap();
            assert_eq!(got, e.greedy_tokens);
        }
    }
}

#[test]
fn f16_and_int8_exports_stay_within_their_loss_bounds() {
    let e = expected();
    let tmp = tempdir("hf-quant");
    let dir = tmp.path();
    for (dtype, tol) in [
        (ExportDtype::F16, F16_LOSS_TOL),
        (ExportDtype::Int8, INT8_LOSS_TOL),
    ] {
        let model = Model::open(&export(dtype, dir)).unwrap();
        for kv_dtype in [KvDtype::F32, KvDtype::F16] {
            let opts = SessionOptions {
                kv_dtype,
                threads: 2,
                ..SessionOptions::default()
            };
            let l = loss(&stepwise_logits(&model, &e.tokens, &opts), &e.tokens);
            assert!(
                (l - e.loss).abs() <= tol,
                "{dtype:?} kv {kv_dtype:?}: loss {l} vs {}",
                e.loss
            );
        }
    }
}

/// The committed `tests/fixtures/hf_tiny/tiny-f32.ember` (used by `runtime/examples/embedded.rs`
/// through `include_bytes!`) is exactly what the exporter writes today: the writer is
/// deterministic and the format has not drifted. Set EMBER_BLESS=1 to rewrite it after an
/// intentional format change.
#[test]
fn committed_tiny_model_is_what_export_writes() {
    let tmp = tempdir("hf-bless");
    let dir = tmp.path();
    let fresh = std::fs::read(export(ExportDtype::F32, dir)).unwrap();
    let committed_path = fixture_dir().join("tiny-f32.ember");
    if std::env::var_os("EMBER_BLESS").is_some() {
        std::fs::write(&committed_path, &fresh).unwrap();
    }
    let committed = std::fs::read(&committed_path).unwrap();
    assert!(
        committed == fresh,
        "tiny-f32.ember differs from a fresh export: rerun with EMBER_BLESS=1 if the format changed on purpose"
    );
}
