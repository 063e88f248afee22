//! The `config.json` beside a safetensors model: Hugging Face's keys (`n_embd`, `n_layer`,
//! `n_head`, `n_positions`, `vocab_size`, `tie_word_embeddings`, `n_inner`, `model_type`,
//! `activation_function`, `layer_norm_epsilon`, …) and the book's `n_heads`, parsed from untrusted
//! JSON and cross-checked against fixed, valid weights.
//!
//! Input: byte 0 picks one of [`VARIANTS`] (a tiny model written once per process), byte 1 an
//! optional `--heads` override (`0xF0..=0xFF` → `Some(low nibble)`, else `None`), the rest is the
//! `config.json` text.
//!
//! Properties on accepted inputs: the vocabulary, context, dim and layer count are the weights'
//! (config.json cannot contradict the shapes), heads divide the dim, and the imported tensors are
//! the weights written, bit for bit; Hugging Face files always have q/k/v biases; an untied
//! Hugging Face model may come back tied only when config.json says `tie_word_embeddings` (as
//! transformers does, the head is then ignored).

use super::input::{Input, put, scratch_dir};
use emberlm_formats::config::GptConfig;
use emberlm_trainer::export_safetensors::export_safetensors;
use emberlm_trainer::import::{Layout, import_safetensors};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One fixed model: its layout and configuration.
pub type Variant = (Layout, GptConfig);

/// The models the input chooses from (byte 0 modulo their number).
pub const VARIANTS: [Variant; 4] = [
    (Layout::HuggingFace, cfg(1, true, true)),
    (Layout::HuggingFace, cfg(2, true, false)),
    (Layout::Book, cfg(1, false, false)),
    (Layout::Book, cfg(2, true, false)),
];

const fn cfg(n_layers: usize, qkv_bias: bool, tied_head: bool) -> GptConfig {
    GptConfig {
        vocab_size: 11,
        context_length: 5,
        dim: 8,
        n_layers,
        n_heads: 2,
        qkv_bias,
        tied_head,
    }
}

/// Deterministic weights for `cfg`: canonical name → values.
pub fn weights(cfg: &GptConfig) -> BTreeMap<String, Vec<f32>> {
    let mut k = 0u32;
    cfg.tensor_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let v = (0..n)
                .map(|_| {
                    k += 1;
                    (k as f32 * 0.37).sin() * 0.1
                })
                .collect();
            (name, v)
        })
        .collect()
}

/// Writes variant `i` into `dir` (model.safetensors and the config.json the exporter writes).
pub fn write_variant(i: usize, dir: &std::path::Path) {
    let (layout, cfg) = VARIANTS[i];
    let w = weights(&cfg);
    export_safetensors(&cfg, layout, dir, &mut |n| {
        w.get(n).map(|v| Cow::Borrowed(v.as_slice()))
    })
    .unwrap_or_else(|e| panic!("writing fuzz variant {i}: {e}"));
}

thread_local! {
    /// The variants' directories, written on first use by this thread.
    static DIRS: Vec<PathBuf> = (0..VARIANTS.len())
        .map(|i| {
            let dir = scratch_dir("hf_config").join(i.to_string());
            write_variant(i, &dir);
            dir
        })
        .collect();
}

/// The target's body.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let i = input.u8() as usize % VARIANTS.len();
    let h = input.u8();
    let heads = (h >= 0xF0).then_some((h & 0x0F) as usize);
    let json = input.rest();
    let dir = DIRS.with(|d| d[i].clone());
    put(&dir.join("config.json"), Some(json));
    let Ok(imp) = import_safetensors(&dir, heads) else {
        return;
    };
    let (layout, truth) = VARIANTS[i];
    let got = imp.config;
    assert_eq!(imp.layout, layout);
    assert_eq!(
        (got.vocab_size, got.context_length, got.dim, got.n_layers),
        (
            truth.vocab_size,
            truth.context_length,
            truth.dim,
            truth.n_layers
        ),
        "config.json contradicts the weights and was accepted"
    );
    assert!(got.n_heads > 0 && got.dim % got.n_heads == 0);
    if let Some(h) = heads {
        assert_eq!(got.n_heads, h, "--heads was not applied");
    }
    assert_eq!(got.qkv_bias, truth.qkv_bias);
    let mut expected = weights(&truth);
    if got.tied_head != truth.tied_head {
        assert!(
            layout == Layout::HuggingFace && !truth.tied_head,
            "tied_head {} accepted for a model whose head is {}",
            got.tied_head,
            if truth.tied_head { "tied" } else { "untied" }
        );
        expected.remove("out_head.weight");
    }
    let bits = |t: &BTreeMap<String, Vec<f32>>| -> Vec<(String, Vec<u32>)> {
        t.iter()
            .map(|(k, v)| (k.clone(), v.iter().map(|x| x.to_bits()).collect()))
            .collect()
    };
    assert!(
        bits(&imp.tensors) == bits(&expected),
        "imported weights differ"
    );
}
