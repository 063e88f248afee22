//! A checkpoint of the modern families (Llama, Qwen2, Qwen3, Gemma 3) → a Hugging Face model
//! directory that transformers' `AutoModelForCausalLM.from_pretrained(DIR)` loads:
//!
//! - `model.safetensors`: every tensor under the name [`super::convert`] reads it from (the
//!   reverse of the import: the architecture's description gives the names, `model.` before the
//!   base model's, `lm_head.weight` only when the head is not tied), f32 by default, bf16 or f16
//!   on request; Gemma's norm scales, stored here as 1 + w, go back to w ([`gemma_w`]);
//! - `config.json` ([`config_json`]): the `model_type` and every hyperparameter transformers
//!   needs, written so that [`super::config::parse`] reads back exactly the checkpoint's
//!   configuration, with the token ids of the imported model's own `config.json`;
//! - the checkpoint's `hf/` files besides `config.json` (tokenizer, chat template, generation
//!   settings), so that `AutoTokenizer.from_pretrained(DIR)` loads.
//!
//! Streams: the checkpoint's `model.safetensors` is read in chunks of whole rows (at most
//! [`CHUNK_VALUES`] values), so memory does not grow with the model. Every file is written
//! atomically; `config.json` last.

use super::convert::CHUNK_VALUES;
use crate::checkpoint::{HF_FILES, HfFiles};
use crate::import::{ImportError, SafetensorsFile};
use crate::safetensors_io::{StDtype, write_safetensors};
use emberlm_formats::arch::{self, Arch};
use emberlm_formats::config::{Mlp, ModelConfig, Norm, RopeScaling};
use emberlm_formats::ember::{write_atomically, write_f32s};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Why a family checkpoint could not be exported to a Hugging Face directory.
#[derive(Debug)]
pub enum HfExportError {
    /// The configuration has something the family's transformers model cannot express.
    Inexpressible(String),
    /// Reading the checkpoint's weights failed (or a tensor's shape is not the configuration's).
    Read(ImportError),
    /// A value cannot be stored in the chosen dtype.
    Value {
        /// ember's tensor name.
        tensor: String,
        /// Flat index of the value.
        index: usize,
        /// The value.
        value: f32,
        /// The dtype asked for.
        dtype: &'static str,
    },
    /// The output directory holds a file that would make transformers read something else.
    Stale(PathBuf),
    /// Writing failed.
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        message: String,
    },
}

impl fmt::Display for HfExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HfExportError::Inexpressible(m) => write!(f, "{m}"),
            HfExportError::Read(e) => write!(f, "{e}"),
            HfExportError::Value {
                tensor,
                index,
                value,
                dtype,
            } => write!(
                f,
                "tensor {tensor:?}: value {value} at index {index} cannot be stored as {dtype}"
            ),
            HfExportError::Stale(p) => write!(
                f,
                "{} exists: transformers would load the weights it lists instead of the new \
                 model.safetensors; choose an empty directory",
                p.display()
            ),
            HfExportError::Io { path, message } => write!(f, "{}: {message}", path.display()),
        }
    }
}

impl std::error::Error for HfExportError {}

fn io_err(path: &Path) -> impl Fn(io::Error) -> HfExportError + '_ {
    move |e| HfExportError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The dtype of the exported tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfDtype {
    /// Exact.
    F32,
    /// bfloat16, rounded to nearest even.
    Bf16,
    /// IEEE half, rounded to nearest even; a value beyond ±65504 is an error.
    F16,
}

impl std::str::FromStr for HfDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(HfDtype::F32),
            "bf16" => Ok(HfDtype::Bf16),
            "f16" => Ok(HfDtype::F16),
            _ => Err(format!("unknown dtype {s:?}: expected f32, bf16 or f16")),
        }
    }
}

impl HfDtype {
    /// The command line's name.
    pub fn name(self) -> &'static str {
        match self {
            HfDtype::F32 => "f32",
            HfDtype::Bf16 => "bf16",
            HfDtype::F16 => "f16",
        }
    }

    /// `config.json`'s `dtype`.
    fn torch(self) -> &'static str {
        match self {
            HfDtype::F32 => "float32",
            HfDtype::Bf16 => "bfloat16",
            HfDtype::F16 => "float16",
        }
    }

    fn st(self) -> StDtype {
        match self {
            HfDtype::F32 => StDtype::F32,
            HfDtype::Bf16 => StDtype::Bf16,
            HfDtype::F16 => StDtype::F16,
        }
    }
}

/// What [`export`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HfExported {
    /// `DIR/model.safetensors`.
    pub model_file: PathBuf,
    /// `DIR/config.json`.
    pub config_file: PathBuf,
    /// Tensors in `model.safetensors`.
    pub tensors: usize,
    /// Size of `model.safetensors` in bytes.
    pub bytes: u64,
    /// The `hf/` files copied into the directory.
    pub copied: Vec<String>,
}

/// Hugging Face's `model_type` and model class of each family.
fn names(arch: Arch) -> Option<(&'static str, &'static str)> {
    Some(match arch {
        Arch::Llama => ("llama", "LlamaForCausalLM"),
        Arch::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
        Arch::Qwen3 => ("qwen3", "Qwen3ForCausalLM"),
        Arch::Gemma3 => ("gemma3_text", "Gemma3ForCausalLM"),
        Arch::Gpt2 => return None,
    })
}

/// `x` as JSON in the shortest decimal that reads back as the same f32 (Rust's `Display`): 1e-6,
/// not 9.999999974752427e-7, so that transformers computes with the value the model was given.
fn num(x: f32) -> Value {
    let shortest: f64 = x.to_string().parse().unwrap_or(x as f64);
    json!(shortest)
}

/// An error unless `ok`: the configuration has `what`, which the family's transformers model
/// cannot express.
fn need(ok: bool, cfg: &ModelConfig, what: impl fmt::Display) -> Result<(), HfExportError> {
    if ok {
        Ok(())
    } else {
        Err(HfExportError::Inexpressible(format!(
            "this {} model has {what}, which transformers' {} cannot express",
            cfg.arch.name(),
            names(cfg.arch).map_or("model", |n| n.1)
        )))
    }
}

/// One `rope_parameters` entry: the base and the frequency scaling.
fn rope_entry(theta: f32, scaling: RopeScaling) -> Value {
    match scaling {
        RopeScaling::None => json!({"rope_type": "default", "rope_theta": num(theta)}),
        RopeScaling::Linear { factor } => {
            json!({"rope_type": "linear", "rope_theta": num(theta), "factor": num(factor)})
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_context,
        } => json!({
            "rope_type": "llama3",
            "rope_theta": num(theta),
            "factor": num(factor),
            "low_freq_factor": num(low_freq_factor),
            "high_freq_factor": num(high_freq_factor),
            "original_max_position_embeddings": original_context,
        }),
    }
}

/// Gemma's `query_pre_attn_scalar` s for the attention scale 1/√s: the integer when one gives
/// exactly `query_scale` (as [`super::config::parse`] computes it), else the real number.
fn query_pre_attn_scalar(query_scale: f32) -> Value {
    let s = 1.0 / (query_scale as f64).powi(2);
    let n = s.round();
    if n >= 1.0 && (1.0 / n.sqrt()) as f32 == query_scale {
        json!(n as u64)
    } else {
        json!(s)
    }
}

/// The `config.json` of `cfg` for transformers (5.x spelling: `rope_parameters`, `dtype`), with
/// `bos_token_id`, `eos_token_id` and `pad_token_id` taken from `original` (the imported model's
/// `config.json`) when given, else null. An error names what the family's transformers model
/// cannot express (e.g. a Llama with q/k norms).
pub fn config_json(
    cfg: &ModelConfig,
    original: Option<&Value>,
    dtype: HfDtype,
) -> Result<Value, HfExportError> {
    let (model_type, class) = names(cfg.arch).ok_or_else(|| {
        HfExportError::Inexpressible("GPT-2 checkpoints export through the GPT-2 path".into())
    })?;
    let gemma = cfg.arch == Arch::Gemma3;
    let rope = cfg
        .rope
        .ok_or_else(|| HfExportError::Inexpressible("a model without rotary positions".into()))?;
    need(cfg.norm == Norm::RmsNorm, cfg, "LayerNorm")?;
    let mlp = if gemma { Mlp::GeGlu } else { Mlp::SwiGlu };
    need(cfg.mlp == mlp, cfg, format!("the MLP {:?}", cfg.mlp))?;
    let qk_norm = matches!(cfg.arch, Arch::Qwen3 | Arch::Gemma3);
    need(
        cfg.qk_norm == qk_norm,
        cfg,
        if cfg.qk_norm {
            "query/key norms"
        } else {
            "no query/key norms"
        },
    )?;
    need(
        cfg.qkv_bias == (cfg.arch == Arch::Qwen2),
        cfg,
        if cfg.qkv_bias {
            "query/key/value biases"
        } else {
            "no query/key/value biases"
        },
    )?;
    need(cfg.post_norms == gemma, cfg, "post-attention/MLP norms")?;
    let embed_scale = if gemma { (cfg.dim as f32).sqrt() } else { 1.0 };
    need(
        cfg.embed_scale == embed_scale,
        cfg,
        format!("an embedding scale of {}", cfg.embed_scale),
    )?;
    if !gemma {
        need(
            cfg.query_scale == (1.0 / (cfg.head_dim as f64).sqrt()) as f32,
            cfg,
            format!(
                "an attention scale of {} (not 1/√head_dim)",
                cfg.query_scale
            ),
        )?;
    }
    need(cfg.sliding.is_some() == gemma, cfg, "sliding-window layers")?;
    let token = |k: &str| {
        original
            .and_then(|o| o.get(k).or_else(|| o.get("text_config")?.get(k)))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let mut c = json!({
        "architectures": [class],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.context_length,
        "rms_norm_eps": num(cfg.norm_eps),
        "tie_word_embeddings": cfg.tied_head,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": true,
        "dtype": dtype.torch(),
        "bos_token_id": token("bos_token_id"),
        "eos_token_id": token("eos_token_id"),
        "pad_token_id": token("pad_token_id"),
    });
    let full = vec![json!("full_attention"); cfg.n_layers];
    let extra = match cfg.arch {
        Arch::Llama => json!({
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "pretraining_tp": 1,
            "rope_parameters": rope_entry(rope.theta, rope.scaling),
        }),
        Arch::Qwen2 | Arch::Qwen3 => json!({
            "hidden_act": "silu",
            "attention_bias": cfg.qkv_bias,
            "use_sliding_window": false,
            "sliding_window": null,
            "max_window_layers": cfg.n_layers,
            "layer_types": full,
            "rope_parameters": rope_entry(rope.theta, rope.scaling),
        }),
        Arch::Gemma3 => {
            let w = cfg.sliding.unwrap_or(emberlm_formats::config::Sliding {
                window: 1,
                every: 1,
            });
            let types: Vec<&str> = (0..cfg.n_layers)
                .map(|l| {
                    if cfg.is_local(l) {
                        "sliding_attention"
                    } else {
                        "full_attention"
                    }
                })
                .collect();
            json!({
                "hidden_activation": "gelu_pytorch_tanh",
                "attention_bias": false,
                "query_pre_attn_scalar": query_pre_attn_scalar(cfg.query_scale),
                "sliding_window": w.window,
                "layer_types": types,
                "final_logit_softcapping": null,
                "attn_logit_softcapping": null,
                "use_bidirectional_attention": false,
                "rope_parameters": {
                    "full_attention": rope_entry(rope.theta, rope.scaling),
                    "sliding_attention": rope_entry(rope.local_theta, RopeScaling::None),
                },
            })
        }
        Arch::Gpt2 => Value::Null,
    };
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
        // Only sliding-window layers use the local base; a model without them reads it back
        // from here when it differs (transformers keeps the key and does not use it).
        if !gemma && rope.local_theta != rope.theta {
            c.insert("rope_local_base_freq".into(), num(rope.local_theta));
        }
    }
    Ok(c)
}

/// The w that Hugging Face stores for a Gemma norm scale that ember holds as `x` = 1 + w: x − 1
/// in f32. For every x that import gives (x = f32(w + 1) of an f32 w) the subtraction is exact,
/// so f32(w' + 1) is x again: import → export → import is bit-identical, and transformers'
/// `1.0 + w` in f32 is the very scale the trainer used. (A trained scale that no f32 w reaches,
/// e.g. 0.1, gets the nearest w.)
pub fn gemma_w(x: f32) -> f32 {
    x - 1.0
}

/// Writes `out_dir` (created) from a family checkpoint's configuration `cfg` and its canonical
/// f32 `model.safetensors` (`weights`, read one tensor at a time), with the checkpoint's `hf/`
/// files `hf` (its `config.json` supplies the token ids; the others are copied). Refuses an
/// `out_dir` holding a `model.safetensors.index.json`.
pub fn export(
    cfg: &ModelConfig,
    weights: &Path,
    hf: Option<&HfFiles>,
    dtype: HfDtype,
    out_dir: &Path,
) -> Result<HfExported, HfExportError> {
    export_chunked(cfg, weights, hf, dtype, out_dir, CHUNK_VALUES)
}

/// [`export`] reading at most `chunk_values` values at a time (whole rows, one at least).
fn export_chunked(
    cfg: &ModelConfig,
    weights: &Path,
    hf: Option<&HfFiles>,
    dtype: HfDtype,
    out_dir: &Path,
    chunk_values: usize,
) -> Result<HfExported, HfExportError> {
    let original = match hf.and_then(|h| h.get("config.json")) {
        Some(b) => Some(
            serde_json::from_slice::<Value>(b).map_err(|e| HfExportError::Io {
                path: weights.with_file_name("hf/config.json"),
                message: e.to_string(),
            })?,
        ),
        None => None,
    };
    let config = config_json(cfg, original.as_ref(), dtype)?;
    let file = SafetensorsFile::open(weights).map_err(HfExportError::Read)?;
    let prefix = cfg.arch.hf_base_prefix();
    let mut planned = Vec::new();
    for t in arch::tensors(cfg, None) {
        let hf_name = t
            .desc
            .hf_name(cfg.arch, t.layer.unwrap_or(0), prefix)
            .filter(|_| t.desc.hf.is_some_and(|h| !h.transposed))
            .ok_or_else(|| {
                HfExportError::Inexpressible(format!(
                    "tensor {} has no Hugging Face name in the {} layout",
                    t.name,
                    cfg.arch.name()
                ))
            })?;
        match file.info(&t.name) {
            None => {
                return Err(HfExportError::Read(ImportError::MissingTensor {
                    name: t.name.clone(),
                    hint: None,
                }));
            }
            Some(info) if info.shape != t.shape => {
                return Err(HfExportError::Read(ImportError::Shape {
                    name: t.name.clone(),
                    expected: t.shape.clone(),
                    found: info.shape.clone(),
                    hint: crate::import::Hint::Dimensions,
                }));
            }
            Some(_) => {}
        }
        planned.push((t, hf_name));
    }
    std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let index = out_dir.join("model.safetensors.index.json");
    if index.exists() {
        return Err(HfExportError::Stale(index));
    }
    let model_file = out_dir.join("model.safetensors");
    let shapes: Vec<(String, Vec<usize>)> = planned
        .iter()
        .map(|(t, n)| (n.clone(), t.shape.clone()))
        .collect();
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    let mut failure = None;
    let written = write_safetensors(&model_file, &metadata, &shapes, dtype.st(), |i, w| {
        let (t, _) = &planned[i];
        let fail = |e: HfExportError, failure: &mut Option<HfExportError>| {
            let msg = e.to_string();
            *failure = Some(e);
            io::Error::other(msg)
        };
        // Whole rows at a time, at most CHUNK_VALUES values (one row at least): memory does not
        // grow with the model (the embedding of a 150k vocabulary is 600 MB of f32).
        let n = t.len();
        let cols = t.shape.last().copied().unwrap_or(1).max(1);
        let step = (chunk_values / cols).max(1) * cols;
        let mut x = Vec::with_capacity(step.min(n));
        for start in (0..n).step_by(step) {
            x.resize(step.min(n - start), 0.0);
            file.read_f32_range(&t.name, start, &mut x)
                .map_err(|e| fail(HfExportError::Read(e), &mut failure))?;
            if t.desc.hf.is_some_and(|h| h.plus_one) {
                x.iter_mut().for_each(|v| *v = gemma_w(*v));
            }
            encode(&t.name, start, &x, dtype, w).map_err(|e| match e {
                Encode::Io(e) => e,
                Encode::Value(e) => fail(e, &mut failure),
            })?;
        }
        Ok(())
    });
    let bytes = match (written, failure) {
        (Ok(b), _) => b,
        (Err(_), Some(e)) => return Err(e),
        (Err(e), None) => return Err(io_err(&model_file)(e)),
    };
    let mut copied = Vec::new();
    for (name, data) in hf.map_or(&[][..], |h| h.files.as_slice()) {
        // Only the names import keeps, never a path: `hf/` is read from a checkpoint on disk.
        if name == "config.json" || !HF_FILES.contains(&name.as_str()) {
            continue;
        }
        let path = out_dir.join(name);
        write_atomically(&path, |w| w.write_all(data)).map_err(io_err(&path))?;
        copied.push(name.clone());
    }
    let config_file = out_dir.join("config.json");
    let text = serde_json::to_string_pretty(&config).map_err(|e| HfExportError::Io {
        path: config_file.clone(),
        message: e.to_string(),
    })? + "\n";
    write_atomically(&config_file, |w| w.write_all(text.as_bytes()))
        .map_err(io_err(&config_file))?;
    Ok(HfExported {
        model_file,
        config_file,
        tensors: planned.len(),
        bytes,
        copied,
    })
}

enum Encode {
    Io(io::Error),
    Value(HfExportError),
}

/// Writes `x` (values `offset..` of tensor `name`) as little-endian `dtype`; a non-finite value,
/// or one beyond f16's range, is an error naming the tensor and the index.
fn encode(
    name: &str,
    offset: usize,
    x: &[f32],
    dtype: HfDtype,
    w: &mut dyn Write,
) -> Result<(), Encode> {
    let bad = |index: usize, value: f32| {
        Encode::Value(HfExportError::Value {
            tensor: name.to_string(),
            index: offset + index,
            value,
            dtype: dtype.name(),
        })
    };
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(bad(i, x[i]));
    }
    match dtype {
        HfDtype::F32 => write_f32s(w, x).map_err(Encode::Io),
        HfDtype::Bf16 => {
            let b: Vec<u8> = x
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect();
            w.write_all(&b).map_err(Encode::Io)
        }
        HfDtype::F16 => {
            let mut b = Vec::with_capacity(x.len() * 2);
            for (i, &v) in x.iter().enumerate() {
                let h = half::f16::from_f32(v);
                if h.is_infinite() {
                    return Err(bad(i, v));
                }
                b.extend_from_slice(&h.to_le_bytes());
            }
            w.write_all(&b).map_err(Encode::Io)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// config.json → [`config_json`] → [`super::super::config::parse`] gives back every preset
    /// and every fixture's configuration exactly.
    #[test]
    fn config_json_reads_back_as_the_same_configuration() {
        let mut configs: Vec<ModelConfig> = [
            "smollm2-135m",
            "smollm2-360m",
            "qwen2.5-0.5b",
            "qwen3-0.6b",
            "llama3.2-1b",
            "gemma3-270m",
        ]
        .iter()
        .map(|n| ModelConfig::preset(n).unwrap())
        .collect();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/families");
        for f in ["llama", "qwen2", "qwen3", "gemma3"] {
            let text = std::fs::read_to_string(fixtures.join(f).join("config.json")).unwrap();
            let j: Value = serde_json::from_str(&text).unwrap();
            configs.push(super::super::config::parse(&j).unwrap());
        }
        for cfg in configs {
            for dtype in [HfDtype::F32, HfDtype::Bf16] {
                let j = config_json(&cfg, None, dtype).unwrap();
                assert_eq!(super::super::config::parse(&j).unwrap(), cfg, "{j:#}");
                assert_eq!(j["dtype"], dtype.torch());
            }
        }
        // Token ids come from the imported model's config.json.
        let cfg = ModelConfig::preset("qwen3-0.6b").unwrap();
        let orig = json!({"bos_token_id": 151643, "eos_token_id": [151645, 151643]});
        let j = config_json(&cfg, Some(&orig), HfDtype::F32).unwrap();
        assert_eq!(j["eos_token_id"], json!([151645, 151643]));
        assert_eq!(j["bos_token_id"], 151643);
        assert!(j["pad_token_id"].is_null());
        // What transformers' class cannot hold is refused, naming it.
        let odd = ModelConfig {
            qk_norm: true,
            ..ModelConfig::preset("smollm2-135m").unwrap()
        };
        let e = config_json(&odd, None, HfDtype::F32)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("query/key norms") && e.contains("LlamaForCausalLM"),
            "{e}"
        );
    }

    /// Reading in chunks of a few rows writes the same files as reading whole tensors, in every
    /// dtype (a tiny Gemma 3: norms with 1 + w, rows of several lengths).
    #[test]
    fn chunks_write_what_whole_tensors_write() {
        use crate::safetensors_io::write_safetensors_f32;
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/families");
        let text = std::fs::read_to_string(fixtures.join("gemma3/config.json")).unwrap();
        let cfg = super::super::config::parse(&serde_json::from_str(&text).unwrap()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let weights = tmp.path().join("model.safetensors");
        let tensors = arch::tensors(&cfg, None);
        let shapes: Vec<(String, Vec<usize>)> = tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        write_safetensors_f32(&weights, &BTreeMap::new(), &shapes, |i, w| {
            let v: Vec<f32> = (0..tensors[i].len())
                .map(|k| ((k * 37 + i * 11) % 101) as f32 * 0.021 - 1.0)
                .collect();
            write_f32s(w, &v)
        })
        .unwrap();
        for dtype in [HfDtype::F32, HfDtype::Bf16, HfDtype::F16] {
            let whole = tmp.path().join(format!("whole-{}", dtype.name()));
            export(&cfg, &weights, None, dtype, &whole).unwrap();
            for chunk in [1, 48 * 3, 48 * 5 + 7] {
                let part = tmp.path().join(format!("part-{}-{chunk}", dtype.name()));
                export_chunked(&cfg, &weights, None, dtype, &part, chunk).unwrap();
                for f in ["model.safetensors", "config.json"] {
                    assert_eq!(
                        std::fs::read(part.join(f)).unwrap(),
                        std::fs::read(whole.join(f)).unwrap(),
                        "{dtype:?} chunk {chunk}: {f}"
                    );
                }
            }
        }
        // A value f16 cannot hold is named with its index in the whole tensor, chunked or not.
        let big = tmp.path().join("big.safetensors");
        write_safetensors_f32(&big, &BTreeMap::new(), &shapes, |i, w| {
            let mut v = vec![0.5f32; tensors[i].len()];
            if i == 0 {
                v[48 * 7 + 3] = 1e6;
            }
            write_f32s(w, &v)
        })
        .unwrap();
        for chunk in [48, CHUNK_VALUES] {
            let out = tmp.path().join(format!("f16-{chunk}"));
            let e = export_chunked(&cfg, &big, None, HfDtype::F16, &out, chunk).unwrap_err();
            assert!(
                matches!(&e, HfExportError::Value { index, .. } if *index == 48 * 7 + 3),
                "{e}"
            );
        }
    }

    /// import's 1 + w comes back bit for bit through [`gemma_w`], for w of every magnitude
    /// (random bit patterns) and across the range of real scales.
    #[test]
    fn gemma_scales_survive_the_round_trip() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut checked = 0;
        for i in 0..400_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let w = if i % 2 == 0 {
                f32::from_bits((seed >> 32) as u32)
            } else {
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
            };
            let x = w + 1.0;
            if !x.is_finite() {
                continue;
            }
            let back = gemma_w(x);
            assert_eq!(
                (back + 1.0).to_bits(),
                x.to_bits(),
                "w {w} x {x} back {back}"
            );
            checked += 1;
        }
        assert!(checked > 390_000, "{checked}");
        assert_eq!(gemma_w(1.5), 0.5);
    }
}
