//! Export to safetensors for PyTorch: a directory with `model.safetensors` + `config.json` in
//! Hugging Face's GPT2LMHeadModel layout (`GPT2LMHeadModel.from_pretrained(DIR)` loads it) or in
//! the book's GPTModel layout (`model.load_state_dict(load_file(...), strict=False)` loads it, the
//! only missing keys being the `att.mask` buffers, which the model rebuilds itself).
//!
//! Shape letters: V vocabulary, T context length, C embedding dim.
//!
//! The names and transposes come from the one table shared with the importer,
//! [`crate::import::pieces`], so import → export → import is bit-identical for both layouts.
//! Export streams: each external tensor is produced and written in turn, the header being computed
//! from the shapes first; files are written atomically.
//!
//! Layout conventions (the names come from the architecture's description, the rules from
//! [`crate::import::pieces`]):
//! - Hugging Face: names with the base model's prefix as `save_pretrained` writes them; Conv1D
//!   weights [in, out]; the fused q/k/v bias is always present (zeros for a model without qkv
//!   bias: the same function); the head only when untied (`tie_word_embeddings` says which).
//! - Book: separate query/key/value projections, [out, in]; the head always present (a copy
//!   of the token embedding when the model is tied, as the book does when loading OpenAI's
//!   weights); q/k/v biases only with qkv bias; a `config.json` with the book's
//!   `GPT_CONFIG_124M` keys.

use crate::import::{ImportError, Layout, Op, SafetensorsFile, hf_prefix, pieces, transpose};
pub use crate::safetensors_io::{safetensors_header_f32, write_safetensors_f32};
use emberlm_formats::config::GptConfig;
use emberlm_formats::ember::{write_atomically, write_f32s};
use emberlm_formats::tokenizer::Tokenizer;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Why an export failed.
#[derive(Clone, Debug, PartialEq)]
pub enum ExportError {
    /// A canonical tensor the configuration needs was not provided.
    MissingTensor(String),
    /// A canonical tensor has the wrong number of elements.
    WrongSize {
        /// The tensor.
        tensor: String,
        /// Expected elements.
        expected: usize,
        /// Found elements.
        found: usize,
    },
    /// The configuration is invalid.
    Config(String),
    /// Reading the source checkpoint failed.
    Read(ImportError),
    /// Writing failed.
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        message: String,
    },
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportError::MissingTensor(t) => write!(f, "export: tensor {t:?} is missing"),
            ExportError::WrongSize {
                tensor,
                expected,
                found,
            } => write!(
                f,
                "export: tensor {tensor:?} has {found} elements, expected {expected}"
            ),
            ExportError::Config(e) => write!(f, "export: {e}"),
            ExportError::Read(e) => write!(f, "export: {e}"),
            ExportError::Io { path, message } => write!(f, "export: {path}: {message}"),
        }
    }
}

impl std::error::Error for ExportError {}

/// What [`export_safetensors`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    /// The layout written.
    pub layout: Layout,
    /// `DIR/model.safetensors`.
    pub model_file: PathBuf,
    /// `DIR/config.json`.
    pub config_file: PathBuf,
    /// Number of tensors in `model.safetensors`.
    pub tensors: usize,
    /// Size of `model.safetensors` in bytes.
    pub bytes: u64,
}

/// Writes `out_dir/model.safetensors` and `out_dir/config.json` (creating `out_dir`) for
/// `config` in `layout`. `tensor(name)` gives each canonical tensor's f32 values (names and shapes
/// of [`GptConfig::tensor_shapes`]); it is asked for one tensor at a time, in file order, and
/// may read it on demand (return `Cow::Owned`) or lend it (`Cow::Borrowed`). Only the last
/// tensor returned is kept, so memory stays at one tensor plus one transposed copy.
///
/// Both files are written atomically; `model.safetensors` first, `config.json` last.
pub fn export_safetensors<'t>(
    config: &GptConfig,
    layout: Layout,
    out_dir: &Path,
    tensor: &mut dyn FnMut(&str) -> Option<Cow<'t, [f32]>>,
) -> Result<ExportSummary, ExportError> {
    config
        .validate()
        .map_err(|e| ExportError::Config(e.to_string()))?;
    std::fs::create_dir_all(out_dir).map_err(|e| io_err(out_dir, &e))?;
    let model_file = out_dir.join("model.safetensors");
    let config_file = out_dir.join("config.json");
    let table = pieces(config, layout, hf_prefix(layout));
    let canonical_numel: BTreeMap<String, usize> = config
        .tensor_shapes()
        .into_iter()
        .map(|(n, s)| (n, s.iter().product()))
        .collect();
    let shapes: Vec<(String, Vec<usize>)> = table
        .iter()
        .map(|p| (p.external.clone(), p.shape.clone()))
        .collect();
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_string(), "pt".to_string());

    let mut failure: Option<ExportError> = None;
    let mut cached: Option<(String, Cow<'t, [f32]>)> = None;
    let written = write_safetensors_f32(&model_file, &metadata, &shapes, |i, w| {
        let p = &table[i];
        let n: usize = p.shape.iter().product();
        let mut fail = |e: ExportError| {
            let message = e.to_string();
            failure = Some(e);
            io::Error::other(message)
        };
        if p.op == Op::Zeros {
            return write_f32s(w, &vec![0.0; n]);
        }
        if cached.as_ref().is_none_or(|(name, _)| *name != p.canonical) {
            cached = None;
            let values = tensor(&p.canonical)
                .ok_or_else(|| fail(ExportError::MissingTensor(p.canonical.clone())))?;
            let expected = canonical_numel.get(&p.canonical).copied().unwrap_or(0);
            if values.len() != expected {
                return Err(fail(ExportError::WrongSize {
                    tensor: p.canonical.clone(),
                    expected,
                    found: values.len(),
                }));
            }
            cached = Some((p.canonical.clone(), values));
        }
        let values = match &cached {
            Some((_, v)) => &v[p.offset..p.offset + n],
            None => unreachable!("filled just above"),
        };
        match p.op {
            // Canonical [out, in] rows → Conv1D [in, out]: the external shape is (in, out).
            Op::Transpose => write_f32s(w, &transpose(values, p.shape[1], p.shape[0])),
            _ => write_f32s(w, values),
        }
    });
    let bytes = match (written, failure) {
        (Ok(b), _) => b,
        (Err(_), Some(e)) => return Err(e),
        (Err(e), None) => return Err(io_err(&model_file, &e)),
    };
    let json = match layout {
        Layout::HuggingFace => hf_config_json(config),
        Layout::Book => book_config_json(config),
    };
    let text = serde_json::to_string_pretty(&json).map_err(|e| ExportError::Io {
        path: config_file.display().to_string(),
        message: e.to_string(),
    })? + "\n";
    write_atomically(&config_file, |w| w.write_all(text.as_bytes()))
        .map_err(|e| io_err(&config_file, &e))?;
    Ok(ExportSummary {
        layout,
        model_file,
        config_file,
        tensors: table.len(),
        bytes,
    })
}

/// Writes Hugging Face's tokenizer files for `tokenizer` into `out_dir` (atomically):
/// `vocab.json` and `merges.txt` ([`Tokenizer::to_vocab_and_merges`]), which `GPT2Tokenizer`
/// loads from the directory. For GPT-2's vocabulary they equal OpenAI's `encoder.json` and
/// `vocab.bpe`. For a vocabulary trained by emberlm, Hugging Face's pair-based BPE can split a
/// word differently where two different pairs spell the same token (emberlm merges by the joined
/// bytes' id). `Ok(None)` when some token cannot be expressed as a merge (a hand-edited
/// vocabulary): nothing is written.
pub fn write_tokenizer_files(
    tokenizer: &Tokenizer,
    out_dir: &Path,
) -> Result<Option<(PathBuf, PathBuf)>, ExportError> {
    let Ok((vocab, merges)) = tokenizer.to_vocab_and_merges() else {
        return Ok(None);
    };
    let files = (out_dir.join("vocab.json"), out_dir.join("merges.txt"));
    for (path, text) in [(&files.0, vocab), (&files.1, merges)] {
        write_atomically(path, |w| w.write_all(text.as_bytes())).map_err(|e| io_err(path, &e))?;
    }
    Ok(Some(files))
}

/// [`export_safetensors`] from a canonical f32 safetensors file (a checkpoint's
/// `model.safetensors`, or the output of [`crate::import::import_to_safetensors`]), reading one
/// tensor at a time. `config` defaults to the one recorded in the file's `__metadata__` by the
/// importer; each tensor's shape is checked against it.
pub fn export_safetensors_from_file(
    model_file: &Path,
    config: Option<&GptConfig>,
    layout: Layout,
    out_dir: &Path,
) -> Result<ExportSummary, ExportError> {
    let file = SafetensorsFile::open(model_file).map_err(ExportError::Read)?;
    let config = match config {
        Some(c) => *c,
        None => file
            .gpt_config()
            .map_err(ExportError::Read)?
            .ok_or_else(|| {
                ExportError::Config(format!(
                    "{}: the file records no configuration: pass one",
                    model_file.display()
                ))
            })?,
    };
    let shapes: BTreeMap<String, Vec<usize>> = config.tensor_shapes().into_iter().collect();
    let mut read_error = None;
    let result = export_safetensors(&config, layout, out_dir, &mut |name| {
        let checked = match (file.info(name), shapes.get(name)) {
            (Some(info), Some(shape)) if info.shape != *shape => Err(ImportError::Shape {
                name: name.into(),
                expected: shape.clone(),
                found: info.shape.clone(),
                hint: crate::import::Hint::Dimensions,
            }),
            (None, _) => return None,
            _ => file.read_f32(name),
        };
        match checked {
            Ok(v) => Some(Cow::Owned(v)),
            Err(e) => {
                read_error = Some(e);
                None
            }
        }
    });
    match (result, read_error) {
        (Err(_), Some(e)) => Err(ExportError::Read(e)),
        (r, _) => r,
    }
}

/// GPT2LMHeadModel's config.json for `cfg`. `layer_norm_epsilon` is GPT-2's 1e-5 (the runtime's
/// `LAYERNORM_EPS`), written as the decimal 1e-5 rather than its f32 rounding. Dropout rates are
/// GPT-2's defaults (0.1; transformers applies them only in training mode). The token ids are
/// GPT-2's `<|endoftext|>` when the vocabulary is GPT-2's size or larger, and null otherwise.
pub fn hf_config_json(cfg: &GptConfig) -> serde_json::Value {
    let eot = if cfg.vocab_size > 50256 {
        serde_json::json!(50256)
    } else {
        serde_json::Value::Null
    };
    serde_json::json!({
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": eot,
        "dtype": "float32",
        "embd_pdrop": 0.1,
        "eos_token_id": eot,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-5,
        "model_type": "gpt2",
        "n_ctx": cfg.context_length,
        "n_embd": cfg.dim,
        "n_head": cfg.n_heads,
        "n_inner": null,
        "n_layer": cfg.n_layers,
        "n_positions": cfg.context_length,
        "resid_pdrop": 0.1,
        "scale_attn_by_inverse_layer_idx": false,
        "scale_attn_weights": true,
        "tie_word_embeddings": cfg.tied_head,
        "use_cache": true,
        "vocab_size": cfg.vocab_size,
    })
}

/// The book's configuration dict (`GPT_CONFIG_124M` keys) for `cfg`: what `GPTModel(cfg)` needs
/// to build the model this state dict loads into. `drop_rate` is the book's 0.1.
pub fn book_config_json(cfg: &GptConfig) -> serde_json::Value {
    serde_json::json!({
        "vocab_size": cfg.vocab_size,
        "context_length": cfg.context_length,
        "emb_dim": cfg.dim,
        "n_heads": cfg.n_heads,
        "n_layers": cfg.n_layers,
        "drop_rate": 0.1,
        "qkv_bias": cfg.qkv_bias,
    })
}

fn io_err(path: &Path, e: &io::Error) -> ExportError {
    ExportError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}
