//! The trainer's forward and backward of the modern families against PyTorch/transformers on the
//! tiny random models of tests/fixtures/families: logits, the loss and the gradient of every
//! parameter (trainer/tests/fixtures/family_grads, made by make_grads.py with transformers'
//! autograd, eager attention).

use emberlm_trainer::adamw::{AdamW, AdamWConfig, DecayPolicy};
use emberlm_trainer::family::{Layout, forward_backward};
use emberlm_trainer::hf::{HfDir, convert::read_all_f32};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

/// Logits and loss: relative to the largest |logit|, and relative for the loss.
const FWD_RTOL: f32 = 1e-5;
/// Each gradient element: |got − want| ≤ ATOL·max|want of the tensor| + RTOL·|want|.
const GRAD_ATOL: f32 = 1e-5;
const GRAD_RTOL: f32 = 1e-3;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn f32s(view: &safetensors::tensor::TensorView<'_>) -> Vec<f32> {
    view.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn loss_logits_and_every_gradient_match_transformers() {
    for family in ["llama", "qwen2", "qwen3", "gemma3"] {
        let hf = HfDir::open(&root().join("../tests/fixtures/families").join(family)).unwrap();
        let layout = Layout::new(&hf.config);
        let tensors = read_all_f32(&hf).unwrap();
        let mut params = Vec::with_capacity(layout.len);
        for ((name, _, values), (lname, range)) in tensors.iter().zip(&layout.tensors) {
            assert_eq!(name, lname);
            assert_eq!(values.len(), range.len());
            params.extend_from_slice(values);
        }
        assert_eq!(params.len(), layout.len);
        let dir = root().join("tests/fixtures/family_grads");
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{family}.json"))).unwrap(),
        )
        .unwrap();
        let rows: Vec<Vec<u32>> = meta["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect()
            })
            .collect();
        let b = rows.len();
        let tokens: Vec<u32> = rows.concat();
        // transformers' labels=: position t predicts token t + 1; the last position of each row
        // predicts nothing.
        let targets: Vec<i32> = rows
            .iter()
            .flat_map(|r| r[1..].iter().map(|&x| x as i32).chain([-100]))
            .collect();
        let mut grads = vec![0.0f32; layout.len];
        let step = forward_backward(&layout, &params, &mut grads, &tokens, &targets, b);

        let bytes = std::fs::read(dir.join(format!("{family}.safetensors"))).unwrap();
        let want = SafeTensors::deserialize(&bytes).unwrap();
        let want_loss = meta["loss"].as_f64().unwrap();
        assert!(
            (step.loss - want_loss).abs() <= FWD_RTOL as f64 * want_loss,
            "{family}: loss {} vs {want_loss}",
            step.loss
        );
        let logits = f32s(&want.tensor("logits").unwrap());
        let scale = logits.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = step
            .logits
            .iter()
            .zip(&logits)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= FWD_RTOL * scale,
            "{family}: logits off by {err} (scale {scale})"
        );

        let mut checked = 0;
        for ((name, hf_name, _), (_, range)) in tensors.iter().zip(&layout.tensors) {
            let w = f32s(
                &want
                    .tensor(hf_name)
                    .unwrap_or_else(|_| panic!("{family}: no gradient for {hf_name}")),
            );
            let got = &grads[range.clone()];
            let big = w.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                big > 0.0,
                "{family} {name}: a zero reference gradient proves nothing"
            );
            for (i, (g, x)) in got.iter().zip(&w).enumerate() {
                assert!(
                    (g - x).abs() <= GRAD_ATOL * big + GRAD_RTOL * x.abs(),
                    "{family} {name}[{i}]: got {g}, want {x} (max |grad| {big})"
                );
            }
            checked += 1;
        }
        // Every parameter transformers has (the tied head is the embedding) was compared.
        assert_eq!(checked * 2, want.names().len() - 1, "{family}");

        // Five AdamW steps on the same batch (matrices decayed), as torch.optim.AdamW.
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let lr = 1e-3f32;
        let mut opt = AdamW::new(cfg, layout.decay_mask(DecayPolicy::MatricesOnly));
        let mut p = params.clone();
        let want_losses: Vec<f64> = meta["adamw_losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (i, want) in want_losses.iter().enumerate() {
            let mut g = vec![0.0f32; layout.len];
            let s = forward_backward(&layout, &p, &mut g, &tokens, &targets, b);
            assert!(
                (s.loss - want).abs() <= 2e-5 * want,
                "{family}: loss before step {i}: {} vs {want}",
                s.loss
            );
            opt.step(&mut p, &g, lr).unwrap();
        }
        let after = forward_backward(
            &layout,
            &p,
            &mut vec![0.0; layout.len],
            &tokens,
            &targets,
            b,
        )
        .loss;
        let want_after = meta["adamw_loss_after"].as_f64().unwrap();
        assert!(
            (after - want_after).abs() <= 2e-5 * want_after,
            "{family}: loss after {after} vs {want_after}"
        );
        for ((name, hf_name, _), (_, range)) in tensors.iter().zip(&layout.tensors) {
            let w = f32s(&want.tensor(&format!("final.{hf_name}")).unwrap());
            let g0 = f32s(&want.tensor(hf_name).unwrap());
            // Gemma's stored scales are 1 + w.
            let plus = if family == "gemma3" && name.contains("norm") {
                1.0
            } else {
                0.0
            };
            let big = g0.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (i, ((&got, &x), &g)) in p[range.clone()].iter().zip(&w).zip(&g0).enumerate() {
                // Adam steps by lr·m/√v: a gradient known to ±e (the gradient check's bound,
                // GRAD_ATOL·max|grad|) moves each step by up to lr·e/|g|, a whole lr where g ~ e.
                let e = GRAD_ATOL * big;
                let tol = 2e-5 + 5.0 * lr * (e / g.abs().max(1e-30)).min(1.0);
                assert!(
                    (got - (x + plus)).abs() <= tol,
                    "{family} {name}[{i}] after 5 steps: {got} vs {} (first gradient {g})",
                    x + plus
                );
            }
        }
    }
}
