//! `ember generate`: continue a prompt, streaming text.

use super::*;

#[derive(FromArgs, Debug)]
/// Continue a prompt, streaming text to stdout. `--temperature 0` (the default) is greedy, as in
/// the book; generation stops at <|endoftext|>, a --stop string (not printed), or after
/// --max-tokens. When the context fills up, the oldest half of it is dropped and generation goes
/// on (as the book's loop crops its context); --no-slide makes that an error instead.
#[argh(subcommand, name = "generate")]
pub(crate) struct GenerateArgs {
    /// the model file (.ember)
    #[argh(positional)]
    model: PathBuf,
    /// prompt text (encoded with the model's tokenizer); `-` reads it from standard input
    #[argh(option)]
    prompt: Option<String>,
    /// a file holding the prompt text
    #[argh(option)]
    prompt_file: Option<PathBuf>,
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
    /// stop when the generated text contains this string (repeat for several); the text ends
    /// just before it
    #[argh(option)]
    stop: Vec<String>,
    /// keep generating past <|endoftext|>
    #[argh(switch)]
    ignore_eot: bool,
    /// worker threads (default: one per core)
    #[argh(option)]
    threads: Option<usize>,
    /// context length of the session (default: the model's)
    #[argh(option)]
    context: Option<usize>,
    /// KV cache element type: auto, f32, f16 or int8 (blocks of 32 with a scale each: 56 % of
    /// f16's memory) (default auto: f32 for an f32 model, f16 for the others)
    #[argh(option, default = "String::from(\"auto\")")]
    kv: String,
    /// accepted for compatibility: sliding is the default
    #[argh(switch)]
    slide: bool,
    /// fail with an error when the context is full instead of sliding
    #[argh(switch)]
    no_slide: bool,
    /// print one JSON object (tokens, text, stop: "eos", "stop" or "length", stop_string,
    /// prefill_tokens_per_s, decode_tokens_per_s, ...)
    #[argh(switch)]
    json: bool,
}

/// The `stop` value of `--json` (OpenAI's `finish_reason` words).
fn stop_name(stop: StopReason) -> &'static str {
    match stop {
        StopReason::EndOfText => "eos",
        StopReason::MaxTokens => "length",
        // The callback stops only for a stop string (or a closed stdout: nothing is printed).
        StopReason::Callback => "stop",
    }
}

pub(crate) fn generate(a: GenerateArgs) -> Result<()> {
    let model = open(&a.model)?;
    if !matches!(model.task(), Task::LanguageModel) {
        return Err("this model is a classifier: use `ember classify`".into());
    }
    if a.slide && a.no_slide {
        return Err(usage("give --slide or --no-slide, not both"));
    }
    let threads = threads(a.threads)?;
    let (prompt, prompt_text) = prompt_ids(
        &model,
        &a.prompt,
        &a.tokens,
        a.prompt_file.as_deref(),
        "--prompt",
        "--prompt-file",
    )?;
    let tok = tokenizer_of(&model)?;
    if tok.is_none() && a.stop.iter().any(|s| !s.is_empty()) {
        return Err(usage(
            "--stop needs text, and this model file has no tokenizer",
        ));
    }
    let sampling = Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
    };
    sampling
        .validate(model.n_outputs())
        .map_err(|e| usage(format!("--{e}")))?;
    let opts = SessionOptions {
        context: a.context,
        kv_dtype: kv_dtype(&a.kv)?,
        threads,
        ..SessionOptions::default()
    };
    let mut session = Session::new(&model, &opts).map_err(|e| usage(format!("--{e}")))?;
    // Refused before the prompt is echoed (no dropping of old tokens makes it fit).
    if prompt.len() > session.context() {
        return Err(format!(
            "the prompt is {} tokens, more than the context of {} tokens: shorten it",
            prompt.len(),
            session.context()
        )
        .into());
    }
    let limits = GenerateOptions {
        max_tokens: a.max_tokens,
        stop: if a.ignore_eot {
            Stop::None
        } else {
            Stop::ModelEndOfText
        },
        slide: !a.no_slide,
    };
    let mut stream = TextStream::new(tok, &a.stop, !a.json);
    let mut ids = Vec::with_capacity(a.max_tokens.min(1 << 20));
    if !a.json {
        if let (Some(_), Some(p)) = (tok, &prompt_text) {
            let mut out = std::io::stdout();
            if let Err(e) = write!(out, "{p}").and_then(|_| out.flush()) {
                stdout_failed(&e);
            }
            stream.mid_line = !p.ends_with('\n');
        }
    }
    let mut write_error = None;
    let result = session.generate(&prompt, &sampling, &limits, |t| {
        ids.push(t);
        match stream.push(t) {
            Ok(flow) => flow,
            Err(e) => {
                write_error = Some(e);
                ControlFlow::Break(())
            }
        }
    });
    if let Some(e) = write_error.or_else(|| stream.finish().err()) {
        stdout_failed(&e);
    }
    let stats = match result {
        Ok(s) => s,
        Err(e) => {
            // The error goes to stderr on a line of its own, not glued onto the text.
            if stream.mid_line {
                println!();
            }
            return Err(match e {
                emberlm_runtime::RuntimeError::ContextFull { context } => format!(
                    "the context is full ({context} tokens) after {} generated tokens: leave out \
                     --no-slide to drop the oldest tokens and go on",
                    ids.len()
                ),
                e => e.to_string(),
            }
            .into());
        }
    };
    let prefill_tps = stats.prompt_tokens as f64 / stats.prefill_seconds.max(1e-9);
    let decode_tps = stats.generated_tokens as f64 / stats.decode_seconds.max(1e-9);
    if a.json {
        let j = serde_json::json!({
            "tokens": ids,
            "text": stream.text,
            "prompt_tokens": prompt,
            "generated_tokens": stats.generated_tokens,
            "prefill_tokens_per_s": prefill_tps,
            "decode_tokens_per_s": decode_tps,
            "stop": stop_name(stats.stop),
            "stop_string": stream.stopped_by,
            "kernels": session.kernels().name(),
        });
        println!("{j}");
    } else {
        println!();
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
