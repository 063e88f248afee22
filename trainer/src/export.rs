//! Export to one deployable `.ember` file: configuration, tokenizer, task, prompt template,
//! provenance, and every tensor in f32, f16, int8 (Q8) or int4 (Q4). Matrices take the chosen
//! dtype (with int4, the embeddings and the output head take int8, and `--keep-f16` names keep
//! f16; see [`tensor_dtype`]); norms and biases stay f32. Streams one tensor at a time and writes atomically.

use emberlm_formats::config::GptConfig;
use emberlm_formats::ember::{
    DType, EmberWriter, FormatError, Value, write_f16s, write_f32s, write_q4, write_q8,
};
use emberlm_formats::meta::{self, PromptTemplate, Task};
use emberlm_formats::quant::{self, QuantError};
use emberlm_formats::tokenizer::Tokenizer;
use half::f16;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// The dtype of exported weight matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportDtype {
    /// 4 bytes per weight, exact.
    F32,
    /// 2 bytes per weight.
    F16,
    /// 1 byte per weight + one f16 scale per 32 (1.0625 bytes per weight).
    Int8,
    /// 4 bits per weight + one f16 scale per 32 (0.5625 bytes per weight); the embeddings and
    /// the output head take int8.
    Int4,
}

impl FromStr for ExportDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(ExportDtype::F32),
            "f16" => Ok(ExportDtype::F16),
            "int8" | "q8" => Ok(ExportDtype::Int8),
            "int4" | "q4" => Ok(ExportDtype::Int4),
            _ => Err(format!(
                "unknown dtype {s:?}: expected f32, f16, int8 or int4"
            )),
        }
    }
}

impl ExportDtype {
    fn dtype(self) -> DType {
        match self {
            ExportDtype::F32 => DType::F32,
            ExportDtype::F16 => DType::F16,
            ExportDtype::Int8 => DType::Q8,
            ExportDtype::Int4 => DType::Q4,
        }
    }

    /// The name used on the command line and in `provenance.dtype`.
    pub fn name(self) -> &'static str {
        match self {
            ExportDtype::F32 => "f32",
            ExportDtype::F16 => "f16",
            ExportDtype::Int8 => "int8",
            ExportDtype::Int4 => "int4",
        }
    }
}

/// Everything in the file besides the tensors.
#[derive(Clone, Debug)]
pub struct ExportMeta<'a> {
    /// The model configuration.
    pub config: GptConfig,
    /// Language model or classifier.
    pub task: Task,
    /// The prompt template (instruction-tuned models).
    pub prompt: Option<PromptTemplate>,
    /// The tokenizer to embed.
    pub tokenizer: Option<&'a Tokenizer>,
    /// `provenance.*` entries (key without the prefix, value).
    pub provenance: Vec<(String, String)>,
}

/// Why an export failed.
#[derive(Clone, Debug, PartialEq)]
pub enum ExportError {
    /// A tensor the configuration needs was not provided.
    MissingTensor(String),
    /// A tensor has the wrong number of elements.
    WrongSize {
        /// The tensor.
        tensor: String,
        /// Expected elements.
        expected: usize,
        /// Found elements.
        found: usize,
    },
    /// A tensor could not be quantized (NaN, out of f16 range).
    Quant {
        /// The tensor.
        tensor: String,
        /// Why.
        error: QuantError,
    },
    /// A `--keep-f16` name matches no matrix of the model.
    NoSuchTensor(String),
    /// Writing the file failed.
    Format(FormatError),
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportError::MissingTensor(t) => write!(f, "export: tensor {t:?} is missing"),
            ExportError::WrongSize {
                tensor,
                expected,
                found,
            } => {
                write!(
                    f,
                    "export: tensor {tensor:?} has {found} elements, expected {expected}"
                )
            }
            ExportError::Quant { tensor, error } => write!(f, "export: tensor {tensor:?}: {error}"),
            ExportError::NoSuchTensor(n) => write!(
                f,
                "--keep-f16: {n:?} matches no weight matrix of this model (give a tensor name as \
                 `ember inspect` lists it, e.g. out_head.weight, or the part after blocks.N., \
                 e.g. ff.proj.weight for every layer)"
            ),
            ExportError::Format(e) => write!(f, "export: {e}"),
        }
    }
}

impl std::error::Error for ExportError {}

impl From<FormatError> for ExportError {
    fn from(e: FormatError) -> Self {
        ExportError::Format(e)
    }
}

/// The tensors of a model with this configuration and task, in file order: the language-model
/// tensors of [`GptConfig::tensor_shapes`], with a classifier's `out_head.weight` (K, C) and
/// `out_head.bias` (K) in place of the vocabulary head.
pub fn export_shapes(cfg: &GptConfig, task: &Task) -> Vec<(String, Vec<usize>)> {
    let classes = match task {
        Task::Classifier { labels, .. } => Some(labels.len()),
        Task::LanguageModel => None,
    };
    cfg.tensor_shapes_with_classes(classes)
}

/// Whether the `--keep-f16` entry `keep` names tensor `name`: the whole name, or its part after
/// `blocks.N.` (then every layer's).
fn keep_matches(keep: &str, name: &str) -> bool {
    name == keep
        || name
            .strip_prefix("blocks.")
            .and_then(|r| r.split_once('.'))
            .is_some_and(|(_, rest)| rest == keep)
}

/// The stored dtype of tensor `name` (a matrix when `matrix`): vectors stay f32; a matrix named
/// by `keep_f16` takes f16; with int4, embeddings and heads take int8 and the other matrices Q4;
/// otherwise the export dtype.
pub fn tensor_dtype(dtype: ExportDtype, name: &str, matrix: bool, keep_f16: &[String]) -> DType {
    if !matrix {
        DType::F32
    } else if keep_f16.iter().any(|k| keep_matches(k, name)) {
        DType::F16
    } else if dtype == ExportDtype::Int4 && quant::int4_keeps_q8(name) {
        DType::Q8
    } else {
        dtype.dtype()
    }
}

/// Fails with [`ExportError::NoSuchTensor`] when a `keep_f16` entry names no matrix in `matrices`.
pub fn check_keep_f16<'n>(
    keep_f16: &[String],
    matrices: impl Iterator<Item = &'n str> + Clone,
) -> Result<(), ExportError> {
    for k in keep_f16 {
        if !matrices.clone().any(|n| keep_matches(k, n)) {
            return Err(ExportError::NoSuchTensor(k.clone()));
        }
    }
    Ok(())
}

/// Writes `path` atomically. `tensor(name)` gives each tensor's f32 values in canonical layout.
/// Returns the file size in bytes.
pub fn export_ember<'t>(
    path: &Path,
    meta_in: &ExportMeta<'_>,
    dtype: ExportDtype,
    tensor: &dyn Fn(&str) -> Option<&'t [f32]>,
) -> Result<u64, ExportError> {
    export_ember_keep(path, meta_in, dtype, &[], tensor)
}

/// [`export_ember`] with the matrices named by `keep_f16` kept at f16 (see [`tensor_dtype`]).
pub fn export_ember_keep<'t>(
    path: &Path,
    meta_in: &ExportMeta<'_>,
    dtype: ExportDtype,
    keep_f16: &[String],
    tensor: &dyn Fn(&str) -> Option<&'t [f32]>,
) -> Result<u64, ExportError> {
    let cfg = &meta_in.config;
    let mut w = EmberWriter::new();
    meta::put_config(&mut w, cfg)?;
    meta::put_task(&mut w, &meta_in.task)?;
    if let Some(p) = &meta_in.prompt {
        meta::put_prompt(&mut w, p)?;
    }
    if let Some(t) = meta_in.tokenizer {
        meta::put_tokenizer(&mut w, t)?;
    }
    w.set("provenance.dtype", Value::Str(dtype.name().into()))?;
    w.set(
        "provenance.trainer",
        Value::Str(format!("ember-train {}", env!("CARGO_PKG_VERSION"))),
    )?;
    for (k, v) in &meta_in.provenance {
        if k != "dtype" && k != "trainer" {
            w.set(&format!("provenance.{k}"), Value::Str(v.clone()))?;
        }
    }
    let shapes = export_shapes(cfg, &meta_in.task);
    check_keep_f16(
        keep_f16,
        shapes
            .iter()
            .filter(|(_, s)| s.len() == 2)
            .map(|(n, _)| n.as_str()),
    )?;
    let mut sources = Vec::with_capacity(shapes.len());
    for (name, shape) in &shapes {
        let data = tensor(name).ok_or_else(|| ExportError::MissingTensor(name.clone()))?;
        let numel: usize = shape.iter().product();
        if data.len() != numel {
            return Err(ExportError::WrongSize {
                tensor: name.clone(),
                expected: numel,
                found: data.len(),
            });
        }
        let dt = tensor_dtype(dtype, name, shape.len() == 2, keep_f16);
        w.add_tensor(name, dt, shape)?;
        sources.push(data);
    }
    // Quantization errors surface from inside the fill callback: keep the typed error here.
    let mut quant_error = None;
    let result = w.write_file(path, |i, entry, out| {
        encode_tensor(entry, sources[i], out, &mut quant_error)
    });
    match (result, quant_error) {
        (Err(_), Some(e)) => Err(e),
        (r, _) => Ok(r?),
    }
}

/// Writes `x` (a tensor's f32 values in canonical layout) in `entry`'s dtype. A quantization
/// failure is stored in `quant_error` (typed, naming the tensor) and returned as an I/O error so
/// that the writer stops; [`emberlm_formats::ember::EmberWriter::write_file`] callbacks use it.
pub fn encode_tensor(
    entry: &emberlm_formats::ember::TensorEntry,
    x: &[f32],
    out: &mut dyn std::io::Write,
    quant_error: &mut Option<ExportError>,
) -> std::io::Result<()> {
    let mut fail = |e: QuantError| {
        *quant_error = Some(ExportError::Quant {
            tensor: entry.name.clone(),
            error: e.clone(),
        });
        std::io::Error::other(e.to_string())
    };
    match entry.dtype {
        DType::F32 => write_f32s(out, x),
        DType::F16 => {
            let mut h = vec![f16::ZERO; x.len()];
            quant::quantize_f16(x, &mut h).map_err(&mut fail)?;
            write_f16s(out, &h)
        }
        DType::Q8 => {
            let cols = *entry.shape.last().unwrap_or(&1) as usize;
            let rows = x.len().checked_div(cols).unwrap_or(0);
            let mut q = vec![0i8; x.len()];
            let mut s = vec![f16::ZERO; rows * quant::q8_blocks_per_row(cols)];
            quant::quantize_q8(x, cols, &mut q, &mut s).map_err(&mut fail)?;
            write_q8(out, &q, &s)
        }
        DType::Q4 => {
            let cols = *entry.shape.last().unwrap_or(&1) as usize;
            let rows = x.len().checked_div(cols).unwrap_or(0);
            let nb = quant::q4_blocks_per_row(cols);
            let mut q = vec![0u8; rows * nb * quant::Q4_BLOCK_BYTES];
            let mut s = vec![f16::ZERO; rows * nb];
            quant::quantize_q4(x, cols, &mut q, &mut s).map_err(&mut fail)?;
            write_q4(out, &q, &s)
        }
    }
}

/// Writes a model of the modern families (`cfg`, its tensors in file order as
/// [`crate::family::FamilyModel::tensors`] gives them) to `path` atomically: matrices in
/// `dtype`, vectors in f32, with the tokenizer and provenance. Returns the file size.
pub fn export_family_ember(
    path: &Path,
    cfg: &emberlm_formats::config::ModelConfig,
    tensors: &[(String, Vec<usize>, &[f32])],
    tokenizer: Option<&emberlm_formats::tokenizer::Tokenizer>,
    dtype: ExportDtype,
    provenance: &[(String, String)],
) -> Result<u64, ExportError> {
    export_family_ember_with(path, cfg, tensors, tokenizer, None, None, dtype, provenance)
}

/// [`export_family_ember`] of a model imported from a Hugging Face directory: `extras` (its
/// chat template, end-of-reply and start ids, from the checkpoint's `hf/`:
/// [`crate::checkpoint::hf_extras`]) go into the file as the conversion of that directory writes
/// them ([`crate::hf::extras::put`]). `prompt` stores a prompt template (a model instruction-tuned
/// with the Alpaca template).
#[allow(clippy::too_many_arguments)]
pub fn export_family_ember_with(
    path: &Path,
    cfg: &emberlm_formats::config::ModelConfig,
    tensors: &[(String, Vec<usize>, &[f32])],
    tokenizer: Option<&emberlm_formats::tokenizer::Tokenizer>,
    extras: Option<&crate::hf::extras::Extras>,
    prompt: Option<&PromptTemplate>,
    dtype: ExportDtype,
    provenance: &[(String, String)],
) -> Result<u64, ExportError> {
    export_family_ember_task(
        path,
        cfg,
        &Task::LanguageModel,
        tensors,
        tokenizer,
        extras,
        prompt,
        dtype,
        provenance,
    )
}

/// [`export_family_ember_with`] for any task: with [`Task::Classifier`], `tensors` are a
/// classifier's (a (K, C) `head.weight` and its (K) bias in place of the language-model head).
#[allow(clippy::too_many_arguments)]
pub fn export_family_ember_task(
    path: &Path,
    cfg: &emberlm_formats::config::ModelConfig,
    task: &Task,
    tensors: &[(String, Vec<usize>, &[f32])],
    tokenizer: Option<&emberlm_formats::tokenizer::Tokenizer>,
    extras: Option<&crate::hf::extras::Extras>,
    prompt: Option<&PromptTemplate>,
    dtype: ExportDtype,
    provenance: &[(String, String)],
) -> Result<u64, ExportError> {
    let mut w = EmberWriter::new();
    meta::put_model_config(&mut w, cfg)?;
    meta::put_task(&mut w, task)?;
    if let Some(t) = tokenizer {
        meta::put_tokenizer(&mut w, t)?;
    }
    if let Some(e) = extras {
        crate::hf::extras::put(&mut w, e)?;
    }
    if let Some(p) = prompt {
        meta::put_prompt(&mut w, p)?;
    }
    w.set("provenance.dtype", Value::Str(dtype.name().into()))?;
    w.set(
        "provenance.trainer",
        Value::Str(format!("ember-train {}", env!("CARGO_PKG_VERSION"))),
    )?;
    for (k, v) in provenance {
        if k != "dtype" && k != "trainer" {
            w.set(&format!("provenance.{k}"), Value::Str(v.clone()))?;
        }
    }
    for (name, shape, data) in tensors {
        let numel: usize = shape.iter().product();
        if data.len() != numel {
            return Err(ExportError::WrongSize {
                tensor: name.clone(),
                expected: numel,
                found: data.len(),
            });
        }
        let dt = if shape.len() == 2 {
            dtype.dtype()
        } else {
            DType::F32
        };
        w.add_tensor(name, dt, shape)?;
    }
    let mut quant_error = None;
    let result = w.write_file(path, |i, entry, out| {
        encode_tensor(entry, tensors[i].2, out, &mut quant_error)
    });
    match (result, quant_error) {
        (Err(_), Some(e)) => Err(e),
        (r, _) => Ok(r?),
    }
}
