#![allow(unsafe_code)]
//! x86-64 Q6 kernels (AVX2 + FMA + F16C): the 6-bit × int8 decode product. Twin:
//! [`super::q6_reference`].
//!
//! A block's 24 bytes become 32 signed weights in one 256-bit register: the 16 nibble bytes
//! split into low nibbles (elements 0..16, low half) and high nibbles (16..32, high half), as
//! Q4's; the 8 high-bit bytes broadcast to the four 64-bit lanes and shifted right by 0, 2, 4, 6
//! bits (lane i = elements 8i..8i+8), masked to 2 bits and moved to bits 4–5; `(u ^ 32) − 32`
//! sign-extends the 6-bit two's-complement value. The product then runs as Q4's: `maddubs` on
//! |w| (≤ 32) and x·sign(w), `madd` to i32. The file's bytes are read as they are.

use super::q4_x86_64::hsum;
use super::q6_matrix::Q6Matrix;
use super::x86_64::Avx2;
use super::x86_64::f16_to_f32 as h2f;
use core::arch::x86_64::*;
use emberlm_formats::quant::{Q6_BLOCK, Q6_BLOCK_BYTES, q6_level};

/// The 6-bit codes `u` (0..64, two's complement) of the block at `q` (24 bytes), in element order.
///
/// # Safety
/// `q` must be valid for reading 24 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn block_codes(q: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 24 readable bytes at `q`: 16 here, 8 at q + 16.
    let (b, h) = unsafe {
        (
            _mm_loadu_si128(q.cast()),
            q.add(16).cast::<i64>().read_unaligned(),
        )
    };
    let mask = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(b, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
    let nib = _mm256_set_m128i(hi, lo);
    let hv = _mm256_srlv_epi64(_mm256_set1_epi64x(h), _mm256_set_epi64x(6, 4, 2, 0));
    let hv = _mm256_slli_epi16(_mm256_and_si256(hv, _mm256_set1_epi8(3)), 4);
    _mm256_or_si256(nib, hv)
}

/// The 32 signed weights (−32..=31) of the block at `q` (24 bytes).
///
/// # Safety
/// `q` must be valid for reading 24 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_weights(q: *const u8) -> __m256i {
    // SAFETY: forwarded from the caller.
    let u = unsafe { block_codes(q) };
    let k = _mm256_set1_epi8(0x20);
    _mm256_sub_epi8(_mm256_xor_si256(u, k), k)
}

/// 8 f32 lanes summing to Σ w·x over one block: `maddubs` takes |w| (≤ 32) and x·sign(w), so
/// each i16 pair sum is at most 2·32·128 (no saturation); `madd` widens to i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn block_dot(wv: __m256i, xv: __m256i) -> __m256 {
    let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
    _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
}

pub(super) fn matvec_q6q8_rows(
    _t: Avx2,
    w: Q6Matrix<'_>,
    xq: &[i8],
    xd: &[f32],
    y: &mut [f32],
    row_start: usize,
) {
    // SAFETY: the token proves AVX2 + FMA + F16C.
    unsafe { matvec_q6q8_rows_avx2(w, xq, xd, y, row_start) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn matvec_q6q8_rows_avx2(w: Q6Matrix<'_>, xq: &[i8], xd: &[f32], y: &mut [f32], row_start: usize) {
    let c = w.cols();
    let nb = w.blocks_per_row();
    let full = c / Q6_BLOCK;
    assert!(xq.len() == c && xd.len() == nb, "matvec_q6q8_rows: x shape");
    for (i, out) in y.iter_mut().enumerate() {
        let (q, d) = (w.row_quants(row_start + i), w.row_scales(row_start + i));
        // Two accumulators (even and odd blocks) halve the FMA dependency chain.
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut b = 0;
        while b + 2 <= full {
            // SAFETY: b + 1 < full <= NB, so both blocks' 24 bytes lie in the row's NB × 24 bytes
            // and their 32 activations in xq (C >= full × 32).
            let (s0, s1) = unsafe {
                let w0 = block_weights(q.as_ptr().add(b * Q6_BLOCK_BYTES));
                let w1 = block_weights(q.as_ptr().add((b + 1) * Q6_BLOCK_BYTES));
                let x0 = _mm256_loadu_si256(xq.as_ptr().add(b * Q6_BLOCK).cast());
                let x1 = _mm256_loadu_si256(xq.as_ptr().add((b + 1) * Q6_BLOCK).cast());
                (block_dot(w0, x0), block_dot(w1, x1))
            };
            a0 = _mm256_fmadd_ps(s0, _mm256_set1_ps(h2f(d[b]) * xd[b]), a0);
            a1 = _mm256_fmadd_ps(s1, _mm256_set1_ps(h2f(d[b + 1]) * xd[b + 1]), a1);
            b += 2;
        }
        if b < full {
            // SAFETY: b < full, as above.
            let s = unsafe {
                let w0 = block_weights(q.as_ptr().add(b * Q6_BLOCK_BYTES));
                block_dot(w0, _mm256_loadu_si256(xq.as_ptr().add(b * Q6_BLOCK).cast()))
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
