//! The runtime's error type: every failure a user can cause is a value, never a panic.

use emberlm_formats::ember::FormatError;
use std::fmt;

/// What went wrong while loading or running a model.
#[derive(Clone, Debug, PartialEq)]
pub enum RuntimeError {
    /// The model file is malformed, truncated, of another version, or inconsistent.
    Format(FormatError),
    /// A tensor's dtype is not one the runtime can use there.
    UnsupportedDtype {
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: &'static str,
        /// What is accepted.
        expected: &'static str,
    },
    /// A token id is not in the vocabulary.
    BadToken {
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// The prompt is empty.
    EmptyPrompt,
    /// The context is full: the session holds `context` positions.
    ContextFull {
        /// The session's context length.
        context: usize,
    },
    /// A session option is out of range.
    BadOption {
        /// The option.
        option: &'static str,
        /// Why.
        reason: String,
    },
    /// The model has no tokenizer, so text cannot be encoded or decoded.
    NoTokenizer,
    /// The operation needs a language model but this model is a classifier (or the reverse).
    WrongTask {
        /// What the operation needs.
        expected: &'static str,
    },
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeError::Format(e) => write!(f, "{e}"),
            RuntimeError::UnsupportedDtype {
                tensor,
                dtype,
                expected,
            } => {
                write!(
                    f,
                    "tensor {tensor:?} is {dtype}; the runtime needs {expected} there"
                )
            }
            RuntimeError::BadToken { id, vocab_size } => write!(
                f,
                "token id {id} is out of range: the vocabulary has {vocab_size} tokens (0..={})",
                vocab_size.saturating_sub(1)
            ),
            RuntimeError::EmptyPrompt => write!(f, "the prompt is empty: give at least one token"),
            RuntimeError::ContextFull { context } => {
                write!(f, "the context is full ({context} tokens)")
            }
            RuntimeError::BadOption { option, reason } => write!(f, "{option}: {reason}"),
            RuntimeError::NoTokenizer => write!(
                f,
                "this model file has no tokenizer; pass token ids (--tokens) instead of text"
            ),
            RuntimeError::WrongTask { expected } => write!(f, "this model is not {expected}"),
        }
    }
}

impl std::error::Error for RuntimeError {}

impl From<FormatError> for RuntimeError {
    fn from(e: FormatError) -> Self {
        RuntimeError::Format(e)
    }
}
