//! Causal grouped-query attention (Llama, Qwen, Gemma): H query heads share Hkv key/value heads
//! (query head h reads key/value head h / (H/Hkv)), scores `q·k · scale` (1/√D, or Gemma's
//! `query_pre_attn_scalar`^-½), softmax over the visible keys, `out = att·v`. A sliding window W
//! (Gemma's local layers) hides keys more than W − 1 positions back: position t sees
//! t2 in (t − W, t]. No dropout (the modern families train without attention dropout).
//!
//! Letters: B batch, T time, H query heads, Hkv key/value heads, D head size, G = H/Hkv.
//! Layouts: q (B, T, H, D) and k, v (B, T, Hkv, D) as the projections write them (RoPE already
//! applied); out (B, T, H, D); att (B, H, T, T) holds the softmax weights (0 where hidden).
//!
//! The fast path runs each head's products through the gemm wrapper on strided views of q, k, v
//! (no copies; a key/value head is read in place by its G query heads), in causal row blocks of
//! [`RB`] query rows that only touch the keys the block can see. Forward runs one task per
//! (b, h); backward one task per (b, kv head), which owns the key and value gradients of its head
//! and the query gradients of its G query heads, so results do not depend on the number of
//! threads and no two tasks write the same element. [`forward_plain`] / [`backward_plain`] are
//! the loop twins the fast path is tested against.

use super::simd;
use crate::gemm::{MatMut, MatRef, Parallelism, matmul};
use rayon::prelude::*;

/// Query rows per causal block: rows [r0, r1) see keys [first(r0), r1) at most.
pub const RB: usize = 64;

/// Shapes and settings of one call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dims {
    /// B.
    pub b: usize,
    /// T.
    pub t: usize,
    /// H.
    pub h: usize,
    /// Hkv.
    pub kv: usize,
    /// D.
    pub d: usize,
    /// Score scale.
    pub scale: f32,
    /// Sliding window W (positions seen, the current one included), or `None`.
    pub window: Option<usize>,
}

impl Dims {
    /// The first key position that query position `ti` sees.
    fn first(&self, ti: usize) -> usize {
        match self.window {
            Some(w) => (ti + 1).saturating_sub(w),
            None => 0,
        }
    }

    fn check(&self, q: usize, kv: usize, att: usize) {
        let Dims {
            b, t, h, kv: hk, d, ..
        } = *self;
        assert!(hk > 0 && h % hk == 0, "gqa: H must be a multiple of Hkv");
        assert_eq!(q, b * t * h * d, "gqa: q/out are (B, T, H, D)");
        assert_eq!(kv, b * t * hk * d, "gqa: k/v are (B, T, Hkv, D)");
        assert_eq!(att, b * h * t * t, "gqa: att is (B, H, T, T)");
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl Dims {
    /// Head `hi` of sequence `bi` of a (B, T, heads, D) tensor as a (T, D) view.
    fn head<'a>(&self, x: &'a [f32], heads: usize, bi: usize, hi: usize) -> MatRef<'a> {
        let (t, d) = (self.t, self.d);
        MatRef::new(&x[(bi * t * heads + hi) * d..], t, d, heads * d, 1)
    }

    /// The causal row blocks: (r0, r1, c0) with query rows [r0, r1) and key columns [c0, r1).
    fn blocks(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        (0..self.t)
            .step_by(RB)
            .map(|r0| (r0, (r0 + RB).min(self.t), self.first(r0)))
    }
}

/// In place: row[lo..=last] ← softmax(row[lo..=last]); the rest of the row ← 0.
fn softmax_row(row: &mut [f32], lo: usize, last: usize) {
    let (head, rest) = row.split_at_mut(last + 1);
    let (dead, live) = head.split_at_mut(lo);
    let m = simd::max(live);
    for x in live.iter_mut() {
        *x = simd::exp(*x - m);
    }
    let inv = 1.0 / simd::sum(live);
    for x in live.iter_mut() {
        *x *= inv;
    }
    dead.fill(0.0);
    rest.fill(0.0);
}

/// out (B, T, H, D) and att (B, H, T, T) from q, k, v. Overwrites both.
pub fn forward(out: &mut [f32], att: &mut [f32], q: &[f32], k: &[f32], v: &[f32], dims: Dims) {
    dims.check(q.len(), k.len(), att.len());
    assert!(out.len() == q.len() && v.len() == k.len());
    let Dims {
        t, h, kv, d, scale, ..
    } = dims;
    let g = h / kv;
    let heads: Vec<Vec<f32>> = att
        .par_chunks_mut(t * t)
        .enumerate()
        .map(|(bh, a)| {
            let (bi, hi) = (bh / h, bh % h);
            let qh = dims.head(q, h, bi, hi);
            let kh = dims.head(k, kv, bi, hi / g);
            let vh = dims.head(v, kv, bi, hi / g);
            let mut o = vec![0.0f32; t * d];
            for (r0, r1, c0) in dims.blocks() {
                // pre[t, t2] = scale · q[t]·k[t2] for t in [r0, r1), t2 in [c0, r1)
                matmul(
                    &mut MatMut::new(&mut a[r0 * t + c0..], r1 - r0, r1 - c0, t, 1),
                    0.0,
                    qh.rows_range(r0, r1),
                    kh.rows_range(c0, r1).t(),
                    scale,
                    Parallelism::None,
                );
                // att[t] = softmax(pre[t]) over the visible keys, 0 elsewhere
                for ti in r0..r1 {
                    softmax_row(&mut a[ti * t..(ti + 1) * t], dims.first(ti), ti);
                }
                // out_h[t] = Σ_t2 att[t, t2]·v[t2] (att is 0 outside [first(t), t])
                matmul(
                    &mut MatMut::new(&mut o[r0 * d..], r1 - r0, d, d, 1),
                    0.0,
                    MatRef::new(&a[r0 * t + c0..], r1 - r0, r1 - c0, t, 1),
                    vh.rows_range(c0, r1),
                    1.0,
                    Parallelism::None,
                );
            }
            o
        })
        .collect();
    // out[b, t, h, ..] = out_h[b, h][t, ..]
    out.par_chunks_mut(h * d).enumerate().for_each(|(r, row)| {
        let (bi, ti) = (r / t, r % t);
        for hi in 0..h {
            row[hi * d..(hi + 1) * d].copy_from_slice(&heads[bi * h + hi][ti * d..][..d]);
        }
    });
}

/// dq (B, T, H, D), dk, dv (B, T, Hkv, D) += the gradients for dout, from the saved att.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    att: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: Dims,
) {
    dims.check(q.len(), k.len(), att.len());
    assert!(dq.len() == q.len() && dk.len() == k.len() && dv.len() == k.len());
    assert_eq!(dout.len(), q.len());
    let Dims {
        b,
        t,
        h,
        kv,
        d,
        scale,
        ..
    } = dims;
    let g = h / kv;
    // One task per (b, kv head); its gradients are gathered in local (T, D) buffers and added to
    // the interleaved dq, dk, dv after the loop.
    let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..b * kv)
        .into_par_iter()
        .map(|task| {
            let (bi, kh) = (task / kv, task % kv);
            let kk = dims.head(k, kv, bi, kh);
            let vv = dims.head(v, kv, bi, kh);
            let mut dqh = vec![0.0f32; g * t * d];
            let mut dkh = vec![0.0f32; t * d];
            let mut dvh = vec![0.0f32; t * d];
            let mut dp = vec![0.0f32; t * t];
            for gi in 0..g {
                let hi = kh * g + gi;
                let a = &att[(bi * h + hi) * t * t..][..t * t];
                let qq = dims.head(q, h, bi, hi);
                let go = dims.head(dout, h, bi, hi);
                for (r0, r1, c0) in dims.blocks() {
                    let (m, n) = (r1 - r0, r1 - c0);
                    let ab = MatRef::new(&a[r0 * t + c0..], m, n, t, 1);
                    // forward: out = att · v  ⇒  dv[t2] += Σ_t att[t, t2]·dout[t]
                    matmul(
                        &mut MatMut::new(&mut dvh[c0 * d..], n, d, d, 1),
                        1.0,
                        ab.t(),
                        go.rows_range(r0, r1),
                        1.0,
                        Parallelism::None,
                    );
                    // forward: out = att · v  ⇒  datt[t, t2] = dout[t]·v[t2]
                    matmul(
                        &mut MatMut::new(&mut dp[r0 * t + c0..], m, n, t, 1),
                        0.0,
                        go.rows_range(r0, r1),
                        vv.rows_range(c0, r1).t(),
                        1.0,
                        Parallelism::None,
                    );
                    // softmax: dpre = att ⊙ (datt − Σ_t2 att·datt); 0 where att is 0 (hidden keys)
                    for ti in r0..r1 {
                        let row = &mut dp[ti * t + c0..][..n];
                        let arow = &a[ti * t + c0..][..n];
                        let s = simd::dot(arow, row);
                        for (x, &p) in row.iter_mut().zip(arow) {
                            *x = p * (*x - s);
                        }
                    }
                    let dpb = MatRef::new(&dp[r0 * t + c0..], m, n, t, 1);
                    // forward: pre = scale · q · kᵀ  ⇒  dq[t] = scale · Σ_t2 dpre[t, t2]·k[t2]
                    matmul(
                        &mut MatMut::new(&mut dqh[(gi * t + r0) * d..], m, d, d, 1),
                        0.0,
                        dpb,
                        kk.rows_range(c0, r1),
                        scale,
                        Parallelism::None,
                    );
                    // forward: pre = scale · q · kᵀ  ⇒  dk[t2] += scale · Σ_t dpre[t, t2]·q[t]
                    matmul(
                        &mut MatMut::new(&mut dkh[c0 * d..], n, d, d, 1),
                        1.0,
                        dpb.t(),
                        qq.rows_range(r0, r1),
                        scale,
                        Parallelism::None,
                    );
                }
            }
            (dqh, dkh, dvh)
        })
        .collect();
    scatter_add(dq, dk, dv, &parts, dims);
}

/// dq, dk, dv += each (b, kv head) task's local gradients.
fn scatter_add(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    parts: &[(Vec<f32>, Vec<f32>, Vec<f32>)],
    dims: Dims,
) {
    let Dims { t, h, kv, d, .. } = dims;
    let g = h / kv;
    for (task, (dqh, dkh, dvh)) in parts.iter().enumerate() {
        let (bi, kh) = (task / kv, task % kv);
        for ti in 0..t {
            let at = ((bi * t + ti) * kv + kh) * d;
            for i in 0..d {
                dk[at + i] += dkh[ti * d + i];
                dv[at + i] += dvh[ti * d + i];
            }
            for gi in 0..g {
                let at = ((bi * t + ti) * h + kh * g + gi) * d;
                for i in 0..d {
                    dq[at + i] += dqh[(gi * t + ti) * d + i];
                }
            }
        }
    }
}

/// The plain twin of [`forward`]: per (b, h, t) loops.
pub fn forward_plain(
    out: &mut [f32],
    att: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: Dims,
) {
    dims.check(q.len(), k.len(), att.len());
    assert!(out.len() == q.len() && v.len() == k.len());
    let Dims {
        t, h, kv, d, scale, ..
    } = dims;
    let g = h / kv;
    att.par_chunks_mut(t * t).enumerate().for_each(|(bh, a)| {
        let (bi, hi) = (bh / h, bh % h);
        let kh = hi / g;
        for ti in 0..t {
            let row = &mut a[ti * t..(ti + 1) * t];
            row.fill(0.0);
            let qv = &q[((bi * t + ti) * h + hi) * d..][..d];
            let lo = dims.first(ti);
            let mut max = f32::NEG_INFINITY;
            for t2 in lo..=ti {
                let s = dot(qv, &k[((bi * t + t2) * kv + kh) * d..][..d]) * scale;
                row[t2] = s;
                max = max.max(s);
            }
            let mut sum = 0.0;
            for x in &mut row[lo..=ti] {
                *x = (*x - max).exp();
                sum += *x;
            }
            for x in &mut row[lo..=ti] {
                *x /= sum;
            }
        }
    });
    let att: &[f32] = att;
    out.par_chunks_mut(h * d).enumerate().for_each(|(r, o)| {
        let (bi, ti) = (r / t, r % t);
        o.fill(0.0);
        for hi in 0..h {
            let a = &att[((bi * h + hi) * t + ti) * t..][..t];
            let oh = &mut o[hi * d..(hi + 1) * d];
            for t2 in dims.first(ti)..=ti {
                let vv = &v[((bi * t + t2) * kv + hi / g) * d..][..d];
                for (o, &x) in oh.iter_mut().zip(vv) {
                    *o += a[t2] * x;
                }
            }
        }
    });
}

/// The plain twin of [`backward`]: per (b, kv head, t) loops.
#[allow(clippy::too_many_arguments)]
pub fn backward_plain(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    att: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: Dims,
) {
    dims.check(q.len(), k.len(), att.len());
    let Dims {
        b,
        t,
        h,
        kv,
        d,
        scale,
        ..
    } = dims;
    let g = h / kv;
    // One task per (b, kv head): split dk and dv by (b, t) rows... they interleave heads, so the
    // task gathers its head's gradients in local buffers and they are added after the loop.
    let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..b * kv)
        .into_par_iter()
        .map(|task| {
            let (bi, kh) = (task / kv, task % kv);
            let mut dqh = vec![0.0f32; g * t * d];
            let mut dkh = vec![0.0f32; t * d];
            let mut dvh = vec![0.0f32; t * d];
            let mut datt = vec![0.0f32; t];
            for gi in 0..g {
                let hi = kh * g + gi;
                for ti in 0..t {
                    let a = &att[((bi * h + hi) * t + ti) * t..][..t];
                    let dov = &dout[((bi * t + ti) * h + hi) * d..][..d];
                    let lo = dims.first(ti);
                    // out = Σ_t2 a[t2]·v[t2] ⇒ da[t2] = dout·v[t2], dv[t2] += a[t2]·dout.
                    let mut sum = 0.0;
                    for t2 in lo..=ti {
                        let vv = &v[((bi * t + t2) * kv + kh) * d..][..d];
                        datt[t2] = dot(dov, vv);
                        sum += datt[t2] * a[t2];
                        for (x, &o) in dvh[t2 * d..(t2 + 1) * d].iter_mut().zip(dov) {
                            *x += a[t2] * o;
                        }
                    }
                    // softmax: dpre[t2] = a[t2]·(da[t2] − Σ_j a[j]·da[j]); pre = q·k·scale.
                    let qv = &q[((bi * t + ti) * h + hi) * d..][..d];
                    let dqv = &mut dqh[(gi * t + ti) * d..][..d];
                    for t2 in lo..=ti {
                        let dpre = a[t2] * (datt[t2] - sum) * scale;
                        let kk = &k[((bi * t + t2) * kv + kh) * d..][..d];
                        for i in 0..d {
                            dqv[i] += dpre * kk[i];
                            dkh[t2 * d + i] += dpre * qv[i];
                        }
                    }
                }
            }
            (dqh, dkh, dvh)
        })
        .collect();
    scatter_add(dq, dk, dv, &parts, dims);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::check::{Rng, assert_close, f32s, fd_grad, weighted_sum};

    /// Float64 reference written from the definition, with an explicit mask.
    fn reference(q: &[f64], k: &[f64], v: &[f64], dm: Dims) -> Vec<f64> {
        let Dims {
            b,
            t,
            h,
            kv,
            d,
            scale,
            window,
        } = dm;
        let mut out = vec![0.0; b * t * h * d];
        for bi in 0..b {
            for hi in 0..h {
                let kh = hi * kv / h;
                for ti in 0..t {
                    let visible = |t2: usize| t2 <= ti && window.is_none_or(|w| ti - t2 < w);
                    let s: Vec<f64> = (0..t)
                        .map(|t2| {
                            if !visible(t2) {
                                return f64::NEG_INFINITY;
                            }
                            (0..d)
                                .map(|i| {
                                    q[((bi * t + ti) * h + hi) * d + i]
                                        * k[((bi * t + t2) * kv + kh) * d + i]
                                })
                                .sum::<f64>()
                                * scale as f64
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for i in 0..d {
                        out[((bi * t + ti) * h + hi) * d + i] = (0..t)
                            .map(|t2| e[t2] / z * v[((bi * t + t2) * kv + kh) * d + i])
                            .sum();
                    }
                }
            }
        }
        out
    }

    #[test]
    fn gradients_match_finite_differences_with_groups_and_a_window() {
        for window in [None, Some(3)] {
            let dm = Dims {
                b: 2,
                t: 7,
                h: 4,
                kv: 2,
                d: 6,
                scale: 0.37,
                window,
            };
            let mut rng = Rng(9);
            let nq = dm.b * dm.t * dm.h * dm.d;
            let nk = dm.b * dm.t * dm.kv * dm.d;
            let (q, k, v, w) = (
                rng.vec(nq, 1.5),
                rng.vec(nk, 1.5),
                rng.vec(nk, 1.0),
                rng.vec(nq, 1.0),
            );
            let mut out = vec![0.0f32; nq];
            let mut att = vec![0.0f32; dm.b * dm.h * dm.t * dm.t];
            forward(&mut out, &mut att, &f32s(&q), &f32s(&k), &f32s(&v), dm);
            assert_close("gqa out", &out, &reference(&q, &k, &v, dm), 1e-5, 1e-5);
            let (mut dq, mut dk, mut dv) = (vec![0.0f32; nq], vec![0.0f32; nk], vec![0.0f32; nk]);
            backward(
                &mut dq,
                &mut dk,
                &mut dv,
                &f32s(&w),
                &att,
                &f32s(&q),
                &f32s(&k),
                &f32s(&v),
                dm,
            );
            let gq = fd_grad(&q, |x| weighted_sum(&reference(x, &k, &v, dm), &w));
            let gk = fd_grad(&k, |x| weighted_sum(&reference(&q, x, &v, dm), &w));
            let gv = fd_grad(&v, |x| weighted_sum(&reference(&q, &k, x, dm), &w));
            assert_close("gqa dq", &dq, &gq, 2e-5, 1e-4);
            assert_close("gqa dk", &dk, &gk, 2e-5, 1e-4);
            assert_close("gqa dv", &dv, &gv, 2e-5, 1e-4);
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let dm = Dims {
            b: 3,
            t: 9,
            h: 6,
            kv: 3,
            d: 8,
            scale: 0.3,
            window: Some(4),
        };
        let mut rng = Rng(13);
        let nq = dm.b * dm.t * dm.h * dm.d;
        let nk = dm.b * dm.t * dm.kv * dm.d;
        let (q, k, v, w) = (
            f32s(&rng.vec(nq, 1.0)),
            f32s(&rng.vec(nk, 1.0)),
            f32s(&rng.vec(nk, 1.0)),
            f32s(&rng.vec(nq, 1.0)),
        );
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut out = vec![0.0f32; nq];
                let mut att = vec![0.0f32; dm.b * dm.h * dm.t * dm.t];
                forward(&mut out, &mut att, &q, &k, &v, dm);
                let (mut dq, mut dk, mut dv) =
                    (vec![0.0f32; nq], vec![0.0f32; nk], vec![0.0f32; nk]);
                backward(&mut dq, &mut dk, &mut dv, &w, &att, &q, &k, &v, dm);
                [out, dq, dk, dv].concat()
            })
        };
        let one = run(1);
        assert!(one.iter().any(|&x| x != 0.0));
        assert_eq!(one, run(3));
    }

    /// The gemm path against its loop twin over several causal row blocks (T > RB), with and
    /// without a window, G = 3.
    #[test]
    fn fast_matches_plain_across_row_blocks() {
        for window in [None, Some(40), Some(RB + 5)] {
            let dm = Dims {
                b: 2,
                t: 2 * RB + 13,
                h: 6,
                kv: 2,
                d: 8,
                scale: 0.35,
                window,
            };
            let mut rng = Rng(21);
            let nq = dm.b * dm.t * dm.h * dm.d;
            let nk = dm.b * dm.t * dm.kv * dm.d;
            let (q, k, v, w) = (
                f32s(&rng.vec(nq, 1.0)),
                f32s(&rng.vec(nk, 1.0)),
                f32s(&rng.vec(nk, 1.0)),
                f32s(&rng.vec(nq, 1.0)),
            );
            let na = dm.b * dm.h * dm.t * dm.t;
            let run = |fast: bool| {
                // NaN-filled outputs: every element must be written.
                let (mut out, mut att) = (vec![f32::NAN; nq], vec![f32::NAN; na]);
                let (mut dq, mut dk, mut dv) =
                    (vec![0.5f32; nq], vec![0.5f32; nk], vec![0.5f32; nk]);
                if fast {
                    forward(&mut out, &mut att, &q, &k, &v, dm);
                    backward(&mut dq, &mut dk, &mut dv, &w, &att, &q, &k, &v, dm);
                } else {
                    forward_plain(&mut out, &mut att, &q, &k, &v, dm);
                    backward_plain(&mut dq, &mut dk, &mut dv, &w, &att, &q, &k, &v, dm);
                }
                (out, att, dq, dk, dv)
            };
            let (fo, fa, fq, fk, fv) = run(true);
            let (po, pa, pq, pk, pv) = run(false);
            let f64s = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
            assert_close("gqa out", &fo, &f64s(&po), 1e-5, 1e-4);
            assert_close("gqa att", &fa, &f64s(&pa), 1e-6, 1e-4);
            assert_close("gqa dq", &fq, &f64s(&pq), 2e-5, 1e-4);
            assert_close("gqa dk", &fk, &f64s(&pk), 2e-5, 1e-4);
            assert_close("gqa dv", &fv, &f64s(&pv), 2e-5, 1e-4);
            // The hidden entries of att are exactly 0.
            for bh in 0..dm.b * dm.h {
                for ti in 0..dm.t {
                    for t2 in 0..dm.t {
                        if t2 > ti || t2 < dm.first(ti) {
                            assert_eq!(fa[(bh * dm.t + ti) * dm.t + t2], 0.0);
                        }
                    }
                }
            }
        }
    }
}
