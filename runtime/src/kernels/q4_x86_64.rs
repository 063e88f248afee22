#![allow(unsafe_code)]
//! x86-64 Q4 kernels (AVX2 + FMA + F16C): the int4 × int8 decode product and the prefill panel's
//! dequantization. Twins: [`super::q4_reference`] and [`super::q4::Q4Matrix::dequantize_cols`].
//!
//! A block's 16 bytes become 32 nibble indices in one 256-bit register (low nibbles in the low
//! half: elements 0..16; high nibbles in the high half: elements 16..32), and one `pshufb` against
//! the codebook broadcast to both halves turns them into 32 signed weights, in place of
//! llama.cpp-style repacking: the file's bytes are read as they are. Entry points take the
//! [`Avx2`] token, which proves the features; raw-pointer loads happen after the lengths they
//! rely on were checked, and each `unsafe` block says which check.

use super::q4_matrix::Q4Matrix;
use super::x86_64::Avx2;
use core::arch::x86_64::*;
use emberlm_formats::quant::{Q4_BLOCK, Q4_BLOCK_BYTES, Q4_CODEBOOK, q4_nibble};
use half::f16;

/// One f16 to f32 with F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn h2f(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h.to_bits()))))
}

/// The codebook in both 128-bit halves, for `pshufb`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn codebook() -> __m256i {
    let mut t = [0u8; 16];
    for (t, &c) in t.iter_mut().zip(&Q4_CODEBOOK) {
        *t = c as u8;
    }
    // SAFETY: `t` is 16 readable bytes; loadu has no alignment requirement.
    let v = unsafe { _mm_loadu_si128(t.as_ptr().cast()) };
    _mm256_set_m128i(v, v)
}

/// The 32 signed weights of the block at `q` (16 bytes).
///
/// # Safety
/// `q` must be valid for reading 16 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn block_weights(q: *const u8, table: __m256i) -> __m256i {
    // SAFETY: the caller guarantees 16 readable bytes at `q`.
    let b = unsafe { _mm_loadu_si128(q.cast()) };
    let mask = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(b, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
    _mm256_shuffle_epi8(table, _mm256_set_m128i(hi, lo))
}

/// 8 f32 lanes summing to Σ w·x over one block: `maddubs` takes |w| (≤ 127) and x·sign(w), so
/// each i16 pair sum is at most 2·127·127 = 32258 (no saturation); `madd` widens to i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn block_dot(wv: __m256i, xv: __m256i) -> __m256 {
    let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
    _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
}

/// Σ of 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

pub(super) fn matvec_q4q8_rows(
    _t: Avx2,
    w: Q4Matrix<'_>,
    xq: &[i8],
    xd: &[f32],
    y: &mut [f32],
    row_start: usize,
) {
    // SAFETY: the token proves AVX2 + FMA + F16C.
    unsafe { matvec_q4q8_rows_avx2(w, xq, xd, y, row_start) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn matvec_q4q8_rows_avx2(w: Q4Matrix<'_>, xq: &[i8], xd: &[f32], y: &mut [f32], row_start: usize) {
    let c = w.cols();
    let nb = w.blocks_per_row();
    let full = c / Q4_BLOCK;
    assert!(xq.len() == c && xd.len() == nb, "matvec_q4q8_rows: x shape");
    let table = codebook();
    for (i, out) in y.iter_mut().enumerate() {
        let (q, d) = (w.row_quants(row_start + i), w.row_scales(row_start + i));
        // Two accumulators (even and odd blocks) halve the FMA dependency chain.
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut b = 0;
        while b + 2 <= full {
            // SAFETY: b + 1 < full <= NB, so both blocks' 16 bytes lie in the row's NB × 16 bytes
            // and their 32 activations in xq (C >= full × 32).
            let (s0, s1) = unsafe {
                let w0 = block_weights(q.as_ptr().add(b * Q4_BLOCK_BYTES), table);
                let w1 = block_weights(q.as_ptr().add((b + 1) * Q4_BLOCK_BYTES), table);
                let x0 = _mm256_loadu_si256(xq.as_ptr().add(b * Q4_BLOCK).cast());
                let x1 = _mm256_loadu_si256(xq.as_ptr().add((b + 1) * Q4_BLOCK).cast());
                (block_dot(w0, x0), block_dot(w1, x1))
            };
            a0 = _mm256_fmadd_ps(s0, _mm256_set1_ps(h2f(d[b]) * xd[b]), a0);
            a1 = _mm256_fmadd_ps(s1, _mm256_set1_ps(h2f(d[b + 1]) * xd[b + 1]), a1);
            b += 2;
        }
        if b < full {
            // SAFETY: b < full, as above.
            let s = unsafe {
                let w0 = block_weights(q.as_ptr().add(b * Q4_BLOCK_BYTES), table);
                block_dot(w0, _mm256_loadu_si256(xq.as_ptr().add(b * Q4_BLOCK).cast()))
            };
            a0 = _mm256_fmadd_ps(s, _mm256_set1_ps(h2f(d[b]) * xd[b]), a0);
        }
        let mut t = hsum(_mm256_add_ps(a0, a1));
        if full < nb {
            let j0 = full * Q4_BLOCK;
            let block = &q[full * Q4_BLOCK_BYTES..][..Q4_BLOCK_BYTES];
            let s: i32 = (j0..c)
                .map(|j| {
                    i32::from(Q4_CODEBOOK[q4_nibble(block, j - j0) as usize]) * i32::from(xq[j])
                })
                .sum();
            t += (h2f(d[full]) * xd[full]) * s as f32;
        }
        *out = t;
    }
}

pub(super) fn dequantize_cols(_t: Avx2, w: Q4Matrix<'_>, r: usize, k0: usize, out: &mut [f32]) {
    // SAFETY: the token proves AVX2 + FMA + F16C.
    unsafe { dequantize_cols_avx2(w, r, k0, out) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dequantize_cols_avx2(w: Q4Matrix<'_>, r: usize, k0: usize, out: &mut [f32]) {
    assert!(
        k0 % Q4_BLOCK == 0 && k0 + out.len() <= w.cols(),
        "dequantize_cols: columns"
    );
    let (q, d) = (w.row_quants(r), w.row_scales(r));
    let table = codebook();
    let b0 = k0 / Q4_BLOCK;
    let whole = out.len() / Q4_BLOCK;
    for (i, ob) in out.chunks_exact_mut(Q4_BLOCK).enumerate() {
        let b = b0 + i;
        let dv = _mm256_set1_ps(h2f(d[b]));
        // SAFETY: block b covers columns b·32 .. b·32 + 32 <= k0 + out.len() <= C, so it is one
        // of the row's NB blocks: 16 readable bytes; `ob` holds 32 f32 for the 4 stores.
        unsafe {
            let wv = block_weights(q.as_ptr().add(b * Q4_BLOCK_BYTES), table);
            let lo = _mm256_castsi256_si128(wv);
            let hi = _mm256_extracti128_si256(wv, 1);
            for (k, part) in [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)]
                .into_iter()
                .enumerate()
            {
                let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part));
                _mm256_storeu_ps(ob.as_mut_ptr().add(8 * k), _mm256_mul_ps(f, dv));
            }
        }
    }
    let tail = &mut out[whole * Q4_BLOCK..];
    if !tail.is_empty() {
        let b = b0 + whole;
        let block = &q[b * Q4_BLOCK_BYTES..][..Q4_BLOCK_BYTES];
        let dv = h2f(d[b]);
        for (k, o) in tail.iter_mut().enumerate() {
            *o = f32::from(Q4_CODEBOOK[q4_nibble(block, k) as usize]) * dv;
        }
    }
}
