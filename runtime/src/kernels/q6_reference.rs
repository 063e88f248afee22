//! Plain reference twins of the Q6 kernels ([`super::q6`]): scalar Rust, no `unsafe`, always
//! compiled; the architecture kernels are tested against them. Sums run block by block: an
//! exact integer dot product per block, then `acc += (d_w · d_x) · dot` in f32.

#![forbid(unsafe_code)]

use super::q6_matrix::Q6Matrix;
use emberlm_formats::quant::{Q6_BLOCK, Q6_BLOCK_BYTES, q6_level};

/// y = rows `row_start ..` of W · x with x quantized to int8 blocks (xq (C), xd (NB)).
pub fn matvec_q6q8_rows(w: Q6Matrix<'_>, xq: &[i8], xd: &[f32], y: &mut [f32], row_start: usize) {
    let c = w.cols();
    for (i, out) in y.iter_mut().enumerate() {
        let r = row_start + i;
        let (q, d) = (w.row_quants(r), w.row_scales(r));
        let mut acc = 0f32;
        for (b, (db, xdb)) in d.iter().zip(xd).enumerate() {
            let block = &q[b * Q6_BLOCK_BYTES..][..Q6_BLOCK_BYTES];
            let j0 = b * Q6_BLOCK;
            let s: i32 = (j0..(j0 + Q6_BLOCK).min(c))
                .map(|j| i32::from(q6_level(block, j - j0)) * i32::from(xq[j]))
                .sum();
            acc += (db.to_f32() * xdb) * s as f32;
        }
        *out = acc;
    }
}

/// y = rows `row_start ..` of W · x with f32 activations (each weight dequantized exactly).
pub fn matvec_q6_rows(w: Q6Matrix<'_>, x: &[f32], y: &mut [f32], row_start: usize) {
    let c = w.cols();
    for (i, out) in y.iter_mut().enumerate() {
        let r = row_start + i;
        let (q, d) = (w.row_quants(r), w.row_scales(r));
        let mut acc = 0f32;
        for (b, db) in d.iter().enumerate() {
            let block = &q[b * Q6_BLOCK_BYTES..][..Q6_BLOCK_BYTES];
            let j0 = b * Q6_BLOCK;
            let mut s = 0f32;
            for (k, &xj) in x[j0..(j0 + Q6_BLOCK).min(c)].iter().enumerate() {
                s += f32::from(q6_level(block, k)) * xj;
            }
            acc += db.to_f32() * s;
        }
        *out = acc;
    }
}
