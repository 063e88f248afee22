//! Export to one deployable `.ember` file: configuration, tokenizer, task, prompt template,
//! provenance, and every tensor in f32, f16, int8 (Q8) or int4 (Q4). Matrices take the chosen
//! dtype (with int4, the embeddings and the output head take 6 bits (Q6) unless `--keep-q6` or
//! `--keep-int8` say otherwise, and `--keep-f16` names keep f16; see [`tensor_dtype`]); norms and
//! biases stay f32.
//! Streams one tensor at a time and writes atomically.

use emberlm_formats::config::GptConfig;
use emberlm_formats::ember::{
    DType, EmberWriter, FormatError, Value, write_f16s, write_f32s, write_q4, write_q6, write_q8,
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
    /// the output head take 6 bits (0.8125 bytes per weight).
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
    /// A `--keep-f16` or `--keep-int8` name matches no matrix of the model.
    NoSuchTensor {
        /// The option that gave it (`keep-f16`, `keep-int8`).
        option: &'static str,
        /// The name.
        name: String,
    },
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
            ExportError::NoSuchTensor { option, name } => write!(
                f,
                "--{option}: {name:?} matches no weight matrix of this model (give a tensor name \
                 as `ember inspect` lists it, e.g. out_head.weight, or the part after blocks.N., \
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

/// Which weight matrices an export stores above its dtype.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keep {
    /// Matrices kept at f16 (`--keep-f16`), whatever the dtype.
    pub f16: Vec<String>,
    /// With int4, the matrices kept at int8 (`--keep-int8`); `None` and `Some(vec![])`: none.
    pub int8: Option<Vec<String>>,
    /// With int4, the matrices stored at 6 bits (`--keep-q6`); `None`: the default set, the
    /// embeddings and the output heads ([`quant::int4_keeps_q6`]), unless `int8` is given (an
    /// explicit `--keep-int8` list replaces the default, as before Q6 existed); `Some(vec![])`:
    /// none.
    pub q6: Option<Vec<String>>,
}

impl Keep {
    /// Only `--keep-f16` names, int4's default int8 set.
    pub fn f16(names: &[String]) -> Keep {
        Keep {
            f16: names.to_vec(),
            int8: None,
            q6: None,
        }
    }
}

/// Whether the `--keep-f16` / `--keep-int8` entry `keep` names tensor `name`: the whole name, or
/// its part after `blocks.N.` (then every layer's).
fn keep_matches(keep: &str, name: &str) -> bool {
    name == keep
        || name
            .strip_prefix("blocks.")
            .and_then(|r| r.split_once('.'))
            .is_some_and(|(_, rest)| rest == keep)
}

/// The stored dtype of tensor `name` (a matrix when `matrix`): vectors stay f32; a matrix named
/// by `keep.f16` takes f16; with int4, the matrices of `keep.int8` take int8, those of `keep.q6`
/// (default: embeddings and heads, when `keep.int8` is not given) 6 bits, and the other matrices
/// Q4; otherwise the export dtype.
pub fn tensor_dtype(dtype: ExportDtype, name: &str, matrix: bool, keep: &Keep) -> DType {
    let named = |names: &[String]| names.iter().any(|k| keep_matches(k, name));
    let int8 = keep.int8.as_deref().is_some_and(named);
    let q6 = match (&keep.q6, &keep.int8) {
        (Some(names), _) => named(names),
        (None, None) => quant::int4_keeps_q6(name),
        (None, Some(_)) => false,
    };
    if !matrix {
        DType::F32
    } else if keep.f16.iter().any(|k| keep_matches(k, name)) {
        DType::F16
    } else if dtype == ExportDtype::Int4 && int8 {
        DType::Q8
    } else if dtype == ExportDtype::Int4 && q6 {
        DType::Q6
    } else {
        dtype.dtype()
    }
}

/// Fails with [`ExportError::NoSuchTensor`] when a name of `keep` names no matrix in `matrices`.
pub fn check_keep<'n>(
    keep: &Keep,
    matrices: impl Iterator<Item = &'n str> + Clone,
) -> Result<(), ExportError> {
    let int8 = keep.int8.iter().flatten().map(|k| ("keep-int8", k));
    let q6 = keep.q6.iter().flatten().map(|k| ("keep-q6", k));
    for (option, k) in keep
        .f16
        .iter()
        .map(|k| ("keep-f16", k))
        .chain(int8)
        .chain(q6)
    {
        if !matrices.clone().any(|n| keep_matches(k, n)) {
            return Err(ExportError::NoSuchTensor {
                option,
                name: k.clone(),
            });
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
    export_ember_keep(path, meta_in, dtype, &Keep::default(), tensor)
}

/// [`export_ember`] with the matrices named by `keep` kept at f16 or int8 (see [`tensor_dtype`]).
pub fn export_ember_keep<'t>(
    path: &Path,
    meta_in: &ExportMeta<'_>,
    dtype: ExportDtype,
    keep: &Keep,
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
    check_keep(
        keep,
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
        let dt = tensor_dtype(dtype, name, shape.len() == 2, keep);
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
        DType::Q6 => {
            let cols = *entry.shape.last().unwrap_or(&1) as usize;
            let rows = x.len().checked_div(cols).unwrap_or(0);
            let nb = quant::q6_blocks_per_row(cols);
            let mut q = vec![0u8; rows * nb * quant::Q6_BLOCK_BYTES];
            let mut s = vec![f16::ZERO; rows * nb];
            quant::quantize_q6(x, cols, &mut q, &mut s).map_err(&mut fail)?;
            write_q6(out, &q, &s)
        }
    }
}

/// Writes a model of the modern families (`cfg`, its tensors in file order as
/// [`crate::family::FamilyModel::tensors`] gives them) to `path` atomically: matrices in
/// `dtype` (as [`tensor_dtype`] decides with no `--keep-*` names), vectors in f32, with the
/// tokenizer and provenance. Returns the file size.
pub fn export_family_ember(
    path: &Path,
    cfg: &emberlm_formats::config::ModelConfig,
    tensors: &[(String, Vec<usize>, &[f32])],
    tokenizer: Option<&emberlm_formats::tokenizer::Tokenizer>,
    dtype: ExportDtype,
    provenance: &[(String, String)],
) -> Result<u64, ExportError> {
    export_family_ember_with(
        path,
        cfg,
        tensors,
        tokenizer,
        None,
        None,
        dtype,
        &Keep::default(),
        provenance,
    )
}

/// [`export_family_ember`] of a model imported from a Hugging Face directory: `extras` (its
/// chat template, end-of-reply and start ids, from the checkpoint's `hf/`:
/// [`crate::checkpoint::hf_extras`]) go into the file as the conversion of that directory writes
/// them ([`crate::hf::extras::put`]). `prompt` stores a prompt template (a model instruction-tuned
/// with the Alpaca template). `keep` names matrices kept at f16 or int8 ([`tensor_dtype`]).
#[allow(clippy::too_many_arguments)]
pub fn export_family_ember_with(
    path: &Path,
    cfg: &emberlm_formats::config::ModelConfig,
    tensors: &[(String, Vec<usize>, &[f32])],
    tokenizer: Option<&emberlm_formats::tokenizer::Tokenizer>,
    extras: Option<&crate::hf::extras::Extras>,
    prompt: Option<&PromptTemplate>,
    dtype: ExportDtype,
    keep: &Keep,
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
        keep,
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
    keep: &Keep,
    provenance: &[(String, String)],
) -> Result<u64, ExportError> {
    check_keep(
        keep,
        tensors
            .iter()
            .filter(|(_, s, _)| s.len() == 2)
            .map(|(n, _, _)| n.as_str()),
    )?;
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
        w.add_tensor(
            name,
            tensor_dtype(dtype, name, shape.len() == 2, keep),
            shape,
        )?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use emberlm_formats::config::ModelConfig;
    use emberlm_formats::ember::parse_header;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// int4's default 6-bit set is the embeddings and heads; `--keep-int8` replaces it (empty:
    /// every matrix at Q4), as does `--keep-q6`; `--keep-f16` wins over both, int8 over Q6; other
    /// dtypes ignore the int8 and Q6 sets.
    #[test]
    fn tensor_dtype_follows_the_keep_rules() {
        use ExportDtype::{Int4, Int8};
        let dflt = Keep::default();
        let none = Keep {
            f16: vec![],
            int8: Some(vec![]),
            q6: None,
        };
        let down = Keep {
            f16: names(&["blocks.1.mlp.down.weight"]),
            int8: Some(names(&["head.weight", "mlp.down.weight"])),
            q6: None,
        };
        let q6 = Keep {
            f16: vec![],
            int8: Some(names(&["tok_emb.weight"])),
            q6: Some(names(&["tok_emb.weight", "mlp.up.weight"])),
        };
        let q6_none = Keep {
            q6: Some(vec![]),
            ..Keep::default()
        };
        let dt = |d, n: &str, k: &Keep| tensor_dtype(d, n, true, k);
        assert_eq!(dt(Int4, "tok_emb.weight", &dflt), DType::Q6);
        assert_eq!(dt(Int4, "pos_emb.weight", &dflt), DType::Q6);
        assert_eq!(dt(Int4, "head.weight", &dflt), DType::Q6);
        assert_eq!(dt(Int4, "out_head.weight", &dflt), DType::Q6);
        assert_eq!(dt(Int4, "tok_emb.weight", &q6), DType::Q8);
        assert_eq!(dt(Int4, "blocks.3.mlp.up.weight", &q6), DType::Q6);
        assert_eq!(dt(Int4, "head.weight", &q6), DType::Q4);
        assert_eq!(dt(Int4, "head.weight", &q6_none), DType::Q4);
        assert_eq!(dt(Int8, "blocks.3.mlp.up.weight", &q6), DType::Q8);
        assert_eq!(dt(ExportDtype::F16, "tok_emb.weight", &dflt), DType::F16);
        assert_eq!(dt(Int4, "blocks.0.mlp.down.weight", &dflt), DType::Q4);
        assert_eq!(dt(Int4, "tok_emb.weight", &none), DType::Q4);
        assert_eq!(dt(Int4, "head.weight", &none), DType::Q4);
        assert_eq!(dt(Int4, "tok_emb.weight", &down), DType::Q4);
        assert_eq!(dt(Int4, "head.weight", &down), DType::Q8);
        assert_eq!(dt(Int4, "blocks.0.mlp.down.weight", &down), DType::Q8);
        assert_eq!(dt(Int4, "blocks.1.mlp.down.weight", &down), DType::F16);
        assert_eq!(dt(Int4, "blocks.1.mlp.up.weight", &down), DType::Q4);
        assert_eq!(dt(Int8, "blocks.0.mlp.down.weight", &down), DType::Q8);
        assert_eq!(dt(Int8, "tok_emb.weight", &none), DType::Q8);
        assert_eq!(
            tensor_dtype(Int4, "final_norm.weight", false, &down),
            DType::F32
        );
    }

    #[test]
    fn an_unknown_keep_name_is_an_error_naming_its_option() {
        let m = ["tok_emb.weight", "blocks.0.mlp.up.weight"];
        let k = Keep {
            f16: names(&["mlp.up.weight"]),
            int8: Some(names(&["mlp.nope.weight"])),
            q6: None,
        };
        let e = check_keep(&k, m.iter().copied()).unwrap_err();
        assert_eq!(
            e,
            ExportError::NoSuchTensor {
                option: "keep-int8",
                name: "mlp.nope.weight".into()
            }
        );
        assert!(
            e.to_string()
                .starts_with("--keep-int8: \"mlp.nope.weight\""),
            "{e}"
        );
        let k = Keep::f16(&names(&["nope"]));
        let e = check_keep(&k, m.iter().copied()).unwrap_err();
        assert!(e.to_string().starts_with("--keep-f16: \"nope\""), "{e}");
        let k = Keep {
            q6: Some(names(&["nope"])),
            ..Keep::default()
        };
        let e = check_keep(&k, m.iter().copied()).unwrap_err();
        assert!(e.to_string().starts_with("--keep-q6: \"nope\""), "{e}");
    }

    /// A checkpoint of the modern families exported at int4 follows the same rules as a Hugging
    /// Face directory: the embedding and head at 6 bits by default (int8, then Q4, before), and
    /// the `--keep-*` names apply.
    #[test]
    fn family_int4_export_keeps_the_embedding_and_head_at_q6_by_default() {
        let mut c = ModelConfig::preset("smollm2-135m").unwrap();
        (c.vocab_size, c.context_length, c.dim, c.n_layers) = (64, 16, 32, 2);
        (c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim) = (4, 2, 8, 64);
        c.tied_head = false;
        let m = crate::family::FamilyModel::new(&c, 3).unwrap();
        let tensors = m.tensors();
        let tmp = tempfile::tempdir().unwrap();
        let write = |keep: &Keep| {
            let p = tmp.path().join("m.ember");
            export_family_ember_with(
                &p,
                &c,
                &tensors,
                None,
                None,
                None,
                ExportDtype::Int4,
                keep,
                &[],
            )?;
            Ok::<_, ExportError>(parse_header(&std::fs::read(&p).unwrap()).unwrap())
        };
        let h = write(&Keep::default()).unwrap();
        let dt = |n: &str| h.tensor(n).unwrap().dtype;
        assert_eq!(dt("tok_emb.weight"), DType::Q6);
        assert_eq!(dt("head.weight"), DType::Q6);
        assert_eq!(dt("blocks.0.mlp.down.weight"), DType::Q4);
        assert_eq!(dt("blocks.1.attn_norm.weight"), DType::F32);
        let h = write(&Keep {
            f16: names(&["attn.v.weight"]),
            int8: Some(vec![]),
            q6: None,
        })
        .unwrap();
        let dt = |n: &str| h.tensor(n).unwrap().dtype;
        assert_eq!(dt("tok_emb.weight"), DType::Q4);
        assert_eq!(dt("head.weight"), DType::Q4);
        assert_eq!(dt("blocks.1.attn.v.weight"), DType::F16);
        let e = write(&Keep::f16(&names(&["attn.nope.weight"]))).err();
        assert!(
            matches!(
                e,
                Some(ExportError::NoSuchTensor {
                    option: "keep-f16",
                    ..
                })
            ),
            "{e:?}"
        );
    }
}
