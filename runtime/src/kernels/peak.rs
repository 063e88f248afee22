//! The machine's f32 multiply-add peak, measured with register-only loops, so that `ember bench`
//! can report prefill (bound by arithmetic, not memory) as a fraction of what the cores can do.

#![forbid(unsafe_code)]

use super::{Isa, Kernels};
use std::hint::black_box;
use std::time::Instant;

/// Iterations of one timed call: about 4 ms on a 3 GHz AVX2 core.
const ITERS: usize = 1 << 21;
/// Timed calls; the best one counts (a quiet moment on a shared host, where a neighbour may hold
/// one of the cores for tens of milliseconds).
const REPEATS: usize = 10;

/// The best rate of [`REPEATS`] (10) runs of `threads` threads (1 without the `parallel` feature) each
/// running [`Kernels::detect`]'s FMA loop (independent multiply-add chains on registers: no memory
/// traffic; 512-bit vectors with the AVX-512 set, whose prefill microkernel uses them), in
/// GFLOP/s (a multiply-add counts 2). Spawns threads: not for a hot path.
pub fn fma_peak_gflops(threads: usize) -> f64 {
    let k = Kernels::detect();
    let threads = if cfg!(feature = "parallel") {
        threads.max(1)
    } else {
        1
    };
    let mut best = 0f64;
    for _ in 0..REPEATS {
        let t = Instant::now();
        let flops: u64 = std::thread::scope(|s| {
            let others: Vec<_> = (1..threads)
                .map(|_| s.spawn(move || fma_loop(&k, black_box(ITERS))))
                .collect();
            let mine = fma_loop(&k, black_box(ITERS));
            others
                .into_iter()
                .map(|h| h.join().map_or(0, |r| r.1))
                .sum::<u64>()
                + mine.1
        });
        let secs = t.elapsed().as_secs_f64();
        if secs > 0.0 {
            best = best.max(flops as f64 / secs);
        }
    }
    best / 1e9
}

/// Runs the multiply-add loop for `iters` iterations: returns a sum of its accumulators (so the
/// work cannot be optimized away) and the floating-point operations done.
pub(super) fn fma_loop(k: &Kernels, iters: usize) -> (f32, u64) {
    let (sum, flops) = match k.isa {
        #[cfg(all(target_arch = "x86_64", ember_vnni))]
        Isa::Avx2(_) if k.wide.is_some() => {
            super::panel_avx512::fma_loop(k.wide.expect("checked"), iters)
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(t) => super::x86_64::fma_loop(t, iters),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon(t) => super::aarch64::fma_loop(t, iters),
        Isa::Reference => {
            let mut acc = [1.0f32; 16];
            for _ in 0..iters {
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = *a * 0.999_999 + 1e-7 * i as f32;
                }
            }
            (acc.iter().sum(), (iters * 16 * 2) as u64)
        }
    };
    (black_box(sum), flops)
}
