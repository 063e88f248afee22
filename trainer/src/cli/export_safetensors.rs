//! `ember-train export-safetensors`: a checkpoint as Hugging Face or book-layout safetensors; a
//! checkpoint of the modern families as a Hugging Face model directory ([`crate::hf::export`]).

use super::{CliError, Console, Outcome, failed};
use crate::checkpoint::{self, TrainerState};
use crate::{note, say};
use serde_json::json;
use std::time::Instant;

/// `ember-train export-safetensors CKPT --layout hf|book --out DIR`.
pub fn export_safetensors(
    a: super::ExportSafetensorsArgs,
    con: &mut Console<'_>,
) -> Result<Outcome, CliError> {
    let layout: crate::import::Layout = a
        .layout
        .parse()
        .map_err(|e| CliError::Usage(format!("--layout: {e}")))?;
    let dir = checkpoint::resolve(&a.checkpoint).map_err(|e| failed(e.to_string()))?;
    let state_path = dir.join(checkpoint::STATE_FILE);
    let state: TrainerState = std::fs::read(&state_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| failed(format!("{}: {e}", state_path.display())))?;
    if let Some(family) = &state.family {
        return export_family(&a, &dir, &state, family, con);
    }
    if a.dtype.as_deref().is_some_and(|d| d != "f32") {
        return Err(CliError::Usage(
            "--dtype: a GPT-2 checkpoint exports in f32 only (bf16 and f16 are for Llama, Qwen \
             and Gemma 3 checkpoints)"
                .into(),
        ));
    }
    let cfg = emberlm_formats::config::GptConfig::from(state.config);
    cfg.validate()
        .map_err(|e| failed(format!("{}: {e}", state_path.display())))?;
    let t0 = Instant::now();
    let summary = crate::export_safetensors::export_safetensors_from_file(
        &dir.join(checkpoint::MODEL_FILE),
        Some(&cfg),
        layout,
        &a.out,
    )
    .map_err(|e| failed(format!("--out {}: {e}", a.out.display())))?;
    // The tokenizer travels too (vocab.json + merges.txt), when the checkpoint has one.
    let tok_path = dir.join(checkpoint::TOKENIZER_FILE);
    let tok_files = if tok_path.is_file() {
        let tok = checkpoint::read_tokenizer_file(&tok_path).map_err(|e| failed(e.to_string()))?;
        let files = crate::export_safetensors::write_tokenizer_files(&tok, &a.out)
            .map_err(|e| failed(format!("--out {}: {e}", a.out.display())))?;
        if files.is_none() {
            note!(
                con,
                "{}: this vocabulary cannot be written as merges; no vocab.json / merges.txt",
                tok_path.display()
            );
        }
        files
    } else {
        None
    };
    note!(con, "exported in {:.1}s", t0.elapsed().as_secs_f64());
    say!(
        con,
        "{}: {} tensors, {} bytes ({} layout); load it with {}",
        summary.model_file.display(),
        summary.tensors,
        summary.bytes,
        layout.name(),
        match layout {
            crate::import::Layout::HuggingFace => "GPT2LMHeadModel.from_pretrained(DIR)",
            crate::import::Layout::Book =>
                "GPTModel(cfg).load_state_dict(load_file(...), strict=False)",
        }
    );
    Ok(Outcome {
        json: json!({
            "out": a.out,
            "layout": layout.name(),
            "model_file": summary.model_file,
            "config_file": summary.config_file,
            "vocab_file": tok_files.as_ref().map(|f| &f.0),
            "merges_file": tok_files.as_ref().map(|f| &f.1),
            "tensors": summary.tensors,
            "bytes": summary.bytes,
        }),
        exit_code: 0,
    })
}

/// A Llama, Qwen2, Qwen3 or Gemma 3 checkpoint as a Hugging Face directory.
fn export_family(
    a: &super::ExportSafetensorsArgs,
    dir: &std::path::Path,
    state: &TrainerState,
    family: &checkpoint::FamilyJson,
    con: &mut Console<'_>,
) -> Result<Outcome, CliError> {
    use crate::hf::export::{HfDtype, export};
    let state_path = dir.join(checkpoint::STATE_FILE);
    let cfg = family
        .config()
        .map_err(|e| failed(format!("{}: family: {e}", state_path.display())))?;
    if a.layout != "hf" {
        return Err(CliError::Usage(format!(
            "--layout {}: {} holds a {} model, which exports in Hugging Face's layout only \
             (--layout hf); the book's layout is GPT-2's",
            a.layout,
            dir.display(),
            cfg.arch.name()
        )));
    }
    if state.classifier.is_some() {
        return Err(failed(format!(
            "{}: a classifier has no Hugging Face causal-LM layout; export it with \
             `ember-train export`",
            dir.display()
        )));
    }
    let dtype: HfDtype = a
        .dtype
        .as_deref()
        .unwrap_or("f32")
        .parse()
        .map_err(|e| CliError::Usage(format!("--dtype: {e}")))?;
    let hf = checkpoint::HfFiles::read(&dir.join(checkpoint::HF_DIR))
        .map_err(|e| failed(e.to_string()))?;
    let t0 = Instant::now();
    let done = export(
        &cfg,
        &dir.join(checkpoint::MODEL_FILE),
        hf.as_ref(),
        dtype,
        &a.out,
    )
    .map_err(|e| failed(format!("--out {}: {e}", a.out.display())))?;
    // A model trained here (no hf/): its tokenizer as vocab.json + merges.txt, which
    // GPT2Tokenizer reads (exactly for GPT-2's vocabulary; see write_tokenizer_files).
    let tok_path = dir.join(checkpoint::TOKENIZER_FILE);
    let mut copied = done.copied.clone();
    if hf.is_none() && tok_path.is_file() {
        let tok = checkpoint::read_tokenizer_file(&tok_path).map_err(|e| failed(e.to_string()))?;
        let out = |e: String| failed(format!("--out {}: {e}", a.out.display()));
        match crate::export_safetensors::write_tokenizer_files(&tok, &a.out)
            .map_err(|e| out(e.to_string()))?
        {
            Some(_) => {
                let tc = a.out.join("tokenizer_config.json");
                let mut j = json!({"tokenizer_class": "GPT2Tokenizer"});
                if state.tokenizer.kind == "gpt2" {
                    for k in ["bos_token", "eos_token", "unk_token"] {
                        j[k] = json!("<|endoftext|>");
                    }
                }
                let text = j.to_string() + "\n";
                emberlm_formats::ember::write_atomically(&tc, |w| w.write_all(text.as_bytes()))
                    .map_err(|e| out(format!("{}: {e}", tc.display())))?;
                copied.extend(
                    ["vocab.json", "merges.txt", "tokenizer_config.json"].map(String::from),
                );
            }
            None => note!(
                con,
                "{}: this vocabulary cannot be written as merges; no tokenizer files",
                tok_path.display()
            ),
        }
    }
    note!(con, "exported in {:.1}s", t0.elapsed().as_secs_f64());
    say!(
        con,
        "{}: {} tensors, {} bytes ({}, {}); load it with AutoModelForCausalLM.from_pretrained(DIR)",
        done.model_file.display(),
        done.tensors,
        done.bytes,
        cfg.arch.name(),
        dtype.name()
    );
    Ok(Outcome {
        json: json!({
            "out": a.out,
            "layout": "hf",
            "arch": cfg.arch.name(),
            "dtype": dtype.name(),
            "model_file": done.model_file,
            "config_file": done.config_file,
            "files": copied,
            "tensors": done.tensors,
            "bytes": done.bytes,
        }),
        exit_code: 0,
    })
}
