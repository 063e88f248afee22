//! `ember-train`: pretraining, evaluation, tokenizer training, import and export.
//!
//! The only place that prints and exits: errors become one line
//! `ember-train: error: <what is wrong>` on stderr with exit code 1 (2 for usage errors);
//! with `--json` the command's result is ONE JSON object on stdout (`{"error", "exit_code"}`
//! when it failed).

use argh::FromArgs;
use emberlm_trainer::cli::{self, Args, Console, signal};
use emberlm_trainer::dist::{self, Comm, Single};
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
    let group = match Group::join() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("ember-train: error: {e}");
            std::process::exit(2);
        }
    };
    let comm = group.comm();
    // Under mpirun only rank 0 prints (errors excepted) and writes.
    let lead = comm.leads();
    let mut stderr = std::io::stderr();
    let tty = stderr.is_terminal();
    let mut stdout = std::io::stdout();
    let mut err2 = std::io::stderr();
    let (mut sink1, mut sink2) = (std::io::sink(), std::io::sink());
    let (log, out): (&mut (dyn Write + Send), &mut (dyn Write + Send)) = match (lead, json) {
        (false, _) => (&mut sink1, &mut sink2),
        (true, true) => (&mut stderr, &mut err2),
        (true, false) => (&mut stderr, &mut stdout),
    };
    let mut con = Console { log, out, tty };
    let result = cli::run(args, &mut con, comm);
    match result {
        Ok(outcome) => {
            if json && lead {
                let _ = writeln!(std::io::stdout(), "{}", outcome.json);
            }
            let _ = std::io::stdout().flush();
            // MPI ends (MPI_Finalize) before the process does (nothing to end without MPI).
            #[allow(clippy::drop_non_drop)]
            drop(group);
            std::process::exit(outcome.exit_code);
        }
        Err(e) => {
            let who = if comm.size() > 1 {
                format!(" (rank {} of {})", comm.rank(), comm.size())
            } else {
                String::new()
            };
            eprintln!("ember-train: error{who}: {e}");
            // One rank's error ends every rank (the others may be waiting on it).
            group.abort(e.exit_code());
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

/// The processes this one trains with: itself alone, or MPI's world under `mpirun`.
enum Group {
    Single(Single),
    #[cfg(feature = "mpi")]
    Mpi(dist::Mpi),
}

impl Group {
    /// MPI's world when `mpirun` started several ranks (feature `mpi`), else this process.
    fn join() -> Result<Group, String> {
        let ranks = dist::launched_ranks().unwrap_or(1);
        if ranks <= 1 {
            return Ok(Group::Single(Single));
        }
        #[cfg(feature = "mpi")]
        {
            dist::Mpi::init().map(Group::Mpi)
        }
        #[cfg(not(feature = "mpi"))]
        Err(format!(
            "started by mpirun as one of {ranks} ranks, but this ember-train was built without \
             MPI: build it with `cargo build --release -p emberlm-trainer --features mpi` \
             (needs an MPI library and libclang), or run it without mpirun"
        ))
    }

    fn comm(&self) -> &dyn Comm {
        match self {
            Group::Single(s) => s,
            #[cfg(feature = "mpi")]
            Group::Mpi(m) => m,
        }
    }

    /// Ends every rank with `code` (MPI_Abort); nothing for one process.
    fn abort(&self, code: i32) {
        match self {
            Group::Single(_) => {
                let _ = code;
            }
            #[cfg(feature = "mpi")]
            Group::Mpi(m) => m.abort(code),
        }
    }
}
