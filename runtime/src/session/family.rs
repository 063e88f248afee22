//! Decode of the Llama-style families (Llama 3.x / SmolLM2, Qwen2.5, Qwen3, Gemma 3) on the
//! same crew as GPT-2 (see the parent module's docs), and the per-token attention both decode
//! and prefill use.
//!
//! Letters: C embedding dim, H query heads, Hkv key/value heads, D head dim, F a gated MLP's
//! hidden units, Hg key/value heads of one cache group, P positions attended.
//!
//! Per block, as Hugging Face's `modeling_{llama,qwen2,qwen3,gemma3}.py`: x += post(attn(norm(x)));
//! x += post(mlp(norm(x))), every norm an RMSNorm in f32, `post` Gemma's extra norms (identity
//! otherwise). Decisions:
//! - the query, key and value products are three crew jobs (bias in each chunk's epilogue); the
//!   leader then normalises (QK-norm) and rotates (RoPE, tables from the session) each head and
//!   stores keys and values; attention is one more crew job, one item per key/value group
//!   (whoever takes a group computes it with the same calls, so the bits do not depend on the
//!   crew);
//! - gate and up are one crew job ([`super::decode::Which::GateUp`]): the member that computes a
//!   chunk's gate rows computes the same chunk's up rows and combines them (SiLU or GELU-tanh of
//!   the gate, times up), so the MLP's hidden row needs no extra hand-off;
//! - the KV cache holds the Hkv key/value heads only; query head h reads key/value head
//!   h / (H / Hkv);
//! - sliding-window layers (`is_local`) attend the last `window` positions only (position p sees
//!   positions > p − window) by starting the attention at that position: the cache keeps every
//!   position (a mask, not a ring), so a local layer's cache costs as much memory as a global
//!   one's, but reads only the window.

use super::decode::{Leader, Scratch, Which};
use super::{Buffers, Ctx, embed};
use crate::model::Block;

impl Leader<'_, '_> {
    /// The token at `pos` of a Llama-style model: lane `b`'s buffers, logits (V) out.
    pub(super) fn family_token(
        &mut self,
        b: &mut Buffers,
        logits: &mut [f32],
        token: u32,
        pos: usize,
    ) {
        let (cx, k, m) = (self.cx, &self.cx.k, self.cx.m);
        let cfg = *m.config();
        let (qd, kvd, f, eps) = (cfg.q_dim(), cfg.kv_dim(), cfg.ffn_dim, cfg.norm_eps);
        embed(m, token, pos, &mut b.x, &mut b.xn);
        macro_rules! scratch {
            () => {
                &mut Scratch {
                    out: &mut b.scores,
                    xq: &mut b.xq,
                    xd: &mut b.xd,
                    rows: &mut [],
                    tmp: &mut [],
                    up: &mut b.up,
                    gqa: &mut [],
                }
            };
        }
        for l in 0..cfg.n_layers {
            let w = m.block(l);
            k.rmsnorm(&b.x, w.attn_norm, &mut b.xn, eps);
            let (q, rest) = b.qkv.split_at_mut(qd);
            let (key, rest) = rest.split_at_mut(kvd);
            let value = &mut rest[..kvd];
            self.matvec((Which::Q, l), &b.xn, q, scratch!());
            self.matvec((Which::K, l), &b.xn, key, scratch!());
            self.matvec((Which::V, l), &b.xn, value, scratch!());
            norm_rotate(cx, &w, l, pos, q, key, &mut b.gqa);
            store_token(cx, l, pos, key, value);
            let att = &mut b.att[..qd];
            self.attend((l, pos), q, att, (&mut b.scores, &mut b.gqa));
            self.matvec((Which::Out, l), att, &mut b.out, scratch!());
            residual(cx, w.attn_post_norm, &mut b.x, &mut b.out, &mut b.xn);
            k.rmsnorm(&b.x, w.mlp_norm, &mut b.xn, eps);
            self.matvec((Which::GateUp, l), &b.xn, &mut b.ff[..f], scratch!());
            self.matvec((Which::Down, l), &b.ff[..f], &mut b.out, scratch!());
            residual(cx, w.mlp_post_norm, &mut b.x, &mut b.out, &mut b.xn);
        }
        k.rmsnorm(&b.x, m.final_norm().0, &mut b.xn, eps);
        self.matvec((Which::Head, 0), &b.xn, logits, scratch!());
    }
}

impl Leader<'_, '_> {
    /// Attention of the token at `pos` in layer l, q (H·D) → att (H·D), its keys and values
    /// stored: one crew job whose items are the key/value groups (each group's query heads are
    /// consecutive rows of att), so the members share the cache reads. A group's rows are
    /// computed by the same calls whoever takes it. `scratch`: scores (≥ Hg·P) and gqa.
    fn attend(
        &mut self,
        (l, pos): (usize, usize),
        q: &[f32],
        att: &mut [f32],
        (scores, gqa): (&mut [f32], &mut [f32]),
    ) {
        let cx = self.cx;
        let groups = cx.kv.layout.groups;
        if cx.crew.g <= 1 || groups == 1 {
            return attend_token(cx, l, pos, q, att, scores, gqa);
        }
        let n = groups as u32;
        let open = cx
            .crew
            .open(&mut self.epoch, Which::Attn.encode(l), pos as u32, n, q);
        while let Some(g) = cx.crew.claim(open, n) {
            let rows = group_rows(cx, g as usize);
            attend_group(
                cx,
                (l, pos),
                g as usize,
                q,
                &mut att[rows.clone()],
                scores,
                gqa,
            );
            cx.crew.put(rows.start, &att[rows]);
            cx.crew.mark_done();
        }
        cx.crew.wait_done(n);
        cx.crew.get(0, att);
    }
}

/// A worker's share of an attention job ([`Which::Attn`]) of layer l at `pos`: q (H·D) is the
/// job's input; each group's rows go through `scratch.tmp` (≥ H·D) into the crew's output.
pub(super) fn attend_work(
    cx: &Ctx<'_>,
    (l, pos): (usize, usize),
    (epoch, n): (u32, u32),
    q: &[f32],
    scratch: &mut Scratch<'_>,
) {
    if pos >= cx.kv.layout.t || n as usize != cx.kv.layout.groups {
        return; // a torn read: the job changed under us, no claim will succeed
    }
    while let Some(g) = cx.crew.claim(epoch, n) {
        let rows = group_rows(cx, g as usize);
        let out = &mut scratch.tmp[..rows.len()];
        attend_group(cx, (l, pos), g as usize, q, out, scratch.out, scratch.gqa);
        cx.crew.put(rows.start, out);
        cx.crew.mark_done();
    }
}

/// The rows of H·D that the query heads of key/value group g fill (consecutive: query head h
/// reads key/value head h / (H / Hkv)).
fn group_rows(cx: &Ctx<'_>, g: usize) -> std::ops::Range<usize> {
    let cfg = cx.m.config();
    let kv = &cx.kv.layout;
    let rep = cfg.n_heads / cfg.n_kv_heads;
    let hs = kv.group(g);
    hs.start * rep * kv.d..hs.end * rep * kv.d
}

/// x (C) += out (C), after Gemma's post norm of `out` when the block has one; `tmp` (C) scratch.
pub(super) fn residual(
    cx: &Ctx<'_>,
    post: Option<&[f32]>,
    x: &mut [f32],
    out: &mut [f32],
    tmp: &mut [f32],
) {
    if let Some(scale) = post {
        cx.k.rmsnorm_in_place(out, scale, tmp, cx.m.config().norm_eps);
    }
    cx.k.add(x, out);
}

/// One token's queries q (H·D) and keys (Hkv·D) at `pos` in layer l: each head's RMSNorm over D
/// (QK-norm, when the block has it), then its rotation by the position's table row (RoPE after
/// the norm, as Hugging Face does). `tmp` (≥ D) is scratch.
pub(super) fn norm_rotate(
    cx: &Ctx<'_>,
    w: &Block<'_>,
    l: usize,
    pos: usize,
    q: &mut [f32],
    key: &mut [f32],
    tmp: &mut [f32],
) {
    let cfg = cx.m.config();
    let d = cfg.head_dim;
    let (cos, sin) = cx.rope.at(pos, cfg.is_local(l));
    for (x, norm) in [(q, w.q_norm), (key, w.k_norm)] {
        for head in x.chunks_exact_mut(d) {
            if let Some(scale) = norm {
                cx.k.rmsnorm_in_place(head, scale, tmp, cfg.norm_eps);
            }
            cx.k.rope(head, cos, sin);
        }
    }
}

/// Stores one token's keys and values (Hkv·D each) at `pos` of layer l, group by group.
pub(super) fn store_token(cx: &Ctx<'_>, l: usize, pos: usize, key: &[f32], value: &[f32]) {
    let kv = &cx.kv.layout;
    for g in 0..kv.groups {
        let hs = kv.group(g);
        let cols = hs.start * kv.d..hs.end * kv.d;
        let mut cache = cx.kv.write(g);
        cache.store(kv.at(l, pos, hs.len()), &key[cols.clone()], &value[cols]);
    }
}

/// The first position a token at `pos` attends in layer l: 0, or for a sliding-window layer
/// the oldest of the last `window` positions.
pub(super) fn window_start(cx: &Ctx<'_>, l: usize, pos: usize) -> usize {
    let cfg = cx.m.config();
    match cfg.sliding {
        Some(s) if cfg.is_local(l) => (pos + 1).saturating_sub(s.window),
        _ => 0,
    }
}

/// Grouped-query attention of the token at `pos` in layer l (its keys and values already
/// stored): queries q (H·D) → out (H·D), scores times `query_scale`. For each cache group and
/// each of the H / Hkv query heads that share a key/value head, the group's queries are gathered
/// into `gqa` (≥ 2·Hg·D) and attend through the group kernels. `scores` (≥ Hg·P) is scratch.
pub(super) fn attend_token(
    cx: &Ctx<'_>,
    l: usize,
    pos: usize,
    q: &[f32],
    out: &mut [f32],
    scores: &mut [f32],
    gqa: &mut [f32],
) {
    for g in 0..cx.kv.layout.groups {
        let rows = group_rows(cx, g);
        attend_group(cx, (l, pos), g, q, &mut out[rows], scores, gqa);
    }
}

/// Key/value group g's part of [`attend_token`]: its query heads' outputs → out (their
/// consecutive rows, [`group_rows`]).
fn attend_group(
    cx: &Ctx<'_>,
    (l, pos): (usize, usize),
    g: usize,
    q: &[f32],
    out: &mut [f32],
    scores: &mut [f32],
    gqa: &mut [f32],
) {
    let cfg = cx.m.config();
    let kv = &cx.kv.layout;
    let (d, rep) = (kv.d, cfg.n_heads / cfg.n_kv_heads);
    let start = window_start(cx, l, pos);
    let p = pos + 1 - start;
    let hs = kv.group(g);
    let hg = hs.len();
    let base = hs.start * rep * d; // out's first row in H·D
    let cache = cx.kv.read(g);
    let from = kv.at(l, start, hg);
    let (qg, og) = gqa.split_at_mut(hg * d);
    let og = &mut og[..hg * d];
    for r in 0..rep {
        for (j, h) in hs.clone().enumerate() {
            qg[j * d..(j + 1) * d].copy_from_slice(&q[(h * rep + r) * d..][..d]);
        }
        let sc = &mut scores[..hg * p];
        cache.attend_scaled(&cx.k, hg, qg, from, sc, og, cfg.query_scale);
        for (j, h) in hs.clone().enumerate() {
            out[(h * rep + r) * d - base..][..d].copy_from_slice(&og[j * d..(j + 1) * d]);
        }
    }
}
