#![allow(unsafe_code)]
//! x86-64 AVX-512 VNNI Q6 decode product: integer work on 512-bit vectors, f32 work on
//! 256-bit ones (AVX-512VL). Twin: [`super::q6_reference`].
//!
//! A quad (four blocks, 96 bytes) is read as two overlapping 64-byte loads; two `vpermt2d`
//! gather the four blocks' nibble bytes (one block per 128-bit lane) and their high-bit bytes;
//! a per-64-bit-lane rotation (`vprolvq`) brings each element's two high bits next to its
//! nibble, and `vpternlogd` merges them with bit 5 flipped: `level + 32` (0..64, unsigned). So
//! `vpdpbusd` gives Σ (level + 32)·x on top of −32·Σx (once per quad of x for four rows): exact
//! in i32 lanes. Blocks are scaled once per four, as in the int8 kernel
//! ([`matvec_q6q8_rows_vnni`]).

use super::q4_x86_64::hsum;
use super::q6_matrix::Q6Matrix;
use super::x86_64::f16_to_f32 as h2f;
use super::x86_64_avx512::Avx512;
use core::arch::x86_64::*;
use emberlm_formats::quant::{Q6_BLOCK, Q6_BLOCK_BYTES, q6_level};
use half::f16;

pub(super) fn matvec_q6q8_rows(
    _t: Avx512,
    w: Q6Matrix<'_>,
    xq: &[i8],
    xd: &[f32],
    y: &mut [f32],
    row_start: usize,
) {
    // SAFETY: the token proves AVX2 + FMA + F16C and AVX-512 F/BW/VL/VNNI.
    unsafe { matvec_q6q8_rows_vnni(w, xq, xd, y, row_start) }
}

/// y = rows `row_start ..` of W · x, four consecutive rows at a time sharing the activations.
/// Blocks go four at a time (a quad): each block's elements 0..16 (low nibbles) and 16..32
/// (high nibbles) are summed in two vectors against x rearranged the same way, so the lanes hold
/// exact integer sums of one half of one block. Two quads (an "oct") are reduced together by
/// lane permutations into `pack_quad`'s layout `[a0, a1, a2, a3, b0, b1, b2, b3]` per quad (a_k,
/// b_k: block k's halves), and each quad then takes one conversion, one product of the four
/// scales by x's and one fused multiply-add, in quad order: the same f32 operations, so the same
/// bits, as the earlier 256-bit kernel's (checked on 2026-12-05 by hashing outputs of both). A
/// last odd quad goes alone; the last NB % 4 whole blocks (vector) and a short block (scalar) one
/// at a time with exact integer sums. Every row runs this sequence whatever rows it is computed
/// with, so its bits do not depend on the grouping or the split.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn matvec_q6q8_rows_vnni(w: Q6Matrix<'_>, xq: &[i8], xd: &[f32], y: &mut [f32], row_start: usize) {
    let c = w.cols();
    let nb = w.blocks_per_row();
    let full = c / Q6_BLOCK;
    let quads = full / 4;
    assert!(xq.len() == c && xd.len() == nb, "matvec_q6q8_rows: x shape");
    let k = _mm256_set1_epi8(0x20);
    let zero = _mm256_setzero_si256();
    let (k5, zero5) = (_mm512_set1_epi8(0x20), _mm512_setzero_si512());
    let (m0f, m30) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x30));
    // Quad g of x as [elements 0..16 of each block, elements 16..32 of each block] (the
    // weights' low-nibble and high-nibble order) and each lane's starting value −32 · Σ x.
    let x_ints = |g: usize| {
        // SAFETY: quad g is whole: columns 128g .. 128g + 128 are inside xq (C >= full × 32).
        let (a, b) = unsafe {
            let p = xq.as_ptr().add(128 * g);
            (
                _mm512_loadu_si512(p.cast()),
                _mm512_loadu_si512(p.add(64).cast()),
            )
        };
        let lo = _mm512_shuffle_i64x2::<0b10_00_10_00>(a, b);
        let hi = _mm512_shuffle_i64x2::<0b11_01_11_01>(a, b);
        let neg = |v| _mm512_sub_epi32(zero5, _mm512_dpbusd_epi32(zero5, k5, v));
        ([lo, hi], [neg(lo), neg(hi)])
    };
    // From a quad's 96 bytes as dwords 0..16 (a) and 8..24 (b): the four blocks' nibble bytes,
    // one block per 128-bit lane, and their high-bit bytes, twice per lane.
    let nib = _mm512_setr_epi32(0, 1, 2, 3, 6, 7, 8, 9, 12, 13, 14, 15, 26, 27, 28, 29);
    let hib = _mm512_setr_epi32(4, 5, 4, 5, 10, 11, 10, 11, 24, 25, 24, 25, 30, 31, 30, 31);
    // Rotations bringing element k's two high bits (bits 2·(k / 8) of high byte k % 8) to bits
    // 4–5: elements 0..8 (4), 8..16 (2); 16..24 (0), 24..32 (62, i.e. right by 2).
    let rot_lo = _mm512_setr_epi64(4, 2, 4, 2, 4, 2, 4, 2);
    let rot_hi = _mm512_setr_epi64(0, 62, 0, 62, 0, 62, 0, 62);
    // A row's exact sums for quad g (`q`: the row's first quant byte; pointers, so no bounds
    // checks in the loops): elements 0..16 (lanes 4k .. 4k + 4 for block k) and 16..32, each
    // element's code flipped to `level + 32`.
    let quad_ints =
        |q: *const u8, g: usize, ([xlo, xhi], [nlo, nhi]): ([__m512i; 2], [__m512i; 2])| {
            // SAFETY: g < quads <= NB / 4, so the quad's 96 bytes (read as 0..64 and 32..96) lie in
            // the row's NB × 24.
            let (a, b) = unsafe {
                let p = q.add(g * 4 * Q6_BLOCK_BYTES);
                (
                    _mm512_loadu_si512(p.cast()),
                    _mm512_loadu_si512(p.add(32).cast()),
                )
            };
            let n = _mm512_permutex2var_epi32(a, nib, b);
            let h = _mm512_permutex2var_epi32(a, hib, b);
            // (rotated & 0x30) ^ 0x20: the high bits in place, bit 5 flipped (level + 32).
            let tlo = _mm512_ternarylogic_epi32::<0x6A>(_mm512_rolv_epi64(h, rot_lo), m30, k5);
            let thi = _mm512_ternarylogic_epi32::<0x6A>(_mm512_rolv_epi64(h, rot_hi), m30, k5);
            // (nibble & 0x0F) | high bits.
            let lo = _mm512_ternarylogic_epi32::<0xEC>(n, tlo, m0f);
            let hi = _mm512_ternarylogic_epi32::<0xEC>(_mm512_srli_epi16::<4>(n), thi, m0f);
            (
                _mm512_dpbusd_epi32(nlo, lo, xlo),
                _mm512_dpbusd_epi32(nhi, hi, xhi),
            )
        };
    // Lane pairs (2i, 2i + 1) of a (i < 8) and of b (i >= 8), summed.
    let (pe, po) = (
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
        _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31),
    );
    let pairs = |a, b| {
        _mm512_add_epi32(
            _mm512_permutex2var_epi32(a, pe, b),
            _mm512_permutex2var_epi32(a, po, b),
        )
    };
    // Scales [s0, s1, s2, s3, s0, s1, s2, s3, s4, s5, s6, s7, s4, s5, s6, s7] from s0 .. s7.
    let spread = _mm512_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7);
    let half = |v: __m512| _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    // Oct o of x: quads 2o and 2o + 1, and their scales in `pack_quad`'s layout.
    let x_oct = |o: usize| {
        // SAFETY: blocks 8o .. 8o + 8 are whole, so inside xd.
        let xs = unsafe { _mm256_loadu_ps(xd.as_ptr().add(8 * o)) };
        (
            x_ints(2 * o),
            x_ints(2 * o + 1),
            _mm512_permutexvar_ps(spread, _mm512_castps256_ps512(xs)),
        )
    };
    // A row's accumulator after oct o: the integer work on 512 bits, reduced to the two quads'
    // `pack_quad` layouts [quad 2o | quad 2o + 1] (exact, so the same values); then per quad, in
    // order, the same conversion, scale product and fused multiply-add as the quad path.
    let oct = |(q, d): (*const u8, *const f16), o: usize, (x0, x1, xs): (_, _, __m512), acc| {
        let (l0, h0) = quad_ints(q, 2 * o, x0);
        let (l1, h1) = quad_ints(q, 2 * o + 1, x1);
        let sums = pairs(pairs(l0, h0), pairs(l1, h1));
        // SAFETY: scales 8o .. 8o + 8 lie in the row's NB (16 bytes).
        let dw = unsafe {
            let h = _mm_loadu_si128(d.add(8 * o).cast());
            _mm512_permutexvar_ps(spread, _mm512_castps256_ps512(_mm256_cvtph_ps(h)))
        };
        let sc = _mm512_mul_ps(dw, xs);
        let f = _mm512_cvtepi32_ps(sums);
        let acc = _mm256_fmadd_ps(_mm512_castps512_ps256(f), _mm512_castps512_ps256(sc), acc);
        _mm256_fmadd_ps(half(f), half(sc), acc)
    };
    // The last quad when their number is odd: quad g of x and its scales twice.
    let x_quad = |g: usize| {
        // SAFETY: blocks 4g .. 4g + 4 are whole, so inside xd.
        let xs = unsafe { _mm_loadu_ps(xd.as_ptr().add(4 * g)) };
        (x_ints(g), _mm256_set_m128(xs, xs))
    };
    let quad = |(q, d): (*const u8, *const f16), g: usize, (xg, xs): (_, __m256), acc| {
        let (l, h) = quad_ints(q, g, xg);
        let s = _mm512_castsi512_si256(pairs(pairs(l, h), zero5));
        // SAFETY: scales 4g .. 4g + 4 lie in the row's NB (8 bytes).
        let dw = unsafe {
            let h = d.add(4 * g).cast::<i64>().read_unaligned();
            _mm256_cvtph_ps(_mm_set1_epi64x(h))
        };
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, xs), acc)
    };
    // A row's result from its quads' accumulator: the other blocks in order, exact sums.
    let finish = |q: &[u8], d: &[f16], acc: __m256| -> f32 {
        let mut t = hsum(acc);
        for b in 4 * quads..nb {
            let j0 = b * Q6_BLOCK;
            let s = if b < full {
                // SAFETY: block b < full is whole: 24 bytes inside the row's NB × 24, columns
                // 32b .. 32b + 32 inside xq.
                unsafe {
                    let xv = _mm256_loadu_si256(xq.as_ptr().add(j0).cast());
                    let u = super::q6_x86_64::block_codes(q.as_ptr().add(b * Q6_BLOCK_BYTES));
                    let sum = _mm256_dpbusd_epi32(zero, _mm256_xor_si256(u, k), xv);
                    super::x86_64_avx512::hsum_i32(sum)
                        - super::x86_64_avx512::hsum_i32(_mm256_dpbusd_epi32(zero, k, xv))
                }
            } else {
                let block = &q[b * Q6_BLOCK_BYTES..][..Q6_BLOCK_BYTES];
                (j0..c)
                    .map(|j| i32::from(q6_level(block, j - j0)) * i32::from(xq[j]))
                    .sum()
            };
            t += (h2f(d[b]) * xd[b]) * s as f32;
        }
        t
    };
    let groups = y.len() / 4;
    let octs = quads / 2;
    for g4 in 0..groups {
        let r0 = row_start + 4 * g4;
        let q: [&[u8]; 4] = std::array::from_fn(|i| w.row_quants(r0 + i));
        let d: [&[f16]; 4] = std::array::from_fn(|i| w.row_scales(r0 + i));
        let p: [(*const u8, *const f16); 4] =
            std::array::from_fn(|i| (q[i].as_ptr(), d[i].as_ptr()));
        let mut acc = [_mm256_setzero_ps(); 4];
        for o in 0..octs {
            let xo = x_oct(o);
            for i in 0..4 {
                acc[i] = oct(p[i], o, xo, acc[i]);
            }
        }
        for g in 2 * octs..quads {
            let xg = x_quad(g);
            for i in 0..4 {
                acc[i] = quad(p[i], g, xg, acc[i]);
            }
        }
        for i in 0..4 {
            y[4 * g4 + i] = finish(q[i], d[i], acc[i]);
        }
    }
    for (i, out) in y.iter_mut().enumerate().skip(4 * groups) {
        let (q, d) = (w.row_quants(row_start + i), w.row_scales(row_start + i));
        let mut acc = _mm256_setzero_ps();
        for o in 0..octs {
            acc = oct((q.as_ptr(), d.as_ptr()), o, x_oct(o), acc);
        }
        for g in 2 * octs..quads {
            acc = quad((q.as_ptr(), d.as_ptr()), g, x_quad(g), acc);
        }
        *out = finish(q, d, acc);
    }
}
