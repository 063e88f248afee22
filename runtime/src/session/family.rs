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
//!   positions > p − window) by starting the attention at that position; their cache is a
//!   mirrored ring ([`super::kv::Ring`]) of about twice the window plus a prefill chunk, so the
//!   window is always one contiguous run and a local layer's cache does not grow with the
//!   context.

use super::decode::{Leader, Scratch, Which};
use super::gqa::{attend_group, attend_token, group_rows, norm_rotate, residual, store_token};
use super::{Buffers, embed};

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
