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

mod bench;
mod chat;
mod classify;
mod generate;
mod inspect;
mod score;
mod tokenize;

use bench::BenchArgs;
use chat::ChatArgs;
use classify::ClassifyArgs;
use generate::GenerateArgs;
use inspect::InspectArgs;
use score::ScoreArgs;
use tokenize::{DetokenizeArgs, TokenizeArgs};

fn main() {
    let cli = parse_args();
    let result = match cli.command {
        Command::Generate(a) => generate::generate(a),
        Command::Chat(a) => chat::chat(a),
        Command::Score(a) => score::score(a),
        Command::Classify(a) => classify::classify(a),
        Command::Inspect(a) => inspect::inspect(a),
        Command::Bench(a) => bench::bench(a),
        Command::Tokenize(a) => tokenize::tokenize(a),
        Command::Detokenize(a) => tokenize::detokenize(a),
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
