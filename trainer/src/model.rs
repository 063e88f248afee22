//! The GPT-2 model of the book (`GPTModel`): token + position embedding, dropout, L pre-LayerNorm
//! blocks, final LayerNorm, output head (tied to the token embedding or not).
//!
//! Storage follows llm.c: parameters in ONE flat `Vec<f32>` laid out in the canonical order of
//! [`GptConfig::tensor_shapes`] (so checkpoints and export walk it by name), gradients in a second
//! flat `Vec<f32>` of the same layout, activations for one (B, T) in a third flat buffer allocated
//! once (grown only when a larger B·T arrives) and carved into named views per call.
//!
//! Letters: B batch, T time (≤ P), P context length, C channels, V vocabulary, L layers, H heads.
//!
//! Training step, as the caller (the `pretrain` loop) runs it:
//! ```text
//! model.zero_grad();
//! for micro in micro_batches {                       // gradient accumulation = several backward
//!     model.forward(&x, Some(&y), b, t, Mode::Train { seed: step_seed(step, micro) })?;
//!     model.backward()?;                             // accumulates into grads
//! }
//! // (scale grads by 1/micro_batches if the losses should be averaged)
//! let norm = clip_grad_norm(model.grads_mut(), 1.0);
//! opt.step(model.params_and_grads(), lr)?;
//! ```
//! Threads: every kernel runs in the current rayon pool; wrap calls in `pool.install(..)` to choose
//! the thread count. Results are identical for any thread count.

use crate::adamw::{DecayMask, DecayPolicy};
use crate::layers::attention::{self, Dims};
use crate::layers::crossentropy::{self, IGNORE_INDEX};
use crate::layers::dropout::{self, Dropout, mix64};
use crate::layers::{encoder, gelu, layernorm, matmul, residual};
use emberlm_formats::arch::{self, Role};
use emberlm_formats::config::{ConfigError, GptConfig};
use rayon::prelude::*;
use std::fmt;
use std::ops::Range;

/// What went wrong in a model call. Untrusted inputs (token ids, targets, shapes) produce these,
/// never panics.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelError {
    /// The configuration is invalid.
    Config(ConfigError),
    /// B or T is zero.
    EmptyBatch {
        /// B.
        b: usize,
        /// T.
        t: usize,
    },
    /// T exceeds the position table.
    SequenceTooLong {
        /// The requested T.
        t: usize,
        /// P.
        context_length: usize,
    },
    /// A slice has the wrong length.
    BadLength {
        /// Which argument (`tokens`, `targets`, `params`, …).
        field: &'static str,
        /// The length it must have.
        expected: usize,
        /// The length it has.
        got: usize,
    },
    /// A token id or target is outside 0..V (targets may also be −100).
    IdOutOfRange {
        /// `tokens` or `targets`.
        field: &'static str,
        /// Flat position (b·T + t).
        index: usize,
        /// The offending value.
        value: i64,
        /// V.
        vocab_size: usize,
    },
    /// Every target is the ignore index: the mean loss is undefined.
    NoTargets,
    /// A classifier needs 2 to 2^20 classes.
    BadClasses {
        /// The requested K.
        classes: usize,
    },
    /// `backward` was called without a preceding training forward with targets.
    NoForward,
    /// A dropout probability is outside [0, 1].
    BadDropout {
        /// `emb`, `attn` or `resid`.
        site: &'static str,
        /// The value.
        p: f32,
    },
    /// B·T (or its activations) would overflow the address space.
    TooLarge {
        /// B.
        b: usize,
        /// T.
        t: usize,
    },
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Config(e) => write!(f, "invalid model configuration: {e}"),
            ModelError::EmptyBatch { b, t } => {
                write!(f, "empty batch: batch size {b}, sequence length {t}")
            }
            ModelError::SequenceTooLong { t, context_length } => write!(
                f,
                "sequence length {t} exceeds the model's context length {context_length}"
            ),
            ModelError::BadLength {
                field,
                expected,
                got,
            } => write!(f, "{field} has {got} elements, expected {expected}"),
            ModelError::IdOutOfRange {
                field,
                index,
                value,
                vocab_size,
            } => write!(
                f,
                "{field}[{index}] = {value} is outside the vocabulary (0..{vocab_size}{})",
                if *field == "targets" {
                    ", or -100 to ignore"
                } else {
                    ""
                }
            ),
            ModelError::NoTargets => {
                write!(f, "every target is -100 (ignored): no loss to compute")
            }
            ModelError::BadClasses { classes } => {
                write!(f, "a classifier needs 2 to 1048576 classes, not {classes}")
            }
            ModelError::NoForward => {
                write!(f, "backward needs a preceding forward with targets")
            }
            ModelError::BadDropout { site, p } => {
                write!(f, "dropout rate {p} at site {site} is outside [0, 1]")
            }
            ModelError::TooLarge { b, t } => {
                write!(
                    f,
                    "batch {b} x {t} is too large for this machine's address space"
                )
            }
        }
    }
}

impl std::error::Error for ModelError {}

impl From<ConfigError> for ModelError {
    fn from(e: ConfigError) -> Self {
        ModelError::Config(e)
    }
}

/// Dropout probabilities at the book's three sites (`drop_rate` sets all three in the book).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutRates {
    /// After the token + position embedding (`drop_emb`).
    pub emb: f32,
    /// On the attention weights (`MultiHeadAttention.dropout`).
    pub attn: f32,
    /// On each residual branch before the addition (`drop_shortcut`).
    pub resid: f32,
}

impl DropoutRates {
    /// No dropout anywhere.
    pub const NONE: DropoutRates = DropoutRates {
        emb: 0.0,
        attn: 0.0,
        resid: 0.0,
    };

    /// The same rate at every site (the book's `drop_rate`, 0.1 for pretraining).
    pub fn uniform(p: f32) -> DropoutRates {
        DropoutRates {
            emb: p,
            attn: p,
            resid: p,
        }
    }

    fn validate(&self) -> Result<(), ModelError> {
        for (site, p) in [
            ("emb", self.emb),
            ("attn", self.attn),
            ("resid", self.resid),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(ModelError::BadDropout { site, p });
            }
        }
        Ok(())
    }
}

/// Whether a forward pass is for training (dropout on, reproducible from `seed`) or evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Dropout off (PyTorch's `model.eval()`).
    Eval,
    /// Dropout on with the model's [`DropoutRates`]; the masks are a pure function of `seed`,
    /// so use a different seed per step (e.g. a hash of the run seed and the step number).
    Train {
        /// Seed of this forward's dropout masks.
        seed: u64,
    },
}

/// How fresh parameters are drawn. Both are deterministic functions of the seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// GPT-2 / nanoGPT / llm.c: weights and embeddings N(0, 0.02), the two residual output
    /// projections (`att.proj`, `ff.proj`) N(0, 0.02/sqrt(2L)), biases 0, LayerNorm scale 1 shift 0.
    Gpt2,
    /// What the book's `GPTModel` gets from PyTorch's defaults: embeddings N(0, 1); Linear weights
    /// and biases U(−1/sqrt(in), 1/sqrt(in)); LayerNorm scale 1 shift 0.
    TorchDefault,
}

/// One parameter tensor: canonical name, shape and its range in the flat buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// What the tensor does (from the architecture's description).
    pub role: Role,
    /// Its block, for per-block tensors.
    pub layer: Option<usize>,
    /// Canonical name (`blocks.3.att.qkv.weight`, …).
    pub name: String,
    /// Shape, Linear weights as [out, in].
    pub shape: Vec<usize>,
    /// Offset in the flat parameter (and gradient, and moment) buffer.
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
}

impl TensorInfo {
    /// `offset..offset + len`.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// Slices that can be split in two (shared or exclusive), so one carving routine serves both.
pub trait Split: Sized {
    /// The first `n` elements and the rest.
    fn split(self, n: usize) -> (Self, Self);
}

impl Split for &[f32] {
    fn split(self, n: usize) -> (Self, Self) {
        self.split_at(n)
    }
}

impl Split for &mut [f32] {
    fn split(self, n: usize) -> (Self, Self) {
        self.split_at_mut(n)
    }
}

/// Splits `s` into consecutive pieces of the given sizes (the rest is dropped).
fn carve<S: Split, const N: usize>(s: S, sizes: [usize; N]) -> [S; N] {
    let mut rest = Some(s);
    std::array::from_fn(|i| {
        let (head, tail) = rest.take().expect("carve: always refilled").split(sizes[i]);
        rest = Some(tail);
        head
    })
}

/// The tensors of one transformer block, in canonical order.
#[derive(Debug)]
pub struct BlockTensors<S> {
    /// `norm1.scale` (C).
    pub norm1_scale: S,
    /// `norm1.shift` (C).
    pub norm1_shift: S,
    /// `att.qkv.weight` (3C, C): query rows, then key, then value.
    pub qkv_weight: S,
    /// `att.qkv.bias` (3C), when the config has a qkv bias.
    pub qkv_bias: Option<S>,
    /// `att.proj.weight` (C, C).
    pub proj_weight: S,
    /// `att.proj.bias` (C).
    pub proj_bias: S,
    /// `norm2.scale` (C).
    pub norm2_scale: S,
    /// `norm2.shift` (C).
    pub norm2_shift: S,
    /// `ff.fc.weight` (4C, C).
    pub fc_weight: S,
    /// `ff.fc.bias` (4C).
    pub fc_bias: S,
    /// `ff.proj.weight` (C, 4C).
    pub ff_proj_weight: S,
    /// `ff.proj.bias` (C).
    pub ff_proj_bias: S,
}

/// Every parameter tensor by field (shared `&[f32]`, or `&mut [f32]` for loading).
#[derive(Debug)]
pub struct Tensors<S> {
    /// `tok_emb.weight` (V, C).
    pub tok_emb: S,
    /// `pos_emb.weight` (P, C).
    pub pos_emb: S,
    /// `blocks.{i}.*`.
    pub blocks: Vec<BlockTensors<S>>,
    /// `final_norm.scale` (C).
    pub final_norm_scale: S,
    /// `final_norm.shift` (C).
    pub final_norm_shift: S,
    /// `out_head.weight` (V, C), or (K, C) for a classifier; `None` when the head is tied to
    /// `tok_emb`.
    pub out_head: Option<S>,
    /// `out_head.bias` (K): classifiers only.
    pub out_bias: Option<S>,
}

/// Every parameter tensor of `cfg` (a classifier with K = `classes` outputs, or a language model)
/// with its range in the flat buffer, in the canonical order of the architecture's description
/// ([`emberlm_formats::arch`]).
pub fn tensor_layout(cfg: &GptConfig, classes: Option<usize>) -> Vec<TensorInfo> {
    let mut offset = 0;
    arch::tensors(&(*cfg).into(), classes)
        .into_iter()
        .map(|t| {
            let len = t.len();
            let info = TensorInfo {
                role: t.desc.role,
                layer: t.layer,
                name: t.name,
                shape: t.shape,
                offset,
                len,
            };
            offset += len;
            info
        })
        .collect()
}

/// Named read-only views of the parameters (or of the gradients).
pub type ParamViews<'a> = Tensors<&'a [f32]>;

/// Removes and returns the piece with this role.
fn take<S>(pieces: &mut Vec<(Role, S)>, role: Role) -> Option<S> {
    let i = pieces.iter().position(|(r, _)| *r == role)?;
    Some(pieces.swap_remove(i).1)
}

impl<S: Split> Tensors<S> {
    /// Cuts a flat buffer laid out as `layout` ([`tensor_layout`]) into named views: each piece
    /// goes to the field of its role, so the fields never depend on the order of the layout.
    fn carve(s: S, layout: &[TensorInfo], n_layers: usize) -> Self {
        let mut rest = Some(s);
        let mut top = Vec::with_capacity(8);
        let mut blocks: Vec<Vec<(Role, S)>> =
            (0..n_layers).map(|_| Vec::with_capacity(12)).collect();
        for t in layout {
            let (piece, tail) = rest.take().expect("carve: always refilled").split(t.len);
            rest = Some(tail);
            match t.layer {
                Some(l) => blocks[l].push((t.role, piece)),
                None => top.push((t.role, piece)),
            }
        }
        const HELD: &str = "the layout holds every tensor its description requires";
        let blocks = blocks
            .into_iter()
            .map(|mut b| BlockTensors {
                norm1_scale: take(&mut b, Role::AttnNormScale).expect(HELD),
                norm1_shift: take(&mut b, Role::AttnNormShift).expect(HELD),
                qkv_weight: take(&mut b, Role::Qkv).expect(HELD),
                qkv_bias: take(&mut b, Role::QkvBias),
                proj_weight: take(&mut b, Role::AttnOut).expect(HELD),
                proj_bias: take(&mut b, Role::AttnOutBias).expect(HELD),
                norm2_scale: take(&mut b, Role::MlpNormScale).expect(HELD),
                norm2_shift: take(&mut b, Role::MlpNormShift).expect(HELD),
                fc_weight: take(&mut b, Role::MlpUp).expect(HELD),
                fc_bias: take(&mut b, Role::MlpUpBias).expect(HELD),
                ff_proj_weight: take(&mut b, Role::MlpDown).expect(HELD),
                ff_proj_bias: take(&mut b, Role::MlpDownBias).expect(HELD),
            })
            .collect();
        Tensors {
            tok_emb: take(&mut top, Role::TokEmb).expect(HELD),
            pos_emb: take(&mut top, Role::PosEmb).expect(HELD),
            blocks,
            final_norm_scale: take(&mut top, Role::FinalNormScale).expect(HELD),
            final_norm_shift: take(&mut top, Role::FinalNormShift).expect(HELD),
            out_head: take(&mut top, Role::Head),
            out_bias: take(&mut top, Role::HeadBias),
        }
    }
}

/// The activation buffer's layout for one (B, T): sizes of every named piece, checked against
/// overflow.
#[derive(Clone, Copy, Debug)]
struct ActLayout {
    b: usize,
    t: usize,
    /// B·T.
    bt: usize,
    c: usize,
    h: usize,
    v: usize,
    l: usize,
    /// Floats of one layer's region.
    layer: usize,
    /// Floats of the whole activation buffer.
    total: usize,
    /// Floats of the scratch buffer (forward temporaries and activation gradients).
    scratch: usize,
}

impl ActLayout {
    /// `outputs`: logits per position (V, or K for a classifier).
    fn new(cfg: &GptConfig, outputs: usize, b: usize, t: usize) -> Option<ActLayout> {
        let (c, h, v, l) = (cfg.dim, cfg.n_heads, outputs, cfg.n_layers);
        let bt = b.checked_mul(t)?;
        let btc = bt.checked_mul(c)?;
        let btht = bt.checked_mul(h)?.checked_mul(t)?;
        // ln1, qkv(3), atty, res2, ln2, fch(4), fch_gelu(4), res3 = 16 BTC; 4 row statistics; att.
        let layer = btc
            .checked_mul(16)?
            .checked_add(bt.checked_mul(4)?)?
            .checked_add(btht)?;
        // encoded, lnf, lnf stats, logits, losses, lse.
        let total = layer
            .checked_mul(l)?
            .checked_add(btc.checked_mul(2)?)?
            .checked_add(bt.checked_mul(4)?)?
            .checked_add(bt.checked_mul(v)?)?;
        // branch, dres, dbuf, dbuf2 (4 BTC), dqkv (3), dfch (4), dpre.
        let scratch = btc.checked_mul(11)?.checked_add(btht)?;
        // Bytes must fit too.
        total.checked_add(scratch)?.checked_mul(4)?;
        Some(ActLayout {
            b,
            t,
            bt,
            c,
            h,
            v,
            l,
            layer,
            total,
            scratch,
        })
    }

    fn btc(&self) -> usize {
        self.bt * self.c
    }

    /// Sizes of a layer's pieces, in buffer order.
    fn layer_sizes(&self) -> [usize; 13] {
        let (bt, btc) = (self.bt, self.btc());
        let btht = bt * self.h * self.t;
        // ln1, ln1_mean, ln1_rstd, qkv, atty, att, res2, ln2, ln2_mean, ln2_rstd, fch, fch_gelu, res3
        [
            btc,
            bt,
            bt,
            3 * btc,
            btc,
            btht,
            btc,
            btc,
            bt,
            bt,
            4 * btc,
            4 * btc,
            btc,
        ]
    }

    /// Offset of layer `l`'s region; `encoded` (B, T, C) sits just before layer 0.
    fn layer_start(&self, l: usize) -> usize {
        self.btc() + l * self.layer
    }

    /// Offset of the tail: lnf, lnf_mean, lnf_rstd, logits, losses, lse.
    fn tail_start(&self) -> usize {
        self.layer_start(self.l)
    }

    fn tail_sizes(&self) -> [usize; 6] {
        [
            self.btc(),
            self.bt,
            self.bt,
            self.bt * self.v,
            self.bt,
            self.bt,
        ]
    }

    /// branch, dres, dbuf, dbuf2, dqkv, dfch, dpre.
    fn scratch_sizes(&self) -> [usize; 7] {
        let btc = self.btc();
        [
            btc,
            btc,
            btc,
            btc,
            3 * btc,
            4 * btc,
            self.bt * self.h * self.t,
        ]
    }

    fn dims(&self) -> Dims {
        Dims {
            b: self.b,
            t: self.t,
            c: self.c,
            h: self.h,
        }
    }
}

/// One layer's activations.
struct LayerActs<S> {
    ln1: S,
    ln1_mean: S,
    ln1_rstd: S,
    qkv: S,
    atty: S,
    att: S,
    res2: S,
    ln2: S,
    ln2_mean: S,
    ln2_rstd: S,
    fch: S,
    fch_gelu: S,
    res3: S,
}

impl<S: Split> LayerActs<S> {
    fn carve(s: S, lay: &ActLayout) -> Self {
        let [
            ln1,
            ln1_mean,
            ln1_rstd,
            qkv,
            atty,
            att,
            res2,
            ln2,
            ln2_mean,
            ln2_rstd,
            fch,
            fch_gelu,
            res3,
        ] = carve(s, lay.layer_sizes());
        LayerActs {
            ln1,
            ln1_mean,
            ln1_rstd,
            qkv,
            atty,
            att,
            res2,
            ln2,
            ln2_mean,
            ln2_rstd,
            fch,
            fch_gelu,
            res3,
        }
    }
}

/// The activations after the last block: the final norm's output and statistics, the logits,
/// the per-position losses and the log-sum-exp of each row of logits.
struct Tail<S> {
    lnf: S,
    lnf_mean: S,
    lnf_rstd: S,
    logits: S,
    losses: S,
    lse: S,
}

impl<S: Split> Tail<S> {
    /// Cuts the tail region (from [`ActLayout::tail_start`]) into its named pieces.
    fn carve(s: S, lay: &ActLayout) -> Self {
        let [lnf, lnf_mean, lnf_rstd, logits, losses, lse] = carve(s, lay.tail_sizes());
        Tail {
            lnf,
            lnf_mean,
            lnf_rstd,
            logits,
            losses,
            lse,
        }
    }
}

/// Activation storage for one (B, T): allocated on the first forward, grown only when a larger
/// batch arrives, reused otherwise. Holds the inputs of the last forward for backward.
#[derive(Debug, Default)]
pub struct Activations {
    buf: Vec<f32>,
    scratch: Vec<f32>,
    tokens: Vec<u32>,
    targets: Vec<i32>,
}

impl Activations {
    /// Activations sized for `b × t` sequences of `cfg` (used by [`Gpt::reserve`]; forward also
    /// grows them on demand).
    pub(crate) fn new(
        cfg: &GptConfig,
        outputs: usize,
        b: usize,
        t: usize,
    ) -> Result<Activations, ModelError> {
        let mut a = Activations::default();
        let lay = ActLayout::new(cfg, outputs, b, t).ok_or(ModelError::TooLarge { b, t })?;
        a.ensure(&lay);
        Ok(a)
    }

    fn ensure(&mut self, lay: &ActLayout) {
        if self.buf.len() < lay.total {
            self.buf = vec![0.0; lay.total];
        }
        if self.scratch.len() < lay.scratch {
            self.scratch = vec![0.0; lay.scratch];
        }
        if self.tokens.capacity() < lay.bt {
            self.tokens = Vec::with_capacity(lay.bt);
            self.targets = Vec::with_capacity(lay.bt);
        }
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        4 * (self.buf.len() + self.scratch.len() + self.tokens.capacity() + self.targets.capacity())
    }
}

/// Bytes needed to train `cfg` at batch `b × t`: parameters, gradients, the two AdamW moments and
/// the activations (with scratch). `u64::MAX` when it would overflow. Use it to refuse a batch
/// before allocating.
pub fn memory_estimate(cfg: &GptConfig, b: usize, t: usize) -> u64 {
    let Some(lay) = ActLayout::new(cfg, cfg.vocab_size, b, t) else {
        return u64::MAX;
    };
    let params = cfg.param_count() as u64;
    let floats = params
        .checked_mul(4)
        .and_then(|p| p.checked_add(lay.total as u64))
        .and_then(|p| p.checked_add(lay.scratch as u64));
    let ids = (lay.bt as u64).checked_mul(2);
    match (floats, ids) {
        (Some(f), Some(i)) => f
            .checked_add(i)
            .and_then(|x| x.checked_mul(4))
            .unwrap_or(u64::MAX),
        _ => u64::MAX,
    }
}

/// What the last forward left behind.
#[derive(Clone, Copy, Debug)]
struct ForwardState {
    lay: ActLayout,
    mode: Mode,
    /// Number of non-ignored targets, when targets were given.
    count: Option<usize>,
    /// False once backward has turned the logits into their gradient.
    logits_valid: bool,
}

/// The GPT-2 model with its parameters, gradients and activations.
#[derive(Debug)]
pub struct Gpt {
    cfg: GptConfig,
    /// Dropout probabilities used by [`Mode::Train`] forwards.
    pub dropout: DropoutRates,
    params: Vec<f32>,
    grads: Vec<f32>,
    tensors: Vec<TensorInfo>,
    /// K for a classifier (head (K, C) + bias (K)); `None` for a language model.
    classes: Option<usize>,
    /// [`Gpt::backward`] computes gradients only for blocks `grad_from_layer..L` (and the final
    /// norm and head), and for the embeddings only when this is 0: freezing the bottom of the
    /// model skips their backward entirely (fine-tuning the last block, as the book does).
    pub grad_from_layer: usize,
    acts: Activations,
    state: Option<ForwardState>,
}

/// Dropout site numbers: the embedding is 0; block l uses 1 + 3l (attention), 2 + 3l (after the
/// attention projection) and 3 + 3l (after the feed-forward).
fn site(l: usize, k: u64) -> u64 {
    1 + 3 * l as u64 + k
}

impl Gpt {
    /// A freshly initialised model (deterministic in `seed`), with no dropout; set
    /// [`Gpt::dropout`] for training.
    pub fn new(cfg: GptConfig, init: Init, seed: u64) -> Result<Gpt, ModelError> {
        let mut m = Gpt::zeros(cfg, None)?;
        m.init(init, seed);
        Ok(m)
    }

    /// A model whose parameters are `params` in canonical order (a checkpoint or an import).
    pub fn from_params(cfg: GptConfig, params: Vec<f32>) -> Result<Gpt, ModelError> {
        cfg.validate()?;
        let expected = cfg.param_count();
        if params.len() != expected {
            return Err(ModelError::BadLength {
                field: "params",
                expected,
                got: params.len(),
            });
        }
        let mut m = Gpt::zeros(cfg, None)?;
        m.params = params;
        Ok(m)
    }

    /// A classifier with `classes` outputs whose parameters are `params` in canonical order
    /// ([`Gpt::tensors`] of a classifier: the language model's tensors without its head, then
    /// `out_head.weight` (K, C) and `out_head.bias` (K)).
    pub fn classifier_from_params(
        cfg: GptConfig,
        classes: usize,
        params: Vec<f32>,
    ) -> Result<Gpt, ModelError> {
        let mut m = Gpt::zeros(cfg, Some(classes))?;
        if params.len() != m.params.len() {
            return Err(ModelError::BadLength {
                field: "params",
                expected: m.params.len(),
                got: params.len(),
            });
        }
        m.params = params;
        Ok(m)
    }

    /// This model with its output head replaced by a fresh (K, C) + (K) classifier head (the
    /// book's `model.out_head = torch.nn.Linear(768, num_classes)`: PyTorch's default
    /// initialisation U(±1/√C), deterministic in `seed`). Every other tensor is kept.
    pub fn into_classifier(self, classes: usize, seed: u64) -> Result<Gpt, ModelError> {
        if classes < 2 {
            return Err(ModelError::BadClasses { classes });
        }
        let mut m = Gpt::zeros(self.cfg, Some(classes))?;
        m.dropout = self.dropout;
        m.grad_from_layer = self.grad_from_layer;
        for t in m.tensors.clone() {
            if matches!(t.role, Role::Head | Role::HeadBias) {
                let key = mix64(seed ^ mix64(0x5EED_C1A5 ^ t.len as u64));
                let bound = 1.0 / (self.cfg.dim as f32).sqrt();
                fill_uniform(&mut m.params[t.range()], bound, key);
            } else if let Some(src) = self.param(&t.name) {
                m.params[t.range()].copy_from_slice(src);
            }
        }
        Ok(m)
    }

    /// K for a classifier, `None` for a language model.
    pub fn classes(&self) -> Option<usize> {
        self.classes
    }

    /// Logits per position: V, or K for a classifier.
    pub fn outputs(&self) -> usize {
        self.classes.unwrap_or(self.cfg.vocab_size)
    }

    fn zeros(cfg: GptConfig, classes: Option<usize>) -> Result<Gpt, ModelError> {
        cfg.validate()?;
        if let Some(k) = classes
            && !(2..=1 << 20).contains(&k)
        {
            return Err(ModelError::BadClasses { classes: k });
        }
        let tensors = tensor_layout(&cfg, classes);
        let offset = tensors.last().map_or(0, |t| t.offset + t.len);
        Ok(Gpt {
            cfg,
            dropout: DropoutRates::NONE,
            params: vec![0.0; offset],
            grads: Vec::new(),
            tensors,
            classes,
            grad_from_layer: 0,
            acts: Activations::default(),
            state: None,
        })
    }

    fn init(&mut self, init: Init, seed: u64) {
        let l = self.cfg.n_layers as f32;
        for (i, t) in self.tensors.iter().enumerate() {
            let key = mix64(seed ^ mix64(0xA076_1D64_78BD_642F ^ i as u64));
            let dst = &mut self.params[t.range()];
            let bias_of = t.role.weight_of_bias();
            if t.role.is_norm_scale() || t.role.is_norm_shift() {
                dst.fill(if t.role.is_norm_scale() { 1.0 } else { 0.0 });
                continue;
            }
            match init {
                Init::Gpt2 => {
                    if bias_of.is_some() {
                        dst.fill(0.0);
                    } else {
                        let std = if t.role.is_residual_out() {
                            0.02 / (2.0 * l).sqrt()
                        } else {
                            0.02
                        };
                        fill_normal(dst, std, key);
                    }
                }
                Init::TorchDefault => {
                    if t.role.is_embedding() {
                        fill_normal(dst, 1.0, key);
                    } else {
                        // fan_in is the last dim of the weight; a bias uses its layer's fan_in.
                        let fan_in = match bias_of {
                            Some(w) => weight_fan_in(&self.tensors, w),
                            None => t.shape[1],
                        };
                        fill_uniform(dst, 1.0 / (fan_in as f32).sqrt(), key);
                    }
                }
            }
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GptConfig {
        &self.cfg
    }

    /// Every parameter tensor in canonical order, with its range in the flat buffers.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The flat parameter buffer (canonical order).
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// The flat parameter buffer, writable (loading a checkpoint or imported weights).
    pub fn params_mut(&mut self) -> &mut [f32] {
        &mut self.params
    }

    /// The flat gradient buffer (same layout as the parameters; all zeros before any backward).
    pub fn grads(&mut self) -> &[f32] {
        self.ensure_grads();
        &self.grads
    }

    /// The flat gradient buffer, writable (clipping, scaling for accumulation).
    pub fn grads_mut(&mut self) -> &mut [f32] {
        self.ensure_grads();
        &mut self.grads
    }

    /// Parameters (writable) and gradients together, for the optimizer.
    pub fn params_and_grads(&mut self) -> (&mut [f32], &[f32]) {
        self.ensure_grads();
        (&mut self.params, &self.grads)
    }

    /// The parameter tensor with this canonical name.
    pub fn param(&self, name: &str) -> Option<&[f32]> {
        let t = self.tensors.iter().find(|t| t.name == name)?;
        Some(&self.params[t.range()])
    }

    /// The parameter tensor with this canonical name, writable.
    pub fn param_mut(&mut self, name: &str) -> Option<&mut [f32]> {
        let t = self.tensors.iter().find(|t| t.name == name)?;
        Some(&mut self.params[t.range()])
    }

    /// The gradient of the tensor with this canonical name.
    pub fn grad(&mut self, name: &str) -> Option<&[f32]> {
        self.ensure_grads();
        let t = self.tensors.iter().find(|t| t.name == name)?;
        Some(&self.grads[t.range()])
    }

    /// The parameters by field.
    pub fn views(&self) -> ParamViews<'_> {
        Tensors::carve(&self.params[..], &self.tensors, self.cfg.n_layers)
    }

    /// The parameters by field, writable.
    pub fn views_mut(&mut self) -> Tensors<&mut [f32]> {
        Tensors::carve(&mut self.params[..], &self.tensors, self.cfg.n_layers)
    }

    /// The gradients by field.
    pub fn grad_views(&mut self) -> ParamViews<'_> {
        self.ensure_grads();
        Tensors::carve(&self.grads[..], &self.tensors, self.cfg.n_layers)
    }

    fn ensure_grads(&mut self) {
        if self.grads.len() != self.params.len() {
            self.grads = vec![0.0; self.params.len()];
        }
    }

    /// The AdamW weight-decay mask for this model's flat buffer under `policy`.
    pub fn decay_mask(&self, policy: DecayPolicy) -> DecayMask {
        match policy {
            DecayPolicy::All => DecayMask::all(self.params.len()),
            DecayPolicy::MatricesOnly => {
                let ranges: Vec<Range<usize>> = self
                    .tensors
                    .iter()
                    .filter(|t| t.shape.len() == 2)
                    .map(TensorInfo::range)
                    .collect();
                // Tensors are in buffer order and disjoint, so this cannot fail.
                DecayMask::from_ranges(self.params.len(), &ranges)
                    .unwrap_or_else(|_| DecayMask::all(self.params.len()))
            }
        }
    }

    /// Sets every gradient to zero (allocating the gradient buffer on first use).
    pub fn zero_grad(&mut self) {
        if self.grads.len() != self.params.len() {
            self.grads = vec![0.0; self.params.len()];
        } else {
            self.grads.par_chunks_mut(1 << 16).for_each(|g| g.fill(0.0));
        }
    }

    /// Allocates the gradients and the activations for batches up to `b × t` now (forward would
    /// otherwise do it on first use), so a training run fails fast rather than mid-way. Check
    /// [`memory_estimate`] first to refuse a batch that does not fit.
    pub fn reserve(&mut self, b: usize, t: usize) -> Result<(), ModelError> {
        if b == 0 || t == 0 {
            return Err(ModelError::EmptyBatch { b, t });
        }
        if t > self.cfg.context_length {
            return Err(ModelError::SequenceTooLong {
                t,
                context_length: self.cfg.context_length,
            });
        }
        let needed =
            ActLayout::new(&self.cfg, self.outputs(), b, t).ok_or(ModelError::TooLarge { b, t })?;
        if self.acts.buf.len() < needed.total || self.acts.scratch.len() < needed.scratch {
            self.acts = Activations::new(&self.cfg, self.outputs(), b, t)?;
            self.state = None;
        }
        self.ensure_grads();
        Ok(())
    }

    /// Bytes held by the activations right now.
    pub fn activation_bytes(&self) -> usize {
        self.acts.bytes()
    }

    fn validate_inputs(
        &self,
        tokens: &[u32],
        targets: Option<&[i32]>,
        b: usize,
        t: usize,
    ) -> Result<ActLayout, ModelError> {
        if b == 0 || t == 0 {
            return Err(ModelError::EmptyBatch { b, t });
        }
        if t > self.cfg.context_length {
            return Err(ModelError::SequenceTooLong {
                t,
                context_length: self.cfg.context_length,
            });
        }
        let lay =
            ActLayout::new(&self.cfg, self.outputs(), b, t).ok_or(ModelError::TooLarge { b, t })?;
        let v = self.cfg.vocab_size;
        if tokens.len() != lay.bt {
            return Err(ModelError::BadLength {
                field: "tokens",
                expected: lay.bt,
                got: tokens.len(),
            });
        }
        if let Some(i) = tokens.iter().position(|&x| x as usize >= v) {
            return Err(ModelError::IdOutOfRange {
                field: "tokens",
                index: i,
                value: tokens[i] as i64,
                vocab_size: v,
            });
        }
        if let Some(y) = targets {
            if y.len() != lay.bt {
                return Err(ModelError::BadLength {
                    field: "targets",
                    expected: lay.bt,
                    got: y.len(),
                });
            }
            let outputs = self.outputs();
            if let Some(i) = y
                .iter()
                .position(|&x| x != IGNORE_INDEX && (x < 0 || x as usize >= outputs))
            {
                return Err(ModelError::IdOutOfRange {
                    field: "targets",
                    index: i,
                    value: y[i] as i64,
                    vocab_size: outputs,
                });
            }
            if y.iter().all(|&x| x == IGNORE_INDEX) {
                return Err(ModelError::NoTargets);
            }
        }
        Ok(lay)
    }

    /// Runs the model on `tokens` (B, T) (row-major, `b` sequences of `t` ids).
    ///
    /// With `targets` (B, T) (ids, or −100 to ignore a position) returns the mean cross-entropy
    /// over the non-ignored positions and prepares [`Gpt::backward`]; without, returns `None`.
    /// Either way the logits (B, T, V) are available from [`Gpt::logits`] until the next backward.
    pub fn forward(
        &mut self,
        tokens: &[u32],
        targets: Option<&[i32]>,
        b: usize,
        t: usize,
        mode: Mode,
    ) -> Result<Option<f32>, ModelError> {
        let lay = self.validate_inputs(tokens, targets, b, t)?;
        if mode != Mode::Eval {
            self.dropout.validate()?;
        }
        self.state = None;
        self.acts.ensure(&lay);
        self.acts.tokens.clear();
        self.acts.tokens.extend_from_slice(tokens);
        self.acts.targets.clear();
        if let Some(y) = targets {
            self.acts.targets.extend_from_slice(y);
        }
        let cfg = self.cfg;
        let rates = self.dropout;
        let drop_emb = site_dropout(mode, 0, rates.emb);
        let (c, btc) = (cfg.dim, lay.btc());
        let w = Tensors::carve(&self.params[..], &self.tensors, cfg.n_layers);
        let buf = &mut self.acts.buf[..lay.total];
        let [branch, _, _, _, _, _, pd] =
            carve(&mut self.acts.scratch[..lay.scratch], lay.scratch_sizes());

        // encoded = drop_emb(tok_emb[tokens] + pos_emb[t])
        {
            let enc = &mut buf[..btc];
            encoder::forward(enc, tokens, w.tok_emb, w.pos_emb, t, c);
            dropout::forward(enc, drop_emb);
        }
        for (l, wb) in w.blocks.iter().enumerate() {
            let (before, rest) = buf.split_at_mut(lay.layer_start(l));
            let input: &[f32] = &before[before.len() - btc..];
            let a = LayerActs::carve(&mut rest[..lay.layer], &lay);
            let drop_attn = site_dropout(mode, site(l, 0), rates.attn);
            let drop_res1 = site_dropout(mode, site(l, 1), rates.resid);
            let drop_res2 = site_dropout(mode, site(l, 2), rates.resid);
            // ln1 = norm1(input)
            layernorm::forward(
                a.ln1,
                a.ln1_mean,
                a.ln1_rstd,
                input,
                wb.norm1_scale,
                wb.norm1_shift,
            );
            // qkv = ln1 · Wqkvᵀ (+ b)
            matmul::forward(a.qkv, a.ln1, wb.qkv_weight, wb.qkv_bias, c);
            // atty = attention(qkv) with dropout on the weights
            attention::forward(a.atty, a.att, branch, pd, a.qkv, lay.dims(), drop_attn);
            // res2 = input + drop(atty · Wprojᵀ + b)
            matmul::forward(branch, a.atty, wb.proj_weight, Some(wb.proj_bias), c);
            dropout::forward(branch, drop_res1);
            residual::forward(a.res2, input, branch);
            // ln2 = norm2(res2)
            layernorm::forward(
                a.ln2,
                a.ln2_mean,
                a.ln2_rstd,
                a.res2,
                wb.norm2_scale,
                wb.norm2_shift,
            );
            // fch = ln2 · Wfcᵀ + b ; fch_gelu = gelu(fch)
            matmul::forward(a.fch, a.ln2, wb.fc_weight, Some(wb.fc_bias), c);
            gelu::forward(a.fch_gelu, a.fch);
            // res3 = res2 + drop(fch_gelu · Wprojᵀ + b)
            matmul::forward(
                branch,
                a.fch_gelu,
                wb.ff_proj_weight,
                Some(wb.ff_proj_bias),
                4 * c,
            );
            dropout::forward(branch, drop_res2);
            residual::forward(a.res3, a.res2, branch);
        }
        let (body, tail) = buf.split_at_mut(lay.tail_start());
        let last: &[f32] = &body[body.len() - btc..];
        let Tail {
            lnf,
            lnf_mean,
            lnf_rstd,
            logits,
            losses,
            lse,
        } = Tail::carve(tail, &lay);
        // lnf = final_norm(last residual)
        layernorm::forward(
            lnf,
            lnf_mean,
            lnf_rstd,
            last,
            w.final_norm_scale,
            w.final_norm_shift,
        );
        // logits = lnf · headᵀ (+ bias) (head = out_head, or tok_emb when tied)
        let head = w.out_head.unwrap_or(w.tok_emb);
        matmul::forward(logits, lnf, head, w.out_bias, c);
        let (loss, count) = match targets {
            Some(y) => {
                let (sum, count) = crossentropy::forward(losses, lse, logits, y);
                (Some((sum / count as f64) as f32), Some(count))
            }
            None => (None, None),
        };
        self.state = Some(ForwardState {
            lay,
            mode,
            count,
            logits_valid: true,
        });
        Ok(loss)
    }

    /// Evaluation-mode forward without targets; returns the logits (B, T, V).
    pub fn forward_logits(
        &mut self,
        tokens: &[u32],
        b: usize,
        t: usize,
    ) -> Result<&[f32], ModelError> {
        self.forward(tokens, None, b, t, Mode::Eval)?;
        Ok(self.logits().unwrap_or(&[]))
    }

    /// The logits (B, T, V) of the last forward; `None` before any forward or after a backward
    /// (which reuses their storage for their gradient).
    pub fn logits(&self) -> Option<&[f32]> {
        let st = self.state.as_ref().filter(|s| s.logits_valid)?;
        let tail = &self.acts.buf[st.lay.tail_start()..st.lay.total];
        Some(Tail::carve(tail, &st.lay).logits)
    }

    /// The per-position losses (B, T) of the last forward with targets (0 at ignored positions).
    pub fn losses(&self) -> Option<&[f32]> {
        let st = self.state.as_ref().filter(|s| s.count.is_some())?;
        let tail = &self.acts.buf[st.lay.tail_start()..st.lay.total];
        Some(Tail::carve(tail, &st.lay).losses)
    }

    /// Gradient of the last forward's mean loss, *accumulated* into the gradient buffer
    /// (call [`Gpt::zero_grad`] first unless accumulating micro-batches). Consumes the logits.
    pub fn backward(&mut self) -> Result<(), ModelError> {
        let (lay, mode, count) = match self.state {
            Some(ForwardState {
                lay,
                mode,
                count: Some(count),
                logits_valid: true,
            }) => (lay, mode, count),
            _ => return Err(ModelError::NoForward),
        };
        self.ensure_grads();
        let cfg = self.cfg;
        let rates = self.dropout;
        let (c, btc, t) = (cfg.dim, lay.btc(), lay.t);
        let from = self.grad_from_layer.min(cfg.n_layers);
        let w = Tensors::carve(&self.params[..], &self.tensors, cfg.n_layers);
        let g = Tensors::carve(&mut self.grads[..], &self.tensors, cfg.n_layers);
        let (g_te, g_pe, mut g_blocks) = (g.tok_emb, g.pos_emb, g.blocks);
        let (g_fs, g_fb) = (g.final_norm_scale, g.final_norm_shift);
        let [_, dres, dbuf, dbuf2, dqkv, dfch, dpre] =
            carve(&mut self.acts.scratch[..lay.scratch], lay.scratch_sizes());
        let tokens = &self.acts.tokens[..];
        let targets = &self.acts.targets[..];
        let (body, tail) = self.acts.buf[..lay.total].split_at_mut(lay.tail_start());
        let body: &[f32] = body;
        let Tail {
            lnf,
            lnf_mean,
            lnf_rstd,
            logits,
            lse,
            ..
        } = Tail::carve(tail, &lay);

        // forward: loss = mean over counted rows of CE(logits)  ⇒  dlogits, in place
        crossentropy::backward(logits, lse, targets, 1.0 / count as f32);
        // forward: logits = lnf · headᵀ  ⇒  dlnf = dlogits · head ; dhead += dlogitsᵀ · lnf
        {
            let (head_w, dhead): (&[f32], &mut [f32]) = match (w.out_head, g.out_head) {
                (Some(hw), Some(dh)) => (hw, dh),
                _ => (w.tok_emb, &mut *g_te),
            };
            matmul::backward(dbuf, dhead, g.out_bias, logits, lnf, head_w, c);
        }
        // forward: lnf = final_norm(last residual)  ⇒  dres = d(last residual)
        dres.fill(0.0);
        let last = &body[body.len() - btc..];
        layernorm::backward(
            dres,
            g_fs,
            g_fb,
            dbuf,
            last,
            w.final_norm_scale,
            lnf_mean,
            lnf_rstd,
        );

        for l in (from..cfg.n_layers).rev() {
            let gb = &mut g_blocks[l];
            let wb = &w.blocks[l];
            let (before, rest) = body.split_at(lay.layer_start(l));
            let input = &before[before.len() - btc..];
            let a = LayerActs::carve(&rest[..lay.layer], &lay);
            let drop_attn = site_dropout(mode, site(l, 0), rates.attn);
            let drop_res1 = site_dropout(mode, site(l, 1), rates.resid);
            let drop_res2 = site_dropout(mode, site(l, 2), rates.resid);
            // forward: res3 = res2 + branch  ⇒  dres2 = dres (kept in place), dbranch = dres
            // (residual::backward with the skip gradient aliased to dout)
            dbuf.copy_from_slice(dres);
            // forward: branch = drop(ffproj_out)
            dropout::backward(dbuf, drop_res2);
            // forward: ffproj_out = fch_gelu · Wᵀ + b  ⇒  dfch_gelu, dW, db
            matmul::backward(
                dfch,
                gb.ff_proj_weight,
                Some(gb.ff_proj_bias),
                dbuf,
                a.fch_gelu,
                wb.ff_proj_weight,
                4 * c,
            );
            // forward: fch_gelu = gelu(fch)
            gelu::backward(dfch, a.fch);
            // forward: fch = ln2 · Wfcᵀ + b  ⇒  dln2 (into dbuf)
            matmul::backward(
                dbuf,
                gb.fc_weight,
                Some(gb.fc_bias),
                dfch,
                a.ln2,
                wb.fc_weight,
                c,
            );
            // forward: ln2 = norm2(res2)  ⇒  dres += its contribution (dres is now d res2)
            layernorm::backward(
                dres,
                gb.norm2_scale,
                gb.norm2_shift,
                dbuf,
                a.res2,
                wb.norm2_scale,
                a.ln2_mean,
                a.ln2_rstd,
            );
            // forward: res2 = input + branch  ⇒  dbranch = dres
            dbuf.copy_from_slice(dres);
            // forward: branch = drop(atty · Wprojᵀ + b)
            dropout::backward(dbuf, drop_res1);
            matmul::backward(
                dbuf2,
                gb.proj_weight,
                Some(gb.proj_bias),
                dbuf,
                a.atty,
                wb.proj_weight,
                c,
            );
            // forward: atty = attention(qkv)
            attention::backward(
                dqkv,
                dpre,
                &mut dfch[..3 * btc],
                dbuf2,
                a.qkv,
                a.att,
                lay.dims(),
                drop_attn,
            );
            // forward: qkv = ln1 · Wqkvᵀ (+ b)  ⇒  dln1 (into dbuf)
            matmul::backward(
                dbuf,
                gb.qkv_weight,
                gb.qkv_bias.as_deref_mut(),
                dqkv,
                a.ln1,
                wb.qkv_weight,
                c,
            );
            // forward: ln1 = norm1(input)  ⇒  dres += its contribution (dres is now d input)
            layernorm::backward(
                dres,
                gb.norm1_scale,
                gb.norm1_shift,
                dbuf,
                input,
                wb.norm1_scale,
                a.ln1_mean,
                a.ln1_rstd,
            );
        }
        // forward: encoded = drop_emb(tok_emb[tokens] + pos_emb[t])
        if from == 0 {
            dropout::backward(dres, site_dropout(mode, 0, rates.emb));
            encoder::backward(g_te, g_pe, dres, tokens, t, c);
        }
        if let Some(st) = self.state.as_mut() {
            st.logits_valid = false;
        }
        Ok(())
    }
}

/// The dropout of one site for this forward (off in evaluation mode).
fn site_dropout(mode: Mode, site: u64, p: f32) -> Dropout {
    match mode {
        Mode::Eval => Dropout::OFF,
        Mode::Train { seed } => Dropout::new(p, seed, site),
    }
}

/// The fan-in (second dimension) of the first weight with this role.
fn weight_fan_in(tensors: &[TensorInfo], role: Role) -> usize {
    tensors
        .iter()
        .find(|t| t.role == role)
        .map_or(0, |t| t.shape[1])
}

/// Fills `dst` with N(0, std²) draws; elements 2j and 2j+1 depend only on (key, j) (Box–Muller
/// on two counter-based uniforms gives the pair), so the fill is parallel and reproducible.
pub(crate) fn fill_normal(dst: &mut [f32], std: f32, key: u64) {
    const CHUNK: usize = 1 << 14; // even, so pairs never straddle chunks
    dst.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, d)| {
        for (j, pair) in d.chunks_mut(2).enumerate() {
            let i = ((ci * CHUNK) / 2 + j) as u64;
            let u1 = unit(mix64(key.wrapping_add(2 * i)));
            let u2 = unit(mix64(key.wrapping_add(2 * i + 1)));
            let r = (-2.0 * (1.0 - u1).ln()).sqrt() * std as f64;
            let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
            pair[0] = (r * c) as f32;
            if let Some(x) = pair.get_mut(1) {
                *x = (r * s) as f32;
            }
        }
    });
}

/// Fills `dst` with U(−bound, bound) draws; element i depends only on (key, i).
pub(crate) fn fill_uniform(dst: &mut [f32], bound: f32, key: u64) {
    const CHUNK: usize = 1 << 14;
    dst.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, d)| {
        for (j, x) in d.iter_mut().enumerate() {
            let i = (ci * CHUNK + j) as u64;
            let u = unit(mix64(key.wrapping_add(i)));
            *x = ((2.0 * u - 1.0) * bound as f64) as f32;
        }
    });
}

/// A u64 to a uniform f64 in [0, 1).
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::check::{Rng, assert_close, fd_grad};
    use crate::layers::{
        attention::tests as attn_ref, crossentropy::tests as ce_ref, dropout::tests as drop_ref,
        encoder::tests as enc_ref, gelu::tests as gelu_ref, layernorm::tests as ln_ref,
        matmul::tests as mm_ref, residual::tests as res_ref,
    };

    /// Logits and loss: f32 model vs the f64 reference.
    const FWD_ATOL: f64 = 2e-5;
    /// Two backward passes vs twice one (gemm accumulates in a different order).
    const ACCUM_RTOL: f32 = 2e-5;
    const ACCUM_ATOL: f32 = 1e-8;
    /// Relative error of a sample standard deviation over ≥ 36k draws (≈ 5 sigma).
    const STD_TOL: f64 = 0.05;
    /// Whole-model gradients: f32 backward vs f64 finite differences.
    const GRAD_ATOL: f64 = 2e-5;
    const GRAD_RTOL: f64 = 2e-3;

    fn tiny(qkv_bias: bool, tied_head: bool) -> GptConfig {
        GptConfig {
            vocab_size: 11,
            context_length: 7,
            dim: 8,
            n_layers: 2,
            n_heads: 2,
            qkv_bias,
            tied_head,
        }
    }

    /// The float64 reference GPT forward: looks tensors up by canonical name in the flat buffer
    /// (independently of the struct carving) and composes the layers' f64 reference forwards.
    /// Returns (logits, mean loss).
    #[allow(clippy::too_many_arguments)]
    fn reference_forward(
        cfg: &GptConfig,
        tensors: &[TensorInfo],
        p: &[f64],
        tokens: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
        rates: DropoutRates,
        mode: Mode,
    ) -> (Vec<f64>, f64) {
        let get = |name: &str| -> &[f64] {
            let ti = tensors.iter().find(|x| x.name == name).expect(name);
            &p[ti.range()]
        };
        let c = cfg.dim;
        let drop = |s: u64, rate: f32| site_dropout(mode, s, rate);
        let mut x =
            enc_ref::reference_forward(tokens, get("tok_emb.weight"), get("pos_emb.weight"), t, c);
        x = drop_ref::reference_forward(&x, drop(0, rates.emb));
        for l in 0..cfg.n_layers {
            let n = |s: &str| format!("blocks.{l}.{s}");
            let ln1 = ln_ref::reference_forward(&x, get(&n("norm1.scale")), get(&n("norm1.shift")));
            let qb = cfg.qkv_bias.then(|| get(&n("att.qkv.bias")));
            let qkv = mm_ref::reference_forward(&ln1, get(&n("att.qkv.weight")), qb, c);
            let dims = Dims {
                b,
                t,
                c,
                h: cfg.n_heads,
            };
            let atty = attn_ref::reference_forward(&qkv, dims, drop(site(l, 0), rates.attn));
            let proj = mm_ref::reference_forward(
                &atty,
                get(&n("att.proj.weight")),
                Some(get(&n("att.proj.bias"))),
                c,
            );
            let proj = drop_ref::reference_forward(&proj, drop(site(l, 1), rates.resid));
            let res2 = res_ref::reference_forward(&x, &proj);
            let ln2 =
                ln_ref::reference_forward(&res2, get(&n("norm2.scale")), get(&n("norm2.shift")));
            let fc = mm_ref::reference_forward(
                &ln2,
                get(&n("ff.fc.weight")),
                Some(get(&n("ff.fc.bias"))),
                c,
            );
            let g = gelu_ref::reference_forward(&fc);
            let fp = mm_ref::reference_forward(
                &g,
                get(&n("ff.proj.weight")),
                Some(get(&n("ff.proj.bias"))),
                4 * c,
            );
            let fp = drop_ref::reference_forward(&fp, drop(site(l, 2), rates.resid));
            x = res_ref::reference_forward(&res2, &fp);
        }
        let lnf = ln_ref::reference_forward(&x, get("final_norm.scale"), get("final_norm.shift"));
        // A classifier (found by its head bias) has its own (K, C) head whatever tied_head says.
        let classifier = tensors.iter().any(|x| x.name == "out_head.bias");
        let head = if cfg.tied_head && !classifier {
            get("tok_emb.weight")
        } else {
            get("out_head.weight")
        };
        let bias = classifier.then(|| get("out_head.bias"));
        let logits = mm_ref::reference_forward(&lnf, head, bias, c);
        let loss = ce_ref::reference_forward(&logits, targets);
        (logits, loss)
    }

    fn whole_model_check(cfg: GptConfig, rates: DropoutRates, mode: Mode) {
        whole_model_check_with(cfg, rates, mode, None, 0);
    }

    /// `classes`: check a classifier with K classes whose targets are ignored except at one
    /// position per row (the book's readout); `from`: [`Gpt::grad_from_layer`] (gradients below
    /// must stay zero).
    fn whole_model_check_with(
        cfg: GptConfig,
        rates: DropoutRates,
        mode: Mode,
        classes: Option<usize>,
        from: usize,
    ) {
        let (b, t) = (2, 5);
        let mut m = Gpt::new(cfg, Init::Gpt2, 17).unwrap();
        if let Some(k) = classes {
            m = m.into_classifier(k, 3).unwrap();
        }
        m.grad_from_layer = from;
        m.dropout = rates;
        // Generic values everywhere (GPT-2's 0.02 init gives gradients too small to test well):
        // weights ~U(-0.5, 0.5), LayerNorm scales 1 ± 0.3.
        let mut rng = Rng(99);
        for ti in m.tensors.clone() {
            let is_scale = ti.name.ends_with(".scale");
            for v in &mut m.params[ti.range()] {
                let u = rng.uniform();
                *v = if is_scale { 1.0 + 0.3 * u } else { 0.5 * u } as f32;
            }
        }
        let tokens: Vec<u32> = (0..b * t)
            .map(|i| ((i * 7 + 3) % cfg.vocab_size) as u32)
            .collect();
        let outputs = m.outputs();
        let mut targets: Vec<i32> = (0..b * t).map(|i| ((i * 5 + 1) % outputs) as i32).collect();
        targets[3] = IGNORE_INDEX;
        if classes.is_some() {
            // One label per row: at the last position of row 0, at position 2 of row 1.
            for (i, y) in targets.iter_mut().enumerate() {
                if i != t - 1 && i != t + 2 {
                    *y = IGNORE_INDEX;
                }
            }
        }
        let loss = m
            .forward(&tokens, Some(&targets), b, t, mode)
            .unwrap()
            .unwrap();
        let p64: Vec<f64> = m.params.iter().map(|&v| v as f64).collect();
        let (ref_logits, ref_loss) =
            reference_forward(&cfg, &m.tensors, &p64, &tokens, &targets, b, t, rates, mode);
        assert_close(
            "model logits",
            m.logits().unwrap(),
            &ref_logits,
            FWD_ATOL,
            1e-5,
        );
        assert!(
            (loss as f64 - ref_loss).abs() < FWD_ATOL,
            "loss {loss} vs {ref_loss}"
        );
        m.zero_grad();
        m.backward().unwrap();
        let tensors = m.tensors.clone();
        let want = fd_grad(&p64, |x| {
            reference_forward(&cfg, &tensors, x, &tokens, &targets, b, t, rates, mode).1
        });
        // Frozen tensors (below `from`) get no gradient at all; the rest match the reference.
        for ti in &tensors {
            let layer = ti
                .name
                .strip_prefix("blocks.")
                .and_then(|r| r.split('.').next())
                .and_then(|n| n.parse::<usize>().ok());
            let frozen = match layer {
                Some(l) => l < from,
                None => from > 0 && ti.name.contains("_emb."),
            };
            if frozen {
                assert!(
                    m.grads[ti.range()].iter().all(|&g| g == 0.0),
                    "{} is frozen but got a gradient",
                    ti.name
                );
                continue;
            }
            assert_close(
                &ti.name,
                &m.grads[ti.range()],
                &want[ti.range()],
                GRAD_ATOL,
                GRAD_RTOL,
            );
        }
    }

    #[test]
    fn whole_model_gradient_untied_no_bias() {
        whole_model_check(tiny(false, false), DropoutRates::NONE, Mode::Eval);
    }

    #[test]
    fn whole_model_gradient_tied_with_qkv_bias() {
        whole_model_check(tiny(true, true), DropoutRates::NONE, Mode::Eval);
    }

    #[test]
    fn whole_model_gradient_with_dropout_at_all_sites() {
        let rates = DropoutRates {
            emb: 0.1,
            attn: 0.2,
            resid: 0.15,
        };
        whole_model_check(tiny(true, false), rates, Mode::Train { seed: 5 });
    }

    #[test]
    fn classifier_gradient_with_bias_and_dropout() {
        let rates = DropoutRates {
            emb: 0.1,
            attn: 0.2,
            resid: 0.15,
        };
        // Tied and untied language models both become a (K, C) + (K) classifier.
        whole_model_check_with(tiny(true, true), rates, Mode::Train { seed: 5 }, Some(3), 0);
        whole_model_check_with(
            tiny(false, false),
            DropoutRates::NONE,
            Mode::Eval,
            Some(2),
            0,
        );
    }

    #[test]
    fn frozen_bottom_layers_get_no_gradient() {
        // Only the last block, the final norm and the head (the book's chapter 6).
        whole_model_check_with(
            tiny(true, false),
            DropoutRates::NONE,
            Mode::Eval,
            Some(2),
            1,
        );
        // Only the final norm and the head (untied: a tied head is the embedding, not frozen).
        whole_model_check_with(tiny(false, false), DropoutRates::NONE, Mode::Eval, None, 2);
    }

    #[test]
    fn lora_adapter_gradients_and_merge_match_an_f64_reference() {
        use crate::finetune::tune::{LoraSpec, LoraTargets, Trainable, TuneOptions, Tuner};
        let cfg = tiny(true, false);
        let (b, t) = (2, 5);
        let mut m = Gpt::new(cfg, Init::Gpt2, 17)
            .unwrap()
            .into_classifier(3, 2)
            .unwrap();
        let mut rng = Rng(7);
        for ti in m.tensors.clone() {
            let is_scale = ti.name.ends_with(".scale");
            for v in &mut m.params[ti.range()] {
                let u = rng.uniform();
                *v = if is_scale { 1.0 + 0.3 * u } else { 0.5 * u } as f32;
            }
        }
        let base: Vec<f64> = m.params.iter().map(|&v| v as f64).collect();
        let (rank, alpha) = (2, 3.0f32);
        let mut tuner = Tuner::new(
            &mut m,
            &TuneOptions {
                trainable: Trainable::All,
                lora: Some(LoraSpec {
                    rank,
                    alpha,
                    targets: LoraTargets {
                        emb: true,
                        ..LoraTargets::ALL
                    },
                }),
                weight_decay: 0.0,
                seed: 1,
            },
        )
        .unwrap();
        // The embedding, 2 layers × (q, k, v, proj, fc, ff.proj), the head.
        assert_eq!(tuner.adapters().len(), 14);
        // B starts at zero: the merged model is the base model.
        tuner.merge(&mut m);
        assert!(m.params.iter().zip(&base).all(|(&a, &b)| a as f64 == b));
        // Give B generic values so that both gradients are non-trivial.
        let adapters = tuner.adapters().to_vec();
        for ad in &adapters {
            for v in &mut tuner.adapter_params_mut()[ad.b.clone()] {
                *v = (0.4 * rng.uniform()) as f32;
            }
        }
        tuner.merge(&mut m);
        let tokens: Vec<u32> = (0..b * t).map(|i| ((i * 7 + 3) % 11) as u32).collect();
        let mut targets = vec![IGNORE_INDEX; b * t];
        targets[t - 1] = 2;
        targets[2 * t - 1] = 0;
        let scale = alpha as f64 / rank as f64;
        let tensors = m.tensors.clone();
        // The unmerged model in f64: W = W0 + s·B·A formed here, independently of Tuner::merge.
        let reference = |ad: &[f64]| {
            let mut p = base.clone();
            for a in &adapters {
                let (o, i) = (a.out_features, a.in_features);
                for row in 0..o {
                    for col in 0..i {
                        let mut acc = 0.0;
                        for k in 0..rank {
                            acc += ad[a.b.start + row * rank + k] * ad[a.a.start + k * i + col];
                        }
                        p[a.weight.start + row * i + col] += scale * acc;
                    }
                }
            }
            reference_forward(
                &cfg,
                &tensors,
                &p,
                &tokens,
                &targets,
                b,
                t,
                DropoutRates::NONE,
                Mode::Eval,
            )
        };
        let ad64: Vec<f64> = tuner.adapter_params().iter().map(|&v| v as f64).collect();
        m.zero_grad();
        m.forward(&tokens, Some(&targets), b, t, Mode::Eval)
            .unwrap();
        let (want_logits, _) = reference(&ad64);
        assert_close(
            "merged logits",
            m.logits().unwrap(),
            &want_logits,
            FWD_ATOL,
            1e-5,
        );
        m.backward().unwrap();
        tuner.adapter_gradients(&mut m);
        let want = fd_grad(&ad64, |x| reference(x).1);
        for ad in &adapters {
            assert_close(
                &format!("{} A", ad.name),
                &tuner.adapter_grads()[ad.a.clone()],
                &want[ad.a.clone()],
                GRAD_ATOL,
                GRAD_RTOL,
            );
            assert_close(
                &format!("{} B", ad.name),
                &tuner.adapter_grads()[ad.b.clone()],
                &want[ad.b.clone()],
                GRAD_ATOL,
                GRAD_RTOL,
            );
        }
        // A step moves only the adapted blocks of the merged weights.
        let before = m.params.clone();
        tuner.step(&mut m, 1e-2).unwrap();
        for ti in &tensors {
            let changed = m.params[ti.range()] != before[ti.range()];
            let adapted = ti.shape.len() == 2 && ti.name != "pos_emb.weight";
            assert_eq!(changed, adapted, "{}", ti.name);
        }
    }

    #[test]
    fn into_classifier_keeps_the_body_and_checks_classes() {
        let lm = Gpt::new(tiny(false, false), Init::Gpt2, 4).unwrap();
        let body: Vec<(String, Vec<f32>)> = lm
            .tensors()
            .iter()
            .filter(|t| !t.name.starts_with("out_head"))
            .map(|t| (t.name.clone(), lm.param(&t.name).unwrap().to_vec()))
            .collect();
        let m = lm.into_classifier(3, 9).unwrap();
        for (name, v) in &body {
            assert_eq!(m.param(name).unwrap(), &v[..], "{name}");
        }
        assert_eq!(m.param("out_head.weight").unwrap().len(), 3 * 8);
        assert_eq!(m.param("out_head.bias").unwrap().len(), 3);
        let bound = 1.0 / 8f32.sqrt();
        assert!(
            m.param("out_head.weight")
                .unwrap()
                .iter()
                .all(|x| x.abs() <= bound)
        );
        assert_eq!(m.outputs(), 3);
        let lm = Gpt::new(tiny(false, false), Init::Gpt2, 4).unwrap();
        assert_eq!(
            lm.into_classifier(1, 0).unwrap_err(),
            ModelError::BadClasses { classes: 1 }
        );
        let n = m.params().len();
        assert!(Gpt::classifier_from_params(tiny(false, false), 3, vec![0.0; n]).is_ok());
        assert!(Gpt::classifier_from_params(tiny(false, false), 3, vec![0.0; n - 1]).is_err());
    }

    #[test]
    fn layout_follows_the_canonical_order() {
        for (bias, tied) in [(false, false), (true, true), (true, false)] {
            let cfg = tiny(bias, tied);
            let mut m = Gpt::new(cfg, Init::Gpt2, 1).unwrap();
            for (i, v) in m.params.iter_mut().enumerate() {
                *v = i as f32;
            }
            let names: Vec<(String, Vec<usize>)> = m
                .tensors
                .iter()
                .map(|t| (t.name.clone(), t.shape.clone()))
                .collect();
            assert_eq!(names, cfg.tensor_shapes());
            assert_eq!(m.params.len(), cfg.param_count());
            let v = m.views();
            let start = |s: &[f32]| s[0] as usize;
            let off = |name: &str| m.tensors.iter().find(|t| t.name == name).unwrap().offset;
            assert_eq!(start(v.tok_emb), off("tok_emb.weight"));
            assert_eq!(start(v.pos_emb), off("pos_emb.weight"));
            for (l, blk) in v.blocks.iter().enumerate() {
                let n = |s: &str| off(&format!("blocks.{l}.{s}"));
                assert_eq!(start(blk.norm1_scale), n("norm1.scale"));
                assert_eq!(start(blk.norm1_shift), n("norm1.shift"));
                assert_eq!(start(blk.qkv_weight), n("att.qkv.weight"));
                assert_eq!(blk.qkv_bias.map(start), bias.then(|| n("att.qkv.bias")));
                assert_eq!(start(blk.proj_weight), n("att.proj.weight"));
                assert_eq!(start(blk.proj_bias), n("att.proj.bias"));
                assert_eq!(start(blk.norm2_scale), n("norm2.scale"));
                assert_eq!(start(blk.norm2_shift), n("norm2.shift"));
                assert_eq!(start(blk.fc_weight), n("ff.fc.weight"));
                assert_eq!(start(blk.fc_bias), n("ff.fc.bias"));
                assert_eq!(start(blk.ff_proj_weight), n("ff.proj.weight"));
                assert_eq!(start(blk.ff_proj_bias), n("ff.proj.bias"));
                assert_eq!(blk.ff_proj_bias.len(), cfg.dim);
            }
            assert_eq!(start(v.final_norm_scale), off("final_norm.scale"));
            assert_eq!(start(v.final_norm_shift), off("final_norm.shift"));
            assert_eq!(
                v.out_head.map(start),
                (!tied).then(|| off("out_head.weight"))
            );
            assert_eq!(m.param("final_norm.shift").unwrap().len(), cfg.dim);
        }
    }

    #[test]
    fn decay_mask_policies() {
        let m = Gpt::new(tiny(true, false), Init::Gpt2, 1).unwrap();
        let all = m.decay_mask(DecayPolicy::All);
        let mat = m.decay_mask(DecayPolicy::MatricesOnly);
        for t in m.tensors() {
            let two_d = t.shape.len() == 2;
            for i in [t.offset, t.offset + t.len - 1] {
                assert!(all.is_decayed(i));
                assert_eq!(mat.is_decayed(i), two_d, "{}", t.name);
            }
        }
    }

    #[test]
    fn inputs_are_validated() {
        let cfg = tiny(false, false);
        let mut m = Gpt::new(cfg, Init::Gpt2, 1).unwrap();
        let ok = [1u32, 2, 3];
        assert_eq!(
            m.forward(&[1, 11, 2], None, 1, 3, Mode::Eval),
            Err(ModelError::IdOutOfRange {
                field: "tokens",
                index: 1,
                value: 11,
                vocab_size: 11
            })
        );
        assert_eq!(
            m.forward(&ok, Some(&[1, -1, 2]), 1, 3, Mode::Eval),
            Err(ModelError::IdOutOfRange {
                field: "targets",
                index: 1,
                value: -1,
                vocab_size: 11
            })
        );
        assert_eq!(
            m.forward(&ok, Some(&[-100, -100, -100]), 1, 3, Mode::Eval),
            Err(ModelError::NoTargets)
        );
        assert_eq!(
            m.forward(&ok, None, 1, 4, Mode::Eval),
            Err(ModelError::BadLength {
                field: "tokens",
                expected: 4,
                got: 3
            })
        );
        assert_eq!(
            m.forward(&[0; 8], None, 1, 8, Mode::Eval),
            Err(ModelError::SequenceTooLong {
                t: 8,
                context_length: 7
            })
        );
        assert_eq!(
            m.forward(&[], None, 0, 3, Mode::Eval),
            Err(ModelError::EmptyBatch { b: 0, t: 3 })
        );
        assert_eq!(
            m.forward(&ok, None, usize::MAX / 2, 3, Mode::Eval),
            Err(ModelError::TooLarge {
                b: usize::MAX / 2,
                t: 3
            })
        );
        assert_eq!(m.backward(), Err(ModelError::NoForward));
        m.forward(&ok, None, 1, 3, Mode::Eval).unwrap();
        assert_eq!(
            m.backward(),
            Err(ModelError::NoForward),
            "no targets, no backward"
        );
        m.dropout.attn = 1.5;
        assert_eq!(
            m.forward(&ok, None, 1, 3, Mode::Train { seed: 1 }),
            Err(ModelError::BadDropout {
                site: "attn",
                p: 1.5
            })
        );
        assert_eq!(
            m.forward(&ok, Some(&[1, 2, 3]), 1, 3, Mode::Train { seed: 1 })
                .map(|_| ()),
            Err(ModelError::BadDropout {
                site: "attn",
                p: 1.5
            })
        );
        m.dropout.attn = 0.0;
        m.forward(&ok, Some(&[1, 2, 3]), 1, 3, Mode::Eval).unwrap();
        m.backward().unwrap();
        assert_eq!(
            m.backward(),
            Err(ModelError::NoForward),
            "backward consumes the forward"
        );
        assert!(m.logits().is_none());
    }

    #[test]
    fn backward_accumulates_and_dropout_modes_behave() {
        let cfg = tiny(false, false);
        let mut m = Gpt::new(cfg, Init::Gpt2, 3).unwrap();
        m.dropout = DropoutRates::uniform(0.1);
        let x = [1u32, 5, 7, 2, 0, 3, 3, 9];
        let y = [5i32, 7, 2, 0, 3, 3, 9, 1];
        // Eval mode ignores the rates; Train with p = 0 equals Eval exactly.
        let e = m.forward(&x, Some(&y), 2, 4, Mode::Eval).unwrap().unwrap();
        let tr1 = m
            .forward(&x, Some(&y), 2, 4, Mode::Train { seed: 1 })
            .unwrap()
            .unwrap();
        let tr1b = m
            .forward(&x, Some(&y), 2, 4, Mode::Train { seed: 1 })
            .unwrap()
            .unwrap();
        let tr2 = m
            .forward(&x, Some(&y), 2, 4, Mode::Train { seed: 2 })
            .unwrap()
            .unwrap();
        assert_eq!(tr1, tr1b, "same seed, same masks");
        assert_ne!(tr1, tr2);
        assert_ne!(tr1, e);
        m.dropout = DropoutRates::NONE;
        let tr0 = m
            .forward(&x, Some(&y), 2, 4, Mode::Train { seed: 1 })
            .unwrap()
            .unwrap();
        assert_eq!(tr0, e);
        // Two backward passes accumulate exactly twice the gradient.
        m.zero_grad();
        m.backward().unwrap();
        let once = m.grads().to_vec();
        m.forward(&x, Some(&y), 2, 4, Mode::Eval).unwrap();
        m.backward().unwrap();
        for (a, b) in once.iter().zip(m.grads()) {
            assert!(
                (2.0 * a - b).abs() <= ACCUM_RTOL * a.abs() + ACCUM_ATOL,
                "{a} {b}"
            );
        }
        // Smaller batches reuse the buffers; the loss does not depend on earlier calls.
        let bytes = m.activation_bytes();
        let small = m
            .forward(&x[..4], Some(&y[..4]), 1, 4, Mode::Eval)
            .unwrap()
            .unwrap();
        assert_eq!(m.activation_bytes(), bytes);
        let mut fresh = Gpt::new(cfg, Init::Gpt2, 3).unwrap();
        assert_eq!(
            fresh
                .forward(&x[..4], Some(&y[..4]), 1, 4, Mode::Eval)
                .unwrap()
                .unwrap(),
            small
        );
    }

    #[test]
    fn results_do_not_depend_on_thread_count() {
        let cfg = GptConfig {
            vocab_size: 300,
            context_length: 64,
            dim: 64,
            n_layers: 2,
            n_heads: 4,
            qkv_bias: true,
            tied_head: false,
        };
        let (b, t) = (3, 40);
        let x: Vec<u32> = (0..b * t).map(|i| (i * 37 % 300) as u32).collect();
        let y: Vec<i32> = (0..b * t).map(|i| (i * 11 % 300) as i32).collect();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut m = Gpt::new(cfg, Init::Gpt2, 8).unwrap();
                m.dropout = DropoutRates::uniform(0.1);
                let loss = m
                    .forward(&x, Some(&y), b, t, Mode::Train { seed: 4 })
                    .unwrap()
                    .unwrap();
                m.zero_grad();
                m.backward().unwrap();
                (loss, m.grads().to_vec())
            })
        };
        let (l1, g1) = run(1);
        let (l2, g2) = run(2);
        assert_eq!(l1, l2);
        assert_eq!(g1, g2);
    }

    #[test]
    fn init_is_deterministic_and_has_the_documented_statistics() {
        let cfg = GptConfig {
            vocab_size: 1000,
            context_length: 64,
            dim: 96,
            n_layers: 3,
            n_heads: 4,
            qkv_bias: true,
            tied_head: false,
        };
        let a = Gpt::new(cfg, Init::Gpt2, 5).unwrap();
        let b = Gpt::new(cfg, Init::Gpt2, 5).unwrap();
        let c = Gpt::new(cfg, Init::Gpt2, 6).unwrap();
        assert_eq!(a.params, b.params);
        assert_ne!(a.params, c.params);
        let std = |s: &[f32]| {
            let n = s.len() as f64;
            let mean = s.iter().map(|&v| v as f64).sum::<f64>() / n;
            (s.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
        };
        let te = std(a.param("tok_emb.weight").unwrap());
        assert!((te - 0.02).abs() < STD_TOL * 0.02, "{te}");
        let pj = std(a.param("blocks.0.ff.proj.weight").unwrap());
        assert!(
            (pj - 0.02 / 6f64.sqrt()).abs() < STD_TOL * 0.02 / 6f64.sqrt(),
            "{pj}"
        );
        assert!(
            a.param("blocks.1.att.qkv.bias")
                .unwrap()
                .iter()
                .all(|&v| v == 0.0)
        );
        assert!(
            a.param("blocks.1.norm2.scale")
                .unwrap()
                .iter()
                .all(|&v| v == 1.0)
        );
        let t = Gpt::new(cfg, Init::TorchDefault, 5).unwrap();
        let te = std(t.param("tok_emb.weight").unwrap());
        assert!((te - 1.0).abs() < 0.02, "{te}");
        let fc = t.param("blocks.0.ff.proj.weight").unwrap(); // fan_in 4C = 384
        let bound = 1.0 / 384f32.sqrt();
        assert!(fc.iter().all(|v| v.abs() <= bound) && fc.iter().any(|v| v.abs() > 0.9 * bound));
        let fb = t.param("blocks.0.ff.proj.bias").unwrap();
        assert!(fb.iter().all(|v| v.abs() <= bound) && fb.iter().any(|v| v.abs() > 0.5 * bound));
    }

    #[test]
    fn memory_estimate_counts_everything() {
        let cfg = GptConfig::preset("124m").unwrap();
        let est = memory_estimate(&cfg, 2, 256);
        let params = 163_009_536u64 * 16;
        // Activations for B=2, T=256: a few hundred MB on top of 2.6 GB of parameter state.
        assert!(
            est > params + 200_000_000 && est < params + 1_000_000_000,
            "{est}"
        );
        let small = tiny(false, false);
        let mut m = Gpt::new(small, Init::Gpt2, 1).unwrap();
        m.reserve(1, 5).unwrap();
        let reserved = m.activation_bytes();
        m.forward(&[1, 2, 3, 4, 5], Some(&[1, 2, 3, 4, 5]), 1, 5, Mode::Eval)
            .unwrap();
        assert_eq!(
            m.activation_bytes(),
            reserved,
            "forward reuses the reserved buffers"
        );
        m.zero_grad();
        let held = (m.params.len() * 4 * 2 + m.activation_bytes()) as u64
            + (small.param_count() * 8) as u64;
        assert_eq!(memory_estimate(&small, 1, 5), held);
        assert_eq!(memory_estimate(&cfg, usize::MAX, 2), u64::MAX);
    }
}
