//! `ember chat`: a conversation with a model.

use super::*;

#[derive(FromArgs, Debug)]
/// Chat with an instruction-tuned model: each line you type is wrapped in the model's prompt
/// template; the conversation stays in the KV cache. An empty line or end of input quits.
#[argh(subcommand, name = "chat")]
pub(crate) struct ChatArgs {
    /// the model file (.ember)
    #[argh(positional)]
    model: PathBuf,
    /// tokens to generate per answer at most (default 256)
    #[argh(option, default = "256")]
    max_tokens: usize,
    /// sampling temperature; 0 = greedy (default 0)
    #[argh(option, default = "0.0")]
    temperature: f32,
    /// keep only the k most likely tokens
    #[argh(option)]
    top_k: Option<usize>,
    /// random seed (default 123)
    #[argh(option, default = "123")]
    seed: u64,
    /// worker threads (default: one per core)
    #[argh(option, default = "0")]
    threads: usize,
}

pub(crate) fn chat(a: ChatArgs) -> Result<()> {
    let model = open(&a.model)?;
    let tok = tokenizer_of(&model)?.ok_or("this model file has no tokenizer, so it cannot chat")?;
    let template = model.prompt_template().cloned();
    let sampling = Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        seed: a.seed,
        ..Sampling::default()
    };
    sampling
        .validate(model.n_outputs())
        .map_err(|e| format!("--{e}"))?;

    let opts = SessionOptions {
        threads: a.threads,
        ..SessionOptions::default()
    };
    let mut session = Session::new(&model, &opts).map_err(|e| e.to_string())?;
    let limits = GenerateOptions {
        max_tokens: a.max_tokens,
        stop_token: tok.eot_id(),
        slide: false,
    };
    let mut scratch = EncodeScratch::new();
    let mut ids = Vec::new();
    let mut decoder = StreamDecoder::new(tok);
    let stdin = std::io::stdin();
    let mut line = String::new();
    // Every token covers at least one byte and at most `max_token_len`, so a longer line can
    // never fit in the context: reading stops there (memory stays bounded on endless input).
    let max_line = session
        .context()
        .saturating_mul(tok.max_token_len().max(1))
        .max(1 << 16);
    // Notices and the "> " prompt only for a person at a terminal: piped input gets clean stderr.
    let interactive = std::io::IsTerminal::is_terminal(&stdin);
    if interactive && template.is_none() {
        eprintln!("(this model has no prompt template: your lines are continued as plain text)");
    }
    loop {
        if interactive {
            eprint!("> ");
        }
        line.clear();
        if std::io::Read::take(stdin.lock(), max_line as u64 + 1)
            .read_line(&mut line)
            .map_err(|e| format!("reading stdin: {e}"))?
            == 0
        {
            break;
        }
        if line.len() > max_line {
            return Err(format!(
                "a line of more than {max_line} bytes cannot fit in the context of {} tokens",
                session.context()
            ));
        }
        let msg = line.trim_end_matches(['\n', '\r']);
        if msg.is_empty() {
            break;
        }
        let prompt = match &template {
            Some(t) => t.render(msg, ""),
            None => msg.to_string(),
        };
        ids.clear();
        tok.encode(&prompt, SpecialTokens::AsText, &mut scratch, &mut ids);
        if session.position() + ids.len() + a.max_tokens > session.context() {
            eprintln!("(the context is full: starting a new conversation)");
            session.reset();
        }
        let mut out = std::io::stdout();
        session
            .generate(&ids, &sampling, &limits, |t| {
                out.write_all(decoder.push(t).unwrap_or("").as_bytes()).ok();
                out.flush().ok();
                ControlFlow::Continue(())
            })
            .map_err(|e| e.to_string())?;
        writeln!(out).ok();
        // Keep the answer's end token in the cache so the next turn follows a finished answer.
        if let Some(eot) = tok.eot_id() {
            if session.position() < session.context() {
                session.step(eot).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}
