//! Linear layer `out = inp · weightᵀ + bias` (PyTorch `nn.Linear`, weight stored (OC, C)), through
//! the runtime's safe `gemm` wrapper.
//!
//! Letters: N rows (B·T), C input channels, OC output channels.

use crate::gemm::{MatMut, MatRef, Parallelism, matmul};
use rayon::prelude::*;

/// Output columns per rayon task when reducing the bias gradient.
const COL_BLOCK: usize = 64;

/// out (N, OC) = inp (N, C) · weight (OC, C)ᵀ + bias (OC). Overwrites `out`.
/// Threads: the current rayon pool.
pub fn forward(out: &mut [f32], inp: &[f32], weight: &[f32], bias: Option<&[f32]>, c: usize) {
    let oc = weight.len() / c;
    let n = inp.len() / c;
    assert!(weight.len() == oc * c && inp.len() == n * c && out.len() == n * oc);
    // With a bias, start from the bias rows and accumulate the product (saves a pass).
    let beta = match bias {
        Some(b) => {
            assert_eq!(b.len(), oc);
            out.par_chunks_mut(oc)
                .for_each(|row| row.copy_from_slice(b));
            1.0
        }
        None => 0.0,
    };
    matmul(
        &mut MatMut::row_major(out, n, oc),
        beta,
        MatRef::row_major(inp, n, c),
        MatRef::row_major(weight, oc, c).t(),
        1.0,
        Parallelism::current(),
    );
}

/// Gradients of [`forward`]: dinp (N, C) is overwritten; dweight (OC, C) and dbias (OC)
/// accumulate (`+=`).
pub fn backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    c: usize,
) {
    let oc = weight.len() / c;
    let n = inp.len() / c;
    assert!(dinp.len() == n * c && dweight.len() == oc * c && dout.len() == n * oc);
    let par = Parallelism::current();
    // forward: out = inp · Wᵀ  ⇒  dinp = dout · W
    matmul(
        &mut MatMut::row_major(dinp, n, c),
        0.0,
        MatRef::row_major(dout, n, oc),
        MatRef::row_major(weight, oc, c),
        1.0,
        par,
    );
    // forward: out = inp · Wᵀ  ⇒  dW += doutᵀ · inp
    matmul(
        &mut MatMut::row_major(dweight, oc, c),
        1.0,
        MatRef::row_major(dout, n, oc).t(),
        MatRef::row_major(inp, n, c),
        1.0,
        par,
    );
    // forward: out += bias (broadcast over rows)  ⇒  dbias += Σ_rows dout
    if let Some(db) = dbias {
        assert_eq!(db.len(), oc);
        db.par_chunks_mut(COL_BLOCK)
            .enumerate()
            .for_each(|(blk, db)| {
                let c0 = blk * COL_BLOCK;
                for row in dout.chunks_exact(oc) {
                    for (d, g) in db.iter_mut().zip(&row[c0..]) {
                        *d += g;
                    }
                }
            });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::layers::check::{Rng, assert_close, f32s, fd_grad, weighted_sum};

    const FWD_ATOL: f64 = 1e-5;
    const GRAD_ATOL: f64 = 1e-5;
    const GRAD_RTOL: f64 = 1e-5;

    /// Float64 reference forward.
    pub(crate) fn reference_forward(
        inp: &[f64],
        w: &[f64],
        bias: Option<&[f64]>,
        c: usize,
    ) -> Vec<f64> {
        let oc = w.len() / c;
        let n = inp.len() / c;
        let mut out = vec![0.0; n * oc];
        for r in 0..n {
            for o in 0..oc {
                let mut s = bias.map_or(0.0, |b| b[o]);
                for i in 0..c {
                    s += inp[r * c + i] * w[o * c + i];
                }
                out[r * oc + o] = s;
            }
        }
        out
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (n, c, oc) = (13, 7, 70);
        let mut rng = Rng(5);
        let x = rng.vec(n * c, 1.0);
        let w = rng.vec(oc * c, 1.0);
        let b = rng.vec(oc, 1.0);
        let g = rng.vec(n * oc, 1.0);
        for with_bias in [true, false] {
            let bias = with_bias.then_some(&b[..]);
            let mut out = vec![f32::NAN; n * oc]; // overwritten, never read
            let bf = f32s(&b);
            forward(
                &mut out,
                &f32s(&x),
                &f32s(&w),
                with_bias.then_some(&bf[..]),
                c,
            );
            assert_close(
                "linear out",
                &out,
                &reference_forward(&x, &w, bias, c),
                FWD_ATOL,
                0.0,
            );

            let mut dinp = vec![f32::NAN; n * c];
            let mut dw = vec![1.0f32; oc * c]; // accumulates on top of 1
            let mut db = vec![1.0f32; oc];
            backward(
                &mut dinp,
                &mut dw,
                with_bias.then_some(&mut db[..]),
                &f32s(&g),
                &f32s(&x),
                &f32s(&w),
                c,
            );
            let gx = fd_grad(&x, |xx| {
                weighted_sum(&reference_forward(xx, &w, bias, c), &g)
            });
            let gw: Vec<f64> = fd_grad(&w, |ww| {
                weighted_sum(&reference_forward(&x, ww, bias, c), &g)
            })
            .iter()
            .map(|v| v + 1.0)
            .collect();
            assert_close("linear dinp", &dinp, &gx, GRAD_ATOL, GRAD_RTOL);
            assert_close("linear dweight", &dw, &gw, GRAD_ATOL, GRAD_RTOL);
            if with_bias {
                let gb: Vec<f64> = fd_grad(&b, |bb| {
                    weighted_sum(&reference_forward(&x, &w, Some(bb), c), &g)
                })
                .iter()
                .map(|v| v + 1.0)
                .collect();
                assert_close("linear dbias", &db, &gb, GRAD_ATOL, GRAD_RTOL);
            } else {
                assert!(db.iter().all(|&v| v == 1.0));
            }
        }
    }
}
