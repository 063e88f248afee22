//! The per-token pieces of the modern families' attention, shared by decode ([`super::family`],
//! the crew's attention jobs in [`super::decode`]) and prefill ([`super::family_prefill`]):
//! QK-norm and RoPE, storing keys and values, grouped-query attention over the cache (sliding
//! windows included) and the residual add with Gemma's post norm. Below both users, so neither
//! imports the other for these.

use super::Ctx;
use crate::model::Block;

/// A worker's share of an attention job (decode's `Which::Attn`) of layer l at `pos`: q (H·D) is
/// the job's input; each group's rows go through `tmp` (≥ H·D) into the crew's output; `scores`
/// and `gqa` are [`attend_group`]'s scratch.
pub(super) fn attend_work(
    cx: &Ctx<'_>,
    (l, pos): (usize, usize),
    (epoch, n): (u32, u32),
    q: &[f32],
    (tmp, scores, gqa): (&mut [f32], &mut [f32], &mut [f32]),
) {
    if pos >= cx.kv.layout.t || n as usize != cx.kv.layout.groups {
        return; // a torn read: the job changed under us, no claim will succeed
    }
    while let Some(g) = cx.crew.claim(epoch, n) {
        let rows = group_rows(cx, g as usize);
        let out = &mut tmp[..rows.len()];
        attend_group(cx, (l, pos), g as usize, q, out, scores, gqa);
        cx.crew.put(rows.start, out);
        cx.crew.mark_done();
    }
}

/// The rows of H·D that the query heads of key/value group g fill (consecutive: query head h
/// reads key/value head h / (H / Hkv)).
pub(super) fn group_rows(cx: &Ctx<'_>, g: usize) -> std::ops::Range<usize> {
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

/// Stores one token's keys and values (Hkv·D each) at `pos` of layer l, group by group (twice
/// in a sliding-window layer's ring when pos has a mirror slot, [`super::kv::Ring`]).
pub(super) fn store_token(cx: &Ctx<'_>, l: usize, pos: usize, key: &[f32], value: &[f32]) {
    let kv = &cx.kv.layout;
    for g in 0..kv.groups {
        let hs = kv.group(g);
        let cols = hs.start * kv.d..hs.end * kv.d;
        let (key, value) = (&key[cols.clone()], &value[cols]);
        let mut cache = cx.kv.write(g);
        cache.store(kv.at(l, pos, hs.len()), key, value);
        if let Some(at) = kv.mirror(l, pos, hs.len()) {
            cache.store(at, key, value);
        }
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
pub(super) fn attend_group(
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
