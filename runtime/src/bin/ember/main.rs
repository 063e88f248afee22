//! `ember`: run `.ember` models — generate, chat, score, perplexity, classify, inspect, bench,
//! tokenize, detokenize, serve.
//!
//! Errors print one line, `ember: error: …`, and exit with code 2 for usage errors and 1 for
//! failures (with `--json`, also one `{"error", "exit_code"}` object on stdout); only `main`
//! prints errors and exits (the exceptions: a closed stdout ends the program at once, see
//! `println!` below, and a Ctrl-C in `ember chat` outside an answer exits 130 from the signal
//! handler). `--help` on any command explains it; one file per command.

use argh::FromArgs;
use emberlm_formats::config::{GptConfig, ModelConfig};
use emberlm_formats::ember::{Array, DType, Value};
use emberlm_formats::meta::{Readout, Task};
use emberlm_formats::tokenizer::{EncodeScratch, SpecialTokens, StreamDecoder, Tokenizer};
use emberlm_runtime::kernels::bandwidth::{self, Probe};
use emberlm_runtime::sampler::argmax;
use emberlm_runtime::{
    Classification, Classifier, GenerateOptions, KvDtype, Model, Sampling, Session, SessionOptions,
    Stop, StopReason,
};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `println!` that never panics (std's panics when stdout is closed, e.g. `ember ... | head -1`):
/// a closed pipe ends the program quietly with success, as the reader asked for no more; any other
/// write error is one `ember: error:` line and exit code 1. Shadows std's macro in every module
/// of this binary (they are declared below it).
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
/// `ember --version` prints the version. Exit codes: 0 success, 1 failure, 2 usage error
/// (a flag unknown, missing or out of range), 130 interrupted (Ctrl-C).
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
    Perplexity(PerplexityArgs),
    Classify(ClassifyArgs),
    Inspect(InspectArgs),
    Bench(BenchArgs),
    Tokenize(TokenizeArgs),
    Detokenize(DetokenizeArgs),
    Serve(ServeArgs),
}

mod bench;
mod chat;
mod chat_template;
mod classify;
mod generate;
mod inspect;
mod perplexity;
mod score;
mod serve;
mod stream;
mod tokenize;

use bench::BenchArgs;
use chat::ChatArgs;
use classify::ClassifyArgs;
use generate::GenerateArgs;
use inspect::InspectArgs;
use perplexity::PerplexityArgs;
use score::ScoreArgs;
use serve::ServeArgs;
use stream::TextStream;
use tokenize::{DetokenizeArgs, TokenizeArgs};

fn main() {
    let argv = match args_utf8() {
        Ok(v) => v,
        Err(e) => exit_with(&e, false),
    };
    // `--json` anywhere before a `--` asks for a JSON error object too (a flag's value that is
    // literally "--json" is a corner case not worth a second parse).
    let json = argv
        .iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--json");
    let cli = match parse_args(&argv) {
        Ok(Some(cli)) => cli,
        Ok(None) => return,
        Err(e) => exit_with(&e, json),
    };
    let result = match cli.command {
        Command::Generate(a) => generate::generate(a),
        Command::Chat(a) => chat::chat(a),
        Command::Score(a) => score::score(a),
        Command::Perplexity(a) => perplexity::perplexity(a),
        Command::Classify(a) => classify::classify(a),
        Command::Inspect(a) => inspect::inspect(a),
        Command::Bench(a) => bench::bench(a),
        Command::Tokenize(a) => tokenize::tokenize(a),
        Command::Detokenize(a) => tokenize::detokenize(a),
        Command::Serve(a) => serve::serve(a),
    };
    if let Err(e) = result {
        exit_with(&e, json);
    }
}

/// The one place that reports an error: one `ember: error:` line on stderr (and, with `--json`,
/// one `{"error", "exit_code"}` object on stdout), then exit code 2 for usage errors, else 1.
fn exit_with(e: &Error, json: bool) -> ! {
    let (msg, code) = match e {
        Error::Usage(m) => (m, 2),
        Error::Failed(m) => (m, 1),
    };
    eprintln!("ember: error: {msg}");
    if json {
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            serde_json::json!({ "error": msg, "exit_code": code })
        );
    }
    std::process::exit(code);
}

/// The arguments as UTF-8 (argh's `from_env` panics on arguments that are not).
fn args_utf8() -> Result<Vec<String>> {
    std::env::args_os()
        .enumerate()
        .map(|(i, a)| {
            a.into_string().map_err(|a| {
                Error::Usage(format!(
                    "argument {i} ({}) is not valid UTF-8",
                    a.to_string_lossy()
                ))
            })
        })
        .collect()
}

/// The subcommands, for `did you mean` and for naming the command in usage errors.
const COMMANDS: &[&str] = &[
    "generate",
    "chat",
    "score",
    "perplexity",
    "classify",
    "inspect",
    "bench",
    "tokenize",
    "detokenize",
];

/// Parses the command line. `Ok(None)`: help or the version was printed, nothing more to do.
fn parse_args(argv: &[String]) -> Result<Option<Cli>> {
    let args: Vec<&str> = argv.iter().skip(1).map(String::as_str).collect();
    if matches!(args.as_slice(), ["--version" | "-V"]) {
        println!("ember {}", env!("CARGO_PKG_VERSION"));
        return Ok(None);
    }
    match Cli::from_args(&["ember"], &args) {
        Ok(cli) => Ok(Some(cli)),
        Err(early) if early.status.is_ok() => {
            println!("{}", early.output.trim_end());
            Ok(None)
        }
        Err(early) => {
            // One line: argh's message can span several.
            let msg = early
                .output
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let command = args.first().copied().filter(|c| COMMANDS.contains(c));
            let hint = suggestion(&msg, command)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            let see = match command {
                Some(c) => format!("ember {c} --help"),
                None => "ember --help".into(),
            };
            Err(Error::Usage(format!("{msg}{hint} (see `{see}`)")))
        }
    }
}

/// The closest known flag (or subcommand) to the one argh did not recognise, if one is close.
fn suggestion(msg: &str, command: Option<&str>) -> Option<String> {
    let unknown = msg.strip_prefix("Unrecognized argument: ")?.trim();
    let known: Vec<String> = match command {
        None => COMMANDS.iter().map(|c| c.to_string()).collect(),
        Some(c) => {
            // The command's own help lists its flags: no second list to keep in step.
            let help = match Cli::from_args(&["ember"], &[c, "--help"]) {
                Err(early) => early.output,
                Ok(_) => return None,
            };
            help.split_whitespace()
                .filter(|w| w.starts_with("--") && w.len() > 2)
                .map(|w| w.trim_end_matches([',', '.']).to_string())
                .collect()
        }
    };
    let best = known
        .iter()
        .map(|k| (edit_distance(unknown, k), k))
        .min_by_key(|(d, _)| *d)?;
    // Close: at most a third of the word's letters changed (at least one).
    (best.0 <= (unknown.len() / 3).max(1)).then(|| best.1.clone())
}

/// Levenshtein distance between two strings, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (diag + usize::from(ca != cb)).min(up + 1).min(row[j] + 1);
            diag = up;
        }
    }
    row[b.len()]
}

/// What went wrong: a usage error (a flag missing, unknown or out of range: exit code 2) or a
/// failure (a file, a model, the run itself: exit code 1). Only `main` prints it.
#[derive(Debug)]
enum Error {
    Usage(String),
    Failed(String),
}

impl From<String> for Error {
    fn from(s: String) -> Self {
        Error::Failed(s)
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Self {
        Error::Failed(s.to_string())
    }
}

/// A usage error (exit code 2).
fn usage(msg: impl Into<String>) -> Error {
    Error::Usage(msg.into())
}

type Result<T> = std::result::Result<T, Error>;

/// `--threads`: omitted = one per core (the session's 0), else at least 1.
fn threads(t: Option<usize>) -> Result<usize> {
    match t {
        None => Ok(0),
        Some(0) => Err(usage(
            "--threads 0: give at least 1, or leave --threads out for one thread per core",
        )),
        Some(n) => Ok(n),
    }
}

/// Tokenizer-only files (`ember-train tokenizer`) are read whole: at most this big.
const MAX_TOKENIZER_FILE: u64 = 64 << 20;

/// The tokenizer and header of a tokenizer-only `.ember` file (`ember-train tokenizer`), or
/// `None` when `path` is not one.
fn tokenizer_file(path: &Path) -> Option<(Tokenizer, emberlm_formats::ember::Header)> {
    let small = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() <= MAX_TOKENIZER_FILE);
    if !small {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    let header = emberlm_formats::ember::parse_header(&bytes).ok()?;
    let tok = emberlm_formats::meta::get_tokenizer(&header).ok()??;
    Some((tok, header))
}

fn open(path: &Path) -> Result<Model<'static>> {
    Model::open(path).map_err(|e| match e {
        // I/O errors already name the path.
        emberlm_runtime::RuntimeError::Format(emberlm_formats::ember::FormatError::Io {
            ..
        }) => e.to_string().into(),
        _ if tokenizer_file(path).is_some() => format!(
            "{}: this file holds a tokenizer (from `ember-train tokenizer`), not a model: \
             `ember inspect`, `ember tokenize` and `ember detokenize` read it",
            path.display()
        )
        .into(),
        e => format!("{}: {e}", path.display()).into(),
    })
}

fn tokenizer_of<'m>(model: &'m Model<'_>) -> Result<Option<&'m Tokenizer>> {
    model.tokenizer().map_err(|e| e.to_string().into())
}

fn parse_ids(s: &str, flag: &str) -> Result<Vec<u32>> {
    let ids: Vec<u32> = s
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u32>().map_err(|_| {
                usage(format!(
                    "{flag}: {p:?} is not a token id (a whole number 0..=4294967295)"
                ))
            })
        })
        .collect::<Result<_>>()?;
    if ids.is_empty() {
        return Err(usage(format!("{flag}: no token ids given")));
    }
    Ok(ids)
}

fn kv_dtype(s: &str) -> Result<KvDtype> {
    match s {
        "auto" => Ok(KvDtype::Auto),
        "f32" => Ok(KvDtype::F32),
        "f16" => Ok(KvDtype::F16),
        "int8" => Ok(KvDtype::Int8),
        _ => Err(usage(format!("--kv: {s:?} must be auto, f32, f16 or int8"))),
    }
}

/// Texts read from a file or standard input are at most this big.
const MAX_TEXT_FILE: u64 = 256 << 20;

/// The text of `path` (`-`: standard input), for `flag` (named in errors): UTF-8, not empty.
fn read_text(path: &Path, flag: &str) -> Result<String> {
    let (name, reader): (String, Box<dyn std::io::Read>) = if path.as_os_str() == "-" {
        ("standard input".into(), Box::new(std::io::stdin().lock()))
    } else {
        let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if f.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(format!("{}: is a directory", path.display()).into());
        }
        (path.display().to_string(), Box::new(f))
    };
    let mut bytes = Vec::new();
    std::io::Read::take(reader, MAX_TEXT_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{flag} {name}: {e}"))?;
    if bytes.len() as u64 > MAX_TEXT_FILE {
        return Err(format!("{flag} {name}: longer than {} MiB", MAX_TEXT_FILE >> 20).into());
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        format!(
            "{flag} {name}: not valid UTF-8 (at byte offset {})",
            e.utf8_error().valid_up_to()
        )
    })?;
    if text.is_empty() {
        return Err(format!("{flag} {name}: the text is empty").into());
    }
    Ok(text)
}

/// The prompt's ids: `--prompt` through the model's tokenizer (`-` reads standard input), or
/// `--tokens`; `file` is `--prompt-file` (or `--file` for score).
fn prompt_ids(
    model: &Model<'_>,
    text: &Option<String>,
    tokens: &Option<String>,
    file: Option<&Path>,
    flag: &str,
    file_flag: &str,
) -> Result<(Vec<u32>, Option<String>)> {
    let given =
        usize::from(text.is_some()) + usize::from(tokens.is_some()) + usize::from(file.is_some());
    if given > 1 {
        return Err(usage(format!(
            "give one of {flag}, {file_flag} or --tokens, not several"
        )));
    }
    let text = match (text.as_deref(), file) {
        (Some("-"), _) => read_text(Path::new("-"), flag)?,
        (Some(t), _) => t.to_string(),
        (None, Some(f)) => read_text(f, file_flag)?,
        (None, None) => {
            return match tokens {
                Some(t) => Ok((parse_ids(t, "--tokens")?, None)),
                None => Err(usage(format!(
                    "give {flag} TEXT, {file_flag} FILE or --tokens 1,2,3"
                ))),
            };
        }
    };
    let tok = tokenizer_of(model)?
        .ok_or("this model file has no tokenizer; pass token ids with --tokens instead")?;
    if text.is_empty() {
        return Err(usage(format!("{flag} is empty")));
    }
    let ids = tok.encode_to_vec(&text, SpecialTokens::Allow);
    Ok((ids, Some(text)))
}
