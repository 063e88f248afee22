//! The f32 prefill microkernel and the multiply-add peak loop on 512-bit vectors, for the
//! `x86_64-avx512-vnni` kernel set (see [`super::panel`] for the product they serve).
//!
//! On a core whose multiply-add units are 512 bits wide (AMD Zen 5, Intel server cores) a
//! 256-bit FMA does half the work of a 512-bit one in the same slot, so AVX2's microkernel can
//! reach only half of the core's f32 peak. This one keeps 6 weight rows × 2 token groups (32
//! tokens) of sums in twelve 512-bit registers: per column, two 16-token loads and six
//! broadcasts feed twelve FMAs, the ratio of AVX2's kernel with twice the work per instruction,
//! and twelve independent chains cover the FMA latency of two pipes.

#![allow(unsafe_code)]

use super::geometry::{KB, ROWS, TOKENS};
use super::x86_64_avx512::Avx512;
use core::arch::x86_64::*;

/// out_a[i][t] = Σ_{j < kc} panel[i·KB + j] · xa[j·TOKENS + t], and out_b likewise from xb, for
/// i < ROWS, t < TOKENS (two packed token groups against one panel of six rows).
///
/// # Panics
/// If kc > KB or xa / xb hold fewer than kc · TOKENS elements.
pub(super) fn panel_micro2(
    _t: Avx512,
    panel: &[f32; ROWS * KB],
    (xa, xb): (&[f32], &[f32]),
    kc: usize,
    (out_a, out_b): (&mut [[f32; TOKENS]; ROWS], &mut [[f32; TOKENS]; ROWS]),
) {
    assert!(
        kc <= KB && xa.len() >= kc * TOKENS && xb.len() >= kc * TOKENS,
        "panel_micro2: x too short"
    );
    // SAFETY: the token proves AVX-512 F (and AVX2, FMA); the assert bounds every read below.
    unsafe { micro2(panel, xa, xb, kc, out_a, out_b) }
}

#[target_feature(enable = "avx2,fma,avx512f")]
fn micro2(
    panel: &[f32; ROWS * KB],
    xa: &[f32],
    xb: &[f32],
    kc: usize,
    out_a: &mut [[f32; TOKENS]; ROWS],
    out_b: &mut [[f32; TOKENS]; ROWS],
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
    let (w, pa, pb) = (panel.as_ptr(), xa.as_ptr(), xb.as_ptr());
    for j in 0..kc {
        // SAFETY: j < kc <= KB, so w + i·KB + j (i < ROWS) lies in the panel, and xa, xb hold
        // kc · TOKENS elements (checked by the caller), so j·16 + 16 <= their lengths.
        unsafe {
            let x0 = _mm512_loadu_ps(pa.add(j * TOKENS));
            let x1 = _mm512_loadu_ps(pb.add(j * TOKENS));
            for (i, a) in acc.iter_mut().enumerate() {
                let wv = _mm512_set1_ps(*w.add(i * KB + j));
                a[0] = _mm512_fmadd_ps(wv, x0, a[0]);
                a[1] = _mm512_fmadd_ps(wv, x1, a[1]);
            }
        }
    }
    for ((oa, ob), a) in out_a.iter_mut().zip(out_b.iter_mut()).zip(acc) {
        // SAFETY: each output row holds TOKENS = 16 f32, one 512-bit store.
        unsafe {
            _mm512_storeu_ps(oa.as_mut_ptr(), a[0]);
            _mm512_storeu_ps(ob.as_mut_ptr(), a[1]);
        }
    }
}

/// The multiply-add peak loop of [`super::peak`] on 512-bit registers: returns a sum of the
/// accumulators and the floating-point operations done.
pub(super) fn fma_loop(_t: Avx512, iters: usize) -> (f32, u64) {
    // SAFETY: the token proves AVX-512 F.
    let sum = unsafe { fma_loop_512(iters) };
    (sum, (iters * 12 * 16 * 2) as u64)
}

#[target_feature(enable = "avx2,fma,avx512f")]
fn fma_loop_512(iters: usize) -> f32 {
    let mut acc: [__m512; 12] = std::array::from_fn(|i| _mm512_set1_ps(1.0 + i as f32));
    let (m, a) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, m, a);
        }
    }
    let s = acc
        .iter()
        .fold(_mm512_setzero_ps(), |s, &v| _mm512_add_ps(s, v));
    _mm512_reduce_add_ps(s)
}
