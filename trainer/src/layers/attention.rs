//! Causal multi-head self-attention on a fused q/k/v projection (the book's
//! `MultiHeadAttention` without its output projection, which is a separate Linear):
//! `att = softmax(q·kᵀ / sqrt(D))` over t2 ≤ t, dropout on `att`, `out = att·v`.
//! No mask is materialised: every product stops at the causal bound (row blocks of [`RB`] rows
//! only touch the key columns up to the block's last row, and softmax rows stop at t2 = t).
//!
//! Letters: B batch, T time, C channels, H heads, D = C/H head size.
//! Layouts: `qkv` (B, T, 3C) holds [q | k | v] per row, head h at columns h·D..(h+1)·D of each
//! part; `att` (B, H, T, T) holds the softmax weights *before* dropout (entries t2 > t are 0);
//! the dropout mask of `att[b, h, t, t2]` is its flat index ((b·H + h)·T + t)·T + t2.
//!
//! The fast path runs the four products of each (b, h) through the gemm wrapper, parallel over
//! (b, h); [`forward_plain`] / [`backward_plain`] are the loop twins it is tested against.

use super::dropout::Dropout;
use super::simd;
use crate::gemm::{MatMut, MatRef, Parallelism, matmul};
use rayon::prelude::*;

/// Rows per causal block: a block of query rows [r0, r1) only needs keys [0, r1).
pub const RB: usize = 64;

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
        assert_eq!(att, b * h * t * t, "attention: att is (B, H, T, T)");
        assert_eq!(out, b * t * c, "attention: out is (B, T, C)");
    }

    /// Part `part` (0 q, 1 k, 2 v) of head `hi` of sequence `bi` as a (T, D) view of qkv.
    fn part<'a>(&self, qkv: &'a [f32], bi: usize, hi: usize, part: usize) -> MatRef<'a> {
        let (t, c, d) = (self.t, self.c, self.d());
        MatRef::new(&qkv[bi * t * 3 * c + part * c + hi * d..], t, d, 3 * c, 1)
    }
}

/// out (B, T, C) and att (B, H, T, T) from qkv (B, T, 3C). Overwrites both. `oh` (B, H, T, D) and
/// `pd` (B, H, T, T) are scratch (the per-head outputs and the dropped-out weights).
pub fn forward(
    out: &mut [f32],
    att: &mut [f32],
    oh: &mut [f32],
    pd: &mut [f32],
    qkv: &[f32],
    dims: Dims,
    drop: Dropout,
) {
    dims.check(qkv.len(), att.len(), out.len());
    assert!(oh.len() == out.len() && pd.len() == att.len());
    let Dims { t, c, h, .. } = dims;
    let d = dims.d();
    let scale = 1.0 / (d as f32).sqrt();
    let tt = t * t;
    att.par_chunks_mut(tt)
        .zip(pd.par_chunks_mut(tt))
        .zip(oh.par_chunks_mut(t * d))
        .enumerate()
        .for_each(|(bh, ((a, pd), o))| {
            let (bi, hi) = (bh / h, bh % h);
            let q = dims.part(qkv, bi, hi, 0);
            let k = dims.part(qkv, bi, hi, 1);
            let v = dims.part(qkv, bi, hi, 2);
            for r0 in (0..t).step_by(RB) {
                let r1 = (r0 + RB).min(t);
                // pre[t, t2] = q[t]·k[t2] / sqrt(D) for t in [r0, r1), t2 < r1
                matmul(
                    &mut MatMut::new(&mut a[r0 * t..], r1 - r0, r1, t, 1),
                    0.0,
                    sub_rows(q, r0, r1),
                    sub_rows(k, 0, r1).t(),
                    scale,
                    Parallelism::None,
                );
                // att[t, ..=t] = softmax(pre[t, ..=t]); the rest of the row is 0
                for ti in r0..r1 {
                    softmax_row(&mut a[ti * t..(ti + 1) * t], ti);
                }
            }
            // pd = dropout(att)
            let first = (bh * tt) as u64;
            let p: &[f32] = if drop.is_active() {
                dropout_lower(pd, a, t, drop, first);
                pd
            } else {
                a
            };
            // out_h = pd · v (row blocks: rows [r0, r1) use keys [0, r1))
            for r0 in (0..t).step_by(RB) {
                let r1 = (r0 + RB).min(t);
                matmul(
                    &mut MatMut::new(&mut o[r0 * d..], r1 - r0, d, d, 1),
                    0.0,
                    MatRef::new(&p[r0 * t..], r1 - r0, r1, t, 1),
                    sub_rows(v, 0, r1),
                    1.0,
                    Parallelism::None,
                );
            }
        });
    // out[b, t, h·D..] = out_h[b, h, t, ..]
    let oh: &[f32] = oh;
    out.par_chunks_mut(c).enumerate().for_each(|(r, row)| {
        let (bi, ti) = (r / t, r % t);
        for hi in 0..h {
            row[hi * d..(hi + 1) * d].copy_from_slice(&oh[((bi * h + hi) * t + ti) * d..][..d]);
        }
    });
}

/// Rows [r0, r1) of a (T, D) view.
fn sub_rows(m: MatRef<'_>, r0: usize, r1: usize) -> MatRef<'_> {
    m.rows_range(r0, r1)
}

/// dst (T, T) = src ⊙ dropout mask on the causal lower triangle (src is 0 above it; so is dst).
/// Element (t, t2) of the block uses mask index `first + t·T + t2`.
fn dropout_lower(dst: &mut [f32], src: &[f32], t: usize, drop: Dropout, first: u64) {
    for ti in 0..t {
        let (d, s) = (&mut dst[ti * t..(ti + 1) * t], &src[ti * t..(ti + 1) * t]);
        d[..=ti].copy_from_slice(&s[..=ti]);
        drop.apply(&mut d[..=ti], first + (ti * t) as u64);
        d[ti + 1..].fill(0.0);
    }
}

/// In place: row[..=last] ← softmax(row[..=last]); row[last+1..] ← 0.
fn softmax_row(row: &mut [f32], last: usize) {
    let (live, dead) = row.split_at_mut(last + 1);
    let m = simd::max(live);
    // Exponentiate first (a loop that vectorizes), then sum with independent accumulators.
    for x in live.iter_mut() {
        *x = simd::exp(*x - m);
    }
    let inv = 1.0 / simd::sum(live);
    for x in live.iter_mut() {
        *x *= inv;
    }
    dead.fill(0.0);
}

/// dqkv (B, T, 3C) (overwritten) from dout (B, T, C), given the forward's qkv and att and the same
/// dropout site. `dpre` (B, H, T, T) and `dh` (B, H, 3, T, D) are scratch.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dqkv: &mut [f32],
    dpre: &mut [f32],
    dh: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    dims: Dims,
    drop: Dropout,
) {
    dims.check(qkv.len(), att.len(), dout.len());
    assert!(dqkv.len() == qkv.len() && dpre.len() == att.len() && dh.len() == qkv.len());
    let Dims { t, c, h, .. } = dims;
    let d = dims.d();
    let scale = 1.0 / (d as f32).sqrt();
    let tt = t * t;
    dpre.par_chunks_mut(tt)
        .zip(dh.par_chunks_mut(3 * t * d))
        .enumerate()
        .for_each(|(bh, (dp, dhh))| {
            let (bi, hi) = (bh / h, bh % h);
            let a = &att[bh * tt..][..tt];
            let q = dims.part(qkv, bi, hi, 0);
            let k = dims.part(qkv, bi, hi, 1);
            let v = dims.part(qkv, bi, hi, 2);
            let g = MatRef::new(&dout[bi * t * c + hi * d..], t, d, c, 1);
            let (dq, rest) = dhh.split_at_mut(t * d);
            let (dk, dv) = rest.split_at_mut(t * d);
            let first = (bh * tt) as u64;
            // forward: out = pd · v  ⇒  dv = pdᵀ · dout (rows t2 use queries t ≥ t2)
            let p: &[f32] = if drop.is_active() {
                dropout_lower(dp, a, t, drop, first);
                dp
            } else {
                a
            };
            for r0 in (0..t).step_by(RB) {
                let r1 = (r0 + RB).min(t);
                matmul(
                    &mut MatMut::new(&mut dv[r0 * d..], r1 - r0, d, d, 1),
                    0.0,
                    MatRef::new(&p[r0 * t + r0..], t - r0, r1 - r0, t, 1).t(),
                    sub_rows(g, r0, t),
                    1.0,
                    Parallelism::None,
                );
            }
            // forward: out = pd · v  ⇒  dpd[t, t2] = dout[t] · v[t2] (t2 < r1 for row block)
            for r0 in (0..t).step_by(RB) {
                let r1 = (r0 + RB).min(t);
                matmul(
                    &mut MatMut::new(&mut dp[r0 * t..], r1 - r0, r1, t, 1),
                    0.0,
                    sub_rows(g, r0, r1),
                    sub_rows(v, 0, r1).t(),
                    1.0,
                    Parallelism::None,
                );
            }
            // forward: pd = att ⊙ mask/(1−p)  ⇒  datt = dpd ⊙ mask/(1−p)
            // forward: att = softmax(pre)     ⇒  dpre = att ⊙ (datt − Σ att·datt), 0 above t
            for ti in 0..t {
                let row = &mut dp[ti * t..(ti + 1) * t];
                let arow = &a[ti * t..(ti + 1) * t];
                if drop.is_active() {
                    drop.apply(&mut row[..=ti], first + (ti * t) as u64);
                }
                let s = simd::dot(&arow[..=ti], &row[..=ti]);
                for t2 in 0..=ti {
                    row[t2] = arow[t2] * (row[t2] - s);
                }
                row[ti + 1..].fill(0.0);
            }
            for r0 in (0..t).step_by(RB) {
                let r1 = (r0 + RB).min(t);
                // forward: pre = scale · q · kᵀ  ⇒  dq = scale · dpre · k
                matmul(
                    &mut MatMut::new(&mut dq[r0 * d..], r1 - r0, d, d, 1),
                    0.0,
                    MatRef::new(&dp[r0 * t..], r1 - r0, r1, t, 1),
                    sub_rows(k, 0, r1),
                    scale,
                    Parallelism::None,
                );
                // forward: pre = scale · q · kᵀ  ⇒  dk = scale · dpreᵀ · q (keys r use t ≥ r)
                matmul(
                    &mut MatMut::new(&mut dk[r0 * d..], r1 - r0, d, d, 1),
                    0.0,
                    MatRef::new(&dp[r0 * t + r0..], t - r0, r1 - r0, t, 1).t(),
                    sub_rows(q, r0, t),
                    scale,
                    Parallelism::None,
                );
            }
        });
    // dqkv[b, t, part·C + h·D..] = dh[b, h, part, t, ..]
    let dh: &[f32] = dh;
    dqkv.par_chunks_mut(3 * c).enumerate().for_each(|(r, row)| {
        let (bi, ti) = (r / t, r % t);
        for hi in 0..h {
            for part in 0..3 {
                let src = &dh[(((bi * h + hi) * 3 + part) * t + ti) * d..][..d];
                row[part * c + hi * d..][..d].copy_from_slice(src);
            }
        }
    });
}

/// The plain twin of [`forward`]: per (b, h, t) loops, no gemm, no scratch.
pub fn forward_plain(out: &mut [f32], att: &mut [f32], qkv: &[f32], dims: Dims, drop: Dropout) {
    dims.check(qkv.len(), att.len(), out.len());
    let Dims { b, t, c, h } = dims;
    let d = dims.d();
    let scale = 1.0 / (d as f32).sqrt();
    let at =
        |bi: usize, ti: usize, part: usize, hi: usize| (bi * t + ti) * 3 * c + part * c + hi * d;
    out.fill(0.0);
    for bi in 0..b {
        for hi in 0..h {
            for ti in 0..t {
                let row = &mut att[((bi * h + hi) * t + ti) * t..][..t];
                for (t2, x) in row[..=ti].iter_mut().enumerate() {
                    let (qo, ko) = (at(bi, ti, 0, hi), at(bi, t2, 1, hi));
                    *x = (0..d).map(|i| qkv[qo + i] * qkv[ko + i]).sum::<f32>() * scale;
                }
                softmax_row(row, ti);
                for (t2, &a) in row[..=ti].iter().enumerate() {
                    let idx = (((bi * h + hi) * t + ti) * t + t2) as u64;
                    let w = a * drop.factor(idx);
                    let vo = at(bi, t2, 2, hi);
                    for i in 0..d {
                        out[(bi * t + ti) * c + hi * d + i] += w * qkv[vo + i];
                    }
                }
            }
        }
    }
}

/// The plain twin of [`backward`]: per (b, h, t) loops, accumulating into a zeroed dqkv.
pub fn backward_plain(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    dims: Dims,
    drop: Dropout,
) {
    dims.check(qkv.len(), att.len(), dout.len());
    let Dims { b, t, c, h } = dims;
    let d = dims.d();
    let scale = 1.0 / (d as f32).sqrt();
    let at =
        |bi: usize, ti: usize, part: usize, hi: usize| (bi * t + ti) * 3 * c + part * c + hi * d;
    dqkv.fill(0.0);
    let mut datt = vec![0.0f32; t];
    for bi in 0..b {
        for hi in 0..h {
            for ti in 0..t {
                let arow = &att[((bi * h + hi) * t + ti) * t..][..t];
                let go = (bi * t + ti) * c + hi * d;
                for t2 in 0..=ti {
                    let f = drop.factor((((bi * h + hi) * t + ti) * t + t2) as u64);
                    let vo = at(bi, t2, 2, hi);
                    // out += att·f·v  ⇒  dv += att·f·dout ; datt = f·(dout·v)
                    datt[t2] = f * (0..d).map(|i| dout[go + i] * qkv[vo + i]).sum::<f32>();
                    for i in 0..d {
                        dqkv[vo + i] += arow[t2] * f * dout[go + i];
                    }
                }
                let s: f32 = (0..=ti).map(|t2| arow[t2] * datt[t2]).sum();
                for t2 in 0..=ti {
                    let dpre = arow[t2] * (datt[t2] - s) * scale;
                    let (qo, ko) = (at(bi, ti, 0, hi), at(bi, t2, 1, hi));
                    for i in 0..d {
                        dqkv[qo + i] += dpre * qkv[ko + i];
                        dqkv[ko + i] += dpre * qkv[qo + i];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::layers::check::{Rng, assert_close, f32s, fd_grad, weighted_sum};

    const FWD_ATOL: f64 = 1e-6;
    const FWD_RTOL: f64 = 1e-5;
    const GRAD_ATOL: f64 = 1e-5;
    const GRAD_RTOL: f64 = 1e-4;
    /// Fast vs plain twin (both f32; different summation orders).
    const TWIN_ATOL: f64 = 2e-5;
    const TWIN_RTOL: f64 = 1e-4;

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
                        let idx = (((bi * h + hi) * t + ti) * t + t2) as u64;
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

    fn run_fast(
        qkv: &[f32],
        dout: &[f32],
        dims: Dims,
        drop: Dropout,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let Dims { b, t, c, h } = dims;
        let mut out = vec![f32::NAN; b * t * c];
        let mut att = vec![f32::NAN; b * h * t * t];
        let mut oh = vec![f32::NAN; b * t * c];
        let mut pd = vec![f32::NAN; att.len()];
        forward(&mut out, &mut att, &mut oh, &mut pd, qkv, dims, drop);
        let mut dqkv = vec![f32::NAN; qkv.len()];
        let mut dh = vec![f32::NAN; qkv.len()];
        backward(&mut dqkv, &mut pd, &mut dh, dout, qkv, &att, dims, drop);
        (out, att, dqkv)
    }

    fn check(dims: Dims, drop: Dropout, seed: u64) {
        let Dims { b, t, c, .. } = dims;
        let mut rng = Rng(seed);
        let qkv = rng.vec(b * t * 3 * c, 1.5);
        let w = rng.vec(b * t * c, 1.0);
        let (out, _, dqkv) = run_fast(&f32s(&qkv), &f32s(&w), dims, drop);
        assert_close(
            "attention out",
            &out,
            &reference_forward(&qkv, dims, drop),
            FWD_ATOL,
            FWD_RTOL,
        );
        let g = fd_grad(&qkv, |x| {
            weighted_sum(&reference_forward(x, dims, drop), &w)
        });
        assert_close("attention dqkv", &dqkv, &g, GRAD_ATOL, GRAD_RTOL);
        let (plain_out, plain_dqkv) = run_plain(&f32s(&qkv), &f32s(&w), dims, drop);
        assert_close(
            "plain attention out",
            &plain_out,
            &reference_forward(&qkv, dims, drop),
            FWD_ATOL,
            FWD_RTOL,
        );
        assert_close(
            "plain attention dqkv",
            &plain_dqkv,
            &g,
            GRAD_ATOL,
            GRAD_RTOL,
        );
    }

    fn run_plain(qkv: &[f32], dout: &[f32], dims: Dims, drop: Dropout) -> (Vec<f32>, Vec<f32>) {
        let Dims { b, t, c, h } = dims;
        let mut out = vec![f32::NAN; b * t * c];
        let mut att = vec![f32::NAN; b * h * t * t];
        forward_plain(&mut out, &mut att, qkv, dims, drop);
        let mut dqkv = vec![f32::NAN; qkv.len()];
        backward_plain(&mut dqkv, dout, qkv, &att, dims, drop);
        (out, dqkv)
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

    /// Several causal row blocks (T > RB, not a multiple of it): fast twin == plain twin.
    #[test]
    fn fast_matches_plain_across_row_blocks() {
        for (dims, drop) in [
            (
                Dims {
                    b: 2,
                    t: RB * 2 + 13,
                    c: 24,
                    h: 3,
                },
                Dropout::OFF,
            ),
            (
                Dims {
                    b: 1,
                    t: RB + 1,
                    c: 16,
                    h: 2,
                },
                Dropout::new(0.2, 3, 9),
            ),
        ] {
            let Dims { b, t, c, .. } = dims;
            let mut rng = Rng(21);
            let qkv = f32s(&rng.vec(b * t * 3 * c, 2.0));
            let dout = f32s(&rng.vec(b * t * c, 1.0));
            let (out, _, dqkv) = run_fast(&qkv, &dout, dims, drop);
            let (pout, pdqkv) = run_plain(&qkv, &dout, dims, drop);
            let pout: Vec<f64> = pout.iter().map(|&x| x as f64).collect();
            let pdqkv: Vec<f64> = pdqkv.iter().map(|&x| x as f64).collect();
            assert_close("fast vs plain out", &out, &pout, TWIN_ATOL, TWIN_RTOL);
            assert_close("fast vs plain dqkv", &dqkv, &pdqkv, TWIN_ATOL, TWIN_RTOL);
        }
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
        let (out, _, _) = run_fast(&qkv, &[0.0; 12], dims, Dropout::OFF);
        assert_eq!(&out[..4], &qkv[8..12]);
    }
}
