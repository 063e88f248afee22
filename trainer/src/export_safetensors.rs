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
use emberlm_formats::config::GptConfig;
use emberlm_formats::ember::{write_atomically, write_f32s};
use emberlm_formats::tokenizer::Tokenizer;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
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

/// Counts bytes on their way to `inner`.
struct Counting<'a> {
    inner: &'a mut dyn Write,
    written: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The safetensors header for f32 `tensors` laid out back to back in the given order, with
/// `metadata` as `__metadata__`: JSON padded with spaces to a multiple of 8 bytes, as the
/// `safetensors` crate writes it. Deterministic (metadata keys sorted, tensors in order).
pub fn safetensors_header_f32(
    metadata: &BTreeMap<String, String>,
    tensors: &[(String, Vec<usize>)],
) -> Result<Vec<u8>, io::Error> {
    let quote = |s: &str| serde_json::to_string(s).map_err(io::Error::other);
    let mut json = String::from("{");
    if !metadata.is_empty() {
        json.push_str("\"__metadata__\":");
        json.push_str(&serde_json::to_string(metadata).map_err(io::Error::other)?);
    }
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(|| io::Error::other(format!("tensor {name:?}: size overflows")))?;
        let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
        if json.len() > 1 {
            json.push(',');
        }
        json.push_str(&format!(
            "{}:{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            quote(name)?,
            dims.join(","),
            offset,
            offset + numel
        ));
        offset += numel;
    }
    json.push('}');
    let mut bytes = json.into_bytes();
    bytes.resize(bytes.len().next_multiple_of(8), b' ');
    Ok(bytes)
}

/// Writes a safetensors file of f32 `tensors` atomically (temporary file, fsync, rename): the
/// header computed from the shapes, then `fill(i, w)` writes tensor `i`'s values (little-endian
/// f32, e.g. with [`write_f32s`]) in order; a fill that writes the wrong number of bytes is an
/// error. Returns the file size.
pub fn write_safetensors_f32(
    path: &Path,
    metadata: &BTreeMap<String, String>,
    tensors: &[(String, Vec<usize>)],
    mut fill: impl FnMut(usize, &mut dyn Write) -> io::Result<()>,
) -> io::Result<u64> {
    let header = safetensors_header_f32(metadata, tensors)?;
    let mut total = 8 + header.len() as u64;
    write_atomically(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for (i, (name, shape)) in tensors.iter().enumerate() {
            let expected = shape.iter().product::<usize>() as u64 * 4;
            let mut c = Counting {
                inner: w,
                written: 0,
            };
            fill(i, &mut c)?;
            if c.written != expected {
                return Err(io::Error::other(format!(
                    "tensor {name:?}: wrote {} bytes, expected {expected}",
                    c.written
                )));
            }
            total += expected;
        }
        Ok(())
    })?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `safetensors` crate parses the header written here and finds the data where it is.
    #[test]
    fn header_is_what_the_safetensors_crate_reads() {
        let tensors = vec![
            ("b".to_string(), vec![2, 3]),
            ("a\"quoted\"".to_string(), vec![4]),
            ("empty".to_string(), vec![0, 5]),
        ];
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        let tmp = tempfile::Builder::new()
            .prefix("emberlm-st-header-")
            .tempdir()
            .unwrap();
        let dir = tmp.path();
        let path = dir.join("x.safetensors");
        let size = write_safetensors_f32(&path, &meta, &tensors, |i, w| {
            let n: usize = tensors[i].1.iter().product();
            let v: Vec<f32> = (0..n).map(|k| (10 * i + k) as f32).collect();
            write_f32s(w, &v)
        })
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(size, bytes.len() as u64);
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), 3);
        let a = st.tensor("a\"quoted\"").unwrap();
        assert_eq!(a.shape(), &[4]);
        let a: Vec<f32> = a
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(a, vec![10.0, 11.0, 12.0, 13.0]);
        assert_eq!(st.tensor("b").unwrap().data().len(), 24);
        // A fill that writes too little fails and leaves no file behind.
        let bad = dir.join("bad.safetensors");
        let err = write_safetensors_f32(&bad, &meta, &tensors, |_, w| w.write_all(&[0u8; 4]));
        assert!(err.is_err());
        assert!(!bad.exists());
    }
}
