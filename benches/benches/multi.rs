//! The batched int8 × int8 decode kernel ([`Kernels::matvec_multi_rows`]) against the
//! single-vector one, on one thread: what B vectors cost in units of one single-vector pass over
//! the same weights. That ratio decides how far batched decode can go: B streams run at most
//! B / ratio times one stream's speed.
//!
//! Run: `cargo bench -p emberlm-benches --bench multi` (`-- --b 2,8` to choose B, `-- --rounds N`
//! for more alternating rounds). Shapes: GPT-2 124M's matrices (qkv, attention projection, MLP
//! up and down, the head); "gpt2 step" weighs them as one decode step does (12 layers and the
//! head). "cold": each call reads the next of several copies spanning 128 MiB (> the last-level
//! cache), as decode streams weights from memory; "hot": one copy, in cache (the compute
//! ceiling). Calls of one shape alternate between the kernels, round after round; the medians
//! are reported.

use std::hint::black_box;
use std::time::Instant;

use emberlm_benches::{Copies, Lcg};
use emberlm_runtime::kernels::{Kernels, Mat, Q8_BLOCK, Q8Matrix, Vectors, multi_scratch_len};
use half::f16;

/// Copies of a matrix span at least this many bytes when cold.
const COLD_BYTES: usize = 128 << 20;

/// (name, R, C, matrices of this shape in one GPT-2 124M decode step).
const SHAPES: [(&str, usize, usize, usize); 5] = [
    ("qkv 768x2304", 2304, 768, 12),
    ("proj 768x768", 768, 768, 12),
    ("fc 768x3072", 3072, 768, 12),
    ("proj2 3072x768", 768, 3072, 12),
    ("head 768x50257", 50257, 768, 1),
];

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn arg<T: std::str::FromStr>(name: &str) -> Option<T> {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1))
        .and_then(|s| s.parse().ok())
}

fn main() {
    let bs: Vec<usize> = arg::<String>("--b")
        .unwrap_or_else(|| "2,4,8,16".into())
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let rounds: usize = arg("--rounds").unwrap_or(5);
    let k = Kernels::detect();
    let bmax = bs.iter().copied().max().unwrap_or(1);
    let mut rng = Lcg(7);
    println!(
        "kernels {}, one thread; seconds per call are medians of {rounds} alternating rounds",
        k.name()
    );
    println!(
        "{:<16} {:>5} {:>4} {:>10} {:>10} {:>9} {:>9}",
        "shape", "", "B", "µs/call", "GMAC/s", "x 1 pass", "B/ratio"
    );
    // Per temperature, B (0: single) → Σ over shapes of count · seconds.
    let mut step = vec![vec![0f64; bs.len() + 1]; 2];
    for &(name, r, c, count) in &SHAPES {
        let nb = c.div_ceil(Q8_BLOCK);
        let q: Vec<i8> = (0..r * c).map(|_| (rng.f() * 127.0) as i8).collect();
        let d: Vec<f16> = (0..r * nb)
            .map(|_| f16::from_f32(1e-3 + rng.f().abs() * 1e-3))
            .collect();
        let x: Vec<f32> = (0..bmax * c).map(|_| rng.f()).collect();
        let mut xq = vec![0i8; bmax * c];
        let mut xd = vec![0f32; bmax * nb];
        for v in 0..bmax {
            k.quantize_q8(
                &x[v * c..(v + 1) * c],
                &mut xq[v * c..(v + 1) * c],
                &mut xd[v * nb..(v + 1) * nb],
            );
        }
        let mut y = vec![0f32; bmax * r];
        let mut scratch = vec![0u8; multi_scratch_len(bmax, c)];
        for (ti, cold) in [true, false].into_iter().enumerate() {
            let bytes = r * c + 2 * r * nb;
            let copies = if cold { COLD_BYTES.div_ceil(bytes) } else { 1 };
            let (qs, ds) = (Copies::new(&q, copies), Copies::new(&d, copies));
            let calls = (copies * 2).clamp(8, 64);
            let mut times = vec![Vec::new(); bs.len() + 1];
            let mut i = 0;
            for _ in 0..rounds {
                for (bi, t) in times.iter_mut().enumerate() {
                    let b = if bi == 0 { 1 } else { bs[bi - 1] };
                    let start = Instant::now();
                    for _ in 0..calls {
                        let w = Q8Matrix::new(qs.get(i), ds.get(i), r, c).unwrap();
                        i += 1;
                        if bi == 0 {
                            k.matvec_q8q8_rows(w, &xq[..c], &xd[..nb], &mut y[..r], 0);
                        } else {
                            let v = Vectors {
                                b,
                                c,
                                x: &x[..b * c],
                                q: Some((&xq[..b * c], &xd[..b * nb])),
                            };
                            k.matvec_multi_rows(Mat::Q8(w), v, &mut y[..b * r], 0, &mut scratch);
                        }
                        black_box(&mut y);
                    }
                    t.push(start.elapsed().as_secs_f64() / calls as f64);
                }
            }
            let single = median(&mut times[0]);
            step[ti][0] += count as f64 * single;
            let temp = if cold { "cold" } else { "hot" };
            println!(
                "{name:<16} {temp:>5} {:>4} {:>10.1} {:>10.1} {:>9} {:>9}",
                1,
                single * 1e6,
                (r * c) as f64 / single / 1e9,
                "1.00",
                "1.00"
            );
            for (bi, &b) in bs.iter().enumerate() {
                let s = median(&mut times[bi + 1]);
                step[ti][bi + 1] += count as f64 * s;
                println!(
                    "{name:<16} {temp:>5} {b:>4} {:>10.1} {:>10.1} {:>9.2} {:>9.2}",
                    s * 1e6,
                    (b * r * c) as f64 / s / 1e9,
                    s / single,
                    b as f64 * single / s
                );
            }
        }
    }
    for (ti, temp) in ["cold", "hot"].into_iter().enumerate() {
        for (bi, &b) in bs.iter().enumerate() {
            let ratio = step[ti][bi + 1] / step[ti][0];
            println!(
                "gpt2 step {temp:>5}: B = {b:>2} costs {ratio:.2} single passes ({:.2} ms against {:.2} ms), at most {:.2}x one stream",
                step[ti][bi + 1] * 1e3,
                step[ti][0] * 1e3,
                b as f64 / ratio
            );
        }
    }
}
