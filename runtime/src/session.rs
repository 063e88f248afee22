//! A generation session: every buffer (activations, logits, sampler scratch, KV cache) is allocated
//! once in [`Session::new`]; [`Session::step`] and the decode loop of [`Session::generate`] allocate
//! nothing.
//!
//! Letters: V vocabulary, T the session's context, C embedding dim, H heads, D = C / H head dim,
//! L layers, N tokens in a prefill chunk, G threads (decode crew members), Hg heads of one KV
//! group (4 for D = 64), P positions attended (0..=pos).
//!
//! # Threads
//! Decode runs one token on a *crew* of G threads that stays together for the whole token, so a
//! token costs one rayon hand-off, not one per matrix. Lane 0's thread leads: it runs the small
//! vector work (embedding, norms, residuals) and opens each layer's four products as jobs in
//! [`Crew`]: the input vector is published in a buffer of atomics and the work is cut into chunks
//! (row ranges, [`Chunks`]) that the leader and the workers (lanes 1..G, spinning between jobs)
//! claim with a compare-and-swap; outputs come back through a second atomic buffer, biases
//! added (and GELU applied) by the member that computed the chunk. The first
//! job of a layer joins the query/key/value product and attention ([`AttnJob`]): its first items
//! are chunks of the product, each holding a group of heads' rows, and its last items are the
//! groups' attention, which a member can take as soon as that group's chunk is done: it stores
//! the group's keys and values in the cache and attends. So a layer needs four hand-offs, not
//! five, and one member's attention (cache reads) overlaps the other's last weight reads. Each
//! group's cache sits behind its own `RwLock`, which only the member working on that group
//! takes in decode (for writing). Claiming is
//! dynamic, so a worker that is descheduled on a busy host only costs the chunk it holds, and the
//! last chunks of a product are smaller than the first, so the member that finishes first waits
//! little.
//! Every row is computed by the same kernel call on the same chunk whatever G is (one thread runs
//! the chunks in a loop), so logits are bit-identical for any thread count (a test checks it).
//!
//! The KV cache is one (L, T, Hg, D) block of keys and one of values per group of Hg heads
//! ([`KvLayout`]), so attending a group reads two long contiguous runs. Prefill stores a chunk's
//! keys and values, then its tokens' attention runs in parallel, each member on a run of tokens
//! (reading every group's cache).

use crate::error::RuntimeError;
use crate::kernels::geometry::packed_len;
use crate::kernels::{Epilogue, Kernels, Q8_BLOCK};
use crate::model::{Layer, Mat, Model};
use crate::sampler::{Sampler, Sampling};
use emberlm_formats::config::LAYERNORM_EPS;
use half::f16;
use std::ops::{ControlFlow, Range};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Element type of the KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDtype {
    /// The default: [`KvDtype::F32`] for a model whose matrices are f32, [`KvDtype::F16`] for f16
    /// and int8 ones. Their weights' own rounding is far larger than the cache's, which stays
    /// within the same tested bounds (README § Accuracy contracts); and a decode step reads the
    /// cache besides the weights: with f32 at 256 positions it is a tenth of a 124M int8 token's
    /// reads, with f16 half that. (llama.cpp's default cache is f16 too.)
    Auto,
    /// 4 bytes per element: exact.
    F32,
    /// 2 bytes per element: half the memory, a small rounding of keys and values.
    F16,
}

impl KvDtype {
    /// [`KvDtype::Auto`] made concrete for `model` (by its head, the largest matrix); the others
    /// as they are.
    pub fn resolve(self, model: &Model<'_>) -> KvDtype {
        match (self, model.head().0) {
            (KvDtype::Auto, Mat::F32(_)) => KvDtype::F32,
            (KvDtype::Auto, _) => KvDtype::F16,
            (d, _) => d,
        }
    }
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
    /// Prompt tokens processed per batched prefill pass (default 128: each weight is converted
    /// once per pass, so longer passes convert less, but buffers grow with the pass; compare
    /// chunk sizes with `ember bench --prompt-tokens 512`).
    pub prefill_chunk: usize,
    /// Force the plain reference kernels (tests, debugging).
    pub reference_kernels: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            context: None,
            kv_dtype: KvDtype::Auto,
            threads: 0,
            prefill_chunk: 128,
            reference_kernels: false,
        }
    }
}

#[derive(Debug)]
enum KvCache {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

/// One group of heads' keys and values, (L, T, Hg, D) each (see [`KvLayout`]).
#[derive(Debug)]
struct GroupKv {
    k: KvCache,
    v: KvCache,
}

/// What decode attention needs: every head group's cache (locked by the crew member working on
/// that group) and their layout.
#[derive(Clone, Copy)]
struct KvShared<'s> {
    groups: &'s [RwLock<GroupKv>],
    kv: &'s KvLayout,
}

impl KvShared<'_> {
    fn write(&self, g: usize) -> RwLockWriteGuard<'_, GroupKv> {
        self.groups[g]
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Activation buffers for one token (decode) or one chunk of N tokens (prefill).
#[derive(Debug)]
struct Buffers {
    x: Vec<f32>,      // (N, C) residual stream
    xn: Vec<f32>,     // (N, C) normalised input of a sublayer
    qkv: Vec<f32>,    // (N, 3C)
    att: Vec<f32>,    // (N, C) attention output before the projection
    ff: Vec<f32>,     // (N, 4C)
    out: Vec<f32>,    // (N, C) sublayer output
    scores: Vec<f32>, // (Hg·T) attention weights of a head group, or one chunk's rows (lanes only)
    xq: Vec<i8>,      // (4C) a Q8 product's input quantized (decode lanes only)
    xd: Vec<f32>,     // (4C / 32) its block scales
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
            scores: vec![0.0; t.max(MAX_CHUNK_ROWS)],
            xq: vec![0; 4 * c],
            xd: vec![0.0; (4 * c).div_ceil(Q8_BLOCK)],
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

/// What ends a [`Session::generate`] call besides `max_tokens` and the callback.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stop {
    /// The model's own end-of-text token (`<|endoftext|>` in the tokenizer stored in its file),
    /// like the book's `eos_id`; nothing when the file has no tokenizer or no such token.
    #[default]
    ModelEndOfText,
    /// This token id.
    Token(u32),
    /// Nothing: generate `max_tokens` tokens (or until the callback stops).
    None,
}

/// Limits of a [`Session::generate`] call. The default is what an application wants: stop at
/// the model's end-of-text token, and slide past the end of the context instead of failing.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Stop (without emitting it) at this token: see [`Stop`].
    pub stop: Stop,
    /// When the context is full, drop the oldest half of the tokens and rebuild the cache from
    /// the rest (as the book's `generate` crops its context) instead of failing with
    /// [`RuntimeError::ContextFull`]. A prompt longer than the context is an error either way.
    pub slide: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            stop: Stop::ModelEndOfText,
            slide: true,
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
    /// (T) scratch for the tokens kept when the context slides (so sliding allocates nothing).
    kept: Vec<u32>,
    /// The model's end-of-text token ([`Stop::ModelEndOfText`]), looked up once here.
    eot: Option<u32>,
    kv_groups: Vec<RwLock<GroupKv>>, // keys and values by head group; decode crew members lock one
    kv: KvLayout,
    lanes: Vec<Buffers>, // G × (N = 1): one per decode crew member
    crew: Crew,
    chunk: Buffers,   // N = prefill_chunk
    xp: Vec<f32>,     // a prefill product's input X (N, 4C) packed for the microkernel
    yt: Vec<f32>,     // (N, 4C) a prefill product's output, one (N, P_g) block per thread
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
        let g = kernels.threads();
        let kv = KvLayout::new(l, cfg.n_heads, context, c / cfg.n_heads);
        let kv_dtype = options.kv_dtype.resolve(model);
        let cache = |cache_len: usize| match kv_dtype {
            KvDtype::F32 | KvDtype::Auto => KvCache::F32(vec![0.0; cache_len]),
            // Zeroed memory from the allocator, as `vec![0.0; n]` gets for f32: the pages are
            // only backed once written, so an unused context costs no resident memory.
            // (`vec![f16::ZERO; n]` would write every element.)
            KvDtype::F16 => KvCache::F16(bytemuck::zeroed_vec(cache_len)),
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
            kept: Vec::with_capacity(context),
            eot: model.tokenizer().ok().flatten().and_then(|t| t.eot_id()),
            kv_groups: (0..kv.groups)
                .map(|i| {
                    RwLock::new(GroupKv {
                        k: cache(kv.group_len(i)),
                        v: cache(kv.group_len(i)),
                    })
                })
                .collect(),
            lanes: (0..g)
                .map(|_| Buffers::new(1, c, kv.per_group * context))
                .collect(),
            kv,
            crew: Crew::new(g, 4 * c, model.n_outputs().max(4 * c), kv.groups),
            chunk: Buffers::new(chunk, c, 0),
            xp: vec![0.0; packed_len(chunk, 4 * c)],
            yt: vec![0.0; chunk * 4 * c],
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
        let stop_token = match opts.stop {
            Stop::ModelEndOfText => self.eot,
            Stop::Token(t) => Some(t),
            Stop::None => None,
        };
        for _ in 0..opts.max_tokens {
            let next = self.sampler.sample(&self.logits, &self.tokens, sampling);
            if Some(next) == stop_token {
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

    /// Drops the oldest half of the cached tokens and rebuilds the cache from the rest. Allocates
    /// nothing: the kept tokens go through the `kept` scratch, `tokens` keeps its capacity.
    fn slide(&mut self) -> Result<(), RuntimeError> {
        let keep = self.context / 2;
        let start = self.tokens.len().saturating_sub(keep);
        let mut kept = std::mem::take(&mut self.kept);
        kept.clear();
        kept.extend_from_slice(&self.tokens[start..]);
        self.tokens.clear();
        let result = if kept.is_empty() {
            Ok(())
        } else {
            self.prefill(&kept).map(|_| ())
        };
        self.kept = kept;
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

    /// Decode: one token at position `tokens.len()`: lane 0 leads, the other lanes' threads
    /// take chunks of its matrix-vector products (see the module docs).
    fn forward_one(&mut self, token: u32) {
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
            by_tokens(k, &mut b.xn[..n * c], &b.x[..n * c], c, |o, x| {
                layernorm_rows(k, x, w.norm1, o, c)
            });
            let ep = Epilogue {
                bias: w.qkv_b,
                gelu: false,
            };
            k.matmul(
                w.qkv_w,
                c,
                &b.xn[..n * c],
                &mut b.qkv[..n * 3 * c],
                &mut self.xp,
                &mut self.yt,
                ep,
            );
            let ctx = ChunkAttn {
                k: *k,
                kv: &self.kv,
                l,
                pos0,
                qkv: &b.qkv[..n * 3 * c],
            };
            ctx.store(&mut self.kv_groups);
            attend_tokens(
                &ctx,
                0,
                &mut self.lanes,
                &self.kv_groups,
                &mut b.att[..n * c],
            );
            let ep = Epilogue {
                bias: Some(w.proj_b),
                gelu: false,
            };
            k.matmul(
                w.proj_w,
                c,
                &b.att[..n * c],
                &mut b.out[..n * c],
                &mut self.xp,
                &mut self.yt,
                ep,
            );
            by_tokens(k, &mut b.x[..n * c], &b.out[..n * c], c, |x, o| k.add(x, o));
            by_tokens(k, &mut b.xn[..n * c], &b.x[..n * c], c, |o, x| {
                layernorm_rows(k, x, w.norm2, o, c)
            });
            let ep = Epilogue {
                bias: Some(w.fc_b),
                gelu: true,
            };
            k.matmul(
                w.fc_w,
                c,
                &b.xn[..n * c],
                &mut b.ff[..n * 4 * c],
                &mut self.xp,
                &mut self.yt,
                ep,
            );
            let ep = Epilogue {
                bias: Some(w.fcp_b),
                gelu: false,
            };
            k.matmul(
                w.fcp_w,
                4 * c,
                &b.ff[..n * 4 * c],
                &mut b.out[..n * c],
                &mut self.xp,
                &mut self.yt,
                ep,
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

/// x (C) = tok_emb[token] + pos_emb[pos]; `tmp` (C) is scratch.
fn embed(m: &Model<'_>, token: u32, pos: usize, x: &mut [f32], tmp: &mut [f32]) {
    m.tok_emb().row(token as usize, x);
    m.pos_emb().row(pos, tmp);
    for (a, b) in x.iter_mut().zip(tmp.iter()) {
        *a += *b;
    }
}

/// f(a rows, b rows) over the tokens of two (N, C) buffers, split over the session's threads
/// (each token's row is computed the same way whatever the split).
fn by_tokens(
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

// ---------------------------------------------------------------- KV cache

/// Where keys and values live: heads are cut into groups of Hg consecutive heads (the last may
/// be short), the same groups as decode's query/key/value chunks ([`QKV_GROUP_ROWS`]), and each
/// group's keys are one (L, T, Hg, D) block (values another): position after position, each
/// holding its Hg heads' rows. Attending a group at P positions then reads its keys and its
/// values as two contiguous runs of P·Hg·D elements, which the memory streams of
/// [`Kernels::group_scores`] and [`Kernels::group_weighted`] follow; one head's (P, D) rows
/// alone are too short a stream (measured: half the speed, see README § Runtime kernel
/// decisions).
#[derive(Clone, Copy, Debug)]
struct KvLayout {
    layers: usize,
    heads: usize,
    t: usize,
    d: usize,
    /// Heads per group, Hg (the last group may hold fewer).
    per_group: usize,
    /// Groups: ceil(H / Hg).
    groups: usize,
}

impl KvLayout {
    fn new(layers: usize, heads: usize, t: usize, d: usize) -> KvLayout {
        let per_group = QKV_GROUP_ROWS.div_ceil(d.max(1)).clamp(1, heads.max(1));
        KvLayout {
            layers,
            heads,
            t,
            d,
            per_group,
            groups: heads.div_ceil(per_group),
        }
    }

    /// The heads of group g.
    fn group(&self, g: usize) -> Range<usize> {
        g * self.per_group..((g + 1) * self.per_group).min(self.heads)
    }

    /// Elements of group g's key (or value) cache.
    fn group_len(&self, g: usize) -> usize {
        self.layers * self.t * self.group(g).len() * self.d
    }

    /// Offset of (layer l, position pos) in the cache of a group of `hg` heads.
    fn at(&self, l: usize, pos: usize, hg: usize) -> usize {
        (l * self.t + pos) * hg * self.d
    }
}

/// A mutable view of (part of) a cache.
enum KvMut<'s> {
    F32(&'s mut [f32]),
    F16(&'s mut [f16]),
}

/// A shared view of (part of) a cache.
#[derive(Clone, Copy)]
enum KvRef<'s> {
    F32(&'s [f32]),
    F16(&'s [f16]),
}

impl<'s> KvMut<'s> {
    fn of(c: &'s mut KvCache) -> KvMut<'s> {
        match c {
            KvCache::F32(v) => KvMut::F32(v),
            KvCache::F16(v) => KvMut::F16(v),
        }
    }

    /// Writes `src` (D) at `at`.
    fn store(&mut self, at: usize, src: &[f32]) {
        match self {
            KvMut::F32(v) => v[at..at + src.len()].copy_from_slice(src),
            KvMut::F16(v) => {
                for (o, &s) in v[at..at + src.len()].iter_mut().zip(src) {
                    *o = f16::from_f32(s);
                }
            }
        }
    }
}

impl<'s> KvRef<'s> {
    fn of(c: &'s KvCache) -> KvRef<'s> {
        match c {
            KvCache::F32(v) => KvRef::F32(v),
            KvCache::F16(v) => KvRef::F16(v),
        }
    }
}

/// Causal attention of a group of Hg = `heads` heads: queries q (Hg, D) against the group's keys
/// and values from position 0, both (P, Hg, D) from element `from` of their caches; `scores`
/// (Hg·P) is scratch; writes out (Hg, D).
fn attend_group(
    k: &Kernels,
    heads: usize,
    q: &[f32],
    (keys, values): (KvRef<'_>, KvRef<'_>),
    from: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let len = scores.len() / heads * q.len(); // P·Hg·D
    let d = q.len() / heads;
    let scale = 1.0 / (d as f32).sqrt();
    match keys {
        KvRef::F32(c) => k.group_scores(&c[from..from + len], q, scores, heads),
        KvRef::F16(c) => k.group_scores_f16(&c[from..from + len], q, scores, heads),
    }
    let p = scores.len() / heads;
    for sj in scores.chunks_exact_mut(p) {
        sj.iter_mut().for_each(|s| *s *= scale);
        k.softmax(sj);
    }
    match values {
        KvRef::F32(c) => k.group_weighted(scores, &c[from..from + len], out, heads),
        KvRef::F16(c) => k.group_weighted_f16(scores, &c[from..from + len], out, heads),
    }
}

// ---------------------------------------------------------------- threads

/// A waiting thread spins this many times (with a pause hint) before it starts yielding its core
/// between checks: a sublayer takes tens of microseconds, and on a shared host the thread being
/// waited for may need the core.
const SPINS_BEFORE_YIELD: u32 = 2000;

/// Weight bytes per work chunk at most (chunks also stay under [`MAX_CHUNK_ROWS`] rows and
/// aim at [`CHUNKS_PER_MATRIX`] per matrix, so two threads balance).
const CHUNK_BYTES: usize = 1 << 20;
/// Weight bytes per work chunk at least. The kernels read a chunk as four streams (one per
/// quarter of its rows), and short streams read slowly. Evidence: README § Runtime kernel
/// decisions ("Decode chunks hold at least 144 KiB"), `cargo bench -p emberlm-benches --bench
/// decode_chunks`.
const MIN_CHUNK_BYTES: usize = 144 << 10;
/// Rows per chunk at most (the size of a worker's output scratch).
const MAX_CHUNK_ROWS: usize = 8192;
/// Big chunks a matrix is cut into at least (when it has the rows and each chunk keeps
/// [`MIN_CHUNK_BYTES`]).
const CHUNKS_PER_MATRIX: usize = 8;
/// Chunks start at multiples of this many rows (the kernels work on groups of 4 rows).
const CHUNK_ALIGN: usize = 16;
/// A product's last rows, this many big chunks' worth, are cut into small chunks ([`Chunks`]).
const TAIL_BIG_CHUNKS: usize = 2;

/// `state`'s epoch once the token is finished: workers return.
const FINISHED: u32 = u32::MAX;

/// The decode crew's shared state (see the module docs). `state` packs an epoch (high 32 bits)
/// and the next unclaimed chunk (low 32 bits). An odd epoch means the leader is writing the next
/// job; an even one that `job`, `input` and `chunks` describe the open job. Claims are a
/// compare-and-swap on `state`, so a worker whose copy of the input raced with the leader's
/// next write can never claim a chunk with it (a seqlock).
#[derive(Debug)]
struct Crew {
    g: usize,
    state: AtomicU64,
    job: AtomicU32,
    arg: AtomicU32, // the position, for attention jobs
    chunks: AtomicU32,
    done: AtomicU32,
    /// Per query/key/value chunk of the open attention job: 1 once its rows are in `output`.
    ready: Vec<AtomicU32>,
    /// Set when a worker unwinds: the leader then panics instead of waiting for its chunk.
    poisoned: std::sync::atomic::AtomicBool,
    input: Vec<AtomicU32>,  // (4C) f32 bits: the job's x
    output: Vec<AtomicU32>, // (max(V, 4C)) f32 bits: the job's y
}

/// Which matrix a job multiplies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    /// The query/key/value product and attention, one job ([`AttnJob`]).
    Qkv,
    Proj,
    Fc,
    Fcp,
    Head,
}

impl Which {
    const ALL: [Which; 5] = [Which::Qkv, Which::Proj, Which::Fc, Which::Fcp, Which::Head];

    fn encode(self, layer: usize) -> u32 {
        (layer as u32) << 3 | Which::ALL.iter().position(|&w| w == self).unwrap_or(0) as u32
    }

    fn decode(code: u32) -> (Which, usize) {
        (Which::ALL[(code & 7) as usize % 5], (code >> 3) as usize)
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
        };
        Epilogue { bias, gelu }
    }

    fn mat<'m>(self, m: &'m Model<'_>, layer: usize) -> Mat<'m> {
        match self {
            Which::Head => m.head().0,
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

fn pack(epoch: u32, next: u32) -> u64 {
    u64::from(epoch) << 32 | u64::from(next)
}

fn unpack(s: u64) -> (u32, u32) {
    ((s >> 32) as u32, s as u32)
}

/// Rows per (big) chunk for a (rows, cols) matrix of `elem` bytes per weight.
fn chunk_rows(rows: usize, cols: usize, elem_bytes: usize) -> usize {
    let by_bytes = CHUNK_BYTES / (cols * elem_bytes).max(1);
    let by_count = rows.div_ceil(CHUNKS_PER_MATRIX);
    by_bytes
        .min(by_count)
        .min(MAX_CHUNK_ROWS)
        .next_multiple_of(CHUNK_ALIGN)
        .clamp(CHUNK_ALIGN, MAX_CHUNK_ROWS)
}

/// Rows per chunk at least, so a chunk holds [`MIN_CHUNK_BYTES`] of weights.
fn min_chunk_rows(cols: usize, elem_bytes: usize) -> usize {
    MIN_CHUNK_BYTES
        .div_ceil((cols * elem_bytes).max(1))
        .next_multiple_of(CHUNK_ALIGN)
}

/// How a product's rows are cut into chunks: `big` rows each ([`chunk_rows`]) up to `split`,
/// then `small` rows each (a quarter of `big`) for the last [`TAIL_BIG_CHUNKS`] big chunks' worth,
/// so whichever member finishes first waits at most one small chunk for the others. No chunk is
/// under [`MIN_CHUNK_BYTES`] (but a product's last). The cut depends only on the matrix, never
/// on the crew.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Chunks {
    rows: usize,
    big: usize,
    small: usize,
    split: usize,
}

impl Chunks {
    fn new(rows: usize, cols: usize, elem_bytes: usize) -> Chunks {
        let min = min_chunk_rows(cols, elem_bytes);
        let big = chunk_rows(rows, cols, elem_bytes)
            .max(min)
            .min(MAX_CHUNK_ROWS);
        let small = (big / 4).next_multiple_of(CHUNK_ALIGN).max(min).min(big);
        let split = rows.saturating_sub(TAIL_BIG_CHUNKS * big) / big * big;
        Chunks {
            rows,
            big,
            small,
            split,
        }
    }

    fn count(&self) -> usize {
        self.split / self.big + (self.rows - self.split).div_ceil(self.small)
    }

    /// Rows of chunk i (i < count).
    fn range(&self, i: usize) -> Range<usize> {
        let n_big = self.split / self.big;
        let (start, len) = if i < n_big {
            (i * self.big, self.big)
        } else {
            (self.split + (i - n_big) * self.small, self.small)
        };
        start..(start + len).min(self.rows)
    }
}

/// (rows, cols, bytes per weight) of a matrix.
fn mat_shape(w: &Mat<'_>, cols: usize) -> (usize, usize) {
    let (len, elem) = match *w {
        Mat::F32(w) => (w.len(), 4),
        Mat::F16(w) => (w.len(), 2),
        Mat::Q8(w) => return (w.rows(), 1),
    };
    (len / cols.max(1), elem)
}

/// Waits (spinning, then yielding) until `ready()`.
fn wait_until(mut ready: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while !ready() {
        if spins < SPINS_BEFORE_YIELD {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

impl Crew {
    fn new(g: usize, in_len: usize, out_len: usize, groups: usize) -> Crew {
        let buf = |n: usize| {
            if g > 1 {
                (0..n).map(|_| AtomicU32::new(0)).collect()
            } else {
                Vec::new()
            }
        };
        Crew {
            g,
            state: AtomicU64::new(pack(0, u32::MAX)),
            job: AtomicU32::new(0),
            arg: AtomicU32::new(0),
            chunks: AtomicU32::new(0),
            done: AtomicU32::new(0),
            ready: buf(groups),
            poisoned: std::sync::atomic::AtomicBool::new(false),
            input: buf(in_len),
            output: buf(out_len),
        }
    }

    /// Claims the next of the `n` pieces of the job of epoch `epoch`; `None` once every piece is
    /// taken or a newer job has opened.
    fn claim(&self, epoch: u32, n: u32) -> Option<u32> {
        loop {
            let s = self.state.load(Ordering::Relaxed);
            let (e, next) = unpack(s);
            if e != epoch || next >= n {
                return None;
            }
            if self
                .state
                .compare_exchange_weak(s, pack(e, next + 1), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Some(next);
            }
        }
    }

    /// Claims and runs chunks of the open job of epoch `epoch` until none is left; `x` is the
    /// job's input, `ep` what follows the product, `scratch` (≥ MAX_CHUNK_ROWS) holds one chunk's
    /// output.
    #[allow(clippy::too_many_arguments)]
    fn work(
        &self,
        k: &Kernels,
        (w, ep): (&Mat<'_>, Epilogue<'_>),
        chunks: Chunks,
        x: Input<'_>,
        epoch: u32,
        scratch: &mut [f32],
    ) {
        let n = chunks.count() as u32;
        while let Some(next) = self.claim(epoch, n) {
            let r = chunks.range(next as usize);
            let y = &mut scratch[..r.len()];
            mat_rows(k, w, x, y, r.start);
            k.epilogue(ep, r.clone(), y);
            for (a, v) in self.output[r].iter().zip(y.iter()) {
                a.store(v.to_bits(), Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }

    /// Leader: y (R) = W x (C) and its epilogue ([`Which::epilogue`]) for the job `which` of
    /// `layer`, shared with the workers.
    /// `epoch` is the leader's job counter for this token; `scratch` as in [`Crew::work`].
    #[allow(clippy::too_many_arguments)]
    fn matvec(
        &self,
        k: &Kernels,
        m: &Model<'_>,
        which: Which,
        layer: usize,
        x: &[f32],
        y: &mut [f32],
        epoch: &mut u32,
        scratch: &mut Scratch<'_>,
    ) {
        let (w, ep) = (which.mat(m, layer), which.epilogue(m, layer));
        let (rows, elem) = mat_shape(&w, x.len());
        let chunks = Chunks::new(rows, x.len(), elem);
        let input = Input::new(k, &w, x, scratch.xq, scratch.xd);
        if self.g <= 1 {
            // The same chunks, so every row's sum is computed identically whatever the crew size.
            for i in 0..chunks.count() {
                let r = chunks.range(i);
                mat_rows(k, &w, input, &mut y[r.clone()], r.start);
                k.epilogue(ep, r.clone(), &mut y[r]);
            }
            return;
        }
        let n = chunks.count() as u32;
        let open = self.open(epoch, which.encode(layer), 0, n, x);
        self.work(k, (&w, ep), chunks, input, open, scratch.out);
        self.wait_done(n);
        for (v, a) in y.iter_mut().zip(&self.output) {
            *v = f32::from_bits(a.load(Ordering::Relaxed));
        }
    }

    /// Opens a job of `n` chunks on input `x`; returns its epoch.
    fn open(&self, epoch: &mut u32, code: u32, arg: u32, n: u32, x: &[f32]) -> u32 {
        // Close the previous job (claims fail from here), then describe the next one.
        let writing = *epoch + 1;
        let open = *epoch + 2;
        *epoch = open;
        self.state.store(pack(writing, 0), Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        self.job.store(code, Ordering::Relaxed);
        self.arg.store(arg, Ordering::Relaxed);
        self.chunks.store(n, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        for r in &self.ready {
            r.store(0, Ordering::Relaxed);
        }
        for (a, v) in self.input.iter().zip(x) {
            a.store(v.to_bits(), Ordering::Relaxed);
        }
        self.state.store(pack(open, 0), Ordering::Release);
        open
    }

    /// Leader: the query/key/value product of layer l and attention at position pos as one job,
    /// xn (C) → att (C), shared with the workers (see [`AttnJob`]). Uses `scratch.out` (≥ Hg·T)
    /// for scores, `scratch.rows` (≥ 3C) and `scratch.tmp` (≥ Hg·D).
    #[allow(clippy::too_many_arguments)]
    fn qkv_attend(
        &self,
        k: &Kernels,
        m: &Model<'_>,
        kvs: &KvShared<'_>,
        l: usize,
        pos: usize,
        xn: &[f32],
        att: &mut [f32],
        epoch: &mut u32,
        scratch: &mut Scratch<'_>,
    ) {
        let w = m.layer(l);
        let job = AttnJob::new(&w, kvs, l, pos);
        let input = Input::new(k, &w.qkv_w, xn, scratch.xq, scratch.xd);
        let (scores, rows, tmp) = (&mut *scratch.out, &mut *scratch.rows, &mut *scratch.tmp);
        if self.g <= 1 {
            for i in 0..job.groups() {
                job.project(k, input, i, rows);
            }
            for g in 0..job.groups() {
                let part = |p: usize| &rows[job.part(p, g)];
                let out = &mut att[job.part(0, g)];
                job.attend(k, g, part(0), part(1), part(2), scores, out);
            }
            return;
        }
        let n = job.items() as u32;
        let open = self.open(epoch, Which::Qkv.encode(l), pos as u32, n, xn);
        self.work_qkv(k, &job, input, open, scores, rows, tmp);
        self.wait_done(n);
        for (v, a) in att.iter_mut().zip(&self.output[3 * job.c..]) {
            *v = f32::from_bits(a.load(Ordering::Relaxed));
        }
    }

    /// Claims and runs items of the open attention job of epoch `epoch` until none is left:
    /// first the query/key/value chunks (rows to `output[..3C]`), then the groups' attention (to
    /// `output[3C..4C]`), each group once its chunk is ready.
    #[allow(clippy::too_many_arguments)]
    fn work_qkv(
        &self,
        k: &Kernels,
        job: &AttnJob<'_, '_>,
        x: Input<'_>,
        epoch: u32,
        scores: &mut [f32],
        rows: &mut [f32],
        tmp: &mut [f32],
    ) {
        let (c, groups) = (job.c, job.groups());
        while let Some(next) = self.claim(epoch, job.items() as u32) {
            let i = next as usize;
            if i < groups {
                job.project(k, x, i, rows);
                for p in 0..3 {
                    let r = job.part(p, i);
                    for (a, v) in self.output[r.clone()].iter().zip(&rows[r]) {
                        a.store(v.to_bits(), Ordering::Relaxed);
                    }
                }
                self.ready[i].store(1, Ordering::Release);
            } else {
                // Claims go in order, so this group's chunk is taken: wait for it to be done.
                let g = i - groups;
                wait_until(|| {
                    self.check_poison();
                    self.ready[g].load(Ordering::Acquire) == 1
                });
                let n = job.part(0, g).len(); // Hg·D
                let (qkv, out) = (&mut rows[..3 * n], &mut tmp[..n]);
                for (p, dst) in qkv.chunks_exact_mut(n).enumerate() {
                    for (v, a) in dst.iter_mut().zip(&self.output[job.part(p, g)]) {
                        *v = f32::from_bits(a.load(Ordering::Relaxed));
                    }
                }
                let (q, rest) = qkv.split_at(n);
                let (key, value) = rest.split_at(n);
                job.attend(k, g, q, key, value, scores, out);
                let r = job.part(0, g);
                for (a, v) in self.output[3 * c + r.start..][..n].iter().zip(out.iter()) {
                    a.store(v.to_bits(), Ordering::Relaxed);
                }
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }

    /// Panics if a worker unwound (a waiting member would otherwise wait forever).
    fn check_poison(&self) {
        assert!(
            !self.poisoned.load(Ordering::Relaxed),
            "a decode crew worker panicked"
        );
    }

    /// Leader: waits until `n` chunks of the open job are done.
    fn wait_done(&self, n: u32) {
        wait_until(|| {
            self.check_poison();
            self.done.load(Ordering::Acquire) >= n
        });
    }

    /// Before a token: no job open.
    fn reset(&self) {
        self.state.store(pack(0, u32::MAX), Ordering::Relaxed);
    }

    /// Ends the token: workers return.
    fn finish(&self) {
        if self.g > 1 {
            self.state.store(pack(FINISHED, 0), Ordering::Release);
        }
    }

    /// Worker: takes chunks of every job the leader opens until the token is finished. `x` (4C)
    /// holds a copy of the input, `scratch` one chunk's output.
    fn worker(
        &self,
        k: &Kernels,
        m: &Model<'_>,
        kvs: &KvShared<'_>,
        x: &mut [f32],
        scratch: &mut Scratch<'_>,
    ) {
        let mut seen = u32::MAX; // last epoch worked on
        loop {
            let mut s = 0;
            wait_until(|| {
                s = self.state.load(Ordering::Acquire);
                let (e, next) = unpack(s);
                e == FINISHED || (e % 2 == 0 && e != seen && next != u32::MAX)
            });
            let (epoch, _) = unpack(s);
            if epoch == FINISHED {
                return;
            }
            seen = epoch;
            let (which, layer) = Which::decode(self.job.load(Ordering::Acquire));
            let n = self.chunks.load(Ordering::Acquire);
            if which != Which::Head && layer >= m.config().n_layers || n == 0 {
                continue; // a torn read: the job changed under us, no claim will succeed
            }
            let cols = match which {
                Which::Fcp => 4 * m.config().dim,
                _ => m.config().dim,
            };
            let x = &mut x[..cols];
            for (v, a) in x.iter_mut().zip(&self.input) {
                *v = f32::from_bits(a.load(Ordering::Relaxed));
            }
            std::sync::atomic::fence(Ordering::Acquire);
            if which == Which::Qkv {
                let pos = self.arg.load(Ordering::Acquire) as usize;
                let w = m.layer(layer);
                let job = AttnJob::new(&w, kvs, layer, pos);
                if pos >= kvs.kv.t || n as usize != job.items() {
                    continue; // a torn read, as above
                }
                let input = Input::new(k, &w.qkv_w, x, scratch.xq, scratch.xd);
                let (scores, rows, tmp) =
                    (&mut *scratch.out, &mut *scratch.rows, &mut *scratch.tmp);
                self.work_qkv(k, &job, input, epoch, scores, rows, tmp);
                continue;
            }
            let w = which.mat(m, layer);
            let (rows, elem) = mat_shape(&w, cols);
            let chunks = Chunks::new(rows, cols, elem);
            if chunks.count() as u32 != n {
                continue; // a torn read, as above
            }
            let input = Input::new(k, &w, x, scratch.xq, scratch.xd);
            let ep = which.epilogue(m, layer);
            self.work(k, (&w, ep), chunks, input, epoch, scratch.out);
        }
    }
}

/// A crew member's scratch: one chunk's output rows (≥ MAX_CHUNK_ROWS, or T attention scores)
/// and a quantized input; for the fused attention job, one head's query, key and value rows
/// (≥ 3D) and its output (≥ D).
struct Scratch<'s> {
    out: &'s mut [f32],
    xq: &'s mut [i8],
    xd: &'s mut [f32],
    rows: &'s mut [f32],
    tmp: &'s mut [f32],
}

/// Marks the crew poisoned if its worker unwinds.
struct PoisonOnPanic<'c>(&'c Crew);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poisoned.store(true, Ordering::Relaxed);
        }
    }
}

/// Finishes the token when dropped, even if the leader unwinds (workers would wait forever).
struct FinishOnDrop<'c>(&'c Crew);

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// Runs `a` and `b`, in parallel when the runtime has threads.
fn fork(a: impl FnOnce() + Send, b: impl FnOnce() + Send) {
    #[cfg(feature = "parallel")]
    rayon::join(a, b);
    #[cfg(not(feature = "parallel"))]
    {
        a();
        b();
    }
}

/// Starts workers g.. of the crew (each on its own lane), forked onto other rayon workers.
fn run_workers(
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
struct Input<'s> {
    x: &'s [f32],
    q: Option<(&'s [i8], &'s [f32])>,
}

impl<'s> Input<'s> {
    /// Quantizes x into `xq`, `xd` when `w` is Q8 (int8 decode multiplies int8 by int8).
    fn new(k: &Kernels, w: &Mat<'_>, x: &'s [f32], xq: &'s mut [i8], xd: &'s mut [f32]) -> Self {
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
fn mat_rows(k: &Kernels, w: &Mat<'_>, x: Input<'_>, y: &mut [f32], row_start: usize) {
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
fn lead_token(
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

/// Rows per head group's slice of each query/key/value part, at least: shorter slices read the
/// weights as short memory streams, which the hardware prefetchers follow badly (README § Runtime
/// kernel decisions, "A layer's query/key/value product and its attention are one decode job").
const QKV_GROUP_ROWS: usize = 256;

/// Decode's fused query/key/value and attention job of layer l at position pos. Its items are
/// first `groups()` chunks of the product, chunk i holding the heads of KV group i
/// ([`KvLayout`]): their D rows of each of the three parts, bias included; then one item per
/// group: store its keys and values in the cache and attend, once its chunk is done. The cut
/// depends only on the model.
struct AttnJob<'s, 'm> {
    w: &'s Layer<'m>,
    kvs: &'s KvShared<'s>,
    l: usize,
    pos: usize,
    c: usize,
    d: usize,
}

impl<'s, 'm> AttnJob<'s, 'm> {
    fn new(w: &'s Layer<'m>, kvs: &'s KvShared<'s>, l: usize, pos: usize) -> Self {
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

    fn groups(&self) -> usize {
        self.kvs.kv.groups
    }

    fn items(&self) -> usize {
        2 * self.groups()
    }

    /// The product's rows of part p (0 query, 1 key, 2 value) for the heads of group g.
    fn part(&self, p: usize, g: usize) -> Range<usize> {
        let hs = self.kvs.kv.group(g);
        p * self.c + hs.start * self.d..p * self.c + hs.end * self.d
    }

    /// Chunk g of the product: `rows` (3C, laid out as the whole product's output) gets group
    /// g's rows of each part, bias included.
    fn project(&self, k: &Kernels, x: Input<'_>, g: usize, rows: &mut [f32]) {
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
    fn attend(
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

/// One prefill chunk's attention inputs for layer l: qkv (N, 3C) of tokens at pos0 ...
struct ChunkAttn<'s> {
    k: Kernels,
    kv: &'s KvLayout,
    l: usize,
    pos0: usize,
    qkv: &'s [f32],
}

impl ChunkAttn<'_> {
    /// C, the width of a token's query (or key, or value) row.
    fn dim(&self) -> usize {
        self.kv.heads * self.kv.d
    }

    /// Stores the chunk's keys and values in every group's cache.
    fn store(&self, groups: &mut [RwLock<GroupKv>]) {
        let (kv, c) = (self.kv, self.dim());
        for (g, cache) in groups.iter_mut().enumerate() {
            let cache = cache.get_mut().unwrap_or_else(PoisonError::into_inner);
            let hs = kv.group(g);
            let (kc, vc) = (&mut KvMut::of(&mut cache.k), &mut KvMut::of(&mut cache.v));
            for (i, qkv) in self.qkv.chunks_exact(3 * c).enumerate() {
                let at = kv.at(self.l, self.pos0 + i, hs.len());
                kc.store(at, &qkv[c + hs.start * kv.d..c + hs.end * kv.d]);
                vc.store(at, &qkv[2 * c + hs.start * kv.d..2 * c + hs.end * kv.d]);
            }
        }
    }

    /// Attention of tokens i0.. of the chunk (one row of `att` (C) each) over every group.
    fn attend(&self, i0: usize, scores: &mut [f32], groups: &[RwLock<GroupKv>], att: &mut [f32]) {
        let (kv, c) = (self.kv, self.dim());
        for (g, cache) in groups.iter().enumerate() {
            let cache: RwLockReadGuard<'_, GroupKv> =
                cache.read().unwrap_or_else(PoisonError::into_inner);
            let hs = kv.group(g);
            let cols = hs.start * kv.d..hs.end * kv.d;
            let kvr = (KvRef::of(&cache.k), KvRef::of(&cache.v));
            let from = kv.at(self.l, 0, hs.len());
            for (ii, out) in att.chunks_exact_mut(c).enumerate() {
                let i = i0 + ii;
                let q = &self.qkv[i * 3 * c..][cols.clone()];
                let p = self.pos0 + i + 1;
                let sc = &mut scores[..hs.len() * p];
                attend_group(&self.k, hs.len(), q, kvr, from, sc, &mut out[cols.clone()]);
            }
        }
    }
}

/// Prefill attention of the chunk's tokens i0.. (`att` holds their rows), the caches already
/// holding the chunk's keys and values ([`ChunkAttn::store`]): the tokens are cut into runs of
/// about equal work (token i attends pos0 + i + 1 positions), one per lane, run in parallel
/// (rayon), each on its own lane's scores. A token's output does not depend on the cut.
fn attend_tokens(
    ctx: &ChunkAttn<'_>,
    i0: usize,
    lanes: &mut [Buffers],
    groups: &[RwLock<GroupKv>],
    att: &mut [f32],
) {
    let Some((lane, rest)) = lanes.split_first_mut() else {
        return;
    };
    let c = ctx.dim();
    let n = att.len() / c;
    // This lane's share: 1 / lanes of the remaining positions to attend.
    let work = |i: usize| ctx.pos0 + i0 + i + 1;
    let total: usize = (0..n).map(work).sum();
    let target = total / (rest.len() + 1);
    let (mut mine, mut acc) = (0, 0);
    while mine < n && (acc < target || mine == 0) {
        acc += work(mine);
        mine += 1;
    }
    let (my_att, rest_att) = att.split_at_mut(mine * c);
    if rest.is_empty() || mine == n {
        ctx.attend(i0, &mut lane.scores, groups, att);
    } else {
        fork(
            || ctx.attend(i0, &mut lane.scores, groups, my_att),
            || attend_tokens(ctx, i0 + mine, rest, groups, rest_att),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_row_once_and_end_small() {
        // GPT-2 124M's decode products (rows, cols, bytes per weight) and awkward small ones.
        let shapes = [
            (2304, 768, 1),
            (768, 768, 1),
            (3072, 768, 2),
            (768, 3072, 4),
            (50257, 768, 1),
            (211, 48, 4),
            (17, 5, 2),
            (16, 1, 1),
            (1, 1, 1),
        ];
        for (rows, cols, elem) in shapes {
            let ch = Chunks::new(rows, cols, elem);
            let mut next = 0;
            let mut sizes = Vec::new();
            for i in 0..ch.count() {
                let r = ch.range(i);
                assert_eq!(
                    r.start, next,
                    "{rows}x{cols}: chunk {i} starts at {}",
                    r.start
                );
                assert!(!r.is_empty() && r.len() <= MAX_CHUNK_ROWS);
                assert_eq!(
                    r.start % CHUNK_ALIGN,
                    0,
                    "{rows}x{cols}: chunk {i} unaligned"
                );
                sizes.push(r.len());
                next = r.end;
            }
            assert_eq!(next, rows, "{rows}x{cols}: chunks end at {next}");
            // Sizes never grow; every chunk but the last holds MIN_CHUNK_BYTES at least.
            assert!(
                sizes.windows(2).all(|w| w[1] <= w[0]),
                "{rows}x{cols}: {sizes:?}"
            );
            let min = min_chunk_rows(cols, elem).min(rows);
            let body = &sizes[..sizes.len() - 1];
            assert!(body.iter().all(|&n| n >= min), "{rows}x{cols}: {sizes:?}");
        }
        // 124M int8 (rows, cols) → (big, small, count): the tail is finer where chunks are
        // large enough.
        for ((rows, cols), want) in [
            ((768, 768), (192, 192, 4)),
            ((3072, 768), (384, 192, 10)),
            ((768, 3072), (96, 48, 10)),
            ((50257, 768), (1376, 352, 44)),
        ] {
            let ch = Chunks::new(rows, cols, 1);
            assert_eq!((ch.big, ch.small, ch.count()), want, "{rows}x{cols}");
        }
    }
}
