//! `ember`: run `.ember` models — generate, chat, score, classify, inspect, bench, tokenize, detokenize.
//!
//! Errors print one line, `ember: error: …`, and exit with code 1; `--help` on any command explains it.

use argh::FromArgs;
use emberlm_formats::config::GptConfig;
use emberlm_formats::ember::{Array, DType, Value};
use emberlm_formats::meta::{Readout, Task};
use emberlm_formats::tokenizer::{EncodeScratch, SpecialTokens, StreamDecoder, Tokenizer};
use emberlm_runtime::kernels::bandwidth::{self, Probe};
use emberlm_runtime::sampler::argmax;
use emberlm_runtime::{
    Classification, Classifier, GenerateOptions, KvDtype, Model, Sampling, Session, SessionOptions,
};
use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `println!` that never panics (std's panics when stdout is closed, e.g. `ember ... | head -1`):
/// a closed pipe ends the program quietly with success, as the reader asked for no more; any other
/// write error is one `ember: error:` line and exit code 1. Shadows std's macro in this file.
macro_rules! println {
    ($($arg:tt)*) => {{
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            stdout_failed(&e)
        }
    }};
}

/// Ends the program after a failed write to stdout (see `println!` above).
fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("ember: error: writing to stdout: {e}");
    std::process::exit(1);
}

#[derive(FromArgs, Debug)]
/// Run GPT-2 models stored in .ember files: generate text, chat, score, inspect and benchmark.
struct Cli {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Command {
    Generate(GenerateArgs),
    Chat(ChatArgs),
    Score(ScoreArgs),
    Classify(ClassifyArgs),
    Inspect(InspectArgs),
    Bench(BenchArgs),
    Tokenize(TokenizeArgs),
    Detokenize(DetokenizeArgs),
}

#[derive(FromArgs, Debug)]
/// Continue a prompt, streaming text to stdout. `--temperature 0` (the default) is greedy, as in
/// the book; generation stops at <|endoftext|>, a --stop string, or after --max-tokens.
#[argh(subcommand, name = "generate")]
struct GenerateArgs {
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

#[derive(FromArgs, Debug)]
/// Chat with an instruction-tuned model: each line you type is wrapped in the model's prompt
/// template; the conversation stays in the KV cache. An empty line or end of input quits.
#[argh(subcommand, name = "chat")]
struct ChatArgs {
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

#[derive(FromArgs, Debug)]
/// Score a text: mean next-token cross-entropy, perplexity and per-token log-probabilities.
#[argh(subcommand, name = "score")]
struct ScoreArgs {
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

#[derive(FromArgs, Debug)]
/// Classify texts with a classifier model (`ember-train finetune classify`): prints the label and
/// the probability of each label. The input is truncated to the model's training length and, with
/// readout `last`, padded to it, as the book's `classify_review` does.
#[argh(subcommand, name = "classify")]
struct ClassifyArgs {
    /// the model file (.ember)
    #[argh(positional)]
    model: PathBuf,
    /// text to classify (encoded with the model's tokenizer)
    #[argh(option)]
    text: Option<String>,
    /// token ids to classify, e.g. 15496,11,314
    #[argh(option)]
    tokens: Option<String>,
    /// a file with one text per line (blank lines are skipped; `-` reads standard input); prints
    /// one result per line
    #[argh(option)]
    file: Option<PathBuf>,
    /// worker threads (default: one per core)
    #[argh(option, default = "0")]
    threads: usize,
    /// print one JSON object (label, label_id, probabilities, logits, tokens); with --file, one
    /// object per line (JSON Lines) that also holds the line number
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs, Debug)]
/// Show a model file's metadata, tensors and sizes.
#[argh(subcommand, name = "inspect")]
struct InspectArgs {
    /// the model file (.ember)
    #[argh(positional)]
    model: PathBuf,
    /// print one JSON object
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs, Debug)]
/// Measure load time, prefill and decode speed, peak memory, and decode's fraction of the
/// machine's memory bandwidth. Give a model file, or --random SIZE to build one with random weights.
/// Decode runs in rounds of at least 16 tokens (at most 16 rounds) between passes of a 1 GiB
/// read-bandwidth probe, and each round is compared with the passes around it.
#[argh(subcommand, name = "bench")]
struct BenchArgs {
    /// the model file (.ember)
    #[argh(positional)]
    model: Option<PathBuf>,
    /// benchmark a random model of this size instead (124m, 355m, 774m, 1558m)
    #[argh(option)]
    random: Option<String>,
    /// dtype of the random model: f32, f16 or int8 (default int8)
    #[argh(option, default = "String::from(\"int8\")")]
    dtype: String,
    /// prompt tokens to prefill (default 128)
    #[argh(option, default = "128")]
    prompt_tokens: usize,
    /// tokens to decode (default 128)
    #[argh(option, default = "128")]
    gen_tokens: usize,
    /// worker threads (default: one per core)
    #[argh(option, default = "0")]
    threads: usize,
    /// KV cache element type: auto, f32 or f16 (default auto, as generate: f32 for an f32 model,
    /// f16 for f16 and int8 ones)
    #[argh(option, default = "String::from(\"auto\")")]
    kv: String,
    /// print one JSON object (prefill_tokens_per_s, decode_tokens_per_s, load_ms, peak_rss_bytes, ...)
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs, Debug)]
/// Print the token ids of a text (GPT-2's vocabulary when no model is given).
#[argh(subcommand, name = "tokenize")]
struct TokenizeArgs {
    /// a model file, or a tokenizer file from `ember-train tokenizer` (default: GPT-2's)
    #[argh(positional)]
    model: Option<PathBuf>,
    /// the text
    #[argh(option)]
    text: String,
    /// treat <|endoftext|> as plain text instead of the special token
    #[argh(switch)]
    no_special: bool,
    /// print one JSON object (tokens, count)
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs, Debug)]
/// Print the text of token ids (GPT-2's vocabulary when no model is given).
#[argh(subcommand, name = "detokenize")]
struct DetokenizeArgs {
    /// a model file, or a tokenizer file from `ember-train tokenizer` (default: GPT-2's)
    #[argh(positional)]
    model: Option<PathBuf>,
    /// comma-separated token ids, e.g. 15496,11,995
    #[argh(option)]
    ids: String,
    /// print one JSON object (text)
    #[argh(switch)]
    json: bool,
}

fn main() {
    let cli = parse_args();
    let result = match cli.command {
        Command::Generate(a) => generate(a),
        Command::Chat(a) => chat(a),
        Command::Score(a) => score(a),
        Command::Classify(a) => classify(a),
        Command::Inspect(a) => inspect(a),
        Command::Bench(a) => bench(a),
        Command::Tokenize(a) => tokenize(a),
        Command::Detokenize(a) => detokenize(a),
    };
    if let Err(e) = result {
        eprintln!("ember: error: {e}");
        std::process::exit(1);
    }
}

/// argh's `from_env` panics on arguments that are not UTF-8: check them first.
fn parse_args() -> Cli {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut strs = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        match a.to_str() {
            Some(s) => strs.push(s),
            None => {
                eprintln!(
                    "ember: error: argument {i} ({}) is not valid UTF-8",
                    a.to_string_lossy()
                );
                std::process::exit(1);
            }
        }
    }
    let cmd = Path::new(strs.first().copied().unwrap_or("ember"))
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("ember");
    match Cli::from_args(&[cmd], strs.get(1..).unwrap_or_default()) {
        Ok(cli) => cli,
        Err(early) => match early.status {
            Ok(()) => {
                println!("{}", early.output);
                std::process::exit(0);
            }
            Err(()) => {
                // One line: argh's message can span several.
                let msg: Vec<&str> = early.output.split_whitespace().collect();
                eprintln!(
                    "ember: error: {} (see `ember <command> --help`)",
                    msg.join(" ")
                );
                std::process::exit(1);
            }
        },
    }
}

type Result<T> = std::result::Result<T, String>;

fn open(path: &Path) -> Result<Model<'static>> {
    Model::open(path).map_err(|e| match e {
        // I/O errors already name the path.
        emberlm_runtime::RuntimeError::Format(emberlm_formats::ember::FormatError::Io {
            ..
        }) => e.to_string(),
        e => format!("{}: {e}", path.display()),
    })
}

fn tokenizer_of<'m>(model: &'m Model<'_>) -> Result<Option<&'m Tokenizer>> {
    model.tokenizer().map_err(|e| e.to_string())
}

fn parse_ids(s: &str, flag: &str) -> Result<Vec<u32>> {
    let ids: Vec<u32> = s
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u32>().map_err(|_| {
                format!("{flag}: {p:?} is not a token id (a whole number 0..=4294967295)")
            })
        })
        .collect::<Result<_>>()?;
    if ids.is_empty() {
        return Err(format!("{flag}: no token ids given"));
    }
    Ok(ids)
}

fn kv_dtype(s: &str) -> Result<KvDtype> {
    match s {
        "auto" => Ok(KvDtype::Auto),
        "f32" => Ok(KvDtype::F32),
        "f16" => Ok(KvDtype::F16),
        _ => Err(format!("--kv: {s:?} must be auto, f32 or f16")),
    }
}

/// The prompt's ids: `--prompt` through the model's tokenizer, or `--tokens`.
fn prompt_ids(
    model: &Model<'_>,
    text: &Option<String>,
    tokens: &Option<String>,
    flag: &str,
) -> Result<Vec<u32>> {
    match (text, tokens) {
        (Some(_), Some(_)) => Err(format!("give either {flag} or --tokens, not both")),
        (None, None) => Err(format!("give {flag} TEXT or --tokens 1,2,3")),
        (None, Some(t)) => parse_ids(t, "--tokens"),
        (Some(p), None) => {
            let tok = tokenizer_of(model)?.ok_or(
                "this model file has no tokenizer; pass token ids with --tokens instead"
                    .to_string(),
            )?;
            if p.is_empty() {
                return Err(format!("{flag} is empty"));
            }
            Ok(tok.encode_to_vec(p, SpecialTokens::Allow))
        }
    }
}

fn generate(a: GenerateArgs) -> Result<()> {
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

fn chat(a: ChatArgs) -> Result<()> {
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

fn score(a: ScoreArgs) -> Result<()> {
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

/// One classification as a JSON object; `line` is the input file's line number, if any.
fn classification_json(c: &Classification<'_>, line: Option<usize>) -> String {
    let probs: Vec<String> = c
        .labels
        .iter()
        .zip(c.probabilities)
        .map(|(l, &p)| format!("{}:{}", json_str(l), num32(p)))
        .collect();
    let logits: Vec<String> = c.logits.iter().map(|&v| num32(v)).collect();
    let mut o = String::from("{");
    if let Some(n) = line {
        let _ = write!(o, "\"line\":{n},");
    }
    let _ = write!(
        o,
        "\"label\":{},\"label_id\":{},\"probabilities\":{{{}}},\"logits\":[{}],\"tokens\":{},\"truncated\":{}}}",
        json_str(c.label),
        c.label_id,
        probs.join(","),
        logits.join(","),
        c.tokens,
        c.truncated
    );
    o
}

fn classify(a: ClassifyArgs) -> Result<()> {
    let model = open(&a.model)?;
    if matches!(model.task(), Task::LanguageModel) {
        return Err(format!(
            "{}: this model is a language model, not a classifier: use `ember generate` or `ember score`",
            a.model.display()
        ));
    }
    let given = [a.text.is_some(), a.tokens.is_some(), a.file.is_some()];
    if given.iter().filter(|&&g| g).count() != 1 {
        return Err("give exactly one of --text TEXT, --tokens 1,2,3 or --file FILE".into());
    }
    let opts = SessionOptions {
        threads: a.threads,
        ..SessionOptions::default()
    };
    let mut clf = Classifier::new(&model, &opts).map_err(|e| e.to_string())?;
    let Some(path) = &a.file else {
        let c = match (&a.text, &a.tokens) {
            (Some(t), _) if t.is_empty() => return Err("--text is empty".into()),
            (Some(t), _) => clf.classify_text(t),
            (None, Some(ids)) => clf.classify_tokens(&parse_ids(ids, "--tokens")?),
            (None, None) => return Err("give --text, --tokens or --file".into()),
        }
        .map_err(|e| e.to_string())?;
        if a.json {
            println!("{}", classification_json(&c, None));
        } else {
            println!(
                "{}  (p {:.6}, {} tokens{})",
                c.label,
                c.probabilities[c.label_id],
                c.tokens,
                if c.truncated { ", truncated" } else { "" }
            );
            let width = c
                .labels
                .iter()
                .map(|l| l.chars().count())
                .max()
                .unwrap_or(0);
            for (l, p) in c.labels.iter().zip(c.probabilities) {
                println!("  {l:<width$}  {p:.6}");
            }
        }
        return Ok(());
    };
    let mut reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut buf = Vec::new();
    let mut line_no = 0;
    let mut shown = false;
    loop {
        buf.clear();
        // Bounded: a file without newlines (`/dev/zero`, a binary) must not grow `buf` forever.
        let n = std::io::Read::take(&mut reader, MAX_CLASSIFY_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.len() > MAX_CLASSIFY_LINE {
            return Err(format!(
                "{}: line {line_no} is longer than {} MiB",
                path.display(),
                MAX_CLASSIFY_LINE >> 20
            ));
        }
        let text = std::str::from_utf8(&buf)
            .map_err(|_| format!("{}: line {line_no} is not valid UTF-8", path.display()))?;
        let text = text.strip_suffix('\n').unwrap_or(text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.trim().is_empty() {
            continue;
        }
        let c = clf
            .classify_text(text)
            .map_err(|e| format!("{}: line {line_no}: {e}", path.display()))?;
        let written = if a.json {
            writeln!(out, "{}", classification_json(&c, Some(line_no)))
        } else {
            if !shown {
                writeln!(
                    out,
                    "{:>6}  {:<16} {:>9} {:>6}  text",
                    "line", "label", "p", "tokens"
                )
                .map_err(|e| e.to_string())?;
                shown = true;
            }
            let preview: String = text.chars().take(60).collect();
            let more = if text.chars().nth(60).is_some() {
                "…"
            } else {
                ""
            };
            writeln!(
                out,
                "{line_no:>6}  {:<16} {:>9.6} {:>6}  {preview}{more}",
                c.label, c.probabilities[c.label_id], c.tokens
            )
        };
        written.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The longest line `ember classify --file` reads (bytes).
const MAX_CLASSIFY_LINE: usize = 16 << 20;

fn describe(v: &Value) -> String {
    let list = |n: usize, f: &dyn Fn(usize) -> String| {
        let shown: Vec<String> = (0..n.min(8)).map(f).collect();
        format!(
            "[{}{}] ({} items)",
            shown.join(", "),
            if n > 8 { ", …" } else { "" },
            n
        )
    };
    match v {
        Value::Str(s) if s.len() > 120 => {
            let cut = (0..=100)
                .rev()
                .find(|&i| s.is_char_boundary(i))
                .unwrap_or(0);
            format!("{:?}… ({} bytes)", &s[..cut], s.len())
        }
        Value::Str(s) => format!("{s:?}"),
        Value::Bytes(b) => format!("<{} bytes>", b.len()),
        Value::Array(Array::Str(a)) => list(a.len(), &|i| format!("{:?}", a[i])),
        Value::Array(Array::U32(a)) => list(a.len(), &|i| a[i].to_string()),
        Value::Array(Array::U64(a)) => list(a.len(), &|i| a[i].to_string()),
        Value::Array(Array::I32(a)) => list(a.len(), &|i| a[i].to_string()),
        Value::Array(Array::I64(a)) => list(a.len(), &|i| a[i].to_string()),
        Value::Array(Array::F32(a)) => list(a.len(), &|i| a[i].to_string()),
        Value::Array(Array::F64(a)) => list(a.len(), &|i| a[i].to_string()),
        Value::Array(Array::Bool(a)) => list(a.len(), &|i| a[i].to_string()),
        Value::U32(x) => x.to_string(),
        Value::I32(x) => x.to_string(),
        Value::U64(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        Value::F32(x) => x.to_string(),
        Value::F64(x) => x.to_string(),
        Value::Bool(x) => x.to_string(),
    }
}

fn inspect(a: InspectArgs) -> Result<()> {
    let t0 = Instant::now();
    let model = open(&a.model)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let h = model.header();
    let cfg = model.config();
    let weights: u64 = h.tensors.iter().map(|t| t.numel()).sum();
    if a.json {
        let meta: Vec<String> = h
            .metadata
            .iter()
            .map(|(k, v)| format!("{}:{}", json_str(k), json_str(&describe(v))))
            .collect();
        let tensors: Vec<String> = h
            .tensors
            .iter()
            .map(|t| {
                let shape: Vec<String> = t.shape.iter().map(u64::to_string).collect();
                format!(
                    "{{\"name\":{},\"dtype\":\"{}\",\"shape\":[{}],\"bytes\":{}}}",
                    json_str(&t.name),
                    t.dtype.name(),
                    shape.join(","),
                    t.size
                )
            })
            .collect();
        println!(
            "{{\"file_bytes\":{},\"parameters\":{},\"bytes_per_token\":{},\"load_ms\":{},\"metadata\":{{{}}},\"tensors\":[{}]}}",
            model.file_size(),
            weights,
            model.bytes_per_token(),
            num(load_ms),
            meta.join(","),
            tensors.join(",")
        );
        return Ok(());
    }
    println!("{}", a.model.display());
    println!(
        "  GPT-2: {} layers, {} heads, dim {}, context {}, vocabulary {}, qkv bias {}, tied head {}",
        cfg.n_layers,
        cfg.n_heads,
        cfg.dim,
        cfg.context_length,
        cfg.vocab_size,
        cfg.qkv_bias,
        cfg.tied_head
    );
    if let Task::Classifier {
        labels,
        readout,
        pad_id,
        length,
    } = model.task()
    {
        let readout = match readout {
            Readout::Last => "last",
            Readout::LastReal => "last-real",
        };
        println!(
            "  classifier: {} labels {labels:?}, readout {readout}, length {}, pad id {pad_id}",
            labels.len(),
            length.map_or("none (context)".to_string(), |n| n.to_string())
        );
    }
    println!(
        "  {} tensors, {} parameters, {} bytes on disk, {} bytes read per token, opened in {:.2} ms",
        h.tensors.len(),
        weights,
        model.file_size(),
        model.bytes_per_token(),
        load_ms
    );
    println!("metadata:");
    for (k, v) in &h.metadata {
        println!("  {k:<28} {}", describe(v));
    }
    println!("tensors:");
    for t in &h.tensors {
        println!(
            "  {:<32} {:<4} {:<16} {:>12} bytes",
            t.name,
            t.dtype.name(),
            format!("{:?}", t.shape),
            t.size
        );
    }
    Ok(())
}

fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The bandwidth probe's buffer in `ember bench` (far larger than any cache).
const BENCH_PROBE_BYTES: usize = 1 << 30;
/// Decode rounds hold at least this many tokens (a round is compared with the probe passes
/// on either side of it)...
const BENCH_MIN_ROUND_TOKENS: usize = 16;
/// ... and there are at most this many rounds.
const BENCH_MAX_ROUNDS: usize = 16;

fn bench(a: BenchArgs) -> Result<()> {
    if a.prompt_tokens == 0 || a.gen_tokens == 0 {
        return Err("--prompt-tokens and --gen-tokens must be at least 1".into());
    }
    let threads = if a.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        a.threads
    };
    let mut temp = None;
    let path = match (&a.model, &a.random) {
        (Some(_), Some(_)) => return Err("give a model file or --random SIZE, not both".into()),
        (Some(p), None) => p.clone(),
        (None, size) => {
            let size = size.clone().unwrap_or_else(|| "124m".into());
            let cfg = GptConfig {
                tied_head: true,
                qkv_bias: true,
                ..GptConfig::preset(&size).map_err(|e| format!("--random: {e}"))?
            };
            let dtype = match a.dtype.as_str() {
                "f32" => DType::F32,
                "f16" => DType::F16,
                "int8" | "q8" => DType::Q8,
                d => return Err(format!("--dtype: {d:?} must be f32, f16 or int8")),
            };
            let p = std::env::temp_dir().join(format!(
                "ember-bench-{size}-{}-{}.ember",
                a.dtype,
                std::process::id()
            ));
            eprintln!(
                "building a random {size} model ({}) in {} …",
                a.dtype,
                p.display()
            );
            emberlm_runtime::random::write_random_model(&p, &cfg, dtype, 7, None)
                .map_err(|e| e.to_string())?;
            temp = Some(p.clone());
            p
        }
    };
    let result = bench_file(&path, &a, threads);
    if let Some(p) = temp {
        std::fs::remove_file(p).ok();
    }
    result
}

fn bench_file(path: &Path, a: &BenchArgs, threads: usize) -> Result<()> {
    let t0 = Instant::now();
    let model = open(path)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let cfg = *model.config();
    if a.prompt_tokens + a.gen_tokens > cfg.context_length {
        return Err(format!(
            "--prompt-tokens + --gen-tokens = {} exceeds the model's context of {}",
            a.prompt_tokens + a.gen_tokens,
            cfg.context_length
        ));
    }
    // The cache type as used (`auto` resolved), for the report.
    let kv = kv_dtype(&a.kv)?.resolve(&model);
    let kv_name = if kv == KvDtype::F16 { "f16" } else { "f32" };
    let opts = SessionOptions {
        threads,
        kv_dtype: kv,
        ..SessionOptions::default()
    };
    let mut session = Session::new(&model, &opts).map_err(|e| e.to_string())?;
    // Pseudo-random prompt ids (a fixed LCG: the same prompt every run).
    let mut state = 12345u64;
    let prompt: Vec<u32> = (0..a.prompt_tokens)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % cfg.vocab_size as u64) as u32
        })
        .collect();
    // Warm-up: the whole run once, untimed. It pages in every weight and every KV cache entry the
    // timed run uses, so the peak RSS read next is the run's own, before the probe's 1 GiB buffer.
    let first = argmax(session.prefill(&prompt).map_err(|e| e.to_string())?) as u32;
    greedy(&mut session, first, a.gen_tokens)?;
    let rss = peak_rss_bytes();
    session.reset();
    let t1 = Instant::now();
    session.prefill(&prompt).map_err(|e| e.to_string())?;
    let prefill_s = t1.elapsed().as_secs_f64();
    // Prefill is bound by arithmetic: compare it with the cores' multiply-add peak, measured now.
    let prefill_gflops = model.prefill_flops(a.prompt_tokens) / prefill_s / 1e9;
    let fma_peak = emberlm_runtime::kernels::peak::fma_peak_gflops(threads);
    let bytes_per_token = model.bytes_per_token();
    let mut probe = Probe::new(BENCH_PROBE_BYTES, threads);
    // Decode in rounds, each between two probe passes: on a shared host the memory's speed drifts
    // with the neighbours' load, and each round is compared with the passes on either side of it.
    let rounds = (a.gen_tokens / BENCH_MIN_ROUND_TOKENS).clamp(1, BENCH_MAX_ROUNDS);
    let mut passes = vec![probe.pass()];
    let mut fractions = Vec::with_capacity(rounds);
    let mut decode_s = 0f64;
    let mut next = argmax(session.logits()) as u32;
    for r in 0..rounds {
        let n = a.gen_tokens * (r + 1) / rounds - a.gen_tokens * r / rounds;
        let t = Instant::now();
        next = greedy(&mut session, next, n)?;
        let s = t.elapsed().as_secs_f64();
        decode_s += s;
        passes.push(probe.pass());
        let around = (passes[r].gb_s + passes[r + 1].gb_s) / 2.0;
        fractions.push(bytes_per_token as f64 * n as f64 / s / 1e9 / around);
    }
    // How the OS mapped the weights and the probe's buffer: 2 MiB pages or 4 KiB ones (see
    // `MappedFile::open`). A model in 4 KiB pages decodes slower than it could.
    let huge = |b: &[u8]| emberlm_formats::ember::huge_page_bytes(b);
    let (model_huge, probe_huge) = (huge(model.bytes()), huge(probe.bytes()));
    let probe_bytes = probe.bytes().len();
    drop(probe);
    fractions.sort_by(f64::total_cmp);
    let round_fraction = fractions[fractions.len() / 2];
    let prefill_tps = a.prompt_tokens as f64 / prefill_s;
    let decode_tps = a.gen_tokens as f64 / decode_s;
    let achieved = bytes_per_token as f64 * decode_tps / 1e9;
    let bw = bandwidth::summarize(&passes);
    let (bandwidth, sustained) = (bw.best_chunk_gb_s, bw.median_pass_gb_s);
    if a.json {
        println!(
            "{{\"model\":{},\"file_bytes\":{},\"threads\":{},\"kernels\":\"{}\",\"kv\":{},\"prompt_tokens\":{},\"gen_tokens\":{},\"load_ms\":{},\"prefill_tokens_per_s\":{},\"prefill_gflop_per_s\":{},\"fma_peak_gflop_per_s\":{},\"prefill_flops_fraction\":{},\"decode_tokens_per_s\":{},\"bytes_per_token\":{},\"decode_gb_per_s\":{},\"bandwidth_gb_per_s\":{},\"decode_bandwidth_fraction\":{},\"bandwidth_median_pass_gb_per_s\":{},\"decode_median_bandwidth_fraction\":{},\"decode_rounds\":{},\"decode_round_bandwidth_fraction\":{},\"peak_rss_bytes\":{},\"huge_page_bytes\":{},\"bandwidth_huge_page_bytes\":{}}}",
            json_str(&path.display().to_string()),
            model.file_size(),
            threads,
            session.kernels().name(),
            json_str(kv_name),
            a.prompt_tokens,
            a.gen_tokens,
            num(load_ms),
            num(prefill_tps),
            num(prefill_gflops),
            num(fma_peak),
            num(prefill_gflops / fma_peak),
            num(decode_tps),
            bytes_per_token,
            num(achieved),
            num(bandwidth),
            num(achieved / bandwidth),
            num(sustained),
            num(achieved / sustained),
            rounds,
            num(round_fraction),
            rss,
            model_huge.map_or("null".into(), |b| b.to_string()),
            probe_huge.map_or("null".into(), |b| b.to_string()),
        );
    } else {
        println!(
            "model        {} ({} bytes), {} threads, {} kernels, {} KV cache",
            path.display(),
            model.file_size(),
            threads,
            session.kernels().name(),
            kv_name
        );
        println!("load         {load_ms:.2} ms");
        println!(
            "prefill      {prefill_tps:.1} tokens/s ({} tokens) = {prefill_gflops:.1} GFLOP/s, {:.0}% \
             of the cores' multiply-add peak ({fma_peak:.1} GFLOP/s)",
            a.prompt_tokens,
            100.0 * prefill_gflops / fma_peak
        );
        println!(
            "decode       {decode_tps:.1} tokens/s ({} tokens in {rounds} rounds)",
            a.gen_tokens
        );
        println!(
            "bandwidth    decode reads {:.1} MB/token = {achieved:.2} GB/s; machine read bandwidth \
             {bandwidth:.2} GB/s best 64 MiB chunk ({:.0}%), {sustained:.2} GB/s median whole pass \
             ({:.0}%); median round vs the passes around it {:.0}%",
            bytes_per_token as f64 / 1e6,
            100.0 * achieved / bandwidth,
            100.0 * achieved / sustained,
            100.0 * round_fraction
        );
        if let (Some(m), Some(p)) = (model_huge, probe_huge) {
            let mib = |b: u64| b as f64 / (1 << 20) as f64;
            println!(
                "pages        {:.0} of the model's {:.0} MiB in 2 MiB pages, {:.0} of the probe's {:.0} MiB",
                mib(m),
                mib(model.file_size() as u64),
                mib(p),
                mib(probe_bytes as u64)
            );
            // (Only where the OS grants huge pages at all: the probe's buffer got them.)
            if p > 0 && 2 * m < model.file_size() as u64 {
                println!(
                    "             (the file's page cache holds 4 KiB pages: evict it, e.g. `dd if=MODEL \
                     iflag=nocache count=0`, and the next run reads it back in 2 MiB pages)"
                );
            }
        }
        println!("peak RSS     {:.1} MiB", rss as f64 / (1 << 20) as f64);
    }
    Ok(())
}

/// Feeds `next` and then `n - 1` greedy choices to the session; returns the token that would come
/// after them.
fn greedy(session: &mut Session<'_, '_>, mut next: u32, n: usize) -> Result<u32> {
    for _ in 0..n {
        next = argmax(session.step(next).map_err(|e| e.to_string())?) as u32;
    }
    Ok(next)
}

/// Tokenizer-only files (`ember-train tokenizer`) are read whole: at most this big.
const MAX_TOKENIZER_FILE: u64 = 64 << 20;

/// The tokenizer of `tokenize` / `detokenize`: GPT-2's when no file is given, else the file's:
/// a model, or a tokenizer-only `.ember` file as `ember-train tokenizer` writes.
fn tokenizer_for(path: &Option<PathBuf>) -> Result<std::borrow::Cow<'static, Tokenizer>> {
    let Some(p) = path else {
        return Ok(std::borrow::Cow::Borrowed(Tokenizer::gpt2()));
    };
    let model_error = match open(p) {
        Ok(m) => {
            return tokenizer_of(&m)?
                .cloned()
                .map(std::borrow::Cow::Owned)
                .ok_or_else(|| format!("{}: this model file has no tokenizer", p.display()));
        }
        Err(e) => e,
    };
    // Not a model: perhaps a tokenizer file (the model's error stands otherwise).
    let small = std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() <= MAX_TOKENIZER_FILE);
    let bytes = if small { std::fs::read(p).ok() } else { None };
    let header = bytes
        .as_deref()
        .and_then(|b| emberlm_formats::ember::parse_header(b).ok());
    match header.map(|h| emberlm_formats::meta::get_tokenizer(&h)) {
        Some(Ok(Some(t))) => Ok(std::borrow::Cow::Owned(t)),
        _ => Err(model_error),
    }
}

fn tokenize(a: TokenizeArgs) -> Result<()> {
    let tok = tokenizer_for(&a.model)?;
    let special = if a.no_special {
        SpecialTokens::AsText
    } else {
        SpecialTokens::Allow
    };
    let ids = tok.encode_to_vec(&a.text, special);
    let s: Vec<String> = ids.iter().map(u32::to_string).collect();
    if a.json {
        println!("{{\"tokens\":[{}],\"count\":{}}}", s.join(","), ids.len());
    } else {
        println!("{}", s.join(","));
    }
    Ok(())
}

fn detokenize(a: DetokenizeArgs) -> Result<()> {
    let tok = tokenizer_for(&a.model)?;
    let ids = parse_ids(&a.ids, "--ids")?;
    let text = tok
        .decode_to_string(&ids)
        .map_err(|e| format!("--ids: {e}"))?;
    if a.json {
        println!("{{\"text\":{}}}", json_str(&text));
    } else {
        println!("{text}");
    }
    Ok(())
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A JSON number with f32's shortest round-trip digits (non-finite values become null).
fn num32(x: f32) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".into()
    }
}

/// A JSON number (non-finite values become null).
fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".into()
    }
}
