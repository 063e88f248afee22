//! Causal multi-head self-attention on a fused q/k/v projection (the book's
//! `MultiHeadAttention` without its output projection, which is a separate Linear):
//! `att = softmax(q·kᵀ / sqrt(D))` over t2 ≤ t, dropout on `att`, `out = att·v`.
//! No mask is materialised: loops simply stop at t2 = t.
//!
//! Letters: B batch, T time, C channels, H heads, D = C/H head size.
//! Layouts: `qkv` (B, T, 3C) holds [q | k | v] per row, head h at columns h·D..(h+1)·D of each
//! part; `att` (B, T, H, T) holds the softmax weights *before* dropout (entries t2 > t are 0);
//! the dropout mask of `att[b, t, h, t2]` is element index ((b·T + t)·H + h)·T + t2.

use super::dropout::Dropout;
use super::simd::{axpy, dot};
use rayon::prelude::*;

/// Shapes of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// B.
    pub b: usize,
    /// T.
    pub t: usize,
    /// C.
    pub c: usize,
    /// H.
    pub h: usize,
}

impl Dims {
    fn d(&self) -> usize {
        self.c / self.h
    }
    fn check(&self, qkv: usize, att: usize, out: usize) {
        let Dims { b, t, c, h } = *self;
        assert!(h > 0 && c % h == 0, "attention: C must be a multiple of H");
        assert_eq!(qkv, b * t * 3 * c, "attention: qkv is (B, T, 3C)");
        assert_eq!(att, b * t * h * t, "attention: att is (B, T, H, T)");
        assert_eq!(out, b * t * c, "attention: out is (B, T, C)");
    }
}

/// out (B, T, C) and att (B, T, H, T) from qkv (B, T, 3C). Overwrites both.
/// Parallel over the B·T rows.
pub fn forward(out: &mut [f32], att: &mut [f32], qkv: &[f32], dims: Dims, drop: Dropout) {
    dims.check(qkv.len(), att.len(), out.len());
    let Dims { t, c, h, .. } = dims;
    let d = dims.d();
    let scale = 1.0 / (d as f32).sqrt();
    out.par_chunks_mut(c)
        .zip(att.par_chunks_mut(h * t))
        .enumerate()
        .for_each(|(r, (out_row, att_row))| {
            let (bi, ti) = (r / t, r % t);
            let base = bi * t; // first row of this sequence
            for hi in 0..h {
                let q = &qkv[r * 3 * c + hi * d..][..d];
                let a = &mut att_row[hi * t..][..t];
                // pre[t2] = q·k[t2] / sqrt(D), t2 ≤ t
                let mut m = f32::NEG_INFINITY;
                for t2 in 0..=ti {
                    let k = &qkv[(base + t2) * 3 * c + c + hi * d..][..d];
                    let s = dot(q, k) * scale;
                    a[t2] = s;
                    m = if s > m { s } else { m };
                }
                // att = softmax(pre)
                let mut sum = 0.0f32;
                for x in &mut a[..=ti] {
                    let e = super::simd::exp(*x - m);
                    *x = e;
                    sum += e;
                }
                let inv = 1.0 / sum;
                for x in &mut a[..=ti] {
                    *x *= inv;
                }
                a[ti + 1..].fill(0.0);
                // out = Σ_t2 dropout(att)[t2] · v[t2]
                let o = &mut out_row[hi * d..][..d];
                o.fill(0.0);
                let first = ((r * h + hi) * t) as u64;
                for (t2, &w) in a[..=ti].iter().enumerate() {
                    let w = w * drop.factor(first + t2 as u64);
                    if w != 0.0 {
                        axpy(o, w, &qkv[(base + t2) * 3 * c + 2 * c + hi * d..][..d]);
                    }
                }
            }
        });
}

/// dqkv (B, T, 3C) (overwritten) from dout (B, T, C), given the forward's qkv and att and the same
/// dropout site. `dpre` (B, T, H, T) is scratch (it ends up holding ∂L/∂pre-softmax scores).
///
/// Two passes so that every task writes only its own rows: pass 1 (per query row t) computes the
/// score gradients and dq; pass 2 (per key row t2) gathers dk and dv over the queries t ≥ t2.
pub fn backward(
    dqkv: &mut [f32],
    dpre: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    dims: Dims,
    drop: Dropout,
) {
    dims.check(qkv.len(), att.len(), dout.len());
    assert_eq!(dqkv.len(), qkv.len());
    assert_eq!(dpre.len(), att.len());
    let Dims { t, c, h, .. } = dims;
    let d = dims.d();
    let scale = 1.0 / (d as f32).sqrt();

    // Pass 1: rows t.
    dqkv.par_chunks_mut(3 * c)
        .zip(dpre.par_chunks_mut(h * t))
        .enumerate()
        .for_each(|(r, (dqkv_row, dpre_row))| {
            let (bi, ti) = (r / t, r % t);
            let base = bi * t;
            for hi in 0..h {
                let g = &dout[r * c + hi * d..][..d];
                let a = &att[(r * h + hi) * t..][..t];
                let dp = &mut dpre_row[hi * t..][..t];
                let first = ((r * h + hi) * t) as u64;
                // forward: o = Σ att_d[t2]·v[t2], att_d = att·f  ⇒  datt[t2] = (do·v[t2])·f
                for t2 in 0..=ti {
                    let f = drop.factor(first + t2 as u64);
                    dp[t2] = if f != 0.0 {
                        dot(g, &qkv[(base + t2) * 3 * c + 2 * c + hi * d..][..d]) * f
                    } else {
                        0.0
                    };
                }
                // forward: att = softmax(pre)  ⇒  dpre = att ⊙ (datt − Σ att·datt)
                let s: f32 = a[..=ti].iter().zip(&dp[..=ti]).map(|(x, y)| x * y).sum();
                for t2 in 0..=ti {
                    dp[t2] = a[t2] * (dp[t2] - s);
                }
                dp[ti + 1..].fill(0.0);
                // forward: pre[t2] = q·k[t2]·scale  ⇒  dq = scale·Σ dpre[t2]·k[t2]
                let dq = &mut dqkv_row[hi * d..][..d];
                dq.fill(0.0);
                for t2 in 0..=ti {
                    axpy(
                        dq,
                        scale * dp[t2],
                        &qkv[(base + t2) * 3 * c + c + hi * d..][..d],
                    );
                }
            }
        });

    // Pass 2: rows t2 (keys and values).
    let dpre: &[f32] = dpre;
    dqkv.par_chunks_mut(3 * c)
        .enumerate()
        .for_each(|(r2, dqkv_row)| {
            let (bi, t2) = (r2 / t, r2 % t);
            let base = bi * t;
            dqkv_row[c..].fill(0.0);
            let (dk_all, dv_all) = dqkv_row[c..].split_at_mut(c);
            for ti in t2..t {
                let r = base + ti;
                for hi in 0..h {
                    let at = (r * h + hi) * t + t2;
                    // forward: pre[t2] = q·k[t2]·scale  ⇒  dk[t2] += scale·dpre[t2]·q
                    axpy(
                        &mut dk_all[hi * d..][..d],
                        scale * dpre[at],
                        &qkv[r * 3 * c + hi * d..][..d],
                    );
                    // forward: o += att_d[t2]·v[t2]  ⇒  dv[t2] += att_d[t2]·do
                    let w = att[at] * drop.factor(at as u64);
                    if w != 0.0 {
                        axpy(&mut dv_all[hi * d..][..d], w, &dout[r * c + hi * d..][..d]);
                    }
                }
            }
        });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::layers::check::{Rng, assert_close, f32s, fd_grad, weighted_sum};

    const FWD_ATOL: f64 = 1e-6;
    const FWD_RTOL: f64 = 1e-5;
    const GRAD_ATOL: f64 = 1e-5;
    const GRAD_RTOL: f64 = 1e-4;

    /// Float64 reference forward: per (b, h), the textbook loops with an explicit causal bound.
    pub(crate) fn reference_forward(qkv: &[f64], dims: Dims, drop: Dropout) -> Vec<f64> {
        let Dims { b, t, c, h } = dims;
        let d = c / h;
        let scale = 1.0 / (d as f64).sqrt();
        let at = |bi: usize, ti: usize, part: usize, hi: usize, i: usize| {
            qkv[(bi * t + ti) * 3 * c + part * c + hi * d + i]
        };
        let mut out = vec![0.0; b * t * c];
        for bi in 0..b {
            for hi in 0..h {
                for ti in 0..t {
                    let scores: Vec<f64> = (0..=ti)
                        .map(|t2| {
                            (0..d)
                                .map(|i| at(bi, ti, 0, hi, i) * at(bi, t2, 1, hi, i))
                                .sum::<f64>()
                                * scale
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                    for (t2, s) in scores.iter().enumerate() {
                        let idx = (((bi * t + ti) * h + hi) * t + t2) as u64;
                        let w = (s - m).exp() / z * drop.factor(idx) as f64;
                        for i in 0..d {
                            out[(bi * t + ti) * c + hi * d + i] += w * at(bi, t2, 2, hi, i);
                        }
                    }
                }
            }
        }
        out
    }

    fn check(dims: Dims, drop: Dropout, seed: u64) {
        let Dims { b, t, c, h } = dims;
        let mut rng = Rng(seed);
        let qkv = rng.vec(b * t * 3 * c, 1.5);
        let w = rng.vec(b * t * c, 1.0);
        let mut out = vec![f32::NAN; b * t * c];
        let mut att = vec![f32::NAN; b * t * h * t];
        forward(&mut out, &mut att, &f32s(&qkv), dims, drop);
        assert_close(
            "attention out",
            &out,
            &reference_forward(&qkv, dims, drop),
            FWD_ATOL,
            FWD_RTOL,
        );
        let mut dqkv = vec![f32::NAN; qkv.len()];
        let mut dpre = vec![f32::NAN; att.len()];
        backward(
            &mut dqkv,
            &mut dpre,
            &f32s(&w),
            &f32s(&qkv),
            &att,
            dims,
            drop,
        );
        let g = fd_grad(&qkv, |x| {
            weighted_sum(&reference_forward(x, dims, drop), &w)
        });
        assert_close("attention dqkv", &dqkv, &g, GRAD_ATOL, GRAD_RTOL);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        check(
            Dims {
                b: 2,
                t: 5,
                c: 8,
                h: 2,
            },
            Dropout::OFF,
            10,
        );
        check(
            Dims {
                b: 1,
                t: 7,
                c: 9,
                h: 3,
            },
            Dropout::OFF,
            11,
        );
    }

    #[test]
    fn gradient_with_attention_dropout() {
        check(
            Dims {
                b: 2,
                t: 6,
                c: 8,
                h: 2,
            },
            Dropout::new(0.3, 42, 1),
            12,
        );
    }

    #[test]
    fn first_position_attends_only_to_itself() {
        // With t = 0 the output must be v[0] exactly, whatever q and k are.
        let dims = Dims {
            b: 1,
            t: 3,
            c: 4,
            h: 2,
        };
        let mut rng = Rng(13);
        let qkv = f32s(&rng.vec(3 * 12, 3.0));
        let mut out = vec![0.0; 12];
        let mut att = vec![0.0; 18];
        forward(&mut out, &mut att, &qkv, dims, Dropout::OFF);
        assert_eq!(&out[..4], &qkv[8..12]);
    }
}
