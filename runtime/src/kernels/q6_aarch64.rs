#![allow(unsafe_code)]
//! aarch64 Q6 kernel (NEON): the 6-bit × int8 decode product. Twin: [`super::q6_reference`].
//!
//! A block's 16 nibble bytes give the low 4 bits of elements 0..16 (low nibbles) and 16..32
//! (high nibbles); its 8 high-bit bytes, shifted by 0, 2, 4, 6 bits and masked, give the top 2
//! bits of elements 0..8, 8..16, 16..24, 24..32. `(u ^ 32) − 32` sign-extends. Products are
//! widened with `smull`/`smlal` (at most 2·32·128 per i16 lane) and pairwise-added into i32.

use super::aarch64::Neon;
use super::q6_matrix::Q6Matrix;
use core::arch::aarch64::*;
use emberlm_formats::quant::{Q6_BLOCK, Q6_BLOCK_BYTES, q6_level};

/// The weights of the block at `q`: elements 0..16 and 16..32.
///
/// # Safety
/// `q` must be valid for reading 24 bytes.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn block_weights(q: *const u8) -> (int8x16_t, int8x16_t) {
    // SAFETY: the caller guarantees 24 readable bytes: 16 at q, 8 at q + 16.
    let (b, h) = unsafe { (vld1q_u8(q), vld1_u8(q.add(16))) };
    let three = vdup_n_u8(3);
    let h01 = vcombine_u8(vand_u8(h, three), vand_u8(vshr_n_u8::<2>(h), three));
    let h23 = vcombine_u8(vand_u8(vshr_n_u8::<4>(h), three), vshr_n_u8::<6>(h));
    let lo = vorrq_u8(vandq_u8(b, vdupq_n_u8(0x0F)), vshlq_n_u8::<4>(h01));
    let hi = vorrq_u8(vshrq_n_u8::<4>(b), vshlq_n_u8::<4>(h23));
    let k = vdupq_n_u8(0x20);
    let s = |u: uint8x16_t| vsubq_s8(vreinterpretq_s8_u8(veorq_u8(u, k)), vdupq_n_s8(0x20));
    (s(lo), s(hi))
}

/// Σ w·x over 16 lanes, in i32.
#[inline]
#[target_feature(enable = "neon")]
fn dot16(w: int8x16_t, x: int8x16_t) -> int32x4_t {
    let p = vmull_s8(vget_low_s8(w), vget_low_s8(x));
    let p = vmlal_high_s8(p, w, x);
    vpaddlq_s16(p)
}

pub(super) fn matvec_q6q8_rows(
    _t: Neon,
    w: Q6Matrix<'_>,
    xq: &[i8],
    xd: &[f32],
    y: &mut [f32],
    row_start: usize,
) {
    // SAFETY: the token proves NEON.
    unsafe { matvec_q6q8_rows_neon(w, xq, xd, y, row_start) }
}

#[target_feature(enable = "neon")]
fn matvec_q6q8_rows_neon(w: Q6Matrix<'_>, xq: &[i8], xd: &[f32], y: &mut [f32], row_start: usize) {
    let c = w.cols();
    let nb = w.blocks_per_row();
    let full = c / Q6_BLOCK;
    assert!(xq.len() == c && xd.len() == nb, "matvec_q6q8_rows: x shape");
    for (i, out) in y.iter_mut().enumerate() {
        let (q, d) = (w.row_quants(row_start + i), w.row_scales(row_start + i));
        let mut acc = vdupq_n_f32(0.0);
        for b in 0..full {
            // SAFETY: b < full <= NB: the block's 24 bytes lie in the row's NB × 24 bytes, and
            // its 32 activations in xq (C >= full × 32).
            let s = unsafe {
                let (w0, w1) = block_weights(q.as_ptr().add(b * Q6_BLOCK_BYTES));
                let x0 = vld1q_s8(xq.as_ptr().add(b * Q6_BLOCK));
                let x1 = vld1q_s8(xq.as_ptr().add(b * Q6_BLOCK + 16));
                vaddq_s32(dot16(w0, x0), dot16(w1, x1))
            };
            let scale = d[b].to_f32() * xd[b];
            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), scale);
        }
        let mut t = vaddvq_f32(acc);
        if full < nb {
            let j0 = full * Q6_BLOCK;
            let block = &q[full * Q6_BLOCK_BYTES..][..Q6_BLOCK_BYTES];
            let s: i32 = (j0..c)
                .map(|j| i32::from(q6_level(block, j - j0)) * i32::from(xq[j]))
                .sum();
            t += (d[full].to_f32() * xd[full]) * s as f32;
        }
        *out = t;
    }
}
