//! Prefill: a chunk of N prompt tokens through batched matrix products, then their attention
//! in parallel (see the parent module's docs).

use super::crew::fork;
use super::{Buffers, Ctx, Session, embed};
use crate::kernels::{Epilogue, Kernels, panel_q8};
use crate::model::{Layer, Mat};
use emberlm_formats::config::LAYERNORM_EPS;

impl Session<'_, '_> {
    /// Prefill: N tokens at positions `tokens.len()..`, batched through matrix products.
    pub(super) fn forward_chunk(&mut self, chunk: &[u32]) {
        if !self.model.is_gpt2() {
            return self.family_chunk(chunk);
        }
        let cx = Ctx {
            k: self.kernels,
            m: self.model,
            kv: &self.kv,
            crew: &self.crew,
            rope: &self.rope,
        };
        let (k, m) = (&cx.k, cx.m);
        let cfg = *m.config();
        let (c, n, pos0) = (cfg.dim, chunk.len(), self.tokens.len());
        let b = &mut self.chunk;
        let mut pr = Products {
            k,
            xp: &mut self.xp,
            yt: &mut self.yt,
            q8p: &mut self.q8p,
            q8d: &mut self.q8d,
            packed: false,
        };
        let (x, xn) = (&mut b.x[..n * c], &mut b.xn[..n * c]);
        for (i, &t) in chunk.iter().enumerate() {
            embed(
                m,
                t,
                pos0 + i,
                &mut x[i * c..(i + 1) * c],
                &mut xn[i * c..(i + 1) * c],
            );
        }
        for l in 0..cfg.n_layers {
            let w: Layer<'_> = m.layer(l);
            by_tokens(k, &mut b.xn[..n * c], &b.x[..n * c], c, |o, x| {
                layernorm_rows(k, x, w.norm1, o, c)
            });
            let ep = Epilogue {
                bias: w.qkv_b,
                gelu: false,
            };
            pr.run(
                w.qkv_w,
                c,
                &b.xn[..n * c],
                &mut b.qkv[..n * 3 * c],
                ep,
                true,
            );
            let job = ChunkAttn {
                cx: &cx,
                l,
                pos0,
                qkv: &b.qkv[..n * 3 * c],
            };
            job.store();
            attend_tokens(&job, 0, &mut self.lanes, &mut b.att[..n * c]);
            let ep = Epilogue {
                bias: Some(w.proj_b),
                gelu: false,
            };
            pr.run(w.proj_w, c, &b.att[..n * c], &mut b.out[..n * c], ep, true);
            by_tokens(k, &mut b.x[..n * c], &b.out[..n * c], c, |x, o| k.add(x, o));
            by_tokens(k, &mut b.xn[..n * c], &b.x[..n * c], c, |o, x| {
                layernorm_rows(k, x, w.norm2, o, c)
            });
            let ep = Epilogue {
                bias: Some(w.fc_b),
                gelu: true,
            };
            pr.run(w.fc_w, c, &b.xn[..n * c], &mut b.ff[..n * 4 * c], ep, true);
            let ep = Epilogue {
                bias: Some(w.fcp_b),
                gelu: false,
            };
            pr.run(
                w.fcp_w,
                4 * c,
                &b.ff[..n * 4 * c],
                &mut b.out[..n * c],
                ep,
                true,
            );
            by_tokens(k, &mut b.x[..n * c], &b.out[..n * c], c, |x, o| k.add(x, o));
        }
        // Logits for the last position only.
        let last = &b.x[(n - 1) * c..n * c];
        let (scale, shift) = m.final_norm();
        k.layernorm(last, scale, shift, &mut b.xn[..c], LAYERNORM_EPS);
        let (head, bias) = m.head();
        head.matvec(k, &b.xn[..c], &mut self.logits);
        if let Some(bias) = bias {
            k.add(&mut self.logits, bias);
        }
        self.tokens.extend_from_slice(chunk);
    }
}

/// f(a rows, b rows) over the tokens of two (N, C) buffers, split over the session's threads
/// (each token's row is computed the same way whatever the split).
pub(super) fn by_tokens(
    k: &Kernels,
    a: &mut [f32],
    b: &[f32],
    c: usize,
    f: impl Fn(&mut [f32], &[f32]) + Sync + Send,
) {
    #[cfg(feature = "parallel")]
    if k.threads() > 1 && a.len() >= 2 * c {
        use rayon::prelude::*;
        let per = (a.len() / c).div_ceil(k.threads()) * c;
        a.par_chunks_mut(per)
            .zip(b.par_chunks(per))
            .for_each(|(a, b)| f(a, b));
        return;
    }
    #[cfg(not(feature = "parallel"))]
    let _ = (k, c);
    f(a, b)
}

/// LayerNorm of each row of x (N, C) into out (N, C).
fn layernorm_rows(
    k: &Kernels,
    x: &[f32],
    (scale, shift): (&[f32], &[f32]),
    out: &mut [f32],
    c: usize,
) {
    for (xr, or) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
        k.layernorm(xr, scale, shift, or, LAYERNORM_EPS);
    }
}

/// One prefill chunk's attention inputs for layer l: qkv (N, 3C) of tokens at pos0 ...
struct ChunkAttn<'s> {
    cx: &'s Ctx<'s>,
    l: usize,
    pos0: usize,
    qkv: &'s [f32],
}

impl ChunkAttn<'_> {
    /// C, the width of a token's query (or key, or value) row.
    fn dim(&self) -> usize {
        let kv = &self.cx.kv.layout;
        kv.heads * kv.d
    }

    /// Stores the chunk's keys and values in every group's cache.
    fn store(&self) {
        let (kv, c) = (&self.cx.kv.layout, self.dim());
        for g in 0..kv.groups {
            let mut cache = self.cx.kv.write(g);
            let hs = kv.group(g);
            for (i, qkv) in self.qkv.chunks_exact(3 * c).enumerate() {
                let at = kv.at(self.l, self.pos0 + i, hs.len());
                let key = &qkv[c + hs.start * kv.d..c + hs.end * kv.d];
                let value = &qkv[2 * c + hs.start * kv.d..2 * c + hs.end * kv.d];
                cache.store(at, key, value);
            }
        }
    }

    /// Attention of tokens i0.. of the chunk (one row of `att` (C) each) over every group.
    fn attend(&self, i0: usize, scores: &mut [f32], att: &mut [f32]) {
        let (kv, c) = (&self.cx.kv.layout, self.dim());
        for g in 0..kv.groups {
            let cache = self.cx.kv.read(g);
            let hs = kv.group(g);
            let cols = hs.start * kv.d..hs.end * kv.d;
            let from = kv.at(self.l, 0, hs.len());
            for (ii, out) in att.chunks_exact_mut(c).enumerate() {
                let i = i0 + ii;
                let q = &self.qkv[i * 3 * c..][cols.clone()];
                let p = self.pos0 + i + 1;
                let sc = &mut scores[..hs.len() * p];
                cache.attend(&self.cx.k, hs.len(), q, from, sc, &mut out[cols.clone()]);
            }
        }
    }
}

/// Prefill attention of the chunk's tokens i0.. (`att` holds their rows), the caches already
/// holding the chunk's keys and values ([`ChunkAttn::store`]): the tokens are cut into runs of
/// about equal work (token i attends pos0 + i + 1 positions), one per lane, run in parallel
/// (rayon), each on its own lane's scores. A token's output does not depend on the cut.
fn attend_tokens(job: &ChunkAttn<'_>, i0: usize, lanes: &mut [Buffers], att: &mut [f32]) {
    let Some((lane, rest)) = lanes.split_first_mut() else {
        return;
    };
    let c = job.dim();
    let n = att.len() / c;
    // This lane's share: 1 / lanes of the remaining positions to attend.
    let work = |i: usize| job.pos0 + i0 + i + 1;
    let total: usize = (0..n).map(work).sum();
    let target = total / (rest.len() + 1);
    let (mut mine, mut acc) = (0, 0);
    while mine < n && (acc < target || mine == 0) {
        acc += work(mine);
        mine += 1;
    }
    let (my_att, rest_att) = att.split_at_mut(mine * c);
    if rest.is_empty() || mine == n {
        job.attend(i0, &mut lane.scores, att);
    } else {
        fork(
            || job.attend(i0, &mut lane.scores, my_att),
            || attend_tokens(job, i0 + mine, rest, rest_att),
        );
    }
}

/// The prefill products' kernels and buffers: Q8 and Q4 weights go through the int8 product
/// ([`panel_q8`], activations quantized as int8 and int4 decode quantize them) where the CPU has it,
/// everything else through the f32 panel ([`Kernels::matmul`]).
pub(super) struct Products<'s> {
    pub(super) k: &'s Kernels,
    pub(super) xp: &'s mut [f32],
    pub(super) yt: &'s mut [f32],
    pub(super) q8p: &'s mut [u8],
    pub(super) q8d: &'s mut [f32],
    /// q8p / q8d hold the current input.
    pub(super) packed: bool,
}

impl Products<'_> {
    /// y (N, R) = x (N, C) · Wᵀ with `ep`; `fresh`: x differs from the previous call's (else its
    /// quantized copy is reused).
    pub(super) fn run(
        &mut self,
        w: Mat<'_>,
        c: usize,
        x: &[f32],
        y: &mut [f32],
        ep: Epilogue<'_>,
        fresh: bool,
    ) {
        let k = self.k;
        self.packed &= !fresh;
        match w {
            Mat::Q8(_) | Mat::Q4(_) | Mat::Q6(_) if panel_q8::available(k, c) => {
                let w = match w {
                    Mat::Q4(q) => panel_q8::Weights::Q4(q),
                    Mat::Q6(q) => panel_q8::Weights::Q6(q),
                    Mat::Q8(q) => panel_q8::Weights::Q8(q),
                    _ => unreachable!("matched as Q8 or Q4"),
                };
                if !self.packed {
                    panel_q8::quantize_pack(k, x, c, self.q8p, self.q8d);
                    self.packed = true;
                }
                let n = x.len() / c;
                panel_q8::matmul(k, w, (self.q8p, self.q8d), n, y, self.yt, ep);
            }
            _ => k.matmul(w, c, x, y, self.xp, self.yt, ep),
        }
    }
}
