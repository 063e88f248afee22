//! Classification fine-tuning (the book's chapter 6): balancing, the seeded 70/10/20 split,
//! padded batches whose targets are ignored except at the readout position, and accuracy.
//!
//! The classifier's loss is the language model's cross-entropy machinery reused: the head emits K
//! logits at every position, and every target is −100 except one per row, the class id at the
//! readout position (the last position, as in the book, or the last real token). The mean over
//! rows is then exactly the book's `cross_entropy(model(x)[:, -1, :], y)`.
//!
//! Letters: B batch, T padded length, K classes.

use crate::family::FamilyModel;
use crate::finetune::data::IGNORE;
use crate::layers::dropout::mix64;
use crate::model::{Gpt, Mode};
use emberlm_formats::meta::Readout;

/// A classifier whose logits at every position can be read in evaluation mode: GPT-2 or a
/// modern family with a (K, C) head.
pub trait ClassifierLogits {
    /// K, the number of classes.
    fn outputs(&self) -> usize;
    /// The logits (B·T, K) of a (B, T) batch, dropout off, nothing trained.
    fn eval_logits(&mut self, inputs: &[u32], b: usize, t: usize) -> Result<Vec<f32>, String>;
}

impl ClassifierLogits for Gpt {
    fn outputs(&self) -> usize {
        Gpt::outputs(self)
    }
    fn eval_logits(&mut self, inputs: &[u32], b: usize, t: usize) -> Result<Vec<f32>, String> {
        self.forward(inputs, None, b, t, Mode::Eval)
            .map_err(|e| e.to_string())?;
        Ok(self.logits().unwrap_or(&[]).to_vec())
    }
}

impl ClassifierLogits for FamilyModel {
    fn outputs(&self) -> usize {
        self.classes().unwrap_or(self.config().vocab_size)
    }
    fn eval_logits(&mut self, inputs: &[u32], b: usize, t: usize) -> Result<Vec<f32>, String> {
        if b == 0 || inputs.len() != b * t {
            return Err(format!(
                "{} tokens are not a ({b}, {t}) batch",
                inputs.len()
            ));
        }
        let ignore = vec![IGNORE; inputs.len()];
        Ok(self.forward(inputs, &ignore, b).logits)
    }
}

/// One tokenized, truncated example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// Token ids (1..=length).
    pub tokens: Vec<u32>,
    /// Class id.
    pub label: usize,
}

/// Shuffles `v` in place, deterministically in `seed` (Fisher–Yates with a splitmix stream).
pub fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut state = seed;
    for i in (1..v.len()).rev() {
        state = mix64(state.wrapping_add(0x9E37_79B9_7F4A_7C15));
        let j = (state % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// The book's balancing (`create_balanced_dataset`, generalised to K classes): every class is
/// undersampled to the size of the smallest, choosing rows by a seeded shuffle; the result keeps
/// file order. Returns the number of rows kept per class.
pub fn balance<T>(rows: &mut Vec<(usize, T)>, classes: usize, seed: u64) -> usize {
    let mut counts = vec![0usize; classes];
    for (c, _) in rows.iter() {
        if let Some(n) = counts.get_mut(*c) {
            *n += 1;
        }
    }
    let keep = counts.iter().copied().filter(|&n| n > 0).min().unwrap_or(0);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    shuffle(&mut order, seed);
    let mut taken = vec![0usize; classes];
    let mut keep_row = vec![false; rows.len()];
    for i in order {
        let c = rows[i].0;
        if c < classes && taken[c] < keep {
            taken[c] += 1;
            keep_row[i] = true;
        }
    }
    let mut i = 0;
    rows.retain(|_| {
        let k = keep_row[i];
        i += 1;
        k
    });
    keep
}

/// The book's `random_split(df, 0.7, 0.1)` after a seeded shuffle: train = ⌊0.7·n⌋, validation =
/// ⌊0.1·n⌋, test = the rest.
pub fn split<T>(mut items: Vec<T>, seed: u64) -> (Vec<T>, Vec<T>, Vec<T>) {
    shuffle(&mut items, seed);
    let n = items.len();
    let train_end = n * 7 / 10;
    let val_end = train_end + n / 10;
    let test = items.split_off(val_end);
    let val = items.split_off(train_end);
    (items, val, test)
}

/// A padded classification batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassifyBatch {
    /// B.
    pub batch: usize,
    /// T.
    pub len: usize,
    /// Inputs (B, T), right-padded.
    pub inputs: Vec<u32>,
    /// Targets (B, T): [`IGNORE`] except the class id at each row's readout position.
    pub targets: Vec<i32>,
    /// Readout position of each row (B).
    pub readout: Vec<usize>,
    /// Class id of each row (B).
    pub labels: Vec<usize>,
}

/// Pads `examples` into one batch. With [`Readout::Last`] every row has length `length` (the
/// book pads the whole dataset to the longest training example) and is read at `length − 1`; with
/// [`Readout::LastReal`] the batch is padded to its own longest row and each row is read at its
/// last real token. Tokens beyond `length` are dropped (the book truncates).
pub fn make_batch(
    examples: &[&Example],
    readout: Readout,
    length: usize,
    pad: u32,
) -> ClassifyBatch {
    let b = examples.len();
    let real = |e: &Example| e.tokens.len().min(length).max(1);
    let t = match readout {
        Readout::Last => length,
        Readout::LastReal => examples.iter().map(|e| real(e)).max().unwrap_or(1),
    };
    let mut inputs = Vec::with_capacity(b * t);
    let mut targets = vec![IGNORE; b * t];
    let mut pos = Vec::with_capacity(b);
    for (row, e) in examples.iter().enumerate() {
        let n = real(e).min(e.tokens.len());
        inputs.extend_from_slice(&e.tokens[..n]);
        inputs.resize((row + 1) * t, pad);
        let p = match readout {
            Readout::Last => t - 1,
            Readout::LastReal => n.max(1) - 1,
        };
        targets[row * t + p] = e.label as i32;
        pos.push(p);
    }
    ClassifyBatch {
        batch: b,
        len: t,
        inputs,
        targets,
        readout: pos,
        labels: examples.iter().map(|e| e.label).collect(),
    }
}

/// Loss and accuracy over a set of examples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Metrics {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Fraction classified correctly.
    pub accuracy: f64,
    /// Examples counted.
    pub count: usize,
}

/// Loss and accuracy of `model` (a classifier) on `examples`, in evaluation mode, `batch` rows at
/// a time. The predicted class is the argmax of the K logits at the readout position (ties: the
/// lowest id).
pub fn evaluate<M: ClassifierLogits + ?Sized>(
    model: &mut M,
    examples: &[Example],
    readout: Readout,
    length: usize,
    pad: u32,
    batch: usize,
) -> Result<Metrics, String> {
    let k = model.outputs();
    let (mut loss, mut correct) = (0f64, 0usize);
    for chunk in examples.chunks(batch.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let bt = make_batch(&refs, readout, length, pad);
        let logits = model.eval_logits(&bt.inputs, bt.batch, bt.len)?;
        if logits.len() != bt.batch * bt.len * k {
            return Err(format!(
                "the model gave {} logits for a ({}, {}) batch of {k} classes",
                logits.len(),
                bt.batch,
                bt.len
            ));
        }
        for row in 0..bt.batch {
            let at = (row * bt.len + bt.readout[row]) * k;
            let z = &logits[at..at + k];
            let (pred, max) = argmax(z);
            let lse = max as f64
                + z.iter()
                    .map(|&v| ((v - max) as f64).exp())
                    .sum::<f64>()
                    .ln();
            loss += lse - z[bt.labels[row]] as f64;
            correct += usize::from(pred == bt.labels[row]);
        }
    }
    let n = examples.len();
    Ok(Metrics {
        loss: if n == 0 { f64::NAN } else { loss / n as f64 },
        accuracy: if n == 0 {
            f64::NAN
        } else {
            correct as f64 / n as f64
        },
        count: n,
    })
}

/// (index, value) of the largest element; the first one on ties.
fn argmax(z: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &v) in z.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Init;
    use emberlm_formats::config::GptConfig;

    const P: u32 = 50256;

    fn ex(tokens: &[u32], label: usize) -> Example {
        Example {
            tokens: tokens.to_vec(),
            label,
        }
    }

    #[test]
    fn last_readout_pads_to_the_length_and_reads_the_end() {
        let (a, b) = (ex(&[5, 6, 7], 1), ex(&[8], 0));
        let bt = make_batch(&[&a, &b], Readout::Last, 4, P);
        assert_eq!(bt.inputs, vec![5, 6, 7, P, 8, P, P, P]);
        assert_eq!(bt.targets, vec![-100, -100, -100, 1, -100, -100, -100, 0]);
        assert_eq!(bt.readout, vec![3, 3]);
        // Truncation keeps the first tokens.
        let long = ex(&[1, 2, 3, 4, 5, 6], 1);
        let bt = make_batch(&[&long], Readout::Last, 4, P);
        assert_eq!(bt.inputs, vec![1, 2, 3, 4]);
        assert_eq!(bt.targets, vec![-100, -100, -100, 1]);
    }

    #[test]
    fn last_real_readout_reads_the_last_token_of_each_row() {
        let (a, b) = (ex(&[5, 6, 7], 1), ex(&[8], 0));
        let bt = make_batch(&[&a, &b], Readout::LastReal, 10, P);
        assert_eq!(bt.len, 3);
        assert_eq!(bt.inputs, vec![5, 6, 7, 8, P, P]);
        assert_eq!(bt.targets, vec![-100, -100, 1, 0, -100, -100]);
        assert_eq!(bt.readout, vec![2, 0]);
    }

    #[test]
    fn the_books_balance_and_split_sizes() {
        // The SMS collection: 4,825 ham and 747 spam → 747 + 747 → 1,045 / 149 / 300.
        let mut rows: Vec<(usize, u32)> = (0..5572).map(|i| ((i % 7 == 0) as usize, i)).collect();
        let spam = rows.iter().filter(|r| r.0 == 1).count();
        let kept = balance(&mut rows, 2, 123);
        assert_eq!(kept, spam);
        assert_eq!(rows.len(), 2 * spam);
        assert_eq!(rows.iter().filter(|r| r.0 == 1).count(), spam);
        // File order is kept.
        assert!(rows.windows(2).all(|w| w[0].1 < w[1].1));
        let items: Vec<u32> = (0..1494).collect();
        let (tr, va, te) = split(items.clone(), 123);
        assert_eq!((tr.len(), va.len(), te.len()), (1045, 149, 300));
        let mut all: Vec<u32> = tr.iter().chain(&va).chain(&te).copied().collect();
        all.sort();
        assert_eq!(all, items);
        assert_eq!(split(items.clone(), 123), (tr, va, te));
        assert_ne!(
            split(items, 124).0[..10],
            split((0..1494).collect(), 123).0[..10]
        );
    }

    #[test]
    fn evaluation_matches_a_hand_computed_softmax() {
        let cfg = GptConfig {
            vocab_size: 20,
            context_length: 8,
            dim: 8,
            n_layers: 1,
            n_heads: 2,
            qkv_bias: false,
            tied_head: true,
        };
        let mut m = Gpt::new(cfg, Init::TorchDefault, 3)
            .unwrap()
            .into_classifier(3, 5)
            .unwrap();
        let data = vec![ex(&[1, 2, 3], 2), ex(&[4, 5], 0), ex(&[6], 1)];
        let got = evaluate(&mut m, &data, Readout::LastReal, 8, 19, 2).unwrap();
        // One example at a time, unpadded: the last position's logits.
        let (mut loss, mut correct) = (0f64, 0);
        for e in &data {
            m.forward(&e.tokens, None, 1, e.tokens.len(), Mode::Eval)
                .unwrap();
            let l = m.logits().unwrap();
            let z: Vec<f64> = l[l.len() - 3..].iter().map(|&v| v as f64).collect();
            let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
            loss += lse - z[e.label];
            let pred = (0..3).fold(0, |b, i| if z[i] > z[b] { i } else { b });
            correct += usize::from(pred == e.label);
        }
        assert!((got.loss - loss / 3.0).abs() < 1e-5, "{got:?} vs {loss}");
        assert_eq!(got.accuracy, correct as f64 / 3.0);
        assert_eq!(got.count, 3);
    }
}
