#![allow(unsafe_code)]
//! aarch64 kernels: NEON (baseline on every aarch64 Linux CPU, e.g. a Raspberry Pi 4's Cortex-A72).
//!
//! NEON is part of the `aarch64-unknown-linux-gnu` target's baseline, so the arithmetic intrinsics
//! are safe to call; `unsafe` is needed only for raw-pointer loads and stores, each after the
//! length check it relies on. Entry points take a [`Neon`] token from [`Neon::detect`].
//!
//! f16 → f32 uses integer bit manipulation (Rust's NEON f16 conversion intrinsics are not stable):
//! shift the exponent and mantissa into f32 position and multiply by 2^112, which is exact for
//! normal and subnormal halves; infinities and NaNs get an all-ones exponent. Layout and tiling
//! follow `x86_64.rs` (including the i, Q+i, 2Q+i, 3Q+i row order) with 4-lane vectors.
//! Letters as in [`super`].

use super::Q8Matrix;
use super::geometry::{KB, ROWS, TOKENS};
use core::arch::aarch64::*;
use emberlm_formats::quant::Q8_BLOCK;
use half::f16;

/// Proof that this CPU has NEON (Advanced SIMD).
#[derive(Clone, Copy, Debug)]
pub(super) struct Neon(());

impl Neon {
    /// `Some` when the CPU supports NEON (every aarch64 Linux CPU).
    pub(super) fn detect() -> Option<Self> {
        std::arch::is_aarch64_feature_detected!("neon").then_some(Neon(()))
    }
}

// ------------------------------------------------------------------ helpers

/// 4 f32 from `s[i..i + 4]` (bounds-checked).
#[inline]
#[target_feature(enable = "neon")]
fn load(s: &[f32], i: usize) -> float32x4_t {
    let s = &s[i..i + 4];
    // SAFETY: `s` holds exactly 4 f32; vld1q has no alignment requirement beyond the element's.
    unsafe { vld1q_f32(s.as_ptr()) }
}

/// Stores 4 f32 into `s[i..i + 4]` (bounds-checked).
#[inline]
#[target_feature(enable = "neon")]
fn store(s: &mut [f32], i: usize, v: float32x4_t) {
    let s = &mut s[i..i + 4];
    // SAFETY: `s` holds exactly 4 f32.
    unsafe { vst1q_f32(s.as_mut_ptr(), v) }
}

/// 4 halves (raw bits) to f32, exactly.
#[inline]
#[target_feature(enable = "neon")]
fn f16x4_to_f32(h: uint16x4_t) -> float32x4_t {
    let h = vmovl_u16(h);
    let sign = vshlq_n_u32::<16>(vandq_u32(h, vdupq_n_u32(0x8000)));
    let em = vandq_u32(h, vdupq_n_u32(0x7fff));
    let shifted = vshlq_n_u32::<13>(em);
    let finite = vreinterpretq_u32_f32(vmulq_f32(
        vreinterpretq_f32_u32(shifted),
        vdupq_n_f32(f32::from_bits(0x7780_0000)), // 2^112
    ));
    let special = vorrq_u32(shifted, vdupq_n_u32(0x7f80_0000));
    let is_special = vcgeq_u32(em, vdupq_n_u32(0x7c00));
    vreinterpretq_f32_u32(vorrq_u32(vbslq_u32(is_special, special, finite), sign))
}

/// 4 f16 from `s[i..i + 4]` as f32 (bounds-checked).
#[inline]
#[target_feature(enable = "neon")]
fn load_f16(s: &[f16], i: usize) -> float32x4_t {
    let s = &s[i..i + 4];
    // SAFETY: `s` holds exactly 4 f16 = 8 bytes, read as 4 u16 (f16 is a transparent u16).
    f16x4_to_f32(unsafe { vld1_u16(s.as_ptr().cast()) })
}

/// One f16 as f32 (through the same exact conversion as the vector path).
#[inline]
#[target_feature(enable = "neon")]
fn f16_to_f32(h: f16) -> f32 {
    vgetq_lane_f32::<0>(f16x4_to_f32(vdup_n_u16(h.to_bits())))
}

/// [Σ a, Σ b, Σ c, Σ d] of four 4-lane vectors.
#[inline]
#[target_feature(enable = "neon")]
fn hsum4(a: float32x4_t, b: float32x4_t, c: float32x4_t, d: float32x4_t) -> [f32; 4] {
    let v = vpaddq_f32(vpaddq_f32(a, b), vpaddq_f32(c, d));
    let mut out = [0f32; 4];
    store(&mut out, 0, v);
    out
}

/// exp(x) lane-wise; same algorithm and constants as the x86-64 `exp256`.
#[inline]
#[target_feature(enable = "neon")]
fn exp4(x: float32x4_t) -> float32x4_t {
    let underflow = vcltq_f32(x, vdupq_n_f32(-87.0));
    let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.0)), vdupq_n_f32(88.0));
    let n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(core::f32::consts::LOG2_E)));
    let r = vfmsq_f32(x, n, vdupq_n_f32(0.693_359_4));
    let r = vfmsq_f32(r, n, vdupq_n_f32(-2.121_944_4e-4));
    let mut p = vdupq_n_f32(1.987_569_1e-4);
    p = vfmaq_f32(vdupq_n_f32(1.398_2e-3), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.333_452e-3), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.166_579_6e-2), p, r);
    p = vfmaq_f32(vdupq_n_f32(0.166_666_65), p, r);
    p = vfmaq_f32(vdupq_n_f32(0.5), p, r);
    let r2 = vmulq_f32(r, r);
    let e = vaddq_f32(vfmaq_f32(r, p, r2), vdupq_n_f32(1.0));
    let bits = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)));
    let v = vmulq_f32(e, vreinterpretq_f32_s32(bits));
    vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(v), underflow))
}

// ------------------------------------------------------------------ matrix-vector

pub(super) fn matvec_f32_rows(_t: Neon, w: &[f32], x: &[f32], y: &mut [f32], row_start: usize) {
    // SAFETY: the token proves NEON.
    unsafe { matvec_f32_rows_neon(w, x, y, row_start) }
}

#[target_feature(enable = "neon")]
fn matvec_f32_rows_neon(w: &[f32], x: &[f32], y: &mut [f32], row_start: usize) {
    let c = x.len();
    let c4 = c - c % 4;
    let q = y.len() / 4;
    // Rows i, q+i, 2q+i, 3q+i together: four continuous memory streams (see x86_64.rs).
    let wq = &w[row_start * c..(row_start + 4 * q) * c];
    for i in 0..q {
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut j = 0;
        while j < c4 {
            // SAFETY: j + 4 <= c4 <= c; `x` has c elements and `wq` has 4q rows of c, of which
            // rows i + k*q (k < 4, i < q) are read.
            unsafe {
                let xv = vld1q_f32(x.as_ptr().add(j));
                for (k, a) in acc.iter_mut().enumerate() {
                    *a = vfmaq_f32(*a, vld1q_f32(wq.as_ptr().add((k * q + i) * c + j)), xv);
                }
            }
            j += 4;
        }
        let s = hsum4(acc[0], acc[1], acc[2], acc[3]);
        for (k, mut s) in s.into_iter().enumerate() {
            let row = &wq[(k * q + i) * c..(k * q + i + 1) * c];
            for jj in c4..c {
                s += row[jj] * x[jj];
            }
            y[k * q + i] = s;
        }
    }
    for (i, yv) in y.iter_mut().enumerate().skip(4 * q) {
        *yv = dot_f32_neon(&w[(row_start + i) * c..(row_start + i + 1) * c], x);
    }
}

pub(super) fn matvec_f16_rows(_t: Neon, w: &[f16], x: &[f32], y: &mut [f32], row_start: usize) {
    // SAFETY: the token proves NEON.
    unsafe { matvec_f16_rows_neon(w, x, y, row_start) }
}

#[target_feature(enable = "neon")]
fn matvec_f16_rows_neon(w: &[f16], x: &[f32], y: &mut [f32], row_start: usize) {
    let c = x.len();
    let c4 = c - c % 4;
    let q = y.len() / 4;
    // Rows i, q+i, 2q+i, 3q+i together: four continuous memory streams (see x86_64.rs).
    let wq = &w[row_start * c..(row_start + 4 * q) * c];
    for i in 0..q {
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut j = 0;
        while j < c4 {
            // SAFETY: j + 4 <= c4 <= c; `x` has c elements and `wq` has 4q rows of c halves, of
            // which rows i + k*q (k < 4, i < q) are read.
            unsafe {
                let xv = vld1q_f32(x.as_ptr().add(j));
                for (k, a) in acc.iter_mut().enumerate() {
                    let p = wq.as_ptr().add((k * q + i) * c + j).cast();
                    *a = vfmaq_f32(*a, f16x4_to_f32(vld1_u16(p)), xv);
                }
            }
            j += 4;
        }
        let s = hsum4(acc[0], acc[1], acc[2], acc[3]);
        for (k, mut s) in s.into_iter().enumerate() {
            let row = &wq[(k * q + i) * c..(k * q + i + 1) * c];
            for jj in c4..c {
                s += f16_to_f32(row[jj]) * x[jj];
            }
            y[k * q + i] = s;
        }
    }
    for (i, yv) in y.iter_mut().enumerate().skip(4 * q) {
        *yv = dot_f32_f16_neon(x, &w[(row_start + i) * c..(row_start + i + 1) * c]);
    }
}

/// Σ over one full block: 32 quants (`q`, exactly 32 long) · x (eight 4-lane vectors).
#[inline]
#[target_feature(enable = "neon")]
fn block_dot(q: &[i8], xv: &[float32x4_t; 8]) -> float32x4_t {
    let q = &q[..Q8_BLOCK];
    // SAFETY: `q` holds 32 bytes; each load reads 16 of them.
    let (lo, hi) = unsafe { (vld1q_s8(q.as_ptr()), vld1q_s8(q.as_ptr().add(16))) };
    let mut s = vdupq_n_f32(0.0);
    for (h, v) in [lo, hi].into_iter().enumerate() {
        let a = vmovl_s8(vget_low_s8(v));
        let b = vmovl_high_s8(v);
        let w = [
            vcvtq_f32_s32(vmovl_s16(vget_low_s16(a))),
            vcvtq_f32_s32(vmovl_high_s16(a)),
            vcvtq_f32_s32(vmovl_s16(vget_low_s16(b))),
            vcvtq_f32_s32(vmovl_high_s16(b)),
        ];
        for (g, w) in w.into_iter().enumerate() {
            s = vfmaq_f32(s, w, xv[4 * h + g]);
        }
    }
    s
}

pub(super) fn matvec_q8_rows(
    _t: Neon,
    w: Q8Matrix<'_>,
    x: &[f32],
    y: &mut [f32],
    row_start: usize,
) {
    // SAFETY: the token proves NEON.
    unsafe { matvec_q8_rows_neon(w, x, y, row_start) }
}

#[target_feature(enable = "neon")]
fn matvec_q8_rows_neon(w: Q8Matrix<'_>, x: &[f32], y: &mut [f32], row_start: usize) {
    let (c, nb) = (w.cols(), w.blocks_per_row());
    let full = c / Q8_BLOCK;
    let q = y.len() / 4;
    let xblock = |j: usize| core::array::from_fn::<_, 8, _>(|g| load(x, j + 4 * g));
    // Rows i, q+i, 2q+i, 3q+i together: four continuous memory streams (see x86_64.rs).
    let qq = &w.quants()[row_start * c..(row_start + 4 * q) * c];
    let dq = &w.scales()[row_start * nb..(row_start + 4 * q) * nb];
    for i in 0..q {
        let mut acc = [vdupq_n_f32(0.0); 4];
        for b in 0..full {
            let j = b * Q8_BLOCK;
            let xv = xblock(j);
            for (k, a) in acc.iter_mut().enumerate() {
                let row = k * q + i;
                let s = block_dot(&qq[row * c + j..], &xv);
                *a = vfmaq_f32(*a, s, vdupq_n_f32(f16_to_f32(dq[row * nb + b])));
            }
        }
        let s = hsum4(acc[0], acc[1], acc[2], acc[3]);
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
        let qr = &w.quants()[(row_start + i) * c..(row_start + i + 1) * c];
        let d = &w.scales()[(row_start + i) * nb..(row_start + i + 1) * nb];
        let mut acc = vdupq_n_f32(0.0);
        for (b, &db) in d[..full].iter().enumerate() {
            let j = b * Q8_BLOCK;
            let s = block_dot(&qr[j..], &xblock(j));
            acc = vfmaq_f32(acc, s, vdupq_n_f32(f16_to_f32(db)));
        }
        let mut s = vaddvq_f32(acc);
        if full < nb {
            let j0 = full * Q8_BLOCK;
            let t: f32 = (j0..c).map(|j| f32::from(qr[j]) * x[j]).sum();
            s += t * f16_to_f32(d[full]);
        }
        *yv = s;
    }
}

/// Σ w·x over one full block as 4 i32 lanes (their sum is the block's exact dot product): w and x
/// 32 i8 each. Each i16 lane of `vmull_s8` + `vmlal_high_s8` holds two products, at most
/// 2 · 128 · 127 = 32512 in magnitude (x is at most 127 in magnitude, see `quantize_q8`), so
/// nothing saturates; `vpadalq_s16` widens pairs into i32.
#[inline]
#[target_feature(enable = "neon")]
fn block_dot_q8(w: &[i8], x: &[i8]) -> int32x4_t {
    let (w, x) = (&w[..Q8_BLOCK], &x[..Q8_BLOCK]);
    let mut acc = vdupq_n_s32(0);
    for h in 0..2 {
        // SAFETY: `w` and `x` hold 32 bytes; each load reads 16 of them at offset 16·h.
        let (wv, xv) = unsafe {
            (
                vld1q_s8(w.as_ptr().add(16 * h)),
                vld1q_s8(x.as_ptr().add(16 * h)),
            )
        };
        let p = vmull_s8(vget_low_s8(wv), vget_low_s8(xv));
        acc = vpadalq_s16(acc, vmlal_high_s8(p, wv, xv));
    }
    acc
}

pub(super) fn matvec_q8q8_rows(
    _t: Neon,
    w: Q8Matrix<'_>,
    xq: &[i8],
    xd: &[f32],
    y: &mut [f32],
    row_start: usize,
) {
    // SAFETY: the token proves NEON.
    unsafe { matvec_q8q8_rows_neon(w, xq, xd, y, row_start) }
}

#[target_feature(enable = "neon")]
fn matvec_q8q8_rows_neon(w: Q8Matrix<'_>, xq: &[i8], xd: &[f32], y: &mut [f32], row_start: usize) {
    let (c, nb) = (w.cols(), w.blocks_per_row());
    let full = c / Q8_BLOCK;
    let q = y.len() / 4;
    let tail = |row: &[i8], d: &[f16]| -> f32 {
        if full < nb {
            let j0 = full * Q8_BLOCK;
            let s: i32 = (j0..c).map(|j| i32::from(row[j]) * i32::from(xq[j])).sum();
            (f16_to_f32(d[full]) * xd[full]) * s as f32
        } else {
            0.0
        }
    };
    // Rows i, q+i, 2q+i, 3q+i together: four continuous memory streams (see x86_64.rs).
    let qq = &w.quants()[row_start * c..(row_start + y.len()) * c];
    let dq = &w.scales()[row_start * nb..(row_start + y.len()) * nb];
    for i in 0..q {
        let mut acc = [vdupq_n_f32(0.0); 4];
        for b in 0..full {
            let j = b * Q8_BLOCK;
            let xb = &xq[j..j + Q8_BLOCK];
            for (k, a) in acc.iter_mut().enumerate() {
                let row = k * q + i;
                let s = vcvtq_f32_s32(block_dot_q8(&qq[row * c + j..], xb));
                *a = vfmaq_n_f32(*a, s, f16_to_f32(dq[row * nb + b]) * xd[b]);
            }
        }
        let s = hsum4(acc[0], acc[1], acc[2], acc[3]);
        for (k, s) in s.into_iter().enumerate() {
            let row = k * q + i;
            y[row] = s + tail(&qq[row * c..(row + 1) * c], &dq[row * nb..(row + 1) * nb]);
        }
    }
    for row in 4 * q..y.len() {
        let (wr, dr) = (&qq[row * c..(row + 1) * c], &dq[row * nb..(row + 1) * nb]);
        let mut acc = vdupq_n_f32(0.0);
        for b in 0..full {
            let j = b * Q8_BLOCK;
            let s = vcvtq_f32_s32(block_dot_q8(&wr[j..], &xq[j..j + Q8_BLOCK]));
            acc = vfmaq_n_f32(acc, s, f16_to_f32(dr[b]) * xd[b]);
        }
        y[row] = vaddvq_f32(acc) + tail(wr, dr);
    }
}

// ------------------------------------------------------------------ prefill microkernels

/// out[..kc] ← row r, columns k0 .. k0 + kc of W dequantized (k0 % 32 == 0).
pub(super) fn dequant_row(
    _t: Neon,
    w: Q8Matrix<'_>,
    r: usize,
    k0: usize,
    kc: usize,
    out: &mut [f32],
) {
    // SAFETY: the token proves NEON.
    unsafe { dequant_row_neon(w, r, k0, kc, out) }
}

#[target_feature(enable = "neon")]
fn dequant_row_neon(w: Q8Matrix<'_>, r: usize, k0: usize, kc: usize, out: &mut [f32]) {
    let (c, nb) = (w.cols(), w.blocks_per_row());
    let q = &w.quants()[r * c + k0..][..kc];
    let d = &w.scales()[r * nb + k0 / Q8_BLOCK..];
    let o = &mut out[..kc];
    for ((ob, qb), d) in o.chunks_mut(Q8_BLOCK).zip(q.chunks(Q8_BLOCK)).zip(d) {
        let d = f16_to_f32(*d);
        if qb.len() == Q8_BLOCK {
            let dv = vdupq_n_f32(d);
            for h in 0..2 {
                // SAFETY: qb holds 32 bytes, so bytes 16h .. 16h+16 are inside it.
                let v = unsafe { vld1q_s8(qb.as_ptr().add(16 * h)) };
                let (a, b) = (vmovl_s8(vget_low_s8(v)), vmovl_high_s8(v));
                let parts = [
                    vmovl_s16(vget_low_s16(a)),
                    vmovl_high_s16(a),
                    vmovl_s16(vget_low_s16(b)),
                    vmovl_high_s16(b),
                ];
                for (g, p) in parts.into_iter().enumerate() {
                    store(ob, 16 * h + 4 * g, vmulq_f32(vcvtq_f32_s32(p), dv));
                }
            }
        } else {
            ob.iter_mut()
                .zip(qb)
                .for_each(|(o, &q)| *o = f32::from(q) * d);
        }
    }
}

/// 4 weight rows × 3 tokens of dot products; rows ≥ mr and tokens ≥ nr reuse row 0 / token 0 and
/// are discarded (same instruction sequence for every output whatever the tiling).
/// The FMA peak loop ([`super::peak`]): 16 independent 4-lane multiply-add chains (enough for
/// two FMA pipes with a latency of up to 8 cycles). Returns their sum and the flops done.
pub(super) fn fma_loop(_t: Neon, iters: usize) -> (f32, u64) {
    // SAFETY: the token proves NEON.
    let sum = unsafe { fma_loop_neon(iters) };
    (sum, (iters * 16 * 4 * 2) as u64)
}

#[target_feature(enable = "neon")]
fn fma_loop_neon(iters: usize) -> f32 {
    let mut acc: [float32x4_t; 16] = std::array::from_fn(|i| vdupq_n_f32(1.0 + i as f32));
    let (m, a) = (vdupq_n_f32(0.999_999), vdupq_n_f32(1e-7));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = vfmaq_f32(a, *v, m);
        }
    }
    vaddvq_f32(acc.iter().fold(vdupq_n_f32(0.0), |s, &v| vaddq_f32(s, v)))
}

/// The packed prefill microkernel (see [`super::panel`]): 6 weight rows × 16 tokens of sums in
/// 24 registers; per column four 4-token loads feed 24 FMAs by the six row scalars.
pub(super) fn panel_micro(
    _t: Neon,
    panel: &[f32; ROWS * KB],
    x: &[f32],
    kc: usize,
    out: &mut [[f32; TOKENS]; ROWS],
) {
    assert!(
        kc <= KB && x.len() >= kc * TOKENS,
        "panel_micro: x too short"
    );
    // SAFETY: the token proves NEON; the assert bounds every read below.
    unsafe { panel_micro_neon(panel, x, kc, out) }
}

#[target_feature(enable = "neon")]
fn panel_micro_neon(
    panel: &[f32; ROWS * KB],
    x: &[f32],
    kc: usize,
    out: &mut [[f32; TOKENS]; ROWS],
) {
    let mut acc = [[vdupq_n_f32(0.0); 4]; ROWS];
    let xs = x.as_ptr();
    for j in 0..kc {
        // SAFETY: x holds kc · TOKENS elements (checked by the caller), so j·16 + 16 <= its
        // length.
        let xv = unsafe {
            [
                vld1q_f32(xs.add(j * TOKENS)),
                vld1q_f32(xs.add(j * TOKENS + 4)),
                vld1q_f32(xs.add(j * TOKENS + 8)),
                vld1q_f32(xs.add(j * TOKENS + 12)),
            ]
        };
        for (i, a) in acc.iter_mut().enumerate() {
            let w = panel[i * KB + j];
            for (a, &xv) in a.iter_mut().zip(&xv) {
                *a = vfmaq_n_f32(*a, xv, w);
            }
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        for (q, v) in a.into_iter().enumerate() {
            // SAFETY: o holds 16 f32, so lanes 4q .. 4q + 4 (q < 4) are inside it.
            unsafe { vst1q_f32(o.as_mut_ptr().add(4 * q), v) }
        }
    }
}

// ------------------------------------------------------------------ small ops

pub(super) fn dot_f32(_t: Neon, a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: the token proves NEON.
    unsafe { dot_f32_neon(a, b) }
}

#[target_feature(enable = "neon")]
fn dot_f32_neon(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            *acc = vfmaq_f32(*acc, load(a, i + 4 * k), load(b, i + 4 * k));
        }
        i += 16;
    }
    while i + 4 <= n {
        acc[0] = vfmaq_f32(acc[0], load(a, i), load(b, i));
        i += 4;
    }
    let mut s = vaddvq_f32(vaddq_f32(
        vaddq_f32(acc[0], acc[1]),
        vaddq_f32(acc[2], acc[3]),
    ));
    for j in i..n {
        s += a[j] * b[j];
    }
    s
}

pub(super) fn dot_f32_f16(_t: Neon, a: &[f32], b: &[f16]) -> f32 {
    // SAFETY: the token proves NEON.
    unsafe { dot_f32_f16_neon(a, b) }
}

#[target_feature(enable = "neon")]
fn dot_f32_f16_neon(a: &[f32], b: &[f16]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            *acc = vfmaq_f32(*acc, load(a, i + 4 * k), load_f16(b, i + 4 * k));
        }
        i += 16;
    }
    while i + 4 <= n {
        acc[0] = vfmaq_f32(acc[0], load(a, i), load_f16(b, i));
        i += 4;
    }
    let mut s = vaddvq_f32(vaddq_f32(
        vaddq_f32(acc[0], acc[1]),
        vaddq_f32(acc[2], acc[3]),
    ));
    for j in i..n {
        s += a[j] * f16_to_f32(b[j]);
    }
    s
}

pub(super) fn axpy(_t: Neon, alpha: f32, x: &[f32], y: &mut [f32]) {
    // SAFETY: the token proves NEON.
    unsafe { axpy_neon(alpha, x, y) }
}

#[target_feature(enable = "neon")]
fn axpy_neon(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let av = vdupq_n_f32(alpha);
    let mut i = 0;
    while i + 4 <= n {
        let v = vfmaq_f32(load(y, i), av, load(x, i));
        store(y, i, v);
        i += 4;
    }
    for j in i..n {
        y[j] += alpha * x[j];
    }
}

pub(super) fn axpy_f16(_t: Neon, alpha: f32, x: &[f16], y: &mut [f32]) {
    // SAFETY: the token proves NEON.
    unsafe { axpy_f16_neon(alpha, x, y) }
}

#[target_feature(enable = "neon")]
fn axpy_f16_neon(alpha: f32, x: &[f16], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let av = vdupq_n_f32(alpha);
    let mut i = 0;
    while i + 4 <= n {
        let v = vfmaq_f32(load(y, i), av, load_f16(x, i));
        store(y, i, v);
        i += 4;
    }
    for j in i..n {
        y[j] += alpha * f16_to_f32(x[j]);
    }
}

/// Σ x with 8 independent accumulators (32 floats = 2 cache lines per step).
pub(super) fn sum_f32(_t: Neon, x: &[f32]) -> f32 {
    // SAFETY: the token proves NEON.
    unsafe { sum_f32_neon(x) }
}

#[target_feature(enable = "neon")]
fn sum_f32_neon(x: &[f32]) -> f32 {
    let n = x.len();
    let mut acc = [vdupq_n_f32(0.0); 8];
    let mut i = 0;
    while i + 32 <= n {
        // SAFETY: i + 32 <= n = x.len().
        unsafe {
            for (k, a) in acc.iter_mut().enumerate() {
                *a = vaddq_f32(*a, vld1q_f32(x.as_ptr().add(i + 4 * k)));
            }
        }
        i += 32;
    }
    let mut v = acc[0];
    for a in &acc[1..] {
        v = vaddq_f32(v, *a);
    }
    let mut s = vaddvq_f32(v);
    for v in &x[i..] {
        s += v;
    }
    s
}

pub(super) fn layernorm(
    _t: Neon,
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    out: &mut [f32],
    eps: f32,
) {
    // SAFETY: the token proves NEON.
    unsafe { layernorm_neon(x, scale, shift, out, eps) }
}

#[target_feature(enable = "neon")]
fn layernorm_neon(x: &[f32], scale: &[f32], shift: &[f32], out: &mut [f32], eps: f32) {
    let n = x.len();
    let n4 = n - n % 4;
    let mut acc = vdupq_n_f32(0.0);
    for i in (0..n4).step_by(4) {
        acc = vaddq_f32(acc, load(x, i));
    }
    let mean = (vaddvq_f32(acc) + x[n4..].iter().sum::<f32>()) / n as f32;
    let mv = vdupq_n_f32(mean);
    let mut acc = vdupq_n_f32(0.0);
    for i in (0..n4).step_by(4) {
        let d = vsubq_f32(load(x, i), mv);
        acc = vfmaq_f32(acc, d, d);
    }
    let tail: f32 = x[n4..].iter().map(|v| (v - mean) * (v - mean)).sum();
    let var = (vaddvq_f32(acc) + tail) / n as f32;
    let rstd = 1.0 / (var + eps).sqrt();
    let rv = vdupq_n_f32(rstd);
    for i in (0..n4).step_by(4) {
        let norm = vmulq_f32(vsubq_f32(load(x, i), mv), rv);
        store(out, i, vfmaq_f32(load(shift, i), norm, load(scale, i)));
    }
    for i in n4..n {
        out[i] = (x[i] - mean) * rstd * scale[i] + shift[i];
    }
}

/// x / (1 + exp(-2u)), u = √(2/π)·(x + 0.044715·x³): the tanh GELU.
#[inline]
#[target_feature(enable = "neon")]
fn gelu4(x: float32x4_t) -> float32x4_t {
    use super::reference::{GELU_CUBIC, SQRT_2_OVER_PI};
    let inner = vfmaq_f32(vdupq_n_f32(1.0), vdupq_n_f32(GELU_CUBIC), vmulq_f32(x, x));
    let m2u = vmulq_f32(vmulq_f32(x, inner), vdupq_n_f32(-2.0 * SQRT_2_OVER_PI));
    vdivq_f32(x, vaddq_f32(vdupq_n_f32(1.0), exp4(m2u)))
}

pub(super) fn gelu_tanh(_t: Neon, x: &mut [f32]) {
    // SAFETY: the token proves NEON.
    unsafe { gelu_tanh_neon(x) }
}

#[target_feature(enable = "neon")]
fn gelu_tanh_neon(x: &mut [f32]) {
    let n = x.len();
    let n4 = n - n % 4;
    for i in (0..n4).step_by(4) {
        let v = gelu4(load(x, i));
        store(x, i, v);
    }
    if n4 < n {
        let mut buf = [0f32; 4];
        buf[..n - n4].copy_from_slice(&x[n4..]);
        let v = gelu4(load(&buf, 0));
        store(&mut buf, 0, v);
        x[n4..].copy_from_slice(&buf[..n - n4]);
    }
}

pub(super) fn softmax(_t: Neon, x: &mut [f32]) {
    // SAFETY: the token proves NEON.
    unsafe { softmax_neon(x) }
}

#[target_feature(enable = "neon")]
fn softmax_neon(x: &mut [f32]) {
    let n = x.len();
    if n == 0 {
        return;
    }
    let n4 = n - n % 4;
    let mut mv = vdupq_n_f32(f32::NEG_INFINITY);
    for i in (0..n4).step_by(4) {
        mv = vmaxq_f32(mv, load(x, i));
    }
    let max = x[n4..].iter().fold(vmaxvq_f32(mv), |m, &v| m.max(v));
    let mv = vdupq_n_f32(max);
    let mut sum = vdupq_n_f32(0.0);
    for i in (0..n4).step_by(4) {
        let e = exp4(vsubq_f32(load(x, i), mv));
        sum = vaddq_f32(sum, e);
        store(x, i, e);
    }
    let mut buf = [f32::NEG_INFINITY; 4];
    buf[..n - n4].copy_from_slice(&x[n4..]);
    let e = exp4(vsubq_f32(load(&buf, 0), mv)); // padding lanes: exp(-∞) = 0
    sum = vaddq_f32(sum, e);
    store(&mut buf, 0, e);
    x[n4..].copy_from_slice(&buf[..n - n4]);
    let inv = 1.0 / vaddvq_f32(sum);
    let iv = vdupq_n_f32(inv);
    for i in (0..n4).step_by(4) {
        let v = vmulq_f32(load(x, i), iv);
        store(x, i, v);
    }
    for v in &mut x[n4..] {
        *v *= inv;
    }
}

pub(super) fn add(_t: Neon, x: &mut [f32], y: &[f32]) {
    // SAFETY: the token proves NEON.
    unsafe { add_neon(x, y) }
}

#[target_feature(enable = "neon")]
fn add_neon(x: &mut [f32], y: &[f32]) {
    let n = x.len().min(y.len());
    let mut i = 0;
    while i + 4 <= n {
        let v = vaddq_f32(load(x, i), load(y, i));
        store(x, i, v);
        i += 4;
    }
    for j in i..n {
        x[j] += y[j];
    }
}
