//! GELU, tanh approximation (GPT-2, the book's `GELU`):
//! `gelu(x) = 0.5·x·(1 + tanh(k·(x + 0.044715·x³)))`, k = sqrt(2/π).
//!
//! Computed through the identity 0.5·(1 + tanh(u)) = σ(2u) = 1 / (1 + e^(−2u)), which is exact,
//! accurate for every x (no 1 − 2/(…) cancellation) and vectorizes with the polynomial `exp`.
//!
//! Letters: N the number of elements (B·T·4C in the model).

use super::simd;
use rayon::prelude::*;

/// Elements per rayon task.
const CHUNK: usize = 1 << 13;
/// sqrt(2/π).
const K: f32 = 0.797_884_6;
/// The cubic coefficient.
const A: f32 = 0.044_715;

/// gelu(x).
#[inline]
pub fn gelu_scalar(x: f32) -> f32 {
    let u = K * (x + A * x * x * x);
    x / (1.0 + simd::exp(-2.0 * u))
}

/// gelu'(x).
#[inline]
pub fn gelu_grad_scalar(x: f32) -> f32 {
    // forward: o = x·s with s = σ(2u), u = k(x + a x³)
    // ⇒ do/dx = s + x·s' ; s' = 2·s(1−s)·du/dx ; du/dx = k(1 + 3a x²)
    let u = K * (x + A * x * x * x);
    let s = 1.0 / (1.0 + simd::exp(-2.0 * u));
    let du = K * (1.0 + 3.0 * A * x * x);
    s + x * 2.0 * s * (1.0 - s) * du
}

/// out (N) = gelu(inp (N)). Overwrites `out`.
pub fn forward(out: &mut [f32], inp: &[f32]) {
    assert_eq!(out.len(), inp.len());
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            for (o, &x) in o.iter_mut().zip(x) {
                *o = gelu_scalar(x);
            }
        });
}

/// dinp (N) = dout ⊙ gelu'(inp), in place: `d` holds dout on entry and dinp on return.
pub fn backward(d: &mut [f32], inp: &[f32]) {
    assert_eq!(d.len(), inp.len());
    d.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(d, x)| {
            for (d, &x) in d.iter_mut().zip(x) {
                *d *= gelu_grad_scalar(x);
            }
        });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::layers::check::{Rng, assert_close, f32s, fd_grad, weighted_sum};

    const FWD_ATOL: f64 = 1e-6;
    const FWD_RTOL: f64 = 1e-6;
    const GRAD_ATOL: f64 = 1e-6;
    const GRAD_RTOL: f64 = 1e-5;

    /// Float64 reference forward: the book's formula with tanh, verbatim.
    pub(crate) fn reference_forward(x: &[f64]) -> Vec<f64> {
        let k = (2.0 / std::f64::consts::PI).sqrt();
        x.iter()
            .map(|&x| 0.5 * x * (1.0 + (k * (x + 0.044715 * x.powi(3))).tanh()))
            .collect()
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = Rng(6);
        // Wide range: deep negative tail, zero, large positive.
        let mut x = rng.vec(300, 6.0);
        x.extend([0.0, -12.0, 12.0, 1e-4, -1e-4, 40.0, -40.0]);
        let w = rng.vec(x.len(), 1.0);
        let mut out = vec![0.0f32; x.len()];
        forward(&mut out, &f32s(&x));
        assert_close("gelu out", &out, &reference_forward(&x), FWD_ATOL, FWD_RTOL);
        let mut d = f32s(&w);
        backward(&mut d, &f32s(&x));
        let g = fd_grad(&x, |xx| weighted_sum(&reference_forward(xx), &w));
        assert_close("gelu dinp", &d, &g, GRAD_ATOL, GRAD_RTOL);
    }

    #[test]
    fn known_values() {
        // gelu_tanh(1) = 0.8411920, gelu_tanh(-1) = -0.1588080 (PyTorch, approximate="tanh").
        let mut out = [0.0f32; 2];
        forward(&mut out, &[1.0, -1.0]);
        assert!(
            (out[0] as f64 - 0.841_192).abs() < FWD_ATOL
                && (out[1] as f64 + 0.158_808).abs() < FWD_ATOL,
            "{out:?}"
        );
    }
}
