//! How fast the int8 decode kernel reads cold weights when a product is cut into calls of R rows:
//! the evidence behind the decode crew's chunk floor (`MIN_CHUNK_BYTES` in
//! `runtime/src/session/crew.rs`). A call reads its rows as four memory streams (one per quarter),
//! and short streams read slowly, so a chunk must not be too small.
//!
//! Run: `cargo bench -p emberlm-benches --bench decode_chunks`. One thread; for 768 and 3072
//! columns, a 1.77 MB Q8 matrix (2304 × 768 or 576 × 3072) is multiplied in calls of R rows,
//! each pass on the next of 48 copies (85 MB, beyond the last-level cache, in huge pages as a
//! model file's map). Prints the median of
//! 14 passes in GB/s of weights read (quants + scales), and its ratio to one call for the whole
//! matrix, measured in the same passes.

use emberlm_benches::Copies;
use emberlm_runtime::kernels::{Kernels, Q8_BLOCK, Q8Matrix};
use half::f16;
use std::hint::black_box;
use std::time::Instant;

const COPIES: usize = 48;
const PASSES: usize = 15; // the first is a warm-up
const CALLS_PER_PASS: usize = 20;
const ROWS_PER_CALL: [usize; 9] = [16, 32, 64, 96, 128, 192, 288, 576, usize::MAX];

fn main() {
    let k = Kernels::detect();
    println!("kernels: {}", k.name());
    for c in [768usize, 3072] {
        let r = 2304 * 768 / c;
        let nb = c.div_ceil(Q8_BLOCK);
        let q: Vec<i8> = (0..r * c).map(|i| ((i * 7) % 251) as i8).collect();
        let quants = Copies::new(&q, COPIES);
        let scales = Copies::new(&vec![f16::from_f32(0.01); r * nb], COPIES);
        let x: Vec<f32> = (0..c).map(|i| (i as f32 * 0.37).sin()).collect();
        let (mut xq, mut xd) = (vec![0i8; c], vec![0f32; nb]);
        k.quantize_q8(&x, &mut xq, &mut xd);
        let mut y = vec![0f32; r];
        let bytes = (r * c + r * nb * 2) as f64;
        let mut gbs = vec![Vec::new(); ROWS_PER_CALL.len()];
        let mut copy = 0;
        for pass in 0..PASSES {
            for (i, &n) in ROWS_PER_CALL.iter().enumerate() {
                let n = n.min(r);
                let t = Instant::now();
                for _ in 0..CALLS_PER_PASS {
                    copy = (copy + 1) % COPIES;
                    let w = Q8Matrix::new(quants.get(copy), scales.get(copy), r, c)
                        .expect("the copy has the matrix's shape");
                    for r0 in (0..r).step_by(n) {
                        let r1 = (r0 + n).min(r);
                        k.matvec_q8q8_rows(w, &xq, &xd, &mut y[r0..r1], r0);
                    }
                    black_box(&y);
                }
                if pass > 0 {
                    let s = t.elapsed().as_secs_f64();
                    gbs[i].push(bytes * CALLS_PER_PASS as f64 / s / 1e9);
                }
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let whole = median(&mut gbs[ROWS_PER_CALL.len() - 1].clone());
        println!("\n{c} columns ({r} rows): rows per call, KiB per call, GB/s, ratio to whole");
        for (i, &n) in ROWS_PER_CALL.iter().enumerate() {
            let n = n.min(r);
            let g = median(&mut gbs[i]);
            let kib = n * (c + nb * 2) / 1024;
            println!("{n:>6} {kib:>6} {g:>6.1} {:>5.2}", g / whole);
        }
    }
}
