#![allow(unsafe_code)]
//! aarch64 Q4 kernels (NEON): the int4 × int8 decode product and the prefill panel's
//! dequantization. Twins: [`super::q4_reference`] and [`super::q4::Q4Matrix::dequantize_cols`].
//!
//! A block's 16 bytes give 16 low nibbles (elements 0..16) and 16 high nibbles (elements
//! 16..32); one `tbl` lookup each against the codebook turns them into signed weights, read in
//! place from the file. Products are widened with `smull`/`smlal` (two products of at most
//! 127·127 per i16 lane: no overflow) and pairwise-added into i32. Entry points take the [`Neon`]
//! token; each `unsafe` block says which length check makes its loads sound.

use super::aarch64::Neon;
use super::q4_matrix::Q4Matrix;
use core::arch::aarch64::*;
use emberlm_formats::quant::{Q4_BLOCK, Q4_BLOCK_BYTES, Q4_CODEBOOK, q4_nibble};

/// The codebook as one 16-byte table.
#[inline]
#[target_feature(enable = "neon")]
fn codebook() -> int8x16_t {
    // SAFETY: Q4_CODEBOOK is 16 readable i8.
    unsafe { vld1q_s8(Q4_CODEBOOK.as_ptr()) }
}

/// The weights of the block at `q`: elements 0..16 and 16..32.
///
/// # Safety
/// `q` must be valid for reading 16 bytes.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn block_weights(q: *const u8, table: int8x16_t) -> (int8x16_t, int8x16_t) {
    // SAFETY: the caller guarantees 16 readable bytes.
    let b = unsafe { vld1q_u8(q) };
    let lo = vandq_u8(b, vdupq_n_u8(0x0F));
    let hi = vshrq_n_u8::<4>(b);
    (vqtbl1q_s8(table, lo), vqtbl1q_s8(table, hi))
}

/// Σ w·x over 16 lanes, in i32.
#[inline]
#[target_feature(enable = "neon")]
fn dot16(w: int8x16_t, x: int8x16_t) -> int32x4_t {
    let p = vmull_s8(vget_low_s8(w), vget_low_s8(x));
    let p = vmlal_high_s8(p, w, x);
    vpaddlq_s16(p)
}

pub(super) fn matvec_q4q8_rows(
    _t: Neon,
    w: Q4Matrix<'_>,
    xq: &[i8],
    xd: &[f32],
    y: &mut [f32],
    row_start: usize,
) {
    // SAFETY: the token proves NEON.
    unsafe { matvec_q4q8_rows_neon(w, xq, xd, y, row_start) }
}

#[target_feature(enable = "neon")]
fn matvec_q4q8_rows_neon(w: Q4Matrix<'_>, xq: &[i8], xd: &[f32], y: &mut [f32], row_start: usize) {
    let c = w.cols();
    let nb = w.blocks_per_row();
    let full = c / Q4_BLOCK;
    assert!(xq.len() == c && xd.len() == nb, "matvec_q4q8_rows: x shape");
    let table = codebook();
    for (i, out) in y.iter_mut().enumerate() {
        let (q, d) = (w.row_quants(row_start + i), w.row_scales(row_start + i));
        let mut acc = vdupq_n_f32(0.0);
        for b in 0..full {
            // SAFETY: b < full <= NB: the block's 16 bytes lie in the row's NB × 16 bytes, and
            // its 32 activations in xq (C >= full × 32).
            let s = unsafe {
                let (w0, w1) = block_weights(q.as_ptr().add(b * Q4_BLOCK_BYTES), table);
                let x0 = vld1q_s8(xq.as_ptr().add(b * Q4_BLOCK));
                let x1 = vld1q_s8(xq.as_ptr().add(b * Q4_BLOCK + 16));
                vaddq_s32(dot16(w0, x0), dot16(w1, x1))
            };
            let scale = d[b].to_f32() * xd[b];
            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), scale);
        }
        let mut t = vaddvq_f32(acc);
        if full < nb {
            let j0 = full * Q4_BLOCK;
            let block = &q[full * Q4_BLOCK_BYTES..][..Q4_BLOCK_BYTES];
            let s: i32 = (j0..c)
                .map(|j| {
                    i32::from(Q4_CODEBOOK[q4_nibble(block, j - j0) as usize]) * i32::from(xq[j])
                })
                .sum();
            t += (d[full].to_f32() * xd[full]) * s as f32;
        }
        *out = t;
    }
}

pub(super) fn dequantize_cols(_t: Neon, w: Q4Matrix<'_>, r: usize, k0: usize, out: &mut [f32]) {
    // SAFETY: the token proves NEON.
    unsafe { dequantize_cols_neon(w, r, k0, out) }
}

#[target_feature(enable = "neon")]
fn dequantize_cols_neon(w: Q4Matrix<'_>, r: usize, k0: usize, out: &mut [f32]) {
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
        let dv = vdupq_n_f32(d[b].to_f32());
        // SAFETY: block b covers columns b·32 .. b·32 + 32 <= C: one of the row's NB blocks.
        let (w0, w1) = unsafe { block_weights(q.as_ptr().add(b * Q4_BLOCK_BYTES), table) };
        for (h, v) in [w0, w1].into_iter().enumerate() {
            let (a, bb) = (vmovl_s8(vget_low_s8(v)), vmovl_high_s8(v));
            let parts = [
                vmovl_s16(vget_low_s16(a)),
                vmovl_high_s16(a),
                vmovl_s16(vget_low_s16(bb)),
                vmovl_high_s16(bb),
            ];
            for (g, p) in parts.into_iter().enumerate() {
                let o = &mut ob[16 * h + 4 * g..][..4];
                // SAFETY: `o` holds exactly 4 f32.
                unsafe { vst1q_f32(o.as_mut_ptr(), vmulq_f32(vcvtq_f32_s32(p), dv)) };
            }
        }
    }
    let tail = &mut out[whole * Q4_BLOCK..];
    if !tail.is_empty() {
        let b = b0 + whole;
        let block = &q[b * Q4_BLOCK_BYTES..][..Q4_BLOCK_BYTES];
        let dv = d[b].to_f32();
        for (k, o) in tail.iter_mut().enumerate() {
            *o = f32::from(Q4_CODEBOOK[q4_nibble(block, k) as usize]) * dv;
        }
    }
}
