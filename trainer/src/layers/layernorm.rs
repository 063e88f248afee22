//! LayerNorm over the channel dimension with the biased variance and eps = 1e-5 (PyTorch's
//! `nn.LayerNorm` and the book's `LayerNorm`): `out = (x − mean) / sqrt(var + eps) · scale + shift`.
//!
//! Letters: N rows (B·T), C channels.

use super::simd;
use emberlm_formats::config::LAYERNORM_EPS;
use rayon::prelude::*;

/// Rows per rayon task.
const ROW_BLOCK: usize = 16;
/// Columns per rayon task when reducing the scale/shift gradients over rows.
const COL_BLOCK: usize = 32;

/// out (N, C), mean (N), rstd (N) from inp (N, C), scale (C), shift (C).
/// `mean` and `rstd` (1/sqrt(var + eps)) are saved for backward.
pub fn forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    scale: &[f32],
    shift: &[f32],
) {
    let c = scale.len();
    assert!(out.len() == inp.len() && inp.len() == mean.len() * c && rstd.len() == mean.len());
    out.par_chunks_mut(c * ROW_BLOCK)
        .zip(mean.par_chunks_mut(ROW_BLOCK))
        .zip(rstd.par_chunks_mut(ROW_BLOCK))
        .enumerate()
        .for_each(|(blk, ((o, m), r))| {
            let inp = &inp[blk * ROW_BLOCK * c..];
            for (row, (o, (m, r))) in o.chunks_exact_mut(c).zip(m.iter_mut().zip(r)).enumerate() {
                let x = &inp[row * c..][..c];
                let mu = simd::sum(x) / c as f32;
                // Two-pass variance: numerically safer than E[x²] − mean².
                let mut var_acc = [0.0f32; 8];
                let cx = x.chunks_exact(8);
                let tail: f32 = cx.remainder().iter().map(|v| (v - mu) * (v - mu)).sum();
                for v in cx {
                    for l in 0..8 {
                        let d = v[l] - mu;
                        var_acc[l] += d * d;
                    }
                }
                let var = (var_acc.iter().sum::<f32>() + tail) / c as f32;
                let rs = 1.0 / (var + LAYERNORM_EPS).sqrt();
                for i in 0..c {
                    o[i] = (x[i] - mu) * rs * scale[i] + shift[i];
                }
                *m = mu;
                *r = rs;
            }
        });
}

/// dinp (N, C) += ∂L/∂inp; dscale (C) += Σ_n dout·x̂; dshift (C) += Σ_n dout, where
/// x̂ = (inp − mean)·rstd is recomputed from the saved statistics.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dinp: &mut [f32],
    dscale: &mut [f32],
    dshift: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    scale: &[f32],
    mean: &[f32],
    rstd: &[f32],
) {
    let c = scale.len();
    assert!(dinp.len() == inp.len() && dout.len() == inp.len() && inp.len() == mean.len() * c);
    // Rows: dx̂ = dout·scale (from o = x̂·scale + shift);
    // x̂ = (x − μ)·r with μ, r functions of the row ⇒ the usual
    // dx = r·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)).
    dinp.par_chunks_mut(c * ROW_BLOCK)
        .enumerate()
        .for_each(|(blk, di_blk)| {
            for (row_in, di) in di_blk.chunks_exact_mut(c).enumerate() {
                let row = blk * ROW_BLOCK + row_in;
                let (x, d) = (&inp[row * c..][..c], &dout[row * c..][..c]);
                let (mu, rs) = (mean[row], rstd[row]);
                let mut acc = [0.0f32; 8];
                let mut acc2 = [0.0f32; 8];
                let mut tail = (0.0f32, 0.0f32);
                let full = c / 8 * 8;
                for i0 in (0..full).step_by(8) {
                    for l in 0..8 {
                        let i = i0 + l;
                        let dn = d[i] * scale[i];
                        acc[l] += dn;
                        acc2[l] += dn * (x[i] - mu) * rs;
                    }
                }
                for i in full..c {
                    let dn = d[i] * scale[i];
                    tail.0 += dn;
                    tail.1 += dn * (x[i] - mu) * rs;
                }
                let dnorm_mean = (acc.iter().sum::<f32>() + tail.0) / c as f32;
                let dnorm_norm_mean = (acc2.iter().sum::<f32>() + tail.1) / c as f32;
                for i in 0..c {
                    let xhat = (x[i] - mu) * rs;
                    let dn = d[i] * scale[i];
                    di[i] += rs * (dn - dnorm_mean - xhat * dnorm_norm_mean);
                }
            }
        });
    // Columns: o = x̂·scale + shift ⇒ dscale += dout·x̂, dshift += dout (summed over rows).
    let n = mean.len();
    dscale
        .par_chunks_mut(COL_BLOCK)
        .zip(dshift.par_chunks_mut(COL_BLOCK))
        .enumerate()
        .for_each(|(blk, (ds, db))| {
            let c0 = blk * COL_BLOCK;
            for row in 0..n {
                let (x, d) = (
                    &inp[row * c + c0..][..ds.len()],
                    &dout[row * c + c0..][..ds.len()],
                );
                let (mu, rs) = (mean[row], rstd[row]);
                for i in 0..ds.len() {
                    ds[i] += d[i] * (x[i] - mu) * rs;
                    db[i] += d[i];
                }
            }
        });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::layers::check::{Rng, assert_close, f32s, fd_grad, weighted_sum};

    const FWD_ATOL: f64 = 1e-5;
    const FWD_RTOL: f64 = 1e-5;
    const GRAD_ATOL: f64 = 2e-5;
    const GRAD_RTOL: f64 = 1e-4;

    /// Float64 reference forward (the textbook formula, biased variance).
    pub(crate) fn reference_forward(x: &[f64], scale: &[f64], shift: &[f64]) -> Vec<f64> {
        let c = scale.len();
        let mut out = vec![0.0; x.len()];
        for (row, o) in x.chunks(c).zip(out.chunks_mut(c)) {
            let mean = row.iter().sum::<f64>() / c as f64;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / c as f64;
            for i in 0..c {
                o[i] = (row[i] - mean) / (var + LAYERNORM_EPS as f64).sqrt() * scale[i] + shift[i];
            }
        }
        out
    }

    #[test]
    fn gradient_matches_finite_differences() {
        // C = 37 exercises the 8-lane tails; N = 35 spans several row blocks.
        let (n, c) = (35, 37);
        let mut rng = Rng(3);
        let x: Vec<f64> = rng.vec(n * c, 2.0).iter().map(|v| v + 0.3).collect();
        let scale: Vec<f64> = rng.vec(c, 0.5).iter().map(|v| 1.0 + v).collect();
        let shift = rng.vec(c, 0.5);
        let w = rng.vec(n * c, 1.0);
        let (mut out, mut mean, mut rstd) = (vec![0.0f32; n * c], vec![0.0f32; n], vec![0.0f32; n]);
        forward(
            &mut out,
            &mut mean,
            &mut rstd,
            &f32s(&x),
            &f32s(&scale),
            &f32s(&shift),
        );
        assert_close(
            "layernorm out",
            &out,
            &reference_forward(&x, &scale, &shift),
            FWD_ATOL,
            FWD_RTOL,
        );

        let mut dinp = vec![0.0f32; n * c];
        let mut dscale = vec![0.0f32; c];
        let mut dshift = vec![0.0f32; c];
        backward(
            &mut dinp,
            &mut dscale,
            &mut dshift,
            &f32s(&w),
            &f32s(&x),
            &f32s(&scale),
            &mean,
            &rstd,
        );
        let gx = fd_grad(&x, |xx| {
            weighted_sum(&reference_forward(xx, &scale, &shift), &w)
        });
        let gs = fd_grad(&scale, |s| {
            weighted_sum(&reference_forward(&x, s, &shift), &w)
        });
        let gb = fd_grad(&shift, |b| {
            weighted_sum(&reference_forward(&x, &scale, b), &w)
        });
        assert_close("layernorm dinp", &dinp, &gx, GRAD_ATOL, GRAD_RTOL);
        assert_close("layernorm dscale", &dscale, &gs, GRAD_ATOL, GRAD_RTOL);
        assert_close("layernorm dshift", &dshift, &gb, GRAD_ATOL, GRAD_RTOL);
    }

    #[test]
    fn backward_accumulates() {
        let (n, c) = (3, 5);
        let mut rng = Rng(4);
        let x = f32s(&rng.vec(n * c, 1.0));
        let (scale, shift) = (vec![1.0f32; c], vec![0.0f32; c]);
        let d = f32s(&rng.vec(n * c, 1.0));
        let (mut out, mut mean, mut rstd) = (vec![0.0f32; n * c], vec![0.0f32; n], vec![0.0f32; n]);
        forward(&mut out, &mut mean, &mut rstd, &x, &scale, &shift);
        let run = |start: f32| {
            let mut di = vec![start; n * c];
            let mut ds = vec![start; c];
            let mut db = vec![start; c];
            backward(&mut di, &mut ds, &mut db, &d, &x, &scale, &mean, &rstd);
            (di, ds, db)
        };
        let (a, b) = (run(0.0), run(1.0));
        for (u, v) in
            a.0.iter()
                .chain(&a.1)
                .chain(&a.2)
                .zip(b.0.iter().chain(&b.1).chain(&b.2))
        {
            assert!((u + 1.0 - v).abs() < FWD_ATOL as f32);
        }
    }
}
