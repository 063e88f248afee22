#![allow(unsafe_code)]
//! AVX-512 multi-vector decode kernels (see [`super::multi`]): f32, f16, int8 × int8 and int4 ×
//! int8 rows of
//! one weight matrix against B activation vectors, each weight loaded into registers once for a
//! group of vectors. Every (row, vector) output has the bits of the single-vector kernel in
//! [`super::x86_64_avx512`]. Entry points take the [`Avx512`] token, which only its `detect`
//! creates, so calling the `#[target_feature]` bodies is sound. Letters as in [`super::multi`].
//!
//! Rows advance together in the single kernels' four memory streams (rows i, Q + i, 2Q + i,
//! 3Q + i of the first 4Q, Q = P / 4, then the rest one by one): a first version that finished
//! one row before starting the next was bound by load latency (half the single kernel's speed
//! at B = 2).

use super::Q8Matrix;
use super::q4_matrix::Q4Matrix;
use super::x86_64_avx512::{Avx512, Lanes, f16_to_f32, hsum_f32};
use core::arch::x86_64::*;
use emberlm_formats::quant::{Q4_BLOCK, Q4_BLOCK_BYTES, Q4_CODEBOOK, Q8_BLOCK, q4_nibble};
use half::f16;

/// Vectors per group of the f32 / f16 kernels (4 rows × 2 vectors × 2 accumulators = 16 zmm).
const F_GROUP: usize = 2;
/// Vectors per group of the int4 kernel (4 rows × 4 vectors of ymm accumulators).
const Q_GROUP: usize = 4;

/// `$f::<R, G>($args.., rows, $v)` for `rows` of 4 or 1 and G = `$g` in 1..=4.
macro_rules! dispatch {
    ($f:ident, $rows:expr, $g:expr, ($($a:expr),*), $v:expr) => {
        match ($rows, $g) {
            (&[r0, r1, r2, r3], 4) => $f::<4, 4>($($a),*, [r0, r1, r2, r3], $v),
            (&[r0, r1, r2, r3], 3) => $f::<4, 3>($($a),*, [r0, r1, r2, r3], $v),
            (&[r0, r1, r2, r3], 2) => $f::<4, 2>($($a),*, [r0, r1, r2, r3], $v),
            (&[r0, r1, r2, r3], _) => $f::<4, 1>($($a),*, [r0, r1, r2, r3], $v),
            (&[r0], 4) => $f::<1, 4>($($a),*, [r0], $v),
            (&[r0], 3) => $f::<1, 3>($($a),*, [r0], $v),
            (&[r0], 2) => $f::<1, 2>($($a),*, [r0], $v),
            (&[r0], _) => $f::<1, 1>($($a),*, [r0], $v),
            _ => unreachable!("four rows or one"),
        }
    };
}

// ------------------------------------------------------------------ f32 and f16

pub(super) fn multi_f32(
    _t: Avx512,
    w: &[f32],
    x: &[f32],
    b: usize,
    y: &mut [f32],
    row_start: usize,
) {
    let (c, p) = (x.len() / b, y.len() / b);
    assert!(
        x.len() == b * c && (row_start + p) * c <= w.len(),
        "avx512 multi_f32: lengths"
    );
    // SAFETY: the token proves the features; P rows of C from row_start are inside `w`, X is
    // (B, C) and Y (B, P) (checked above).
    unsafe { multi_512::<f32>(&w[row_start * c..], x, b, c, y) }
}

pub(super) fn multi_f16(
    _t: Avx512,
    w: &[f16],
    x: &[f32],
    b: usize,
    y: &mut [f32],
    row_start: usize,
) {
    let (c, p) = (x.len() / b, y.len() / b);
    assert!(
        x.len() == b * c && (row_start + p) * c <= w.len(),
        "avx512 multi_f16: lengths"
    );
    // SAFETY: as in `multi_f32`.
    unsafe { multi_512::<f16>(&w[row_start * c..], x, b, c, y) }
}

/// Y (B, P) for the P rows at the start of `w`: rows i, Q+i, 2Q+i, 3Q+i together (the single
/// kernel's four memory streams), then the rest one by one; vectors in groups of [`F_GROUP`].
///
/// # Safety
/// The CPU must have the [`Avx512`] features; `w` holds P rows of C, x is (B, C), y is (B, P).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn multi_512<T: Lanes>(w: &[T], x: &[f32], b: usize, c: usize, y: &mut [f32]) {
    let p = y.len() / b;
    let q = p / 4;
    let each = |rows: &[usize], y: &mut [f32]| {
        let mut v = 0;
        while v < b {
            let g = (b - v).min(F_GROUP);
            // SAFETY: the caller's guarantees; rows < P and vectors v .. v + g <= B.
            unsafe {
                match (rows, g) {
                    (&[r0, r1, r2, r3], 2) => {
                        group_512::<T, 4, 2>(w, x, (c, p), y, [r0, r1, r2, r3], v)
                    }
                    (&[r0, r1, r2, r3], _) => {
                        group_512::<T, 4, 1>(w, x, (c, p), y, [r0, r1, r2, r3], v)
                    }
                    (&[r0], 2) => group_512::<T, 1, 2>(w, x, (c, p), y, [r0], v),
                    (&[r0], _) => group_512::<T, 1, 1>(w, x, (c, p), y, [r0], v),
                    _ => unreachable!("four rows or one"),
                }
            }
            v += g;
        }
    };
    for i in 0..q {
        each(&[i, q + i, 2 * q + i, 3 * q + i], y);
    }
    for r in 4 * q..p {
        each(&[r], y);
    }
}

/// Rows `rows` against vectors v0 .. v0 + G: the single kernel's per-row sequence (two 16-lane
/// accumulators over steps of 32 columns, masked tails, one `reduce_add`) for every pair.
///
/// # Safety
/// As [`multi_512`]; every row < P and v0 + G <= B.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn group_512<T: Lanes, const R: usize, const G: usize>(
    w: &[T],
    x: &[f32],
    (c, p): (usize, usize),
    y: &mut [f32],
    rows: [usize; R],
    v0: usize,
) {
    let zero = _mm512_setzero_ps();
    // acc[g][k]: vector v0 + g, row rows[k].
    let mut acc = [[[zero; 2]; R]; G];
    // Columns j .. j + m0 and j + 16 .. j + 16 + m1 (m1 = 0: none).
    let mut step = |j: usize, m0: usize, m1: usize| {
        // SAFETY: those columns are inside each row (rows < P, the caller's guarantee) and
        // inside each vector's C.
        unsafe {
            let wv: [[__m512; 2]; R] = std::array::from_fn(|k| {
                let p = w.as_ptr().add(rows[k] * c);
                let w1 = if m1 > 0 {
                    T::load16(p, j + 16, m1)
                } else {
                    zero
                };
                [T::load16(p, j, m0), w1]
            });
            for (g, ag) in acc.iter_mut().enumerate() {
                let xp = x.as_ptr().add((v0 + g) * c);
                let x0 = f32::load16(xp, j, m0);
                let x1 = if m1 > 0 {
                    f32::load16(xp, j + 16, m1)
                } else {
                    zero
                };
                for (a, wk) in ag.iter_mut().zip(&wv) {
                    a[0] = _mm512_fmadd_ps(wk[0], x0, a[0]);
                    if m1 > 0 {
                        a[1] = _mm512_fmadd_ps(wk[1], x1, a[1]);
                    }
                }
            }
        }
    };
    let mut j = 0;
    while j + 32 <= c {
        step(j, 16, 16);
        j += 32;
    }
    if j < c {
        step(j, (c - j).min(16), (c - j).saturating_sub(16).min(16));
    }
    for (g, ag) in acc.iter().enumerate() {
        for (a, &r) in ag.iter().zip(&rows) {
            y[(v0 + g) * p + r] = _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1]));
        }
    }
}

/// The first `n` bytes of `scratch` from its first 64-byte boundary, so that every 512-bit
/// load of the rearranged activations (int8 and int4 kernels) lies within one cache line
/// ([`super::multi_scratch_len`] leaves the 64 bytes this may skip). Where the allocator put
/// them (a large `Vec` starts 16 bytes past a boundary), the split loads cost the int8 kernel
/// 7–10 % (Zen 5, 2026-12-05, `cargo bench -p emberlm-benches --bench multi -- --b 8`, two
/// alternating runs: 1.61–1.63 single passes per GPT-2 step against 1.76–1.77).
///
/// # Panics
/// If `scratch` is shorter than 63 + `n` bytes past its start.
fn aligned(scratch: &mut [u8], n: usize) -> &mut [u8] {
    let shift = scratch.as_ptr().align_offset(64);
    assert!(
        shift < 64 && scratch.len() >= shift + n,
        "avx512 multi: scratch is short"
    );
    &mut scratch[shift..shift + n]
}

// ------------------------------------------------------------------ int8 x int8

#[allow(clippy::too_many_arguments)]
pub(super) fn multi_q8q8(
    _t: Avx512,
    w: Q8Matrix<'_>,
    (xq, xd): (&[i8], &[f32]),
    b: usize,
    y: &mut [f32],
    row_start: usize,
    scratch: &mut [u8],
) {
    let (c, nb) = (w.cols(), w.blocks_per_row());
    let p = y.len() / b;
    assert!(
        xq.len() == b * c
            && xd.len() == b * nb
            && y.len() == b * p
            && row_start + p <= w.rows()
            && scratch.len() >= b * c,
        "avx512 multi_q8q8: lengths"
    );
    let (q, d) = (
        &w.quants()[row_start * c..(row_start + p) * c],
        &w.scales()[row_start * nb..(row_start + p) * nb],
    );
    let quads = c / (4 * Q8_BLOCK);
    let side = b * quads * 32;
    let scratch = aligned(scratch, b * c + 2 * side);
    let (xt, rest) = scratch.split_at_mut(b * c);
    let (xs, xc) = rest.split_at_mut(side);
    // SAFETY: the token proves the features; q, d hold P rows, xq / xt are (B, C), xd (B, NB),
    // xs and xc hold B · quads · 32 bytes each.
    unsafe {
        prepare_pairs((xq, xd), (xt, xs, xc), b, c);
        multi_q8q8_wide(q, d, (xq, xd, &*xt, &*xs, &*xc), b, c, y);
    }
}

/// The four blocks of a quad transposed as 4 × 4 dwords within each 128-bit half: vector i
/// holds dword i of blocks 0..4 in its low half and dword 4 + i of blocks 0..4 in its high half.
#[inline]
#[target_feature(enable = "avx2")]
fn transpose(m: [__m256i; 4]) -> [__m256i; 4] {
    let t0 = _mm256_unpacklo_epi32(m[0], m[1]);
    let t1 = _mm256_unpackhi_epi32(m[0], m[1]);
    let t2 = _mm256_unpacklo_epi32(m[2], m[3]);
    let t3 = _mm256_unpackhi_epi32(m[2], m[3]);
    [
        _mm256_unpacklo_epi64(t0, t2),
        _mm256_unpackhi_epi64(t0, t2),
        _mm256_unpacklo_epi64(t1, t3),
        _mm256_unpackhi_epi64(t1, t3),
    ]
}

// ------------------------------------------------------------------ int8 x int8, 512 bits

/// Vector pairs per group of the 512-bit int8 kernel: 4 rows × 4 pairs = 16 zmm accumulators,
/// so B ≤ 8 is one pass over the rows' transposes.
const PAIRS: usize = 4;

/// How far ahead of the quad in use the 512-bit int8 kernel prefetches each row's weights
/// (two cache lines per quad, the rate they are used at; past a row's end, into the next row of
/// its stream, which the next group reads). The kernel spends more time per weight byte than
/// the single one, and the hardware prefetcher alone left it waiting on memory: on Zen 5
/// (2026-12-05, loaded host, GPT-2 124M int8, B = 8, one thread) 768 bytes ahead took batched
/// decode from 206 to 241–259 tokens/s in the same run (1536: 240–243, 3072: 239–257). The hint
/// is non-temporal: the weights are read once a step, and kept out of the outer caches they leave
/// the slots' KV caches there (quiet host, same day, three alternating runs of `ember bench
/// gpt2-124m-int8.ember --batch 8 --threads 1 --passes 5 --prompt-tokens 16 --gen-tokens 64`:
/// 3.22–3.31× the lone session against 2.94–3.15× with `T0`). With the non-temporal hint and
/// the other changes of that day, 1536 bytes ahead beat 768 (`cargo bench --bench multi -- --b
/// 8`, three alternating runs: 1.60–1.65 single passes per GPT-2 step against 1.65–1.67; 384:
/// 1.83–1.87, 2304: 1.64–1.66, 3072: 1.66–1.67).
const PREFETCH: usize = 1536;

/// The 256-bit [`transpose`] within each 128-bit quarter of four zmm: on weights broadcast into
/// both 256-bit halves, both halves hold [`transpose`]'s result.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose_512(m: [__m512i; 4]) -> [__m512i; 4] {
    let t0 = _mm512_unpacklo_epi32(m[0], m[1]);
    let t1 = _mm512_unpackhi_epi32(m[0], m[1]);
    let t2 = _mm512_unpacklo_epi32(m[2], m[3]);
    let t3 = _mm512_unpackhi_epi32(m[2], m[3]);
    [
        _mm512_unpacklo_epi64(t0, t2),
        _mm512_unpackhi_epi64(t0, t2),
        _mm512_unpacklo_epi64(t1, t3),
        _mm512_unpackhi_epi64(t1, t3),
    ]
}

/// For the 512-bit int8 kernel: vectors in pairs (v, v + 1), v even. For each pair and whole
/// quad g: xt bytes v·C + 256g + 64i .. + 64 ← [`transpose`]d vector i of v's quad (low 32
/// bytes) and of v + 1's (high 32), as signed bytes; xs bytes v·quads·32 + 64g .. + 64 ← the
/// quad's activation scales `[xv, xv, xv+1, xv+1]` (4 f32 each); xc, laid out as xs ← each
/// vector's eight half-block sums times −128 (i32, in the lanes where the kernel's `vpdpbusd`
/// puts them), which cancel the +128 the kernel adds to every weight. A last odd vector v is
/// laid out alone: xt bytes v·C + 128g + 32i .. + 32, xs and xc bytes v·quads·32 + 32g .. + 32.
///
/// # Safety
/// The CPU must have the [`Avx512`] features; xq and xt are (B, C), xd (B, NB), xs and xc
/// B · quads · 32 bytes each.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
unsafe fn prepare_pairs(
    (xq, xd): (&[i8], &[f32]),
    (xt, xs, xc): (&mut [u8], &mut [u8], &mut [u8]),
    b: usize,
    c: usize,
) {
    let minus = _mm256_set1_epi8(-128);
    let quads = c / (4 * Q8_BLOCK);
    let nb = c.div_ceil(Q8_BLOCK);
    let mut v = 0;
    while v < b {
        let n = (b - v).min(2);
        for g in 0..quads {
            for h in 0..n {
                // SAFETY: quad g is columns 128g .. 128g + 128 of vector v + h < B (C long), so
                // the stores land in v's (and v + 1's) rows of xt; scales 4g .. 4g + 4 of the
                // vector's NB; xs and xc bytes v·quads·32 + 32(n·g + h) .. + 32 are inside
                // vector v's (and v + 1's) quads · 32.
                unsafe {
                    let xv = xq.as_ptr().add((v + h) * c + 128 * g);
                    let m = std::array::from_fn(|k| _mm256_loadu_si256(xv.add(32 * k).cast()));
                    // −128 · Σ x per lane: 0x80 read as unsigned (128) times −x, exact in i32.
                    let mut corr = _mm256_setzero_si256();
                    for (i, t) in transpose(m).into_iter().enumerate() {
                        let o = xt.as_mut_ptr().add(v * c + n * (128 * g + 32 * i) + 32 * h);
                        _mm256_storeu_si256(o.cast(), t);
                        corr = _mm256_dpbusd_epi32(corr, minus, t);
                    }
                    let corr = _mm256_sub_epi32(_mm256_setzero_si256(), corr);
                    let at = v * quads * 32 + 32 * (n * g + h);
                    _mm256_storeu_si256(xc.as_mut_ptr().add(at).cast(), corr);
                    let x4 = _mm_loadu_ps(xd.as_ptr().add((v + h) * nb + 4 * g));
                    _mm256_storeu_ps(xs.as_mut_ptr().add(at).cast(), _mm256_set_m128(x4, x4));
                }
            }
        }
        v += n;
    }
}

/// `group_q8_wide::<R, P, HALF>` for `rows` of 4 or 1 and P pairs in 1..=4.
macro_rules! dispatch_wide {
    ($rows:expr, $pairs:expr, $half:expr, ($($a:expr),*), $v:expr) => {
        match ($rows, $pairs, $half) {
            (&[r0, r1, r2, r3], 4, false) => group_q8_rows4::<4>($($a),*, [r0, r1, r2, r3], $v),
            (&[r0, r1, r2, r3], 4, true) => group_q8_wide::<4, 4, true>($($a),*, [r0, r1, r2, r3], $v),
            (&[r0, r1, r2, r3], 3, false) => group_q8_wide::<4, 3, false>($($a),*, [r0, r1, r2, r3], $v),
            (&[r0, r1, r2, r3], 3, true) => group_q8_wide::<4, 3, true>($($a),*, [r0, r1, r2, r3], $v),
            (&[r0, r1, r2, r3], 2, false) => group_q8_wide::<4, 2, false>($($a),*, [r0, r1, r2, r3], $v),
            (&[r0, r1, r2, r3], 2, true) => group_q8_wide::<4, 2, true>($($a),*, [r0, r1, r2, r3], $v),
            (&[r0, r1, r2, r3], _, false) => group_q8_wide::<4, 1, false>($($a),*, [r0, r1, r2, r3], $v),
            (&[r0, r1, r2, r3], _, true) => group_q8_wide::<4, 1, true>($($a),*, [r0, r1, r2, r3], $v),
            (&[r0], 4, false) => group_q8_wide::<1, 4, false>($($a),*, [r0], $v),
            (&[r0], 4, true) => group_q8_wide::<1, 4, true>($($a),*, [r0], $v),
            (&[r0], 3, false) => group_q8_wide::<1, 3, false>($($a),*, [r0], $v),
            (&[r0], 3, true) => group_q8_wide::<1, 3, true>($($a),*, [r0], $v),
            (&[r0], 2, false) => group_q8_wide::<1, 2, false>($($a),*, [r0], $v),
            (&[r0], 2, true) => group_q8_wide::<1, 2, true>($($a),*, [r0], $v),
            (&[r0], _, false) => group_q8_wide::<1, 1, false>($($a),*, [r0], $v),
            (&[r0], _, true) => group_q8_wide::<1, 1, true>($($a),*, [r0], $v),
            _ => unreachable!("four rows or one"),
        }
    };
}

/// The 512-bit int8 kernel's activations: quants (B, C), scales (B, NB), and the
/// [`prepare_pairs`] layouts xt, xs, xc.
type Prepared<'x> = (&'x [i8], &'x [f32], &'x [u8], &'x [u8], &'x [u8]);

/// Y (B, P) for the P rows of q (C quants each) and d (NB scales each); rows in the
/// four-stream order, vectors in pairs, up to [`PAIRS`] pairs a group ([`group_q8_wide`]).
///
/// The single kernel (`matvec_q8q8_rows_vnni`) packs, for each quad of four blocks, the two
/// exact half-block sums of each block as `[a0, a1, a2, a3, b0, b1, b2, b3]` (a: columns 0..16
/// of a block, b: 16..32) by `vphaddd`, converts them to f32 and multiply-adds them by (weight
/// scale · activation scale) into one 256-bit accumulator, reduced at the row's end. Here the
/// weights of a quad are transposed once per row ([`transpose_512`]) and the activations once
/// per call ([`prepare_pairs`]), so four chained `vpdpbusd` put exactly those eight sums in
/// those lanes without any horizontal add, for two vectors at once (one per 256-bit half). The
/// weights are the unsigned operand, offset by +128, and the activations the signed one, read
/// straight from memory by `vpdpbusd`; each lane starts at the activations' −128 · Σ x over its
/// 16 columns, computed once per call. The integer sums equal the single kernel's, and every
/// f32 operation is the same, in the same order: the bits match.
///
/// A first version kept one vector per 256-bit register (4 rows × 4 vectors); on Zen 5
/// (2026-12-05, one thread, int8 768 × 2304 and 3072 × 768, hot in cache) the two-vector one
/// was faster at every B ≥ 2 (B = 2: 95–117 against 82–97 GMAC/s; B = 8: 150–170 against ~100).
/// The next put the +128 on the activations, the weights signed, and so computed each row's
/// −128 · Σ w by four more `vpdpbusd` per quad (and the activations, as `vpdpbusd`'s unsigned
/// operand, could not be memory operands).
///
/// # Safety
/// The CPU must have the [`Avx512`] features; q.len() = P·C, d.len() = P·NB, xq (B, C), xd
/// (B, NB), y (B, P), and xt, xs, xc from [`prepare_pairs`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn multi_q8q8_wide(q: &[i8], d: &[f16], x: Prepared<'_>, b: usize, c: usize, y: &mut [f32]) {
    let p = y.len() / b;
    let nb = c.div_ceil(Q8_BLOCK);
    let mut tmp = [0f32; WIDE_OUT];
    let rows = (WIDE_OUT / b).clamp(1, WIDE_CHUNK);
    let mut r0 = 0;
    while r0 < p {
        let n = (p - r0).min(rows);
        let (qc, dc) = (&q[r0 * c..(r0 + n) * c], &d[r0 * nb..(r0 + n) * nb]);
        let out = &mut tmp[..b * n];
        let each = |rows: &[usize], out: &mut [f32]| {
            let mut v = 0;
            while v < b {
                let m = (b - v).min(2 * PAIRS);
                // SAFETY: the caller's guarantees; rows < n and vectors v .. v + m <= B; a half
                // pair (m odd) is the last vector, laid out alone by `prepare_pairs`.
                unsafe {
                    dispatch_wide!(rows, m.div_ceil(2), m % 2 == 1, (qc, dc, x, (c, n), out), v)
                }
                v += m;
            }
        };
        let qn = n / 4;
        for i in 0..qn {
            each(&[i, qn + i, 2 * qn + i, 3 * qn + i], out);
        }
        for r in 4 * qn..n {
            each(&[r], out);
        }
        for (v, o) in out.chunks_exact(n).enumerate() {
            y[v * p + r0..][..n].copy_from_slice(o);
        }
        r0 += n;
    }
}

/// Rows per block of the 512-bit int8 kernel: its outputs go to a (B, rows) block on the stack
/// and are copied out after it. Writing straight into a wide (B, P) output (the GPT-2 head: P =
/// 50257) made the kernel ~1.45x slower on Zen 5 (2026-12-05, `cargo bench -p emberlm-benches
/// --bench multi`, B = 8: head 2.5-2.6 single passes against 1.7-1.8 in blocks of 1024 rows;
/// blocks of 4096 rows were as slow as none).
const WIDE_CHUNK: usize = 1024;
/// f32 outputs in that block (B · rows at most).
const WIDE_OUT: usize = 8 * 1024;

/// Rows `rows` (four streams, or one row) against P pairs of vectors from v0 (the last pair
/// half-used, vector v0 + 2P − 2 alone in its low half, when `HALF`).
///
/// Each 256-bit half of a register does, lane for lane, the single kernel's work for one
/// vector: per quad, the row's 128 weights are loaded broadcast into both halves, offset by
/// +128 and transposed once ([`transpose_512`]); from a pair's −128 · Σ x, four chained 512-bit
/// `vpdpbusd` against its [`prepare_pairs`] activations (memory operands) leave each vector's
/// eight exact half-block sums in its half, then one conversion, a multiply by (weight scales
/// broadcast × each half's activation scales) and a multiply-add. Each half is reduced by the
/// single kernel's `hsum_f32`: the bits match.
///
/// # Safety
/// As [`multi_q8q8_wide`]; every row < P, v0 + 2P − HALF <= B.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn group_q8_wide<const R: usize, const P: usize, const HALF: bool>(
    q: &[i8],
    d: &[f16],
    (xq, xd, xt, xs, xc): Prepared<'_>,
    (c, p): (usize, usize),
    y: &mut [f32],
    rows: [usize; R],
    v0: usize,
) {
    let nb = c.div_ceil(Q8_BLOCK);
    let quads = c / (4 * Q8_BLOCK);
    let flip = _mm512_set1_epi8(-128);
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    for g in 0..quads {
        for (ak, &r) in acc.iter_mut().zip(&rows) {
            // SAFETY: quad g is whole: bytes 128g .. 128g + 128 of row r, scales 4g .. 4g + 4
            // of the row's NB; each pair's xt, xs and xc bytes as laid out by `prepare_pairs`
            // (inside vectors v .. v + 2 < B, or the last vector alone when half).
            unsafe {
                let wp = q.as_ptr().add(r * c + 128 * g);
                // A prefetch hint only (never dereferenced), so an address past the matrix is
                // harmless: `wrapping_add` keeps it out of `add`'s bounds rule.
                _mm_prefetch::<_MM_HINT_NTA>(wp.wrapping_add(PREFETCH).cast());
                _mm_prefetch::<_MM_HINT_NTA>(wp.wrapping_add(PREFETCH + 64).cast());
                // w + 128 as unsigned bytes: w XOR 0x80.
                let wt = transpose_512(std::array::from_fn(|k| {
                    let w = _mm512_broadcast_i64x4(_mm256_loadu_si256(wp.add(32 * k).cast()));
                    _mm512_xor_si512(w, flip)
                }));
                let h = d
                    .as_ptr()
                    .add(r * nb + 4 * g)
                    .cast::<i64>()
                    .read_unaligned();
                let dw = _mm512_cvtph_ps(_mm256_set1_epi64x(h));
                // Opaque to the optimizer, so that each row reads the activations again from
                // L1 instead of holding a quad's (P · 6 registers) across the rows, which
                // spilled the accumulators.
                for (k, a) in ak.iter_mut().enumerate() {
                    let v = v0 + 2 * k;
                    let (s, xsv) = if HALF && k == P - 1 {
                        let xp = xt.as_ptr().add(v * c + 128 * g);
                        let o = v * quads * 32 + 32 * g;
                        let mut s =
                            _mm512_zextsi256_si512(_mm256_loadu_si256(xc.as_ptr().add(o).cast()));
                        for (i, wi) in wt.iter().enumerate() {
                            let xv =
                                _mm512_zextsi256_si512(_mm256_loadu_si256(xp.add(32 * i).cast()));
                            s = _mm512_dpbusd_epi32(s, *wi, xv);
                        }
                        let xsv =
                            _mm512_zextps256_ps512(_mm256_loadu_ps(xs.as_ptr().add(o).cast()));
                        (s, xsv)
                    } else {
                        let xp = xt.as_ptr().add(v * c + 256 * g);
                        let o = v * quads * 32 + 64 * g;
                        let mut s = _mm512_loadu_si512(xc.as_ptr().add(o).cast());
                        for (i, wi) in wt.iter().enumerate() {
                            let xv = _mm512_loadu_si512(xp.add(64 * i).cast());
                            s = _mm512_dpbusd_epi32(s, *wi, xv);
                        }
                        (s, _mm512_loadu_ps(xs.as_ptr().add(o).cast()))
                    };
                    let sc = _mm512_mul_ps(dw, xsv);
                    *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, *a);
                }
            }
        }
    }
    for (ak, &r) in acc.iter().zip(&rows) {
        let w = (&q[r * c..(r + 1) * c], &d[r * nb..(r + 1) * nb]);
        for (k, a) in ak.iter().enumerate() {
            let n = if HALF && k == P - 1 { 1 } else { 2 };
            pair_totals(*a, n, w, (xq, xd), v0 + 2 * k, |v, t| y[v * p + r] = t);
        }
    }
}

/// A row's results for vectors v and v + 1 (`n` = 2) or v alone (`n` = 1) from a pair's
/// accumulator over the whole quads: each 256-bit half reduced by the single kernel's
/// `hsum_f32`, then the blocks past the last whole quad added one at a time with exact integer
/// sums, as the single kernel's `finish` does. `w`: the row's C quants and NB scales; `x`: the
/// activations (B, C) and scales (B, NB). Calls `out(vector, result)`.
#[inline]
#[target_feature(enable = "avx2,avx512f,f16c")]
fn pair_totals(
    a: __m512,
    n: usize,
    (qr, dr): (&[i8], &[f16]),
    (xq, xd): (&[i8], &[f32]),
    v: usize,
    mut out: impl FnMut(usize, f32),
) {
    let (c, nb) = (qr.len(), dr.len());
    let quads = c / (4 * Q8_BLOCK);
    let halves = [
        _mm512_castps512_ps256(a),
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a))),
    ];
    for (hi, half) in halves.into_iter().enumerate().take(n) {
        let v = v + hi;
        let (xv, xdv) = (&xq[v * c..(v + 1) * c], &xd[v * nb..(v + 1) * nb]);
        let mut t = hsum_f32(half);
        for blk in 4 * quads..nb {
            let j = blk * Q8_BLOCK;
            let end = (j + Q8_BLOCK).min(c);
            let s: i32 = (j..end).map(|j| i32::from(qr[j]) * i32::from(xv[j])).sum();
            t += (f16_to_f32(dr[blk]) * xdv[blk]) * s as f32;
        }
        out(v, t);
    }
}

/// [`group_q8_wide`] for four rows and P whole pairs, pair after pair: each quad's four rows
/// are loaded, flipped and transposed once (16 registers), then each pair's activations are
/// loaded once for the four rows, and the accumulators live in memory (one load and one store
/// per row, pair and quad), so the activations are not read again per row. The same operations
/// per lane in the same order as [`group_q8_wide`]: the same bits.
///
/// `group_q8_wide` with four pairs let the compiler keep a quad's activations of all pairs in
/// registers across the rows, and spill the accumulators and weights around them. On Zen 5
/// (2026-12-05, `cargo bench -p emberlm-benches --bench multi -- --b 2,4,6,8`, three
/// alternating runs) this one costs 1.66–1.67 single passes per GPT-2 step at B = 8 against
/// 1.80–1.82; at B = 2 and 4 it was slower (1.30 / 1.43 against 1.21 / 1.36), at B = 6 the same,
/// so only whole groups of four pairs use it.
///
/// # Safety
/// As [`group_q8_wide`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn group_q8_rows4<const P: usize>(
    q: &[i8],
    d: &[f16],
    (xq, xd, xt, xs, xc): Prepared<'_>,
    (c, p): (usize, usize),
    y: &mut [f32],
    rows: [usize; 4],
    v0: usize,
) {
    let nb = c.div_ceil(Q8_BLOCK);
    let quads = c / (4 * Q8_BLOCK);
    let flip = _mm512_set1_epi8(-128);
    let mut acc = [[_mm512_setzero_ps(); 4]; P];
    let ap = acc.as_mut_ptr().cast::<__m512>();
    for g in 0..quads {
        // SAFETY: as in `group_q8_wide`: quad g is whole in each row, the pairs' prepared
        // activations are inside xt, xs, xc; `ap` points at the P · 4 accumulators.
        unsafe {
            let mut wt = [[_mm512_setzero_si512(); 4]; 4];
            let mut dw = [_mm512_setzero_ps(); 4];
            for (ri, &r) in rows.iter().enumerate() {
                let wp = q.as_ptr().add(r * c + 128 * g);
                _mm_prefetch::<_MM_HINT_NTA>(wp.wrapping_add(PREFETCH).cast());
                _mm_prefetch::<_MM_HINT_NTA>(wp.wrapping_add(PREFETCH + 64).cast());
                wt[ri] = transpose_512(std::array::from_fn(|k| {
                    let w = _mm512_broadcast_i64x4(_mm256_loadu_si256(wp.add(32 * k).cast()));
                    _mm512_xor_si512(w, flip)
                }));
                let h = d
                    .as_ptr()
                    .add(r * nb + 4 * g)
                    .cast::<i64>()
                    .read_unaligned();
                dw[ri] = _mm512_cvtph_ps(_mm256_set1_epi64x(h));
            }
            for k in 0..P {
                let v = v0 + 2 * k;
                let xp = xt.as_ptr().add(v * c + 256 * g);
                let o = v * quads * 32 + 64 * g;
                let xv: [__m512i; 4] =
                    std::array::from_fn(|i| _mm512_loadu_si512(xp.add(64 * i).cast()));
                let c0 = _mm512_loadu_si512(xc.as_ptr().add(o).cast());
                let xsv = _mm512_loadu_ps(xs.as_ptr().add(o).cast());
                for ri in 0..4 {
                    let mut s = c0;
                    for i in 0..4 {
                        s = _mm512_dpbusd_epi32(s, wt[ri][i], xv[i]);
                    }
                    let sc = _mm512_mul_ps(dw[ri], xsv);
                    let a = ap.add(4 * k + ri);
                    a.write_volatile(_mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(s),
                        sc,
                        a.read_volatile(),
                    ));
                }
            }
        }
    }
    for (ri, &r) in rows.iter().enumerate() {
        let w = (&q[r * c..(r + 1) * c], &d[r * nb..(r + 1) * nb]);
        for (k, ak) in acc.iter().enumerate() {
            pair_totals(ak[ri], 2, w, (xq, xd), v0 + 2 * k, |v, t| y[v * p + r] = t);
        }
    }
}

// ------------------------------------------------------------------ int4 x int8

pub(super) fn multi_q4q8(
    _t: Avx512,
    w: Q4Matrix<'_>,
    (xq, xd): (&[i8], &[f32]),
    b: usize,
    y: &mut [f32],
    row_start: usize,
    scratch: &mut [u8],
) {
    let (c, nb) = (w.cols(), w.blocks_per_row());
    let p = y.len() / b;
    let quads = c / (4 * Q4_BLOCK);
    assert!(
        xq.len() == b * c && xd.len() == b * nb && y.len() == b * p && row_start + p <= w.rows(),
        "avx512 multi_q4q8: lengths"
    );
    let rb = nb * Q4_BLOCK_BYTES;
    let (q, d) = (
        &w.quants()[row_start * rb..(row_start + p) * rb],
        &w.scales()[row_start * nb..(row_start + p) * nb],
    );
    let (xt, xs) = aligned(scratch, b * c + b * quads * 32).split_at_mut(b * c);
    // SAFETY: the token proves the features; q, d hold P rows, xq / xt are (B, C), xd (B, NB),
    // xs holds B · quads · 32 bytes.
    unsafe {
        prepare_x4((xq, xd), (xt, xs), c);
        multi_q4q8_vnni(q, d, (xq, xd, &*xt, &*xs), b, c, y);
    }
}

/// Y (B, P) for the P rows of an int4 matrix (q: NB · 16 bytes a row, d: NB scales a row); rows
/// one at a time in the four-stream order, vectors in groups of [`Q_GROUP`] ([`group_q4`]).
///
/// # Safety
/// The CPU must have the [`Avx512`] features; xt and xs from [`prepare_x4`], xq (B, C), xd
/// (B, NB), y (B, P).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn multi_q4q8_vnni(
    q: &[u8],
    d: &[f16],
    x: (&[i8], &[f32], &[u8], &[u8]),
    b: usize,
    c: usize,
    y: &mut [f32],
) {
    let p = y.len() / b;
    let qn = p / 4;
    let each = |rows: &[usize], y: &mut [f32]| {
        let mut v = 0;
        while v < b {
            let g = (b - v).min(Q_GROUP);
            // SAFETY: the caller's guarantees; rows < P and vectors v .. v + g <= B.
            unsafe { dispatch!(group_q4, rows, g, (q, d, x, (c, p), y), v) }
            v += g;
        }
    };
    for i in 0..qn {
        each(&[i, qn + i, 2 * qn + i, 3 * qn + i], y);
    }
    for r in 4 * qn..p {
        each(&[r], y);
    }
}

/// Two vectors' 32-bit lanes shuffled within each 128-bit half: `[a0, a2, b0, b2]` (`EVEN`) or
/// `[a1, a3, b1, b3]` (`ODD`).
#[inline]
#[target_feature(enable = "avx2")]
fn pick<const IMM: i32>(a: __m256i, b: __m256i) -> __m256i {
    _mm256_castps_si256(_mm256_shuffle_ps::<IMM>(
        _mm256_castsi256_ps(a),
        _mm256_castsi256_ps(b),
    ))
}
const EVEN: i32 = 0b10_00_10_00;
const ODD: i32 = 0b11_01_11_01;

/// For the int4 kernel: xt ← each vector's whole quads rearranged (see [`group_q4`]) and offset
/// by +128; xs ← each quad's activation scales in the single kernel's packed order
/// `[x0, x0, x2, x2, x1, x1, x3, x3]` (8 f32 per vector and quad).
///
/// # Safety
/// The CPU must have AVX2; xq and xt are (B, C), xd (B, NB), xs B · quads · 32 bytes.
#[target_feature(enable = "avx2")]
unsafe fn prepare_x4((xq, xd): (&[i8], &[f32]), (xt, xs): (&mut [u8], &mut [u8]), c: usize) {
    let flip = _mm256_set1_epi8(-128);
    let quads = c / (4 * Q4_BLOCK);
    let nb = c.div_ceil(Q4_BLOCK);
    let order = _mm256_setr_epi32(0, 0, 2, 2, 1, 1, 3, 3);
    for (v, (xv, tv)) in xq
        .chunks_exact(c.max(1))
        .zip(xt.chunks_exact_mut(c.max(1)))
        .enumerate()
    {
        for g in 0..quads {
            // SAFETY: quad g is columns 128g .. 128g + 128 of both vectors (C long), scales
            // 4g .. 4g + 4 of the vector's NB, bytes (v·quads + g)·32 .. + 32 of xs.
            unsafe {
                let m: [__m256i; 4] = std::array::from_fn(|k| {
                    _mm256_loadu_si256(xv.as_ptr().add(128 * g + 32 * k).cast())
                });
                // pairs[h]: x aligned with the unpacked weights of blocks 2h, 2h + 1: elements
                // 0..16 of both, then 16..32 of both.
                let pairs: [[__m256i; 2]; 2] = std::array::from_fn(|h| {
                    let (a, b) = (m[2 * h], m[2 * h + 1]);
                    [
                        _mm256_permute2x128_si256::<0x20>(a, b),
                        _mm256_permute2x128_si256::<0x31>(a, b),
                    ]
                });
                let t = [
                    pick::<EVEN>(pairs[0][0], pairs[1][0]),
                    pick::<ODD>(pairs[0][0], pairs[1][0]),
                    pick::<EVEN>(pairs[0][1], pairs[1][1]),
                    pick::<ODD>(pairs[0][1], pairs[1][1]),
                ];
                for (i, t) in t.into_iter().enumerate() {
                    let o = tv.as_mut_ptr().add(128 * g + 32 * i);
                    _mm256_storeu_si256(o.cast(), _mm256_xor_si256(t, flip));
                }
                let s = _mm256_castps128_ps256(_mm_loadu_ps(xd.as_ptr().add(v * nb + 4 * g)));
                let s = _mm256_permutevar8x32_ps(s, order);
                _mm256_storeu_ps(xs.as_mut_ptr().add((v * quads + g) * 32).cast(), s);
            }
        }
    }
}

/// Rows `rows` (four streams, or one row) of an int4 matrix against vectors v0 .. v0 + G.
///
/// The single kernel (`matvec_q4q8_rows_vnni`) packs, for each quad of four blocks A, B, C, D,
/// two exact partial sums per block as `[A1, A2, C1, C2, B1, B2, D1, D2]` (1: a block's elements
/// 0..8 and 16..24, 2: 8..16 and 24..32) by `vphaddd`. Here the codebook lookup's bytes are
/// rearranged once per row and quad ([`pick`]) and the activations once per call
/// ([`prepare_x4`]) so that four chained `vpdpbusd` leave those exact sums in those lanes. The
/// activations enter offset by +128 against the signed codebook levels, so each lane starts at
/// −128 · Σ w over its 16 weights (once per row and quad). The f32 operations are the single
/// kernel's, in its order.
///
/// # Safety
/// As [`multi_q4q8_vnni`]: every row < P, v0 + G <= B, xt and xs from [`prepare_x4`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn group_q4<const R: usize, const G: usize>(
    q: &[u8],
    d: &[f16],
    (xq, xd, xt, xs): (&[i8], &[f32], &[u8], &[u8]),
    (c, p): (usize, usize),
    y: &mut [f32],
    rows: [usize; R],
    v0: usize,
) {
    let nb = c.div_ceil(Q4_BLOCK);
    let rb = nb * Q4_BLOCK_BYTES;
    let full = c / Q4_BLOCK;
    let quads = full / 4;
    // SAFETY: Q4_CODEBOOK is 16 readable bytes.
    let table =
        unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(Q4_CODEBOOK.as_ptr().cast())) };
    let flip = _mm256_set1_epi8(-128);
    let low = _mm256_set1_epi8(0x0F);
    let zero = _mm256_setzero_si256();
    let order = _mm256_setr_epi32(0, 0, 2, 2, 1, 1, 3, 3);
    let mut acc = [[_mm256_setzero_ps(); G]; R];
    for g in 0..quads {
        for (ak, &r) in acc.iter_mut().zip(&rows) {
            // SAFETY: quad g is whole: bytes 64g .. 64g + 64 of row r, 128g .. 128g + 128 of
            // each vector's xt, 32 bytes of xs per vector, scales 4g .. 4g + 4 of the row.
            unsafe {
                let wp = q.as_ptr().add(r * rb + 64 * g);
                let un: [[__m256i; 2]; 2] = std::array::from_fn(|h| {
                    let v = _mm256_loadu_si256(wp.add(32 * h).cast());
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
                    [
                        _mm256_shuffle_epi8(table, _mm256_and_si256(v, low)),
                        _mm256_shuffle_epi8(table, hi),
                    ]
                });
                let wt = [
                    pick::<EVEN>(un[0][0], un[1][0]),
                    pick::<ODD>(un[0][0], un[1][0]),
                    pick::<EVEN>(un[0][1], un[1][1]),
                    pick::<ODD>(un[0][1], un[1][1]),
                ];
                let mut s = zero;
                for wi in wt {
                    s = _mm256_dpbusd_epi32(s, flip, wi);
                }
                let corr = _mm256_sub_epi32(zero, s);
                let h = d
                    .as_ptr()
                    .add(r * nb + 4 * g)
                    .cast::<i64>()
                    .read_unaligned();
                let dw = _mm256_permutevar8x32_ps(_mm256_cvtph_ps(_mm_set1_epi64x(h)), order);
                for (k, a) in ak.iter_mut().enumerate() {
                    let v = v0 + k;
                    let xp = xt.as_ptr().add(v * c + 128 * g);
                    let mut s = corr;
                    for (i, wi) in wt.iter().enumerate() {
                        let xv = _mm256_loadu_si256(xp.add(32 * i).cast());
                        s = _mm256_dpbusd_epi32(s, xv, *wi);
                    }
                    let xsv = _mm256_loadu_ps(xs.as_ptr().add((v * quads + g) * 32).cast());
                    *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, xsv), *a);
                }
            }
        }
    }
    for (ak, &r) in acc.iter().zip(&rows) {
        let (qr, dr) = (&q[r * rb..(r + 1) * rb], &d[r * nb..(r + 1) * nb]);
        for (k, a) in ak.iter().enumerate() {
            let v = v0 + k;
            let (xv, xdv) = (&xq[v * c..(v + 1) * c], &xd[v * nb..(v + 1) * nb]);
            let mut t = hsum_f32(*a);
            for blk in 4 * quads..nb {
                let block = &qr[blk * Q4_BLOCK_BYTES..][..Q4_BLOCK_BYTES];
                let j0 = blk * Q4_BLOCK;
                let s: i32 = (j0..(j0 + Q4_BLOCK).min(c))
                    .map(|j| {
                        i32::from(Q4_CODEBOOK[q4_nibble(block, j - j0) as usize]) * i32::from(xv[j])
                    })
                    .sum();
                t += (f16_to_f32(dr[blk]) * xdv[blk]) * s as f32;
            }
            y[v * p + r] = t;
        }
    }
}
