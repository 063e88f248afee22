//! Direct LoRA (adapters run beside the frozen weights, [`crate::family::Lora`]) against merging
//! LoRA (adapters merged into the weights, the full backward, then the chain rule through the
//! merge), on tiny models of every family, and against central differences of the loss.
//!
//! The merging path is the reference: its adapter gradients come from the full dW that the
//! families' golden tests check against PyTorch, and `lora_adapter_gradients_and_merge_match_an_f64_reference`
//! checks its chain rule in f64. B starts at zero in training (then dA = 0); here it is random, so
//! every term of the direct backward shows.

use super::tune::{LoraSpec, LoraTargets, Trainable, TuneOptions, Tuner};
use crate::family::FamilyModel;
use crate::layers::crossentropy::IGNORE_INDEX;
use crate::layers::dropout::mix64;
use emberlm_formats::arch::Role;
use emberlm_formats::config::{ModelConfig, Sliding};

/// Loss of the two paths: f32 sums in a different order.
const LOSS_RTOL: f64 = 1e-5;
/// Gradients of the two paths: max |direct − merged| over max |merged|, per adapter.
const GRAD_RTOL: f32 = 2e-4;
/// Weights after one AdamW step and the final merge: max |direct − merged|.
const STEP_ATOL: f32 = 1e-5;
/// Central differences of an f32 model (f64 loss sums): step (small: Gemma's scaled embedding
/// curves the loss) and tolerances (the absolute one: f32 rounding of the loss over 2·step).
const FD_STEP: f32 = 3e-3;
const FD_RTOL: f64 = 0.02;
const FD_ATOL: f64 = 2e-4;

/// A tiny model of `preset`'s family: 2 blocks, C 16, 4 query heads and 2 key/value heads of
/// D 4, F 24, V 64 (Gemma: a window of 3 on the first layer).
fn tiny(preset: &str) -> ModelConfig {
    let mut c = ModelConfig::preset(preset).unwrap();
    c.vocab_size = 64;
    c.context_length = 16;
    c.dim = 16;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 4;
    c.ffn_dim = 24;
    if c.sliding.is_some() {
        c.sliding = Some(Sliding {
            window: 3,
            every: 2,
        });
        c.embed_scale = 4.0;
        c.query_scale = 0.4;
    }
    c
}

/// A uniform number in (−1, 1).
fn unit(key: u64) -> f32 {
    ((mix64(key) >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// The fixture: `cfg`'s model with random weights (biases and norm scales too, so none is
/// trivially zero or one), as a language model or a classifier of 3 labels.
fn model(cfg: &ModelConfig, classes: Option<usize>) -> FamilyModel {
    let mut m = FamilyModel::new(cfg, 11).unwrap();
    for (i, p) in m.params_mut().iter_mut().enumerate() {
        *p += 0.05 * unit(0xB1A5 ^ i as u64);
    }
    match classes {
        Some(k) => m.into_classifier(k, 5).unwrap(),
        None => m,
    }
}

/// An identical copy of `m`'s weights.
fn copy(m: &FamilyModel) -> FamilyModel {
    match m.classes() {
        Some(k) => FamilyModel::classifier_from_params(m.config(), k, m.params().to_vec()),
        None => FamilyModel::from_params(m.config(), m.params().to_vec()),
    }
    .unwrap()
}

fn opts(targets: LoraTargets) -> TuneOptions {
    TuneOptions {
        trainable: Trainable::All,
        lora: Some(LoraSpec {
            rank: 2,
            alpha: 4.0,
            targets,
        }),
        weight_decay: 0.1,
        seed: 9,
    }
}

/// A (2, 6) batch: tokens, and targets with a few ignored positions (a classifier: the last of
/// each row only).
fn batch(m: &FamilyModel) -> (Vec<u32>, Vec<i32>) {
    let (b, t) = (2, 6);
    let v = m.config().vocab_size as u64;
    let x: Vec<u32> = (0..b * t)
        .map(|i| (mix64(i as u64 + 3) % v) as u32)
        .collect();
    let y: Vec<i32> = match m.classes() {
        Some(k) => (0..b * t)
            .map(|i| {
                if i % t == t - 1 {
                    (i / t % k) as i32
                } else {
                    IGNORE_INDEX
                }
            })
            .collect(),
        None => (0..b * t)
            .map(|i| {
                if i % 5 == 4 {
                    IGNORE_INDEX
                } else {
                    (mix64(i as u64 + 77) % v) as i32
                }
            })
            .collect(),
    };
    (x, y)
}

/// The cases: every family, with biases (Qwen2), query/key norms (Qwen3, Gemma 3), Gemma's
/// post-norms, embedding scale and sliding window; an untied head with its own adapter; the
/// embedding adapted under a tied head (the head uses its adapter); a classifier's head.
fn cases() -> Vec<(&'static str, ModelConfig, Option<usize>, LoraTargets)> {
    let all = LoraTargets::ALL;
    let with_emb = LoraTargets { emb: true, ..all };
    let mut untied = tiny("smollm2-135m");
    untied.tied_head = false;
    vec![
        ("llama, untied head", untied, None, with_emb),
        ("llama, tied head", tiny("smollm2-135m"), None, with_emb),
        ("qwen2 (q/k/v biases)", tiny("qwen2.5-0.5b"), None, all),
        ("qwen3", tiny("qwen3-0.6b"), None, all),
        ("gemma3", tiny("gemma3-270m"), None, with_emb),
        ("qwen3 classifier", tiny("qwen3-0.6b"), Some(3), all),
    ]
}

/// Sets B of every adapter to random values (A is random from the start), through `b_of`.
fn randomize_b(ranges: &[std::ops::Range<usize>], params: &mut [f32]) {
    for r in ranges {
        for (j, p) in params[r.clone()].iter_mut().enumerate() {
            *p = 0.3 * unit(0x5EED ^ (r.start + j) as u64);
        }
    }
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn direct_lora_equals_merging_lora_on_every_family() {
    for (name, cfg, classes, targets) in cases() {
        let base = model(&cfg, classes);
        let (x, y) = batch(&base);
        let mut merged = copy(&base);
        let mut direct = copy(&base);
        let mut tm = Tuner::merged(&mut merged, &opts(targets)).unwrap();
        let mut td = Tuner::new(&mut direct, &opts(targets)).unwrap();
        assert!(!tm.is_direct() && td.is_direct(), "{name}");
        assert_eq!(tm.adapters(), td.adapters(), "{name}");
        let b_ranges: Vec<_> = tm.adapters().iter().map(|a| a.b.clone()).collect();
        randomize_b(&b_ranges, tm.adapter_params_mut());
        tm.merge(&mut merged);
        let lora = direct.lora_mut().unwrap();
        randomize_b(&b_ranges, &mut lora.params);
        assert_eq!(lora.params, tm.adapter_params(), "{name}: same adapters");
        // The adapters that a tied head or the embedding target give.
        let roles: Vec<Role> = direct
            .lora()
            .unwrap()
            .adapters
            .iter()
            .map(|a| a.role)
            .collect();
        assert_eq!(
            roles.contains(&Role::TokEmb),
            targets.emb,
            "{name}: embedding adapter"
        );
        assert_eq!(
            roles.contains(&Role::Head),
            !cfg.tied_head || classes.is_some(),
            "{name}: head adapter"
        );

        // Two micro-batches accumulate (the second on the same data: twice the first).
        merged.grads_mut().fill(0.0);
        direct.grads_mut().fill(0.0);
        // With the adapters attached the model's gradient buffer is theirs alone.
        assert_eq!(direct.grads_mut().len(), td.trainable_params(), "{name}");
        for _ in 0..2 {
            let lm = merged.train_batch(&x, &y, 2);
            let ld = direct.train_batch(&x, &y, 2);
            assert!(
                (lm - ld).abs() <= LOSS_RTOL * lm.abs(),
                "{name}: loss merged {lm}, direct {ld}"
            );
            // The forward alone gives the training pass's loss, bit for bit.
            assert_eq!(direct.loss(&x, &y, 2).to_bits(), ld.to_bits(), "{name}");
        }
        tm.adapter_gradients(&mut merged);
        let gd = direct.lora().unwrap().grads.clone();
        for ad in tm.adapters() {
            for (part, r) in [("A", ad.a.clone()), ("B", ad.b.clone())] {
                let (m, d) = (&tm.adapter_grads()[r.clone()], &gd[r]);
                assert!(
                    m.iter().any(|v| *v != 0.0),
                    "{name}: d{part} of {} is zero",
                    ad.name
                );
                let e = rel_err(d, m);
                assert!(e <= GRAD_RTOL, "{name}: d{part} of {}: error {e}", ad.name);
            }
        }

        // One AdamW step each, then the direct model merges: the same weights.
        tm.step(&mut merged, 1e-2).unwrap();
        td.step(&mut direct, 1e-2).unwrap();
        let checkpointed = direct.merged_params().into_owned();
        td.finish(&mut direct);
        assert!(direct.lora().is_none(), "{name}: detached");
        // What a checkpoint saves during training is what the final merge gives, bit for bit.
        assert_eq!(checkpointed, direct.params(), "{name}");
        let e = merged
            .params()
            .iter()
            .zip(direct.params())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(e <= STEP_ATOL, "{name}: weights after a step differ by {e}");
        // Frozen: everything but the adapted matrices is the base model's, bit for bit.
        let adapted: Vec<_> = td.adapters().iter().map(|a| a.weight.clone()).collect();
        for (i, (p, q)) in direct.params().iter().zip(base.params()).enumerate() {
            if !adapted.iter().any(|r| r.contains(&i)) {
                assert_eq!(p.to_bits(), q.to_bits(), "{name}: parameter {i} moved");
            }
        }
    }
}

/// The direct path's adapter gradients are the loss's central differences.
#[test]
fn direct_lora_gradients_match_finite_differences() {
    for (name, cfg, classes, targets) in cases() {
        let mut m = model(&cfg, classes);
        let (x, y) = batch(&m);
        let tuner = Tuner::new(&mut m, &opts(targets)).unwrap();
        let b_ranges: Vec<_> = tuner.adapters().iter().map(|a| a.b.clone()).collect();
        randomize_b(&b_ranges, &mut m.lora_mut().unwrap().params);
        m.grads_mut().fill(0.0);
        m.train_batch(&x, &y, 2);
        let grads = m.lora().unwrap().grads.clone();
        // Per adapter, the largest entry of dA and of dB (a meaningful size to difference).
        for ad in tuner.adapters() {
            for r in [ad.a.clone(), ad.b.clone()] {
                let i = r
                    .clone()
                    .max_by(|&p, &q| grads[p].abs().total_cmp(&grads[q].abs()))
                    .unwrap();
                let at = |m: &mut FamilyModel, d: f32| {
                    let keep = m.lora().unwrap().params[i];
                    m.lora_mut().unwrap().params[i] = keep + d;
                    let l = m.loss(&x, &y, 2);
                    m.lora_mut().unwrap().params[i] = keep;
                    l
                };
                let fd = (at(&mut m, FD_STEP) - at(&mut m, -FD_STEP)) / (2.0 * FD_STEP as f64);
                let g = grads[i] as f64;
                assert!(
                    (fd - g).abs() <= FD_RTOL * fd.abs().max(g.abs()) + FD_ATOL,
                    "{name}: {} parameter {i}: finite differences {fd}, backward {g}",
                    ad.name
                );
            }
        }
    }
}

/// Adapters that do not fit the model are refused with a reason, never a panic.
#[test]
fn misfit_adapters_are_refused() {
    let cfg = tiny("qwen3-0.6b");
    let mut m = model(&cfg, None);
    let mut donor = model(&cfg, None);
    Tuner::new(&mut donor, &opts(LoraTargets::ALL)).unwrap();
    let good = donor.lora().unwrap().clone();
    let mut bad = good.clone();
    bad.adapters[0].out_features += 1;
    assert!(m.attach_lora(bad).unwrap_err().contains("does not fit"));
    let mut bad = good.clone();
    bad.adapters[1].layer = Some(7);
    assert!(m.attach_lora(bad).is_err());
    let mut bad = good.clone();
    bad.grads.pop();
    assert!(m.attach_lora(bad).is_err());
    assert!(m.lora().is_none());
    m.attach_lora(good).unwrap();
}
