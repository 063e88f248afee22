//! Decode: one token on the crew, lane 0's thread leading (see the parent module's docs).

use super::crew::{Crew, FinishOnDrop, PoisonOnPanic, Scratch, Which, fork};
use super::kv::{KvMut, KvRef, KvShared, attend_group};
use super::{Buffers, Session, embed};
use crate::kernels::{Kernels, Q8_BLOCK};
use crate::model::{Layer, Mat, Model};
use emberlm_formats::config::LAYERNORM_EPS;
use std::ops::Range;

impl Session<'_, '_> {
    /// Decode: one token at position `tokens.len()`: lane 0 leads, the other lanes' threads
    /// take chunks of its matrix-vector products (see the module docs).
    pub(super) fn forward_one(&mut self, token: u32) {
        let (m, k, crew) = (self.model, self.kernels, &self.crew);
        let pos = self.tokens.len();
        let (lead, workers) = self.lanes.split_first_mut().expect("at least one lane");
        let kvs = KvShared {
            groups: &self.kv_groups,
            kv: &self.kv,
        };
        let logits = &mut self.logits;
        crew.reset();
        let mut leader = || {
            let _finish = FinishOnDrop(crew);
            lead_token(crew, &k, m, &kvs, lead, logits, token, pos);
        };
        if crew.g > 1 && !workers.is_empty() {
            fork(leader, || run_workers(crew, &k, m, &kvs, 1, workers));
        } else {
            leader();
        }
        self.tokens.push(token);
    }
}

/// Starts workers g.. of the crew (each on its own lane), forked onto other rayon workers.
pub(super) fn run_workers(
    crew: &Crew,
    k: &Kernels,
    m: &Model<'_>,
    kvs: &KvShared<'_>,
    g: usize,
    lanes: &mut [Buffers],
) {
    let Some((lane, rest)) = lanes.split_first_mut() else {
        return;
    };
    let mut work = || {
        let _poison = PoisonOnPanic(crew);
        let mut scratch = Scratch {
            out: &mut lane.scores,
            xq: &mut lane.xq,
            xd: &mut lane.xd,
            rows: &mut lane.qkv,
            tmp: &mut lane.att,
        };
        crew.worker(k, m, kvs, &mut lane.ff, &mut scratch)
    };
    if rest.is_empty() || g + 1 >= crew.g {
        work();
    } else {
        fork(work, || run_workers(crew, k, m, kvs, g + 1, rest));
    }
}

/// A product's input: x (C) and, for Q8 weights, x quantized (xq (C), xd (NB)); without the
/// quantized form a Q8 product falls back to f32 activations ([`Kernels::matvec_q8_rows`]).
#[derive(Clone, Copy)]
pub(super) struct Input<'s> {
    pub(super) x: &'s [f32],
    pub(super) q: Option<(&'s [i8], &'s [f32])>,
}

impl<'s> Input<'s> {
    /// Quantizes x into `xq`, `xd` when `w` is Q8 (int8 decode multiplies int8 by int8).
    pub(super) fn new(
        k: &Kernels,
        w: &Mat<'_>,
        x: &'s [f32],
        xq: &'s mut [i8],
        xd: &'s mut [f32],
    ) -> Self {
        let q = match w {
            Mat::Q8(_) => {
                let (xq, xd) = (&mut xq[..x.len()], &mut xd[..x.len().div_ceil(Q8_BLOCK)]);
                k.quantize_q8(x, xq, xd);
                Some((&*xq, &*xd))
            }
            _ => None,
        };
        Input { x, q }
    }
}

/// y = rows `row_start .. row_start + y.len()` of W · x, on the calling thread.
pub(super) fn mat_rows(k: &Kernels, w: &Mat<'_>, x: Input<'_>, y: &mut [f32], row_start: usize) {
    match (*w, x.q) {
        (Mat::F32(w), _) => k.matvec_f32_rows(w, x.x, y, row_start),
        (Mat::F16(w), _) => k.matvec_f16_rows(w, x.x, y, row_start),
        (Mat::Q8(w), Some((xq, xd))) => k.matvec_q8q8_rows(w, xq, xd, y, row_start),
        (Mat::Q8(w), None) => k.matvec_q8_rows(w, x.x, y, row_start),
    }
}

/// The leader's share of one decode token: everything but the matrix-vector products, which it
/// shares with the workers through `crew`.
#[allow(clippy::too_many_arguments)]
pub(super) fn lead_token(
    crew: &Crew,
    k: &Kernels,
    m: &Model<'_>,
    kvs: &KvShared<'_>,
    b: &mut Buffers,
    logits: &mut [f32],
    token: u32,
    pos: usize,
) {
    let cfg = *m.config();
    let mut epoch = 0;
    embed(m, token, pos, &mut b.x, &mut b.xn);
    // A fresh scratch borrow of the lane for each product.
    macro_rules! scratch {
        () => {
            &mut Scratch {
                out: &mut b.scores,
                xq: &mut b.xq,
                xd: &mut b.xd,
                rows: &mut [],
                tmp: &mut [],
            }
        };
    }
    for l in 0..cfg.n_layers {
        let w = m.layer(l);
        k.layernorm(&b.x, w.norm1.0, w.norm1.1, &mut b.xn, LAYERNORM_EPS);
        let scratch = &mut Scratch {
            out: &mut b.scores,
            xq: &mut b.xq,
            xd: &mut b.xd,
            rows: &mut b.qkv,
            tmp: &mut b.out,
        };
        crew.qkv_attend(k, m, kvs, l, pos, &b.xn, &mut b.att, &mut epoch, scratch);
        crew.matvec(
            k,
            m,
            Which::Proj,
            l,
            &b.att,
            &mut b.out,
            &mut epoch,
            scratch!(),
        );
        k.add(&mut b.x, &b.out);
        k.layernorm(&b.x, w.norm2.0, w.norm2.1, &mut b.xn, LAYERNORM_EPS);
        crew.matvec(k, m, Which::Fc, l, &b.xn, &mut b.ff, &mut epoch, scratch!());
        crew.matvec(
            k,
            m,
            Which::Fcp,
            l,
            &b.ff,
            &mut b.out,
            &mut epoch,
            scratch!(),
        );
        k.add(&mut b.x, &b.out);
    }
    let (scale, shift) = m.final_norm();
    k.layernorm(&b.x, scale, shift, &mut b.xn, LAYERNORM_EPS);
    crew.matvec(k, m, Which::Head, 0, &b.xn, logits, &mut epoch, scratch!());
}

/// Decode's fused query/key/value and attention job of layer l at position pos. Its items are
/// first `groups()` chunks of the product, chunk i holding the heads of KV group i
/// ([`KvLayout`]): their D rows of each of the three parts, bias included; then one item per
/// group: store its keys and values in the cache and attend, once its chunk is done. The cut
/// depends only on the model.
pub(super) struct AttnJob<'s, 'm> {
    pub(super) w: &'s Layer<'m>,
    pub(super) kvs: &'s KvShared<'s>,
    pub(super) l: usize,
    pub(super) pos: usize,
    pub(super) c: usize,
    pub(super) d: usize,
}

impl<'s, 'm> AttnJob<'s, 'm> {
    pub(super) fn new(w: &'s Layer<'m>, kvs: &'s KvShared<'s>, l: usize, pos: usize) -> Self {
        let d = kvs.kv.d;
        AttnJob {
            w,
            kvs,
            l,
            pos,
            c: kvs.kv.heads * d,
            d,
        }
    }

    pub(super) fn groups(&self) -> usize {
        self.kvs.kv.groups
    }

    pub(super) fn items(&self) -> usize {
        2 * self.groups()
    }

    /// The product's rows of part p (0 query, 1 key, 2 value) for the heads of group g.
    pub(super) fn part(&self, p: usize, g: usize) -> Range<usize> {
        let hs = self.kvs.kv.group(g);
        p * self.c + hs.start * self.d..p * self.c + hs.end * self.d
    }

    /// Chunk g of the product: `rows` (3C, laid out as the whole product's output) gets group
    /// g's rows of each part, bias included.
    pub(super) fn project(&self, k: &Kernels, x: Input<'_>, g: usize, rows: &mut [f32]) {
        for p in 0..3 {
            let r = self.part(p, g);
            let y = &mut rows[r.clone()];
            mat_rows(k, &self.w.qkv_w, x, y, r.start);
            if let Some(bias) = self.w.qkv_b {
                k.add(y, &bias[r]);
            }
        }
    }

    /// Group g: stores its keys and values (Hg·D each) at pos, then attends with its queries →
    /// out (Hg·D). `scores` (≥ Hg·(pos + 1)) is scratch.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attend(
        &self,
        k: &Kernels,
        g: usize,
        q: &[f32],
        key: &[f32],
        value: &[f32],
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let (kv, hg) = (self.kvs.kv, self.kvs.kv.group(g).len());
        let mut cache = self.kvs.write(g);
        let cache = &mut *cache;
        let at = kv.at(self.l, self.pos, hg);
        KvMut::of(&mut cache.k).store(at, key);
        KvMut::of(&mut cache.v).store(at, value);
        let kvr = (KvRef::of(&cache.k), KvRef::of(&cache.v));
        let scores = &mut scores[..hg * (self.pos + 1)];
        attend_group(k, hg, q, kvr, kv.at(self.l, 0, hg), scores, out);
    }
}
