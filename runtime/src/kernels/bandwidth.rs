//! Memory read bandwidth of this machine, measured with the fastest summing loop available, so that
//! `ember bench` can report decode speed as a fraction of what the memory can deliver.

#![forbid(unsafe_code)]

use super::Kernels;
use std::hint::black_box;
use std::time::Instant;

/// Passes over the whole buffer.
const PASSES: usize = 5;

/// Each pass is timed in chunks of this many bytes: far larger than any cache, yet short enough
/// (a few milliseconds) to run between preemptions on a shared host. Every chunk is cold: it was
/// last read a whole buffer ago.
const CHUNK_BYTES: usize = 64 << 20;

/// Reads a freshly allocated buffer of `bytes` bytes (use several times the last-level cache, e.g.
/// 1 GiB) with `threads` threads (1 without the `parallel` feature), each summing one contiguous
/// share of every chunk with [`Kernels::detect`]'s summing loop, and returns the best rate seen over
/// 64 MiB chunks in [`PASSES`] passes, in GB/s (1e9 bytes/s). Returns 0.0 when `bytes < 4`.
/// Allocates the buffer (and a thread pool): not for a hot path.
pub fn read_bandwidth(bytes: usize, threads: usize) -> f64 {
    let len = bytes / 4;
    if len == 0 {
        return 0.0;
    }
    // Distinct non-zero values, so every page is really backed (and faulted in here, untimed).
    let buf: Vec<f32> = (0..len).map(|i| (i % 251) as f32).collect();
    let k = Kernels::detect();
    let summer = Summer::new(k, threads);
    let mut best = 0f64;
    for _ in 0..PASSES {
        for chunk in buf.chunks(CHUNK_BYTES / 4) {
            let t = Instant::now();
            black_box(summer.sum(black_box(chunk)));
            let secs = t.elapsed().as_secs_f64();
            if secs > 0.0 {
                best = best.max((chunk.len() * 4) as f64 / secs);
            }
        }
    }
    best / 1e9
}

/// Sums a slice on one thread or split over a dedicated pool.
struct Summer {
    k: Kernels,
    #[cfg(feature = "parallel")]
    pool: Option<rayon::ThreadPool>,
}

impl Summer {
    #[cfg(feature = "parallel")]
    fn new(k: Kernels, threads: usize) -> Self {
        // No pool (threads could not be spawned): measure one thread rather than fail.
        let pool = (threads > 1)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .ok()
            })
            .flatten();
        Summer { k, pool }
    }

    #[cfg(not(feature = "parallel"))]
    fn new(k: Kernels, _threads: usize) -> Self {
        Summer { k }
    }

    fn sum(&self, x: &[f32]) -> f32 {
        #[cfg(feature = "parallel")]
        if let Some(pool) = &self.pool {
            use rayon::prelude::*;
            let share = x.len().div_ceil(pool.current_num_threads());
            return pool.install(|| x.par_chunks(share).map(|c| self.k.sum_f32(c)).sum());
        }
        self.k.sum_f32(x)
    }
}
