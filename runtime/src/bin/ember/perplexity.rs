//! `ember perplexity`: perplexity of a text as llama.cpp's `llama-perplexity` computes it (or
//! Hugging Face's strided rule), and the KL divergence against a base model.

use super::*;

#[derive(FromArgs, Debug)]
/// Perplexity of a text, computed as llama.cpp's llama-perplexity does (the default): the tokens
/// (with the model's BOS first, when its tokenizer adds one) are cut into non-overlapping windows
/// of --context tokens, floor(tokens / context) of them (a shorter tail is left out, and at least
/// 2 windows are needed); each window is run from an empty cache, its first token replaced by
/// BOS when the model has one, and only its second half is scored: the logits at positions
/// context/2 ..= context-2 of the window predict the tokens after them, so each window scores
/// context - 1 - context/2 tokens. Perplexity = exp(mean negative log-likelihood).
/// With --stride S, Hugging Face's strided rule instead (as `ember score`): windows of --context
/// tokens start S tokens apart and every token after the first is scored once (with S = context
/// the windows do not overlap and each window's first token is not scored, as in that rule).
/// --kl-base BASE.ember runs BASE on the same windows and reports KL(base || model) of the
/// next-token distributions over the scored positions (mean and 99th percentile, the percentile
/// interpolated as llama.cpp does) and how often both models' top-1 tokens agree.
#[argh(subcommand, name = "perplexity")]
pub(crate) struct PerplexityArgs {
    /// the model file (.ember)
    #[argh(positional)]
    model: PathBuf,
    /// text to evaluate; `-` reads it from standard input
    #[argh(option)]
    text: Option<String>,
    /// a file holding the text to evaluate (`-`: standard input)
    #[argh(option)]
    file: Option<PathBuf>,
    /// token ids to evaluate instead of a text, e.g. 15496,11,314 (no BOS is added)
    #[argh(option)]
    tokens: Option<String>,
    /// window length in tokens (default: the model's context)
    #[argh(option)]
    context: Option<usize>,
    /// the strided rule of Hugging Face: tokens between the starts of two windows, 1..=context
    /// (default: llama-perplexity's non-overlapping windows scored on their second half)
    #[argh(option)]
    stride: Option<usize>,
    /// a base model (e.g. the f32 export) to compare with: adds kl_mean, kl_p99, top1_agreement
    #[argh(option)]
    kl_base: Option<PathBuf>,
    /// the model's KV cache element type: auto, f32, f16 or int8 (default auto: f32 for an f32
    /// model, f16 for the others); the --kl-base model keeps auto, so `--kv int8 --kl-base`
    /// with the same file measures what the int8 cache changes
    #[argh(option, default = "String::from(\"auto\")")]
    kv: String,
    /// worker threads (default: one per core)
    #[argh(option)]
    threads: Option<usize>,
    /// print one JSON object (perplexity, loss, tokens, windows, context, rule, and the KL keys)
    #[argh(switch)]
    json: bool,
}

/// One window: the ids `ids[start..end]` fed from an empty cache (the first replaced by `bos`
/// when set); the logits at window positions `first..end-start-1` are scored.
struct Window {
    start: usize,
    end: usize,
    first: usize,
    bos: Option<u32>,
}

/// The windows of llama-perplexity's rule for `n` tokens and window `t` (see `--help`).
fn llama_windows(n: usize, t: usize, bos: Option<u32>) -> Vec<Window> {
    (0..n / t)
        .map(|i| Window {
            start: i * t,
            end: (i + 1) * t,
            first: t / 2,
            bos,
        })
        .collect()
}

/// The windows of Hugging Face's strided rule: every token after the first is scored once, from
/// at least `t - stride` tokens before it (the first window: from all before it); with
/// `stride == t`, each window's first token is not scored.
fn strided_windows(n: usize, t: usize, stride: usize) -> Vec<Window> {
    let mut v = Vec::new();
    let (mut start, mut scored) = (0, 0);
    loop {
        let end = (start + t).min(n);
        // Position p's logits predict ids[p + 1]; positions before `scored` are done.
        v.push(Window {
            start,
            end,
            first: scored.max(start) - start,
            bos: None,
        });
        scored = end - 1;
        if end == n {
            return v;
        }
        start += stride;
    }
}

/// Log-softmax of `logits` into `out`, in f64.
fn log_softmax(logits: &[f32], out: &mut Vec<f64>) {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    out.clear();
    out.extend(logits.iter().map(|&v| v as f64 - lse));
}

/// The index of the largest value (the first on ties).
fn argmax64(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// llama-perplexity's percentile: linear interpolation between the sorted values around
/// `fraction × (n − 1)`.
fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let Some(&last) = sorted.last() else {
        return f64::NAN;
    };
    let p = fraction * (sorted.len() - 1) as f64;
    let i = p as usize;
    let f = p - i as f64;
    let next = sorted.get(i + 1).copied().unwrap_or(last);
    (1.0 - f) * sorted[i] + f * next
}

pub(crate) fn perplexity(a: PerplexityArgs) -> Result<()> {
    let model = open(&a.model)?;
    if !matches!(model.task(), Task::LanguageModel) {
        return Err("this model is a classifier: perplexity needs a language model".into());
    }
    let threads = threads(a.threads)?;
    let (mut ids, text) = prompt_ids(
        &model,
        &a.text,
        &a.tokens,
        a.file.as_deref(),
        "--text",
        "--file",
    )?;
    // The BOS the model's tokenizer puts first (llama.cpp's add_bos), for text input only.
    let bos = match (&text, tokenizer_of(&model)?) {
        (Some(_), Some(tok)) => match tok.bos_ids() {
            [b] => Some(*b),
            _ => None,
        },
        _ => None,
    };
    if let Some(b) = bos {
        if ids.first() != Some(&b) {
            ids.insert(0, b);
        }
    }
    let opts = SessionOptions {
        threads,
        context: a.context,
        kv_dtype: kv_dtype(&a.kv)?,
        ..SessionOptions::default()
    };
    let mut session = Session::new(&model, &opts).map_err(|e| usage(format!("--{e}")))?;
    let t = session.context();
    let base = a.kl_base.as_deref().map(open).transpose()?;
    let mut base_session = match &base {
        Some(b) => {
            if !matches!(b.task(), Task::LanguageModel) {
                return Err("--kl-base: the base model is a classifier".into());
            }
            if b.config().vocab_size != model.config().vocab_size {
                return Err(format!(
                    "--kl-base: the base model's vocabulary has {} ids, the model's {}",
                    b.config().vocab_size,
                    model.config().vocab_size
                )
                .into());
            }
            let o = SessionOptions {
                context: Some(t),
                kv_dtype: KvDtype::Auto,
                ..opts.clone()
            };
            Some(Session::new(b, &o).map_err(|e| format!("--kl-base: {e}"))?)
        }
        None => None,
    };
    let windows = match a.stride {
        None => {
            if t < 3 {
                return Err(usage(
                    "--context: a window needs at least 3 tokens (its second half is scored)",
                ));
            }
            if ids.len() < 2 * t {
                return Err(format!(
                    "the text has {} tokens: perplexity with a context of {t} needs at least {} \
                     (two windows); give a longer text or a smaller --context",
                    ids.len(),
                    2 * t
                )
                .into());
            }
            llama_windows(ids.len(), t, bos)
        }
        Some(s) => {
            if s == 0 || s > t {
                return Err(usage(format!(
                    "--stride must be in 1..={t} (at most the window of {t} tokens)"
                )));
            }
            if ids.len() < 2 {
                return Err(
                    "perplexity needs at least 2 tokens (each is predicted from the ones before)"
                        .into(),
                );
            }
            if t < 2 {
                return Err(usage("--context: a window needs at least 2 tokens"));
            }
            strided_windows(ids.len(), t, s)
        }
    };

    let v = model.config().vocab_size;
    let mut nll = 0.0f64;
    let mut count = 0usize;
    let mut kls: Vec<f64> = Vec::new();
    let mut same_top = 0usize;
    let (mut lp, mut lp_base) = (Vec::with_capacity(v), Vec::with_capacity(v));
    let mut input = Vec::with_capacity(t);
    let progress = std::io::stderr().is_terminal() && windows.len() > 1;
    for (wi, w) in windows.iter().enumerate() {
        input.clear();
        input.extend_from_slice(&ids[w.start..w.end]);
        if let (Some(b), Some(first)) = (w.bos, input.first_mut()) {
            *first = b;
        }
        session.reset();
        if let Some(bs) = base_session.as_mut() {
            bs.reset();
        }
        if w.first > 0 {
            session
                .prefill(&input[..w.first])
                .map_err(|e| e.to_string())?;
            if let Some(bs) = base_session.as_mut() {
                bs.prefill(&input[..w.first])
                    .map_err(|e| format!("--kl-base: {e}"))?;
            }
        }
        for j in w.first..input.len() - 1 {
            let logits = session.step(input[j]).map_err(|e| e.to_string())?;
            let target = ids[w.start + j + 1] as usize;
            if target >= v {
                return Err(format!(
                    "token id {target} is out of range (the vocabulary has {v} ids)"
                )
                .into());
            }
            log_softmax(logits, &mut lp);
            nll -= lp[target];
            count += 1;
            if let Some(bs) = base_session.as_mut() {
                let bl = bs.step(input[j]).map_err(|e| format!("--kl-base: {e}"))?;
                log_softmax(bl, &mut lp_base);
                let kl: f64 = lp_base
                    .iter()
                    .zip(&lp)
                    .map(|(&pb, &pm)| pb.exp() * (pb - pm))
                    .sum();
                kls.push(kl.max(0.0));
                same_top += usize::from(argmax64(&lp) == argmax64(&lp_base));
            }
        }
        if progress {
            eprint!("\rwindow {} of {}", wi + 1, windows.len());
        }
    }
    if progress {
        eprintln!();
    }
    let loss = nll / count as f64;
    let ppl = loss.exp();
    let rule = if a.stride.is_some() {
        "strided"
    } else {
        "llama-perplexity"
    };
    let kl = (!kls.is_empty()).then(|| {
        let mean = kls.iter().sum::<f64>() / kls.len() as f64;
        kls.sort_by(f64::total_cmp);
        let p99 = percentile(&kls, 0.99);
        (mean, p99, same_top as f64 / kls.len() as f64)
    });
    if a.json {
        let mut j = serde_json::json!({
            "perplexity": ppl,
            "loss": loss,
            "tokens": count,
            "windows": windows.len(),
            "context": t,
            "rule": rule,
        });
        if let Some((mean, p99, top1)) = kl {
            j["kl_mean"] = mean.into();
            j["kl_p99"] = p99.into();
            j["top1_agreement"] = top1.into();
        }
        println!("{j}");
        return Ok(());
    }
    println!(
        "perplexity {ppl:.4}  loss {loss:.6}  over {count} scored tokens in {} windows of {t} \
         tokens ({rule})",
        windows.len()
    );
    if let Some((mean, p99, top1)) = kl {
        println!(
            "KL(base || model) mean {mean:.6}  p99 {p99:.6}  top-1 agreement {:.2} %",
            100.0 * top1
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_rule_scores_the_second_half_of_whole_windows() {
        let w = llama_windows(21, 8, Some(7));
        assert_eq!(w.len(), 2);
        assert_eq!((w[1].start, w[1].end, w[1].first), (8, 16, 4));
        // Scored per window: context - 1 - context/2.
        assert_eq!(w[0].end - w[0].start - 1 - w[0].first, 3);
    }

    #[test]
    fn strided_rule_scores_every_token_once() {
        for (n, t, s) in [(20, 8, 3), (20, 8, 7), (5, 8, 4), (17, 4, 1)] {
            let w = strided_windows(n, t, s);
            let scored: usize = w.iter().map(|w| w.end - w.start - 1 - w.first).sum();
            assert_eq!(scored, n - 1, "n {n} t {t} s {s}");
        }
        // Stride = context: windows do not overlap, and (as in Hugging Face's loop) the first
        // token of each window has nothing before it in its window.
        let w = strided_windows(20, 8, 8);
        let scored: usize = w.iter().map(|w| w.end - w.start - 1 - w.first).sum();
        assert_eq!((w.len(), scored), (3, 17));
    }

    #[test]
    fn percentile_interpolates_as_llama_cpp() {
        let v: Vec<f64> = (0..101).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert!((percentile(&[0.0, 1.0], 0.99) - 0.99).abs() < 1e-12);
    }
}
