//! Import GPT-2 weights from safetensors: Hugging Face's layout (Conv1D weights stored [in, out],
//! optionally prefixed by the base model's name) and the book's GPTModel layout (separate query,
//! key and value projections, mask buffers ignored). Every name of both layouts comes from the
//! architecture's description ([`emberlm_formats::arch`]); the layout is detected from the names. Tensors become the canonical names and layouts of
//! [`GptConfig::tensor_shapes`] (Linear weights [out, in], q/k/v fused into `att.qkv` rows q, k, v).
//!
//! Shape letters: V vocabulary, T context length, C embedding dim.
//!
//! The file is read with positioned reads, one tensor at a time, after parsing only its header
//! ([`SafetensorsFile`]): nothing maps or loads the whole file. Every name and shape is checked
//! before the first byte of output is written, so a wrong file fails fast and leaves nothing behind.
//!
//! Two entry points:
//! - [`import_safetensors`] returns the canonical tensors in memory (one copy of the weights);
//! - [`import_to_safetensors`] streams them into a canonical f32 safetensors file (a checkpoint's
//!   `model.safetensors`), holding at most one tensor (two for a transposed one) in memory.
//!
//! The mapping between the canonical names and each layout's names is one table, [`pieces`],
//! used in both directions (import here, export in [`crate::export_safetensors`]).

use crate::safetensors_io::write_safetensors_f32;
use emberlm_formats::arch::{self, Arch, Role, TensorDesc};
use emberlm_formats::config::GptConfig;
use emberlm_formats::ember::write_f32s;
use emberlm_formats::tokenizer::Tokenizer;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use safetensors::Dtype;
use safetensors::tensor::{Metadata, TensorInfo};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Which naming scheme a file uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Hugging Face transformers' GPT2LMHeadModel (`save_pretrained`, or the hub's files).
    HuggingFace,
    /// The book's GPTModel `state_dict`.
    Book,
}

impl Layout {
    /// The name used on the command line: `hf` or `book`.
    pub fn name(self) -> &'static str {
        match self {
            Layout::HuggingFace => "hf",
            Layout::Book => "book",
        }
    }
}

impl FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hf" | "huggingface" => Ok(Layout::HuggingFace),
            "book" => Ok(Layout::Book),
            _ => Err(format!("unknown layout {s:?}: expected hf or book")),
        }
    }
}

/// An imported model: configuration and canonical f32 tensors.
#[derive(Debug)]
pub struct Imported {
    /// The configuration (from config.json, or inferred from the shapes).
    pub config: GptConfig,
    /// The layout that was detected.
    pub layout: Layout,
    /// Canonical name → f32 values in canonical layout.
    pub tensors: BTreeMap<String, Vec<f32>>,
    /// The tokenizer, when vocab.json + merges.txt sit beside the weights.
    pub tokenizer: Option<Tokenizer>,
    /// The weights file read.
    pub weights_path: PathBuf,
    /// Tensors of the file that were deliberately not imported (mask buffers, a tied head).
    pub ignored: Vec<String>,
}

/// What [`import_to_safetensors`] wrote.
#[derive(Debug)]
pub struct ImportSummary {
    /// The configuration (from config.json, or inferred from the shapes).
    pub config: GptConfig,
    /// The layout that was detected.
    pub layout: Layout,
    /// The weights file read.
    pub weights_path: PathBuf,
    /// The canonical safetensors file written.
    pub out_file: PathBuf,
    /// Number of tensors written.
    pub tensors: usize,
    /// Number of parameters written (f32 values).
    pub parameters: usize,
    /// Size of the written file in bytes.
    pub bytes: u64,
    /// The tokenizer, when vocab.json + merges.txt sit beside the weights.
    pub tokenizer: Option<Tokenizer>,
    /// Tensors of the file that were deliberately not imported (mask buffers, a tied head).
    pub ignored: Vec<String>,
}

/// What is probably wrong when a tensor is missing or has an unexpected shape: the book's
/// readers' most common failures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hint {
    /// The two dimensions are swapped.
    Transposed {
        /// The layout whose convention was expected.
        layout: Layout,
    },
    /// The position embedding has another number of rows than the configuration's context.
    ContextLength {
        /// The configuration's context length (config.json `n_positions`).
        config: usize,
        /// The rows in the file.
        file: usize,
    },
    /// The q/k/v projections' biases are missing or mis-sized.
    QkvBias,
    /// The token embedding or head has another number of rows than the vocabulary size.
    Vocabulary {
        /// The configuration's vocabulary size.
        config: usize,
        /// The rows in the file.
        file: usize,
    },
    /// config.json says the head is not tied, so the file needs `lm_head.weight`.
    UntiedHead,
    /// Anything else: the embedding dim or the block layout differs.
    Dimensions,
}

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hint::Transposed {
                layout: Layout::HuggingFace,
            } => write!(
                f,
                "the weight looks transposed: Hugging Face's GPT-2 stores its Conv1D weights as [in, out] (nn.Linear, as in the book, stores [out, in]); was this file saved from the book's GPTModel under Hugging Face names?"
            ),
            Hint::Transposed {
                layout: Layout::Book,
            } => write!(
                f,
                "the weight looks transposed: the book's nn.Linear stores [out, in] (Hugging Face's Conv1D stores [in, out]); was a Hugging Face weight copied without .T?"
            ),
            Hint::ContextLength { config, file } => write!(
                f,
                "the context length differs: the configuration says {config}, the file has {file} positions (OpenAI's GPT-2 uses 1024; the book pretrains with 256)"
            ),
            Hint::QkvBias => write!(
                f,
                "check qkv_bias: OpenAI's and Hugging Face's GPT-2 have query/key/value biases (qkv_bias=True), the book's from-scratch GPTModel has none (qkv_bias=False)"
            ),
            Hint::Vocabulary { config, file } => write!(
                f,
                "the vocabulary size differs: the configuration says {config}, the file has {file} rows (GPT-2's is 50257)"
            ),
            Hint::UntiedHead => write!(
                f,
                "config.json sets tie_word_embeddings to false, so the output head must be in the file"
            ),
            Hint::Dimensions => write!(
                f,
                "the embedding dim or the block layout differs from the configuration"
            ),
        }
    }
}

/// Why an import failed. Every variant names the file, field or tensor at fault.
#[derive(Clone, Debug, PartialEq)]
pub enum ImportError {
    /// A file could not be opened, read or written.
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        message: String,
    },
    /// The safetensors header is malformed or does not cover the file exactly.
    Safetensors {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The names match neither layout.
    UnknownLayout {
        /// A few of the names found.
        sample: Vec<String>,
    },
    /// config.json is malformed, or the configuration cannot be determined.
    Config(String),
    /// A tensor is missing.
    MissingTensor {
        /// Its name in the file's layout.
        name: String,
        /// The likely cause, when one is known.
        hint: Option<Hint>,
    },
    /// A tensor has the wrong shape.
    Shape {
        /// Its name in the file's layout.
        name: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
        /// The likely cause.
        hint: Hint,
    },
    /// A tensor's dtype is not F32, F16 or BF16.
    Dtype {
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: String,
    },
    /// The file holds a tensor this layout does not have (it would be silently dropped).
    UnexpectedTensor {
        /// The tensor.
        name: String,
        /// The likely cause, when one is known.
        hint: Option<Hint>,
    },
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportError::Io { path, message } => write!(f, "{path}: {message}"),
            ImportError::Safetensors { path, message } => {
                write!(f, "{path}: not a valid safetensors file: {message}")
            }
            ImportError::UnknownLayout { sample } => {
                let arch = Arch::Gpt2;
                let (tok, qkv) = (
                    tensor_desc(arch, Role::TokEmb),
                    tensor_desc(arch, Role::Qkv),
                );
                let hf = |d: &TensorDesc| d.hf_name(arch, 0, "").unwrap_or_default();
                let book = |d: &TensorDesc| d.book_names(arch, 0).swap_remove(0);
                write!(
                    f,
                    "the tensor names match neither Hugging Face's GPT-2 ({}, {}, …) nor the book's GPTModel ({}, {}, …); found {sample:?}",
                    hf(tok),
                    hf(qkv),
                    book(tok),
                    book(qkv)
                )
            }
            ImportError::Config(e) => write!(f, "{e}"),
            ImportError::MissingTensor { name, hint } => {
                write!(f, "tensor {name:?} is missing")?;
                match hint {
                    Some(h) => write!(f, ": {h}"),
                    None => Ok(()),
                }
            }
            ImportError::Shape {
                name,
                expected,
                found,
                hint,
            } => write!(
                f,
                "tensor {name:?} has shape {found:?}, expected {expected:?}: {hint}"
            ),
            ImportError::Dtype { name, dtype } => write!(
                f,
                "tensor {name:?} is {dtype}; only F32, F16 and BF16 can be imported"
            ),
            ImportError::UnexpectedTensor { name, hint } => {
                write!(
                    f,
                    "tensor {name:?} is not part of a GPT-2 language model in this layout"
                )?;
                match hint {
                    Some(h) => write!(f, ": {h}"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl std::error::Error for ImportError {}

fn io_error(path: &Path, e: &io::Error) -> ImportError {
    ImportError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// A safetensors file read tensor by tensor.

/// The largest header accepted (the `safetensors` crate's own cap).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Values converted per positioned read (4 MiB of f32).
const CHUNK_VALUES: usize = 1 << 20;

/// A safetensors file whose header has been parsed and validated (with the `safetensors` crate's
/// own rules: contiguous offsets, sizes matching dtype × shape) and whose data section covers the
/// rest of the file exactly. Tensor data is read on demand with positioned reads; the file is
/// never mapped or loaded whole.
#[derive(Debug)]
pub struct SafetensorsFile {
    file: File,
    path: PathBuf,
    data_start: u64,
    metadata: Metadata,
}

impl SafetensorsFile {
    /// Opens `path` and validates its header. Untrusted bytes give typed errors, never panics.
    pub fn open(path: &Path) -> Result<SafetensorsFile, ImportError> {
        let bad = |message: String| ImportError::Safetensors {
            path: path.display().to_string(),
            message,
        };
        let mut file = File::open(path).map_err(|e| io_error(path, &e))?;
        let file_len = file.metadata().map_err(|e| io_error(path, &e))?.len();
        let mut n = [0u8; 8];
        if file_len < 8 {
            return Err(bad(format!(
                "the file is {file_len} bytes, shorter than the 8-byte header length"
            )));
        }
        file.read_exact(&mut n).map_err(|e| io_error(path, &e))?;
        let header_len = u64::from_le_bytes(n);
        if header_len > MAX_HEADER_BYTES {
            return Err(bad(format!(
                "the header length {header_len} is above the cap of {MAX_HEADER_BYTES} bytes"
            )));
        }
        let data_start = 8 + header_len;
        if data_start > file_len {
            return Err(bad(format!(
                "the header length {header_len} runs past the end of the file ({file_len} bytes)"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|e| io_error(path, &e))?;
        let metadata: Metadata =
            serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
        let data_len = metadata.data_len() as u64;
        if data_start + data_len != file_len {
            return Err(bad(format!(
                "the header describes {data_len} bytes of tensor data but the file holds {}",
                file_len - data_start
            )));
        }
        Ok(SafetensorsFile {
            file,
            path: path.to_path_buf(),
            data_start,
            metadata,
        })
    }

    /// The path opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensor names in file order.
    pub fn names(&self) -> Vec<String> {
        self.metadata.offset_keys()
    }

    /// Whether the file holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    /// A tensor's dtype and shape.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.metadata.info(name)
    }

    /// The `__metadata__` string map of the header.
    pub fn metadata(&self) -> Option<&std::collections::HashMap<String, String>> {
        self.metadata.metadata().as_ref()
    }

    /// Reads `out.len()` values of tensor `name` starting at element `start`, converted to f32
    /// (F32, F16 and BF16 are accepted). Reads in chunks of at most 4 MiB.
    pub fn read_f32_range(
        &self,
        name: &str,
        start: usize,
        out: &mut [f32],
    ) -> Result<(), ImportError> {
        let info = self.info(name).ok_or_else(|| ImportError::MissingTensor {
            name: name.into(),
            hint: None,
        })?;
        let width = match info.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(ImportError::Dtype {
                    name: name.into(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        let (begin, end) = info.data_offsets;
        let numel = (end - begin) / width;
        if start.checked_add(out.len()).is_none_or(|e| e > numel) {
            return Err(ImportError::Safetensors {
                path: self.path.display().to_string(),
                message: format!(
                    "read of {} values at {start} past the end of tensor {name:?} ({numel} values)",
                    out.len()
                ),
            });
        }
        let mut bytes = vec![0u8; out.len().min(CHUNK_VALUES) * width];
        let mut f = &self.file;
        let mut offset = self.data_start + (begin + start * width) as u64;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| io_error(&self.path, &e))?;
        for chunk in out.chunks_mut(CHUNK_VALUES) {
            let raw = &mut bytes[..chunk.len() * width];
            f.read_exact(raw).map_err(|e| io_error(&self.path, &e))?;
            offset += raw.len() as u64;
            match info.dtype {
                Dtype::F32 => {
                    for (o, b) in chunk.iter_mut().zip(raw.chunks_exact(4)) {
                        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
                Dtype::F16 => {
                    let h: Vec<f16> = raw
                        .chunks_exact(2)
                        .map(|b| f16::from_le_bytes([b[0], b[1]]))
                        .collect();
                    h.convert_to_f32_slice(chunk);
                }
                _ => {
                    for (o, b) in chunk.iter_mut().zip(raw.chunks_exact(2)) {
                        *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
                    }
                }
            }
        }
        debug_assert_eq!(
            offset,
            self.data_start + (begin + (start + out.len()) * width) as u64
        );
        Ok(())
    }

    /// Reads a whole tensor as f32.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>, ImportError> {
        let info = self.info(name).ok_or_else(|| ImportError::MissingTensor {
            name: name.into(),
            hint: None,
        })?;
        let numel = info.shape.iter().product();
        let mut out = vec![0.0; numel];
        self.read_f32_range(name, 0, &mut out)?;
        Ok(out)
    }

    /// The configuration recorded in `__metadata__` by [`import_to_safetensors`] (keys
    /// `gpt2.vocab_size`, `gpt2.context_length`, `gpt2.dim`, `gpt2.n_layers`, `gpt2.n_heads`,
    /// `gpt2.qkv_bias`, `gpt2.tied_head`), or `None` when the file has none.
    pub fn gpt_config(&self) -> Result<Option<GptConfig>, ImportError> {
        let Some(m) = self.metadata() else {
            return Ok(None);
        };
        if !m.contains_key("gpt2.dim") {
            return Ok(None);
        }
        let num = |k: &str| -> Result<usize, ImportError> {
            m.get(k).and_then(|v| v.parse().ok()).ok_or_else(|| {
                ImportError::Config(format!(
                    "{}: __metadata__ {k:?} is missing or not a number",
                    self.path.display()
                ))
            })
        };
        let flag = |k: &str| -> Result<bool, ImportError> {
            m.get(k).and_then(|v| v.parse().ok()).ok_or_else(|| {
                ImportError::Config(format!(
                    "{}: __metadata__ {k:?} is missing or not true/false",
                    self.path.display()
                ))
            })
        };
        let cfg = GptConfig {
            vocab_size: num("gpt2.vocab_size")?,
            context_length: num("gpt2.context_length")?,
            dim: num("gpt2.dim")?,
            n_layers: num("gpt2.n_layers")?,
            n_heads: num("gpt2.n_heads")?,
            qkv_bias: flag("gpt2.qkv_bias")?,
            tied_head: flag("gpt2.tied_head")?,
        };
        cfg.validate()
            .map_err(|e| ImportError::Config(format!("{}: {e}", self.path.display())))?;
        Ok(Some(cfg))
    }
}

/// The `__metadata__` entries [`import_to_safetensors`] records (read back by
/// [`SafetensorsFile::gpt_config`]), plus `format: pt` as PyTorch's files carry.
pub fn config_metadata(cfg: &GptConfig) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("format".into(), "pt".into());
    m.insert("gpt2.vocab_size".into(), cfg.vocab_size.to_string());
    m.insert("gpt2.context_length".into(), cfg.context_length.to_string());
    m.insert("gpt2.dim".into(), cfg.dim.to_string());
    m.insert("gpt2.n_layers".into(), cfg.n_layers.to_string());
    m.insert("gpt2.n_heads".into(), cfg.n_heads.to_string());
    m.insert("gpt2.qkv_bias".into(), cfg.qkv_bias.to_string());
    m.insert("gpt2.tied_head".into(), cfg.tied_head.to_string());
    m
}

// ---------------------------------------------------------------------------------------------
// The mapping table, both directions.

/// How an external tensor relates to its canonical tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// The same values in the same order.
    Same,
    /// External [in, out] (Hugging Face's Conv1D) is canonical [out, in] (nn.Linear).
    Transpose,
    /// Export only: zeros (a Hugging Face tensor the layout always holds, for a model without it).
    Zeros,
}

/// One external tensor of a layout and where its values live in a canonical tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The role of the canonical tensor.
    pub role: Role,
    /// The name in the layout (with Hugging Face's prefix applied).
    pub external: String,
    /// Its shape in the layout.
    pub shape: Vec<usize>,
    /// The canonical tensor it comes from / goes to.
    pub canonical: String,
    /// Where its values start in the canonical tensor, in elements (the book's W_key is the
    /// second third of `att.qkv.weight`).
    pub offset: usize,
    /// How the values are arranged.
    pub op: Op,
    /// Written on export but not read on import (a tied head's copy, zero biases).
    pub export_only: bool,
}

/// The external tensors of `layout` for `cfg`, in file order, and how each maps to the canonical
/// tensors of [`GptConfig::tensor_shapes`]: the names come from the architecture's description
/// ([`emberlm_formats::arch`]). `prefix` is prepended to Hugging Face's base-model names (`""` or
/// [`Arch::hf_base_prefix`]; root names such as the head never have it).
///
/// Export conventions: Hugging Face holds its `always` tensors even where the model has none
/// (zeros on export: GPT-2's qkv bias) and its head only when untied; the book always has its
/// head (a copy of the token embedding when tied) and never its mask buffers.
pub fn pieces(cfg: &GptConfig, layout: Layout, prefix: &str) -> Vec<Piece> {
    let arch = Arch::Gpt2;
    let described = arch::described(&(*cfg).into(), None);
    let tok_emb = described
        .iter()
        .find(|(t, _)| t.desc.role == Role::TokEmb)
        .map(|(t, _)| t.name.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for (t, present) in described.iter().cloned() {
        let d = t.desc;
        let layer = t.layer.unwrap_or(0);
        let piece =
            |external: String, shape: Vec<usize>, canonical: String, offset, op, export_only| {
                Piece {
                    role: d.role,
                    external,
                    shape,
                    canonical,
                    offset,
                    op,
                    export_only,
                }
            };
        match layout {
            Layout::HuggingFace => {
                let (Some(hf), Some(name)) = (d.hf, d.hf_name(arch, layer, prefix)) else {
                    continue;
                };
                let shape = if hf.transposed {
                    t.shape.iter().rev().copied().collect()
                } else {
                    t.shape.clone()
                };
                let op = if hf.transposed {
                    Op::Transpose
                } else {
                    Op::Same
                };
                match (present, hf.always) {
                    (true, _) => out.push(piece(name, shape, t.name, 0, op, false)),
                    (false, true) => out.push(piece(name, shape, t.name, 0, Op::Zeros, true)),
                    (false, false) => {}
                }
            }
            Layout::Book => {
                let names = d.book_names(arch, layer);
                if !present {
                    // The book always has its head: a tied one is written as a copy of the token
                    // embedding.
                    if d.role == Role::Head {
                        for name in names {
                            out.push(piece(
                                name,
                                t.shape.clone(),
                                tok_emb.clone(),
                                0,
                                Op::Same,
                                true,
                            ));
                        }
                    }
                    continue;
                }
                // Several names split the tensor by rows into equal parts.
                let parts = names.len().max(1);
                let mut shape = t.shape.clone();
                shape[0] /= parts;
                let part_len: usize = shape.iter().product();
                for (k, name) in names.into_iter().enumerate() {
                    out.push(piece(
                        name,
                        shape.clone(),
                        t.name.clone(),
                        k * part_len,
                        Op::Same,
                        false,
                    ));
                }
            }
        }
    }
    out
}

/// The names and shapes of the tensors an export in `layout` writes (Hugging Face with the
/// `transformer.` prefix, as `save_pretrained` writes them).
pub fn layout_shapes(cfg: &GptConfig, layout: Layout) -> Vec<(String, Vec<usize>)> {
    pieces(cfg, layout, hf_prefix(layout))
        .into_iter()
        .map(|p| (p.external, p.shape))
        .collect()
}

/// The prefix an export gives Hugging Face's transformer tensors.
pub(crate) fn hf_prefix(layout: Layout) -> &'static str {
    match layout {
        Layout::HuggingFace => "transformer.",
        Layout::Book => "",
    }
}

/// Transposes a row-major (rows, cols) matrix into (cols, rows).
pub(crate) fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

// ---------------------------------------------------------------------------------------------
// Opening a source: layout, configuration, checks.

/// A validated source: every tensor the configuration needs is present with the right shape and
/// a readable dtype, and every other tensor is one that is meant to be ignored.
struct Source {
    file: SafetensorsFile,
    layout: Layout,
    config: GptConfig,
    pieces: Vec<Piece>,
    ignored: Vec<String>,
    tokenizer: Option<Tokenizer>,
}

fn open_source(path: &Path, heads: Option<usize>) -> Result<Source, ImportError> {
    let (dir, file_path) = if path.is_dir() {
        (path.to_path_buf(), path.join("model.safetensors"))
    } else {
        (
            path.parent().map(Path::to_path_buf).unwrap_or_default(),
            path.to_path_buf(),
        )
    };
    let file = SafetensorsFile::open(&file_path)?;
    let arch = Arch::Gpt2;
    let tok_emb = tensor_desc(arch, Role::TokEmb);
    let hf_tok = |prefix: &str| tok_emb.hf_name(arch, 0, prefix).unwrap_or_default();
    let prefix = if file.contains(&hf_tok(arch.hf_base_prefix())) {
        arch.hf_base_prefix()
    } else {
        ""
    };
    let layout = if file.contains(&hf_tok(prefix)) {
        Layout::HuggingFace
    } else if file.contains(&tok_emb.book_names(arch, 0).concat()) {
        Layout::Book
    } else {
        let mut sample = file.names();
        sample.truncate(6);
        return Err(ImportError::UnknownLayout { sample });
    };
    let config_json = dir.join("config.json");
    let config = match layout {
        Layout::HuggingFace => hf_config(&config_json, &file, prefix, heads)?,
        Layout::Book => book_config(&config_json, &file, heads)?,
    };
    let pieces: Vec<Piece> = pieces(&config, layout, prefix)
        .into_iter()
        .filter(|p| !p.export_only)
        .collect();
    // Every needed tensor: present, right shape, readable dtype.
    for p in &pieces {
        let Some(info) = file.info(&p.external) else {
            return Err(ImportError::MissingTensor {
                name: p.external.clone(),
                hint: missing_hint(p, &config, layout),
            });
        };
        if info.shape != p.shape {
            return Err(ImportError::Shape {
                name: p.external.clone(),
                expected: p.shape.clone(),
                found: info.shape.clone(),
                hint: shape_hint(p, &info.shape, &config, layout),
            });
        }
        if !matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(ImportError::Dtype {
                name: p.external.clone(),
                dtype: format!("{:?}", info.dtype),
            });
        }
    }
    // Every other tensor: a known buffer or a tied head, or an error (never drop weights silently).
    let used: BTreeSet<&str> = pieces.iter().map(|p| p.external.as_str()).collect();
    let mut ignored = Vec::new();
    for name in file.names() {
        if used.contains(name.as_str()) {
            continue;
        }
        if is_ignorable(&name, layout, prefix, &config) {
            ignored.push(name);
        } else {
            // A qkv bias in a file whose configuration has none.
            let with_bias = GptConfig {
                qkv_bias: true,
                ..config
            };
            let hint = self::pieces(&with_bias, layout, prefix)
                .iter()
                .any(|p| p.role == Role::QkvBias && p.external == name)
                .then_some(Hint::QkvBias);
            return Err(ImportError::UnexpectedTensor { name, hint });
        }
    }
    let tokenizer = {
        let (vj, mt) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if vj.is_file() && mt.is_file() {
            Some(
                Tokenizer::from_hf_files(&vj, &mt)
                    .map_err(|e| ImportError::Config(e.to_string()))?,
            )
        } else {
            None
        }
    };
    Ok(Source {
        file,
        layout,
        config,
        pieces,
        ignored,
        tokenizer,
    })
}

/// The description of the tensor with this role.
fn tensor_desc(arch: Arch, role: Role) -> &'static TensorDesc {
    arch.description()
        .iter()
        .find(|d| d.role == role)
        .expect("every role used here is described")
}

/// Mask buffers (the book's `att.mask`, Hugging Face's `attn.bias` / `attn.masked_bias`: the
/// description's per-block buffers) and a tied head's Hugging Face tensor (transformers ignores
/// it too and uses the token embedding).
fn is_ignorable(name: &str, layout: Layout, prefix: &str, cfg: &GptConfig) -> bool {
    let arch = Arch::Gpt2;
    let buffer = |block: &dyn Fn(usize) -> String, buffers: &[&str]| {
        (0..cfg.n_layers).any(|l| {
            name.strip_prefix(&block(l))
                .is_some_and(|rest| buffers.contains(&rest))
        })
    };
    match layout {
        Layout::Book => buffer(&|l| arch.book_block_prefix(l), arch.book_block_buffers()),
        Layout::HuggingFace => {
            let head = tensor_desc(arch, Role::Head).hf_name(arch, 0, prefix);
            (cfg.tied_head && head.as_deref() == Some(name))
                || buffer(
                    &|l| format!("{prefix}{}", arch.hf_block_prefix(l)),
                    arch.hf_block_buffers(),
                )
        }
    }
}

fn missing_hint(piece: &Piece, cfg: &GptConfig, layout: Layout) -> Option<Hint> {
    match piece.role {
        Role::QkvBias => Some(Hint::QkvBias),
        Role::Head if layout == Layout::HuggingFace && !cfg.tied_head => Some(Hint::UntiedHead),
        _ => None,
    }
}

/// Explains a shape mismatch. `expected` and `found` differ.
fn shape_hint(piece: &Piece, found: &[usize], cfg: &GptConfig, layout: Layout) -> Hint {
    let expected = &piece.shape[..];
    let rows_differ_only = found.len() == 2 && expected.len() == 2 && found[1] == expected[1];
    if found.len() == 2 && expected.len() == 2 && found[0] == expected[1] && found[1] == expected[0]
    {
        Hint::Transposed { layout }
    } else if piece.role == Role::PosEmb && rows_differ_only {
        Hint::ContextLength {
            config: cfg.context_length,
            file: found[0],
        }
    } else if matches!(piece.role, Role::TokEmb | Role::Head) && rows_differ_only {
        Hint::Vocabulary {
            config: cfg.vocab_size,
            file: found[0],
        }
    } else if piece.role == Role::QkvBias {
        Hint::QkvBias
    } else {
        Hint::Dimensions
    }
}

/// Number of consecutive blocks `0, 1, …` for which `name(i)` is in the file.
fn count_blocks(file: &SafetensorsFile, name: impl Fn(usize) -> String) -> usize {
    (0..).take_while(|&i| file.contains(&name(i))).count()
}

/// The number of heads of the four GPT-2 sizes, by embedding dim.
fn gpt2_heads(dim: usize) -> Option<usize> {
    match dim {
        768 => Some(12),
        1024 => Some(16),
        1280 => Some(20),
        1600 => Some(25),
        _ => None,
    }
}

fn shape_of(file: &SafetensorsFile, name: &str) -> Result<Vec<usize>, ImportError> {
    file.info(name)
        .map(|i| i.shape.clone())
        .ok_or_else(|| ImportError::MissingTensor {
            name: name.into(),
            hint: None,
        })
}

/// V, T and C from the two embeddings.
fn embedding_dims(
    file: &SafetensorsFile,
    tok: &str,
    pos: &str,
) -> Result<(usize, usize, usize), ImportError> {
    let (ts, ps) = (shape_of(file, tok)?, shape_of(file, pos)?);
    match (ts.as_slice(), ps.as_slice()) {
        ([v, c], [t, c2]) if c == c2 => Ok((*v, *t, *c)),
        ([_, c], _) => Err(ImportError::Shape {
            name: pos.into(),
            expected: vec![ps.first().copied().unwrap_or(0), *c],
            found: ps.clone(),
            hint: Hint::Dimensions,
        }),
        _ => Err(ImportError::Shape {
            name: tok.into(),
            expected: vec![
                ts.first().copied().unwrap_or(0),
                ps.get(1).copied().unwrap_or(0),
            ],
            found: ts.clone(),
            hint: Hint::Dimensions,
        }),
    }
}

fn resolve_heads(
    explicit: Option<usize>,
    from_config: Option<usize>,
    dim: usize,
    what: &str,
) -> Result<usize, ImportError> {
    explicit
        .or(from_config)
        .or_else(|| gpt2_heads(dim))
        .ok_or_else(|| {
            ImportError::Config(format!(
                "{what} does not record the number of heads and emb_dim {dim} is not a GPT-2 size (768, 1024, 1280, 1600): pass the number of heads (--heads)"
            ))
        })
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>, ImportError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| io_error(path, &e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ImportError::Config(format!("{}: {e}", path.display())))
}

/// The book layout's configuration: V, T, C from the embeddings, L from the blocks present,
/// qkv bias from block 0, tied when `out_head.weight` is absent. The heads come from `heads`,
/// else a `config.json` beside the file with the book's `n_heads` key (as
/// [`crate::export_safetensors`] writes), else the GPT-2 size of C.
fn book_config(
    config_json: &Path,
    file: &SafetensorsFile,
    heads: Option<usize>,
) -> Result<GptConfig, ImportError> {
    let arch = Arch::Gpt2;
    let book = |role: Role, layer: usize| tensor_desc(arch, role).book_names(arch, layer);
    let (v, t, c) = embedding_dims(
        file,
        &book(Role::TokEmb, 0).concat(),
        &book(Role::PosEmb, 0).concat(),
    )?;
    let n_layers = count_blocks(file, |i| book(Role::AttnNormScale, i).concat());
    let json_heads = match read_json(config_json)? {
        Some(j) => j
            .get("n_heads")
            .and_then(serde_json::Value::as_u64)
            .map(|h| h as usize),
        None => None,
    };
    let cfg = GptConfig {
        vocab_size: v,
        context_length: t,
        dim: c,
        n_layers,
        n_heads: resolve_heads(heads, json_heads, c, "a book-layout file")?,
        qkv_bias: book(Role::QkvBias, 0).iter().any(|n| file.contains(n)),
        tied_head: !file.contains(&book(Role::Head, 0).concat()),
    };
    cfg.validate()
        .map_err(|e| ImportError::Config(e.to_string()))?;
    Ok(cfg)
}

/// Hugging Face's configuration from config.json (n_embd, n_layer, n_head, n_positions,
/// vocab_size, tie_word_embeddings), cross-checked against the weights; without config.json
/// (e.g. only `model.safetensors` was downloaded) it is inferred from the shapes. GPT-2 always
/// has q/k/v biases.
fn hf_config(
    config_json: &Path,
    file: &SafetensorsFile,
    prefix: &str,
    heads: Option<usize>,
) -> Result<GptConfig, ImportError> {
    let arch = Arch::Gpt2;
    let hf = |role: Role, layer: usize| {
        tensor_desc(arch, role)
            .hf_name(arch, layer, prefix)
            .unwrap_or_default()
    };
    let layers_in_file = count_blocks(file, |i| hf(Role::AttnNormScale, i));
    let Some(json) = read_json(config_json)? else {
        let (v, t, c) = embedding_dims(file, &hf(Role::TokEmb, 0), &hf(Role::PosEmb, 0))?;
        let cfg = GptConfig {
            vocab_size: v,
            context_length: t,
            dim: c,
            n_layers: layers_in_file,
            n_heads: resolve_heads(heads, None, c, "a Hugging Face file without config.json")?,
            qkv_bias: true,
            tied_head: !file.contains(&hf(Role::Head, 0)),
        };
        cfg.validate()
            .map_err(|e| ImportError::Config(e.to_string()))?;
        return Ok(cfg);
    };
    let at = config_json.display();
    let field = |k: &str| -> Result<usize, ImportError> {
        json.get(k)
            .and_then(serde_json::Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| {
                ImportError::Config(format!(
                    "{at}: field {k:?} is missing or not a non-negative integer"
                ))
            })
    };
    if let Some(t) = json.get("model_type").and_then(|v| v.as_str()) {
        if t != "gpt2" {
            return Err(ImportError::Config(format!(
                "{at}: model_type {t:?} is not \"gpt2\""
            )));
        }
    }
    if let Some(act) = json.get("activation_function").and_then(|v| v.as_str()) {
        if act != "gelu_new" && act != "gelu_pytorch_tanh" {
            return Err(ImportError::Config(format!(
                "{at}: activation_function {act:?} is not GPT-2's tanh GELU (gelu_new)"
            )));
        }
    }
    if let Some(eps) = json.get("layer_norm_epsilon").and_then(|v| v.as_f64()) {
        if (eps - 1e-5).abs() > 1e-12 {
            return Err(ImportError::Config(format!(
                "{at}: layer_norm_epsilon {eps} is not GPT-2's 1e-5"
            )));
        }
    }
    if json
        .get("scale_attn_by_inverse_layer_idx")
        .and_then(|v| v.as_bool())
        == Some(true)
    {
        return Err(ImportError::Config(format!(
            "{at}: scale_attn_by_inverse_layer_idx is not supported (GPT-2 scales attention by 1/sqrt(head_dim) only)"
        )));
    }
    let n_embd = field("n_embd")?;
    if let Some(inner) = json.get("n_inner").and_then(|v| v.as_u64()) {
        // Checked: n_embd is untrusted and not validated yet.
        if Some(inner) != (n_embd as u64).checked_mul(4) {
            return Err(ImportError::Config(format!(
                "{at}: n_inner {inner} is not 4 × n_embd (n_embd = {n_embd})"
            )));
        }
    }
    let n_layers = field("n_layer")?;
    if layers_in_file != n_layers {
        return Err(ImportError::Config(format!(
            "{at}: n_layer is {n_layers} but the weights hold {layers_in_file} blocks"
        )));
    }
    let cfg = GptConfig {
        vocab_size: field("vocab_size")?,
        context_length: field("n_positions")?,
        dim: n_embd,
        n_layers,
        n_heads: match heads {
            Some(h) => h,
            None => field("n_head")?,
        },
        qkv_bias: true,
        tied_head: json
            .get("tie_word_embeddings")
            .and_then(|v| v.as_bool())
            .unwrap_or(true),
    };
    cfg.validate()
        .map_err(|e| ImportError::Config(format!("{at}: {e}")))?;
    Ok(cfg)
}

// ---------------------------------------------------------------------------------------------
// Emitting canonical tensors.

/// Produces canonical tensor `name` (its pieces in offset order) through `sink`, chunk by chunk:
/// plain copies stream in chunks of [`CHUNK_VALUES`]; a transposed piece is read whole and
/// transposed (the only time two copies of one tensor exist).
fn emit(
    src: &Source,
    name: &str,
    numel: usize,
    sink: &mut dyn FnMut(&[f32]) -> Result<(), ImportError>,
) -> Result<(), ImportError> {
    let mut done = 0;
    let mut buf = Vec::new();
    for p in src.pieces.iter().filter(|p| p.canonical == name) {
        // The table lists a canonical tensor's pieces in offset order, back to back.
        debug_assert_eq!(p.offset, done, "{}", p.external);
        let n: usize = p.shape.iter().product();
        match p.op {
            Op::Same => {
                buf.resize(n.min(CHUNK_VALUES), 0.0);
                let mut start = 0;
                while start < n {
                    let len = (n - start).min(CHUNK_VALUES);
                    src.file
                        .read_f32_range(&p.external, start, &mut buf[..len])?;
                    sink(&buf[..len])?;
                    start += len;
                }
            }
            Op::Transpose => {
                let w = src.file.read_f32(&p.external)?;
                sink(&transpose(&w, p.shape[0], p.shape[1]))?;
            }
            Op::Zeros => unreachable!("export-only pieces are filtered out of a source"),
        }
        done += n;
    }
    if done != numel {
        // The table covers every canonical tensor exactly; anything else is a bug here.
        return Err(ImportError::Config(format!(
            "internal: canonical tensor {name:?} got {done} of {numel} values"
        )));
    }
    Ok(())
}

/// Reads `path`: a `.safetensors` file or a directory holding `model.safetensors` (and, for
/// Hugging Face, usually `config.json`, optionally `vocab.json` + `merges.txt`), into memory.
///
/// `heads` overrides the number of attention heads. Book-layout files do not record it: it comes
/// from `heads`, else a `config.json` beside the file with the book's `n_heads` key, else the GPT-2
/// size of the embedding dim (768 → 12, 1024 → 16, 1280 → 20, 1600 → 25). Hugging Face files
/// take it from config.json (or, without one, the same table).
///
/// Every name and shape is checked first; tensors are then read one at a time, so the process
/// holds one copy of the weights. For large models prefer [`import_to_safetensors`].
pub fn import_safetensors(path: &Path, heads: Option<usize>) -> Result<Imported, ImportError> {
    let src = open_source(path, heads)?;
    let mut tensors = BTreeMap::new();
    for (name, shape) in src.config.tensor_shapes() {
        let numel = shape.iter().product();
        let mut values = Vec::with_capacity(numel);
        emit(&src, &name, numel, &mut |chunk| {
            values.extend_from_slice(chunk);
            Ok(())
        })?;
        tensors.insert(name, values);
    }
    Ok(Imported {
        config: src.config,
        layout: src.layout,
        tensors,
        tokenizer: src.tokenizer,
        weights_path: src.file.path().to_path_buf(),
        ignored: src.ignored,
    })
}

/// Converts `from` (as for [`import_safetensors`]) into `out_file`: a safetensors file of the
/// canonical f32 tensors in [`GptConfig::tensor_shapes`] order, with the configuration in
/// `__metadata__` (see [`config_metadata`]). This is the `model.safetensors` of a checkpoint.
///
/// Streams tensor by tensor: the header is computed from the shapes first, then each tensor is
/// read, converted and written in chunks, so memory stays at about one tensor (two for a
/// transposed Conv1D weight) whatever the model size. The file is written atomically
/// (temporary file, fsync, rename): on any error `out_file` is untouched.
pub fn import_to_safetensors(
    from: &Path,
    out_file: &Path,
    heads: Option<usize>,
) -> Result<ImportSummary, ImportError> {
    let src = open_source(from, heads)?;
    let shapes = src.config.tensor_shapes();
    let mut failure: Option<ImportError> = None;
    let written =
        write_safetensors_f32(out_file, &config_metadata(&src.config), &shapes, |i, w| {
            let (name, shape) = &shapes[i];
            let numel = shape.iter().product();
            emit(&src, name, numel, &mut |chunk| {
                write_f32s(w, chunk).map_err(|e| io_error(out_file, &e))
            })
            .map_err(|e| {
                let message = e.to_string();
                failure = Some(e);
                io::Error::other(message)
            })
        });
    let bytes = match (written, failure) {
        (Ok(b), _) => b,
        (Err(_), Some(e)) => return Err(e),
        (Err(e), None) => return Err(io_error(out_file, &e)),
    };
    Ok(ImportSummary {
        config: src.config,
        layout: src.layout,
        weights_path: src.file.path().to_path_buf(),
        out_file: out_file.to_path_buf(),
        tensors: shapes.len(),
        parameters: src.config.param_count(),
        bytes,
        tokenizer: src.tokenizer,
        ignored: src.ignored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(qkv_bias: bool, tied_head: bool) -> GptConfig {
        GptConfig {
            vocab_size: 11,
            context_length: 5,
            dim: 8,
            n_layers: 2,
            n_heads: 2,
            qkv_bias,
            tied_head,
        }
    }

    /// Each layout's pieces cover every canonical tensor exactly once, in offset order.
    #[test]
    fn pieces_cover_every_canonical_tensor() {
        for layout in [Layout::HuggingFace, Layout::Book] {
            for (bias, tied) in [(false, false), (true, true), (true, false), (false, true)] {
                let cfg = tiny(bias, tied);
                let ps = pieces(&cfg, layout, "");
                for (name, shape) in cfg.tensor_shapes() {
                    let numel: usize = shape.iter().product();
                    let mut at = 0;
                    for p in ps.iter().filter(|p| p.canonical == name && !p.export_only) {
                        assert_eq!(p.offset, at, "{layout:?} {}", p.external);
                        at += p.shape.iter().product::<usize>();
                    }
                    assert_eq!(at, numel, "{layout:?} {name} bias={bias} tied={tied}");
                }
            }
        }
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        // [[1, 2, 3], [4, 5, 6]] -> [[1, 4], [2, 5], [3, 6]]
        assert_eq!(
            transpose(&[1., 2., 3., 4., 5., 6.], 2, 3),
            vec![1., 4., 2., 5., 3., 6.]
        );
    }

    #[test]
    fn hints_name_the_likely_cause() {
        let cfg = tiny(true, true);
        let hf = Layout::HuggingFace;
        let piece = |layout: Layout, name: &str| {
            pieces(&cfg, layout, "")
                .into_iter()
                .find(|p| p.external == name)
                .unwrap()
        };
        assert_eq!(
            shape_hint(&piece(hf, "h.0.mlp.c_fc.weight"), &[32, 8], &cfg, hf),
            Hint::Transposed { layout: hf }
        );
        assert_eq!(
            shape_hint(&piece(hf, "wpe.weight"), &[1024, 8], &cfg, hf),
            Hint::ContextLength {
                config: 5,
                file: 1024
            }
        );
        assert_eq!(
            shape_hint(&piece(hf, "h.0.attn.c_attn.bias"), &[8], &cfg, hf),
            Hint::QkvBias
        );
        assert_eq!(
            shape_hint(&piece(hf, "wte.weight"), &[50257, 8], &cfg, hf),
            Hint::Vocabulary {
                config: 11,
                file: 50257
            }
        );
        let book = Layout::Book;
        assert_eq!(
            missing_hint(&piece(book, "trf_blocks.1.att.W_key.bias"), &cfg, book),
            Some(Hint::QkvBias)
        );
    }
}
