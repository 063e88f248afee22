//! The GPT-2 model configuration, shared by the trainer, the exporter and the runtime. Its tensors
//! are described in [`crate::arch`].
//!
//! Letters used in shapes: V vocabulary size, T context length, C embedding dim, L layers, H heads.

use std::fmt;

/// A GPT-2 family configuration (the book's `GPT_CONFIG_124M` and friends).
///
/// Dropout is a training-time setting and is not part of this struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GptConfig {
    /// V: number of token ids (50257 for GPT-2).
    pub vocab_size: usize,
    /// T: the longest sequence the position embedding covers.
    pub context_length: usize,
    /// C: embedding dimension.
    pub dim: usize,
    /// L: number of transformer blocks.
    pub n_layers: usize,
    /// H: attention heads; `dim % n_heads == 0`.
    pub n_heads: usize,
    /// Whether the query/key/value projections have a bias (true for OpenAI's weights, false in the
    /// book's from-scratch runs).
    pub qkv_bias: bool,
    /// Whether the output head reuses the token embedding (OpenAI's weights) instead of owning an
    /// `out_head.weight` tensor (the book's GPTModel, the default when training from scratch).
    pub tied_head: bool,
}

/// LayerNorm epsilon (GPT-2 and the book).
pub const LAYERNORM_EPS: f32 = 1e-5;

/// Upper bounds that keep hostile configurations from overflowing size arithmetic.
pub const MAX_VOCAB: usize = 1 << 24;
/// Upper bound on the context length.
pub const MAX_CONTEXT: usize = 1 << 20;
/// Upper bound on the embedding dimension.
pub const MAX_DIM: usize = 1 << 16;
/// Upper bound on the number of layers.
pub const MAX_LAYERS: usize = 1 << 10;

/// What is wrong with a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// A field is zero or above its cap.
    OutOfRange {
        /// Field name, as in the file's metadata (`gpt2.dim`, …).
        field: &'static str,
        /// The offending value.
        value: u64,
        /// The largest accepted value.
        max: u64,
    },
    /// `dim` is not a multiple of `n_heads`.
    HeadsDoNotDivideDim {
        /// C.
        dim: usize,
        /// H.
        n_heads: usize,
    },
    /// An unknown preset name.
    UnknownPreset(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::OutOfRange { field, value, max } => {
                write!(f, "{field} = {value} is out of range (1..={max})")
            }
            ConfigError::HeadsDoNotDivideDim { dim, n_heads } => write!(
                f,
                "the embedding dim {dim} is not a multiple of the number of heads {n_heads}"
            ),
            ConfigError::UnknownPreset(name) => write!(
                f,
                "unknown model preset {name:?} (expected 124m, 355m, 774m or 1558m)"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl GptConfig {
    /// The four OpenAI GPT-2 sizes by their usual names (`124m`, `355m`, `774m`, `1558m`; `gpt2`,
    /// `gpt2-medium`, `gpt2-large`, `gpt2-xl` are accepted too). Context 1024, vocabulary 50257,
    /// no qkv bias and an untied head, as the book's GPTModel trains from scratch.
    pub fn preset(name: &str) -> Result<GptConfig, ConfigError> {
        let (dim, n_layers, n_heads) = match name.to_ascii_lowercase().as_str() {
            "124m" | "gpt2" | "gpt2-small" => (768, 12, 12),
            "355m" | "gpt2-medium" => (1024, 24, 16),
            "774m" | "gpt2-large" => (1280, 36, 20),
            "1558m" | "gpt2-xl" => (1600, 48, 25),
            _ => return Err(ConfigError::UnknownPreset(name.to_string())),
        };
        Ok(GptConfig {
            vocab_size: 50257,
            context_length: 1024,
            dim,
            n_layers,
            n_heads,
            qkv_bias: false,
            tied_head: false,
        })
    }

    /// C / H.
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// Checks every field against its cap and `dim % n_heads == 0`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fields: [(&'static str, usize, usize); 5] = [
            ("gpt2.vocab_size", self.vocab_size, MAX_VOCAB),
            ("gpt2.context_length", self.context_length, MAX_CONTEXT),
            ("gpt2.dim", self.dim, MAX_DIM),
            ("gpt2.n_layers", self.n_layers, MAX_LAYERS),
            ("gpt2.n_heads", self.n_heads, MAX_DIM),
        ];
        for (field, value, max) in fields {
            if value == 0 || value > max {
                return Err(ConfigError::OutOfRange {
                    field,
                    value: value as u64,
                    max: max as u64,
                });
            }
        }
        if self.dim % self.n_heads != 0 {
            return Err(ConfigError::HeadsDoNotDivideDim {
                dim: self.dim,
                n_heads: self.n_heads,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_field() {
        let mut cfg = GptConfig::preset("124m").unwrap();
        cfg.n_heads = 7;
        assert_eq!(
            cfg.validate(),
            Err(ConfigError::HeadsDoNotDivideDim {
                dim: 768,
                n_heads: 7
            })
        );
        cfg.n_heads = 0;
        assert_eq!(
            cfg.validate(),
            Err(ConfigError::OutOfRange {
                field: "gpt2.n_heads",
                value: 0,
                max: MAX_DIM as u64
            })
        );
        assert!(GptConfig::preset("gpt2-xl").unwrap().validate().is_ok());
        assert!(matches!(
            GptConfig::preset("7b"),
            Err(ConfigError::UnknownPreset(_))
        ));
    }
}
