//! The `ember-train` command line: argument definitions (argh), the commands, and the small
//! pieces they share. `main.rs` parses the arguments, hands a [`Console`] (where human output
//! goes) to [`run`], and prints the returned JSON and errors; nothing here exits the process.
//!
//! Output contract: human-readable progress goes to the console's `log` (stderr); the final
//! summary goes to `out` (stdout, or stderr with `--json`); with `--json` the caller prints the
//! returned [`Outcome::json`] as ONE object on stdout.

pub mod classify;
pub mod eval;
pub mod export;
pub mod export_safetensors;
pub mod import;
pub mod instruct;
mod net;
pub mod prepare;
pub mod pretrain;
pub mod progress;
pub mod sample;
pub mod signal;
pub mod tokenizer;
pub mod train_loop;

use crate::dist::Comm;
use argh::FromArgs;
use std::fmt;
use std::io::Write;
use std::path::PathBuf;

/// ember-train: pretrain GPT-2 models on the CPU, fine-tune them, evaluate, train tokenizers,
/// import and export.
#[derive(FromArgs, Debug)]
#[argh(
    note = "Run `ember-train <command> --help` for a command's flags, `ember-train --version` for the version."
)]
pub struct Args {
    #[argh(subcommand)]
    /// the command
    pub command: Command,
}

impl Args {
    /// Whether the command asked for `--json`.
    pub fn json(&self) -> bool {
        match &self.command {
            Command::Pretrain(a) => a.json,
            Command::Eval(a) => a.json,
            Command::Tokenizer(a) => a.json,
            Command::Export(a) => a.json,
            Command::Import(a) => a.json,
            Command::ExportSafetensors(a) => a.json,
            Command::Prepare(a) => a.json,
            Command::Finetune(f) => match &f.mode {
                FinetuneMode::Classify(a) => a.json,
                FinetuneMode::Instruct(a) => a.json,
            },
        }
    }
}

/// The commands. (`PretrainArgs` is large, but the enum exists once per process.)
#[allow(clippy::large_enum_variant)]
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    /// Pretraining.
    Pretrain(PretrainArgs),
    /// Loss and perplexity of a checkpoint.
    Eval(EvalArgs),
    /// BPE tokenizer training.
    Tokenizer(TokenizerArgs),
    /// Checkpoint → .ember.
    Export(ExportArgs),
    /// safetensors → checkpoint.
    Import(ImportArgs),
    /// Checkpoint → safetensors (Hugging Face or the book's names).
    ExportSafetensors(ExportSafetensorsArgs),
    /// Text → token shards.
    Prepare(PrepareArgs),
    /// Fine-tuning: a classifier or an instruction follower.
    Finetune(FinetuneArgs),
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "finetune")]
/// Fine-tune a checkpoint as a classifier (classify, the book's chapter 6) or an instruction
/// follower (instruct, chapter 7), optionally with LoRA.
pub struct FinetuneArgs {
    #[argh(subcommand)]
    /// the fine-tuning mode
    pub mode: FinetuneMode,
}

/// The fine-tuning modes.
#[allow(clippy::large_enum_variant)]
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum FinetuneMode {
    /// A classifier (label + text rows).
    Classify(classify::ClassifyArgs),
    /// An instruction follower (Alpaca JSON).
    Instruct(instruct::InstructArgs),
}

// Every value is optional so that the command can tell a flag the user gave from a default
// (defaults are applied in `pretrain`). argh prints the doc comment as the help text.
#[derive(FromArgs, Debug, Default, Clone)]
#[argh(subcommand, name = "pretrain")]
/// Pretrain a GPT-2 model (or, with --arch, a Llama/Qwen/Gemma 3-style one) on text files or token
/// shards, or with no arguments the main job: a small model on the built-in corpus; keeps the
/// checkpoint with the best validation loss. Under mpirun (built with --features mpi), the ranks
/// share every global batch.
pub struct PretrainArgs {
    /// a UTF-8 text file to train on (repeatable: files are joined with <|endoftext|>)
    #[argh(option)]
    pub data: Vec<PathBuf>,
    /// model preset: 124m, 355m, 774m or 1558m (GPT-2: vocabulary 50257, context 1024), or
    /// the modern families' real sizes smollm2-135m, smollm2-360m, qwen2.5-0.5b, qwen3-0.6b,
    /// llama3.2-1b, gemma3-270m (which set --arch; their vocabulary becomes the tokenizer's)
    #[argh(option)]
    pub config: Option<String>,
    /// architecture: gpt2 (default), llama (Llama 3 / SmolLM2: RMSNorm, RoPE, SwiGLU,
    /// grouped-query attention), qwen2 (llama with q/k/v biases), qwen3 (llama with q/k norms),
    /// gemma3 (GeGLU, four norms per block, sliding-window layers)
    #[argh(option)]
    pub arch: Option<String>,
    /// number of transformer blocks (default 4)
    #[argh(option)]
    pub layers: Option<usize>,
    /// attention heads (default 4)
    #[argh(option)]
    pub heads: Option<usize>,
    /// key/value heads of grouped-query attention (modern families; default: --heads / 2 when
    /// even, else --heads)
    #[argh(option)]
    pub kv_heads: Option<usize>,
    /// MLP hidden units (modern families; default 8/3 × --dim rounded up to a multiple of 64,
    /// as Llama)
    #[argh(option)]
    pub ffn_dim: Option<usize>,
    /// size of each attention head (modern families; default --dim / --heads)
    #[argh(option)]
    pub head_dim: Option<usize>,
    /// rotary base θ (modern families; default the architecture's: 100000 llama, 1000000 qwen,
    /// 1000000 gemma3)
    #[argh(option)]
    pub rope_theta: Option<f32>,
    /// embedding dimension (default 128)
    #[argh(option)]
    pub dim: Option<usize>,
    /// context length: the window length, and the model's position table when training from scratch (default 64; overrides a preset's 1024)
    #[argh(option)]
    pub context: Option<usize>,
    /// vocabulary size (default: the tokenizer's; for the built-in corpus, the BPE vocabulary trained on it, default 1024)
    #[argh(option)]
    pub vocab: Option<usize>,
    /// window stride (default: the context; main job: context/8)
    #[argh(option)]
    pub stride: Option<usize>,
    /// batch size (default 8; 2 with --config, as the book)
    #[argh(option)]
    pub batch: Option<usize>,
    /// epochs over the training split (default 10, as the book; main job: 2)
    #[argh(option)]
    pub epochs: Option<u64>,
    /// optimizer steps (instead of --epochs)
    #[argh(option)]
    pub steps: Option<u64>,
    /// learning rate, the peak of a schedule (default 4e-4; main job: 1e-3)
    #[argh(option)]
    pub lr: Option<f32>,
    /// final learning rate of the cosine schedule (default 1e-6)
    #[argh(option)]
    pub min_lr: Option<f32>,
    /// learning rate at the start of the warmup (default 3e-5)
    #[argh(option)]
    pub initial_lr: Option<f32>,
    /// linear warmup steps (default 0)
    #[argh(option)]
    pub warmup_steps: Option<u64>,
    /// learning-rate schedule: constant (default, the book's ch05) or cosine (appendix D)
    #[argh(option)]
    pub schedule: Option<String>,
    /// decoupled AdamW weight decay (default 0.1, on every parameter as the book)
    #[argh(option)]
    pub weight_decay: Option<f64>,
    /// apply weight decay to 2-D tensors only (not to biases and LayerNorm)
    #[argh(switch)]
    pub decay_2d_only: bool,
    /// clip the global gradient norm to this value (off by default; appendix D uses 1.0)
    #[argh(option)]
    pub clip: Option<f32>,
    /// micro-batches per optimizer step (default 1)
    #[argh(option)]
    pub grad_accum: Option<usize>,
    /// dropout rate at the embedding, attention weights and residual branches (default 0.1)
    #[argh(option)]
    pub dropout: Option<f32>,
    /// give the query/key/value projections a bias
    #[argh(switch)]
    pub qkv_bias: bool,
    /// tie the output head to the token embedding (GPT-2; a modern family: as transformers,
    /// with the embedding N(0, 0.02))
    #[argh(switch)]
    pub tied_head: bool,
    /// give a model of the modern families its own output head (the default without --config;
    /// the presets tie it)
    #[argh(switch)]
    pub untied_head: bool,
    /// standard deviation of a fresh modern-family model's token embedding (default 1, as
    /// PyTorch's nn.Embedding and the book, with an own head; 0.02, as transformers, with a tied
    /// head or a preset: see README)
    #[argh(option)]
    pub embed_std: Option<f32>,
    /// random seed of initialisation, shuffles and dropout (default 123)
    #[argh(option)]
    pub seed: Option<u64>,
    /// initialisation of a fresh model: torch (the book's PyTorch defaults, default) or gpt2 (N(0, 0.02))
    #[argh(option)]
    pub init_scheme: Option<String>,
    /// evaluate every N optimizer steps (default 5; main job: 25)
    #[argh(option)]
    pub eval_every: Option<u64>,
    /// batches per evaluation of each split (default 5)
    #[argh(option)]
    pub eval_batches: Option<usize>,
    /// prompt of the samples printed after every epoch (default "Every effort moves you"; main job: "The trainer")
    #[argh(option)]
    pub prompt: Option<String>,
    /// tokens per sample (default 50)
    #[argh(option)]
    pub sample_tokens: Option<usize>,
    /// a tokenizer file made by `ember-train tokenizer` (default: GPT-2's vocabulary)
    #[argh(option)]
    pub tokenizer: Option<PathBuf>,
    /// output directory (default: a fresh runs/<timestamp>)
    #[argh(option)]
    pub out: Option<PathBuf>,
    /// continue the run in this directory (or checkpoint) exactly where it stopped
    #[argh(option)]
    pub resume: Option<PathBuf>,
    /// start from this checkpoint's weights (e.g. an imported GPT-2), with a fresh optimizer
    #[argh(option)]
    pub init: Option<PathBuf>,
    /// also save a checkpoint every N steps (always at the end of every epoch and at the end)
    #[argh(option)]
    pub checkpoint_every: Option<u64>,
    /// worker threads (default: one per core)
    #[argh(option)]
    pub threads: Option<usize>,
    /// print one JSON object on stdout at the end
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "eval")]
/// Measure a checkpoint's loss and perplexity on text files.
pub struct EvalArgs {
    /// the checkpoint (a run directory, checkpoints/ directory or step directory)
    #[argh(positional)]
    pub checkpoint: PathBuf,
    /// a UTF-8 text file (repeatable)
    #[argh(option)]
    pub data: Vec<PathBuf>,
    /// window length (default: the run's, else the model's context)
    #[argh(option)]
    pub context: Option<usize>,
    /// windows per forward pass (default 4)
    #[argh(option)]
    pub batch: Option<usize>,
    /// worker threads (default: one per core)
    #[argh(option)]
    pub threads: Option<usize>,
    /// print one JSON object on stdout at the end
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "tokenizer")]
/// Train a byte-level BPE tokenizer on text files and write it as a .ember file (for
/// pretrain --tokenizer).
pub struct TokenizerArgs {
    /// a UTF-8 text file (repeatable)
    #[argh(option)]
    pub data: Vec<PathBuf>,
    /// number of ids: 256 bytes + merges + <|endoftext|> (at least 257)
    #[argh(option)]
    pub vocab_size: usize,
    /// the tokenizer file to write
    #[argh(option)]
    pub out: PathBuf,
    /// print one JSON object on stdout at the end
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "prepare")]
/// Tokenize text files (any amount: many files, gigabytes) into a directory of token shards and a
/// manifest, in parallel and streamed, for training on corpora larger than memory. Each file is a
/// document; the last --val-fraction of each goes to the validation shards.
pub struct PrepareArgs {
    /// a text file or a directory of them (repeatable; directories are read recursively)
    #[argh(option)]
    pub data: Vec<PathBuf>,
    /// the directory to create
    #[argh(option)]
    pub out: PathBuf,
    /// the tokenizer (.ember model or tokenizer file; default GPT-2's)
    #[argh(option)]
    pub tokenizer: Option<PathBuf>,
    /// the fraction of each document for validation, from its end (default 0.1)
    #[argh(option)]
    pub val_fraction: Option<f64>,
    /// tokens per shard (default 100,000,000)
    #[argh(option)]
    pub shard_tokens: Option<u64>,
    /// worker threads (default: one per core)
    #[argh(option)]
    pub threads: Option<usize>,
    /// print one JSON object on stdout at the end
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "export")]
/// Export a checkpoint, or a Hugging Face model directory (Llama 3.x, SmolLM2, Qwen2.5, Qwen3,
/// Gemma 3, GPT-2: config.json + model.safetensors or sharded weights), to one .ember model file
/// (f32, f16, int8 or int4) that ember runs.
pub struct ExportArgs {
    /// the checkpoint (a run directory, checkpoints/ directory or step directory) or a Hugging
    /// Face model directory
    #[argh(positional)]
    pub checkpoint: PathBuf,
    /// weight dtype: f32, f16, int8 or int4 (int4: 4-bit matrices, the embeddings and the
    /// output head at 6 bits)
    #[argh(option)]
    pub dtype: String,
    /// keep these weight matrices at f16 (repeatable): a tensor name as `ember inspect` lists
    /// it, or its part after blocks.N. for every layer (e.g. ff.proj.weight)
    #[argh(option)]
    pub keep_f16: Vec<String>,
    /// with --dtype int4: keep these weight matrices at int8 (repeatable, named as for
    /// --keep-f16); given, it replaces the default 6-bit set unless --keep-q6 is given too;
    /// `none` keeps none (with no --keep-q6: every matrix at int4)
    #[argh(option)]
    pub keep_int8: Vec<String>,
    /// with --dtype int4: store these weight matrices at 6 bits (repeatable, named as for
    /// --keep-f16) instead of the default set, the embeddings and the output head; `none`
    /// stores none at 6 bits
    #[argh(option)]
    pub keep_q6: Vec<String>,
    /// the .ember file to write
    #[argh(option)]
    pub out: PathBuf,
    /// print one JSON object on stdout at the end
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "import")]
/// Import GPT-2 weights (Hugging Face or the book's safetensors) as a checkpoint; without
/// vocab.json and merges.txt, GPT-2's tokenizer, or none when the vocabulary is not GPT-2's.
/// A Hugging Face Llama, Qwen2, Qwen3 or Gemma 3 directory is imported with its config.json,
/// generation_config.json and tokenizer files kept verbatim in CKPT/hf/ (carried to every later
/// checkpoint; export and export-safetensors write them back).
pub struct ImportArgs {
    /// a .safetensors file or a directory holding model.safetensors (+ config.json, vocab.json, merges.txt)
    #[argh(option)]
    pub from: PathBuf,
    /// the checkpoint directory to write
    #[argh(option)]
    pub out: PathBuf,
    /// number of attention heads (book-layout files do not record it)
    #[argh(option)]
    pub heads: Option<usize>,
    /// print one JSON object on stdout at the end
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "export-safetensors")]
/// Export a checkpoint for PyTorch: --layout hf writes model.safetensors and config.json that
/// transformers' GPT2LMHeadModel.from_pretrained(DIR) loads; --layout book writes the book's
/// GPTModel state-dict names (load_state_dict) and its config as JSON. A Llama, Qwen2, Qwen3 or
/// Gemma 3 checkpoint exports as a Hugging Face directory (--layout hf only) that
/// AutoModelForCausalLM.from_pretrained(DIR) loads, with the tokenizer, chat template and
/// generation files it was imported with (AutoTokenizer.from_pretrained(DIR)).
pub struct ExportSafetensorsArgs {
    /// the checkpoint (a run directory, checkpoints/ directory or step directory)
    #[argh(positional)]
    pub checkpoint: PathBuf,
    /// hf (Hugging Face, the default) or book
    #[argh(option, default = "String::from(\"hf\")")]
    pub layout: String,
    /// tensor dtype of a Llama/Qwen/Gemma 3 export: f32 (the default, exact), bf16 or f16
    #[argh(option)]
    pub dtype: Option<String>,
    /// the directory to write
    #[argh(option)]
    pub out: PathBuf,
    /// print one JSON object on stdout at the end
    #[argh(switch)]
    pub json: bool,
}

/// Where human output goes. `log` receives progress (stderr); `out` the final summary (stdout,
/// or stderr under `--json`); `tty` says whether `log` is a terminal (progress bar) or not (one
/// line per evaluation).
pub struct Console<'a> {
    /// Progress and notes.
    pub log: &'a mut (dyn Write + Send),
    /// The final human summary.
    pub out: &'a mut (dyn Write + Send),
    /// Whether `log` is a terminal.
    pub tty: bool,
}

impl fmt::Debug for Console<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Console").field("tty", &self.tty).finish()
    }
}

/// Writes a line to `log`, ignoring a closed stream (output is best effort; results are not).
#[macro_export]
macro_rules! note {
    ($con:expr, $($arg:tt)*) => {{
        let _ = writeln!($con.log, $($arg)*);
    }};
}

/// Writes a line to `out`.
#[macro_export]
macro_rules! say {
    ($con:expr, $($arg:tt)*) => {{
        let _ = writeln!($con.out, $($arg)*);
    }};
}

/// A failed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CliError {
    /// The flags are inconsistent (exit code 2).
    Usage(String),
    /// The command failed (exit code 1).
    Failed(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Failed(_) => 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CliError {}

/// A usage error (exit code 2).
pub(crate) fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

/// A failed command (exit code 1).
pub(crate) fn failed(msg: impl Into<String>) -> CliError {
    CliError::Failed(msg.into())
}

/// A finished command: its JSON result and exit code (0, or 130 after Ctrl-C).
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The `--json` object.
    pub json: serde_json::Value,
    /// The process exit code.
    pub exit_code: i32,
}

/// Runs a parsed command.
/// Runs a command; `comm` is the group of processes this one belongs to (`mpirun`), of size 1
/// otherwise. Only `pretrain` runs on several.
pub fn run(args: Args, con: &mut Console<'_>, comm: &dyn Comm) -> Result<Outcome, CliError> {
    if comm.size() > 1 && !matches!(args.command, Command::Pretrain(_)) {
        return Err(usage(format!(
            "started as {} ranks (mpirun), but only `pretrain` trains on several processes; run \
             this command without mpirun",
            comm.size()
        )));
    }
    match args.command {
        Command::Pretrain(a) => pretrain::run(a, con, comm),
        Command::Eval(a) => eval::eval(a, con),
        Command::Tokenizer(a) => tokenizer::tokenizer(a, con),
        Command::Export(a) => export::export(a, con),
        Command::Import(a) => import::import(a, con),
        Command::ExportSafetensors(a) => export_safetensors::export_safetensors(a, con),
        Command::Prepare(a) => prepare::prepare(a, con),
        Command::Finetune(f) => match f.mode {
            FinetuneMode::Classify(a) => classify::run(a, con),
            FinetuneMode::Instruct(a) => instruct::run(a, con),
        },
    }
}

/// Runs `f` in a rayon pool of `threads` threads (the global pool when `None`).
pub fn with_threads<T: Send>(
    threads: Option<usize>,
    f: impl FnOnce() -> T + Send,
) -> Result<T, CliError> {
    match threads {
        None => Ok(f()),
        Some(0) => Err(CliError::Usage(
            "--threads 0: must be at least 1 (leave --threads out for one thread per core)".into(),
        )),
        Some(n) => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| CliError::Failed(format!("--threads {n}: {e}")))?;
            Ok(pool.install(f))
        }
    }
}

/// `n` and `word`, plural unless `n` is 1: `1 epoch`, `3 epochs`, `2 batches`.
pub fn count(n: impl Into<u64>, word: &str) -> String {
    let n: u64 = n.into();
    match n {
        1 => format!("1 {word}"),
        _ if word.ends_with("tch") || word.ends_with('s') => format!("{n} {word}es"),
        _ => format!("{n} {word}s"),
    }
}

/// Seconds as `1h02m`, `3m05s` or `12.3s`.
pub fn fmt_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{secs:.1}s")
    }
}

/// A path for display in a command the user can paste: quoted when it has spaces.
pub fn shell_path(p: &std::path::Path) -> String {
    let s = p.display().to_string();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@,".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// How a hint at the end of a run names the program `name` (`ember`, `ember-train`) so that the
/// command can be pasted: the bare name when it is on `PATH`; otherwise the running executable's
/// sibling (a `cargo run` user has `target/release/ember`, not `ember`), relative to the current
/// directory when it lies below it.
pub fn hint_bin(name: &str) -> String {
    hint_bin_in(
        name,
        std::env::var_os("PATH").as_deref(),
        std::env::current_exe().ok().as_deref(),
        std::env::current_dir().ok().as_deref(),
    )
}

fn hint_bin_in(
    name: &str,
    path_var: Option<&std::ffi::OsStr>,
    exe: Option<&std::path::Path>,
    cwd: Option<&std::path::Path>,
) -> String {
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let on_path =
        path_var.is_some_and(|p| std::env::split_paths(p).any(|d| d.join(&file).is_file()));
    match exe.and_then(std::path::Path::parent) {
        Some(dir) if !on_path => {
            let sibling = dir.join(&file);
            let shown = cwd
                .and_then(|c| sibling.strip_prefix(c).ok())
                .map_or(sibling.clone(), std::path::Path::to_path_buf);
            shell_path(&shown)
        }
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_a_program_that_runs() {
        use std::path::Path;
        let tmp = std::env::temp_dir().join(format!("emberlm-hint-{}", std::process::id()));
        let bin = tmp.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let exe = Path::new("/work/repo/target/release/ember-train");
        let cwd = Path::new("/work/repo");
        // Not on PATH: the sibling, relative to the current directory when below it.
        let path = std::env::join_paths([&bin]).unwrap();
        assert_eq!(
            hint_bin_in("ember", Some(&path), Some(exe), Some(cwd)),
            "target/release/ember"
        );
        assert_eq!(
            hint_bin_in("ember", None, Some(exe), Some(Path::new("/elsewhere"))),
            "/work/repo/target/release/ember"
        );
        // On PATH: the bare name.
        std::fs::write(
            bin.join(format!("ember{}", std::env::consts::EXE_SUFFIX)),
            "",
        )
        .unwrap();
        assert_eq!(
            hint_bin_in("ember", Some(&path), Some(exe), Some(cwd)),
            "ember"
        );
        assert_eq!(hint_bin_in("ember", None, None, None), "ember");
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn counts_agree_with_their_noun() {
        assert_eq!(count(1u64, "epoch"), "1 epoch");
        assert_eq!(count(0u64, "epoch"), "0 epochs");
        assert_eq!(count(2u32, "batch"), "2 batches");
        assert_eq!(count(1u32, "batch"), "1 batch");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(12.34), "12.3s");
        assert_eq!(fmt_duration(185.0), "3m05s");
        assert_eq!(fmt_duration(3720.0), "1h02m");
        assert_eq!(fmt_duration(f64::NAN), "?");
    }

    #[test]
    fn paths_are_quoted_for_the_shell() {
        assert_eq!(shell_path(std::path::Path::new("runs/a-1")), "runs/a-1");
        assert_eq!(shell_path(std::path::Path::new("my run")), "'my run'");
        assert_eq!(shell_path(std::path::Path::new("it's")), r"'it'\''s'");
    }

    #[test]
    fn pretrain_takes_no_required_flags_and_repeats_data() {
        let a = Args::from_args(
            &["ember-train"],
            &[
                "pretrain",
                "--data",
                "a.txt",
                "--data",
                "b.txt",
                "--decay-2d-only",
            ],
        )
        .unwrap();
        match a.command {
            Command::Pretrain(p) => {
                assert_eq!(p.data.len(), 2);
                assert!(p.decay_2d_only);
                assert_eq!(p.lr, None);
            }
            _ => panic!("not pretrain"),
        }
        let a = Args::from_args(&["ember-train"], &["pretrain"]).unwrap();
        assert!(!a.json());
    }
}
