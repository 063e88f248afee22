#![allow(unsafe_code)]
//! x86-64 kernels: AVX2 + FMA + F16C (Haswell / Zen and later; no AVX-512, no VNNI needed).
//!
//! Every entry point takes an [`Avx2`] token, which only [`Avx2::detect`] can create, so calling
//! the `#[target_feature]` bodies is sound. Raw-pointer loads happen only after the lengths they
//! rely on were checked; each `unsafe` block says which check. Letters as in [`super`].
//!
//! Matrix-vector products work on 4 rows at a time (x is loaded once per 4 rows) with one 8-lane
//! accumulator per row, reduced with [`hsum4`]; column tails (C % 8, or the last short Q8 block)
//! are scalar. The 4 rows are i, Q+i, 2Q+i, 3Q+i of the Q·4 rows asked for, not 4 neighbours: each
//! of the 4 memory streams then runs through a contiguous quarter without restarting, which the
//! hardware prefetchers follow (`cargo bench -p emberlm-benches --bench kernels` measures it). Q8 weights are sign-extended to i32, converted to f32 and multiplied with x; each
//! block's partial sum is then scaled by its f16 scale (converted with F16C).

use super::Q8Matrix;
use super::geometry::{KB, ROWS, TOKENS};
use core::arch::x86_64::*;
use emberlm_formats::quant::Q8_BLOCK;
use half::f16;

/// Proof that this CPU has AVX2, FMA and F16C.
#[derive(Clone, Copy, Debug)]
pub(super) struct Avx2(());

impl Avx2 {
    /// `Some` when the CPU supports AVX2, FMA and F16C (checked at run time).
    pub(super) fn detect() -> Option<Self> {
        let ok = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        ok.then_some(Avx2(()))
    }
}

// ------------------------------------------------------------------ helpers

/// [Σ a, Σ b, Σ c, Σ d] of four 8-lane vectors.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
    let ab = _mm256_hadd_ps(a, b);
    let cd = _mm256_hadd_ps(c, d);
    let abcd = _mm256_hadd_ps(ab, cd);
    _mm_add_ps(
        _mm256_castps256_ps128(abcd),
        _mm256_extractf128_ps::<1>(abcd),
    )
}

/// Σ of the 8 lanes of `v`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// One f16 scale as f32, through F16C (half's portable conversion is ~18x slower).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16_to_f32(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h.to_bits()))))
}

/// `[f32; 4]` from a vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn to_array4(v: __m128) -> [f32; 4] {
    let mut out = [0f32; 4];
    // SAFETY: `out` holds 4 f32; storeu has no alignment requirement.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), v) };
    out
}

/// 8 f32 from `s[i..i + 8]` (bounds-checked).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load(s: &[f32], i: usize) -> __m256 {
    let s = &s[i..i + 8];
    // SAFETY: `s` holds exactly 8 f32; loadu has no alignment requirement.
    unsafe { _mm256_loadu_ps(s.as_ptr()) }
}

/// 8 f16 from `s[i..i + 8]` as f32 (bounds-checked).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_f16(s: &[f16], i: usize) -> __m256 {
    let s = &s[i..i + 8];
    // SAFETY: `s` holds exactly 8 f16 = 16 bytes; loadu has no alignment requirement.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().cast())) }
}

/// Stores 8 f32 into `s[i..i + 8]` (bounds-checked).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store(s: &mut [f32], i: usize, v: __m256) {
    let s = &mut s[i..i + 8];
    // SAFETY: `s` holds exactly 8 f32; storeu has no alignment requirement.
    unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
}

/// exp(x) lane-wise: Cody-Waite reduction by ln 2 and a degree-7 polynomial (the Cephes `expf`
/// coefficients), relative error about 2e-7. Lanes below -87 (including -∞) give exactly 0; lanes
/// above 88 give exp(88).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn exp256(x: __m256) -> __m256 {
    let underflow = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-87.0));
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.0)),
        _mm256_set1_ps(88.0),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(core::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_2e-3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_452e-3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.166_666_65));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
    let r2 = _mm256_mul_ps(r, r);
    let e = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
    // 2^n through the exponent bits; n is in [-126, 127] after the clamp.
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_andnot_ps(underflow, _mm256_mul_ps(e, _mm256_castsi256_ps(bits)))
}

// ------------------------------------------------------------------ matrix-vector

pub(super) fn matvec_f32_rows(_t: Avx2, w: &[f32], x: &[f32], y: &mut [f32], row_start: usize) {
    // SAFETY: the token proves AVX2 + FMA + F16C.
    unsafe { matvec_f32_rows_avx2(w, x, y, row_start) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn matvec_f32_rows_avx2(w: &[f32], x: &[f32], y: &mut [f32], row_start: usize) {
    let c = x.len();
    let c8 = c - c % 8;
    let n = y.len();
    let q = n / 4;
    // Rows i, q+i, 2q+i, 3q+i together: four memory streams that each run through a contiguous
    // quarter of the rows without restarting, which the hardware prefetchers follow well.
    let wq = &w[row_start * c..(row_start + 4 * q) * c];
    for i in 0..q {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut j = 0;
        while j < c8 {
            // SAFETY: j + 8 <= c8 <= c; `x` has c elements and `wq` has 4q rows of c, of which
            // rows i + k*q (k < 4, i < q) are read.
            unsafe {
                let xv = _mm256_loadu_ps(x.as_ptr().add(j));
                for (k, a) in acc.iter_mut().enumerate() {
                    let p = wq.as_ptr().add((k * q + i) * c + j);
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(p), xv, *a);
                }
            }
            j += 8;
        }
        let s = to_array4(hsum4(acc[0], acc[1], acc[2], acc[3]));
        for (k, mut s) in s.into_iter().enumerate() {
            let row = &wq[(k * q + i) * c..(k * q + i + 1) * c];
            for jj in c8..c {
                s += row[jj] * x[jj];
            }
            y[k * q + i] = s;
        }
    }
    for (i, yv) in y.iter_mut().enumerate().skip(4 * q) {
        *yv = dot_f32_avx2(&w[(row_start + i) * c..(row_start + i + 1) * c], x);
    }
}

pub(super) fn matvec_f16_rows(_t: Avx2, w: &[f16], x: &[f32], y: &mut [f32], row_start: usize) {
    // SAFETY: the token proves AVX2 + FMA + F16C.
    unsafe { matvec_f16_rows_avx2(w, x, y, row_start) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn matvec_f16_rows_avx2(w: &[f16], x: &[f32], y: &mut [f32], row_start: usize) {
    let c = x.len();
    let c8 = c - c % 8;
    let n = y.len();
    let q = n / 4;
    // Rows i, q+i, 2q+i, 3q+i together: four continuous memory streams (see the f32 kernel).
    let wq = &w[row_start * c..(row_start + 4 * q) * c];
    for i in 0..q {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut j = 0;
        while j < c8 {
            // SAFETY: j + 8 <= c8 <= c; `x` has c elements and `wq` has 4q rows of c halves, of
            // which rows i + k*q (k < 4, i < q) are read; 8 halves are one unaligned 16-byte load.
            unsafe {
                let xv = _mm256_loadu_ps(x.as_ptr().add(j));
                for (k, a) in acc.iter_mut().enumerate() {
                    let p = wq.as_ptr().add((k * q + i) * c + j).cast::<__m128i>();
                    *a = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(p)), xv, *a);
                }
            }
            j += 8;
        }
        let s = to_array4(hsum4(acc[0], acc[1], acc[2], acc[3]));
        for (k, mut s) in s.into_iter().enumerate() {
            let row = &wq[(k * q + i) * c..(k * q + i + 1) * c];
            for jj in c8..c {
                s += f16_to_f32(row[jj]) * x[jj];
            }
            y[k * q + i] = s;
        }
    }
    for (i, yv) in y.iter_mut().enumerate().skip(4 * q) {
        *yv = dot_f32_f16_avx2(x, &w[(row_start + i) * c..(row_start + i + 1) * c]);
    }
}

pub(super) fn matvec_q8_rows(
    _t: Avx2,
    w: Q8Matrix<'_>,
    x: &[f32],
    y: &mut [f32],
    row_start: usize,
) {
    // SAFETY: the token proves AVX2 + FMA + F16C.
    unsafe { matvec_q8_rows_avx2(w, x, y, row_start) }
}

/// Σ over the 32 elements of one full block: q (32 i8 at `q`) · x (8-lane vectors `xv`).
///
/// # Safety
/// `q` must be valid for reading 32 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_dot(q: *const i8, xv: &[__m256; 4]) -> __m256 {
    // SAFETY: the caller guarantees 32 readable bytes at `q`; each load reads 8 of them.
    unsafe {
        let w = |g: usize| {
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(q.add(8 * g).cast())))
        };
        let s = _mm256_mul_ps(w(0), xv[0]);
        let s = _mm256_fmadd_ps(w(1), xv[1], s);
        let s = _mm256_fmadd_ps(w(2), xv[2], s);
        _mm256_fmadd_ps(w(3), xv[3], s)
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn matvec_q8_rows_avx2(w: Q8Matrix<'_>, x: &[f32], y: &mut [f32], row_start: usize) {
    let (c, nb) = (w.cols(), w.blocks_per_row());
    let full = c / Q8_BLOCK; // full blocks per row; a short last block is scalar
    let n = y.len();
    let q = n / 4;
    // Rows i, q+i, 2q+i, 3q+i together: four continuous memory streams (see the f32 kernel).
    let qq = &w.quants()[row_start * c..(row_start + 4 * q) * c];
    let dq = &w.scales()[row_start * nb..(row_start + 4 * q) * nb];
    for i in 0..q {
        let mut acc = [_mm256_setzero_ps(); 4];
        for b in 0..full {
            let j = b * Q8_BLOCK;
            let xv = [load(x, j), load(x, j + 8), load(x, j + 16), load(x, j + 24)];
            for (k, a) in acc.iter_mut().enumerate() {
                let row = k * q + i;
                // SAFETY: block b is full, so qq[row*c + j .. row*c + j + 32] is inside the row.
                let s = unsafe { block_dot(qq.as_ptr().add(row * c + j), &xv) };
                *a = _mm256_fmadd_ps(s, _mm256_set1_ps(f16_to_f32(dq[row * nb + b])), *a);
            }
        }
        let s = to_array4(hsum4(acc[0], acc[1], acc[2], acc[3]));
        for (k, mut s) in s.into_iter().enumerate() {
            let row = k * q + i;
            if full < nb {
                let j0 = full * Q8_BLOCK;
                let t: f32 = (j0..c).map(|j| f32::from(qq[row * c + j]) * x[j]).sum();
                s += t * f16_to_f32(dq[row * nb + full]);
            }
            y[row] = s;
        }
    }
    for (i, yv) in y.iter_mut().enumerate().skip(4 * q) {
        let q = &w.quants()[(row_start + i) * c..(row_start + i + 1) * c];
        let d = &w.scales()[(row_start + i) * nb..(row_start + i + 1) * nb];
        let mut acc = _mm256_setzero_ps();
        for (b, &db) in d[..full].iter().enumerate() {
            let j = b * Q8_BLOCK;
            let xv = [load(x, j), load(x, j + 8), load(x, j + 16), load(x, j + 24)];
            // SAFETY: block b is full, so q[j .. j + 32] is inside the row.
            let s = unsafe { block_dot(q.as_ptr().add(j), &xv) };
            acc = _mm256_fmadd_ps(s, _mm256_set1_ps(f16_to_f32(db)), acc);
        }
        let mut s = hsum(acc);
        if full < nb {
            let j0 = full * Q8_BLOCK;
            let t: f32 = (j0..c).map(|j| f32::from(q[j]) * x[j]).sum();
            s += t * f16_to_f32(d[full]);
        }
        *yv = s;
    }
}

pub(super) fn matvec_q8q8_rows(
    _t: Avx2,
    w: Q8Matrix<'_>,
    xq: &[i8],
    xd: &[f32],
    y: &mut [f32],
    row_start: usize,
) {
    // SAFETY: the token proves AVX2 + FMA + F16C.
    unsafe { matvec_q8q8_rows_avx2(w, xq, xd, y, row_start) }
}

/// 8 i32 lanes summing to Σ w·x over one full block: w (32 i8 at `w`), x (32 i8 in `xv`).
/// `maddubs` multiplies unsigned by signed bytes, so it gets |w| and x·sign(w) (|w| ≤ 128 and
/// |x| ≤ 127: each i16 pair sum is at most 32512, no saturation); `madd` with ones widens to i32.
///
/// # Safety
/// `w` must be valid for reading 32 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_dot_q8(w: *const i8, xv: __m256i) -> __m256 {
    // SAFETY: the caller guarantees 32 readable bytes at `w`; loadu has no alignment requirement.
    let wv = unsafe { _mm256_loadu_si256(w.cast()) };
    let aw = _mm256_sign_epi8(wv, wv);
    let sx = _mm256_sign_epi8(xv, wv);
    let p16 = _mm256_maddubs_epi16(aw, sx);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
}

/// Eight i32 lanes `[s0, s1, s2, s3, s0, s1, s2, s3]` (each a partial sum; the two lanes of block
/// k sum to its Σ w·x) for the four consecutive full blocks at `w` against `xv`.
///
/// # Safety
/// `w` must be valid for reading 128 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quad_dot_q8(w: *const i8, xv: &[__m256i; 4]) -> __m256i {
    let one = _mm256_set1_epi16(1);
    let mut m = [_mm256_setzero_si256(); 4];
    for (k, m) in m.iter_mut().enumerate() {
        // SAFETY: the caller guarantees 128 readable bytes at `w`; block k is bytes 32k..32k+32.
        let wv = unsafe { _mm256_loadu_si256(w.add(32 * k).cast()) };
        let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv[k], wv));
        *m = _mm256_madd_epi16(p16, one);
    }
    _mm256_hadd_epi32(_mm256_hadd_epi32(m[0], m[1]), _mm256_hadd_epi32(m[2], m[3]))
}

/// `[d0·x0, d1·x1, d2·x2, d3·x3]` in both halves: four f16 weight scales at `d` times four
/// activation scales at `x`.
///
/// # Safety
/// `d` must be valid for reading 4 f16 and `x` for 4 f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quad_scales(d: *const f16, x: *const f32) -> __m256 {
    // SAFETY: the caller guarantees 8 readable bytes at `d` and 16 at `x`; no alignment needed.
    let (dv, xv) = unsafe { (_mm_loadl_epi64(d.cast()), _mm_loadu_ps(x)) };
    let s = _mm_mul_ps(_mm_cvtph_ps(dv), xv);
    _mm256_set_m128(s, s)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn matvec_q8q8_rows_avx2(w: Q8Matrix<'_>, xq: &[i8], xd: &[f32], y: &mut [f32], row_start: usize) {
    let (c, nb) = (w.cols(), w.blocks_per_row());
    let full = c / Q8_BLOCK;
    // Blocks 0..quads*4 go four at a time (one hadd-packed vector, one scale vector); the other
    // full blocks one at a time; a partial last block in scalar code.
    let quads = full / 4;
    let n = y.len();
    let q = n / 4;
    let rest = |row: &[i8], d: &[f16]| -> f32 {
        let mut acc = _mm256_setzero_ps();
        for b in 4 * quads..full {
            let j = b * Q8_BLOCK;
            // SAFETY: j + 32 <= full * 32 <= xq.len() = row.len().
            let s = unsafe {
                block_dot_q8(
                    row.as_ptr().add(j),
                    _mm256_loadu_si256(xq.as_ptr().add(j).cast()),
                )
            };
            acc = _mm256_fmadd_ps(s, _mm256_set1_ps(f16_to_f32(d[b]) * xd[b]), acc);
        }
        let mut t = hsum(acc);
        if full < nb {
            let j0 = full * Q8_BLOCK;
            let s: i32 = (j0..c).map(|j| i32::from(row[j]) * i32::from(xq[j])).sum();
            t += (f16_to_f32(d[full]) * xd[full]) * s as f32;
        }
        t
    };
    // Rows i, q+i, 2q+i, 3q+i together: four continuous memory streams (see the f32 kernel).
    let qq = &w.quants()[row_start * c..(row_start + n) * c];
    let dq = &w.scales()[row_start * nb..(row_start + n) * nb];
    let xs = &xq[..full * Q8_BLOCK];
    let xds = &xd[..4 * quads];
    for i in 0..q {
        let mut acc = [_mm256_setzero_ps(); 4];
        for g in 0..quads {
            let j = g * 4 * Q8_BLOCK;
            // SAFETY: j + 128 <= quads * 128 <= xs.len().
            let xv: [__m256i; 4] = std::array::from_fn(|k| unsafe {
                _mm256_loadu_si256(xs.as_ptr().add(j + 32 * k).cast())
            });
            for (k, a) in acc.iter_mut().enumerate() {
                let row = k * q + i;
                // SAFETY: blocks 4g..4g+4 of the row are full (4g + 4 <= full), so
                // qq[row*c + j .. +128] is inside the row; scales 4g..4g+4 exist in the row's
                // NB scales and in xds (4 * quads long).
                let (s, sc) = unsafe {
                    (
                        quad_dot_q8(qq.as_ptr().add(row * c + j), &xv),
                        quad_scales(dq.as_ptr().add(row * nb + 4 * g), xds.as_ptr().add(4 * g)),
                    )
                };
                *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), sc, *a);
            }
        }
        let s = to_array4(hsum4(acc[0], acc[1], acc[2], acc[3]));
        for (k, s) in s.into_iter().enumerate() {
            let row = k * q + i;
            y[row] = s + rest(&qq[row * c..(row + 1) * c], &dq[row * nb..(row + 1) * nb]);
        }
    }
    for row in 4 * q..n {
        let (wr, dr) = (&qq[row * c..(row + 1) * c], &dq[row * nb..(row + 1) * nb]);
        let mut acc = _mm256_setzero_ps();
        for g in 0..quads {
            let j = g * 4 * Q8_BLOCK;
            // SAFETY: as above, for this row: blocks 4g..4g+4 are full.
            let (s, sc) = unsafe {
                let xv: [__m256i; 4] =
                    std::array::from_fn(|k| _mm256_loadu_si256(xs.as_ptr().add(j + 32 * k).cast()));
                (
                    quad_dot_q8(wr.as_ptr().add(j), &xv),
                    quad_scales(dr.as_ptr().add(4 * g), xds.as_ptr().add(4 * g)),
                )
            };
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), sc, acc);
        }
        y[row] = hsum(acc) + rest(wr, dr);
    }
}

pub(super) fn quantize_q8(_t: Avx2, x: &[f32], q: &mut [i8], d: &mut [f32]) {
    // SAFETY: the token proves AVX2 + FMA + F16C.
    unsafe { quantize_q8_avx2(x, q, d) }
}

/// [`super::reference::quantize_q8`] with the same bits: full blocks 32 lanes at a time (the
/// same f32 products and sums, NaN-ignoring maxima, NaN to 0, saturation at 127), a short last
/// block by the reference.
#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_q8_avx2(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    let full = x.len() / Q8_BLOCK;
    let sign = _mm256_set1_ps(-0.0);
    for (b, db) in d.iter_mut().enumerate().take(full) {
        let j = b * Q8_BLOCK;
        let xs = &x[j..j + Q8_BLOCK];
        // SAFETY: xs holds 32 f32: four loads of 8.
        let v: [__m256; 4] =
            std::array::from_fn(|k| unsafe { _mm256_loadu_ps(xs.as_ptr().add(8 * k)) });
        // max(|x|, m) returns m when |x| is NaN: NaNs are skipped, as f32::max skips them.
        let mut m = _mm256_setzero_ps();
        for vk in v {
            m = _mm256_max_ps(_mm256_andnot_ps(sign, vk), m);
        }
        let h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        let amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps::<1>(h, h)));
        *db = amax / 127.0;
        let inv = _mm256_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
        let t: [__m256i; 4] = std::array::from_fn(|k| {
            let r = _mm256_mul_ps(v[k], inv);
            let a = _mm256_add_ps(_mm256_andnot_ps(sign, r), _mm256_set1_ps(0.5));
            // min(a, 127) gives 127 for NaN; the NaN mask then zeroes it (`NaN as i32` is 0).
            let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(a, a);
            let a = _mm256_andnot_ps(nan, _mm256_min_ps(a, _mm256_set1_ps(127.0)));
            let t = _mm256_cvttps_epi32(a);
            let neg = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LT_OQ>(r, _mm256_setzero_ps()));
            _mm256_blendv_epi8(t, _mm256_sub_epi32(_mm256_setzero_si256(), t), neg)
        });
        // i32 → i8 (exact: every value is within ±127); packs work per 128-bit half, the
        // permutation restores the order.
        let p = _mm256_packs_epi16(
            _mm256_packs_epi32(t[0], t[1]),
            _mm256_packs_epi32(t[2], t[3]),
        );
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        let qs = &mut q[j..j + Q8_BLOCK];
        // SAFETY: qs holds 32 bytes.
        unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), p) };
    }
    if full * Q8_BLOCK < x.len() {
        let j = full * Q8_BLOCK;
        super::reference::quantize_q8(&x[j..], &mut q[j..], &mut d[full..]);
    }
}

// ------------------------------------------------------------------ prefill microkernels

/// out[..kc] ← row r, columns k0 .. k0 + kc of W dequantized (k0 % 32 == 0).
pub(super) fn dequant_row(
    _t: Avx2,
    w: Q8Matrix<'_>,
    r: usize,
    k0: usize,
    kc: usize,
    out: &mut [f32],
) {
    // SAFETY: the token proves AVX2 + FMA + F16C.
    unsafe { dequant_row_avx2(w, r, k0, kc, out) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dequant_row_avx2(w: Q8Matrix<'_>, r: usize, k0: usize, kc: usize, out: &mut [f32]) {
    let (c, nb) = (w.cols(), w.blocks_per_row());
    let q = &w.quants()[r * c + k0..][..kc];
    let d = &w.scales()[r * nb + k0 / Q8_BLOCK..];
    let o = &mut out[..kc];
    for ((ob, qb), d) in o.chunks_mut(Q8_BLOCK).zip(q.chunks(Q8_BLOCK)).zip(d) {
        let d = f16_to_f32(*d);
        if qb.len() == Q8_BLOCK {
            let dv = _mm256_set1_ps(d);
            for g in 0..4 {
                // SAFETY: qb holds 32 bytes, so bytes 8g .. 8g+8 are inside it.
                let qv = unsafe { _mm_loadl_epi64(qb.as_ptr().add(8 * g).cast()) };
                let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(qv));
                store(ob, 8 * g, _mm256_mul_ps(v, dv));
            }
        } else {
            ob.iter_mut()
                .zip(qb)
                .for_each(|(o, &q)| *o = f32::from(q) * d);
        }
    }
}

/// The FMA peak loop ([`super::peak`]): 12 independent 8-lane multiply-add chains (two FMA units
/// × four cycles of latency need at least 8). Returns their sum and the flops done.
pub(super) fn fma_loop(_t: Avx2, iters: usize) -> (f32, u64) {
    // SAFETY: the token proves AVX2 + FMA + F16C.
    let sum = unsafe { fma_loop_avx2(iters) };
    (sum, (iters * 12 * 8 * 2) as u64)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn fma_loop_avx2(iters: usize) -> f32 {
    let mut acc: [__m256; 12] = std::array::from_fn(|i| _mm256_set1_ps(1.0 + i as f32));
    let (m, a) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, m, a);
        }
    }
    let s = acc
        .iter()
        .fold(_mm256_setzero_ps(), |s, &v| _mm256_add_ps(s, v));
    hsum(s)
}

/// Asks for every cache line of `bytes` to be brought into the L2 cache (a hint: no fault, no
/// effect on results).
pub(super) fn prefetch_l2(_t: Avx2, bytes: &[u8]) {
    for line in bytes.chunks(64) {
        // SAFETY: the token proves SSE (implied by AVX2); a prefetch of an address inside a live
        // slice reads nothing architecturally and cannot fault.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(line.as_ptr().cast()) }
    }
}

/// The packed prefill microkernel (see [`super::panel`]): 6 weight rows × 16 tokens of sums in
/// twelve registers; per column one 16-token load pair and six broadcasts feed twelve FMAs.
pub(super) fn panel_micro(
    _t: Avx2,
    panel: &[f32; ROWS * KB],
    x: &[f32],
    kc: usize,
    out: &mut [[f32; TOKENS]; ROWS],
) {
    assert!(
        kc <= KB && x.len() >= kc * TOKENS,
        "panel_micro: x too short"
    );
    // SAFETY: the token proves AVX2 + FMA + F16C; the assert bounds every read below.
    unsafe { panel_micro_avx2(panel, x, kc, out) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn panel_micro_avx2(
    panel: &[f32; ROWS * KB],
    x: &[f32],
    kc: usize,
    out: &mut [[f32; TOKENS]; ROWS],
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
    let (w, xs) = (panel.as_ptr(), x.as_ptr());
    for j in 0..kc {
        // SAFETY: j < kc <= KB, so w + i·KB + j (i < ROWS) lies in the panel, and
        // x holds kc · TOKENS elements (checked by the caller), so j·16 + 16 <= its length.
        unsafe {
            let x0 = _mm256_loadu_ps(xs.add(j * TOKENS));
            let x1 = _mm256_loadu_ps(xs.add(j * TOKENS + 8));
            for (i, a) in acc.iter_mut().enumerate() {
                let wv = _mm256_broadcast_ss(&*w.add(i * KB + j));
                a[0] = _mm256_fmadd_ps(wv, x0, a[0]);
                a[1] = _mm256_fmadd_ps(wv, x1, a[1]);
            }
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        store(o, 0, a[0]);
        store(o, 8, a[1]);
    }
}

// ------------------------------------------------------------------ small ops

pub(super) fn dot_f32(_t: Avx2, a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: the token proves AVX2 + FMA + F16C.
    unsafe { dot_f32_avx2(a, b) }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            *acc = _mm256_fmadd_ps(load(a, i + 8 * k), load(b, i + 8 * k), *acc);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(load(a, i), load(b, i), acc[0]);
        i += 8;
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut s = hsum(v);
    for j in i..n {
        s += a[j] * b[j];
    }
    s
}

pub(super) fn dot_f32_f16(_t: Avx2, a: &[f32], b: &[f16]) -> f32 {
    // SAFETY: the token proves AVX2 + FMA + F16C.
    unsafe { dot_f32_f16_avx2(a, b) }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_f32_f16_avx2(a: &[f32], b: &[f16]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            *acc = _mm256_fmadd_ps(load(a, i + 8 * k), load_f16(b, i + 8 * k), *acc);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(load(a, i), load_f16(b, i), acc[0]);
        i += 8;
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut s = hsum(v);
    for j in i..n {
        s += a[j] * f16_to_f32(b[j]);
    }
    s
}

pub(super) fn axpy(_t: Avx2, alpha: f32, x: &[f32], y: &mut [f32]) {
    // SAFETY: the token proves AVX2 + FMA + F16C.
    unsafe { axpy_avx2(alpha, x, y) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn axpy_avx2(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let av = _mm256_set1_ps(alpha);
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_fmadd_ps(av, load(x, i), load(y, i));
        store(y, i, v);
        i += 8;
    }
    for j in i..n {
        y[j] += alpha * x[j];
    }
}

pub(super) fn axpy_f16(_t: Avx2, alpha: f32, x: &[f16], y: &mut [f32]) {
    // SAFETY: the token proves AVX2 + FMA + F16C.
    unsafe { axpy_f16_avx2(alpha, x, y) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn axpy_f16_avx2(alpha: f32, x: &[f16], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let av = _mm256_set1_ps(alpha);
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_fmadd_ps(av, load_f16(x, i), load(y, i));
        store(y, i, v);
        i += 8;
    }
    for j in i..n {
        y[j] += alpha * f16_to_f32(x[j]);
    }
}

/// x, the identity: the f32 twin of [`f16_to_f32`] in [`group_kernels`].
#[inline]
fn f32_to_f32(x: f32) -> f32 {
    x
}

/// Attention over one KV-cache group of Hg heads (see [`super::Kernels::group_scores`]): keys and
/// values are (P, Hg, D), one position's Hg·D elements after another. Both kernels read the
/// positions as four memory streams, one per quarter, as the matrix-vector products read rows
/// (a head's 64-wide rows alone make streams too short for the prefetchers: `cargo bench -p
/// emberlm-benches --bench attention` compares the layouts). The P % 4 last positions are scalar over
/// positions, vector over D; columns past the last multiple of 8 are scalar.
macro_rules! group_kernels {
    ($t:ty, $scores:ident, $scores_avx2:ident, $weighted:ident, $weighted_avx2:ident,
     $load:ident, $to_f32:ident, $dot:ident, $axpy:ident) => {
        pub(super) fn $scores(_t: Avx2, k: &[$t], q: &[f32], s: &mut [f32], heads: usize) {
            // SAFETY: the token proves AVX2 + FMA + F16C.
            unsafe { $scores_avx2(k, q, s, heads) }
        }

        /// s (Hg, P): s[j·P + t] = k[t, j, :] · q[j, :].
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $scores_avx2(k: &[$t], q: &[f32], s: &mut [f32], heads: usize) {
            let (row, p) = (q.len(), s.len() / heads);
            let d = row / heads;
            let d8 = d - d % 8;
            let q4 = p / 4;
            for t in 0..q4 {
                for j in 0..heads {
                    let qj = &q[j * d..(j + 1) * d];
                    let at = |u: usize| &k[((u * q4 + t) * row + j * d)..][..d];
                    let rows = [at(0), at(1), at(2), at(3)];
                    let mut acc = [_mm256_setzero_ps(); 4];
                    let mut c = 0;
                    while c < d8 {
                        let qv = load(qj, c);
                        for (a, r) in acc.iter_mut().zip(rows) {
                            *a = _mm256_fmadd_ps($load(r, c), qv, *a);
                        }
                        c += 8;
                    }
                    let sums = to_array4(hsum4(acc[0], acc[1], acc[2], acc[3]));
                    for (u, (mut v, r)) in sums.into_iter().zip(rows).enumerate() {
                        for cc in d8..d {
                            v += $to_f32(r[cc]) * qj[cc];
                        }
                        s[j * p + u * q4 + t] = v;
                    }
                }
            }
            for t in 4 * q4..p {
                for j in 0..heads {
                    s[j * p + t] = $dot(&q[j * d..(j + 1) * d], &k[t * row + j * d..][..d]);
                }
            }
        }

        pub(super) fn $weighted(_t: Avx2, w: &[f32], v: &[$t], out: &mut [f32], heads: usize) {
            // SAFETY: the token proves AVX2 + FMA + F16C.
            unsafe { $weighted_avx2(w, v, out, heads) }
        }

        /// out (Hg, D) = Σ_t w[j·P + t] · v[t, j, :]. The sums stay in `out` (an L1-resident
        /// Hg·D): each pass adds four positions, one from each stream.
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $weighted_avx2(w: &[f32], v: &[$t], out: &mut [f32], heads: usize) {
            let (row, p) = (out.len(), w.len() / heads);
            let d = row / heads;
            let d8 = d - d % 8;
            let q4 = p / 4;
            out.fill(0.0);
            for t in 0..q4 {
                for j in 0..heads {
                    let wj = &w[j * p..(j + 1) * p];
                    let pw = [wj[t], wj[q4 + t], wj[2 * q4 + t], wj[3 * q4 + t]];
                    let pv = [
                        _mm256_set1_ps(pw[0]),
                        _mm256_set1_ps(pw[1]),
                        _mm256_set1_ps(pw[2]),
                        _mm256_set1_ps(pw[3]),
                    ];
                    let at = |u: usize| &v[((u * q4 + t) * row + j * d)..][..d];
                    let rows = [at(0), at(1), at(2), at(3)];
                    let oj = &mut out[j * d..(j + 1) * d];
                    let mut c = 0;
                    while c < d8 {
                        let mut a = load(oj, c);
                        for (pv, r) in pv.iter().zip(rows) {
                            a = _mm256_fmadd_ps(*pv, $load(r, c), a);
                        }
                        store(oj, c, a);
                        c += 8;
                    }
                    for cc in d8..d {
                        for (pw, r) in pw.iter().zip(rows) {
                            oj[cc] += pw * $to_f32(r[cc]);
                        }
                    }
                }
            }
            for t in 4 * q4..p {
                for j in 0..heads {
                    let vr = &v[t * row + j * d..][..d];
                    $axpy(w[j * p + t], vr, &mut out[j * d..(j + 1) * d]);
                }
            }
        }
    };
}

group_kernels!(
    f32,
    group_scores,
    group_scores_avx2,
    group_weighted,
    group_weighted_avx2,
    load,
    f32_to_f32,
    dot_f32_avx2,
    axpy_avx2
);
group_kernels!(
    f16,
    group_scores_f16,
    group_scores_f16_avx2,
    group_weighted_f16,
    group_weighted_f16_avx2,
    load_f16,
    f16_to_f32,
    dot_f32_f16_avx2,
    axpy_f16_avx2
);

pub(super) fn f16_to_f32_slice(_t: Avx2, x: &[f16], out: &mut [f32]) {
    // SAFETY: the token proves AVX2 + FMA + F16C.
    unsafe { f16_to_f32_avx2(x, out) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn f16_to_f32_avx2(x: &[f16], out: &mut [f32]) {
    let n = x.len().min(out.len());
    let mut i = 0;
    while i + 8 <= n {
        store(out, i, load_f16(x, i));
        i += 8;
    }
    for j in i..n {
        out[j] = f16_to_f32(x[j]);
    }
}

pub(super) fn sum_f32(_t: Avx2, x: &[f32]) -> f32 {
    // SAFETY: the token proves AVX2 + FMA + F16C.
    unsafe { sum_f32_avx2(x) }
}

/// Σ x with 8 independent accumulators (64 floats = 4 cache lines per step), so the loop is
/// bound by memory, not by add latency.
#[target_feature(enable = "avx2,fma,f16c")]
fn sum_f32_avx2(x: &[f32]) -> f32 {
    let n = x.len();
    let mut acc = [_mm256_setzero_ps(); 8];
    let mut i = 0;
    while i + 64 <= n {
        // SAFETY: i + 64 <= n = x.len().
        unsafe {
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm256_add_ps(*a, _mm256_loadu_ps(x.as_ptr().add(i + 8 * k)));
            }
        }
        i += 64;
    }
    let mut v = acc[0];
    for a in &acc[1..] {
        v = _mm256_add_ps(v, *a);
    }
    let mut s = hsum(v);
    for v in &x[i..] {
        s += v;
    }
    s
}

pub(super) fn layernorm(
    _t: Avx2,
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    out: &mut [f32],
    eps: f32,
) {
    // SAFETY: the token proves AVX2 + FMA + F16C.
    unsafe { layernorm_avx2(x, scale, shift, out, eps) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn layernorm_avx2(x: &[f32], scale: &[f32], shift: &[f32], out: &mut [f32], eps: f32) {
    let n = x.len();
    let n8 = n - n % 8;
    // Pass 1: mean.
    let mut acc = _mm256_setzero_ps();
    for i in (0..n8).step_by(8) {
        acc = _mm256_add_ps(acc, load(x, i));
    }
    let mean = (hsum(acc) + x[n8..].iter().sum::<f32>()) / n as f32;
    // Pass 2: biased variance from squared deviations.
    let mv = _mm256_set1_ps(mean);
    let mut acc = _mm256_setzero_ps();
    for i in (0..n8).step_by(8) {
        let d = _mm256_sub_ps(load(x, i), mv);
        acc = _mm256_fmadd_ps(d, d, acc);
    }
    let tail: f32 = x[n8..].iter().map(|v| (v - mean) * (v - mean)).sum();
    let var = (hsum(acc) + tail) / n as f32;
    let rstd = 1.0 / (var + eps).sqrt();
    // Pass 3: normalize, scale, shift.
    let rv = _mm256_set1_ps(rstd);
    for i in (0..n8).step_by(8) {
        let norm = _mm256_mul_ps(_mm256_sub_ps(load(x, i), mv), rv);
        store(
            out,
            i,
            _mm256_fmadd_ps(norm, load(scale, i), load(shift, i)),
        );
    }
    for i in n8..n {
        out[i] = (x[i] - mean) * rstd * scale[i] + shift[i];
    }
}

pub(super) fn gelu_tanh(_t: Avx2, x: &mut [f32]) {
    // SAFETY: the token proves AVX2 + FMA + F16C.
    unsafe { gelu_tanh_avx2(x) }
}

/// 0.5·x·(1 + tanh u) = x / (1 + exp(-2u)) with u = √(2/π)·(x + 0.044715·x³).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn gelu256(x: __m256) -> __m256 {
    use super::reference::{GELU_CUBIC, SQRT_2_OVER_PI};
    let x2 = _mm256_mul_ps(x, x);
    let inner = _mm256_fmadd_ps(_mm256_set1_ps(GELU_CUBIC), x2, _mm256_set1_ps(1.0));
    let m2u = _mm256_mul_ps(
        _mm256_mul_ps(x, inner),
        _mm256_set1_ps(-2.0 * SQRT_2_OVER_PI),
    );
    _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), exp256(m2u)))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn gelu_tanh_avx2(x: &mut [f32]) {
    let n = x.len();
    let n8 = n - n % 8;
    for i in (0..n8).step_by(8) {
        let v = gelu256(load(x, i));
        store(x, i, v);
    }
    if n8 < n {
        // The tail through the same vector code, so every element gets the same formula.
        let mut buf = [0f32; 8];
        buf[..n - n8].copy_from_slice(&x[n8..]);
        let v = gelu256(load(&buf, 0));
        store(&mut buf, 0, v);
        x[n8..].copy_from_slice(&buf[..n - n8]);
    }
}

pub(super) fn silu_mul(_t: Avx2, g: &mut [f32], u: &[f32]) {
    // SAFETY: the token proves AVX2 + FMA + F16C.
    unsafe { silu_mul_avx2(g, u) }
}

/// g / (1 + exp(−g)) · u, exp by the same polynomial as GELU's.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn silu_mul256(g: __m256, u: __m256) -> __m256 {
    let m = _mm256_sub_ps(_mm256_setzero_ps(), g);
    let s = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0), exp256(m)));
    _mm256_mul_ps(s, u)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn silu_mul_avx2(g: &mut [f32], u: &[f32]) {
    let n = g.len().min(u.len());
    let n8 = n - n % 8;
    for i in (0..n8).step_by(8) {
        let v = silu_mul256(load(g, i), load(u, i));
        store(g, i, v);
    }
    if n8 < n {
        // The tail through the same vector code, so every element gets the same formula.
        let (mut gb, mut ub) = ([0f32; 8], [0f32; 8]);
        gb[..n - n8].copy_from_slice(&g[n8..n]);
        ub[..n - n8].copy_from_slice(&u[n8..n]);
        let v = silu_mul256(load(&gb, 0), load(&ub, 0));
        store(&mut gb, 0, v);
        g[n8..n].copy_from_slice(&gb[..n - n8]);
    }
}

pub(super) fn softmax(_t: Avx2, x: &mut [f32]) {
    // SAFETY: the token proves AVX2 + FMA + F16C.
    unsafe { softmax_avx2(x) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn softmax_avx2(x: &mut [f32]) {
    let n = x.len();
    if n == 0 {
        return;
    }
    let n8 = n - n % 8;
    let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
    for i in (0..n8).step_by(8) {
        mv = _mm256_max_ps(mv, load(x, i));
    }
    let lanes = to_array4(_mm_max_ps(
        _mm256_castps256_ps128(mv),
        _mm256_extractf128_ps::<1>(mv),
    ));
    let max = x[n8..]
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mv = _mm256_set1_ps(max);
    let mut sum = _mm256_setzero_ps();
    for i in (0..n8).step_by(8) {
        let e = exp256(_mm256_sub_ps(load(x, i), mv));
        sum = _mm256_add_ps(sum, e);
        store(x, i, e);
    }
    let mut buf = [f32::NEG_INFINITY; 8];
    buf[..n - n8].copy_from_slice(&x[n8..]);
    let e = exp256(_mm256_sub_ps(load(&buf, 0), mv)); // padding lanes: exp(-∞) = 0
    sum = _mm256_add_ps(sum, e);
    store(&mut buf, 0, e);
    x[n8..].copy_from_slice(&buf[..n - n8]);
    let inv = 1.0 / hsum(sum);
    let iv = _mm256_set1_ps(inv);
    for i in (0..n8).step_by(8) {
        let v = _mm256_mul_ps(load(x, i), iv);
        store(x, i, v);
    }
    for v in &mut x[n8..] {
        *v *= inv;
    }
}

pub(super) fn add(_t: Avx2, x: &mut [f32], y: &[f32]) {
    // SAFETY: the token proves AVX2 + FMA + F16C.
    unsafe { add_avx2(x, y) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn add_avx2(x: &mut [f32], y: &[f32]) {
    let n = x.len().min(y.len());
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_add_ps(load(x, i), load(y, i));
        store(x, i, v);
        i += 8;
    }
    for j in i..n {
        x[j] += y[j];
    }
}
