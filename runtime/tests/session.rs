//! Session behaviour on random models: batched prefill equals token-by-token decoding for every
//! dtype and thread count, sessions share a model across threads, the context limit and sliding.

use emberlm_formats::config::GptConfig;
use emberlm_formats::ember::DType;
use emberlm_runtime::random::random_model_bytes;
use emberlm_runtime::{
    GenerateOptions, KvDtype, Model, RuntimeError, Sampling, Session, SessionOptions, Stop,
    StopReason,
};
use std::ops::ControlFlow;

/// Batched prefill (gemm, tiles) vs one token at a time (matrix-vector): same sums in another
/// order. Relative to the largest |logit|.
const PREFILL_REL_TOL: f32 = 1e-4;
/// The same for Q8 weights. Decode quantizes activations to int8 blocks; prefill does too where
/// the CPU has the int8 prefill product (`panel_q8`: widths that are multiples of 32), else it
/// keeps them f32. Either way a tiny difference upstream (the attention's summation order) can
/// flip an activation's int8 rounding: on this random model the two differ by about 5e-3 to
/// 1e-2 of the largest |logit|.
const Q8_DECODE_REL_TOL: f32 = 3e-2;

fn cfg() -> GptConfig {
    GptConfig {
        vocab_size: 211,
        context_length: 40,
        dim: 48,
        n_layers: 2,
        n_heads: 3,
        qkv_bias: true,
        tied_head: false,
    }
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

#[test]
fn prefill_equals_stepwise_for_every_dtype_and_thread_count() {
    let prompt: Vec<u32> = (0..23).map(|i| (i * 37 + 5) % 211).collect();
    for dtype in [DType::F32, DType::F16, DType::Q8] {
        let bytes = random_model_bytes(&cfg(), dtype, 11).unwrap();
        let model = Model::from_bytes(&bytes).unwrap();
        let tol = if dtype == DType::Q8 {
            Q8_DECODE_REL_TOL
        } else {
            PREFILL_REL_TOL
        };
        for threads in [1, 2] {
            for chunk in [1, 4, 64] {
                let opts = SessionOptions {
                    threads,
                    prefill_chunk: chunk,
                    ..SessionOptions::default()
                };
                let mut a = Session::new(&model, &opts).unwrap();
                let batched = a.prefill(&prompt).unwrap().to_vec();
                let mut b = Session::new(&model, &opts).unwrap();
                let mut last = Vec::new();
                for &t in &prompt {
                    last = b.step(t).unwrap().to_vec();
                }
                let e = rel_err(&batched, &last);
                assert!(e <= tol, "{dtype:?} threads={threads} chunk={chunk}: {e}");
                // And decoding continues alike from both caches.
                let x = a.step(7).unwrap().to_vec();
                let y = b.step(7).unwrap().to_vec();
                assert!(rel_err(&x, &y) <= tol);
            }
        }
    }
}

/// Every logit of stepping `tokens` one at a time on a fresh session, concatenated.
fn step_logits(model: &Model<'_>, threads: usize, kv_dtype: KvDtype, tokens: &[u32]) -> Vec<f32> {
    let opts = SessionOptions {
        threads,
        kv_dtype,
        ..SessionOptions::default()
    };
    let mut s = Session::new(model, &opts).unwrap();
    let mut all = Vec::new();
    for &t in tokens {
        all.extend_from_slice(s.step(t).unwrap());
    }
    all
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn decode_logits_are_identical_for_every_thread_count() {
    // The decode crew cuts every matrix into the same chunks whatever the thread count, so the
    // logits must match bit for bit (tolerance 0), for every dtype and KV-cache dtype. (This
    // model's matrices are one chunk each; the next test's span several.)
    let tokens: Vec<u32> = (0..30).map(|i| (i * 53 + 9) % 211).collect();
    for dtype in [DType::F32, DType::F16, DType::Q8] {
        let bytes = random_model_bytes(&cfg(), dtype, 21).unwrap();
        let model = Model::from_bytes(&bytes).unwrap();
        for kv_dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Int8] {
            let one = step_logits(&model, 1, kv_dtype, &tokens);
            for threads in [2, 3, 4, 8] {
                let many = step_logits(&model, threads, kv_dtype, &tokens);
                assert!(
                    same_bits(&one, &many),
                    "{dtype:?} kv={kv_dtype:?}: 1 vs {threads} threads differ"
                );
            }
        }
    }
}

#[test]
fn decode_with_several_head_groups_matches_prefill_and_every_thread_count() {
    // 4 and 8 threads stand for a laptop's cores; on a 2-core CI host they oversubscribe it,
    // which must change neither the chunking nor a bit of the logits.
    // Head dim 64 and 10 heads: decode's attention job cuts the query/key/value product into
    // groups of 4 heads (the last one short), and each head waits for its own group's rows; the
    // other products are cut into several chunks (640 × 2560 and 2560 × 640).
    let cfg = GptConfig {
        vocab_size: 97,
        context_length: 24,
        dim: 640,
        n_layers: 2,
        n_heads: 10,
        qkv_bias: true,
        tied_head: true,
    };
    let tokens: Vec<u32> = (0..20).map(|i| (i * 31 + 3) % 97).collect();
    for dtype in [DType::F32, DType::Q8] {
        let bytes = random_model_bytes(&cfg, dtype, 5).unwrap();
        let model = Model::from_bytes(&bytes).unwrap();
        let one = step_logits(&model, 1, KvDtype::F32, &tokens);
        for threads in [2, 3, 4, 8] {
            let many = step_logits(&model, threads, KvDtype::F32, &tokens);
            assert!(
                same_bits(&one, &many),
                "{dtype:?}: 1 vs {threads} threads differ"
            );
        }
        let mut s = Session::new(&model, &SessionOptions::default()).unwrap();
        let batched = s.prefill(&tokens).unwrap().to_vec();
        let tol = if dtype == DType::Q8 {
            Q8_DECODE_REL_TOL
        } else {
            PREFILL_REL_TOL
        };
        let e = rel_err(&one[one.len() - 97..], &batched);
        assert!(e <= tol, "{dtype:?}: decode vs prefill {e}");
    }
}

#[test]
fn reference_kernels_agree_with_the_fast_ones() {
    let prompt: Vec<u32> = (0..17).map(|i| (i * 13 + 1) % 211).collect();
    for dtype in [DType::F32, DType::F16, DType::Q8] {
        let bytes = random_model_bytes(&cfg(), dtype, 2).unwrap();
        let model = Model::from_bytes(&bytes).unwrap();
        let run = |reference_kernels| {
            let opts = SessionOptions {
                reference_kernels,
                kv_dtype: KvDtype::F16,
                ..SessionOptions::default()
            };
            let mut s = Session::new(&model, &opts).unwrap();
            s.prefill(&prompt).unwrap().to_vec()
        };
        // Where the CPU has VNNI, the fast set's int8 prefill multiplies int8 activations by
        // int8 weights as decode does (`panel_q8`); the reference set multiplies f32 activations
        // by the dequantized weights. The two differ by the activations' quantization.
        let tol = if dtype == DType::Q8 {
            Q8_DECODE_REL_TOL
        } else {
            PREFILL_REL_TOL
        };
        let e = rel_err(&run(false), &run(true));
        assert!(e <= tol, "{dtype:?}: {e}");
    }
}

#[test]
fn sessions_share_one_model_across_threads() {
    let bytes = random_model_bytes(&cfg(), DType::Q8, 4).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    let sampling = Sampling {
        temperature: 0.8,
        top_k: Some(20),
        seed: 5,
        ..Sampling::default()
    };
    let limits = GenerateOptions {
        max_tokens: 12,
        ..GenerateOptions::default()
    };
    let generate = || {
        let mut s = Session::new(
            &model,
            &SessionOptions {
                threads: 1,
                ..SessionOptions::default()
            },
        )
        .unwrap();
        let mut out = Vec::new();
        s.generate(&[3, 1, 4], &sampling, &limits, |t| {
            out.push(t);
            ControlFlow::Continue(())
        })
        .unwrap();
        out
    };
    let alone = generate();
    let together: Vec<Vec<u32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4).map(|_| scope.spawn(generate)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(alone.len(), 12);
    for t in together {
        assert_eq!(
            t, alone,
            "same seed, same model, same tokens on every thread"
        );
    }
}

#[test]
fn context_limit_is_an_error_unless_sliding() {
    let bytes = random_model_bytes(&cfg(), DType::F32, 9).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    let opts = SessionOptions {
        context: Some(10),
        ..SessionOptions::default()
    };
    let mut s = Session::new(&model, &opts).unwrap();
    assert_eq!(
        s.prefill(&[1; 11]).unwrap_err(),
        RuntimeError::ContextFull { context: 10 }
    );
    assert_eq!(s.prefill(&[]).unwrap_err(), RuntimeError::EmptyPrompt);
    assert_eq!(
        s.step(211).unwrap_err(),
        RuntimeError::BadToken {
            id: 211,
            vocab_size: 211
        }
    );
    let limits = GenerateOptions {
        max_tokens: 30,
        slide: false,
        ..GenerateOptions::default()
    };
    let err = s.generate(&[1, 2, 3], &Sampling::default(), &limits, |_| {
        ControlFlow::Continue(())
    });
    assert_eq!(err.unwrap_err(), RuntimeError::ContextFull { context: 10 });

    s.reset();
    let slide = GenerateOptions {
        max_tokens: 30,
        slide: true,
        ..GenerateOptions::default()
    };
    let mut n = 0;
    let stats = s
        .generate(&[1, 2, 3], &Sampling::default(), &slide, |_| {
            n += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(
        (n, stats.generated_tokens, stats.stop),
        (30, 30, StopReason::MaxTokens)
    );
    assert!(s.position() <= 10);

    let too_big = SessionOptions {
        context: Some(41),
        ..SessionOptions::default()
    };
    assert!(matches!(
        Session::new(&model, &too_big),
        Err(RuntimeError::BadOption {
            option: "context",
            ..
        })
    ));
}

#[test]
fn stop_token_and_callback_stop_generation() {
    let bytes = random_model_bytes(&cfg(), DType::F32, 9).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    let mut s = Session::new(&model, &SessionOptions::default()).unwrap();
    // Greedy: find the first generated token, then make it the stop token.
    let mut first = None;
    s.generate(
        &[5, 6],
        &Sampling::default(),
        &GenerateOptions {
            max_tokens: 1,
            ..Default::default()
        },
        |t| {
            first = Some(t);
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    s.reset();
    let limits = GenerateOptions {
        max_tokens: 10,
        stop: first.map_or(Stop::None, Stop::Token),
        slide: false,
    };
    let stats = s
        .generate(&[5, 6], &Sampling::default(), &limits, |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(
        (stats.generated_tokens, stats.stop),
        (0, StopReason::EndOfText)
    );
    s.reset();
    let stats = s
        .generate(
            &[5, 6],
            &Sampling::default(),
            &GenerateOptions::default(),
            |_| ControlFlow::Break(()),
        )
        .unwrap();
    assert_eq!(
        (stats.generated_tokens, stats.stop),
        (1, StopReason::Callback)
    );
}

/// `Model::prefill_flops` against the textbook count from the config alone: per layer and token
/// 2·(C·3C + C·C + C·4C + 4C·C) = 24·C² for the matrices, 4·C per cached position for attention
/// (positions 1..=T), and the head 2·C·V once.
#[test]
fn prefill_flops_match_the_count_from_the_config() {
    let cfg = cfg();
    let bytes = random_model_bytes(&cfg, DType::F16, 5).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    let (c, l, v) = (cfg.dim as f64, cfg.n_layers as f64, cfg.vocab_size as f64);
    for t in [1usize, 2, 7, 40] {
        let tf = t as f64;
        let want = l * (24.0 * c * c * tf + 4.0 * c * tf * (tf + 1.0) / 2.0) + 2.0 * c * v;
        assert_eq!(model.prefill_flops(t), want, "{t} tokens");
    }
    assert_eq!(model.prefill_flops(0), 0.0);
}

#[test]
fn auto_kv_cache_is_f32_for_f32_models_and_f16_otherwise() {
    assert_eq!(SessionOptions::default().kv_dtype, KvDtype::Auto);
    let prompt: Vec<u32> = (0..9).map(|i| (i * 53 + 2) % 211).collect();
    let logits = |model: &Model<'_>, kv_dtype: KvDtype| {
        let opts = SessionOptions {
            threads: 1,
            kv_dtype,
            ..SessionOptions::default()
        };
        let mut s = Session::new(model, &opts).unwrap();
        s.prefill(&prompt).unwrap();
        s.step(7).unwrap().to_vec()
    };
    for (dtype, want) in [
        (DType::F32, KvDtype::F32),
        (DType::F16, KvDtype::F16),
        (DType::Q8, KvDtype::F16),
    ] {
        let bytes = random_model_bytes(&cfg(), dtype, 11).unwrap();
        let model = Model::from_bytes(&bytes).unwrap();
        assert_eq!(KvDtype::Auto.resolve(&model), want, "{dtype:?}");
        for d in [KvDtype::F32, KvDtype::F16, KvDtype::Int8] {
            assert_eq!(d.resolve(&model), d);
        }
        // The session really uses the resolved cache: the same bits as the explicit type, and
        // not those of the other one.
        let (auto, f32, f16) = (
            logits(&model, KvDtype::Auto),
            logits(&model, KvDtype::F32),
            logits(&model, KvDtype::F16),
        );
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let (same, other) = if want == KvDtype::F32 {
            (&f32, &f16)
        } else {
            (&f16, &f32)
        };
        assert_eq!(bits(&auto), bits(same), "{dtype:?}");
        assert_ne!(bits(&auto), bits(other), "{dtype:?}");
    }
}

#[test]
fn int8_cache_stays_close_to_the_exact_one() {
    // The int8 cache rounds each key and value to its block's step (≤ max|x|/254 per element)
    // and the query likewise: the logits move, but by a small fraction of their spread; and the
    // cache really is another one (not silently f16 or f32).
    let tokens: Vec<u32> = (0..40).map(|i| (i * 37 + 5) % 211).collect();
    let bytes = random_model_bytes(&cfg(), DType::F32, 23).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    let exact = step_logits(&model, 1, KvDtype::F32, &tokens);
    let int8 = step_logits(&model, 1, KvDtype::Int8, &tokens);
    let f16 = step_logits(&model, 1, KvDtype::F16, &tokens);
    let spread = |v: &[f32]| {
        let (lo, hi) = v
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        hi - lo
    };
    let v = cfg().vocab_size;
    let worst = |other: &[f32]| {
        (exact.chunks(v).zip(other.chunks(v)))
            .map(|(e, o)| {
                let d = e.iter().zip(o).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                d / spread(e)
            })
            .fold(0f32, f32::max)
    };
    let (w8, w16) = (worst(&int8), worst(&f16));
    assert!(
        w8 < 0.02,
        "int8 cache: logits moved by {w8} of their spread"
    );
    assert!(
        w8 > 0.0 && w8 > w16,
        "int8 cache {w8} vs f16 {w16}: not the int8 cache?"
    );
}

/// `GenerateOptions::default()` is what a library user wants: it stops at the model's own
/// end-of-text token (from the tokenizer in its file) and slides past the end of the context.
#[test]
fn default_options_stop_at_the_models_end_of_text_and_slide() {
    use emberlm_formats::tokenizer::{Tokenizer, TokenizerParts};
    // Byte-level: ids 0..=255 are bytes, 256 is <|endoftext|>.
    let mut bytes: Vec<u8> = (0..=255).collect();
    let mut ends: Vec<u32> = (1..=256).collect();
    bytes.extend(b"<|endoftext|>");
    ends.push(bytes.len() as u32);
    let tok = Tokenizer::from_parts(TokenizerParts {
        tokens: bytes,
        token_ends: ends,
        special_names: vec!["<|endoftext|>".into()],
        special_ids: vec![256],
    })
    .unwrap();
    let cfg = GptConfig {
        vocab_size: 257,
        context_length: 16,
        ..cfg()
    };
    let model_bytes =
        emberlm_runtime::random::random_model_bytes_with_tokenizer(&cfg, DType::F32, 5, &tok)
            .unwrap();
    let model = Model::from_bytes(&model_bytes).unwrap();
    let mut s = Session::new(&model, &SessionOptions::default()).unwrap();
    // Nearly uniform sampling: <|endoftext|> comes, after more tokens than the context holds.
    let sampling = Sampling {
        temperature: 50.0,
        seed: 5,
        ..Sampling::default()
    };
    let opts = GenerateOptions {
        max_tokens: 5000,
        ..GenerateOptions::default()
    };
    let mut out = Vec::new();
    let stats = s
        .generate(&[1, 2, 3], &sampling, &opts, |t| {
            out.push(t);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(stats.stop, StopReason::EndOfText);
    assert!(!out.contains(&256));
    assert!(out.len() > 16, "{} tokens: the context slid", out.len());
    // The same run with `Stop::None` goes past that token.
    s.reset();
    let stats = s
        .generate(
            &[1, 2, 3],
            &sampling,
            &GenerateOptions {
                max_tokens: out.len() + 1,
                stop: Stop::None,
                ..opts
            },
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
    assert_eq!(
        (stats.generated_tokens, stats.stop),
        (out.len() + 1, StopReason::MaxTokens)
    );
}
