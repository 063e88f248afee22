//! Parity of the runtime with the book's GPTModel in PyTorch on random tiny models
//! (tests/fixtures/book_tiny/{plain,qkv_bias}, made by tests/fixtures/make_book_tiny.py):
//! book-layout safetensors (with the `att.mask` buffers) → import → .ember → run.

use emberlm_formats::meta::Task;
use emberlm_runtime::{GenerateOptions, KvDtype, Model, Sampling, Session, SessionOptions, Stop};
use emberlm_trainer::export::{ExportDtype, ExportMeta, export_ember};
use emberlm_trainer::import::{Layout, import_safetensors};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// f32 export: logits relative to the largest |logit| (the bound).
const F32_REL_TOL: f32 = 1e-5;
/// f32 export: loss relative to the book's.
const F32_LOSS_REL_TOL: f64 = 1e-5;
/// f16 weights: loss within this of the book's (the bound of runtime_hf_parity.rs).
const F16_LOSS_TOL: f64 = 2e-3;
/// int8 weights: loss within this (the bound of runtime_hf_parity.rs).
const INT8_LOSS_TOL: f64 = 2e-2;
/// The fixtures' number of heads (book files do not record it; 48 is not a GPT-2 size).
const HEADS: usize = 4;

struct Expected {
    n_layers: usize,
    qkv_bias: bool,
    tokens: Vec<u32>,
    loss: f64,
    logits: Vec<Vec<f32>>,
    greedy_prompt: Vec<u32>,
    greedy_tokens: Vec<u32>,
}

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/book_tiny")
        .join(name)
}

fn expected(name: &str) -> Expected {
    let text = std::fs::read_to_string(fixture_dir(name).join("expected.json")).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |k: &str| {
        j[k].as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    Expected {
        n_layers: j["config"]["n_layers"].as_u64().unwrap() as usize,
        qkv_bias: j["config"]["qkv_bias"].as_bool().unwrap(),
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

/// A fresh, uniquely named directory `emberlm-imp-<name>-*` in the temp directory, removed with
/// everything in it when the returned guard drops (also when the test panics).
fn tempdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("emberlm-imp-{name}-"))
        .tempdir()
        .unwrap()
}

/// Imports a fixture and exports it as `.ember` in `dtype`.
fn export(name: &str, dtype: ExportDtype, dir: &Path) -> PathBuf {
    let e = expected(name);
    let imp = import_safetensors(&fixture_dir(name), Some(HEADS)).unwrap();
    assert_eq!(imp.layout, Layout::Book);
    assert_eq!(imp.config.qkv_bias, e.qkv_bias);
    assert!(
        !imp.config.tied_head,
        "the book's out_head is its own tensor"
    );
    assert_eq!(imp.config.n_layers, e.n_layers);
    // The book's persistent causal-mask buffers are in the file and are skipped.
    let masks: Vec<String> = (0..e.n_layers)
        .map(|i| format!("trf_blocks.{i}.att.mask"))
        .collect();
    assert_eq!(imp.ignored, masks);
    let path = dir.join(format!("{name}-{}.ember", dtype.name()));
    let meta = ExportMeta {
        config: imp.config,
        task: Task::LanguageModel,
        prompt: None,
        tokenizer: None,
        provenance: vec![],
    };
    export_ember(&path, &meta, dtype, &|n| {
        imp.tensors.get(n).map(|v| v.as_slice())
    })
    .unwrap();
    path
}

fn stepwise_logits(model: &Model<'_>, tokens: &[u32], opts: &SessionOptions) -> Vec<Vec<f32>> {
    let mut s = Session::new(model, opts).unwrap();
    tokens
        .iter()
        .map(|&t| s.step(t).unwrap().to_vec())
        .collect()
}

/// The book's calc_loss_batch on one sequence, in f64.
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
    assert_eq!(a.len(), b.len());
    let scale = b.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

fn check_f32(name: &str) {
    let e = expected(name);
    let tmp = tempdir(&format!("book-f32-{name}"));
    let dir = tmp.path();
    let model = Model::open(&export(name, ExportDtype::F32, dir)).unwrap();
    for reference_kernels in [true, false] {
        let opts = SessionOptions {
            reference_kernels,
            threads: 2,
            ..SessionOptions::default()
        };
        let logits = stepwise_logits(&model, &e.tokens, &opts);
        let err = max_rel_err(&logits, &e.logits);
        assert!(
            err <= F32_REL_TOL,
            "{name} reference={reference_kernels}: {err}"
        );
        let l = loss(&logits, &e.tokens);
        assert!(
            (l - e.loss).abs() <= F32_LOSS_REL_TOL * e.loss,
            "{name}: loss {l} vs {}",
            e.loss
        );

        let mut s = Session::new(&model, &opts).unwrap();
        let last = s.prefill(&e.tokens).unwrap().to_vec();
        let err = max_rel_err(&[last], &e.logits[e.logits.len() - 1..]);
        assert!(err <= F32_REL_TOL, "{name} prefill: {err}");

        // Greedy continuation equals the book's generate_text_simple.
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
        assert_eq!(got, e.greedy_tokens, "{name}");
    }
}

#[test]
fn book_without_qkv_bias_f32_matches_pytorch_logits_loss_and_greedy_tokens() {
    check_f32("plain");
}

#[test]
fn book_with_qkv_bias_f32_matches_pytorch_logits_loss_and_greedy_tokens() {
    check_f32("qkv_bias");
}

#[test]
fn book_f16_and_int8_exports_stay_within_their_loss_bounds() {
    for name in ["plain", "qkv_bias"] {
        let e = expected(name);
        let tmp = tempdir(&format!("book-quant-{name}"));
        let dir = tmp.path();
        for (dtype, tol) in [
            (ExportDtype::F16, F16_LOSS_TOL),
            (ExportDtype::Int8, INT8_LOSS_TOL),
        ] {
            let model = Model::open(&export(name, dtype, dir)).unwrap();
            for kv_dtype in [KvDtype::F32, KvDtype::F16] {
                let opts = SessionOptions {
                    kv_dtype,
                    threads: 2,
                    ..SessionOptions::default()
                };
                let l = loss(&stepwise_logits(&model, &e.tokens, &opts), &e.tokens);
                assert!(
                    (l - e.loss).abs() <= tol,
                    "{name} {dtype:?} kv {kv_dtype:?}: loss {l} vs {}",
                    e.loss
                );
            }
        }
    }
}
