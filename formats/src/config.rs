//! Model configurations: [`GptConfig`] (GPT-2, what the trainer trains) and [`ModelConfig`] (every
//! family the runtime runs), shared by the trainer, the converters and the runtime. Their tensors
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
        field: String,
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
    /// Fields that contradict each other.
    Inconsistent {
        /// The field to fix, as in the file's metadata.
        field: String,
        /// What is wrong.
        detail: String,
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
            ConfigError::Inconsistent { field, detail } => write!(f, "{field}: {detail}"),
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
                    field: field.to_string(),
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

/// A model family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// GPT-2 as in the book: learned position embeddings, pre-LayerNorm blocks, fused q/k/v,
    /// GELU MLP of 4C.
    Gpt2,
    /// Llama 2/3.x, SmolLM2, TinyLlama: RMSNorm, RoPE, grouped-query attention, SwiGLU, no biases.
    Llama,
    /// Qwen2 and Qwen2.5: Llama with query/key/value biases.
    Qwen2,
    /// Qwen3: Llama with a per-head RMSNorm on queries and keys and a free head dim.
    Qwen3,
    /// Gemma 3 (text): GeGLU, four norms per block, query/key norms, embeddings × √C,
    /// sliding-window layers between global ones.
    Gemma3,
}

impl Arch {
    /// Every family, in the order `--help` lists them.
    pub const ALL: [Arch; 5] = [
        Arch::Gpt2,
        Arch::Llama,
        Arch::Qwen2,
        Arch::Qwen3,
        Arch::Gemma3,
    ];

    /// The name in `.ember` files (`general.architecture`, the prefix of the configuration keys);
    /// Hugging Face's `model_type` for the new families.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Gpt2 => "gpt2",
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
        }
    }

    /// The family named `name` (as [`Arch::name`] gives it).
    pub fn from_name(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// RMSNorm epsilon when a configuration does not say (Llama's default).
pub const RMSNORM_EPS: f32 = 1e-6;

/// Upper bound on the number of key/value heads and on the head dimension.
pub const MAX_HEADS: usize = 1 << 12;

/// How a block normalises its input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Norm {
    /// GPT-2's LayerNorm: scale and shift, epsilon [`LAYERNORM_EPS`].
    LayerNorm,
    /// RMSNorm, x · w / √(mean(x²) + ε) (Llama, Qwen, Gemma). Gemma's (1 + w) form is stored with
    /// the 1 added at conversion (FORMAT.md), so the runtime has one RMSNorm.
    RmsNorm,
}

/// The MLP's nonlinearity and shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mlp {
    /// GPT-2: down(GELU_tanh(up x + b) ) + b, with biases.
    Gelu,
    /// Llama, Qwen: down(SiLU(gate x) ⊙ up x), no biases.
    SwiGlu,
    /// Gemma: down(GELU_tanh(gate x) ⊙ up x), no biases.
    GeGlu,
}

/// How RoPE frequencies are rescaled for long contexts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// θ^(-2i/D) as is.
    None,
    /// Every frequency divided by `factor` (Hugging Face's `linear`; Gemma 3's global layers).
    Linear {
        /// The divisor.
        factor: f32,
    },
    /// Llama 3.1's rule (`rope_type: llama3`): wavelengths shorter than
    /// `original_context / high_freq_factor` keep their frequency, longer than
    /// `original_context / low_freq_factor` are divided by `factor`, and the band between is
    /// interpolated smoothly.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f32,
        /// See the rule.
        low_freq_factor: f32,
        /// See the rule.
        high_freq_factor: f32,
        /// The context length the model was first trained at.
        original_context: usize,
    },
}

/// Rotary position embedding (rotate-half convention, as Hugging Face's Llama).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    /// Base θ of the global (full-attention) layers.
    pub theta: f32,
    /// Base θ of the sliding-window layers (Gemma 3's `rope_local_base_freq`; else `theta`).
    pub local_theta: f32,
    /// Rescaling of the global layers' frequencies (sliding layers never rescale).
    pub scaling: RopeScaling,
}

impl Rope {
    /// The D/2 inverse frequencies of a layer (`local`: a sliding-window layer).
    pub fn inv_freq(&self, head_dim: usize, local: bool) -> Vec<f32> {
        let theta = if local { self.local_theta } else { self.theta } as f64;
        (0..head_dim / 2)
            .map(|i| {
                let f = theta.powf(-((2 * i) as f64) / head_dim as f64);
                (if local { f } else { self.scaling.apply(f) }) as f32
            })
            .collect()
    }
}

impl RopeScaling {
    /// The rescaled frequency (radians per position) of a frequency `f`.
    pub fn apply(self, f: f64) -> f64 {
        match self {
            RopeScaling::None => f,
            RopeScaling::Linear { factor } => f / factor as f64,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context,
            } => {
                let (factor, lo, hi) = (
                    factor as f64,
                    low_freq_factor as f64,
                    high_freq_factor as f64,
                );
                let old = original_context as f64;
                let wavelen = 2.0 * std::f64::consts::PI / f;
                if wavelen < old / hi {
                    f
                } else if wavelen > old / lo {
                    f / factor
                } else {
                    let smooth = (old / wavelen - lo) / (hi - lo);
                    (1.0 - smooth) * f / factor + smooth * f
                }
            }
        }
    }
}

/// Every hyperparameter the runtime and the converters need, for any supported family.
/// GPT-2's [`GptConfig`] converts into one (`ModelConfig::from`).
///
/// Shapes: H query heads and Hkv key/value heads of D dims each (H divisible by Hkv: each
/// key/value head serves H/Hkv query heads), an MLP of F hidden units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelConfig {
    /// The family (and so the tensor description).
    pub arch: Arch,
    /// V.
    pub vocab_size: usize,
    /// T: the longest sequence the model runs (position table or the configured maximum).
    pub context_length: usize,
    /// C.
    pub dim: usize,
    /// L.
    pub n_layers: usize,
    /// H.
    pub n_heads: usize,
    /// Hkv.
    pub n_kv_heads: usize,
    /// D (C / H in GPT-2 and Llama; set freely by Qwen3 and Gemma).
    pub head_dim: usize,
    /// F.
    pub ffn_dim: usize,
    /// The norm of every block and the final norm.
    pub norm: Norm,
    /// The norms' ε.
    pub norm_eps: f32,
    /// The MLP.
    pub mlp: Mlp,
    /// Rotary positions, or `None` for a learned position table (GPT-2).
    pub rope: Option<Rope>,
    /// Query/key/value biases (GPT-2 from OpenAI, Qwen2).
    pub qkv_bias: bool,
    /// A per-head RMSNorm over D on queries and keys before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Norms after attention and after the MLP, before the residual add (Gemma 3).
    pub post_norms: bool,
    /// The head reuses the token embedding.
    pub tied_head: bool,
    /// Embeddings are multiplied by this (Gemma: √C; else 1).
    pub embed_scale: f32,
    /// Attention scores are q·k times this (1/√D, or Gemma's `query_pre_attn_scalar`^-½).
    pub query_scale: f32,
    /// Sliding-window attention: a layer with `(l + 1) % every != 0` attends to the last
    /// `window` positions only (Gemma 3: window 512, every 6). `None`: every layer is global.
    pub sliding: Option<Sliding>,
}

/// Which layers attend to a window only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sliding {
    /// Positions a local layer sees, its own included.
    pub window: usize,
    /// Every `every`-th layer (1-based) is global; the others are local.
    pub every: usize,
}

impl ModelConfig {
    /// Whether layer `l` attends to a window only.
    pub fn is_local(&self, l: usize) -> bool {
        self.sliding.is_some_and(|s| (l + 1) % s.every != 0)
    }

    /// H·D: the query projection's outputs (= C for GPT-2 and Llama).
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Hkv·D: the key (and the value) projection's outputs.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Checks every field against its cap and the shapes' consistency; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = self.arch.name();
        let key = |k: &str| format!("{p}.{k}");
        let fields: [(&str, usize, usize); 8] = [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("context_length", self.context_length, MAX_CONTEXT),
            ("dim", self.dim, MAX_DIM),
            ("n_layers", self.n_layers, MAX_LAYERS),
            ("n_heads", self.n_heads, MAX_HEADS),
            ("n_kv_heads", self.n_kv_heads, MAX_HEADS),
            ("head_dim", self.head_dim, MAX_DIM),
            ("ffn_dim", self.ffn_dim, 4 * MAX_DIM),
        ];
        for (field, value, max) in fields {
            if value == 0 || value > max {
                return Err(ConfigError::OutOfRange {
                    field: key(field),
                    value: value as u64,
                    max: max as u64,
                });
            }
        }
        let bad = |field: &str, detail: String| ConfigError::Inconsistent {
            field: key(field),
            detail,
        };
        if self.n_heads % self.n_kv_heads != 0 {
            return Err(bad(
                "n_kv_heads",
                format!(
                    "{} query heads cannot share {} key/value heads evenly",
                    self.n_heads, self.n_kv_heads
                ),
            ));
        }
        if self.q_dim() > 4 * MAX_DIM {
            return Err(bad("head_dim", "n_heads × head_dim is too large".into()));
        }
        if self.rope.is_some() && self.head_dim % 2 != 0 {
            return Err(bad(
                "head_dim",
                "rotary positions need an even head_dim".into(),
            ));
        }
        if self.rope.is_none() && self.arch != Arch::Gpt2 {
            return Err(bad("rope", "this family needs rotary positions".into()));
        }
        let positive = |x: f32| x.is_finite() && x > 0.0;
        if !positive(self.norm_eps) || self.norm_eps > 1.0 {
            return Err(bad(
                "norm_eps",
                format!("{} is not in (0, 1]", self.norm_eps),
            ));
        }
        if !positive(self.embed_scale) || !positive(self.query_scale) {
            return Err(bad(
                "query_scale",
                "scales must be finite and positive".into(),
            ));
        }
        if let Some(r) = self.rope {
            if !positive(r.theta) || !positive(r.local_theta) {
                return Err(bad(
                    "rope.theta",
                    format!("{} is not a positive base", r.theta),
                ));
            }
            match r.scaling {
                RopeScaling::None => {}
                RopeScaling::Linear { factor } if positive(factor) => {}
                RopeScaling::Llama3 {
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_context,
                } if positive(factor)
                    && positive(low_freq_factor)
                    && high_freq_factor > low_freq_factor
                    && high_freq_factor.is_finite()
                    && original_context > 0 => {}
                s => {
                    return Err(bad(
                        "rope.scaling",
                        format!("{s:?} is not a valid rescaling"),
                    ));
                }
            }
        }
        if let Some(s) = self.sliding {
            if s.window == 0 || s.every == 0 {
                return Err(bad(
                    "sliding_window",
                    "window and pattern must be positive".into(),
                ));
            }
        }
        Ok(())
    }
}

impl ModelConfig {
    /// The preset names [`ModelConfig::preset`] knows.
    pub const PRESETS: [&'static str; 7] = [
        "gpt2-124m",
        "smollm2-135m",
        "smollm2-360m",
        "qwen2.5-0.5b",
        "qwen3-0.6b",
        "llama3.2-1b",
        "gemma3-270m",
    ];

    /// The shapes and settings of a published model, from its Hugging Face `config.json` (for
    /// benchmarks on random weights and for training at a real size).
    pub fn preset(name: &str) -> Result<ModelConfig, ConfigError> {
        let llama = |arch, v, t, c, l, h, kv, d, f, theta, eps| ModelConfig {
            arch,
            vocab_size: v,
            context_length: t,
            dim: c,
            n_layers: l,
            n_heads: h,
            n_kv_heads: kv,
            head_dim: d,
            ffn_dim: f,
            norm: Norm::RmsNorm,
            norm_eps: eps,
            mlp: Mlp::SwiGlu,
            rope: Some(Rope {
                theta,
                local_theta: theta,
                scaling: RopeScaling::None,
            }),
            qkv_bias: arch == Arch::Qwen2,
            qk_norm: arch == Arch::Qwen3,
            post_norms: false,
            tied_head: true,
            embed_scale: 1.0,
            query_scale: 1.0 / (d as f32).sqrt(),
            sliding: None,
        };
        let cfg = match name.to_ascii_lowercase().as_str() {
            "gpt2-124m" => ModelConfig::from(GptConfig {
                qkv_bias: true,
                tied_head: true,
                ..GptConfig::preset("124m")?
            }),
            "smollm2-135m" => llama(Arch::Llama, 49152, 8192, 576, 30, 9, 3, 64, 1536, 1e5, 1e-5),
            "smollm2-360m" => llama(
                Arch::Llama,
                49152,
                8192,
                960,
                32,
                15,
                5,
                64,
                2560,
                1e5,
                1e-5,
            ),
            "qwen2.5-0.5b" => llama(
                Arch::Qwen2,
                151936,
                32768,
                896,
                24,
                14,
                2,
                64,
                4864,
                1e6,
                1e-6,
            ),
            "qwen3-0.6b" => llama(
                Arch::Qwen3,
                151936,
                40960,
                1024,
                28,
                16,
                8,
                128,
                3072,
                1e6,
                1e-6,
            ),
            "llama3.2-1b" => ModelConfig {
                rope: Some(Rope {
                    theta: 5e5,
                    local_theta: 5e5,
                    scaling: RopeScaling::Llama3 {
                        factor: 32.0,
                        low_freq_factor: 1.0,
                        high_freq_factor: 4.0,
                        original_context: 8192,
                    },
                }),
                ..llama(
                    Arch::Llama,
                    128256,
                    131072,
                    2048,
                    16,
                    32,
                    8,
                    64,
                    8192,
                    5e5,
                    1e-5,
                )
            },
            "gemma3-270m" => ModelConfig {
                mlp: Mlp::GeGlu,
                qk_norm: true,
                post_norms: true,
                embed_scale: (640f32).sqrt(),
                query_scale: 1.0 / (256f32).sqrt(),
                rope: Some(Rope {
                    theta: 1e6,
                    local_theta: 1e4,
                    scaling: RopeScaling::None,
                }),
                sliding: Some(Sliding {
                    window: 512,
                    every: 6,
                }),
                ..llama(
                    Arch::Gemma3,
                    262144,
                    32768,
                    640,
                    18,
                    4,
                    1,
                    256,
                    2048,
                    1e6,
                    1e-6,
                )
            },
            _ => return Err(ConfigError::UnknownPreset(name.to_string())),
        };
        Ok(cfg)
    }
}

impl From<GptConfig> for ModelConfig {
    fn from(g: GptConfig) -> ModelConfig {
        let head_dim = g.dim / g.n_heads.max(1);
        ModelConfig {
            arch: Arch::Gpt2,
            vocab_size: g.vocab_size,
            context_length: g.context_length,
            dim: g.dim,
            n_layers: g.n_layers,
            n_heads: g.n_heads,
            n_kv_heads: g.n_heads,
            head_dim,
            ffn_dim: 4 * g.dim,
            norm: Norm::LayerNorm,
            norm_eps: LAYERNORM_EPS,
            mlp: Mlp::Gelu,
            rope: None,
            qkv_bias: g.qkv_bias,
            qk_norm: false,
            post_norms: false,
            tied_head: g.tied_head,
            embed_scale: 1.0,
            query_scale: 1.0 / (head_dim.max(1) as f32).sqrt(),
            sliding: None,
        }
    }
}

impl ModelConfig {
    /// The GPT-2 configuration this is, if it is one (the trainer trains GPT-2 only).
    pub fn gpt2(&self) -> Option<GptConfig> {
        let g = GptConfig {
            vocab_size: self.vocab_size,
            context_length: self.context_length,
            dim: self.dim,
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            qkv_bias: self.qkv_bias,
            tied_head: self.tied_head,
        };
        (ModelConfig::from(g) == *self).then_some(g)
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
                field: "gpt2.n_heads".into(),
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
