//! Prefill: a chunk of N prompt tokens through batched matrix products, then their attention
//! in parallel (see the parent module's docs).

use super::crew::fork;
use super::{Buffers, Ctx, Session, embed};
use crate::kernels::{Epilogue, Kernels, Q8_BLOCK, Vectors, multi_scratch_len, panel_q8};
use crate::model::{Layer, Mat};
use emberlm_formats::config::LAYERNORM_EPS;
use std::ops::Range;

impl Session<'_, '_> {
    /// Prefill: N tokens at positions `tokens.len()..`, batched through matrix products.
    pub(super) fn forward_chunk(&mut self, chunk: &[u32]) {
        if !self.model.is_gpt2() {
            return self.family_chunk(chunk);
        }
        let cx = Ctx {
            k: self.kernels,
            m: self.model,
            kv: &self.kv,
            crew: &self.crew,
            rope: &self.rope,
        };
        let (k, m) = (&cx.k, cx.m);
        let cfg = *m.config();
        let (c, n, pos0) = (cfg.dim, chunk.len(), self.tokens.len());
        let b = &mut self.chunk;
        let mut pr = Products::new(k, &mut self.products);
        let (x, xn) = (&mut b.x[..n * c], &mut b.xn[..n * c]);
        for (i, &t) in chunk.iter().enumerate() {
            embed(
                m,
                t,
                pos0 + i,
                &mut x[i * c..(i + 1) * c],
                &mut xn[i * c..(i + 1) * c],
            );
        }
        for l in 0..cfg.n_layers {
            let w: Layer<'_> = m.layer(l);
            by_tokens(k, &mut b.xn[..n * c], &b.x[..n * c], c, |o, x| {
                layernorm_rows(k, x, w.norm1, o, c)
            });
            let ep = Epilogue {
                bias: w.qkv_b,
                gelu: false,
            };
            pr.run(
                w.qkv_w,
                c,
                &b.xn[..n * c],
                &mut b.qkv[..n * 3 * c],
                ep,
                true,
            );
            let job = ChunkAttn {
                cx: &cx,
                l,
                pos0,
                qkv: &b.qkv[..n * 3 * c],
            };
            job.store();
            attend_tokens(&job, 0, &mut self.lanes, &mut b.att[..n * c]);
            let ep = Epilogue {
                bias: Some(w.proj_b),
                gelu: false,
            };
            pr.run(w.proj_w, c, &b.att[..n * c], &mut b.out[..n * c], ep, true);
            by_tokens(k, &mut b.x[..n * c], &b.out[..n * c], c, |x, o| k.add(x, o));
            by_tokens(k, &mut b.xn[..n * c], &b.x[..n * c], c, |o, x| {
                layernorm_rows(k, x, w.norm2, o, c)
            });
            let ep = Epilogue {
                bias: Some(w.fc_b),
                gelu: true,
            };
            pr.run(w.fc_w, c, &b.xn[..n * c], &mut b.ff[..n * 4 * c], ep, true);
            let ep = Epilogue {
                bias: Some(w.fcp_b),
                gelu: false,
            };
            pr.run(
                w.fcp_w,
                4 * c,
                &b.ff[..n * 4 * c],
                &mut b.out[..n * c],
                ep,
                true,
            );
            by_tokens(k, &mut b.x[..n * c], &b.out[..n * c], c, |x, o| k.add(x, o));
        }
        // Logits for the last position only.
        let last = &b.x[(n - 1) * c..n * c];
        let (scale, shift) = m.final_norm();
        k.layernorm(last, scale, shift, &mut b.xn[..c], LAYERNORM_EPS);
        let (head, bias) = m.head();
        let lane = &mut self.lanes[0];
        let q = (&mut lane.xq[..], &mut lane.xd[..]);
        head.matvec_int8_input(k, &b.xn[..c], q, &mut self.logits);
        if let Some(bias) = bias {
            k.add(&mut self.logits, bias);
        }
        self.tokens.extend_from_slice(chunk);
    }
}

/// f(a rows, b rows) over the tokens of two (N, C) buffers, split over the session's threads
/// (each token's row is computed the same way whatever the split).
pub(super) fn by_tokens(
    k: &Kernels,
    a: &mut [f32],
    b: &[f32],
    c: usize,
    f: impl Fn(&mut [f32], &[f32]) + Sync + Send,
) {
    #[cfg(feature = "parallel")]
    if k.threads() > 1 && a.len() >= 2 * c {
        use rayon::prelude::*;
        let per = (a.len() / c).div_ceil(k.threads()) * c;
        a.par_chunks_mut(per)
            .zip(b.par_chunks(per))
            .for_each(|(a, b)| f(a, b));
        return;
    }
    #[cfg(not(feature = "parallel"))]
    let _ = (k, c);
    f(a, b)
}

/// LayerNorm of each row of x (N, C) into out (N, C).
fn layernorm_rows(
    k: &Kernels,
    x: &[f32],
    (scale, shift): (&[f32], &[f32]),
    out: &mut [f32],
    c: usize,
) {
    for (xr, or) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
        k.layernorm(xr, scale, shift, or, LAYERNORM_EPS);
    }
}

/// One prefill chunk's attention inputs for layer l: qkv (N, 3C) of tokens at pos0 ...
struct ChunkAttn<'s> {
    cx: &'s Ctx<'s>,
    l: usize,
    pos0: usize,
    qkv: &'s [f32],
}

impl ChunkAttn<'_> {
    /// C, the width of a token's query (or key, or value) row.
    fn dim(&self) -> usize {
        let kv = &self.cx.kv.layout;
        kv.heads * kv.d
    }

    /// Stores the chunk's keys and values in every group's cache.
    fn store(&self) {
        let (kv, c) = (&self.cx.kv.layout, self.dim());
        for g in 0..kv.groups {
            let mut cache = self.cx.kv.write(g);
            let hs = kv.group(g);
            for (i, qkv) in self.qkv.chunks_exact(3 * c).enumerate() {
                let at = kv.at(self.l, self.pos0 + i, hs.len());
                let key = &qkv[c + hs.start * kv.d..c + hs.end * kv.d];
                let value = &qkv[2 * c + hs.start * kv.d..2 * c + hs.end * kv.d];
                cache.store(at, key, value);
            }
        }
    }

    /// Attention of tokens i0.. of the chunk (one row of `att` (C) each) over every group.
    fn attend(&self, i0: usize, scores: &mut [f32], att: &mut [f32]) {
        let (kv, c) = (&self.cx.kv.layout, self.dim());
        for g in 0..kv.groups {
            let cache = self.cx.kv.read(g);
            let hs = kv.group(g);
            let cols = hs.start * kv.d..hs.end * kv.d;
            let from = kv.at(self.l, 0, hs.len());
            for (ii, out) in att.chunks_exact_mut(c).enumerate() {
                let i = i0 + ii;
                let q = &self.qkv[i * 3 * c..][cols.clone()];
                let p = self.pos0 + i + 1;
                let sc = &mut scores[..hs.len() * p];
                cache.attend(&self.cx.k, hs.len(), q, from, sc, &mut out[cols.clone()]);
            }
        }
    }
}

/// Prefill attention of the chunk's tokens i0.. (`att` holds their rows), the caches already
/// holding the chunk's keys and values ([`ChunkAttn::store`]): the tokens are cut into runs of
/// about equal work (token i attends pos0 + i + 1 positions), one per lane, run in parallel
/// (rayon), each on its own lane's scores. A token's output does not depend on the cut.
fn attend_tokens(job: &ChunkAttn<'_>, i0: usize, lanes: &mut [Buffers], att: &mut [f32]) {
    let Some((lane, rest)) = lanes.split_first_mut() else {
        return;
    };
    let c = job.dim();
    let n = att.len() / c;
    // This lane's share: 1 / lanes of the remaining positions to attend.
    let work = |i: usize| job.pos0 + i0 + i + 1;
    let total: usize = (0..n).map(work).sum();
    let target = total / (rest.len() + 1);
    let (mut mine, mut acc) = (0, 0);
    while mine < n && (acc < target || mine == 0) {
        acc += work(mine);
        mine += 1;
    }
    let (my_att, rest_att) = att.split_at_mut(mine * c);
    if rest.is_empty() || mine == n {
        job.attend(i0, &mut lane.scores, att);
    } else {
        fork(
            || job.attend(i0, &mut lane.scores, my_att),
            || attend_tokens(job, i0 + mine, rest, rest_att),
        );
    }
}

/// Chunks of at most this many tokens multiply Q8 and Q4 weights by the batched decode kernel
/// ([`Kernels::matvec_multi_rows`], B = N: every weight read once for the chunk) instead of the
/// int8 panel ([`panel_q8`]), which computes tokens in groups of [`panel_q8::Q8_TOKENS`] (16),
/// padding included. A 10-token GPT-2 prompt on one thread took 14.3 ms through the panel
/// (698 tokens/s): as long as two batched decode steps of 8 streams, so under `ember serve`
/// every arriving prompt stalled the running streams that long. `ember bench
/// gpt2-124m-int8.ember --prompt-tokens N --gen-tokens 16 --json` (Zen 5, 2026-12-05, prefill
/// tokens/s, panel → multi): one thread, N = 10: 699 → 1373, 16: 1030 → 1404, 32: 1425 → 1776,
/// 64: 1592 → 1701 (and still 1594 → 1760 at 128); two threads, three alternating runs, N =
/// 32: 1558–2273 → 2074–2590, N = 64: 2615–2869 against 2613–2832 (even), so the panel keeps
/// longer chunks. Both products give each token the bits of a single-vector kernel (the panel
/// the reference twin's, the multi kernel this CPU's decode kernel's); neither depends on the
/// thread count.
pub(super) const MULTI_TOKENS: usize = 64;

/// The prefill products' buffers (allocated once per session, for N = its prefill chunk).
#[derive(Debug)]
pub(super) struct ProductBuffers {
    /// A product's input X (N, Wf) packed for the f32 microkernel.
    pub(super) xp: Vec<f32>,
    /// (N, max(Wf, Wqkv)) a product's output, one (N, P_g) block per thread.
    pub(super) yt: Vec<f32>,
    /// X (N, Wf) quantized and packed for the int8 panel, and its block scales.
    pub(super) q8p: Vec<u8>,
    pub(super) q8d: Vec<f32>,
    /// X (N', Wf) quantized row by row for the multi kernel (N' = min(N, [`MULTI_TOKENS`])),
    /// its block scales (N', NB), and each thread's kernel scratch.
    pub(super) mq: Vec<i8>,
    pub(super) md: Vec<f32>,
    pub(super) ms: Vec<u8>,
}

impl ProductBuffers {
    /// Buffers for chunks of N tokens, inputs of at most `cols` columns (`xp_len` and `yt_len`
    /// elements for the f32 panel's packed input and the outputs), on `threads` threads.
    pub(super) fn new(n: usize, cols: usize, xp_len: usize, yt_len: usize, threads: usize) -> Self {
        let short = n.min(MULTI_TOKENS);
        // Zeroed by the allocator: untouched (no resident memory) unless the int8 paths run.
        ProductBuffers {
            xp: vec![0.0; xp_len],
            yt: vec![0.0; yt_len],
            q8p: vec![0; panel_q8::packed_bytes(n, cols)],
            q8d: vec![0.0; panel_q8::packed_scales(n, cols)],
            mq: vec![0; short * cols],
            md: vec![0.0; short * cols.div_ceil(Q8_BLOCK)],
            ms: vec![0; threads * multi_scratch_len(short, cols)],
        }
    }
}

/// The prefill products' kernels and buffers: Q8 and Q4 weights go through the int8 products
/// (activations quantized as int8 and int4 decode quantize them) where the CPU has them: the
/// batched decode kernel for chunks of at most [`MULTI_TOKENS`], else the panel ([`panel_q8`],
/// Q6 too); everything else through the f32 panel ([`Kernels::matmul`]).
pub(super) struct Products<'s> {
    pub(super) k: &'s Kernels,
    pub(super) b: &'s mut ProductBuffers,
    /// q8p / q8d hold the current input.
    pub(super) packed: bool,
    /// mq / md hold the current input.
    pub(super) quantized: bool,
}

impl<'s> Products<'s> {
    pub(super) fn new(k: &'s Kernels, b: &'s mut ProductBuffers) -> Self {
        Products {
            k,
            b,
            packed: false,
            quantized: false,
        }
    }

    /// y (N, R) = x (N, C) · Wᵀ with `ep`; `fresh`: x differs from the previous call's (else its
    /// quantized copy is reused).
    pub(super) fn run(
        &mut self,
        w: Mat<'_>,
        c: usize,
        x: &[f32],
        y: &mut [f32],
        ep: Epilogue<'_>,
        fresh: bool,
    ) {
        let k = self.k;
        self.packed &= !fresh;
        self.quantized &= !fresh;
        let n = x.len() / c;
        let b = &mut *self.b;
        match w {
            Mat::Q8(_) | Mat::Q4(_) if n <= MULTI_TOKENS && panel_q8::available(k, c) => {
                let nb = c.div_ceil(Q8_BLOCK);
                let (mq, md) = (&mut b.mq[..n * c], &mut b.md[..n * nb]);
                if !self.quantized {
                    k.quantize_q8_rows(x, c, mq, md);
                    self.quantized = true;
                }
                let v = Vectors {
                    b: n,
                    c,
                    x,
                    q: Some((&*mq, &*md)),
                };
                let part = |rows: Range<usize>, y: &mut [f32], s: &mut [u8]| {
                    k.matvec_multi_rows(w, v, y, rows.start, s);
                    k.epilogue(ep, rows, y);
                };
                #[cfg(feature = "parallel")]
                if k.threads() > 1 {
                    return row_blocks(k, (n, y), &mut b.yt, &mut b.ms, Q8_SCRATCH, &part);
                }
                part(0..y.len() / n.max(1), y, &mut b.ms);
            }
            Mat::Q8(_) | Mat::Q4(_) | Mat::Q6(_) if panel_q8::available(k, c) => {
                let w = match w {
                    Mat::Q4(q) => panel_q8::Weights::Q4(q),
                    Mat::Q6(q) => panel_q8::Weights::Q6(q),
                    Mat::Q8(q) => panel_q8::Weights::Q8(q),
                    _ => unreachable!("matched as Q8 or Q4"),
                };
                if !self.packed {
                    panel_q8::quantize_pack(k, x, c, &mut b.q8p, &mut b.q8d);
                    self.packed = true;
                }
                #[cfg(feature = "parallel")]
                if k.threads() > 1 {
                    let x = (&b.q8p[..], &b.q8d[..]);
                    let part = |rows: Range<usize>, y: &mut [f32], _: &mut [u8]| {
                        panel_q8::matmul_rows(k, w, x, n, rows.clone(), y);
                        k.epilogue(ep, rows, y);
                    };
                    return row_blocks(k, (n, y), &mut b.yt, &mut [], Q8_SCRATCH, &part);
                }
                panel_q8::matmul(k, w, (&b.q8p, &b.q8d), n, y, &mut b.yt, ep);
            }
            _ => k.matmul(w, c, x, y, &mut b.xp, &mut b.yt, ep),
        }
    }
}

/// Scratch of the threaded int8 product, in f32 elements at most (256 KiB) for N tokens' worth of
/// a block of rows (or one [`Q8_SPLIT`] row per thread, at least).
#[cfg(feature = "parallel")]
const Q8_SCRATCH: usize = 64 << 10;
/// Threads' rows of a block of the threaded int8 product start at multiples of this (whole
/// SIMD runs for the epilogue; the microkernel takes 4 rows at a time).
#[cfg(feature = "parallel")]
const Q8_SPLIT: usize = 16;

/// One thread's share of a [`row_blocks`] product: `(rows, out, bytes)` computes `rows` (N,
/// P_g) into `out` with the thread's `bytes` of kernel scratch.
#[cfg(feature = "parallel")]
type RowsPart<'a> = dyn Fn(Range<usize>, &mut [f32], &mut [u8]) + Sync + 'a;

/// A product y (N, R) on several threads, a block of rows at a time: each thread computes its
/// share of the block's rows into its (N, P_g) part of `scratch` by `part(rows, part, bytes)`
/// (`bytes`: the thread's share of `bytes`), then the block's rows are gathered into `y`.
/// `panel_q8::matmul` does the same over all R rows at once, with N·R scratch (1 MiB at
/// Llama-3.2-1B's shapes and N = 128); blocks keep the touched scratch to `budget` elements
/// ([`Q8_SCRATCH`]). Both products compute rows independently (the int8 panel by
/// [`panel_q8::matmul_rows`], the multi kernel by [`Kernels::matvec_multi_rows`]) with
/// elementwise epilogues, so the bits do not depend on the blocks or the thread count.
#[cfg(feature = "parallel")]
fn row_blocks(
    k: &Kernels,
    (n, y): (usize, &mut [f32]),
    scratch: &mut [f32],
    bytes: &mut [u8],
    budget: usize,
    part: &RowsPart<'_>,
) {
    use rayon::prelude::*;
    let groups = k.threads();
    let r = y.len() / n.max(1);
    if n == 0 || r == 0 {
        return;
    }
    let block = q8_block_rows(n, groups, budget);
    for b0 in (0..r).step_by(block) {
        let rows = b0..(b0 + block).min(r);
        let len = rows.len();
        let scratch = &mut scratch[..n * len];
        parts((n, &rows), 0, groups, scratch, bytes, part);
        let scratch = &*scratch;
        y.par_chunks_mut(r)
            .with_min_len(16)
            .enumerate()
            .for_each(|(t, yr)| {
                let yr = &mut yr[rows.clone()];
                for g in 0..groups {
                    let part = q8_part(len, g, groups);
                    let p = part.len();
                    if p > 0 {
                        yr[part.clone()].copy_from_slice(&scratch[part.start * n + t * p..][..p]);
                    }
                }
            });
    }
}

/// Rows per block of [`row_blocks`] (a multiple of [`Q8_SPLIT`] per thread).
#[cfg(feature = "parallel")]
fn q8_block_rows(n: usize, groups: usize, budget: usize) -> usize {
    let unit = Q8_SPLIT * groups;
    (budget / n.max(1)).max(unit) / unit * unit
}

/// Thread g's rows of a block of `len` rows (relative to the block's start).
#[cfg(feature = "parallel")]
fn q8_part(len: usize, g: usize, groups: usize) -> Range<usize> {
    let at = |g: usize| {
        if g >= groups {
            len
        } else {
            len * g / groups / Q8_SPLIT * Q8_SPLIT
        }
    };
    at(g)..at(g + 1)
}

/// Threads g.. of `groups`: thread g computes its rows of the block `rows` into its (N, P_g)
/// part of `scratch`, with its 1 / (groups − g) of `bytes`.
#[cfg(feature = "parallel")]
fn parts(
    (n, rows): (usize, &Range<usize>),
    g: usize,
    groups: usize,
    scratch: &mut [f32],
    bytes: &mut [u8],
    part: &RowsPart<'_>,
) {
    let mine = q8_part(rows.len(), g, groups);
    let abs = rows.start + mine.start..rows.start + mine.end;
    let (out, rest) = scratch.split_at_mut(mine.len() * n);
    let (b, bytes) = bytes.split_at_mut(bytes.len() / (groups - g));
    let this = |out: &mut [f32], b: &mut [u8]| {
        if !abs.is_empty() {
            part(abs.clone(), out, b);
        }
    };
    if g + 1 >= groups {
        return this(out, b);
    }
    rayon::join(
        || this(out, b),
        || parts((n, rows), g + 1, groups, rest, bytes, part),
    );
}

#[cfg(all(test, feature = "parallel"))]
mod tests {
    use super::*;
    use crate::kernels::Q8Matrix;
    use half::f16;

    /// The blocked product against `panel_q8::matmul` on one thread (all rows at once): the same
    /// bits for 2, 3 and 4 threads and blocks from one split unit a thread up to all the rows,
    /// with a bias and GELU, each run within a scratch of exactly one block.
    #[test]
    fn blocked_int8_product_has_the_bits_of_one_thread() {
        let (r, c, n) = (1000, 96, 37);
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let q: Vec<i8> = (0..r * c).map(|_| next() as i8).collect();
        let d: Vec<f16> = (0..r * c / 32)
            .map(|_| f16::from_f32((next() % 1000) as f32 * 1e-5))
            .collect();
        let x: Vec<f32> = (0..n * c)
            .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let bias: Vec<f32> = (0..r)
            .map(|_| (next() % 200) as f32 / 100.0 - 1.0)
            .collect();
        let w = panel_q8::Weights::Q8(Q8Matrix::new(&q, &d, r, c).unwrap());
        let ep = Epilogue {
            bias: Some(&bias),
            gelu: true,
        };
        let k1 = Kernels::detect().with_threads(1);
        let mut xp = vec![0u8; panel_q8::packed_bytes(n, c)];
        let mut xd = vec![0f32; panel_q8::packed_scales(n, c)];
        panel_q8::quantize_pack(&k1, &x, c, &mut xp, &mut xd);
        let mut want = vec![0f32; n * r];
        panel_q8::matmul(&k1, w, (&xp, &xd), n, &mut want, &mut [], ep);
        for threads in [2, 3, 4] {
            let k = Kernels::detect().with_threads(threads);
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for budget in [0, 1000, 9000, 40_000, n * r] {
                let block = q8_block_rows(n, threads, budget);
                let mut scratch = vec![0f32; n * block.min(r)];
                let mut y = vec![0f32; n * r];
                let part = |rows: Range<usize>, y: &mut [f32], _: &mut [u8]| {
                    panel_q8::matmul_rows(&k, w, (&xp, &xd), n, rows.clone(), y);
                    k.epilogue(ep, rows, y);
                };
                let run = || row_blocks(&k, (n, &mut y), &mut scratch, &mut [], budget, &part);
                pool.install(run);
                let same = y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{threads} threads, blocks of {block} rows");
            }
        }
        // A short chunk's product (the multi kernel, each thread with its own share of the
        // kernel scratch) against the same call on all rows at once on one thread.
        let n = 13;
        let (x, nb) = (&x[..n * c], c / 32);
        let mut xq = vec![0i8; n * c];
        let mut xs = vec![0f32; n * nb];
        k1.quantize_q8_rows(x, c, &mut xq, &mut xs);
        let v = Vectors {
            b: n,
            c,
            x,
            q: Some((&xq, &xs)),
        };
        let wm = Mat::Q8(Q8Matrix::new(&q, &d, r, c).unwrap());
        let mut want = vec![0f32; n * r];
        k1.matvec_multi_rows(wm, v, &mut want, 0, &mut vec![0; multi_scratch_len(n, c)]);
        k1.epilogue(ep, 0..r, &mut want);
        for threads in [2, 3] {
            let k = Kernels::detect().with_threads(threads);
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let budget = 4000;
            let mut scratch = vec![0f32; n * q8_block_rows(n, threads, budget).min(r)];
            let mut bytes = vec![0u8; threads * multi_scratch_len(n, c)];
            let mut y = vec![0f32; n * r];
            let part = |rows: Range<usize>, y: &mut [f32], s: &mut [u8]| {
                k.matvec_multi_rows(wm, v, y, rows.start, s);
                k.epilogue(ep, rows, y);
            };
            let run = || row_blocks(&k, (n, &mut y), &mut scratch, &mut bytes, budget, &part);
            pool.install(run);
            let same = y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "multi, {threads} threads");
        }
    }
}
