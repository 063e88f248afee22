#![allow(unsafe_code)]
//! AVX2 + FMA + F16C multi-vector decode kernels (see [`super::multi`]) for f32, f16, int8 × int8
//! and int4 × int8 weights: each weight vector is loaded (for f16 converted, for int8 transposed,
//! for int4 looked up) once for a group of activation vectors. Every (row, vector) output has the
//! bits of the single-vector kernel in [`super::x86_64`] or [`super::q4_x86_64`]. For f32, f16
//! and int8 those depend on where a row falls in the call (rows i, Q+i, 2Q+i, 3Q+i of the first
//! 4Q are reduced together, the P % 4 last rows alone), so the multi kernels follow the same
//! split: the same call on the same row range gives the same bits. Entry points take the
//! [`Avx2`] token, which only its `detect` creates. Letters as in [`super::multi`].

use super::Q8Matrix;
use super::q4_matrix::Q4Matrix;
use super::q4_x86_64::{
    block_weights as q4_block_weights, codebook as q4_codebook, hsum as q4_hsum,
};
use super::x86_64::{
    Avx2, block_dot_q8, dot_f32_avx2, dot_f32_f16_avx2, f16_to_f32, hsum, hsum4, to_array4,
};
use core::arch::x86_64::*;
use emberlm_formats::quant::{Q4_BLOCK, Q4_BLOCK_BYTES, Q4_CODEBOOK, Q8_BLOCK, q4_nibble};
use half::f16;

/// Vectors per group of the f32 / f16 kernels (4 rows × 2 vectors of 8-lane accumulators, with
/// 16 ymm registers).
const GROUP: usize = 2;

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

// ------------------------------------------------------------------ int8 x int8

/// Vectors per group of the int8 kernel (one row's 4 accumulators, 4 + 4 weight registers).
const Q_GROUP: usize = 4;

pub(super) fn multi_q8q8(
    _t: Avx2,
    w: Q8Matrix<'_>,
    (xq, xd): (&[i8], &[f32]),
    b: usize,
    y: &mut [f32],
    row_start: usize,
    scratch: &mut [u8],
) {
    let (c, nb) = (w.cols(), w.blocks_per_row());
    let p = y.len() / b;
    assert!(
        xq.len() == b * c
            && xd.len() == b * nb
            && y.len() == b * p
            && row_start + p <= w.rows()
            && scratch.len() >= b * c,
        "avx2 multi_q8q8: lengths"
    );
    let (q, d) = (
        &w.quants()[row_start * c..(row_start + p) * c],
        &w.scales()[row_start * nb..(row_start + p) * nb],
    );
    let xt = &mut scratch[..b * c];
    // SAFETY: the token proves AVX2 + FMA + F16C; q, d hold P rows, xq / xt are (B, C), xd
    // (B, NB), y (B, P).
    unsafe {
        prepare_x(xq, xt, c);
        multi_q8q8_avx2(q, d, (xq, xd, &*xt), b, c, y);
    }
}

/// The four blocks of a quad transposed as 4 × 4 dwords within each 128-bit half: vector i
/// holds dword i of blocks 0..4 in its low half and dword 4 + i of blocks 0..4 in its high half.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn transpose(m: [__m256i; 4]) -> [__m256i; 4] {
    let t0 = _mm256_unpacklo_epi32(m[0], m[1]);
    let t1 = _mm256_unpackhi_epi32(m[0], m[1]);
    let t2 = _mm256_unpacklo_epi32(m[2], m[3]);
    let t3 = _mm256_unpackhi_epi32(m[2], m[3]);
    [
        _mm256_unpacklo_epi64(t0, t2),
        _mm256_unpackhi_epi64(t0, t2),
        _mm256_unpacklo_epi64(t1, t3),
        _mm256_unpackhi_epi64(t1, t3),
    ]
}

/// xt ← each vector's whole quads (128 columns) [`transpose`]d; the columns past the last whole
/// quad are left alone.
///
/// # Safety
/// The CPU must have AVX2; xq and xt are (B, C).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prepare_x(xq: &[i8], xt: &mut [u8], c: usize) {
    let quads = c / (4 * Q8_BLOCK);
    for (xv, tv) in xq.chunks_exact(c.max(1)).zip(xt.chunks_exact_mut(c.max(1))) {
        for g in 0..quads {
            // SAFETY: quad g is columns 128g .. 128g + 128 of both vectors (C long).
            unsafe {
                let m = std::array::from_fn(|k| {
                    _mm256_loadu_si256(xv.as_ptr().add(128 * g + 32 * k).cast())
                });
                for (i, v) in transpose(m).into_iter().enumerate() {
                    _mm256_storeu_si256(tv.as_mut_ptr().add(128 * g + 32 * i).cast(), v);
                }
            }
        }
    }
}

/// Y (B, P) for the P rows of q (C quants each) and d (NB scales each), each vector as the
/// single kernel (`matvec_q8q8_rows_avx2`) computes it: the first 4Q rows in groups i, Q+i, 2Q+i,
/// 3Q+i whose accumulators are reduced together by `hsum4`, the P % 4 last rows by `hsum`, then
/// each row's blocks past the whole quads one at a time and a short last block in scalar code.
///
/// The single kernel packs, for each quad, the exact half-block sums
/// `[a0, a1, a2, a3, b0, b1, b2, b3]` by two rounds of `vphaddd` after `maddubs` / `madd`. Here
/// the weights of a quad are transposed once per row and vector group and the activations once
/// per call ([`prepare_x`]), so the four `madd` results of a vector add lane by lane into those
/// same sums: each vector costs four sign / `maddubs` / `madd` triples and three adds per quad,
/// the weights' loads, transposition and absolute values are shared.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; q.len() = P·C, d.len() = P·NB, xq and xt (B, C) with
/// xt from [`prepare_x`], xd (B, NB), y (B, P).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn multi_q8q8_avx2(
    q: &[i8],
    d: &[f16],
    x: (&[i8], &[f32], &[u8]),
    b: usize,
    c: usize,
    y: &mut [f32],
) {
    let p = y.len() / b;
    let nb = c.div_ceil(Q8_BLOCK);
    let qn = p / 4;
    // Row r's accumulators for vectors v .. v + g (g <= Q_GROUP) into acc[..g].
    let pass = |r: usize, v: usize, g: usize, acc: &mut [__m256; Q_GROUP]| {
        let row = (&q[r * c..(r + 1) * c], &d[r * nb..(r + 1) * nb]);
        // SAFETY: the caller's guarantees; r < P and vectors v .. v + g <= B.
        unsafe {
            match g {
                4 => row_q8::<4>(row, x, c, v, acc),
                3 => row_q8::<3>(row, x, c, v, acc),
                2 => row_q8::<2>(row, x, c, v, acc),
                _ => row_q8::<1>(row, x, c, v, acc),
            }
        }
    };
    for i in 0..qn {
        let rows = [i, qn + i, 2 * qn + i, 3 * qn + i];
        let mut v = 0;
        while v < b {
            let g = (b - v).min(Q_GROUP);
            let mut acc = [[_mm256_setzero_ps(); Q_GROUP]; 4];
            for (k, &r) in rows.iter().enumerate() {
                pass(r, v, g, &mut acc[k]);
            }
            for j in 0..g {
                let s = to_array4(hsum4(acc[0][j], acc[1][j], acc[2][j], acc[3][j]));
                for (k, &r) in rows.iter().enumerate() {
                    y[(v + j) * p + r] = s[k] + rest_q8(q, d, x, c, r, v + j);
                }
            }
            v += g;
        }
    }
    for r in 4 * qn..p {
        let mut v = 0;
        while v < b {
            let g = (b - v).min(Q_GROUP);
            let mut acc = [_mm256_setzero_ps(); Q_GROUP];
            pass(r, v, g, &mut acc);
            for (j, a) in acc.iter().enumerate().take(g) {
                y[(v + j) * p + r] = hsum(*a) + rest_q8(q, d, x, c, r, v + j);
            }
            v += g;
        }
    }
}

/// One row's whole quads against vectors v0 .. v0 + G: acc[k] (the single kernel's accumulator
/// for vector v0 + k).
///
/// # Safety
/// As [`multi_q8q8_avx2`]; v0 + G <= B.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_q8<const G: usize>(
    (qr, dr): (&[i8], &[f16]),
    (_, xd, xt): (&[i8], &[f32], &[u8]),
    c: usize,
    v0: usize,
    acc: &mut [__m256; Q_GROUP],
) {
    let nb = c.div_ceil(Q8_BLOCK);
    let quads = c / (4 * Q8_BLOCK);
    let ones = _mm256_set1_epi16(1);
    for g in 0..quads {
        // SAFETY: quad g is whole: bytes 128g .. 128g + 128 of the row and of each vector's
        // xt, scales 4g .. 4g + 4 of the row's and of each vector's NB.
        unsafe {
            let wp = qr.as_ptr().add(128 * g);
            let wt = transpose(std::array::from_fn(|k| {
                _mm256_loadu_si256(wp.add(32 * k).cast())
            }));
            let aw = wt.map(|w| _mm256_sign_epi8(w, w));
            let dh = _mm_cvtph_ps(_mm_loadl_epi64(dr.as_ptr().add(4 * g).cast()));
            for (k, a) in acc.iter_mut().enumerate().take(G) {
                let v = v0 + k;
                let xp = xt.as_ptr().add(v * c + 128 * g);
                let m: [__m256i; 4] = std::array::from_fn(|i| {
                    let xv = _mm256_loadu_si256(xp.add(32 * i).cast());
                    let p16 = _mm256_maddubs_epi16(aw[i], _mm256_sign_epi8(xv, wt[i]));
                    _mm256_madd_epi16(p16, ones)
                });
                let s =
                    _mm256_add_epi32(_mm256_add_epi32(m[0], m[1]), _mm256_add_epi32(m[2], m[3]));
                let sc = _mm_mul_ps(dh, _mm_loadu_ps(xd.as_ptr().add(v * nb + 4 * g)));
                *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set_m128(sc, sc), *a);
            }
        }
    }
}

/// Row r's part past its whole quads for vector v, as the single kernel's `rest`: full blocks
/// one at a time (8 lanes converted to f32, scaled), reduced by `hsum`, then a short last block
/// in scalar code.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn rest_q8(
    q: &[i8],
    d: &[f16],
    (xq, xd, _): (&[i8], &[f32], &[u8]),
    c: usize,
    r: usize,
    v: usize,
) -> f32 {
    let nb = c.div_ceil(Q8_BLOCK);
    let full = c / Q8_BLOCK;
    let quads = full / 4;
    let (row, dr) = (&q[r * c..(r + 1) * c], &d[r * nb..(r + 1) * nb]);
    let (xv, xdv) = (&xq[v * c..(v + 1) * c], &xd[v * nb..(v + 1) * nb]);
    let mut acc = _mm256_setzero_ps();
    for blk in 4 * quads..full {
        let j = blk * Q8_BLOCK;
        // SAFETY: block blk is full: bytes j .. j + 32 of the row and of the vector.
        let s = unsafe {
            block_dot_q8(
                row.as_ptr().add(j),
                _mm256_loadu_si256(xv.as_ptr().add(j).cast()),
            )
        };
        acc = _mm256_fmadd_ps(s, _mm256_set1_ps(f16_to_f32(dr[blk]) * xdv[blk]), acc);
    }
    let mut t = hsum(acc);
    if full < nb {
        let j0 = full * Q8_BLOCK;
        let s: i32 = (j0..c).map(|j| i32::from(row[j]) * i32::from(xv[j])).sum();
        t += (f16_to_f32(dr[full]) * xdv[full]) * s as f32;
    }
    t
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
