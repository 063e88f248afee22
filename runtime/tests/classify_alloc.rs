//! Proves that a warmed-up `Classifier` allocates nothing of its own per call (one thread: the
//! prefill runs inline), for token and text inputs, under a counting global allocator (this
//! binary's own). `Session::prefill` itself allocates a few times per call (inside the batched
//! matrix products, measured 8 per 3-token prefill here): each classify call is compared with a
//! plain session's prefill of the same sequence, and must allocate exactly as much.

use emberlm_formats::config::GptConfig;
use emberlm_formats::ember::{AlignedBytes, DType};
use emberlm_formats::meta::{Readout, Task};
use emberlm_formats::tokenizer::{TrainOptions, train_bpe};
use emberlm_runtime::random::write_random_classifier;
use emberlm_runtime::{Classifier, Model, Session, SessionOptions};
use std::sync::Mutex;

#[global_allocator]
static GLOBAL: emberlm_testkit::alloc::Counting = emberlm_testkit::alloc::Counting;

/// Tests in this binary run one at a time so that counts are not mixed.
static SERIAL: Mutex<()> = Mutex::new(());

const TEXTS: [&str; 3] = [
    "Hey, just wanted to check if we're still on for dinner tonight? Let me know!",
    "You are a winner you have been specially selected to receive $1000 cash or a $2000 award.",
    "ok",
];

#[test]
fn classify_allocates_nothing_once_warm() {
    let _g = SERIAL.lock().unwrap();
    let tok = train_bpe(&TEXTS, 300, &TrainOptions::default()).unwrap();
    let cfg = GptConfig {
        vocab_size: 300,
        context_length: 48,
        dim: 32,
        n_layers: 2,
        n_heads: 4,
        qkv_bias: true,
        tied_head: false,
    };
    let tmp = tempfile::Builder::new()
        .prefix("emberlm-classify-alloc-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    for (readout, dtype) in [(Readout::Last, DType::F32), (Readout::LastReal, DType::Q8)] {
        let task = Task::Classifier {
            labels: vec!["ham".into(), "spam".into()],
            readout,
            pad_id: tok.eot_id().unwrap(),
            length: Some(40),
        };
        let path = dir.join(format!("clf-{readout:?}.ember"));
        write_random_classifier(&path, &cfg, &task, dtype, 1, Some(&tok)).unwrap();
        // Read, not mapped: this test also builds without the `mmap` feature.
        let bytes = AlignedBytes::copy_from(&std::fs::read(&path).unwrap());
        let model = Model::from_bytes(&bytes).unwrap();
        let opts = SessionOptions {
            threads: 1,
            ..SessionOptions::default()
        };
        let mut clf = Classifier::new(&model, &opts).unwrap();
        // Warm-up: the tokenizer is built on first use, buffers grow to the longest input.
        for t in TEXTS {
            clf.classify_text(t).unwrap();
        }
        let ids: Vec<u32> = (0..45).map(|i| i * 5 % 300).collect();
        clf.classify_tokens(&ids).unwrap();
        let mut plain = Session::new(&model, &opts).unwrap();
        let mut seq = Vec::with_capacity(cfg.context_length);
        for input in [TEXTS[0], TEXTS[1], TEXTS[2], "", "short"] {
            // The fewest allocations over a few repeats: the matrix products' own count varies
            // a little with what ran before; a classifier allocation would show in every call.
            let mut n = usize::MAX;
            for _ in 0..3 {
                let before = emberlm_testkit::alloc::allocations();
                let c = if input.is_empty() {
                    clf.classify_tokens(&ids)
                } else {
                    clf.classify_text(input)
                }
                .unwrap();
                n = n.min(emberlm_testkit::alloc::allocations() - before);
                seq.clear();
                seq.extend_from_slice(c.sequence);
            }
            let mut base = usize::MAX;
            for _ in 0..3 {
                plain.reset();
                let before = emberlm_testkit::alloc::allocations();
                plain.prefill(&seq).unwrap();
                base = base.min(emberlm_testkit::alloc::allocations() - before);
            }
            assert_eq!(
                n, base,
                "{readout:?} {dtype:?} {input:?}: {n} allocations, the bare prefill {base}"
            );
        }
    }
}
