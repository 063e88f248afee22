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

/// out (C) ← a Q4 row (C / 2 bytes of nibbles, blocks of 16 bytes: byte j holds element j in
/// its low nibble and element 16 + j in its high one) as its int8 codebook levels, exactly as
/// `panel_q8`'s scalar `expand_q4`: `vpshufb` looks up 32 nibbles at a time.
pub(super) fn expand_q4(_t: Vnni, q: &[u8], codebook: &[i8; 16], out: &mut [i8]) {
    assert!(
        q.len() % 16 == 0 && out.len() == 2 * q.len(),
        "vnni expand_q4: lengths"
    );
    // SAFETY: the token proves the features; the lengths were checked above.
    unsafe { expand_q4_avx2(q, codebook, out) }
}

#[target_feature(enable = "avx2")]
fn expand_q4_avx2(q: &[u8], codebook: &[i8; 16], out: &mut [i8]) {
    // SAFETY: the codebook is 16 bytes.
    let t128 = unsafe { _mm_loadu_si128(codebook.as_ptr().cast()) };
    let table = _mm256_broadcastsi128_si256(t128);
    let low = _mm256_set1_epi8(0x0F);
    let blocks = q.len() / 16;
    let mut b = 0;
    while b + 2 <= blocks {
        // SAFETY: blocks b, b + 1 are bytes 16b .. 16b + 32 of q and 32b .. 32b + 64 of out.
        unsafe {
            let v = _mm256_loadu_si256(q.as_ptr().add(16 * b).cast());
            let lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, low));
            let hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16::<4>(v), low));
            let o = out.as_mut_ptr().add(32 * b);
            _mm256_storeu_si256(o.cast(), _mm256_permute2x128_si256::<0x20>(lo, hi));
            _mm256_storeu_si256(o.add(32).cast(), _mm256_permute2x128_si256::<0x31>(lo, hi));
        }
        b += 2;
    }
    if b < blocks {
        // SAFETY: block b is bytes 16b .. 16b + 16 of q and 32b .. 32b + 32 of out.
        unsafe {
            let v = _mm_loadu_si128(q.as_ptr().add(16 * b).cast());
            let m = _mm_set1_epi8(0x0F);
            let lo = _mm_shuffle_epi8(t128, _mm_and_si128(v, m));
            let hi = _mm_shuffle_epi8(t128, _mm_and_si128(_mm_srli_epi16::<4>(v), m));
            let o = out.as_mut_ptr().add(32 * b);
            _mm_storeu_si128(o.cast(), lo);
            _mm_storeu_si128(o.add(16).cast(), hi);
        }
    }
}

/// out (NB · 32) ← a Q6 row (NB blocks of 24 bytes, FORMAT.md §5: 16 bytes of low nibbles as
/// Q4's, then 8 bytes of 2-bit highs, byte 16 + j holding elements j, j + 8, j + 16, j + 24) as
/// its levels in −32..=31, exactly as `Q6Matrix::row_levels`, one block per 32-byte vector.
pub(super) fn expand_q6(_t: Vnni, q: &[u8], out: &mut [i8]) {
    assert!(
        q.len() % 24 == 0 && out.len() == q.len() / 24 * 32,
        "vnni expand_q6: lengths"
    );
    // SAFETY: the token proves the features; the lengths were checked above.
    unsafe { expand_q6_avx2(q, out) }
}

#[target_feature(enable = "avx2")]
fn expand_q6_avx2(q: &[u8], out: &mut [i8]) {
    let low = _mm256_set1_epi8(0x0F);
    let three = _mm256_set1_epi8(3);
    let sign = _mm256_set1_epi8(0x20);
    // 64-bit lane g holds elements 8g .. 8g + 8, whose highs sit 2g bits up in their bytes.
    let shifts = _mm256_setr_epi64x(0, 2, 4, 6);
    for (b, block) in q.chunks_exact(24).enumerate() {
        // SAFETY: the block is 24 bytes (16 read, then 8), and elements 32b .. 32b + 32 are
        // inside out.
        unsafe {
            let v = _mm_loadu_si128(block.as_ptr().cast());
            let nib = _mm256_set_m128i(_mm_srli_epi16::<4>(v), v);
            let lo = _mm256_and_si256(nib, low);
            let h = block.as_ptr().add(16).cast::<i64>().read_unaligned();
            let hi = _mm256_and_si256(_mm256_srlv_epi64(_mm256_set1_epi64x(h), shifts), three);
            let u = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hi));
            let level = _mm256_sub_epi8(_mm256_xor_si256(u, sign), sign);
            _mm256_storeu_si256(out.as_mut_ptr().add(32 * b).cast(), level);
        }
    }
}
