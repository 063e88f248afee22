//! `ember-train import`: OpenAI GPT-2 weights (Hugging Face or the book's layout) as a checkpoint.

use super::{CliError, Console, ImportArgs, Outcome, failed};
use crate::checkpoint::{self, RngState, RunKind, TokenizerRef, TrainerState};
use crate::data;
use crate::import::import_to_safetensors;
use crate::say;
use emberlm_formats::tokenizer::Tokenizer;
use serde_json::json;

/// `ember-train import --from PATH --out CKPT [--heads N]`.
pub fn import(a: ImportArgs, con: &mut Console<'_>) -> Result<Outcome, CliError> {
    // emberlm's own checkpoints need no import (their safetensors hold no head count, so the
    // importer's own error would send the user after --heads).
    // A checkpoint directory, a file inside one, or a run's `checkpoints/latest` pointer file.
    let parent = a.from.parent().map(std::path::Path::to_path_buf);
    let ours = if a.from.is_dir() {
        Some(a.from.clone())
    } else if a.from.file_name().is_some_and(|n| n == "latest") {
        std::fs::read_to_string(&a.from)
            .ok()
            .and_then(|s| Some(parent?.join(s.trim())))
    } else {
        parent
    };
    if let Some(dir) = ours.filter(|d| d.join(checkpoint::STATE_FILE).is_file()) {
        return Err(failed(format!(
            "--from {}: this is an emberlm checkpoint ({} holds its settings); it needs no \
             import: pass {} to `ember-train export`, `eval`, `finetune … --init` or \
             `pretrain --init`",
            a.from.display(),
            dir.join(checkpoint::STATE_FILE).display(),
            dir.display()
        )));
    }
    if a.out.exists() && !a.out.join(checkpoint::STATE_FILE).is_file() {
        let empty = std::fs::read_dir(&a.out).is_ok_and(|mut d| d.next().is_none());
        if !empty {
            return Err(failed(format!(
                "--out {}: exists and is not a checkpoint; choose a new directory",
                a.out.display()
            )));
        }
    }
    if crate::hf::is_hf_dir(&a.from) {
        let cfg_json = crate::hf::dir::read_json(&a.from.join("config.json"), 1 << 20)
            .map_err(|e| failed(e.to_string()))?;
        if cfg_json.get("model_type").and_then(|v| v.as_str()) != Some("gpt2") {
            return import_family(&a, con);
        }
    }
    // Stream the weights, one tensor at a time, into a staging file beside the checkpoint (so a
    // 6 GB model is never held in memory), then move it into the new checkpoint directory.
    let parent = match a.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| failed(format!("--out {}: {e}", a.out.display())))?;
    let staging = parent.join(format!(
        ".emberlm-import-{}.safetensors",
        std::process::id()
    ));
    // A killed import leaves its staging file (as large as the model): sweep those.
    emberlm_formats::ember::remove_dead_temporaries(&parent, ".emberlm-import-", ".safetensors");
    // … and the temporary of a staging file killed while it was being written.
    emberlm_formats::ember::remove_dead_temporaries(
        &parent,
        "..emberlm-import-",
        ".safetensors.tmp-{pid}",
    );
    let imp = import_to_safetensors(&a.from, &staging, a.heads)
        .map_err(|e| failed(format!("--from {}: {e}", a.from.display())))?;
    let result = import_finish(&a, imp, &staging, con);
    let _ = std::fs::remove_file(&staging);
    result
}

fn import_finish(
    a: &ImportArgs,
    imp: crate::import::ImportSummary,
    staging: &std::path::Path,
    con: &mut Console<'_>,
) -> Result<Outcome, CliError> {
    let cfg = imp.config;
    let gpt2_ids = Tokenizer::gpt2().vocab_size();
    // Without vocab.json/merges.txt, GPT-2's vocabulary when it fits the model; otherwise the
    // model works with token ids only (`ember generate --tokens`, `ember score --tokens`).
    let (tok, kind): (Option<Tokenizer>, &str) = match imp.tokenizer {
        Some(t) => (Some(t), "imported"),
        None if cfg.vocab_size >= gpt2_ids => (Some(Tokenizer::gpt2().clone()), "gpt2"),
        None => (None, checkpoint::NO_TOKENIZER),
    };
    if let Some(t) = tok.as_ref().filter(|t| t.vocab_size() > cfg.vocab_size) {
        return Err(failed(format!(
            "--from {}: the model has {} token ids but the {kind} tokenizer has {}; put the model's \
             vocab.json and merges.txt beside the weights",
            a.from.display(),
            cfg.vocab_size,
            t.vocab_size()
        )));
    }
    let rng = RngState {
        shuffle_seed: 0,
        dropout_seed: 0,
        eval_seed: 0,
    };
    let tok_ref = TokenizerRef {
        kind: kind.into(),
        vocab_size: tok.as_ref().map_or(0, Tokenizer::vocab_size),
        hash: tok.as_ref().map_or(String::new(), |t| {
            format!("{:016x}", data::tokenizer_fingerprint(t))
        }),
    };
    let state = TrainerState {
        source: Some(imp.weights_path.display().to_string()),
        ..TrainerState::fresh(RunKind::Import, cfg, rng, tok_ref)
    };
    checkpoint::write_dir_streamed(&a.out, &state, tok.as_ref(), |model| {
        std::fs::rename(staging, model).map_err(|e| checkpoint::CheckpointError::Io {
            path: model.to_path_buf(),
            reason: e.to_string(),
        })
    })
    .map_err(|e| failed(format!("--out {e}")))?;
    say!(
        con,
        "{}: {:?} layout, {}, {}, dim {}, context {}, vocabulary {} ({:.1}M parameters), tokenizer {kind}",
        a.out.display(),
        imp.layout,
        super::count(cfg.n_layers as u64, "layer"),
        super::count(cfg.n_heads as u64, "head"),
        cfg.dim,
        cfg.context_length,
        cfg.vocab_size,
        cfg.param_count() as f64 / 1e6
    );
    if tok.is_none() {
        say!(
            con,
            "no tokenizer: vocab.json/merges.txt absent and the vocabulary ({}) is not GPT-2's; \
             the model works with token ids only (ember generate --tokens, ember score --tokens)",
            cfg.vocab_size
        );
    }
    Ok(Outcome {
        json: json!({
            "out": a.out,
            "layout": format!("{:?}", imp.layout),
            "parameters": cfg.param_count(),
            "config": checkpoint::ConfigJson::from(cfg),
            "tokenizer": kind,
        }),
        exit_code: 0,
    })
}

/// A Hugging Face directory of the modern families (Llama, Qwen2, Qwen3, Gemma 3) as a
/// checkpoint: every tensor in f32 (Gemma's norm scales stored as 1 + w, as the runtime and the
/// trainer use them), the whole configuration in `trainer.json`, the directory's
/// `tokenizer.json` when there is one, and its tokenizer, generation and configuration files
/// verbatim in `hf/` ([`checkpoint::HF_FILES`]). The model is held in memory once (4 bytes a
/// parameter).
fn import_family(a: &ImportArgs, con: &mut Console<'_>) -> Result<Outcome, CliError> {
    use crate::hf;
    let from = |e: hf::ConvertError| failed(format!("--from {}: {e}", a.from.display()));
    let dir = hf::HfDir::open(&a.from).map_err(|e| failed(e.to_string()))?;
    let cfg = dir.config;
    let family = checkpoint::FamilyJson::of(&cfg).ok_or_else(|| {
        failed(format!(
            "--from {}: {} is not a rotary family",
            a.from.display(),
            cfg.arch.name()
        ))
    })?;
    let extras = hf::extras::read(&dir).map_err(from)?;
    let tensors = hf::convert::read_all_f32(&dir).map_err(from)?;
    let shapes: Vec<(String, Vec<usize>)> = emberlm_formats::arch::tensors(&cfg, None)
        .into_iter()
        .map(|t| (t.name, t.shape))
        .collect();
    let mut params = Vec::with_capacity(
        shapes
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum(),
    );
    for ((name, _, x), (want, _)) in tensors.iter().zip(&shapes) {
        if name != want {
            return Err(failed(format!(
                "--from {}: tensor {name} where {want} was expected",
                a.from.display()
            )));
        }
        params.extend_from_slice(x);
    }
    drop(tensors);
    let tok = extras.tokenizer;
    let kind = if tok.is_some() {
        "imported"
    } else {
        checkpoint::NO_TOKENIZER
    };
    let tok_ref = TokenizerRef {
        kind: kind.into(),
        vocab_size: tok.as_ref().map_or(0, Tokenizer::vocab_size),
        hash: tok.as_ref().map_or(String::new(), |t| {
            format!("{:016x}", data::tokenizer_fingerprint(t))
        }),
    };
    let rng = RngState {
        shuffle_seed: 0,
        dropout_seed: 0,
        eval_seed: 0,
    };
    let gpt_view = emberlm_formats::config::GptConfig {
        vocab_size: cfg.vocab_size,
        context_length: cfg.context_length,
        dim: cfg.dim,
        n_layers: cfg.n_layers,
        n_heads: cfg.n_heads,
        qkv_bias: cfg.qkv_bias,
        tied_head: cfg.tied_head,
    };
    let state = TrainerState {
        source: Some(format!(
            "{} (Hugging Face {})",
            a.from.display(),
            dir.model_type
        )),
        family: Some(family),
        hf: checkpoint::HfFiles::read(&a.from).map_err(|e| failed(format!("--from {e}")))?,
        ..TrainerState::fresh(RunKind::Import, gpt_view, rng, tok_ref)
    };
    let placeholder = Tokenizer::gpt2();
    let c = checkpoint::Contents {
        state: &state,
        shapes: &shapes,
        params: &params,
        moments: None,
        tokenizer: tok.as_ref().unwrap_or(placeholder),
    };
    checkpoint::write_dir_parts(&a.out, &c, tok.as_ref())
        .map_err(|e| failed(format!("--out {e}")))?;
    say!(
        con,
        "{}: {} ({}, {}, dim {}, context {}, vocabulary {}; {:.1}M parameters), tokenizer {kind}",
        a.out.display(),
        cfg.arch.name(),
        super::count(cfg.n_layers as u64, "layer"),
        super::count(cfg.n_heads as u64, "head"),
        cfg.dim,
        cfg.context_length,
        cfg.vocab_size,
        params.len() as f64 / 1e6
    );
    Ok(Outcome {
        json: json!({
            "out": a.out,
            "layout": "hf",
            "arch": cfg.arch.name(),
            "parameters": params.len(),
            "tokenizer": kind,
        }),
        exit_code: 0,
    })
}
