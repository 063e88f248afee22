//! The batched decoder against single-sequence sessions: B sequences with different prompts and
//! lengths, joining and leaving at different steps, give exactly a lone `Session`'s logits (bit
//! for bit) and greedy tokens — GPT-2 and the Llama-style families in f32/f16/int8/int4, 1 and 2
//! threads, the host's kernels and (GPT-2) the reference twins — and a loop of steps allocates
//! nothing.

use emberlm_formats::config::{GptConfig, ModelConfig, Sliding};
use emberlm_formats::ember::DType;
use emberlm_runtime::random::random_model_bytes;
use emberlm_runtime::{
    Batch, BatchOptions, KvDtype, Model, Next, Sampling, Session, SessionOptions,
};
use std::sync::Mutex;

#[global_allocator]
static GLOBAL: emberlm_testkit::alloc::Counting = emberlm_testkit::alloc::Counting;

/// Tests in this binary run one at a time so that allocation counts are not mixed.
static SERIAL: Mutex<()> = Mutex::new(());

fn gpt2() -> GptConfig {
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

/// Tiny family shapes with several KV groups, GQA and (Gemma) a sliding window shorter than the
/// sequences, as in `families.rs`.
fn family(name: &str) -> ModelConfig {
    let mut cfg = ModelConfig::preset(name).unwrap();
    cfg.vocab_size = 97;
    cfg.context_length = 48;
    cfg.dim = 64;
    cfg.n_layers = 3;
    cfg.ffn_dim = 96;
    match name {
        "gemma3-270m" => {
            (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) = (4, 2, 256);
            cfg.embed_scale = 8.0;
            cfg.query_scale = 1.0 / 24f32.sqrt();
            cfg.sliding = Some(Sliding {
                window: 5,
                every: 2,
            });
        }
        "qwen3-0.6b" => (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) = (4, 2, 48),
        _ => {
            (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) = (8, 4, 128);
            cfg.query_scale = 1.0 / 128f32.sqrt();
            cfg.tied_head = false;
        }
    }
    cfg.validate().unwrap();
    cfg
}

/// A sequence of the test: its prompt, the step at which it joins, the tokens it generates.
struct Seq {
    prompt: Vec<u32>,
    join_at: usize,
    tokens: usize,
}

fn seqs(vocab: u32) -> Vec<Seq> {
    let prompt = |len: usize, salt: u32| -> Vec<u32> {
        (0..len as u32)
            .map(|i| (i * 31 + salt * 17 + 3) % vocab)
            .collect()
    };
    vec![
        Seq {
            prompt: prompt(5, 1),
            join_at: 0,
            tokens: 12,
        },
        // Longer than two prefill chunks (the tests use chunks of 8): three interleaved steps.
        Seq {
            prompt: prompt(19, 2),
            join_at: 0,
            tokens: 9,
        },
        Seq {
            prompt: prompt(1, 3),
            join_at: 3,
            tokens: 10,
        },
        // Joins after the first sequence left: reuses a slot (the cache is overwritten).
        Seq {
            prompt: prompt(11, 4),
            join_at: 14,
            tokens: 6,
        },
    ]
}

/// Each sequence alone in a `Session`: after its prompt, the logits before each generated token
/// and the greedy tokens.
fn reference(model: &Model<'_>, opts: &SessionOptions, seq: &Seq) -> (Vec<Vec<f32>>, Vec<u32>) {
    let mut s = Session::new(model, opts).unwrap();
    let mut logits = vec![s.prefill(&seq.prompt).unwrap().to_vec()];
    let mut tokens = vec![];
    for i in 0..seq.tokens {
        let t = emberlm_runtime::sampler::argmax(logits.last().unwrap()) as u32;
        tokens.push(t);
        if i + 1 < seq.tokens {
            logits.push(s.step(t).unwrap().to_vec());
        }
    }
    (logits, tokens)
}

/// Runs the sequences through one batch of 3 slots and checks every logit against `reference`.
fn check(model: &Model<'_>, opts: &SessionOptions, what: &str) {
    let seqs = seqs(model.config().vocab_size as u32);
    let refs: Vec<_> = seqs.iter().map(|s| reference(model, opts, s)).collect();
    let mut batch = Batch::new(
        model,
        &BatchOptions {
            slots: 3,
            session: opts.clone(),
        },
    )
    .unwrap();
    let greedy = Sampling::default();
    // Per sequence: its slot, and the logits / tokens seen so far.
    let mut slot_of: Vec<Option<usize>> = vec![None; seqs.len()];
    let mut got: Vec<(Vec<Vec<f32>>, Vec<u32>)> = vec![(vec![], vec![]); seqs.len()];
    let mut done = vec![false; seqs.len()];
    for step in 0..200 {
        for (i, s) in seqs.iter().enumerate() {
            if s.join_at == step {
                slot_of[i] = batch.join(&s.prompt, &greedy).unwrap();
                assert!(slot_of[i].is_some(), "{what}: no free slot for seq {i}");
            }
        }
        let events = batch.step().to_vec();
        for e in events {
            let i = slot_of.iter().position(|&s| s == Some(e.slot)).unwrap();
            let Next::Token(t) = e.next else {
                panic!("{what}: seq {i} hit the context")
            };
            got[i].0.push(batch.logits(e.slot).to_vec());
            got[i].1.push(t);
            if got[i].1.len() == seqs[i].tokens {
                batch.leave(e.slot);
                slot_of[i] = None;
                done[i] = true;
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
    }
    assert!(done.iter().all(|&d| d), "{what}: not every sequence ended");
    assert_eq!(batch.busy(), 0);
    for (i, ((gl, gt), (rl, rt))) in got.iter().zip(&refs).enumerate() {
        assert_eq!(gt, rt, "{what}: seq {i}'s greedy tokens");
        for (j, (a, b)) in gl.iter().zip(rl).enumerate() {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "{what}: seq {i}, token {j}: logits differ from Session's"
            );
        }
    }
}

fn opts(threads: usize) -> SessionOptions {
    SessionOptions {
        threads,
        prefill_chunk: 8,
        ..SessionOptions::default()
    }
}

#[test]
fn gpt2_batch_logits_are_sessions() {
    let _g = SERIAL.lock().unwrap();
    for dtype in [DType::F32, DType::F16, DType::Q8, DType::Q4] {
        let bytes = random_model_bytes(&gpt2(), dtype, 11).unwrap();
        let model = Model::from_bytes(&bytes).unwrap();
        for threads in [1, 2] {
            check(
                &model,
                &opts(threads),
                &format!("gpt2 {dtype:?} threads={threads}"),
            );
        }
        // The reference twins' multi-vector products too (the default run uses the host's
        // fastest set; `EMBER_KERNELS=avx2` runs this file with the AVX2 set).
        let reference = SessionOptions {
            reference_kernels: true,
            ..opts(1)
        };
        check(
            &model,
            &reference,
            &format!("gpt2 {dtype:?} reference kernels"),
        );
    }
}

#[test]
fn int8_kv_batch_logits_are_sessions() {
    // The int8 cache's kernels (and the reference's, for Qwen3's D = 48) in batched decode.
    let _g = SERIAL.lock().unwrap();
    let int8 = |threads| SessionOptions {
        kv_dtype: KvDtype::Int8,
        ..opts(threads)
    };
    let bytes = random_model_bytes(&gpt2(), DType::Q8, 14).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    for threads in [1, 2] {
        check(
            &model,
            &int8(threads),
            &format!("gpt2 int8 kv threads={threads}"),
        );
    }
    for name in ["llama3.2-1b", "qwen3-0.6b", "gemma3-270m"] {
        let bytes = random_model_bytes(&family(name), DType::Q8, 14).unwrap();
        let model = Model::from_bytes(&bytes).unwrap();
        check(&model, &int8(2), &format!("{name} int8 kv"));
    }
}

#[test]
fn family_batch_logits_are_sessions() {
    let _g = SERIAL.lock().unwrap();
    for name in ["llama3.2-1b", "qwen3-0.6b", "gemma3-270m"] {
        for dtype in [DType::F32, DType::F16, DType::Q8, DType::Q4] {
            let bytes = random_model_bytes(&family(name), dtype, 12).unwrap();
            let model = Model::from_bytes(&bytes).unwrap();
            for threads in [1, 2] {
                check(
                    &model,
                    &opts(threads),
                    &format!("{name} {dtype:?} threads={threads}"),
                );
            }
        }
    }
}

#[test]
fn seeded_sampling_matches_session_generate() {
    let _g = SERIAL.lock().unwrap();
    let bytes = random_model_bytes(&gpt2(), DType::Q8, 13).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    let seeded = Sampling {
        temperature: 0.9,
        top_k: Some(40),
        top_p: Some(0.95),
        seed: 77,
        ..Sampling::default()
    };
    // Greedy takes `Batch`'s own argmax path; with a repetition penalty, the sampler's.
    let greedy = Sampling::default();
    let penalized = Sampling {
        repetition_penalty: 1.5,
        ..Sampling::default()
    };
    for (what, sampling) in [
        ("seeded", seeded),
        ("greedy", greedy),
        ("greedy, penalty", penalized),
    ] {
        let prompt = [5u32, 9, 200, 17];
        let gen_opts = emberlm_runtime::GenerateOptions {
            max_tokens: 12,
            stop: emberlm_runtime::Stop::None,
            slide: false,
        };
        let mut want = vec![];
        let mut s = Session::new(&model, &opts(1)).unwrap();
        s.generate(&prompt, &sampling, &gen_opts, |t| {
            want.push(t);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
        let mut batch = Batch::new(
            &model,
            &BatchOptions {
                slots: 2,
                session: opts(1),
            },
        )
        .unwrap();
        // A neighbour in the other slot (seeded for the greedy ones, greedy for the seeded
        // one) must not disturb the sequence.
        let other_sampling = if sampling.temperature == 0.0 {
            Sampling {
                temperature: 1.0,
                seed: 3,
                ..Sampling::default()
            }
        } else {
            Sampling::default()
        };
        let other = batch.join(&[1, 2, 3], &other_sampling).unwrap().unwrap();
        let slot = batch.join(&prompt, &sampling).unwrap().unwrap();
        assert_ne!(other, slot);
        let mut got = vec![];
        while got.len() < want.len() {
            for e in batch.step() {
                if e.slot == slot {
                    let Next::Token(t) = e.next else { panic!() };
                    got.push(t);
                }
            }
        }
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn join_rejects_bad_input_and_full_batch_and_context() {
    let _g = SERIAL.lock().unwrap();
    let bytes = random_model_bytes(&gpt2(), DType::F32, 14).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    let session = SessionOptions {
        context: Some(8),
        threads: 1,
        ..SessionOptions::default()
    };
    let mut batch = Batch::new(&model, &BatchOptions { slots: 1, session }).unwrap();
    let greedy = Sampling::default();
    assert!(batch.join(&[], &greedy).is_err());
    assert!(batch.join(&[300], &greedy).is_err());
    assert!(batch.join(&[1; 9], &greedy).is_err());
    let slot = batch.join(&[1; 6], &greedy).unwrap().unwrap();
    assert_eq!(batch.join(&[1], &greedy).unwrap(), None, "one slot only");
    // 6 prompt tokens, then tokens at positions 6 and 7 fill the cache of 8.
    let mut nexts = vec![];
    for _ in 0..4 {
        nexts.extend(batch.step().iter().map(|e| e.next));
    }
    assert_eq!(nexts.len(), 4);
    assert!(matches!(nexts[2], Next::Token(_)));
    assert_eq!(nexts[3], Next::ContextFull);
    assert!(!batch.is_busy(slot));
    assert!(batch.step().is_empty());
    assert!(
        Batch::new(
            &model,
            &BatchOptions {
                slots: 0,
                ..BatchOptions::default()
            }
        )
        .is_err()
    );
}

#[test]
fn steps_allocate_nothing() {
    let _g = SERIAL.lock().unwrap();
    for (dtype, threads) in [
        (DType::Q8, 1),
        (DType::Q8, 2),
        (DType::F16, 2),
        (DType::Q4, 1),
        (DType::F32, 1),
    ] {
        let bytes = random_model_bytes(&gpt2(), dtype, 15).unwrap();
        let model = Model::from_bytes(&bytes).unwrap();
        let session = SessionOptions {
            threads,
            kv_dtype: KvDtype::F16,
            ..SessionOptions::default()
        };
        let mut batch = Batch::new(&model, &BatchOptions { slots: 4, session }).unwrap();
        let greedy = Sampling::default();
        for p in 0..4u32 {
            batch.join(&[p + 1, 7, 9], &greedy).unwrap().unwrap();
        }
        for _ in 0..8 {
            batch.step(); // prefill the four prompts, warm up the pools
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let n = batch.in_pool(|b| {
            let before = emberlm_testkit::alloc::allocations();
            for _ in 0..30 {
                let events = b.step();
                assert_eq!(events.len(), 4);
            }
            // Leave and rejoin: no allocation either (prefill is measured separately: it
            // enters the slot's own pool).
            b.leave(2);
            b.join(&[4, 4], &greedy).unwrap().unwrap();
            emberlm_testkit::alloc::allocations() - before
        });
        assert_eq!(
            n, 0,
            "{dtype:?} threads={threads}: {n} allocations in 30 steps"
        );
    }
}
