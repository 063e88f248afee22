//! Reference quantizers shared by the trainer's export and the runtime's kernels.
//!
//! - f16: round to nearest (IEEE binary16); values beyond ±65504 are an error, not an infinity.
//! - Q8 (int8 with per-block scales): a tensor is viewed as rows × cols with cols = its last
//!   dimension. Each row is cut into blocks of [`Q8_BLOCK`] = 32 consecutive elements (the last block
//!   of a row is shorter when cols % 32 != 0). A block stores one f16 scale `d` and 32 signed bytes
//!   `q`, and element `x` is stored as `q = round(x / d)` with `d >= max|x| / 127` (the smallest f16
//!   at or above it), so `|q| <= 127` and the per-element error is at most `d / 2`.
//!
//! Letters: R rows, C columns (the last dimension), NB = ceil(C / 32) blocks per row.

use half::f16;
use std::fmt;

/// Elements per Q8 block (along the last dimension).
pub const Q8_BLOCK: usize = 32;

/// Why a tensor could not be quantized.
#[derive(Clone, Debug, PartialEq)]
pub enum QuantError {
    /// The input holds a NaN or an infinity at this flat index.
    NonFinite {
        /// Flat index of the first bad element.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// The value does not fit in f16 (|x| > 65504) or its Q8 scale does not.
    OutOfRange {
        /// Flat index of the first bad element.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// Slice lengths do not match the stated shape.
    LengthMismatch {
        /// Which slice.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Found length.
        found: usize,
    },
}

impl fmt::Display for QuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantError::NonFinite { index, value } => {
                write!(
                    f,
                    "element {index} is {value}: cannot quantize a non-finite weight"
                )
            }
            QuantError::OutOfRange { index, value } => {
                write!(
                    f,
                    "element {index} = {value} is outside the range of f16 (±65504)"
                )
            }
            QuantError::LengthMismatch {
                what,
                expected,
                found,
            } => {
                write!(f, "{what} has {found} elements, expected {expected}")
            }
        }
    }
}

impl std::error::Error for QuantError {}

/// NB: Q8 blocks per row of `cols` elements.
pub fn q8_blocks_per_row(cols: usize) -> usize {
    cols.div_ceil(Q8_BLOCK)
}

/// The scale for a block whose largest magnitude is `absmax`: the smallest f16 `d` with
/// `d * 127 >= absmax`, or `None` when that exceeds f16's range.
pub fn q8_scale(absmax: f32) -> Option<f16> {
    let exact = absmax / 127.0;
    let mut d = f16::from_f32(exact);
    if d.to_f32() < exact {
        d = f16::from_bits(d.to_bits() + 1); // next f16 up (exact is positive and finite)
    }
    if d.is_finite() { Some(d) } else { None }
}

/// Quantizes `x` (R, C) into `quants` (R, C) and `scales` (R, NB).
pub fn quantize_q8(
    x: &[f32],
    cols: usize,
    quants: &mut [i8],
    scales: &mut [f16],
) -> Result<(), QuantError> {
    let rows = x.len().checked_div(cols).unwrap_or(0);
    let nb = q8_blocks_per_row(cols);
    check_len("input", rows * cols, x.len())?;
    check_len("quants", x.len(), quants.len())?;
    check_len("scales", rows * nb, scales.len())?;
    for (i, &v) in x.iter().enumerate() {
        if !v.is_finite() {
            return Err(QuantError::NonFinite { index: i, value: v });
        }
    }
    for r in 0..rows {
        for b in 0..nb {
            let start = r * cols + b * Q8_BLOCK;
            let end = (start + Q8_BLOCK).min((r + 1) * cols);
            let block = &x[start..end];
            let absmax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = q8_scale(absmax).ok_or(QuantError::OutOfRange {
                index: start,
                value: absmax,
            })?;
            scales[r * nb + b] = d;
            let df = d.to_f32();
            for (q, &v) in quants[start..end].iter_mut().zip(block) {
                *q = if df == 0.0 {
                    0
                } else {
                    (v / df).round().clamp(-127.0, 127.0) as i8
                };
            }
        }
    }
    Ok(())
}

/// Expands `quants` (R, C) and `scales` (R, NB) into `out` (R, C).
pub fn dequantize_q8(
    quants: &[i8],
    scales: &[f16],
    cols: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    let rows = quants.len().checked_div(cols).unwrap_or(0);
    let nb = q8_blocks_per_row(cols);
    check_len("quants", rows * cols, quants.len())?;
    check_len("scales", rows * nb, scales.len())?;
    check_len("output", quants.len(), out.len())?;
    for (i, (o, &q)) in out.iter_mut().zip(quants).enumerate() {
        let (r, c) = (i / cols, i % cols);
        *o = q as f32 * scales[r * nb + c / Q8_BLOCK].to_f32();
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------- Q4

/// Elements per Q4 block (along the last dimension).
pub const Q4_BLOCK: usize = 32;

/// Bytes of nibbles per Q4 block: byte `k` holds element `k` in its low nibble and element
/// `k + 16` in its high nibble.
pub const Q4_BLOCK_BYTES: usize = Q4_BLOCK / 2;

/// The 16 levels of a Q4 weight (ascending): nibble `i` stands for `Q4_CODEBOOK[i] × d`. A
/// non-linear codebook fitted by Lloyd's algorithm to the blocks of a trained GPT-2's matrices,
/// each block scaled so that its largest |x| sits on −127 (`formats/tools/q4_schemes.py`; see
/// FORMAT.md §5 and the README's measurements).
pub const Q4_CODEBOOK: [i8; 16] = [
    -127, -104, -84, -66, -50, -35, -21, -8, 5, 18, 31, 45, 61, 77, 95, 115,
];

/// Scale candidates tried per block on each side: the block's largest-|x| element `m` mapped onto
/// the lowest or the highest level times `1 + k / 32`, `k` in `-Q4_STEPS..=Q4_STEPS`.
const Q4_STEPS: i32 = 6;

/// The embeddings and the output heads (`tok_emb.weight`, `pos_emb.weight`, `out_head.weight`,
/// `head.weight`): the matrices an int4 export stored at int8 before Q6 existed; it now stores
/// them at Q6 ([`int4_keeps_q6`], the same names).
pub fn int4_keeps_q8(name: &str) -> bool {
    matches!(
        name,
        "tok_emb.weight" | "pos_emb.weight" | "out_head.weight" | "head.weight"
    )
}

/// NB: Q4 blocks per row of `cols` elements (the last one padded with zero nibbles).
pub fn q4_blocks_per_row(cols: usize) -> usize {
    cols.div_ceil(Q4_BLOCK)
}

/// The nibble whose level is nearest to `v` (the lower one on a tie).
fn q4_nearest(v: f32) -> u8 {
    let mut best = 0u8;
    let mut err = f32::INFINITY;
    for (i, &l) in Q4_CODEBOOK.iter().enumerate() {
        let e = (v - l as f32).abs();
        if e < err {
            err = e;
            best = i as u8;
        }
    }
    best
}

/// The nibbles of `block` for the scale `d` into `idx`, and the squared error Σ (x − level × d)².
fn q4_assign(block: &[f32], d: f32, idx: &mut [u8; Q4_BLOCK]) -> f32 {
    let mut err = 0f32;
    for (i, &x) in block.iter().enumerate() {
        let q = if d == 0.0 { 0 } else { q4_nearest(x / d) };
        idx[i] = q;
        let e = x - Q4_CODEBOOK[q as usize] as f32 * d;
        err += e * e;
    }
    err
}

/// Quantizes `x` (R, C) into `quants` (R, NB × 16 bytes) and `scales` (R, NB). Per block, in f32
/// arithmetic: `m` = the first element of largest |x|; for each candidate `d = f16(m / (L × (1 +
/// k/32)))`, L the lowest or the highest level and k in −6..=6 (lowest level first, k ascending),
/// every element takes the nibble of the level nearest to `x / d` (the lower on a tie); the
/// candidate with the smallest Σ (x − level × d)² wins (the first on a tie); then one least-squares
/// rescale `d' = f16(Σ x·level / Σ level²)` with those nibbles is tried the same way and kept if
/// strictly better. An all-zero block has `d = 0` and zero nibbles; so do padding nibbles.
pub fn quantize_q4(
    x: &[f32],
    cols: usize,
    quants: &mut [u8],
    scales: &mut [f16],
) -> Result<(), QuantError> {
    let rows = x.len().checked_div(cols).unwrap_or(0);
    let nb = q4_blocks_per_row(cols);
    check_len("input", rows * cols, x.len())?;
    check_len("quants", rows * nb * Q4_BLOCK_BYTES, quants.len())?;
    check_len("scales", rows * nb, scales.len())?;
    for (i, &v) in x.iter().enumerate() {
        if !v.is_finite() {
            return Err(QuantError::NonFinite { index: i, value: v });
        }
    }
    let (lo, hi) = (Q4_CODEBOOK[0] as f32, Q4_CODEBOOK[15] as f32);
    let mut idx = [0u8; Q4_BLOCK];
    let mut best_idx = [0u8; Q4_BLOCK];
    for r in 0..rows {
        for b in 0..nb {
            let start = r * cols + b * Q4_BLOCK;
            let end = (start + Q4_BLOCK).min((r + 1) * cols);
            let block = &x[start..end];
            let m = block
                .iter()
                .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let mut best = (f32::INFINITY, f16::ZERO);
            best_idx.fill(0);
            if m != 0.0 {
                let mut try_d = |d: f16, best: &mut (f32, f16), best_idx: &mut [u8; Q4_BLOCK]| {
                    let err = q4_assign(block, d.to_f32(), &mut idx);
                    if err < best.0 {
                        *best = (err, d);
                        best_idx.copy_from_slice(&idx);
                    }
                };
                for l in [lo, hi] {
                    for k in -Q4_STEPS..=Q4_STEPS {
                        let d = f16::from_f32(m / (l * (1.0 + k as f32 / 32.0)));
                        if !d.is_finite() {
                            return Err(QuantError::OutOfRange {
                                index: start,
                                value: m,
                            });
                        }
                        try_d(d, &mut best, &mut best_idx);
                    }
                }
                let (mut sxl, mut sll) = (0f32, 0f32);
                for (&v, &q) in block.iter().zip(&best_idx) {
                    let l = Q4_CODEBOOK[q as usize] as f32;
                    sxl += v * l;
                    sll += l * l;
                }
                if sll > 0.0 {
                    let d = f16::from_f32(sxl / sll);
                    if d.is_finite() {
                        try_d(d, &mut best, &mut best_idx);
                    }
                }
            }
            scales[r * nb + b] = best.1;
            let out = &mut quants[(r * nb + b) * Q4_BLOCK_BYTES..][..Q4_BLOCK_BYTES];
            for (k, o) in out.iter_mut().enumerate() {
                *o = best_idx[k] | (best_idx[k + Q4_BLOCK_BYTES] << 4);
            }
            // Padding nibbles (past the row's end) are zero.
            let len = end - start;
            for (k, o) in out.iter_mut().enumerate() {
                if k >= len {
                    *o &= 0xF0;
                }
                if k + Q4_BLOCK_BYTES >= len {
                    *o &= 0x0F;
                }
            }
        }
    }
    Ok(())
}

/// Element `k` (0..32) of a Q4 block's 16 bytes: its nibble.
pub fn q4_nibble(block: &[u8], k: usize) -> u8 {
    if k < Q4_BLOCK_BYTES {
        block[k] & 0x0F
    } else {
        block[k - Q4_BLOCK_BYTES] >> 4
    }
}

/// Expands `quants` (R, NB × 16 bytes) and `scales` (R, NB) of a (R, C) matrix into `out` (R, C).
pub fn dequantize_q4(
    quants: &[u8],
    scales: &[f16],
    cols: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    let rows = out.len().checked_div(cols).unwrap_or(0);
    let nb = q4_blocks_per_row(cols);
    check_len("output", rows * cols, out.len())?;
    check_len("quants", rows * nb * Q4_BLOCK_BYTES, quants.len())?;
    check_len("scales", rows * nb, scales.len())?;
    for (i, o) in out.iter_mut().enumerate() {
        let (r, c) = (i / cols.max(1), i % cols.max(1));
        let (b, k) = (c / Q4_BLOCK, c % Q4_BLOCK);
        let block = &quants[(r * nb + b) * Q4_BLOCK_BYTES..][..Q4_BLOCK_BYTES];
        *o = Q4_CODEBOOK[q4_nibble(block, k) as usize] as f32 * scales[r * nb + b].to_f32();
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------- Q6

/// Elements per Q6 block (along the last dimension).
pub const Q6_BLOCK: usize = 32;

/// Bytes per Q6 block: 16 bytes of low nibbles (byte `k`: element `k` low, element `k + 16`
/// high, as Q4), then 8 bytes of 2-bit highs (byte `16 + j`: elements `j`, `j + 8`, `j + 16`,
/// `j + 24` in bits 0–1, 2–3, 4–5, 6–7). An element's 6 bits are its level in two's complement.
pub const Q6_BLOCK_BYTES: usize = 24;

/// Scale candidates tried per Q6 block on each side (as Q4's, with steps of 1/64).
const Q6_STEPS: i32 = 4;

/// Whether an int4 export stores matrix `name` at 6 bits (Q6) by default: the embeddings and the
/// output heads, the names of [`int4_keeps_q8`] (README, "4-bit weights": per byte, Q6 measured
/// better than int8 and than int4 for them).
pub fn int4_keeps_q6(name: &str) -> bool {
    int4_keeps_q8(name)
}

/// NB: Q6 blocks per row of `cols` elements (the last one padded with level 0).
pub fn q6_blocks_per_row(cols: usize) -> usize {
    cols.div_ceil(Q6_BLOCK)
}

/// Element `k` (0..32) of a Q6 block's 24 bytes: its level in −32..=31.
pub fn q6_level(block: &[u8], k: usize) -> i8 {
    let lo = if k < 16 {
        block[k] & 0x0F
    } else {
        block[k - 16] >> 4
    };
    let hi = (block[16 + k % 8] >> (2 * (k / 8))) & 3;
    let u = lo | (hi << 4);
    ((u ^ 0x20) as i8) - 0x20
}

/// Stores `levels` (32, each in −32..=31) as one Q6 block into `out` (24 bytes).
pub fn q6_pack(levels: &[i8; Q6_BLOCK], out: &mut [u8]) {
    let u = levels.map(|l| (l as u8) & 0x3F);
    for k in 0..16 {
        out[k] = (u[k] & 0x0F) | ((u[k + 16] & 0x0F) << 4);
    }
    for j in 0..8 {
        out[16 + j] = (u[j] >> 4)
            | ((u[j + 8] >> 4) << 2)
            | ((u[j + 16] >> 4) << 4)
            | ((u[j + 24] >> 4) << 6);
    }
}

/// The levels of `block` for the scale `d` into `q`, and the squared error Σ (x − q × d)².
fn q6_assign(block: &[f32], d: f32, q: &mut [i8; Q6_BLOCK]) -> f32 {
    let mut err = 0f32;
    for (i, &x) in block.iter().enumerate() {
        let l = if d == 0.0 {
            0
        } else {
            (x / d).round().clamp(-32.0, 31.0) as i8
        };
        q[i] = l;
        let e = x - l as f32 * d;
        err += e * e;
    }
    err
}

/// Quantizes `x` (R, C) into `quants` (R, NB × 24 bytes) and `scales` (R, NB). Per block, in f32
/// arithmetic: `m` = the first element of largest |x|; for each candidate `d = f16(m / (L × (1 +
/// k/64)))`, L = −32 or 31 and k in −4..=4 (−32 first, k ascending), every element takes the
/// level `round(x / d)` clamped to −32..=31; the candidate with the smallest Σ (x − level × d)²
/// wins (the first on a tie); then one least-squares rescale `d' = f16(Σ x·level / Σ level²)` with
/// those levels is tried the same way and kept if strictly better. An all-zero block has `d = 0`
/// and levels 0; so do padding elements.
pub fn quantize_q6(
    x: &[f32],
    cols: usize,
    quants: &mut [u8],
    scales: &mut [f16],
) -> Result<(), QuantError> {
    let rows = x.len().checked_div(cols).unwrap_or(0);
    let nb = q6_blocks_per_row(cols);
    check_len("input", rows * cols, x.len())?;
    check_len("quants", rows * nb * Q6_BLOCK_BYTES, quants.len())?;
    check_len("scales", rows * nb, scales.len())?;
    for (i, &v) in x.iter().enumerate() {
        if !v.is_finite() {
            return Err(QuantError::NonFinite { index: i, value: v });
        }
    }
    let mut lv = [0i8; Q6_BLOCK];
    let mut best_lv = [0i8; Q6_BLOCK];
    for r in 0..rows {
        for b in 0..nb {
            let start = r * cols + b * Q6_BLOCK;
            let end = (start + Q6_BLOCK).min((r + 1) * cols);
            let block = &x[start..end];
            let m = block
                .iter()
                .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let mut best = (f32::INFINITY, f16::ZERO);
            best_lv.fill(0);
            if m != 0.0 {
                let mut try_d = |d: f16, best: &mut (f32, f16), best_lv: &mut [i8; Q6_BLOCK]| {
                    let err = q6_assign(block, d.to_f32(), &mut lv);
                    if err < best.0 {
                        *best = (err, d);
                        best_lv.copy_from_slice(&lv);
                    }
                };
                for l in [-32f32, 31.0] {
                    for k in -Q6_STEPS..=Q6_STEPS {
                        let d = f16::from_f32(m / (l * (1.0 + k as f32 / 64.0)));
                        if !d.is_finite() {
                            return Err(QuantError::OutOfRange {
                                index: start,
                                value: m,
                            });
                        }
                        try_d(d, &mut best, &mut best_lv);
                    }
                }
                let (mut sxl, mut sll) = (0f32, 0f32);
                for (&v, &q) in block.iter().zip(&best_lv) {
                    sxl += v * q as f32;
                    sll += q as f32 * q as f32;
                }
                if sll > 0.0 {
                    let d = f16::from_f32(sxl / sll);
                    if d.is_finite() {
                        try_d(d, &mut best, &mut best_lv);
                    }
                }
            }
            scales[r * nb + b] = best.1;
            // Padding elements (past the row's end) are level 0.
            best_lv[end - start..].fill(0);
            q6_pack(
                &best_lv,
                &mut quants[(r * nb + b) * Q6_BLOCK_BYTES..][..Q6_BLOCK_BYTES],
            );
        }
    }
    Ok(())
}

/// Expands `quants` (R, NB × 24 bytes) and `scales` (R, NB) of a (R, C) matrix into `out` (R, C).
pub fn dequantize_q6(
    quants: &[u8],
    scales: &[f16],
    cols: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    let rows = out.len().checked_div(cols).unwrap_or(0);
    let nb = q6_blocks_per_row(cols);
    check_len("output", rows * cols, out.len())?;
    check_len("quants", rows * nb * Q6_BLOCK_BYTES, quants.len())?;
    check_len("scales", rows * nb, scales.len())?;
    for (i, o) in out.iter_mut().enumerate() {
        let (r, c) = (i / cols.max(1), i % cols.max(1));
        let (b, k) = (c / Q6_BLOCK, c % Q6_BLOCK);
        let block = &quants[(r * nb + b) * Q6_BLOCK_BYTES..][..Q6_BLOCK_BYTES];
        *o = q6_level(block, k) as f32 * scales[r * nb + b].to_f32();
    }
    Ok(())
}

/// Rounds `x` to f16 into `out`; fails on non-finite or out-of-range values.
pub fn quantize_f16(x: &[f32], out: &mut [f16]) -> Result<(), QuantError> {
    check_len("output", x.len(), out.len())?;
    for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        if !v.is_finite() {
            return Err(QuantError::NonFinite { index: i, value: v });
        }
        let h = f16::from_f32(v);
        if !h.is_finite() {
            return Err(QuantError::OutOfRange { index: i, value: v });
        }
        *o = h;
    }
    Ok(())
}

fn check_len(what: &'static str, expected: usize, found: usize) -> Result<(), QuantError> {
    if expected == found {
        Ok(())
    } else {
        Err(QuantError::LengthMismatch {
            what,
            expected,
            found,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q8_roundtrip(x: &[f32], cols: usize) -> (Vec<f32>, Vec<f16>) {
        let rows = x.len() / cols;
        let mut q = vec![0i8; x.len()];
        let mut s = vec![f16::ZERO; rows * q8_blocks_per_row(cols)];
        quantize_q8(x, cols, &mut q, &mut s).unwrap();
        let mut out = vec![0f32; x.len()];
        dequantize_q8(&q, &s, cols, &mut out).unwrap();
        (out, s)
    }

    proptest! {
        // The per-element error is at most half a step, and the step is at most absmax/127 rounded
        // up to the next f16 (relative 2^-10 above, or one f16 subnormal step).
        #[test]
        fn q8_error_is_within_half_a_step(
            rows in 1usize..5, cols in 1usize..100, scale in 1e-6f32..1e4,
            seed in any::<u64>(),
        ) {
            let mut state = seed | 1;
            let x: Vec<f32> = (0..rows * cols).map(|_| {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            }).collect();
            let (y, s) = q8_roundtrip(&x, cols);
            let nb = q8_blocks_per_row(cols);
            for r in 0..rows {
                for b in 0..nb {
                    let lo = r * cols + b * Q8_BLOCK;
                    let hi = (lo + Q8_BLOCK).min((r + 1) * cols);
                    let absmax = x[lo..hi].iter().fold(0f32, |m, v| m.max(v.abs()));
                    let d = s[r * nb + b].to_f32();
                    prop_assert!(d * 127.0 >= absmax);
                    prop_assert!(d <= absmax / 127.0 * (1.0 + 1.0 / 1024.0) + 6.0e-8);
                    for i in lo..hi {
                        prop_assert!((x[i] - y[i]).abs() <= d / 2.0 * (1.0 + 1e-6), "{} vs {}", x[i], y[i]);
                    }
                }
            }
        }

        // Quantizing a dequantized tensor gives back the same bytes (the grid is a fixed point).
        #[test]
        fn q8_round_trip_is_stable(cols in 1usize..70, vals in proptest::collection::vec(-100f32..100.0, 1..300)) {
            let n = vals.len() / cols * cols;
            prop_assume!(n > 0);
            let (y, s1) = q8_roundtrip(&vals[..n], cols);
            let (z, s2) = q8_roundtrip(&y, cols);
            prop_assert_eq!(s1, s2);
            prop_assert_eq!(y, z);
        }

        // f16: relative error at most 2^-11 for normal values, round trip exact.
        #[test]
        fn f16_error_bound_and_round_trip(vals in proptest::collection::vec(-65000f32..65000.0, 0..200)) {
            let mut h = vec![f16::ZERO; vals.len()];
            quantize_f16(&vals, &mut h).unwrap();
            for (v, h) in vals.iter().zip(&h) {
                let back = h.to_f32();
                prop_assert!((v - back).abs() <= v.abs() / 2048.0 + 3.0e-8, "{v} -> {back}");
                let again = f16::from_f32(back);
                prop_assert_eq!(again.to_bits(), h.to_bits());
            }
        }
    }

    fn q4_roundtrip(x: &[f32], cols: usize) -> (Vec<f32>, Vec<f16>, Vec<u8>) {
        let rows = x.len() / cols;
        let nb = q4_blocks_per_row(cols);
        let mut q = vec![0u8; rows * nb * Q4_BLOCK_BYTES];
        let mut s = vec![f16::ZERO; rows * nb];
        quantize_q4(x, cols, &mut q, &mut s).unwrap();
        let mut out = vec![0f32; x.len()];
        dequantize_q4(&q, &s, cols, &mut out).unwrap();
        (out, s, q)
    }

    /// Σ (x − level × d)² of one block with the plain scale d = f16(m / lowest level), every
    /// element on its nearest level: the quantizer's first candidate, computed independently.
    fn q4_plain_sse(block: &[f32]) -> (f32, f32) {
        let m = block
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = f16::from_f32(m / Q4_CODEBOOK[0] as f32).to_f32();
        let sse = block
            .iter()
            .map(|&x| {
                let e = Q4_CODEBOOK
                    .iter()
                    .map(|&l| (x - l as f32 * d).abs())
                    .fold(f32::INFINITY, f32::min);
                e * e
            })
            .sum();
        (sse, d)
    }

    proptest! {
        // Each block's error is at most that of the plain scale (the first candidate), and every
        // element of the plain grid is within half the widest gap between levels (or the distance
        // from the top level to |m|, the asymmetric end) of the scale.
        #[test]
        fn q4_error_is_bounded(
            rows in 1usize..4, cols in 1usize..100, scale in 1e-4f32..1e3,
            seed in any::<u64>(),
        ) {
            let mut state = seed | 1;
            let x: Vec<f32> = (0..rows * cols).map(|_| {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            }).collect();
            let (y, _, _) = q4_roundtrip(&x, cols);
            let gap = Q4_CODEBOOK.windows(2).map(|w| (w[1] - w[0]) as f32).fold(0f32, f32::max);
            let top = (-(Q4_CODEBOOK[0] as f32) - Q4_CODEBOOK[15] as f32).max(gap / 2.0);
            for r in 0..rows {
                for b in 0..q4_blocks_per_row(cols) {
                    let lo = r * cols + b * Q4_BLOCK;
                    let hi = (lo + Q4_BLOCK).min((r + 1) * cols);
                    let sse: f32 = (lo..hi).map(|i| (x[i] - y[i]) * (x[i] - y[i])).sum();
                    let (plain, d) = q4_plain_sse(&x[lo..hi]);
                    prop_assert!(sse <= plain * (1.0 + 1e-5) + 1e-30, "{sse} > {plain}");
                    let bound = d.abs() * top * 1.001 + 1e-30;
                    prop_assert!(plain <= bound * bound * (hi - lo) as f32, "{plain} {bound}");
                }
            }
        }

        // Quantizing a dequantized tensor gives back a tensor at least as close (the grid is
        // reachable), and padding nibbles are zero.
        #[test]
        fn q4_padding_is_zero(cols in 1usize..70, vals in proptest::collection::vec(-100f32..100.0, 1..300)) {
            let n = vals.len() / cols * cols;
            prop_assume!(n > 0);
            let (_, _, q) = q4_roundtrip(&vals[..n], cols);
            let nb = q4_blocks_per_row(cols);
            for r in 0..n / cols {
                let last = &q[(r * nb + nb - 1) * Q4_BLOCK_BYTES..][..Q4_BLOCK_BYTES];
                for k in (cols - (nb - 1) * Q4_BLOCK)..Q4_BLOCK {
                    prop_assert_eq!(q4_nibble(last, k), 0);
                }
            }
        }
    }

    fn q6_roundtrip(x: &[f32], cols: usize) -> (Vec<f32>, Vec<f16>, Vec<u8>) {
        let rows = x.len() / cols;
        let nb = q6_blocks_per_row(cols);
        let mut q = vec![0u8; rows * nb * Q6_BLOCK_BYTES];
        let mut s = vec![f16::ZERO; rows * nb];
        quantize_q6(x, cols, &mut q, &mut s).unwrap();
        let mut out = vec![0f32; x.len()];
        dequantize_q6(&q, &s, cols, &mut out).unwrap();
        (out, s, q)
    }

    proptest! {
        // Packing is a bijection on −32..=31: every level comes back (checked against the plain
        // bit definition: the low 4 bits from the nibbles, the top 2 from the high bytes).
        #[test]
        fn q6_pack_round_trips(levels in proptest::array::uniform32(-32i8..=31)) {
            let mut b = [0u8; Q6_BLOCK_BYTES];
            q6_pack(&levels, &mut b);
            for (k, &l) in levels.iter().enumerate() {
                prop_assert_eq!(q6_level(&b, k), l);
                let nib = if k < 16 { b[k] & 15 } else { b[k - 16] >> 4 };
                let hi = (b[16 + k % 8] >> (2 * (k / 8))) & 3;
                let v = i32::from(nib) + 16 * i32::from(hi);
                prop_assert_eq!(if v >= 32 { v - 64 } else { v }, i32::from(l));
            }
        }

        // Each block's squared error is at most that of the plain scale d = f16(m / −32) with
        // every element rounded (the first candidate, computed here independently), and that
        // plain error is at most one step |d| per element (half a step, plus the clamp at +31).
        #[test]
        fn q6_error_is_bounded(
            rows in 1usize..4, cols in 1usize..100, scale in 1e-4f32..1e3,
            seed in any::<u64>(),
        ) {
            let mut state = seed | 1;
            let x: Vec<f32> = (0..rows * cols).map(|_| {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            }).collect();
            let (y, _, q) = q6_roundtrip(&x, cols);
            let nb = q6_blocks_per_row(cols);
            for r in 0..rows {
                for b in 0..nb {
                    let lo = r * cols + b * Q6_BLOCK;
                    let hi = (lo + Q6_BLOCK).min((r + 1) * cols);
                    let blk = &x[lo..hi];
                    let m = blk.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                    let d = f64::from(f16::from_f32(m / -32.0).to_f32());
                    let plain: f64 = blk.iter().map(|&v| {
                        let l = (f64::from(v) / d).round().clamp(-32.0, 31.0);
                        (f64::from(v) - l * d).powi(2)
                    }).sum();
                    let sse: f64 = (lo..hi).map(|i| (f64::from(x[i]) - f64::from(y[i])).powi(2)).sum();
                    prop_assert!(sse <= plain * (1.0 + 1e-4) + 1e-30, "{sse} > {plain}");
                    prop_assert!(plain <= d * d * 1.01 * (hi - lo) as f64 + 1e-30, "{plain} {d}");
                    // Padding elements are level 0.
                    let blkq = &q[(r * nb + b) * Q6_BLOCK_BYTES..][..Q6_BLOCK_BYTES];
                    for k in hi - lo..Q6_BLOCK {
                        prop_assert_eq!(q6_level(blkq, k), 0);
                    }
                }
            }
        }
    }

    #[test]
    fn q6_exact_grid_and_errors() {
        // A block that is exactly the levels −32..=31 (stepping by 2) times 0.25 comes back exactly.
        let x: Vec<f32> = (0..32).map(|i| (2 * i - 32) as f32 * 0.25).collect();
        let (y, _, _) = q6_roundtrip(&x, 32);
        assert_eq!(y, x);
        let (y, s, q) = q6_roundtrip(&[0.0; 7], 7);
        assert_eq!((y, s, q), (vec![0.0; 7], vec![f16::ZERO], vec![0u8; 24]));
        let mut q = [0u8; 24];
        let mut s = [f16::ZERO];
        let err = quantize_q6(&[1.0, f32::NAN], 2, &mut q, &mut s).unwrap_err();
        assert!(matches!(err, QuantError::NonFinite { index: 1, .. }));
        let err = quantize_q6(&[1.0, 1e9], 2, &mut q, &mut s).unwrap_err();
        assert!(matches!(err, QuantError::OutOfRange { index: 0, .. }));
        let err = quantize_q6(&[1.0, 2.0], 2, &mut [0u8; 23], &mut s).unwrap_err();
        assert!(matches!(
            err,
            QuantError::LengthMismatch { what: "quants", .. }
        ));
    }

    #[test]
    fn q4_codebook_is_sorted_and_pinned() {
        assert!(Q4_CODEBOOK.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Q4_CODEBOOK[0], -127);
    }

    #[test]
    fn q4_exact_grid_and_errors() {
        // A block that is exactly the codebook times 0.5 comes back exactly.
        let x: Vec<f32> = (0..32).map(|i| Q4_CODEBOOK[i % 16] as f32 * 0.5).collect();
        let (y, s, _) = q4_roundtrip(&x, 32);
        assert_eq!(y, x, "scale {}", s[0]);
        let (y, s, q) = q4_roundtrip(&[0.0; 7], 7);
        assert_eq!((y, s, q), (vec![0.0; 7], vec![f16::ZERO], vec![0u8; 16]));
        let mut q = [0u8; 16];
        let mut s = [f16::ZERO];
        let err = quantize_q4(&[1.0, f32::INFINITY], 2, &mut q, &mut s).unwrap_err();
        assert!(matches!(err, QuantError::NonFinite { index: 1, .. }));
        let err = quantize_q4(&[1.0, 1e9], 2, &mut q, &mut s).unwrap_err();
        assert!(
            matches!(err, QuantError::OutOfRange { index: 0, .. }),
            "{err:?}"
        );
        let err = quantize_q4(&[1.0, 2.0], 2, &mut [0u8; 15], &mut s).unwrap_err();
        assert!(matches!(
            err,
            QuantError::LengthMismatch { what: "quants", .. }
        ));
    }

    #[test]
    fn zero_blocks_and_tails() {
        let x = [0.0f32; 5];
        let (y, s) = q8_roundtrip(&x, 5);
        assert_eq!(y, vec![0.0; 5]);
        assert_eq!(s, vec![f16::ZERO]);
        // 33 columns: two blocks per row, the second of one element.
        let x: Vec<f32> = (0..66).map(|i| i as f32 - 30.0).collect();
        let (y, s) = q8_roundtrip(&x, 33);
        assert_eq!(s.len(), 4);
        // Row 0's second block holds the single element x[32] = 2.0: stored as 127 * d, d >= 2/127.
        let d = s[1].to_f32();
        assert!(
            d * 127.0 >= 2.0 && (y[32] - x[32]).abs() <= d / 2.0,
            "{} {}",
            y[32],
            d
        );
        assert_eq!(s[2], q8_scale(34.0).unwrap()); // row 1, block 0 holds 3..=34
    }

    #[test]
    fn errors_name_the_element() {
        let mut q = [0i8; 3];
        let mut s = [f16::ZERO; 1];
        let err = quantize_q8(&[1.0, f32::NAN, 2.0], 3, &mut q, &mut s).unwrap_err();
        assert!(
            matches!(err, QuantError::NonFinite { index: 1, .. }),
            "{err:?}"
        );
        let err = quantize_q8(&[1.0, 2.0, 1e9], 3, &mut q, &mut s).unwrap_err();
        assert_eq!(
            err,
            QuantError::OutOfRange {
                index: 0,
                value: 1e9
            }
        );
        let err = quantize_f16(&[1.0, 70000.0], &mut [f16::ZERO; 2]).unwrap_err();
        assert_eq!(
            err,
            QuantError::OutOfRange {
                index: 1,
                value: 70000.0
            }
        );
        let err = quantize_q8(&[1.0, 2.0], 2, &mut q, &mut s).unwrap_err();
        assert_eq!(
            err,
            QuantError::LengthMismatch {
                what: "quants",
                expected: 2,
                found: 3
            }
        );
    }
}
