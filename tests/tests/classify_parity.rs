//! Classifier parity: a tiny trainer model exported as a classifier `.ember` gives, through the
//! runtime's `Classifier`, the class logits an independent computation gives.
//!
//! The reference is the trainer's own forward (`Gpt::forward_logits`) on the sequence a training
//! batch would hold (padded to the length for both readouts), read at the readout position: the
//! model's untied head holds the classifier's K rows first, so the first K of the V logits there,
//! plus the bias added here, are the class logits. A second reference exports the same weights as
//! a language model and runs the runtime's plain session on it. A third, direct one: the
//! trainer's native classifier (`Gpt::into_classifier`, head (K, C) + bias (K)) on the padded
//! batch fine-tuning builds (`finetune::classify::make_batch`), read per row at the readout
//! position, vs the runtime on its export.
//!
//! Letters: V vocabulary, C dim, K classes.

use emberlm_formats::config::GptConfig;
use emberlm_formats::meta::{Readout, Task};
use emberlm_runtime::{Classifier, Model, Session, SessionOptions};
use emberlm_trainer::export::{ExportDtype, ExportMeta, export_ember};
use emberlm_trainer::finetune::classify::{Example, make_batch};
use emberlm_trainer::model::{Gpt, Init};
use std::path::Path;

/// Trainer (f32, its own kernels and summation order) vs runtime (f32 export): absolute, on
/// logits of order 1.
const F32_TOL: f32 = 1e-4;
/// The f16 export rounds every matrix to 11 significant bits (measured 4e-4 here): relative to
/// the largest |logit| (at least 1).
const F16_REL_TOL: f32 = 5e-3;

const K: usize = 3;
const PAD: u32 = 63;
const LENGTH: usize = 12;

fn cfg() -> GptConfig {
    GptConfig {
        vocab_size: 64,
        context_length: 16,
        dim: 24,
        n_layers: 2,
        n_heads: 2,
        qkv_bias: true,
        tied_head: false,
    }
}

/// A fresh, uniquely named directory `emberlm-<name>-*` in the temp directory, removed with
/// everything in it when the returned guard drops (also when the test panics).
fn tempdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("emberlm-{name}-"))
        .tempdir()
        .unwrap()
}

/// The classifier's bias (K): fixed values of both signs.
fn bias() -> Vec<f32> {
    (0..K).map(|k| 0.3 * k as f32 - 0.25).collect()
}

fn task(readout: Readout) -> Task {
    Task::Classifier {
        labels: vec!["ham".into(), "spam".into(), "eggs".into()],
        readout,
        pad_id: PAD,
        length: Some(LENGTH as u32),
    }
}

/// Exports `gpt` as a classifier whose head is the first K rows of `out_head.weight` (K, C).
fn export_classifier(gpt: &Gpt, readout: Readout, dtype: ExportDtype, path: &Path) {
    let c = cfg().dim;
    let head = &gpt.param("out_head.weight").unwrap()[..K * c];
    let bias = bias();
    let meta = ExportMeta {
        config: cfg(),
        task: task(readout),
        prompt: None,
        tokenizer: None,
        provenance: vec![],
    };
    export_ember(path, &meta, dtype, &|n| match n {
        "out_head.weight" => Some(head),
        "out_head.bias" => Some(&bias),
        _ => gpt.param(n),
    })
    .unwrap();
}

/// The trainer's class logits (K) for `tokens` as a padded training batch of one row.
fn trainer_class_logits(gpt: &mut Gpt, tokens: &[u32], readout: Readout) -> Vec<f32> {
    let real = tokens.len().min(LENGTH);
    let mut row = tokens[..real].to_vec();
    row.resize(LENGTH, PAD);
    let v = cfg().vocab_size;
    let logits = gpt.forward_logits(&row, 1, LENGTH).unwrap(); // (T, V)
    let pos = match readout {
        Readout::Last => LENGTH - 1,
        Readout::LastReal => real - 1,
    };
    logits[pos * v..pos * v + K]
        .iter()
        .zip(bias())
        .map(|(l, b)| l + b)
        .collect()
}

fn inputs() -> Vec<Vec<u32>> {
    vec![
        vec![5],
        vec![1, 2, 3, 4, 5],
        (0..11).map(|i| (i * 7 + 2) % 63).collect(),
        (0..15).map(|i| (i * 5 + 1) % 63).collect(), // truncated to 12
    ]
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn runtime_classifier_matches_the_trainers_forward() {
    let tmp = tempdir("classify-parity");
    let dir = tmp.path();
    let mut gpt = Gpt::new(cfg(), Init::TorchDefault, 42).unwrap();
    for readout in [Readout::Last, Readout::LastReal] {
        let path = dir.join(format!("clf-{readout:?}.ember"));
        export_classifier(&gpt, readout, ExportDtype::F32, &path);
        let model = Model::open(&path).unwrap();
        for threads in [1, 2] {
            let opts = SessionOptions {
                threads,
                ..SessionOptions::default()
            };
            let mut clf = Classifier::new(&model, &opts).unwrap();
            for tokens in inputs() {
                let want = trainer_class_logits(&mut gpt, &tokens, readout);
                let c = clf.classify_tokens(&tokens).unwrap();
                let err = max_abs(c.logits, &want);
                assert!(
                    err <= F32_TOL,
                    "{readout:?} threads {threads} {} tokens: {:?} vs {want:?} ({err})",
                    tokens.len(),
                    c.logits
                );
                // Not a vacuous match: the class logits differ between classes.
                assert!(max_abs(&want[..1], &want[1..2]) > 1e-3);
            }
        }
    }
}

#[test]
fn readouts_disagree_where_the_book_says_they_should() {
    // With padding after the text, the last position and the last real token see different
    // contexts: the two exports must give different logits (else readout would be ignored).
    let tmp = tempdir("classify-readouts");
    let dir = tmp.path();
    let gpt = Gpt::new(cfg(), Init::TorchDefault, 7).unwrap();
    let (a, b) = (dir.join("last.ember"), dir.join("last-real.ember"));
    export_classifier(&gpt, Readout::Last, ExportDtype::F32, &a);
    export_classifier(&gpt, Readout::LastReal, ExportDtype::F32, &b);
    let (ma, mb) = (Model::open(&a).unwrap(), Model::open(&b).unwrap());
    let opts = SessionOptions::default();
    let mut ca = Classifier::new(&ma, &opts).unwrap();
    let mut cb = Classifier::new(&mb, &opts).unwrap();
    let la = ca.classify_tokens(&[1, 2, 3]).unwrap().logits.to_vec();
    let lb = cb.classify_tokens(&[1, 2, 3]).unwrap().logits.to_vec();
    assert!(max_abs(&la, &lb) > 1e-3, "{la:?} vs {lb:?}");
    // A full-length input has no padding: both readouts read the same position.
    let full: Vec<u32> = (0..LENGTH as u32).collect();
    let la = ca.classify_tokens(&full).unwrap().logits.to_vec();
    let lb = cb.classify_tokens(&full).unwrap().logits.to_vec();
    assert!(max_abs(&la, &lb) <= F32_TOL);
}

#[test]
fn classifier_export_matches_the_language_model_export_with_the_same_rows() {
    // The same weights exported as a language model (untied head, V rows): the runtime's
    // next-token logits, first K, plus the bias, at the readout position.
    let tmp = tempdir("classify-lm");
    let dir = tmp.path();
    let gpt = Gpt::new(cfg(), Init::TorchDefault, 9).unwrap();
    let lm_path = dir.join("lm.ember");
    let meta = ExportMeta {
        config: cfg(),
        task: Task::LanguageModel,
        prompt: None,
        tokenizer: None,
        provenance: vec![],
    };
    export_ember(&lm_path, &meta, ExportDtype::F32, &|n| gpt.param(n)).unwrap();
    let lm = Model::open(&lm_path).unwrap();
    for (dtype, rel_tol) in [(ExportDtype::F32, F32_TOL), (ExportDtype::F16, F16_REL_TOL)] {
        let clf_path = dir.join(format!("clf-{}.ember", dtype.name()));
        export_classifier(&gpt, Readout::Last, dtype, &clf_path);
        let model = Model::open(&clf_path).unwrap();
        let mut clf = Classifier::new(&model, &SessionOptions::default()).unwrap();
        for tokens in inputs() {
            let mut row = tokens[..tokens.len().min(LENGTH)].to_vec();
            row.resize(LENGTH, PAD);
            let mut s = Session::new(&lm, &SessionOptions::default()).unwrap();
            let want: Vec<f32> = s.prefill(&row).unwrap()[..K]
                .iter()
                .zip(bias())
                .map(|(l, b)| l + b)
                .collect();
            let got = clf.classify_tokens(&tokens).unwrap().logits;
            let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
            let err = max_abs(got, &want) / scale;
            assert!(err <= rel_tol, "{}: {got:?} vs {want:?}", dtype.name());
        }
    }
}

#[test]
fn trainer_native_classifier_matches_the_runtime_on_a_padded_batch() {
    let tmp = tempdir("classify-native");
    let dir = tmp.path();
    let lm = Gpt::new(cfg(), Init::TorchDefault, 21).unwrap();
    let mut gpt = lm.into_classifier(K, 5).unwrap();
    assert_eq!(gpt.outputs(), K);
    let examples: Vec<Example> = inputs()
        .into_iter()
        .map(|tokens| Example { tokens, label: 0 })
        .collect();
    let refs: Vec<&Example> = examples.iter().collect();
    for readout in [Readout::Last, Readout::LastReal] {
        // The batch exactly as fine-tuning builds it (the trainer's own padding and readout).
        let batch = make_batch(&refs, readout, LENGTH, PAD);
        let t = batch.len;
        let logits = gpt
            .forward_logits(&batch.inputs, batch.batch, t)
            .unwrap()
            .to_vec(); // (B, T, K)
        let path = dir.join(format!("native-{readout:?}.ember"));
        let meta = ExportMeta {
            config: cfg(),
            task: task(readout),
            prompt: None,
            tokenizer: None,
            provenance: vec![],
        };
        export_ember(&path, &meta, ExportDtype::F32, &|n| gpt.param(n)).unwrap();
        let model = Model::open(&path).unwrap();
        let mut clf = Classifier::new(&model, &SessionOptions::default()).unwrap();
        for (b, e) in examples.iter().enumerate() {
            let want = &logits[(b * t + batch.readout[b]) * K..][..K];
            let got = clf.classify_tokens(&e.tokens).unwrap().logits;
            let err = max_abs(got, want);
            assert!(
                err <= F32_TOL,
                "{readout:?} row {b}: {got:?} vs {want:?} ({err})"
            );
        }
    }
}
