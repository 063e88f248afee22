//! The trainer against PyTorch: the book's GPTModel (trainer/tests/fixtures/make_trainer_golden.py, run
//! once with torch) on tiny configs — logits, loss, every parameter's gradient, and the losses and
//! parameters of 5 `torch.optim.AdamW` steps. The reference is code this project did not write
//! (PyTorch's autograd and optimizer), so a shared misunderstanding cannot pass unnoticed.

use emberlm_formats::config::GptConfig;
use emberlm_trainer::adamw::{AdamW, AdamWConfig, DecayPolicy};
use emberlm_trainer::model::{Gpt, Mode};
use serde_json::Value;

/// Logits and the loss: f32 with different summation orders.
const FWD_ATOL: f64 = 2e-5;
/// Gradients.
const GRAD_ATOL: f64 = 2e-6;
const GRAD_RTOL: f64 = 1e-4;
/// Parameters after 5 AdamW steps at lr 0.01 (each step moves a weight by up to ~lr).
const PARAM_ATOL: f64 = 2e-5;
/// The losses along the AdamW trajectory.
const LOSS_ATOL: f64 = 2e-5;
/// A gradient this small is rounding noise: the key bias's true gradient is exactly 0 (softmax
/// ignores a constant added to every score of a row, and q·b_k is such a constant). Adam
/// normalises noise to steps of ±lr whose signs differ between implementations, so those
/// parameters are compared with a tolerance of lr per step instead.
const NOISE_GRAD: f64 = 1e-7;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/trainer_golden.json"
    );
    let text = std::fs::read_to_string(path).expect("committed fixture");
    serde_json::from_str(&text).expect("valid JSON")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn ints<T: TryFrom<i64>>(v: &Value) -> Vec<T> {
    v.as_array()
        .expect("array of rows")
        .iter()
        .flat_map(|row| row.as_array().expect("row").clone())
        .map(|x| T::try_from(x.as_i64().expect("int")).ok().expect("fits"))
        .collect()
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= atol + rtol * w.abs(),
            "{what}[{i}]: emberlm {g}, PyTorch {w} (err {err:e})"
        );
    }
}

/// Builds the model from the fixture's parameters, walking the canonical names in order.
fn model_from(case: &Value, key: &str) -> Gpt {
    let c = &case["config"];
    let u = |k: &str| c[k].as_u64().expect("config field") as usize;
    let cfg = GptConfig {
        vocab_size: u("vocab_size"),
        context_length: u("context_length"),
        dim: u("dim"),
        n_layers: u("n_layers"),
        n_heads: u("n_heads"),
        qkv_bias: c["qkv_bias"].as_bool().expect("bool"),
        tied_head: c["tied_head"].as_bool().expect("bool"),
    };
    let named = case[key].as_object().expect("params by name");
    assert_eq!(named.len(), cfg.tensor_shapes().len(), "tensor count");
    let mut params = Vec::new();
    for (name, shape) in cfg.tensor_shapes() {
        let values = floats(&named[&name]);
        assert_eq!(values.len(), shape.iter().product::<usize>(), "{name}");
        params.extend(values.iter().map(|&v| v as f32));
    }
    Gpt::from_params(cfg, params).expect("valid model")
}

fn check_case(name: &str) {
    let fx = fixture();
    let case = &fx["cases"][name];
    let tokens: Vec<u32> = ints(&case["tokens"]);
    let targets: Vec<i32> = ints(&case["targets"]);
    let b = case["tokens"].as_array().expect("rows").len();
    let t = tokens.len() / b;
    let mut model = model_from(case, "params");

    // Forward: logits and loss.
    let loss = model
        .forward(&tokens, Some(&targets), b, t, Mode::Eval)
        .expect("forward")
        .expect("loss");
    let want_loss = case["loss"].as_f64().expect("loss");
    assert!(
        (loss as f64 - want_loss).abs() < FWD_ATOL,
        "{name}: loss {loss} vs {want_loss}"
    );
    assert_close(
        &format!("{name} logits"),
        model.logits().expect("logits"),
        &floats(&case["logits"]),
        FWD_ATOL,
        0.0,
    );

    // Backward: every parameter's gradient.
    model.zero_grad();
    model.backward().expect("backward");
    let tensors = model.tensors().to_vec();
    let grads = model.grads().to_vec();
    for ti in &tensors {
        assert_close(
            &format!("{name} grad {}", ti.name),
            &grads[ti.range()],
            &floats(&case["grads"][&ti.name]),
            GRAD_ATOL,
            GRAD_RTOL,
        );
    }

    // Five AdamW steps (PyTorch's AdamW decays every parameter).
    let adam = &case["adamw"];
    let cfg = AdamWConfig {
        beta1: adam["betas"][0].as_f64().expect("beta1"),
        beta2: adam["betas"][1].as_f64().expect("beta2"),
        eps: adam["eps"].as_f64().expect("eps"),
        weight_decay: adam["weight_decay"].as_f64().expect("wd"),
    };
    let lr = adam["lr"].as_f64().expect("lr") as f32;
    let mut opt = AdamW::new(cfg, model.decay_mask(DecayPolicy::All));
    let want_losses = floats(&adam["losses_before_each_step"]);
    for (step, want) in want_losses.iter().enumerate() {
        model.zero_grad();
        let l = model
            .forward(&tokens, Some(&targets), b, t, Mode::Eval)
            .expect("forward")
            .expect("loss");
        assert!(
            (l as f64 - want).abs() < LOSS_ATOL,
            "{name}: loss before step {step}: {l} vs {want}"
        );
        model.backward().expect("backward");
        let (p, g) = model.params_and_grads();
        opt.step(p, g, lr).expect("step");
    }
    let after = model
        .forward(&tokens, Some(&targets), b, t, Mode::Eval)
        .expect("forward")
        .expect("loss");
    let want_after = adam["loss_after"].as_f64().expect("loss_after");
    assert!(
        (after as f64 - want_after).abs() < LOSS_ATOL,
        "{name}: loss after 5 steps {after} vs {want_after}"
    );
    let steps = want_losses.len() as f64;
    for ti in &tensors {
        let want = floats(&adam["final_params"][&ti.name]);
        let g0 = floats(&case["grads"][&ti.name]);
        let got = &model.params()[ti.range()];
        for (i, ((&p, &w), &g)) in got.iter().zip(&want).zip(&g0).enumerate() {
            let noise = g.abs() < NOISE_GRAD;
            if noise {
                // Both sides must see noise here, not a real gradient.
                assert!(
                    grads[ti.offset + i].abs() < NOISE_GRAD as f32,
                    "{name} {}[{i}]",
                    ti.name
                );
            }
            let tol = if noise { lr as f64 * steps } else { PARAM_ATOL };
            assert!(
                (p as f64 - w).abs() <= tol,
                "{name} param after 5 steps {}[{i}]: emberlm {p}, PyTorch {w}",
                ti.name
            );
        }
    }
}

#[test]
fn untied_head_with_qkv_bias_matches_pytorch() {
    check_case("untied_qkv_bias");
}

#[test]
fn tied_head_without_qkv_bias_matches_pytorch() {
    check_case("tied_plain");
}
