//! `ember-train eval`: the mean next-token loss and perplexity of a checkpoint on text files.

use super::progress::{Progress, Status};
use super::{CliError, Console, EvalArgs, Outcome, failed, signal};
use crate::checkpoint;
use crate::data::{self, Windows};
use crate::model::{Gpt, Mode};
use crate::{note, say};
use serde_json::json;
use std::time::Instant;

/// Windows per forward pass in `eval`.
const EVAL_BATCH: usize = 4;

/// Reads every `--data` file (at least one).
pub(super) fn read_all(paths: &[std::path::PathBuf]) -> Result<(Vec<String>, u64), CliError> {
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
    l.gpt2_only("eval").map_err(failed)?;
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
