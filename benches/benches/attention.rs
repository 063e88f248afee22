//! How fast decode attention reads a cold KV cache, by cache layout: the evidence behind
//! `KvLayout` in `runtime/src/session/kv.rs` (keys and values stored by groups of 4 heads).
//!
//! Run: `cargo bench -p emberlm-benches --bench attention`. One thread, GPT-2 124M's cache
//! shape (12 layers, 12 heads of D = 64, a 1024-position context, f16). Each pass attends one
//! token at P positions in every layer and head, as a decode step does, on the next of 4 copies
//! of the cache (151 MB, beyond the last-level cache; ordinary heap pages, as the session's
//! cache). The same kernels read two layouts of the same bytes:
//! - `grouped`: each group of 4 heads is one (L, T, 4, D) block, attended by one
//!   `group_scores_f16` / `group_weighted_f16` call per layer and group (the runtime's layout);
//! - `per head`: each head is its own (L, T, D) block, attended by one call per head
//!   (Hg = 1): the layout before, whose P·D runs are short memory streams.
//!
//! Prints the median of 9 passes in GB/s of keys and values read, and the ratio.

use emberlm_runtime::kernels::Kernels;
use half::f16;
use std::hint::black_box;
use std::time::Instant;

const LAYERS: usize = 12;
const HEADS: usize = 12;
const HG: usize = 4;
const D: usize = 64;
const T: usize = 1024;
const COPIES: usize = 4;
const PASSES: usize = 10; // the first is a warm-up
const POSITIONS: [usize; 6] = [64, 128, 192, 256, 512, 1024];

/// One copy of the cache: keys then values, each `HEADS / HG` blocks of (L, T, HG, D), which
/// the per-head layout reads as HG blocks of (L, T, D) each.
struct Cache {
    k: Vec<f16>,
    v: Vec<f16>,
}

/// Attention of `heads` heads at `p` positions with keys and values from `at` of `c`, as the
/// runtime's `attend_group`; `scratch` holds the scores (≥ Hg·P) and the output (≥ Hg·D).
fn attend(
    k: &Kernels,
    c: &Cache,
    at: usize,
    (heads, p): (usize, usize),
    q: &[f32],
    scratch: &mut (Vec<f32>, Vec<f32>),
) {
    let len = p * heads * D;
    let (q, s, out) = (
        &q[..heads * D],
        &mut scratch.0[..heads * p],
        &mut scratch.1[..heads * D],
    );
    k.group_scores_f16(&c.k[at..at + len], q, s, heads);
    for sj in s.chunks_exact_mut(p) {
        sj.iter_mut().for_each(|x| *x *= 0.125);
        k.softmax(sj);
    }
    k.group_weighted_f16(s, &c.v[at..at + len], out, heads);
    black_box(out);
}

fn main() {
    let k = Kernels::detect();
    println!("kernels: {}", k.name());
    let block = LAYERS * T * HG * D; // one group's (L, T, HG, D) = HG heads' (L, T, D)
    let caches: Vec<Cache> = (0..COPIES)
        .map(|c| {
            let fill = |s: usize| -> Vec<f16> {
                (0..HEADS / HG * block)
                    .map(|i| f16::from_f32((((i * 7 + s) % 29) as f32 - 14.0) * 0.01))
                    .collect()
            };
            Cache {
                k: fill(c),
                v: fill(c + 100),
            }
        })
        .collect();
    let q: Vec<f32> = (0..HG * D).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut scratch = (vec![0f32; HG * T], vec![0f32; HG * D]);
    println!("\npositions, grouped GB/s, per head GB/s, ratio (keys and values read, cold)");
    let mut copy = 0;
    for p in POSITIONS {
        let bytes = (2 * LAYERS * HEADS * p * D * 2) as f64;
        let (mut grouped, mut per_head) = (Vec::new(), Vec::new());
        for pass in 0..PASSES {
            for layout in 0..2 {
                copy = (copy + 1) % COPIES;
                let c = &caches[copy];
                let t0 = Instant::now();
                for l in 0..LAYERS {
                    for g in 0..HEADS / HG {
                        if layout == 0 {
                            let at = g * block + l * T * HG * D;
                            attend(&k, c, at, (HG, p), &q, &mut scratch);
                        } else {
                            for h in 0..HG {
                                let at = g * block + h * LAYERS * T * D + l * T * D;
                                attend(&k, c, at, (1, p), &q, &mut scratch);
                            }
                        }
                    }
                }
                let gbs = bytes / t0.elapsed().as_secs_f64() / 1e9;
                if pass > 0 {
                    [&mut grouped, &mut per_head][layout].push(gbs);
                }
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (a, b) = (median(&mut grouped), median(&mut per_head));
        println!("{p:>6} {a:>8.1} {b:>8.1} {:>6.2}", a / b);
    }
}
