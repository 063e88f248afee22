//! `ember generate`: continue a prompt, streaming text.

use super::*;

#[derive(FromArgs, Debug)]
/// Continue a prompt, streaming text to stdout. `--temperature 0` (the default) is greedy, as in
/// the book; generation stops at <|endoftext|>, a --stop string, or after --max-tokens.
#[argh(subcommand, name = "generate")]
pub(crate) struct GenerateArgs {
    /// the model file (.ember)
    #[argh(positional)]
    model: PathBuf,
    /// prompt text (encoded with the model's tokenizer)
    #[argh(option)]
    prompt: Option<String>,
    /// prompt as token ids, e.g. 15496,11,314
    #[argh(option)]
    tokens: Option<String>,
    /// tokens to generate at most (default 50)
    #[argh(option, default = "50")]
    max_tokens: usize,
    /// sampling temperature; 0 = greedy (default 0)
    #[argh(option, default = "0.0")]
    temperature: f32,
    /// keep only the k most likely tokens (ties kept)
    #[argh(option)]
    top_k: Option<usize>,
    /// keep the most likely tokens up to this probability mass
    #[argh(option)]
    top_p: Option<f32>,
    /// penalise tokens already in the context (1 = off, default 1)
    #[argh(option, default = "1.0")]
    repetition_penalty: f32,
    /// random seed (default 123)
    #[argh(option, default = "123")]
    seed: u64,
    /// stop when the generated text contains this string
    #[argh(option)]
    stop: Option<String>,
    /// keep generating past <|endoftext|>
    #[argh(switch)]
    ignore_eot: bool,
    #[argh(option, default = "0")]
    /// worker threads (default: one per core)
    threads: usize,
    /// context length of the session (default: the model's)
    #[argh(option)]
    context: Option<usize>,
    /// KV cache element type: auto, f32 or f16 (default auto: f32 for an f32 model, f16 for f16
    /// and int8 ones)
    #[argh(option, default = "String::from(\"auto\")")]
    kv: String,
    /// when the context is full, drop the oldest tokens and continue
    #[argh(switch)]
    slide: bool,
    /// print one JSON object (tokens, text, prefill_tokens_per_s, decode_tokens_per_s, ...)
    #[argh(switch)]
    json: bool,
}

pub(crate) fn generate(a: GenerateArgs) -> Result<()> {
    let model = open(&a.model)?;
    if !matches!(model.task(), Task::LanguageModel) {
        return Err("this model is a classifier: use `ember classify`".into());
    }
    let prompt = prompt_ids(&model, &a.prompt, &a.tokens, "--prompt")?;
    let tok = tokenizer_of(&model)?;
    let sampling = Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
    };
    sampling
        .validate(model.n_outputs())
        .map_err(|e| format!("--{e}"))?;
    let opts = SessionOptions {
        context: a.context,
        kv_dtype: kv_dtype(&a.kv)?,
        threads: a.threads,
        ..SessionOptions::default()
    };
    let mut session = Session::new(&model, &opts).map_err(|e| format!("--{e}"))?;
    // Refused before the prompt is echoed (no dropping of old tokens makes it fit).
    if prompt.len() > session.context() {
        return Err(format!(
            "the prompt is {} tokens, more than the context of {} tokens: shorten it",
            prompt.len(),
            session.context()
        ));
    }
    let limits = GenerateOptions {
        max_tokens: a.max_tokens,
        stop_token: if a.ignore_eot {
            None
        } else {
            tok.and_then(Tokenizer::eot_id)
        },
        slide: a.slide,
    };
    // Everything the loop needs is allocated here: the decoder, the output buffers.
    let mut decoder = tok.map(StreamDecoder::new);
    let mut text = String::with_capacity(
        a.max_tokens.min(1 << 16) * tok.map_or(16, |t| t.max_token_len().min(64)),
    );
    let mut ids = Vec::with_capacity(a.max_tokens.min(1 << 20));
    // `Stdout` (not a lock) because the callback runs on the session's pool thread.
    let mut out = std::io::stdout();
    if !a.json {
        match (tok, &a.prompt) {
            (Some(_), Some(p)) => write!(out, "{p}").ok(),
            _ => None,
        };
        out.flush().ok();
    }
    let stop = a.stop.as_deref().filter(|s| !s.is_empty());
    let has_text = decoder.is_some();
    let mut write_error = None;
    let stats = session
        .generate(&prompt, &sampling, &limits, |t| {
            ids.push(t);
            let piece = match decoder.as_mut() {
                Some(d) => d.push(t).unwrap_or(""),
                None => "",
            };
            let before = text.len();
            text.push_str(piece);
            if !a.json {
                let r = if has_text {
                    out.write_all(piece.as_bytes())
                } else {
                    writeln!(out, "{t}")
                };
                if let Err(e) = r.and_then(|_| out.flush()) {
                    write_error = Some(e);
                    return ControlFlow::Break(());
                }
            }
            match stop {
                // Only the tail can newly contain the stop string.
                Some(s) if text[before.saturating_sub(s.len())..].contains(s) => {
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            }
        })
        .map_err(|e| e.to_string())?;
    if let Some(e) = write_error {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(format!("writing to stdout: {e}"));
        }
    }
    let prefill_tps = stats.prompt_tokens as f64 / stats.prefill_seconds.max(1e-9);
    let decode_tps = stats.generated_tokens as f64 / stats.decode_seconds.max(1e-9);
    if a.json {
        let mut j = String::new();
        let ids_s: Vec<String> = ids.iter().map(u32::to_string).collect();
        let prompt_s: Vec<String> = prompt.iter().map(u32::to_string).collect();
        write!(
            j,
            "{{\"tokens\":[{}],\"text\":{},\"prompt_tokens\":[{}],\"generated_tokens\":{},\"prefill_tokens_per_s\":{},\"decode_tokens_per_s\":{},\"stop\":\"{:?}\",\"kernels\":\"{}\"}}",
            ids_s.join(","),
            json_str(&text),
            prompt_s.join(","),
            stats.generated_tokens,
            num(prefill_tps),
            num(decode_tps),
            stats.stop,
            session.kernels().name()
        )
        .ok();
        println!("{j}");
    } else {
        writeln!(out).ok();
        eprintln!(
            "[{} prompt tokens at {:.1} tokens/s, {} generated at {:.1} tokens/s, {}]",
            stats.prompt_tokens,
            prefill_tps,
            stats.generated_tokens,
            decode_tps,
            session.kernels().name()
        );
    }
    Ok(())
}
