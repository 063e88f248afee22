//! `ember-train`: pretraining, evaluation, tokenizer training, import and export.
//!
//! The only place that prints and exits: errors become one line
//! `ember-train: error: <what is wrong>` on stderr with exit code 1 (2 for usage errors);
//! with `--json` the command's result is ONE JSON object on stdout (`{"error", "exit_code"}`
//! when it failed).

use argh::FromArgs;
use emberlm_trainer::cli::{self, Args, Console, signal};
use std::io::{IsTerminal, Write};

fn main() {
    let argv: Vec<String> = match std::env::args_os().map(|a| a.into_string()).collect() {
        Ok(v) => v,
        Err(bad) => {
            eprintln!(
                "ember-train: error: argument {:?} is not valid UTF-8",
                bad.to_string_lossy()
            );
            std::process::exit(2);
        }
    };
    let rest: Vec<&str> = argv.iter().skip(1).map(String::as_str).collect();
    if matches!(rest.as_slice(), ["--version"] | ["-V"]) {
        let _ = writeln!(
            std::io::stdout(),
            "ember-train {}",
            env!("CARGO_PKG_VERSION")
        );
        return;
    }
    let args = match Args::from_args(&["ember-train"], &rest) {
        Ok(a) => a,
        Err(early) => match early.status {
            Ok(()) => {
                // Not `println!`: it panics when stdout is closed (`ember-train --help | head -1`).
                let _ = writeln!(std::io::stdout(), "{}", early.output);
                return;
            }
            Err(()) => {
                // argh's messages span lines and pad with spaces ("Required options not
                // provided:\n    --dtype"): one line, single spaces.
                let msg = early
                    .output
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                // The help of the command the user was typing: `ember-train finetune classify --help`.
                const COMMANDS: &[&str] = &[
                    "pretrain",
                    "eval",
                    "tokenizer",
                    "export",
                    "import",
                    "export-safetensors",
                    "finetune",
                    "classify",
                    "instruct",
                ];
                let mut help = vec!["ember-train"];
                help.extend(rest.iter().take_while(|a| COMMANDS.contains(a)).take(2));
                eprintln!("ember-train: error: {msg} (see {} --help)", help.join(" "));
                std::process::exit(2);
            }
        },
    };
    if let Err(e) = signal::install() {
        eprintln!("ember-train: warning: {e}");
    }
    let json = args.json();
    let mut stderr = std::io::stderr();
    let tty = stderr.is_terminal();
    let mut stdout = std::io::stdout();
    let mut err2 = std::io::stderr();
    let out: &mut (dyn Write + Send) = if json { &mut err2 } else { &mut stdout };
    let mut con = Console {
        log: &mut stderr,
        out,
        tty,
    };
    match cli::run(args, &mut con) {
        Ok(outcome) => {
            if json {
                let _ = writeln!(std::io::stdout(), "{}", outcome.json);
            }
            let _ = std::io::stdout().flush();
            std::process::exit(outcome.exit_code);
        }
        Err(e) => {
            eprintln!("ember-train: error: {e}");
            if json {
                // Scripts reading stdout get one object in every case.
                let _ = writeln!(
                    std::io::stdout(),
                    "{}",
                    serde_json::json!({"error": e.to_string(), "exit_code": e.exit_code()})
                );
            }
            std::process::exit(e.exit_code());
        }
    }
}
