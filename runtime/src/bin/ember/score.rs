//! `ember score`: cross-entropy and perplexity of a text.

use super::*;

#[derive(FromArgs, Debug)]
/// Score a text: mean next-token cross-entropy, perplexity and per-token log-probabilities.
/// A text longer than the context is scored in sliding windows of the context's length: the
/// first window predicts all its tokens; each next one starts --stride tokens later (default half
/// the context), so that every token is predicted once, from at least context - stride tokens
/// before it (Hugging Face's "perplexity of fixed-length models" rule). A text that fits is one
/// window, the exact score.
#[argh(subcommand, name = "score")]
pub(crate) struct ScoreArgs {
    /// the model file (.ember)
    #[argh(positional)]
    model: PathBuf,
    /// text to score; `-` reads it from standard input
    #[argh(option)]
    text: Option<String>,
    /// a file holding the text to score (`-`: standard input); prints the summary only (the
    /// per-token log-probabilities with --json), and its progress on stderr in a terminal
    #[argh(option)]
    file: Option<PathBuf>,
    /// token ids to score, e.g. 15496,11,314
    #[argh(option)]
    tokens: Option<String>,
    /// tokens between the starts of two windows (default: half the context)
    #[argh(option)]
    stride: Option<usize>,
    /// window length (default: the model's context)
    #[argh(option)]
    context: Option<usize>,
    /// worker threads (default: one per core)
    #[argh(option)]
    threads: Option<usize>,
    /// print one JSON object (loss, perplexity, logprobs, tokens, windows, stride, context)
    #[argh(switch)]
    json: bool,
}

/// Progress lines (a terminal only) from this many tokens on.
const PROGRESS_FROM: usize = 4096;

pub(crate) fn score(a: ScoreArgs) -> Result<()> {
    let model = open(&a.model)?;
    if !matches!(model.task(), Task::LanguageModel) {
        return Err("this model is a classifier: use `ember classify`".into());
    }
    let threads = threads(a.threads)?;
    let (ids, _) = prompt_ids(
        &model,
        &a.text,
        &a.tokens,
        a.file.as_deref(),
        "--text",
        "--file",
    )?;
    if ids.len() < 2 {
        return Err(
            "scoring needs at least 2 tokens (each token is predicted from the ones before)".into(),
        );
    }
    let opts = SessionOptions {
        threads,
        context: a.context,
        ..SessionOptions::default()
    };
    let mut session = Session::new(&model, &opts).map_err(|e| usage(format!("--{e}")))?;
    let t = session.context();
    if t < 2 {
        return Err(usage("--context: a window needs at least 2 tokens"));
    }
    let stride = a.stride.unwrap_or(t / 2).max(1);
    if a.stride.is_some_and(|s| s == 0 || s >= t) {
        return Err(usage(format!(
            "--stride must be in 1..={} (less than the window of {t} tokens)",
            t - 1
        )));
    }
    let progress = ids.len() >= PROGRESS_FROM && std::io::stderr().is_terminal();
    let mut logprobs = Vec::with_capacity(ids.len() - 1);
    let mut windows = 0;
    let mut start = 0;
    loop {
        let end = (start + t).min(ids.len());
        // ids[start..end] is the window; predictions up to ids[scored] are already counted.
        let scored = logprobs.len();
        session.reset();
        if scored > start {
            session
                .prefill(&ids[start..scored])
                .map_err(|e| e.to_string())?;
        }
        for i in scored.max(start)..end - 1 {
            let logits = session.step(ids[i]).map_err(|e| e.to_string())?;
            let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = logits
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln()
                + max;
            // `step` checked ids[i]; the last id is only ever looked up here.
            let Some(&l) = logits.get(ids[i + 1] as usize) else {
                return Err(format!(
                    "token id {} is out of range (the vocabulary has {} ids)",
                    ids[i + 1],
                    logits.len()
                )
                .into());
            };
            logprobs.push(l as f64 - lse);
        }
        windows += 1;
        if progress {
            eprint!("\rscored {} of {} tokens", end, ids.len());
        }
        if end == ids.len() {
            break;
        }
        start += stride;
    }
    if progress {
        eprintln!();
    }
    let loss = -logprobs.iter().sum::<f64>() / logprobs.len() as f64;
    let ppl = loss.exp();
    if a.json {
        let j = serde_json::json!({
            "loss": loss,
            "perplexity": ppl,
            "logprobs": logprobs,
            "tokens": ids,
            "predicted_tokens": logprobs.len(),
            "windows": windows,
            "stride": stride,
            "context": t,
        });
        println!("{j}");
        return Ok(());
    }
    let how = if windows > 1 {
        format!(" in {windows} windows of {t} tokens, stride {stride}")
    } else {
        String::new()
    };
    println!(
        "loss {loss:.6}  perplexity {ppl:.4}  over {} predicted tokens{how}",
        logprobs.len()
    );
    if a.file.is_some() {
        return Ok(());
    }
    let tok = tokenizer_of(&model)?;
    for (t, lp) in ids[1..].iter().zip(&logprobs) {
        let piece = tok
            .and_then(|k| k.token_bytes(*t))
            .map(|b| String::from_utf8_lossy(b).into_owned());
        println!(
            "{t:>8} {lp:>12.6}  {}",
            piece.map(|p| format!("{p:?}")).unwrap_or_default()
        );
    }
    Ok(())
}
