//! The KV cache: its layout by head group ([`KvLayout`]), its storage, and a group's attention.

use super::KvDtype;
use crate::kernels::{Kernels, Q8_BLOCK};
use half::{f16, slice::HalfFloatSliceExt};
use std::ops::Range;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

#[derive(Debug)]
enum KvCache {
    F32(Vec<f32>),
    F16(Vec<f16>),
    /// Quants, and one scale per block of 32 of each row of D (the last block of a row short
    /// when 32 does not divide D): row r's scales are `d[r·NBD .. (r + 1)·NBD]`.
    I8 {
        q: Vec<i8>,
        d: Vec<f32>,
    },
}

/// Queries of one group quantized for an int8 cache, at most this many elements (Hg·D); a
/// session checks its layout against it ([`Kv::new`]).
pub(super) const MAX_Q8_QUERY: usize = 1024;

/// One group of heads' keys and values, (L, T, Hg, D) each (see [`KvLayout`]).
#[derive(Debug)]
pub(super) struct GroupKv {
    k: KvCache,
    v: KvCache,
    /// D, the rows an int8 cache's blocks of 32 are cut within.
    d: usize,
    /// Quantizes an int8 cache's rows.
    kernels: Kernels,
}

impl GroupKv {
    /// Stores a position's keys and values (Hg·D each) at element `at` of both caches.
    pub(super) fn store(&mut self, at: usize, key: &[f32], value: &[f32]) {
        KvMut::of(&mut self.k).store(at, key, self.d, &self.kernels);
        KvMut::of(&mut self.v).store(at, value, self.d, &self.kernels);
    }

    /// Causal attention of a group of Hg = `heads` heads: queries q (Hg, D) against the group's
    /// keys and values from position 0, both (P, Hg, D) from element `from` of their caches;
    /// `scores` (Hg·P) is scratch; writes out (Hg, D).
    pub(super) fn attend(
        &self,
        k: &Kernels,
        heads: usize,
        q: &[f32],
        from: usize,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let d = q.len() / heads;
        self.attend_scaled(k, heads, q, from, scores, out, 1.0 / (d as f32).sqrt());
    }

    /// [`GroupKv::attend`] with the scores multiplied by `scale` (a family's `query_scale`),
    /// over the P = `scores.len() / heads` positions from element `from` (a sliding window
    /// starts later than position 0).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attend_scaled(
        &self,
        k: &Kernels,
        heads: usize,
        q: &[f32],
        from: usize,
        scores: &mut [f32],
        out: &mut [f32],
        scale: f32,
    ) {
        let len = scores.len() / heads * q.len(); // P·Hg·D
        // An int8 cache's scales of those rows.
        let nbd = self.d.div_ceil(Q8_BLOCK);
        let scales = from / self.d.max(1) * nbd..(from + len) / self.d.max(1) * nbd;
        match KvRef::of(&self.k) {
            KvRef::F32(c) => k.group_scores(&c[from..from + len], q, scores, heads),
            KvRef::F16(c) => k.group_scores_f16(&c[from..from + len], q, scores, heads),
            KvRef::I8(c, cd) => {
                // The queries quantized row by row, as the cache's rows are (checked against
                // MAX_Q8_QUERY when the cache was made).
                let mut qq = [0i8; MAX_Q8_QUERY];
                let mut qd = [0f32; MAX_Q8_QUERY];
                let (qq, qd) = (&mut qq[..q.len()], &mut qd[..heads * nbd]);
                k.quantize_q8_rows(q, self.d, qq, qd);
                let kv = (&c[from..from + len], &cd[scales.clone()]);
                k.group_scores_q8(kv, (qq, qd), scores, heads);
            }
        }
        let p = scores.len() / heads;
        for sj in scores.chunks_exact_mut(p) {
            sj.iter_mut().for_each(|s| *s *= scale);
            k.softmax(sj);
        }
        match KvRef::of(&self.v) {
            KvRef::F32(c) => k.group_weighted(scores, &c[from..from + len], out, heads),
            KvRef::F16(c) => k.group_weighted_f16(scores, &c[from..from + len], out, heads),
            KvRef::I8(c, cd) => {
                k.group_weighted_q8(scores, (&c[from..from + len], &cd[scales]), out, heads)
            }
        }
    }
}

/// The KV cache: every head group's keys and values, each group behind its own lock, and their
/// layout. In decode only the crew member working on a group takes its lock (for writing); in
/// prefill the leader writes a chunk's keys and values before the members read them.
#[derive(Debug)]
pub(super) struct Kv {
    pub(super) layout: KvLayout,
    groups: Vec<RwLock<GroupKv>>,
    /// The element type (resolved).
    dtype: KvDtype,
}

impl Kv {
    /// A zeroed cache of `dtype` elements ([`KvDtype::Auto`] must be resolved first); `kernels`
    /// quantize an int8 cache's rows. An int8 cache needs Hg·D ≤ [`MAX_Q8_QUERY`] (the session
    /// checks it first).
    pub(super) fn new(layout: KvLayout, dtype: KvDtype, kernels: Kernels) -> Kv {
        let nbd = layout.d.div_ceil(Q8_BLOCK);
        let cache = |len: usize| match dtype {
            KvDtype::F32 | KvDtype::Auto => KvCache::F32(vec![0.0; len]),
            // Zeroed memory from the allocator, as `vec![0.0; n]` gets for f32: the pages are
            // only backed once written, so an unused context costs no resident memory.
            // (`vec![f16::ZERO; n]` would write every element.)
            KvDtype::F16 => KvCache::F16(bytemuck::zeroed_vec(len)),
            KvDtype::Int8 => KvCache::I8 {
                q: vec![0; len],
                d: vec![0.0; len / layout.d.max(1) * nbd],
            },
        };
        let groups = (0..layout.groups)
            .map(|g| {
                let len = layout.group_len(g);
                RwLock::new(GroupKv {
                    k: cache(len),
                    v: cache(len),
                    d: layout.d,
                    kernels,
                })
            })
            .collect();
        Kv {
            layout,
            groups,
            dtype,
        }
    }

    /// Bytes of every group's keys and values (an int8 cache's scales included).
    pub(super) fn bytes(&self) -> usize {
        let slots: usize = (0..self.layout.groups)
            .map(|g| self.layout.group_len(g))
            .sum();
        let nbd = self.layout.d.div_ceil(Q8_BLOCK);
        2 * match self.dtype {
            KvDtype::F16 => 2 * slots,
            KvDtype::Int8 => slots + slots / self.layout.d.max(1) * nbd * 4,
            KvDtype::F32 | KvDtype::Auto => 4 * slots,
        }
    }

    /// Group g's cache, locked for writing.
    pub(super) fn write(&self, g: usize) -> RwLockWriteGuard<'_, GroupKv> {
        self.groups[g]
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Group g's cache, locked for reading.
    pub(super) fn read(&self, g: usize) -> RwLockReadGuard<'_, GroupKv> {
        self.groups[g]
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where keys and values live: heads are cut into groups of Hg consecutive heads (the last may
/// be short), the same groups as decode's query/key/value chunks ([`QKV_GROUP_ROWS`]), and each
/// group's keys are one block of layer after layer (values another): position after position,
/// each holding its Hg heads' rows. A global layer holds T positions; a sliding-window layer, when
/// that is shorter, holds a ring ([`Ring`]). Attending a group at P positions then reads its keys
/// and its values as two contiguous runs of P·Hg·D elements, which the memory streams of
/// [`Kernels::group_scores`] and [`Kernels::group_weighted`] follow; one head's (P, D) rows
/// alone are too short a stream for the prefetchers (README § Runtime kernel decisions, "The KV
/// cache is stored by groups of 4 heads"; `cargo bench -p emberlm-benches --bench attention`).
#[derive(Clone, Copy, Debug)]
pub(super) struct KvLayout {
    pub(super) layers: usize,
    pub(super) heads: usize,
    /// The session's context T (positions a global layer holds).
    pub(super) t: usize,
    pub(super) d: usize,
    /// Heads per group, Hg (the last group may hold fewer).
    pub(super) per_group: usize,
    /// Groups: ceil(H / Hg).
    pub(super) groups: usize,
    /// The sliding-window layers' ring, when they have one.
    pub(super) ring: Option<Ring>,
}

/// A sliding-window layer's cache as a mirrored ring: position p lives in slot p mod R, and
/// slots R .. R + W − 1 repeat slots 0 .. W − 1 (written twice), so the last W positions of any
/// position are always one contiguous run of slots — the attention kernels read them exactly as
/// they read a full cache, in the same order, so the logits keep their bits.
///
/// Period R = W + N − 1 (N the prefill chunk): prefill stores a whole chunk's keys before its
/// tokens attend, so the chunk's last store must not overwrite a position the chunk's first
/// token still sees. A layer holds S = R + W − 1 slots instead of T.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ring {
    /// Every `every`-th layer (1-based) is global, the others ring.
    every: usize,
    /// W: positions a token of a local layer attends, its own included.
    window: usize,
    /// R: the period.
    period: usize,
}

impl Ring {
    /// Slots a ring layer holds (S = R + W − 1).
    fn slots(&self) -> usize {
        self.period + self.window - 1
    }
}

impl KvLayout {
    /// Every layer holding all T positions.
    pub(super) fn new(layers: usize, heads: usize, t: usize, d: usize) -> KvLayout {
        let per_group = QKV_GROUP_ROWS.div_ceil(d.max(1)).clamp(1, heads.max(1));
        KvLayout {
            layers,
            heads,
            t,
            d,
            per_group,
            groups: heads.div_ceil(per_group),
            ring: None,
        }
    }

    /// The same layout with the sliding-window layers (`(l + 1) % every != 0`, attending
    /// `window` positions) held in rings, for prefill chunks of at most `chunk` tokens; unchanged
    /// when a ring would hold as many positions as T.
    pub(super) fn with_window(mut self, window: usize, every: usize, chunk: usize) -> KvLayout {
        let ring = Ring {
            every,
            window,
            period: window + chunk.max(1) - 1,
        };
        if window > 0 && every > 1 && ring.slots() < self.t {
            self.ring = Some(ring);
        }
        self
    }

    /// The heads of group g.
    pub(super) fn group(&self, g: usize) -> Range<usize> {
        g * self.per_group..((g + 1) * self.per_group).min(self.heads)
    }

    /// Layer l's ring, if it is a ring layer.
    fn ring_of(&self, l: usize) -> Option<&Ring> {
        self.ring.as_ref().filter(|r| (l + 1) % r.every != 0)
    }

    /// The first slot of layer l in a group's cache (in positions): the slots of layers 0 .. l.
    fn base(&self, l: usize) -> usize {
        match &self.ring {
            None => l * self.t,
            Some(r) => {
                let global = l / r.every; // layers l' < l with (l' + 1) % every == 0
                global * self.t + (l - global) * r.slots()
            }
        }
    }

    /// Positions (slots) one head's cache holds over all layers.
    pub(super) fn slots(&self) -> usize {
        self.base(self.layers)
    }

    /// Elements of group g's key (or value) cache.
    pub(super) fn group_len(&self, g: usize) -> usize {
        self.slots() * self.group(g).len() * self.d
    }

    /// Offset of (layer l, position pos) in the cache of a group of `hg` heads: where pos is
    /// stored, and where a run of positions from pos starts.
    pub(super) fn at(&self, l: usize, pos: usize, hg: usize) -> usize {
        let slot = match self.ring_of(l) {
            Some(r) => pos % r.period,
            None => pos,
        };
        (self.base(l) + slot) * hg * self.d
    }

    /// The second place a ring layer stores pos (its mirror slot), if it has one.
    pub(super) fn mirror(&self, l: usize, pos: usize, hg: usize) -> Option<usize> {
        let r = self.ring_of(l)?;
        let slot = pos % r.period;
        (slot + 1 < r.window).then(|| (self.base(l) + r.period + slot) * hg * self.d)
    }
}

/// A mutable view of (part of) a cache.
enum KvMut<'s> {
    F32(&'s mut [f32]),
    F16(&'s mut [f16]),
    I8(&'s mut [i8], &'s mut [f32]),
}

/// A shared view of (part of) a cache.
#[derive(Clone, Copy)]
enum KvRef<'s> {
    F32(&'s [f32]),
    F16(&'s [f16]),
    I8(&'s [i8], &'s [f32]),
}

impl<'s> KvMut<'s> {
    fn of(c: &'s mut KvCache) -> KvMut<'s> {
        match c {
            KvCache::F32(v) => KvMut::F32(v),
            KvCache::F16(v) => KvMut::F16(v),
            KvCache::I8 { q, d } => KvMut::I8(q, d),
        }
    }

    /// Writes `src` (whole rows of D) at element `at` (a row's start); an int8 cache quantizes
    /// each row in blocks of 32 by `k` ([`Kernels::quantize_q8`]).
    fn store(&mut self, at: usize, src: &[f32], d: usize, k: &Kernels) {
        match self {
            KvMut::I8(q, scales) => {
                let (nbd, rows) = (d.div_ceil(Q8_BLOCK), src.len() / d);
                let scales = &mut scales[at / d * nbd..][..rows * nbd];
                k.quantize_q8_rows(src, d, &mut q[at..at + src.len()], scales);
            }
            KvMut::F32(v) => v[at..at + src.len()].copy_from_slice(src),
            // `half`'s slice conversion: F16C eight at a time where the CPU has it (checked at
            // run time), the same round-to-nearest-even bits as `f16::from_f32` one by one,
            // which cost 3–5 % of a batched GPT-2 step (2026-12-05, `perf`).
            KvMut::F16(v) => v[at..at + src.len()].convert_from_f32_slice(src),
        }
    }
}

impl<'s> KvRef<'s> {
    fn of(c: &'s KvCache) -> KvRef<'s> {
        match c {
            KvCache::F32(v) => KvRef::F32(v),
            KvCache::F16(v) => KvRef::F16(v),
            KvCache::I8 { q, d } => KvRef::I8(q, d),
        }
    }
}

/// Rows per head group's slice of each query/key/value part, at least: shorter slices read the
/// weights as short memory streams, which the hardware prefetchers follow badly (README § Runtime
/// kernel decisions, "A layer's query/key/value product and its attention are one decode job").
pub(super) const QKV_GROUP_ROWS: usize = 256;
