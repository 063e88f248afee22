//! The decode crew: G threads that stay together for a token, the jobs the leader opens for
//! them, and the seqlock through which they claim the jobs' chunks (see the parent module's docs).

use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// A waiting thread spins this many times (with a pause hint) before it starts yielding its core
/// between checks: the job it waits for is usually a sublayer's short product, but on a shared
/// host the thread being waited for may need the core.
const SPINS_BEFORE_YIELD: u32 = 2000;

/// Weight bytes per work chunk at most (chunks also stay under [`MAX_CHUNK_ROWS`] rows and
/// aim at [`CHUNKS_PER_MATRIX`] per matrix, so two threads balance).
const CHUNK_BYTES: usize = 1 << 20;
/// Weight bytes per work chunk at least. The kernels read a chunk as four streams (one per
/// quarter of its rows), and short streams read slowly. Evidence: README § Runtime kernel
/// decisions ("Decode chunks hold at least 144 KiB"), `cargo bench -p emberlm-benches --bench
/// decode_chunks`.
const MIN_CHUNK_BYTES: usize = 144 << 10;
/// Rows per chunk at most (the size of a worker's output scratch).
pub(super) const MAX_CHUNK_ROWS: usize = 8192;
/// Big chunks a matrix is cut into at least (when it has the rows and each chunk keeps
/// [`MIN_CHUNK_BYTES`]).
const CHUNKS_PER_MATRIX: usize = 8;
/// Chunks start at multiples of this many rows (the kernels work on groups of 4 rows).
const CHUNK_ALIGN: usize = 16;
/// A product's last rows, this many big chunks' worth, are cut into small chunks ([`Chunks`]).
const TAIL_BIG_CHUNKS: usize = 2;

/// `state`'s epoch once the token is finished: workers return.
const FINISHED: u32 = u32::MAX;

/// The decode crew's shared state (see the module docs). `state` packs an epoch (high 32 bits)
/// and the next unclaimed chunk (low 32 bits). An odd epoch means the leader is writing the next
/// job; an even one that `job`, `input` and `chunks` describe the open job. Claims are a
/// compare-and-swap on `state`, so a worker whose copy of the input raced with the leader's
/// next write can never claim a chunk with it (a seqlock).
#[derive(Debug)]
pub(super) struct Crew {
    pub(super) g: usize,
    state: AtomicU64,
    job: AtomicU32,
    arg: AtomicU32, // the position, for attention jobs
    chunks: AtomicU32,
    done: AtomicU32,
    /// Per query/key/value chunk of the open attention job: 1 once its rows are in `output`.
    ready: Vec<AtomicU32>,
    /// Set when a worker unwinds: the leader then panics instead of waiting for its chunk.
    poisoned: std::sync::atomic::AtomicBool,
    input: Vec<AtomicU32>,  // (4C) f32 bits: the job's x
    output: Vec<AtomicU32>, // (max(V, 4C)) f32 bits: the job's y
}

fn pack(epoch: u32, next: u32) -> u64 {
    u64::from(epoch) << 32 | u64::from(next)
}

fn unpack(s: u64) -> (u32, u32) {
    ((s >> 32) as u32, s as u32)
}

/// Rows per (big) chunk for a (rows, cols) matrix of `elem` bytes per weight.
fn chunk_rows(rows: usize, cols: usize, elem_bytes: usize) -> usize {
    let by_bytes = CHUNK_BYTES / (cols * elem_bytes).max(1);
    let by_count = rows.div_ceil(CHUNKS_PER_MATRIX);
    by_bytes
        .min(by_count)
        .min(MAX_CHUNK_ROWS)
        .next_multiple_of(CHUNK_ALIGN)
        .clamp(CHUNK_ALIGN, MAX_CHUNK_ROWS)
}

/// Rows per chunk at least, so a chunk holds [`MIN_CHUNK_BYTES`] of weights.
fn min_chunk_rows(cols: usize, elem_bytes: usize) -> usize {
    MIN_CHUNK_BYTES
        .div_ceil((cols * elem_bytes).max(1))
        .next_multiple_of(CHUNK_ALIGN)
}

/// How a product's rows are cut into chunks: `big` rows each ([`chunk_rows`]) up to `split`,
/// then `small` rows each (a quarter of `big`) for the last [`TAIL_BIG_CHUNKS`] big chunks' worth,
/// so whichever member finishes first waits at most one small chunk for the others. No chunk is
/// under [`MIN_CHUNK_BYTES`] (but a product's last). The cut depends only on the matrix, never
/// on the crew.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Chunks {
    rows: usize,
    big: usize,
    small: usize,
    split: usize,
}

impl Chunks {
    pub(super) fn new(rows: usize, cols: usize, elem_bytes: usize) -> Chunks {
        let min = min_chunk_rows(cols, elem_bytes);
        let big = chunk_rows(rows, cols, elem_bytes)
            .max(min)
            .min(MAX_CHUNK_ROWS);
        let small = (big / 4).next_multiple_of(CHUNK_ALIGN).max(min).min(big);
        let split = rows.saturating_sub(TAIL_BIG_CHUNKS * big) / big * big;
        Chunks {
            rows,
            big,
            small,
            split,
        }
    }

    pub(super) fn count(&self) -> usize {
        self.split / self.big + (self.rows - self.split).div_ceil(self.small)
    }

    /// Rows of chunk i (i < count).
    pub(super) fn range(&self, i: usize) -> Range<usize> {
        let n_big = self.split / self.big;
        let (start, len) = if i < n_big {
            (i * self.big, self.big)
        } else {
            (self.split + (i - n_big) * self.small, self.small)
        };
        start..(start + len).min(self.rows)
    }
}

/// Waits (spinning, then yielding) until `ready()`.
fn wait_until(mut ready: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while !ready() {
        if spins < SPINS_BEFORE_YIELD {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

impl Crew {
    pub(super) fn new(g: usize, in_len: usize, out_len: usize, groups: usize) -> Crew {
        let buf = |n: usize| {
            if g > 1 {
                (0..n).map(|_| AtomicU32::new(0)).collect()
            } else {
                Vec::new()
            }
        };
        Crew {
            g,
            state: AtomicU64::new(pack(0, u32::MAX)),
            job: AtomicU32::new(0),
            arg: AtomicU32::new(0),
            chunks: AtomicU32::new(0),
            done: AtomicU32::new(0),
            ready: buf(groups),
            poisoned: std::sync::atomic::AtomicBool::new(false),
            input: buf(in_len),
            output: buf(out_len),
        }
    }

    /// Claims the next of the `n` pieces of the job of epoch `epoch`; `None` once every piece is
    /// taken or a newer job has opened.
    pub(super) fn claim(&self, epoch: u32, n: u32) -> Option<u32> {
        loop {
            let s = self.state.load(Ordering::Relaxed);
            let (e, next) = unpack(s);
            if e != epoch || next >= n {
                return None;
            }
            if self
                .state
                .compare_exchange_weak(s, pack(e, next + 1), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Some(next);
            }
        }
    }

    /// Leader: opens a job (`code` and `arg` say which, to the workers) of `n` pieces on input
    /// `x`; `epoch` is the leader's job counter for this token. Returns the job's epoch.
    pub(super) fn open(&self, epoch: &mut u32, code: u32, arg: u32, n: u32, x: &[f32]) -> u32 {
        // Close the previous job (claims fail from here), then describe the next one.
        let writing = *epoch + 1;
        let open = *epoch + 2;
        *epoch = open;
        self.state.store(pack(writing, 0), Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        self.job.store(code, Ordering::Relaxed);
        self.arg.store(arg, Ordering::Relaxed);
        self.chunks.store(n, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        for r in &self.ready {
            r.store(0, Ordering::Relaxed);
        }
        for (a, v) in self.input.iter().zip(x) {
            a.store(v.to_bits(), Ordering::Relaxed);
        }
        self.state.store(pack(open, 0), Ordering::Release);
        open
    }

    /// Worker: waits for a job newer than `seen` and returns its (epoch, code, pieces), having
    /// set `seen` to it; `None` once the token is finished. The code and count may be torn (a
    /// newer job opened meanwhile): the caller checks them, and its claims then fail anyway.
    pub(super) fn next_job(&self, seen: &mut u32) -> Option<(u32, u32, u32)> {
        let mut s = 0;
        wait_until(|| {
            s = self.state.load(Ordering::Acquire);
            let (e, next) = unpack(s);
            e == FINISHED || (e % 2 == 0 && e != *seen && next != u32::MAX)
        });
        let (epoch, _) = unpack(s);
        if epoch == FINISHED {
            return None;
        }
        *seen = epoch;
        let code = self.job.load(Ordering::Acquire);
        let n = self.chunks.load(Ordering::Acquire);
        Some((epoch, code, n))
    }

    /// Worker: copies the open job's input into x.
    pub(super) fn load_input(&self, x: &mut [f32]) {
        for (v, a) in x.iter_mut().zip(&self.input) {
            *v = f32::from_bits(a.load(Ordering::Relaxed));
        }
        std::sync::atomic::fence(Ordering::Acquire);
    }

    /// The open job's argument (the position, for attention jobs).
    pub(super) fn arg(&self) -> u32 {
        self.arg.load(Ordering::Acquire)
    }

    /// Writes y into the job's output from element `at`.
    pub(super) fn put(&self, at: usize, y: &[f32]) {
        for (a, v) in self.output[at..at + y.len()].iter().zip(y) {
            a.store(v.to_bits(), Ordering::Relaxed);
        }
    }

    /// Reads the job's output from element `at` into y.
    pub(super) fn get(&self, at: usize, y: &mut [f32]) {
        for (v, a) in y.iter_mut().zip(&self.output[at..]) {
            *v = f32::from_bits(a.load(Ordering::Relaxed));
        }
    }

    /// One more piece of the open job is done (its output written).
    pub(super) fn mark_done(&self) {
        self.done.fetch_add(1, Ordering::Release);
    }

    /// Piece i of the open job, which later pieces wait for, is done.
    pub(super) fn mark_ready(&self, i: usize) {
        self.ready[i].store(1, Ordering::Release);
    }

    /// Waits until piece i of the open job is ready ([`Crew::mark_ready`]).
    pub(super) fn wait_ready(&self, i: usize) {
        wait_until(|| {
            self.check_poison();
            self.ready[i].load(Ordering::Acquire) == 1
        });
    }

    /// Panics if a worker unwound (a waiting member would otherwise wait forever).
    fn check_poison(&self) {
        assert!(
            !self.poisoned.load(Ordering::Relaxed),
            "a decode crew worker panicked"
        );
    }

    /// Leader: waits until `n` pieces of the open job are done.
    pub(super) fn wait_done(&self, n: u32) {
        wait_until(|| {
            self.check_poison();
            self.done.load(Ordering::Acquire) >= n
        });
    }

    /// Before a token: no job open.
    pub(super) fn reset(&self) {
        self.state.store(pack(0, u32::MAX), Ordering::Relaxed);
    }

    /// Ends the token: workers return.
    fn finish(&self) {
        if self.g > 1 {
            self.state.store(pack(FINISHED, 0), Ordering::Release);
        }
    }
}

/// Marks the crew poisoned if its worker unwinds.
pub(super) struct PoisonOnPanic<'c>(pub(super) &'c Crew);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poisoned.store(true, Ordering::Relaxed);
        }
    }
}

/// Finishes the token when dropped, even if the leader unwinds (workers would wait forever).
pub(super) struct FinishOnDrop<'c>(pub(super) &'c Crew);

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// Runs `a` and `b`, in parallel when the runtime has threads.
pub(super) fn fork(a: impl FnOnce() + Send, b: impl FnOnce() + Send) {
    #[cfg(feature = "parallel")]
    rayon::join(a, b);
    #[cfg(not(feature = "parallel"))]
    {
        a();
        b();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_row_once_and_end_small() {
        // GPT-2 124M's decode products (rows, cols, bytes per weight) and awkward small ones.
        let shapes = [
            (2304, 768, 1),
            (768, 768, 1),
            (3072, 768, 2),
            (768, 3072, 4),
            (50257, 768, 1),
            (211, 48, 4),
            (17, 5, 2),
            (16, 1, 1),
            (1, 1, 1),
        ];
        for (rows, cols, elem) in shapes {
            let ch = Chunks::new(rows, cols, elem);
            let mut next = 0;
            let mut sizes = Vec::new();
            for i in 0..ch.count() {
                let r = ch.range(i);
                assert_eq!(
                    r.start, next,
                    "{rows}x{cols}: chunk {i} starts at {}",
                    r.start
                );
                assert!(!r.is_empty() && r.len() <= MAX_CHUNK_ROWS);
                assert_eq!(
                    r.start % CHUNK_ALIGN,
                    0,
                    "{rows}x{cols}: chunk {i} unaligned"
                );
                sizes.push(r.len());
                next = r.end;
            }
            assert_eq!(next, rows, "{rows}x{cols}: chunks end at {next}");
            // Sizes never grow; every chunk but the last holds MIN_CHUNK_BYTES at least.
            assert!(
                sizes.windows(2).all(|w| w[1] <= w[0]),
                "{rows}x{cols}: {sizes:?}"
            );
            let min = min_chunk_rows(cols, elem).min(rows);
            let body = &sizes[..sizes.len() - 1];
            assert!(body.iter().all(|&n| n >= min), "{rows}x{cols}: {sizes:?}");
        }
        // 124M int8 (rows, cols) → (big, small, count): the tail is finer where chunks are
        // large enough.
        for ((rows, cols), want) in [
            ((768, 768), (192, 192, 4)),
            ((3072, 768), (384, 192, 10)),
            ((768, 3072), (96, 48, 10)),
            ((50257, 768), (1376, 352, 44)),
        ] {
            let ch = Chunks::new(rows, cols, 1);
            assert_eq!((ch.big, ch.small, ch.count()), want, "{rows}x{cols}");
        }
    }
}
