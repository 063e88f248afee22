//! A tiny Hugging Face Qwen2 directory with a real (small) tokenizer and a ChatML template, for
//! the tests of chat templates: the Qwen2 of tests/fixtures/families with the small Qwen2
//! tokenizer.json of the formats tests (its embedding grown to the tokenizer's 1003 ids).

#![allow(dead_code)]

use emberlm_trainer::safetensors_io::write_safetensors_f32;
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The ChatML template (Qwen's, without tools).
pub const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n\
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

pub fn tokenizer_json() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../formats/tests/fixtures/hf_tokenizers/qwen2.json")
}

/// Writes `dst/model.safetensors` and `dst/config.json` from the tiny fixture directory `src`
/// (one or several `.safetensors` files, 101 token ids): every embedding or untied head of 101
/// rows grown to `vocab` rows with deterministic values, the final norm zeroed when `zero_norm`,
/// and `vocab_size` set to `vocab`. `src` may be `dst` (its shards and index are replaced).
pub fn grow_fixture(src: &Path, dst: &Path, vocab: usize, zero_norm: bool) {
    std::fs::create_dir_all(dst).unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".safetensors"))
        .collect();
    files.sort();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            let mut shape = view.shape().to_vec();
            let mut v: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if (name.ends_with("embed_tokens.weight") || name == "lm_head.weight")
                && shape[0] == 101
            {
                shape[0] = vocab;
                v.extend(
                    (v.len()..vocab * shape[1]).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3),
                );
            }
            if zero_norm && name == "model.norm.weight" {
                v.iter_mut().for_each(|x| *x = 0.0);
            }
            tensors.push((name, shape, v));
        }
    }
    if src == dst {
        for path in &files {
            std::fs::remove_file(path).unwrap();
        }
        let _ = std::fs::remove_file(dst.join("model.safetensors.index.json"));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let shapes: Vec<(String, Vec<usize>)> =
        tensors.iter().map(|t| (t.0.clone(), t.1.clone())).collect();
    write_safetensors_f32(
        &dst.join("model.safetensors"),
        &BTreeMap::new(),
        &shapes,
        |i, w| {
            tensors[i]
                .2
                .iter()
                .try_for_each(|x| w.write_all(&x.to_le_bytes()))
        },
    )
    .unwrap();
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    assert!(cfg.contains("\"vocab_size\": 101"));
    std::fs::write(
        dst.join("config.json"),
        cfg.replace("\"vocab_size\": 101", &format!("\"vocab_size\": {vocab}")),
    )
    .unwrap();
}

/// Writes the Hugging Face directory with `eos` as generation_config's eos_token_id. Its final
/// norm is zeroed (every logit 0) when `zero_norm`.
pub fn write_model(dir: &Path, eos: &str, zero_norm: bool) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/families/qwen2");
    grow_fixture(&src, dir, 1003, zero_norm);
    std::fs::copy(tokenizer_json(), dir.join("tokenizer.json")).unwrap();
    let tc = serde_json::json!({"chat_template": CHATML, "eos_token": "<|im_end|>"});
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        format!("{{\"eos_token_id\": {eos}}}"),
    )
    .unwrap();
}
