//! The prefill product's geometry and packing, shared by the driver ([`super::panel`]) and the
//! architecture microkernels below it (`x86_64.rs`, `aarch64.rs`): the register tile
//! ([`ROWS`] × [`TOKENS`]), the weight block ([`BLOCK_ROWS`] × [`KB`]), how X is packed, and how
//! rows are split over threads. Letters as in [`super`].

#![forbid(unsafe_code)]

use std::ops::Range;

/// Tokens per packed group (two AVX2 vectors, four NEON vectors).
pub const TOKENS: usize = 16;
/// Weight rows per microkernel call.
pub const ROWS: usize = 6;
/// Columns per block (a multiple of the Q8 block). 256 and 128, and one panel of rows per block,
/// measured no faster.
pub const KB: usize = 512;
/// Weight rows converted at a time (BLOCK_ROWS × KB × 4 bytes = 48 KiB, in the L2 cache).
pub const BLOCK_ROWS: usize = 4 * ROWS;

/// Task g's rows of a G-way split of R rows (inner boundaries at multiples of 48, a whole number
/// of the microkernel's 6-row panels and 24-row blocks). Splitting finer, into 4 tasks per thread
/// taken by whichever thread is free, measured no faster.
#[cfg_attr(not(feature = "parallel"), allow(dead_code))]
pub(crate) fn row_part(rows: usize, g: usize, groups: usize) -> Range<usize> {
    let at = |g: usize| {
        if g >= groups {
            rows
        } else {
            (rows * g / groups) / 48 * 48
        }
    };
    at(g)..at(g + 1)
}

/// Elements of the packed form of N tokens of C columns.
pub fn packed_len(n: usize, c: usize) -> usize {
    n.div_ceil(TOKENS) * TOKENS * c
}

/// xp ← X (N, C) packed (N = x.len() / C); the tail of the last group is zero.
pub(crate) fn pack_tokens(x: &[f32], c: usize, xp: &mut [f32]) {
    let n = x.len() / c;
    assert_eq!(x.len(), n * c, "pack_tokens: x must be (N, C)");
    assert!(xp.len() >= packed_len(n, c), "pack_tokens: xp too short");
    for (g, dst) in xp
        .chunks_exact_mut(TOKENS * c)
        .take(n.div_ceil(TOKENS))
        .enumerate()
    {
        pack_group(x, c, g, dst);
    }
}

/// dst (C × TOKENS) ← group g of X (N, C) packed (tokens past N are zero; a group past the last
/// token leaves `dst` zero).
pub(crate) fn pack_group(x: &[f32], c: usize, g: usize, dst: &mut [f32]) {
    let n = x.len() / c;
    let t0 = (g * TOKENS).min(n);
    let tn = TOKENS.min(n - t0);
    let rows = &x[t0 * c..(t0 + tn) * c];
    for (j, col) in dst[..TOKENS * c].chunks_exact_mut(TOKENS).enumerate() {
        for (t, o) in col.iter_mut().enumerate() {
            *o = if t < tn { rows[t * c + j] } else { 0.0 };
        }
    }
}

/// Tokens per packed group of the int8 × int8 prefill panel (`panel_q8`; two 8-lane vectors).
pub const Q8_TOKENS: usize = 16;
/// Weight rows per call of that panel's microkernel.
pub const Q8_ROWS: usize = 4;
