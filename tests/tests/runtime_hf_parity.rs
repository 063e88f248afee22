//! Parity of the runtime with Hugging Face transformers on a random tiny GPT-2
//! (tests/fixtures/hf_tiny, made by tests/fixtures/make_hf_tiny.py): import → export → run.

use emberlm_formats::meta::Task;
use emberlm_runtime::{GenerateOptions, KvDtype, Model, Sampling, Session, SessionOptions, Stop};
use emberlm_trainer::export::{ExportDtype, ExportMeta, export_ember};
use emberlm_trainer::import::{Layout, import_safetensors};
use parity_util::{Expected, loss, max_rel_err, stepwise_logits, tempdir};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

mod parity_util;

/// f32 export: logits relative to the largest |logit| (the bound).
const F32_REL_TOL: f32 = 1e-5;
/// f16 weights: loss within this of transformers' (stated in README / the closing note).
const F16_LOSS_TOL: f64 = 2e-3;
/// int8 weights: loss within this.
const INT8_LOSS_TOL: f64 = 2e-2;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hf_tiny")
}

fn expected() -> Expected {
    parity_util::expected(&fixture_dir())
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
