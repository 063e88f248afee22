//! Classification with a classifier model (`task.kind = "classifier"`): the input is prepared
//! exactly as the book's `classify_review` prepares it, one prefill runs, and the head's logits
//! become probabilities and a label.
//!
//! Letters: K classes, T the session's context, N the prepared sequence length (≤ T).
//!
//! Preparation of a token sequence (the text's tokens):
//! 1. keep the first `min(task.length, T)` tokens (`T` alone when the model has no length);
//! 2. with [`Readout::Last`] and a length, right-pad with `task.pad_id` to `min(length, T)`
//!    positions, then read the logits at the last position (the book);
//! 3. with [`Readout::LastReal`], no padding: the logits of the last real token. A causal model
//!    gives that position the same logits whether or not pads follow it, so this equals reading
//!    the last real position of a padded batch.

use crate::error::RuntimeError;
use crate::model::Model;
use crate::sampler::argmax;
use crate::session::{Session, SessionOptions};
use emberlm_formats::meta::{Readout, Task};
use emberlm_formats::tokenizer::{EncodeScratch, SpecialTokens};

/// How a classified text is encoded: special-token names such as `<|endoftext|>` are ordinary
/// text (a classified text is data, never control). Fine-tuning should encode its texts the same
/// way so that training and inference see the same ids.
pub const TEXT_SPECIAL_TOKENS: SpecialTokens = SpecialTokens::AsText;

/// A model's classification settings, read from its task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassifierSpec {
    /// Where the logits are read.
    pub readout: Readout,
    /// The padding token id.
    pub pad_id: u32,
    /// The training sequence length, if the model records one.
    pub length: Option<usize>,
}

impl ClassifierSpec {
    /// The settings of `task`, or [`RuntimeError::WrongTask`] for a language model.
    pub fn of(task: &Task) -> Result<ClassifierSpec, RuntimeError> {
        match task {
            Task::Classifier {
                readout,
                pad_id,
                length,
                ..
            } => Ok(ClassifierSpec {
                readout: *readout,
                pad_id: *pad_id,
                length: length.map(|n| n as usize),
            }),
            Task::LanguageModel => Err(RuntimeError::WrongTask {
                expected: "a classifier (use `ember generate` or `ember score` for a language model)",
            }),
        }
    }

    /// Writes the sequence the model reads for `tokens` into `out` (cleared first), for a session
    /// of context `context`: truncation to the first `min(length, context)` tokens, then, with
    /// [`Readout::Last`] and a length, right-padding with `pad_id` to that many positions.
    /// Returns how many of `out`'s tokens are the input's (the rest are pads).
    pub fn prepare(&self, tokens: &[u32], context: usize, out: &mut Vec<u32>) -> usize {
        let limit = self.length.map_or(context, |n| n.min(context));
        let real = tokens.len().min(limit);
        out.clear();
        out.extend_from_slice(&tokens[..real]);
        if self.readout == Readout::Last && self.length.is_some() {
            out.resize(limit, self.pad_id);
        }
        real
    }
}

/// The result of one classification, borrowed from the [`Classifier`] until its next call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Classification<'c> {
    /// The most probable class (the first one on ties).
    pub label_id: usize,
    /// Its name.
    pub label: &'c str,
    /// Every label name, index = class id (K).
    pub labels: &'c [String],
    /// The head's logits (K).
    pub logits: &'c [f32],
    /// softmax(logits) (K); sums to 1.
    pub probabilities: &'c [f32],
    /// The input's tokens that the model read (after truncation, without padding).
    pub tokens: usize,
    /// Whether the input was cut to fit the model's length or context.
    pub truncated: bool,
    /// The sequence the model read: the kept tokens, then any padding (N).
    pub sequence: &'c [u32],
}

/// Classifies texts or token sequences with a classifier model. Owns one [`Session`]; every
/// buffer (the prepared sequence, the tokenizer's scratch, the probabilities) is allocated once
/// and reused, so repeated calls allocate nothing of their own once the buffers have grown.
pub struct Classifier<'m, 'a> {
    model: &'m Model<'a>,
    session: Session<'m, 'a>,
    labels: &'m [String],
    spec: ClassifierSpec,
    encoded: Vec<u32>,
    sequence: Vec<u32>,
    scratch: EncodeScratch,
    logits: Vec<f32>,        // (K)
    probabilities: Vec<f32>, // (K)
    real: usize,
    truncated: bool,
}

impl std::fmt::Debug for Classifier<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("labels", &self.labels)
            .field("spec", &self.spec)
            .field("session", &self.session)
            .finish()
    }
}

impl<'m, 'a> Classifier<'m, 'a> {
    /// A classifier over `model` with a session made from `options`.
    ///
    /// Errors: [`RuntimeError::WrongTask`] when the model is a language model,
    /// [`RuntimeError::BadToken`] when the model pads with a `pad_id` outside its vocabulary,
    /// and the errors of [`Session::new`].
    pub fn new(
        model: &'m Model<'a>,
        options: &SessionOptions,
    ) -> Result<Classifier<'m, 'a>, RuntimeError> {
        let spec = ClassifierSpec::of(model.task())?;
        let labels: &'m [String] = match model.task() {
            Task::Classifier { labels, .. } => labels,
            Task::LanguageModel => &[],
        };
        let vocab_size = model.config().vocab_size;
        if spec.readout == Readout::Last
            && spec.length.is_some()
            && spec.pad_id as usize >= vocab_size
        {
            return Err(RuntimeError::BadToken {
                id: spec.pad_id,
                vocab_size,
            });
        }
        let session = Session::new(model, options)?;
        let k = labels.len();
        Ok(Classifier {
            model,
            sequence: Vec::with_capacity(session.context()),
            session,
            labels,
            spec,
            encoded: Vec::new(),
            scratch: EncodeScratch::new(),
            logits: vec![0.0; k],
            probabilities: vec![0.0; k],
            real: 0,
            truncated: false,
        })
    }

    /// The label names, index = class id (K).
    pub fn labels(&self) -> &'m [String] {
        self.labels
    }

    /// The model's classification settings.
    pub fn spec(&self) -> ClassifierSpec {
        self.spec
    }

    /// The session (its context, kernels, threads).
    pub fn session(&self) -> &Session<'m, 'a> {
        &self.session
    }

    /// Classifies a text, encoded with the model's tokenizer as [`TEXT_SPECIAL_TOKENS`] says.
    ///
    /// Errors: [`RuntimeError::NoTokenizer`] when the file has none, [`RuntimeError::EmptyPrompt`]
    /// for an empty text, and those of [`Classifier::classify_tokens`].
    pub fn classify_text(&mut self, text: &str) -> Result<Classification<'_>, RuntimeError> {
        let tok = self.model.tokenizer()?.ok_or(RuntimeError::NoTokenizer)?;
        self.encoded.clear();
        tok.encode(
            text,
            TEXT_SPECIAL_TOKENS,
            &mut self.scratch,
            &mut self.encoded,
        );
        let tokens = std::mem::take(&mut self.encoded);
        let result = self.run(&tokens);
        self.encoded = tokens;
        result?;
        Ok(self.result())
    }

    /// Classifies a token sequence (prepared as the module documents), resetting the session
    /// first.
    ///
    /// Errors: [`RuntimeError::EmptyPrompt`] for no tokens, [`RuntimeError::BadToken`] naming the
    /// first id outside the vocabulary (every given id is checked, also those truncation drops).
    pub fn classify_tokens(&mut self, tokens: &[u32]) -> Result<Classification<'_>, RuntimeError> {
        self.run(tokens)?;
        Ok(self.result())
    }

    fn run(&mut self, tokens: &[u32]) -> Result<(), RuntimeError> {
        if tokens.is_empty() {
            return Err(RuntimeError::EmptyPrompt);
        }
        let vocab_size = self.model.config().vocab_size;
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(RuntimeError::BadToken { id, vocab_size });
        }
        let context = self.session.context();
        let real = self.spec.prepare(tokens, context, &mut self.sequence);
        self.session.reset();
        let logits = self.session.prefill(&self.sequence)?;
        self.logits.copy_from_slice(logits);
        softmax(&self.logits, &mut self.probabilities);
        self.real = real;
        self.truncated = real < tokens.len();
        Ok(())
    }

    fn result(&self) -> Classification<'_> {
        let label_id = argmax(&self.logits);
        Classification {
            label_id,
            label: self.labels.get(label_id).map_or("", String::as_str),
            labels: self.labels,
            logits: &self.logits,
            probabilities: &self.probabilities,
            tokens: self.real,
            truncated: self.truncated,
            sequence: &self.sequence,
        }
    }
}

/// p (K) = softmax(x (K)), accumulated in f64 so that the probabilities sum to 1 within f32
/// rounding even for large logits. NaN logits give NaN probabilities.
pub fn softmax(x: &[f32], p: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut sum = 0.0f64;
    for &v in x {
        sum += (v as f64 - max).exp();
    }
    for (o, &v) in p.iter_mut().zip(x) {
        *o = ((v as f64 - max).exp() / sum) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(readout: Readout, length: Option<usize>) -> ClassifierSpec {
        ClassifierSpec {
            readout,
            pad_id: 9,
            length,
        }
    }

    #[test]
    fn prepare_truncates_then_pads_for_readout_last() {
        let mut out = vec![7; 3]; // stale contents are cleared
        let s = spec(Readout::Last, Some(5));
        assert_eq!(s.prepare(&[1, 2], 8, &mut out), 2);
        assert_eq!(out, [1, 2, 9, 9, 9]);
        assert_eq!(s.prepare(&[1, 2, 3, 4, 5, 6], 8, &mut out), 5);
        assert_eq!(out, [1, 2, 3, 4, 5]);
        // The context caps both the truncation and the padding.
        assert_eq!(s.prepare(&[1, 2], 3, &mut out), 2);
        assert_eq!(out, [1, 2, 9]);
        let s = spec(Readout::LastReal, Some(5));
        assert_eq!(s.prepare(&[1, 2], 8, &mut out), 2);
        assert_eq!(out, [1, 2]);
        assert_eq!(s.prepare(&[1, 2, 3, 4, 5, 6], 8, &mut out), 5);
        assert_eq!(out, [1, 2, 3, 4, 5]);
        let s = spec(Readout::Last, None);
        assert_eq!(s.prepare(&[1, 2, 3, 4], 3, &mut out), 3);
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn softmax_values() {
        let mut p = [0.0; 2];
        softmax(&[0.0, 3f32.ln()], &mut p);
        assert!(
            (p[0] - 0.25).abs() < 1e-7 && (p[1] - 0.75).abs() < 1e-7,
            "{p:?}"
        );
        // Large logits do not overflow.
        softmax(&[1000.0, 1000.0], &mut p);
        assert_eq!(p, [0.5, 0.5]);
        softmax(&[-1e30, 0.0], &mut p);
        assert_eq!(p, [0.0, 1.0]);
    }

    #[test]
    fn a_language_model_has_no_classifier_spec() {
        assert!(matches!(
            ClassifierSpec::of(&Task::LanguageModel),
            Err(RuntimeError::WrongTask { .. })
        ));
        let t = Task::Classifier {
            labels: vec!["a".into(), "b".into()],
            readout: Readout::LastReal,
            pad_id: 50256,
            length: Some(120),
        };
        assert_eq!(
            ClassifierSpec::of(&t).unwrap(),
            ClassifierSpec {
                readout: Readout::LastReal,
                pad_id: 50256,
                length: Some(120)
            }
        );
    }
}
