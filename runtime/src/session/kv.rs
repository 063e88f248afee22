//! The KV cache: its layout by head group ([`KvLayout`]), its storage, and a group's attention.

use super::KvDtype;
use crate::kernels::Kernels;
use half::f16;
use std::ops::Range;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

#[derive(Debug)]
enum KvCache {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

/// One group of heads' keys and values, (L, T, Hg, D) each (see [`KvLayout`]).
#[derive(Debug)]
pub(super) struct GroupKv {
    k: KvCache,
    v: KvCache,
}

impl GroupKv {
    /// Stores a position's keys and values (Hg·D each) at element `at` of both caches.
    pub(super) fn store(&mut self, at: usize, key: &[f32], value: &[f32]) {
        KvMut::of(&mut self.k).store(at, key);
        KvMut::of(&mut self.v).store(at, value);
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
        match KvRef::of(&self.k) {
            KvRef::F32(c) => k.group_scores(&c[from..from + len], q, scores, heads),
            KvRef::F16(c) => k.group_scores_f16(&c[from..from + len], q, scores, heads),
        }
        let p = scores.len() / heads;
        for sj in scores.chunks_exact_mut(p) {
            sj.iter_mut().for_each(|s| *s *= scale);
            k.softmax(sj);
        }
        match KvRef::of(&self.v) {
            KvRef::F32(c) => k.group_weighted(scores, &c[from..from + len], out, heads),
            KvRef::F16(c) => k.group_weighted_f16(scores, &c[from..from + len], out, heads),
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
}

impl Kv {
    /// A zeroed cache of `dtype` elements ([`KvDtype::Auto`] must be resolved first).
    pub(super) fn new(layout: KvLayout, dtype: KvDtype) -> Kv {
        let cache = |len: usize| match dtype {
            KvDtype::F32 | KvDtype::Auto => KvCache::F32(vec![0.0; len]),
            // Zeroed memory from the allocator, as `vec![0.0; n]` gets for f32: the pages are
            // only backed once written, so an unused context costs no resident memory.
            // (`vec![f16::ZERO; n]` would write every element.)
            KvDtype::F16 => KvCache::F16(bytemuck::zeroed_vec(len)),
        };
        let groups = (0..layout.groups)
            .map(|g| {
                let len = layout.group_len(g);
                RwLock::new(GroupKv {
                    k: cache(len),
                    v: cache(len),
                })
            })
            .collect();
        Kv { layout, groups }
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
/// group's keys are one (L, T, Hg, D) block (values another): position after position, each
/// holding its Hg heads' rows. Attending a group at P positions then reads its keys and its
/// values as two contiguous runs of P·Hg·D elements, which the memory streams of
/// [`Kernels::group_scores`] and [`Kernels::group_weighted`] follow; one head's (P, D) rows
/// alone are too short a stream for the prefetchers (README § Runtime kernel decisions, "The KV
/// cache is stored by groups of 4 heads"; `cargo bench -p emberlm-benches --bench attention`).
#[derive(Clone, Copy, Debug)]
pub(super) struct KvLayout {
    pub(super) layers: usize,
    pub(super) heads: usize,
    pub(super) t: usize,
    pub(super) d: usize,
    /// Heads per group, Hg (the last group may hold fewer).
    pub(super) per_group: usize,
    /// Groups: ceil(H / Hg).
    pub(super) groups: usize,
}

impl KvLayout {
    pub(super) fn new(layers: usize, heads: usize, t: usize, d: usize) -> KvLayout {
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
    pub(super) fn group(&self, g: usize) -> Range<usize> {
        g * self.per_group..((g + 1) * self.per_group).min(self.heads)
    }

    /// Elements of group g's key (or value) cache.
    pub(super) fn group_len(&self, g: usize) -> usize {
        self.layers * self.t * self.group(g).len() * self.d
    }

    /// Offset of (layer l, position pos) in the cache of a group of `hg` heads.
    pub(super) fn at(&self, l: usize, pos: usize, hg: usize) -> usize {
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

/// Rows per head group's slice of each query/key/value part, at least: shorter slices read the
/// weights as short memory streams, which the hardware prefetchers follow badly (README § Runtime
/// kernel decisions, "A layer's query/key/value product and its attention are one decode job").
pub(super) const QKV_GROUP_ROWS: usize = 256;
