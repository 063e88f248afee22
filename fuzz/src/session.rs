//! The runtime `Session` driven by arbitrary options and calls: tiny random models (f32, f16 and
//! int8 weights; with and without q/k/v bias, tied and untied heads; dims 12 and 5, so every
//! kernel runs on tails), optionally with a few bytes
//! of the file patched (header fields, or weights turned into NaN / ∞ / huge values), session
//! options (context, KV dtype, threads, prefill chunk, reference kernels), then a sequence of
//! `step`, `prefill`, `generate` (arbitrary `Sampling` and `GenerateOptions`, a callback that may
//! stop early) and `reset` with arbitrary token ids, out-of-range ones included.
//!
//! Everything must return `Ok` or a typed error. Properties: errors leave the session's tokens
//! untouched and are the documented ones (`BadToken` for an id ≥ V, `ContextFull`, `EmptyPrompt`,
//! `BadOption` exactly when `Sampling::validate` or the options are out of range); successes move
//! the position as documented; generated ids are below the number of outputs and their count is
//! the stats'; for unpatched models every logit is finite; a generation from an empty cache is
//! reproducible (same prompt and seed → same tokens).

use super::input::Input;
use emberlm_formats::config::GptConfig;
use emberlm_formats::ember::{AlignedBytes, DType};
use emberlm_runtime::random::random_model_bytes;
use emberlm_runtime::{
    GenerateOptions, KvDtype, Model, RuntimeError, Sampling, Session, SessionOptions, Stop,
    StopReason,
};
use std::ops::ControlFlow;
use std::sync::OnceLock;

const CONFIGS: [GptConfig; 2] = [
    GptConfig {
        vocab_size: 37,
        context_length: 12,
        dim: 12,
        n_layers: 2,
        n_heads: 2,
        qkv_bias: true,
        tied_head: false,
    },
    GptConfig {
        vocab_size: 20,
        context_length: 7,
        dim: 5,
        n_layers: 1,
        n_heads: 1,
        qkv_bias: false,
        tied_head: true,
    },
];
const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::Q8];

/// Most calls per input (fewer under miri, which interprets every instruction).
const MAX_OPS: usize = if cfg!(miri) { 6 } else { 24 };
/// Most tokens a `generate` call may ask for.
const MAX_GENERATE: usize = if cfg!(miri) { 5 } else { 40 };

/// The bytes of model `i` ((config, dtype) in row-major order), made on first use.
fn model_bytes(i: usize) -> &'static AlignedBytes {
    const N: usize = CONFIGS.len() * DTYPES.len();
    static MODELS: [OnceLock<AlignedBytes>; N] = [const { OnceLock::new() }; N];
    MODELS[i].get_or_init(|| {
        let (cfg, dt) = (&CONFIGS[i / DTYPES.len()], DTYPES[i % DTYPES.len()]);
        random_model_bytes(cfg, dt, i as u64).expect("a tiny random model")
    })
}

/// A token id: usually in `0..v`, sometimes just past it, sometimes any u32.
fn token(input: &mut Input<'_>, v: usize) -> u32 {
    match input.u8() {
        0..=0xEF => input.u16() as u32 % v as u32,
        0xF0..=0xF7 => v as u32 + input.u8() as u32 % 3,
        _ => input.u32(),
    }
}

fn tokens(input: &mut Input<'_>, v: usize, max: usize) -> Vec<u32> {
    let n = input.u8() as usize % (max + 1);
    (0..n).map(|_| token(input, v)).collect()
}

fn sampling(input: &mut Input<'_>, n_out: usize) -> Sampling {
    Sampling {
        temperature: input.f32(),
        top_k: input.bool().then(|| input.size(n_out + 1)),
        top_p: input.bool().then(|| input.f32()),
        repetition_penalty: input.f32(),
        seed: input.u64(),
    }
}

/// The target's body.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let which = input.u8() as usize % (CONFIGS.len() * DTYPES.len());
    let cfg = CONFIGS[which / DTYPES.len()];
    let original = model_bytes(which);

    // Patches: none in most inputs.
    let n_patches = match input.u8() {
        0..=0xDF => 0,
        t => 1 + t as usize % 4,
    };
    let patched;
    let bytes: &[u8] = if n_patches == 0 {
        original
    } else {
        let mut b = original.to_vec();
        for _ in 0..n_patches {
            let at = if input.bool() {
                input.u16() as usize % 1024
            } else {
                input.u32() as usize
            } % b.len();
            b[at] = input.u8();
        }
        patched = AlignedBytes::copy_from(&b);
        &patched
    };
    let model = match Model::from_bytes(bytes) {
        Ok(m) => m,
        Err(e) => {
            assert!(n_patches > 0, "an unpatched random model must load: {e}");
            return;
        }
    };
    let exact = n_patches == 0;
    let v = model.config().vocab_size;
    let n_out = model.n_outputs();

    let options = SessionOptions {
        context: match input.u8() {
            0..=0x7F => None,
            _ => Some(input.size(cfg.context_length + 1)),
        },
        kv_dtype: if input.bool() {
            KvDtype::F16
        } else {
            KvDtype::F32
        },
        threads: match input.u8() % 8 {
            0 => 0,
            1 => 2,
            2 => 2000,
            _ => 1,
        },
        prefill_chunk: input.size(70),
        reference_kernels: input.bool(),
    };
    let mut session = match Session::new(&model, &options) {
        Ok(s) => s,
        Err(e) => {
            assert!(matches!(e, RuntimeError::BadOption { .. }), "{e:?}");
            let model_ctx = model.config().context_length;
            let ctx_ok = options.context.is_none_or(|c| (1..=model_ctx).contains(&c));
            let chunk_ok = (1..=4096).contains(&options.prefill_chunk);
            assert!(!(ctx_ok && chunk_ok && options.threads <= 1024), "{e:?}");
            return;
        }
    };
    let context = session.context();
    assert_eq!(
        context,
        options.context.unwrap_or(model.config().context_length)
    );

    let check_logits = |s: &Session<'_, '_>| {
        assert_eq!(s.logits().len(), n_out);
        if exact {
            assert!(
                s.logits().iter().all(|x| x.is_finite()),
                "non-finite logits"
            );
        }
    };

    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let before = session.tokens().to_vec();
        match input.u8() % 6 {
            0 | 1 => {
                let t = token(&mut input, v);
                match session.step(t) {
                    Ok(_) => {
                        assert!((t as usize) < v && before.len() < context);
                        assert_eq!(session.tokens().last(), Some(&t));
                        assert_eq!(session.position(), before.len() + 1);
                        check_logits(&session);
                    }
                    Err(e) => {
                        assert_eq!(
                            session.tokens(),
                            &before[..],
                            "a failed step changed the cache"
                        );
                        match e {
                            RuntimeError::BadToken { id, vocab_size } => {
                                assert_eq!((id, vocab_size), (t, v))
                            }
                            RuntimeError::ContextFull { context: c } => {
                                assert_eq!(c, context);
                                assert!((t as usize) < v && before.len() == context);
                            }
                            other => panic!("step: unexpected error {other:?}"),
                        }
                    }
                }
            }
            2 => {
                let ts = tokens(&mut input, v, 2 * cfg.context_length);
                let bad = ts.iter().any(|&t| t as usize >= v);
                match session.prefill(&ts) {
                    Ok(_) => {
                        assert!(!ts.is_empty() && !bad && before.len() + ts.len() <= context);
                        assert_eq!(session.tokens()[before.len()..], ts[..]);
                        check_logits(&session);
                    }
                    Err(e) => {
                        assert_eq!(
                            session.tokens(),
                            &before[..],
                            "a failed prefill changed the cache"
                        );
                        match e {
                            RuntimeError::EmptyPrompt => assert!(ts.is_empty()),
                            RuntimeError::BadToken { id, .. } => {
                                assert!(id as usize >= v && ts.contains(&id))
                            }
                            RuntimeError::ContextFull { .. } => {
                                assert!(before.len() + ts.len() > context)
                            }
                            other => panic!("prefill: unexpected error {other:?}"),
                        }
                    }
                }
            }
            3 | 4 => {
                let prompt = tokens(&mut input, v, cfg.context_length + 2);
                let s = sampling(&mut input, n_out);
                let max_tokens = input.size(MAX_GENERATE).min(MAX_GENERATE);
                let stop_token = input.bool().then(|| token(&mut input, n_out));
                let opts = GenerateOptions {
                    max_tokens,
                    stop: stop_token.map_or(Stop::None, Stop::Token),
                    slide: input.bool(),
                };
                let stop_after = input.bool().then(|| input.u8() as usize % 8);
                let fresh = before.is_empty();
                let mut out = Vec::new();
                let r = session.generate(&prompt, &s, &opts, |t| {
                    out.push(t);
                    if stop_after.is_some_and(|k| out.len() > k) {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                });
                let valid = s.validate(n_out).is_ok();
                match r {
                    Ok(stats) => {
                        assert!(valid, "generate accepted invalid sampling {s:?}");
                        assert_eq!(stats.prompt_tokens, prompt.len());
                        assert_eq!(stats.generated_tokens, out.len());
                        assert!(out.len() <= opts.max_tokens);
                        assert!(out.iter().all(|&t| (t as usize) < n_out));
                        assert!(stop_token.is_none_or(|st| !out.contains(&st)));
                        if stats.stop == StopReason::MaxTokens {
                            assert_eq!(out.len(), opts.max_tokens);
                        }
                        assert!(session.position() <= context);
                        check_logits(&session);
                        // (Not under miri: determinism is not what it checks, and it is slow.)
                        if fresh && exact && !cfg!(miri) {
                            session.reset();
                            let mut again = Vec::new();
                            let r2 = session.generate(&prompt, &s, &opts, |t| {
                                again.push(t);
                                if stop_after.is_some_and(|k| again.len() > k) {
                                    ControlFlow::Break(())
                                } else {
                                    ControlFlow::Continue(())
                                }
                            });
                            assert_eq!(r2.map(|st| st.generated_tokens), Ok(out.len()));
                            assert_eq!(again, out, "generation is not reproducible");
                        }
                    }
                    Err(RuntimeError::BadOption { .. }) => {
                        assert!(!valid, "valid sampling {s:?} rejected");
                    }
                    Err(e) => {
                        assert!(valid, "invalid sampling {s:?} gave {e:?}");
                        match e {
                            RuntimeError::EmptyPrompt => assert!(prompt.is_empty()),
                            RuntimeError::BadToken { id, .. } => {
                                assert!(id as usize >= v && prompt.contains(&id))
                            }
                            RuntimeError::ContextFull { .. } => {}
                            other => panic!("generate: unexpected error {other:?}"),
                        }
                    }
                }
            }
            _ => {
                session.reset();
                assert_eq!(session.position(), 0);
            }
        }
    }
}
