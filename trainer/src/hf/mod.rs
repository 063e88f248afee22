//! Hugging Face model directories of the modern families (Llama, Qwen2/3, Gemma 3): their
//! `config.json` ([`config`]), weights in one or several safetensors shards ([`dir`]), and the
//! streaming conversion to `.ember` ([`convert`]), and the way back from a checkpoint
//! ([`export`]). GPT-2 directories go through [`crate::import`].

pub mod config;
pub mod convert;
pub mod dir;
pub mod export;
pub mod extras;

use crate::export::ExportError;
use crate::import::ImportError;
use emberlm_formats::ember::FormatError;
use std::fmt;

pub use convert::{Converted, convert, convert_keep};
pub use dir::{HfDir, is_hf_dir};

/// Why a Hugging Face directory could not be converted.
#[derive(Debug)]
pub enum ConvertError {
    /// A file could not be read.
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        message: String,
    },
    /// A JSON file is malformed or too large.
    Json {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// `config.json` names something emberlm does not support, or is inconsistent.
    Config(config::ConfigError),
    /// A safetensors file is malformed (or a tensor has an unsupported dtype).
    Import(ImportError),
    /// A tensor the configuration needs is not in the weights.
    MissingTensor {
        /// Hugging Face's name.
        name: String,
        /// Why it is needed.
        why: String,
    },
    /// A tensor's shape contradicts config.json.
    Shape {
        /// Hugging Face's name.
        name: String,
        /// The shape config.json implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// The weights hold a tensor this family does not have.
    UnexpectedTensor {
        /// Hugging Face's name.
        name: String,
    },
    /// Encoding a tensor failed (NaN, out of f16 range).
    Export(ExportError),
    /// Writing the `.ember` file failed.
    Format(FormatError),
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConvertError::Io { path, message } => write!(f, "{path}: {message}"),
            ConvertError::Json { path, message } => write!(f, "{path}: {message}"),
            ConvertError::Config(e) => write!(f, "{e}"),
            ConvertError::Import(e) => write!(f, "{e}"),
            ConvertError::MissingTensor { name, why } => {
                write!(f, "tensor {name:?} is missing from the weights: {why}")
            }
            ConvertError::Shape {
                name,
                expected,
                found,
            } => write!(
                f,
                "tensor {name:?} has shape {found:?} but config.json implies {expected:?}"
            ),
            ConvertError::UnexpectedTensor { name } => write!(
                f,
                "tensor {name:?} is not part of this model family as emberlm knows it \
                 (a feature emberlm does not support?)"
            ),
            ConvertError::Export(e) => write!(f, "{e}"),
            ConvertError::Format(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ConvertError {}

impl From<FormatError> for ConvertError {
    fn from(e: FormatError) -> Self {
        ConvertError::Format(e)
    }
}
