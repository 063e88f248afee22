#![allow(unsafe_code)]
//! AVX2 + FMA + F16C multi-vector decode kernels (see [`super::multi`]) for f32, f16 and int4 ×
//! int8 weights: each weight vector is loaded (for f16 converted, for int4 looked up) once for a
//! group of activation vectors. Every (row, vector) output has the bits of the single-vector
//! kernel in [`super::x86_64`] or [`super::q4_x86_64`]. For f32 and f16 those depend on where a
//! row falls in the call (rows i, Q+i, 2Q+i, 3Q+i of the first 4Q are reduced together, the
//! P % 4 last rows alone), so the multi kernels follow the same split: the same call on the same
//! row range gives the same bits. Entry points take the [`Avx2`] token, which only its `detect`
//! creates. Letters as in [`super::multi`].
//!
//! int8 × int8 has no AVX2 multi kernel: a first one (weights transposed as in the AVX-512
//! kernel, one row finished before the next) ran at 0.5–0.97× of looping the single kernel
//! (`EMBER_KERNELS=avx2 ember bench --batch 1,2,4,8`, 3 alternating pairs), so AVX2 loops it.

use super::q4_matrix::Q4Matrix;
use super::q4_x86_64::{
    block_weights as q4_block_weights, codebook as q4_codebook, hsum as q4_hsum,
};
use super::x86_64::{Avx2, dot_f32_avx2, dot_f32_f16_avx2, f16_to_f32, hsum4, to_array4};
use core::arch::x86_64::*;
use emberlm_formats::quant::{Q4_BLOCK, Q4_BLOCK_BYTES, Q4_CODEBOOK, q4_nibble};
use half::f16;

/// Vectors per group of the f32 / f16 kernels (4 rows × 2 vectors of 8-lane accumulators, with
/// 16 ymm registers).
const GROUP: usize = 2;

/// Vectors per group of the int4 kernel (one row: 2 accumulators per vector).
const Q_GROUP: usize = 4;

/// A weight element type whose 8 consecutive elements load as 8 f32 lanes.
trait Lanes8: Copy {
    /// Elements `p .. p + 8` as f32.
    ///
    /// # Safety
    /// 8 elements at `p` must be readable; the CPU must have AVX2 and F16C.
    unsafe fn load8(p: *const Self) -> __m256;
    /// One element as f32 (exact; f16 through F16C, as the single kernel's tails).
    ///
    /// # Safety
    /// The CPU must have AVX2 and F16C.
    unsafe fn to_f32(self) -> f32;
}

impl Lanes8 for f32 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f32) -> __m256 {
        // SAFETY: the caller guarantees 8 readable f32; loadu has no alignment requirement.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn to_f32(self) -> f32 {
        self
    }
}

impl Lanes8 for f16 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f16) -> __m256 {
        // SAFETY: the caller guarantees 8 readable halves (16 bytes).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn to_f32(self) -> f32 {
        f16_to_f32(self)
    }
}

pub(super) fn multi_f32(_t: Avx2, w: &[f32], x: &[f32], b: usize, y: &mut [f32], row_start: usize) {
    let (c, p) = (x.len() / b, y.len() / b);
    assert!(
        x.len() == b * c && (row_start + p) * c <= w.len(),
        "avx2 multi_f32: lengths"
    );
    // SAFETY: the token proves AVX2 + FMA + F16C; the rows and vectors are inside the slices.
    unsafe {
        multi_avx2::<f32>(&w[row_start * c..], x, b, c, y, |x, row| {
            dot_f32_avx2(row, x)
        });
    }
}

pub(super) fn multi_f16(_t: Avx2, w: &[f16], x: &[f32], b: usize, y: &mut [f32], row_start: usize) {
    let (c, p) = (x.len() / b, y.len() / b);
    assert!(
        x.len() == b * c && (row_start + p) * c <= w.len(),
        "avx2 multi_f16: lengths"
    );
    // SAFETY: as in `multi_f32`.
    unsafe {
        multi_avx2::<f16>(&w[row_start * c..], x, b, c, y, |x, row| {
            dot_f32_f16_avx2(x, row)
        });
    }
}

/// Y (B, P) for the P rows at the start of `w`, as the single kernel computes each vector: the
/// first 4Q rows in groups i, Q+i, 2Q+i, 3Q+i (vectors two at a time), the rest by `dot`.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `w` holds P rows of C, x is (B, C), y is (B, P).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn multi_avx2<T: Lanes8>(
    w: &[T],
    x: &[f32],
    b: usize,
    c: usize,
    y: &mut [f32],
    dot: impl Fn(&[f32], &[T]) -> f32,
) {
    let p = y.len() / b;
    let q = p / 4;
    for i in 0..q {
        let rows = [i, q + i, 2 * q + i, 3 * q + i];
        let mut v = 0;
        while v < b {
            let g = (b - v).min(GROUP);
            // SAFETY: the caller's guarantees; rows < 4Q <= P, vectors v .. v + g <= B.
            unsafe {
                if g == 2 {
                    quad_rows::<T, 2>(w, x, (c, p), y, rows, v);
                } else {
                    quad_rows::<T, 1>(w, x, (c, p), y, rows, v);
                }
            }
            v += g;
        }
    }
    for r in 4 * q..p {
        let row = &w[r * c..(r + 1) * c];
        for v in 0..b {
            y[v * p + r] = dot(&x[v * c..(v + 1) * c], row);
        }
    }
}

/// Four rows against vectors v0 .. v0 + G: one 8-lane accumulator per (row, vector) over the
/// first C - C % 8 columns, `hsum4` over the four rows, then each row's scalar tail in order.
///
/// # Safety
/// As [`multi_avx2`]; every row < P and v0 + G <= B.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quad_rows<T: Lanes8, const G: usize>(
    w: &[T],
    x: &[f32],
    (c, p): (usize, usize),
    y: &mut [f32],
    rows: [usize; 4],
    v0: usize,
) {
    let c8 = c - c % 8;
    let mut acc = [[_mm256_setzero_ps(); 4]; G];
    let mut j = 0;
    while j < c8 {
        // SAFETY: j + 8 <= c8 <= C: columns j .. j + 8 are inside every row and vector.
        unsafe {
            let wv: [__m256; 4] =
                std::array::from_fn(|k| T::load8(w.as_ptr().add(rows[k] * c + j)));
            for (g, ag) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.as_ptr().add((v0 + g) * c + j));
                for (a, wk) in ag.iter_mut().zip(wv) {
                    *a = _mm256_fmadd_ps(wk, xv, *a);
                }
            }
        }
        j += 8;
    }
    for (g, ag) in acc.iter().enumerate() {
        let v = v0 + g;
        let xv = &x[v * c..(v + 1) * c];
        let s = to_array4(hsum4(ag[0], ag[1], ag[2], ag[3]));
        for (k, mut s) in s.into_iter().enumerate() {
            let row = &w[rows[k] * c..(rows[k] + 1) * c];
            for jj in c8..c {
                // SAFETY: the caller's guarantee (the CPU has AVX2 and F16C).
                s += unsafe { row[jj].to_f32() } * xv[jj];
            }
            y[v * p + rows[k]] = s;
        }
    }
}

// ------------------------------------------------------------------ int4 x int8

pub(super) fn multi_q4q8(
    _t: Avx2,
    w: Q4Matrix<'_>,
    (xq, xd): (&[i8], &[f32]),
    b: usize,
    y: &mut [f32],
    row_start: usize,
) {
    let (c, nb) = (w.cols(), w.blocks_per_row());
    let p = y.len() / b;
    assert!(
        xq.len() == b * c && xd.len() == b * nb && y.len() == b * p && row_start + p <= w.rows(),
        "avx2 multi_q4q8: lengths"
    );
    let rb = nb * Q4_BLOCK_BYTES;
    let (q, d) = (
        &w.quants()[row_start * rb..(row_start + p) * rb],
        &w.scales()[row_start * nb..(row_start + p) * nb],
    );
    // SAFETY: the token proves AVX2 + FMA + F16C; q, d hold P rows, xq is (B, C), xd (B, NB),
    // y (B, P).
    unsafe { multi_q4q8_avx2(q, d, (xq, xd), b, c, y) }
}

/// Y (B, P) for the P rows of an int4 matrix (q: NB · 16 bytes a row, d: NB scales a row), each
/// vector as the single kernel (`q4_x86_64::matvec_q4q8_rows_avx2`) computes it: blocks in
/// pairs into two accumulators (even, odd), an odd last full block into the first, `hsum` of
/// their sum, a short last block in scalar code. A block's codebook lookup, its absolute values
/// and its f16 scale are computed once for a group of vectors.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; q.len() = P·NB·16, d.len() = P·NB, xq (B, C), xd
/// (B, NB), y (B, P).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn multi_q4q8_avx2(
    q: &[u8],
    d: &[f16],
    x: (&[i8], &[f32]),
    b: usize,
    c: usize,
    y: &mut [f32],
) {
    let p = y.len() / b;
    let nb = c.div_ceil(Q4_BLOCK);
    let rb = nb * Q4_BLOCK_BYTES;
    for r in 0..p {
        let row = (&q[r * rb..(r + 1) * rb], &d[r * nb..(r + 1) * nb]);
        let mut v = 0;
        while v < b {
            let g = (b - v).min(Q_GROUP);
            // SAFETY: the caller's guarantees; vectors v .. v + g <= B.
            unsafe {
                match g {
                    4 => row_q4::<4>(row, x, (c, p), y, r, v),
                    3 => row_q4::<3>(row, x, (c, p), y, r, v),
                    2 => row_q4::<2>(row, x, (c, p), y, r, v),
                    _ => row_q4::<1>(row, x, (c, p), y, r, v),
                }
            }
            v += g;
        }
    }
}

/// One int4 row against vectors v0 .. v0 + G (see [`multi_q4q8_avx2`]).
///
/// # Safety
/// As [`multi_q4q8_avx2`]; r < P, v0 + G <= B.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_q4<const G: usize>(
    (qr, dr): (&[u8], &[f16]),
    (xq, xd): (&[i8], &[f32]),
    (c, p): (usize, usize),
    y: &mut [f32],
    r: usize,
    v0: usize,
) {
    let nb = c.div_ceil(Q4_BLOCK);
    let full = c / Q4_BLOCK;
    let table = q4_codebook();
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 2]; G];
    // Block b against each vector into accumulator `slot` (0: even blocks, 1: odd).
    let mut block = |b: usize, slot: usize| {
        // SAFETY: b < full <= NB: the block's 16 bytes lie in the row and its 32 activations in
        // each vector (C >= full · 32).
        unsafe {
            let wv = q4_block_weights(qr.as_ptr().add(b * Q4_BLOCK_BYTES), table);
            let aw = _mm256_sign_epi8(wv, wv);
            let dw = f16_to_f32(dr[b]);
            for (k, a) in acc.iter_mut().enumerate() {
                let v = v0 + k;
                let xv = _mm256_loadu_si256(xq.as_ptr().add(v * c + b * Q4_BLOCK).cast());
                let p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, wv));
                let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                a[slot] = _mm256_fmadd_ps(s, _mm256_set1_ps(dw * xd[v * nb + b]), a[slot]);
            }
        }
    };
    let mut b = 0;
    while b + 2 <= full {
        block(b, 0);
        block(b + 1, 1);
        b += 2;
    }
    if b < full {
        block(b, 0);
    }
    for (k, a) in acc.iter().enumerate() {
        let v = v0 + k;
        let mut t = q4_hsum(_mm256_add_ps(a[0], a[1]));
        if full < nb {
            let j0 = full * Q4_BLOCK;
            let blk = &qr[full * Q4_BLOCK_BYTES..][..Q4_BLOCK_BYTES];
            let s: i32 = (j0..c)
                .map(|j| {
                    i32::from(Q4_CODEBOOK[q4_nibble(blk, j - j0) as usize])
                        * i32::from(xq[v * c + j])
                })
                .sum();
            t += (f16_to_f32(dr[full]) * xd[v * nb + full]) * s as f32;
        }
        y[v * p + r] = t;
    }
}
