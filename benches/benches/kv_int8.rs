//! Decode attention over an int8 KV cache against an f16 one: the evidence for `--kv int8`'s
//! speed (its memory is 1.125 bytes per element against 2).
//!
//! Run: `cargo bench -p emberlm-benches --bench kv_int8`. One thread, GPT-2 124M's cache shape
//! (12 layers, 12 heads of D = 64 in groups of 4, the runtime's layout), at P positions. Each
//! pass attends one token in every layer and group, as a decode step does, on the next of 4
//! copies of the cache (beyond the last-level cache): scores, softmax and weighted sum, and for
//! int8 the query's quantization, as `GroupKv::attend_scaled` does. The f16 and int8 passes
//! alternate; medians of 9 passes in microseconds per token, and their ratio.

use emberlm_runtime::kernels::{Kernels, Q8_BLOCK};
use half::f16;
use std::hint::black_box;
use std::time::Instant;

const LAYERS: usize = 12;
const GROUPS: usize = 3;
const HG: usize = 4;
const D: usize = 64;
const T: usize = 1024;
const COPIES: usize = 4;
const PASSES: usize = 10; // the first is a warm-up
const POSITIONS: [usize; 5] = [64, 256, 512, 768, 1024];

/// One copy of the cache, each group (L, T, HG, D), keys then values: f16, and int8 quants with
/// their block scales (quantized from the same values).
struct Cache {
    k16: Vec<f16>,
    v16: Vec<f16>,
    k8: (Vec<i8>, Vec<f32>),
    v8: (Vec<i8>, Vec<f32>),
}

fn main() {
    let k = Kernels::detect();
    println!("kernels: {}", k.name());
    let block = LAYERS * T * HG * D;
    let nbd = D.div_ceil(Q8_BLOCK);
    let quantize = |x: &[f32]| {
        let mut q = vec![0i8; x.len()];
        let mut d = vec![0f32; x.len() / D * nbd];
        k.quantize_q8_rows(x, D, &mut q, &mut d);
        (q, d)
    };
    let caches: Vec<Cache> = (0..COPIES)
        .map(|c| {
            let fill = |s: usize| -> Vec<f32> {
                (0..GROUPS * block)
                    .map(|i| (((i * 7 + s) % 29) as f32 - 14.0) * 0.01)
                    .collect()
            };
            let (k, v) = (fill(c), fill(c + 100));
            Cache {
                k16: k.iter().map(|&x| f16::from_f32(x)).collect(),
                v16: v.iter().map(|&x| f16::from_f32(x)).collect(),
                k8: quantize(&k),
                v8: quantize(&v),
            }
        })
        .collect();
    let q: Vec<f32> = (0..HG * D).map(|i| (i as f32 * 0.37).sin()).collect();
    let (mut s, mut out) = (vec![0f32; HG * T], vec![0f32; HG * D]);
    let (mut qq, mut qd) = (vec![0i8; HG * D], vec![0f32; HG * nbd]);
    println!("\npositions, f16 µs/token, int8 µs/token, f16/int8 (one thread, cold)");
    let mut copy = 0;
    for p in POSITIONS {
        let mut times = [Vec::new(), Vec::new()];
        for pass in 0..PASSES {
            for (kind, times) in times.iter_mut().enumerate() {
                copy = (copy + 1) % COPIES;
                let c = &caches[copy];
                let t0 = Instant::now();
                for l in 0..LAYERS {
                    for g in 0..GROUPS {
                        let at = g * block + l * T * HG * D;
                        let (len, s) = (p * HG * D, &mut s[..HG * p]);
                        let sc = at / D * nbd..(at + len) / D * nbd;
                        if kind == 0 {
                            k.group_scores_f16(&c.k16[at..at + len], &q, s, HG);
                        } else {
                            k.quantize_q8_rows(&q, D, &mut qq, &mut qd);
                            let kv = (&c.k8.0[at..at + len], &c.k8.1[sc.clone()]);
                            k.group_scores_q8(kv, (&qq, &qd), s, HG);
                        }
                        for sj in s.chunks_exact_mut(p) {
                            sj.iter_mut().for_each(|x| *x *= 0.125);
                            k.softmax(sj);
                        }
                        if kind == 0 {
                            k.group_weighted_f16(s, &c.v16[at..at + len], &mut out, HG);
                        } else {
                            let v = (&c.v8.0[at..at + len], &c.v8.1[sc]);
                            k.group_weighted_q8(s, v, &mut out, HG);
                        }
                        black_box(&out);
                    }
                }
                if pass > 0 {
                    times.push(t0.elapsed().as_secs_f64() * 1e6);
                }
            }
        }
        let [a, b] = times.map(|mut v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        });
        println!("{p:>6} {a:>10.1} {b:>10.1} {:>8.2}", a / b);
    }
}
