//! The Q8 prefill driver: Y (N, R) = X (N, C) · Wᵀ for one thread's share of tokens.
//!
//! W is dequantized tile by tile, RT rows × KC columns, into a stack buffer; each tile is then
//! multiplied with every token of the share by an architecture microkernel computing MR rows × NR
//! tokens of dot products over the tile's columns. Each W element is thus read from memory once
//! per call, and each token row once per tile. Letters as in [`super`].

#![forbid(unsafe_code)]

use super::{Isa, Kernels, Q8_BLOCK, Q8Matrix};

/// Weight rows per dequantized tile (RT · KC · 4 bytes = 16 KiB: half the L1 data cache).
pub(super) const RT: usize = 8;
/// Columns per dequantized tile (a multiple of [`Q8_BLOCK`], so tiles start on block boundaries).
pub(super) const KC: usize = 512;
/// Weight rows per microkernel call.
pub(super) const MR: usize = 4;
/// Tokens per microkernel call.
pub(super) const NR: usize = 3;

const _: () = assert!(KC % Q8_BLOCK == 0 && RT % MR == 0);

/// One microkernel call: `out[t][i] = Σ_{j < kc} a[i*KC + j] · b[t*ldb + j]` for i < mr, t < nr.
/// `a` is (mr, KC) dequantized weights, `b` is (nr, ldb) token rows starting at the tile's column.
#[derive(Clone, Copy, Debug)]
pub(super) struct TileDot<'a> {
    pub a: &'a [f32],
    pub mr: usize,
    pub b: &'a [f32],
    pub ldb: usize,
    pub nr: usize,
    pub kc: usize,
}

impl TileDot<'_> {
    /// Panics unless every slice covers the rows and columns it claims (the arch microkernels read
    /// through raw pointers after this check).
    pub fn check(&self) {
        assert!((1..=MR).contains(&self.mr) && (1..=NR).contains(&self.nr) && self.kc <= KC);
        assert!(self.a.len() >= (self.mr - 1) * KC + self.kc);
        assert!(self.b.len() >= (self.nr - 1) * self.ldb + self.kc);
    }
}

/// Y (n, R) = X (n, C) · Wᵀ on the calling thread, n = x.len() / C (C, R > 0, checked by the caller).
pub(super) fn matmul_q8_tokens(k: &Kernels, w: Q8Matrix<'_>, x: &[f32], y: &mut [f32]) {
    let (r, c) = (w.rows(), w.cols());
    let n = x.len() / c;
    let mut tile = [0f32; RT * KC];
    for r0 in (0..r).step_by(RT) {
        let rt = RT.min(r - r0);
        for k0 in (0..c).step_by(KC) {
            let kc = KC.min(c - k0);
            dequant_tile(k, w, r0, rt, k0, kc, &mut tile);
            for n0 in (0..n).step_by(NR) {
                let nr = NR.min(n - n0);
                for i0 in (0..rt).step_by(MR) {
                    let d = TileDot {
                        a: &tile[i0 * KC..],
                        mr: MR.min(rt - i0),
                        b: &x[n0 * c + k0..],
                        ldb: c,
                        nr,
                        kc,
                    };
                    let mut out = [[0f32; MR]; NR];
                    dot_tile(k, &d, &mut out);
                    for (t, o) in out.iter().enumerate().take(nr) {
                        let yt = &mut y[(n0 + t) * r + r0 + i0..][..d.mr];
                        if k0 == 0 {
                            yt.copy_from_slice(&o[..d.mr]);
                        } else {
                            yt.iter_mut().zip(o).for_each(|(y, o)| *y += o);
                        }
                    }
                }
            }
        }
    }
}

/// tile (rt, KC) ← rows r0 .. r0+rt, columns k0 .. k0+kc of W, dequantized (k0 % 32 == 0).
fn dequant_tile(
    k: &Kernels,
    w: Q8Matrix<'_>,
    r0: usize,
    rt: usize,
    k0: usize,
    kc: usize,
    tile: &mut [f32],
) {
    match k.isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(t) => super::x86_64::dequant_tile(t, w, r0, rt, k0, kc, tile),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon(t) => super::aarch64::dequant_tile(t, w, r0, rt, k0, kc, tile),
        Isa::Reference => {
            let (c, nb) = (w.cols(), w.blocks_per_row());
            for i in 0..rt {
                let q = &w.quants()[(r0 + i) * c + k0..][..kc];
                let d = &w.scales()[(r0 + i) * nb + k0 / Q8_BLOCK..];
                let o = &mut tile[i * KC..][..kc];
                for ((ob, qb), d) in o.chunks_mut(Q8_BLOCK).zip(q.chunks(Q8_BLOCK)).zip(d) {
                    let d = d.to_f32();
                    ob.iter_mut()
                        .zip(qb)
                        .for_each(|(o, &q)| *o = f32::from(q) * d);
                }
            }
        }
    }
}

fn dot_tile(k: &Kernels, d: &TileDot<'_>, out: &mut [[f32; MR]; NR]) {
    d.check();
    match k.isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(t) => super::x86_64::dot_tile(t, d, out),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon(t) => super::aarch64::dot_tile(t, d, out),
        Isa::Reference => {
            for (t, o) in out.iter_mut().enumerate().take(d.nr) {
                for (i, o) in o.iter_mut().enumerate().take(d.mr) {
                    let a = &d.a[i * KC..][..d.kc];
                    let b = &d.b[t * d.ldb..][..d.kc];
                    *o = a.iter().zip(b).map(|(a, b)| a * b).sum();
                }
            }
        }
    }
}
