//! Memory read bandwidth of this machine, measured with the fastest summing loop available, so that
//! `ember bench` can report decode speed as a fraction of what the memory can deliver.

#![forbid(unsafe_code)]

use super::Kernels;
use std::hint::black_box;
use std::time::Instant;

/// Timed passes; the best one is reported (the first also faults the pages in).
const PASSES: usize = 5;

/// Reads a freshly allocated buffer of `bytes` bytes (use several times the last-level cache, e.g.
/// 1 GiB) with `threads` threads (1 without the `parallel` feature), each summing one contiguous
/// share with [`Kernels::detect`]'s summing loop, and returns the best pass in GB/s (1e9 bytes/s).
/// Returns 0.0 when `bytes < 4`. Allocates the buffer (and a thread pool): not for a hot path.
pub fn read_bandwidth(bytes: usize, threads: usize) -> f64 {
    let len = bytes / 4;
    if len == 0 {
        return 0.0;
    }
    // Distinct non-zero values, so no page is shared with the zero page.
    let buf: Vec<f32> = (0..len).map(|i| (i % 251) as f32).collect();
    let k = Kernels::detect();
    let mut best = f64::INFINITY;
    for _ in 0..PASSES {
        let t = Instant::now();
        black_box(sum_threaded(&k, black_box(&buf), threads));
        best = best.min(t.elapsed().as_secs_f64());
    }
    (len * 4) as f64 / best / 1e9
}

#[cfg(feature = "parallel")]
fn sum_threaded(k: &Kernels, buf: &[f32], threads: usize) -> f32 {
    use rayon::prelude::*;
    let threads = threads.max(1);
    if threads == 1 {
        return k.sum_f32(buf);
    }
    let chunk = buf.len().div_ceil(threads);
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(|| buf.par_chunks(chunk).map(|c| k.sum_f32(c)).sum()),
        // No pool (threads could not be spawned): measure one thread rather than fail.
        Err(_) => k.sum_f32(buf),
    }
}

#[cfg(not(feature = "parallel"))]
fn sum_threaded(k: &Kernels, buf: &[f32], _threads: usize) -> f32 {
    k.sum_f32(buf)
}
