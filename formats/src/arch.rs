//! Model architectures, each described once: every tensor's role, shape, when it is present, and
//! its names in each external layout (ember's own, Hugging Face's, the book's). The runtime's
//! tensor slots, the trainer's flat parameter buffer, checkpoints, import, export and
//! export-safetensors all iterate a description ([`tensors`]) instead of spelling names.
//!
//! Adding a family means adding a description (a `&'static [TensorDesc]` and an [`Arch`] variant)
//! plus the layers it needs.
//!
//! Letters used in shapes ([`Dim`]): V vocabulary size, T context length, C embedding dim,
//! K classes of a classifier head.

use crate::config::{GptConfig, ModelConfig};

pub use crate::config::Arch;

impl Arch {
    /// Hugging Face's prefix of block `layer`'s tensor names.
    pub fn hf_block_prefix(self, layer: usize) -> String {
        match self {
            Arch::Gpt2 => format!("h.{layer}."),
            _ => format!("layers.{layer}."),
        }
    }

    /// The prefix that Hugging Face's `*LMHeadModel` / `*ForCausalLM` files put before every name
    /// of the base model (files of the base model alone have none); [`HfName::root`] names never
    /// have it.
    pub fn hf_base_prefix(self) -> &'static str {
        match self {
            Arch::Gpt2 => "transformer.",
            _ => "model.",
        }
    }

    /// Per-block buffers that Hugging Face files may hold besides weights (attention masks,
    /// rotary tables): names after the block prefix.
    pub fn hf_block_buffers(self) -> &'static [&'static str] {
        match self {
            Arch::Gpt2 => &["attn.bias", "attn.masked_bias"],
            _ => &["self_attn.rotary_emb.inv_freq"],
        }
    }

    /// The book's prefix of block `layer`'s tensor names.
    pub fn book_block_prefix(self, layer: usize) -> String {
        format!("trf_blocks.{layer}.")
    }

    /// Per-block buffers of the book's files (its causal mask): names after the block prefix.
    pub fn book_block_buffers(self) -> &'static [&'static str] {
        &["att.mask"]
    }

    /// The architecture's tensors, in canonical order (the order of the trainer's flat buffer and
    /// of an exported file).
    pub fn description(self) -> &'static [TensorDesc] {
        match self {
            Arch::Gpt2 => GPT2,
            Arch::Llama | Arch::Qwen2 | Arch::Qwen3 => LLAMA,
            Arch::Gemma3 => GEMMA3,
        }
    }
}

/// What a tensor does, whatever it is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Token embedding (V, C).
    TokEmb,
    /// Learned position embedding (T, C).
    PosEmb,
    /// The norm before attention: scale (C).
    AttnNormScale,
    /// The norm before attention: shift (C).
    AttnNormShift,
    /// Fused query, key, value projection (3C, C): query rows, then key, then value.
    Qkv,
    /// Query projection (H·D, C).
    Q,
    /// Its bias (H·D).
    QBias,
    /// Key projection (Hkv·D, C).
    K,
    /// Its bias (Hkv·D).
    KBias,
    /// Value projection (Hkv·D, C).
    V,
    /// Its bias (Hkv·D).
    VBias,
    /// RMSNorm scale over each query head (D).
    QNorm,
    /// RMSNorm scale over each key head (D).
    KNorm,
    /// The norm of the attention's output, before the residual add (C).
    AttnPostNorm,
    /// The gate of a gated MLP (F, C).
    MlpGate,
    /// The norm of the MLP's output, before the residual add (C).
    MlpPostNorm,
    /// Its bias (3C).
    QkvBias,
    /// Attention output projection (C, C).
    AttnOut,
    /// Its bias (C).
    AttnOutBias,
    /// The norm before the MLP: scale (C).
    MlpNormScale,
    /// The norm before the MLP: shift (C).
    MlpNormShift,
    /// MLP expansion (4C, C; F, C in gated MLPs).
    MlpUp,
    /// Its bias (4C).
    MlpUpBias,
    /// MLP projection back (C, 4C).
    MlpDown,
    /// Its bias (C).
    MlpDownBias,
    /// The final norm: scale (C).
    FinalNormScale,
    /// The final norm: shift (C).
    FinalNormShift,
    /// Output head: (V, C) for a language model, (K, C) for a classifier.
    Head,
    /// A classifier head's bias (K).
    HeadBias,
}

impl Role {
    /// A norm's scale (initialised to 1).
    pub fn is_norm_scale(self) -> bool {
        matches!(
            self,
            Role::AttnNormScale
                | Role::MlpNormScale
                | Role::FinalNormScale
                | Role::QNorm
                | Role::KNorm
                | Role::AttnPostNorm
                | Role::MlpPostNorm
        )
    }

    /// A norm's shift (initialised to 0).
    pub fn is_norm_shift(self) -> bool {
        matches!(
            self,
            Role::AttnNormShift | Role::MlpNormShift | Role::FinalNormShift
        )
    }

    /// An embedding table.
    pub fn is_embedding(self) -> bool {
        matches!(self, Role::TokEmb | Role::PosEmb)
    }

    /// A projection whose output is added to the residual stream (GPT-2 scales its initial
    /// weights by 1/√(2L)).
    pub fn is_residual_out(self) -> bool {
        matches!(self, Role::AttnOut | Role::MlpDown)
    }

    /// For a bias, the role of the weight it belongs to.
    pub fn weight_of_bias(self) -> Option<Role> {
        match self {
            Role::QkvBias => Some(Role::Qkv),
            Role::QBias => Some(Role::Q),
            Role::KBias => Some(Role::K),
            Role::VBias => Some(Role::V),
            Role::AttnOutBias => Some(Role::AttnOut),
            Role::MlpUpBias => Some(Role::MlpUp),
            Role::MlpDownBias => Some(Role::MlpDown),
            Role::HeadBias => Some(Role::Head),
            _ => None,
        }
    }
}

/// One dimension of a described shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    /// V.
    Vocab,
    /// T.
    Context,
    /// `n` × C.
    Dim(usize),
    /// The head's outputs: V for a language model, K for a classifier.
    Outputs,
    /// H·D: all query heads.
    QDim,
    /// Hkv·D: all key (or value) heads.
    KvDim,
    /// D: one head.
    HeadDim,
    /// F: a gated MLP's hidden units.
    Ffn,
}

/// Whether a tensor exists for a given configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Always.
    Always,
    /// When the configuration has query/key/value biases.
    QkvBias,
    /// A language model's own head (untied), or any classifier's head.
    OwnHead,
    /// Classifiers only.
    Classifier,
    /// When the configuration has query/key norms.
    QkNorm,
    /// When the configuration has norms after attention and after the MLP.
    PostNorms,
}

/// Whether a tensor belongs to the model or to each block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One tensor in the model.
    Model,
    /// One tensor per transformer block.
    Block,
}

/// A tensor's name in Hugging Face's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HfName {
    /// The name (for a block: after the block prefix, e.g. `attn.c_attn.weight`).
    pub name: &'static str,
    /// Stored transposed, [in, out] (GPT-2's `Conv1D`).
    pub transposed: bool,
    /// Present in every Hugging Face file even where ember's model has no such tensor (GPT-2's
    /// `c_attn.bias`): written as zeros on export.
    pub always: bool,
    /// Outside the base model (the language-model head): never takes
    /// [`Arch::hf_base_prefix`].
    pub root: bool,
    /// A Gemma norm scale, applied as (1 + w): ember stores 1 + w (added in f32 at conversion),
    /// so every family's RMSNorm multiplies by the stored scale.
    pub plus_one: bool,
}

/// One tensor of an architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorDesc {
    /// What it does.
    pub role: Role,
    /// Model-level or per block.
    pub scope: Scope,
    /// ember's name (for a block: after `blocks.{i}.`).
    pub name: &'static str,
    /// Shape; matrices [out, in] (`nn.Linear`'s layout).
    pub shape: &'static [Dim],
    /// When it exists.
    pub when: When,
    /// Hugging Face's name, if that layout has the tensor (a classifier's head has none).
    pub hf: Option<HfName>,
    /// The book's names (for a block: after `trf_blocks.{i}.`). Several names split the tensor by
    /// rows into equal parts (the book's separate query, key and value projections).
    pub book: &'static [&'static str],
}

impl TensorDesc {
    /// A matrix (may be quantized), as opposed to a vector (norms and biases stay f32).
    pub fn is_matrix(&self) -> bool {
        self.shape.len() == 2
    }

    /// Whether the tensor exists for `cfg` (a classifier with `classes` outputs when `Some`).
    pub fn present(&self, cfg: &ModelConfig, classes: Option<usize>) -> bool {
        match self.when {
            When::Always => true,
            When::QkvBias => cfg.qkv_bias,
            When::OwnHead => classes.is_some() || !cfg.tied_head,
            When::Classifier => classes.is_some(),
            When::QkNorm => cfg.qk_norm,
            When::PostNorms => cfg.post_norms,
        }
    }

    /// The concrete shape for `cfg`.
    pub fn dims(&self, cfg: &ModelConfig, classes: Option<usize>) -> Vec<usize> {
        self.shape
            .iter()
            .map(|d| match *d {
                Dim::Vocab => cfg.vocab_size,
                Dim::Context => cfg.context_length,
                Dim::Dim(n) => n * cfg.dim,
                Dim::Outputs => classes.unwrap_or(cfg.vocab_size),
                Dim::QDim => cfg.q_dim(),
                Dim::KvDim => cfg.kv_dim(),
                Dim::HeadDim => cfg.head_dim,
                Dim::Ffn => cfg.ffn_dim,
            })
            .collect()
    }

    /// ember's full name of this tensor in block `layer` (ignored for model-level tensors).
    pub fn ember_name(&self, layer: usize) -> String {
        match self.scope {
            Scope::Model => self.name.to_string(),
            Scope::Block => format!("blocks.{layer}.{}", self.name),
        }
    }

    /// Hugging Face's full name in block `layer`, with `base_prefix` (`""` or
    /// [`Arch::hf_base_prefix`]) unless the tensor is a root one; `None` where that layout has
    /// no such tensor.
    pub fn hf_name(&self, arch: Arch, layer: usize, base_prefix: &str) -> Option<String> {
        let hf = self.hf?;
        let prefix = if hf.root { "" } else { base_prefix };
        Some(match self.scope {
            Scope::Model => format!("{prefix}{}", hf.name),
            Scope::Block => format!("{prefix}{}{}", arch.hf_block_prefix(layer), hf.name),
        })
    }

    /// The book's full names in block `layer` (several: equal row splits of the tensor).
    pub fn book_names(&self, arch: Arch, layer: usize) -> Vec<String> {
        self.book
            .iter()
            .map(|n| match self.scope {
                Scope::Model => n.to_string(),
                Scope::Block => format!("{}{n}", arch.book_block_prefix(layer)),
            })
            .collect()
    }
}

/// One concrete tensor of a configured model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tensor {
    /// Its description.
    pub desc: &'static TensorDesc,
    /// Its block, for per-block tensors.
    pub layer: Option<usize>,
    /// ember's full name (`blocks.3.att.qkv.weight`, …).
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
}

impl Tensor {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every tensor of `arch` configured by `cfg`, in canonical order: model-level tensors before the
/// blocks in description order, then each block's, then the rest. A classifier (`classes` =
/// `Some(K)`) has a (K, C) head and a (K) bias, last, whether or not the language model's head
/// was tied.
pub fn tensors(cfg: &ModelConfig, classes: Option<usize>) -> Vec<Tensor> {
    described(cfg, classes)
        .into_iter()
        .filter_map(|(t, present)| present.then_some(t))
        .collect()
}

/// Every tensor the description has for `cfg`, present or not, in [`tensors`]' order, each with
/// whether `cfg` has it (layouts that always hold a tensor, such as Hugging Face's GPT-2
/// `c_attn.bias`, write the absent ones as zeros).
pub fn described(cfg: &ModelConfig, classes: Option<usize>) -> Vec<(Tensor, bool)> {
    let desc = cfg.arch.description();
    // The block's tensors sit where the first per-block tensor sits in the description.
    let first_block = desc
        .iter()
        .position(|d| d.scope == Scope::Block)
        .unwrap_or(desc.len());
    let one = |d: &'static TensorDesc, layer: Option<usize>| {
        let t = Tensor {
            desc: d,
            layer,
            name: d.ember_name(layer.unwrap_or(0)),
            shape: d.dims(cfg, classes),
        };
        (t, d.present(cfg, classes))
    };
    let mut out = Vec::new();
    for d in &desc[..first_block] {
        out.push(one(d, None));
    }
    for l in 0..cfg.n_layers {
        for d in desc.iter().filter(|d| d.scope == Scope::Block) {
            out.push(one(d, Some(l)));
        }
    }
    for d in desc[first_block..]
        .iter()
        .filter(|d| d.scope == Scope::Model)
    {
        out.push(one(d, None));
    }
    out
}

/// The tensors of a GPT-2 configuration, from [`Arch::Gpt2`]'s description.
impl GptConfig {
    /// Every parameter tensor in canonical order with its shape: [`tensors`] of
    /// GPT-2's description (names, shapes, order and presence are defined there). Linear weights
    /// are stored as `[out, in]`; the query, key and value projections are fused into
    /// `att.qkv` with the query rows first, then key, then value.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.tensor_shapes_with_classes(None)
    }

    /// [`GptConfig::tensor_shapes`] of a classifier with `classes` = K outputs: the language-model
    /// head (if any) is replaced by `out_head.weight` (K, C) and `out_head.bias` (K), last.
    /// `None` gives the language model's shapes.
    pub fn tensor_shapes_with_classes(&self, classes: Option<usize>) -> Vec<(String, Vec<usize>)> {
        tensors(&ModelConfig::from(*self), classes)
            .into_iter()
            .map(|t| (t.name, t.shape))
            .collect()
    }

    /// The total number of parameters (the sum over [`GptConfig::tensor_shapes`]).
    pub fn param_count(&self) -> usize {
        self.tensor_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

/// The first tensor of `tensors` with this role (in block `layer` for per-block roles).
pub fn find(tensors: &[Tensor], role: Role, layer: Option<usize>) -> Option<&Tensor> {
    tensors
        .iter()
        .find(|t| t.desc.role == role && t.layer == layer)
}

const fn hf(name: &'static str) -> Option<HfName> {
    Some(HfName {
        name,
        transposed: false,
        always: false,
        root: false,
        plus_one: false,
    })
}

/// GPT-2's `Conv1D` weights: stored [in, out].
const fn hf_t(name: &'static str) -> Option<HfName> {
    Some(HfName {
        name,
        transposed: true,
        always: false,
        root: false,
        plus_one: false,
    })
}

const C1: &[Dim] = &[Dim::Dim(1)];

/// GPT-2. Hugging Face's block prefix is `h.{i}.` (with `transformer.` before every name but
/// `lm_head.weight` in `GPT2LMHeadModel` files); the book's is `trf_blocks.{i}.`.
const GPT2: &[TensorDesc] = &[
    TensorDesc {
        role: Role::TokEmb,
        scope: Scope::Model,
        name: "tok_emb.weight",
        shape: &[Dim::Vocab, Dim::Dim(1)],
        when: When::Always,
        hf: hf("wte.weight"),
        book: &["tok_emb.weight"],
    },
    TensorDesc {
        role: Role::PosEmb,
        scope: Scope::Model,
        name: "pos_emb.weight",
        shape: &[Dim::Context, Dim::Dim(1)],
        when: When::Always,
        hf: hf("wpe.weight"),
        book: &["pos_emb.weight"],
    },
    TensorDesc {
        role: Role::AttnNormScale,
        scope: Scope::Block,
        name: "norm1.scale",
        shape: C1,
        when: When::Always,
        hf: hf("ln_1.weight"),
        book: &["norm1.scale"],
    },
    TensorDesc {
        role: Role::AttnNormShift,
        scope: Scope::Block,
        name: "norm1.shift",
        shape: C1,
        when: When::Always,
        hf: hf("ln_1.bias"),
        book: &["norm1.shift"],
    },
    TensorDesc {
        role: Role::Qkv,
        scope: Scope::Block,
        name: "att.qkv.weight",
        shape: &[Dim::Dim(3), Dim::Dim(1)],
        when: When::Always,
        hf: hf_t("attn.c_attn.weight"),
        book: &[
            "att.W_query.weight",
            "att.W_key.weight",
            "att.W_value.weight",
        ],
    },
    TensorDesc {
        role: Role::QkvBias,
        scope: Scope::Block,
        name: "att.qkv.bias",
        shape: &[Dim::Dim(3)],
        when: When::QkvBias,
        hf: Some(HfName {
            name: "attn.c_attn.bias",
            transposed: false,
            always: true,
            root: false,
            plus_one: false,
        }),
        book: &["att.W_query.bias", "att.W_key.bias", "att.W_value.bias"],
    },
    TensorDesc {
        role: Role::AttnOut,
        scope: Scope::Block,
        name: "att.proj.weight",
        shape: &[Dim::Dim(1), Dim::Dim(1)],
        when: When::Always,
        hf: hf_t("attn.c_proj.weight"),
        book: &["att.out_proj.weight"],
    },
    TensorDesc {
        role: Role::AttnOutBias,
        scope: Scope::Block,
        name: "att.proj.bias",
        shape: C1,
        when: When::Always,
        hf: hf("attn.c_proj.bias"),
        book: &["att.out_proj.bias"],
    },
    TensorDesc {
        role: Role::MlpNormScale,
        scope: Scope::Block,
        name: "norm2.scale",
        shape: C1,
        when: When::Always,
        hf: hf("ln_2.weight"),
        book: &["norm2.scale"],
    },
    TensorDesc {
        role: Role::MlpNormShift,
        scope: Scope::Block,
        name: "norm2.shift",
        shape: C1,
        when: When::Always,
        hf: hf("ln_2.bias"),
        book: &["norm2.shift"],
    },
    TensorDesc {
        role: Role::MlpUp,
        scope: Scope::Block,
        name: "ff.fc.weight",
        shape: &[Dim::Dim(4), Dim::Dim(1)],
        when: When::Always,
        hf: hf_t("mlp.c_fc.weight"),
        book: &["ff.layers.0.weight"],
    },
    TensorDesc {
        role: Role::MlpUpBias,
        scope: Scope::Block,
        name: "ff.fc.bias",
        shape: &[Dim::Dim(4)],
        when: When::Always,
        hf: hf("mlp.c_fc.bias"),
        book: &["ff.layers.0.bias"],
    },
    TensorDesc {
        role: Role::MlpDown,
        scope: Scope::Block,
        name: "ff.proj.weight",
        shape: &[Dim::Dim(1), Dim::Dim(4)],
        when: When::Always,
        hf: hf_t("mlp.c_proj.weight"),
        book: &["ff.layers.2.weight"],
    },
    TensorDesc {
        role: Role::MlpDownBias,
        scope: Scope::Block,
        name: "ff.proj.bias",
        shape: C1,
        when: When::Always,
        hf: hf("mlp.c_proj.bias"),
        book: &["ff.layers.2.bias"],
    },
    TensorDesc {
        role: Role::FinalNormScale,
        scope: Scope::Model,
        name: "final_norm.scale",
        shape: C1,
        when: When::Always,
        hf: hf("ln_f.weight"),
        book: &["final_norm.scale"],
    },
    TensorDesc {
        role: Role::FinalNormShift,
        scope: Scope::Model,
        name: "final_norm.shift",
        shape: C1,
        when: When::Always,
        hf: hf("ln_f.bias"),
        book: &["final_norm.shift"],
    },
    TensorDesc {
        role: Role::Head,
        scope: Scope::Model,
        name: "out_head.weight",
        shape: &[Dim::Outputs, Dim::Dim(1)],
        when: When::OwnHead,
        hf: Some(HfName {
            name: "lm_head.weight",
            transposed: false,
            always: false,
            root: true,
            plus_one: false,
        }),
        book: &["out_head.weight"],
    },
    TensorDesc {
        role: Role::HeadBias,
        scope: Scope::Model,
        name: "out_head.bias",
        shape: &[Dim::Outputs],
        when: When::Classifier,
        hf: None,
        book: &["out_head.bias"],
    },
];

/// A Hugging Face norm scale that Gemma applies as (1 + w) (see [`HfName::plus_one`]).
const fn hf1(name: &'static str) -> Option<HfName> {
    Some(HfName {
        name,
        transposed: false,
        always: false,
        root: false,
        plus_one: true,
    })
}

/// The language-model head of `*ForCausalLM` files: outside the base model.
const fn hf_root(name: &'static str) -> Option<HfName> {
    Some(HfName {
        name,
        transposed: false,
        always: false,
        root: true,
        plus_one: false,
    })
}

/// Llama, Qwen2 and Qwen3 (Hugging Face's `LlamaForCausalLM` naming: `model.layers.{i}.`, the head
/// `lm_head.weight`). Norms are RMSNorm scales only; q/k/v biases for Qwen2, q/k norms for Qwen3.
const LLAMA: &[TensorDesc] = &[
    TensorDesc {
        role: Role::TokEmb,
        scope: Scope::Model,
        name: "tok_emb.weight",
        shape: &[Dim::Vocab, Dim::Dim(1)],
        when: When::Always,
        hf: hf("embed_tokens.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::AttnNormScale,
        scope: Scope::Block,
        name: "attn_norm.weight",
        shape: C1,
        when: When::Always,
        hf: hf("input_layernorm.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::Q,
        scope: Scope::Block,
        name: "attn.q.weight",
        shape: &[Dim::QDim, Dim::Dim(1)],
        when: When::Always,
        hf: hf("self_attn.q_proj.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::QBias,
        scope: Scope::Block,
        name: "attn.q.bias",
        shape: &[Dim::QDim],
        when: When::QkvBias,
        hf: hf("self_attn.q_proj.bias"),
        book: &[],
    },
    TensorDesc {
        role: Role::K,
        scope: Scope::Block,
        name: "attn.k.weight",
        shape: &[Dim::KvDim, Dim::Dim(1)],
        when: When::Always,
        hf: hf("self_attn.k_proj.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::KBias,
        scope: Scope::Block,
        name: "attn.k.bias",
        shape: &[Dim::KvDim],
        when: When::QkvBias,
        hf: hf("self_attn.k_proj.bias"),
        book: &[],
    },
    TensorDesc {
        role: Role::V,
        scope: Scope::Block,
        name: "attn.v.weight",
        shape: &[Dim::KvDim, Dim::Dim(1)],
        when: When::Always,
        hf: hf("self_attn.v_proj.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::VBias,
        scope: Scope::Block,
        name: "attn.v.bias",
        shape: &[Dim::KvDim],
        when: When::QkvBias,
        hf: hf("self_attn.v_proj.bias"),
        book: &[],
    },
    TensorDesc {
        role: Role::QNorm,
        scope: Scope::Block,
        name: "attn.q_norm.weight",
        shape: &[Dim::HeadDim],
        when: When::QkNorm,
        hf: hf("self_attn.q_norm.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::KNorm,
        scope: Scope::Block,
        name: "attn.k_norm.weight",
        shape: &[Dim::HeadDim],
        when: When::QkNorm,
        hf: hf("self_attn.k_norm.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::AttnOut,
        scope: Scope::Block,
        name: "attn.out.weight",
        shape: &[Dim::Dim(1), Dim::QDim],
        when: When::Always,
        hf: hf("self_attn.o_proj.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::MlpNormScale,
        scope: Scope::Block,
        name: "mlp_norm.weight",
        shape: C1,
        when: When::Always,
        hf: hf("post_attention_layernorm.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::MlpGate,
        scope: Scope::Block,
        name: "mlp.gate.weight",
        shape: &[Dim::Ffn, Dim::Dim(1)],
        when: When::Always,
        hf: hf("mlp.gate_proj.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::MlpUp,
        scope: Scope::Block,
        name: "mlp.up.weight",
        shape: &[Dim::Ffn, Dim::Dim(1)],
        when: When::Always,
        hf: hf("mlp.up_proj.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::MlpDown,
        scope: Scope::Block,
        name: "mlp.down.weight",
        shape: &[Dim::Dim(1), Dim::Ffn],
        when: When::Always,
        hf: hf("mlp.down_proj.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::FinalNormScale,
        scope: Scope::Model,
        name: "final_norm.weight",
        shape: C1,
        when: When::Always,
        hf: hf("norm.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::Head,
        scope: Scope::Model,
        name: "head.weight",
        shape: &[Dim::Outputs, Dim::Dim(1)],
        when: When::OwnHead,
        hf: hf_root("lm_head.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::HeadBias,
        scope: Scope::Model,
        name: "head.bias",
        shape: &[Dim::Outputs],
        when: When::Classifier,
        hf: None,
        book: &[],
    },
];

/// Gemma 3 (text): as [`LLAMA`] without biases, with norms after attention and after the MLP, and
/// every norm stored as 1 + w.
const GEMMA3: &[TensorDesc] = &[
    TensorDesc {
        role: Role::TokEmb,
        scope: Scope::Model,
        name: "tok_emb.weight",
        shape: &[Dim::Vocab, Dim::Dim(1)],
        when: When::Always,
        hf: hf("embed_tokens.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::AttnNormScale,
        scope: Scope::Block,
        name: "attn_norm.weight",
        shape: C1,
        when: When::Always,
        hf: hf1("input_layernorm.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::Q,
        scope: Scope::Block,
        name: "attn.q.weight",
        shape: &[Dim::QDim, Dim::Dim(1)],
        when: When::Always,
        hf: hf("self_attn.q_proj.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::K,
        scope: Scope::Block,
        name: "attn.k.weight",
        shape: &[Dim::KvDim, Dim::Dim(1)],
        when: When::Always,
        hf: hf("self_attn.k_proj.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::V,
        scope: Scope::Block,
        name: "attn.v.weight",
        shape: &[Dim::KvDim, Dim::Dim(1)],
        when: When::Always,
        hf: hf("self_attn.v_proj.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::QNorm,
        scope: Scope::Block,
        name: "attn.q_norm.weight",
        shape: &[Dim::HeadDim],
        when: When::QkNorm,
        hf: hf1("self_attn.q_norm.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::KNorm,
        scope: Scope::Block,
        name: "attn.k_norm.weight",
        shape: &[Dim::HeadDim],
        when: When::QkNorm,
        hf: hf1("self_attn.k_norm.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::AttnOut,
        scope: Scope::Block,
        name: "attn.out.weight",
        shape: &[Dim::Dim(1), Dim::QDim],
        when: When::Always,
        hf: hf("self_attn.o_proj.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::AttnPostNorm,
        scope: Scope::Block,
        name: "attn_post_norm.weight",
        shape: C1,
        when: When::PostNorms,
        hf: hf1("post_attention_layernorm.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::MlpNormScale,
        scope: Scope::Block,
        name: "mlp_norm.weight",
        shape: C1,
        when: When::Always,
        hf: hf1("pre_feedforward_layernorm.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::MlpGate,
        scope: Scope::Block,
        name: "mlp.gate.weight",
        shape: &[Dim::Ffn, Dim::Dim(1)],
        when: When::Always,
        hf: hf("mlp.gate_proj.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::MlpUp,
        scope: Scope::Block,
        name: "mlp.up.weight",
        shape: &[Dim::Ffn, Dim::Dim(1)],
        when: When::Always,
        hf: hf("mlp.up_proj.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::MlpDown,
        scope: Scope::Block,
        name: "mlp.down.weight",
        shape: &[Dim::Dim(1), Dim::Ffn],
        when: When::Always,
        hf: hf("mlp.down_proj.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::MlpPostNorm,
        scope: Scope::Block,
        name: "mlp_post_norm.weight",
        shape: C1,
        when: When::PostNorms,
        hf: hf1("post_feedforward_layernorm.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::FinalNormScale,
        scope: Scope::Model,
        name: "final_norm.weight",
        shape: C1,
        when: When::Always,
        hf: hf1("norm.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::Head,
        scope: Scope::Model,
        name: "head.weight",
        shape: &[Dim::Outputs, Dim::Dim(1)],
        when: When::OwnHead,
        hf: hf_root("lm_head.weight"),
        book: &[],
    },
    TensorDesc {
        role: Role::HeadBias,
        scope: Scope::Model,
        name: "head.bias",
        shape: &[Dim::Outputs],
        when: When::Classifier,
        hf: None,
        book: &[],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    // The book's parameter counts (BOOK.md ch04), computed by PyTorch's GPTModel, not by this code.
    #[test]
    fn parameter_counts_match_the_book() {
        let expect = [
            ("124m", 163_009_536usize),
            ("355m", 406_212_608),
            ("774m", 838_220_800),
            ("1558m", 1_637_792_000),
        ];
        for (name, total) in expect {
            let cfg = GptConfig::preset(name).unwrap();
            assert_eq!(cfg.param_count(), total, "{name}");
        }
        let mut cfg = GptConfig::preset("124m").unwrap();
        cfg.qkv_bias = true;
        assert_eq!(cfg.param_count(), 163_037_184);
        cfg.qkv_bias = false;
        cfg.tied_head = true;
        assert_eq!(cfg.param_count(), 124_412_160);
    }

    #[test]
    fn every_role_appears_once_per_scope_instance() {
        let desc = Arch::Gpt2.description();
        for (i, a) in desc.iter().enumerate() {
            for b in &desc[i + 1..] {
                assert_ne!(a.role, b.role, "{} and {}", a.name, b.name);
                assert_ne!(a.name, b.name);
            }
            // The book's split parts divide the rows evenly for every described shape.
            if a.book.len() > 1 {
                let Dim::Dim(n) = a.shape[0] else {
                    panic!("{}: split over a non-C dimension", a.name)
                };
                assert_eq!(n % a.book.len(), 0, "{}", a.name);
            }
        }
    }

    #[test]
    fn classifier_head_replaces_the_language_model_head() {
        let mut cfg = GptConfig::preset("124m").unwrap();
        cfg.tied_head = true;
        let lm = tensors(&cfg.into(), None);
        assert!(find(&lm, Role::Head, None).is_none());
        let cl = tensors(&cfg.into(), Some(2));
        let n = cl.len();
        assert_eq!(cl[n - 2].name, "out_head.weight");
        assert_eq!(cl[n - 2].shape, vec![2, 768]);
        assert_eq!(cl[n - 1].name, "out_head.bias");
        assert_eq!(cl[n - 1].shape, vec![2]);
        assert_eq!(
            find(&cl, Role::Qkv, Some(11)).unwrap().name,
            "blocks.11.att.qkv.weight"
        );
    }

    // Published parameter totals of the real models (Hugging Face's safetensors metadata /
    // model cards), not computed by this code: the descriptions give every tensor its shape.
    #[test]
    fn parameter_counts_match_published_models() {
        for (name, total) in [
            ("smollm2-135m", 134_515_008usize),
            ("qwen3-0.6b", 596_049_920),
            ("llama3.2-1b", 1_235_814_400),
            ("gemma3-270m", 268_098_176),
        ] {
            let cfg = ModelConfig::preset(name).unwrap();
            cfg.validate().unwrap();
            let n: usize = tensors(&cfg, None).iter().map(|t| t.len()).sum();
            assert_eq!(n, total, "{name}");
        }
    }

    #[test]
    fn family_descriptions_name_hugging_face_tensors() {
        let cfg = ModelConfig::preset("qwen2.5-0.5b").unwrap();
        let names: Vec<String> = tensors(&cfg, None)
            .iter()
            .filter_map(|t| {
                t.desc
                    .hf_name(cfg.arch, t.layer.unwrap_or(0), cfg.arch.hf_base_prefix())
            })
            .collect();
        assert!(names.contains(&"model.layers.3.self_attn.k_proj.bias".to_string()));
        assert!(names.contains(&"model.norm.weight".to_string()));
        assert!(
            !names.iter().any(|n| n.contains("q_norm")),
            "qwen2 has no q_norm"
        );
        let gemma = ModelConfig::preset("gemma3-270m").unwrap();
        let t = tensors(&gemma, None);
        let post = find(&t, Role::MlpPostNorm, Some(17)).unwrap();
        assert_eq!(post.name, "blocks.17.mlp_post_norm.weight");
        assert!(post.desc.hf.unwrap().plus_one);
        assert!(gemma.is_local(0) && gemma.is_local(4) && !gemma.is_local(5));
    }
}
