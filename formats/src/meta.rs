//! The metadata conventions of an emberlm model file: which keys hold the configuration, the task,
//! the prompt template and the provenance (see FORMAT.md, "Metadata keys").

use crate::arch::Arch;
use crate::config::{
    GptConfig, LAYERNORM_EPS, MAX_CONTEXT, MAX_DIM, MAX_HEADS, MAX_LAYERS, MAX_VOCAB, Mlp,
    ModelConfig, Norm, Rope, RopeScaling, Sliding,
};
use crate::ember::{Array, EmberWriter, FormatError, Header, Value};
use crate::tokenizer::{
    HfModelKind, HfParts, HfPreTokenizer, MAX_MERGES, Prepend, Tokenizer, TokenizerParts,
};

/// The value of `general.architecture` for every model emberlm writes.
pub const ARCHITECTURE: &str = "gpt2";

/// Writes the configuration keys (`general.architecture`, `gpt2.*`).
pub fn put_config(w: &mut EmberWriter, cfg: &GptConfig) -> Result<(), FormatError> {
    w.set("general.architecture", Value::Str(ARCHITECTURE.into()))?;
    w.set("gpt2.vocab_size", Value::U64(cfg.vocab_size as u64))?;
    w.set("gpt2.context_length", Value::U64(cfg.context_length as u64))?;
    w.set("gpt2.dim", Value::U64(cfg.dim as u64))?;
    w.set("gpt2.n_layers", Value::U64(cfg.n_layers as u64))?;
    w.set("gpt2.n_heads", Value::U64(cfg.n_heads as u64))?;
    w.set("gpt2.qkv_bias", Value::Bool(cfg.qkv_bias))?;
    w.set("gpt2.tied_head", Value::Bool(cfg.tied_head))?;
    w.set("gpt2.layernorm_eps", Value::F32(LAYERNORM_EPS))?;
    Ok(())
}

/// Reads and validates the configuration keys.
pub fn get_config(h: &Header) -> Result<GptConfig, FormatError> {
    let arch = h.require_str("general.architecture")?;
    if arch != ARCHITECTURE {
        return Err(FormatError::WrongType {
            key: "general.architecture".into(),
            expected: "\"gpt2\"",
            found: format!("{arch:?}"),
        });
    }
    let cfg = GptConfig {
        vocab_size: h.require_count("gpt2.vocab_size", MAX_VOCAB)?,
        context_length: h.require_count("gpt2.context_length", MAX_CONTEXT)?,
        dim: h.require_count("gpt2.dim", MAX_DIM)?,
        n_layers: h.require_count("gpt2.n_layers", MAX_LAYERS)?,
        n_heads: h.require_count("gpt2.n_heads", MAX_DIM)?,
        qkv_bias: h.require_bool("gpt2.qkv_bias")?,
        tied_head: h.require_bool("gpt2.tied_head")?,
    };
    cfg.validate().map_err(|e| FormatError::WrongType {
        key: "gpt2.n_heads".into(),
        expected: "a consistent configuration",
        found: e.to_string(),
    })?;
    if let Some(v) = h.get("gpt2.layernorm_eps") {
        let eps = v.as_f64().ok_or_else(|| FormatError::WrongType {
            key: "gpt2.layernorm_eps".into(),
            expected: "a float",
            found: v.type_name().into(),
        })?;
        if eps as f32 != LAYERNORM_EPS {
            return Err(FormatError::WrongType {
                key: "gpt2.layernorm_eps".into(),
                expected: "1e-5 (GPT-2's LayerNorm epsilon)",
                found: eps.to_string(),
            });
        }
    }
    Ok(cfg)
}

/// Writes any family's configuration: GPT-2 as [`put_config`] (the `gpt2.*` keys, unchanged), the
/// others under their own prefix (`llama.*`, `qwen2.*`, `qwen3.*`, `gemma3.*`; FORMAT.md lists
/// the keys).
pub fn put_model_config(w: &mut EmberWriter, cfg: &ModelConfig) -> Result<(), FormatError> {
    if let Some(g) = cfg.gpt2() {
        return put_config(w, &g);
    }
    let p = cfg.arch.name();
    let u = |n: usize| Value::U64(n as u64);
    w.set("general.architecture", Value::Str(p.into()))?;
    w.set(&format!("{p}.vocab_size"), u(cfg.vocab_size))?;
    w.set(&format!("{p}.context_length"), u(cfg.context_length))?;
    w.set(&format!("{p}.dim"), u(cfg.dim))?;
    w.set(&format!("{p}.n_layers"), u(cfg.n_layers))?;
    w.set(&format!("{p}.n_heads"), u(cfg.n_heads))?;
    w.set(&format!("{p}.n_kv_heads"), u(cfg.n_kv_heads))?;
    w.set(&format!("{p}.head_dim"), u(cfg.head_dim))?;
    w.set(&format!("{p}.ffn_dim"), u(cfg.ffn_dim))?;
    w.set(&format!("{p}.norm_eps"), Value::F32(cfg.norm_eps))?;
    let mlp = match cfg.mlp {
        Mlp::Gelu => "gelu",
        Mlp::SwiGlu => "swiglu",
        Mlp::GeGlu => "geglu",
    };
    w.set(&format!("{p}.mlp"), Value::Str(mlp.into()))?;
    w.set(&format!("{p}.qkv_bias"), Value::Bool(cfg.qkv_bias))?;
    w.set(&format!("{p}.qk_norm"), Value::Bool(cfg.qk_norm))?;
    w.set(&format!("{p}.post_norms"), Value::Bool(cfg.post_norms))?;
    w.set(&format!("{p}.tied_head"), Value::Bool(cfg.tied_head))?;
    w.set(&format!("{p}.embed_scale"), Value::F32(cfg.embed_scale))?;
    w.set(&format!("{p}.query_scale"), Value::F32(cfg.query_scale))?;
    if let Some(r) = cfg.rope {
        w.set(&format!("{p}.rope.theta"), Value::F32(r.theta))?;
        w.set(&format!("{p}.rope.local_theta"), Value::F32(r.local_theta))?;
        let (kind, factor) = match r.scaling {
            RopeScaling::None => ("none", None),
            RopeScaling::Linear { factor } => ("linear", Some(factor)),
            RopeScaling::Llama3 { factor, .. } => ("llama3", Some(factor)),
        };
        w.set(&format!("{p}.rope.scaling"), Value::Str(kind.into()))?;
        if let Some(f) = factor {
            w.set(&format!("{p}.rope.factor"), Value::F32(f))?;
        }
        if let RopeScaling::Llama3 {
            low_freq_factor,
            high_freq_factor,
            original_context,
            ..
        } = r.scaling
        {
            w.set(
                &format!("{p}.rope.low_freq_factor"),
                Value::F32(low_freq_factor),
            )?;
            w.set(
                &format!("{p}.rope.high_freq_factor"),
                Value::F32(high_freq_factor),
            )?;
            w.set(&format!("{p}.rope.original_context"), u(original_context))?;
        }
    }
    if let Some(s) = cfg.sliding {
        w.set(&format!("{p}.sliding_window"), u(s.window))?;
        w.set(&format!("{p}.sliding_every"), u(s.every))?;
    }
    Ok(())
}

/// Reads and validates any family's configuration (see [`put_model_config`]).
pub fn get_model_config(h: &Header) -> Result<ModelConfig, FormatError> {
    let name = h.require_str("general.architecture")?;
    let arch = Arch::from_name(name).ok_or_else(|| FormatError::WrongType {
        key: "general.architecture".into(),
        expected: "one of gpt2, llama, qwen2, qwen3, gemma3",
        found: format!("{name:?}"),
    })?;
    if arch == Arch::Gpt2 {
        return get_config(h).map(ModelConfig::from);
    }
    let p = arch.name();
    let k = |key: &str| format!("{p}.{key}");
    let count = |key: &str, max: usize| h.require_count(&k(key), max);
    let bool_ = |key: &str| h.require_bool(&k(key));
    let float = |key: &str| -> Result<f32, FormatError> {
        let v = h.require(&k(key))?;
        v.as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| FormatError::WrongType {
                key: k(key),
                expected: "a float",
                found: v.type_name().into(),
            })
    };
    let mlp = match h.require_str(&k("mlp"))? {
        "swiglu" => Mlp::SwiGlu,
        "geglu" => Mlp::GeGlu,
        other => {
            return Err(FormatError::WrongType {
                key: k("mlp"),
                expected: "\"swiglu\" or \"geglu\"",
                found: format!("{other:?}"),
            });
        }
    };
    let scaling = match h.require_str(&k("rope.scaling"))? {
        "none" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: float("rope.factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: float("rope.factor")?,
            low_freq_factor: float("rope.low_freq_factor")?,
            high_freq_factor: float("rope.high_freq_factor")?,
            original_context: count("rope.original_context", MAX_CONTEXT)?,
        },
        other => {
            return Err(FormatError::WrongType {
                key: k("rope.scaling"),
                expected: "\"none\", \"linear\" or \"llama3\"",
                found: format!("{other:?}"),
            });
        }
    };
    let sliding = match h.get(&k("sliding_window")) {
        None => None,
        Some(_) => Some(Sliding {
            window: count("sliding_window", MAX_CONTEXT)?,
            every: count("sliding_every", MAX_LAYERS)?,
        }),
    };
    let cfg = ModelConfig {
        arch,
        vocab_size: count("vocab_size", MAX_VOCAB)?,
        context_length: count("context_length", MAX_CONTEXT)?,
        dim: count("dim", MAX_DIM)?,
        n_layers: count("n_layers", MAX_LAYERS)?,
        n_heads: count("n_heads", MAX_HEADS)?,
        n_kv_heads: count("n_kv_heads", MAX_HEADS)?,
        head_dim: count("head_dim", MAX_DIM)?,
        ffn_dim: count("ffn_dim", 4 * MAX_DIM)?,
        norm: Norm::RmsNorm,
        norm_eps: float("norm_eps")?,
        mlp,
        rope: Some(Rope {
            theta: float("rope.theta")?,
            local_theta: float("rope.local_theta")?,
            scaling,
        }),
        qkv_bias: bool_("qkv_bias")?,
        qk_norm: bool_("qk_norm")?,
        post_norms: bool_("post_norms")?,
        tied_head: bool_("tied_head")?,
        embed_scale: float("embed_scale")?,
        query_scale: float("query_scale")?,
        sliding,
    };
    cfg.validate().map_err(|e| FormatError::WrongType {
        key: format!("{p}.*"),
        expected: "a consistent configuration",
        found: e.to_string(),
    })?;
    Ok(cfg)
}

/// The tokens that frame a reply (Hugging Face's `generation_config.json`): `generation.eos_ids`
/// end a reply (Llama 3 and Qwen list several), `generation.bos_id` starts a prompt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Generation {
    /// Ids that end a reply.
    pub eos_ids: Vec<u32>,
    /// The id a prompt starts with.
    pub bos_id: Option<u32>,
}

/// Writes `generation.eos_ids` (when any) and `generation.bos_id` (when set).
pub fn put_generation(w: &mut EmberWriter, g: &Generation) -> Result<(), FormatError> {
    if !g.eos_ids.is_empty() {
        w.set(
            "generation.eos_ids",
            Value::Array(Array::U32(g.eos_ids.clone())),
        )?;
    }
    if let Some(b) = g.bos_id {
        w.set("generation.bos_id", Value::U32(b))?;
    }
    Ok(())
}

/// Reads the `generation.*` keys; ids must be below `vocab_size`.
pub fn get_generation(h: &Header, vocab_size: usize) -> Result<Generation, FormatError> {
    let bad = |key: &str, found: String| FormatError::WrongType {
        key: key.into(),
        expected: "token ids below the vocabulary size",
        found,
    };
    let eos_ids = match h.get("generation.eos_ids") {
        None => Vec::new(),
        Some(Value::Array(Array::U32(a))) => a.clone(),
        Some(v) => return Err(bad("generation.eos_ids", v.type_name().into())),
    };
    if let Some(id) = eos_ids.iter().find(|&&id| id as usize >= vocab_size) {
        return Err(bad("generation.eos_ids", id.to_string()));
    }
    let bos_id = match h.get("generation.bos_id") {
        None => None,
        Some(_) => {
            let id = h.require_u64("generation.bos_id")?;
            if id >= vocab_size as u64 {
                return Err(bad("generation.bos_id", id.to_string()));
            }
            Some(id as u32)
        }
    };
    Ok(Generation { eos_ids, bos_id })
}

/// Where a classifier reads its logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readout {
    /// The last position of the (padded) sequence, as in the book.
    Last,
    /// The last real (non-pad) token.
    LastReal,
}

/// What the model's output head computes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Task {
    /// Next-token logits over the vocabulary.
    LanguageModel,
    /// One logit per label; the head is `out_head.weight` (K, C) and `out_head.bias` (K).
    Classifier {
        /// Label names, index = class id.
        labels: Vec<String>,
        /// Which position's hidden state feeds the head.
        readout: Readout,
        /// The padding token id used when the sequences were batched.
        pad_id: u32,
        /// The sequence length the classifier was trained at: inputs are truncated to it and, for
        /// [`Readout::Last`], right-padded with `pad_id` to exactly this length (the book's
        /// `classify_review`). `None`: no padding, truncation only at the context length.
        length: Option<u32>,
    },
}

/// Writes `task.*`.
pub fn put_task(w: &mut EmberWriter, task: &Task) -> Result<(), FormatError> {
    match task {
        Task::LanguageModel => {
            w.set("task.kind", Value::Str("language-model".into()))?;
        }
        Task::Classifier {
            labels,
            readout,
            pad_id,
            length,
        } => {
            w.set("task.kind", Value::Str("classifier".into()))?;
            if let Some(n) = length {
                w.set("task.length", Value::U32(*n))?;
            }
            w.set("task.labels", Value::Array(Array::Str(labels.clone())))?;
            let r = match readout {
                Readout::Last => "last",
                Readout::LastReal => "last-real",
            };
            w.set("task.readout", Value::Str(r.into()))?;
            w.set("task.pad_id", Value::U32(*pad_id))?;
        }
    }
    Ok(())
}

/// Reads `task.*` (a file without `task.kind` is a language model).
pub fn get_task(h: &Header) -> Result<Task, FormatError> {
    let kind = match h.get("task.kind") {
        None => return Ok(Task::LanguageModel),
        Some(_) => h.require_str("task.kind")?,
    };
    match kind {
        "language-model" => Ok(Task::LanguageModel),
        "classifier" => {
            let labels = match h.require("task.labels")? {
                Value::Array(Array::Str(l)) if !l.is_empty() => l.clone(),
                other => {
                    return Err(FormatError::WrongType {
                        key: "task.labels".into(),
                        expected: "a non-empty array of strings",
                        found: other.type_name().into(),
                    });
                }
            };
            let readout = match h.require_str("task.readout")? {
                "last" => Readout::Last,
                "last-real" => Readout::LastReal,
                other => {
                    return Err(FormatError::WrongType {
                        key: "task.readout".into(),
                        expected: "\"last\" or \"last-real\"",
                        found: format!("{other:?}"),
                    });
                }
            };
            let pad = h.require_u64("task.pad_id")?;
            let pad_id = u32::try_from(pad).map_err(|_| FormatError::WrongType {
                key: "task.pad_id".into(),
                expected: "a u32 token id",
                found: pad.to_string(),
            })?;
            let length = match h.get("task.length") {
                None => None,
                Some(_) => {
                    let n = h.require_u64("task.length")?;
                    match u32::try_from(n) {
                        Ok(n) if n > 0 => Some(n),
                        _ => {
                            return Err(FormatError::WrongType {
                                key: "task.length".into(),
                                expected: "a length in 1..2^32",
                                found: n.to_string(),
                            });
                        }
                    }
                }
            };
            Ok(Task::Classifier {
                labels,
                readout,
                pad_id,
                length,
            })
        }
        other => Err(FormatError::WrongType {
            key: "task.kind".into(),
            expected: "\"language-model\" or \"classifier\"",
            found: format!("{other:?}"),
        }),
    }
}

/// A prompt template: `template` with `{instruction}` and `{input}`, where `{input}` expands to
/// `input_template` (itself holding `{input}`) when the input is non-empty, and to nothing otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptTemplate {
    /// The whole prompt, up to where the model's response starts.
    pub template: String,
    /// The section added for a non-empty input.
    pub input_template: String,
}

impl PromptTemplate {
    /// The book's Alpaca template (chapter 7).
    pub fn alpaca() -> PromptTemplate {
        PromptTemplate {
            template: "Below is an instruction that describes a task. Write a response that \
                       appropriately completes the request.\n\n### Instruction:\n{instruction}{input}\
                       \n\n### Response:\n"
                .into(),
            input_template: "\n\n### Input:\n{input}".into(),
        }
    }

    /// The prompt for an instruction and an optional input.
    pub fn render(&self, instruction: &str, input: &str) -> String {
        let input_part = if input.is_empty() {
            String::new()
        } else {
            self.input_template.replace("{input}", input)
        };
        // Substitute {input} first so an instruction containing "{input}" stays literal.
        let (head, tail) = self
            .template
            .split_once("{instruction}")
            .unwrap_or((&self.template, ""));
        format!(
            "{}{}{}",
            head.replace("{input}", &input_part),
            instruction,
            tail.replace("{input}", &input_part)
        )
    }
}

/// Writes `prompt.template` and `prompt.input_template`.
pub fn put_prompt(w: &mut EmberWriter, p: &PromptTemplate) -> Result<(), FormatError> {
    w.set("prompt.template", Value::Str(p.template.clone()))?;
    w.set(
        "prompt.input_template",
        Value::Str(p.input_template.clone()),
    )?;
    Ok(())
}

/// Reads the prompt template, if the file has one.
pub fn get_prompt(h: &Header) -> Result<Option<PromptTemplate>, FormatError> {
    if h.get("prompt.template").is_none() {
        return Ok(None);
    }
    Ok(Some(PromptTemplate {
        template: h.require_str("prompt.template")?.to_string(),
        input_template: match h.get("prompt.input_template") {
            None => String::new(),
            Some(_) => h.require_str("prompt.input_template")?.to_string(),
        },
    }))
}

/// The special tokens a chat template reads, named as transformers passes them to it. A token
/// that is `None` is not defined in the template (Jinja's `undefined`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialStrings {
    /// `bos_token`, e.g. `<|begin_of_text|>` (Llama 3), `<bos>` (Gemma).
    pub bos_token: Option<String>,
    /// `eos_token`, e.g. `<|im_end|>` (Qwen2.5), `<eos>` (Gemma).
    pub eos_token: Option<String>,
    /// `pad_token`.
    pub pad_token: Option<String>,
    /// `unk_token`.
    pub unk_token: Option<String>,
}

/// A model's chat template as the file stores it: Jinja source, rendered by the `chat` module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatTemplateSource {
    /// The Jinja source, exactly as Hugging Face ships it.
    pub source: String,
    /// The special tokens the template is rendered with.
    pub special: SpecialStrings,
}

const CHAT_SPECIAL_KEYS: [&str; 4] = [
    "chat.bos_token",
    "chat.eos_token",
    "chat.pad_token",
    "chat.unk_token",
];

/// Writes `chat.template` and each special token that is set (`chat.bos_token`, ...).
pub fn put_chat_template(w: &mut EmberWriter, c: &ChatTemplateSource) -> Result<(), FormatError> {
    w.set("chat.template", Value::Str(c.source.clone()))?;
    let s = &c.special;
    for (key, v) in
        CHAT_SPECIAL_KEYS
            .iter()
            .zip([&s.bos_token, &s.eos_token, &s.pad_token, &s.unk_token])
    {
        if let Some(v) = v {
            w.set(key, Value::Str(v.clone()))?;
        }
    }
    Ok(())
}

/// Reads the chat template, if the file has one.
pub fn get_chat_template(h: &Header) -> Result<Option<ChatTemplateSource>, FormatError> {
    if h.get("chat.template").is_none() {
        return Ok(None);
    }
    let source = h.require_str("chat.template")?.to_string();
    let mut tokens = [None, None, None, None];
    for (slot, key) in tokens.iter_mut().zip(CHAT_SPECIAL_KEYS) {
        if h.get(key).is_some() {
            *slot = Some(h.require_str(key)?.to_string());
        }
    }
    let [bos_token, eos_token, pad_token, unk_token] = tokens;
    Ok(Some(ChatTemplateSource {
        source,
        special: SpecialStrings {
            bos_token,
            eos_token,
            pad_token,
            unk_token,
        },
    }))
}

/// Writes the tokenizer (`tokenizer.*`): its whole vocabulary, so the file needs nothing else.
/// A tiktoken-style vocabulary is `tokenizer.kind = "bpe-bytes"` (unchanged since the first
/// files); a Hugging Face BPE tokenizer is `"hf-bpe"` with the extra keys of FORMAT.md.
pub fn put_tokenizer(w: &mut EmberWriter, tok: &Tokenizer) -> Result<(), FormatError> {
    let parts = tok.to_parts();
    match tok.hf_parts() {
        None => {
            w.set("tokenizer.kind", Value::Str("bpe-bytes".into()))?;
        }
        Some(h) => put_hf(w, &h)?,
    }
    w.set("tokenizer.tokens", Value::Bytes(parts.tokens))?;
    w.set(
        "tokenizer.token_ends",
        Value::Array(Array::U32(parts.token_ends)),
    )?;
    w.set(
        "tokenizer.special_names",
        Value::Array(Array::Str(parts.special_names)),
    )?;
    w.set(
        "tokenizer.special_ids",
        Value::Array(Array::U32(parts.special_ids)),
    )?;
    Ok(())
}

fn put_hf(w: &mut EmberWriter, h: &HfParts) -> Result<(), FormatError> {
    let model = match h.model {
        HfModelKind::ByteLevel => "byte-level",
        HfModelKind::SentencePiece => "sentencepiece",
    };
    let str_ = |s: &str| Value::Str(s.into());
    w.set("tokenizer.kind", str_("hf-bpe"))?;
    w.set("tokenizer.model", str_(model))?;
    w.set("tokenizer.pretokenizer", str_(h.pretokenizer.name()))?;
    w.set(
        "tokenizer.add_prefix_space",
        Value::Bool(h.add_prefix_space),
    )?;
    w.set("tokenizer.nfc", Value::Bool(h.nfc))?;
    w.set("tokenizer.replace_space", Value::Bool(h.replace_space))?;
    w.set("tokenizer.prepend", str_(h.prepend.name()))?;
    let merges = h.merges.iter().flatten().copied().collect();
    w.set("tokenizer.merges", Value::Array(Array::U32(merges)))?;
    w.set("tokenizer.ignore_merges", Value::Bool(h.ignore_merges))?;
    w.set("tokenizer.byte_fallback", Value::Bool(h.byte_fallback))?;
    w.set("tokenizer.fuse_unk", Value::Bool(h.fuse_unk))?;
    let unk = h.unk_id.into_iter().collect();
    w.set("tokenizer.unk_id", Value::Array(Array::U32(unk)))?;
    w.set(
        "tokenizer.post_prefix",
        Value::Array(Array::U32(h.post_prefix.clone())),
    )?;
    w.set(
        "tokenizer.post_suffix",
        Value::Array(Array::U32(h.post_suffix.clone())),
    )?;
    w.set(
        "tokenizer.strip_leading_space",
        Value::Bool(h.strip_leading_space),
    )?;
    w.set(
        "tokenizer.added_nonspecial",
        Value::Array(Array::U32(h.nonspecial.clone())),
    )?;
    w.set(
        "tokenizer.added_lstrip",
        Value::Array(Array::U32(h.lstrip.clone())),
    )?;
    w.set(
        "tokenizer.added_rstrip",
        Value::Array(Array::U32(h.rstrip.clone())),
    )?;
    Ok(())
}

fn get_hf(h: &Header) -> Result<HfParts, FormatError> {
    let bad = |key: &str, expected: &'static str, found: String| FormatError::WrongType {
        key: key.into(),
        expected,
        found,
    };
    let u32s = |key: &str| match h.require(key)? {
        Value::Array(Array::U32(a)) => Ok(a),
        v => Err(bad(key, "an array of u32", v.type_name().into())),
    };
    let model = match h.require_str("tokenizer.model")? {
        "byte-level" => HfModelKind::ByteLevel,
        "sentencepiece" => HfModelKind::SentencePiece,
        s => {
            return Err(bad(
                "tokenizer.model",
                "\"byte-level\" or \"sentencepiece\"",
                format!("{s:?}"),
            ));
        }
    };
    let pre = h.require_str("tokenizer.pretokenizer")?;
    let pretokenizer = HfPreTokenizer::from_name(pre).ok_or_else(|| {
        bad(
            "tokenizer.pretokenizer",
            "\"whole\", \"gpt2\", \"llama3\" or \"qwen2\"",
            format!("{pre:?}"),
        )
    })?;
    let prep = h.require_str("tokenizer.prepend")?;
    let prepend = Prepend::from_name(prep).ok_or_else(|| {
        bad(
            "tokenizer.prepend",
            "\"never\", \"always\", \"metaspace-first\" or \"metaspace-always\"",
            format!("{prep:?}"),
        )
    })?;
    let flat = u32s("tokenizer.merges")?;
    if flat.len() % 2 != 0 || flat.len() / 2 > MAX_MERGES {
        return Err(bad(
            "tokenizer.merges",
            "an even number of ids, at most 2 * MAX_MERGES",
            format!("{} ids", flat.len()),
        ));
    }
    let unk = u32s("tokenizer.unk_id")?;
    if unk.len() > 1 {
        return Err(bad(
            "tokenizer.unk_id",
            "zero or one id",
            format!("{} ids", unk.len()),
        ));
    }
    Ok(HfParts {
        model,
        pretokenizer,
        add_prefix_space: h.require_bool("tokenizer.add_prefix_space")?,
        nfc: h.require_bool("tokenizer.nfc")?,
        replace_space: h.require_bool("tokenizer.replace_space")?,
        prepend,
        merges: flat.chunks_exact(2).map(|p| [p[0], p[1]]).collect(),
        ignore_merges: h.require_bool("tokenizer.ignore_merges")?,
        byte_fallback: h.require_bool("tokenizer.byte_fallback")?,
        fuse_unk: h.require_bool("tokenizer.fuse_unk")?,
        unk_id: unk.first().copied(),
        post_prefix: u32s("tokenizer.post_prefix")?.clone(),
        post_suffix: u32s("tokenizer.post_suffix")?.clone(),
        strip_leading_space: h.require_bool("tokenizer.strip_leading_space")?,
        nonspecial: u32s("tokenizer.added_nonspecial")?.clone(),
        lstrip: u32s("tokenizer.added_lstrip")?.clone(),
        rstrip: u32s("tokenizer.added_rstrip")?.clone(),
    })
}

/// The id of the special token `name` as the tokenizer's metadata lists it, read without building
/// the tokenizer (whose lookup tables take megabytes for a 128k–152k vocabulary): `None` when the
/// file has no tokenizer, no such token, or lists of another type or unequal lengths.
pub fn get_special_id(h: &Header, name: &str) -> Option<u32> {
    let Some(Value::Array(Array::Str(names))) = h.get("tokenizer.special_names") else {
        return None;
    };
    let Some(Value::Array(Array::U32(ids))) = h.get("tokenizer.special_ids") else {
        return None;
    };
    if names.len() != ids.len() {
        return None;
    }
    ids.get(names.iter().position(|n| n == name)?).copied()
}

/// Reads and validates the tokenizer, if the file has one.
pub fn get_tokenizer(h: &Header) -> Result<Option<Tokenizer>, FormatError> {
    if h.get("tokenizer.kind").is_none() {
        return Ok(None);
    }
    let kind = h.require_str("tokenizer.kind")?;
    let hf = match kind {
        "bpe-bytes" => None,
        "hf-bpe" => Some(get_hf(h)?),
        _ => {
            return Err(FormatError::WrongType {
                key: "tokenizer.kind".into(),
                expected: "\"bpe-bytes\" or \"hf-bpe\"",
                found: format!("{kind:?}"),
            });
        }
    };
    let wrong = |key: &str, expected: &'static str, v: &Value| FormatError::WrongType {
        key: key.into(),
        expected,
        found: v.type_name().into(),
    };
    let tokens = match h.require("tokenizer.tokens")? {
        Value::Bytes(b) => b.clone(),
        v => return Err(wrong("tokenizer.tokens", "bytes", v)),
    };
    let u32s = |key: &str| match h.require(key)? {
        Value::Array(Array::U32(a)) => Ok(a.clone()),
        v => Err(wrong(key, "an array of u32", v)),
    };
    let token_ends = u32s("tokenizer.token_ends")?;
    let special_ids = u32s("tokenizer.special_ids")?;
    let special_names = match h.require("tokenizer.special_names")? {
        Value::Array(Array::Str(a)) => a.clone(),
        v => return Err(wrong("tokenizer.special_names", "an array of strings", v)),
    };
    let parts = TokenizerParts {
        tokens,
        token_ends,
        special_names,
        special_ids,
    };
    match hf {
        None => Tokenizer::from_parts(parts),
        Some(hf) => Tokenizer::from_hf_parts(parts, hf),
    }
    .map(Some)
    .map_err(|e| FormatError::WrongType {
        key: "tokenizer.tokens".into(),
        expected: "a valid byte-level BPE vocabulary",
        found: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ember::{AlignedBytes, EmberFile};

    fn header_of(w: &EmberWriter) -> Header {
        let bytes = AlignedBytes::copy_from(&w.to_vec(|_, _, _| Ok(())).unwrap());
        EmberFile::parse(&bytes).unwrap().header
    }

    #[test]
    fn config_task_and_prompt_round_trip() {
        let mut cfg = GptConfig::preset("355m").unwrap();
        cfg.qkv_bias = true;
        cfg.tied_head = true;
        let task = Task::Classifier {
            labels: vec!["ham".into(), "spam".into()],
            readout: Readout::LastReal,
            pad_id: 50256,
            length: Some(120),
        };
        let mut w = EmberWriter::new();
        put_config(&mut w, &cfg).unwrap();
        put_task(&mut w, &task).unwrap();
        put_prompt(&mut w, &PromptTemplate::alpaca()).unwrap();
        let h = header_of(&w);
        assert_eq!(get_config(&h).unwrap(), cfg);
        assert_eq!(get_task(&h).unwrap(), task);
        assert_eq!(get_prompt(&h).unwrap(), Some(PromptTemplate::alpaca()));
    }

    #[test]
    fn chat_template_round_trips_and_is_optional() {
        let chat = ChatTemplateSource {
            source: "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}".into(),
            special: SpecialStrings {
                bos_token: Some("<|begin_of_text|>".into()),
                eos_token: Some("<|eot_id|>".into()),
                ..SpecialStrings::default()
            },
        };
        let mut w = EmberWriter::new();
        put_chat_template(&mut w, &chat).unwrap();
        let mut h = header_of(&w);
        assert_eq!(get_chat_template(&h).unwrap(), Some(chat));
        assert!(h.get("chat.pad_token").is_none());

        h.metadata.retain(|(k, _)| k != "chat.template");
        assert_eq!(get_chat_template(&h).unwrap(), None);
        assert_eq!(
            get_chat_template(&header_of(&EmberWriter::new())).unwrap(),
            None
        );
    }

    #[test]
    fn special_ids_are_read_without_the_tokenizer() {
        let tok = Tokenizer::gpt2();
        let mut w = EmberWriter::new();
        put_tokenizer(&mut w, tok).unwrap();
        let mut h = header_of(&w);
        let from_tokenizer = get_tokenizer(&h).unwrap().unwrap().eot_id();
        assert_eq!(from_tokenizer, Some(50256));
        assert_eq!(
            get_special_id(&h, crate::tokenizer::ENDOFTEXT),
            from_tokenizer
        );
        assert_eq!(get_special_id(&h, "<|im_end|>"), None);
        assert_eq!(get_special_id(&header_of(&EmberWriter::new()), "x"), None);
        // Lists of unequal lengths (a damaged file): no id rather than a wrong one.
        for (k, v) in &mut h.metadata {
            if k == "tokenizer.special_ids" {
                *v = Value::Array(Array::U32(vec![]));
            }
        }
        assert_eq!(get_special_id(&h, crate::tokenizer::ENDOFTEXT), None);
    }

    #[test]
    fn chat_token_of_the_wrong_type_names_the_key() {
        let mut w = EmberWriter::new();
        w.set("chat.template", Value::Str("x".into())).unwrap();
        w.set("chat.eos_token", Value::U32(2)).unwrap();
        assert!(matches!(
            get_chat_template(&header_of(&w)),
            Err(FormatError::WrongType { key, .. }) if key == "chat.eos_token"
        ));
    }

    #[test]
    fn bad_config_names_the_key() {
        let mut w = EmberWriter::new();
        put_config(&mut w, &GptConfig::preset("124m").unwrap()).unwrap();
        let mut h = header_of(&w);
        h.metadata.retain(|(k, _)| k != "gpt2.dim");
        assert_eq!(
            get_config(&h),
            Err(FormatError::MissingKey {
                key: "gpt2.dim".into()
            })
        );
        h.metadata
            .push(("gpt2.dim".into(), Value::Str("768".into())));
        assert!(
            matches!(get_config(&h), Err(FormatError::WrongType { key, .. }) if key == "gpt2.dim")
        );
    }

    // The exact text of the book's `format_input` + "### Response:" (BOOK.md, chapter 7).
    #[test]
    fn alpaca_template_matches_the_book() {
        let p = PromptTemplate::alpaca();
        assert_eq!(
            p.render("Rewrite the sentence.", "The car is fast."),
            "Below is an instruction that describes a task. Write a response that appropriately \
             completes the request.\n\n### Instruction:\nRewrite the sentence.\n\n### Input:\nThe \
             car is fast.\n\n### Response:\n"
        );
        assert_eq!(
            p.render("Name a color.", ""),
            "Below is an instruction that describes a task. Write a response that appropriately \
             completes the request.\n\n### Instruction:\nName a color.\n\n### Response:\n"
        );
    }

    #[test]
    fn every_preset_round_trips_and_gpt2_keeps_its_keys() {
        for name in ModelConfig::PRESETS {
            let cfg = ModelConfig::preset(name).unwrap();
            let mut w = EmberWriter::new();
            put_model_config(&mut w, &cfg).unwrap();
            let h = header_of(&w);
            assert_eq!(get_model_config(&h).unwrap(), cfg, "{name}");
            let prefix = format!("{}.", cfg.arch.name());
            assert!(
                h.metadata
                    .iter()
                    .all(|(k, _)| k.starts_with(&prefix) || k.starts_with("general.")),
                "{name}"
            );
        }
        // A GPT-2 configuration is written with exactly the keys put_config writes.
        let g = GptConfig::preset("124m").unwrap();
        let (mut a, mut b) = (EmberWriter::new(), EmberWriter::new());
        put_config(&mut a, &g).unwrap();
        put_model_config(&mut b, &ModelConfig::from(g)).unwrap();
        assert_eq!(a.header_bytes(), b.header_bytes());
    }

    #[test]
    fn a_bad_family_configuration_names_the_key() {
        let mut cfg = ModelConfig::preset("qwen3-0.6b").unwrap();
        cfg.n_kv_heads = 3;
        let mut w = EmberWriter::new();
        put_model_config(&mut w, &cfg).unwrap();
        let e = get_model_config(&header_of(&w)).unwrap_err().to_string();
        assert!(e.contains("qwen3.n_kv_heads"), "{e}");
        let mut w = EmberWriter::new();
        w.set("general.architecture", Value::Str("mixtral".into()))
            .unwrap();
        let e = get_model_config(&header_of(&w)).unwrap_err().to_string();
        assert!(
            e.contains("general.architecture") && e.contains("mixtral"),
            "{e}"
        );
    }

    #[test]
    fn generation_ids_round_trip_and_are_bounded() {
        let g = Generation {
            eos_ids: vec![7, 9],
            bos_id: Some(1),
        };
        let mut w = EmberWriter::new();
        put_generation(&mut w, &g).unwrap();
        let h = header_of(&w);
        assert_eq!(get_generation(&h, 10).unwrap(), g);
        let e = get_generation(&h, 9).unwrap_err().to_string();
        assert!(e.contains("generation.eos_ids") && e.contains('9'), "{e}");
        assert_eq!(
            get_generation(&header_of(&EmberWriter::new()), 1).unwrap(),
            Generation::default()
        );
    }
}
