//! Import GPT-2 weights from safetensors: Hugging Face's layout (`wte.weight`, `h.N.attn.c_attn.weight`,
//! Conv1D weights stored [in, out], optionally prefixed `transformer.`) and the book's GPTModel
//! layout (`tok_emb.weight`, `trf_blocks.N.att.W_query.weight`, …). The layout is detected from the
//! names. Tensors become the canonical names and layouts of [`GptConfig::tensor_shapes`].

use emberlm_formats::config::GptConfig;
use emberlm_formats::ember::{FormatError, MappedFile};
use emberlm_formats::tokenizer::Tokenizer;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Which naming scheme a file uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Hugging Face transformers' GPT2LMHeadModel (`save_pretrained`).
    HuggingFace,
    /// The book's GPTModel `state_dict`.
    Book,
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
}

/// Why an import failed.
#[derive(Clone, Debug, PartialEq)]
pub enum ImportError {
    /// The file could not be opened or mapped.
    Io(FormatError),
    /// The safetensors header is malformed.
    Safetensors(String),
    /// The names match neither layout.
    UnknownLayout {
        /// A few of the names found.
        sample: Vec<String>,
    },
    /// config.json is missing a field or malformed.
    Config(String),
    /// A tensor is missing.
    MissingTensor {
        /// Its name in the file's layout.
        name: String,
    },
    /// A tensor has the wrong shape; `hint` says what is probably wrong.
    Shape {
        /// Its name in the file's layout.
        name: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
        /// The likely cause.
        hint: String,
    },
    /// A tensor's dtype is not F32, F16 or BF16.
    Dtype {
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: String,
    },
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportError::Io(e) => write!(f, "{e}"),
            ImportError::Safetensors(e) => write!(f, "not a valid safetensors file: {e}"),
            ImportError::UnknownLayout { sample } => write!(
                f,
                "the tensor names match neither Hugging Face's GPT-2 (wte.weight, h.0.attn.c_attn.weight, …) nor the book's GPTModel (tok_emb.weight, trf_blocks.0.att.W_query.weight, …); found {sample:?}"
            ),
            ImportError::Config(e) => write!(f, "config.json: {e}"),
            ImportError::MissingTensor { name } => write!(f, "tensor {name:?} is missing"),
            ImportError::Shape {
                name,
                expected,
                found,
                hint,
            } => write!(
                f,
                "tensor {name:?} has shape {found:?}, expected {expected:?}{}{hint}",
                if hint.is_empty() { "" } else { ": " }
            ),
            ImportError::Dtype { name, dtype } => {
                write!(
                    f,
                    "tensor {name:?} is {dtype}; only F32, F16 and BF16 can be imported"
                )
            }
        }
    }
}

impl std::error::Error for ImportError {}

/// Reads `path`: a `.safetensors` file or a directory holding `model.safetensors` (and, for
/// Hugging Face, `config.json`, optionally `vocab.json` + `merges.txt`). `heads` overrides the
/// number of attention heads for book-layout files, which do not record it (by default it is
/// inferred from the embedding size of the four GPT-2 sizes).
pub fn import_safetensors(path: &Path, heads: Option<usize>) -> Result<Imported, ImportError> {
    let (dir, file) = if path.is_dir() {
        (path.to_path_buf(), path.join("model.safetensors"))
    } else {
        (
            path.parent().map(Path::to_path_buf).unwrap_or_default(),
            path.to_path_buf(),
        )
    };
    let map = MappedFile::open(&file).map_err(ImportError::Io)?;
    let st = SafeTensors::deserialize(map.bytes())
        .map_err(|e| ImportError::Safetensors(e.to_string()))?;
    let names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    let has = |n: &str| names.iter().any(|x| x == n);
    let prefix = if has("transformer.wte.weight") {
        "transformer."
    } else {
        ""
    };
    let layout = if has(&format!("{prefix}wte.weight")) {
        Layout::HuggingFace
    } else if has("tok_emb.weight") {
        Layout::Book
    } else {
        let mut sample = names.clone();
        sample.truncate(6);
        return Err(ImportError::UnknownLayout { sample });
    };
    let get = |name: &str| -> Result<(Vec<usize>, Vec<f32>), ImportError> {
        let t = st
            .tensor(name)
            .map_err(|_| ImportError::MissingTensor { name: name.into() })?;
        let raw = t.data();
        let values = match t.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(ImportError::Dtype {
                    name: name.into(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        Ok((t.shape().to_vec(), values))
    };
    let mut out = BTreeMap::new();
    let config = match layout {
        Layout::HuggingFace => {
            let cfg = hf_config(&dir.join("config.json"), &st, prefix)?;
            let p = |s: &str| format!("{prefix}{s}");
            let (v, t, c) = (cfg.vocab_size, cfg.context_length, cfg.dim);
            put(
                &mut out,
                "tok_emb.weight",
                expect(&p("wte.weight"), get(&p("wte.weight"))?, &[v, c], &cfg)?,
            );
            put(
                &mut out,
                "pos_emb.weight",
                expect(&p("wpe.weight"), get(&p("wpe.weight"))?, &[t, c], &cfg)?,
            );
            for i in 0..cfg.n_layers {
                let h = |s: &str| format!("{prefix}h.{i}.{s}");
                let b = |s: &str| format!("blocks.{i}.{s}");
                let vec1 = |name: &str, n: usize| expect(name, get(name)?, &[n], &cfg);
                // Conv1D stores [in, out]: transpose to [out, in].
                let conv = |name: &str, inp: usize, outp: usize| {
                    expect(name, get(name)?, &[inp, outp], &cfg).map(|w| transpose(&w, inp, outp))
                };
                put(&mut out, &b("norm1.scale"), vec1(&h("ln_1.weight"), c)?);
                put(&mut out, &b("norm1.shift"), vec1(&h("ln_1.bias"), c)?);
                put(
                    &mut out,
                    &b("att.qkv.weight"),
                    conv(&h("attn.c_attn.weight"), c, 3 * c)?,
                );
                put(
                    &mut out,
                    &b("att.qkv.bias"),
                    vec1(&h("attn.c_attn.bias"), 3 * c)?,
                );
                put(
                    &mut out,
                    &b("att.proj.weight"),
                    conv(&h("attn.c_proj.weight"), c, c)?,
                );
                put(
                    &mut out,
                    &b("att.proj.bias"),
                    vec1(&h("attn.c_proj.bias"), c)?,
                );
                put(&mut out, &b("norm2.scale"), vec1(&h("ln_2.weight"), c)?);
                put(&mut out, &b("norm2.shift"), vec1(&h("ln_2.bias"), c)?);
                put(
                    &mut out,
                    &b("ff.fc.weight"),
                    conv(&h("mlp.c_fc.weight"), c, 4 * c)?,
                );
                put(
                    &mut out,
                    &b("ff.fc.bias"),
                    vec1(&h("mlp.c_fc.bias"), 4 * c)?,
                );
                put(
                    &mut out,
                    &b("ff.proj.weight"),
                    conv(&h("mlp.c_proj.weight"), 4 * c, c)?,
                );
                put(
                    &mut out,
                    &b("ff.proj.bias"),
                    vec1(&h("mlp.c_proj.bias"), c)?,
                );
            }
            put(
                &mut out,
                "final_norm.scale",
                expect(&p("ln_f.weight"), get(&p("ln_f.weight"))?, &[c], &cfg)?,
            );
            put(
                &mut out,
                "final_norm.shift",
                expect(&p("ln_f.bias"), get(&p("ln_f.bias"))?, &[c], &cfg)?,
            );
            let mut cfg = cfg;
            if has("lm_head.weight") {
                let head = expect("lm_head.weight", get("lm_head.weight")?, &[v, c], &cfg)?;
                if head != out["tok_emb.weight"] {
                    cfg.tied_head = false;
                    put(&mut out, "out_head.weight", head);
                }
            }
            cfg
        }
        Layout::Book => {
            let (shape, _) = get("pos_emb.weight")?;
            let (tshape, _) = get("tok_emb.weight")?;
            let (t, c, v) = match (shape.as_slice(), tshape.as_slice()) {
                ([t, c], [v, c2]) if c == c2 => (*t, *c, *v),
                _ => {
                    return Err(ImportError::Shape {
                        name: "pos_emb.weight".into(),
                        expected: vec![0, tshape.get(1).copied().unwrap_or(0)],
                        found: shape,
                        hint: "tok_emb.weight and pos_emb.weight must both be [rows, emb_dim]"
                            .into(),
                    });
                }
            };
            let n_layers = (0..)
                .take_while(|i| has(&format!("trf_blocks.{i}.norm1.scale")))
                .count();
            let n_heads = match heads {
                Some(h) => h,
                None => match c {
                    768 => 12,
                    1024 => 16,
                    1280 => 20,
                    1600 => 25,
                    _ => {
                        return Err(ImportError::Config(format!(
                            "book-layout files do not record the number of heads and emb_dim {c} is not a GPT-2 size: pass --heads"
                        )));
                    }
                },
            };
            let cfg = GptConfig {
                vocab_size: v,
                context_length: t,
                dim: c,
                n_layers,
                n_heads,
                qkv_bias: has("trf_blocks.0.att.W_query.bias"),
                tied_head: !has("out_head.weight"),
            };
            cfg.validate()
                .map_err(|e| ImportError::Config(e.to_string()))?;
            put(&mut out, "tok_emb.weight", get("tok_emb.weight")?.1);
            put(&mut out, "pos_emb.weight", get("pos_emb.weight")?.1);
            for i in 0..n_layers {
                let s = |x: &str| format!("trf_blocks.{i}.{x}");
                let b = |x: &str| format!("blocks.{i}.{x}");
                let vec1 = |name: &str, n: usize| expect(name, get(name)?, &[n], &cfg);
                let lin =
                    |name: &str, o: usize, inp: usize| expect(name, get(name)?, &[o, inp], &cfg);
                put(&mut out, &b("norm1.scale"), vec1(&s("norm1.scale"), c)?);
                put(&mut out, &b("norm1.shift"), vec1(&s("norm1.shift"), c)?);
                let mut qkv = lin(&s("att.W_query.weight"), c, c)?;
                qkv.extend(lin(&s("att.W_key.weight"), c, c)?);
                qkv.extend(lin(&s("att.W_value.weight"), c, c)?);
                put(&mut out, &b("att.qkv.weight"), qkv);
                if cfg.qkv_bias {
                    let mut bias = vec1(&s("att.W_query.bias"), c)?;
                    bias.extend(vec1(&s("att.W_key.bias"), c)?);
                    bias.extend(vec1(&s("att.W_value.bias"), c)?);
                    put(&mut out, &b("att.qkv.bias"), bias);
                }
                put(
                    &mut out,
                    &b("att.proj.weight"),
                    lin(&s("att.out_proj.weight"), c, c)?,
                );
                put(
                    &mut out,
                    &b("att.proj.bias"),
                    vec1(&s("att.out_proj.bias"), c)?,
                );
                put(&mut out, &b("norm2.scale"), vec1(&s("norm2.scale"), c)?);
                put(&mut out, &b("norm2.shift"), vec1(&s("norm2.shift"), c)?);
                put(
                    &mut out,
                    &b("ff.fc.weight"),
                    lin(&s("ff.layers.0.weight"), 4 * c, c)?,
                );
                put(
                    &mut out,
                    &b("ff.fc.bias"),
                    vec1(&s("ff.layers.0.bias"), 4 * c)?,
                );
                put(
                    &mut out,
                    &b("ff.proj.weight"),
                    lin(&s("ff.layers.2.weight"), c, 4 * c)?,
                );
                put(
                    &mut out,
                    &b("ff.proj.bias"),
                    vec1(&s("ff.layers.2.bias"), c)?,
                );
            }
            put(
                &mut out,
                "final_norm.scale",
                vec1_book(&get, "final_norm.scale", c, &cfg)?,
            );
            put(
                &mut out,
                "final_norm.shift",
                vec1_book(&get, "final_norm.shift", c, &cfg)?,
            );
            if !cfg.tied_head {
                put(
                    &mut out,
                    "out_head.weight",
                    expect("out_head.weight", get("out_head.weight")?, &[v, c], &cfg)?,
                );
            }
            cfg
        }
    };
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
    Ok(Imported {
        config,
        layout,
        tensors: out,
        tokenizer,
        weights_path: file,
    })
}

fn vec1_book(
    get: &dyn Fn(&str) -> Result<(Vec<usize>, Vec<f32>), ImportError>,
    name: &str,
    n: usize,
    cfg: &GptConfig,
) -> Result<Vec<f32>, ImportError> {
    expect(name, get(name)?, &[n], cfg)
}

fn put(out: &mut BTreeMap<String, Vec<f32>>, name: &str, v: Vec<f32>) {
    out.insert(name.to_string(), v);
}

/// Checks a tensor's shape and explains a mismatch.
fn expect(
    name: &str,
    (found, values): (Vec<usize>, Vec<f32>),
    expected: &[usize],
    cfg: &GptConfig,
) -> Result<Vec<f32>, ImportError> {
    if found == expected {
        return Ok(values);
    }
    let hint = if found.len() == 2
        && expected.len() == 2
        && found[0] == expected[1]
        && found[1] == expected[0]
    {
        "the weight looks transposed: Hugging Face's Conv1D stores [in, out], the book's nn.Linear stores [out, in]".to_string()
    } else if name.contains("wpe") || name.contains("pos_emb") {
        format!(
            "the context length differs: the configuration says {}, the file has {} positions (OpenAI's GPT-2 uses 1024)",
            cfg.context_length,
            found.first().copied().unwrap_or(0)
        )
    } else if name.contains("wte") || name.contains("tok_emb") || name.contains("head") {
        "the vocabulary size or embedding dim differs from the configuration".to_string()
    } else if name.contains("bias") {
        "a bias of another size: check qkv_bias (OpenAI's weights have q/k/v biases)".to_string()
    } else {
        "the embedding dim or the number of layers differs from the configuration".to_string()
    };
    Err(ImportError::Shape {
        name: name.into(),
        expected: expected.to_vec(),
        found,
        hint,
    })
}

fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

/// The configuration from Hugging Face's config.json (n_embd, n_layer, n_head, n_positions,
/// vocab_size), cross-checked against the weights.
fn hf_config(path: &Path, st: &SafeTensors<'_>, prefix: &str) -> Result<GptConfig, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ImportError::Config(format!(
            "{}: {e} (Hugging Face checkpoints need their config.json beside model.safetensors)",
            path.display()
        ))
    })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ImportError::Config(format!("{}: {e}", path.display())))?;
    let field = |k: &str| -> Result<usize, ImportError> {
        json.get(k)
            .and_then(serde_json::Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| {
                ImportError::Config(format!("field {k:?} is missing or not a positive integer"))
            })
    };
    if let Some(act) = json.get("activation_function").and_then(|v| v.as_str()) {
        if act != "gelu_new" && act != "gelu_pytorch_tanh" {
            return Err(ImportError::Config(format!(
                "activation_function {act:?} is not GPT-2's tanh GELU (gelu_new)"
            )));
        }
    }
    let n_layers = field("n_layer")?;
    let layers_in_file = (0..)
        .take_while(|i| st.tensor(&format!("{prefix}h.{i}.ln_1.weight")).is_ok())
        .count();
    if layers_in_file != n_layers {
        return Err(ImportError::Config(format!(
            "n_layer is {n_layers} but the weights hold {layers_in_file} blocks"
        )));
    }
    let cfg = GptConfig {
        vocab_size: field("vocab_size")?,
        context_length: field("n_positions")?,
        dim: field("n_embd")?,
        n_layers,
        n_heads: field("n_head")?,
        qkv_bias: true,
        tied_head: true,
    };
    cfg.validate()
        .map_err(|e| ImportError::Config(e.to_string()))?;
    Ok(cfg)
}
