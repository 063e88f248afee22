//! A generation session: every buffer (activations, logits, sampler scratch, KV cache) is allocated
//! once in [`Session::new`]; [`Session::step`] and the decode loop of [`Session::generate`] allocate
//! nothing.
//!
//! Letters: V vocabulary, T the session's context, C embedding dim, H heads, D = C / H head dim,
//! L layers, N tokens in a prefill chunk.

use crate::error::RuntimeError;
use crate::gemm::{self, MatMut, MatRef, Parallelism};
use crate::kernels::Kernels;
use crate::model::{Layer, Mat, Model};
use crate::sampler::{Sampler, Sampling};
use emberlm_formats::config::LAYERNORM_EPS;
use half::f16;
use std::ops::ControlFlow;

/// Element type of the KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDtype {
    /// 4 bytes per element: exact.
    F32,
    /// 2 bytes per element: half the memory, a small rounding of keys and values.
    F16,
}

/// Options fixed for the life of a session.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Positions the KV cache holds; `None` means the model's context length.
    pub context: Option<usize>,
    /// KV cache element type.
    pub kv_dtype: KvDtype,
    /// Worker threads; 0 means one per available core. Ignored without the `parallel` feature.
    pub threads: usize,
    /// Prompt tokens processed per batched prefill pass.
    pub prefill_chunk: usize,
    /// Force the plain reference kernels (tests, debugging).
    pub reference_kernels: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            context: None,
            kv_dtype: KvDtype::F32,
            threads: 0,
            prefill_chunk: 64,
            reference_kernels: false,
        }
    }
}

#[derive(Debug)]
enum KvCache {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

/// Rows of a weight matrix dequantized at a time for the f16 prefill (f32 gemm on a tile).
const PREFILL_TILE_ROWS: usize = 256;

/// Activation buffers for one token (decode) or one chunk of N tokens (prefill).
#[derive(Debug)]
struct Buffers {
    x: Vec<f32>,      // (N, C) residual stream
    xn: Vec<f32>,     // (N, C) normalised input of a sublayer
    qkv: Vec<f32>,    // (N, 3C)
    att: Vec<f32>,    // (N, C) attention output before the projection
    ff: Vec<f32>,     // (N, 4C)
    out: Vec<f32>,    // (N, C) sublayer output
    scores: Vec<f32>, // (N, T) attention weights
}

impl Buffers {
    fn new(n: usize, c: usize, t: usize) -> Buffers {
        Buffers {
            x: vec![0.0; n * c],
            xn: vec![0.0; n * c],
            qkv: vec![0.0; n * 3 * c],
            att: vec![0.0; n * c],
            ff: vec![0.0; n * 4 * c],
            out: vec![0.0; n * c],
            scores: vec![0.0; n * t],
        }
    }
}

/// Timing and counts of one [`Session::generate`] call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerateStats {
    /// Prompt tokens prefilled.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Seconds spent in prefill.
    pub prefill_seconds: f64,
    /// Seconds spent generating (after prefill).
    pub decode_seconds: f64,
    /// Why generation stopped.
    pub stop: StopReason,
}

/// Why [`Session::generate`] returned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StopReason {
    /// `max_tokens` were generated.
    #[default]
    MaxTokens,
    /// The model produced the end-of-text token.
    EndOfText,
    /// The callback returned `ControlFlow::Break`.
    Callback,
}

/// Limits of a [`Session::generate`] call.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Stop (without emitting it) when this token is sampled, like the book's `eos_id`.
    pub stop_token: Option<u32>,
    /// When the context is full, drop the oldest half of the tokens and rebuild the cache instead
    /// of failing with [`RuntimeError::ContextFull`].
    pub slide: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            stop_token: None,
            slide: false,
        }
    }
}

/// A conversation with a model: its KV cache, its buffers and its sampler.
pub struct Session<'m, 'a> {
    model: &'m Model<'a>,
    kernels: Kernels,
    #[cfg(feature = "parallel")]
    pool: Option<rayon::ThreadPool>,
    context: usize,
    prefill_chunk: usize,
    /// Tokens whose keys and values are in the cache, oldest first, (at most T).
    tokens: Vec<u32>,
    k_cache: KvCache, // (L, T, C)
    v_cache: KvCache, // (L, T, C)
    one: Buffers,     // N = 1
    chunk: Buffers,   // N = prefill_chunk
    tile: Vec<f32>,   // (PREFILL_TILE_ROWS, 4C) dequantized weights
    logits: Vec<f32>, // (V) or (K)
    sampler: Sampler,
}

impl std::fmt::Debug for Session<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("kernels", &self.kernels.name())
            .field("context", &self.context)
            .field("position", &self.tokens.len())
            .finish()
    }
}

impl<'m, 'a> Session<'m, 'a> {
    /// Allocates every buffer for `model` once.
    pub fn new(
        model: &'m Model<'a>,
        options: &SessionOptions,
    ) -> Result<Session<'m, 'a>, RuntimeError> {
        let cfg = model.config();
        let context = options.context.unwrap_or(cfg.context_length);
        if context == 0 || context > cfg.context_length {
            return Err(RuntimeError::BadOption {
                option: "context",
                reason: format!(
                    "{context} must be in 1..={} (the model's context length)",
                    cfg.context_length
                ),
            });
        }
        if options.prefill_chunk == 0 || options.prefill_chunk > 4096 {
            return Err(RuntimeError::BadOption {
                option: "prefill-chunk",
                reason: format!("{} must be in 1..=4096", options.prefill_chunk),
            });
        }
        let threads = if options.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            options.threads
        };
        if threads > 1024 {
            return Err(RuntimeError::BadOption {
                option: "threads",
                reason: format!("{threads} must be at most 1024"),
            });
        }
        #[cfg(feature = "parallel")]
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .map_err(|e| RuntimeError::BadOption {
                        option: "threads",
                        reason: e.to_string(),
                    })?,
            )
        } else {
            None
        };
        #[cfg(not(feature = "parallel"))]
        let threads = 1;
        let kernels = if options.reference_kernels {
            Kernels::reference()
        } else {
            Kernels::detect()
        }
        .with_threads(threads);
        let (c, l) = (cfg.dim, cfg.n_layers);
        let cache_len = l * context * c;
        let kv = || match options.kv_dtype {
            KvDtype::F32 => KvCache::F32(vec![0.0; cache_len]),
            KvDtype::F16 => KvCache::F16(vec![f16::ZERO; cache_len]),
        };
        let chunk = options.prefill_chunk.min(context);
        Ok(Session {
            model,
            kernels,
            #[cfg(feature = "parallel")]
            pool,
            context,
            prefill_chunk: chunk,
            tokens: Vec::with_capacity(context),
            k_cache: kv(),
            v_cache: kv(),
            one: Buffers::new(1, c, context),
            chunk: Buffers::new(chunk, c, context),
            tile: vec![0.0; PREFILL_TILE_ROWS * 4 * c],
            logits: vec![0.0; model.n_outputs()],
            sampler: Sampler::new(model.n_outputs(), 0),
        })
    }

    /// The kernels in use (`avx2`, `neon`, `reference`).
    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// Tokens in the cache.
    pub fn position(&self) -> usize {
        self.tokens.len()
    }

    /// The session's context length T.
    pub fn context(&self) -> usize {
        self.context
    }

    /// The tokens in the cache.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Forgets every token (the cache is overwritten as new tokens come).
    pub fn reset(&mut self) {
        self.tokens.clear();
    }

    /// The logits of the last processed position (V), or (K) for a classifier.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<(), RuntimeError> {
        let v = self.model.config().vocab_size;
        match tokens.iter().find(|&&t| t as usize >= v) {
            Some(&id) => Err(RuntimeError::BadToken { id, vocab_size: v }),
            None => Ok(()),
        }
    }

    /// Feeds one token and returns the next-token logits (V). Allocates nothing.
    pub fn step(&mut self, token: u32) -> Result<&[f32], RuntimeError> {
        self.check_tokens(&[token])?;
        if self.tokens.len() >= self.context {
            return Err(RuntimeError::ContextFull {
                context: self.context,
            });
        }
        self.run(|s| s.forward_one(token));
        Ok(&self.logits)
    }

    /// Feeds `tokens` in batched chunks and returns the logits after the last one. Logits are
    /// computed for the last position only.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], RuntimeError> {
        if tokens.is_empty() {
            return Err(RuntimeError::EmptyPrompt);
        }
        self.check_tokens(tokens)?;
        if self.tokens.len() + tokens.len() > self.context {
            return Err(RuntimeError::ContextFull {
                context: self.context,
            });
        }
        self.run(|s| {
            for chunk in tokens.chunks(s.prefill_chunk) {
                if chunk.len() == 1 {
                    s.forward_one(chunk[0]);
                } else {
                    s.forward_chunk(chunk);
                }
            }
        });
        Ok(&self.logits)
    }

    /// Prefills `prompt`, then samples up to `opts.max_tokens` tokens, calling `on_token` with each
    /// (the callback may stop early). The whole call runs inside the session's thread pool, so the
    /// decode loop allocates nothing, with any number of threads.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        sampling: &Sampling,
        opts: &GenerateOptions,
        on_token: impl FnMut(u32) -> ControlFlow<()> + Send,
    ) -> Result<GenerateStats, RuntimeError> {
        self.in_pool(|s| s.generate_inner(prompt, sampling, opts, on_token))
    }

    fn generate_inner(
        &mut self,
        prompt: &[u32],
        sampling: &Sampling,
        opts: &GenerateOptions,
        mut on_token: impl FnMut(u32) -> ControlFlow<()>,
    ) -> Result<GenerateStats, RuntimeError> {
        sampling.validate(self.model.n_outputs())?;
        if prompt.is_empty() {
            return Err(RuntimeError::EmptyPrompt);
        }
        self.check_tokens(prompt)?;
        let mut stats = GenerateStats {
            prompt_tokens: prompt.len(),
            ..GenerateStats::default()
        };
        let t0 = std::time::Instant::now();
        if self.tokens.len() + prompt.len() > self.context {
            if !opts.slide || prompt.len() > self.context {
                return Err(RuntimeError::ContextFull {
                    context: self.context,
                });
            }
            self.tokens.clear(); // the prompt alone fits: start over with it
        }
        self.prefill(prompt)?;
        stats.prefill_seconds = t0.elapsed().as_secs_f64();
        self.sampler.reseed(sampling.seed);
        let t1 = std::time::Instant::now();
        for _ in 0..opts.max_tokens {
            let next = self.sampler.sample(&self.logits, &self.tokens, sampling);
            if Some(next) == opts.stop_token {
                stats.stop = StopReason::EndOfText;
                break;
            }
            stats.generated_tokens += 1;
            if on_token(next).is_break() {
                stats.stop = StopReason::Callback;
                break;
            }
            if self.tokens.len() >= self.context {
                if !opts.slide {
                    return Err(RuntimeError::ContextFull {
                        context: self.context,
                    });
                }
                self.slide()?;
            }
            self.step(next)?;
        }
        stats.decode_seconds = t1.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// Drops the oldest half of the cached tokens and rebuilds the cache from the rest.
    fn slide(&mut self) -> Result<(), RuntimeError> {
        let keep = self.context / 2;
        let start = self.tokens.len() - keep;
        // Shift in place (no allocation), then recompute keys and values for the new positions.
        self.tokens.copy_within(start.., 0);
        self.tokens.truncate(keep);
        if keep == 0 {
            return Ok(());
        }
        let kept = std::mem::take(&mut self.tokens);
        let result = self.prefill(&kept).map(|_| ());
        if result.is_err() {
            self.tokens = kept;
        }
        result
    }

    /// Runs `f` inside the session's thread pool. [`Session::step`] and [`Session::prefill`] enter
    /// the pool on each call, and entering a rayon pool from outside occasionally allocates (its
    /// job queue grows in blocks); calls made inside `in_pool` run inline, so a decode loop written
    /// as `session.in_pool(|s| loop { s.step(t)?; … })` allocates nothing with any number of
    /// threads. Without the `parallel` feature, or with one thread, `f` simply runs.
    pub fn in_pool<R: Send>(&mut self, f: impl FnOnce(&mut Self) -> R + Send) -> R {
        #[cfg(feature = "parallel")]
        if let Some(pool) = self.pool.take() {
            let r = pool.install(|| f(self));
            self.pool = Some(pool);
            return r;
        }
        f(self)
    }

    fn run(&mut self, f: impl FnOnce(&mut Self) + Send) {
        self.in_pool(f)
    }

    /// Decode: one token at position `tokens.len()`.
    fn forward_one(&mut self, token: u32) {
        let m = self.model;
        let cfg = *m.config();
        let (c, pos) = (cfg.dim, self.tokens.len());
        let k = &self.kernels;
        let b = &mut self.one;
        embed(m, token, pos, &mut b.x, &mut b.xn);
        for l in 0..cfg.n_layers {
            let w = m.layer(l);
            k.layernorm(&b.x, w.norm1.0, w.norm1.1, &mut b.xn, LAYERNORM_EPS);
            w.qkv_w.matvec(k, &b.xn, &mut b.qkv);
            if let Some(bias) = w.qkv_b {
                k.add(&mut b.qkv, bias);
            }
            store_kv(
                &mut self.k_cache,
                &mut self.v_cache,
                &b.qkv,
                l,
                pos,
                self.context,
                c,
            );
            attend(
                k,
                &b.qkv[..c],
                &self.k_cache,
                &self.v_cache,
                l,
                pos,
                self.context,
                cfg.n_heads,
                &mut b.scores,
                &mut b.att,
            );
            w.proj_w.matvec(k, &b.att, &mut b.out);
            k.add(&mut b.out, w.proj_b);
            k.add(&mut b.x, &b.out);
            k.layernorm(&b.x, w.norm2.0, w.norm2.1, &mut b.xn, LAYERNORM_EPS);
            w.fc_w.matvec(k, &b.xn, &mut b.ff);
            k.add(&mut b.ff, w.fc_b);
            k.gelu_tanh(&mut b.ff);
            w.fcp_w.matvec(k, &b.ff, &mut b.out);
            k.add(&mut b.out, w.fcp_b);
            k.add(&mut b.x, &b.out);
        }
        let (scale, shift) = m.final_norm();
        k.layernorm(&b.x, scale, shift, &mut b.xn, LAYERNORM_EPS);
        let (head, bias) = m.head();
        head.matvec(k, &b.xn, &mut self.logits);
        if let Some(bias) = bias {
            k.add(&mut self.logits, bias);
        }
        self.tokens.push(token);
    }

    /// Prefill: N tokens at positions `tokens.len()..`, batched through matrix products.
    fn forward_chunk(&mut self, chunk: &[u32]) {
        let m = self.model;
        let cfg = *m.config();
        let (c, n, pos0) = (cfg.dim, chunk.len(), self.tokens.len());
        let k = &self.kernels;
        let b = &mut self.chunk;
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
            layernorm_rows(k, &b.x[..n * c], w.norm1, &mut b.xn[..n * c], c);
            matmul(
                k,
                &w.qkv_w,
                &b.xn[..n * c],
                &mut b.qkv[..n * 3 * c],
                n,
                w.qkv_b,
                &mut self.tile,
            );
            for i in 0..n {
                let qkv = &b.qkv[i * 3 * c..(i + 1) * 3 * c];
                store_kv(
                    &mut self.k_cache,
                    &mut self.v_cache,
                    qkv,
                    l,
                    pos0 + i,
                    self.context,
                    c,
                );
            }
            for i in 0..n {
                attend(
                    k,
                    &b.qkv[i * 3 * c..i * 3 * c + c],
                    &self.k_cache,
                    &self.v_cache,
                    l,
                    pos0 + i,
                    self.context,
                    cfg.n_heads,
                    &mut b.scores[i * self.context..(i + 1) * self.context],
                    &mut b.att[i * c..(i + 1) * c],
                );
            }
            matmul(
                k,
                &w.proj_w,
                &b.att[..n * c],
                &mut b.out[..n * c],
                n,
                Some(w.proj_b),
                &mut self.tile,
            );
            k.add(&mut b.x[..n * c], &b.out[..n * c]);
            layernorm_rows(k, &b.x[..n * c], w.norm2, &mut b.xn[..n * c], c);
            matmul(
                k,
                &w.fc_w,
                &b.xn[..n * c],
                &mut b.ff[..n * 4 * c],
                n,
                Some(w.fc_b),
                &mut self.tile,
            );
            k.gelu_tanh(&mut b.ff[..n * 4 * c]);
            matmul(
                k,
                &w.fcp_w,
                &b.ff[..n * 4 * c],
                &mut b.out[..n * c],
                n,
                Some(w.fcp_b),
                &mut self.tile,
            );
            k.add(&mut b.x[..n * c], &b.out[..n * c]);
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

/// x (C) = tok_emb[token] + pos_emb[pos]; `tmp` (C) is scratch.
fn embed(m: &Model<'_>, token: u32, pos: usize, x: &mut [f32], tmp: &mut [f32]) {
    m.tok_emb().row(token as usize, x);
    m.pos_emb().row(pos, tmp);
    for (a, b) in x.iter_mut().zip(tmp.iter()) {
        *a += *b;
    }
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

/// Y (N, R) = X (N, C) · Wᵀ + bias for W (R, C). f32 weights go straight to gemm; f16 weights
/// are dequantized PREFILL_TILE_ROWS rows at a time into `tile` and multiplied with gemm; Q8
/// weights use the int8 prefill kernel.
#[allow(clippy::too_many_arguments)]
fn matmul(
    k: &Kernels,
    w: &Mat<'_>,
    x: &[f32],
    y: &mut [f32],
    n: usize,
    bias: Option<&[f32]>,
    tile: &mut [f32],
) {
    let (rows, cols) = (y.len() / n, x.len() / n);
    let par = Parallelism::current();
    match *w {
        Mat::F32(wf) => {
            let mut dst = MatMut::row_major(y, n, rows);
            let a = MatRef::row_major(x, n, cols);
            let b = MatRef::row_major(wf, rows, cols).t();
            gemm::matmul(&mut dst, 0.0, a, b, 1.0, par);
        }
        Mat::F16(wh) => {
            let a = MatRef::row_major(x, n, cols);
            let mut r0 = 0;
            while r0 < rows {
                let tr = PREFILL_TILE_ROWS.min(rows - r0);
                let t = &mut tile[..tr * cols];
                for (o, h) in t.iter_mut().zip(&wh[r0 * cols..(r0 + tr) * cols]) {
                    *o = h.to_f32();
                }
                // dst: columns r0..r0+tr of Y (N, R), a strided view.
                let mut dst = MatMut::new(&mut y[r0..], n, tr, rows, 1);
                let b = MatRef::row_major(t, tr, cols).t();
                gemm::matmul(&mut dst, 0.0, a, b, 1.0, par);
                r0 += tr;
            }
        }
        Mat::Q8(wq) => k.matmul_q8(wq, x, y),
    }
    if let Some(bias) = bias {
        for yr in y.chunks_exact_mut(rows) {
            k.add(yr, bias);
        }
    }
}

/// Writes token `pos`'s key and value (from qkv (3C)) into layer `l` of the caches (L, T, C).
fn store_kv(
    kc: &mut KvCache,
    vc: &mut KvCache,
    qkv: &[f32],
    l: usize,
    pos: usize,
    t: usize,
    c: usize,
) {
    let at = (l * t + pos) * c;
    for (cache, src) in [(kc, &qkv[c..2 * c]), (vc, &qkv[2 * c..3 * c])] {
        match cache {
            KvCache::F32(v) => v[at..at + c].copy_from_slice(src),
            KvCache::F16(v) => {
                for (o, &s) in v[at..at + c].iter_mut().zip(src) {
                    *o = f16::from_f32(s);
                }
            }
        }
    }
}

/// Causal attention of one query q (C) at position `pos` over cached positions 0..=pos of layer
/// `l`, all heads; `scores` (≥ pos + 1) is scratch; writes out (C).
#[allow(clippy::too_many_arguments)]
fn attend(
    k: &Kernels,
    q: &[f32],
    kc: &KvCache,
    vc: &KvCache,
    l: usize,
    pos: usize,
    t: usize,
    n_heads: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let c = q.len();
    let d = c / n_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let base = l * t * c;
    out.fill(0.0);
    for h in 0..n_heads {
        let qh = &q[h * d..(h + 1) * d];
        let s = &mut scores[..pos + 1];
        for (t2, sc) in s.iter_mut().enumerate() {
            let at = base + t2 * c + h * d;
            *sc = scale
                * match kc {
                    KvCache::F32(v) => k.dot_f32(qh, &v[at..at + d]),
                    KvCache::F16(v) => k.dot_f32_f16(qh, &v[at..at + d]),
                };
        }
        k.softmax(s);
        let oh = &mut out[h * d..(h + 1) * d];
        for (t2, &p) in s.iter().enumerate() {
            let at = base + t2 * c + h * d;
            match vc {
                KvCache::F32(v) => k.axpy(p, &v[at..at + d], oh),
                KvCache::F16(v) => k.axpy_f16(p, &v[at..at + d], oh),
            }
        }
    }
}
