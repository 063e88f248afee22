//! A generation session: every buffer (activations, logits, sampler scratch, KV cache) is allocated
//! once in [`Session::new`]; [`Session::step`] and the decode loop of [`Session::generate`] allocate
//! nothing.
//!
//! Letters: V vocabulary, T the session's context, C embedding dim, H heads, D = C / H head dim,
//! L layers, N tokens in a prefill chunk, G threads (decode crew members), Hg heads of one KV
//! group (4 for D = 64), P positions attended (0..=pos).
//!
//! # Modules
//! - this one: the public API ([`Session`], its options and statistics) and the buffers a session
//!   allocates;
//! - `kv`: the KV cache, its layout by head group and its storage;
//! - `crew`: the threads that run a decode token together, the seqlock through which they claim
//!   work, and how a product is cut into chunks;
//! - `decode`: one token, its leader's vector work and the jobs it opens on the crew;
//! - `prefill`: a chunk of prompt tokens through batched products, then its attention;
//! - `family`, `family_prefill`, `rope`: the same for the Llama-style families (Llama 3.x /
//!   SmolLM2, Qwen2.5, Qwen3, Gemma 3) on the same crew and cache, with rotary tables built here;
//! - `batch`: B sessions decoded together, one pass over the weights per step ([`Batch`]).
//!
//! A forward pass (one token or one prefill chunk) borrows one `Ctx` from its session: kernels,
//! model, KV cache and crew, shared by every thread; each thread's own buffers go beside it.
//!
//! # Threads
//! Decode runs one token on a *crew* of G threads that stays together for the whole token, so a
//! token costs one rayon hand-off, not one per matrix. Lane 0's thread leads: it runs the small
//! vector work (embedding, norms, residuals) and opens each layer's four products as jobs on the
//! crew: the input vector is published in a buffer of atomics and the work is cut into chunks
//! (row ranges) that the leader and the workers (lanes 1..G, spinning between jobs) claim with a
//! compare-and-swap; outputs come back through a second atomic buffer, biases added (and GELU
//! applied) by the member that computed the chunk. The first job of a layer joins the
//! query/key/value product and attention: its first items are chunks of the product, each
//! holding a group of heads' rows, and its last items are the groups' attention, which a member
//! can take as soon as that group's chunk is done: it stores the group's keys and values in the
//! cache and attends. So a layer needs four hand-offs, not five, and one member's attention
//! (cache reads) overlaps the other's last weight reads. Each group's cache sits behind its own
//! `RwLock`, which only the member working on that group takes in decode (for writing). Claiming
//! is dynamic, so a worker that is descheduled on a busy host only costs the chunk it holds, and
//! the last chunks of a product are smaller than the first, so the member that finishes first
//! waits little. Every row is computed by the same kernel call on the same chunk whatever G is
//! (one thread runs the chunks in a loop), so logits are bit-identical for any thread count (a
//! test checks it). Evidence for the job and chunk shapes: README § Runtime kernel decisions.
//!
//! The KV cache is one (L, T, Hg, D) block of keys and one of values per group of Hg heads, so
//! attending a group reads two long contiguous runs. Prefill stores a chunk's keys and values,
//! then its tokens' attention runs in parallel, each member on a run of tokens (reading every
//! group's cache).

mod batch;
mod crew;
mod decode;
mod family;
mod family_prefill;
mod gqa;
mod kv;
mod prefill;
#[cfg(test)]
mod ring_tests;
mod rope;

pub use self::batch::{Batch, BatchOptions, Event, Next};
use self::crew::{Crew, MAX_CHUNK_ROWS};
use self::kv::{Kv, KvLayout};
use self::rope::RopeTables;
use crate::error::RuntimeError;
use crate::kernels::geometry::packed_len;
use crate::kernels::{Kernels, Q8_BLOCK};
use crate::model::{Mat, Model};
use crate::sampler::{Sampler, Sampling};
use std::ops::ControlFlow;

/// Element type of the KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDtype {
    /// The default: [`KvDtype::F32`] for a model whose matrices are f32, [`KvDtype::F16`] for f16
    /// and int8 ones. Their weights' own rounding is far larger than the cache's, which stays
    /// within the same tested bounds (README § Accuracy contracts); and a decode step reads the
    /// cache besides the weights, so a smaller cache means fewer bytes per token (compare
    /// `ember bench --kv f32` with `--kv f16` at a long `--prompt-tokens`). llama.cpp's default
    /// cache is f16 too.
    Auto,
    /// 4 bytes per element: exact.
    F32,
    /// 2 bytes per element: half the memory, a small rounding of keys and values.
    F16,
    /// 1.125 bytes per element: each row of D quantized to int8 in blocks of 32 with one f32
    /// scale per block (as llama.cpp's `q8_0` cache, whose scales are f16), and queries
    /// quantized the same way for the scores (exact integer dot products per block). 56 % of
    /// f16's memory; for long contexts and many slots (`ember serve --kv int8`). Its effect on
    /// perplexity is measured in README § Serving.
    Int8,
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

/// Per-token widths of the activation buffers, for any family (GPT-2: Wqkv = 3C, Wa = C,
/// Wf = 4C, no up rows).
#[derive(Clone, Copy, Debug)]
struct Widths {
    c: usize,
    /// Wqkv: a token's query, key and value rows (3C; H·D + 2·Hkv·D).
    qkv: usize,
    /// Wa: a token's attention output (C; H·D).
    att: usize,
    /// Wf: the MLP's hidden row and the widest product input (4C; max(F, H·D, C)).
    ff: usize,
    /// A gated MLP's up rows (0 for GPT-2; F).
    up: usize,
    /// Hkv·D: a family's key (or value) row.
    kv: usize,
}

impl Widths {
    fn of(m: &Model<'_>) -> Widths {
        let cfg = m.config();
        let c = cfg.dim;
        if m.is_gpt2() {
            return Widths {
                c,
                qkv: 3 * c,
                att: c,
                ff: 4 * c,
                up: 0,
                kv: c,
            };
        }
        Widths {
            c,
            qkv: cfg.q_dim() + 2 * cfg.kv_dim(),
            att: cfg.q_dim().max(c),
            ff: cfg.ffn_dim.max(cfg.q_dim()).max(c),
            up: cfg.ffn_dim,
            kv: cfg.kv_dim(),
        }
    }
}

/// Activation buffers for one token (decode) or one chunk of N tokens (prefill; a family's
/// chunk keeps `qkv`, `att`, `up` and `out` inside `ff`: [`Buffers::family_chunk`]).
#[derive(Debug)]
struct Buffers {
    x: Vec<f32>,      // (N, C) residual stream
    xn: Vec<f32>,     // (N, C) normalised input of a sublayer
    qkv: Vec<f32>,    // (N, Wqkv)
    att: Vec<f32>,    // (N, Wa) attention output before the projection
    ff: Vec<f32>,     // (N, Wf)
    up: Vec<f32>,     // (N, F) a gated MLP's up rows (families only)
    out: Vec<f32>,    // (N, C) sublayer output
    scores: Vec<f32>, // (Hg·T) attention weights of a head group, or one chunk's rows (lanes only)
    xq: Vec<i8>,      // (Wf) a Q8 product's input quantized (decode lanes only)
    xd: Vec<f32>,     // (Wf / 32) its block scales
    gqa: Vec<f32>,    // (2·Hkv·D) a family's gathered queries and outputs of one KV group
}

impl Buffers {
    fn new(n: usize, w: Widths, t: usize) -> Buffers {
        Buffers {
            x: vec![0.0; n * w.c],
            xn: vec![0.0; n * w.c],
            qkv: vec![0.0; n * w.qkv],
            att: vec![0.0; n * w.att],
            ff: vec![0.0; n * w.ff],
            up: vec![0.0; n * w.up],
            out: vec![0.0; n * w.c],
            scores: vec![0.0; t.max(MAX_CHUNK_ROWS)],
            xq: vec![0; w.ff],
            xd: vec![0.0; w.ff.div_ceil(Q8_BLOCK)],
            gqa: vec![0.0; if w.up > 0 { 2 * w.kv } else { 0 }],
        }
    }

    /// A family's prefill chunk of N tokens. The attention's buffers (queries, keys and values,
    /// the attention output, then its projection over the used-up queries, keys and values) and
    /// the MLP's (the gated rows h (N, F), a part of P rows of gate and of up at a time, then the
    /// down projection over the used-up parts) are never live at once, so all of them live in
    /// `ff`, (N, max(max(Wqkv, C) + H·D, F + max(2P, C))), and `qkv`, `att`, `up` and `out` stay
    /// empty (`family_chunk` cuts `ff`). At Llama-3.2-1B's shapes and N = 128 that is 5 MiB
    /// resident where separate buffers took 11.5, at Qwen3-0.6B's 3 MiB where they took 6.5.
    fn family_chunk(n: usize, w: Widths) -> Buffers {
        let q = w.qkv - 2 * w.kv;
        let p = family_prefill::mlp_part_rows(w.up);
        let arena = (w.qkv.max(w.c) + q).max(w.up + (2 * p).max(w.c));
        Buffers {
            x: vec![0.0; n * w.c],
            xn: vec![0.0; n * w.c],
            qkv: Vec::new(),
            att: Vec::new(),
            ff: vec![0.0; n * arena],
            up: Vec::new(),
            out: Vec::new(),
            scores: vec![0.0; MAX_CHUNK_ROWS],
            xq: Vec::new(),
            xd: Vec::new(),
            gqa: vec![0.0; 2 * w.kv],
        }
    }
}

/// What one forward pass (a decode token or a prefill chunk) reads from its session, borrowed for
/// that pass and shared by every thread working on it; each thread's own buffers go beside it.
#[derive(Clone, Copy)]
struct Ctx<'s> {
    k: Kernels,
    m: &'s Model<'s>,
    kv: &'s Kv,
    crew: &'s Crew,
    rope: &'s RopeTables,
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
    kv: Kv,
    /// Rotary cos/sin tables for every position of the context (empty for GPT-2).
    rope: RopeTables,
    lanes: Vec<Buffers>, // G × (N = 1): one per decode crew member
    crew: Crew,
    chunk: Buffers, // N = prefill_chunk
    products: prefill::ProductBuffers,
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
        Session::build(model, options, true)
    }

    /// [`Session::new`]; `ring`: hold sliding-window layers' keys and values in rings (else every
    /// layer keeps all T positions, as the ring's tests compare with).
    fn build(
        model: &'m Model<'a>,
        options: &SessionOptions,
        ring: bool,
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
            Kernels::from_env().map_err(|e| RuntimeError::BadOption {
                option: "EMBER_KERNELS",
                reason: e.to_string(),
            })?
        }
        .with_threads(threads);
        let (c, l) = (cfg.dim, cfg.n_layers);
        let g = kernels.threads();
        // The cache holds key/value heads only (Hkv = H for GPT-2), D wide.
        let layout = if model.is_gpt2() {
            KvLayout::new(l, cfg.n_heads, context, c / cfg.n_heads)
        } else {
            KvLayout::new(l, cfg.n_kv_heads, context, cfg.head_dim)
        };
        let chunk = options.prefill_chunk.min(context);
        let layout = match cfg.sliding {
            Some(s) if ring => layout.with_window(s.window, s.every, chunk),
            _ => layout,
        };
        let kv_dtype = options.kv_dtype.resolve(model);
        if kv_dtype == KvDtype::Int8 && layout.per_group * layout.d > kv::MAX_Q8_QUERY {
            return Err(RuntimeError::BadOption {
                option: "kv_dtype",
                reason: format!(
                    "an int8 KV cache holds at most {} elements of a head group; this model's \
                     groups hold {} (use f16)",
                    kv::MAX_Q8_QUERY,
                    layout.per_group * layout.d
                ),
            });
        }
        let kv = Kv::new(layout, kv_dtype, kernels);
        let w = Widths::of(model);
        // The widest input of a prefill product: C, H·D (out) or F (down).
        let q8_cols = cfg.dim.max(cfg.q_dim()).max(w.ff);
        Ok(Session {
            model,
            kernels,
            #[cfg(feature = "parallel")]
            pool,
            context,
            prefill_chunk: chunk,
            tokens: Vec::with_capacity(context),
            kept: Vec::with_capacity(context),
            // From the metadata: building the tokenizer (megabytes of tables for today's
            // vocabularies) is left to those who encode or decode text.
            eot: emberlm_formats::meta::get_special_id(
                model.header(),
                emberlm_formats::tokenizer::ENDOFTEXT,
            ),
            lanes: (0..g)
                .map(|_| Buffers::new(1, w, kv.layout.per_group * context))
                .collect(),
            crew: Crew::new(g, w.ff, model.n_outputs().max(w.ff), kv.layout.groups),
            rope: RopeTables::new(cfg, context),
            kv,
            chunk: if model.is_gpt2() {
                Buffers::new(chunk, w, 0)
            } else {
                Buffers::family_chunk(chunk, w)
            },
            products: prefill::ProductBuffers::new(
                chunk,
                q8_cols,
                packed_len(chunk, w.ff),
                // Rows of the widest product: a family's are H·D, C or a part of the MLP's F.
                if model.is_gpt2() {
                    chunk * w.ff.max(w.qkv)
                } else {
                    chunk
                        * (w.qkv - 2 * w.kv)
                            .max(w.c)
                            .max(family_prefill::mlp_part_rows(w.up))
                },
                g,
            ),
            logits: vec![0.0; model.n_outputs()],
            sampler: Sampler::new(model.n_outputs(), 0),
        })
    }

    /// The kernels in use (`avx2`, `neon`, `reference`).
    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// Bytes the KV cache holds (keys and values of every layer; a sliding-window layer holds
    /// a ring of about twice its window plus a prefill chunk instead of the whole context).
    pub fn kv_cache_bytes(&self) -> usize {
        self.kv.bytes()
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
}

/// x (C) = `tok_emb[token] + pos_emb[pos]` (GPT-2), or `tok_emb[token] · embed_scale` (the
/// other families; the product in f32, as Gemma's scaled embedding); `tmp` (C) is scratch.
fn embed(m: &Model<'_>, token: u32, pos: usize, x: &mut [f32], tmp: &mut [f32]) {
    m.tok_emb().row(token as usize, x);
    match m.pos_emb() {
        Some(p) => {
            p.row(pos, tmp);
            for (a, b) in x.iter_mut().zip(tmp.iter()) {
                *a += *b;
            }
        }
        None => {
            let s = m.config().embed_scale;
            if s != 1.0 {
                x.iter_mut().for_each(|v| *v *= s);
            }
        }
    }
}
