//! The metadata conventions of an emberlm model file: which keys hold the configuration, the task,
//! the prompt template and the provenance (see FORMAT.md, "Metadata keys").

use crate::config::{GptConfig, LAYERNORM_EPS, MAX_CONTEXT, MAX_DIM, MAX_LAYERS, MAX_VOCAB};
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

/// Writes the tokenizer (`tokenizer.*`): its whole vocabulary, so the file needs nothing else.
/// A tiktoken-style vocabulary is `tokenizer.kind = "bpe-bytes"` (unchanged since the first
/// files); a Hugging Face BPE tokenizer is `"hf-bpe"` with the extra keys of FORMAT.md.
pub fn put_tokenizer(w: &mut EmberWriter, tok: &Tokenizer) -> Result<(), FormatError> {
    let parts = tok.to_parts();
    match tok.hf_parts() {
        None => {
            w.set("tokenizer.kind", Value::Str("bpe-bytes".into()))?;
        }
        Some(h) => put_hf(w, h)?,
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
}
