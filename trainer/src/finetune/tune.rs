//! What fine-tuning trains: a subset of the model (`--trainable`) or LoRA adapters
//! (`--lora-rank`, `--lora-alpha`; the book's appendix E), and the optimizer step over it.
//!
//! Letters: O output features, I input features of a linear layer (its weight is (O, I)), R the
//! LoRA rank, L layers, C channels, K classes.
//!
//! **Subsets.** The canonical parameter order is embeddings, blocks 0..L, final norm, head, so
//! "the last N blocks + final norm + head" and "the head" are each one contiguous range of the flat
//! buffer: AdamW runs over that range only, and [`Gpt::grad_from_layer`] skips the backward of
//! everything below it.
//!
//! **LoRA.** Each adapted weight W (O, I) becomes W0 + s·B·A with A (R, I), B (O, R), s = α/R
//! (the LoRA paper's scaling; the book's code multiplies by α alone, so its α = 16 at R = 16 is our
//! α = 256). A starts U(±1/√I), B at zero, so training starts from the base model exactly. The
//! model's parameter buffer always holds the *merged* weights: forward and backward run unchanged
//! and produce dW, and the chain rule through the merge gives the adapters' gradients
//! dB = s·dW·Aᵀ and dA = s·Bᵀ·dW. After the AdamW step the merge is redone from the saved W0. The
//! exported model is therefore the merged one, with no adapter code in the runtime. Every other
//! parameter (biases, norms, embeddings, and the classifier head itself) stays frozen, as in the
//! book, where `replace_linear_with_lora` wraps every `nn.Linear` of a frozen model. The fused
//! (3C, C) query/key/value weight gets three adapters, one per (C, C) block, because the book's
//! model has three separate linear layers there: this is what gives its 2,666,528 trainable
//! parameters for the 124M classifier at rank 16.
//!
//! **Direct LoRA (the modern families).** Merging costs a full-size gradient buffer, a second
//! copy of every adapted W0 and the full dW products. A model that can run the adapters itself
//! ([`Tunable::attach_lora`]: [`FamilyModel`]) takes them instead: its parameters stay W0, its
//! forward adds s·(x·Aᵀ)·Bᵀ, its backward computes only dA and dB (see [`crate::family::Lora`]),
//! and [`Tuner::finish`] merges once at the end so that checkpoints and the export hold the
//! merged model as before. GPT-2 keeps the merging path. [`Tuner::merged`] forces merging on any
//! model: the reference the direct path is tested against.

use crate::adamw::{AdamW, AdamWConfig, AdamWError, DecayMask};
use crate::family::{FamilyModel, Lora, LoraAdapter};
use crate::gemm::{MatMut, MatRef, Parallelism, matmul};
use crate::layers::dropout::mix64;
use crate::model::{Gpt, TensorInfo, tensor_layout};
use emberlm_formats::arch::Role;
use emberlm_formats::config::GptConfig;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// Which parameters train (without LoRA).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trainable {
    /// The output head only (for a tied language model: the token embedding, as its head).
    Head,
    /// The last N blocks, the final norm and the head (`last-block` = 1: the book's chapter 6).
    LastBlocks(usize),
    /// Everything.
    All,
}

impl FromStr for Trainable {
    type Err = TuneError;

    /// `head`, `last-block`, `last-N` (N ≥ 1) or `all`.
    fn from_str(s: &str) -> Result<Self, TuneError> {
        match s {
            "head" => Ok(Trainable::Head),
            "last-block" => Ok(Trainable::LastBlocks(1)),
            "all" => Ok(Trainable::All),
            _ => match s.strip_prefix("last-").map(str::parse::<usize>) {
                Some(Ok(n)) if n >= 1 => Ok(Trainable::LastBlocks(n)),
                _ => Err(TuneError::BadTrainable(s.to_string())),
            },
        }
    }
}

impl fmt::Display for Trainable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trainable::Head => f.write_str("head"),
            Trainable::LastBlocks(1) => f.write_str("last-block"),
            Trainable::LastBlocks(n) => write!(f, "last-{n}"),
            Trainable::All => f.write_str("all"),
        }
    }
}

/// Which linear layers get LoRA adapters, by what they do (the architecture's roles), so one
/// set names the same layers of GPT-2 and of the modern families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraTargets {
    /// The query projection (GPT-2: the first C rows of the fused query/key/value weight).
    pub q: bool,
    /// The key projection.
    pub k: bool,
    /// The value projection.
    pub v: bool,
    /// The attention output projection.
    pub o: bool,
    /// The gate of a gated feed-forward (SwiGLU/GeGLU; GPT-2 has none).
    pub gate: bool,
    /// The feed-forward expansion (GPT-2's `fc`, C → 4C; the families' `up`).
    pub up: bool,
    /// The feed-forward projection back to C (GPT-2's `ff.proj`, the families' `down`).
    pub down: bool,
    /// The output head (an untied language-model head or a classifier head).
    pub head: bool,
    /// The token embedding (V, C), as a lookup table (not in `all`: the book adapts linear
    /// layers only). With a tied language-model head this also adapts the head.
    pub emb: bool,
}

impl LoraTargets {
    /// Every linear layer (the book's `replace_linear_with_lora`).
    pub const ALL: LoraTargets = LoraTargets {
        q: true,
        k: true,
        v: true,
        o: true,
        gate: true,
        up: true,
        down: true,
        head: true,
        emb: false,
    };

    /// No layer.
    pub const NONE: LoraTargets = LoraTargets {
        q: false,
        k: false,
        v: false,
        o: false,
        gate: false,
        up: false,
        down: false,
        head: false,
        emb: false,
    };

    /// Whether a matrix of `role` gets an adapter.
    pub fn selects(&self, role: Role) -> bool {
        match role {
            Role::Q => self.q,
            Role::K => self.k,
            Role::V => self.v,
            Role::AttnOut => self.o,
            Role::MlpGate => self.gate,
            Role::MlpUp => self.up,
            Role::MlpDown => self.down,
            Role::Head => self.head,
            Role::TokEmb => self.emb,
            _ => false,
        }
    }
}

impl FromStr for LoraTargets {
    type Err = TuneError;

    /// `all`, or a comma-separated list of layer names, in the book's words or Hugging Face's
    /// (PEFT's `target_modules`): `q`/`q_proj`, `k`/`k_proj`, `v`/`v_proj`, `qkv` (all three),
    /// `o`/`o_proj`/`proj` (attention output), `gate`/`gate_proj`, `up`/`up_proj`, `fc` (gate and
    /// up: GPT-2's expansion), `down`/`down_proj`/`ff-proj`, `head`/`lm_head`,
    /// `emb`/`embed_tokens` (the token embedding) and `all` (so `all,emb` is every linear layer
    /// and the embedding).
    fn from_str(s: &str) -> Result<Self, TuneError> {
        let mut t = LoraTargets::NONE;
        for part in s.split(',') {
            match part.trim() {
                "q" | "q_proj" => t.q = true,
                "k" | "k_proj" => t.k = true,
                "v" | "v_proj" => t.v = true,
                "qkv" => (t.q, t.k, t.v) = (true, true, true),
                "o" | "o_proj" | "proj" => t.o = true,
                "gate" | "gate_proj" => t.gate = true,
                "up" | "up_proj" => t.up = true,
                "fc" => (t.gate, t.up) = (true, true),
                "down" | "down_proj" | "ff-proj" => t.down = true,
                "head" | "lm_head" => t.head = true,
                "emb" | "embed_tokens" => t.emb = true,
                "all" => {
                    t = LoraTargets {
                        emb: t.emb,
                        ..LoraTargets::ALL
                    };
                }
                _ => return Err(TuneError::BadLoraTargets(s.to_string())),
            }
        }
        Ok(t)
    }
}

/// What the [`Tuner`] needs of a model: its tensors (roles, names, shapes and places in the flat
/// buffer, in buffer order: embeddings, blocks 0..L, final norm, head), its flat parameters and
/// gradients, and where its backward may stop.
pub trait Tunable {
    /// Every tensor, in buffer order.
    fn tensor_infos(&self) -> Vec<TensorInfo>;
    /// L.
    fn n_layers(&self) -> usize;
    /// The flat parameters.
    fn params(&self) -> &[f32];
    /// The flat parameters, writable.
    fn params_mut(&mut self) -> &mut [f32];
    /// Parameters (writable) and gradients together.
    fn params_and_grads(&mut self) -> (&mut [f32], &[f32]);
    /// The backward pass may skip the blocks below `layer` (a model that always runs the whole
    /// backward ignores this).
    fn set_grad_from_layer(&mut self, layer: usize);
    /// Takes LoRA adapters to run directly (unmerged); a model that cannot hands them back.
    fn attach_lora(&mut self, lora: Lora) -> Result<(), Lora> {
        Err(lora)
    }
    /// The directly-run adapters, when attached.
    fn lora_mut(&mut self) -> Option<&mut Lora> {
        None
    }
    /// Merges the directly-run adapters into the weights and detaches them.
    fn merge_lora(&mut self) {}
}

impl Tunable for Gpt {
    fn tensor_infos(&self) -> Vec<TensorInfo> {
        self.tensors().to_vec()
    }
    fn n_layers(&self) -> usize {
        self.config().n_layers
    }
    fn params(&self) -> &[f32] {
        Gpt::params(self)
    }
    fn params_mut(&mut self) -> &mut [f32] {
        Gpt::params_mut(self)
    }
    fn params_and_grads(&mut self) -> (&mut [f32], &[f32]) {
        Gpt::params_and_grads(self)
    }
    fn set_grad_from_layer(&mut self, layer: usize) {
        self.grad_from_layer = layer;
    }
}

impl Tunable for FamilyModel {
    fn tensor_infos(&self) -> Vec<TensorInfo> {
        FamilyModel::tensor_infos(self)
    }
    fn n_layers(&self) -> usize {
        self.config().n_layers
    }
    fn params(&self) -> &[f32] {
        FamilyModel::params(self)
    }
    fn params_mut(&mut self) -> &mut [f32] {
        FamilyModel::params_mut(self)
    }
    fn params_and_grads(&mut self) -> (&mut [f32], &[f32]) {
        FamilyModel::params_and_grads(self)
    }
    fn set_grad_from_layer(&mut self, _layer: usize) {}
    fn attach_lora(&mut self, lora: Lora) -> Result<(), Lora> {
        if self.check_lora(&lora).is_err() {
            return Err(lora);
        }
        // Checked just above: attaching cannot fail.
        let _ = FamilyModel::attach_lora(self, lora);
        Ok(())
    }
    fn lora_mut(&mut self) -> Option<&mut Lora> {
        FamilyModel::lora_mut(self)
    }
    fn merge_lora(&mut self) {
        FamilyModel::merge_lora(self);
    }
}

/// LoRA hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraSpec {
    /// R (≥ 1).
    pub rank: usize,
    /// α: the update is scaled by α/R.
    pub alpha: f32,
    /// Which layers get adapters.
    pub targets: LoraTargets,
}

/// What to train and how.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TuneOptions {
    /// The subset (ignored with LoRA, which freezes every base parameter).
    pub trainable: Trainable,
    /// LoRA instead of a subset.
    pub lora: Option<LoraSpec>,
    /// AdamW's decoupled weight decay (the book: 0.1), on every trained parameter.
    pub weight_decay: f32,
    /// Seed of the adapters' initialisation.
    pub seed: u64,
}

/// Why a fine-tuning setup or step failed.
#[derive(Clone, Debug, PartialEq)]
pub enum TuneError {
    /// `--trainable` is not one of the accepted forms.
    BadTrainable(String),
    /// `--lora-targets` is not one of the accepted forms.
    BadLoraTargets(String),
    /// `last-N` asks for more blocks than the model has.
    TooManyBlocks {
        /// N.
        asked: usize,
        /// L.
        layers: usize,
    },
    /// The LoRA rank is 0 or larger than the adapted layers' inputs.
    BadRank {
        /// R.
        rank: usize,
        /// The smallest I among the adapted layers.
        max: usize,
    },
    /// α is not a finite positive number.
    BadAlpha(f32),
    /// The targets select no layer (e.g. only `head` on a tied language model).
    NoAdapters,
    /// The optimizer refused the step.
    Optimizer(AdamWError),
}

impl fmt::Display for TuneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TuneError::BadTrainable(s) => write!(
                f,
                "--trainable {s:?}: expected head, last-block, last-N (N ≥ 1) or all"
            ),
            TuneError::BadLoraTargets(s) => write!(
                f,
                "--lora-targets {s:?}: expected all or a comma list of qkv, proj, fc, ff-proj, head, emb"
            ),
            TuneError::TooManyBlocks { asked, layers } => write!(
                f,
                "--trainable last-{asked}: the model has only {layers} blocks"
            ),
            TuneError::BadRank { rank, max } => {
                write!(f, "--lora-rank {rank}: must be between 1 and {max}")
            }
            TuneError::BadAlpha(a) => write!(f, "--lora-alpha {a}: must be a positive number"),
            TuneError::NoAdapters => write!(
                f,
                "--lora-targets selects no linear layer of this model (a tied head cannot take an adapter)"
            ),
            TuneError::Optimizer(e) => write!(f, "optimizer: {e}"),
        }
    }
}

impl std::error::Error for TuneError {}

impl From<AdamWError> for TuneError {
    fn from(e: AdamWError) -> Self {
        TuneError::Optimizer(e)
    }
}

/// One LoRA adapter: rows `rows` of the flat parameter buffer hold its weight block (O, I).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adapter {
    /// `blocks.3.att.q`, `blocks.3.ff.fc`, `out_head`, …
    pub name: String,
    /// The (O, I) block in the model's flat parameter buffer.
    pub weight: Range<usize>,
    /// O.
    pub out_features: usize,
    /// I.
    pub in_features: usize,
    /// A (R, I) in [`Tuner::adapter_params`].
    pub a: Range<usize>,
    /// B (O, R) in [`Tuner::adapter_params`].
    pub b: Range<usize>,
}

/// The (name, flat range, O, I) of every weight block that `targets` adapts, in buffer order.
/// GPT-2's fused (3C, C) query/key/value weight is three (C, C) blocks, one per selected part.
fn adapted_blocks(
    tensors: &[TensorInfo],
    targets: LoraTargets,
) -> Vec<(String, Range<usize>, usize, usize)> {
    let mut out = Vec::new();
    for t in tensors {
        let (o, i) = match t.shape[..] {
            [o, i] => (o, i),
            _ => continue,
        };
        let name = t.name.trim_end_matches(".weight");
        if t.role == Role::Qkv {
            let c = o / 3;
            let base = name.trim_end_matches("qkv");
            for (k, (part, on)) in [("q", targets.q), ("k", targets.k), ("v", targets.v)]
                .into_iter()
                .enumerate()
            {
                if on {
                    let start = t.offset + k * c * i;
                    out.push((format!("{base}{part}"), start..start + c * i, c, i));
                }
            }
        } else if targets.selects(t.role) {
            out.push((name.to_string(), t.range(), o, i));
        }
    }
    out
}

/// Trainable parameters of LoRA with `spec` on a model of `cfg` (a classifier when `classes`):
/// Σ R·(I + O) over the adapted blocks. The book's figure for the 124M classifier at rank 16 on
/// every linear layer is 2,666,528.
pub fn lora_param_count(cfg: &GptConfig, classes: Option<usize>, spec: &LoraSpec) -> usize {
    let tensors = tensor_layout(cfg, classes);
    adapted_blocks(&tensors, spec.targets)
        .iter()
        .map(|(_, _, o, i)| spec.rank * (o + i))
        .sum()
}

/// The tuning flags shared by `finetune classify` and `finetune instruct`, checked:
/// `--trainable` (`None`: `default`), `--lora-rank`, `--lora-alpha` (default: the rank, scale 1)
/// and `--lora-targets` (default `all`). LoRA trains only its adapters, so an explicit
/// `--trainable` beside `--lora-rank` is refused, as are LoRA flags without a rank. The message
/// names the flag.
pub fn tuning_from_flags(
    trainable: Option<&str>,
    default: Trainable,
    lora_rank: Option<usize>,
    lora_alpha: Option<f32>,
    lora_targets: Option<&str>,
) -> Result<(Trainable, Option<LoraSpec>), String> {
    let t = match trainable {
        None => default,
        Some(s) => s.parse().map_err(|e: TuneError| e.to_string())?,
    };
    let Some(rank) = lora_rank else {
        if lora_alpha.is_some() || lora_targets.is_some() {
            return Err("--lora-alpha and --lora-targets need --lora-rank".into());
        }
        return Ok((t, None));
    };
    if trainable.is_some() {
        return Err(
            "give --trainable or --lora-rank, not both (LoRA trains only its adapters)".into(),
        );
    }
    if rank == 0 {
        return Err("--lora-rank must be at least 1".into());
    }
    let alpha = lora_alpha.unwrap_or(rank as f32);
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(TuneError::BadAlpha(alpha).to_string());
    }
    let targets = match lora_targets {
        None => LoraTargets::ALL,
        Some(s) => s.parse().map_err(|e: TuneError| e.to_string())?,
    };
    Ok((
        t,
        Some(LoraSpec {
            rank,
            alpha,
            targets,
        }),
    ))
}

enum Kind {
    /// AdamW over one contiguous range of the model's parameters.
    Subset(Range<usize>),
    /// AdamW over the adapters; `base` holds W0 of every adapted block, in adapter order.
    Lora {
        adapters: Vec<Adapter>,
        base: Vec<f32>,
        scale: f32,
    },
    /// AdamW over the adapters the model runs directly ([`Tunable::lora_mut`]).
    Direct { adapters: Vec<Adapter> },
}

/// The trainable part of a model and its optimizer. Loop:
/// `model.zero_grad(); model.forward(..)?; model.backward()?; tuner.step(&mut model, lr)?`.
pub struct Tuner {
    kind: Kind,
    opt: AdamW,
    /// The adapters (LoRA): A then B of each, in [`Adapter`] order. Empty for a subset.
    params: Vec<f32>,
    grads: Vec<f32>,
    trainable: usize,
    description: String,
}

impl fmt::Debug for Tuner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tuner")
            .field("trainable", &self.trainable)
            .field("description", &self.description)
            .finish()
    }
}

impl Tuner {
    /// Sets up training of `opts` on `model`: sets [`Gpt::grad_from_layer`], and for LoRA creates
    /// the adapters (B = 0, so the model is unchanged), which a model that can run them directly
    /// takes ([`Tunable::attach_lora`]; call [`Tuner::finish`] after training).
    pub fn new<M: Tunable>(model: &mut M, opts: &TuneOptions) -> Result<Tuner, TuneError> {
        Tuner::build(model, opts, true)
    }

    /// [`Tuner::new`], but LoRA always merges its adapters into the weights (the reference the
    /// direct path is tested against). The same seed gives the same adapters either way.
    pub fn merged<M: Tunable>(model: &mut M, opts: &TuneOptions) -> Result<Tuner, TuneError> {
        Tuner::build(model, opts, false)
    }

    fn build<M: Tunable>(
        model: &mut M,
        opts: &TuneOptions,
        direct: bool,
    ) -> Result<Tuner, TuneError> {
        let l = model.n_layers();
        let tensors = model.tensor_infos();
        let adamw = AdamWConfig {
            weight_decay: opts.weight_decay as f64,
            ..AdamWConfig::default()
        };
        if let Some(spec) = opts.lora {
            if !(spec.alpha.is_finite() && spec.alpha > 0.0) {
                return Err(TuneError::BadAlpha(spec.alpha));
            }
            let blocks = adapted_blocks(&tensors, spec.targets);
            if blocks.is_empty() {
                return Err(TuneError::NoAdapters);
            }
            // A rank above min(O, I) is redundant but harmless (the book puts rank 16 on a head
            // with 2 outputs); only the input side bounds it, to catch typos.
            let max = blocks.iter().map(|b| b.3).min().unwrap_or(0);
            if spec.rank == 0 || spec.rank > max {
                return Err(TuneError::BadRank {
                    rank: spec.rank,
                    max,
                });
            }
            let r = spec.rank;
            let mut adapters = Vec::with_capacity(blocks.len());
            let mut params = Vec::new();
            for (n, (name, weight, o, i)) in blocks.into_iter().enumerate() {
                let a = params.len()..params.len() + r * i;
                let bound = 1.0 / (i as f32).sqrt();
                let key = mix64(opts.seed ^ mix64(0x10_4A ^ n as u64));
                params.extend((0..r * i).map(|j| bound * symmetric_unit(mix64(key ^ j as u64))));
                let b = params.len()..params.len() + o * r;
                params.resize(b.end, 0.0);
                adapters.push(Adapter {
                    name,
                    weight,
                    out_features: o,
                    in_features: i,
                    a,
                    b,
                });
            }
            // Every adapted weight can sit anywhere down to block 0.
            model.set_grad_from_layer(0);
            let n = params.len();
            let scale = spec.alpha / r as f32;
            let description = format!(
                "LoRA rank {r}, alpha {} (scale {scale}), {} adapters",
                spec.alpha,
                adapters.len()
            );
            let opt = AdamW::new(adamw, DecayMask::all(n));
            if direct {
                // The adapted matrices by role and block (GPT-2's fused q/k/v blocks are no
                // whole tensor: such a model merges).
                let located: Option<Vec<LoraAdapter>> = adapters
                    .iter()
                    .map(|ad| {
                        let t = tensors
                            .iter()
                            .find(|t| t.offset == ad.weight.start && t.len == ad.weight.len())?;
                        Some(LoraAdapter {
                            role: t.role,
                            layer: t.layer,
                            out_features: ad.out_features,
                            in_features: ad.in_features,
                            a: ad.a.clone(),
                            b: ad.b.clone(),
                        })
                    })
                    .collect();
                if let Some(located) = located {
                    let lora = Lora {
                        scale,
                        adapters: located,
                        grads: vec![0.0; n],
                        params,
                    };
                    match model.attach_lora(lora) {
                        Ok(()) => {
                            return Ok(Tuner {
                                description,
                                kind: Kind::Direct { adapters },
                                opt,
                                params: Vec::new(),
                                grads: Vec::new(),
                                trainable: n,
                            });
                        }
                        Err(back) => params = back.params,
                    }
                }
            }
            let mut base = Vec::new();
            for ad in &adapters {
                base.extend_from_slice(&model.params()[ad.weight.clone()]);
            }
            return Ok(Tuner {
                description,
                kind: Kind::Lora {
                    adapters,
                    base,
                    scale,
                },
                opt,
                grads: vec![0.0; n],
                params,
                trainable: n,
            });
        }
        let total = model.params().len();
        let head_start = tensors
            .iter()
            .find(|t| t.role == Role::Head)
            .map(|t| t.offset);
        let (range, from) = match opts.trainable {
            Trainable::All => (0..total, 0),
            Trainable::Head => match head_start {
                Some(s) => (s..total, l),
                // A tied head is the token embedding.
                None => {
                    let te = tensors
                        .iter()
                        .find(|t| t.role == Role::TokEmb)
                        .map_or(0..0, TensorInfo::range);
                    (te, l)
                }
            },
            Trainable::LastBlocks(n) => {
                if n > l {
                    return Err(TuneError::TooManyBlocks {
                        asked: n,
                        layers: l,
                    });
                }
                let start = tensors
                    .iter()
                    .find(|t| t.layer == Some(l - n))
                    .map_or(0, |t| t.offset);
                (start..total, l - n)
            }
        };
        let count = tensors
            .iter()
            .filter(|t| t.offset >= range.start && t.offset < range.end)
            .count();
        model.set_grad_from_layer(from);
        let n = range.len();
        Ok(Tuner {
            description: format!("{} ({count} tensors)", opts.trainable),
            kind: Kind::Subset(range),
            opt: AdamW::new(adamw, DecayMask::all(n)),
            params: Vec::new(),
            grads: Vec::new(),
            trainable: n,
        })
    }

    /// Number of trained parameters.
    pub fn trainable_params(&self) -> usize {
        self.trainable
    }

    /// A one-line description (`last-block (12 tensors)`, `LoRA rank 16, …`).
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The LoRA adapters (empty for a subset).
    pub fn adapters(&self) -> &[Adapter] {
        match &self.kind {
            Kind::Lora { adapters, .. } | Kind::Direct { adapters } => adapters,
            Kind::Subset(_) => &[],
        }
    }

    /// Whether the model runs the adapters directly (their parameters and gradients then live in
    /// the model: [`crate::family::FamilyModel::lora`]).
    pub fn is_direct(&self) -> bool {
        matches!(self.kind, Kind::Direct { .. })
    }

    /// Ends training: a model that ran the adapters directly gets them merged into its weights
    /// (W0 + s·B·A, what checkpoints and exports hold) and detached. Nothing to do otherwise.
    pub fn finish<M: Tunable>(&mut self, model: &mut M) {
        if self.is_direct() {
            model.merge_lora();
        }
    }

    /// The adapters' parameters (A then B of each adapter); empty for a subset and for adapters
    /// the model runs directly.
    pub fn adapter_params(&self) -> &[f32] {
        &self.params
    }

    /// The adapters' parameters, writable; call [`Tuner::merge`] afterwards.
    pub fn adapter_params_mut(&mut self) -> &mut [f32] {
        &mut self.params
    }

    /// The adapters' gradients of the last [`Tuner::step`] or [`Tuner::adapter_gradients`].
    pub fn adapter_grads(&self) -> &[f32] {
        &self.grads
    }

    /// Writes W = W0 + s·B·A into the model for every adapter (no-op for a subset and for
    /// adapters run directly: see [`Tuner::finish`]).
    pub fn merge<M: Tunable>(&self, model: &mut M) {
        let Kind::Lora {
            adapters,
            base,
            scale,
        } = &self.kind
        else {
            return;
        };
        let mut off = 0;
        let params = model.params_mut();
        for ad in adapters {
            let (o, i) = (ad.out_features, ad.in_features);
            let r = ad.a.len() / i;
            let w = &mut params[ad.weight.clone()];
            w.copy_from_slice(&base[off..off + o * i]);
            off += o * i;
            // W (O, I) += s · B (O, R) · A (R, I)
            matmul(
                &mut MatMut::row_major(w, o, i),
                1.0,
                MatRef::row_major(&self.params[ad.b.clone()], o, r),
                MatRef::row_major(&self.params[ad.a.clone()], r, i),
                *scale,
                Parallelism::current(),
            );
        }
    }

    /// LoRA: turns the model's weight gradients dW (after `backward`) into the adapters'
    /// gradients dB = s·dW·Aᵀ, dA = s·Bᵀ·dW (overwriting [`Tuner::adapter_grads`]). Adapters run
    /// directly have their gradients from the backward itself: nothing to do.
    pub fn adapter_gradients<M: Tunable>(&mut self, model: &mut M) {
        let Kind::Lora {
            adapters, scale, ..
        } = &self.kind
        else {
            return;
        };
        let (_, grads) = model.params_and_grads();
        for ad in adapters {
            let (o, i) = (ad.out_features, ad.in_features);
            let r = ad.a.len() / i;
            let dw = MatRef::row_major(&grads[ad.weight.clone()], o, i);
            let (ga, gb) = self.grads.split_at_mut(ad.b.start);
            // dB (O, R) = s · dW (O, I) · Aᵀ (I, R)
            matmul(
                &mut MatMut::row_major(&mut gb[..o * r], o, r),
                0.0,
                dw,
                MatRef::row_major(&self.params[ad.a.clone()], r, i).t(),
                *scale,
                Parallelism::current(),
            );
            // dA (R, I) = s · Bᵀ (R, O) · dW (O, I)
            matmul(
                &mut MatMut::row_major(&mut ga[ad.a.clone()], r, i),
                0.0,
                MatRef::row_major(&self.params[ad.b.clone()], o, r).t(),
                dw,
                *scale,
                Parallelism::current(),
            );
        }
    }

    /// One AdamW step at `lr` on the trained parameters, from the gradients the model's last
    /// backward left (LoRA: through [`Tuner::adapter_gradients`], then [`Tuner::merge`]).
    pub fn step<M: Tunable>(&mut self, model: &mut M, lr: f32) -> Result<(), TuneError> {
        match &self.kind {
            Kind::Subset(range) => {
                let range = range.clone();
                let (p, g) = model.params_and_grads();
                self.opt.step(&mut p[range.clone()], &g[range], lr)?;
            }
            Kind::Lora { .. } => {
                self.adapter_gradients(model);
                self.opt.step(&mut self.params, &self.grads, lr)?;
                self.merge(model);
            }
            Kind::Direct { .. } => {
                let lora = model.lora_mut().ok_or(TuneError::NoAdapters)?;
                self.opt.step(&mut lora.params, &lora.grads, lr)?;
            }
        }
        Ok(())
    }
}

/// A uniform number in (−1, 1) from 64 random bits.
fn symmetric_unit(bits: u64) -> f32 {
    ((bits >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Init, Mode};

    fn tiny() -> GptConfig {
        GptConfig {
            vocab_size: 13,
            context_length: 8,
            dim: 8,
            n_layers: 3,
            n_heads: 2,
            qkv_bias: false,
            tied_head: true,
        }
    }

    #[test]
    fn the_books_lora_parameter_count() {
        // Appendix E: 124M classifier, rank 16 on every linear layer (incl. the head).
        let cfg = GptConfig::preset("124m").unwrap();
        let spec = LoraSpec {
            rank: 16,
            alpha: 16.0,
            targets: LoraTargets::ALL,
        };
        assert_eq!(lora_param_count(&cfg, Some(2), &spec), 2_666_528);
    }

    #[test]
    fn flags_parse_and_reject() {
        assert_eq!("head".parse::<Trainable>().unwrap(), Trainable::Head);
        assert_eq!(
            "last-block".parse::<Trainable>().unwrap(),
            Trainable::LastBlocks(1)
        );
        assert_eq!(
            "last-3".parse::<Trainable>().unwrap(),
            Trainable::LastBlocks(3)
        );
        assert_eq!("all".parse::<Trainable>().unwrap(), Trainable::All);
        for bad in ["last-0", "last-", "Last-block", "", "last-x"] {
            assert!(bad.parse::<Trainable>().is_err(), "{bad}");
        }
        let t: LoraTargets = "qkv,ff-proj".parse().unwrap();
        assert!(t.q && t.k && t.v && t.down && !t.o && !t.gate && !t.up && !t.head);
        // PEFT's names mean the same layers.
        let t: LoraTargets = "q_proj,v_proj,down_proj,lm_head".parse().unwrap();
        assert!(t.q && !t.k && t.v && t.down && t.head && !t.o && !t.up && !t.emb);
        assert_eq!("fc".parse::<LoraTargets>().unwrap(), {
            let mut f = LoraTargets::NONE;
            (f.gate, f.up) = (true, true);
            f
        });
        assert!("qkv,mlp".parse::<LoraTargets>().is_err());
        assert!("".parse::<LoraTargets>().is_err());
        for spec in ["all,emb", "emb,all"] {
            let t: LoraTargets = spec.parse().unwrap();
            assert_eq!(
                t,
                LoraTargets {
                    emb: true,
                    ..LoraTargets::ALL
                }
            );
        }
    }

    #[test]
    fn tuning_flags_are_checked_together() {
        let all = Trainable::All;
        assert_eq!(
            tuning_from_flags(None, all, None, None, None),
            Ok((all, None))
        );
        let (_, l) = tuning_from_flags(None, all, Some(16), None, None).unwrap();
        assert_eq!(
            l,
            Some(LoraSpec {
                rank: 16,
                alpha: 16.0,
                targets: LoraTargets::ALL
            })
        );
        for (t, r, a, g, needle) in [
            (Some("x"), None, None, None, "--trainable"),
            (None, None, Some(2.0), None, "need --lora-rank"),
            (None, None, None, Some("qkv"), "need --lora-rank"),
            (Some("all"), Some(4), None, None, "not both"),
            (None, Some(0), None, None, "--lora-rank"),
            (None, Some(4), Some(-1.0), None, "--lora-alpha"),
            (None, Some(4), None, Some("mlp"), "--lora-targets"),
        ] {
            let e = tuning_from_flags(t, all, r, a, g).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn subsets_are_the_books_ranges() {
        let mut m = Gpt::new(tiny(), Init::Gpt2, 1)
            .unwrap()
            .into_classifier(2, 1)
            .unwrap();
        let opts = |trainable| TuneOptions {
            trainable,
            lora: None,
            weight_decay: 0.1,
            seed: 0,
        };
        let last_block = Tuner::new(&mut m, &opts(Trainable::LastBlocks(1))).unwrap();
        assert_eq!(m.grad_from_layer, 2);
        let c = 8;
        // Block: 2 norms (4C) + qkv 3C·C + proj C·C + C + fc 4C·C + 4C + proj 4C·C + C.
        let block = 4 * c + 3 * c * c + c * c + c + 4 * c * c + 4 * c + 4 * c * c + c;
        assert_eq!(last_block.trainable_params(), block + 2 * c + 2 * c + 2);
        let head = Tuner::new(&mut m, &opts(Trainable::Head)).unwrap();
        assert_eq!(head.trainable_params(), 2 * c + 2);
        assert_eq!(m.grad_from_layer, 3);
        let all = Tuner::new(&mut m, &opts(Trainable::All)).unwrap();
        assert_eq!(all.trainable_params(), m.params().len());
        assert_eq!(
            Tuner::new(&mut m, &opts(Trainable::LastBlocks(4))).unwrap_err(),
            TuneError::TooManyBlocks {
                asked: 4,
                layers: 3
            }
        );
    }

    #[test]
    fn subset_training_leaves_frozen_parameters_untouched() {
        let mut m = Gpt::new(tiny(), Init::Gpt2, 1)
            .unwrap()
            .into_classifier(2, 1)
            .unwrap();
        let before = m.params().to_vec();
        let mut tuner = Tuner::new(
            &mut m,
            &TuneOptions {
                trainable: Trainable::LastBlocks(1),
                lora: None,
                weight_decay: 0.1,
                seed: 0,
            },
        )
        .unwrap();
        let tokens = [1u32, 2, 3, 4, 5, 6];
        let targets = [-100, -100, 1, -100, -100, 0];
        m.zero_grad();
        m.forward(&tokens, Some(&targets), 2, 3, Mode::Eval)
            .unwrap();
        m.backward().unwrap();
        tuner.step(&mut m, 1e-2).unwrap();
        let start = m
            .tensors()
            .iter()
            .find(|t| t.name.starts_with("blocks.2."))
            .unwrap()
            .offset;
        assert_eq!(&m.params()[..start], &before[..start]);
        assert_ne!(&m.params()[start..], &before[start..]);
    }
}
