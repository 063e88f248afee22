//! Matrix × few-vectors products for batched decode ([`Kernels::matvec_multi_rows`]): rows of one
//! weight matrix against B activation vectors, each weight read once for all of them.
//!
//! Letters as in [`super`], plus B: vectors; X (B, C) holds them row-major, Y (B, P) the outputs of
//! P = `y.len() / B` consecutive weight rows (`y[v·P + i]` is vector v's output for row
//! `row_start + i`).
//!
//! Every output is **bit-identical** to the single-vector kernel of the same set
//! ([`Kernels::matvec_f32_rows`], [`Kernels::matvec_f16_rows`], [`Kernels::matvec_q8q8_rows`],
//! [`Kernels::matvec_q4q8_rows`], [`Kernels::matvec_q8_rows`]) on that vector alone: the same
//! per-lane operations in the same order and the same horizontal reduction (integer block sums,
//! being exact, may be formed in another order). So batching never changes a token.
//!
//! Which set does what:
//! - AVX-512 (`x86_64-avx512-vnni`): f32, f16, int8 × int8 and int4 × int8 have their own
//!   kernels (`multi_avx512.rs`).
//! - AVX2 (`x86_64-avx2-fma-f16c`): f32, f16 and int4 × int8 have their own kernels
//!   (`multi_avx2.rs`); int8 × int8 loops the single-vector kernel (see that file).
//! - Every set: int8 and int4 weights against f32 activations (not what decode runs) loop the
//!   single-vector kernel.
//! - The reference twins run row by row, each row against every vector in turn, through the
//!   single-vector twins' own dot products.
//! - NEON (`aarch64-neon`) loops the single-vector kernel over the vectors (the portable default;
//!   no NEON multi kernel yet).

use super::{Isa, Kernels, Mat, Q8_BLOCK, reference};

/// B activation vectors of C elements for [`Kernels::matvec_multi_rows`].
#[derive(Clone, Copy, Debug)]
pub struct Vectors<'a> {
    /// B, the number of vectors (at least 1).
    pub b: usize,
    /// C, each vector's length.
    pub c: usize,
    /// X (B, C) in f32: the input of f32 and f16 weights (and of Q8 / Q4 weights when `q` is
    /// `None`).
    pub x: &'a [f32],
    /// For Q8 and Q4 weights: X quantized by [`Kernels::quantize_q8`], vector by vector: quants
    /// (B, C) and block scales (B, NB).
    pub q: Option<(&'a [i8], &'a [f32])>,
}

impl Vectors<'_> {
    /// Vector v's f32 elements (C).
    fn x(&self, v: usize) -> &[f32] {
        &self.x[v * self.c..(v + 1) * self.c]
    }

    /// Vector v's quants (C) and block scales (NB), if quantized.
    fn q(&self, v: usize) -> Option<(&[i8], &[f32])> {
        let nb = self.c.div_ceil(Q8_BLOCK);
        self.q
            .map(|(xq, xd)| (&xq[v * self.c..(v + 1) * self.c], &xd[v * nb..(v + 1) * nb]))
    }
}

/// Bytes of scratch [`Kernels::matvec_multi_rows`] needs for B vectors of C elements (the
/// activations rearranged, B·C bytes, and the int8 and int4 kernels' scales and corrections, 64
/// bytes per 128 columns), plus 64 for the kernels to start at a cache line.
pub fn multi_scratch_len(b: usize, c: usize) -> usize {
    b * (c + c / 128 * 64) + 64
}

impl Kernels {
    /// Y (B, P) = rows `row_start .. row_start + P` of W (R, C) times each of the B vectors of
    /// `x`, on the calling thread: `y[v·P + i]` = row `row_start + i` · vector v. Each output has
    /// the bits of this set's single-vector kernel for the same row and vector (see the module
    /// docs); the weights are read once for all vectors where the set has a multi kernel.
    /// `scratch` holds at least [`multi_scratch_len`]`(B, C)` bytes (the int8 and int4
    /// kernels' rearranged activations). Allocates nothing.
    ///
    /// # Panics
    /// If B = 0, `x` is not (B, C), `q` is not (B, C) and (B, NB), `y.len()` is not a multiple
    /// of B, the rows exceed R, `scratch` is short, or W's columns are not C.
    pub fn matvec_multi_rows(
        &self,
        w: Mat<'_>,
        x: Vectors<'_>,
        y: &mut [f32],
        row_start: usize,
        scratch: &mut [u8],
    ) {
        let (b, c) = (x.b, x.c);
        assert!(b > 0, "matvec_multi_rows: B must be at least 1");
        assert_eq!(x.x.len(), b * c, "matvec_multi_rows: x must be (B, C)");
        if let Some((xq, xd)) = x.q {
            assert_eq!(xq.len(), b * c, "matvec_multi_rows: xq must be (B, C)");
            assert_eq!(
                xd.len(),
                b * c.div_ceil(Q8_BLOCK),
                "matvec_multi_rows: xd must be (B, NB)"
            );
        }
        assert_eq!(y.len() % b, 0, "matvec_multi_rows: y must be (B, P)");
        assert!(
            scratch.len() >= multi_scratch_len(b, c),
            "matvec_multi_rows: scratch is shorter than multi_scratch_len(B, C)"
        );
        let p = y.len() / b;
        let rows = w.rows(c);
        assert!(
            row_start.checked_add(p).is_some_and(|end| end <= rows),
            "matvec_multi_rows: rows {row_start}..+{p} exceed R = {rows}"
        );
        if p == 0 {
            return;
        }
        if b == 1 {
            // One vector: the single-vector kernel is the same computation, without the multi
            // kernels' per-call rearranging.
            return self.each_vector(w, x, y, row_start);
        }
        #[cfg(all(target_arch = "x86_64", ember_vnni))]
        if let Some(t) = self.wide {
            use super::multi_avx512 as m;
            match (w, x.q) {
                (Mat::F32(w), _) => return m::multi_f32(t, w, x.x, b, y, row_start),
                (Mat::F16(w), _) => return m::multi_f16(t, w, x.x, b, y, row_start),
                (Mat::Q8(w), Some((xq, xd))) => {
                    return m::multi_q8q8(t, w, (xq, xd), b, y, row_start, scratch);
                }
                (Mat::Q4(w), Some((xq, xd))) => {
                    return m::multi_q4q8(t, w, (xq, xd), b, y, row_start, scratch);
                }
                _ => return self.each_vector(w, x, y, row_start),
            }
        }
        match (self.isa, w, x.q) {
            (Isa::Reference, _, _) => reference_multi(w, x, y, row_start),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2(t), Mat::F32(w), _) => {
                super::multi_avx2::multi_f32(t, w, x.x, b, y, row_start)
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2(t), Mat::F16(w), _) => {
                super::multi_avx2::multi_f16(t, w, x.x, b, y, row_start)
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2(t), Mat::Q4(w), Some(q)) => {
                super::multi_avx2::multi_q4q8(t, w, q, b, y, row_start)
            }
            _ => self.each_vector(w, x, y, row_start),
        }
    }

    /// The portable default: this set's single-vector kernel once per vector.
    fn each_vector(&self, w: Mat<'_>, x: Vectors<'_>, y: &mut [f32], row_start: usize) {
        let p = y.len() / x.b;
        for (v, yv) in y.chunks_exact_mut(p).enumerate() {
            self.single_rows(w, x.x(v), x.q(v), yv, row_start);
        }
    }

    /// The single-vector product the session's decode runs for `w` on one input.
    fn single_rows(
        &self,
        w: Mat<'_>,
        x: &[f32],
        q: Option<(&[i8], &[f32])>,
        y: &mut [f32],
        row_start: usize,
    ) {
        match (w, q) {
            (Mat::F32(w), _) => self.matvec_f32_rows(w, x, y, row_start),
            (Mat::F16(w), _) => self.matvec_f16_rows(w, x, y, row_start),
            (Mat::Q8(w), Some((xq, xd))) => self.matvec_q8q8_rows(w, xq, xd, y, row_start),
            (Mat::Q8(w), None) => self.matvec_q8_rows(w, x, y, row_start),
            (Mat::Q4(w), Some((xq, xd))) => self.matvec_q4q8_rows(w, xq, xd, y, row_start),
            (Mat::Q4(w), None) => self.matvec_q4_rows(w, x, y, row_start),
            (Mat::Q6(w), Some((xq, xd))) => self.matvec_q6q8_rows(w, xq, xd, y, row_start),
            (Mat::Q6(w), None) => self.matvec_q6_rows(w, x, y, row_start),
        }
    }
}

/// The reference twins' multi product: row by row, each row against every vector in turn, each
/// output by the single-vector twin's own code for that row.
fn reference_multi(w: Mat<'_>, x: Vectors<'_>, y: &mut [f32], row_start: usize) {
    let p = y.len() / x.b;
    for i in 0..p {
        let r = row_start + i;
        for v in 0..x.b {
            let out = std::slice::from_mut(&mut y[v * p + i]);
            match (w, x.q(v)) {
                (Mat::F32(w), _) => reference::matvec_f32_rows(w, x.x(v), out, r),
                (Mat::F16(w), _) => reference::matvec_f16_rows(w, x.x(v), out, r),
                (Mat::Q8(w), Some((xq, xd))) => reference::matvec_q8q8_rows(w, xq, xd, out, r),
                (Mat::Q8(w), None) => reference::matvec_q8_rows(w, x.x(v), out, r),
                (Mat::Q4(w), Some((xq, xd))) => {
                    super::q4_reference::matvec_q4q8_rows(w, xq, xd, out, r)
                }
                (Mat::Q4(w), None) => super::q4_reference::matvec_q4_rows(w, x.x(v), out, r),
                (Mat::Q6(w), Some((xq, xd))) => {
                    super::q6_reference::matvec_q6q8_rows(w, xq, xd, out, r)
                }
                (Mat::Q6(w), None) => super::q6_reference::matvec_q6_rows(w, x.x(v), out, r),
            }
        }
    }
}
