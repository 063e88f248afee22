//! Q4 weights (FORMAT.md §5, tag 3): the [`Kernels`] entry points (the matrix view is
//! [`super::q4_matrix`]) of the int4 decode product (int4 weights × int8 activations) and of the prefill panel's dequantization.
//!
//! Letters as in [`super`]: R rows, C columns, NB = ceil(C / 32) blocks per row. A block is 16
//! bytes (element k in the low nibble of byte k, element k + 16 in its high nibble) and one f16
//! scale d; nibble i stands for `Q4_CODEBOOK[i] × d`. The weights are read in place from the file.

use super::q4_matrix::Q4Matrix;
use super::{Isa, Kernels, q4_reference};
use emberlm_formats::quant::Q4_BLOCK;
impl Kernels {
    /// y (R) = W (R, C) · x (C), Q4 weights and f32 activations (dequantized on the fly), threaded
    /// over row chunks. The session's decode uses [`Kernels::matvec_q4q8_rows`]; this is the
    /// general path.
    ///
    /// # Panics
    /// If `x.len() != C` or `y.len() != R`.
    pub fn matvec_q4(&self, w: Q4Matrix<'_>, x: &[f32], y: &mut [f32]) {
        assert_eq!(y.len(), w.rows(), "matvec_q4: y length must be R");
        self.split_rows(y, w.cols(), |row_start, yc| {
            self.matvec_q4_rows(w, x, yc, row_start)
        });
    }

    /// Row-range twin of [`Kernels::matvec_q4`], on the calling thread (scalar on every target).
    ///
    /// # Panics
    /// If `x.len() != C` or the rows exceed R.
    pub fn matvec_q4_rows(&self, w: Q4Matrix<'_>, x: &[f32], y: &mut [f32], row_start: usize) {
        assert_eq!(x.len(), w.cols(), "matvec_q4_rows: x length must be C");
        assert!(
            row_start + y.len() <= w.rows(),
            "matvec_q4_rows: rows exceed R"
        );
        q4_reference::matvec_q4_rows(w, x, y, row_start)
    }

    /// y = rows `row_start .. row_start + y.len()` of W (R, C) · x, Q4 weights and x quantized by
    /// [`Kernels::quantize_q8`] into xq (C) and xd (NB): each block's dot product is exact in
    /// integers, then scaled by the weight scale times the activation scale.
    ///
    /// # Panics
    /// If `xq.len() != C`, `xd.len() != NB` or the rows exceed R.
    pub fn matvec_q4q8_rows(
        &self,
        w: Q4Matrix<'_>,
        xq: &[i8],
        xd: &[f32],
        y: &mut [f32],
        row_start: usize,
    ) {
        assert_eq!(xq.len(), w.cols(), "matvec_q4q8_rows: xq length must be C");
        assert_eq!(
            xd.len(),
            w.blocks_per_row(),
            "matvec_q4q8_rows: xd length must be NB"
        );
        assert!(
            row_start + y.len() <= w.rows(),
            "matvec_q4q8_rows: rows {row_start}..+{} exceed R = {}",
            y.len(),
            w.rows()
        );
        #[cfg(all(target_arch = "x86_64", ember_vnni))]
        if let Some(t) = self.wide {
            return super::x86_64_avx512::matvec_q4q8_rows(t, w, xq, xd, y, row_start);
        }
        match self.isa {
            Isa::Reference => q4_reference::matvec_q4q8_rows(w, xq, xd, y, row_start),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => super::q4_x86_64::matvec_q4q8_rows(t, w, xq, xd, y, row_start),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(t) => super::q4_aarch64::matvec_q4q8_rows(t, w, xq, xd, y, row_start),
        }
    }

    /// out ← row r, columns k0 .. k0 + out.len() of W as f32 (k0 a multiple of 32): the prefill
    /// panel's load of a Q4 matrix.
    ///
    /// # Panics
    /// If the columns are not inside row `r`.
    pub fn dequantize_q4_cols(&self, w: Q4Matrix<'_>, r: usize, k0: usize, out: &mut [f32]) {
        assert!(
            k0 % Q4_BLOCK == 0 && k0 + out.len() <= w.cols() && r < w.rows(),
            "dequantize_q4_cols: row {r}, columns {k0}.. of {}",
            w.cols()
        );
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => super::q4_x86_64::dequantize_cols(t, w, r, k0, out),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(t) => super::q4_aarch64::dequantize_cols(t, w, r, k0, out),
            _ => w.dequantize_cols(r, k0, out),
        }
    }
}
