//! A Hugging Face model directory → one `.ember` file, streamed: each tensor is read from its
//! shard (F32, F16 or BF16) in chunks of whole rows (at most [`CHUNK_VALUES`] values), converted
//! to f32, given Gemma's +1 where the description says so, encoded in the export dtype and
//! written. Only a chunk (16 MiB of f32) and an int8 tensor's scales (1/16 of its quants) are held,
//! so peak memory does not grow with the model (README § Hugging Face models gives the figure).

use super::ConvertError;
use super::dir::HfDir;
use crate::export::{ExportDtype, ExportError};
use crate::import::SafetensorsFile;
use emberlm_formats::arch::{self, Tensor};
use emberlm_formats::config::ModelConfig;
use emberlm_formats::ember::{
    DType, EmberWriter, FormatError, TensorEntry, Value, write_f16s, write_f32s, write_q8_tail,
};
use emberlm_formats::meta::{self, Task};
use emberlm_formats::quant::{self, QuantError};
use half::f16;
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

/// Converts `hf` into `out` (written atomically) with matrices in `dtype`, with the directory's
/// tokenizer, chat template and end-of-reply tokens ([`super::extras`]). `extra` adds more
/// metadata before the tensors are written.
pub fn convert(
    hf: &HfDir,
    dtype: ExportDtype,
    out: &Path,
    extra: &mut dyn FnMut(&mut EmberWriter) -> Result<(), FormatError>,
) -> Result<Converted, ConvertError> {
    convert_keep(hf, dtype, &crate::export::Keep::default(), out, extra)
}

/// [`convert`] with the matrices named by `keep` kept at f16 or int8 (see
/// [`crate::export::tensor_dtype`]).
pub fn convert_keep(
    hf: &HfDir,
    dtype: ExportDtype,
    keep: &crate::export::Keep,
    out: &Path,
    extra: &mut dyn FnMut(&mut EmberWriter) -> Result<(), FormatError>,
) -> Result<Converted, ConvertError> {
    let cfg = hf.config;
    let (planned, ignored) = plan(hf)?;
    crate::export::check_keep(
        keep,
        planned
            .iter()
            .filter(|(t, _)| t.desc.is_matrix())
            .map(|(t, _)| t.name.as_str()),
    )
    .map_err(ConvertError::Export)?;
    for (t, name) in &planned {
        source(hf, t, name)?;
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
    let extras = super::extras::read(hf)?;
    if let Some(tok) = &extras.tokenizer {
        meta::put_tokenizer(&mut w, tok)?;
    }
    super::extras::put(&mut w, &extras)?;
    extra(&mut w)?;
    for (t, _) in &planned {
        let dt = crate::export::tensor_dtype(dtype, &t.name, t.desc.is_matrix(), keep);
        w.add_tensor(&t.name, dt, &t.shape)?;
    }
    let mut failure: Option<ConvertError> = None;
    let result = w.write_file(out, |i, entry, sink| {
        let (t, name) = &planned[i];
        let plus_one = t.desc.hf.is_some_and(|h| h.plus_one);
        let streamed = match hf.file(name) {
            Some(file) => stream_tensor(file, name, entry, plus_one, sink, CHUNK_VALUES),
            None => Err(ConvertError::MissingTensor {
                name: name.clone(),
                why: "vanished".into(),
            }),
        };
        streamed.map_err(|e| {
            let msg = e.to_string();
            failure = Some(e);
            std::io::Error::other(msg)
        })
    });
    let bytes = match (result, failure) {
        (Ok(b), _) => b,
        (Err(_), Some(e)) => return Err(e),
        (Err(e), None) => return Err(ConvertError::Format(e)),
    };
    Ok(Converted {
        config: cfg,
        bytes,
        tensors: planned.len(),
        ignored,
    })
}

/// Values read, converted and encoded at a time (16 MiB of f32).
pub const CHUNK_VALUES: usize = 1 << 22;

/// Writes tensor `name` of `file` in `entry`'s dtype, whole rows at a time (about
/// `chunk_values` values, at least one row).
fn stream_tensor(
    file: &SafetensorsFile,
    name: &str,
    entry: &TensorEntry,
    plus_one: bool,
    out: &mut dyn std::io::Write,
    chunk_values: usize,
) -> Result<(), ConvertError> {
    let cols = (*entry.shape.last().unwrap_or(&1) as usize).max(1);
    let rows = entry.numel() as usize / cols;
    let step = (chunk_values / cols).max(1);
    let io = |e: std::io::Error| ConvertError::Io {
        path: name.to_string(),
        message: e.to_string(),
    };
    let quant = |e: QuantError, offset: usize| {
        let error = match e {
            QuantError::NonFinite { index, value } => QuantError::NonFinite {
                index: index + offset,
                value,
            },
            QuantError::OutOfRange { index, value } => QuantError::OutOfRange {
                index: index + offset,
                value,
            },
            other => other,
        };
        ConvertError::Export(ExportError::Quant {
            tensor: entry.name.clone(),
            error,
        })
    };
    let mut x = Vec::new();
    let mut half = Vec::new();
    let mut quants = Vec::new();
    let mut nibbles = Vec::new();
    let mut scales: Vec<f16> = Vec::new();
    let nb = quant::q8_blocks_per_row(cols);
    for r0 in (0..rows).step_by(step) {
        let n = step.min(rows - r0) * cols;
        x.resize(n, 0.0);
        file.read_f32_range(name, r0 * cols, &mut x)
            .map_err(ConvertError::Import)?;
        if plus_one {
            x.iter_mut().for_each(|v| *v += 1.0);
        }
        match entry.dtype {
            DType::F32 => write_f32s(out, &x).map_err(io)?,
            DType::F16 => {
                half.resize(n, f16::ZERO);
                quant::quantize_f16(&x, &mut half).map_err(|e| quant(e, r0 * cols))?;
                write_f16s(out, &half).map_err(io)?;
            }
            DType::Q8 => {
                quants.resize(n, 0i8);
                let s0 = scales.len();
                scales.resize(s0 + n / cols * nb, f16::ZERO);
                quant::quantize_q8(&x, cols, &mut quants, &mut scales[s0..])
                    .map_err(|e| quant(e, r0 * cols))?;
                out.write_all(bytemuck::cast_slice(&quants)).map_err(io)?;
            }
            DType::Q4 => {
                let nb4 = quant::q4_blocks_per_row(cols);
                nibbles.resize(n / cols * nb4 * quant::Q4_BLOCK_BYTES, 0u8);
                let s0 = scales.len();
                scales.resize(s0 + n / cols * nb4, f16::ZERO);
                quant::quantize_q4(&x, cols, &mut nibbles, &mut scales[s0..])
                    .map_err(|e| quant(e, r0 * cols))?;
                out.write_all(&nibbles).map_err(io)?;
            }
            DType::Q6 => {
                let nb6 = quant::q6_blocks_per_row(cols);
                nibbles.resize(n / cols * nb6 * quant::Q6_BLOCK_BYTES, 0u8);
                let s0 = scales.len();
                scales.resize(s0 + n / cols * nb6, f16::ZERO);
                quant::quantize_q6(&x, cols, &mut nibbles, &mut scales[s0..])
                    .map_err(|e| quant(e, r0 * cols))?;
                out.write_all(&nibbles).map_err(io)?;
            }
        }
    }
    match entry.dtype {
        DType::Q8 => write_q8_tail(out, rows * cols, &scales).map_err(io)?,
        DType::Q4 => {
            let n = rows * quant::q4_blocks_per_row(cols) * quant::Q4_BLOCK_BYTES;
            write_q8_tail(out, n, &scales).map_err(io)?
        }
        DType::Q6 => {
            let n = rows * quant::q6_blocks_per_row(cols) * quant::Q6_BLOCK_BYTES;
            write_q8_tail(out, n, &scales).map_err(io)?
        }
        _ => {}
    }
    Ok(())
}

/// The shard holding `name`, checked to hold it with the shape the description gives `t`.
fn source<'h>(hf: &'h HfDir, t: &Tensor, name: &str) -> Result<&'h SafetensorsFile, ConvertError> {
    let missing = |why: String| ConvertError::MissingTensor {
        name: name.to_string(),
        why,
    };
    let file = hf
        .file(name)
        .ok_or_else(|| missing(format!("needed for {} (see config.json)", t.name)))?;
    let info = file
        .info(name)
        .ok_or_else(|| missing("listed but absent".into()))?;
    if info.shape != t.shape {
        return Err(ConvertError::Shape {
            name: name.to_string(),
            expected: t.shape.clone(),
            found: info.shape.clone(),
        });
    }
    Ok(file)
}

/// Every tensor of the model in f32, in file order, as (ember name, Hugging Face name, values),
/// with Gemma's +1 applied (the training path's import: [`crate::family::Layout`] has the same
/// order).
pub fn read_all_f32(hf: &HfDir) -> Result<Vec<(String, String, Vec<f32>)>, ConvertError> {
    let (planned, _) = plan(hf)?;
    let mut out = Vec::with_capacity(planned.len());
    for (t, name) in planned {
        let mut x = source(hf, &t, &name)?
            .read_f32(&name)
            .map_err(ConvertError::Import)?;
        if t.desc.hf.is_some_and(|h| h.plus_one) {
            x.iter_mut().for_each(|v| *v += 1.0);
        }
        out.push((t.name, name, x));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::encode_tensor;
    use crate::safetensors_io::write_safetensors_f32;
    use std::collections::BTreeMap;

    /// Streaming in chunks of a few rows writes the same bytes as encoding the whole tensor.
    #[test]
    fn chunks_write_what_the_whole_tensor_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("t.safetensors");
        let (rows, cols) = (13, 70);
        let x: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let shapes = vec![("w".to_string(), vec![rows, cols])];
        write_safetensors_f32(&path, &BTreeMap::new(), &shapes, |_, w| {
            x.iter().try_for_each(|v| w.write_all(&v.to_le_bytes()))
        })
        .unwrap();
        let file = SafetensorsFile::open(&path).unwrap();
        for dtype in [DType::F32, DType::F16, DType::Q8, DType::Q4, DType::Q6] {
            let mut w = EmberWriter::new();
            w.add_tensor("w", dtype, &[rows, cols]).unwrap();
            let entry = w.tensors()[0].clone();
            let mut whole = Vec::new();
            encode_tensor(&entry, &x, &mut whole, &mut None).unwrap();
            for chunk in [1, 3 * cols, 5 * cols + 1, 1 << 20] {
                let mut streamed = Vec::new();
                stream_tensor(&file, "w", &entry, false, &mut streamed, chunk).unwrap();
                assert_eq!(streamed, whole, "{dtype:?} chunk {chunk}");
            }
        }
    }
}
