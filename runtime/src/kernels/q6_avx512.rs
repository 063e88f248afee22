#![allow(unsafe_code)]
//! x86-64 AVX-512 VNNI Q6 decode product (on 256-bit vectors, AVX-512VL). Twin:
//! [`super::q6_reference`].
//!
//! A block's codes come from [`super::q6_x86_64::block_codes`]; `u ^ 32` is the level plus 32
//! (0..64, unsigned), so `vpdpbusd` gives Σ (level + 32)·x and a second `vpdpbusd` of 32 against x
//! gives the 32·Σx to subtract: both exact in i32 lanes (each at most 4·63·128 per lane). Two
//! accumulators as in the AVX2 kernel.

use super::q6_matrix::Q6Matrix;
use super::x86_64_avx512::Avx512;
use core::arch::x86_64::*;
use emberlm_formats::quant::{Q6_BLOCK, Q6_BLOCK_BYTES, q6_level};
use half::f16;

/// One f16 to f32 with F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn h2f(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h.to_bits()))))
}

/// Σ of 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

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

/// 8 f32 lanes summing to Σ level·x over the block at `q` against `xv`.
///
/// # Safety
/// The CPU must have the [`Avx512`] features; `q` must be valid for reading 24 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn block_dot(q: *const u8, xv: __m256i) -> __m256 {
    let k = _mm256_set1_epi8(0x20);
    // SAFETY: forwarded from the caller.
    let u = _mm256_xor_si256(unsafe { super::q6_x86_64::block_codes(q) }, k);
    let zero = _mm256_setzero_si256();
    let s = _mm256_sub_epi32(
        _mm256_dpbusd_epi32(zero, u, xv),
        _mm256_dpbusd_epi32(zero, k, xv),
    );
    _mm256_cvtepi32_ps(s)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn matvec_q6q8_rows_vnni(w: Q6Matrix<'_>, xq: &[i8], xd: &[f32], y: &mut [f32], row_start: usize) {
    let c = w.cols();
    let nb = w.blocks_per_row();
    let full = c / Q6_BLOCK;
    assert!(xq.len() == c && xd.len() == nb, "matvec_q6q8_rows: x shape");
    // Four rows at a time share each block's activation load and its 32·Σx; every row still
    // runs the single-row sequence below (even blocks into a0, odd into a1, then the tail), so
    // its bits do not depend on the grouping.
    let groups = y.len() / 4;
    let k = _mm256_set1_epi8(0x20);
    let zero = _mm256_setzero_si256();
    for g in 0..groups {
        let r0 = row_start + 4 * g;
        let q: [&[u8]; 4] = std::array::from_fn(|i| w.row_quants(r0 + i));
        let d: [&[f16]; 4] = std::array::from_fn(|i| w.row_scales(r0 + i));
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        for b in 0..full {
            // SAFETY: b < full <= NB: each row's block b is 24 bytes inside its NB × 24 bytes,
            // and columns b·32 .. b·32 + 32 are inside xq (C >= full × 32).
            let xv = unsafe { _mm256_loadu_si256(xq.as_ptr().add(b * Q6_BLOCK).cast()) };
            let kx = _mm256_dpbusd_epi32(zero, k, xv);
            for i in 0..4 {
                // SAFETY: as above.
                let u =
                    unsafe { super::q6_x86_64::block_codes(q[i].as_ptr().add(b * Q6_BLOCK_BYTES)) };
                let s = _mm256_sub_epi32(_mm256_dpbusd_epi32(zero, _mm256_xor_si256(u, k), xv), kx);
                let a = &mut acc[i][b % 2];
                *a = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(s),
                    _mm256_set1_ps(h2f(d[i][b]) * xd[b]),
                    *a,
                );
            }
        }
        for i in 0..4 {
            let mut t = hsum(_mm256_add_ps(acc[i][0], acc[i][1]));
            if full < nb {
                let j0 = full * Q6_BLOCK;
                let block = &q[i][full * Q6_BLOCK_BYTES..][..Q6_BLOCK_BYTES];
                let s: i32 = (j0..c)
                    .map(|j| i32::from(q6_level(block, j - j0)) * i32::from(xq[j]))
                    .sum();
                t += (h2f(d[i][full]) * xd[full]) * s as f32;
            }
            y[4 * g + i] = t;
        }
    }
    for (i, out) in y.iter_mut().enumerate().skip(4 * groups) {
        let (q, d) = (w.row_quants(row_start + i), w.row_scales(row_start + i));
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut b = 0;
        while b + 2 <= full {
            // SAFETY: b + 1 < full <= NB, so both blocks' 24 bytes lie in the row's NB × 24 bytes
            // and their 32 activations in xq (C >= full × 32); the features are enabled here.
            let (s0, s1) = unsafe {
                let x0 = _mm256_loadu_si256(xq.as_ptr().add(b * Q6_BLOCK).cast());
                let x1 = _mm256_loadu_si256(xq.as_ptr().add((b + 1) * Q6_BLOCK).cast());
                (
                    block_dot(q.as_ptr().add(b * Q6_BLOCK_BYTES), x0),
                    block_dot(q.as_ptr().add((b + 1) * Q6_BLOCK_BYTES), x1),
                )
            };
            a0 = _mm256_fmadd_ps(s0, _mm256_set1_ps(h2f(d[b]) * xd[b]), a0);
            a1 = _mm256_fmadd_ps(s1, _mm256_set1_ps(h2f(d[b + 1]) * xd[b + 1]), a1);
            b += 2;
        }
        if b < full {
            // SAFETY: b < full, as above.
            let s = unsafe {
                let x0 = _mm256_loadu_si256(xq.as_ptr().add(b * Q6_BLOCK).cast());
                block_dot(q.as_ptr().add(b * Q6_BLOCK_BYTES), x0)
            };
            a0 = _mm256_fmadd_ps(s, _mm256_set1_ps(h2f(d[b]) * xd[b]), a0);
        }
        let mut t = hsum(_mm256_add_ps(a0, a1));
        if full < nb {
            let j0 = full * Q6_BLOCK;
            let block = &q[full * Q6_BLOCK_BYTES..][..Q6_BLOCK_BYTES];
            let s: i32 = (j0..c)
                .map(|j| i32::from(q6_level(block, j - j0)) * i32::from(xq[j]))
                .sum();
            t += (h2f(d[full]) * xd[full]) * s as f32;
        }
        *out = t;
    }
}
