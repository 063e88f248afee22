//! Parity of the runtime with Hugging Face transformers on tiny random Llama, Qwen2, Qwen3 and
//! Gemma 3 models (tests/fixtures/families, made by make_families.py with every feature the
//! runtime implements switched on): `ember-train export HF_DIR` → run. f32 weights and the same
//! weights in bf16; f16 and int8 exports within README § Accuracy contracts.

use emberlm_runtime::{GenerateOptions, KvDtype, Model, Sampling, Session, SessionOptions, Stop};
use emberlm_trainer::export::ExportDtype;
use emberlm_trainer::hf::{self, HfDir};
use parity_util::{Expected, loss, max_rel_err, stepwise_logits, tempdir};
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

mod parity_util;

const FAMILIES: [&str; 4] = ["llama", "qwen2", "qwen3", "gemma3"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/families")
        .join(name)
}

fn convert(name: &str, dtype: ExportDtype, dir: &Path) -> PathBuf {
    let hf = HfDir::open(&fixture(name)).unwrap();
    let out = dir.join(format!("{name}-{}.ember", dtype.name()));
    hf::convert(&hf, dtype, &out, &mut |_| Ok(())).unwrap();
    out
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
        check_exact(name, &model, &parity_util::expected(&fixture(name)));
    }
}

#[test]
fn bf16_weights_match_transformers_for_every_family() {
    let tmp = tempdir("families-bf16");
    for name in FAMILIES {
        let bf16 = format!("{name}-bf16");
        let model = Model::open(&convert(&bf16, ExportDtype::F32, tmp.path())).unwrap();
        check_exact(&bf16, &model, &parity_util::expected(&fixture(&bf16)));
    }
}

#[test]
fn f16_and_int8_exports_stay_within_their_loss_bounds() {
    let tmp = tempdir("families-quant");
    for name in FAMILIES {
        let e = parity_util::expected(&fixture(name));
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
