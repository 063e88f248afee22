#![allow(unsafe_code)]
//! x86-64 AVX-512 VNNI (on 256-bit vectors, `vpdpbusd` with AVX-512VL) microkernel of the
//! int8 × int8 prefill product ([`super::panel_q8`]). Entry points take a [`Vnni`] token, which
//! only [`Vnni::detect`] creates, so calling the `#[target_feature]` bodies is sound. Letters as
//! in [`super`]; layouts in [`super::panel_q8`].

use super::geometry::{Q8_ROWS, Q8_TOKENS};
use core::arch::x86_64::*;
use emberlm_formats::quant::Q8_BLOCK;
use half::f16;

/// Proof that this CPU has AVX2, AVX-512 F/VL and VNNI.
#[derive(Clone, Copy, Debug)]
pub(super) struct Vnni(());

impl Vnni {
    /// `Some` when the CPU supports what [`tile`] needs (checked at run time).
    pub(super) fn detect() -> Option<Self> {
        let ok = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni");
        ok.then_some(Vnni(()))
    }
}

/// out[i][t] for i < 4 rows, t < 16 tokens: `Σ_b (d[i,b] · xd[b,t]) · s[i,b,t]` with the blocks
/// accumulated in order, the integer block sums s exact (as `reference::matvec_q8q8_rows`, so
/// the bits equal it). `q[i]`: row i's C quants; `d[i]`: its NB scales as f32; `wsum[i]`: 128 ·
/// Σ of each of its blocks' quants; xp, xd: one packed token group ([`super::panel_q8`]).
pub(super) fn tile(
    _t: Vnni,
    q: [&[i8]; Q8_ROWS],
    d: [&[f32]; Q8_ROWS],
    wsum: [&[i32]; Q8_ROWS],
    xp: &[u8],
    xd: &[f32],
    out: &mut [[f32; Q8_TOKENS]; Q8_ROWS],
) {
    let nb = xd.len() / Q8_TOKENS;
    assert!(
        xp.len() == nb * Q8_BLOCK * Q8_TOKENS
            && (0..Q8_ROWS).all(|i| {
                q[i].len() == nb * Q8_BLOCK && d[i].len() == nb && wsum[i].len() == nb
            }),
        "vnni tile: lengths"
    );
    // SAFETY: the token proves the features; the lengths were checked above.
    unsafe { tile_vnni(q, d, wsum, xp, xd, nb, out) }
}

#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
fn tile_vnni(
    q: [&[i8]; Q8_ROWS],
    d: [&[f32]; Q8_ROWS],
    wsum: [&[i32]; Q8_ROWS],
    xp: &[u8],
    xd: &[f32],
    nb: usize,
    out: &mut [[f32; Q8_TOKENS]; Q8_ROWS],
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; Q8_ROWS];
    for b in 0..nb {
        // Start each row's integer sums at −128 · Σ w: the activations arrive offset by +128
        // (unsigned, as vpdpbusd wants), which adds 128 · Σ w.
        let mut s: [[__m256i; 2]; Q8_ROWS] =
            std::array::from_fn(|i| [_mm256_set1_epi32(-wsum[i][b]); 2]);
        let xb = &xp[b * Q8_BLOCK * Q8_TOKENS..][..Q8_BLOCK * Q8_TOKENS];
        for k in 0..Q8_BLOCK / 4 {
            // SAFETY: xb holds 32 · 16 bytes; quad k's 16 tokens are bytes 64k .. 64k + 64.
            let (x0, x1) = unsafe {
                let p = xb.as_ptr().add(64 * k);
                (
                    _mm256_loadu_si256(p.cast()),
                    _mm256_loadu_si256(p.add(32).cast()),
                )
            };
            for i in 0..Q8_ROWS {
                // SAFETY: row i holds nb · 32 quants; bytes 32b + 4k .. + 4 are inside.
                let w = unsafe {
                    let p = q[i].as_ptr().add(b * Q8_BLOCK + 4 * k);
                    _mm256_set1_epi32(p.cast::<i32>().read_unaligned())
                };
                s[i][0] = _mm256_dpbusd_epi32(s[i][0], x0, w);
                s[i][1] = _mm256_dpbusd_epi32(s[i][1], x1, w);
            }
        }
        // SAFETY: xd holds nb · 16 scales; block b's are 16b .. 16b + 16.
        let (xd0, xd1) = unsafe {
            let p = xd.as_ptr().add(b * Q8_TOKENS);
            (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
        };
        for i in 0..Q8_ROWS {
            let dw = _mm256_set1_ps(d[i][b]);
            for (h, xdh) in [xd0, xd1].into_iter().enumerate() {
                let m = _mm256_mul_ps(dw, xdh);
                let t = _mm256_mul_ps(m, _mm256_cvtepi32_ps(s[i][h]));
                acc[i][h] = _mm256_add_ps(acc[i][h], t);
            }
        }
    }
    for (o, a) in out.iter_mut().zip(&acc) {
        // SAFETY: o holds 16 floats.
        unsafe {
            _mm256_storeu_ps(o.as_mut_ptr(), a[0]);
            _mm256_storeu_ps(o.as_mut_ptr().add(8), a[1]);
        }
    }
}

/// One weight row's per-block constants for [`tile`]: d ← its NB f16 scales as f32, wsum ←
/// 128 · Σ of each block's 32 quants (q: NB · 32 quants).
pub(super) fn row_constants(_t: Vnni, q: &[i8], s: &[f16], d: &mut [f32], wsum: &mut [i32]) {
    let nb = s.len();
    assert!(
        q.len() == nb * Q8_BLOCK && d.len() == nb && wsum.len() == nb,
        "vnni row_constants: lengths"
    );
    // SAFETY: the token proves the features; the lengths were checked above.
    unsafe { row_constants_vnni(q, s, d, wsum) }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
fn row_constants_vnni(q: &[i8], s: &[f16], d: &mut [f32], wsum: &mut [i32]) {
    let nb = s.len();
    let mut b = 0;
    while b + 8 <= nb {
        // SAFETY: s and d hold nb ≥ b + 8 elements.
        unsafe {
            let h = _mm_loadu_si128(s.as_ptr().add(b).cast());
            _mm256_storeu_ps(d.as_mut_ptr().add(b), _mm256_cvtph_ps(h));
        }
        b += 8;
    }
    for (o, v) in d[b..].iter_mut().zip(&s[b..]) {
        *o = v.to_f32();
    }
    let flip = _mm256_set1_epi8(-128);
    for (b, o) in wsum.iter_mut().enumerate() {
        // SAFETY: q holds nb · 32 quants; block b is bytes 32b .. 32b + 32.
        let v = unsafe { _mm256_loadu_si256(q.as_ptr().add(b * Q8_BLOCK).cast()) };
        // Σ (w + 128) of each 8 bytes in four u64 lanes, then their total.
        let sad = _mm256_sad_epu8(_mm256_xor_si256(v, flip), _mm256_setzero_si256());
        let s2 = _mm_add_epi64(
            _mm256_castsi256_si128(sad),
            _mm256_extracti128_si256::<1>(sad),
        );
        let total = _mm_cvtsi128_si64(_mm_add_epi64(s2, _mm_unpackhi_epi64(s2, s2))) as i32;
        *o = 128 * (total - 128 * Q8_BLOCK as i32);
    }
}
