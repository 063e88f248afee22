#![allow(unsafe_code)]
//! x86-64 attention kernels for an int8 KV cache (AVX2; the weighted sum also in 512-bit
//! registers where the CPU has AVX-512). Twins: [`super::reference`]'s
//! `group_scores_q8` and `group_weighted_q8`, whose operations these repeat in the same order, so
//! the results have the same bits (tests/kernels.rs checks it).
//!
//! Both walk the cache position after position (each position's Hg·D row whole, the order the
//! memory holds them, with a prefetch a few rows ahead), like the f16 kernels; walking it head
//! after head read each row's cache lines in Hg separate strided passes and ran at 0.62–0.77×
//! the f16 kernels' speed, against 0.84–0.96× now (`cargo bench -p emberlm-benches --bench
//! kv_int8`, one thread, Zen 5, 2026-12-05: compute-bound, as the int8 → f32 conversions cost
//! more than the f16 ones).
//!
//! Scores: eight positions at a time, each block one exact integer dot product per position
//! (`maddubs` on |q| and k with q's sign, then `madd`; both sides lie in −127..=127, so the
//! 16-bit pair sums cannot saturate), the eight reduced together, then scaled and added lane
//! by lane with the reference's f32 operations. Weighted sums: four positions at a time added
//! in order into the output (L1-resident), one fused multiply-add per position and element.
//! A D that 32 does not divide goes to the reference (no model family has one).
//!
//! Entry points take the [`Avx2`] token, which proves the features; the raw-pointer loads
//! happen after the shapes they rely on were checked.

use super::x86_64::Avx2;
#[cfg(ember_vnni)]
use super::x86_64_avx512::Avx512;
use core::arch::x86_64::*;
use emberlm_formats::quant::Q8_BLOCK;

/// Checks the shapes both kernels share: `rows` (P·Hg·D quants) and `scales` (P·Hg·NBD)
/// against Hg heads of D and P positions. Returns NBD.
fn check(what: &str, (rows, scales): (usize, usize), heads: usize, p: usize, d: usize) -> usize {
    let nbd = d.div_ceil(Q8_BLOCK);
    assert!(
        heads > 0 && rows == p * heads * d && scales == p * heads * nbd,
        "x86-64 {what}: shapes"
    );
    nbd
}

/// Rows (positions) ahead of the one in use that the kernels prefetch.
const AHEAD: usize = 8;

/// Prefetches position `t`'s row (`row` bytes from `base`) if it exists.
#[inline]
#[target_feature(enable = "avx2")]
fn prefetch_row(base: *const i8, t: usize, p: usize, row: usize) {
    if t < p {
        let at = base.wrapping_add(t * row);
        let mut o = 0;
        while o < row {
            // A hint only (never dereferenced): `wrapping_add` keeps it out of `add`'s rule.
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(o).cast());
            o += 64;
        }
    }
}

/// [`super::Kernels::group_scores_q8`].
pub(super) fn group_scores_q8(
    _t: Avx2,
    k: (&[i8], &[f32]),
    q: (&[i8], &[f32]),
    s: &mut [f32],
    heads: usize,
) {
    let (p, d) = (s.len() / heads.max(1), q.0.len() / heads.max(1));
    let nbd = check("group_scores_q8", (k.0.len(), k.1.len()), heads, p, d);
    assert!(
        q.0.len() == heads * d && q.1.len() == heads * nbd && s.len() == heads * p,
        "x86-64 group_scores_q8: query shapes"
    );
    if d % Q8_BLOCK != 0 {
        return super::reference::group_scores_q8(k, q, s, heads);
    }
    // SAFETY: the token proves the features; the shapes were checked above.
    unsafe { scores(k, q, s, (heads, p, d, nbd)) }
}

/// Lane u = Σ of vector u's eight i32 lanes, for eight vectors (exact integer adds).
#[inline]
#[target_feature(enable = "avx2")]
fn reduce8(m: [__m256i; 8]) -> __m256i {
    let a = _mm256_hadd_epi32(m[0], m[1]);
    let b = _mm256_hadd_epi32(m[2], m[3]);
    let c = _mm256_hadd_epi32(m[4], m[5]);
    let d = _mm256_hadd_epi32(m[6], m[7]);
    // Low halves: vectors 0..4 (then 4..8) summed over their low four lanes, high halves over
    // their high four.
    let ab = _mm256_hadd_epi32(a, b);
    let cd = _mm256_hadd_epi32(c, d);
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(ab, cd),
        _mm256_permute2x128_si256::<0x31>(ab, cd),
    )
}

/// # Safety
/// The CPU must have AVX2; k holds P·Hg rows of D quants and NBD scales, q Hg of each, s Hg·P;
/// 32 divides D.
#[target_feature(enable = "avx2,fma")]
unsafe fn scores(
    (kq, kd): (&[i8], &[f32]),
    (qq, qd): (&[i8], &[f32]),
    s: &mut [f32],
    (heads, p, d, nbd): Shape,
) {
    let one = _mm256_set1_epi16(1);
    let row = heads * d;
    // Lane u of each vector is position t + u; the scales of one block for the eight
    // positions are Hg·NBD apart.
    let step = (nbd * heads) as i32;
    let strides = _mm256_setr_epi32(
        0,
        step,
        2 * step,
        3 * step,
        4 * step,
        5 * step,
        6 * step,
        7 * step,
    );
    let mut t = 0;
    while t + 8 <= p {
        for u in 0..8 {
            prefetch_row(kq.as_ptr(), t + AHEAD + u, p, row);
        }
        for j in 0..heads {
            let mut acc = _mm256_setzero_ps();
            for b in 0..nbd {
                // SAFETY: block b is whole (32 divides D) in query row j and in rows
                // (t + u)·Hg + j, u < 8, of the keys (t + 8 <= P); scales (t + u)·Hg·NBD +
                // j·NBD + b are inside kd (P·Hg·NBD).
                unsafe {
                    let qv = _mm256_loadu_si256(qq.as_ptr().add(j * d + Q8_BLOCK * b).cast());
                    let aq = _mm256_sign_epi8(qv, qv);
                    let sums = reduce8(std::array::from_fn(|u| {
                        let kp = kq.as_ptr().add((t + u) * row + j * d + Q8_BLOCK * b);
                        let kv = _mm256_loadu_si256(kp.cast());
                        let p16 = _mm256_maddubs_epi16(aq, _mm256_sign_epi8(kv, qv));
                        _mm256_madd_epi16(p16, one)
                    }));
                    let kd8 = _mm256_i32gather_ps::<4>(
                        kd.as_ptr().add((t * heads + j) * nbd + b),
                        strides,
                    );
                    // The reference's scalar `acc += (qd · kd) · sum`, lane by lane.
                    let sc = _mm256_mul_ps(_mm256_set1_ps(qd[j * nbd + b]), kd8);
                    acc = _mm256_add_ps(acc, _mm256_mul_ps(sc, _mm256_cvtepi32_ps(sums)));
                }
            }
            // SAFETY: s[j·P + t .. + 8] is inside s (t + 8 <= P).
            unsafe { _mm256_storeu_ps(s.as_mut_ptr().add(j * p + t), acc) };
        }
        t += 8;
    }
    for t in t..p {
        for j in 0..heads {
            let r = t * heads + j;
            s[j * p + t] = super::reference::dot_q8q8(
                (&qq[j * d..][..d], &qd[j * nbd..][..nbd]),
                (&kq[r * d..][..d], &kd[r * nbd..][..nbd]),
            );
        }
    }
}

/// Checks the weighted sum's shapes: (Hg, P, D, NBD) for the SIMD kernels, or `None` when 32
/// does not divide D (the caller runs the reference).
fn weighted_shape(w: &[f32], v: (&[i8], &[f32]), out: &[f32], heads: usize) -> Option<Shape> {
    let (p, d) = (w.len() / heads.max(1), out.len() / heads.max(1));
    let nbd = check("group_weighted_q8", (v.0.len(), v.1.len()), heads, p, d);
    assert!(
        w.len() == heads * p && out.len() == heads * d,
        "x86-64 group_weighted_q8: shapes"
    );
    (d % Q8_BLOCK == 0).then_some((heads, p, d, nbd))
}

/// (Hg, P, D, NBD) of a checked call.
type Shape = (usize, usize, usize, usize);

/// [`super::Kernels::group_weighted_q8`].
pub(super) fn group_weighted_q8(
    _t: Avx2,
    w: &[f32],
    v: (&[i8], &[f32]),
    out: &mut [f32],
    heads: usize,
) {
    match weighted_shape(w, v, out, heads) {
        // SAFETY: the token proves the features; the shapes were checked.
        Some(shape) => unsafe { weighted::<8>(w, v, out, shape) },
        None => super::reference::group_weighted_q8(w, v, out, heads),
    }
}

/// [`piece`] for L = 8.
///
/// # Safety
/// As [`piece`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn add8<const U: usize>(o: *mut f32, c: [f32; U], x: [*const i8; U]) {
    // SAFETY: `o` and each x[u] hold 8 elements (the caller's guarantee).
    unsafe {
        let mut acc = _mm256_loadu_ps(o);
        for u in 0..U {
            let x8 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(x[u].cast())));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(c[u]), x8, acc);
        }
        _mm256_storeu_ps(o, acc);
    }
}

/// out (Hg, D) = Σ_t w[j·P + t] · v[t, j, :] in `L`-element pieces, four positions a pass.
///
/// # Safety
/// The CPU must have AVX2 and FMA (and AVX-512F when L = 16); v holds P·Hg rows of D quants
/// and NBD scales, w Hg·P weights, out Hg·D; 32 divides D.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted<const L: usize>(
    w: &[f32],
    (vq, vd): (&[i8], &[f32]),
    out: &mut [f32],
    (heads, p, d, nbd): Shape,
) {
    out.fill(0.0);
    let row = heads * d;
    let mut t = 0;
    while t + 4 <= p {
        for u in 0..4 {
            prefetch_row(vq.as_ptr(), t + AHEAD + u, p, row);
        }
        // SAFETY: positions t .. t + 4 <= P.
        unsafe { positions::<L, 4>(w, (vq, vd), out, (heads, p, d, nbd), t) };
        t += 4;
    }
    for t in t..p {
        // SAFETY: position t < P.
        unsafe { positions::<L, 1>(w, (vq, vd), out, (heads, p, d, nbd), t) };
    }
}

/// [`weighted`]'s work for positions t .. t + U, in order: for each head and block, one scale
/// per position (weight · block scale) and the block's pieces.
///
/// # Safety
/// As [`weighted`], and t + U <= P.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn positions<const L: usize, const U: usize>(
    w: &[f32],
    (vq, vd): (&[i8], &[f32]),
    out: &mut [f32],
    (heads, p, d, nbd): Shape,
    t: usize,
) {
    let (row, o) = (heads * d, out.as_mut_ptr());
    for j in 0..heads {
        for b in 0..nbd {
            let c: [f32; U] =
                std::array::from_fn(|u| w[j * p + t + u] * vd[((t + u) * heads + j) * nbd + b]);
            let mut e = Q8_BLOCK * b;
            while e < Q8_BLOCK * (b + 1) {
                // SAFETY: rows (t + u)·Hg + j, u < U, are inside v (t + U <= P), block b is
                // whole (32 divides D), and elements e .. e + L lie in head j's outputs.
                unsafe {
                    let x = std::array::from_fn(|u| vq.as_ptr().add((t + u) * row + j * d + e));
                    piece::<L, U>(o.add(j * d + e), c, x);
                }
                e += L;
            }
        }
    }
}

/// Elements `o .. o + L` plus, for each position u in order, c[u] times the L int8 elements at
/// x[u] (one fused multiply-add each); stored back.
///
/// # Safety
/// `o` and each x[u] hold L elements; the CPU has AVX2 and FMA, and AVX-512F when L = 16.
#[inline]
unsafe fn piece<const L: usize, const U: usize>(o: *mut f32, c: [f32; U], x: [*const i8; U]) {
    // SAFETY: the caller's guarantees (L = 16 only where the CPU has AVX-512F).
    unsafe {
        match L {
            #[cfg(ember_vnni)]
            16 => add16(o, c, x),
            _ => add8(o, c, x),
        }
    }
}

/// [`piece`] for L = 16.
///
/// # Safety
/// As [`piece`].
#[cfg(ember_vnni)]
#[inline]
#[target_feature(enable = "avx2,fma,avx512f")]
unsafe fn add16<const U: usize>(o: *mut f32, c: [f32; U], x: [*const i8; U]) {
    // SAFETY: `o` and each x[u] hold 16 elements (the caller's guarantee).
    unsafe {
        let mut acc = _mm512_loadu_ps(o);
        for u in 0..U {
            let x16 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(x[u].cast())));
            acc = _mm512_fmadd_ps(_mm512_set1_ps(c[u]), x16, acc);
        }
        _mm512_storeu_ps(o, acc);
    }
}

/// [`super::Kernels::group_weighted_q8`] with 512-bit registers: the same per-element sequence
/// of fused multiply-adds, 16 elements at a time.
#[cfg(ember_vnni)]
pub(super) fn group_weighted_q8_512(
    _t: Avx512,
    w: &[f32],
    v: (&[i8], &[f32]),
    out: &mut [f32],
    heads: usize,
) {
    match weighted_shape(w, v, out, heads) {
        // SAFETY: the token proves the features (AVX-512F included); the shapes were checked.
        Some(shape) => unsafe { weighted_512(w, v, out, shape) },
        None => super::reference::group_weighted_q8(w, v, out, heads),
    }
}

/// [`weighted`] with 16-element pieces.
///
/// # Safety
/// As [`weighted`], and the CPU must have AVX-512F.
#[cfg(ember_vnni)]
#[target_feature(enable = "avx2,fma,avx512f")]
unsafe fn weighted_512(w: &[f32], v: (&[i8], &[f32]), out: &mut [f32], shape: Shape) {
    // SAFETY: the caller's guarantees.
    unsafe { weighted::<16>(w, v, out, shape) }
}
