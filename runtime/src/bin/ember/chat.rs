//! `ember chat`: a conversation with a model.

use super::*;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(FromArgs, Debug)]
/// Chat with an instruction-tuned model: each line you type is wrapped in the model's chat
/// template (a Hugging Face model's own, rendered as transformers does, with answers ending at its
/// end-of-turn tokens) or prompt template (sent as plain text when it has neither), and the
/// conversation stays in the context.
/// When the next turn (your line, and room for the answer: --max-tokens, at most half the context)
/// does not fit, the oldest turns are dropped (a note says so on stderr) and the rest is read
/// again; an answer that reaches the end of the context stops there. --system TEXT opens the
/// conversation and is always kept: the prompt templates have no slot for it, so it goes first as
/// plain text, followed by a blank line. At the prompt: /help, /reset (forget the conversation),
/// /save FILE (write the transcript), /exit or /quit (or Ctrl-D); an empty line does nothing.
/// Ctrl-C stops an answer and returns to the prompt; at the prompt it quits (exit code 130).
#[argh(subcommand, name = "chat")]
pub(crate) struct ChatArgs {
    /// the model file (.ember)
    #[argh(positional)]
    model: PathBuf,
    /// tokens to generate per answer at most (default 256; never more than the context has left)
    #[argh(option, default = "256")]
    max_tokens: usize,
    /// sampling temperature; 0 = greedy (default 0)
    #[argh(option, default = "0.0")]
    temperature: f32,
    /// keep only the k most likely tokens
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
    /// a system text that opens the conversation (kept when old turns are dropped)
    #[argh(option)]
    system: Option<String>,
    /// worker threads (default: one per core)
    #[argh(option)]
    threads: Option<usize>,
    /// print one JSON object per answer (JSON Lines: text, tokens, generated_tokens, stop: "eos",
    /// "length" or "interrupted", dropped_turns, ...) instead of the streamed text
    #[argh(switch)]
    json: bool,
}

/// Set while an answer is being generated: a Ctrl-C then stops the answer, not the program.
static ANSWERING: AtomicBool = AtomicBool::new(false);
/// Set by a Ctrl-C during an answer; the generate callback sees it and stops.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Ctrl-C: during an answer, stop it (the callback polls [`INTERRUPTED`]); at the prompt, or a
/// second time before the answer has stopped, quit with exit code 130 (the one place outside
/// `main` that exits: the main thread is blocked reading the terminal).
fn install_ctrl_c() {
    let r = ctrlc::set_handler(|| {
        if ANSWERING.load(Ordering::SeqCst) && !INTERRUPTED.swap(true, Ordering::SeqCst) {
            return;
        }
        eprintln!();
        std::process::exit(130);
    });
    if let Err(e) = r {
        eprintln!("ember: warning: Ctrl-C will end the program, not the answer: {e}");
    }
}

const HELP: &str = "commands: /help (this), /reset (forget the conversation), /save FILE (write \
                    the transcript), /exit or /quit (or Ctrl-D); Ctrl-C stops an answer";

/// One exchange, for `/save`.
struct Turn {
    user: String,
    answer: String,
}

pub(crate) fn chat(a: ChatArgs) -> Result<()> {
    let model = open(&a.model)?;
    if !matches!(model.task(), Task::LanguageModel) {
        return Err("this model is a classifier: use `ember classify`".into());
    }
    let tok = tokenizer_of(&model)?.ok_or("this model file has no tokenizer, so it cannot chat")?;
    let template = model.prompt_template().cloned();
    let mut templated = super::chat_template::load(&model, tok, a.system.clone())?;
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
    if a.max_tokens == 0 {
        return Err(usage("--max-tokens must be at least 1"));
    }
    let opts = SessionOptions {
        threads: threads(a.threads)?,
        ..SessionOptions::default()
    };
    let mut session = Session::new(&model, &opts).map_err(|e| e.to_string())?;
    let context = session.context();
    let mut scratch = EncodeScratch::new();
    let system: Vec<u32> = match &a.system {
        Some(s) if s.is_empty() => return Err(usage("--system is empty")),
        // A chat template places the system message itself.
        Some(_) if templated.is_some() => Vec::new(),
        Some(s) => {
            let mut ids = Vec::new();
            tok.encode(
                &format!("{s}\n\n"),
                SpecialTokens::AsText,
                &mut scratch,
                &mut ids,
            );
            if ids.len() > context / 2 {
                return Err(usage(format!(
                    "--system is {} tokens: at most half the context ({} tokens) can go to it",
                    ids.len(),
                    context / 2
                )));
            }
            ids
        }
        None => Vec::new(),
    };
    // Room kept for an answer when deciding which turns to drop.
    let reserve = a.max_tokens.min(context / 2).max(1);
    let stdin = std::io::stdin();
    // Every token covers at least one byte and at most `max_token_len`, so a longer line can
    // never fit in the context: reading stops there (memory stays bounded on endless input).
    let max_line = context
        .saturating_mul(tok.max_token_len().max(1))
        .max(1 << 16);
    // Notices and the "> " prompt only for a person at a terminal: piped input gets clean stderr.
    let interactive = stdin.is_terminal();
    if interactive && template.is_none() && templated.is_none() {
        eprintln!("(this model has no prompt template: your lines are continued as plain text)");
    }
    if interactive {
        eprintln!("({HELP})");
    }
    install_ctrl_c();
    let mut stream = TextStream::new(Some(tok), &[], !a.json);
    // Tokens of each turn still in the context, oldest first (after the system text).
    let mut turn_lens: VecDeque<usize> = VecDeque::new();
    let mut transcript: Vec<Turn> = Vec::new();
    let mut ids = Vec::new();
    let mut feed: Vec<u32> = Vec::with_capacity(context);
    let mut line = String::new();
    loop {
        if interactive {
            eprint!("> ");
        }
        line.clear();
        let n = Read::take(stdin.lock(), max_line as u64 + 1)
            .read_line(&mut line)
            .map_err(|e| format!("reading stdin: {e}"))?;
        if n == 0 {
            if interactive {
                eprintln!(); // Ctrl-D: leave the shell's prompt on a line of its own
            }
            break;
        }
        if line.len() > max_line {
            return Err(format!(
                "a line of more than {max_line} bytes cannot fit in the context of {context} tokens"
            )
            .into());
        }
        let msg = line.trim_end_matches(['\n', '\r']);
        if msg.trim().is_empty() {
            continue;
        }
        match msg.split_whitespace().next().unwrap_or("") {
            "/exit" | "/quit" => break,
            "/help" => {
                eprintln!("({HELP})");
                continue;
            }
            "/reset" => {
                session.reset();
                if let Some(t) = &mut templated {
                    t.reset();
                }
                turn_lens.clear();
                transcript.clear();
                eprintln!("(the conversation is forgotten)");
                continue;
            }
            "/save" => {
                let path = msg.trim_start().strip_prefix("/save").unwrap_or("").trim();
                match save(path, a.system.as_deref(), &transcript) {
                    Ok(()) => eprintln!("(saved the conversation to {path})"),
                    Err(e) => eprintln!("(not saved: {e})"),
                }
                continue;
            }
            c if c.starts_with('/') && c.len() > 1 && !c[1..].contains('/') => {
                eprintln!("(unknown command {c}: {HELP})");
                continue;
            }
            _ => {}
        }
        let (before, dropped) = match &mut templated {
            Some(t) => match t.prepare(&mut session, msg, reserve, tok, &mut scratch, &mut feed)? {
                Ok(dropped) => {
                    ids.clear();
                    ids.extend_from_slice(&feed);
                    if dropped > 0 {
                        eprintln!(
                            "(dropped the oldest turns to fit the context of {context} tokens)"
                        );
                    }
                    (session.position(), dropped)
                }
                Err(note) => {
                    eprintln!("{note}");
                    continue;
                }
            },
            None => {
                let prompt = match &template {
                    Some(t) => t.render(msg, ""),
                    None => msg.to_string(),
                };
                ids.clear();
                tok.encode(&prompt, SpecialTokens::AsText, &mut scratch, &mut ids);
                if system.len() + ids.len() >= context {
                    eprintln!(
                        "(that line is {} tokens: with the answer it cannot fit in the context of \
                     {context} tokens; shorten it)",
                        ids.len()
                    );
                    continue;
                }
                // Drop the oldest turns until this one fits with room for its answer.
                let mut dropped = 0;
                let mut dropped_tokens = 0;
                let held = |dropped_tokens: usize| session.position() - dropped_tokens;
                while !turn_lens.is_empty() && held(dropped_tokens) + ids.len() + reserve > context
                {
                    dropped_tokens += turn_lens.pop_front().unwrap_or(0);
                    dropped += 1;
                }
                feed.clear();
                if session.position() == 0 || dropped > 0 {
                    feed.extend_from_slice(&system);
                    let kept = session
                        .tokens()
                        .get(system.len() + dropped_tokens..)
                        .unwrap_or(&[]);
                    feed.extend_from_slice(kept);
                    session.reset();
                    if dropped > 0 {
                        eprintln!(
                            "(dropped the oldest turns to fit the context of {context} tokens)"
                        );
                    }
                }
                let before = session.position() + feed.len();
                feed.extend_from_slice(&ids);
                (before, dropped)
            }
        };
        let limits = GenerateOptions {
            // Never past the end of the context: the answer stops there instead of failing.
            max_tokens: a.max_tokens.min(context - session.position() - feed.len()),
            stop: if templated.is_some() {
                Stop::None
            } else {
                Stop::ModelEndOfText
            },
            slide: false,
        };
        let eos: &[u32] = templated.as_ref().map_or(&[], |t| &t.eos);
        let mut hit_eos = false;
        stream.clear();
        let mut tokens = Vec::new();
        let mut write_error = None;
        INTERRUPTED.store(false, Ordering::SeqCst);
        ANSWERING.store(true, Ordering::SeqCst);
        let result = session.generate(&feed, &sampling, &limits, |t| {
            if eos.contains(&t) {
                hit_eos = true;
                return ControlFlow::Break(());
            }
            tokens.push(t);
            if let Err(e) = stream.push(t) {
                write_error = Some(e);
                return ControlFlow::Break(());
            }
            if INTERRUPTED.load(Ordering::SeqCst) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        ANSWERING.store(false, Ordering::SeqCst);
        let interrupted = INTERRUPTED.load(Ordering::SeqCst);
        if let Some(e) = write_error.or_else(|| stream.finish().err()) {
            stdout_failed(&e);
        }
        let stats = result.map_err(|e| e.to_string())?;
        match &mut templated {
            // The next turn re-renders the conversation with this answer in it.
            Some(t) => t.answered(&stream.text),
            // Keep the answer's end token in the cache so the next turn follows a finished answer.
            None => {
                if let Some(eot) = tok.eot_id() {
                    if session.position() < context {
                        session.step(eot).map_err(|e| e.to_string())?;
                    }
                }
                turn_lens.push_back(session.position() - before);
            }
        }
        let stop = match stats.stop {
            _ if interrupted => "interrupted",
            _ if hit_eos => "eos",
            StopReason::EndOfText => "eos",
            StopReason::MaxTokens => "length",
            StopReason::Callback => "stop",
        };
        if a.json {
            let j = serde_json::json!({
                "text": stream.text,
                "tokens": tokens,
                "generated_tokens": stats.generated_tokens - usize::from(hit_eos),
                "prompt_tokens": ids.len(),
                "context_tokens": session.position(),
                "dropped_turns": dropped,
                "stop": stop,
            });
            println!("{j}");
        } else {
            println!();
            if interrupted {
                eprintln!("(stopped)");
            } else if stats.stop == StopReason::MaxTokens && limits.max_tokens < a.max_tokens {
                eprintln!("(the answer reached the end of the context of {context} tokens)");
            }
        }
        transcript.push(Turn {
            user: msg.to_string(),
            answer: stream.text.clone(),
        });
    }
    Ok(())
}

/// Writes the transcript to `path` atomically (a temporary file beside it, then a rename).
fn save(path: &str, system: Option<&str>, transcript: &[Turn]) -> std::result::Result<(), String> {
    if path.is_empty() {
        return Err("give a file name: /save FILE".into());
    }
    let mut text = String::new();
    if let Some(s) = system {
        text.push_str(&format!("system: {s}\n\n"));
    }
    for t in transcript {
        text.push_str(&format!("> {}\n{}\n\n", t.user, t.answer));
    }
    let target = Path::new(path);
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = target
        .file_name()
        .ok_or_else(|| format!("{path}: not a file name"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|_| std::fs::rename(&tmp, target)) {
        std::fs::remove_file(&tmp).ok();
        return Err(format!("{path}: {e}"));
    }
    Ok(())
}
