#![allow(unsafe_code)]
//! x86-64 AVX-512 decode matrix-vector kernels (F, BW, VL, VNNI; with the AVX2 + FMA + F16C set
//! for everything else): f32, f16 and int8 × int8. Entry points take an [`Avx512`] token, which
//! only [`Avx512::detect`] creates, so calling the `#[target_feature]` bodies is sound. Letters as
//! in [`super`].
//!
//! As in the AVX2 kernels, 4 rows run together: rows i, Q+i, 2Q+i, 3Q+i of the 4Q rows asked
//! for (four memory streams, each through a contiguous quarter), the rest one at a time. Every
//! row goes through the same instruction sequence either way, so its bits do not depend on how
//! the rows were grouped or split over threads. Column tails use masked loads (masked-off lanes
//! read nothing and are zero), so there is no scalar tail code. Each row keeps 16-lane
//! accumulators and is reduced once, at its end.
//!
//! int8 × int8: `vpdpbusd` multiplies unsigned by signed bytes, so the weights go in as
//! `w + 128` (a sign-bit flip) against the signed activations x, which adds `128 · Σ x` per
//! block: a constant of the token, subtracted once per block for every row. 16 blocks (512
//! columns) at a time give 8 vectors of 16 i32 partial sums (8 per block); a tree of lane
//! permutations adds them into one vector holding the 16 blocks' exact integer sums, which is
//! multiplied by the 16 blocks' scales (weight scale · activation scale, in f32 as the reference)
//! and added to the row's accumulator.

use super::Q8Matrix;
use core::arch::x86_64::*;
use emberlm_formats::quant::Q8_BLOCK;
use half::f16;

/// Proof that this CPU has AVX2, FMA, F16C and AVX-512 F, BW, VL and VNNI.
#[derive(Clone, Copy, Debug)]
pub(super) struct Avx512(());

impl Avx512 {
    /// `Some` when the CPU supports every feature the kernels here use (checked at run time).
    pub(super) fn detect() -> Option<Self> {
        let ok = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni");
        ok.then_some(Avx512(()))
    }
}

/// Blocks of 32 columns per int8 step (one 16-lane vector of block sums).
const GROUP_BLOCKS: usize = 16;

/// The lowest `n` bits set (`n` ≤ 16).
#[inline]
fn mask16(n: usize) -> __mmask16 {
    if n >= 16 { !0 } else { (1u16 << n) - 1 }
}

/// The lowest `n` bits set (`n` ≤ 64).
#[inline]
fn mask64(n: usize) -> __mmask64 {
    if n >= 64 { !0 } else { (1u64 << n) - 1 }
}

// ------------------------------------------------------------------ f32 and f16

pub(super) fn matvec_f32_rows(_t: Avx512, w: &[f32], x: &[f32], y: &mut [f32], row_start: usize) {
    let c = x.len();
    assert!(
        (row_start + y.len()) * c <= w.len(),
        "avx512 matvec_f32_rows: rows"
    );
    // SAFETY: the token proves the features; the rows read are inside `w` (checked above).
    unsafe { matvec_rows_512::<f32>(&w[row_start * c..], x, y) }
}

pub(super) fn matvec_f16_rows(_t: Avx512, w: &[f16], x: &[f32], y: &mut [f32], row_start: usize) {
    let c = x.len();
    assert!(
        (row_start + y.len()) * c <= w.len(),
        "avx512 matvec_f16_rows: rows"
    );
    // SAFETY: the token proves the features; the rows read are inside `w` (checked above).
    unsafe { matvec_rows_512::<f16>(&w[row_start * c..], x, y) }
}

/// A weight element type whose 16 consecutive elements load as 16 f32 lanes.
trait Lanes: Copy {
    /// Elements `j .. j + n` (n ≤ 16) at `p + j` as f32, zero past n.
    ///
    /// # Safety
    /// `p + j .. p + j + n` must be readable; the CPU must have AVX-512 F/BW and F16C.
    unsafe fn load16(p: *const Self, j: usize, n: usize) -> __m512;
}

impl Lanes for f32 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    unsafe fn load16(p: *const f32, j: usize, n: usize) -> __m512 {
        // SAFETY: the caller guarantees n readable elements at p + j; masked-off lanes read nothing.
        unsafe {
            if n >= 16 {
                _mm512_loadu_ps(p.add(j))
            } else {
                _mm512_maskz_loadu_ps(mask16(n), p.add(j))
            }
        }
    }
}

impl Lanes for f16 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    unsafe fn load16(p: *const f16, j: usize, n: usize) -> __m512 {
        // SAFETY: the caller guarantees n readable halves at p + j; masked-off lanes read nothing.
        // A zero half converts to 0.0.
        unsafe {
            let h = if n >= 16 {
                _mm256_loadu_si256(p.add(j).cast())
            } else {
                _mm256_maskz_loadu_epi16(mask16(n), p.add(j).cast())
            };
            _mm512_cvtph_ps(h)
        }
    }
}

/// y[r] = row r of W · x for the y.len() rows at the start of `w` (rows of C = x.len()).
///
/// # Safety
/// The CPU must have the [`Avx512`] features and `w.len() >= y.len() · C`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn matvec_rows_512<T: Lanes>(w: &[T], x: &[f32], y: &mut [f32]) {
    let c = x.len();
    let n = y.len();
    let q = n / 4;
    // Two accumulators per row (32 columns a step) keep 8 independent FMA chains in flight.
    let row4 = |rows: [usize; 4], y: &mut [f32]| {
        let mut acc = [[_mm512_setzero_ps(); 2]; 4];
        let mut j = 0;
        while j < c {
            // Columns j .. j + m0 and j + 16 .. j + 16 + m1 (m1 = 0: none).
            let m0 = (c - j).min(16);
            let m1 = (c - j).saturating_sub(16).min(16);
            // SAFETY: those columns are inside x and inside each row of w (the caller
            // guarantees the rows exist).
            unsafe {
                let x0 = f32::load16(x.as_ptr(), j, m0);
                let x1 = if m1 > 0 {
                    f32::load16(x.as_ptr(), j + 16, m1)
                } else {
                    _mm512_setzero_ps()
                };
                for (a, &r) in acc.iter_mut().zip(&rows) {
                    let p = w.as_ptr().add(r * c);
                    a[0] = _mm512_fmadd_ps(T::load16(p, j, m0), x0, a[0]);
                    if m1 > 0 {
                        a[1] = _mm512_fmadd_ps(T::load16(p, j + 16, m1), x1, a[1]);
                    }
                }
            }
            j += 32;
        }
        for (k, &r) in rows.iter().enumerate() {
            y[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[k][0], acc[k][1]));
        }
    };
    for i in 0..q {
        row4([i, q + i, 2 * q + i, 3 * q + i], y);
    }
    // The rest alone, with the same per-row sequence (the other three slots repeat the row).
    for r in 4 * q..n {
        row4([r; 4], y);
    }
}

// ------------------------------------------------------------------ int8 x int8

pub(super) fn matvec_q8q8_rows(
    _t: Avx512,
    w: Q8Matrix<'_>,
    xq: &[i8],
    xd: &[f32],
    y: &mut [f32],
    row_start: usize,
) {
    let (c, nb) = (w.cols(), w.blocks_per_row());
    assert!(
        xq.len() == c && xd.len() == nb && row_start + y.len() <= w.rows(),
        "avx512 matvec_q8q8_rows: lengths"
    );
    let (q, d) = (
        &w.quants()[row_start * c..(row_start + y.len()) * c],
        &w.scales()[row_start * nb..(row_start + y.len()) * nb],
    );
    // SAFETY: the token proves the features; q and d hold y.len() rows (checked above).
    unsafe { matvec_q8q8_rows_512(q, d, xq, xd, y) }
}

/// Adds lanes pairwise: lanes 0..8 of the result are a's lanes (2i) + (2i + 1), lanes 8..16 the
/// same of b's. Applied to vectors holding m consecutive partial sums per block, the result holds
/// m / 2 per block, blocks in order (a's, then b's).
#[inline]
#[target_feature(enable = "avx512f")]
fn pair_sums(a: __m512i, b: __m512i) -> __m512i {
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    _mm512_add_epi32(
        _mm512_permutex2var_epi32(a, even, b),
        _mm512_permutex2var_epi32(a, odd, b),
    )
}

/// The 16 block sums of one group: `part(p)` gives the 16 i32 partial sums of blocks 2p, 2p + 1
/// (8 lanes each), p < 8; lane b of the result is block b's total (exact).
#[inline]
#[target_feature(enable = "avx512f")]
fn block_sums(mut part: impl FnMut(usize) -> __m512i) -> __m512i {
    let w0 = pair_sums(part(0), part(1));
    let w1 = pair_sums(part(2), part(3));
    let x0 = pair_sums(w0, w1);
    let w2 = pair_sums(part(4), part(5));
    let w3 = pair_sums(part(6), part(7));
    let x1 = pair_sums(w2, w3);
    pair_sums(x0, x1)
}

/// y[r] = Σ_b (d[r, b] · xd[b]) · Σ_{j in block b} q[r, j] · xq[j] for the y.len() rows of q
/// (C = xq.len() columns) and d (NB = xd.len() scales per row).
///
/// # Safety
/// The CPU must have the [`Avx512`] features; q.len() = y.len() · C, d.len() = y.len() · NB.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn matvec_q8q8_rows_512(q: &[i8], d: &[f16], xq: &[i8], xd: &[f32], y: &mut [f32]) {
    let (c, nb) = (xq.len(), xd.len());
    let n = y.len();
    let groups = nb.div_ceil(GROUP_BLOCKS);
    let flip = _mm512_set1_epi8(-128);
    // Columns j .. j + 64 of a row (or of x) at p, zero past C.
    let load64 = |p: *const i8, j: usize| -> __m512i {
        if j >= c {
            return _mm512_setzero_si512();
        }
        // SAFETY: columns j .. min(j + 64, C) are inside the row (or x) at p; the mask reads
        // no further.
        unsafe {
            if j + 64 <= c {
                _mm512_loadu_si512(p.add(j).cast())
            } else {
                _mm512_maskz_loadu_epi8(mask64(c - j), p.add(j).cast())
            }
        }
    };
    let row4 = |rows: [usize; 4], y: &mut [f32]| {
        let mut acc = [_mm512_setzero_ps(); 4];
        for g in 0..groups {
            let (b0, j0) = (g * GROUP_BLOCKS, g * GROUP_BLOCKS * Q8_BLOCK);
            let m = mask16(nb - b0);
            // 128 · Σ x of each block: the flipped weights' excess, the same for every row.
            let corr = block_sums(|p| {
                let xv = load64(xq.as_ptr(), j0 + 64 * p);
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), flip, xv)
            });
            // SAFETY: blocks b0 .. b0 + popcount(m) are inside xd; masked-off lanes read nothing.
            let xs = unsafe { _mm512_maskz_loadu_ps(m, xd.as_ptr().add(b0)) };
            for (k, &r) in rows.iter().enumerate() {
                let wr = q[r * c..].as_ptr();
                let s = block_sums(|p| {
                    let j = j0 + 64 * p;
                    let wv = _mm512_xor_si512(load64(wr, j), flip);
                    // Past C both are zero: 128 · 0 adds nothing.
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, load64(xq.as_ptr(), j))
                });
                let s = _mm512_sub_epi32(s, corr);
                // SAFETY: the row's scales b0 .. b0 + popcount(m) are inside d (row r < n, b < NB).
                let ds = unsafe {
                    _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                        m,
                        d.as_ptr().add(r * nb + b0).cast(),
                    ))
                };
                let sc = _mm512_mul_ps(ds, xs);
                acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, acc[k]);
            }
        }
        for (k, &r) in rows.iter().enumerate() {
            y[r] = _mm512_reduce_add_ps(acc[k]);
        }
    };
    let qn = n / 4;
    for i in 0..qn {
        row4([i, qn + i, 2 * qn + i, 3 * qn + i], y);
    }
    for r in 4 * qn..n {
        row4([r; 4], y);
    }
}
