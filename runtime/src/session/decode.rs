//! Decode: one token on the crew (see the parent module's docs). Lane 0's thread leads
//! ([`Leader`]): it runs the small vector work and opens each layer's products as crew jobs
//! ([`Which`]); the other lanes' threads run [`worker`] until the token is finished. Every
//! product's rows are computed chunk by chunk ([`Chunks`]) by the same kernel calls whatever the
//! crew size, so logits are bit-identical for any thread count.

use super::crew::{Chunks, FinishOnDrop, PoisonOnPanic, fork};
use super::{Buffers, Ctx, Session, embed};
use crate::kernels::{Epilogue, Kernels, Q8_BLOCK};
use crate::model::{Layer, Mat, Model};
use emberlm_formats::config::{LAYERNORM_EPS, Mlp};
use std::ops::Range;

impl Session<'_, '_> {
    /// Decode: one token at position `tokens.len()`: lane 0 leads, the other lanes' threads
    /// take chunks of its matrix-vector products (see the module docs).
    pub(super) fn forward_one(&mut self, token: u32) {
        let pos = self.tokens.len();
        let cx = Ctx {
            k: self.kernels,
            m: self.model,
            kv: &self.kv,
            crew: &self.crew,
            rope: &self.rope,
        };
        let (lead, workers) = self.lanes.split_first_mut().expect("at least one lane");
        let logits = &mut self.logits;
        cx.crew.reset();
        let gpt2 = cx.m.is_gpt2();
        let mut leader = || {
            let _finish = FinishOnDrop(cx.crew);
            let mut leader = Leader { cx: &cx, epoch: 0 };
            if gpt2 {
                leader.token(lead, logits, token, pos);
            } else {
                leader.family_token(lead, logits, token, pos);
            }
        };
        if cx.crew.g > 1 && !workers.is_empty() {
            fork(leader, || run_workers(&cx, 1, workers));
        } else {
            leader();
        }
        self.tokens.push(token);
    }
}

/// Which matrix a job multiplies: GPT-2's (`Qkv` to `Fcp`), the other families' (`Q` to
/// `Down`), or the head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Which {
    /// The query/key/value product and attention, one job ([`AttnJob`]).
    Qkv,
    Proj,
    Fc,
    Fcp,
    Head,
    /// A family block's query projection (bias included).
    Q,
    /// Its key projection.
    K,
    /// Its value projection.
    V,
    /// Its attention output projection.
    Out,
    /// Its gate and up projections as one job: each chunk's gate and up rows, combined by the
    /// member that computed them (SiLU or GELU of the gate times the up).
    GateUp,
    /// Its down projection.
    Down,
    /// Its attention, one item per key/value group ([`super::gqa::attend_work`]).
    Attn,
}

impl Which {
    const ALL: [Which; 12] = [
        Which::Qkv,
        Which::Proj,
        Which::Fc,
        Which::Fcp,
        Which::Head,
        Which::Q,
        Which::K,
        Which::V,
        Which::Out,
        Which::GateUp,
        Which::Down,
        Which::Attn,
    ];

    pub(super) fn encode(self, layer: usize) -> u32 {
        (layer as u32) << 4 | Which::ALL.iter().position(|&w| w == self).unwrap_or(0) as u32
    }

    fn decode(code: u32) -> (Which, usize) {
        (
            Which::ALL[(code & 15) as usize % Which::ALL.len()],
            (code >> 4) as usize,
        )
    }

    /// The product's input width (columns).
    fn cols(self, m: &Model<'_>) -> usize {
        let cfg = m.config();
        match self {
            Which::Fcp => 4 * cfg.dim,
            Which::Out | Which::Attn => cfg.q_dim(),
            Which::Down => cfg.ffn_dim,
            _ => cfg.dim,
        }
    }

    /// What follows the product, applied to each chunk's rows by the member that computed them
    /// (elementwise, so the bits do not depend on the chunking): the bias, and GELU after the
    /// MLP's first product.
    fn epilogue<'m>(self, m: &'m Model<'_>, layer: usize) -> Epilogue<'m> {
        let (bias, gelu) = match self {
            Which::Qkv => (None, false), // per head group, in `AttnJob::project`
            Which::Head => (m.head().1, false),
            Which::Proj => (Some(m.layer(layer).proj_b), false),
            Which::Fc => (Some(m.layer(layer).fc_b), true),
            Which::Fcp => (Some(m.layer(layer).fcp_b), false),
            Which::Q => (m.block(layer).q_bias, false),
            Which::K => (m.block(layer).k_bias, false),
            Which::V => (m.block(layer).v_bias, false),
            Which::Out | Which::GateUp | Which::Down | Which::Attn => (None, false),
        };
        Epilogue { bias, gelu }
    }

    fn mat<'m>(self, m: &'m Model<'_>, layer: usize) -> Mat<'m> {
        match self {
            Which::Head => m.head().0,
            Which::Q => m.block(layer).q,
            Which::K => m.block(layer).k,
            Which::V => m.block(layer).v,
            Which::Out => m.block(layer).out,
            Which::GateUp => m.block(layer).gate,
            Which::Down | Which::Attn => m.block(layer).down,
            w => {
                let l = m.layer(layer);
                match w {
                    Which::Qkv => l.qkv_w,
                    Which::Proj => l.proj_w,
                    Which::Fc => l.fc_w,
                    _ => l.fcp_w,
                }
            }
        }
    }
}

/// A crew member's scratch: one chunk's output rows (≥ MAX_CHUNK_ROWS, or T attention scores)
/// and a quantized input; for the fused attention job, one head group's query, key and value
/// rows (≥ 3C) and its output (≥ Hg·D); for a gated MLP job, one chunk's up rows (`up`).
pub(super) struct Scratch<'s> {
    pub(super) out: &'s mut [f32],
    pub(super) xq: &'s mut [i8],
    pub(super) xd: &'s mut [f32],
    pub(super) rows: &'s mut [f32],
    pub(super) tmp: &'s mut [f32],
    pub(super) up: &'s mut [f32],
    /// (2·Hkv·D) a family's gathered queries and outputs of one KV group.
    pub(super) gqa: &'s mut [f32],
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
    fn new(k: &Kernels, w: &Mat<'_>, x: &'s [f32], xq: &'s mut [i8], xd: &'s mut [f32]) -> Self {
        let q = match w {
            Mat::Q8(_) | Mat::Q4(_) | Mat::Q6(_) => {
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
        (Mat::Q4(w), Some((xq, xd))) => k.matvec_q4q8_rows(w, xq, xd, y, row_start),
        (Mat::Q4(w), None) => k.matvec_q4_rows(w, x.x, y, row_start),
        (Mat::Q6(w), Some((xq, xd))) => k.matvec_q6q8_rows(w, xq, xd, y, row_start),
        (Mat::Q6(w), None) => k.matvec_q6_rows(w, x.x, y, row_start),
    }
}

/// One matrix-vector job: y (R) = W x (C) and its epilogue, cut into [`Chunks`]. A gated MLP's
/// job ([`Which::GateUp`]) also holds the up projection `up` and its activation: each chunk's
/// rows are act(gate rows) · (up rows).
struct Product<'s> {
    w: Mat<'s>,
    up: Option<(Mat<'s>, Mlp)>,
    ep: Epilogue<'s>,
    chunks: Chunks,
    x: Input<'s>,
}

impl<'s> Product<'s> {
    /// Job `which` of `layer` on x (quantized into `xq`, `xd` for Q8 weights).
    fn new(
        cx: &Ctx<'s>,
        (which, layer): (Which, usize),
        x: &'s [f32],
        xq: &'s mut [i8],
        xd: &'s mut [f32],
    ) -> Self {
        let w = which.mat(cx.m, layer);
        let (rows, elem) = match w {
            Mat::F32(w) => (w.len() / x.len().max(1), 4),
            Mat::F16(w) => (w.len() / x.len().max(1), 2),
            Mat::Q8(w) => (w.rows(), 1),
            // Half a byte a weight: chunked as int8 (the chunk sizes only balance threads).
            Mat::Q4(w) => (w.rows(), 1),
            Mat::Q6(w) => (w.rows(), 1),
        };
        let up = (which == Which::GateUp).then(|| (cx.m.block(layer).up, cx.m.config().mlp));
        Product {
            w,
            up,
            ep: which.epilogue(cx.m, layer),
            chunks: Chunks::new(rows, x.len(), elem),
            x: Input::new(&cx.k, &w, x, xq, xd),
        }
    }

    /// Chunk i's rows into y (as long as the chunk), epilogue applied; `up` (≥ the chunk) is
    /// scratch for a gated job's up rows.
    fn chunk(&self, k: &Kernels, i: usize, y: &mut [f32], up: &mut [f32]) -> Range<usize> {
        let r = self.chunks.range(i);
        self.rows(k, r.clone(), y, up);
        r
    }

    /// The whole product into y (R), on the calling thread: one kernel call per matrix (per
    /// `up.len()` rows for a gated job). A one-thread crew has nothing to balance, and a chunk's
    /// four row streams are short: on 768 columns, 288-row calls read cold weights at 0.81 of a
    /// whole-matrix call (`cargo bench -p emberlm-benches --bench decode_chunks`). Every row goes
    /// through the same kernel sequence whatever the cut, so the bits equal the chunked ones.
    fn all(&self, k: &Kernels, y: &mut [f32], up: &mut [f32]) {
        let step = if self.up.is_some() { up.len() } else { y.len() }.max(1);
        for start in (0..y.len()).step_by(step) {
            let r = start..(start + step).min(y.len());
            self.rows(k, r.clone(), &mut y[r], up);
        }
    }

    /// Rows r of the product into y (r's length), epilogue applied; `up` (≥ r's length) is
    /// scratch for a gated job's up rows.
    fn rows(&self, k: &Kernels, r: Range<usize>, y: &mut [f32], up: &mut [f32]) {
        mat_rows(k, &self.w, self.x, y, r.start);
        k.epilogue(self.ep, r.clone(), y);
        if let Some((w, act)) = self.up {
            let u = &mut up[..y.len()];
            mat_rows(k, &w, self.x, u, r.start);
            match act {
                Mlp::GeGlu => k.gelu_mul(y, u),
                _ => k.silu_mul(y, u),
            }
        }
    }

    /// Claims and runs chunks of the open job of epoch `epoch` until none is left, each through
    /// `out` (≥ MAX_CHUNK_ROWS) into the crew's output (`up`: see [`Product::chunk`]).
    fn work(&self, cx: &Ctx<'_>, epoch: u32, out: &mut [f32], up: &mut [f32]) {
        let n = self.chunks.count() as u32;
        while let Some(next) = cx.crew.claim(epoch, n) {
            let i = next as usize;
            let y = &mut out[..self.chunks.range(i).len()];
            let r = self.chunk(&cx.k, i, y, up);
            cx.crew.put(r.start, y);
            cx.crew.mark_done();
        }
    }
}

/// Decode's fused query/key/value and attention job of layer l at position pos. Its items are
/// first `groups()` chunks of the product, chunk i holding the heads of KV group i
/// ([`super::kv::KvLayout`]): their D rows of each of the three parts, bias included; then one
/// item per group: store its keys and values in the cache and attend, once its chunk is done.
/// The cut depends only on the model.
struct AttnJob<'s> {
    cx: &'s Ctx<'s>,
    w: Layer<'s>,
    l: usize,
    pos: usize,
    c: usize,
    d: usize,
}

impl<'s> AttnJob<'s> {
    fn new(cx: &'s Ctx<'s>, l: usize, pos: usize) -> Self {
        let kv = &cx.kv.layout;
        AttnJob {
            cx,
            w: cx.m.layer(l),
            l,
            pos,
            c: kv.heads * kv.d,
            d: kv.d,
        }
    }

    fn groups(&self) -> usize {
        self.cx.kv.layout.groups
    }

    fn items(&self) -> usize {
        2 * self.groups()
    }

    /// The product's rows of part p (0 query, 1 key, 2 value) for the heads of group g.
    fn part(&self, p: usize, g: usize) -> Range<usize> {
        let hs = self.cx.kv.layout.group(g);
        p * self.c + hs.start * self.d..p * self.c + hs.end * self.d
    }

    /// Chunk g of the product: `rows` (3C, laid out as the whole product's output) gets group
    /// g's rows of each part, bias included.
    fn project(&self, x: Input<'_>, g: usize, rows: &mut [f32]) {
        let k = &self.cx.k;
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
    fn attend(
        &self,
        g: usize,
        (q, key, value): (&[f32], &[f32], &[f32]),
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let kv = &self.cx.kv.layout;
        let hg = kv.group(g).len();
        let mut cache = self.cx.kv.write(g);
        cache.store(kv.at(self.l, self.pos, hg), key, value);
        let scores = &mut scores[..hg * (self.pos + 1)];
        cache.attend(&self.cx.k, hg, q, kv.at(self.l, 0, hg), scores, out);
    }

    /// Claims and runs items of the open job of epoch `epoch` until none is left: first the
    /// query/key/value chunks (rows to the crew's `output[..3C]`), then the groups' attention (to
    /// `output[3C..4C]`), each group once its chunk is ready. Scratch: scores (≥ Hg·(pos + 1)),
    /// rows (≥ 3C) and tmp (≥ Hg·D).
    fn work(
        &self,
        x: Input<'_>,
        epoch: u32,
        (scores, rows, tmp): (&mut [f32], &mut [f32], &mut [f32]),
    ) {
        let (crew, groups) = (self.cx.crew, self.groups());
        while let Some(next) = crew.claim(epoch, self.items() as u32) {
            let i = next as usize;
            if i < groups {
                self.project(x, i, rows);
                for p in 0..3 {
                    let r = self.part(p, i);
                    crew.put(r.start, &rows[r]);
                }
                crew.mark_ready(i);
            } else {
                // Claims go in order, so this group's chunk is taken: wait for it to be done.
                let g = i - groups;
                crew.wait_ready(g);
                let n = self.part(0, g).len(); // Hg·D
                let (qkv, out) = (&mut rows[..3 * n], &mut tmp[..n]);
                for (p, dst) in qkv.chunks_exact_mut(n).enumerate() {
                    crew.get(self.part(p, g).start, dst);
                }
                let (q, rest) = qkv.split_at(n);
                let (key, value) = rest.split_at(n);
                self.attend(g, (q, key, value), scores, out);
                crew.put(3 * self.c + self.part(0, g).start, out);
            }
            crew.mark_done();
        }
    }
}

/// The leader of a decode token: runs everything but the matrix-vector products, which it opens
/// as crew jobs and shares with the workers. `epoch` counts the token's jobs.
pub(super) struct Leader<'c, 's> {
    pub(super) cx: &'c Ctx<'s>,
    pub(super) epoch: u32,
}

impl Leader<'_, '_> {
    /// The token at `pos`: its lane `b`'s buffers, logits (V) out.
    fn token(&mut self, b: &mut Buffers, logits: &mut [f32], token: u32, pos: usize) {
        let (k, m) = (&self.cx.k, self.cx.m);
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
                    up: &mut [],
                    gqa: &mut [],
                }
            };
        }
        for l in 0..m.config().n_layers {
            let w = m.layer(l);
            k.layernorm(&b.x, w.norm1.0, w.norm1.1, &mut b.xn, LAYERNORM_EPS);
            let scratch = &mut Scratch {
                out: &mut b.scores,
                xq: &mut b.xq,
                xd: &mut b.xd,
                rows: &mut b.qkv,
                tmp: &mut b.out,
                up: &mut [],
                gqa: &mut [],
            };
            self.qkv_attend(l, pos, &b.xn, &mut b.att, scratch);
            self.matvec((Which::Proj, l), &b.att, &mut b.out, scratch!());
            k.add(&mut b.x, &b.out);
            k.layernorm(&b.x, w.norm2.0, w.norm2.1, &mut b.xn, LAYERNORM_EPS);
            self.matvec((Which::Fc, l), &b.xn, &mut b.ff, scratch!());
            self.matvec((Which::Fcp, l), &b.ff, &mut b.out, scratch!());
            k.add(&mut b.x, &b.out);
        }
        let (scale, shift) = m.final_norm();
        k.layernorm(&b.x, scale, shift, &mut b.xn, LAYERNORM_EPS);
        self.matvec((Which::Head, 0), &b.xn, logits, scratch!());
    }

    /// y (R) = W x (C) and its epilogue ([`Which::epilogue`]) for job `which` of `layer`, shared
    /// with the workers; `scratch.out` holds one chunk's output.
    pub(super) fn matvec(
        &mut self,
        (which, layer): (Which, usize),
        x: &[f32],
        y: &mut [f32],
        scratch: &mut Scratch<'_>,
    ) {
        let (cx, k) = (self.cx, &self.cx.k);
        let job = Product::new(cx, (which, layer), x, scratch.xq, scratch.xd);
        if cx.crew.g <= 1 {
            job.all(k, y, scratch.up);
            return;
        }
        let n = job.chunks.count() as u32;
        let open = cx.crew.open(&mut self.epoch, which.encode(layer), 0, n, x);
        job.work(cx, open, scratch.out, scratch.up);
        cx.crew.wait_done(n);
        cx.crew.get(0, y);
    }

    /// The query/key/value product of layer l and attention at position pos as one job,
    /// xn (C) → att (C), shared with the workers (see [`AttnJob`]). Uses `scratch.out` (≥ Hg·T)
    /// for scores, `scratch.rows` (≥ 3C) and `scratch.tmp` (≥ Hg·D).
    fn qkv_attend(
        &mut self,
        l: usize,
        pos: usize,
        xn: &[f32],
        att: &mut [f32],
        scratch: &mut Scratch<'_>,
    ) {
        let cx = self.cx;
        let job = AttnJob::new(cx, l, pos);
        let input = Input::new(&cx.k, &job.w.qkv_w, xn, scratch.xq, scratch.xd);
        if cx.crew.g <= 1 {
            let (scores, rows) = (&mut *scratch.out, &mut *scratch.rows);
            // The whole product in one call (see `Product::all`), bias after: the same bits as
            // the groups' chunks.
            let rows3 = &mut rows[..3 * job.c];
            mat_rows(&cx.k, &job.w.qkv_w, input, rows3, 0);
            if let Some(bias) = job.w.qkv_b {
                cx.k.add(rows3, &bias[..3 * job.c]);
            }
            for g in 0..job.groups() {
                let part = |p: usize| &rows[job.part(p, g)];
                let out = &mut att[job.part(0, g)];
                job.attend(g, (part(0), part(1), part(2)), scores, out);
            }
            return;
        }
        let n = job.items() as u32;
        let open = cx
            .crew
            .open(&mut self.epoch, Which::Qkv.encode(l), pos as u32, n, xn);
        let parts = (&mut *scratch.out, &mut *scratch.rows, &mut *scratch.tmp);
        job.work(input, open, parts);
        cx.crew.wait_done(n);
        cx.crew.get(3 * job.c, att);
    }
}

/// Worker: takes chunks of every job the leader opens until the token is finished. `x` (4C)
/// holds a copy of the input, `scratch` one chunk's output.
fn worker(cx: &Ctx<'_>, x: &mut [f32], scratch: &mut Scratch<'_>) {
    let (crew, cfg) = (cx.crew, cx.m.config());
    let mut seen = u32::MAX; // last epoch worked on
    while let Some((epoch, code, n)) = crew.next_job(&mut seen) {
        let (which, layer) = Which::decode(code);
        if which != Which::Head && layer >= cfg.n_layers || n == 0 {
            continue; // a torn read: the job changed under us, no claim will succeed
        }
        let gpt2_job = matches!(which, Which::Qkv | Which::Proj | Which::Fc | Which::Fcp);
        if which != Which::Head && gpt2_job != cx.m.is_gpt2() {
            continue; // a torn read: another family's job code
        }
        let cols = which.cols(cx.m);
        let x = &mut x[..cols];
        crew.load_input(x);
        if which == Which::Attn {
            let bufs = (&mut *scratch.tmp, &mut *scratch.out, &mut *scratch.gqa);
            super::gqa::attend_work(cx, (layer, crew.arg() as usize), (epoch, n), x, bufs);
            continue;
        }
        if which == Which::Qkv {
            let pos = crew.arg() as usize;
            let job = AttnJob::new(cx, layer, pos);
            if pos >= cx.kv.layout.t || n as usize != job.items() {
                continue; // a torn read, as above
            }
            let input = Input::new(&cx.k, &job.w.qkv_w, x, scratch.xq, scratch.xd);
            let parts = (&mut *scratch.out, &mut *scratch.rows, &mut *scratch.tmp);
            job.work(input, epoch, parts);
            continue;
        }
        let job = Product::new(cx, (which, layer), x, scratch.xq, scratch.xd);
        if job.chunks.count() as u32 != n {
            continue; // a torn read, as above
        }
        job.work(cx, epoch, scratch.out, scratch.up);
    }
}

/// Starts workers g.. of the crew (each on its own lane), forked onto other rayon workers.
fn run_workers(cx: &Ctx<'_>, g: usize, lanes: &mut [Buffers]) {
    let Some((lane, rest)) = lanes.split_first_mut() else {
        return;
    };
    let mut work = || {
        let _poison = PoisonOnPanic(cx.crew);
        let mut scratch = Scratch {
            out: &mut lane.scores,
            xq: &mut lane.xq,
            xd: &mut lane.xd,
            rows: &mut lane.qkv,
            tmp: &mut lane.att,
            up: &mut lane.up,
            gqa: &mut lane.gqa,
        };
        worker(cx, &mut lane.ff, &mut scratch)
    };
    if rest.is_empty() || g + 1 >= cx.crew.g {
        work();
    } else {
        fork(work, || run_workers(cx, g + 1, rest));
    }
}
