//! The prefill product for Q8 weights with int8 activations: Y (N, R) = X (N, C) · Wᵀ where
//! each token's row of X is quantized to int8 blocks of 32 ([`super::Kernels::quantize_q8`],
//! as int8 decode does) and each block's dot product is an exact integer sum (`vpdpbusd`), so
//! every output has the bits of [`super::reference::matvec_q8q8_rows`] on that token. Runs
//! where the CPU has AVX-512 VNNI ([`available`]); elsewhere the f32 panel ([`super::panel`])
//! stays the prefill product. Letters as in [`super`].
//!
//! - X is quantized and packed once per product ([`quantize_pack`]): groups of [`Q8_TOKENS`]
//!   tokens; within a group, block b, quad k (4 columns), token t: 4 bytes `x + 128` (unsigned,
//!   as `vpdpbusd` wants) at `((b·8 + k)·16 + t)·4`, and the tokens' block scales at `b·16 + t`
//!   (padding tokens: zero quants, zero scales).
//! - W is read in place: [`Q8_ROWS`] rows at a time, their scales converted to f32 and
//!   128 · Σ of each block's quants computed once, then every token group meets them in turn.
//! - The microkernel keeps 4 rows × 16 tokens of integer block sums and of f32 totals in
//!   registers (AVX-512VL's 32).
//! - Q4 weights ([`Weights::Q4`]) are a codebook's int8 levels times the same f16 block scales
//!   as Q8's, so each tile's 4 rows are expanded to their levels (exactly) and go through the
//!   same microkernel: every output has the bits of [`super::q4_reference::matvec_q4q8_rows`],
//!   which int4 decode computes.

#![forbid(unsafe_code)]

use super::{Epilogue, Kernels, Q4Matrix, Q6Matrix, Q8_BLOCK, Q8Matrix};
use emberlm_formats::quant::{Q4_BLOCK_BYTES, Q4_CODEBOOK};
use half::f16;
use std::ops::Range;

/// The weights of a product: Q8 rows read in place, or Q4 rows expanded to their int8 levels a
/// tile at a time.
#[derive(Clone, Copy, Debug)]
pub enum Weights<'a> {
    /// Int8 weights.
    Q8(Q8Matrix<'a>),
    /// Int4 weights (codebook levels).
    Q4(Q4Matrix<'a>),
    /// 6-bit weights (levels −32..=31).
    Q6(Q6Matrix<'a>),
}

impl<'a> From<Q6Matrix<'a>> for Weights<'a> {
    fn from(w: Q6Matrix<'a>) -> Self {
        Weights::Q6(w)
    }
}

impl<'a> From<Q8Matrix<'a>> for Weights<'a> {
    fn from(w: Q8Matrix<'a>) -> Self {
        Weights::Q8(w)
    }
}

impl<'a> From<Q4Matrix<'a>> for Weights<'a> {
    fn from(w: Q4Matrix<'a>) -> Self {
        Weights::Q4(w)
    }
}

impl<'a> Weights<'a> {
    /// R.
    pub fn rows(&self) -> usize {
        match self {
            Weights::Q8(w) => w.rows(),
            Weights::Q4(w) => w.rows(),
            Weights::Q6(w) => w.rows(),
        }
    }

    /// C.
    pub fn cols(&self) -> usize {
        match self {
            Weights::Q8(w) => w.cols(),
            Weights::Q4(w) => w.cols(),
            Weights::Q6(w) => w.cols(),
        }
    }

    /// Row r's block scales (C / 32).
    fn row_scales(&self, r: usize) -> &'a [f16] {
        match self {
            Weights::Q8(w) => &w.scales()[r * w.blocks_per_row()..][..w.blocks_per_row()],
            Weights::Q4(w) => w.row_scales(r),
            Weights::Q6(w) => w.row_scales(r),
        }
    }

    /// Row r's bytes in the file, columns `part` (of C) as a share of the row.
    fn row_bytes(&self, r: usize, part: Range<usize>) -> &'a [u8] {
        match self {
            Weights::Q8(w) => bytemuck::cast_slice(&w.quants()[r * w.cols()..][part]),
            Weights::Q4(w) => &w.row_quants(r)[part.start / 2..part.end / 2],
            Weights::Q6(w) => &w.row_quants(r)[part.start / 32 * 24..part.end.div_ceil(32) * 24],
        }
    }
}

/// out (C) ← row `q` (C / 2 bytes of nibbles, FORMAT.md §5) as its int8 codebook levels.
fn expand_q4(q: &[u8], out: &mut [i8]) {
    for (block, o) in q
        .chunks_exact(Q4_BLOCK_BYTES)
        .zip(out.chunks_exact_mut(Q8_BLOCK))
    {
        let (lo, hi) = o.split_at_mut(Q4_BLOCK_BYTES);
        for ((&b, l), h) in block.iter().zip(lo).zip(hi) {
            *l = Q4_CODEBOOK[usize::from(b & 0x0F)];
            *h = Q4_CODEBOOK[usize::from(b >> 4)];
        }
    }
}

pub use super::geometry::{Q8_ROWS, Q8_TOKENS};
/// Widest C this product takes (blocks per row kept on the stack).
pub const Q8_MAX_COLS: usize = 16384;

/// Whether `k` runs this product for Q8 weights of C = `c` columns on this CPU: an x86-64 fast
/// kernel set on a CPU with AVX-512 VNNI, C a positive multiple of 32 up to [`Q8_MAX_COLS`].
pub fn available(k: &Kernels, c: usize) -> bool {
    c > 0 && c % Q8_BLOCK == 0 && c <= Q8_MAX_COLS && vnni(k).is_some()
}

#[cfg(all(target_arch = "x86_64", ember_vnni))]
type Token = super::x86_64_vnni::Vnni;
#[cfg(not(all(target_arch = "x86_64", ember_vnni)))]
type Token = ();

/// The VNNI token when `k` is the x86-64 fast set and the CPU has VNNI.
fn vnni(k: &Kernels) -> Option<Token> {
    #[cfg(all(target_arch = "x86_64", ember_vnni))]
    if let super::Isa::Avx2(_) = k.isa {
        return super::x86_64_vnni::Vnni::detect();
    }
    #[cfg(not(all(target_arch = "x86_64", ember_vnni)))]
    let _ = k;
    None
}

/// Bytes of X (N, C) packed by [`quantize_pack`].
pub fn packed_bytes(n: usize, c: usize) -> usize {
    n.div_ceil(Q8_TOKENS) * Q8_TOKENS * c
}

/// Scales of X (N, C) packed by [`quantize_pack`].
pub fn packed_scales(n: usize, c: usize) -> usize {
    n.div_ceil(Q8_TOKENS) * Q8_TOKENS * c.div_ceil(Q8_BLOCK)
}

/// Quantizes each token's row of X (N, C) (N = `x.len() / C`, C a multiple of 32 up to
/// [`Q8_MAX_COLS`]) and packs it into xp ([`packed_bytes`]) and xd ([`packed_scales`]), over
/// `k`'s threads (one group of 16 tokens per task).
///
/// # Panics
/// If C is not a positive multiple of 32 up to [`Q8_MAX_COLS`], or a buffer is short.
pub fn quantize_pack(k: &Kernels, x: &[f32], c: usize, xp: &mut [u8], xd: &mut [f32]) {
    assert!(
        c > 0 && c % Q8_BLOCK == 0 && c <= Q8_MAX_COLS,
        "quantize_pack: C = {c}"
    );
    let n = x.len() / c;
    assert_eq!(x.len(), n * c, "quantize_pack: x must be (N, C)");
    let (xp, xd) = (
        &mut xp[..packed_bytes(n, c)],
        &mut xd[..packed_scales(n, c)],
    );
    let nb = c / Q8_BLOCK;
    let group = |(g, (dst, dd)): (usize, (&mut [u8], &mut [f32]))| {
        let mut q = [0i8; Q8_MAX_COLS];
        let mut d = [0f32; Q8_MAX_COLS / Q8_BLOCK];
        let (q, d) = (&mut q[..c], &mut d[..nb]);
        dst.fill(128);
        dd.fill(0.0);
        for t in 0..Q8_TOKENS.min(n - g * Q8_TOKENS) {
            k.quantize_q8(&x[(g * Q8_TOKENS + t) * c..][..c], q, d);
            for (b, (qb, &db)) in q.chunks_exact(Q8_BLOCK).zip(d.iter()).enumerate() {
                dd[b * Q8_TOKENS + t] = db;
                for (kq, quad) in qb.chunks_exact(4).enumerate() {
                    let at = ((b * 8 + kq) * Q8_TOKENS + t) * 4;
                    for (o, &v) in dst[at..at + 4].iter_mut().zip(quad) {
                        *o = (v as u8) ^ 0x80;
                    }
                }
            }
        }
    };
    #[cfg(feature = "parallel")]
    if k.threads() > 1 && n > Q8_TOKENS {
        use rayon::prelude::*;
        xp.par_chunks_mut(Q8_TOKENS * c)
            .zip(xd.par_chunks_mut(Q8_TOKENS * nb))
            .enumerate()
            .for_each(group);
        return;
    }
    xp.chunks_mut(Q8_TOKENS * c)
        .zip(xd.chunks_mut(Q8_TOKENS * nb))
        .enumerate()
        .for_each(group);
}

/// The prefill product Y (N, R) = X · Wᵀ for Q8 weights W (R, C) and X packed by
/// [`quantize_pack`] (N tokens), with `ep` applied, W's rows split over `k`'s threads as
/// [`Kernels::matmul`] splits them (`scratch` ≥ N·R when threads > 1). The bits do not depend
/// on the thread count.
///
/// # Panics
/// If [`available`] is false for C, or the buffers do not fit the shapes.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    k: &Kernels,
    w: Weights<'_>,
    (xp, xd): (&[u8], &[f32]),
    n: usize,
    y: &mut [f32],
    scratch: &mut [f32],
    ep: Epilogue<'_>,
) {
    let (r, c) = (w.rows(), w.cols());
    assert_eq!(y.len(), n * r, "panel_q8::matmul: y must be (N, R)");
    if let Some(b) = ep.bias {
        assert_eq!(
            b.len(),
            r,
            "panel_q8::matmul: the bias must have R elements"
        );
    }
    if n == 0 || r == 0 {
        return;
    }
    let xp = &xp[..packed_bytes(n, c)];
    let xd = &xd[..packed_scales(n, c)];
    #[cfg(feature = "parallel")]
    if k.threads() > 1 {
        let groups = k.threads();
        let scratch = &mut scratch[..n * r];
        tasks(k, w, (xp, xd), n, 0, groups, scratch, ep);
        use rayon::prelude::*;
        let scratch = &*scratch;
        y.par_chunks_mut(r)
            .with_min_len(16)
            .enumerate()
            .for_each(|(t, yr)| super::gather_row(scratch, n, groups, t, yr));
        return;
    }
    #[cfg(not(feature = "parallel"))]
    let _ = scratch;
    matmul_rows(k, w, (xp, xd), n, 0..r, y);
    k.epilogue(ep, 0..r, y);
}

/// Tasks g.. of G: task g computes rows `row_part(g)` into its (N, P) block of `scratch`.
#[cfg(feature = "parallel")]
#[allow(clippy::too_many_arguments)]
fn tasks(
    k: &Kernels,
    w: Weights<'_>,
    x: (&[u8], &[f32]),
    n: usize,
    g: usize,
    groups: usize,
    scratch: &mut [f32],
    ep: Epilogue<'_>,
) {
    let part = super::geometry::row_part(w.rows(), g, groups);
    let (mine, rest) = scratch.split_at_mut(part.len() * n);
    let this = |mine: &mut [f32]| {
        matmul_rows(k, w, x, n, part.clone(), mine);
        k.epilogue(ep, part.clone(), mine);
    };
    if g + 1 >= groups {
        return this(mine);
    }
    rayon::join(|| this(mine), || tasks(k, w, x, n, g + 1, groups, rest, ep));
}

/// y (N, P) = X · W[rows]ᵀ on the calling thread (P = rows.len(); token t's outputs at
/// `y[t·P ..][..P]`).
///
/// # Panics
/// If `rows` is not inside W, C is not as [`available`] needs, or a buffer is short.
pub fn matmul_rows(
    k: &Kernels,
    w: Weights<'_>,
    (xp, xd): (&[u8], &[f32]),
    n: usize,
    rows: Range<usize>,
    y: &mut [f32],
) {
    let c = w.cols();
    assert!(
        c > 0 && c % Q8_BLOCK == 0 && c <= Q8_MAX_COLS,
        "panel_q8: C = {c}"
    );
    assert!(rows.end <= w.rows(), "panel_q8: rows {rows:?}");
    let (p, nb) = (rows.len(), c / Q8_BLOCK);
    assert!(
        y.len() >= n * p && xp.len() >= packed_bytes(n, c) && xd.len() >= packed_scales(n, c),
        "panel_q8: buffers too short"
    );
    let token = vnni(k);
    let mut d = [[0f32; Q8_MAX_COLS / Q8_BLOCK]; Q8_ROWS];
    let mut wsum = [[0i32; Q8_MAX_COLS / Q8_BLOCK]; Q8_ROWS];
    let mut out = [[0f32; Q8_TOKENS]; Q8_ROWS];
    // A Q4 tile's rows as int8 levels (untouched for Q8 weights).
    let mut levels = [[0i8; Q8_MAX_COLS]; Q8_ROWS];
    for i0 in rows.clone().step_by(Q8_ROWS) {
        let ir = Q8_ROWS.min(rows.end - i0);
        // Rows past the end repeat the last one (their sums are discarded).
        let row = |i: usize| (i0 + i).min(rows.end - 1);
        if let Weights::Q4(w) = w {
            for (i, l) in levels.iter_mut().enumerate() {
                match token {
                    #[cfg(all(target_arch = "x86_64", ember_vnni))]
                    Some(t) => super::x86_64_vnni::expand_q4(
                        t,
                        w.row_quants(row(i)),
                        &Q4_CODEBOOK,
                        &mut l[..c],
                    ),
                    _ => expand_q4(w.row_quants(row(i)), &mut l[..c]),
                }
            }
        }
        if let Weights::Q6(w) = w {
            for (i, l) in levels.iter_mut().enumerate() {
                match token {
                    #[cfg(all(target_arch = "x86_64", ember_vnni))]
                    Some(t) => super::x86_64_vnni::expand_q6(t, w.row_quants(row(i)), &mut l[..c]),
                    _ => w.row_levels(row(i), &mut l[..c]),
                }
            }
        }
        let q: [&[i8]; Q8_ROWS] = std::array::from_fn(|i| match w {
            Weights::Q8(w) => &w.quants()[row(i) * c..][..c],
            Weights::Q4(_) | Weights::Q6(_) => &levels[i][..c],
        });
        for (i, &q) in q.iter().enumerate() {
            let scales = w.row_scales(row(i));
            let (d, wsum) = (&mut d[i][..nb], &mut wsum[i][..nb]);
            match token {
                #[cfg(all(target_arch = "x86_64", ember_vnni))]
                Some(t) => super::x86_64_vnni::row_constants(t, q, scales, d, wsum),
                _ => {
                    d.iter_mut().zip(scales).for_each(|(o, s)| *o = s.to_f32());
                    for (o, qb) in wsum.iter_mut().zip(q.chunks_exact(Q8_BLOCK)) {
                        *o = 128 * qb.iter().map(|&v| i32::from(v)).sum::<i32>();
                    }
                }
            }
        }
        let ds: [&[f32]; Q8_ROWS] = std::array::from_fn(|i| &d[i][..nb]);
        let groups = n.div_ceil(Q8_TOKENS);
        for g in 0..groups {
            // The next tile's rows come from memory while this one is multiplied: a share of
            // them per token group.
            let next = i0 + Q8_ROWS;
            if next < rows.end {
                let part = g * c / groups..(g + 1) * c / groups;
                for r in next..(next + Q8_ROWS).min(rows.end) {
                    prefetch(k, w.row_bytes(r, part.clone()));
                }
            }
            let xg = &xp[g * Q8_TOKENS * c..][..Q8_TOKENS * c];
            let xdg = &xd[g * Q8_TOKENS * nb..][..Q8_TOKENS * nb];
            match token {
                #[cfg(all(target_arch = "x86_64", ember_vnni))]
                Some(t) => {
                    let ws: [&[i32]; Q8_ROWS] = std::array::from_fn(|i| &wsum[i][..nb]);
                    super::x86_64_vnni::tile(t, q, ds, ws, xg, xdg, &mut out)
                }
                _ => reference_tile(q, ds, xg, xdg, &mut out),
            }
            let t0 = g * Q8_TOKENS;
            for t in 0..Q8_TOKENS.min(n - t0) {
                let dst = &mut y[(t0 + t) * p + (i0 - rows.start)..][..ir];
                dst.iter_mut().zip(&out).for_each(|(o, v)| *o = v[t]);
            }
        }
    }
}

/// Asks for `bytes` in the L2 cache (x86-64 with the VNNI kernel; elsewhere nothing).
fn prefetch(k: &Kernels, bytes: &[u8]) {
    #[cfg(all(target_arch = "x86_64", ember_vnni))]
    if let super::Isa::Avx2(t) = k.isa {
        super::x86_64::prefetch_l2(t, bytes);
    }
    #[cfg(not(all(target_arch = "x86_64", ember_vnni)))]
    let _ = (k, bytes);
}

/// The microkernel's plain twin, from the same packed layout: `Σ_b (d · xd) · s` in block order.
fn reference_tile(
    q: [&[i8]; Q8_ROWS],
    d: [&[f32]; Q8_ROWS],
    xp: &[u8],
    xd: &[f32],
    out: &mut [[f32; Q8_TOKENS]; Q8_ROWS],
) {
    for (i, o) in out.iter_mut().enumerate() {
        for (t, o) in o.iter_mut().enumerate() {
            let mut acc = 0f32;
            for (b, qb) in q[i].chunks_exact(Q8_BLOCK).enumerate() {
                let mut s = 0i32;
                for (j, &wv) in qb.iter().enumerate() {
                    let at = ((b * 8 + j / 4) * Q8_TOKENS + t) * 4 + j % 4;
                    s += i32::from(wv) * (i32::from(xp[at]) - 128);
                }
                acc += (d[i][b] * xd[b * Q8_TOKENS + t]) * s as f32;
            }
            *o = acc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference;
    use half::f16;

    fn q8(rows: usize, cols: usize, seed: u32) -> (Vec<i8>, Vec<f16>) {
        let mut s = seed;
        let mut next = move || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            s >> 8
        };
        let q = (0..rows * cols)
            .map(|_| (next() % 255) as i32 - 127)
            .map(|v| v as i8)
            .collect();
        let d = (0..rows * cols.div_ceil(Q8_BLOCK))
            .map(|_| f16::from_f32(1e-3 + (next() % 1000) as f32 * 1e-5))
            .collect();
        (q, d)
    }

    /// Every available kernel set (and thread count) against `twin` (y (R) of one token's
    /// quantized activations), bit for bit, on pseudo-random inputs of N tokens.
    fn matches_bit_for_bit(w: Weights<'_>, n: usize, twin: impl Fn(&[i8], &[f32], &mut [f32])) {
        let (r, c) = (w.rows(), w.cols());
        let x: Vec<f32> = (0..n * c)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 0.01)
            .collect();
        let mut want = vec![0f32; n * r];
        let (mut xq, mut xd) = (vec![0i8; c], vec![0f32; c / Q8_BLOCK]);
        for t in 0..n {
            reference::quantize_q8(&x[t * c..][..c], &mut xq, &mut xd);
            twin(&xq, &xd, &mut want[t * r..][..r]);
        }
        if !available(&Kernels::detect(), c) {
            eprintln!("panel_q8: this CPU has no AVX-512 VNNI: only the reference twin ran");
        }
        let mut kernels = Kernels::available();
        kernels.push(Kernels::detect().with_threads(2));
        for k in kernels {
            let mut xp = vec![0u8; packed_bytes(n, c)];
            let mut xpd = vec![0f32; packed_scales(n, c)];
            quantize_pack(&k, &x, c, &mut xp, &mut xpd);
            let mut y = vec![f32::NAN; n * r];
            let mut scratch = vec![0f32; n * r];
            let ep = Epilogue::default();
            matmul(&k, w, (&xp, &xpd), n, &mut y, &mut scratch, ep);
            let same = y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{} threads={} r={r} c={c} n={n}",
                k.name(),
                k.threads()
            );
        }
    }

    /// Q8 weights against the per-token reference product, on shapes with row and token tails.
    #[test]
    fn matches_the_q8q8_reference_bit_for_bit() {
        for &(r, c, n) in &[(7, 64, 5), (48, 96, 17), (53, 256, 33), (4, 32, 1)] {
            let (q, d) = q8(r, c, (r * c + n) as u32);
            let w = Q8Matrix::new(&q, &d, r, c).unwrap();
            matches_bit_for_bit(w.into(), n, |xq, xd, y| {
                reference::matvec_q8q8_rows(w, xq, xd, y, 0)
            });
        }
    }

    /// The AVX2 expansion of Q4 rows against the scalar one.
    #[test]
    fn vector_q4_expansion_equals_the_scalar_one() {
        #[cfg(all(target_arch = "x86_64", ember_vnni))]
        if let Some(t) = super::super::x86_64_vnni::Vnni::detect() {
            // Every byte value, in rows of 1..=9 blocks (odd counts take the one-block tail).
            for blocks in 1..=9 {
                let q: Vec<u8> = (0..16 * blocks).map(|i| (i * 37 + blocks) as u8).collect();
                let (mut want, mut got) = (vec![0i8; 32 * blocks], vec![1i8; 32 * blocks]);
                expand_q4(&q, &mut want);
                super::super::x86_64_vnni::expand_q4(t, &q, &Q4_CODEBOOK, &mut got);
                assert_eq!(got, want, "{blocks} blocks");
            }
        }
    }

    /// The AVX2 expansion of Q6 rows against `Q6Matrix::row_levels`.
    #[test]
    fn vector_q6_expansion_equals_the_scalar_one() {
        #[cfg(all(target_arch = "x86_64", ember_vnni))]
        if let Some(t) = super::super::x86_64_vnni::Vnni::detect() {
            for nb in 1..=5 {
                // Bytes that reach every nibble and every 2-bit high in every position.
                let q: Vec<u8> = (0..24 * nb).map(|i| (i * 97 + 13 * nb) as u8).collect();
                let scales = vec![f16::ONE; nb];
                let w = Q6Matrix::new(&q, &scales, 1, 32 * nb).unwrap();
                let (mut want, mut got) = (vec![0i8; 32 * nb], vec![99i8; 32 * nb]);
                w.row_levels(0, &mut want);
                super::super::x86_64_vnni::expand_q6(t, &q, &mut got);
                assert_eq!(got, want, "{nb} blocks");
                assert!(want.iter().all(|l| (-32..=31).contains(l)));
            }
        }
    }

    /// Q4 weights against the per-token reference int4 × int8 product (what int4 decode
    /// computes).
    #[test]
    fn q4_matches_the_q4q8_reference_bit_for_bit() {
        use crate::kernels::q4_reference;
        for &(r, c, n) in &[(7, 64, 5), (48, 96, 17), (53, 256, 33), (4, 32, 1)] {
            let nb = c / Q8_BLOCK;
            let (q8q, _) = q8(r, nb * Q4_BLOCK_BYTES, (r * c + n + 1) as u32);
            let quants: Vec<u8> = q8q.iter().map(|&v| v as u8).collect();
            let (_, scales) = q8(r, c, (r + c) as u32);
            let w = Q4Matrix::new(&quants, &scales, r, c).unwrap();
            matches_bit_for_bit(w.into(), n, |xq, xd, y| {
                q4_reference::matvec_q4q8_rows(w, xq, xd, y, 0)
            });
        }
    }

    /// Q6 weights (any byte pattern: every 6-bit code is a level) against the per-token
    /// reference 6-bit × int8 product (what the head's decode computes).
    #[test]
    fn q6_matches_the_q6q8_reference_bit_for_bit() {
        use crate::kernels::q6_reference;
        use emberlm_formats::quant::Q6_BLOCK_BYTES;
        for &(r, c, n) in &[(7, 64, 5), (48, 96, 17), (53, 256, 33), (4, 32, 1)] {
            let nb = c / Q8_BLOCK;
            let (q8q, _) = q8(r, nb * Q6_BLOCK_BYTES, (r * c + n + 2) as u32);
            let quants: Vec<u8> = q8q.iter().map(|&v| v as u8).collect();
            let (_, scales) = q8(r, c, (r + c + 1) as u32);
            let w = Q6Matrix::new(&quants, &scales, r, c).unwrap();
            matches_bit_for_bit(w.into(), n, |xq, xd, y| {
                q6_reference::matvec_q6q8_rows(w, xq, xd, y, 0)
            });
        }
    }
}
