//! Plain reference twins of the Q4 kernels ([`super::q4`]): scalar Rust, no `unsafe`, always
//! compiled; the architecture kernels are tested against them. Sums run block by block: an
//! exact integer dot product per block, then `acc += (d_w · d_x) · dot` in f32.

#![forbid(unsafe_code)]

use super::q4_matrix::Q4Matrix;
use emberlm_formats::quant::{Q4_BLOCK, Q4_BLOCK_BYTES, Q4_CODEBOOK, q4_nibble};

/// y = rows `row_start ..` of W · x with x quantized to int8 blocks (xq (C), xd (NB)).
pub fn matvec_q4q8_rows(w: Q4Matrix<'_>, xq: &[i8], xd: &[f32], y: &mut [f32], row_start: usize) {
    let c = w.cols();
    for (i, out) in y.iter_mut().enumerate() {
        let r = row_start + i;
        let (q, d) = (w.row_quants(r), w.row_scales(r));
        let mut acc = 0f32;
        for (b, (db, xdb)) in d.iter().zip(xd).enumerate() {
            let block = &q[b * Q4_BLOCK_BYTES..][..Q4_BLOCK_BYTES];
            let j0 = b * Q4_BLOCK;
            let s: i32 = (j0..(j0 + Q4_BLOCK).min(c))
                .map(|j| {
                    i32::from(Q4_CODEBOOK[q4_nibble(block, j - j0) as usize]) * i32::from(xq[j])
                })
                .sum();
            acc += (db.to_f32() * xdb) * s as f32;
        }
        *out = acc;
    }
}

/// y = rows `row_start ..` of W · x with f32 activations (each weight dequantized exactly).
pub fn matvec_q4_rows(w: Q4Matrix<'_>, x: &[f32], y: &mut [f32], row_start: usize) {
    let c = w.cols();
    let (q, d) = (w.quants(), w.scales());
    let nb = w.blocks_per_row();
    for (i, out) in y.iter_mut().enumerate() {
        let r = row_start + i;
        let mut acc = 0f32;
        for b in 0..nb {
            let block = &q[(r * nb + b) * Q4_BLOCK_BYTES..][..Q4_BLOCK_BYTES];
            let j0 = b * Q4_BLOCK;
            let mut s = 0f32;
            for j in j0..(j0 + Q4_BLOCK).min(c) {
                s += f32::from(Q4_CODEBOOK[q4_nibble(block, j - j0) as usize]) * x[j];
            }
            acc += d[r * nb + b].to_f32() * s;
        }
        *out = acc;
    }
}
