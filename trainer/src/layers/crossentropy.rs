//! Softmax + cross-entropy over the vocabulary, fused: forward saves the log-sum-exp of each row,
//! backward turns the logits into their gradient in one pass without materialising the
//! probabilities separately. Targets equal to [`IGNORE_INDEX`] contribute nothing (PyTorch's
//! `cross_entropy(ignore_index=-100)`); the model takes the mean over the other targets.
//!
//! Letters: N rows (B·T), V vocabulary.

use super::simd;
use rayon::prelude::*;

/// A target that is skipped (PyTorch's default `ignore_index`).
pub const IGNORE_INDEX: i32 = -100;

/// Σ_v e^(x[v] − m) with independent accumulators (vectorizes).
#[inline]
fn sum_exp(x: &[f32], m: f32) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let cx = x.chunks_exact(L);
    let mut tail = 0.0f32;
    for v in cx.remainder() {
        tail += simd::exp(v - m);
    }
    for v in cx {
        for l in 0..L {
            acc[l] += simd::exp(v[l] - m);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// losses (N) and lse (N) from logits (N, V) and targets (N).
///
/// Per row: lse = log Σ_v e^logit[v], loss = lse − logit[target]; ignored rows get loss 0.
/// Returns (Σ loss over non-ignored rows in f64, number of non-ignored rows).
/// Contract: each target is in 0..V or equals [`IGNORE_INDEX`] (the model validates first).
pub fn forward(
    losses: &mut [f32],
    lse: &mut [f32],
    logits: &[f32],
    targets: &[i32],
) -> (f64, usize) {
    let n = targets.len();
    assert!(n > 0 && losses.len() == n && lse.len() == n && logits.len() % n == 0);
    let v = logits.len() / n;
    losses
        .par_iter_mut()
        .zip(lse.par_iter_mut())
        .zip(logits.par_chunks(v))
        .zip(targets.par_iter())
        .for_each(|(((loss, lse), row), &tgt)| {
            if tgt == IGNORE_INDEX {
                *loss = 0.0;
                *lse = 0.0;
                return;
            }
            let m = simd::max(row);
            let l = m + sum_exp(row, m).ln();
            *lse = l;
            *loss = l - row[tgt as usize];
        });
    // Fixed-order sum in f64: the mean does not depend on the thread count.
    let mut total = 0.0f64;
    let mut count = 0usize;
    for (&l, &t) in losses.iter().zip(targets) {
        if t != IGNORE_INDEX {
            total += l as f64;
            count += 1;
        }
    }
    (total, count)
}

/// In place: `logits` (N, V) becomes dlogits = (softmax(logits) − onehot(target))·dloss, and 0 on
/// ignored rows. `lse` is the forward's output; `dloss` is ∂L/∂loss_row (1/count for the mean).
pub fn backward(logits: &mut [f32], lse: &[f32], targets: &[i32], dloss: f32) {
    let n = targets.len();
    assert!(lse.len() == n && logits.len() % n == 0);
    let v = logits.len() / n;
    logits
        .par_chunks_mut(v)
        .zip(lse.par_iter())
        .zip(targets.par_iter())
        .for_each(|((row, &l), &tgt)| {
            if tgt == IGNORE_INDEX {
                row.fill(0.0);
                return;
            }
            // forward: loss = lse − x[tgt], lse = log Σ e^x
            // ⇒ dx[v] = (e^(x[v] − lse) − [v = tgt])·dloss
            for x in row.iter_mut() {
                *x = simd::exp(*x - l) * dloss;
            }
            row[tgt as usize] -= dloss;
        });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::layers::check::{Rng, assert_close, f32s, fd_grad};

    const FWD_ATOL: f64 = 1e-5;
    const GRAD_ATOL: f64 = 1e-7;
    /// The book prints 4 decimals.
    const BOOK_TOL: f64 = 1e-4;
    const GRAD_RTOL: f64 = 1e-4;

    /// Float64 reference: mean cross-entropy over non-ignored rows.
    pub(crate) fn reference_forward(logits: &[f64], targets: &[i32]) -> f64 {
        let v = logits.len() / targets.len();
        let (mut total, mut count) = (0.0, 0);
        for (row, &t) in logits.chunks(v).zip(targets) {
            if t == IGNORE_INDEX {
                continue;
            }
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            total += lse - row[t as usize];
            count += 1;
        }
        total / count as f64
    }

    /// The book's test vector (BOOK.md ch07): logits [[−1,1],[−0.5,1.5]], targets [0,1] → 1.1269;
    /// a third row [−0.5,1.5] with target 1 → 0.7936; with target −100 → 1.1269.
    #[test]
    fn book_test_vector() {
        let run = |logits: &[f32], targets: &[i32]| {
            let n = targets.len();
            let (mut l, mut s) = (vec![0.0; n], vec![0.0; n]);
            let (total, count) = forward(&mut l, &mut s, logits, targets);
            total / count as f64
        };
        let two = [-1.0, 1.0, -0.5, 1.5];
        let three = [-1.0, 1.0, -0.5, 1.5, -0.5, 1.5];
        assert!((run(&two, &[0, 1]) - 1.1269).abs() < BOOK_TOL);
        assert!((run(&three, &[0, 1, 1]) - 0.7936).abs() < BOOK_TOL);
        assert!((run(&three, &[0, 1, IGNORE_INDEX]) - 1.1269).abs() < BOOK_TOL);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (n, v) = (6, 37);
        let mut rng = Rng(9);
        let logits = rng.vec(n * v, 4.0);
        let targets = [3, IGNORE_INDEX, 0, 36, 17, 3];
        let (mut losses, mut lse) = (vec![0.0f32; n], vec![0.0f32; n]);
        let (total, count) = forward(&mut losses, &mut lse, &f32s(&logits), &targets);
        assert_eq!(count, 5);
        let want = reference_forward(&logits, &targets);
        assert!(
            (total / count as f64 - want).abs() < FWD_ATOL,
            "{total} {want}"
        );
        let mut d = f32s(&logits);
        backward(&mut d, &lse, &targets, 1.0 / count as f32);
        let g = fd_grad(&logits, |x| reference_forward(x, &targets));
        assert_close("crossentropy dlogits", &d, &g, GRAD_ATOL, GRAD_RTOL);
        assert!(
            d[v..2 * v].iter().all(|&x| x == 0.0),
            "ignored row has zero gradient"
        );
    }

    #[test]
    fn large_logits_do_not_overflow() {
        let logits = [1000.0f32, 0.0, -1000.0];
        let (mut l, mut s) = ([0.0f32], [0.0f32]);
        let (total, _) = forward(&mut l, &mut s, &logits, &[0]);
        assert!(total.abs() < FWD_ATOL, "{total}");
    }
}
