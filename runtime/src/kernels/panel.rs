//! The prefill product for every weight dtype: Y (N, P) = X (N, C) · W[rows]ᵀ, one thread's rows
//! of W at a time, with a register-blocked microkernel of our own.
//!
//! - X is packed once per product ([`pack_tokens`]): groups of [`TOKENS`] tokens, each group
//!   stored column by column (`xp[g][j][t]` = X[16g + t, j]) and zero-padded, so the microkernel
//!   loads the 16 tokens of one column as whole vectors.
//! - W is read once per call: [`BLOCK_ROWS`] rows × [`KB`] columns at a time are converted to f32
//!   (f16 through F16C / NEON, Q8 blocks dequantized, f32 copied) into a 48 KiB stack block, and
//!   the next block's bytes are prefetched meanwhile (x86-64). Each token group's 16 × KB inputs then meet
//!   the block's 6-row panels in turn.
//! - The microkernel keeps 6 rows × 16 tokens of sums in registers (12 AVX2 or 24 NEON
//!   accumulators) and spends two vector loads and six broadcasts per twelve FMAs. The AVX-512
//!   set's takes two token groups at once (6 rows × 32 tokens in twelve 512-bit registers,
//!   `panel_avx512.rs`), which on cores with 512-bit multiply-add units does twice the work per
//!   instruction.
//!
//! Why our own kernel and not the `gemm` crate (which wants a converted f32 copy of f16 rows and
//! repacks X on every call): README § Runtime kernel decisions, and `cargo bench -p
//! emberlm-benches --bench kernels -- --table`, which compares the two. Letters as in [`super`].

#![forbid(unsafe_code)]

use super::geometry::{BLOCK_ROWS, KB, ROWS, TOKENS, packed_len};
use super::{Isa, Kernels, Mat, Q8Matrix};
use std::ops::Range;

/// y (N, P) = X · W[rows]ᵀ on the calling thread (P = rows.len(), y row-major: token t's outputs
/// for rows `rows` at `y[t·P ..][..P]`), from xp = X packed by [`pack_tokens`].
pub(super) fn matmul_rows(
    k: &Kernels,
    w: Mat<'_>,
    c: usize,
    xp: &[f32],
    n: usize,
    rows: Range<usize>,
    y: &mut [f32],
) {
    let total_rows = w.rows(c);
    assert!(
        rows.start <= rows.end && rows.end <= total_rows,
        "matmul_rows: rows {rows:?}"
    );
    assert!(xp.len() >= packed_len(n, c), "matmul_rows: xp too short");
    let p = rows.len();
    assert!(y.len() >= p * n, "matmul_rows: y too short");
    if n == 0 {
        return;
    }
    if c == 0 {
        y[..p * n].fill(0.0);
        return;
    }
    let mut block = [0f32; BLOCK_ROWS * KB];
    let (mut out, mut out2) = ([[0f32; TOKENS]; ROWS], [[0f32; TOKENS]; ROWS]);
    let groups = n.div_ceil(TOKENS);
    for j0 in rows.clone().step_by(BLOCK_ROWS) {
        let jb = BLOCK_ROWS.min(rows.end - j0);
        for k0 in (0..c).step_by(KB) {
            let kc = KB.min(c - k0);
            load_block(k, w, c, j0, jb, k0, kc, &mut block);
            // The next block's rows come from memory while this one is multiplied.
            let (nj, nk) = if k0 + KB < c {
                (j0, k0 + KB)
            } else {
                (j0 + BLOCK_ROWS, 0)
            };
            if nj < rows.end {
                prefetch_block(
                    k,
                    w,
                    c,
                    nj,
                    BLOCK_ROWS.min(rows.end - nj),
                    nk,
                    KB.min(c - nk),
                );
            }
            // Each token group's columns stay in L1 while the block's panels stream past them;
            // with 512-bit vectors two groups go through the microkernel together.
            let step = if pairs(k) { 2 } else { 1 };
            for g in (0..groups).step_by(step) {
                let gn = step.min(groups - g);
                let xg = |g: usize| &xp[g * TOKENS * c..][k0 * TOKENS..][..kc * TOKENS];
                for i0 in (0..jb).step_by(ROWS) {
                    let jr = ROWS.min(jb - i0);
                    let panel = &block[i0 * KB..];
                    if gn == 2 {
                        micro2(k, panel, (xg(g), xg(g + 1)), kc, (&mut out, &mut out2));
                    } else {
                        micro(k, panel, xg(g), kc, &mut out);
                    }
                    let col = j0 + i0 - rows.start;
                    for (h, out) in [&out, &out2].into_iter().take(gn).enumerate() {
                        let t0 = (g + h) * TOKENS;
                        for t in 0..TOKENS.min(n - t0) {
                            let dst = &mut y[(t0 + t) * p + col..][..jr];
                            if k0 == 0 {
                                dst.iter_mut().zip(out).for_each(|(d, o)| *d = o[t]);
                            } else {
                                dst.iter_mut().zip(out).for_each(|(d, o)| *d += o[t]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Prefetches the bytes [`load_block`] will read for the same arguments.
fn prefetch_block(k: &Kernels, w: Mat<'_>, c: usize, j0: usize, jr: usize, k0: usize, kc: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Isa::Avx2(t) = k.isa {
        for r in j0..j0 + jr {
            let bytes: &[u8] = match w {
                Mat::F32(w) => bytemuck::cast_slice(&w[r * c + k0..][..kc]),
                Mat::F16(w) => bytemuck::cast_slice(&w[r * c + k0..][..kc]),
                Mat::Q8(w) => bytemuck::cast_slice(&w.quants()[r * c + k0..][..kc]),
                Mat::Q4(w) => {
                    let n = w.blocks_per_row() * emberlm_formats::quant::Q4_BLOCK_BYTES;
                    &w.quants()[r * n + k0 / 2..][..kc.div_ceil(2)]
                }
                Mat::Q6(w) => {
                    let n = w.blocks_per_row() * emberlm_formats::quant::Q6_BLOCK_BYTES;
                    &w.quants()[r * n + k0 / 32 * 24..][..kc.div_ceil(32) * 24]
                }
            };
            super::x86_64::prefetch_l2(t, bytes);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (k, w, c, j0, jr, k0, kc);
}

/// block[i·KB ..][..kc] ← row j0 + i, columns k0 .. k0 + kc of W as f32, for i < jb. Rows ≥ jb
/// keep what they held (their sums are computed and discarded).
#[allow(clippy::too_many_arguments)]
fn load_block(
    k: &Kernels,
    w: Mat<'_>,
    c: usize,
    j0: usize,
    jb: usize,
    k0: usize,
    kc: usize,
    block: &mut [f32; BLOCK_ROWS * KB],
) {
    for (i, b) in block.chunks_exact_mut(KB).take(jb).enumerate() {
        let r = j0 + i;
        match w {
            Mat::F32(w) => b[..kc].copy_from_slice(&w[r * c + k0..][..kc]),
            Mat::F16(w) => k.f16_to_f32(&w[r * c + k0..][..kc], &mut b[..kc]),
            Mat::Q8(w) => dequant_row(k, w, r, k0, kc, b),
            Mat::Q4(w) => k.dequantize_q4_cols(w, r, k0, &mut b[..kc]),
            Mat::Q6(w) => k.dequantize_q6_cols(w, r, k0, &mut b[..kc]),
        }
    }
}

/// out[..kc] ← row r, columns k0 .. k0 + kc of W dequantized (k0 a multiple of the Q8 block).
fn dequant_row(k: &Kernels, w: Q8Matrix<'_>, r: usize, k0: usize, kc: usize, out: &mut [f32]) {
    match k.isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(t) => super::x86_64::dequant_row(t, w, r, k0, kc, out),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon(t) => super::aarch64::dequant_row(t, w, r, k0, kc, out),
        Isa::Reference => w.dequantize_cols(r, k0, &mut out[..kc]),
    }
}

/// Whether `k` has the two-group microkernel ([`micro2`] on 512-bit vectors).
fn pairs(k: &Kernels) -> bool {
    #[cfg(all(target_arch = "x86_64", ember_vnni))]
    if let (Isa::Avx2(_), Some(_)) = (k.isa, k.wide) {
        return true;
    }
    let _ = k;
    false
}

/// [`micro`] for two token groups against one panel (the 512-bit kernel where [`pairs`]).
fn micro2(
    k: &Kernels,
    panel: &[f32],
    (xa, xb): (&[f32], &[f32]),
    kc: usize,
    (out_a, out_b): (&mut [[f32; TOKENS]; ROWS], &mut [[f32; TOKENS]; ROWS]),
) {
    #[cfg(all(target_arch = "x86_64", ember_vnni))]
    if let (Isa::Avx2(_), Some(w)) = (k.isa, k.wide) {
        let panel: &[f32; ROWS * KB] = panel[..ROWS * KB].try_into().expect("a whole panel");
        return super::panel_avx512::panel_micro2(w, panel, (xa, xb), kc, (out_a, out_b));
    }
    micro(k, panel, xa, kc, out_a);
    micro(k, panel, xb, kc, out_b);
}

/// out[i][t] = Σ_{j < kc} panel[i·KB + j] · x[j·TOKENS + t] for i < ROWS, t < TOKENS.
fn micro(k: &Kernels, panel: &[f32], x: &[f32], kc: usize, out: &mut [[f32; TOKENS]; ROWS]) {
    assert!(kc <= KB && x.len() >= kc * TOKENS, "micro: x too short");
    let panel: &[f32; ROWS * KB] = panel[..ROWS * KB].try_into().expect("a whole panel");
    match k.isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(t) => super::x86_64::panel_micro(t, panel, x, kc, out),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon(t) => super::aarch64::panel_micro(t, panel, x, kc, out),
        Isa::Reference => {
            for (i, o) in out.iter_mut().enumerate() {
                let p = &panel[i * KB..][..kc];
                o.fill(0.0);
                for (&a, xc) in p.iter().zip(x.chunks_exact(TOKENS)) {
                    o.iter_mut().zip(xc).for_each(|(o, &b)| *o += a * b);
                }
            }
        }
    }
}
