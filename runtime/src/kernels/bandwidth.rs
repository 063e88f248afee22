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
/// 64 MiB chunks in `PASSES` (5) passes, in GB/s (1e9 bytes/s). Returns 0.0 when `bytes < 4`.
/// Allocates the buffer (and a thread pool): not for a hot path. The best chunk is an optimistic
/// figure (a quiet moment, a boosted clock); [`read_bandwidth_stats`] also gives the median rate of
/// whole passes.
pub fn read_bandwidth(bytes: usize, threads: usize) -> f64 {
    read_bandwidth_stats(bytes, threads).best_chunk_gb_s
}

/// Two summaries of one probe run (see [`read_bandwidth_stats`]), in GB/s (1e9 bytes/s).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Bandwidth {
    /// The best rate over any 64 MiB chunk of any pass (what [`read_bandwidth`] returns).
    pub best_chunk_gb_s: f64,
    /// The median over the passes (5) of each whole pass's rate: a sustained figure,
    /// comparable with a plain summing loop over the whole buffer.
    pub median_pass_gb_s: f64,
}

/// The probe of [`read_bandwidth`], reporting the best chunk and the median whole pass.
/// Both are 0.0 when `bytes < 4`.
pub fn read_bandwidth_stats(bytes: usize, threads: usize) -> Bandwidth {
    let mut probe = Probe::new(bytes, threads);
    let mut passes = [Pass::default(); PASSES];
    for pass in passes.iter_mut() {
        *pass = probe.pass();
    }
    summarize(&passes)
}

/// Summarizes passes of one [`Probe`]: the best chunk of any pass and the median pass rate (the
/// mean of the two middle ones for an even count). All zeros for no passes.
pub fn summarize(passes: &[Pass]) -> Bandwidth {
    if passes.is_empty() {
        return Bandwidth::default();
    }
    let mut rates: Vec<f64> = passes.iter().map(|p| p.gb_s).collect();
    rates.sort_by(f64::total_cmp);
    let n = rates.len();
    let median = if n % 2 == 1 {
        rates[n / 2]
    } else {
        (rates[n / 2 - 1] + rates[n / 2]) / 2.0
    };
    Bandwidth {
        best_chunk_gb_s: passes.iter().map(|p| p.best_chunk_gb_s).fold(0.0, f64::max),
        median_pass_gb_s: median,
    }
}

/// One timed pass of a [`Probe`] over its whole buffer, in GB/s (1e9 bytes/s).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pass {
    /// The whole buffer's bytes over the whole pass's time.
    pub gb_s: f64,
    /// The best rate over the pass's 64 MiB chunks.
    pub best_chunk_gb_s: f64,
}

/// A read-bandwidth probe that can run single passes, so that a benchmark can interleave them
/// with its own work (both then see the same neighbours on a shared host). Holds the buffer (and
/// a thread pool): create it outside the measured region.
#[derive(Debug)]
pub struct Probe {
    buf: ProbeBuffer,
    summer: Summer,
}

/// The probe's memory: with the `mmap` feature, a mapping of its own advised to use huge pages
/// (as `Model::open`'s map of a model file is), so the probe reads at the machine's
/// limit and not at the limit of 4 KiB pages' TLB misses; a heap `Vec` otherwise.
#[derive(Debug)]
enum ProbeBuffer {
    Heap(Vec<f32>),
    #[cfg(feature = "mmap")]
    Mapped(emberlm_formats::ember::HugeBuffer),
}

impl ProbeBuffer {
    /// `bytes / 4` floats with distinct non-zero values, so every page is really backed (and
    /// faulted in here, untimed).
    fn new(bytes: usize) -> ProbeBuffer {
        let fill = |x: &mut [f32]| {
            x.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = (i % 251) as f32)
        };
        #[cfg(feature = "mmap")]
        if let Ok(mut map) = emberlm_formats::ember::HugeBuffer::zeroed(bytes / 4 * 4) {
            // A fresh anonymous map is page-aligned, so this cast cannot fail in practice.
            if let Ok(x) = bytemuck::try_cast_slice_mut(&mut map[..]) {
                fill(x);
                return ProbeBuffer::Mapped(map);
            }
        }
        let mut v = vec![0f32; bytes / 4];
        fill(&mut v);
        ProbeBuffer::Heap(v)
    }

    fn floats(&self) -> &[f32] {
        match self {
            ProbeBuffer::Heap(v) => v,
            #[cfg(feature = "mmap")]
            ProbeBuffer::Mapped(m) => bytemuck::try_cast_slice(&m[..]).unwrap_or_default(),
        }
    }
}

impl Probe {
    /// Allocates and fills a buffer of `bytes` bytes (use several times the last-level cache,
    /// e.g. 1 GiB) that passes read with `threads` threads (1 without the `parallel` feature),
    /// each summing one contiguous share of every chunk with [`Kernels::detect`]'s summing loop.
    pub fn new(bytes: usize, threads: usize) -> Probe {
        Probe {
            buf: ProbeBuffer::new(bytes),
            summer: Summer::new(Kernels::detect(), threads),
        }
    }

    /// The probe's buffer (to ask how the OS maps it, e.g. with huge pages).
    pub fn bytes(&self) -> &[u8] {
        bytemuck::cast_slice(self.buf.floats())
    }

    /// Reads the whole buffer once, timing each 64 MiB chunk. Every chunk is cold: it was last
    /// read a whole buffer ago. All zeros for a buffer under 4 bytes.
    pub fn pass(&mut self) -> Pass {
        let mut total = 0f64;
        let mut best = 0f64;
        let buf = self.buf.floats();
        for chunk in buf.chunks(CHUNK_BYTES / 4) {
            let t = Instant::now();
            black_box(self.summer.sum(black_box(chunk)));
            let secs = t.elapsed().as_secs_f64();
            total += secs;
            if secs > 0.0 {
                best = best.max((chunk.len() * 4) as f64 / secs);
            }
        }
        let gb_s = if total > 0.0 {
            (buf.len() * 4) as f64 / total / 1e9
        } else {
            0.0
        };
        Pass {
            gb_s,
            best_chunk_gb_s: best / 1e9,
        }
    }
}

/// Sums a slice on one thread or split over a dedicated pool.
#[derive(Debug)]
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
