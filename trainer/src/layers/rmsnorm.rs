//! RMSNorm over the last dimension (Llama, Qwen, Gemma; Hugging Face's `LlamaRMSNorm` in f32):
//! `out = x / sqrt(mean(x²) + eps) · scale`. Gemma's (1 + w) form is the same layer with the scale
//! stored as 1 + w (as `.ember` files store it). Query/key norms are this layer over rows of one
//! head (C = D, N = B·T·H).
//!
//! Letters: N rows, C channels.

use rayon::prelude::*;

/// Rows per rayon task.
const ROW_BLOCK: usize = 16;
/// Columns per rayon task when reducing the scale gradient over rows.
const COL_BLOCK: usize = 32;

/// out (N, C) and rstd (N) = 1/sqrt(mean(x²) + eps) from inp (N, C), scale (C). `rstd` is saved
/// for backward.
pub fn forward(out: &mut [f32], rstd: &mut [f32], inp: &[f32], scale: &[f32], eps: f32) {
    let c = scale.len();
    assert!(out.len() == inp.len() && inp.len() == rstd.len() * c);
    out.par_chunks_mut(c * ROW_BLOCK)
        .zip(rstd.par_chunks_mut(ROW_BLOCK))
        .enumerate()
        .for_each(|(blk, (o, r))| {
            let inp = &inp[blk * ROW_BLOCK * c..];
            for (row, (o, r)) in o.chunks_exact_mut(c).zip(r.iter_mut()).enumerate() {
                let x = &inp[row * c..][..c];
                let ms = x.iter().map(|v| v * v).sum::<f32>() / c as f32;
                let rs = 1.0 / (ms + eps).sqrt();
                for i in 0..c {
                    o[i] = x[i] * rs * scale[i];
                }
                *r = rs;
            }
        });
}

/// dinp (N, C) += ∂L/∂inp; dscale (C) += Σ_n dout·x·rstd.
pub fn backward(
    dinp: &mut [f32],
    dscale: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    scale: &[f32],
    rstd: &[f32],
) {
    let c = scale.len();
    assert!(dinp.len() == inp.len() && dout.len() == inp.len() && inp.len() == rstd.len() * c);
    // Rows: o_i = x_i·r·s_i with r = (mean(x²) + eps)^-½, ∂r/∂x_j = −r³·x_j / C, so
    // dx_j = r·s_j·d_j − r³·x_j/C · Σ_i d_i·s_i·x_i.
    dinp.par_chunks_mut(c * ROW_BLOCK)
        .enumerate()
        .for_each(|(blk, di_blk)| {
            for (row_in, di) in di_blk.chunks_exact_mut(c).enumerate() {
                let row = blk * ROW_BLOCK + row_in;
                let (x, d) = (&inp[row * c..][..c], &dout[row * c..][..c]);
                let r = rstd[row];
                let dot: f32 = (0..c).map(|i| d[i] * scale[i] * x[i]).sum();
                let k = r * r * r * dot / c as f32;
                for i in 0..c {
                    di[i] += r * scale[i] * d[i] - k * x[i];
                }
            }
        });
    // Columns: o = x·r·s ⇒ dscale += dout·x·r, summed over rows.
    let n = rstd.len();
    dscale
        .par_chunks_mut(COL_BLOCK)
        .enumerate()
        .for_each(|(blk, ds)| {
            let c0 = blk * COL_BLOCK;
            for row in 0..n {
                let (x, d) = (
                    &inp[row * c + c0..][..ds.len()],
                    &dout[row * c + c0..][..ds.len()],
                );
                for i in 0..ds.len() {
                    ds[i] += d[i] * x[i] * rstd[row];
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::check::{Rng, assert_close, f32s, fd_grad, weighted_sum};

    const EPS: f32 = 1e-6;

    /// Float64 reference forward (the textbook formula).
    fn reference(x: &[f64], scale: &[f64]) -> Vec<f64> {
        let c = scale.len();
        let mut out = vec![0.0; x.len()];
        for (row, o) in x.chunks(c).zip(out.chunks_mut(c)) {
            let ms = row.iter().map(|v| v * v).sum::<f64>() / c as f64;
            for i in 0..c {
                o[i] = row[i] / (ms + EPS as f64).sqrt() * scale[i];
            }
        }
        out
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (n, c) = (35, 37);
        let mut rng = Rng(11);
        let x = rng.vec(n * c, 2.0);
        let scale: Vec<f64> = rng.vec(c, 0.5).iter().map(|v| 1.0 + v).collect();
        let w = rng.vec(n * c, 1.0);
        let (mut out, mut rstd) = (vec![0.0f32; n * c], vec![0.0f32; n]);
        forward(&mut out, &mut rstd, &f32s(&x), &f32s(&scale), EPS);
        assert_close("rmsnorm out", &out, &reference(&x, &scale), 1e-5, 1e-5);
        let (mut dinp, mut dscale) = (vec![0.0f32; n * c], vec![0.0f32; c]);
        backward(
            &mut dinp,
            &mut dscale,
            &f32s(&w),
            &f32s(&x),
            &f32s(&scale),
            &rstd,
        );
        let gx = fd_grad(&x, |xx| weighted_sum(&reference(xx, &scale), &w));
        let gs = fd_grad(&scale, |s| weighted_sum(&reference(&x, s), &w));
        assert_close("rmsnorm dinp", &dinp, &gx, 2e-5, 1e-4);
        assert_close("rmsnorm dscale", &dscale, &gs, 2e-5, 1e-4);
    }
}
