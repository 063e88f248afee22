//! The decode crew: G threads that stay together for a token, the jobs the leader opens for
//! them, and the seqlock through which they claim the jobs' chunks (see the parent module's docs).

use super::decode::{AttnJob, Input, mat_rows};
use super::kv::KvShared;
use crate::kernels::{Epilogue, Kernels};
use crate::model::{Mat, Model};
use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// A waiting thread spins this many times (with a pause hint) before it starts yielding its core
/// between checks: a sublayer takes tens of microseconds, and on a shared host the thread being
/// waited for may need the core.
pub(super) const SPINS_BEFORE_YIELD: u32 = 2000;

/// Weight bytes per work chunk at most (chunks also stay under [`MAX_CHUNK_ROWS`] rows and
/// aim at [`CHUNKS_PER_MATRIX`] per matrix, so two threads balance).
pub(super) const CHUNK_BYTES: usize = 1 << 20;
/// Weight bytes per work chunk at least. The kernels read a chunk as four streams (one per
/// quarter of its rows), and short streams read slowly. Evidence: README § Runtime kernel
/// decisions ("Decode chunks hold at least 144 KiB"), `cargo bench -p emberlm-benches --bench
/// decode_chunks`.
pub(super) const MIN_CHUNK_BYTES: usize = 144 << 10;
/// Rows per chunk at most (the size of a worker's output scratch).
pub(super) const MAX_CHUNK_ROWS: usize = 8192;
/// Big chunks a matrix is cut into at least (when it has the rows and each chunk keeps
/// [`MIN_CHUNK_BYTES`]).
pub(super) const CHUNKS_PER_MATRIX: usize = 8;
/// Chunks start at multiples of this many rows (the kernels work on groups of 4 rows).
pub(super) const CHUNK_ALIGN: usize = 16;
/// A product's last rows, this many big chunks' worth, are cut into small chunks ([`Chunks`]).
pub(super) const TAIL_BIG_CHUNKS: usize = 2;

/// `state`'s epoch once the token is finished: workers return.
pub(super) const FINISHED: u32 = u32::MAX;

/// The decode crew's shared state (see the module docs). `state` packs an epoch (high 32 bits)
/// and the next unclaimed chunk (low 32 bits). An odd epoch means the leader is writing the next
/// job; an even one that `job`, `input` and `chunks` describe the open job. Claims are a
/// compare-and-swap on `state`, so a worker whose copy of the input raced with the leader's
/// next write can never claim a chunk with it (a seqlock).
#[derive(Debug)]
pub(super) struct Crew {
    pub(super) g: usize,
    pub(super) state: AtomicU64,
    pub(super) job: AtomicU32,
    pub(super) arg: AtomicU32, // the position, for attention jobs
    pub(super) chunks: AtomicU32,
    pub(super) done: AtomicU32,
    /// Per query/key/value chunk of the open attention job: 1 once its rows are in `output`.
    pub(super) ready: Vec<AtomicU32>,
    /// Set when a worker unwinds: the leader then panics instead of waiting for its chunk.
    pub(super) poisoned: std::sync::atomic::AtomicBool,
    pub(super) input: Vec<AtomicU32>,  // (4C) f32 bits: the job's x
    pub(super) output: Vec<AtomicU32>, // (max(V, 4C)) f32 bits: the job's y
}

/// Which matrix a job multiplies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Which {
    /// The query/key/value product and attention, one job ([`AttnJob`]).
    Qkv,
    Proj,
    Fc,
    Fcp,
    Head,
}

impl Which {
    const ALL: [Which; 5] = [Which::Qkv, Which::Proj, Which::Fc, Which::Fcp, Which::Head];

    pub(super) fn encode(self, layer: usize) -> u32 {
        (layer as u32) << 3 | Which::ALL.iter().position(|&w| w == self).unwrap_or(0) as u32
    }

    pub(super) fn decode(code: u32) -> (Which, usize) {
        (Which::ALL[(code & 7) as usize % 5], (code >> 3) as usize)
    }

    /// What follows the product, applied to each chunk's rows by the member that computed them
    /// (elementwise, so the bits do not depend on the chunking): the bias, and GELU after the
    /// MLP's first product.
    pub(super) fn epilogue<'m>(self, m: &'m Model<'_>, layer: usize) -> Epilogue<'m> {
        let (bias, gelu) = match self {
            Which::Qkv => (None, false), // per head group, in `AttnJob::project`
            Which::Head => (m.head().1, false),
            Which::Proj => (Some(m.layer(layer).proj_b), false),
            Which::Fc => (Some(m.layer(layer).fc_b), true),
            Which::Fcp => (Some(m.layer(layer).fcp_b), false),
        };
        Epilogue { bias, gelu }
    }

    pub(super) fn mat<'m>(self, m: &'m Model<'_>, layer: usize) -> Mat<'m> {
        match self {
            Which::Head => m.head().0,
            w => {
                let l = m.layer(layer);
                match w {
                    Which::Qkv => l.qkv_w,
                    Which::Proj => l.proj_w,
                    Which::Fc => l.fc_w,
                    _ => l.fcp_w,
                }
            }
        }
    }
}

pub(super) fn pack(epoch: u32, next: u32) -> u64 {
    u64::from(epoch) << 32 | u64::from(next)
}

pub(super) fn unpack(s: u64) -> (u32, u32) {
    ((s >> 32) as u32, s as u32)
}

/// Rows per (big) chunk for a (rows, cols) matrix of `elem` bytes per weight.
pub(super) fn chunk_rows(rows: usize, cols: usize, elem_bytes: usize) -> usize {
    let by_bytes = CHUNK_BYTES / (cols * elem_bytes).max(1);
    let by_count = rows.div_ceil(CHUNKS_PER_MATRIX);
    by_bytes
        .min(by_count)
        .min(MAX_CHUNK_ROWS)
        .next_multiple_of(CHUNK_ALIGN)
        .clamp(CHUNK_ALIGN, MAX_CHUNK_ROWS)
}

/// Rows per chunk at least, so a chunk holds [`MIN_CHUNK_BYTES`] of weights.
pub(super) fn min_chunk_rows(cols: usize, elem_bytes: usize) -> usize {
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
    pub(super) rows: usize,
    pub(super) big: usize,
    pub(super) small: usize,
    pub(super) split: usize,
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

/// (rows, cols, bytes per weight) of a matrix.
pub(super) fn mat_shape(w: &Mat<'_>, cols: usize) -> (usize, usize) {
    let (len, elem) = match *w {
        Mat::F32(w) => (w.len(), 4),
        Mat::F16(w) => (w.len(), 2),
        Mat::Q8(w) => return (w.rows(), 1),
    };
    (len / cols.max(1), elem)
}

/// Waits (spinning, then yielding) until `ready()`.
pub(super) fn wait_until(mut ready: impl FnMut() -> bool) {
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

    /// Claims and runs chunks of the open job of epoch `epoch` until none is left; `x` is the
    /// job's input, `ep` what follows the product, `scratch` (≥ MAX_CHUNK_ROWS) holds one chunk's
    /// output.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn work(
        &self,
        k: &Kernels,
        (w, ep): (&Mat<'_>, Epilogue<'_>),
        chunks: Chunks,
        x: Input<'_>,
        epoch: u32,
        scratch: &mut [f32],
    ) {
        let n = chunks.count() as u32;
        while let Some(next) = self.claim(epoch, n) {
            let r = chunks.range(next as usize);
            let y = &mut scratch[..r.len()];
            mat_rows(k, w, x, y, r.start);
            k.epilogue(ep, r.clone(), y);
            for (a, v) in self.output[r].iter().zip(y.iter()) {
                a.store(v.to_bits(), Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }

    /// Leader: y (R) = W x (C) and its epilogue ([`Which::epilogue`]) for the job `which` of
    /// `layer`, shared with the workers.
    /// `epoch` is the leader's job counter for this token; `scratch` as in [`Crew::work`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn matvec(
        &self,
        k: &Kernels,
        m: &Model<'_>,
        which: Which,
        layer: usize,
        x: &[f32],
        y: &mut [f32],
        epoch: &mut u32,
        scratch: &mut Scratch<'_>,
    ) {
        let (w, ep) = (which.mat(m, layer), which.epilogue(m, layer));
        let (rows, elem) = mat_shape(&w, x.len());
        let chunks = Chunks::new(rows, x.len(), elem);
        let input = Input::new(k, &w, x, scratch.xq, scratch.xd);
        if self.g <= 1 {
            // The same chunks, so every row's sum is computed identically whatever the crew size.
            for i in 0..chunks.count() {
                let r = chunks.range(i);
                mat_rows(k, &w, input, &mut y[r.clone()], r.start);
                k.epilogue(ep, r.clone(), &mut y[r]);
            }
            return;
        }
        let n = chunks.count() as u32;
        let open = self.open(epoch, which.encode(layer), 0, n, x);
        self.work(k, (&w, ep), chunks, input, open, scratch.out);
        self.wait_done(n);
        for (v, a) in y.iter_mut().zip(&self.output) {
            *v = f32::from_bits(a.load(Ordering::Relaxed));
        }
    }

    /// Opens a job of `n` chunks on input `x`; returns its epoch.
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

    /// Leader: the query/key/value product of layer l and attention at position pos as one job,
    /// xn (C) → att (C), shared with the workers (see [`AttnJob`]). Uses `scratch.out` (≥ Hg·T)
    /// for scores, `scratch.rows` (≥ 3C) and `scratch.tmp` (≥ Hg·D).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn qkv_attend(
        &self,
        k: &Kernels,
        m: &Model<'_>,
        kvs: &KvShared<'_>,
        l: usize,
        pos: usize,
        xn: &[f32],
        att: &mut [f32],
        epoch: &mut u32,
        scratch: &mut Scratch<'_>,
    ) {
        let w = m.layer(l);
        let job = AttnJob::new(&w, kvs, l, pos);
        let input = Input::new(k, &w.qkv_w, xn, scratch.xq, scratch.xd);
        let (scores, rows, tmp) = (&mut *scratch.out, &mut *scratch.rows, &mut *scratch.tmp);
        if self.g <= 1 {
            for i in 0..job.groups() {
                job.project(k, input, i, rows);
            }
            for g in 0..job.groups() {
                let part = |p: usize| &rows[job.part(p, g)];
                let out = &mut att[job.part(0, g)];
                job.attend(k, g, part(0), part(1), part(2), scores, out);
            }
            return;
        }
        let n = job.items() as u32;
        let open = self.open(epoch, Which::Qkv.encode(l), pos as u32, n, xn);
        self.work_qkv(k, &job, input, open, scores, rows, tmp);
        self.wait_done(n);
        for (v, a) in att.iter_mut().zip(&self.output[3 * job.c..]) {
            *v = f32::from_bits(a.load(Ordering::Relaxed));
        }
    }

    /// Claims and runs items of the open attention job of epoch `epoch` until none is left:
    /// first the query/key/value chunks (rows to `output[..3C]`), then the groups' attention (to
    /// `output[3C..4C]`), each group once its chunk is ready.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn work_qkv(
        &self,
        k: &Kernels,
        job: &AttnJob<'_, '_>,
        x: Input<'_>,
        epoch: u32,
        scores: &mut [f32],
        rows: &mut [f32],
        tmp: &mut [f32],
    ) {
        let (c, groups) = (job.c, job.groups());
        while let Some(next) = self.claim(epoch, job.items() as u32) {
            let i = next as usize;
            if i < groups {
                job.project(k, x, i, rows);
                for p in 0..3 {
                    let r = job.part(p, i);
                    for (a, v) in self.output[r.clone()].iter().zip(&rows[r]) {
                        a.store(v.to_bits(), Ordering::Relaxed);
                    }
                }
                self.ready[i].store(1, Ordering::Release);
            } else {
                // Claims go in order, so this group's chunk is taken: wait for it to be done.
                let g = i - groups;
                wait_until(|| {
                    self.check_poison();
                    self.ready[g].load(Ordering::Acquire) == 1
                });
                let n = job.part(0, g).len(); // Hg·D
                let (qkv, out) = (&mut rows[..3 * n], &mut tmp[..n]);
                for (p, dst) in qkv.chunks_exact_mut(n).enumerate() {
                    for (v, a) in dst.iter_mut().zip(&self.output[job.part(p, g)]) {
                        *v = f32::from_bits(a.load(Ordering::Relaxed));
                    }
                }
                let (q, rest) = qkv.split_at(n);
                let (key, value) = rest.split_at(n);
                job.attend(k, g, q, key, value, scores, out);
                let r = job.part(0, g);
                for (a, v) in self.output[3 * c + r.start..][..n].iter().zip(out.iter()) {
                    a.store(v.to_bits(), Ordering::Relaxed);
                }
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }

    /// Panics if a worker unwound (a waiting member would otherwise wait forever).
    pub(super) fn check_poison(&self) {
        assert!(
            !self.poisoned.load(Ordering::Relaxed),
            "a decode crew worker panicked"
        );
    }

    /// Leader: waits until `n` chunks of the open job are done.
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
    pub(super) fn finish(&self) {
        if self.g > 1 {
            self.state.store(pack(FINISHED, 0), Ordering::Release);
        }
    }

    /// Worker: takes chunks of every job the leader opens until the token is finished. `x` (4C)
    /// holds a copy of the input, `scratch` one chunk's output.
    pub(super) fn worker(
        &self,
        k: &Kernels,
        m: &Model<'_>,
        kvs: &KvShared<'_>,
        x: &mut [f32],
        scratch: &mut Scratch<'_>,
    ) {
        let mut seen = u32::MAX; // last epoch worked on
        loop {
            let mut s = 0;
            wait_until(|| {
                s = self.state.load(Ordering::Acquire);
                let (e, next) = unpack(s);
                e == FINISHED || (e % 2 == 0 && e != seen && next != u32::MAX)
            });
            let (epoch, _) = unpack(s);
            if epoch == FINISHED {
                return;
            }
            seen = epoch;
            let (which, layer) = Which::decode(self.job.load(Ordering::Acquire));
            let n = self.chunks.load(Ordering::Acquire);
            if which != Which::Head && layer >= m.config().n_layers || n == 0 {
                continue; // a torn read: the job changed under us, no claim will succeed
            }
            let cols = match which {
                Which::Fcp => 4 * m.config().dim,
                _ => m.config().dim,
            };
            let x = &mut x[..cols];
            for (v, a) in x.iter_mut().zip(&self.input) {
                *v = f32::from_bits(a.load(Ordering::Relaxed));
            }
            std::sync::atomic::fence(Ordering::Acquire);
            if which == Which::Qkv {
                let pos = self.arg.load(Ordering::Acquire) as usize;
                let w = m.layer(layer);
                let job = AttnJob::new(&w, kvs, layer, pos);
                if pos >= kvs.kv.t || n as usize != job.items() {
                    continue; // a torn read, as above
                }
                let input = Input::new(k, &w.qkv_w, x, scratch.xq, scratch.xd);
                let (scores, rows, tmp) =
                    (&mut *scratch.out, &mut *scratch.rows, &mut *scratch.tmp);
                self.work_qkv(k, &job, input, epoch, scores, rows, tmp);
                continue;
            }
            let w = which.mat(m, layer);
            let (rows, elem) = mat_shape(&w, cols);
            let chunks = Chunks::new(rows, cols, elem);
            if chunks.count() as u32 != n {
                continue; // a torn read, as above
            }
            let input = Input::new(k, &w, x, scratch.xq, scratch.xd);
            let ep = which.epilogue(m, layer);
            self.work(k, (&w, ep), chunks, input, epoch, scratch.out);
        }
    }
}

/// A crew member's scratch: one chunk's output rows (≥ MAX_CHUNK_ROWS, or T attention scores)
/// and a quantized input; for the fused attention job, one head's query, key and value rows
/// (≥ 3D) and its output (≥ D).
pub(super) struct Scratch<'s> {
    pub(super) out: &'s mut [f32],
    pub(super) xq: &'s mut [i8],
    pub(super) xd: &'s mut [f32],
    pub(super) rows: &'s mut [f32],
    pub(super) tmp: &'s mut [f32],
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
    pub(super) fn chunks_cover_every_row_once_and_end_small() {
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
