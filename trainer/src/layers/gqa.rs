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
//! Forward runs one task per (b, h); backward one task per (b, kv head), which owns the key and
//! value gradients of its head and the query gradients of its G query heads, so results do not
//! depend on the number of threads and no two tasks write the same element.

use rayon::prelude::*;

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

/// out (B, T, H, D) and att (B, H, T, T) from q, k, v. Overwrites both.
pub fn forward(out: &mut [f32], att: &mut [f32], q: &[f32], k: &[f32], v: &[f32], dims: Dims) {
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
}
