//! `ember score`: cross-entropy and perplexity of a text.

use super::*;

#[derive(FromArgs, Debug)]
/// Score a text: mean next-token cross-entropy, perplexity and per-token log-probabilities.
#[argh(subcommand, name = "score")]
pub(crate) struct ScoreArgs {
    /// the model file (.ember)
    #[argh(positional)]
    model: PathBuf,
    /// text to score
    #[argh(option)]
    text: Option<String>,
    /// token ids to score, e.g. 15496,11,314
    #[argh(option)]
    tokens: Option<String>,
    /// worker threads (default: one per core)
    #[argh(option, default = "0")]
    threads: usize,
    /// print one JSON object (loss, perplexity, logprobs, tokens)
    #[argh(switch)]
    json: bool,
}

pub(crate) fn score(a: ScoreArgs) -> Result<()> {
    let model = open(&a.model)?;
    if !matches!(model.task(), Task::LanguageModel) {
        return Err("this model is a classifier: use `ember classify`".into());
    }
    let ids = prompt_ids(&model, &a.text, &a.tokens, "--text")?;
    if ids.len() < 2 {
        return Err(
            "scoring needs at least 2 tokens (each token is predicted from the ones before)".into(),
        );
    }
    let opts = SessionOptions {
        threads: a.threads,
        ..SessionOptions::default()
    };
    let mut session = Session::new(&model, &opts).map_err(|e| e.to_string())?;
    if ids.len() > session.context() {
        return Err(format!(
            "{} tokens do not fit in the model's context of {}",
            ids.len(),
            session.context()
        ));
    }
    let mut logprobs = Vec::with_capacity(ids.len() - 1);
    for w in ids.windows(2) {
        let logits = session.step(w[0]).map_err(|e| e.to_string())?;
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = logits
            .iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        // `step` checked w[0]; the last id is only ever looked up here.
        let Some(&l) = logits.get(w[1] as usize) else {
            return Err(format!(
                "token id {} is out of range (the vocabulary has {} ids)",
                w[1],
                logits.len()
            ));
        };
        logprobs.push(l as f64 - lse);
    }
    let loss = -logprobs.iter().sum::<f64>() / logprobs.len() as f64;
    let ppl = loss.exp();
    if a.json {
        let lp: Vec<String> = logprobs.iter().map(|&v| num(v)).collect();
        let ts: Vec<String> = ids.iter().map(u32::to_string).collect();
        println!(
            "{{\"loss\":{},\"perplexity\":{},\"logprobs\":[{}],\"tokens\":[{}]}}",
            num(loss),
            num(ppl),
            lp.join(","),
            ts.join(",")
        );
    } else {
        println!(
            "loss {loss:.6}  perplexity {ppl:.4}  over {} predicted tokens",
            logprobs.len()
        );
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
    }
    Ok(())
}
