//! Gated MLP activations: SwiGLU (Llama, Qwen: SiLU(gate) ⊙ up) and GeGLU (Gemma: GELU_tanh(gate)
//! ⊙ up), over the outputs of the gate and up projections.
//!
//! Letters: N rows, F hidden units.

use super::{gelu, simd};
use rayon::prelude::*;

/// Elements per rayon task.
const CHUNK: usize = 8192;

/// The gate's nonlinearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// SiLU, x·σ(x).
    Silu,
    /// GELU with the tanh approximation (GPT-2's, `gelu_pytorch_tanh`).
    GeluTanh,
}

fn act(g: Gate, x: f32) -> f32 {
    match g {
        Gate::Silu => x / (1.0 + simd::exp(-x)),
        Gate::GeluTanh => gelu::gelu_scalar(x),
    }
}

fn dact(g: Gate, x: f32) -> f32 {
    match g {
        Gate::Silu => {
            let s = 1.0 / (1.0 + simd::exp(-x));
            s * (1.0 + x * (1.0 - s))
        }
        Gate::GeluTanh => gelu::gelu_grad_scalar(x),
    }
}

/// out (N, F) = act(gate) ⊙ up.
pub fn forward(out: &mut [f32], gate: &[f32], up: &[f32], g: Gate) {
    assert!(out.len() == gate.len() && gate.len() == up.len());
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(out, (gate, up))| {
            for ((o, &a), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = act(g, a) * u;
            }
        });
}

/// dgate = dout ⊙ up ⊙ act'(gate), dup = dout ⊙ act(gate) (both overwritten).
pub fn backward(
    dgate: &mut [f32],
    dup: &mut [f32],
    dout: &[f32],
    gate: &[f32],
    up: &[f32],
    g: Gate,
) {
    assert!(dgate.len() == gate.len() && dup.len() == up.len() && dout.len() == gate.len());
    dgate
        .par_chunks_mut(CHUNK)
        .zip(dup.par_chunks_mut(CHUNK))
        .zip(dout.par_chunks(CHUNK))
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(((dgate, dup), dout), (gate, up))| {
            for i in 0..gate.len() {
                dgate[i] = dout[i] * up[i] * dact(g, gate[i]);
                dup[i] = dout[i] * act(g, gate[i]);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::check::{Rng, assert_close, f32s, fd_grad, weighted_sum};

    /// Float64 references written from the definitions.
    fn reference(gate: &[f64], up: &[f64], g: Gate) -> Vec<f64> {
        gate.iter()
            .zip(up)
            .map(|(&a, &u)| {
                let act = match g {
                    Gate::Silu => a / (1.0 + (-a).exp()),
                    Gate::GeluTanh => {
                        let k = (2.0 / std::f64::consts::PI).sqrt();
                        0.5 * a * (1.0 + (k * (a + 0.044715 * a * a * a)).tanh())
                    }
                };
                act * u
            })
            .collect()
    }

    #[test]
    fn gradients_match_finite_differences() {
        for g in [Gate::Silu, Gate::GeluTanh] {
            let n = 97;
            let mut rng = Rng(7);
            let (gate, up, w) = (rng.vec(n, 3.0), rng.vec(n, 2.0), rng.vec(n, 1.0));
            let mut out = vec![0.0f32; n];
            forward(&mut out, &f32s(&gate), &f32s(&up), g);
            assert_close("glu out", &out, &reference(&gate, &up, g), 1e-5, 1e-5);
            let (mut dg, mut du) = (vec![0.0f32; n], vec![0.0f32; n]);
            backward(&mut dg, &mut du, &f32s(&w), &f32s(&gate), &f32s(&up), g);
            let want_g = fd_grad(&gate, |x| weighted_sum(&reference(x, &up, g), &w));
            let want_u = fd_grad(&up, |x| weighted_sum(&reference(&gate, x, g), &w));
            assert_close("glu dgate", &dg, &want_g, 2e-5, 1e-4);
            assert_close("glu dup", &du, &want_u, 2e-5, 1e-4);
        }
    }

    /// Far outside the exp's clamped range, both gates stay finite and exact: act(x) → 0 for
    /// x → −∞ and → x for x → +∞, the derivatives → 0 and 1 (and chunked rows agree with a
    /// row of one element).
    #[test]
    fn extreme_gates_stay_finite() {
        for g in [Gate::Silu, Gate::GeluTanh] {
            let gate = [-1000.0, -100.0, -30.0, 0.0, 30.0, 100.0, 1000.0];
            let up = [1.0; 7];
            let mut out = vec![f32::NAN; 7];
            forward(&mut out, &f32s(&gate), &f32s(&up), g);
            assert_close("glu out", &out, &reference(&gate, &up, g), 1e-6, 1e-6);
            let (mut dg, mut du) = (vec![f32::NAN; 7], vec![f32::NAN; 7]);
            backward(&mut dg, &mut du, &[1.0; 7], &f32s(&gate), &f32s(&up), g);
            for (i, want) in [(0, 0.0), (1, 0.0), (5, 1.0), (6, 1.0)] {
                assert!((dg[i] - want).abs() < 1e-6, "{g:?} dgate[{i}] = {}", dg[i]);
            }
            assert!(dg.iter().chain(&du).all(|v| v.is_finite()));
        }
    }
}
