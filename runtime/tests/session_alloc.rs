//! Proves that decoding allocates nothing: `Session::step`, and `Session::generate` after its
//! prefill, run under a counting global allocator (this test binary's own).

use emberlm_formats::config::GptConfig;
use emberlm_formats::ember::DType;
use emberlm_runtime::random::random_model_bytes;
use emberlm_runtime::{GenerateOptions, KvDtype, Model, Sampling, Session, SessionOptions};
use std::ops::ControlFlow;
use std::sync::Mutex;

#[global_allocator]
static GLOBAL: emberlm_testkit::alloc::Counting = emberlm_testkit::alloc::Counting;

/// Tests in this binary run one at a time so that counts are not mixed.
static SERIAL: Mutex<()> = Mutex::new(());

fn tiny() -> GptConfig {
    GptConfig {
        vocab_size: 300,
        context_length: 64,
        dim: 64,
        n_layers: 2,
        n_heads: 4,
        qkv_bias: true,
        tied_head: true,
    }
}

#[test]
fn step_allocates_nothing() {
    let _g = SERIAL.lock().unwrap();
    for dtype in [DType::F32, DType::F16, DType::Q8] {
        let bytes = random_model_bytes(&tiny(), dtype, 3).unwrap();
        let model = Model::from_bytes(&bytes).unwrap();
        for threads in [1, 2] {
            for kv_dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Int8] {
                let opts = SessionOptions {
                    threads,
                    kv_dtype,
                    ..SessionOptions::default()
                };
                let mut s = Session::new(&model, &opts).unwrap();
                for t in 0..4 {
                    s.step(t).unwrap(); // warm-up: thread pool start, lazy statics
                }
                // Let the previous session's pool threads finish exiting (their teardown would
                // be counted, since the counter is global).
                std::thread::sleep(std::time::Duration::from_millis(100));
                // With one thread `step` runs inline; with more, the loop runs inside the pool
                // (`in_pool`), as `generate` does.
                let n = s.in_pool(|s| {
                    let before = emberlm_testkit::alloc::allocations();
                    for t in 0..40u32 {
                        s.step(t * 7 % 300).unwrap();
                    }
                    emberlm_testkit::alloc::allocations() - before
                });
                assert_eq!(
                    n, 0,
                    "{dtype:?} threads={threads} kv={kv_dtype:?}: {n} allocations in 40 steps"
                );
            }
        }
    }
}

#[test]
fn generate_decode_loop_allocates_nothing() {
    let _g = SERIAL.lock().unwrap();
    let bytes = random_model_bytes(&tiny(), DType::Q8, 5).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    // A context of 16 makes the 40 tokens slide (the default) twice: sliding allocates nothing.
    for (threads, context) in [(1, None), (2, None), (1, Some(16)), (2, Some(16))] {
        let opts = SessionOptions {
            threads,
            context,
            ..SessionOptions::default()
        };
        let mut s = Session::new(&model, &opts).unwrap();
        let sampling = Sampling {
            temperature: 0.9,
            top_k: Some(40),
            top_p: Some(0.95),
            repetition_penalty: 1.1,
            seed: 1,
        };
        let limits = GenerateOptions {
            max_tokens: 40,
            ..GenerateOptions::default()
        };
        // Warm-up run.
        s.generate(
            &[1, 2, 3],
            &sampling,
            &limits,
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
        s.reset();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut first = None;
        let mut last = 0;
        let stats = s
            .generate(&[1, 2, 3, 4, 5], &sampling, &limits, |_| {
                let now = emberlm_testkit::alloc::allocations();
                first.get_or_insert(now);
                last = now;
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(stats.generated_tokens, 40);
        let n = last - first.unwrap();
        assert_eq!(
            n, 0,
            "threads={threads} context={context:?}: {n} allocations while generating 40 tokens"
        );
    }
}

/// Tiny Llama-style models: Qwen3 (QK-norm, GQA) and Gemma 3 (sliding window of 6, post norms,
/// GeGLU), so every family-only path runs.
fn tiny_families() -> Vec<emberlm_formats::config::ModelConfig> {
    ["qwen3-0.6b", "gemma3-270m", "qwen2.5-0.5b"]
        .iter()
        .map(|name| {
            let mut cfg = emberlm_formats::config::ModelConfig::preset(name).unwrap();
            (cfg.vocab_size, cfg.context_length, cfg.dim, cfg.n_layers) = (300, 64, 64, 2);
            (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim) = (4, 2, 16, 96);
            if let Some(s) = cfg.sliding.as_mut() {
                (s.window, s.every) = (6, 2);
            }
            cfg
        })
        .collect()
}

#[test]
fn family_step_and_generate_allocate_nothing() {
    let _g = SERIAL.lock().unwrap();
    for cfg in tiny_families() {
        for dtype in [DType::F16, DType::Q8] {
            let bytes = random_model_bytes(&cfg, dtype, 3).unwrap();
            let model = Model::from_bytes(&bytes).unwrap();
            for threads in [1, 2] {
                let opts = SessionOptions {
                    threads,
                    context: Some(48),
                    ..SessionOptions::default()
                };
                let mut s = Session::new(&model, &opts).unwrap();
                s.prefill(&[1, 2, 3, 4, 5]).unwrap();
                for t in 0..4 {
                    s.step(t).unwrap();
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
                let n = s.in_pool(|s| {
                    let before = emberlm_testkit::alloc::allocations();
                    for t in 0..30u32 {
                        s.step(t * 7 % 300).unwrap();
                    }
                    emberlm_testkit::alloc::allocations() - before
                });
                let arch = cfg.arch.name();
                assert_eq!(n, 0, "{arch} {dtype:?} threads={threads}: {n} allocations");
                // And generate, sliding past the context of 48.
                s.reset();
                let limits = GenerateOptions {
                    max_tokens: 60,
                    ..GenerateOptions::default()
                };
                let mut first = None;
                let mut last = 0;
                s.generate(&[1, 2, 3], &Sampling::default(), &limits, |_| {
                    let now = emberlm_testkit::alloc::allocations();
                    first.get_or_insert(now);
                    last = now;
                    ControlFlow::Continue(())
                })
                .unwrap();
                let n = last - first.unwrap();
                assert_eq!(n, 0, "{arch} {dtype:?} threads={threads}: generate: {n}");
            }
        }
    }
}
