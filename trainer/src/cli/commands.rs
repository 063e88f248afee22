//! The small commands: `eval`, `tokenizer`, `export`, `import`, `export-safetensors`.

use super::progress::{Progress, Status};
use super::{
    CliError, Console, EvalArgs, ExportArgs, ImportArgs, Outcome, TokenizerArgs, failed, signal,
};
use crate::checkpoint::{self, RngState, RunKind, TokenizerRef, TrainerState};
use crate::data::{self, Windows};
use crate::export::{ExportDtype, ExportMeta, export_ember};
use crate::import::import_to_safetensors;
use crate::model::{Gpt, Mode};
use crate::{note, say};
use emberlm_formats::meta::Task;
use emberlm_formats::tokenizer::{SpecialTokens, Tokenizer, TrainOptions, train_bpe};
use serde_json::json;
use std::time::Instant;

/// Windows per forward pass in `eval`.
const EVAL_BATCH: usize = 4;

/// Reads every `--data` file (at least one).
fn read_all(paths: &[std::path::PathBuf]) -> Result<(Vec<String>, u64), CliError> {
    if paths.is_empty() {
        return Err(CliError::Usage("give at least one --data FILE".into()));
    }
    let mut texts = Vec::new();
    let mut bytes = 0;
    for p in paths {
        let (t, s) = data::read_text(p).map_err(|e| failed(format!("--data {e}")))?;
        bytes += s.bytes;
        texts.push(t);
    }
    Ok((texts, bytes))
}

/// `ember-train eval CKPT --data FILE...`: the mean next-token loss over every window (stride =
/// window length, so each token is predicted once) and its perplexity.
pub fn eval(a: EvalArgs, con: &mut Console<'_>) -> Result<Outcome, CliError> {
    super::with_threads(a.threads, || eval_inner(&a, con))?
}

fn eval_inner(a: &EvalArgs, con: &mut Console<'_>) -> Result<Outcome, CliError> {
    let l = checkpoint::load(&a.checkpoint, false).map_err(|e| failed(e.to_string()))?;
    if l.state.classifier.is_some() {
        return Err(failed(format!(
            "{}: is a classifier (its accuracy is printed by `ember-train finetune classify`; run it with `ember classify`)",
            l.dir.display()
        )));
    }
    let (texts, _) = read_all(&a.data)?;
    let tok = l.text_tokenizer("ember-train eval").map_err(failed)?;
    let model_ctx = l.config.context_length;
    let t = a
        .context
        .or(l.state.hyper.as_ref().map(|h| h.context))
        .unwrap_or(model_ctx);
    if t == 0 || t > model_ctx {
        return Err(CliError::Usage(format!(
            "--context {t}: must be in 1..={model_ctx} (the model's context length)"
        )));
    }
    let b = a.batch.unwrap_or(EVAL_BATCH);
    if b == 0 {
        return Err(CliError::Usage("--batch must be at least 1".into()));
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let t_tok = Instant::now();
    let (splits, cache) = data::load_splits(&refs, tok, 1.0, data::cache_dir().as_deref());
    let name = a
        .data
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let n_tokens = splits.train.len();
    let w = Windows::new(splits.train, t, t, "evaluation")
        .map_err(|e| failed(format!("--data {name}: {e}")))?;
    note!(
        con,
        "data: {} tokens ({})",
        n_tokens,
        match cache {
            data::CacheStatus::Hit(_) => "read from the token cache".to_string(),
            _ => format!(
                "tokenized in {}",
                super::fmt_duration(t_tok.elapsed().as_secs_f64())
            ),
        }
    );
    let mut model = Gpt::from_params(l.config, l.params).map_err(|e| failed(e.to_string()))?;
    let t0 = Instant::now();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut sum = 0f64;
    let mut tokens = 0u64;
    let order: Vec<usize> = (0..w.len()).collect();
    let total = w.len() as u64;
    let mut progress = Progress::new(con.tty);
    let mut done = 0u64;
    let mut interrupted = false;
    for idx in order.chunks(b) {
        w.fill(idx, &mut x, &mut y);
        let loss = model
            .forward(&x, Some(&y), idx.len(), t, Mode::Eval)
            .map_err(|e| failed(e.to_string()))?
            .unwrap_or(f32::NAN);
        let n = (idx.len() * t) as u64;
        sum += loss as f64 * n as f64;
        tokens += n;
        done += idx.len() as u64;
        let secs = t0.elapsed().as_secs_f64();
        progress.update(
            con.log,
            &Status {
                step: done,
                total,
                unit: "window",
                epoch: None,
                loss: Some((sum / tokens as f64) as f32),
                lr: None,
                rate: tokens as f64 / secs.max(1e-9),
                rate_unit: "tok/s",
                eta: Status::eta(secs, done, total),
            },
            done == total,
        );
        if signal::interrupted() && done < total {
            interrupted = true;
            break;
        }
    }
    progress.finish(con.log);
    let loss = sum / tokens as f64;
    let ppl = loss.exp();
    note!(
        con,
        "evaluated {done} of {} windows of {t} tokens in {:.1}s",
        w.len(),
        t0.elapsed().as_secs_f64()
    );
    say!(
        con,
        "{}: loss {loss:.4}, perplexity {ppl:.2} over {tokens} tokens of {name}{}",
        l.dir.display(),
        if interrupted {
            format!(" (interrupted: the first {done} of {total} windows)")
        } else {
            String::new()
        }
    );
    Ok(Outcome {
        json: json!({
            "loss": loss,
            "perplexity": ppl,
            "tokens": tokens,
            "checkpoint": l.dir,
            "context": t,
            "windows": done,
            "total_windows": total,
            "interrupted": interrupted,
        }),
        exit_code: if interrupted { 130 } else { 0 },
    })
}

/// `ember-train tokenizer --data FILE... --vocab-size N --out FILE`.
pub fn tokenizer(a: TokenizerArgs, con: &mut Console<'_>) -> Result<Outcome, CliError> {
    let (texts, bytes) = read_all(&a.data)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let tok = train_bpe(&refs, a.vocab_size, &TrainOptions::default())
        .map_err(|e| CliError::Usage(format!("--vocab-size {}: {e}", a.vocab_size)))?;
    let secs = t0.elapsed().as_secs_f64();
    if tok.vocab_size() < a.vocab_size {
        note!(
            con,
            "note: stopped at {} ids: no pair of tokens occurs twice more",
            tok.vocab_size()
        );
    }
    let file_bytes =
        checkpoint::write_tokenizer_file(&a.out, &tok).map_err(|e| failed(format!("--out {e}")))?;
    let tokens: usize = refs
        .iter()
        .map(|t| tok.encode_to_vec(t, SpecialTokens::Allow).len())
        .sum();
    let bpt = bytes as f64 / tokens.max(1) as f64;
    note!(con, "trained in {secs:.1}s");
    say!(
        con,
        "{}: {} ids; {bytes} bytes of training text → {tokens} tokens ({bpt:.2} bytes per token)",
        a.out.display(),
        tok.vocab_size()
    );
    Ok(Outcome {
        json: json!({
            "out": a.out,
            "vocab_size": tok.vocab_size(),
            "bytes_per_token": bpt,
            "tokens": tokens,
            "bytes": bytes,
            "file_bytes": file_bytes,
        }),
        exit_code: 0,
    })
}

/// `ember-train export CKPT --dtype f32|f16|int8 --out MODEL.ember`.
pub fn export(a: ExportArgs, con: &mut Console<'_>) -> Result<Outcome, CliError> {
    let dtype: ExportDtype = a
        .dtype
        .parse()
        .map_err(|e| CliError::Usage(format!("--dtype: {e}")))?;
    let l = checkpoint::load(&a.checkpoint, false).map_err(|e| failed(e.to_string()))?;
    let mut provenance = vec![
        ("source".to_string(), l.dir.display().to_string()),
        ("steps".to_string(), l.state.step.to_string()),
        ("tokens_seen".to_string(), l.state.tokens_seen.to_string()),
    ];
    if !l.state.data.is_empty() {
        let d: Vec<String> = l
            .state
            .data
            .iter()
            .map(|d| format!("{} ({})", d.path, d.hash))
            .collect();
        provenance.push(("data".to_string(), d.join(", ")));
    }
    if let Some(r) = l.state.history.last() {
        provenance.push(("val_loss".to_string(), r.val_loss.to_string()));
    }
    let task = match &l.state.classifier {
        Some(c) => c.task().map_err(failed)?,
        None => Task::LanguageModel,
    };
    let meta = ExportMeta {
        config: l.config,
        task,
        prompt: None,
        tokenizer: l.tokenizer.as_ref(),
        provenance,
    };
    let mut offsets = std::collections::HashMap::new();
    let mut off = 0usize;
    for (name, shape) in checkpoint::tensor_shapes(&l.config, l.state.classifier.as_ref()) {
        let n: usize = shape.iter().product();
        offsets.insert(name, off..off + n);
        off += n;
    }
    let params = &l.params;
    let t0 = Instant::now();
    let bytes = export_ember(&a.out, &meta, dtype, &|n| {
        offsets.get(n).and_then(|r| params.get(r.clone()))
    })
    .map_err(|e| failed(format!("--out {}: {e}", a.out.display())))?;
    note!(con, "exported in {:.1}s", t0.elapsed().as_secs_f64());
    say!(
        con,
        "{}: {} bytes ({:.1} MB, {})",
        a.out.display(),
        bytes,
        bytes as f64 / 1e6,
        dtype.name()
    );
    Ok(Outcome {
        json: json!({"out": a.out, "bytes": bytes, "dtype": dtype.name()}),
        exit_code: 0,
    })
}

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
