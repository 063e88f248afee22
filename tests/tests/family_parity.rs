//! Parity of the runtime with Hugging Face transformers on tiny random Llama, Qwen2, Qwen3 and
//! Gemma 3 models (tests/fixtures/families, made by make_families.py with every feature the
//! runtime implements switched on): `ember-train export HF_DIR` → run. f32 weights and the same
//! weights in bf16; f16 and int8 exports within README § Accuracy contracts.

use emberlm_runtime::{GenerateOptions, KvDtype, Model, Sampling, Session, SessionOptions, Stop};
use emberlm_trainer::export::ExportDtype;
use emberlm_trainer::hf::{self, HfDir};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// f32 weights: logits relative to the largest |logit| (the bound).
const F32_REL_TOL: f32 = 1e-5;
/// f16 weights: loss within this fraction of transformers' (README § Accuracy contracts). The
/// bounds are relative here: these random models' losses (4.6 to 18.9) scale every error, where
/// GPT-2's fixture has one loss and absolute bounds.
const F16_LOSS_RTOL: f64 = 2e-4;
/// int8 weights: loss within this fraction.
const INT8_LOSS_RTOL: f64 = 3e-3;

const FAMILIES: [&str; 4] = ["llama", "qwen2", "qwen3", "gemma3"];

struct Expected {
    tokens: Vec<u32>,
    loss: f64,
    logits: Vec<Vec<f32>>,
    greedy_prompt: Vec<u32>,
    greedy_tokens: Vec<u32>,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/families")
        .join(name)
}

fn expected(name: &str) -> Expected {
    let text = std::fs::read_to_string(fixture(name).join("expected.json")).unwrap();
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

fn convert(name: &str, dtype: ExportDtype, dir: &Path) -> PathBuf {
    let hf = HfDir::open(&fixture(name)).unwrap();
    let out = dir.join(format!("{name}-{}.ember", dtype.name()));
    hf::convert(&hf, dtype, &out, &mut |_| Ok(())).unwrap();
    out
}

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

/// Every kernel set and thread count: logits, loss, prefill and greedy tokens as transformers.
fn check_exact(name: &str, model: &Model<'_>, e: &Expected) {
    for reference_kernels in [true, false] {
        for threads in [1, 2, 3] {
            let opts = SessionOptions {
                reference_kernels,
                threads,
                ..SessionOptions::default()
            };
            let at = format!("{name} reference={reference_kernels} threads={threads}");
            let logits = stepwise_logits(model, &e.tokens, &opts);
            let err = max_rel_err(&logits, &e.logits);
            assert!(err <= F32_REL_TOL, "{at}: logits off by {err}");
            let l = loss(&logits, &e.tokens);
            assert!(
                (l - e.loss).abs() <= 1e-5 * e.loss,
                "{at}: loss {l} vs {}",
                e.loss
            );
            // Batched prefill gives the same last-position logits.
            let mut s = Session::new(model, &opts).unwrap();
            let last = s.prefill(&e.tokens).unwrap().to_vec();
            let err = max_rel_err(&[last], &e.logits[e.logits.len() - 1..]);
            assert!(err <= F32_REL_TOL, "{at}: prefill off by {err}");
            // Greedy continuation equals transformers' generate(do_sample=False) with its cache.
            let mut s = Session::new(model, &opts).unwrap();
            let mut got = Vec::new();
            let limits = GenerateOptions {
                max_tokens: e.greedy_tokens.len(),
                stop: Stop::None,
                slide: false,
            };
            s.generate(&e.greedy_prompt, &Sampling::default(), &limits, |t| {
                got.push(t);
                ControlFlow::Continue(())
            })
            .unwrap();
            assert_eq!(got, e.greedy_tokens, "{at}: greedy tokens");
        }
    }
}

#[test]
fn f32_weights_match_transformers_for_every_family() {
    let tmp = tempdir("families-f32");
    for name in FAMILIES {
        let model = Model::open(&convert(name, ExportDtype::F32, tmp.path())).unwrap();
        check_exact(name, &model, &expected(name));
    }
}

#[test]
fn bf16_weights_match_transformers_for_every_family() {
    let tmp = tempdir("families-bf16");
    for name in FAMILIES {
        let bf16 = format!("{name}-bf16");
        let model = Model::open(&convert(&bf16, ExportDtype::F32, tmp.path())).unwrap();
        check_exact(&bf16, &model, &expected(&bf16));
    }
}

#[test]
fn f16_and_int8_exports_stay_within_their_loss_bounds() {
    let tmp = tempdir("families-quant");
    for name in FAMILIES {
        let e = expected(name);
        for (dtype, tol) in [
            (ExportDtype::F16, F16_LOSS_RTOL),
            (ExportDtype::Int8, INT8_LOSS_RTOL),
        ] {
            let model = Model::open(&convert(name, dtype, tmp.path())).unwrap();
            for kv_dtype in [KvDtype::F32, KvDtype::F16] {
                let opts = SessionOptions {
                    kv_dtype,
                    threads: 2,
                    ..SessionOptions::default()
                };
                let l = loss(&stepwise_logits(&model, &e.tokens, &opts), &e.tokens);
                assert!(
                    (l - e.loss).abs() <= tol * e.loss,
                    "{name} {dtype:?} kv {kv_dtype:?}: loss {l} vs {}",
                    e.loss
                );
            }
        }
    }
}
