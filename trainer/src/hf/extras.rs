//! What a Hugging Face directory says besides the weights: the tokenizer (`tokenizer.json`, no
//! more ids than the model's vocabulary, which may be padded beyond it), the chat template
//! (`tokenizer_config.json`'s `chat_template`, or `chat_template.jinja`), the special tokens it is
//! rendered with, and the tokens that end a reply (`generation_config.json`'s `eos_token_id`, a
//! number or a list, else config.json's). Every file is optional; a present one must be valid.

use super::ConvertError;
use super::dir::{HfDir, read_json};
use emberlm_formats::chat::ChatTemplate;
use emberlm_formats::ember::{EmberWriter, FormatError};
use emberlm_formats::meta::{self, ChatTemplateSource, SpecialStrings};
use emberlm_formats::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::Path;

/// Largest `tokenizer_config.json` / `chat_template.jinja` accepted (real ones are under 1 MiB,
/// their added-token tables included).
const MAX_BYTES: u64 = 32 << 20;

/// The directory's tokenizer, chat template and end-of-reply tokens.
#[derive(Clone, Debug, Default)]
pub struct Extras {
    /// `tokenizer.json`, when present.
    pub tokenizer: Option<Tokenizer>,
    /// The chat template with its special tokens.
    pub chat: Option<ChatTemplateSource>,
    /// Ids that end a reply (`generation_config.json`), in the file's order.
    pub eos_ids: Vec<u32>,
    /// The id a prompt starts with, where the model has one.
    pub bos_id: Option<u32>,
}

/// Writes what a `.ember` file of a Hugging Face model carries besides its tokenizer: the chat
/// template (when there is one) and the end-of-reply and start ids. Shared by the conversion of
/// a directory and the export of a checkpoint imported from one.
pub fn put(w: &mut EmberWriter, extras: &Extras) -> Result<(), FormatError> {
    if let Some(chat) = &extras.chat {
        meta::put_chat_template(w, chat)?;
    }
    meta::put_generation(
        w,
        &meta::Generation {
            eos_ids: extras.eos_ids.clone(),
            bos_id: extras.bos_id,
        },
    )
}

/// A special token's text: a string, or an added-token object `{"content": ...}`.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// Ids from a number or a list of numbers; `what` names the field for errors.
fn ids(v: Option<&Value>, path: &Path, what: &str) -> Result<Vec<u32>, ConvertError> {
    let bad = || ConvertError::Json {
        path: path.display().to_string(),
        message: format!("{what} is not a token id or a list of ids"),
    };
    let one = |v: &Value| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(bad)
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(one).collect(),
        Some(v) => Ok(vec![one(v)?]),
    }
}

/// Reads the optional files of `hf`'s directory; its vocabulary bounds the ids.
pub fn read(hf: &HfDir) -> Result<Extras, ConvertError> {
    read_files(&hf.dir, hf.config.vocab_size, &hf.config_json)
}

/// [`read`] for a directory that holds the files without the weights (a checkpoint's `hf/`):
/// `vocab_size` bounds the ids, `config` (the model's `config.json`, or `null`) supplies the
/// token ids `generation_config.json` does not.
pub fn read_files(dir: &Path, vocab_size: usize, config: &Value) -> Result<Extras, ConvertError> {
    let mut extras = Extras::default();
    let tok_path = dir.join("tokenizer.json");
    if tok_path.is_file() {
        let tok = Tokenizer::from_hf_json_file(&tok_path).map_err(|e| ConvertError::Json {
            path: tok_path.display().to_string(),
            message: e.to_string(),
        })?;
        if tok.vocab_size() > vocab_size {
            return Err(ConvertError::Json {
                path: tok_path.display().to_string(),
                message: format!(
                    "{} token ids, more than the model's vocabulary of {vocab_size}",
                    tok.vocab_size()
                ),
            });
        }
        extras.tokenizer = Some(tok);
    }
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.is_file() {
        Some(read_json(&tc_path, MAX_BYTES)?)
    } else {
        None
    };
    let jinja_path = dir.join("chat_template.jinja");
    let source = if jinja_path.is_file() {
        let len = std::fs::metadata(&jinja_path).map(|m| m.len()).unwrap_or(0);
        if len > MAX_BYTES {
            return Err(ConvertError::Json {
                path: jinja_path.display().to_string(),
                message: format!("{len} bytes is above the cap of {MAX_BYTES}"),
            });
        }
        Some(
            std::fs::read_to_string(&jinja_path).map_err(|e| ConvertError::Io {
                path: jinja_path.display().to_string(),
                message: e.to_string(),
            })?,
        )
    } else {
        match tc.as_ref().and_then(|t| t.get("chat_template")) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            // Several named templates: the one called "default" is what transformers applies.
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            Some(_) => {
                return Err(ConvertError::Json {
                    path: tc_path.display().to_string(),
                    message: "chat_template is not a string or a list of named templates".into(),
                });
            }
        }
    };
    if let Some(source) = source {
        let tok = |k: &str| token_text(tc.as_ref().and_then(|t| t.get(k)));
        let special = SpecialStrings {
            bos_token: tok("bos_token"),
            eos_token: tok("eos_token"),
            pad_token: tok("pad_token"),
            unk_token: tok("unk_token"),
        };
        // Refuse a template that does not compile now rather than at the first chat.
        ChatTemplate::new(&source, special.clone()).map_err(|e| ConvertError::Json {
            path: tc_path.display().to_string(),
            message: format!("chat_template: {e}"),
        })?;
        extras.chat = Some(ChatTemplateSource { source, special });
    }
    let gen_path = dir.join("generation_config.json");
    let cfg_path = dir.join("config.json");
    let generation = if gen_path.is_file() {
        Some(read_json(&gen_path, 1 << 20)?)
    } else {
        None
    };
    let pick = |k: &str| {
        generation
            .as_ref()
            .and_then(|g| g.get(k))
            .filter(|v| !v.is_null())
            .map(|v| (v, gen_path.as_path()))
            .or_else(|| config.get(k).map(|v| (v, cfg_path.as_path())))
    };
    if let Some((v, p)) = pick("eos_token_id") {
        extras.eos_ids = ids(Some(v), p, "eos_token_id")?;
    }
    if let Some((v, p)) = pick("bos_token_id") {
        extras.bos_id = ids(Some(v), p, "bos_token_id")?.first().copied();
    }
    let out_of_range = extras
        .eos_ids
        .iter()
        .chain(&extras.bos_id)
        .find(|&&id| id as usize >= vocab_size);
    if let Some(id) = out_of_range {
        return Err(ConvertError::Json {
            path: gen_path.display().to_string(),
            message: format!("token id {id} is outside the vocabulary of {vocab_size}"),
        });
    }
    Ok(extras)
}
