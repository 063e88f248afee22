//! Inverted dropout with a counter-based mask: element `i` of a tensor is kept iff
//! `hash(seed, i) >= p·2^32`, and kept elements are scaled by 1/(1−p) (PyTorch's `nn.Dropout`
//! in training mode). The mask is a pure function of (seed, index): it is reproducible, needs no
//! storage (backward recomputes it), and does not depend on the number of threads.
//!
//! Letters: N the number of elements of the tensor the mask covers.

use rayon::prelude::*;

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// One dropout site for one forward pass: a drop probability and the seed of its mask.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// Drop probability in [0, 1]; 0 disables dropout (a no-op: outputs equal inputs exactly).
    pub p: f32,
    /// Seed of the mask; different sites and steps must use different seeds.
    pub seed: u64,
}

/// splitmix64's finalizer: a bijective 64-bit mix with good avalanche.
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Dropout {
    /// No dropout (evaluation mode, or p = 0).
    pub const OFF: Dropout = Dropout { p: 0.0, seed: 0 };

    /// A site with probability `p` whose seed is derived from a base seed and a site number
    /// (distinct `site` values give independent masks).
    pub fn new(p: f32, base_seed: u64, site: u64) -> Dropout {
        Dropout {
            p,
            seed: mix64(base_seed ^ mix64(site.wrapping_add(0x632B_E59B_D9B4_E019))),
        }
    }

    /// Whether this site changes anything.
    pub fn is_active(&self) -> bool {
        self.p > 0.0
    }

    /// Keep iff the top 32 bits of the hash are ≥ this (p·2^32, rounded; 2^32 drops everything).
    #[inline]
    fn threshold(&self) -> u64 {
        ((self.p.clamp(0.0, 1.0) as f64) * 4_294_967_296.0).round() as u64
    }

    /// The multiplier of kept elements: 1/(1−p), or 0 when p ≥ 1 (everything is dropped).
    #[inline]
    pub fn scale(&self) -> f32 {
        if self.p >= 1.0 {
            0.0
        } else {
            1.0 / (1.0 - self.p)
        }
    }

    /// The factor applied to element `index`: `scale()` if kept, 0 if dropped (1 when inactive).
    #[inline(always)]
    pub fn factor(&self, index: u64) -> f32 {
        self.factor_with(index, self.threshold(), self.scale())
    }

    #[inline(always)]
    fn factor_with(&self, index: u64, threshold: u64, scale: f32) -> f32 {
        if !self.is_active() {
            return 1.0;
        }
        let h = mix64(
            self.seed
                .wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        );
        if (h >> 32) >= threshold { scale } else { 0.0 }
    }

    /// Multiplies `x[i]` by the factor of element `first_index + i` (in place).
    #[inline]
    pub fn apply(&self, x: &mut [f32], first_index: u64) {
        if !self.is_active() {
            return;
        }
        let (th, sc) = (self.threshold(), self.scale());
        for (i, v) in x.iter_mut().enumerate() {
            *v *= self.factor_with(first_index + i as u64, th, sc);
        }
    }
}

/// x (N) ← x ⊙ mask / (1−p), in place. A no-op when `d` is inactive.
pub fn forward(x: &mut [f32], d: Dropout) {
    if !d.is_active() {
        return;
    }
    x.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(ci, xs)| d.apply(xs, (ci * CHUNK) as u64));
}

/// dx (N) ← dy ⊙ mask / (1−p), in place on the gradient (overwrites it).
pub fn backward(dx: &mut [f32], d: Dropout) {
    // forward: x[i] *= factor(i)  ⇒  dx[i] = dy[i] * factor(i); the same mask is recomputed.
    forward(dx, d)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::layers::check::{Rng, assert_close, f32s, fd_grad_at, weighted_sum};

    /// Tolerances of the finite-difference check.
    const GRAD_ATOL: f64 = 1e-6;
    const GRAD_RTOL: f64 = 1e-5;

    /// Float64 reference: the mask is taken from `factor` (the definition), the arithmetic in f64.
    pub(crate) fn reference_forward(x: &[f64], d: Dropout) -> Vec<f64> {
        x.iter()
            .enumerate()
            .map(|(i, &v)| v * d.factor(i as u64) as f64)
            .collect()
    }

    #[test]
    fn p_zero_is_identity() {
        let mut rng = Rng(1);
        let x = f32s(&rng.vec(1000, 3.0));
        let mut y = x.clone();
        forward(&mut y, Dropout::new(0.0, 5, 1));
        assert_eq!(x, y);
    }

    #[test]
    fn drop_rate_and_scale_are_right() {
        let n = 200_000;
        let mut y = vec![1.0f32; n];
        let d = Dropout::new(0.1, 123, 0);
        forward(&mut y, d);
        let dropped = y.iter().filter(|&&v| v == 0.0).count();
        let frac = dropped as f64 / n as f64;
        // Binomial std is sqrt(0.09/200000) ~ 6.7e-4; 5 sigma.
        assert!((frac - 0.1).abs() < 3.5e-3, "dropped fraction {frac}");
        assert!(y.iter().all(|&v| v == 0.0 || v == 1.0 / 0.9));
        let mut all = vec![1.0f32; 100];
        forward(&mut all, Dropout::new(1.0, 1, 1));
        assert!(all.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn masks_are_reproducible_and_seed_dependent() {
        let run = |seed: u64, site: u64| {
            let mut y = vec![1.0f32; 50_000];
            forward(&mut y, Dropout::new(0.5, seed, site));
            y
        };
        assert_eq!(run(9, 1), run(9, 1));
        assert_ne!(run(9, 1), run(9, 2));
        assert_ne!(run(9, 1), run(10, 1));
        // Same mask with one thread and two.
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let two = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        assert_eq!(one.install(|| run(3, 3)), two.install(|| run(3, 3)));
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = Rng(2);
        let n = 3 * CHUNK / 2 + 7; // crosses a chunk boundary
        let x = rng.vec(n, 1.0);
        let w = rng.vec(n, 1.0);
        let d = Dropout::new(0.3, 77, 4);
        let mut dx = f32s(&w);
        backward(&mut dx, d);
        // The loss is linear in x: a sample of coordinates (plus the chunk seams) suffices.
        let idx: Vec<usize> = (0..n)
            .step_by(997)
            .chain([CHUNK - 1, CHUNK, n - 1])
            .collect();
        let want = fd_grad_at(&x, &idx, |xx| weighted_sum(&reference_forward(xx, d), &w));
        let got: Vec<f32> = idx.iter().map(|&i| dx[i]).collect();
        assert_close("dropout dx", &got, &want, GRAD_ATOL, GRAD_RTOL);
        let mut y = f32s(&x);
        forward(&mut y, d);
        assert_close(
            "dropout y",
            &y,
            &reference_forward(&x, d),
            GRAD_ATOL,
            GRAD_RTOL,
        );
    }
}
