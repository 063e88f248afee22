//! Hugging Face `config.json` → [`ModelConfig`] for Llama (3.x, SmolLM2, TinyLlama), Qwen2/2.5,
//! Qwen3 and Gemma 3 text models.
//!
//! Both spellings of the rotary settings are read: transformers 5's `rope_parameters` (for Gemma 3
//! one entry per attention type) and the older `rope_theta` + `rope_scaling` (+ Gemma's
//! `rope_local_base_freq`). Anything emberlm does not implement — an unknown `model_type`,
//! `rope_type` or activation, biases where the runtime has none, mixture-of-experts keys, logit
//! soft-capping, sliding windows outside Gemma 3 — is refused with the field named, never
//! silently ignored.

use emberlm_formats::arch::Arch;
use emberlm_formats::config::{Mlp, ModelConfig, Norm, Rope, RopeScaling, Sliding};
use serde_json::Value;
use std::fmt;

/// What is wrong with a `config.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The field (dotted path inside the JSON).
    pub field: String,
    /// What is wrong, and what would be accepted.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config.json: {}: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

/// The model types this converter reads, as `--help` and errors list them.
pub const MODEL_TYPES: &str = "llama, qwen2, qwen3, gemma3_text, gemma3";

/// A typed view of the JSON object with field-naming errors.
struct Obj<'a> {
    v: &'a serde_json::Map<String, Value>,
    at: String,
}

impl<'a> Obj<'a> {
    fn new(v: &'a Value, at: &str) -> Result<Obj<'a>, ConfigError> {
        let v = v
            .as_object()
            .ok_or_else(|| err(at, "expected a JSON object"))?;
        Ok(Obj { v, at: at.into() })
    }

    fn path(&self, key: &str) -> String {
        if self.at.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.at)
        }
    }

    /// The value, treating JSON null as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.v.get(key).filter(|v| !v.is_null())
    }

    fn count(&self, key: &str) -> Result<Option<usize>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 && n <= u32::MAX as u64 => Ok(Some(n as usize)),
                _ => Err(err(
                    self.path(key),
                    format!("{v} is not a positive integer"),
                )),
            },
        }
    }

    fn need_count(&self, key: &str) -> Result<usize, ConfigError> {
        self.count(key)?
            .ok_or_else(|| err(self.path(key), "missing (a positive integer is required)"))
    }

    fn float(&self, key: &str) -> Result<Option<f32>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 && x < f32::MAX as f64 => Ok(Some(x as f32)),
                _ => Err(err(self.path(key), format!("{v} is not a positive number"))),
            },
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| err(self.path(key), format!("{v} is not true or false"))),
        }
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| err(self.path(key), format!("{v} is not a string"))),
        }
    }

    /// Refuses a key whose presence (not null, not false, not 0) means a feature emberlm lacks.
    fn refuse(&self, key: &str, what: &str) -> Result<(), ConfigError> {
        match self.get(key) {
            None | Some(Value::Bool(false)) => Ok(()),
            Some(Value::Number(n)) if n.as_f64() == Some(0.0) => Ok(()),
            Some(v) => Err(err(
                self.path(key),
                format!("{v}: {what} is not supported by emberlm"),
            )),
        }
    }
}

/// Parses a `config.json` (already read as JSON). Returns the configuration and, for a
/// multimodal `gemma3` file, notes that only the text model is converted.
pub fn parse(json: &Value) -> Result<ModelConfig, ConfigError> {
    let top = Obj::new(json, "")?;
    let model_type = top.str("model_type")?.ok_or_else(|| {
        err(
            "model_type",
            format!("missing (expected one of {MODEL_TYPES})"),
        )
    })?;
    // Gemma 3's multimodal files nest the text model's settings.
    let same = || Obj::new(json, "");
    let (c, arch) = match model_type {
        "llama" => (same()?, Arch::Llama),
        "qwen2" => (same()?, Arch::Qwen2),
        "qwen3" => (same()?, Arch::Qwen3),
        "gemma3_text" => (same()?, Arch::Gemma3),
        "gemma3" => {
            let text = top
                .get("text_config")
                .ok_or_else(|| err("text_config", "missing in a gemma3 (multimodal) config"))?;
            (Obj::new(text, "text_config")?, Arch::Gemma3)
        }
        "gpt2" => {
            return Err(err(
                "model_type",
                "\"gpt2\": GPT-2 directories are read by `ember-train import --from DIR`",
            ));
        }
        other => {
            return Err(err(
                "model_type",
                format!("{other:?} is not supported (emberlm reads {MODEL_TYPES})"),
            ));
        }
    };
    for key in [
        "num_experts",
        "num_local_experts",
        "n_routed_experts",
        "moe_intermediate_size",
    ] {
        c.refuse(key, "a mixture-of-experts model")?;
    }
    c.refuse("final_logit_softcapping", "logit soft-capping")?;
    c.refuse("attn_logit_softcapping", "attention soft-capping")?;
    c.refuse("mlp_bias", "an MLP with biases")?;
    if c.get("pretraining_tp")
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 1)
    {
        return Err(err(
            c.path("pretraining_tp"),
            "tensor-parallel slicing is not supported",
        ));
    }
    let gemma = arch == Arch::Gemma3;
    let dim = c.need_count("hidden_size")?;
    let n_heads = c.need_count("num_attention_heads")?;
    let n_kv_heads = c.count("num_key_value_heads")?.unwrap_or(n_heads);
    let head_dim = match c.count("head_dim")? {
        Some(d) => d,
        None if dim % n_heads == 0 => dim / n_heads,
        None => {
            return Err(err(
                c.path("head_dim"),
                "missing, and hidden_size is not a multiple of num_attention_heads",
            ));
        }
    };
    let (act_key, want_act) = if gemma {
        ("hidden_activation", "gelu_pytorch_tanh")
    } else {
        ("hidden_act", "silu")
    };
    let act = c
        .str(act_key)?
        .or(if gemma { c.str("hidden_act")? } else { None });
    match act {
        None => {}
        Some(a) if a == want_act || (gemma && a == "gelu_new") => {}
        Some(a) => {
            return Err(err(
                c.path(act_key),
                format!("{a:?} is not supported for {model_type} (expected {want_act:?})"),
            ));
        }
    }
    let attention_bias = c.bool("attention_bias")?.unwrap_or(false);
    let qkv_bias = match arch {
        // Qwen2 always has query/key/value biases (and no output bias).
        Arch::Qwen2 => true,
        _ if attention_bias => {
            return Err(err(
                c.path("attention_bias"),
                "true: attention output biases are not supported by emberlm",
            ));
        }
        _ => false,
    };
    if !gemma {
        c.refuse(
            "use_sliding_window",
            "sliding-window attention outside Gemma 3",
        )?;
    }
    let rope = rope(&c, gemma)?;
    let sliding = if gemma { Some(sliding(&c)?) } else { None };
    let context_length = c.need_count("max_position_embeddings")?;
    let tied_default = gemma;
    let tied_head = match top.bool("tie_word_embeddings")? {
        Some(t) => t,
        None => c.bool("tie_word_embeddings")?.unwrap_or(tied_default),
    };
    let query_scale = match (gemma, c.float("query_pre_attn_scalar")?) {
        (true, Some(s)) => 1.0 / (s as f64).sqrt(),
        _ => 1.0 / (head_dim as f64).sqrt(),
    } as f32;
    let cfg = ModelConfig {
        arch,
        vocab_size: c.need_count("vocab_size")?,
        context_length,
        dim,
        n_layers: c.need_count("num_hidden_layers")?,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_dim: c.need_count("intermediate_size")?,
        norm: Norm::RmsNorm,
        norm_eps: c.float("rms_norm_eps")?.unwrap_or(1e-6),
        mlp: if gemma { Mlp::GeGlu } else { Mlp::SwiGlu },
        rope: Some(rope),
        qkv_bias,
        qk_norm: matches!(arch, Arch::Qwen3 | Arch::Gemma3),
        post_norms: gemma,
        tied_head,
        embed_scale: if gemma { (dim as f32).sqrt() } else { 1.0 },
        query_scale,
        sliding,
    };
    cfg.validate()
        .map_err(|e| err("config", format!("inconsistent configuration: {e}")))?;
    Ok(cfg)
}

/// One rotary setting: a base and a rescaling, from a `rope_parameters` entry or the old keys.
fn rope_entry(o: &Obj<'_>, theta_key: &str) -> Result<(Option<f32>, RopeScaling), ConfigError> {
    let theta = o.float(theta_key)?;
    let kind = match o.str("rope_type")? {
        Some(k) => Some(k),
        None => o.str("type")?,
    };
    let factor = |o: &Obj<'_>| {
        o.float("factor")?
            .ok_or_else(|| err(o.path("factor"), "missing for this rope_type"))
    };
    let scaling = match kind.unwrap_or("default") {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor(o)? },
        "llama3" => RopeScaling::Llama3 {
            factor: factor(o)?,
            low_freq_factor: o.float("low_freq_factor")?.unwrap_or(1.0),
            high_freq_factor: o.float("high_freq_factor")?.unwrap_or(4.0),
            original_context: o.need_count("original_max_position_embeddings")?,
        },
        other => {
            return Err(err(
                o.path("rope_type"),
                format!("{other:?} is not supported (emberlm reads default, linear and llama3)"),
            ));
        }
    };
    Ok((theta, scaling))
}

fn rope(c: &Obj<'_>, gemma: bool) -> Result<Rope, ConfigError> {
    let default_theta = if gemma { 1e6 } else { 1e4 };
    if let Some(p) = c.get("rope_parameters") {
        let p = Obj::new(p, &c.path("rope_parameters"))?;
        if gemma && p.get("full_attention").is_some() {
            let full = Obj::new(
                p.get("full_attention").unwrap_or(&Value::Null),
                &p.path("full_attention"),
            )?;
            let (theta, scaling) = rope_entry(&full, "rope_theta")?;
            let local = match p.get("sliding_attention") {
                Some(v) => {
                    let o = Obj::new(v, &p.path("sliding_attention"))?;
                    let (t, s) = rope_entry(&o, "rope_theta")?;
                    if s != RopeScaling::None {
                        return Err(err(o.path("rope_type"), "sliding layers must not rescale"));
                    }
                    t
                }
                None => c.float("rope_local_base_freq")?,
            };
            return Ok(Rope {
                theta: theta.unwrap_or(default_theta),
                local_theta: local.unwrap_or(1e4),
                scaling,
            });
        }
        let (theta, scaling) = rope_entry(&p, "rope_theta")?;
        let theta = theta.or(c.float("rope_theta")?).unwrap_or(default_theta);
        let local = c
            .float("rope_local_base_freq")?
            .unwrap_or(if gemma { 1e4 } else { theta });
        return Ok(Rope {
            theta,
            local_theta: local,
            scaling,
        });
    }
    let theta = c.float("rope_theta")?.unwrap_or(default_theta);
    let scaling = match c.get("rope_scaling") {
        None => RopeScaling::None,
        Some(s) => rope_entry(&Obj::new(s, &c.path("rope_scaling"))?, "rope_theta")?.1,
    };
    let local = c
        .float("rope_local_base_freq")?
        .unwrap_or(if gemma { 1e4 } else { theta });
    Ok(Rope {
        theta,
        local_theta: local,
        scaling,
    })
}

/// Gemma 3's local/global pattern: `layer_types` when given (it must repeat "every N-th layer is
/// global", the only pattern the runtime implements), else `sliding_window_pattern` (default 6).
fn sliding(c: &Obj<'_>) -> Result<Sliding, ConfigError> {
    let window = c.need_count("sliding_window")?;
    let layers = c.need_count("num_hidden_layers")?;
    let every = match c.get("layer_types") {
        Some(Value::Array(types)) => {
            let global: Vec<bool> = types
                .iter()
                .enumerate()
                .map(|(i, t)| match t.as_str() {
                    Some("full_attention") => Ok(true),
                    Some("sliding_attention") => Ok(false),
                    _ => Err(err(
                        format!("{}[{i}]", c.path("layer_types")),
                        format!("{t} is not \"full_attention\" or \"sliding_attention\""),
                    )),
                })
                .collect::<Result<_, _>>()?;
            if global.len() != layers {
                return Err(err(
                    c.path("layer_types"),
                    format!("{} entries for {layers} layers", global.len()),
                ));
            }
            let every = global.iter().position(|&g| g).map_or(layers + 1, |i| i + 1);
            if global
                .iter()
                .enumerate()
                .any(|(l, &g)| g != ((l + 1) % every == 0))
            {
                return Err(err(
                    c.path("layer_types"),
                    "only the pattern \"every N-th layer is global\" is supported",
                ));
            }
            every
        }
        Some(v) => return Err(err(c.path("layer_types"), format!("{v} is not a list"))),
        None => c
            .count("sliding_window_pattern")?
            .or(c.count("_sliding_window_pattern")?)
            .unwrap_or(6),
    };
    Ok(Sliding { window, every })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smollm2() -> Value {
        // SmolLM2-135M's config.json (the fields that matter), as published.
        json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
            "num_hidden_layers": 30, "num_key_value_heads": 3, "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-05, "rope_theta": 100000, "rope_scaling": null,
            "tie_word_embeddings": true, "vocab_size": 49152, "hidden_act": "silu",
            "attention_bias": false, "mlp_bias": false, "pretraining_tp": 1
        })
    }

    #[test]
    fn reads_the_old_rope_keys_and_matches_the_preset() {
        let cfg = parse(&smollm2()).unwrap();
        let preset = ModelConfig::preset("smollm2-135m").unwrap();
        assert_eq!(cfg, preset);
    }

    #[test]
    fn reads_llama3_scaling_in_both_spellings() {
        let mut old = smollm2();
        old["rope_scaling"] = json!({"rope_type": "llama3", "factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192});
        let mut new = smollm2();
        new.as_object_mut().unwrap().remove("rope_theta");
        new.as_object_mut().unwrap().remove("rope_scaling");
        new["rope_parameters"] = json!({"rope_type": "llama3", "rope_theta": 100000.0,
            "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192});
        let a = parse(&old).unwrap();
        assert_eq!(a, parse(&new).unwrap());
        assert!(matches!(
            a.rope.unwrap().scaling,
            RopeScaling::Llama3 {
                original_context: 8192,
                ..
            }
        ));
    }

    #[test]
    fn refuses_what_emberlm_lacks_naming_the_field() {
        let cases = [
            ("model_type", json!("mixtral"), "model_type"),
            ("num_local_experts", json!(8), "num_local_experts"),
            ("hidden_act", json!("gelu"), "hidden_act"),
            ("attention_bias", json!(true), "attention_bias"),
            (
                "rope_scaling",
                json!({"rope_type": "yarn", "factor": 4.0}),
                "rope_scaling.rope_type",
            ),
            ("hidden_size", json!(-3), "hidden_size"),
            ("use_sliding_window", json!(true), "use_sliding_window"),
        ];
        for (key, value, field) in cases {
            let mut j = smollm2();
            j[key] = value;
            let e = parse(&j).unwrap_err();
            assert_eq!(e.field, field, "{key}: {e}");
        }
        let mut j = smollm2();
        j["num_key_value_heads"] = json!(4);
        assert!(parse(&j).unwrap_err().to_string().contains("n_kv_heads"));
    }

    #[test]
    fn gemma3_pattern_from_layer_types_or_the_default() {
        let mut j = json!({
            "model_type": "gemma3_text", "hidden_size": 640, "intermediate_size": 2048,
            "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
            "num_hidden_layers": 18, "max_position_embeddings": 32768, "vocab_size": 262144,
            "rms_norm_eps": 1e-06, "query_pre_attn_scalar": 256, "sliding_window": 512,
            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
            "hidden_activation": "gelu_pytorch_tanh", "final_logit_softcapping": null
        });
        assert_eq!(
            parse(&j).unwrap(),
            ModelConfig::preset("gemma3-270m").unwrap()
        );
        let types: Vec<&str> = (0..18)
            .map(|l| {
                if (l + 1) % 6 == 0 {
                    "full_attention"
                } else {
                    "sliding_attention"
                }
            })
            .collect();
        j["layer_types"] = json!(types);
        assert_eq!(parse(&j).unwrap().sliding.unwrap().every, 6);
        j["layer_types"][0] = json!("full_attention");
        assert_eq!(parse(&j).unwrap_err().field, "layer_types");
    }
}
