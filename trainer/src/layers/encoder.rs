//! Token + learned position embedding: `out[b, t] = wte[tokens[b, t]] + wpe[t]`.
//!
//! Letters: B batch, T time (sequence length of this batch, at most the context length),
//! C channels, V vocabulary, P the position table's rows (context length).

use rayon::prelude::*;

/// out (B, T, C) = wte (V, C)[tokens (B, T)] + wpe (P, C)[t].
///
/// Contract: every token is < V and T ≤ P (the model validates untrusted ids before calling);
/// a violation is a programmer error and panics on indexing.
pub fn forward(out: &mut [f32], tokens: &[u32], wte: &[f32], wpe: &[f32], t: usize, c: usize) {
    assert_eq!(out.len(), tokens.len() * c, "encoder: out is (B, T, C)");
    out.par_chunks_mut(c)
        .zip(tokens.par_iter())
        .enumerate()
        .for_each(|(row, (o, &tok))| {
            let pos = row % t;
            let e = &wte[tok as usize * c..][..c];
            let p = &wpe[pos * c..][..c];
            for i in 0..c {
                o[i] = e[i] + p[i];
            }
        });
}

/// dwte (V, C) += scatter of dout (B, T, C) by token; dwpe (P, C) += Σ_b dout[b, t].
///
/// The scatter into dwte runs serially in row order (repeated tokens would race otherwise; it is
/// B·T·C additions, negligible next to the matmuls); dwpe is parallel over positions.
pub fn backward(
    dwte: &mut [f32],
    dwpe: &mut [f32],
    dout: &[f32],
    tokens: &[u32],
    t: usize,
    c: usize,
) {
    assert_eq!(dout.len(), tokens.len() * c, "encoder: dout is (B, T, C)");
    let b = tokens.len() / t;
    // forward: o[i] = e[i] + p[i]  ⇒  de[i] += do[i]
    for (d, &tok) in dout.chunks_exact(c).zip(tokens) {
        let de = &mut dwte[tok as usize * c..][..c];
        for i in 0..c {
            de[i] += d[i];
        }
    }
    // forward: o[i] = e[i] + p[i]  ⇒  dp[i] += do[i], summed over the batch
    dwpe[..t * c]
        .par_chunks_mut(c)
        .enumerate()
        .for_each(|(pos, dp)| {
            for bi in 0..b {
                let d = &dout[(bi * t + pos) * c..][..c];
                for i in 0..c {
                    dp[i] += d[i];
                }
            }
        });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::layers::check::{Rng, assert_close, f32s, fd_grad, weighted_sum};

    const GRAD_ATOL: f64 = 1e-6;
    const GRAD_RTOL: f64 = 1e-5;

    /// Float64 reference forward.
    pub(crate) fn reference_forward(
        tokens: &[u32],
        wte: &[f64],
        wpe: &[f64],
        t: usize,
        c: usize,
    ) -> Vec<f64> {
        let mut out = vec![0.0; tokens.len() * c];
        for (row, &tok) in tokens.iter().enumerate() {
            for i in 0..c {
                out[row * c + i] = wte[tok as usize * c + i] + wpe[(row % t) * c + i];
            }
        }
        out
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (b, t, c, v, p) = (2, 5, 3, 4, 7);
        let mut rng = Rng(11);
        // Token 1 repeats (the scatter must add), token 3 never appears (zero gradient row).
        let tokens = [1u32, 0, 1, 2, 1, 0, 1, 2, 2, 1];
        let wte = rng.vec(v * c, 1.0);
        let wpe = rng.vec(p * c, 1.0);
        let w = rng.vec(b * t * c, 1.0);
        let mut out = vec![0.0f32; b * t * c];
        forward(&mut out, &tokens, &f32s(&wte), &f32s(&wpe), t, c);
        assert_close(
            "encoder out",
            &out,
            &reference_forward(&tokens, &wte, &wpe, t, c),
            GRAD_ATOL,
            GRAD_RTOL,
        );
        let mut dwte = vec![0.5f32; v * c]; // non-zero start: backward must accumulate
        let mut dwpe = vec![0.25f32; p * c];
        backward(&mut dwte, &mut dwpe, &f32s(&w), &tokens, t, c);
        let g_te = fd_grad(&wte, |x| {
            weighted_sum(&reference_forward(&tokens, x, &wpe, t, c), &w)
        });
        let g_pe = fd_grad(&wpe, |x| {
            weighted_sum(&reference_forward(&tokens, &wte, x, t, c), &w)
        });
        let want_te: Vec<f64> = g_te.iter().map(|g| g + 0.5).collect();
        let want_pe: Vec<f64> = g_pe.iter().map(|g| g + 0.25).collect();
        assert_close("dwte", &dwte, &want_te, GRAD_ATOL, GRAD_RTOL);
        assert_close("dwpe", &dwpe, &want_pe, GRAD_ATOL, GRAD_RTOL);
    }
}
