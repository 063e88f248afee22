#![allow(unsafe_code)]
//! x86-64 AVX-512 VNNI Q6 decode product (on 256-bit vectors, AVX-512VL). Twin:
//! [`super::q6_reference`].
//!
//! A block's codes come from [`super::q6_x86_64::block_codes`]; `u ^ 32` is the level plus 32
//! (0..64, unsigned), so `vpdpbusd` gives Σ (level + 32)·x on top of −32·Σx (a `vpdpbusd` of 32
//! against x, once per block of x): exact in i32 lanes (each at most 4·63·128 per lane). Blocks
//! go four at a time and are scaled once per four, as in the int8 kernel
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
/// Blocks go four at a time (a quad, as in the int8 kernel): each block's codes are unpacked
/// and flipped to `level + 32`, and `vpdpbusd` sums them against x on top of −32·Σx (computed
/// once per quad for the four rows), so the lanes hold exact integer sums; `pack_quad` packs the
/// four blocks' halves, and one conversion, one product of the four scales by x's and one
/// fused multiply-add per quad accumulate them in f32. The last NB % 4 whole blocks (vector) and
/// a short block (scalar) go one at a time with exact integer sums. Every row runs this sequence whatever rows
/// it is computed with, so its bits do not depend on the grouping or the split.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn matvec_q6q8_rows_vnni(w: Q6Matrix<'_>, xq: &[i8], xd: &[f32], y: &mut [f32], row_start: usize) {
    let c = w.cols();
    let nb = w.blocks_per_row();
    let full = c / Q6_BLOCK;
    let quads = full / 4;
    assert!(xq.len() == c && xd.len() == nb, "matvec_q6q8_rows: x shape");
    let k = _mm256_set1_epi8(0x20);
    let zero = _mm256_setzero_si256();
    // Quad g of x (blocks 4g .. 4g + 4), each block's −32·Σx, and its scales twice.
    let x_quad = |g: usize| {
        // SAFETY: blocks 4g .. 4g + 4 are whole: columns 128g .. 128g + 128 inside xq (C >=
        // full × 32) and scales 4g .. 4g + 4 inside xd.
        let (xv, xs): ([__m256i; 4], __m128) = unsafe {
            (
                std::array::from_fn(|i| {
                    _mm256_loadu_si256(xq.as_ptr().add((4 * g + i) * Q6_BLOCK).cast())
                }),
                _mm_loadu_ps(xd.as_ptr().add(4 * g)),
            )
        };
        let neg = xv.map(|v| _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, k, v)));
        (xv, neg, _mm256_set_m128(xs, xs))
    };
    // A row's accumulator after quad g (its quants `q`, scales `d`).
    let quad = |q: &[u8],
                d: &[f16],
                g: usize,
                (xv, neg, xs): ([__m256i; 4], [__m256i; 4], __m256),
                acc| {
        let m: [__m256i; 4] = std::array::from_fn(|i| {
            // SAFETY: block 4g + i < full <= NB lies in the row's NB × 24 bytes.
            let u = unsafe {
                super::q6_x86_64::block_codes(q.as_ptr().add((4 * g + i) * Q6_BLOCK_BYTES))
            };
            _mm256_dpbusd_epi32(neg[i], _mm256_xor_si256(u, k), xv[i])
        });
        // SAFETY: scales 4g .. 4g + 4 lie in the row's NB (8 bytes).
        let dw = unsafe {
            let h = d.as_ptr().add(4 * g).cast::<i64>().read_unaligned();
            _mm256_cvtph_ps(_mm_set1_epi64x(h))
        };
        let sc = _mm256_mul_ps(dw, xs);
        _mm256_fmadd_ps(
            _mm256_cvtepi32_ps(super::x86_64_avx512::pack_quad(m)),
            sc,
            acc,
        )
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
    for g4 in 0..groups {
        let r0 = row_start + 4 * g4;
        let q: [&[u8]; 4] = std::array::from_fn(|i| w.row_quants(r0 + i));
        let d: [&[f16]; 4] = std::array::from_fn(|i| w.row_scales(r0 + i));
        let mut acc = [_mm256_setzero_ps(); 4];
        for g in 0..quads {
            let xg = x_quad(g);
            for i in 0..4 {
                acc[i] = quad(q[i], d[i], g, xg, acc[i]);
            }
        }
        for i in 0..4 {
            y[4 * g4 + i] = finish(q[i], d[i], acc[i]);
        }
    }
    for (i, out) in y.iter_mut().enumerate().skip(4 * groups) {
        let (q, d) = (w.row_quants(row_start + i), w.row_scales(row_start + i));
        let mut acc = _mm256_setzero_ps();
        for g in 0..quads {
            acc = quad(q, d, g, x_quad(g), acc);
        }
        *out = finish(q, d, acc);
    }
}
