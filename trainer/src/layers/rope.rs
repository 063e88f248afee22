//! Rotary position embeddings in Hugging Face's rotate-half convention: in each head of D values,
//! the pair (i, i + D/2) at position p is rotated by the angle p·f_i, f_i the i-th inverse
//! frequency (`ModelConfig::rope`'s `inv_freq`, Llama 3's rescaling included). Applied in place
//! to queries and keys after their norms.
//!
//! Letters: B·T rows of H heads of D values; positions run 0..T within each sequence.

/// cos and sin tables (T, D/2) for `inv_freq` (D/2), computed in f64 and rounded once.
pub fn tables(t: usize, inv_freq: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let half = inv_freq.len();
    let mut cos = vec![0.0f32; t * half];
    let mut sin = vec![0.0f32; t * half];
    for p in 0..t {
        for (i, &f) in inv_freq.iter().enumerate() {
            let a = p as f64 * f as f64;
            cos[p * half + i] = a.cos() as f32;
            sin[p * half + i] = a.sin() as f32;
        }
    }
    (cos, sin)
}

/// Rotates x (B·T, H, D) in place: each row r is at position r % T. `sign` = 1 applies the
/// rotation (forward), −1 its inverse (backward: a rotation's Jacobian is the rotation, so the
/// gradient is rotated back).
pub fn rotate(x: &mut [f32], t: usize, heads: usize, cos: &[f32], sin: &[f32], sign: f32) {
    let half = cos.len() / t;
    let d = 2 * half;
    assert_eq!(x.len() % (heads * d), 0);
    for (row, xr) in x.chunks_exact_mut(heads * d).enumerate() {
        let p = row % t;
        let (c, s) = (&cos[p * half..][..half], &sin[p * half..][..half]);
        for h in xr.chunks_exact_mut(d) {
            let (a, b) = h.split_at_mut(half);
            for i in 0..half {
                let (x0, x1) = (a[i], b[i]);
                // out_i = x_i·cos − x_{i+D/2}·sin; out_{i+D/2} = x_{i+D/2}·cos + x_i·sin.
                a[i] = x0 * c[i] - sign * x1 * s[i];
                b[i] = x1 * c[i] + sign * x0 * s[i];
            }
        }
    }
}

/// Forward: rotate queries or keys in place.
pub fn forward(x: &mut [f32], t: usize, heads: usize, cos: &[f32], sin: &[f32]) {
    rotate(x, t, heads, cos, sin, 1.0);
}

/// Backward: turns ∂L/∂out into ∂L/∂x in place (the inverse rotation).
pub fn backward(dx: &mut [f32], t: usize, heads: usize, cos: &[f32], sin: &[f32]) {
    rotate(dx, t, heads, cos, sin, -1.0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::check::{Rng, assert_close, f32s, fd_grad, weighted_sum};
    use emberlm_formats::config::{Rope, RopeScaling};

    /// Float64 reference: complex-free rotate-half written from the formula.
    fn reference(x: &[f64], t: usize, heads: usize, inv: &[f32]) -> Vec<f64> {
        let half = inv.len();
        let d = 2 * half;
        let mut out = x.to_vec();
        for (row, o) in out.chunks_mut(heads * d).enumerate() {
            let p = (row % t) as f64;
            for h in 0..heads {
                for i in 0..half {
                    let (x0, x1) = (
                        x[row * heads * d + h * d + i],
                        x[row * heads * d + h * d + half + i],
                    );
                    let a = p * inv[i] as f64;
                    o[h * d + i] = x0 * a.cos() - x1 * a.sin();
                    o[h * d + half + i] = x1 * a.cos() + x0 * a.sin();
                }
            }
        }
        out
    }

    #[test]
    fn rotation_and_its_gradient_match_the_formula() {
        let (b, t, heads, d) = (2, 5, 3, 8);
        let rope = Rope {
            theta: 500_000.0,
            local_theta: 10_000.0,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_context: 4,
            },
        };
        let inv = rope.inv_freq(d, false);
        let (cos, sin) = tables(t, &inv);
        let mut rng = Rng(5);
        let x = rng.vec(b * t * heads * d, 1.0);
        let w = rng.vec(x.len(), 1.0);
        let mut y = f32s(&x);
        forward(&mut y, t, heads, &cos, &sin);
        assert_close("rope out", &y, &reference(&x, t, heads, &inv), 1e-6, 1e-5);
        let mut g = f32s(&w);
        backward(&mut g, t, heads, &cos, &sin);
        let want = fd_grad(&x, |xx| weighted_sum(&reference(xx, t, heads, &inv), &w));
        assert_close("rope dx", &g, &want, 1e-5, 1e-4);
    }
}
