//! The modern families' `config.json` (Llama, Qwen2, Qwen3, Gemma 3) and sharded weight indexes,
//! from untrusted bytes: [`emberlm_trainer::hf::config::parse`] and [`HfDir::open`] +
//! [`emberlm_trainer::hf::convert`].
//!
//! Input: byte 0 picks the mode. Even: the rest is a `config.json`; an accepted one must
//! validate, describe tensors whose element counts do not overflow, and round-trip through the
//! `.ember` metadata keys unchanged. Odd: the rest is a `model.safetensors.index.json` beside a
//! fixed valid config and two fixed shards of a tiny Qwen3 (written once per process); an
//! accepted directory converts, and the file holds every described tensor.

use super::input::{put, scratch_dir};
use emberlm_formats::arch;
use emberlm_formats::ember::{AlignedBytes, EmberFile, EmberWriter};
use emberlm_formats::meta;
use emberlm_trainer::export::ExportDtype;
use emberlm_trainer::hf::{self, HfDir};
use emberlm_trainer::safetensors_io::write_safetensors_f32;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The tiny Qwen3's config.json (every tensor kind but biases).
pub const CONFIG: &str = r#"{"model_type": "qwen3", "hidden_size": 8, "intermediate_size": 12,
"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4, "num_hidden_layers": 1,
"max_position_embeddings": 16, "vocab_size": 10, "rms_norm_eps": 1e-6, "rope_theta": 10000,
"tie_word_embeddings": true, "hidden_act": "silu"}"#;

/// The tensors of the tiny Qwen3 split over two shards: (Hugging Face name, shape, shard).
pub fn tensors() -> Vec<(String, Vec<usize>, usize)> {
    let json: serde_json::Value = serde_json::from_str(CONFIG).expect("a valid constant");
    let cfg = hf::config::parse(&json).expect("a valid constant");
    arch::tensors(&cfg, None)
        .into_iter()
        .filter_map(|t| {
            let name = t.desc.hf_name(cfg.arch, t.layer.unwrap_or(0), "model.")?;
            let shard = usize::from(t.layer.is_some());
            Some((name, t.shape, shard))
        })
        .collect()
}

/// A valid index for [`tensors`].
pub fn valid_index() -> String {
    let map: BTreeMap<String, String> = tensors()
        .into_iter()
        .map(|(n, _, s)| (n, format!("model-{s}.safetensors")))
        .collect();
    serde_json::json!({"metadata": {}, "weight_map": map}).to_string()
}

fn fixed_dir() -> PathBuf {
    let dir = scratch_dir("hf_family");
    if !dir.join("model-1.safetensors").exists() {
        let all = tensors();
        for shard in 0..2 {
            let mine: Vec<(String, Vec<usize>)> = all
                .iter()
                .filter(|t| t.2 == shard)
                .map(|t| (t.0.clone(), t.1.clone()))
                .collect();
            let path = dir.join(format!("model-{shard}.safetensors"));
            write_safetensors_f32(&path, &BTreeMap::new(), &mine, |i, w| {
                let n: usize = mine[i].1.iter().product();
                for k in 0..n {
                    w.write_all(&((k % 7) as f32 * 0.1).to_le_bytes())?;
                }
                Ok(())
            })
            .expect("scratch directory writable");
        }
        put(&dir.join("config.json"), Some(CONFIG.as_bytes()));
    }
    dir
}

/// See the module docs.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(rest) else {
            return;
        };
        let Ok(cfg) = hf::config::parse(&json) else {
            return;
        };
        cfg.validate().expect("an accepted config validates");
        for t in arch::tensors(&cfg, None) {
            assert!(
                t.shape
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .is_some()
            );
        }
        let mut w = EmberWriter::new();
        meta::put_model_config(&mut w, &cfg).expect("metadata of a valid config");
        let bytes = AlignedBytes::copy_from(&w.to_vec(|_, _, _| Ok(())).expect("in memory"));
        let back = meta::get_model_config(&EmberFile::parse(&bytes).expect("just written").header);
        assert_eq!(back.expect("round trip"), cfg);
        return;
    }
    let dir = fixed_dir();
    let index = dir.join("model.safetensors.index.json");
    put(&index, Some(rest));
    let out = dir.join("out.ember");
    let result =
        HfDir::open(&dir).and_then(|d| hf::convert(&d, ExportDtype::F32, &out, &mut |_| Ok(())));
    if let Ok(done) = result {
        let file = std::fs::read(&out).expect("written");
        let bytes = AlignedBytes::copy_from(&file);
        let parsed = EmberFile::parse(&bytes).expect("a converted file parses");
        assert_eq!(parsed.header.tensors.len(), done.tensors);
        assert_eq!(done.tensors, tensors().len());
    }
    put(&out, None);
}
