//! Training a Llama-style model against transformers over many steps at a real shape (issue 18):
//! `benches/peers/llama_plateau.py DIR ...` makes a random `LlamaForCausalLM`, the token windows
//! of each step in `ember-train pretrain`'s order, and trains it with torch.optim.AdamW, writing
//! each step's loss. This test starts the trainer's family model from the same weights, takes the
//! same batches and AdamW settings (matrices decayed), and compares the loss of every step.
//!
//! Heavy (minutes), so ignored; run it with
//! `EMBER_PEER_DIR=DIR cargo test --release -p emberlm-trainer --test family_peer_train -- --ignored --nocapture`.

use emberlm_trainer::adamw::{AdamW, AdamWConfig, DecayPolicy};
use emberlm_trainer::family::{Layout, forward_backward};
use emberlm_trainer::hf::{HfDir, convert::read_all_f32};
use std::path::PathBuf;

/// Each step's loss within this fraction of transformers' (float rounding grows over steps).
const LOSS_RTOL: f64 = 0.02;

#[test]
#[ignore = "needs EMBER_PEER_DIR made by benches/peers/llama_plateau.py"]
fn loss_per_step_matches_transformers() {
    let Some(dir) = std::env::var_os("EMBER_PEER_DIR").map(PathBuf::from) else {
        panic!("set EMBER_PEER_DIR to a directory made by benches/peers/llama_plateau.py");
    };
    let hf = HfDir::open(&dir.join("model")).unwrap();
    let layout = Layout::new(&hf.config);
    let mut params = Vec::with_capacity(layout.len);
    for ((name, _, values), (lname, range)) in
        read_all_f32(&hf).unwrap().iter().zip(&layout.tensors)
    {
        assert_eq!(name, lname);
        assert_eq!(values.len(), range.len());
        params.extend_from_slice(values);
    }
    assert_eq!(params.len(), layout.len);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("batches.json")).unwrap()).unwrap();
    let num = |k: &str| meta[k].as_f64().unwrap();
    let (steps, b, t) = (
        num("steps") as usize,
        num("batch") as usize,
        num("context") as usize,
    );
    let ids: Vec<u32> = std::fs::read(dir.join("batches.bin"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(ids.len(), steps * b * (t + 1));
    let want: Vec<f64> = std::fs::read_to_string(dir.join("torch_losses.txt"))
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(want.len(), steps);

    let cfg = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: num("weight_decay"),
    };
    let mut opt = AdamW::new(cfg, layout.decay_mask(DecayPolicy::MatricesOnly));
    let lr = num("lr") as f32;
    let mut worst = 0.0f64;
    for (s, rows) in ids.chunks_exact(b * (t + 1)).enumerate() {
        let mut x = Vec::with_capacity(b * t);
        let mut y = Vec::with_capacity(b * t);
        for r in rows.chunks_exact(t + 1) {
            x.extend_from_slice(&r[..t]);
            y.extend(r[1..].iter().map(|&v| v as i32));
        }
        let mut g = vec![0.0f32; layout.len];
        let loss = forward_backward(&layout, &params, &mut g, &x, &y, b).loss;
        let rel = (loss - want[s]).abs() / want[s];
        worst = worst.max(rel);
        println!(
            "step {} ember {loss:.4} transformers {:.4} (rel {rel:.1e})",
            s + 1,
            want[s]
        );
        opt.step(&mut params, &g, lr).unwrap();
    }
    assert!(
        worst <= LOSS_RTOL,
        "a step's loss departs from transformers' by {worst:.3} (relative)"
    );
}
