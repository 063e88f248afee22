//! Training forward and backward of the modern families (Llama, Qwen2, Qwen3, Gemma 3) on a flat
//! f32 parameter buffer laid out by the architecture's description ([`arch::tensors`]): every
//! layer of `layers/` (RMSNorm, RoPE, grouped-query attention with sliding windows, SwiGLU/GeGLU),
//! q/k/v biases, query/key norms, Gemma's post-norms and embedding scale, tied or untied heads.
//! No dropout (these families train without it).
//!
//! Norm scales are stored as the runtime and `.ember` files store them (Gemma's 1 + w), so the
//! gradient of a stored scale is the gradient of Hugging Face's w.
//!
//! Letters: B batch, T time, N = B·T rows, C channels, H/Hkv query/key-value heads, D head size,
//! Q = H·D, K = Hkv·D, F MLP hidden units, V vocabulary.

use crate::adamw::{DecayMask, DecayPolicy};
use crate::gemm::{MatMut, MatRef, Parallelism, matmul as mm};
use crate::layers::crossentropy::{self, IGNORE_INDEX};
use crate::layers::glu::{self, Gate};
use crate::layers::{gqa, matmul, rmsnorm, rope};
use emberlm_formats::arch::{self, Role};
use emberlm_formats::config::{Mlp, ModelConfig};
use std::collections::HashMap;
use std::ops::Range;

/// Where each tensor lives in the flat buffer.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The configuration.
    pub cfg: ModelConfig,
    /// K, for a classifier (a (K, C) head with a bias in place of the language-model head).
    pub classes: Option<usize>,
    ranges: HashMap<(Role, Option<usize>), Range<usize>>,
    /// Every tensor's ember name and range, in file order.
    pub tensors: Vec<(String, Range<usize>)>,
    /// The ranges of the matrices (2-D tensors), in order.
    matrices: Vec<Range<usize>>,
    /// Total parameters.
    pub len: usize,
}

impl Layout {
    /// The layout of `cfg`'s language model.
    pub fn new(cfg: &ModelConfig) -> Layout {
        Layout::with_classes(cfg, None)
    }

    /// The layout of `cfg`'s language model, or of its classifier with K = `classes`.
    pub fn with_classes(cfg: &ModelConfig, classes: Option<usize>) -> Layout {
        let mut ranges = HashMap::new();
        let mut tensors = Vec::new();
        let mut matrices = Vec::new();
        let mut off = 0;
        for t in arch::tensors(cfg, classes) {
            let r = off..off + t.len();
            off += t.len();
            if t.shape.len() == 2 {
                matrices.push(r.clone());
            }
            ranges.insert((t.desc.role, t.layer), r.clone());
            tensors.push((t.name, r));
        }
        Layout {
            cfg: *cfg,
            classes,
            ranges,
            tensors,
            matrices,
            len: off,
        }
    }

    /// The parameters that receive weight decay under `policy`. Prefer
    /// [`DecayPolicy::MatricesOnly`]: norm scales are stored as the runtime uses them (Gemma's
    /// 1 + w), so decaying them all would pull Gemma's scales to 0 instead of its w.
    pub fn decay_mask(&self, policy: DecayPolicy) -> DecayMask {
        match policy {
            DecayPolicy::All => DecayMask::all(self.len),
            DecayPolicy::MatricesOnly => DecayMask::from_ranges(self.len, &self.matrices)
                .unwrap_or_else(|_| DecayMask::all(self.len)),
        }
    }

    fn get<'p>(&self, p: &'p [f32], role: Role, layer: Option<usize>) -> Option<&'p [f32]> {
        self.ranges.get(&(role, layer)).map(|r| &p[r.clone()])
    }

    fn need<'p>(&self, p: &'p [f32], role: Role, layer: Option<usize>) -> &'p [f32] {
        self.get(p, role, layer)
            .unwrap_or_else(|| panic!("{role:?} of layer {layer:?} is in the description"))
    }

    fn range(&self, role: Role, layer: Option<usize>) -> Option<Range<usize>> {
        self.ranges.get(&(role, layer)).cloned()
    }
}

/// A layer's saved activations.
#[derive(Default)]
struct Saved {
    x: Vec<f32>,
    xn1: Vec<f32>,
    rstd1: Vec<f32>,
    qraw: Vec<f32>,
    kraw: Vec<f32>,
    qrstd: Vec<f32>,
    krstd: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    ao: Vec<f32>,
    proj: Vec<f32>,
    prstd1: Vec<f32>,
    xm: Vec<f32>,
    xn2: Vec<f32>,
    rstd2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    h: Vec<f32>,
    down: Vec<f32>,
    prstd2: Vec<f32>,
    /// x·Aᵀ of each adapted projection (q, k, v, o, gate, up, down; empty when not adapted).
    u: [Vec<f32>; 7],
}

/// The result of [`forward_backward`].
#[derive(Debug)]
pub struct Step {
    /// Mean cross-entropy over the non-ignored targets.
    pub loss: f64,
    /// Logits (N, V), before the loss (empty after a LoRA training pass).
    pub logits: Vec<f32>,
}

fn gate_of(cfg: &ModelConfig) -> Gate {
    match cfg.mlp {
        Mlp::GeGlu => Gate::GeluTanh,
        _ => Gate::Silu,
    }
}

/// RMSNorm over each head's D values (query/key norms): rows of D.
fn head_norm(out: &mut [f32], rstd: &mut Vec<f32>, inp: &[f32], scale: &[f32], eps: f32) {
    rstd.resize(inp.len() / scale.len(), 0.0);
    rmsnorm::forward(out, rstd, inp, scale, eps);
}

/// Two disjoint ranges of `buf`, mutably.
fn two_mut(buf: &mut [f32], a: Range<usize>, b: Range<usize>) -> (&mut [f32], &mut [f32]) {
    assert!(a.end <= b.start || b.end <= a.start, "disjoint ranges");
    if a.start < b.start {
        let (x, y) = buf.split_at_mut(b.start);
        (&mut x[a], &mut y[..b.len()])
    } else {
        let (x, y) = buf.split_at_mut(a.start);
        (&mut y[..a.len()], &mut x[b])
    }
}

/// Loss of `tokens` (B, T) against `targets` (B, T; [`IGNORE_INDEX`] skips a position), and the
/// gradients of every parameter *added* to `grads` (same layout as `params`).
pub fn forward_backward(
    layout: &Layout,
    params: &[f32],
    grads: &mut [f32],
    tokens: &[u32],
    targets: &[i32],
    b: usize,
) -> Step {
    let mut ws = Workspace::default();
    run(
        layout,
        params,
        Some(grads),
        None,
        None,
        tokens,
        targets,
        b,
        &mut ws,
        true,
    )
}

/// The loss (and logits) of `tokens` against `targets` as [`forward_backward`] computes them,
/// without the backward pass.
pub fn forward_loss(
    layout: &Layout,
    params: &[f32],
    tokens: &[u32],
    targets: &[i32],
    b: usize,
) -> Step {
    let mut ws = Workspace::default();
    run(
        layout, params, None, None, None, tokens, targets, b, &mut ws, true,
    )
}

/// LoRA adapters that the forward and backward run directly ([`FamilyModel::attach_lora`]): the
/// adapted weight W (O, I) is W0 + s·B·A, with W0 the model's own (frozen) parameters, A (R, I)
/// and B (O, R) in `params`. The forward computes y = x·W0ᵀ + s·(x·Aᵀ)·Bᵀ (two thin products
/// beside the frozen one), the backward dX = dY·W0 + s·(dY·B)·A, dB = s·dYᵀ·(x·Aᵀ) and
/// dA = s·(dY·B)ᵀ·x, and neither forms W nor computes any gradient of the frozen parameters: no
/// full-size gradient buffer and no second copy of W0 exist. An adapted token embedding (V, C) is
/// a lookup, x = (E0[tok] + s·B[tok]·A)·scale; a tied head uses the embedding's adapter.
#[derive(Clone, Debug, PartialEq)]
pub struct Lora {
    /// s = α/R.
    pub scale: f32,
    /// The adapted matrices.
    pub adapters: Vec<LoraAdapter>,
    /// A then B of each adapter, at the adapter's ranges.
    pub params: Vec<f32>,
    /// Their gradients (same layout), accumulated by every training batch.
    pub grads: Vec<f32>,
}

/// One adapted matrix of a [`Lora`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoraAdapter {
    /// The matrix's role (a linear layer, the head or the token embedding)…
    pub role: Role,
    /// …and block.
    pub layer: Option<usize>,
    /// O.
    pub out_features: usize,
    /// I.
    pub in_features: usize,
    /// A (R, I) in [`Lora::params`].
    pub a: Range<usize>,
    /// B (O, R) in [`Lora::params`].
    pub b: Range<usize>,
}

/// A [`Lora`]'s adapters and parameters, borrowed apart from its gradients.
#[derive(Clone, Copy)]
struct LoraRef<'a> {
    scale: f32,
    adapters: &'a [LoraAdapter],
    params: &'a [f32],
}

impl Lora {
    /// The adapters as the forward pass reads them.
    fn view(&self) -> LoraRef<'_> {
        LoraRef {
            scale: self.scale,
            adapters: &self.adapters,
            params: &self.params,
        }
    }
}

/// One adapter as the kernels use it: A (R, I), B (O, R), s.
#[derive(Clone, Copy)]
struct Adapted<'a> {
    ad: &'a LoraAdapter,
    a: &'a [f32],
    b: &'a [f32],
    scale: f32,
}

impl<'a> LoraRef<'a> {
    fn find(self, role: Role, layer: Option<usize>) -> Option<Adapted<'a>> {
        let ad = self
            .adapters
            .iter()
            .find(|a| a.role == role && a.layer == layer)?;
        Some(Adapted {
            ad,
            a: &self.params[ad.a.clone()],
            b: &self.params[ad.b.clone()],
            scale: self.scale,
        })
    }
}

impl Adapted<'_> {
    fn rank(&self) -> usize {
        self.ad.a.len() / self.ad.in_features
    }
}

/// out (N, O) = inp (N, I) · W0ᵀ + bias, plus s·(inp·Aᵀ)·Bᵀ with an adapter. Returns
/// u = inp·Aᵀ (N, R), which the backward needs (empty without an adapter).
fn linear_forward(
    out: &mut [f32],
    inp: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    i: usize,
    ad: Option<Adapted<'_>>,
) -> Vec<f32> {
    matmul::forward(out, inp, w, bias, i);
    let Some(ad) = ad else {
        return Vec::new();
    };
    let (n, o, r) = (inp.len() / i, ad.ad.out_features, ad.rank());
    let par = Parallelism::current();
    let mut u = vec![0.0f32; n * r];
    // u (N, R) = x (N, I) · Aᵀ (I, R)
    mm(
        &mut MatMut::row_major(&mut u, n, r),
        0.0,
        MatRef::row_major(inp, n, i),
        MatRef::row_major(ad.a, r, i).t(),
        1.0,
        par,
    );
    // y (N, O) += s · u (N, R) · Bᵀ (R, O)
    mm(
        &mut MatMut::row_major(out, n, o),
        1.0,
        MatRef::row_major(&u, n, r),
        MatRef::row_major(ad.b, o, r).t(),
        ad.scale,
        par,
    );
    u
}

/// The gradient buffers of a backward pass: the frozen parameters' (`base`: the full layout,
/// `None` when they are frozen) and the adapters'.
struct GradSink<'g> {
    base: Option<&'g mut [f32]>,
    lora: Option<&'g mut [f32]>,
    /// Where a frozen norm's scale gradient goes (discarded).
    scratch: Vec<f32>,
}

impl GradSink<'_> {
    /// The gradient of the tensor at `r` (of a frozen one when `base` is `None`: scratch space).
    fn part(&mut self, r: Range<usize>) -> &mut [f32] {
        match &mut self.base {
            Some(g) => &mut g[r],
            None => {
                self.scratch.clear();
                self.scratch.resize(r.len(), 0.0);
                &mut self.scratch
            }
        }
    }
}

/// Backward of [`linear_forward`] (`u` its result): dinp (N, I) is overwritten when asked for;
/// with base gradients dW += doutᵀ·inp and dbias += Σ dout at `wr` and `br`; with an adapter
/// (and adapter gradients) dB += s·doutᵀ·u, dA += s·(dout·B)ᵀ·inp and dinp += s·(dout·B)·A.
#[allow(clippy::too_many_arguments)]
fn linear_backward(
    mut dinp: Option<&mut [f32]>,
    g: &mut GradSink<'_>,
    wr: Range<usize>,
    br: Option<Range<usize>>,
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    i: usize,
    ad: Option<Adapted<'_>>,
    u: &[f32],
) {
    let n = inp.len() / i;
    let o = w.len() / i;
    let par = Parallelism::current();
    if let Some(base) = g.base.as_deref_mut() {
        let mut tmp = Vec::new();
        let d = match dinp.as_deref_mut() {
            Some(d) => d,
            None => {
                tmp.resize(n * i, 0.0);
                &mut tmp[..]
            }
        };
        match br {
            Some(br) => {
                let (gw, gb) = two_mut(base, wr, br);
                matmul::backward(d, gw, Some(gb), dout, inp, w, i);
            }
            None => matmul::backward(d, &mut base[wr], None, dout, inp, w, i),
        }
    } else if let Some(d) = dinp.as_deref_mut() {
        // forward: out = inp · W0ᵀ  ⇒  dinp = dout · W0 (W0 frozen: no dW0)
        mm(
            &mut MatMut::row_major(d, n, i),
            0.0,
            MatRef::row_major(dout, n, o),
            MatRef::row_major(w, o, i),
            1.0,
            par,
        );
    }
    let (Some(ad), Some(lg)) = (ad, g.lora.as_deref_mut()) else {
        return;
    };
    let r = ad.rank();
    let mut v = vec![0.0f32; n * r];
    // forward: out += s · u · Bᵀ  ⇒  v (N, R) = dout (N, O) · B (O, R) is ∂L/∂u / s
    mm(
        &mut MatMut::row_major(&mut v, n, r),
        0.0,
        MatRef::row_major(dout, n, o),
        MatRef::row_major(ad.b, o, r),
        1.0,
        par,
    );
    let (ga, gb) = two_mut(lg, ad.ad.a.clone(), ad.ad.b.clone());
    // forward: out += s · u · Bᵀ  ⇒  dB (O, R) += s · doutᵀ (O, N) · u (N, R)
    mm(
        &mut MatMut::row_major(gb, o, r),
        1.0,
        MatRef::row_major(dout, n, o).t(),
        MatRef::row_major(u, n, r),
        ad.scale,
        par,
    );
    // forward: u = inp · Aᵀ  ⇒  dA (R, I) += s · vᵀ (R, N) · inp (N, I)
    mm(
        &mut MatMut::row_major(ga, r, i),
        1.0,
        MatRef::row_major(&v, n, r).t(),
        MatRef::row_major(inp, n, i),
        ad.scale,
        par,
    );
    // forward: u = inp · Aᵀ  ⇒  dinp (N, I) += s · v (N, R) · A (R, I)
    if let Some(d) = dinp {
        mm(
            &mut MatMut::row_major(d, n, i),
            1.0,
            MatRef::row_major(&v, n, r),
            MatRef::row_major(ad.a, r, i),
            ad.scale,
            par,
        );
    }
}

/// Buffers of [`run`] kept between calls: a model's training steps and evaluations reuse them
/// (no fresh allocation, so no page faults, per step), and the rotary tables of the longest
/// window seen.
#[derive(Default)]
pub struct Workspace {
    saved: Vec<Saved>,
    /// The last block's output.
    x: Vec<f32>,
    xf: Vec<f32>,
    rstdf: Vec<f32>,
    logits: Vec<f32>,
    losses: Vec<f32>,
    lse: Vec<f32>,
    branch: Vec<f32>,
    dxf: Vec<f32>,
    dx: Vec<f32>,
    ddown: Vec<f32>,
    dh: Vec<f32>,
    dgate: Vec<f32>,
    dup: Vec<f32>,
    dxn2: Vec<f32>,
    tmp: Vec<f32>,
    dproj: Vec<f32>,
    dao: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    dqr: Vec<f32>,
    dkr: Vec<f32>,
    dxn1: Vec<f32>,
    rope: Option<RopeTables>,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace")
            .field("layers", &self.saved.len())
            .finish_non_exhaustive()
    }
}

/// cos and sin tables (T, D/2) of the global and the local rotary bases, for positions 0..T.
struct RopeTables {
    t: usize,
    inv: [Vec<f32>; 2],
    tables: [(Vec<f32>, Vec<f32>); 2],
}

/// `v` resized to `len`; values an earlier call left are kept (the caller overwrites them).
fn sized(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    v.resize(len, 0.0);
    v
}

/// `v` resized to `len` and zeroed (for functions that accumulate).
fn zeroed(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    v.clear();
    v.resize(len, 0.0);
    v
}

/// out = a + b, elementwise.
fn add(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

/// a += b, elementwise.
fn add_assign(a: &mut [f32], b: &[f32]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// The forward pass, and with `grads` (every parameter's, the layout's) and/or `lora_grads` (the
/// adapters' of `lora`) the backward, which adds to them. Without `grads` the base is frozen:
/// its gradients are never computed. Buffers come from `ws`; the logits are copied out only
/// when `want_logits`.
#[allow(clippy::too_many_arguments)]
fn run(
    layout: &Layout,
    params: &[f32],
    grads: Option<&mut [f32]>,
    lora: Option<LoraRef<'_>>,
    lora_grads: Option<&mut [f32]>,
    tokens: &[u32],
    targets: &[i32],
    b: usize,
    ws: &mut Workspace,
    want_logits: bool,
) -> Step {
    let cfg = &layout.cfg;
    let n = tokens.len();
    let t = n / b;
    assert!(
        n == b * t
            && targets.len() == n
            && params.len() == layout.len
            && grads.as_ref().is_none_or(|g| g.len() == layout.len)
            && lora_grads
                .as_ref()
                .is_none_or(|g| lora.is_some_and(|l| g.len() == l.params.len()))
    );
    let (c, d, hq, hk) = (cfg.dim, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads);
    // V: the vocabulary, or K for a classifier.
    let (qd, kd, f) = (cfg.q_dim(), cfg.kv_dim(), cfg.ffn_dim);
    let v = layout.classes.unwrap_or(cfg.vocab_size);
    let eps = cfg.norm_eps;
    let rope_cfg = cfg.rope.expect("the modern families use rotary positions");
    let inv = [rope_cfg.inv_freq(d, false), rope_cfg.inv_freq(d, true)];
    if !ws.rope.as_ref().is_some_and(|r| r.t >= t && r.inv == inv) {
        let tables = [rope::tables(t, &inv[0]), rope::tables(t, &inv[1])];
        ws.rope = Some(RopeTables { t, inv, tables });
    }
    let Workspace {
        saved,
        x: xlast,
        xf,
        rstdf,
        logits,
        losses,
        lse,
        branch,
        dxf,
        dx,
        ddown,
        dh,
        dgate,
        dup,
        dxn2,
        tmp,
        dproj,
        dao,
        dq,
        dk,
        dv,
        dqr,
        dkr,
        dxn1,
        rope: rope_tables,
    } = ws;
    let rt = rope_tables.as_ref().expect("made above");
    // Layer l's rotary table (local or global, positions 0..T) and attention shape (a window on
    // local layers).
    let layer_attn = |l: usize| {
        let local = cfg.is_local(l);
        let (cos, sin) = &rt.tables[usize::from(local)];
        let len = t * rt.inv[usize::from(local)].len();
        let dims = gqa::Dims {
            b,
            t,
            h: hq,
            kv: hk,
            d,
            scale: cfg.query_scale,
            window: cfg.sliding.filter(|_| local).map(|w| w.window),
        };
        (&cos[..len], &sin[..len], dims)
    };
    let p = |role, l| layout.need(params, role, l);
    let opt = |role, l| layout.get(params, role, l);
    let ad = |role, l| lora.and_then(|x| x.find(role, l));

    // Embedding × scale (an adapted embedding: row tok of E0 + s·B·A).
    let wte = p(Role::TokEmb, None);
    let emb_ad = ad(Role::TokEmb, None);
    saved.resize_with(cfg.n_layers, Saved::default);
    let x0 = match saved.first_mut() {
        Some(s) => sized(&mut s.x, n * c),
        None => sized(xlast, n * c),
    };
    for (row, &tok) in x0.chunks_exact_mut(c).zip(tokens) {
        let tok = tok as usize;
        row.copy_from_slice(&wte[tok * c..][..c]);
        if let Some(e) = emb_ad {
            let r = e.rank();
            for (k, &bk) in e.b[tok * r..][..r].iter().enumerate() {
                let coef = e.scale * bk;
                for (o, &a) in row.iter_mut().zip(&e.a[k * c..][..c]) {
                    *o += coef * a;
                }
            }
        }
        row.iter_mut().for_each(|o| *o *= cfg.embed_scale);
    }
    for l in 0..cfg.n_layers {
        let ly = Some(l);
        let (cos, sin, dims) = layer_attn(l);
        let (s, rest) = saved[l..].split_first_mut().expect("l < n_layers");
        // This block's output: the next block's input, or the last one's.
        let next_x = match rest.first_mut() {
            Some(nx) => &mut nx.x,
            None => &mut *xlast,
        };
        rmsnorm::forward(
            sized(&mut s.xn1, n * c),
            sized(&mut s.rstd1, n),
            &s.x,
            p(Role::AttnNormScale, ly),
            eps,
        );
        // Without query/key norms the projections are q and k themselves (no copy).
        let (qdst, kdst) = if cfg.qk_norm {
            (&mut s.qraw, &mut s.kraw)
        } else {
            (&mut s.q, &mut s.k)
        };
        s.u[0] = linear_forward(
            sized(qdst, n * qd),
            &s.xn1,
            p(Role::Q, ly),
            opt(Role::QBias, ly),
            c,
            ad(Role::Q, ly),
        );
        s.u[1] = linear_forward(
            sized(kdst, n * kd),
            &s.xn1,
            p(Role::K, ly),
            opt(Role::KBias, ly),
            c,
            ad(Role::K, ly),
        );
        s.u[2] = linear_forward(
            sized(&mut s.v, n * kd),
            &s.xn1,
            p(Role::V, ly),
            opt(Role::VBias, ly),
            c,
            ad(Role::V, ly),
        );
        if cfg.qk_norm {
            head_norm(
                sized(&mut s.q, n * qd),
                &mut s.qrstd,
                &s.qraw,
                p(Role::QNorm, ly),
                eps,
            );
            head_norm(
                sized(&mut s.k, n * kd),
                &mut s.krstd,
                &s.kraw,
                p(Role::KNorm, ly),
                eps,
            );
        }
        rope::forward(&mut s.q, t, hq, cos, sin);
        rope::forward(&mut s.k, t, hk, cos, sin);
        gqa::forward(
            sized(&mut s.ao, n * qd),
            sized(&mut s.att, b * hq * t * t),
            &s.q,
            &s.k,
            &s.v,
            dims,
        );
        s.u[3] = linear_forward(
            sized(&mut s.proj, n * c),
            &s.ao,
            p(Role::AttnOut, ly),
            None,
            qd,
            ad(Role::AttnOut, ly),
        );
        let br: &[f32] = if cfg.post_norms {
            let out = sized(branch, n * c);
            rmsnorm::forward(
                out,
                sized(&mut s.prstd1, n),
                &s.proj,
                p(Role::AttnPostNorm, ly),
                eps,
            );
            out
        } else {
            &s.proj
        };
        add(sized(&mut s.xm, n * c), &s.x, br);
        rmsnorm::forward(
            sized(&mut s.xn2, n * c),
            sized(&mut s.rstd2, n),
            &s.xm,
            p(Role::MlpNormScale, ly),
            eps,
        );
        s.u[4] = linear_forward(
            sized(&mut s.gate, n * f),
            &s.xn2,
            p(Role::MlpGate, ly),
            None,
            c,
            ad(Role::MlpGate, ly),
        );
        s.u[5] = linear_forward(
            sized(&mut s.up, n * f),
            &s.xn2,
            p(Role::MlpUp, ly),
            None,
            c,
            ad(Role::MlpUp, ly),
        );
        glu::forward(sized(&mut s.h, n * f), &s.gate, &s.up, gate_of(cfg));
        s.u[6] = linear_forward(
            sized(&mut s.down, n * c),
            &s.h,
            p(Role::MlpDown, ly),
            None,
            f,
            ad(Role::MlpDown, ly),
        );
        let br: &[f32] = if cfg.post_norms {
            let out = sized(branch, n * c);
            rmsnorm::forward(
                out,
                sized(&mut s.prstd2, n),
                &s.down,
                p(Role::MlpPostNorm, ly),
                eps,
            );
            out
        } else {
            &s.down
        };
        add(sized(next_x, n * c), &s.xm, br);
    }
    let x: &[f32] = xlast;
    rmsnorm::forward(
        sized(xf, n * c),
        sized(rstdf, n),
        x,
        p(Role::FinalNormScale, None),
        eps,
    );
    let head_role = if layout.range(Role::Head, None).is_some() {
        Role::Head
    } else {
        Role::TokEmb
    };
    let whead = p(head_role, None);
    let head_bias = opt(Role::HeadBias, None);
    // A tied head is the embedding, with the embedding's adapter.
    let head_ad = ad(head_role, None);
    let logits = sized(logits, n * v);
    let head_u = linear_forward(logits, xf, whead, head_bias, c, head_ad);
    let out_logits = if want_logits {
        logits.to_vec()
    } else {
        Vec::new()
    };
    let (total, count) = crossentropy::forward(sized(losses, n), sized(lse, n), logits, targets);
    let loss = total / count.max(1) as f64;
    if grads.is_none() && lora_grads.is_none() {
        return Step {
            loss,
            logits: out_logits,
        };
    }

    // ---- backward ----
    // Frozen base (LoRA): no gradient of W0, the norms or the embedding; the input gradient of
    // block 0 is needed only for an adapted embedding.
    let need_dx0 = grads.is_some() || emb_ad.is_some();
    let mut g = GradSink {
        base: grads,
        lora: lora_grads.filter(|_| lora.is_some()),
        scratch: Vec::new(),
    };
    let g_of = |role, l| layout.range(role, l);
    crossentropy::backward(logits, lse, targets, 1.0 / count.max(1) as f32);
    linear_backward(
        Some(sized(dxf, n * c)),
        &mut g,
        g_of(head_role, None).expect("head"),
        g_of(Role::HeadBias, None),
        logits,
        xf,
        whead,
        c,
        head_ad,
        &head_u,
    );
    // dx: the gradient of the residual stream, accumulated in place through the blocks.
    let dx = zeroed(dx, n * c);
    rmsnorm::backward(
        dx,
        g.part(g_of(Role::FinalNormScale, None).expect("final norm")),
        dxf,
        x,
        p(Role::FinalNormScale, None),
        rstdf,
    );
    for l in (0..cfg.n_layers).rev() {
        let ly = Some(l);
        let (cos, sin, dims) = layer_attn(l);
        let s = &saved[l];
        // x_out = xm + post2(down): dxm = dx, dbranch = dx.
        let dd: &[f32] = if cfg.post_norms {
            let out = zeroed(ddown, n * c);
            rmsnorm::backward(
                out,
                g.part(g_of(Role::MlpPostNorm, ly).expect("post norm")),
                dx,
                &s.down,
                p(Role::MlpPostNorm, ly),
                &s.prstd2,
            );
            out
        } else {
            dx
        };
        linear_backward(
            Some(sized(dh, n * f)),
            &mut g,
            g_of(Role::MlpDown, ly).expect("down"),
            None,
            dd,
            &s.h,
            p(Role::MlpDown, ly),
            f,
            ad(Role::MlpDown, ly),
            &s.u[6],
        );
        glu::backward(
            sized(dgate, n * f),
            sized(dup, n * f),
            dh,
            &s.gate,
            &s.up,
            gate_of(cfg),
        );
        linear_backward(
            Some(sized(dxn2, n * c)),
            &mut g,
            g_of(Role::MlpGate, ly).expect("gate"),
            None,
            dgate,
            &s.xn2,
            p(Role::MlpGate, ly),
            c,
            ad(Role::MlpGate, ly),
            &s.u[4],
        );
        linear_backward(
            Some(sized(tmp, n * c)),
            &mut g,
            g_of(Role::MlpUp, ly).expect("up"),
            None,
            dup,
            &s.xn2,
            p(Role::MlpUp, ly),
            c,
            ad(Role::MlpUp, ly),
            &s.u[5],
        );
        add_assign(dxn2, tmp);
        // xn2 = norm(xm): dxm = dx + the norm's backward (in place).
        rmsnorm::backward(
            dx,
            g.part(g_of(Role::MlpNormScale, ly).expect("mlp norm")),
            dxn2,
            &s.xm,
            p(Role::MlpNormScale, ly),
            &s.rstd2,
        );
        // xm = x + post1(proj).
        let dp: &[f32] = if cfg.post_norms {
            let out = zeroed(dproj, n * c);
            rmsnorm::backward(
                out,
                g.part(g_of(Role::AttnPostNorm, ly).expect("post norm")),
                dx,
                &s.proj,
                p(Role::AttnPostNorm, ly),
                &s.prstd1,
            );
            out
        } else {
            dx
        };
        linear_backward(
            Some(sized(dao, n * qd)),
            &mut g,
            g_of(Role::AttnOut, ly).expect("out"),
            None,
            dp,
            &s.ao,
            p(Role::AttnOut, ly),
            qd,
            ad(Role::AttnOut, ly),
            &s.u[3],
        );
        let (dq, dk, dv) = (zeroed(dq, n * qd), zeroed(dk, n * kd), zeroed(dv, n * kd));
        gqa::backward(dq, dk, dv, dao, &s.att, &s.q, &s.k, &s.v, dims);
        rope::backward(dq, t, hq, cos, sin);
        rope::backward(dk, t, hk, cos, sin);
        let (dq, dk): (&[f32], &[f32]) = if cfg.qk_norm {
            let (dqr, dkr) = (zeroed(dqr, n * qd), zeroed(dkr, n * kd));
            rmsnorm::backward(
                dqr,
                g.part(g_of(Role::QNorm, ly).expect("q norm")),
                dq,
                &s.qraw,
                p(Role::QNorm, ly),
                &s.qrstd,
            );
            rmsnorm::backward(
                dkr,
                g.part(g_of(Role::KNorm, ly).expect("k norm")),
                dk,
                &s.kraw,
                p(Role::KNorm, ly),
                &s.krstd,
            );
            (dqr, dkr)
        } else {
            (dq, dk)
        };
        // Block 0's input gradient only feeds the embedding's.
        let need_dx = l > 0 || need_dx0;
        let m = if need_dx { n * c } else { 0 };
        let (dxn1, tmp) = (sized(dxn1, m), sized(tmp, m));
        for (k, (role, bias, dout)) in [
            (Role::Q, Role::QBias, dq),
            (Role::K, Role::KBias, dk),
            (Role::V, Role::VBias, &dv[..]),
        ]
        .into_iter()
        .enumerate()
        {
            let target: &mut [f32] = if k == 0 { &mut *dxn1 } else { &mut *tmp };
            linear_backward(
                need_dx.then_some(target),
                &mut g,
                g_of(role, ly).expect("projection"),
                g_of(bias, ly),
                dout,
                &s.xn1,
                p(role, ly),
                c,
                ad(role, ly),
                &s.u[k],
            );
            if k > 0 {
                add_assign(dxn1, tmp);
            }
        }
        if !need_dx {
            break;
        }
        // xn1 = norm(x): dx = dxm + the norm's backward (in place).
        rmsnorm::backward(
            dx,
            g.part(g_of(Role::AttnNormScale, ly).expect("attn norm")),
            dxn1,
            &s.x,
            p(Role::AttnNormScale, ly),
            &s.rstd1,
        );
    }
    // x0 = wte[tok]·scale, wte = E0 + s·B·A with an adapted embedding.
    if need_dx0 {
        if let Some(base) = g.base.as_deref_mut() {
            let r = g_of(Role::TokEmb, None).expect("embedding");
            let dwte = &mut base[r];
            for (row, &tok) in dx.chunks_exact(c).zip(tokens) {
                for (gw, &dv) in dwte[tok as usize * c..][..c].iter_mut().zip(row) {
                    *gw += dv * cfg.embed_scale;
                }
            }
        }
        if let (Some(e), Some(lg)) = (emb_ad, g.lora.as_deref_mut()) {
            let r = e.rank();
            let (ga, gb) = two_mut(lg, e.ad.a.clone(), e.ad.b.clone());
            for (row, &tok) in dx.chunks_exact(c).zip(tokens) {
                let tok = tok as usize;
                // dE[tok] = dx·scale; dB[tok] += s·dE[tok]·Aᵀ, dA += s·B[tok]ᵀ·dE[tok].
                for k in 0..r {
                    let ak = &e.a[k * c..][..c];
                    let dot: f32 = row.iter().zip(ak).map(|(g, a)| g * a).sum();
                    gb[tok * r + k] += e.scale * cfg.embed_scale * dot;
                    let coef = e.scale * cfg.embed_scale * e.b[tok * r + k];
                    for (ga, &g) in ga[k * c..][..c].iter_mut().zip(row) {
                        *ga += coef * g;
                    }
                }
            }
        }
    }
    debug_assert!(
        targets
            .iter()
            .all(|&t| t == IGNORE_INDEX || (t as usize) < v)
    );
    Step {
        loss,
        logits: out_logits,
    }
}

/// Bytes one training step of a (B, T) batch holds at its peak: parameters and gradients (f32),
/// the activations every layer saves for the backward (N·(6C + 3Q + 3K + 3F) values and the
/// B·H·T² attention weights), and the logits with their copy and gradient (3·N·V). The
/// optimizer's state and any copy of the weights come on top.
pub fn memory_estimate(cfg: &ModelConfig, b: usize, t: usize) -> u64 {
    let p = Layout::new(cfg).len as u64;
    let (n, c) = ((b * t) as u64, cfg.dim as u64);
    let (q, k, f) = (cfg.q_dim() as u64, cfg.kv_dim() as u64, cfg.ffn_dim as u64);
    let per_layer = n * (6 * c + 3 * q + 3 * k + 3 * f) + (b * cfg.n_heads * t * t) as u64;
    let floats = 2 * p + cfg.n_layers as u64 * per_layer + 3 * n * cfg.vocab_size as u64;
    floats.saturating_mul(4)
}

/// w (O, I) += s · B (O, R) · A (R, I) for `ad` of `lora`.
fn add_lora_product(w: &mut [f32], ad: &LoraAdapter, lora: &Lora) {
    let (o, i) = (ad.out_features, ad.in_features);
    let r = ad.a.len() / i;
    mm(
        &mut MatMut::row_major(w, o, i),
        1.0,
        MatRef::row_major(&lora.params[ad.b.clone()], o, r),
        MatRef::row_major(&lora.params[ad.a.clone()], r, i),
        lora.scale,
        Parallelism::current(),
    );
}

/// A model of one of the modern families being trained: its layout, flat parameters and
/// gradients (the same layout), or LoRA adapters run directly on its frozen parameters
/// ([`FamilyModel::attach_lora`]; then no full-size gradient buffer exists).
#[derive(Debug)]
pub struct FamilyModel {
    /// Where each tensor lives.
    pub layout: Layout,
    params: Vec<f32>,
    grads: Vec<f32>,
    lora: Option<Lora>,
    /// The buffers of [`FamilyModel::train_batch`] and [`FamilyModel::loss`], kept between calls.
    ws: Box<Workspace>,
}

/// Whether a tensor of this role is a norm scale (stored as the runtime uses it: 1 + w for
/// Gemma, w elsewhere; 1 either way at initialisation).
fn is_norm_scale(role: Role) -> bool {
    matches!(
        role,
        Role::AttnNormScale
            | Role::MlpNormScale
            | Role::FinalNormScale
            | Role::QNorm
            | Role::KNorm
            | Role::AttnPostNorm
            | Role::MlpPostNorm
    )
}

impl FamilyModel {
    /// A fresh model of `cfg` initialised as Hugging Face transformers initialises these
    /// families: every matrix (embedding and projections) N(0, 0.02²) (`initializer_range`),
    /// biases 0, norm scales 1 (Gemma's w = 0). Reproducible from `seed`.
    pub fn new(cfg: &ModelConfig, seed: u64) -> Result<FamilyModel, String> {
        FamilyModel::with_embedding_std(cfg, seed, 0.02)
    }

    /// [`FamilyModel::new`] with the token embedding drawn from N(0, `embed_std`²) (every other
    /// matrix N(0, 0.02²), an untied head included). Trained from scratch on little data, a
    /// Llama-style model whose embedding starts at 0.02 stays at the unigram loss for dozens of
    /// steps; PyTorch's `nn.Embedding` default (1, the book's GPT) lets it learn (README).
    pub fn with_embedding_std(
        cfg: &ModelConfig,
        seed: u64,
        embed_std: f32,
    ) -> Result<FamilyModel, String> {
        if !(embed_std.is_finite() && embed_std > 0.0) {
            return Err(format!("embedding std {embed_std}: must be positive"));
        }
        if cfg.rope.is_none() {
            return Err(format!("{:?} is not a rotary family", cfg.arch));
        }
        let layout = Layout::new(cfg);
        let mut params = vec![0.0f32; layout.len];
        for (i, t) in arch::tensors(cfg, None).iter().enumerate() {
            let r = layout
                .range(t.desc.role, t.layer)
                .expect("the layout holds every tensor");
            let dst = &mut params[r];
            if t.shape.len() == 2 {
                let key = crate::data::mix64(seed ^ crate::data::mix64(i as u64 + 1));
                let std = if t.desc.role == Role::TokEmb {
                    embed_std
                } else {
                    0.02
                };
                crate::model::fill_normal(dst, std, key);
            } else if is_norm_scale(t.desc.role) {
                dst.fill(1.0);
            }
        }
        Ok(FamilyModel {
            layout,
            params,
            grads: Vec::new(),
            lora: None,
            ws: Box::default(),
        })
    }

    /// A model of `cfg` holding `params` (in the layout's order).
    pub fn from_params(cfg: &ModelConfig, params: Vec<f32>) -> Result<FamilyModel, String> {
        let layout = Layout::new(cfg);
        if params.len() != layout.len {
            return Err(format!(
                "{} parameters given, the configuration has {}",
                params.len(),
                layout.len
            ));
        }
        Ok(FamilyModel {
            layout,
            params,
            grads: Vec::new(),
            lora: None,
            ws: Box::default(),
        })
    }

    /// A classifier of K = `classes` labels on this model (the book's chapter 6 on a modern
    /// family): every tensor kept but the language-model head, a (K, C) head and a (K) bias
    /// added with PyTorch's `nn.Linear` initialisation U(±1/√C), reproducible from `seed`.
    pub fn into_classifier(self, classes: usize, seed: u64) -> Result<FamilyModel, String> {
        if !(2..=1 << 20).contains(&classes) {
            return Err(format!("{classes} classes: a classifier needs 2 to 2^20"));
        }
        let layout = Layout::with_classes(&self.layout.cfg, Some(classes));
        let mut params = vec![0.0f32; layout.len];
        let bound = 1.0 / (self.layout.cfg.dim as f32).sqrt();
        for (name, r) in &layout.tensors {
            let role = arch::tensors(&layout.cfg, Some(classes))
                .into_iter()
                .find(|t| &t.name == name)
                .map(|t| t.desc.role);
            if matches!(role, Some(Role::Head | Role::HeadBias)) {
                let key =
                    crate::data::mix64(seed ^ crate::data::mix64(0x5EED_C1A5 ^ r.len() as u64));
                crate::model::fill_uniform(&mut params[r.clone()], bound, key);
            } else if let Some((_, src)) = self.layout.tensors.iter().find(|(n, _)| n == name) {
                params[r.clone()].copy_from_slice(&self.params[src.clone()]);
            }
        }
        Ok(FamilyModel {
            layout,
            params,
            grads: Vec::new(),
            lora: None,
            ws: Box::default(),
        })
    }

    /// A classifier of K = `classes` labels holding `params` (in its layout's order).
    pub fn classifier_from_params(
        cfg: &ModelConfig,
        classes: usize,
        params: Vec<f32>,
    ) -> Result<FamilyModel, String> {
        let layout = Layout::with_classes(cfg, Some(classes));
        if params.len() != layout.len {
            return Err(format!(
                "{} parameters given, the classifier has {}",
                params.len(),
                layout.len
            ));
        }
        Ok(FamilyModel {
            layout,
            params,
            grads: Vec::new(),
            lora: None,
            ws: Box::default(),
        })
    }

    /// K for a classifier, `None` for a language model.
    pub fn classes(&self) -> Option<usize> {
        self.layout.classes
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.layout.cfg
    }

    /// The flat parameters.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// The flat gradients of what trains (allocated on first use): every parameter's, or with
    /// LoRA attached the adapters' ([`Lora::grads`]).
    pub fn grads_mut(&mut self) -> &mut [f32] {
        if let Some(l) = &mut self.lora {
            return &mut l.grads;
        }
        if self.grads.len() != self.params.len() {
            self.grads = vec![0.0; self.params.len()];
        }
        &mut self.grads
    }

    /// The flat parameters, writable (with LoRA attached: the frozen W0).
    pub fn params_mut(&mut self) -> &mut [f32] {
        &mut self.params
    }

    /// Every tensor's role, block, name, shape and place in the flat buffer, in buffer order.
    pub fn tensor_infos(&self) -> Vec<crate::model::TensorInfo> {
        arch::tensors(&self.layout.cfg, self.layout.classes)
            .into_iter()
            .zip(&self.layout.tensors)
            .map(|(t, (_, r))| crate::model::TensorInfo {
                role: t.desc.role,
                layer: t.layer,
                shape: t.shape.clone(),
                offset: r.start,
                len: r.len(),
                name: t.name,
            })
            .collect()
    }

    /// What the optimizer steps and its gradients: every parameter, or with LoRA attached the
    /// adapters ([`Lora::params`], [`Lora::grads`]).
    pub fn params_and_grads(&mut self) -> (&mut [f32], &[f32]) {
        if let Some(l) = &mut self.lora {
            return (&mut l.params, &l.grads);
        }
        if self.grads.len() != self.params.len() {
            self.grads = vec![0.0; self.params.len()];
        }
        (&mut self.params, &self.grads)
    }

    /// Frees the buffers kept between [`FamilyModel::train_batch`] and [`FamilyModel::loss`]
    /// calls (the next call allocates them again): for a pause in training that needs the
    /// memory, such as an epoch's sample, which makes an f32 copy of the weights.
    pub fn release_buffers(&mut self) {
        *self.ws = Workspace::default();
    }

    /// Forward and backward of a (B, T) batch: the mean loss; gradients added to the model's
    /// (with LoRA attached: to the adapters' only).
    pub fn train_batch(&mut self, tokens: &[u32], targets: &[i32], b: usize) -> f64 {
        if let Some(l) = &mut self.lora {
            // Fields apart: the adapters are read while their gradients are written.
            let view = LoraRef {
                scale: l.scale,
                adapters: &l.adapters,
                params: &l.params,
            };
            return run(
                &self.layout,
                &self.params,
                None,
                Some(view),
                Some(&mut l.grads),
                tokens,
                targets,
                b,
                &mut self.ws,
                false,
            )
            .loss;
        }
        self.grads_mut();
        run(
            &self.layout,
            &self.params,
            Some(&mut self.grads),
            None,
            None,
            tokens,
            targets,
            b,
            &mut self.ws,
            false,
        )
        .loss
    }

    /// The loss and logits of a (B, T) batch, forward only (with any attached adapters).
    pub fn forward(&self, tokens: &[u32], targets: &[i32], b: usize) -> Step {
        let view = self.lora.as_ref().map(Lora::view);
        let mut ws = Workspace::default();
        run(
            &self.layout,
            &self.params,
            None,
            view,
            None,
            tokens,
            targets,
            b,
            &mut ws,
            true,
        )
    }

    /// The mean loss of a (B, T) batch, gradients untouched (forward only, in the model's
    /// buffers: no logits copied out).
    pub fn loss(&mut self, tokens: &[u32], targets: &[i32], b: usize) -> f64 {
        let view = self.lora.as_ref().map(Lora::view);
        run(
            &self.layout,
            &self.params,
            None,
            view,
            None,
            tokens,
            targets,
            b,
            &mut self.ws,
            false,
        )
        .loss
    }

    /// Runs `lora`'s adapters directly from now on: the parameters stay W0 (frozen), training
    /// batches compute only the adapters' gradients, and no full-size gradient buffer is kept
    /// (one allocated before is freed). Refused (with the reason) when an adapter names a matrix
    /// the model lacks or its shapes or ranges do not fit.
    pub fn attach_lora(&mut self, lora: Lora) -> Result<(), String> {
        self.check_lora(&lora)?;
        self.grads = Vec::new();
        self.lora = Some(lora);
        Ok(())
    }

    /// Why [`FamilyModel::attach_lora`] would refuse `lora`, if it would.
    pub fn check_lora(&self, lora: &Lora) -> Result<(), String> {
        if lora.grads.len() != lora.params.len() {
            return Err("LoRA gradients and parameters differ in length".into());
        }
        let infos = self.tensor_infos();
        for ad in &lora.adapters {
            let (o, i) = (ad.out_features, ad.in_features);
            let fits = infos
                .iter()
                .any(|t| t.role == ad.role && t.layer == ad.layer && t.shape[..] == [o, i]);
            let r = ad.a.len().checked_div(i).unwrap_or(0);
            if !fits
                || r == 0
                || ad.a.len() != r * i
                || ad.b.len() != o * r
                || ad.a.end > ad.b.start
                || ad.b.end > lora.params.len()
            {
                return Err(format!(
                    "LoRA adapter of {:?} (block {:?}, {o}×{i}) does not fit this model",
                    ad.role, ad.layer
                ));
            }
        }
        Ok(())
    }

    /// The attached LoRA adapters.
    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    /// The attached LoRA adapters, writable.
    pub fn lora_mut(&mut self) -> Option<&mut Lora> {
        self.lora.as_mut()
    }

    /// Writes W = W0 + s·B·A into the parameters for every attached adapter and detaches them
    /// (the model is then the merged one, what export writes); returns them.
    pub fn merge_lora(&mut self) -> Option<Lora> {
        let lora = self.lora.take()?;
        for ad in &lora.adapters {
            let r = self.weight_range(ad);
            add_lora_product(&mut self.params[r], ad, &lora);
        }
        Some(lora)
    }

    /// The parameters with any attached adapters merged (a copy then; a borrow without).
    pub fn merged_params(&self) -> std::borrow::Cow<'_, [f32]> {
        let Some(lora) = &self.lora else {
            return std::borrow::Cow::Borrowed(&self.params);
        };
        let mut p = self.params.clone();
        for ad in &lora.adapters {
            let r = self.weight_range(ad);
            add_lora_product(&mut p[r], ad, lora);
        }
        std::borrow::Cow::Owned(p)
    }

    /// The values of the tensor at `range` of the parameters, with its adapter merged if it has
    /// one (a copy of that tensor only).
    pub fn merged_tensor(&self, range: Range<usize>) -> std::borrow::Cow<'_, [f32]> {
        let src = &self.params[range.clone()];
        let ad = self.lora.as_ref().and_then(|l| {
            l.adapters
                .iter()
                .find(|ad| self.weight_range(ad) == range)
                .map(|ad| (ad, l))
        });
        match ad {
            None => std::borrow::Cow::Borrowed(src),
            Some((ad, lora)) => {
                let mut w = src.to_vec();
                add_lora_product(&mut w, ad, lora);
                std::borrow::Cow::Owned(w)
            }
        }
    }

    fn weight_range(&self, ad: &LoraAdapter) -> Range<usize> {
        self.layout
            .range(ad.role, ad.layer)
            .expect("attach_lora checked every adapter's matrix")
    }

    /// Every tensor's ember name, shape and values, in file order (with LoRA attached: W0;
    /// [`FamilyModel::merged_tensor`] gives the merged values).
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        arch::tensors(&self.layout.cfg, self.layout.classes)
            .into_iter()
            .zip(&self.layout.tensors)
            .map(|(t, (name, r))| (name.clone(), t.shape.clone(), &self.params[r.clone()]))
            .collect()
    }
}

#[cfg(test)]
mod model_tests {
    use super::*;

    fn tiny() -> ModelConfig {
        let mut c = ModelConfig::preset("smollm2-135m").unwrap();
        c.vocab_size = 64;
        c.context_length = 16;
        c.dim = 16;
        c.n_layers = 2;
        c.n_heads = 4;
        c.n_kv_heads = 2;
        c.head_dim = 4;
        c.ffn_dim = 24;
        c
    }

    #[test]
    fn fresh_models_start_at_chance_and_learn() {
        let cfg = tiny();
        let mut m = FamilyModel::new(&cfg, 7).unwrap();
        let x: Vec<u32> = (0..32).map(|i| (i * 7 % 64) as u32).collect();
        let y: Vec<i32> = x.iter().map(|&t| ((t + 1) % 64) as i32).collect();
        let l0 = m.loss(&x, &y, 2);
        // The forward-only loss is the training pass's, bit for bit.
        let mut g = vec![0.0; m.layout.len];
        let fb = forward_backward(&m.layout, m.params(), &mut g, &x, &y, 2).loss;
        assert_eq!(l0.to_bits(), fb.to_bits());
        // N(0, 0.02) weights: logits near 0, so the loss is near ln V.
        assert!((l0 - (64f64).ln()).abs() < 0.05, "{l0}");
        let mut opt = crate::adamw::AdamW::new(
            crate::adamw::AdamWConfig::default(),
            m.layout.decay_mask(DecayPolicy::MatricesOnly),
        );
        for _ in 0..30 {
            m.grads_mut().fill(0.0);
            m.train_batch(&x, &y, 2);
            let (p, g) = m.params_and_grads();
            opt.step(p, g, 1e-2).unwrap();
        }
        let l1 = m.loss(&x, &y, 2);
        assert!(l1 < 0.5 * l0, "{l0} -> {l1}");
        // Seeded: the same seed, the same weights; another, others.
        assert_eq!(
            FamilyModel::new(&cfg, 7).unwrap().params(),
            FamilyModel::new(&cfg, 7).unwrap().params()
        );
        assert_ne!(
            FamilyModel::new(&cfg, 8).unwrap().params(),
            FamilyModel::new(&cfg, 7).unwrap().params()
        );
    }

    /// The classifier's head and bias, and a weight below them, have the gradients that central
    /// differences of the loss give (f64 sums over an f32 model: steps of 1e-2, 2% tolerance).
    #[test]
    fn classifier_gradients_match_finite_differences() {
        let cfg = tiny();
        let base = FamilyModel::new(&cfg, 3).unwrap();
        let lm_params = base.params().to_vec();
        let mut m = base.into_classifier(3, 5).unwrap();
        assert_eq!(m.classes(), Some(3));
        // Everything but the head is the language model's, in the same places.
        let emb = m.layout.range(Role::TokEmb, None).unwrap();
        assert_eq!(&m.params()[emb.clone()], &lm_params[emb]);
        let (b, t) = (2, 5);
        let x: Vec<u32> = (0..b * t).map(|i| (i * 11 % 64) as u32).collect();
        let mut y = vec![IGNORE_INDEX; b * t];
        (y[t - 1], y[2 * t - 1]) = (2, 0);
        m.grads_mut().fill(0.0);
        m.train_batch(&x, &y, b);
        let grads = m.grads_mut().to_vec();
        let head = m.layout.range(Role::Head, None).unwrap();
        let bias = m.layout.range(Role::HeadBias, None).unwrap();
        let up = m.layout.range(Role::MlpUp, Some(0)).unwrap();
        assert_eq!((head.len(), bias.len()), (3 * cfg.dim, 3));
        for i in [
            head.start,
            head.start + 17,
            bias.start,
            bias.start + 2,
            up.start + 5,
        ] {
            let h = 1e-2f32;
            let at = |m: &mut FamilyModel, d: f32| {
                let keep = m.params()[i];
                m.params_mut()[i] = keep + d;
                let l = m.loss(&x, &y, b);
                m.params_mut()[i] = keep;
                l
            };
            let fd = (at(&mut m, h) - at(&mut m, -h)) / (2.0 * h as f64);
            let g = grads[i] as f64;
            assert!(
                (fd - g).abs() <= 0.02 * fd.abs().max(g.abs()) + 1e-5,
                "parameter {i}: finite differences {fd}, backward {g}"
            );
        }
    }

    /// The buffers a model keeps between calls never leak into a later call: batches of other
    /// shapes in between (and a forward-only loss) leave the loss and every gradient bit for
    /// bit those of a pass with fresh buffers, for each family's layer mix (query/key norms,
    /// post-norms, sliding windows, biases).
    #[test]
    fn kept_buffers_give_the_results_of_fresh_ones() {
        for preset in ["smollm2-135m", "qwen2.5-0.5b", "qwen3-0.6b", "gemma3-270m"] {
            let mut cfg = ModelConfig::preset(preset).unwrap();
            (cfg.vocab_size, cfg.context_length, cfg.dim, cfg.n_layers) = (64, 16, 16, 3);
            (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim) = (4, 2, 4, 24);
            if let Some(s) = &mut cfg.sliding {
                (s.window, s.every) = (3, 2);
            }
            let mut m = FamilyModel::new(&cfg, 11).unwrap();
            let batch = |b: usize, t: usize, salt: usize| {
                let x: Vec<u32> = (0..b * t).map(|i| ((i * 7 + salt) % 64) as u32).collect();
                let y: Vec<i32> = x.iter().map(|&v| ((v * 5 + 1) % 64) as i32).collect();
                (x, y)
            };
            for (b, t, salt) in [(2, 9, 0), (1, 4, 3), (3, 6, 5), (2, 9, 1)] {
                let (x, y) = batch(b, t, salt);
                m.grads_mut().fill(0.0);
                let loss = m.train_batch(&x, &y, b);
                let mut g = vec![0.0; m.layout.len];
                let fresh = forward_backward(&m.layout, m.params(), &mut g, &x, &y, b);
                assert_eq!(loss.to_bits(), fresh.loss.to_bits(), "{preset} loss");
                assert!(m.grads_mut() == &g[..], "{preset} gradients ({b}, {t})");
                assert!(g.iter().any(|&v| v != 0.0));
                let (x2, y2) = batch(1, t + 2, salt + 1);
                let want = forward_loss(&m.layout, m.params(), &x2, &y2, 1).loss;
                assert_eq!(m.loss(&x2, &y2, 1).to_bits(), want.to_bits(), "{preset}");
                // Released buffers come back as fresh ones.
                if salt == 3 {
                    m.release_buffers();
                }
            }
        }
    }
}
