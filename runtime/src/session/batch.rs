//! Batched decoding: B sequences advanced together, each weight matrix read once per step for
//! all of them ([`Batch`]).
//!
//! Letters: B slots (sequences), G threads, V vocabulary, C embedding dim, R a product's rows,
//! T a slot's context, Hg heads of one KV group.
//!
//! Each slot is a whole [`Session`] (its own KV cache, buffers and sampler, all allocated once
//! in [`Batch::new`]), so a slot's prompt goes through the session's own prefill, cut into
//! chunks of `prefill_chunk` tokens that are interleaved with the running decodes (one chunk per
//! [`Batch::step`]), and at the same cuts as [`Session::prefill`] makes. Decode is this module's:
//! each product's inputs are gathered from the active slots into one (B, W) buffer (and
//! quantized by the same call as the single path for int8 and int4 weights), then its weight
//! matrix is cut into the row chunks single-sequence decode uses ([`Chunks`]; with one thread,
//! not cut) and each chunk is
//! multiplied by all B vectors in one call of [`Kernels::matvec_multi_rows`], which loads each
//! weight into registers once for a group of vectors and gives every vector the bits of the
//! kernel [`Session::step`] calls on the same chunk. So the weights are read from memory once
//! per step, and every sequence's arithmetic is unchanged: its logits are bit-identical to a lone
//! session's (tests/batch.rs).
//!
//! Threads: the G members claim chunks (then attention items, one per slot and KV group) from
//! an atomic counter; results come back through a (B, R) buffer of atomics, copied into each
//! slot's buffers by the calling thread (with one thread, straight from its lane's outputs). No
//! `unsafe`, no allocation per step.

use super::crew::{Chunks, MAX_CHUNK_ROWS, fork};
use super::gqa::{attend_group, group_rows, norm_rotate, store_token};
use super::{Buffers, Ctx, Session, SessionOptions, Widths, embed};
use crate::error::RuntimeError;
use crate::kernels::{Epilogue, Kernels, Mat, Q8_BLOCK, Vectors, multi_scratch_len};
use crate::model::Model;
use crate::sampler::Sampling;
use emberlm_formats::config::{LAYERNORM_EPS, Mlp};
use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// Options of a [`Batch`].
#[derive(Clone, Debug)]
pub struct BatchOptions {
    /// Sequences advanced together, B (1..=256).
    pub slots: usize,
    /// Each slot's session: `context` is each slot's, `threads` the batch's (G), and
    /// `prefill_chunk` the prompt tokens prefilled per [`Batch::step`].
    pub session: SessionOptions,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            slots: 4,
            session: SessionOptions::default(),
        }
    }
}

/// What a [`Batch::step`] produced for one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The slot's next token, sampled from [`Batch::logits`]; it is fed on the next step.
    Token(u32),
    /// The slot's cache is full: the slot has left the batch.
    ContextFull,
}

/// One slot's outcome of a [`Batch::step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The slot (from [`Batch::join`]).
    pub slot: usize,
    /// What happened.
    pub next: Next,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    /// Prompt tokens `..done` are in the cache.
    Prefill {
        done: usize,
    },
    /// `next` was sampled and is fed on the next step.
    Decode {
        next: u32,
    },
}

struct Slot<'m, 'a> {
    s: Session<'m, 'a>,
    state: State,
    /// (T) the prompt, copied at join.
    prompt: Vec<u32>,
    sampling: Sampling,
    /// Join order: prefill goes to the oldest joined slot first.
    ticket: u64,
}

impl Slot<'_, '_> {
    /// The next token from the session's logits by the slot's sampling.
    fn sample(&mut self) -> u32 {
        self.s
            .sampler
            .sample(&self.s.logits, &self.s.tokens, &self.sampling)
    }
}

/// B sequences decoded together (see the module docs). Every buffer is allocated in
/// [`Batch::new`]; [`Batch::join`], [`Batch::leave`] and [`Batch::step`] allocate nothing (run
/// a loop of steps inside [`Batch::in_pool`] to avoid the occasional allocation of entering a
/// thread pool from outside, as with [`Session::in_pool`]).
pub struct Batch<'m, 'a> {
    model: &'m Model<'a>,
    kernels: Kernels,
    #[cfg(feature = "parallel")]
    pool: Option<rayon::ThreadPool>,
    slots: Vec<Slot<'m, 'a>>,
    /// G per-thread scratch buffers (chunk outputs, up rows, attention scores).
    lanes: Vec<Lane>,
    /// (B, Wf) the active slots' inputs of the current product, in f32 ...
    xs: Vec<f32>,
    /// ... and quantized for int8 / int4 weights: (B, Wf) quants ...
    xqs: Vec<i8>,
    /// ... and (B, Wf / 32) block scales.
    xds: Vec<f32>,
    /// (B, Wa) attention's outputs, written by whichever member attended each (slot, group).
    shared: Vec<AtomicU32>,
    /// (B) slots decoded in this step.
    active: Vec<usize>,
    /// (B) this step's events.
    events: Vec<Event>,
    tickets: u64,
}

impl std::fmt::Debug for Batch<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("kernels", &self.kernels.name())
            .field("slots", &self.slots.len())
            .field("busy", &self.busy())
            .finish()
    }
}

impl<'m, 'a> Batch<'m, 'a> {
    /// Allocates B slots (each a [`Session`]) and the batch's buffers once.
    pub fn new(model: &'m Model<'a>, options: &BatchOptions) -> Result<Self, RuntimeError> {
        if options.slots == 0 || options.slots > 256 {
            return Err(RuntimeError::BadOption {
                option: "slots",
                reason: format!("{} must be in 1..=256", options.slots),
            });
        }
        let slots = (0..options.slots)
            .map(|_| {
                let s = Session::new(model, &options.session)?;
                Ok(Slot {
                    prompt: Vec::with_capacity(s.context),
                    s,
                    state: State::Free,
                    sampling: Sampling::default(),
                    ticket: 0,
                })
            })
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        let kernels = slots[0].s.kernels;
        let g = kernels.threads();
        #[cfg(feature = "parallel")]
        let pool = if g > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(g)
                    .build()
                    .map_err(|e| RuntimeError::BadOption {
                        option: "threads",
                        reason: e.to_string(),
                    })?,
            )
        } else {
            None
        };
        let w = Widths::of(model);
        let s0 = &slots[0].s;
        let scores = s0.kv.layout.per_group * s0.context;
        let r = model.n_outputs().max(w.qkv).max(w.ff).max(w.c);
        let b = options.slots;
        // One thread computes each product in one call (see `product`): its lane holds whole
        // products' outputs; G > 1 lanes hold a chunk's.
        let up_rows = if g <= 1 { w.up } else { MAX_CHUNK_ROWS };
        // Chunks start at multiples of 16 rows, and the query/key/value parts add three per
        // head group: a bound on the chunks one lane can take in a product.
        let max_chunks = r / 16 + 2 + 3 * s0.kv.layout.groups;
        Ok(Batch {
            model,
            kernels,
            #[cfg(feature = "parallel")]
            pool,
            lanes: (0..g)
                .map(|_| Lane {
                    buf: Buffers::new(1, w, scores),
                    y: vec![0.0; b * r],
                    done: Vec::with_capacity(if g > 1 { max_chunks } else { 0 }),
                    up: vec![0.0; if w.up > 0 { b * up_rows } else { 0 }],
                    scratch: vec![0; multi_scratch_len(b, w.ff)],
                })
                .collect(),
            xs: vec![0.0; b * w.ff],
            xqs: vec![0; b * w.ff],
            xds: vec![0.0; b * w.ff.div_ceil(Q8_BLOCK)],
            // Attention outputs only (products go through the lanes' `y`).
            shared: (0..b * w.att).map(|_| AtomicU32::new(0)).collect(),
            active: Vec::with_capacity(b),
            events: Vec::with_capacity(b),
            slots,
            tickets: 0,
        })
    }

    /// Slots, B.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Slots holding a sequence.
    pub fn busy(&self) -> usize {
        self.slots.iter().filter(|s| s.state != State::Free).count()
    }

    /// Each slot's context length T.
    pub fn context(&self) -> usize {
        self.slots[0].s.context
    }

    /// The kernels in use.
    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// Starts a sequence with `prompt` in a free slot and returns the slot, or `Ok(None)` when
    /// every slot is busy. The prompt is prefilled by the following steps, a chunk per step;
    /// the step that finishes it samples the first token. Allocates nothing.
    pub fn join(
        &mut self,
        prompt: &[u32],
        sampling: &Sampling,
    ) -> Result<Option<usize>, RuntimeError> {
        sampling.validate(self.model.n_outputs())?;
        if prompt.is_empty() {
            return Err(RuntimeError::EmptyPrompt);
        }
        let slot = &self.slots[0].s;
        slot.check_tokens(prompt)?;
        if prompt.len() > slot.context {
            return Err(RuntimeError::ContextFull {
                context: slot.context,
            });
        }
        let Some(i) = self.slots.iter().position(|s| s.state == State::Free) else {
            return Ok(None);
        };
        self.tickets += 1;
        let slot = &mut self.slots[i];
        slot.s.reset();
        slot.prompt.clear();
        slot.prompt.extend_from_slice(prompt);
        slot.sampling.clone_from(sampling);
        slot.s.sampler.reseed(sampling.seed);
        slot.state = State::Prefill { done: 0 };
        slot.ticket = self.tickets;
        Ok(Some(i))
    }

    /// Ends slot `slot`'s sequence (a no-op for a free slot); the slot is free for the next
    /// [`Batch::join`].
    pub fn leave(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.state = State::Free;
        }
    }

    /// Whether `slot` holds a sequence.
    pub fn is_busy(&self, slot: usize) -> bool {
        self.slots.get(slot).is_some_and(|s| s.state != State::Free)
    }

    /// The logits from which `slot`'s latest token was sampled (V).
    pub fn logits(&self, slot: usize) -> &[f32] {
        &self.slots[slot].s.logits
    }

    /// The tokens in `slot`'s cache (its prompt, then the tokens fed so far).
    pub fn tokens(&self, slot: usize) -> &[u32] {
        &self.slots[slot].s.tokens
    }

    /// Prompt tokens of `slot` not yet prefilled.
    pub fn pending_prompt(&self, slot: usize) -> usize {
        match self.slots[slot].state {
            State::Prefill { done } => self.slots[slot].prompt.len() - done,
            _ => 0,
        }
    }

    /// One step: every decoding slot feeds its pending token (one pass over the weights for
    /// all of them) and samples the next; then the oldest joined slot still prefilling feeds
    /// one chunk of its prompt, and samples its first token if that was the last chunk.
    /// Returns the step's events (empty when no slot is busy). Allocates nothing.
    pub fn step(&mut self) -> &[Event] {
        self.step_masked(&mut |_, _| {})
    }

    /// [`Batch::step`], with `mask(slot, logits)` called on each slot's logits (V) before its
    /// token is sampled: a constraint sets the logits of forbidden tokens to −∞ (structured
    /// output). [`Batch::logits`] then returns the masked logits.
    pub fn step_masked(&mut self, mask: &mut dyn FnMut(usize, &mut [f32])) -> &[Event] {
        self.events.clear();
        self.active.clear();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let State::Decode { .. } = slot.state {
                if slot.s.tokens.len() >= slot.s.context {
                    slot.state = State::Free;
                    self.events.push(Event {
                        slot: i,
                        next: Next::ContextFull,
                    });
                } else {
                    self.active.push(i);
                }
            }
        }
        if !self.active.is_empty() {
            self.in_pool(|b| b.decode());
            for &i in &self.active {
                let slot = &mut self.slots[i];
                mask(i, &mut slot.s.logits);
                let t = slot.sample();
                slot.state = State::Decode { next: t };
                self.events.push(Event {
                    slot: i,
                    next: Next::Token(t),
                });
            }
        }
        let oldest = (self.slots.iter().enumerate())
            .filter(|(_, s)| matches!(s.state, State::Prefill { .. }))
            .min_by_key(|(_, s)| s.ticket)
            .map(|(i, _)| i);
        if let Some(i) = oldest {
            let slot = &mut self.slots[i];
            let State::Prefill { done } = slot.state else {
                unreachable!("chosen as prefilling")
            };
            let end = (done + slot.s.prefill_chunk).min(slot.prompt.len());
            // Validated at join: in the vocabulary, within the context.
            let fed = slot.s.prefill(&slot.prompt[done..end]);
            debug_assert!(fed.is_ok());
            if end < slot.prompt.len() {
                slot.state = State::Prefill { done: end };
            } else {
                mask(i, &mut slot.s.logits);
                let t = slot.sample();
                slot.state = State::Decode { next: t };
                self.events.push(Event {
                    slot: i,
                    next: Next::Token(t),
                });
            }
        }
        &self.events
    }

    /// Runs `f` inside the batch's thread pool (see [`Session::in_pool`]).
    pub fn in_pool<R: Send>(&mut self, f: impl FnOnce(&mut Self) -> R + Send) -> R {
        #[cfg(feature = "parallel")]
        if let Some(pool) = self.pool.take() {
            let r = pool.install(|| f(self));
            self.pool = Some(pool);
            return r;
        }
        f(self)
    }

    /// Feeds every active slot's pending token: logits into each slot's session.
    fn decode(&mut self) {
        let m = self.model;
        let (k, cfg) = (self.kernels, *m.config());
        for &i in &self.active {
            let slot = &mut self.slots[i];
            let State::Decode { next } = slot.state else {
                continue;
            };
            let pos = slot.s.tokens.len();
            let b = &mut slot.s.lanes[0];
            embed(m, next, pos, &mut b.x, &mut b.xn);
        }
        let gpt2 = m.is_gpt2();
        for l in 0..cfg.n_layers {
            if gpt2 {
                let w = m.layer(l);
                self.each(|b| k.layernorm(&b.x, w.norm1.0, w.norm1.1, &mut b.xn, LAYERNORM_EPS));
                self.qkv_attend(l);
                self.product(Job::plain(w.proj_w, Some(w.proj_b)), Buf::Att, Buf::Out);
                self.each(|b| k.add(&mut b.x, &b.out));
                self.each(|b| k.layernorm(&b.x, w.norm2.0, w.norm2.1, &mut b.xn, LAYERNORM_EPS));
                let fc = Job {
                    ep: Epilogue {
                        bias: Some(w.fc_b),
                        gelu: true,
                    },
                    ..Job::plain(w.fc_w, None)
                };
                self.product(fc, Buf::Xn, Buf::Ff);
                self.product(Job::plain(w.fcp_w, Some(w.fcp_b)), Buf::Ff, Buf::Out);
                self.each(|b| k.add(&mut b.x, &b.out));
            } else {
                self.family_layer(l);
            }
        }
        if gpt2 {
            let (scale, shift) = m.final_norm();
            self.each(|b| k.layernorm(&b.x, scale, shift, &mut b.xn, LAYERNORM_EPS));
        } else {
            let scale = m.final_norm().0;
            self.each(|b| k.rmsnorm(&b.x, scale, &mut b.xn, cfg.norm_eps));
        }
        let (head, bias) = m.head();
        self.product(Job::plain(head, bias), Buf::Xn, Buf::Logits);
        for &i in &self.active {
            let slot = &mut self.slots[i];
            if let State::Decode { next } = slot.state {
                slot.s.tokens.push(next);
            }
        }
    }

    /// One block of a Llama-style family for every active slot (as `Leader::family_token`).
    fn family_layer(&mut self, l: usize) {
        let m = self.model;
        let (k, cfg) = (self.kernels, *m.config());
        let w = m.block(l);
        let eps = cfg.norm_eps;
        self.each(|b| k.rmsnorm(&b.x, w.attn_norm, &mut b.xn, eps));
        self.product(Job::plain(w.q, w.q_bias), Buf::Xn, Buf::Q);
        self.product(Job::plain(w.k, w.k_bias), Buf::Xn, Buf::K);
        self.product(Job::plain(w.v, w.v_bias), Buf::Xn, Buf::V);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        for &i in &self.active {
            let s = &mut self.slots[i].s;
            let pos = s.tokens.len();
            let cx = Ctx {
                k,
                m,
                kv: &s.kv,
                crew: &s.crew,
                rope: &s.rope,
            };
            let b = &mut s.lanes[0];
            let (q, rest) = b.qkv.split_at_mut(qd);
            let (key, rest) = rest.split_at_mut(kvd);
            let value = &mut rest[..kvd];
            norm_rotate(&cx, &w, l, pos, q, key, &mut b.gqa);
            store_token(&cx, l, pos, key, value);
        }
        // Attention: one item per (slot, KV group), each group's rows computed by the same
        // calls as `attend_token` makes.
        let groups = self.slots[0].s.kv.layout.groups;
        let n = self.active.len() * groups;
        let (slots, active, shared) = (&self.slots, &self.active, &self.shared);
        run_items(&mut self.lanes, n, &|i, lane| {
            let (slot, g) = (active[i / groups], i % groups);
            let s = &slots[slot].s;
            let cx = Ctx {
                k,
                m,
                kv: &s.kv,
                crew: &s.crew,
                rope: &s.rope,
            };
            let rows = group_rows(&cx, g);
            let lane = &mut lane.buf;
            let out = &mut lane.att[..rows.len()];
            let q = &s.lanes[0].qkv[..qd];
            let pos = s.tokens.len();
            attend_group(&cx, (l, pos), g, q, out, &mut lane.scores, &mut lane.gqa);
            put(shared, i / groups * qd + rows.start, out);
        });
        self.gather(Buf::Att);
        self.product(Job::plain(w.out, None), Buf::Att, Buf::Out);
        self.each(|b| residual_b(&k, m, w.attn_post_norm, b));
        self.each(|b| k.rmsnorm(&b.x, w.mlp_norm, &mut b.xn, eps));
        let gate_up = Job {
            up: Some((w.up, cfg.mlp)),
            ..Job::plain(w.gate, None)
        };
        self.product(gate_up, Buf::Xn, Buf::Ff);
        self.product(Job::plain(w.down, None), Buf::Ff, Buf::Out);
        self.each(|b| residual_b(&k, m, w.mlp_post_norm, b));
    }

    /// GPT-2's query/key/value product (per head group, as decode's `AttnJob::project`) and
    /// attention of layer l for every active slot: xn → att.
    fn qkv_attend(&mut self, l: usize) {
        let (k, m) = (self.kernels, self.model);
        let w = m.layer(l);
        let layout = self.slots[0].s.kv.layout;
        let (c, d, groups) = (layout.heads * layout.d, layout.d, layout.groups);
        let part = move |p: usize, g: usize| -> Range<usize> {
            let hs = layout.group(g);
            p * c + hs.start * d..p * c + hs.end * d
        };
        self.inputs(&w.qkv_w, Buf::Xn);
        let nv = self.active.len();
        let x = vectors(&self.xs, &self.xqs, &self.xds, (&w.qkv_w, nv, c));
        if let [lane] = &mut self.lanes[..] {
            // One thread: the whole (3C, C) matrix in one call, as `product` does (the head
            // groups' parts only spread the work over threads; a row's sum is the same either
            // way, and the bias is added element by element).
            let y = &mut lane.y[..nv * 3 * c];
            k.matvec_multi_rows(w.qkv_w, x, y, 0, &mut lane.scratch);
            for (y, &i) in y.chunks_exact_mut(3 * c).zip(&self.active) {
                if let Some(bias) = w.qkv_b {
                    k.add(y, bias);
                }
                output(&mut self.slots[i].s, m, Buf::Qkv).copy_from_slice(y);
            }
        } else {
            self.lanes.iter_mut().for_each(|l| l.done.clear());
            run_items(&mut self.lanes, groups, &|g, lane| {
                for p in 0..3 {
                    let r = part(p, g);
                    let n = r.len();
                    let off = lane.done.last().map_or(0, |&(_, n, o)| o + nv * n);
                    let y = &mut lane.y[off..off + nv * n];
                    k.matvec_multi_rows(w.qkv_w, x, y, r.start, &mut lane.scratch);
                    if let Some(bias) = w.qkv_b {
                        for y in y.chunks_exact_mut(n) {
                            k.add(y, &bias[r.clone()]);
                        }
                    }
                    lane.done.push((r.start, n, off));
                }
            });
            self.collect(Buf::Qkv);
        }
        let n = self.active.len() * groups;
        let (slots, active, shared) = (&self.slots, &self.active, &self.shared);
        run_items(&mut self.lanes, n, &|i, lane| {
            let (slot, g) = (active[i / groups], i % groups);
            let s = &slots[slot].s;
            let pos = s.tokens.len();
            let qkv = &s.lanes[0].qkv;
            let hg = layout.group(g).len();
            let lane = &mut lane.buf;
            let out = &mut lane.att[..hg * d];
            let mut cache = s.kv.write(g);
            cache.store(layout.at(l, pos, hg), &qkv[part(1, g)], &qkv[part(2, g)]);
            let scores = &mut lane.scores[..hg * (pos + 1)];
            cache.attend(&k, hg, &qkv[part(0, g)], layout.at(l, 0, hg), scores, out);
            put(shared, i / groups * c + part(0, g).start, out);
        });
        self.gather(Buf::Att);
    }

    /// `f` on each active slot's buffers, in turn on this thread.
    fn each(&mut self, mut f: impl FnMut(&mut Buffers)) {
        for &i in &self.active {
            f(&mut self.slots[i].s.lanes[0]);
        }
    }

    /// Copies each active slot's buffer `x` into its row of `xs` (B, W) and, when `w` is Q8 or
    /// Q4, quantizes it into `xqs`, `xds` by the single path's own call.
    fn inputs(&mut self, w: &Mat<'_>, x: Buf) {
        let k = self.kernels;
        let n = x.len(self.model);
        let nb = n.div_ceil(Q8_BLOCK);
        for (j, &i) in self.active.iter().enumerate() {
            let b = &self.slots[i].s.lanes[0];
            let src = match x {
                Buf::Xn => &b.xn[..n],
                Buf::Att => &b.att[..n],
                _ => &b.ff[..n],
            };
            self.xs[j * n..(j + 1) * n].copy_from_slice(src);
            if let Mat::Q8(_) | Mat::Q4(_) | Mat::Q6(_) = w {
                let (q, d) = (&mut self.xqs[j * n..][..n], &mut self.xds[j * nb..][..nb]);
                k.quantize_q8(src, q, d);
            }
        }
    }

    /// y = W x for every active slot (`x` and `y` named buffers of its lane), chunk-major.
    fn product(&mut self, job: Job<'_>, x: Buf, y: Buf) {
        let k = self.kernels;
        let cols = x.len(self.model);
        let (rows, elem) = match job.w {
            Mat::F32(w) => (w.len() / cols.max(1), 4),
            Mat::F16(w) => (w.len() / cols.max(1), 2),
            Mat::Q8(w) => (w.rows(), 1),
            // Chunked as int8, as decode does.
            Mat::Q4(w) => (w.rows(), 1),
            Mat::Q6(w) => (w.rows(), 1),
        };
        self.inputs(&job.w, x);
        let chunks = Chunks::new(rows, cols, elem);
        let nv = self.active.len();
        let x = vectors(&self.xs, &self.xqs, &self.xds, (&job.w, nv, cols));
        // One thread: the whole matrix in one call, as `Session`'s decode does
        // (`Product::all`): a chunk's four row streams are short, and with nothing to balance
        // the cut only costs. Every row's sum is the same whatever the cut. The (B, R) outputs
        // are copied straight into the slots' buffers, not through `shared`.
        if let [lane] = &mut self.lanes[..] {
            let out = &mut lane.y[..nv * rows];
            k.matvec_multi_rows(job.w, x, out, 0, &mut lane.scratch);
            k.epilogue(job.ep, 0..rows, out);
            if let Some((w, act)) = job.up {
                let u = &mut lane.up[..nv * rows];
                k.matvec_multi_rows(w, x, u, 0, &mut lane.scratch);
                match act {
                    Mlp::GeGlu => k.gelu_mul(out, u),
                    _ => k.silu_mul(out, u),
                }
            }
            let m = self.model;
            for (o, &i) in out.chunks_exact(rows).zip(&self.active) {
                output(&mut self.slots[i].s, m, y).copy_from_slice(o);
            }
            return;
        }
        self.lanes.iter_mut().for_each(|l| l.done.clear());
        run_items(&mut self.lanes, chunks.count(), &|c, lane| {
            let r = chunks.range(c);
            let n = r.len();
            // (B, n): every active slot's outputs for the chunk's rows, after the lane's earlier
            // chunks. The epilogue and the gate's activation are elementwise, so applying them
            // to all slots at once gives each slot the bits of the single path.
            let off = lane.done.last().map_or(0, |&(_, n, o)| o + nv * n);
            let out = &mut lane.y[off..off + nv * n];
            k.matvec_multi_rows(job.w, x, out, r.start, &mut lane.scratch);
            k.epilogue(job.ep, r.clone(), out);
            if let Some((w, act)) = job.up {
                let u = &mut lane.up[..nv * n];
                k.matvec_multi_rows(w, x, u, r.start, &mut lane.scratch);
                match act {
                    Mlp::GeGlu => k.gelu_mul(out, u),
                    _ => k.silu_mul(out, u),
                }
            }
            lane.done.push((r.start, n, off));
        });
        self.collect(y);
    }

    /// Copies the chunks the lanes computed (their `done` lists) into each active slot's buffer
    /// `y`: plain copies of whole row runs, after the join that ended the product.
    fn collect(&mut self, y: Buf) {
        for lane in &self.lanes {
            for &(start, n, off) in &lane.done {
                for (j, &i) in self.active.iter().enumerate() {
                    let src = &lane.y[off + j * n..][..n];
                    output(&mut self.slots[i].s, self.model, y)[start..start + n]
                        .copy_from_slice(src);
                }
            }
        }
    }

    /// Copies each active slot's rows of the shared output (laid out (B, R) with R =
    /// `y`'s width) into its buffer `y`.
    fn gather(&mut self, y: Buf) {
        let n = y.len(self.model);
        for (j, &i) in self.active.iter().enumerate() {
            get(
                &self.shared,
                j * n,
                output(&mut self.slots[i].s, self.model, y),
            );
        }
    }
}

/// Slot session `s`'s buffer `y` as a product's output (`y`'s width).
fn output<'s>(s: &'s mut Session<'_, '_>, m: &Model<'_>, y: Buf) -> &'s mut [f32] {
    let n = y.len(m);
    let cfg = m.config();
    let b = &mut s.lanes[0];
    match y {
        Buf::Att => &mut b.att[..n],
        Buf::Out => &mut b.out[..n],
        Buf::Ff => &mut b.ff[..n],
        Buf::Qkv => &mut b.qkv[..n],
        Buf::Q => &mut b.qkv[..n],
        Buf::K => &mut b.qkv[cfg.q_dim()..][..n],
        Buf::V => &mut b.qkv[cfg.q_dim() + cfg.kv_dim()..][..n],
        Buf::Logits => &mut s.logits[..n],
        Buf::Xn => unreachable!("not a product output"),
    }
}

/// x += out after a family's optional post norm, on one slot's buffers: the same two calls as
/// `gqa::residual` (keep them in step; the parity tests check it).
fn residual_b(k: &Kernels, m: &Model<'_>, post: Option<&[f32]>, b: &mut Buffers) {
    if let Some(scale) = post {
        k.rmsnorm_in_place(&mut b.out, scale, &mut b.xn, m.config().norm_eps);
    }
    k.add(&mut b.x, &b.out);
}

/// One member thread's scratch.
struct Lane {
    /// Attention's buffers (`att`, `scores`, `gqa`).
    buf: Buffers,
    /// With one lane: (B, R) a whole product's outputs. With G > 1: the outputs of the chunks
    /// this lane computed in the current product, one (B, n) block after another, which the
    /// leader copies into the slots afterwards ([`Batch::collect`]); at most (B, R) in all.
    y: Vec<f32>,
    /// With G > 1: (first row, rows, offset in `y`) of each chunk this lane computed in the
    /// current product (capacity for every chunk, so pushing never allocates).
    done: Vec<(usize, usize, usize)>,
    /// (B, P) a gated MLP's up rows of the chunk (families only; with one lane, P up to F).
    up: Vec<f32>,
    /// The multi kernels' scratch ([`multi_scratch_len`] of B, Wf).
    scratch: Vec<u8>,
}

/// A product of the batch: W, its epilogue, and a gated MLP's up matrix and activation.
#[derive(Clone, Copy)]
struct Job<'w> {
    w: Mat<'w>,
    ep: Epilogue<'w>,
    up: Option<(Mat<'w>, Mlp)>,
}

impl<'w> Job<'w> {
    fn plain(w: Mat<'w>, bias: Option<&'w [f32]>) -> Self {
        Job {
            w,
            ep: Epilogue { bias, gelu: false },
            up: None,
        }
    }
}

/// A named buffer of a slot's lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Buf {
    Xn,
    /// (Wqkv) GPT-2's query, key and value rows.
    Qkv,
    /// A family's queries (H·D), keys and values (Hkv·D each) in `qkv`.
    Q,
    K,
    V,
    Att,
    Ff,
    Out,
    Logits,
}

impl Buf {
    /// The width of the buffer as a product's input or output.
    fn len(self, m: &Model<'_>) -> usize {
        let cfg = m.config();
        let gpt2 = m.is_gpt2();
        match self {
            Buf::Xn | Buf::Out => cfg.dim,
            Buf::Qkv => 3 * cfg.dim,
            Buf::Q => cfg.q_dim(),
            Buf::K | Buf::V => cfg.kv_dim(),
            Buf::Att if gpt2 => cfg.dim,
            Buf::Att => cfg.q_dim(),
            Buf::Ff if gpt2 => 4 * cfg.dim,
            Buf::Ff => cfg.ffn_dim,
            Buf::Logits => m.n_outputs(),
        }
    }
}

/// The B inputs gathered by [`Batch::inputs`] (each `cols` long) as the multi kernels take them
/// for `w`.
fn vectors<'s>(
    xs: &'s [f32],
    xqs: &'s [i8],
    xds: &'s [f32],
    (w, b, cols): (&Mat<'_>, usize, usize),
) -> Vectors<'s> {
    let nb = cols.div_ceil(Q8_BLOCK);
    let q = match w {
        Mat::Q8(_) | Mat::Q4(_) | Mat::Q6(_) => Some((&xqs[..b * cols], &xds[..b * nb])),
        _ => None,
    };
    Vectors {
        b,
        c: cols,
        x: &xs[..b * cols],
        q,
    }
}

fn put(shared: &[AtomicU32], at: usize, y: &[f32]) {
    for (o, v) in shared[at..at + y.len()].iter().zip(y) {
        o.store(v.to_bits(), Ordering::Relaxed);
    }
}

fn get(shared: &[AtomicU32], at: usize, y: &mut [f32]) {
    let n = y.len();
    for (v, o) in y.iter_mut().zip(&shared[at..at + n]) {
        *v = f32::from_bits(o.load(Ordering::Relaxed));
    }
}

/// Runs items 0..n, each once, on the G lanes' threads (claimed from a shared counter); with
/// one lane, in order on this thread. Returns when all are done (the join orders the shared
/// output's relaxed stores before the caller's loads).
fn run_items(lanes: &mut [Lane], n: usize, f: &(dyn Fn(usize, &mut Lane) + Sync)) {
    let next = AtomicUsize::new(0);
    run_lanes(lanes, n, &next, f);
}

fn run_lanes(
    lanes: &mut [Lane],
    n: usize,
    next: &AtomicUsize,
    f: &(dyn Fn(usize, &mut Lane) + Sync),
) {
    let Some((lane, rest)) = lanes.split_first_mut() else {
        return;
    };
    let mut work = move || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            f(i, lane);
        }
    };
    if rest.is_empty() || n <= 1 {
        work();
    } else {
        fork(work, || run_lanes(rest, n, next, f));
    }
}
