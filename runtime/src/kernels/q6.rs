//! Q6 weights (FORMAT.md §5, tag 4): the [`Kernels`] entry points (the matrix view is
//! [`super::q6_matrix`]) of the 6-bit decode product (levels −32..=31 × int8 activations) and of
//! the prefill panel's dequantization. Used for an int4 export's embedding and output head.
//!
//! Letters as in [`super`]: R rows, C columns, NB = ceil(C / 32) blocks per row. A block is 24
//! bytes (16 of low nibbles as Q4's, 8 of 2-bit highs) and one f16 scale d; element k is
//! `level × d`. The weights are read in place from the file.

use super::q6_matrix::Q6Matrix;
use super::{Isa, Kernels, q6_reference};
use emberlm_formats::quant::Q6_BLOCK;

impl Kernels {
    /// y (R) = W (R, C) · x (C), Q6 weights and f32 activations (dequantized on the fly), threaded
    /// over row chunks. The session's decode uses [`Kernels::matvec_q6q8_rows`].
    ///
    /// # Panics
    /// If `x.len() != C` or `y.len() != R`.
    pub fn matvec_q6(&self, w: Q6Matrix<'_>, x: &[f32], y: &mut [f32]) {
        assert_eq!(y.len(), w.rows(), "matvec_q6: y length must be R");
        self.split_rows(y, w.cols(), |row_start, yc| {
            self.matvec_q6_rows(w, x, yc, row_start)
        });
    }

    /// Row-range twin of [`Kernels::matvec_q6`], on the calling thread (scalar on every target).
    ///
    /// # Panics
    /// If `x.len() != C` or the rows exceed R.
    pub fn matvec_q6_rows(&self, w: Q6Matrix<'_>, x: &[f32], y: &mut [f32], row_start: usize) {
        assert_eq!(x.len(), w.cols(), "matvec_q6_rows: x length must be C");
        assert!(
            row_start + y.len() <= w.rows(),
            "matvec_q6_rows: rows exceed R"
        );
        q6_reference::matvec_q6_rows(w, x, y, row_start)
    }

    /// y = rows `row_start .. row_start + y.len()` of W (R, C) · x, Q6 weights and x quantized by
    /// [`Kernels::quantize_q8`] into xq (C) and xd (NB): each block's dot product is exact in
    /// integers, then scaled by the weight scale times the activation scale.
    ///
    /// # Panics
    /// If `xq.len() != C`, `xd.len() != NB` or the rows exceed R.
    pub fn matvec_q6q8_rows(
        &self,
        w: Q6Matrix<'_>,
        xq: &[i8],
        xd: &[f32],
        y: &mut [f32],
        row_start: usize,
    ) {
        assert_eq!(xq.len(), w.cols(), "matvec_q6q8_rows: xq length must be C");
        assert_eq!(
            xd.len(),
            w.blocks_per_row(),
            "matvec_q6q8_rows: xd length must be NB"
        );
        assert!(
            row_start + y.len() <= w.rows(),
            "matvec_q6q8_rows: rows {row_start}..+{} exceed R = {}",
            y.len(),
            w.rows()
        );
        #[cfg(all(target_arch = "x86_64", ember_vnni))]
        if let Some(t) = self.wide {
            return super::q6_avx512::matvec_q6q8_rows(t, w, xq, xd, y, row_start);
        }
        match self.isa {
            Isa::Reference => q6_reference::matvec_q6q8_rows(w, xq, xd, y, row_start),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => super::q6_x86_64::matvec_q6q8_rows(t, w, xq, xd, y, row_start),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(t) => super::q6_aarch64::matvec_q6q8_rows(t, w, xq, xd, y, row_start),
        }
    }

    /// out ← row r, columns k0 .. k0 + out.len() of W as f32 (k0 a multiple of 32): the prefill
    /// panel's load of a Q6 matrix.
    ///
    /// # Panics
    /// If the columns are not inside row `r`.
    pub fn dequantize_q6_cols(&self, w: Q6Matrix<'_>, r: usize, k0: usize, out: &mut [f32]) {
        assert!(
            k0 % Q6_BLOCK == 0 && k0 + out.len() <= w.cols() && r < w.rows(),
            "dequantize_q6_cols: row {r}, columns {k0}.. of {}",
            w.cols()
        );
        w.dequantize_cols(r, k0, out)
    }
}
