//! Sliding-window layers' rings ([`super::kv::Ring`]) against a cache that keeps every position:
//! the same logits, bit for bit, long after the rings have wrapped, for every dtype, cache
//! element, thread count and prefill chunk. A wrong period, a missing mirror slot or a wrong
//! layer base reads another position's keys and changes the logits.

use super::kv::KvLayout;
use super::{Session, SessionOptions};
use crate::KvDtype;
use crate::model::Model;
use crate::random::random_model_bytes;
use emberlm_formats::config::{ModelConfig, Sliding};
use emberlm_formats::ember::DType;

/// Gemma 3 at a tiny shape: window 3, every 2nd layer global (layers 0 and 2 ring), 48 positions.
fn tiny_gemma() -> ModelConfig {
    let mut cfg = ModelConfig::preset("gemma3-270m").unwrap();
    cfg.vocab_size = 97;
    cfg.context_length = 48;
    cfg.dim = 64;
    cfg.n_layers = 3;
    cfg.ffn_dim = 96;
    (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) = (4, 2, 32);
    cfg.embed_scale = 8.0;
    cfg.query_scale = 1.0 / 24f32.sqrt();
    cfg.sliding = Some(Sliding {
        window: 3,
        every: 2,
    });
    cfg.validate().unwrap();
    cfg
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Logits after each of `steps` (prefilled in chunks of `chunk` first when `prompt` is set).
fn run(
    model: &Model<'_>,
    opts: &SessionOptions,
    ring: bool,
    prompt: &[u32],
    steps: &[u32],
) -> (Vec<Vec<u32>>, usize, bool) {
    let mut s = Session::build(model, opts, ring).unwrap();
    let mut out = Vec::new();
    if !prompt.is_empty() {
        out.push(bits(s.prefill(prompt).unwrap()));
    }
    for &t in steps {
        out.push(bits(s.step(t).unwrap()));
    }
    (out, s.kv_cache_bytes(), s.kv.layout.ring.is_some())
}

#[test]
fn rings_give_the_full_caches_logits_bit_for_bit() {
    let cfg = tiny_gemma();
    let tokens: Vec<u32> = (0..40).map(|i| (i * 31 + 7) % 97).collect();
    for dtype in [DType::F32, DType::F16, DType::Q8] {
        let bytes = random_model_bytes(&cfg, dtype, 3).unwrap();
        let model = Model::from_bytes(&bytes).unwrap();
        for kv_dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Int8] {
            for threads in [1, 2] {
                // chunk 1: every token a decode step (period 3); chunks 4 and 5: prefill chunks
                // whose stores wrap the ring (periods 6, 7) before the chunk's tokens attend.
                for (chunk, prompt) in [(1, 0), (4, 33), (5, 37)] {
                    let opts = SessionOptions {
                        threads,
                        kv_dtype,
                        prefill_chunk: chunk,
                        ..SessionOptions::default()
                    };
                    let (p, s) = tokens.split_at(prompt);
                    let (ring, ring_bytes, used) = run(&model, &opts, true, p, s);
                    let (full, full_bytes, _) = run(&model, &opts, false, p, s);
                    let what = format!("{dtype:?} kv={kv_dtype:?} threads={threads} chunk={chunk}");
                    assert!(used, "{what}: no ring");
                    assert!(
                        ring_bytes < full_bytes,
                        "{what}: {ring_bytes} vs {full_bytes}"
                    );
                    assert_eq!(ring.len(), full.len());
                    for (i, (a, b)) in ring.iter().zip(&full).enumerate() {
                        assert!(a == b, "{what}: logits {i} differ");
                    }
                }
            }
        }
    }
}

#[test]
fn ring_layout_places_positions_and_mirrors() {
    // 4 layers, layers 1 and 3 global (every 2); window 3, chunk 2 → period 4, 6 slots.
    let l = KvLayout::new(4, 1, 20, 1).with_window(3, 2, 2);
    let ring = l.ring.expect("a ring");
    assert_eq!(l.slots(), 6 + 20 + 6 + 20);
    assert_eq!(l.at(0, 5, 1), 1); // layer 0 ring: slot 5 mod 4
    assert_eq!(l.mirror(0, 5, 1), Some(5)); // slot 1 < W − 1 has a mirror at 4 + 1
    assert_eq!(l.mirror(0, 6, 1), None); // slot 2 = W − 1: never read past the period
    assert_eq!(l.at(1, 5, 1), 6 + 5); // layer 1 global after 6 slots
    assert_eq!(l.mirror(1, 5, 1), None);
    assert_eq!(l.at(2, 9, 1), 6 + 20 + 1);
    assert_eq!(l.at(3, 19, 1), 6 + 20 + 6 + 19);
    // Every window of 3 positions (its last position p, stores up to p + chunk − 1) is a run of
    // slots holding exactly those positions.
    let mut slot_of = [usize::MAX; 6];
    for p in 0..20 {
        slot_of[l.at(0, p, 1)] = p;
        if let Some(m) = l.mirror(0, p, 1) {
            slot_of[m] = p;
        }
        // After storing p (the chunk's last), the window of p − 1 (its first) must be intact.
        if p >= 1 {
            let q = p - 1;
            let start = (q + 1).saturating_sub(3);
            let from = l.at(0, start, 1);
            for (i, pos) in (start..=q).enumerate() {
                assert_eq!(slot_of[from + i], pos, "window of {q}");
            }
        }
    }
    // A ring as long as the context is not made.
    assert!(
        KvLayout::new(4, 1, 6, 1)
            .with_window(3, 2, 2)
            .ring
            .is_none()
    );
    let _ = ring;
}
