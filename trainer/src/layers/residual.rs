//! Residual (shortcut) connection: `out = skip + branch`. In the model the branch has already been
//! through its dropout site (the book's `drop_shortcut(x) + shortcut`).
//!
//! Letters: N the number of elements (B·T·C).

use rayon::prelude::*;

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// out (N) = skip (N) + branch (N). Overwrites `out`.
pub fn forward(out: &mut [f32], skip: &[f32], branch: &[f32]) {
    assert!(out.len() == skip.len() && skip.len() == branch.len());
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, o)| {
        let s = &skip[ci * CHUNK..][..o.len()];
        let b = &branch[ci * CHUNK..][..o.len()];
        for i in 0..o.len() {
            o[i] = s[i] + b[i];
        }
    });
}

/// dskip (N) += dout; dbranch (N) += dout.
///
/// In the model the gradient flowing back along the skip path *is* dout, so the model keeps dout
/// as the skip gradient and only copies it into the branch (see `Gpt::backward`); this function
/// is the general form.
pub fn backward(dskip: &mut [f32], dbranch: &mut [f32], dout: &[f32]) {
    assert!(dskip.len() == dout.len() && dbranch.len() == dout.len());
    // forward: o = s + b  ⇒  ds += do, db += do
    dskip
        .par_chunks_mut(CHUNK)
        .zip(dbranch.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(ci, (ds, db))| {
            let d = &dout[ci * CHUNK..][..ds.len()];
            for i in 0..ds.len() {
                ds[i] += d[i];
                db[i] += d[i];
            }
        });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::layers::check::{Rng, assert_close, f32s, fd_grad, weighted_sum};

    const GRAD_ATOL: f64 = 1e-6;
    const GRAD_RTOL: f64 = 1e-6;

    /// Float64 reference forward.
    pub(crate) fn reference_forward(skip: &[f64], branch: &[f64]) -> Vec<f64> {
        skip.iter().zip(branch).map(|(a, b)| a + b).collect()
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = Rng(8);
        let n = 41;
        let (s, b, w) = (rng.vec(n, 1.0), rng.vec(n, 1.0), rng.vec(n, 1.0));
        let mut out = vec![0.0f32; n];
        forward(&mut out, &f32s(&s), &f32s(&b));
        assert_close(
            "residual out",
            &out,
            &reference_forward(&s, &b),
            GRAD_ATOL,
            GRAD_RTOL,
        );
        let mut ds = vec![0.5f32; n];
        let mut db = vec![-0.5f32; n];
        backward(&mut ds, &mut db, &f32s(&w));
        let gs: Vec<f64> = fd_grad(&s, |x| weighted_sum(&reference_forward(x, &b), &w))
            .iter()
            .map(|g| g + 0.5)
            .collect();
        let gb: Vec<f64> = fd_grad(&b, |x| weighted_sum(&reference_forward(&s, x), &w))
            .iter()
            .map(|g| g - 0.5)
            .collect();
        assert_close("residual dskip", &ds, &gs, GRAD_ATOL, GRAD_RTOL);
        assert_close("residual dbranch", &db, &gb, GRAD_ATOL, GRAD_RTOL);
    }
}
