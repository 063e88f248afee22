//! Prefill of the Llama-style families: a chunk of N prompt tokens through batched products
//! (each weight converted once per chunk), per-token QK-norm and RoPE, then the tokens'
//! attention in parallel, one run of tokens per lane (see [`super::family`] for the block and
//! its decisions).
//!
//! Letters as in [`super::family`]; N tokens in the chunk.

use super::crew::fork;
use super::gqa::{attend_token, norm_rotate, store_token};
use super::prefill::{Products, by_tokens};
use super::{Buffers, Ctx, Session, embed};
use crate::kernels::{Epilogue, Kernels, Q4Matrix, Q6Matrix, Q8Matrix};
use crate::model::Mat;
use emberlm_formats::config::Mlp;

impl Session<'_, '_> {
    /// Prefill of N tokens at positions `tokens.len()..` for a Llama-style model.
    pub(super) fn family_chunk(&mut self, chunk: &[u32]) {
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
        let (qd, kvd, f, eps) = (cfg.q_dim(), cfg.kv_dim(), cfg.ffn_dim, cfg.norm_eps);
        let b = &mut self.chunk;
        let mut pr = Products::new(k, &mut self.products);
        for (i, &t) in chunk.iter().enumerate() {
            let r = i * c..(i + 1) * c;
            embed(m, t, pos0 + i, &mut b.x[r.clone()], &mut b.xn[r]);
        }
        let rms = |x: &[f32], scale: &[f32], out: &mut [f32]| {
            for (xr, or) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
                k.rmsnorm(xr, scale, or, eps);
            }
        };
        // `ff` holds each phase's rows in turn (`Buffers::family_chunk`): the attention's
        // [queries, keys, values | then its projection][attention output], the MLP's
        // [gate][up | then the down projection].
        let wa = (qd + 2 * kvd).max(c);
        for l in 0..cfg.n_layers {
            let w = m.block(l);
            let (x, xn) = (&mut b.x[..n * c], &mut b.xn[..n * c]);
            by_tokens(k, xn, x, c, |o, x| rms(x, w.attn_norm, o));
            let (first, att) = b.ff.split_at_mut(n * wa);
            let att = &mut att[..n * qd];
            let (q, rest) = first[..n * (qd + 2 * kvd)].split_at_mut(n * qd);
            let (key, value) = rest.split_at_mut(n * kvd);
            let fresh = [true, false, false]; // x is quantized once for the three
            let qkv = [
                (w.q, w.q_bias, &mut *q),
                (w.k, w.k_bias, &mut *key),
                (w.v, w.v_bias, &mut *value),
            ];
            for ((wm, bias, y), fresh) in qkv.into_iter().zip(fresh) {
                let ep = Epilogue { bias, gelu: false };
                pr.run(wm, c, xn, y, ep, fresh);
            }
            let rows = q.chunks_exact_mut(qd).zip(key.chunks_exact_mut(kvd));
            for (i, (qi, ki)) in rows.enumerate() {
                norm_rotate(&cx, &w, l, pos0 + i, qi, ki, &mut b.gqa);
            }
            let rows = key.chunks_exact(kvd).zip(value.chunks_exact(kvd));
            for (i, (ki, vi)) in rows.enumerate() {
                store_token(&cx, l, pos0 + i, ki, vi);
            }
            let job = Tokens {
                cx: &cx,
                l,
                pos0,
                q,
            };
            attend_runs(&job, 0, &mut self.lanes, att);
            let none = Epilogue::default();
            // The projection over the queries, keys and values (stored or used up by now).
            let out = &mut first[..n * c];
            pr.run(w.out, qd, att, out, none, true);
            residual_rows(k, (c, eps), w.attn_post_norm, (&mut *x, &mut *xn, out));
            by_tokens(k, xn, x, c, |o, x| rms(x, w.mlp_norm, o));
            // In parts of P rows of gate and up (a part's rows are the same rows of the whole
            // product), each part's gated rows copied into h (N, F): 1.25 (N, F) buffers, not 2.
            let p = mlp_part_rows(f);
            let (h, rest) = b.ff.split_at_mut(n * f);
            for r0 in (0..f).step_by(p) {
                let rows = r0..(r0 + p).min(f);
                let pl = rows.len();
                let (gate, up) = rest[..2 * n * pl].split_at_mut(n * pl);
                let fresh = r0 == 0; // xn is quantized once for all the parts
                pr.run(row_range(w.gate, c, &rows), c, xn, gate, none, fresh);
                pr.run(row_range(w.up, c, &rows), c, xn, up, none, false);
                // Row by row, so every token's row gets the same kernel calls whatever the split.
                by_tokens(k, gate, up, pl, |g, u| {
                    for (gr, ur) in g.chunks_exact_mut(pl).zip(u.chunks_exact(pl)) {
                        match cfg.mlp {
                            Mlp::GeGlu => k.gelu_mul(gr, ur),
                            _ => k.silu_mul(gr, ur),
                        }
                    }
                });
                for (hr, gr) in h.chunks_exact_mut(f).zip(gate.chunks_exact(pl)) {
                    hr[rows.clone()].copy_from_slice(gr);
                }
            }
            // The down projection over the parts (used up by now).
            let out = &mut rest[..n * c];
            pr.run(w.down, f, h, out, none, true);
            residual_rows(k, (c, eps), w.mlp_post_norm, (&mut *x, &mut *xn, out));
        }
        // Logits for the last position only.
        let last = &b.x[(n - 1) * c..n * c];
        k.rmsnorm(last, m.final_norm().0, &mut b.xn[..c], eps);
        let (head, bias) = m.head();
        let lane = &mut self.lanes[0];
        let q = (&mut lane.xq[..], &mut lane.xd[..]);
        head.matvec_int8_input(k, &b.xn[..c], q, &mut self.logits);
        if let Some(bias) = bias {
            k.add(&mut self.logits, bias);
        }
        self.tokens.extend_from_slice(chunk);
    }
}

/// Rows of gate and up per part of a family's prefill MLP: an eighth of F, rounded up to a
/// multiple of 64 (whole SIMD runs for the gating). An eighth, not a quarter: the MLP's arena,
/// F + max(2P, C) rows a token, is then F + C where F = 4C (Llama-3.2-1B: 1 MiB less resident
/// memory at N = 128), the attention's arena rules elsewhere (Qwen3-0.6B), and each part's
/// product still has hundreds of rows per thread. The gated rows do not depend on P (each
/// row's gating runs whole SIMD runs), nor on the thread count.
pub(super) fn mlp_part_rows(f: usize) -> usize {
    f.div_ceil(8).next_multiple_of(64).min(f).max(1)
}

/// Rows `rows` of the (R, C) matrix `w`, as a matrix of their own.
fn row_range<'w>(w: Mat<'w>, c: usize, rows: &std::ops::Range<usize>) -> Mat<'w> {
    let (r0, r1) = (rows.start, rows.end);
    match w {
        Mat::F32(v) => Mat::F32(&v[r0 * c..r1 * c]),
        Mat::F16(v) => Mat::F16(&v[r0 * c..r1 * c]),
        Mat::Q8(q) => {
            let nb = q.blocks_per_row();
            let part = Q8Matrix::new(
                &q.quants()[r0 * c..r1 * c],
                &q.scales()[r0 * nb..r1 * nb],
                r1 - r0,
                c,
            );
            Mat::Q8(part.expect("rows of a valid matrix"))
        }
        Mat::Q4(q) => {
            let nb = q.blocks_per_row();
            let row_bytes = q.quants().len() / q.rows().max(1);
            let part = Q4Matrix::new(
                &q.quants()[r0 * row_bytes..r1 * row_bytes],
                &q.scales()[r0 * nb..r1 * nb],
                r1 - r0,
                c,
            );
            Mat::Q4(part.expect("rows of a valid matrix"))
        }
        Mat::Q6(q) => {
            let nb = q.blocks_per_row();
            let row_bytes = q.quants().len() / q.rows().max(1);
            let part = Q6Matrix::new(
                &q.quants()[r0 * row_bytes..r1 * row_bytes],
                &q.scales()[r0 * nb..r1 * nb],
                r1 - r0,
                c,
            );
            Mat::Q6(part.expect("rows of a valid matrix"))
        }
    }
}

/// x (N, C) += post(out (N, C)): Gemma's post norm of each row first when `post` is set (into
/// `xn`, which is free at this point of the block).
fn residual_rows(
    k: &Kernels,
    (c, eps): (usize, f32),
    post: Option<&[f32]>,
    (x, xn, out): (&mut [f32], &mut [f32], &[f32]),
) {
    let add = match post {
        Some(scale) => {
            by_tokens(k, xn, out, c, |o, y| {
                for (yr, or) in y.chunks_exact(c).zip(o.chunks_exact_mut(c)) {
                    k.rmsnorm(yr, scale, or, eps);
                }
            });
            &*xn
        }
        None => out,
    };
    by_tokens(k, x, add, c, |x, o| k.add(x, o));
}

/// One chunk's queries (N, H·D), normalised and rotated, for layer l; tokens at pos0...
struct Tokens<'s> {
    cx: &'s Ctx<'s>,
    l: usize,
    pos0: usize,
    q: &'s [f32],
}

impl Tokens<'_> {
    /// Attention of tokens i0.. (one (H·D) row of `att` each) on one lane's scratch.
    fn attend(&self, i0: usize, lane: &mut Buffers, att: &mut [f32]) {
        let qd = self.cx.m.config().q_dim();
        for (ii, out) in att.chunks_exact_mut(qd).enumerate() {
            let i = i0 + ii;
            let q = &self.q[i * qd..(i + 1) * qd];
            let pos = self.pos0 + i;
            attend_token(
                self.cx,
                self.l,
                pos,
                q,
                out,
                &mut lane.scores,
                &mut lane.gqa,
            );
        }
    }
}

/// The chunk's attention, tokens i0.. (`att` holds their rows): cut into runs of about equal
/// work (token i attends up to pos0 + i + 1 positions), one per lane, run in parallel. A token's
/// output does not depend on the cut.
fn attend_runs(job: &Tokens<'_>, i0: usize, lanes: &mut [Buffers], att: &mut [f32]) {
    let Some((lane, rest)) = lanes.split_first_mut() else {
        return;
    };
    let qd = job.cx.m.config().q_dim();
    let n = att.len() / qd;
    let work = |i: usize| job.pos0 + i0 + i + 1;
    let total: usize = (0..n).map(work).sum();
    let target = total / (rest.len() + 1);
    let (mut mine, mut acc) = (0, 0);
    while mine < n && (acc < target || mine == 0) {
        acc += work(mine);
        mine += 1;
    }
    let (my_att, rest_att) = att.split_at_mut(mine * qd);
    if rest.is_empty() || mine == n {
        job.attend(i0, lane, att);
    } else {
        fork(
            || job.attend(i0, lane, my_att),
            || attend_runs(job, i0 + mine, rest, rest_att),
        );
    }
}
