#![allow(unsafe_code)]
//! x86-64 Q6 kernels (AVX2 + FMA + F16C): the 6-bit × int8 decode product. Twin:
//! [`super::q6_reference`].
//!
//! A block's 24 bytes become 32 signed weights in one 256-bit register: the 16 nibble bytes
//! split into low nibbles (elements 0..16, low half) and high nibbles (16..32, high half), as
//! Q4's; the 8 high-bit bytes broadcast to the four 64-bit lanes and shifted right by 0, 2, 4, 6
//! bits (lane i = elements 8i..8i+8), masked to 2 bits and moved to bits 4–5; `(u ^ 32) − 32`
//! sign-extends the 6-bit two's-complement value. The product then runs as Q4's: `maddubs` on
//! |w| (≤ 32) and x·sign(w), `madd` to exact i32 sums; four blocks then share one conversion,
//! scale product and multiply-add (a quad, as in the VNNI kernel). The file's bytes are read as
//! they are.

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

/// 8 i32 lanes summing to Σ w·x over one block (exact): `maddubs` takes |w| (≤ 32) and
/// x·sign(w), so each i16 pair sum is at most 2·32·128 (no saturation); `madd` widens to i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn block_dot(wv: __m256i, xv: __m256i) -> __m256i {
    let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
    _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
}

/// Σ of the 8 i32 lanes (exact).
#[inline]
#[target_feature(enable = "avx2")]
fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)))
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

/// y = rows `row_start ..` of W · x, one row at a time. Blocks go four at a time (a quad, as
/// in the VNNI kernel): each block's exact i32 lane sums, packed by `vphaddd` into
/// `[a0, a1, a2, a3, b0, b1, b2, b3]` (a_k, b_k: block k's elements 0..16 and 16..32), then one
/// conversion, one product of the four weight scales by x's and one fused multiply-add per quad.
/// The last NB % 4 whole blocks (vector) and a short block (scalar) go one at a time with exact
/// integer sums.
#[target_feature(enable = "avx2,fma,f16c")]
fn matvec_q6q8_rows_avx2(w: Q6Matrix<'_>, xq: &[i8], xd: &[f32], y: &mut [f32], row_start: usize) {
    let c = w.cols();
    let nb = w.blocks_per_row();
    let full = c / Q6_BLOCK;
    let quads = full / 4;
    assert!(xq.len() == c && xd.len() == nb, "matvec_q6q8_rows: x shape");
    for (i, out) in y.iter_mut().enumerate() {
        let (q, d) = (w.row_quants(row_start + i), w.row_scales(row_start + i));
        let mut acc = _mm256_setzero_ps();
        for g in 0..quads {
            let m: [__m256i; 4] = std::array::from_fn(|k| {
                let b = 4 * g + k;
                // SAFETY: b < full <= NB, so the block's 24 bytes lie in the row's NB × 24 bytes
                // and its 32 activations in xq (C >= full × 32).
                unsafe {
                    let wv = block_weights(q.as_ptr().add(b * Q6_BLOCK_BYTES));
                    block_dot(wv, _mm256_loadu_si256(xq.as_ptr().add(b * Q6_BLOCK).cast()))
                }
            });
            let s = _mm256_hadd_epi32(_mm256_hadd_epi32(m[0], m[1]), _mm256_hadd_epi32(m[2], m[3]));
            // SAFETY: scales 4g .. 4g + 4 lie in the row's NB (8 bytes) and in xd (NB).
            let (dw, xs) = unsafe {
                let h = d.as_ptr().add(4 * g).cast::<i64>().read_unaligned();
                let xs = _mm_loadu_ps(xd.as_ptr().add(4 * g));
                (_mm256_cvtph_ps(_mm_set1_epi64x(h)), _mm256_set_m128(xs, xs))
            };
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, xs), acc);
        }
        let mut t = hsum(acc);
        for b in 4 * quads..nb {
            let j0 = b * Q6_BLOCK;
            let s = if b < full {
                // SAFETY: b < full, as above.
                unsafe {
                    let wv = block_weights(q.as_ptr().add(b * Q6_BLOCK_BYTES));
                    hsum_i32(block_dot(
                        wv,
                        _mm256_loadu_si256(xq.as_ptr().add(j0).cast()),
                    ))
                }
            } else {
                let block = &q[b * Q6_BLOCK_BYTES..][..Q6_BLOCK_BYTES];
                (j0..c)
                    .map(|j| i32::from(q6_level(block, j - j0)) * i32::from(xq[j]))
                    .sum()
            };
            t += (h2f(d[b]) * xd[b]) * s as f32;
        }
        *out = t;
    }
}
