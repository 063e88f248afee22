//! Checkpoints: a directory that holds everything needed to resume training bit-for-bit, to
//! evaluate, or to export.
//!
//! ```text
//! OUT/checkpoints/latest               one line: the name of the newest complete step directory
//! OUT/checkpoints/step-00000090/
//!     model.safetensors                parameters, canonical names (config::tensor_shapes), f32
//!     optimizer.safetensors            AdamW moments `m` and `v` (N each), when training
//!     trainer.json                     step, epoch, position in the epoch, RNG seeds, config,
//!                                      hyperparameters, data files + fingerprints, loss history
//!     tokenizer.ember                  the tokenizer (a metadata-only .ember file); absent when
//!                                      `trainer.json`'s tokenizer kind is `none` (an imported
//!                                      model without vocab.json/merges.txt: token ids only)
//!     hf/                              a model imported from a Hugging Face directory: that
//!                                      directory's own files ([`HF_FILES`], those present),
//!                                      byte for byte
//! ```
//! `hf/` is how a model keeps what Hugging Face says about it besides the weights: the chat
//! template, the special tokens, the end-of-reply ids, `tokenizer.json` as transformers reads it.
//! `ember-train import` copies those files verbatim; every later checkpoint of the model
//! (`pretrain --init` or `--resume`, fine-tuning) carries them along unchanged
//! ([`TrainerState::hf`] holds them between a [`load`] and a write); [`hf_extras`] reads them with
//! the parser of a Hugging Face directory, so that `export` writes the chat template and the
//! end-of-reply ids into the `.ember` file and `export-safetensors` gives them back to
//! transformers. A model trained from scratch has no `hf/`.
//!
//! A step directory is written under a temporary name, every file fsynced, then renamed into
//! place; only then does `latest` move (atomically) and older step directories get removed, so a
//! crash at any point leaves the previous checkpoint complete. `ember-train import` writes the
//! same layout (without `optimizer.safetensors`) straight into the directory it is given.
//!
//! Letters: N parameters.

use crate::adamw::LrSchedule;
use crate::data::io_reason;
use crate::plot::LossRow;
use emberlm_formats::config::{
    Arch, GptConfig, Mlp, ModelConfig, Norm, Rope, RopeScaling, Sliding,
};
use emberlm_formats::ember::{EmberWriter, MappedFile, parse_header, write_atomically};
use emberlm_formats::meta;
use emberlm_formats::tokenizer::Tokenizer;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// `trainer.json`'s `format` value.
pub const FORMAT: &str = "emberlm-checkpoint";
/// `trainer.json`'s `version` value this build reads and writes.
pub const VERSION: u32 = 1;
/// File names inside a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// AdamW state.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Training state.
pub const STATE_FILE: &str = "trainer.json";
/// The tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.ember";
/// `OUT/checkpoints/best`: a pretraining run's checkpoint with the lowest validation loss so
/// far (no optimizer state: for export and evaluation, not for resuming).
pub const BEST_DIR: &str = "best";
/// `trainer.json`'s tokenizer kind of a checkpoint without a tokenizer (no `tokenizer.ember`).
pub const NO_TOKENIZER: &str = "none";
/// The directory of a checkpoint that holds the Hugging Face files of an imported model.
pub const HF_DIR: &str = "hf";
/// The files of a Hugging Face directory that `import` keeps in `hf/` (those present): the
/// configuration (for its token ids; the weights' shapes are `trainer.json`'s), the generation
/// settings, and every tokenizer file `AutoTokenizer.from_pretrained` reads.
pub const HF_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
];
/// Largest file kept in `hf/` (real tokenizer files are under 40 MB).
const MAX_HF_FILE: u64 = 256 << 20;

/// Why a checkpoint could not be read or written. Every variant names the path.
#[derive(Clone, Debug, PartialEq)]
pub enum CheckpointError {
    /// The path is not a checkpoint, a run directory or a `checkpoints/` directory.
    NotACheckpoint {
        /// The path given.
        path: PathBuf,
    },
    /// Reading or writing failed.
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        reason: String,
    },
    /// A file is malformed.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointError::NotACheckpoint { path } => {
                write!(
                    f,
                    "{}: not a checkpoint (expected a directory with {STATE_FILE}, a `latest` \
                     pointer, or a run directory with checkpoints/latest)",
                    path.display()
                )?;
                if crate::hf::dir::is_hf_dir(path) {
                    write!(
                        f,
                        "; it is a Hugging Face model directory: import it first with \
                         `ember-train import --from {} --out CKPT` and give CKPT",
                        path.display()
                    )?;
                }
                Ok(())
            }
            CheckpointError::Io { path, reason } => write!(f, "{}: {reason}", path.display()),
            CheckpointError::Corrupt { path, reason } => {
                write!(f, "{}: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for CheckpointError {}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> CheckpointError + '_ {
    move |e| CheckpointError::Io {
        path: path.to_path_buf(),
        reason: io_reason(&e),
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The Hugging Face files of a checkpoint's `hf/` ([`HF_FILES`]), held in memory between reading
/// a checkpoint and writing the next one. Cheap to clone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HfFiles {
    /// (file name, bytes), in [`HF_FILES`] order.
    pub files: Vec<(String, std::sync::Arc<Vec<u8>>)>,
}

impl HfFiles {
    /// The files of [`HF_FILES`] present in `dir` (a Hugging Face model directory or a
    /// checkpoint's `hf/`), byte for byte; `None` when there is none.
    pub fn read(dir: &Path) -> Result<Option<HfFiles>, CheckpointError> {
        let mut files = Vec::new();
        for name in HF_FILES {
            let path = dir.join(name);
            if !path.is_file() {
                continue;
            }
            let len = std::fs::metadata(&path).map_err(io_err(&path))?.len();
            if len > MAX_HF_FILE {
                return Err(corrupt(
                    &path,
                    format!("{len} bytes is above the cap of {MAX_HF_FILE}"),
                ));
            }
            let bytes = std::fs::read(&path).map_err(io_err(&path))?;
            files.push((name.to_string(), std::sync::Arc::new(bytes)));
        }
        Ok((!files.is_empty()).then_some(HfFiles { files }))
    }

    /// Writes every file into `dir` (created), each fsynced.
    pub fn write(&self, dir: &Path) -> Result<(), CheckpointError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        for (name, bytes) in &self.files {
            let path = dir.join(name);
            std::fs::write(&path, bytes.as_slice()).map_err(io_err(&path))?;
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&path))?;
        }
        sync_dir(dir);
        Ok(())
    }

    /// The bytes of file `name`, when present.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }
}

/// The tokenizer, chat template, special tokens and end-of-reply ids of the model in checkpoint
/// `dir` (any path [`resolve`] accepts), read from its `hf/` with the parser of a Hugging Face
/// directory ([`crate::hf::extras::read_files`]); `None` when the checkpoint has no `hf/` (a
/// model trained from scratch, or a GPT-2). An invalid file is an error naming it.
pub fn hf_extras(dir: &Path) -> Result<Option<crate::hf::extras::Extras>, CheckpointError> {
    let dir = resolve(dir)?;
    let hf = dir.join(HF_DIR);
    if !hf.is_dir() {
        return Ok(None);
    }
    let state = read_state(&dir)?;
    let vocab_size = match &state.family {
        Some(f) => f.vocab_size,
        None => state.config.vocab_size,
    };
    let cfg_path = hf.join("config.json");
    let config = if cfg_path.is_file() {
        crate::hf::dir::read_json(&cfg_path, 1 << 20)
            .map_err(|e| corrupt(&cfg_path, e.to_string()))?
    } else {
        serde_json::Value::Null
    };
    crate::hf::extras::read_files(&hf, vocab_size, &config)
        .map(Some)
        .map_err(|e| corrupt(&hf, e.to_string()))
}

/// A model of the modern families (Llama, Qwen2, Qwen3, Gemma 3), as `trainer.json` records it:
/// every field of its [`ModelConfig`] (f32 values print in the shortest form that reads back to
/// the same bits). A checkpoint with this field holds that model, not a GPT-2.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FamilyJson {
    /// `llama`, `qwen2`, `qwen3` or `gemma3`.
    pub arch: String,
    /// V.
    pub vocab_size: usize,
    /// T.
    pub context_length: usize,
    /// C.
    pub dim: usize,
    /// L.
    pub n_layers: usize,
    /// H.
    pub n_heads: usize,
    /// Hkv.
    pub n_kv_heads: usize,
    /// D.
    pub head_dim: usize,
    /// F.
    pub ffn_dim: usize,
    /// RMSNorm's ε.
    pub norm_eps: f32,
    /// `swiglu` or `geglu`.
    pub mlp: String,
    /// Rotary base of the global layers.
    pub rope_theta: f32,
    /// Rotary base of the sliding-window layers.
    pub rope_local_theta: f32,
    /// Rotary frequency scaling of the global layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScalingJson>,
    /// Query/key/value biases.
    pub qkv_bias: bool,
    /// Per-head RMSNorm of queries and keys.
    pub qk_norm: bool,
    /// Gemma's norms after attention and MLP.
    pub post_norms: bool,
    /// Whether the head is the token embedding.
    pub tied_head: bool,
    /// Embedding multiplier (Gemma: √C).
    pub embed_scale: f32,
    /// Attention logit scale.
    pub query_scale: f32,
    /// Sliding-window layers: (window, every): layer l is local unless (l + 1) % every == 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding: Option<(usize, usize)>,
}

/// [`RopeScaling`] in `trainer.json`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RopeScalingJson {
    /// Positions divided by `factor`.
    Linear {
        /// The divisor.
        factor: f32,
    },
    /// Llama 3's frequency-dependent scaling.
    Llama3 {
        /// The divisor of low frequencies.
        factor: f32,
        /// Low-frequency bound.
        low_freq_factor: f32,
        /// High-frequency bound.
        high_freq_factor: f32,
        /// The context the model was trained at.
        original_context: usize,
    },
}

impl FamilyJson {
    /// The preset whose architecture details a from-scratch model of `arch` takes.
    pub fn base_preset(arch: &str) -> Option<&'static str> {
        Some(match arch {
            "llama" => "smollm2-135m",
            "qwen2" => "qwen2.5-0.5b",
            "qwen3" => "qwen3-0.6b",
            "gemma3" => "gemma3-270m",
            _ => return None,
        })
    }

    /// The configuration, validated.
    pub fn config(&self) -> Result<ModelConfig, String> {
        let arch = Arch::from_name(&self.arch)
            .filter(|a| *a != Arch::Gpt2)
            .ok_or_else(|| format!("unknown architecture {:?}", self.arch))?;
        let mlp = match self.mlp.as_str() {
            "swiglu" => Mlp::SwiGlu,
            "geglu" => Mlp::GeGlu,
            m => return Err(format!("unknown mlp {m:?}")),
        };
        let scaling = match self.rope_scaling {
            None => RopeScaling::None,
            Some(RopeScalingJson::Linear { factor }) => RopeScaling::Linear { factor },
            Some(RopeScalingJson::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context,
            }) => RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context,
            },
        };
        let c = ModelConfig {
            arch,
            vocab_size: self.vocab_size,
            context_length: self.context_length,
            dim: self.dim,
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            ffn_dim: self.ffn_dim,
            norm: Norm::RmsNorm,
            norm_eps: self.norm_eps,
            mlp,
            rope: Some(Rope {
                theta: self.rope_theta,
                local_theta: self.rope_local_theta,
                scaling,
            }),
            qkv_bias: self.qkv_bias,
            qk_norm: self.qk_norm,
            post_norms: self.post_norms,
            tied_head: self.tied_head,
            embed_scale: self.embed_scale,
            query_scale: self.query_scale,
            sliding: self
                .sliding
                .map(|(window, every)| Sliding { window, every }),
        };
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    /// `c` as recorded (`None` for GPT-2 or a model without rotary positions).
    pub fn of(c: &ModelConfig) -> Option<FamilyJson> {
        let rope = c.rope?;
        let mlp = match c.mlp {
            Mlp::SwiGlu => "swiglu",
            Mlp::GeGlu => "geglu",
            Mlp::Gelu => return None,
        };
        Some(FamilyJson {
            arch: c.arch.name().to_string(),
            vocab_size: c.vocab_size,
            context_length: c.context_length,
            dim: c.dim,
            n_layers: c.n_layers,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            ffn_dim: c.ffn_dim,
            norm_eps: c.norm_eps,
            mlp: mlp.to_string(),
            rope_theta: rope.theta,
            rope_local_theta: rope.local_theta,
            rope_scaling: match rope.scaling {
                RopeScaling::None => None,
                RopeScaling::Linear { factor } => Some(RopeScalingJson::Linear { factor }),
                RopeScaling::Llama3 {
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_context,
                } => Some(RopeScalingJson::Llama3 {
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_context,
                }),
            },
            qkv_bias: c.qkv_bias,
            qk_norm: c.qk_norm,
            post_norms: c.post_norms,
            tied_head: c.tied_head,
            embed_scale: c.embed_scale,
            query_scale: c.query_scale,
            sliding: c.sliding.map(|w| (w.window, w.every)),
        })
    }
}

/// [`GptConfig`] as stored in `trainer.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigJson {
    /// V.
    pub vocab_size: usize,
    /// Context length of the position table.
    pub context_length: usize,
    /// C.
    pub dim: usize,
    /// L.
    pub n_layers: usize,
    /// H.
    pub n_heads: usize,
    /// Whether q/k/v have a bias.
    pub qkv_bias: bool,
    /// Whether the head is the token embedding.
    pub tied_head: bool,
}

impl From<GptConfig> for ConfigJson {
    fn from(c: GptConfig) -> Self {
        ConfigJson {
            vocab_size: c.vocab_size,
            context_length: c.context_length,
            dim: c.dim,
            n_layers: c.n_layers,
            n_heads: c.n_heads,
            qkv_bias: c.qkv_bias,
            tied_head: c.tied_head,
        }
    }
}

impl From<ConfigJson> for GptConfig {
    fn from(c: ConfigJson) -> Self {
        GptConfig {
            vocab_size: c.vocab_size,
            context_length: c.context_length,
            dim: c.dim,
            n_layers: c.n_layers,
            n_heads: c.n_heads,
            qkv_bias: c.qkv_bias,
            tied_head: c.tied_head,
        }
    }
}

/// The hyperparameters of a pretraining run (everything that shapes the sequence of losses).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hyper {
    /// B.
    pub batch: usize,
    /// Window length T (≤ the model's context length).
    pub context: usize,
    /// Window stride.
    pub stride: usize,
    /// Peak (or constant) learning rate.
    pub lr: f32,
    /// The learning-rate schedule (`constant` or `cosine` in `trainer.json`).
    pub schedule: Schedule,
    /// Cosine: learning rate at step 0 of the warmup.
    pub initial_lr: f32,
    /// Cosine: final learning rate.
    pub min_lr: f32,
    /// Linear warmup steps.
    pub warmup_steps: u64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Decay only 2-D tensors (else every parameter, as the book).
    pub decay_2d_only: bool,
    /// Global gradient-norm clip.
    pub clip: Option<f32>,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Dropout at the book's three sites.
    pub dropout: f32,
    /// Run seed (init, shuffles, dropout).
    pub seed: u64,
    /// Evaluate every this many steps.
    pub eval_every: u64,
    /// Batches per evaluation.
    pub eval_batches: usize,
    /// Sample prompt.
    pub prompt: String,
    /// Tokens per sample.
    pub sample_tokens: usize,
    /// Total optimizer steps of the run.
    pub total_steps: u64,
    /// Parameter initialisation (`torch`, `gpt2` or `checkpoint:PATH` in `trainer.json`).
    pub init: InitScheme,
}

impl Hyper {
    /// The learning rate of every step: linear warmup from `initial_lr` to `lr`, then constant
    /// (`min_lr` = `lr`) or cosine decay to `min_lr` at `total_steps` (appendix D).
    pub fn lr_schedule(&self) -> LrSchedule {
        LrSchedule {
            initial_lr: self.initial_lr,
            peak_lr: self.lr,
            min_lr: match self.schedule {
                Schedule::Constant => self.lr,
                Schedule::Cosine => self.min_lr,
            },
            warmup_steps: self.warmup_steps,
            total_steps: self.total_steps,
        }
    }
}

/// A run setting that `trainer.json` stores as one of a few strings.
macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $v),+
        }

        impl $name {
            /// The name `trainer.json` and the command line use.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$v => $s),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok(Self::$v),)+
                    _ => Err(format!(
                        "{s:?}: expected {}",
                        [$($s),+].join(" or ")
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// The learning-rate schedule after warmup.
    Schedule {
        /// The peak rate until the end.
        Constant = "constant",
        /// Cosine decay to the minimum rate (appendix D).
        Cosine = "cosine",
    }
}

/// How a run's parameters were initialised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum InitScheme {
    /// PyTorch's default layer initialisation (the book): `torch`.
    Torch,
    /// GPT-2's N(0, 0.02) with scaled residual projections: `gpt2`.
    Gpt2,
    /// The weights of a checkpoint: `checkpoint:PATH`.
    Checkpoint(String),
}

impl InitScheme {
    const CHECKPOINT: &str = "checkpoint:";

    /// The scheme `--init-scheme` names (`torch` or `gpt2`).
    pub fn parse_scheme(s: &str) -> Result<Self, String> {
        match s {
            "torch" => Ok(Self::Torch),
            "gpt2" => Ok(Self::Gpt2),
            _ => Err(format!("{s:?}: expected torch or gpt2")),
        }
    }
}

impl From<InitScheme> for String {
    fn from(i: InitScheme) -> String {
        match i {
            InitScheme::Torch => "torch".into(),
            InitScheme::Gpt2 => "gpt2".into(),
            InitScheme::Checkpoint(p) => format!("{}{p}", InitScheme::CHECKPOINT),
        }
    }
}

impl TryFrom<String> for InitScheme {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.strip_prefix(Self::CHECKPOINT) {
            Some(p) => Ok(Self::Checkpoint(p.to_string())),
            None => Self::parse_scheme(&s),
        }
    }
}

/// What wrote a checkpoint (`trainer.json`'s `kind`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum RunKind {
    /// `ember-train pretrain`: `pretrain`.
    Pretrain,
    /// `ember-train import`: `import`.
    Import,
    /// `ember-train finetune instruct`: `instruct`.
    Instruct,
    /// `ember-train finetune classify`: `finetune-classify`.
    Classify,
    /// Any other name (written by another tool or a later build): kept as it is.
    Other(String),
}

impl RunKind {
    /// The name `trainer.json` holds.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Pretrain => "pretrain",
            Self::Import => "import",
            Self::Instruct => "instruct",
            Self::Classify => "finetune-classify",
            Self::Other(s) => s,
        }
    }
}

impl From<RunKind> for String {
    fn from(k: RunKind) -> String {
        k.as_str().to_string()
    }
}

impl From<String> for RunKind {
    fn from(s: String) -> Self {
        match s.as_str() {
            "pretrain" => Self::Pretrain,
            "import" => Self::Import,
            "instruct" => Self::Instruct,
            "finetune-classify" => Self::Classify,
            _ => Self::Other(s),
        }
    }
}

impl From<&str> for RunKind {
    fn from(s: &str) -> Self {
        Self::from(s.to_string())
    }
}

impl PartialEq<&str> for RunKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for RunKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A data file the run read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataRef {
    /// The path as given (`<built-in corpus>/NAME` for the built-in texts).
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Fingerprint (hex) of the bytes.
    pub hash: String,
}

/// Which tokenizer the run uses (the tokenizer itself is `tokenizer.ember`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerRef {
    /// `gpt2` (OpenAI's vocabulary), `bpe` (trained by `ember-train`), `imported` (vocab.json +
    /// merges.txt) or `none` ([`NO_TOKENIZER`]: token ids only, no `tokenizer.ember`).
    pub kind: String,
    /// Number of ids.
    pub vocab_size: usize,
    /// Fingerprint (hex) of the vocabulary.
    pub hash: String,
}

/// Random-number state. Every generator is counter-based, so these seeds plus the position
/// recreate every stream exactly: the epoch-e shuffle is `data::epoch_order(W, shuffle_seed, e)`,
/// the dropout masks of micro-batch k of step s use `Mode::Train { seed: dropout_seed(s, k) }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// Seed of the per-epoch window shuffles.
    pub shuffle_seed: u64,
    /// Seed from which every step's dropout seed is derived.
    pub dropout_seed: u64,
    /// Seed of the evaluation batch choice.
    pub eval_seed: u64,
}

/// `trainer.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// What wrote it.
    pub kind: RunKind,
    /// The model configuration.
    pub config: ConfigJson,
    /// Optimizer steps done.
    pub step: u64,
    /// Current epoch (from 0).
    pub epoch: u64,
    /// Batches of the current epoch already consumed.
    pub batch_in_epoch: usize,
    /// Training tokens consumed.
    pub tokens_seen: u64,
    /// The loss of the run's first step (for the divergence check).
    pub first_loss: Option<f32>,
    /// Seconds spent in training steps so far.
    pub train_seconds: f64,
    /// AdamW's step count (its bias correction), when there is optimizer state.
    pub adam_step: Option<u64>,
    /// RNG seeds.
    pub rng: RngState,
    /// Hyperparameters (pretraining only).
    pub hyper: Option<Hyper>,
    /// Data files.
    pub data: Vec<DataRef>,
    /// The tokenizer.
    pub tokenizer: TokenizerRef,
    /// Every evaluation so far (rewrites loss.csv on resume).
    pub history: Vec<LossRow>,
    /// Where imported weights came from.
    pub source: Option<String>,
    /// A fine-tuned classifier's head (absent for a language model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<ClassifierJson>,
    /// A model of the modern families (absent for GPT-2; `config` then holds its vocabulary,
    /// context, width, layers and heads for tools that only read those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<FamilyJson>,
    /// The checkpoint's `hf/` files (not part of `trainer.json`): [`load`] reads them, every
    /// checkpoint written with this state writes them. A state derived from a loaded one keeps
    /// them by copying this field.
    #[serde(skip)]
    pub hf: Option<HfFiles>,
}

impl TrainerState {
    /// A run of `kind` at step 0: no position, history, hyperparameters, data or source yet.
    pub fn fresh(
        kind: RunKind,
        config: GptConfig,
        rng: RngState,
        tokenizer: TokenizerRef,
    ) -> TrainerState {
        TrainerState {
            format: FORMAT.into(),
            version: VERSION,
            kind,
            config: config.into(),
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            tokens_seen: 0,
            first_loss: None,
            train_seconds: 0.0,
            adam_step: None,
            rng,
            hyper: None,
            data: Vec::new(),
            tokenizer,
            history: Vec::new(),
            source: None,
            classifier: None,
            family: None,
            hf: None,
        }
    }
}

/// A classifier checkpoint's task, as `trainer.json` records it: the model's head is
/// `out_head.weight` (K, C) + `out_head.bias` (K) with K = `labels.len()`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassifierJson {
    /// Label names, index = class id.
    pub labels: Vec<String>,
    /// `last` or `last-real`.
    pub readout: String,
    /// The padding id.
    pub pad_id: u32,
    /// The training sequence length (see `meta::Task::Classifier::length`).
    pub length: Option<u32>,
}

impl ClassifierJson {
    /// The `.ember` task it describes; an error names what is wrong.
    pub fn task(&self) -> Result<meta::Task, String> {
        if self.labels.len() < 2 {
            return Err(format!(
                "a classifier needs at least two labels, found {}",
                self.labels.len()
            ));
        }
        let readout = match self.readout.as_str() {
            "last" => meta::Readout::Last,
            "last-real" => meta::Readout::LastReal,
            other => return Err(format!("readout {other:?} is not last or last-real")),
        };
        Ok(meta::Task::Classifier {
            labels: self.labels.clone(),
            readout,
            pad_id: self.pad_id,
            length: self.length,
        })
    }
}

/// The (canonical name, shape) of every parameter tensor of a checkpoint, in buffer order: the
/// configuration's, or for a classifier the same without the language-model head, followed by
/// `out_head.weight` (K, C) and `out_head.bias` (K).
pub fn tensor_shapes(
    config: &GptConfig,
    classifier: Option<&ClassifierJson>,
) -> Vec<(String, Vec<usize>)> {
    config.tensor_shapes_with_classes(classifier.map(|c| c.labels.len()))
}

/// A checkpoint read back.
#[derive(Debug)]
pub struct Loaded {
    /// The step directory read.
    pub dir: PathBuf,
    /// `trainer.json`.
    pub state: TrainerState,
    /// The validated configuration (for a family checkpoint, only its common fields).
    pub config: GptConfig,
    /// The configuration of a modern-family model (Llama, Qwen, Gemma 3); `None` for GPT-2.
    pub family: Option<ModelConfig>,
    /// Parameters (N), canonical order.
    pub params: Vec<f32>,
    /// AdamW moments (m, v), when asked for and present.
    pub moments: Option<(Vec<f32>, Vec<f32>)>,
    /// The tokenizer; `None` for a checkpoint imported without one (token ids only).
    pub tokenizer: Option<Tokenizer>,
}

impl Loaded {
    /// An error for commands that read GPT-2 checkpoints only (`what`), when this one holds a
    /// model of the modern families.
    pub fn gpt2_only(&self, what: &str) -> Result<(), String> {
        match &self.family {
            None => Ok(()),
            Some(c) => Err(format!(
                "{what}: {} holds a {} model; {what} reads GPT-2 checkpoints only (export it \
                 with `ember-train export`, or resume it with `pretrain --resume`)",
                self.dir.display(),
                c.arch.name()
            )),
        }
    }

    /// The tokenizer of a command that reads or writes text (`what`, e.g. `finetune classify`);
    /// an error saying how to get one when the checkpoint has none.
    pub fn text_tokenizer(&self, what: &str) -> Result<&Tokenizer, String> {
        self.tokenizer.as_ref().ok_or_else(|| {
            format!(
                "{}: this checkpoint has no tokenizer (it was imported without vocab.json and \
                 merges.txt), so `{what}` cannot turn text into tokens; put the model's vocab.json \
                 and merges.txt beside the weights and import it again, or use the exported model \
                 with token ids (ember generate --tokens, ember score --tokens)",
                self.dir.display()
            )
        })
    }
}

/// The step directory that `path` designates: `path` itself when it holds `trainer.json`;
/// else the target of `path/latest`; else of `path/checkpoints/latest`.
pub fn resolve(path: &Path) -> Result<PathBuf, CheckpointError> {
    if path.join(STATE_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    for dir in [path.to_path_buf(), path.join("checkpoints")] {
        let pointer = dir.join("latest");
        if pointer.is_file() {
            let name = std::fs::read_to_string(&pointer).map_err(io_err(&pointer))?;
            let name = name.trim();
            if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
                return Err(corrupt(&pointer, format!("bad step name {name:?}")));
            }
            let target = dir.join(name);
            if !target.join(STATE_FILE).is_file() {
                return Err(corrupt(
                    &pointer,
                    format!("points to {name:?}, which has no {STATE_FILE}"),
                ));
            }
            return Ok(target);
        }
    }
    Err(CheckpointError::NotACheckpoint {
        path: path.to_path_buf(),
    })
}

/// Writes a tokenizer as a metadata-only `.ember` file, atomically.
pub fn write_tokenizer_file(path: &Path, tok: &Tokenizer) -> Result<u64, CheckpointError> {
    let mut w = EmberWriter::new();
    meta::put_tokenizer(&mut w, tok).map_err(|e| corrupt(path, e.to_string()))?;
    w.write_file(path, |_, _, _| Ok(()))
        .map_err(|e| corrupt(path, e.to_string()))
}

/// Reads the tokenizer of a `.ember` file (a tokenizer file or a model).
pub fn read_tokenizer_file(path: &Path) -> Result<Tokenizer, CheckpointError> {
    if path.is_dir() {
        return Err(CheckpointError::Io {
            path: path.to_path_buf(),
            reason: "is a directory, expected a .ember tokenizer file".into(),
        });
    }
    if let Some(kind) = crate::data::device_kind(path) {
        return Err(CheckpointError::Io {
            path: path.to_path_buf(),
            reason: format!("is a {kind}, expected a .ember tokenizer file"),
        });
    }
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let header = parse_header(&bytes).map_err(|e| corrupt(path, e.to_string()))?;
    meta::get_tokenizer(&header)
        .map_err(|e| corrupt(path, e.to_string()))?
        .ok_or_else(|| {
            corrupt(
                path,
                "the file holds no tokenizer (no tokenizer.* metadata)",
            )
        })
}

/// What a checkpoint directory receives.
#[derive(Debug)]
pub struct Contents<'a> {
    /// `trainer.json`.
    pub state: &'a TrainerState,
    /// (canonical name, shape) of every tensor, in canonical order, covering `params`.
    pub shapes: &'a [(String, Vec<usize>)],
    /// Parameters (N).
    pub params: &'a [f32],
    /// AdamW moments (m, v), each N.
    pub moments: Option<(&'a [f32], &'a [f32])>,
    /// The tokenizer.
    pub tokenizer: &'a Tokenizer,
}

fn f32_view<'a>(
    path: &Path,
    shape: Vec<usize>,
    data: &'a [f32],
) -> Result<TensorView<'a>, CheckpointError> {
    TensorView::new(Dtype::F32, shape, bytemuck::cast_slice(data))
        .map_err(|e| corrupt(path, e.to_string()))
}

fn write_safetensors(
    path: &Path,
    tensors: Vec<(String, TensorView<'_>)>,
) -> Result<(), CheckpointError> {
    safetensors::serialize_to_file(tensors, None, path).map_err(|e| CheckpointError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))
}

/// Writes a complete checkpoint directory at `dir`: first under a temporary name beside it,
/// every file fsynced, then renamed into place (an existing `dir` is replaced only once the new
/// one is complete).
pub fn write_dir(dir: &Path, c: &Contents<'_>) -> Result<(), CheckpointError> {
    write_dir_parts(dir, c, Some(c.tokenizer))
}

/// [`write_dir`] with an optional tokenizer (`c.tokenizer` is then ignored): a model imported
/// without one works with token ids only.
pub fn write_dir_parts(
    dir: &Path,
    c: &Contents<'_>,
    tokenizer: Option<&Tokenizer>,
) -> Result<(), CheckpointError> {
    write_dir_with(dir, c.state, tokenizer, c.moments, |model| {
        // Parameters, split into their canonical tensors.
        let mut views = Vec::with_capacity(c.shapes.len());
        let mut off = 0usize;
        for (n, shape) in c.shapes {
            let len: usize = shape.iter().product();
            let data = c
                .params
                .get(off..off + len)
                .ok_or_else(|| corrupt(model, format!("parameters end before tensor {n}")))?;
            views.push((n.clone(), f32_view(model, shape.clone(), data)?));
            off += len;
        }
        if off != c.params.len() {
            return Err(corrupt(
                model,
                format!("{} parameters but the tensors cover {off}", c.params.len()),
            ));
        }
        write_safetensors(model, views)
    })
}

/// Like [`write_dir`], but `write_model(path)` writes `model.safetensors` itself (canonical names,
/// f32) — e.g. `import::import_to_safetensors`, which streams tensor by tensor so that a large
/// model is never held in memory. No optimizer state.
pub fn write_dir_streamed(
    dir: &Path,
    state: &TrainerState,
    tokenizer: Option<&Tokenizer>,
    write_model: impl FnOnce(&Path) -> Result<(), CheckpointError>,
) -> Result<(), CheckpointError> {
    write_dir_with(dir, state, tokenizer, None, write_model)
}

fn write_dir_with(
    dir: &Path,
    state: &TrainerState,
    tokenizer: Option<&Tokenizer>,
    moments: Option<(&[f32], &[f32])>,
    write_model: impl FnOnce(&Path) -> Result<(), CheckpointError>,
) -> Result<(), CheckpointError> {
    if cfg!(target_endian = "big") {
        return Err(corrupt(dir, "checkpoints are written little-endian only"));
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dir
        .file_name()
        .ok_or_else(|| corrupt(dir, "the path has no directory name"))?
        .to_string_lossy()
        .into_owned();
    std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    // What crashed writers of this directory left behind.
    for prefix in [format!(".{name}.tmp-"), format!(".{name}.old-")] {
        emberlm_formats::ember::remove_dead_temporaries(&parent, &prefix, "");
    }
    let result = (|| {
        std::fs::create_dir(&tmp).map_err(io_err(&tmp))?;
        write_model(&tmp.join(MODEL_FILE))?;
        if let Some((m, v)) = moments {
            let opt = tmp.join(OPTIMIZER_FILE);
            let views = vec![
                ("m".to_string(), f32_view(&opt, vec![m.len()], m)?),
                ("v".to_string(), f32_view(&opt, vec![v.len()], v)?),
            ];
            write_safetensors(&opt, views)?;
        }
        if let Some(t) = tokenizer {
            write_tokenizer_file(&tmp.join(TOKENIZER_FILE), t)?;
        }
        if let Some(h) = &state.hf {
            h.write(&tmp.join(HF_DIR))?;
        }
        let json = serde_json::to_vec_pretty(state)
            .map_err(|e| corrupt(&tmp.join(STATE_FILE), e.to_string()))?;
        let state_path = tmp.join(STATE_FILE);
        write_atomically(&state_path, |w| w.write_all(&json)).map_err(io_err(&state_path))?;
        sync_dir(&tmp);
        // Swap into place. Where the OS exchanges two paths atomically, a crash at any moment
        // leaves `dir` complete (old or new); `tmp` then holds the old one, removed after.
        let had_old = dir.exists();
        if had_old && exchange(&tmp, dir).is_ok() {
            sync_dir(&parent);
            let _ = std::fs::remove_dir_all(&tmp);
            return Ok(());
        }
        // Elsewhere the old directory goes aside first (a crash between the two renames leaves
        // it complete under `.NAME.old-PID`).
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        if had_old {
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(dir, &old).map_err(io_err(dir))?;
        }
        std::fs::rename(&tmp, dir).map_err(io_err(dir))?;
        sync_dir(&parent);
        if had_old {
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Exchanges the directories `a` and `b` atomically (Linux `renameat2(RENAME_EXCHANGE)`); an
/// error where the OS or the file system cannot.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use nix::fcntl::{RenameFlags, renameat2};
    // Relative paths resolve against the working directory, absolute ones ignore it.
    let cwd = std::fs::File::open(".")?;
    renameat2(&cwd, a, &cwd, b, RenameFlags::RENAME_EXCHANGE).map_err(std::io::Error::from)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

fn sync_dir(dir: &Path) {
    // Not every platform can open a directory for fsync; best effort.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Saves a training checkpoint of `out_dir`'s run at `state.step`:
/// `out_dir/checkpoints/step-NNNNNNNN/`, then `latest` → it, then older step directories are
/// removed. Returns the step directory.
pub fn save_run(out_dir: &Path, c: &Contents<'_>) -> Result<PathBuf, CheckpointError> {
    let root = out_dir.join("checkpoints");
    let name = format!("step-{:08}", c.state.step);
    let dir = root.join(&name);
    write_dir(&dir, c)?;
    let pointer = root.join("latest");
    write_atomically(&pointer, |w| writeln!(w, "{name}")).map_err(io_err(&pointer))?;
    // An older step directory is first renamed to a hidden name and only then removed: a crash
    // halfway through a removal must never leave a `step-*` directory that looks like a
    // checkpoint but misses files. Hidden leftovers of an earlier crash (temporaries of
    // `write_dir` and `write_atomically`, half-removed directories) go too.
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("step-") && n != name {
                let trash = root.join(format!(".trash-{n}-{}", std::process::id()));
                if std::fs::rename(e.path(), &trash).is_ok() {
                    let _ = std::fs::remove_dir_all(&trash);
                }
            } else if n.starts_with(".trash-")
                || (n.starts_with(".step-") && (n.contains(".tmp-") || n.contains(".old-")))
                || n.starts_with(".latest.tmp-")
            {
                let p = e.path();
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
        }
    }
    Ok(dir)
}

/// Reads the f32 tensors `shapes` (in order) from a safetensors file into one flat buffer.
fn read_flat(path: &Path, shapes: &[(String, Vec<usize>)]) -> Result<Vec<f32>, CheckpointError> {
    let map = MappedFile::open(path).map_err(|e| corrupt(path, e.to_string()))?;
    let st = SafeTensors::deserialize(map.bytes())
        .map_err(|e| corrupt(path, format!("not a valid safetensors file: {e}")))?;
    let total: usize = shapes
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    let mut out = Vec::with_capacity(total);
    for (name, shape) in shapes {
        let t = st
            .tensor(name)
            .map_err(|_| corrupt(path, format!("tensor {name:?} is missing")))?;
        if t.dtype() != Dtype::F32 {
            return Err(corrupt(
                path,
                format!("tensor {name:?} is {:?}, expected F32", t.dtype()),
            ));
        }
        if t.shape() != shape.as_slice() {
            return Err(corrupt(
                path,
                format!(
                    "tensor {name:?} has shape {:?}, expected {shape:?}",
                    t.shape()
                ),
            ));
        }
        out.extend(
            t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    }
    Ok(out)
}

/// `dir/trainer.json`, checked to be of this build's format and version.
fn read_state(dir: &Path) -> Result<TrainerState, CheckpointError> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(io_err(&state_path))?;
    let state: TrainerState =
        serde_json::from_str(&text).map_err(|e| corrupt(&state_path, e.to_string()))?;
    if state.format != FORMAT || state.version != VERSION {
        return Err(corrupt(
            &state_path,
            format!(
                "format {:?} version {} (this build reads {FORMAT:?} version {VERSION})",
                state.format, state.version
            ),
        ));
    }
    Ok(state)
}

/// Reads the checkpoint `path` designates (see [`resolve`]); the AdamW moments too when
/// `with_optimizer` (an error if they are missing).
pub fn load(path: &Path, with_optimizer: bool) -> Result<Loaded, CheckpointError> {
    let dir = resolve(path)?;
    let state_path = dir.join(STATE_FILE);
    let mut state = read_state(&dir)?;
    state.hf = HfFiles::read(&dir.join(HF_DIR))?;
    let config = GptConfig::from(state.config);
    let family = match &state.family {
        Some(f) => Some(
            f.config()
                .map_err(|e| corrupt(&state_path, format!("family: {e}")))?,
        ),
        None => {
            config
                .validate()
                .map_err(|e| corrupt(&state_path, format!("config: {e}")))?;
            None
        }
    };
    if let Some(c) = &state.classifier {
        c.task()
            .map_err(|e| corrupt(&state_path, format!("classifier: {e}")))?;
    }
    let shapes = match &family {
        // A family classifier's (K, C) head and (K) bias replace the language-model head.
        Some(c) => {
            emberlm_formats::arch::tensors(c, state.classifier.as_ref().map(|k| k.labels.len()))
                .into_iter()
                .map(|t| (t.name, t.shape))
                .collect()
        }
        None => tensor_shapes(&config, state.classifier.as_ref()),
    };
    let params = read_flat(&dir.join(MODEL_FILE), &shapes)?;
    let moments = if with_optimizer {
        let opt = dir.join(OPTIMIZER_FILE);
        if !opt.is_file() {
            return Err(corrupt(
                &dir,
                format!(
                    "no {OPTIMIZER_FILE}: this checkpoint cannot resume training (use --init to start from its weights)"
                ),
            ));
        }
        let n = params.len();
        let shapes = [("m".to_string(), vec![n]), ("v".to_string(), vec![n])];
        let mut mv = read_flat(&opt, &shapes)?;
        let v = mv.split_off(n);
        Some((mv, v))
    } else {
        None
    };
    let tok_path = dir.join(TOKENIZER_FILE);
    // Only a checkpoint that says it has no tokenizer may lack the file.
    let tokenizer = if state.tokenizer.kind == NO_TOKENIZER && !tok_path.exists() {
        None
    } else {
        Some(read_tokenizer_file(&tok_path)?)
    };
    if let Some(t) = tokenizer
        .as_ref()
        .filter(|t| t.vocab_size() > config.vocab_size)
    {
        return Err(corrupt(
            &tok_path,
            format!(
                "the tokenizer has {} ids but the model only {}",
                t.vocab_size(),
                config.vocab_size
            ),
        ));
    }
    Ok(Loaded {
        dir,
        state,
        config,
        family,
        params,
        moments,
        tokenizer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> GptConfig {
        GptConfig {
            vocab_size: 300,
            context_length: 8,
            dim: 8,
            n_layers: 1,
            n_heads: 2,
            qkv_bias: false,
            tied_head: false,
        }
    }

    fn state(cfg: GptConfig, step: u64) -> TrainerState {
        TrainerState {
            format: FORMAT.into(),
            version: VERSION,
            kind: "pretrain".into(),
            config: cfg.into(),
            step,
            epoch: 0,
            batch_in_epoch: 3,
            tokens_seen: 100,
            first_loss: Some(5.0),
            train_seconds: 1.0,
            adam_step: Some(step),
            rng: RngState {
                shuffle_seed: 1,
                dropout_seed: 2,
                eval_seed: 3,
            },
            hyper: None,
            data: vec![],
            tokenizer: TokenizerRef {
                kind: "bpe".into(),
                vocab_size: 300,
                hash: "0".into(),
            },
            history: vec![],
            source: None,
            classifier: None,
            family: None,
            hf: None,
        }
    }

    /// `trainer.json` as the trainer wrote it before its settings became enums (a cosine
    /// pretraining run; a classifier fine-tuned from a `gpt2`-initialised one): the strings
    /// load as the typed settings and are written back unchanged.
    #[test]
    fn trainer_json_with_string_settings_still_loads() {
        let pretrain = r#"{"format": "emberlm-checkpoint", "version": 1, "kind": "pretrain",
          "config": {"vocab_size": 50257, "context_length": 32, "dim": 32, "n_layers": 1,
            "n_heads": 2, "qkv_bias": false, "tied_head": false},
          "step": 30, "epoch": 3, "batch_in_epoch": 6, "tokens_seen": 15360,
          "first_loss": 11.017382, "train_seconds": 3.429309103, "adam_step": 30,
          "rng": {"shuffle_seed": 10010104756840111039, "dropout_seed": 10072659284908886927,
            "eval_seed": 1695096617979702666},
          "hyper": {"batch": 8, "context": 32, "stride": 32, "lr": 0.0004, "schedule": "cosine",
            "initial_lr": 0.00003, "min_lr": 0.000001, "warmup_steps": 5, "weight_decay": 0.1,
            "decay_2d_only": false, "clip": 1.0, "grad_accum": 2, "dropout": 0.1, "seed": 123,
            "eval_every": 7, "eval_batches": 5, "prompt": "Every effort moves you",
            "sample_tokens": 50, "total_steps": 30, "init": "torch"},
          "data": [{"path": "/work/shared/data/the-verdict.txt", "bytes": 20479,
            "hash": "9a23f2adcf15be65"}],
          "tokenizer": {"kind": "gpt2", "vocab_size": 50257, "hash": "7e4f74b727c11fbc"},
          "history": [{"step": 1, "epoch": 1, "tokens_seen": 512, "lr": 0.00003,
            "train_loss": 10.977043, "val_loss": 10.99408}],
          "source": null}"#;
        let st: TrainerState = serde_json::from_str(pretrain).unwrap();
        assert_eq!(st.kind, RunKind::Pretrain);
        let h = st.hyper.as_ref().unwrap();
        assert_eq!(
            (h.schedule, &h.init),
            (Schedule::Cosine, &InitScheme::Torch)
        );
        let back: serde_json::Value = serde_json::to_value(&st).unwrap();
        assert_eq!(back["kind"], "pretrain");
        assert_eq!(back["hyper"]["schedule"], "cosine");
        assert_eq!(back["hyper"]["init"], "torch");

        let classify = pretrain
            .replace(r#""kind": "pretrain""#, r#""kind": "finetune-classify""#)
            .replace(r#""schedule": "cosine""#, r#""schedule": "constant""#)
            .replace(r#""init": "torch""#, r#""init": "checkpoint:runs/a b""#);
        let st: TrainerState = serde_json::from_str(&classify).unwrap();
        assert_eq!(st.kind, RunKind::Classify);
        let h = st.hyper.as_ref().unwrap();
        assert_eq!(h.schedule, Schedule::Constant);
        assert_eq!(h.init, InitScheme::Checkpoint("runs/a b".into()));
        let back: serde_json::Value = serde_json::to_value(&st).unwrap();
        assert_eq!(back["kind"], "finetune-classify");
        assert_eq!(back["hyper"]["init"], "checkpoint:runs/a b");
        for (kind, want) in [
            ("import", RunKind::Import),
            ("instruct", RunKind::Instruct),
            ("test", RunKind::Other("test".into())),
        ] {
            let st: TrainerState = serde_json::from_str(
                &pretrain.replace(r#""kind": "pretrain""#, &format!("\"kind\": \"{kind}\"")),
            )
            .unwrap();
            assert_eq!(st.kind, want);
            assert_eq!(serde_json::to_value(&st).unwrap()["kind"], kind);
        }
        // A setting this build does not know is an error naming it, not a silent default.
        let bad = pretrain.replace(r#""schedule": "cosine""#, r#""schedule": "linear""#);
        let e = serde_json::from_str::<TrainerState>(&bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("linear"), "{e}");
        let bad = pretrain.replace(r#""init": "torch""#, r#""init": "xavier""#);
        let e = serde_json::from_str::<TrainerState>(&bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("xavier"), "{e}");
    }

    #[test]
    fn constant_schedule_is_the_peak_after_warmup() {
        let c = LrSchedule {
            initial_lr: 1e-5,
            peak_lr: 1e-3,
            min_lr: 1e-3,
            warmup_steps: 0,
            total_steps: 0,
        };
        assert_eq!((c.lr(0), c.lr(7), c.lr(1000)), (1e-3, 1e-3, 1e-3));
    }

    #[test]
    fn save_load_round_trip_and_latest_pointer() {
        let tmp = tempfile::Builder::new()
            .prefix("emberlm-ckpt-")
            .tempdir()
            .unwrap();
        let out = tmp.path().join("run");
        let cfg = tiny();
        let n = cfg.param_count();
        let params: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
        let m: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let v: Vec<f32> = (0..n).map(|i| (i * 2) as f32).collect();
        let tok = emberlm_formats::tokenizer::train_bpe(
            &["hello hello world world hello"],
            260,
            &Default::default(),
        )
        .unwrap();
        let shapes = cfg.tensor_shapes();
        for step in [5u64, 9] {
            let st = state(cfg, step);
            let c = Contents {
                state: &st,
                shapes: &shapes,
                params: &params,
                moments: Some((&m, &v)),
                tokenizer: &tok,
            };
            save_run(&out, &c).unwrap();
        }
        // Only the newest step directory remains, and every path form finds it.
        let steps: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("step-"))
            .collect();
        assert_eq!(steps, vec!["step-00000009".to_string()]);
        let want = out.join("checkpoints/step-00000009");
        assert_eq!(resolve(&out).unwrap(), want);
        assert_eq!(resolve(&out.join("checkpoints")).unwrap(), want);
        assert_eq!(resolve(&want).unwrap(), want);
        let l = load(&out, true).unwrap();
        assert_eq!(l.state.step, 9);
        assert_eq!(l.params, params);
        assert_eq!(l.moments, Some((m, v)));
        assert_eq!(l.tokenizer.as_ref().unwrap().to_parts(), tok.to_parts());
        assert_eq!(l.config, cfg);
        // A missing optimizer file is an error only when asked for.
        std::fs::remove_file(want.join(OPTIMIZER_FILE)).unwrap();
        assert!(load(&out, false).is_ok());
        assert!(matches!(
            load(&out, true),
            Err(CheckpointError::Corrupt { .. })
        ));
        // A wrong shape is named.
        let bad = GptConfig { dim: 4, ..cfg };
        let mut st = state(bad, 1);
        st.config = bad.into();
        std::fs::write(want.join(STATE_FILE), serde_json::to_vec(&st).unwrap()).unwrap();
        let e = load(&want, false).unwrap_err().to_string();
        assert!(
            e.contains("tok_emb.weight") && e.contains("expected [300, 4]"),
            "{e}"
        );
        assert!(matches!(
            resolve(&out.join("nothing-here")),
            Err(CheckpointError::NotACheckpoint { .. })
        ));
        // A Hugging Face directory given where a checkpoint belongs: the error says to import.
        let hf = out.join("hf-model");
        std::fs::create_dir_all(&hf).unwrap();
        let e = resolve(&hf).unwrap_err().to_string();
        assert!(!e.contains("ember-train import"), "{e}");
        std::fs::write(hf.join("config.json"), "{}").unwrap();
        std::fs::write(hf.join("model.safetensors"), "").unwrap();
        let e = resolve(&hf).unwrap_err().to_string();
        assert!(e.contains("ember-train import --from"), "{e}");
    }

    #[test]
    fn write_dir_replaces_a_directory_and_leaves_nothing_hidden() {
        let tmp = tempfile::Builder::new()
            .prefix("emberlm-ckpt-swap-")
            .tempdir()
            .unwrap();
        let out = tmp.path().join("run");
        let cfg = tiny();
        let shapes = cfg.tensor_shapes();
        let tok =
            emberlm_formats::tokenizer::train_bpe(&["ab ab"], 258, &Default::default()).unwrap();
        let dir = out.join("ckpt");
        for (step, value) in [(1u64, 0.25f32), (2, -4.0)] {
            let st = state(cfg, step);
            let params = vec![value; cfg.param_count()];
            let c = Contents {
                state: &st,
                shapes: &shapes,
                params: &params,
                moments: None,
                tokenizer: &tok,
            };
            write_dir(&dir, &c).unwrap();
            let l = load(&dir, false).unwrap();
            assert_eq!((l.state.step, l.params), (step, params));
        }
        let names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["ckpt"]);
    }

    #[test]
    fn family_configs_survive_trainer_json_exactly() {
        for name in [
            "smollm2-135m",
            "smollm2-360m",
            "qwen2.5-0.5b",
            "qwen3-0.6b",
            "llama3.2-1b",
            "gemma3-270m",
        ] {
            let c = ModelConfig::preset(name).unwrap();
            let j = FamilyJson::of(&c).unwrap();
            let text = serde_json::to_string(&j).unwrap();
            let back: FamilyJson = serde_json::from_str(&text).unwrap();
            assert_eq!(back.config().unwrap(), c, "{name}: {text}");
        }
        // Llama 3.2's frequency scaling is what this preset adds over SmolLM2: it must travel.
        let l = FamilyJson::of(&ModelConfig::preset("llama3.2-1b").unwrap()).unwrap();
        assert!(matches!(
            l.rope_scaling,
            Some(RopeScalingJson::Llama3 { .. })
        ));
        assert!(FamilyJson::of(&ModelConfig::preset("gpt2-124m").unwrap()).is_none());
    }
}
