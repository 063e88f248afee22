//! AdamW over the flat parameter buffer (`torch.optim.AdamW` semantics), global gradient-norm
//! clipping and the book's learning-rate schedule (appendix D: linear warmup, cosine decay).
//!
//! The update of element i at step t (t counts from 1), exactly as PyTorch orders it:
//! ```text
//! p ← p·(1 − lr·wd)                      (decoupled weight decay; skipped where the mask says so)
//! m ← m + (1 − β1)·(g − m)               (PyTorch's lerp)
//! v ← β2·v + (1 − β2)·g²
//! p ← p − (lr / (1 − β1^t)) · m / (sqrt(v) / sqrt(1 − β2^t) + ε)
//! ```
//! Gradient accumulation is the caller's job: `Gpt::backward` accumulates into the gradients,
//! so run several micro-batches, optionally scale, then call [`AdamW::step`] once.
//!
//! Letters: N the number of parameters.

use rayon::prelude::*;
use std::fmt;
use std::ops::Range;

/// Elements per rayon task (a multiple of the 16-lane inner loops).
const CHUNK: usize = 1 << 15;

/// Hyperparameters other than the learning rate (which is passed to every step). Kept in f64 like
/// PyTorch's Python floats: derived scalars such as 1 − β2 are formed in f64 and rounded to f32
/// once (1 − 0.999_f32 would be off by 1.3e-5 relative).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// β1 (0.9).
    pub beta1: f64,
    /// β2 (0.999).
    pub beta2: f64,
    /// ε (1e-8).
    pub eps: f64,
    /// Decoupled weight decay (PyTorch's default 0.01; the book uses 0.1).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults: β (0.9, 0.999), ε 1e-8, weight decay 0.01.
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Which parameters get weight decay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecayPolicy {
    /// Every parameter (the book: `AdamW(model.parameters(), weight_decay=0.1)`).
    All,
    /// Only tensors with two dimensions (Linear weights and embeddings, as GPT-2/nanoGPT);
    /// biases and LayerNorm scales/shifts are not decayed.
    MatricesOnly,
}

/// The set of parameter indices that receive weight decay, as sorted disjoint ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecayMask {
    n: usize,
    /// (end, decayed) segments covering 0..n in order: segment i spans [end(i−1), end(i)).
    segments: Vec<(usize, bool)>,
}

impl DecayMask {
    /// Decay on all `n` parameters.
    pub fn all(n: usize) -> DecayMask {
        DecayMask {
            n,
            segments: vec![(n, true)],
        }
    }

    /// Decay on none of the `n` parameters.
    pub fn none(n: usize) -> DecayMask {
        DecayMask {
            n,
            segments: vec![(n, false)],
        }
    }

    /// Decay exactly on `decayed` (ranges sorted, disjoint, inside 0..n).
    pub fn from_ranges(n: usize, decayed: &[Range<usize>]) -> Result<DecayMask, AdamWError> {
        let mut segments = Vec::with_capacity(2 * decayed.len() + 1);
        let mut at = 0;
        for r in decayed {
            if r.start < at || r.end < r.start || r.end > n {
                return Err(AdamWError::BadMask {
                    start: r.start,
                    end: r.end,
                    n,
                });
            }
            if r.start > at {
                segments.push((r.start, false));
            }
            if r.end > r.start {
                segments.push((r.end, true));
            }
            at = r.end;
        }
        if at < n || segments.is_empty() {
            segments.push((n, false));
        }
        Ok(DecayMask { n, segments })
    }

    /// Number of parameters covered.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether it covers no parameter.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Whether parameter `i` is decayed.
    pub fn is_decayed(&self, i: usize) -> bool {
        let s = self.segments.partition_point(|&(end, _)| end <= i);
        self.segments.get(s).is_some_and(|&(_, d)| d)
    }

    /// Calls `f(range, decayed)` for the pieces of `chunk` with a constant flag.
    fn for_each_piece(&self, chunk: Range<usize>, mut f: impl FnMut(Range<usize>, bool)) {
        let mut s = self
            .segments
            .partition_point(|&(end, _)| end <= chunk.start);
        let mut at = chunk.start;
        while at < chunk.end {
            let Some(&(end, decayed)) = self.segments.get(s) else {
                return;
            };
            let stop = end.min(chunk.end);
            f(at..stop, decayed);
            at = stop;
            s += 1;
        }
    }
}

/// Optimizer misuse (lengths that do not match, a malformed mask or state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdamWError {
    /// A buffer has the wrong length.
    BadLength {
        /// `params`, `grads`, `mask`, `m` or `v`.
        field: &'static str,
        /// Expected length (the optimizer's N).
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// A decay range is unsorted, overlapping or out of bounds.
    BadMask {
        /// Range start.
        start: usize,
        /// Range end.
        end: usize,
        /// N.
        n: usize,
    },
}

impl fmt::Display for AdamWError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdamWError::BadLength {
                field,
                expected,
                got,
            } => write!(f, "AdamW: {field} has {got} elements, expected {expected}"),
            AdamWError::BadMask { start, end, n } => write!(
                f,
                "AdamW: decay range {start}..{end} is unsorted, overlapping or outside 0..{n}"
            ),
        }
    }
}

impl std::error::Error for AdamWError {}

/// AdamW with its state: first and second moments (N each) and the step count.
#[derive(Clone, Debug)]
pub struct AdamW {
    /// Hyperparameters; may be changed between steps.
    pub config: AdamWConfig,
    mask: DecayMask,
    m: Vec<f32>,
    v: Vec<f32>,
    step: u64,
}

impl AdamW {
    /// Zero moments for `mask.len()` parameters.
    pub fn new(config: AdamWConfig, mask: DecayMask) -> AdamW {
        let n = mask.len();
        AdamW {
            config,
            mask,
            m: vec![0.0; n],
            v: vec![0.0; n],
            step: 0,
        }
    }

    /// Steps taken so far (the t of the bias correction of the next step is this + 1).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// First moments (N).
    pub fn m(&self) -> &[f32] {
        &self.m
    }

    /// Second moments (N).
    pub fn v(&self) -> &[f32] {
        &self.v
    }

    /// The decay mask.
    pub fn mask(&self) -> &DecayMask {
        &self.mask
    }

    /// Restores a saved state exactly (after this, steps continue bit-for-bit as if never stopped).
    pub fn restore(&mut self, step: u64, m: &[f32], v: &[f32]) -> Result<(), AdamWError> {
        let n = self.mask.len();
        for (field, got) in [("m", m.len()), ("v", v.len())] {
            if got != n {
                return Err(AdamWError::BadLength {
                    field,
                    expected: n,
                    got,
                });
            }
        }
        self.m.copy_from_slice(m);
        self.v.copy_from_slice(v);
        self.step = step;
        Ok(())
    }

    /// One AdamW update of `params` (N) with `grads` (N) at learning rate `lr`, in one fused
    /// parallel pass over the four buffers.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f32) -> Result<(), AdamWError> {
        let n = self.mask.len();
        for (field, got) in [("params", params.len()), ("grads", grads.len())] {
            if got != n {
                return Err(AdamWError::BadLength {
                    field,
                    expected: n,
                    got,
                });
            }
        }
        self.step += 1;
        let c = self.config;
        // Scalars in f64 as PyTorch computes them in Python, then rounded to f32 once.
        let t = self.step as f64;
        let lr = lr as f64;
        let bc1 = 1.0 - c.beta1.powf(t);
        let bc2_sqrt = (1.0 - c.beta2.powf(t)).sqrt();
        let k = Coefs {
            decay: (1.0 - lr * c.weight_decay) as f32,
            one_minus_b1: (1.0 - c.beta1) as f32,
            b2: c.beta2 as f32,
            one_minus_b2: (1.0 - c.beta2) as f32,
            step_size: (lr / bc1) as f32,
            bc2_sqrt: bc2_sqrt as f32,
            eps: c.eps as f32,
        };
        let mask = &self.mask;
        params
            .par_chunks_mut(CHUNK)
            .zip(self.m.par_chunks_mut(CHUNK))
            .zip(self.v.par_chunks_mut(CHUNK))
            .zip(grads.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(ci, (((p, m), v), g))| {
                let base = ci * CHUNK;
                mask.for_each_piece(base..base + p.len(), |r, decayed| {
                    let r = r.start - base..r.end - base;
                    update(
                        &mut p[r.clone()],
                        &mut m[r.clone()],
                        &mut v[r.clone()],
                        &g[r],
                        &k,
                        decayed,
                    );
                });
            });
        Ok(())
    }
}

/// Per-step constants of the update, rounded to f32.
struct Coefs {
    decay: f32,
    one_minus_b1: f32,
    b2: f32,
    one_minus_b2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
}

#[inline]
fn update(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], k: &Coefs, decayed: bool) {
    let decay = if decayed { k.decay } else { 1.0 };
    for i in 0..p.len() {
        let gi = g[i];
        let pi = p[i] * decay;
        let mi = m[i] + k.one_minus_b1 * (gi - m[i]);
        let vi = v[i] * k.b2 + k.one_minus_b2 * gi * gi;
        let denom = vi.sqrt() / k.bc2_sqrt + k.eps;
        p[i] = pi - k.step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
    }
}

/// The global L2 norm of `grads` (N), accumulated in f64 in a fixed order (independent of the
/// number of threads).
pub fn grad_norm(grads: &[f32]) -> f32 {
    let partial: Vec<f64> = grads
        .par_chunks(CHUNK)
        .map(|c| {
            let mut acc = [0.0f32; 16];
            let it = c.chunks_exact(16);
            let mut tail = 0.0f64;
            for x in it.remainder() {
                tail += (*x as f64) * (*x as f64);
            }
            // f32 lanes over short runs, flushed to f64 every 1024 elements, keep the sum exact
            // enough (relative error ~1e-7) while vectorizing.
            let mut total = 0.0f64;
            for (j, x) in it.enumerate() {
                for l in 0..16 {
                    acc[l] += x[l] * x[l];
                }
                if j % 64 == 63 {
                    total += acc.iter().map(|&a| a as f64).sum::<f64>();
                    acc = [0.0; 16];
                }
            }
            total + acc.iter().map(|&a| a as f64).sum::<f64>() + tail
        })
        .collect();
    partial.iter().sum::<f64>().sqrt() as f32
}

/// Scales `grads` so their global L2 norm is at most `max_norm` (PyTorch's `clip_grad_norm_`:
/// factor max_norm / (norm + 1e-6) when below 1). Returns the norm *before* clipping. A
/// non-finite norm leaves the gradients unchanged (the caller should skip that step).
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f32) -> f32 {
    let norm = grad_norm(grads);
    let coef = max_norm as f64 / (norm as f64 + 1e-6);
    if norm.is_finite() && coef < 1.0 {
        let coef = coef as f32;
        grads
            .par_chunks_mut(CHUNK)
            .for_each(|c| c.iter_mut().for_each(|g| *g *= coef));
    }
    norm
}

/// The book's schedule (appendix D): linear warmup from `initial_lr` to `peak_lr` over
/// `warmup_steps`, then cosine decay to `min_lr` at `total_steps`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    /// Learning rate at step 0.
    pub initial_lr: f32,
    /// Learning rate at the end of warmup.
    pub peak_lr: f32,
    /// Learning rate at `total_steps` (and after).
    pub min_lr: f32,
    /// Steps of linear warmup (0 starts at the peak).
    pub warmup_steps: u64,
    /// Total number of steps.
    pub total_steps: u64,
}

impl LrSchedule {
    /// The learning rate of global step `step` (counting from 0):
    /// step < warmup: initial + step·(peak − initial)/warmup;
    /// otherwise min + (peak − min)·½·(1 + cos(π·progress)),
    /// progress = (step − warmup)/(total − warmup), clamped to [0, 1].
    pub fn lr(&self, step: u64) -> f32 {
        let (init, peak, min) = (
            self.initial_lr as f64,
            self.peak_lr as f64,
            self.min_lr as f64,
        );
        if step < self.warmup_steps {
            return (init + step as f64 * (peak - init) / self.warmup_steps as f64) as f32;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps);
        let progress = if span == 0 {
            1.0
        } else {
            ((step - self.warmup_steps) as f64 / span as f64).min(1.0)
        };
        (min + (peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f32 rounding of the update against values computed by hand in f64.
    const ADAM_TOL: f64 = 2e-7;
    /// Clipping: f32 rounding of the norm and of the 1/(norm + 1e-6) factor.
    const CLIP_TOL: f32 = 1e-6;

    #[test]
    fn hand_computed_steps() {
        // p = 1, lr 0.1, wd 0.1, gradients 0.5, −0.25, 0.125 (values from the formulas in f64,
        // PyTorch's order of operations; see the module doc).
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(cfg, DecayMask::all(1));
        let mut p = [1.0f32];
        let want = [
            0.890_000_002f64,
            0.854_466_298_687_846_3,
            0.811_878_721_909_775_6,
        ];
        for (g, w) in [0.5f32, -0.25, 0.125].iter().zip(want) {
            opt.step(&mut p, &[*g], 0.1).unwrap();
            assert!((p[0] as f64 - w).abs() < ADAM_TOL, "{} vs {w}", p[0]);
        }
        assert_eq!(opt.step_count(), 3);
        assert!((opt.m()[0] - 0.0305).abs() < 1e-8);
        assert!((opt.v()[0] as f64 / 3.275_627_5e-4 - 1.0).abs() < 1e-5);
    }

    #[test]
    fn zero_gradient_only_decays() {
        // With g = 0 the Adam term is 0/(0 + eps) = 0: only p·(1 − lr·wd) remains, and only
        // where the mask says so.
        let cfg = AdamWConfig {
            weight_decay: 0.5,
            ..AdamWConfig::default()
        };
        let n = 3 * CHUNK + 5;
        let mask = DecayMask::from_ranges(n, &[10..20, CHUNK - 3..CHUNK + 4, n - 1..n]).unwrap();
        let mut opt = AdamW::new(cfg, mask.clone());
        let mut p = vec![2.0f32; n];
        opt.step(&mut p, &vec![0.0; n], 0.1).unwrap();
        for (i, &x) in p.iter().enumerate() {
            let want = if mask.is_decayed(i) { 2.0 * 0.95 } else { 2.0 };
            assert_eq!(x, want, "element {i}");
        }
        assert!(mask.is_decayed(15) && !mask.is_decayed(20) && mask.is_decayed(CHUNK));
        assert!(!mask.is_decayed(9) && mask.is_decayed(n - 1) && !mask.is_decayed(n - 2));
    }

    #[test]
    fn restore_continues_bit_for_bit() {
        let n = 1000;
        let grads_at = |s: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 31 + s * 17) % 97) as f32 - 48.0) / 50.0)
                .collect()
        };
        let cfg = AdamWConfig::default();
        let mut a = AdamW::new(cfg, DecayMask::all(n));
        let mut pa: Vec<f32> = (0..n).map(|i| i as f32 / n as f32).collect();
        for s in 0..3 {
            a.step(&mut pa, &grads_at(s), 1e-3).unwrap();
        }
        let (saved_p, saved_m, saved_v, saved_step) =
            (pa.clone(), a.m().to_vec(), a.v().to_vec(), a.step_count());
        for s in 3..5 {
            a.step(&mut pa, &grads_at(s), 1e-3).unwrap();
        }
        let mut b = AdamW::new(cfg, DecayMask::all(n));
        b.restore(saved_step, &saved_m, &saved_v).unwrap();
        let mut pb = saved_p;
        for s in 3..5 {
            b.step(&mut pb, &grads_at(s), 1e-3).unwrap();
        }
        assert_eq!(pa, pb);
        assert_eq!(a.m(), b.m());
        assert_eq!(
            b.restore(0, &saved_m[..5], &saved_v),
            Err(AdamWError::BadLength {
                field: "m",
                expected: n,
                got: 5
            })
        );
        assert_eq!(
            b.step(&mut pb[..3], &grads_at(0), 1e-3),
            Err(AdamWError::BadLength {
                field: "params",
                expected: n,
                got: 3
            })
        );
    }

    #[test]
    fn bad_masks_are_rejected() {
        assert_eq!(
            DecayMask::from_ranges(10, &[5..8, 6..9]),
            Err(AdamWError::BadMask {
                start: 6,
                end: 9,
                n: 10
            })
        );
        assert!(DecayMask::from_ranges(10, std::slice::from_ref(&(5..11))).is_err());
        assert!(DecayMask::from_ranges(10, &[]).is_ok_and(|m| !m.is_decayed(0)));
    }

    /// BOOK.md appendix D [TV]: G = [[1, 2], [2, 4]] has norm 5 and is scaled by 1/5.
    #[test]
    fn clipping_book_test_vector() {
        let mut g = [1.0f32, 2.0, 2.0, 4.0];
        let norm = clip_grad_norm(&mut g, 1.0);
        assert_eq!(norm, 5.0);
        for (x, want) in g.iter().zip([0.2f32, 0.4, 0.4, 0.8]) {
            assert!((x - want).abs() < CLIP_TOL, "{x} vs {want}");
        }
        // Below the threshold nothing changes.
        let mut h = [0.3f32, 0.4];
        assert!((clip_grad_norm(&mut h, 1.0) - 0.5).abs() < CLIP_TOL);
        assert_eq!(h, [0.3, 0.4]);
        // Large buffers: the norm of n ones is sqrt(n).
        let big = vec![1.0f32; 5 * CHUNK + 3];
        assert!((grad_norm(&big) as f64 - (big.len() as f64).sqrt()).abs() < 1e-3);
        let mut nan = [f32::NAN, 1.0];
        assert!(clip_grad_norm(&mut nan, 1.0).is_nan());
        assert_eq!(nan[1], 1.0);
    }

    /// BOOK.md appendix D's demo: initial 1e-4, peak 0.01, min 0.1·initial, warmup 27 of 135.
    #[test]
    fn schedule_matches_the_book_formulas() {
        let s = LrSchedule {
            initial_lr: 1e-4,
            peak_lr: 0.01,
            min_lr: 1e-5,
            warmup_steps: 27,
            total_steps: 135,
        };
        let close = |a: f32, b: f64| (a as f64 - b).abs() < 1e-9 + 1e-6 * b;
        assert!(close(s.lr(0), 1e-4));
        assert!(close(s.lr(13), 1e-4 + 13.0 * 0.0099 / 27.0)); // 0.0048667
        assert!(close(s.lr(27), 0.01)); // peak, progress 0
        assert!(close(s.lr(81), 1e-5 + 0.00999 * 0.5)); // progress ½: halfway
        assert!(close(s.lr(135), 1e-5)); // end: min
        assert!(close(s.lr(1000), 1e-5)); // clamped after the end
        let flat = LrSchedule {
            warmup_steps: 0,
            total_steps: 0,
            ..s
        };
        assert!(close(flat.lr(0), 1e-5));
    }
}
