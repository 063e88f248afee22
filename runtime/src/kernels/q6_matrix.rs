//! The Q6 weight matrix view (FORMAT.md §5, tag 4), apart from the kernels that read it
//! ([`super::q6`], [`super::q6_reference`] and the ISA files).

use super::ShapeError;
use emberlm_formats::quant::{Q6_BLOCK, Q6_BLOCK_BYTES, q6_level};
use half::f16;

/// A Q6 weight matrix W (R, C): `quants` (R, NB × 24 bytes) and f16 `scales` (R, NB). Borrowed,
/// `Copy`, validated once.
#[derive(Clone, Copy, Debug)]
pub struct Q6Matrix<'a> {
    quants: &'a [u8],
    scales: &'a [f16],
    rows: usize,
    cols: usize,
}

impl<'a> Q6Matrix<'a> {
    /// Views `quants` and `scales` as a (rows, cols) Q6 matrix. Errors name the slice whose
    /// length does not match (`"q6 quants"`, `"q6 scales"`), including on overflow.
    pub fn new(
        quants: &'a [u8],
        scales: &'a [f16],
        rows: usize,
        cols: usize,
    ) -> Result<Self, ShapeError> {
        super::check_blocks(
            ["q6 quants", "q6 scales"],
            (rows, cols.div_ceil(Q6_BLOCK), Q6_BLOCK_BYTES),
            (quants.len(), scales.len()),
        )?;
        Ok(Q6Matrix {
            quants,
            scales,
            rows,
            cols,
        })
    }

    /// R.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// C.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// NB = ceil(C / 32).
    pub fn blocks_per_row(&self) -> usize {
        self.cols.div_ceil(Q6_BLOCK)
    }

    /// The blocks (R, NB × 24 bytes).
    pub fn quants(&self) -> &'a [u8] {
        self.quants
    }

    /// The scales (R, NB).
    pub fn scales(&self) -> &'a [f16] {
        self.scales
    }

    /// Row `r`'s blocks (NB × 24 bytes).
    pub fn row_quants(&self, r: usize) -> &'a [u8] {
        let n = self.blocks_per_row() * Q6_BLOCK_BYTES;
        &self.quants[r * n..(r + 1) * n]
    }

    /// Row `r`'s scales (NB).
    pub fn row_scales(&self, r: usize) -> &'a [f16] {
        let nb = self.blocks_per_row();
        &self.scales[r * nb..(r + 1) * nb]
    }

    /// Row `r` dequantized into `out` (C), e.g. a token embedding.
    ///
    /// # Panics
    /// If `r >= R` or `out.len() != C`.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(
            r < self.rows,
            "dequantize_row: row {r} out of {}",
            self.rows
        );
        assert_eq!(out.len(), self.cols, "dequantize_row: out length");
        self.dequantize_cols(r, 0, out);
    }

    /// Columns `k0 .. k0 + out.len()` of row `r` as f32 (`k0` a multiple of [`Q6_BLOCK`]): the
    /// reference dequantization.
    ///
    /// # Panics
    /// If the columns are not inside row `r`.
    pub fn dequantize_cols(&self, r: usize, k0: usize, out: &mut [f32]) {
        assert!(
            k0 % Q6_BLOCK == 0 && k0 + out.len() <= self.cols,
            "dequantize_cols: columns {k0}.. of {}",
            self.cols
        );
        let q = self.row_quants(r);
        let d = self.row_scales(r);
        for (j, o) in out.iter_mut().enumerate() {
            let c = k0 + j;
            let (b, k) = (c / Q6_BLOCK, c % Q6_BLOCK);
            let block = &q[b * Q6_BLOCK_BYTES..][..Q6_BLOCK_BYTES];
            *o = f32::from(q6_level(block, k)) * d[b].to_f32();
        }
    }

    /// Row `r`'s levels into `out` (NB × 32; padding elements are level 0 as stored).
    ///
    /// # Panics
    /// If `r >= R` or `out.len() < NB × 32`.
    pub fn row_levels(&self, r: usize, out: &mut [i8]) {
        for (block, o) in self
            .row_quants(r)
            .chunks_exact(Q6_BLOCK_BYTES)
            .zip(out.chunks_exact_mut(Q6_BLOCK))
        {
            for (k, o) in o.iter_mut().enumerate() {
                *o = q6_level(block, k);
            }
        }
    }
}
