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
//! int8 × int8 ([`matvec_q8q8_rows_vnni`]) does its integer work on 512-bit vectors, 8 blocks at
//! a time, and its f32 work on 256-bit ones, 4 blocks at a time (the order the batched kernels
//! reproduce bit for bit). On Zen 5 (2026-12-05) that raised the kernels bench's compute
//! ceiling from 61–64 to 96–102 GB/s, against a 43 GB/s one-core read probe (`cargo bench -p
//! emberlm-benches --bench kernels -- --table --ceiling`, two alternating runs). On the Intel
//! host it was first written on, an all-512-bit variant that reduced 16 blocks at a time reached
//! only 0.8× of the 256-bit kernel.

use super::Q8Matrix;
use super::q4_matrix::Q4Matrix;
use super::x86_64::{hsum4, to_array4};
use core::arch::x86_64::*;
use emberlm_formats::quant::{Q4_BLOCK, Q4_BLOCK_BYTES, Q4_CODEBOOK, Q8_BLOCK, q4_nibble};
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
pub(super) trait Lanes: Copy {
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
    // One row's step over columns j .. j + 32: two accumulators per row keep 8 independent FMA
    // chains in flight over 4 rows. x0, x1: x's columns j .. j + m0, j + 16 .. j + 16 + m1.
    let step = |r: usize, j: usize, (m0, m1): (usize, usize), (x0, x1), a: &mut [__m512; 2]| {
        // SAFETY: row r exists (the caller's guarantee) and columns j .. j + m0 and
        // j + 16 .. j + 16 + m1 are inside it.
        unsafe {
            let p = w.as_ptr().add(r * c);
            a[0] = _mm512_fmadd_ps(T::load16(p, j, m0), x0, a[0]);
            if m1 > 0 {
                a[1] = _mm512_fmadd_ps(T::load16(p, j + 16, m1), x1, a[1]);
            }
        }
    };
    // x's columns j .. j + 32 (as much as there is) and how many of each half.
    let xs = |j: usize| {
        let m0 = (c - j).min(16);
        let m1 = (c - j).saturating_sub(16).min(16);
        // SAFETY: columns j .. j + m0 and j + 16 .. j + 16 + m1 are inside x.
        unsafe {
            let x0 = f32::load16(x.as_ptr(), j, m0);
            let x1 = if m1 > 0 {
                f32::load16(x.as_ptr(), j + 16, m1)
            } else {
                _mm512_setzero_ps()
            };
            ((m0, m1), (x0, x1))
        }
    };
    let total = |a: [__m512; 2]| _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1]));
    let q = n / 4;
    for i in 0..q {
        let rows = [i, q + i, 2 * q + i, 3 * q + i];
        let mut acc = [[_mm512_setzero_ps(); 2]; 4];
        for j in (0..c).step_by(32) {
            let (m, xv) = xs(j);
            for (a, &r) in acc.iter_mut().zip(&rows) {
                step(r, j, m, xv, a);
            }
        }
        for (a, &r) in acc.iter().zip(&rows) {
            y[r] = total(*a);
        }
    }
    // The rest alone, through the same per-row sequence.
    for (r, yr) in y.iter_mut().enumerate().skip(4 * q) {
        let mut acc = [_mm512_setzero_ps(); 2];
        for j in (0..c).step_by(32) {
            let (m, xv) = xs(j);
            step(r, j, m, xv, &mut acc);
        }
        *yr = total(acc);
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
    unsafe { matvec_q8q8_rows_vnni(q, d, xq, xd, y) }
}

/// Σ of the 8 i32 lanes (exact: wrapping never happens for block sums).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)))
}

/// Σ of the 8 f32 lanes, in a fixed order.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn hsum_f32(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
}

/// Four blocks' dot products packed by `vphaddd` into `[a0, a1, a2, a3, b0, b1, b2, b3]`, where
/// a_k + b_k is block k's (exact, integer) sum: `m[k]` holds block k's 8 lane sums.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn pack_quad(m: [__m256i; 4]) -> __m256i {
    _mm256_hadd_epi32(_mm256_hadd_epi32(m[0], m[1]), _mm256_hadd_epi32(m[2], m[3]))
}

/// y[r] = Σ_b (d[r, b] · xd[b]) · Σ_{j in block b} q[r, j] · xq[j] for the y.len() rows of q
/// (C = xq.len() columns) and d (NB = xd.len() scales per row).
///
/// `vpdpbusd` multiplies unsigned by signed bytes, so the weights go in as `w + 128` (a sign-bit
/// flip) against the signed activations, which adds `128 · Σ x` per block: the same for every
/// row, computed once per 4 rows, each block's sums start at its negative. Blocks go eight at a
/// time in 512-bit vectors (an "oct": two quads), then four at a time (a quad: one
/// `vphaddd`-packed vector, two lanes per block); either way each quad's packed sums are
/// scaled and accumulated in f32 by the same 256-bit operations, in quad order. The last
/// NB % 4 blocks go one at a time with exact integer sums (masked loads: a short last block
/// needs no scalar code).
///
/// # Safety
/// The CPU must have the [`Avx512`] features; q.len() = y.len() · C, d.len() = y.len() · NB.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn matvec_q8q8_rows_vnni(q: &[i8], d: &[f16], xq: &[i8], xd: &[f32], y: &mut [f32]) {
    let (c, nb) = (xq.len(), xd.len());
    let quads = c / (4 * Q8_BLOCK);
    let flip = _mm256_set1_epi8(-128);
    let zero = _mm256_setzero_si256();
    // Quad g of x (4 blocks) and its correction 128 · Σ x, in `pack_quad`'s layout.
    let x_quad = |g: usize| {
        // SAFETY: quad g is whole: columns 128g .. 128g + 128 are inside x, blocks 4g .. 4g + 4
        // inside xd.
        let (xv, xs): ([__m256i; 4], __m128) = unsafe {
            (
                std::array::from_fn(|k| {
                    _mm256_loadu_si256(xq.as_ptr().add(128 * g + 32 * k).cast())
                }),
                _mm_loadu_ps(xd.as_ptr().add(4 * g)),
            )
        };
        // Each block's dot products start at −128 · (its lane's Σ x): the weights' flip adds it.
        let neg = xv.map(|v| _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, flip, v)));
        (xv, neg, _mm256_set_m128(xs, xs))
    };
    // Row r's accumulator after quad g.
    let quad = |r: usize, g: usize, (xv, neg, xs): ([__m256i; 4], [__m256i; 4], __m256), acc| {
        let wr = q[r * c + 128 * g..][..128].as_ptr();
        let m: [__m256i; 4] = std::array::from_fn(|k| {
            // SAFETY: wr holds 128 bytes (the slice above); block k is bytes 32k .. 32k + 32.
            let wv = unsafe { _mm256_loadu_si256(wr.add(32 * k).cast()) };
            _mm256_dpbusd_epi32(neg[k], _mm256_xor_si256(wv, flip), xv[k])
        });
        // SAFETY: blocks 4g .. 4g + 4 are inside row r's NB scales (8 bytes).
        let dw = unsafe {
            let h = d
                .as_ptr()
                .add(r * nb + 4 * g)
                .cast::<i64>()
                .read_unaligned();
            _mm256_cvtph_ps(_mm_set1_epi64x(h))
        };
        let sc = _mm256_mul_ps(dw, xs);
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(pack_quad(m)), sc, acc)
    };
    // Row r's result from its quads' accumulator: the other blocks in order, exact sums.
    let finish = |r: usize, acc: __m256| -> f32 {
        let mut t = hsum_f32(acc);
        for b in 4 * quads..nb {
            let j = b * Q8_BLOCK;
            let m = mask64(c - j) as __mmask32;
            // SAFETY: columns j .. min(j + 32, C) are inside row r and x; masked-off bytes read
            // nothing and are zero (flipped: 128, times x = 0).
            let (wv, xv) = unsafe {
                (
                    _mm256_maskz_loadu_epi8(m, q.as_ptr().add(r * c + j)),
                    _mm256_maskz_loadu_epi8(m, xq.as_ptr().add(j)),
                )
            };
            let s = hsum_i32(_mm256_dpbusd_epi32(zero, _mm256_xor_si256(wv, flip), xv))
                - hsum_i32(_mm256_dpbusd_epi32(zero, flip, xv));
            t += (f16_to_f32(d[r * nb + b]) * xd[b]) * s as f32;
        }
        t
    };
    // Octs: two quads (8 blocks, 256 columns) in 512-bit vectors. The integer work runs at 512
    // bits: block sums by `vpdpbusd` on 64 bytes, then the two halves of each block reduced by
    // lane permutations into the quads' `pack_quad` layouts, [quad 2o | quad 2o + 1] (exact
    // integers, so the same values as `pack_quad`'s). The f32 work stays the quads' own: the two
    // halves go through the same conversion, scale product and fused multiply-add as two quads
    // would, in quad order, so a row's bits equal the all-quad sequence's (the batched kernels
    // in `multi_avx512` rely on it).
    let octs = quads / 2;
    let flip5 = _mm512_set1_epi8(-128);
    let zero5 = _mm512_setzero_si512();
    // Lanes (2i, 2i + 1) of a (i < 8) and of b (i ≥ 8): pairs of lanes summed.
    let (e1, o1) = (
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
        _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31),
    );
    // From two pair-sum vectors (blocks 0-3, blocks 4-7; per block [a, a, b, b] pairs): each
    // block's first-half sum a_k in lanes 0-3 and second-half sum b_k in lanes 4-7 of its quad.
    let (e2, o2) = (
        _mm512_setr_epi32(0, 4, 8, 12, 2, 6, 10, 14, 16, 20, 24, 28, 18, 22, 26, 30),
        _mm512_setr_epi32(1, 5, 9, 13, 3, 7, 11, 15, 17, 21, 25, 29, 19, 23, 27, 31),
    );
    // Scales [s0, s1, s2, s3, s0, s1, s2, s3, s4, s5, s6, s7, s4, s5, s6, s7] from s0 .. s7.
    let spread = _mm512_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7);
    let x_oct = |o: usize| {
        // SAFETY: oct o is whole: columns 256o .. 256o + 256 are inside x, blocks 8o .. 8o + 8
        // inside xd.
        let (xv, xs): ([__m512i; 4], __m256) = unsafe {
            (
                std::array::from_fn(|k| {
                    _mm512_loadu_si512(xq.as_ptr().add(256 * o + 64 * k).cast())
                }),
                _mm256_loadu_ps(xd.as_ptr().add(8 * o)),
            )
        };
        let neg = xv.map(|v| _mm512_sub_epi32(zero5, _mm512_dpbusd_epi32(zero5, flip5, v)));
        (
            xv,
            neg,
            _mm512_permutexvar_ps(spread, _mm512_castps256_ps512(xs)),
        )
    };
    let oct = |r: usize, o: usize, (xv, neg, xs): ([__m512i; 4], [__m512i; 4], __m512), acc| {
        let wr = q[r * c + 256 * o..][..256].as_ptr();
        let m: [__m512i; 4] = std::array::from_fn(|k| {
            // SAFETY: wr holds 256 bytes (the slice above); blocks 2k, 2k + 1 are bytes
            // 64k .. 64k + 64.
            let wv = unsafe { _mm512_loadu_si512(wr.add(64 * k).cast()) };
            _mm512_dpbusd_epi32(neg[k], _mm512_xor_si512(wv, flip5), xv[k])
        });
        let pairs = |a, b| {
            _mm512_add_epi32(
                _mm512_permutex2var_epi32(a, e1, b),
                _mm512_permutex2var_epi32(a, o1, b),
            )
        };
        let (lo, hi) = (pairs(m[0], m[1]), pairs(m[2], m[3]));
        let sums = _mm512_add_epi32(
            _mm512_permutex2var_epi32(lo, e2, hi),
            _mm512_permutex2var_epi32(lo, o2, hi),
        );
        // SAFETY: blocks 8o .. 8o + 8 are inside row r's NB scales (16 bytes).
        let dw = unsafe {
            let h = _mm_loadu_si128(d.as_ptr().add(r * nb + 8 * o).cast());
            _mm512_permutexvar_ps(spread, _mm512_castps256_ps512(_mm256_cvtph_ps(h)))
        };
        let sc = _mm512_mul_ps(dw, xs);
        let f = _mm512_cvtepi32_ps(sums);
        let half = |v: __m512| _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        let acc = _mm256_fmadd_ps(_mm512_castps512_ps256(f), _mm512_castps512_ps256(sc), acc);
        _mm256_fmadd_ps(half(f), half(sc), acc)
    };
    // Rows i, Q+i, 2Q+i, 3Q+i together (four memory streams), the rest alone; every row goes
    // through the same sequence.
    let qn = y.len() / 4;
    for i in 0..qn {
        let rows = [i, qn + i, 2 * qn + i, 3 * qn + i];
        let mut acc = [_mm256_setzero_ps(); 4];
        for o in 0..octs {
            let xo = x_oct(o);
            for (a, &r) in acc.iter_mut().zip(&rows) {
                *a = oct(r, o, xo, *a);
            }
        }
        for g in 2 * octs..quads {
            let xg = x_quad(g);
            for (a, &r) in acc.iter_mut().zip(&rows) {
                *a = quad(r, g, xg, *a);
            }
        }
        for (a, &r) in acc.iter().zip(&rows) {
            y[r] = finish(r, *a);
        }
    }
    for (r, yr) in y.iter_mut().enumerate().skip(4 * qn) {
        let mut acc = _mm256_setzero_ps();
        for o in 0..octs {
            acc = oct(r, o, x_oct(o), acc);
        }
        for g in 2 * octs..quads {
            acc = quad(r, g, x_quad(g), acc);
        }
        *yr = finish(r, acc);
    }
}

/// One f16 as f32 through F16C.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) fn f16_to_f32(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h.to_bits()))))
}

// ------------------------------------------------------------------ int4 x int8

pub(super) fn matvec_q4q8_rows(
    _t: Avx512,
    w: Q4Matrix<'_>,
    xq: &[i8],
    xd: &[f32],
    y: &mut [f32],
    row_start: usize,
) {
    let (c, nb) = (w.cols(), w.blocks_per_row());
    assert!(
        xq.len() == c && xd.len() == nb && row_start + y.len() <= w.rows(),
        "avx512 matvec_q4q8_rows: lengths"
    );
    let rb = nb * Q4_BLOCK_BYTES;
    let (q, d) = (
        &w.quants()[row_start * rb..(row_start + y.len()) * rb],
        &w.scales()[row_start * nb..(row_start + y.len()) * nb],
    );
    // SAFETY: the token proves the features; q and d hold y.len() rows (checked above).
    unsafe { matvec_q4q8_rows_vnni(q, d, xq, xd, y) }
}

/// y[r] = Σ_b (d[r, b] · xd[b]) · Σ_{j in block b} codebook[nibble(r, j)] · xq[j] for the
/// y.len() rows of q (NB · 16 bytes each) and d (NB scales each), C = xq.len().
///
/// As the int8 kernel, with the weights made by `vpshufb` from a codebook already flipped
/// (`level + 128` as unsigned bytes), so the lookup is the whole unpacking. The integer work is
/// 512-bit: one load is a quad (four blocks A..D, 16 bytes each, one per 128-bit lane); its low
/// nibbles are elements 0..16 of each block, its high nibbles elements 16..32, multiplied by x
/// rearranged the same way once per 4 rows (`vshufi64x2`). Lane j of block k's 128 bits then
/// holds the exact sum over its elements 4j..4j+4 and 16+4j..20+4j, and lane pairs are summed
/// (two `vpermt2d`) into the packed layout `[A1, A2, C1, C2, B1, B2, D1, D2]` per quad (1: a
/// block's elements 0..8 and 16..24, 2: 8..16 and 24..32), two quads ("an oct") per 512-bit
/// vector. The f32 work stays per quad, in quad order: one conversion, the product of the
/// weights' and x's scales in that layout and one fused multiply-add on 256 bits (the oct's two
/// halves in turn), so a row's bits equal the earlier all-256-bit kernel's and the batched
/// twin's (`multi_avx512::group_q4`). The last NB % 4 blocks go one at a time with exact
/// integer sums (a short last block in scalar code).
///
/// # Safety
/// The CPU must have the [`Avx512`] features; q.len() = y.len() · NB · 16, d.len() = y.len() · NB.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn matvec_q4q8_rows_vnni(q: &[u8], d: &[f16], xq: &[i8], xd: &[f32], y: &mut [f32]) {
    let (c, nb) = (xq.len(), xd.len());
    let rb = nb * Q4_BLOCK_BYTES;
    let full = c / Q4_BLOCK;
    let quads = full / 4;
    let octs = quads / 2;
    let flipped: [u8; 16] = Q4_CODEBOOK.map(|v| (i16::from(v) + 128) as u8);
    // SAFETY: `flipped` is 16 readable bytes.
    let table4 = unsafe { _mm_loadu_si128(flipped.as_ptr().cast()) };
    let (table, table5) = (
        _mm256_broadcastsi128_si256(table4),
        _mm512_broadcast_i32x4(table4),
    );
    let flip = _mm256_set1_epi8(-128);
    let flip5 = _mm512_set1_epi8(-128);
    let low5 = _mm512_set1_epi8(0x0F);
    let zero = _mm256_setzero_si256();
    let zero5 = _mm512_setzero_si512();
    // Quad g of x as [elements 0..16 of each block, elements 16..32 of each block] (the
    // weights' low-nibble and high-nibble order) and each lane's starting value −128 · Σ x.
    let x_ints = |g: usize| {
        // SAFETY: quad g is whole: columns 128g .. 128g + 128 are inside x.
        let (a, b) = unsafe {
            let p = xq.as_ptr().add(128 * g);
            (
                _mm512_loadu_si512(p.cast()),
                _mm512_loadu_si512(p.add(64).cast()),
            )
        };
        let lo = _mm512_shuffle_i64x2::<0b10_00_10_00>(a, b);
        let hi = _mm512_shuffle_i64x2::<0b11_01_11_01>(a, b);
        let s = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero5, flip5, lo), flip5, hi);
        ([lo, hi], _mm512_sub_epi32(zero5, s))
    };
    // A row's exact sums for quad g (`wr`: the row's first quant byte): 4 lanes per block (one
    // 128-bit lane per block). Rows are addressed by pointers: no bounds checks in the loops.
    let quad_ints = |wr: *const u8, g: usize, ([xlo, xhi], neg): ([__m512i; 2], __m512i)| {
        // SAFETY: g < quads <= NB / 4, so bytes 64g .. 64g + 64 lie in the row's NB · 16.
        let v = unsafe { _mm512_loadu_si512(wr.add(64 * g).cast()) };
        let lo = _mm512_shuffle_epi8(table5, _mm512_and_si512(v, low5));
        let hi = _mm512_shuffle_epi8(table5, _mm512_and_si512(_mm512_srli_epi16::<4>(v), low5));
        _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(neg, lo, xlo), hi, xhi)
    };
    // Lane pairs (2i, 2i + 1) of a quad's sums in the packed order [A1, A2, C1, C2, B1, B2, D1,
    // D2]; lanes 8..16 the same for the second vector (the next quad).
    let (pe, po) = (
        _mm512_setr_epi32(0, 2, 8, 10, 4, 6, 12, 14, 16, 18, 24, 26, 20, 22, 28, 30),
        _mm512_setr_epi32(1, 3, 9, 11, 5, 7, 13, 15, 17, 19, 25, 27, 21, 23, 29, 31),
    );
    let pack = |a, b| {
        _mm512_add_epi32(
            _mm512_permutex2var_epi32(a, pe, b),
            _mm512_permutex2var_epi32(a, po, b),
        )
    };
    // Eight scales s0..s7 (blocks of two quads) as [s0, s0, s2, s2, s1, s1, s3, s3, s4, s4, s6,
    // s6, s5, s5, s7, s7]: each block's scale on its two packed lanes.
    let spread = _mm512_setr_epi32(0, 0, 2, 2, 1, 1, 3, 3, 4, 4, 6, 6, 5, 5, 7, 7);
    let order = _mm256_setr_epi32(0, 0, 2, 2, 1, 1, 3, 3);
    let x_oct = |o: usize| {
        // SAFETY: blocks 8o .. 8o + 8 are inside xd.
        let xs = unsafe { _mm256_loadu_ps(xd.as_ptr().add(8 * o)) };
        (
            x_ints(2 * o),
            x_ints(2 * o + 1),
            _mm512_permutexvar_ps(spread, _mm512_castps256_ps512(xs)),
        )
    };
    let half = |v: __m512| _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    // A row's accumulator after oct o (quads 2o, 2o + 1, in that order); `(wr, dr)`: the row's
    // first quant byte and scale.
    let oct = |(wr, dr): (*const u8, *const f16), o: usize, (x0, x1, xs): (_, _, __m512), acc| {
        let sums = pack(quad_ints(wr, 2 * o, x0), quad_ints(wr, 2 * o + 1, x1));
        // SAFETY: blocks 8o .. 8o + 8 are inside the row's NB scales (16 bytes).
        let dw = unsafe {
            let h = _mm_loadu_si128(dr.add(8 * o).cast());
            _mm512_permutexvar_ps(spread, _mm512_castps256_ps512(_mm256_cvtph_ps(h)))
        };
        let sc = _mm512_mul_ps(dw, xs);
        let f = _mm512_cvtepi32_ps(sums);
        let acc = _mm256_fmadd_ps(_mm512_castps512_ps256(f), _mm512_castps512_ps256(sc), acc);
        _mm256_fmadd_ps(half(f), half(sc), acc)
    };
    // The last quad when their number is odd.
    let x_quad = |g: usize| {
        // SAFETY: blocks 4g .. 4g + 4 are inside xd.
        let xs = unsafe { _mm256_castps128_ps256(_mm_loadu_ps(xd.as_ptr().add(4 * g))) };
        (x_ints(g), _mm256_permutevar8x32_ps(xs, order))
    };
    let quad = |(wr, dr): (*const u8, *const f16), g: usize, (xg, xs): (_, __m256), acc| {
        let s = _mm512_castsi512_si256(pack(quad_ints(wr, g, xg), zero5));
        // SAFETY: blocks 4g .. 4g + 4 are inside the row's NB scales (8 bytes).
        let dw = unsafe {
            let h = dr.add(4 * g).cast::<i64>().read_unaligned();
            _mm256_permutevar8x32_ps(_mm256_cvtph_ps(_mm_set1_epi64x(h)), order)
        };
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, xs), acc)
    };
    let finish = |r: usize, acc: __m256| -> f32 {
        let mut t = hsum_f32(acc);
        let qr = &q[r * rb..(r + 1) * rb];
        for b in 4 * quads..nb {
            let block = &qr[b * Q4_BLOCK_BYTES..][..Q4_BLOCK_BYTES];
            let j0 = b * Q4_BLOCK;
            let s = if b < full {
                // SAFETY: block b is full: 16 bytes of the row, columns j0 .. j0 + 32 of x.
                let (v, xv) = unsafe {
                    (
                        _mm_loadu_si128(block.as_ptr().cast()),
                        _mm256_loadu_si256(xq.as_ptr().add(j0).cast()),
                    )
                };
                let m = _mm_set1_epi8(0x0F);
                let idx = _mm256_set_m128i(
                    _mm_and_si128(_mm_srli_epi16::<4>(v), m),
                    _mm_and_si128(v, m),
                );
                let wv = _mm256_shuffle_epi8(table, idx);
                hsum_i32(_mm256_dpbusd_epi32(zero, wv, xv))
                    - hsum_i32(_mm256_dpbusd_epi32(zero, flip, xv))
            } else {
                (j0..c)
                    .map(|j| {
                        i32::from(Q4_CODEBOOK[q4_nibble(block, j - j0) as usize]) * i32::from(xq[j])
                    })
                    .sum()
            };
            t += (f16_to_f32(d[r * nb + b]) * xd[b]) * s as f32;
        }
        t
    };
    // Row r's first quant byte and scale (r < y.len(): inside q and d, checked here).
    let row = |r: usize| (q[r * rb..].as_ptr(), d[r * nb..].as_ptr());
    let qn = y.len() / 4;
    for i in 0..qn {
        let rows = [i, qn + i, 2 * qn + i, 3 * qn + i];
        let p = rows.map(row);
        let mut acc = [_mm256_setzero_ps(); 4];
        for o in 0..octs {
            let xo = x_oct(o);
            for (a, &pr) in acc.iter_mut().zip(&p) {
                *a = oct(pr, o, xo, *a);
            }
        }
        for g in 2 * octs..quads {
            let xg = x_quad(g);
            for (a, &pr) in acc.iter_mut().zip(&p) {
                *a = quad(pr, g, xg, *a);
            }
        }
        for (a, &r) in acc.iter().zip(&rows) {
            y[r] = finish(r, *a);
        }
    }
    for (r, yr) in y.iter_mut().enumerate().skip(4 * qn) {
        let (pr, mut acc) = (row(r), _mm256_setzero_ps());
        for o in 0..octs {
            acc = oct(pr, o, x_oct(o), acc);
        }
        for g in 2 * octs..quads {
            acc = quad(pr, g, x_quad(g), acc);
        }
        *yr = finish(r, acc);
    }
}

// ------------------------------------------------------------------ attention over an f16 cache

/// [`super::Kernels::group_scores_f16`]: s (Hg, P), s[j·P + t] = k[t, j, :] · q[j, :], keys
/// (P, Hg, D). As the AVX2 kernel, positions go as four memory streams (one per quarter of P),
/// each head's row of D in 16-lane steps (a masked last step, so no scalar tail), and the four
/// streams' sums are reduced together; the P % 4 last positions one at a time.
pub(super) fn group_scores_f16(_t: Avx512, k: &[f16], q: &[f32], s: &mut [f32], heads: usize) {
    let p = s.len() / heads;
    assert!(
        heads > 0 && k.len() == p * q.len() && s.len() == p * heads && q.len() % heads == 0,
        "avx512 group_scores_f16: shapes"
    );
    // SAFETY: the token proves the features; the shapes are checked above.
    unsafe { group_scores_f16_512(k, q, s, heads) }
}

/// How many positions ahead, in each of their four streams, the f16 attention kernels
/// prefetch a head's row (its first two cache lines: 64 f16 elements, GPT-2's and most
/// families' D or half of it).
const ATT_AHEAD: usize = 4;

/// Σ of the 16 lanes of each of four vectors, in a fixed order: the 256-bit halves added, then
/// the AVX2 kernels' `hsum4`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
fn hsum4_512(a: [__m512; 4]) -> [f32; 4] {
    let h = a.map(|v| {
        _mm256_add_ps(
            _mm512_castps512_ps256(v),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
        )
    });
    to_array4(hsum4(h[0], h[1], h[2], h[3]))
}

/// Hints (never dereferenced) for the first two cache lines of each stream's row
/// [`ATT_AHEAD`] positions on (`row`: elements per position).
#[inline]
fn prefetch_ahead(rows: [*const f16; 4], row: usize) {
    for r in rows {
        let ahead = r.wrapping_add(ATT_AHEAD * row).cast::<i8>();
        // SAFETY: a prefetch is a hint; it never faults, whatever the address.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(ahead);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
        }
    }
}

/// Lane sums of q · r_u over D columns for N rows of f16, 16 columns at a time (a masked last
/// step, so no scalar tail).
///
/// # Safety
/// The CPU must have the [`Avx512`] features; `q` and every `rows[u]` hold D readable elements.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn dot_rows<const N: usize>(q: *const f32, rows: [*const f16; N], d: usize) -> [__m512; N] {
    let mut acc = [_mm512_setzero_ps(); N];
    let mut c = 0;
    while c < d {
        let n = (d - c).min(16);
        // SAFETY: columns c .. c + n lie inside q and every row (the caller's guarantee).
        unsafe {
            let qv = f32::load16(q, c, n);
            for (a, r) in acc.iter_mut().zip(rows) {
                *a = _mm512_fmadd_ps(f16::load16(r, c, n), qv, *a);
            }
        }
        c += 16;
    }
    acc
}

/// o (D) += Σ_u w_u · r_u for N rows of f16, multiply-added in u order, 16 columns at a time
/// (masked last step: masked-off lanes are neither read nor written).
///
/// # Safety
/// The CPU must have the [`Avx512`] features; `o` holds D writable elements and every
/// `rows[u]` D readable ones.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn add_rows<const N: usize>(o: *mut f32, w: [__m512; N], rows: [*const f16; N], d: usize) {
    let mut c = 0;
    while c < d {
        let n = (d - c).min(16);
        let m = mask16(n);
        // SAFETY: columns c .. c + n lie inside o and every row (the caller's guarantee).
        unsafe {
            let oc = o.add(c);
            let mut a = _mm512_maskz_loadu_ps(m, oc);
            for (wu, r) in w.iter().zip(rows) {
                a = _mm512_fmadd_ps(*wu, f16::load16(r, c, n), a);
            }
            _mm512_mask_storeu_ps(oc, m, a);
        }
        c += 16;
    }
}

/// # Safety
/// The CPU must have the [`Avx512`] features; k.len() = P · q.len(), s.len() = P · Hg, Hg > 0
/// divides q.len().
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn group_scores_f16_512(k: &[f16], q: &[f32], s: &mut [f32], heads: usize) {
    let (row, p) = (q.len(), s.len() / heads);
    let d = row / heads;
    let q4 = p / 4;
    for t in 0..q4 {
        for j in 0..heads {
            let qp = q.as_ptr().wrapping_add(j * d);
            let at = |u: usize| k.as_ptr().wrapping_add((u * q4 + t) * row + j * d);
            let rows = [at(0), at(1), at(2), at(3)];
            prefetch_ahead(rows, row);
            // SAFETY: head j's D columns lie inside q and inside each of the four positions'
            // rows (positions < P, rows of Hg · D inside k).
            let acc = unsafe { dot_rows(qp, rows, d) };
            for (u, v) in hsum4_512(acc).into_iter().enumerate() {
                s[j * p + u * q4 + t] = v;
            }
        }
    }
    for t in 4 * q4..p {
        for j in 0..heads {
            let qp = q.as_ptr().wrapping_add(j * d);
            let r = k.as_ptr().wrapping_add(t * row + j * d);
            // SAFETY: head j's D columns lie inside q and position t's row.
            let [acc] = unsafe { dot_rows(qp, [r], d) };
            s[j * p + t] = _mm512_reduce_add_ps(acc);
        }
    }
}

/// [`super::Kernels::group_weighted_f16`]: out (Hg, D) = Σ_t w[j·P + t] · v[t, j, :], values
/// (P, Hg, D). Positions as four memory streams (as [`group_scores_f16`]); each pass adds four
/// positions to a head's sums, kept in `out` (L1-resident), 16 lanes at a time (masked last
/// step); the P % 4 last positions one at a time.
pub(super) fn group_weighted_f16(_t: Avx512, w: &[f32], v: &[f16], out: &mut [f32], heads: usize) {
    let p = w.len() / heads;
    assert!(
        heads > 0 && v.len() == p * out.len() && w.len() == p * heads && out.len() % heads == 0,
        "avx512 group_weighted_f16: shapes"
    );
    // SAFETY: the token proves the features; the shapes are checked above.
    unsafe { group_weighted_f16_512(w, v, out, heads) }
}

/// # Safety
/// The CPU must have the [`Avx512`] features; v.len() = P · out.len(), w.len() = P · Hg, Hg > 0
/// divides out.len().
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn group_weighted_f16_512(w: &[f32], v: &[f16], out: &mut [f32], heads: usize) {
    let (row, p) = (out.len(), w.len() / heads);
    let d = row / heads;
    let q4 = p / 4;
    out.fill(0.0);
    let op = out.as_mut_ptr();
    for t in 0..q4 {
        for j in 0..heads {
            let wj = &w[j * p..(j + 1) * p];
            let pw = [wj[t], wj[q4 + t], wj[2 * q4 + t], wj[3 * q4 + t]].map(|x| _mm512_set1_ps(x));
            let at = |u: usize| v.as_ptr().wrapping_add((u * q4 + t) * row + j * d);
            let rows = [at(0), at(1), at(2), at(3)];
            prefetch_ahead(rows, row);
            // SAFETY: head j's D columns lie inside out (Hg · D) and inside each of the four
            // positions' rows of v.
            unsafe { add_rows(op.wrapping_add(j * d), pw, rows, d) };
        }
    }
    for t in 4 * q4..p {
        for j in 0..heads {
            let pw = _mm512_set1_ps(w[j * p + t]);
            let r = v.as_ptr().wrapping_add(t * row + j * d);
            // SAFETY: as above, for position t alone.
            unsafe { add_rows(op.wrapping_add(j * d), [pw], [r], d) };
        }
    }
}
