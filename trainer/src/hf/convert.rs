//! A Hugging Face model directory → one `.ember` file, streamed tensor by tensor: each tensor is
//! read from its shard (F32, F16 or BF16), converted to f32, given Gemma's +1 where the
//! description says so, encoded in the export dtype and written; nothing else is held. Peak memory
//! is about the largest tensor in f32 plus its encoded copy (for Llama-3.2-1B's embedding,
//! 128256 × 2048: 1.05 GB + 0.53 GB in f16), far below the model's f32 size (4.9 GB).

use super::ConvertError;
use super::dir::HfDir;
use crate::export::{ExportDtype, encode_tensor};
use emberlm_formats::arch::{self, Tensor};
use emberlm_formats::config::ModelConfig;
use emberlm_formats::ember::{DType, EmberWriter, FormatError, Value};
use emberlm_formats::meta::{self, Task};
use std::path::Path;

/// Where the base model's tensors live in the files: `model.` for `*ForCausalLM`, nothing for a
/// bare base model, and the two spellings of Gemma 3's multimodal checkpoints.
const BASE_PREFIXES: [&str; 4] = [
    "model.",
    "",
    "model.language_model.",
    "language_model.model.",
];
/// The head's names, same order of preference.
const HEAD_NAMES: [&str; 2] = ["lm_head.weight", "language_model.lm_head.weight"];
/// Tensors of a multimodal checkpoint that a text model does not use.
const OTHER_TOWERS: [&str; 4] = [
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
];

/// What [`convert`] did.
#[derive(Debug)]
pub struct Converted {
    /// The configuration written.
    pub config: ModelConfig,
    /// The file size in bytes.
    pub bytes: u64,
    /// Tensors written.
    pub tensors: usize,
    /// Tensors of the directory that were deliberately left out (rotary tables, a tied head's
    /// copy, other towers of a multimodal checkpoint), with why.
    pub ignored: Vec<String>,
}

/// The tensors to write, each with its Hugging Face name, in file order.
type Plan = Vec<(Tensor, String)>;

/// The Hugging Face name of every tensor the configuration has, in file order, and the tensors
/// of the directory left out (with why).
fn plan(hf: &HfDir) -> Result<(Plan, Vec<String>), ConvertError> {
    let cfg = &hf.config;
    let prefix = BASE_PREFIXES
        .into_iter()
        .find(|p| hf.file(&format!("{p}embed_tokens.weight")).is_some())
        .ok_or_else(|| ConvertError::MissingTensor {
            name: "model.embed_tokens.weight".into(),
            why: "no token embedding under any known prefix".into(),
        })?;
    let head = HEAD_NAMES.into_iter().find(|h| hf.file(h).is_some());
    let mut planned = Vec::new();
    for t in arch::tensors(cfg, None) {
        let Some(hf_name) = t.desc.hf_name(cfg.arch, t.layer.unwrap_or(0), prefix) else {
            continue;
        };
        let hf_name = match (t.desc.hf.is_some_and(|h| h.root), head) {
            (true, Some(h)) => h.to_string(),
            _ => hf_name,
        };
        planned.push((t, hf_name));
    }
    let used: std::collections::BTreeSet<&str> = planned.iter().map(|(_, n)| n.as_str()).collect();
    let mut ignored = Vec::new();
    for name in hf.names() {
        if used.contains(name) {
            continue;
        }
        let why = if cfg.tied_head && HEAD_NAMES.contains(&name) {
            "the head is tied to the token embedding"
        } else if cfg
            .arch
            .hf_block_buffers()
            .iter()
            .any(|b| name.ends_with(b))
        {
            "a buffer, recomputed by the runtime"
        } else if OTHER_TOWERS.iter().any(|p| name.starts_with(p)) {
            "not part of the text model"
        } else {
            return Err(ConvertError::UnexpectedTensor {
                name: name.to_string(),
            });
        };
        ignored.push(format!("{name} ({why})"));
    }
    Ok((planned, ignored))
}

/// Converts `hf` into `out` (written atomically) with matrices in `dtype`. `extra` adds metadata
/// (tokenizer, chat template, provenance) before the tensors are written.
pub fn convert(
    hf: &HfDir,
    dtype: ExportDtype,
    out: &Path,
    extra: &mut dyn FnMut(&mut EmberWriter) -> Result<(), FormatError>,
) -> Result<Converted, ConvertError> {
    let cfg = hf.config;
    let (planned, ignored) = plan(hf)?;
    for (t, name) in &planned {
        let file = hf.file(name).ok_or_else(|| ConvertError::MissingTensor {
            name: name.clone(),
            why: format!("needed for {} (see config.json)", t.name),
        })?;
        let info = file.info(name).ok_or_else(|| ConvertError::MissingTensor {
            name: name.clone(),
            why: "listed but absent".into(),
        })?;
        if info.shape != t.shape {
            return Err(ConvertError::Shape {
                name: name.clone(),
                expected: t.shape.clone(),
                found: info.shape.clone(),
            });
        }
    }
    let mut w = EmberWriter::new();
    meta::put_model_config(&mut w, &cfg)?;
    meta::put_task(&mut w, &Task::LanguageModel)?;
    w.set("provenance.dtype", Value::Str(dtype.name().into()))?;
    w.set(
        "provenance.trainer",
        Value::Str(format!("ember-train {}", env!("CARGO_PKG_VERSION"))),
    )?;
    w.set(
        "provenance.source",
        Value::Str(format!(
            "{} (Hugging Face {})",
            hf.dir.display(),
            hf.model_type
        )),
    )?;
    extra(&mut w)?;
    for (t, _) in &planned {
        let dt = if t.desc.is_matrix() {
            match dtype {
                ExportDtype::F32 => DType::F32,
                ExportDtype::F16 => DType::F16,
                ExportDtype::Int8 => DType::Q8,
            }
        } else {
            DType::F32
        };
        w.add_tensor(&t.name, dt, &t.shape)?;
    }
    let mut failure: Option<ConvertError> = None;
    let mut quant_error = None;
    let result = w.write_file(out, |i, entry, sink| {
        let (t, name) = &planned[i];
        let read = hf
            .file(name)
            .ok_or_else(|| ConvertError::MissingTensor {
                name: name.clone(),
                why: "vanished".into(),
            })
            .and_then(|f| f.read_f32(name).map_err(ConvertError::Import));
        let mut x = match read {
            Ok(x) => x,
            Err(e) => {
                let msg = e.to_string();
                failure = Some(e);
                return Err(std::io::Error::other(msg));
            }
        };
        if t.desc.hf.is_some_and(|h| h.plus_one) {
            for v in &mut x {
                *v += 1.0;
            }
        }
        encode_tensor(entry, &x, sink, &mut quant_error)
    });
    let bytes = match (result, failure, quant_error) {
        (Ok(b), _, _) => b,
        (Err(_), Some(e), _) => return Err(e),
        (Err(_), None, Some(q)) => return Err(ConvertError::Export(q)),
        (Err(e), None, None) => return Err(ConvertError::Format(e)),
    };
    Ok(Converted {
        config: cfg,
        bytes,
        tensors: planned.len(),
        ignored,
    })
}
