//! `ember-train pretrain`: the book's `train_model_simple` (ch05) with appendix D's extras.
//!
//! Per optimizer step: zero the gradients; `grad_accum` micro-batches of forward + backward
//! (dropout seeded by (run seed, step, micro-batch)); gradients scaled by 1/grad_accum; global
//! norm computed (and clipped with `--clip`); learning rate from the schedule; AdamW. Every
//! `--eval-every` steps (counting from the first, as the book's `global_step % eval_freq == 0`)
//! the mean loss of `--eval-batches` training and validation batches with dropout off; after every
//! epoch a greedy sample of `--prompt`. Checkpoints at the end of every epoch, every
//! `--checkpoint-every` steps, at the end, and on Ctrl-C; `--resume` continues bit-for-bit.
//! The loop is the shared one of `train_loop.rs`; this file resolves the run (`setup`) and
//! supplies windows, AdamW, samples and checkpoints (`Pretrain`, a `train_loop::Task`).
//!
//! Letters: B batch, T window length (context), V vocabulary, N parameters.

use super::net::Net;
use super::progress::Progress;
use super::train_loop::{
    self, Cursor, Curves, SaveTo, Settings, Task, Trainable, finite_or_null, mem_available,
};
use super::{
    CliError, Console, Outcome, PretrainArgs, count, failed, fmt_duration, shell_path, usage,
};
use crate::adamw::{AdamW, AdamWConfig, DecayPolicy};
use crate::checkpoint::{
    self, Contents, DataRef, FamilyJson, Hyper, InitScheme, Loaded, RngState, RunKind, Schedule,
    TokenizerRef, TrainerState,
};
use crate::corpus;
use crate::data::{self, CacheStatus, DataError, Order, Windows, mix64};
use crate::dist::{self, Comm, Single};
use crate::family::FamilyModel;
use crate::model::{DropoutRates, Gpt, Init, memory_estimate};
use crate::plot;
use crate::shards::{self, Manifest};
use crate::{note, say};
use emberlm_formats::config::{GptConfig, ModelConfig};
use emberlm_formats::tokenizer::{Tokenizer, TrainOptions, train_bpe};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The small default model (and the main job's): L, H, C, T.
const DEFAULT_LAYERS: usize = 4;
const DEFAULT_HEADS: usize = 4;
const DEFAULT_DIM: usize = 128;
const DEFAULT_CONTEXT: usize = 64;
/// BPE vocabulary trained on the built-in corpus.
const BUILTIN_VOCAB: usize = 1024;
/// Batch size: small models, and the presets (the book's 2).
const DEFAULT_BATCH: usize = 8;
const PRESET_BATCH: usize = 2;
const DEFAULT_EPOCHS: u64 = 10;
const DEFAULT_LR: f32 = 4e-4;
/// Appendix D's `train_model` defaults.
const DEFAULT_MIN_LR: f32 = 1e-6;
const DEFAULT_INITIAL_LR: f32 = 3e-5;
const DEFAULT_WEIGHT_DECAY: f64 = 0.1;
const DEFAULT_DROPOUT: f32 = 0.1;
const DEFAULT_SEED: u64 = 123;
const DEFAULT_EVAL_EVERY: u64 = 5;
const DEFAULT_EVAL_BATCHES: usize = 5;
const DEFAULT_PROMPT: &str = "Every effort moves you";
const DEFAULT_SAMPLE_TOKENS: usize = 50;

/// The main job (no --data): the built-in corpus is small, so the windows overlap (stride T/8)
/// to make an epoch long enough to see the loss move between samples. A small model tolerates a
/// larger learning rate than the book's 124M one; evaluations every 25 steps keep the log
/// readable. The sample prompt is a phrase of the corpus. Two epochs, because the validation loss
/// bottoms out at the end of the second and rises in every epoch after it; the best checkpoint is
/// kept anyway.
const MAIN_STRIDE_DIVISOR: usize = 8;
const MAIN_PROMPT: &str = "The trainer";
const MAIN_EPOCHS: u64 = 2;
const MAIN_LR: f32 = 1e-3;
const MAIN_EVAL_EVERY: u64 = 25;

/// The configuration of a fresh model of the modern families from the flags (`--arch` other
/// than gpt2, or a family preset in `--config`); `None` for GPT-2. The vocabulary is the
/// tokenizer's (or `--vocab`); the context defaults to 64 without a preset and to
/// min(preset's, 1024) with one.
fn family_config(
    a: &PretrainArgs,
    tok: &Tokenizer,
    builtin: bool,
) -> Result<Option<ModelConfig>, CliError> {
    let preset = match &a.config {
        Some(name) if GptConfig::preset(name).is_err() => {
            Some(ModelConfig::preset(name).map_err(|_| {
                usage(format!(
                    "--config {name}: unknown model preset (GPT-2: 124m, 355m, 774m, 1558m; modern \
                     families: smollm2-135m, smollm2-360m, qwen2.5-0.5b, qwen3-0.6b, llama3.2-1b, \
                     gemma3-270m)"
                ))
            })?)
        }
        _ => None,
    };
    let arch = match (a.arch.as_deref(), &preset) {
        (None | Some("gpt2"), None) => {
            for (given, name) in [
                (a.kv_heads.is_some(), "--kv-heads"),
                (a.ffn_dim.is_some(), "--ffn-dim"),
                (a.head_dim.is_some(), "--head-dim"),
                (a.rope_theta.is_some(), "--rope-theta"),
            ] {
                if given {
                    return Err(usage(format!(
                        "{name} shapes the modern families: give --arch llama, qwen2, qwen3 or \
                         gemma3"
                    )));
                }
            }
            if a.untied_head || a.embed_std.is_some() {
                return Err(usage(
                    "--untied-head and --embed-std shape the modern families (GPT-2's head is \
                     untied unless --tied-head; --init-scheme sets its initialisation)",
                ));
            }
            return Ok(None);
        }
        (Some("gpt2"), Some(p)) => {
            return Err(usage(format!(
                "--arch gpt2 with a {} preset: leave --arch out, or pick a GPT-2 preset",
                p.arch.name()
            )));
        }
        (None, Some(p)) => p.arch.name().to_string(),
        (Some(x), p) => {
            if FamilyJson::base_preset(x).is_none() {
                return Err(usage(format!(
                    "--arch {x}: unknown architecture (gpt2, llama, qwen2, qwen3, gemma3)"
                )));
            }
            if let Some(p) = p.filter(|p| p.arch.name() != x) {
                return Err(usage(format!(
                    "--arch {x} with --config {}: that preset is a {} model",
                    a.config.as_deref().unwrap_or(""),
                    p.arch.name()
                )));
            }
            x.to_string()
        }
    };
    for (given, name, why) in [
        (
            a.qkv_bias,
            "--qkv-bias",
            "the architecture decides (qwen2 has them)",
        ),
        (
            a.init_scheme.is_some(),
            "--init-scheme",
            "the modern families start as transformers initialises them (N(0, 0.02))",
        ),
        (
            a.dropout.is_some_and(|d| d != 0.0),
            "--dropout",
            "the modern families train without dropout",
        ),
    ] {
        if given {
            return Err(usage(format!(
                "{name} does not apply to --arch {arch}: {why}"
            )));
        }
    }
    let base = match &preset {
        Some(p) => *p,
        None => ModelConfig::preset(FamilyJson::base_preset(&arch).expect("checked"))
            .map_err(|e| failed(e.to_string()))?,
    };
    let dim = a.dim.unwrap_or(if preset.is_some() {
        base.dim
    } else {
        DEFAULT_DIM
    });
    let heads = a.heads.unwrap_or(if preset.is_some() {
        base.n_heads
    } else {
        DEFAULT_HEADS
    });
    let head_dim = a.head_dim.unwrap_or(
        if preset.is_some() && a.dim.is_none() && a.heads.is_none() {
            base.head_dim
        } else {
            dim / heads.max(1)
        },
    );
    let kv_heads = a
        .kv_heads
        .unwrap_or(if preset.is_some() && a.heads.is_none() {
            base.n_kv_heads
        } else if heads % 2 == 0 {
            heads / 2
        } else {
            heads
        });
    let ffn_dim = a.ffn_dim.unwrap_or(if preset.is_some() && a.dim.is_none() {
        base.ffn_dim
    } else {
        (8 * dim).div_ceil(3).div_ceil(64) * 64
    });
    let vocab = match a.vocab {
        Some(v) if !builtin => {
            if v < tok.vocab_size() {
                return Err(usage(format!(
                    "--vocab {v} is smaller than the tokenizer's {} ids",
                    tok.vocab_size()
                )));
            }
            v
        }
        _ => tok.vocab_size(),
    };
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(usage(format!(
            "--heads {heads} --kv-heads {kv_heads}: the query heads must be a positive multiple \
             of the key/value heads"
        )));
    }
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(usage(format!(
            "--head-dim {head_dim}: rotary embeddings need an even, positive head size"
        )));
    }
    // The base's architecture details with this shape; Gemma's embedding scale √C, every
    // family's query scale 1/√D and Gemma's window (at most the context) follow the shape.
    let mut c = base;
    c.vocab_size = vocab;
    c.context_length = a.context.unwrap_or(if preset.is_some() {
        base.context_length.min(1024)
    } else {
        DEFAULT_CONTEXT
    });
    c.dim = dim;
    c.n_layers = a.layers.unwrap_or(if preset.is_some() {
        base.n_layers
    } else {
        DEFAULT_LAYERS
    });
    c.n_heads = heads;
    c.n_kv_heads = kv_heads;
    c.head_dim = head_dim;
    c.ffn_dim = ffn_dim;
    if a.tied_head && a.untied_head {
        return Err(usage("give --tied-head or --untied-head, not both"));
    }
    // Without a preset, a fresh model follows the book's bonus notebooks (its own head, the
    // embedding N(0, 1): see `embed_std`); a preset keeps the real model's tied head.
    c.tied_head = !a.untied_head && (a.tied_head || (preset.is_some() && base.tied_head));
    if let Some(s) = a.embed_std {
        if !(s.is_finite() && s > 0.0) {
            return Err(usage(format!("--embed-std {s}: must be positive")));
        }
        if c.tied_head && s > 0.1 {
            return Err(usage(format!(
                "--embed-std {s} with a tied head: the logits would start {s}·√dim wide; add \
                 --untied-head"
            )));
        }
    }
    if let (Some(r), Some(theta)) = (c.rope.as_mut(), a.rope_theta) {
        r.theta = theta;
    }
    if c.arch == emberlm_formats::config::Arch::Gemma3 {
        c.embed_scale = (dim as f32).sqrt();
        if let Some(w) = c.sliding.as_mut() {
            w.window = w.window.min(c.context_length.max(1));
        }
    }
    c.query_scale = 1.0 / (head_dim as f32).sqrt();
    c.validate()
        .map_err(|e| usage(format!("model configuration (--arch {arch}): {e}")))?;
    Ok(Some(c))
}

/// The number of parameters of a model of the modern families.
fn family_params(c: &ModelConfig) -> usize {
    emberlm_formats::arch::tensors(c, None)
        .iter()
        .map(|t| t.len())
        .sum()
}

/// Where a run's files go.
#[derive(Debug)]
struct OutFiles {
    dir: PathBuf,
    csv: PathBuf,
    svg: PathBuf,
}

/// Runs `ember-train pretrain`.
pub fn run(a: PretrainArgs, con: &mut Console<'_>, comm: &dyn Comm) -> Result<Outcome, CliError> {
    let threads = a.threads;
    if comm.size() == 1 {
        return super::with_threads(threads, || train(a, con, &Single))?;
    }
    // Several ranks: MPI is called from this thread only (the one that initialized it), so the
    // training threads are rayon's global pool, sized here before anything uses it.
    if let Some(n) = threads {
        if n == 0 {
            return Err(usage(
                "--threads 0: must be at least 1 (leave --threads out for one thread per core)",
            ));
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| failed(format!("--threads {n}: {e}")))?;
    }
    train(a, con, comm)
}

/// Whether `out_dir` holds a training run. A run exists once `checkpoints/latest` does: a
/// `checkpoints/` without it is a first save that a crash interrupted (nothing to resume), and a
/// fresh run may take its place.
fn holds_run(out_dir: &Path) -> bool {
    out_dir.join("checkpoints").join("latest").exists()
}

fn already_a_run(out_dir: &Path) -> String {
    format!(
        "--out {}: already holds a training run; continue it with --resume {} or choose another --out",
        out_dir.display(),
        shell_path(out_dir)
    )
}

/// Flags that fix the run and so cannot change on `--resume`.
fn fixed_flags_given(a: &PretrainArgs) -> Vec<&'static str> {
    let mut v = Vec::new();
    let mut chk = |given: bool, name: &'static str| {
        if given {
            v.push(name);
        }
    };
    chk(a.config.is_some(), "--config");
    chk(a.layers.is_some(), "--layers");
    chk(a.heads.is_some(), "--heads");
    chk(a.dim.is_some(), "--dim");
    chk(a.context.is_some(), "--context");
    chk(a.vocab.is_some(), "--vocab");
    chk(a.stride.is_some(), "--stride");
    chk(a.batch.is_some(), "--batch");
    chk(a.lr.is_some(), "--lr");
    chk(a.min_lr.is_some(), "--min-lr");
    chk(a.initial_lr.is_some(), "--initial-lr");
    chk(a.warmup_steps.is_some(), "--warmup-steps");
    chk(a.schedule.is_some(), "--schedule");
    chk(a.weight_decay.is_some(), "--weight-decay");
    chk(a.decay_2d_only, "--decay-2d-only");
    chk(a.clip.is_some(), "--clip");
    chk(a.grad_accum.is_some(), "--grad-accum");
    chk(a.dropout.is_some(), "--dropout");
    chk(a.qkv_bias, "--qkv-bias");
    chk(a.tied_head, "--tied-head");
    chk(a.untied_head, "--untied-head");
    chk(a.embed_std.is_some(), "--embed-std");
    chk(a.seed.is_some(), "--seed");
    chk(a.init_scheme.is_some(), "--init-scheme");
    chk(a.eval_every.is_some(), "--eval-every");
    chk(a.eval_batches.is_some(), "--eval-batches");
    chk(a.prompt.is_some(), "--prompt");
    chk(a.sample_tokens.is_some(), "--sample-tokens");
    chk(a.tokenizer.is_some(), "--tokenizer");
    chk(a.init.is_some(), "--init");
    chk(a.arch.is_some(), "--arch");
    chk(a.kv_heads.is_some(), "--kv-heads");
    chk(a.ffn_dim.is_some(), "--ffn-dim");
    chk(a.head_dim.is_some(), "--head-dim");
    chk(a.rope_theta.is_some(), "--rope-theta");
    v
}

/// Checks the numeric flags' ranges.
fn validate_numbers(h: &Hyper) -> Result<(), CliError> {
    let pos_f = |v: f32, name: &str| {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(usage(format!("{name} {v}: must be a positive number")))
        }
    };
    pos_f(h.lr, "--lr")?;
    if !(h.min_lr.is_finite() && h.min_lr >= 0.0) {
        return Err(usage(format!("--min-lr {}: must be >= 0", h.min_lr)));
    }
    if !(h.initial_lr.is_finite() && h.initial_lr >= 0.0) {
        return Err(usage(format!(
            "--initial-lr {}: must be >= 0",
            h.initial_lr
        )));
    }
    if let Some(c) = h.clip {
        pos_f(c, "--clip")?;
    }
    if !(h.weight_decay.is_finite() && h.weight_decay >= 0.0) {
        return Err(usage(format!(
            "--weight-decay {}: must be >= 0",
            h.weight_decay
        )));
    }
    if !(h.dropout.is_finite() && (0.0..1.0).contains(&h.dropout)) {
        return Err(usage(format!("--dropout {}: must be in [0, 1)", h.dropout)));
    }
    for (v, name) in [
        (h.batch, "--batch"),
        (h.stride, "--stride"),
        (h.grad_accum, "--grad-accum"),
        (h.eval_batches, "--eval-batches"),
        (h.context, "--context"),
    ] {
        if v == 0 {
            return Err(usage(format!("{name} must be at least 1")));
        }
    }
    if h.eval_every == 0 {
        return Err(usage("--eval-every must be at least 1"));
    }
    Ok(())
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// `runs/YYYYMMDD-HHMMSS` (UTC), with a suffix if it exists.
fn fresh_run_dir() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let base = format!(
        "runs/{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    );
    let mut p = PathBuf::from(&base);
    let mut k = 2;
    while p.exists() {
        p = PathBuf::from(format!("{base}-{k}"));
        k += 1;
    }
    p
}

/// Everything the training loop needs, resolved from the flags or the checkpoint.
struct Setup {
    /// GPT-2's configuration; for a model of the modern families, its common fields.
    cfg: GptConfig,
    /// The configuration of a model of the modern families (`--arch llama|qwen2|qwen3|gemma3`).
    family: Option<ModelConfig>,
    hyper: Hyper,
    tokenizer: Tokenizer,
    tok_ref: TokenizerRef,
    data_refs: Vec<DataRef>,
    /// How the data is named in errors (`--data FILE`, `the built-in corpus`).
    data_name: String,
    train: Windows,
    val: Windows,
    batches_per_epoch: usize,
    steps_per_epoch: u64,
    files: OutFiles,
    /// The state to continue from, when resuming.
    resume: Option<Loaded>,
    /// Initial parameters from `--init`.
    init_params: Option<Vec<f32>>,
    /// The `hf/` files of the `--init` or `--resume` checkpoint.
    hf: Option<checkpoint::HfFiles>,
}

fn data_error(name: &str, e: DataError) -> CliError {
    match e {
        DataError::TooShort { .. } => failed(format!("{name}: {e}")),
        _ => failed(format!("--data {e}")),
    }
}

/// The training text of a run: its files (or the built-in corpus), as read.
struct RunData {
    texts: Vec<String>,
    /// A directory of token shards (`ember-train prepare`) instead of texts.
    shards: Option<(PathBuf, Manifest)>,
    refs: Vec<DataRef>,
    /// The built-in corpus (no `--data`).
    builtin: bool,
    /// How the data is named in errors (`--data FILE`, `the built-in corpus`).
    name: String,
}

/// Reads `--data` (or the resumed run's files, or the built-in corpus); a resumed run's data
/// must be the same bytes.
fn read_data(a: &PretrainArgs, resume: Option<&Loaded>) -> Result<RunData, CliError> {
    let builtin_stored = resume.is_some_and(|l| {
        l.state
            .data
            .first()
            .is_some_and(|d| d.path.starts_with(corpus::PREFIX))
    });
    let builtin = a.data.is_empty() && (resume.is_none() || builtin_stored);
    let mut texts: Vec<String> = Vec::new();
    let mut data_refs = Vec::new();
    let mut shards = None;
    let stored_dir = resume
        .and_then(|l| l.state.data.first())
        .map(|d| PathBuf::from(&d.path))
        .filter(|p| a.data.is_empty() && p.is_dir());
    let shard_dir = match (a.data.as_slice(), &stored_dir) {
        ([one], _) if one.is_dir() => Some(one.clone()),
        ([], Some(d)) => Some(d.clone()),
        _ => None,
    };
    if let Some(dir) = shard_dir {
        if !dir.join("manifest.json").exists() {
            return Err(failed(format!(
                "--data {}: is a directory without manifest.json (give text files, or a directory \
                 of token shards made by `ember-train prepare`)",
                dir.display()
            )));
        }
        let m = shards::read_manifest(&dir).map_err(|e| failed(format!("--data {e}")))?;
        let manifest = std::fs::read(dir.join("manifest.json"))
            .map_err(|e| failed(format!("--data {}: {e}", dir.display())))?;
        data_refs.push(DataRef {
            path: dir.display().to_string(),
            bytes: m.train_tokens() + m.val_tokens(),
            hash: format!("{:016x}", data::fingerprint(&manifest)),
        });
        shards = Some((dir, m));
    } else if builtin {
        for (name, text) in corpus::texts() {
            data_refs.push(DataRef {
                path: format!("{}{name}", corpus::PREFIX),
                bytes: text.len() as u64,
                hash: format!("{:016x}", data::fingerprint(text.as_bytes())),
            });
            texts.push(text.to_string());
        }
    } else {
        let paths: Vec<PathBuf> = if !a.data.is_empty() {
            a.data.clone()
        } else {
            let l = resume.ok_or_else(|| usage("no data"))?;
            l.state
                .data
                .iter()
                .map(|d| PathBuf::from(&d.path))
                .collect()
        };
        for p in &paths {
            let (t, src) = data::read_text(p).map_err(|e| failed(format!("--data {e}")))?;
            data_refs.push(DataRef {
                path: p.display().to_string(),
                bytes: src.bytes,
                hash: format!("{:016x}", src.hash),
            });
            texts.push(t);
        }
    }
    if let Some(l) = resume {
        let same = l.state.data.len() == data_refs.len()
            && l.state
                .data
                .iter()
                .zip(&data_refs)
                .all(|(x, y)| x.hash == y.hash && x.bytes == y.bytes);
        if !same {
            return Err(failed(format!(
                "--resume: the data differs from the run's ({}); resuming would not reproduce the run \
                 (pass the original files with --data)",
                l.state
                    .data
                    .iter()
                    .map(|d| format!("{} {} bytes {}", d.path, d.bytes, d.hash))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let data_name = if builtin {
        "the built-in corpus".to_string()
    } else {
        format!(
            "--data {}",
            data_refs
                .iter()
                .map(|d| d.path.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        )
    };
    Ok(RunData {
        texts,
        shards,
        refs: data_refs,
        builtin,
        name: data_name,
    })
}

/// The hyperparameters of a new run from the flags and the defaults (the main job's when
/// `builtin`); `total_steps` is set later.
fn new_hyper(
    a: &PretrainArgs,
    builtin: bool,
    context: usize,
    init: InitScheme,
) -> Result<Hyper, CliError> {
    let h = Hyper {
        batch: a.batch.unwrap_or(if a.config.is_some() {
            PRESET_BATCH
        } else {
            DEFAULT_BATCH
        }),
        context,
        stride: a.stride.unwrap_or(if builtin {
            (context / MAIN_STRIDE_DIVISOR).max(1)
        } else {
            context
        }),
        lr: a.lr.unwrap_or(if builtin { MAIN_LR } else { DEFAULT_LR }),
        schedule: match &a.schedule {
            Some(name) => name.parse().map_err(|e| usage(format!("--schedule {e}")))?,
            None => Schedule::Constant,
        },
        initial_lr: a.initial_lr.unwrap_or(DEFAULT_INITIAL_LR),
        min_lr: a.min_lr.unwrap_or(DEFAULT_MIN_LR),
        warmup_steps: a.warmup_steps.unwrap_or(0),
        weight_decay: a.weight_decay.unwrap_or(DEFAULT_WEIGHT_DECAY),
        decay_2d_only: a.decay_2d_only,
        clip: a.clip,
        grad_accum: a.grad_accum.unwrap_or(1),
        dropout: a.dropout.unwrap_or(DEFAULT_DROPOUT),
        seed: a.seed.unwrap_or(DEFAULT_SEED),
        eval_every: a.eval_every.unwrap_or(if builtin {
            MAIN_EVAL_EVERY
        } else {
            DEFAULT_EVAL_EVERY
        }),
        eval_batches: a.eval_batches.unwrap_or(DEFAULT_EVAL_BATCHES),
        prompt: a
            .prompt
            .clone()
            .unwrap_or_else(|| if builtin { MAIN_PROMPT } else { DEFAULT_PROMPT }.to_string()),
        sample_tokens: a.sample_tokens.unwrap_or(DEFAULT_SAMPLE_TOKENS),
        total_steps: 0,
        init,
    };
    validate_numbers(&h)?;
    Ok(h)
}

/// The run's directory (`--out`, the resumed run's, or a fresh `runs/…`), created.
/// The run's directory, created by the leading rank (`lead`) only.
fn create_out_dir(
    a: &PretrainArgs,
    resume: Option<&Loaded>,
    lead: bool,
) -> Result<PathBuf, CliError> {
    let out_dir = match (&a.out, resume) {
        (Some(o), _) => o.clone(),
        (None, Some(l)) => {
            let root = l
                .dir
                .parent()
                .filter(|p| p.file_name().is_some_and(|n| n == "checkpoints"));
            match root.and_then(Path::parent) {
                Some(d) => d.to_path_buf(),
                None => {
                    return Err(usage(format!(
                        "--resume {}: not inside a run directory; give --out",
                        l.dir.display()
                    )));
                }
            }
        }
        (None, None) => fresh_run_dir(),
    };
    if resume.is_none() && holds_run(&out_dir) {
        return Err(usage(already_a_run(&out_dir)));
    }
    if !lead {
        return Ok(out_dir);
    }
    std::fs::create_dir_all(&out_dir).map_err(|e| {
        failed(format!(
            "--out {}: {}",
            out_dir.display(),
            data::io_reason(&e)
        ))
    })?;
    Ok(out_dir)
}

fn setup(a: &PretrainArgs, con: &mut Console<'_>, lead: bool) -> Result<Setup, CliError> {
    if a.epochs.is_some() && a.steps.is_some() {
        return Err(usage("give --epochs or --steps, not both"));
    }
    if a.epochs == Some(0) || a.steps == Some(0) {
        return Err(usage("--epochs and --steps must be at least 1"));
    }
    // Checked before any work: the directory is only created after the data is tokenized.
    if let Some(o) = a.out.as_ref().filter(|o| o.exists() && !o.is_dir()) {
        return Err(usage(format!(
            "--out {}: is a file, expected a directory",
            o.display()
        )));
    }
    if let Some(o) = a
        .out
        .as_ref()
        .filter(|o| a.resume.is_none() && holds_run(o))
    {
        return Err(usage(already_a_run(o)));
    }
    if a.checkpoint_every == Some(0) {
        return Err(usage("--checkpoint-every must be at least 1"));
    }
    if a.resume.is_some() && a.init.is_some() {
        return Err(usage("give --resume or --init, not both"));
    }
    // 1. Where we start: a run to resume, weights to start from, or nothing.
    let resume = match &a.resume {
        Some(p) => {
            let fixed = fixed_flags_given(a);
            if !fixed.is_empty() {
                return Err(usage(format!(
                    "{} cannot be changed on --resume (the run's settings come from its checkpoint; \
                     only --epochs/--steps, --data, --out, --checkpoint-every, --threads and --json may be given)",
                    fixed.join(", ")
                )));
            }
            let l = checkpoint::load(p, true).map_err(|e| failed(format!("--resume {e}")))?;
            if l.state.hyper.is_none() {
                return Err(failed(format!(
                    "--resume {}: this checkpoint was not written by a training run (kind {:?}); \
                     use --init to start from its weights",
                    p.display(),
                    l.state.kind.as_str()
                )));
            }
            Some(l)
        }
        None => None,
    };
    let init = match &a.init {
        Some(p) => {
            for (given, name) in [
                (a.config.is_some(), "--config"),
                (a.layers.is_some(), "--layers"),
                (a.heads.is_some(), "--heads"),
                (a.dim.is_some(), "--dim"),
                (a.vocab.is_some(), "--vocab"),
                (a.qkv_bias, "--qkv-bias"),
                (a.tied_head, "--tied-head"),
                (a.untied_head, "--untied-head"),
                (a.embed_std.is_some(), "--embed-std"),
                (a.tokenizer.is_some(), "--tokenizer"),
                (a.init_scheme.is_some(), "--init-scheme"),
                (a.arch.is_some(), "--arch"),
                (a.kv_heads.is_some(), "--kv-heads"),
                (a.ffn_dim.is_some(), "--ffn-dim"),
                (a.head_dim.is_some(), "--head-dim"),
                (a.rope_theta.is_some(), "--rope-theta"),
            ] {
                if given {
                    return Err(usage(format!(
                        "{name} cannot be combined with --init: the model and its tokenizer come from the checkpoint"
                    )));
                }
            }
            Some(checkpoint::load(p, false).map_err(|e| failed(format!("--init {e}")))?)
        }
        None => None,
    };

    // 2. The data.
    let RunData {
        texts,
        shards: shard_data,
        refs: data_refs,
        builtin,
        name: data_name,
    } = read_data(a, resume.as_ref())?;

    // 3. Tokenizer, configuration and hyperparameters.
    let (tokenizer, tok_kind, cfg, family, hyper) = if let Some(l) = &resume {
        let h = l
            .state
            .hyper
            .clone()
            .ok_or_else(|| failed("no hyperparameters"))?;
        (
            l.text_tokenizer("ember-train pretrain --resume")
                .map_err(failed)?
                .clone(),
            l.state.tokenizer.kind.clone(),
            l.config,
            l.family,
            h,
        )
    } else {
        let (tok, kind) = if let Some(l) = &init {
            (
                l.text_tokenizer("ember-train pretrain --init")
                    .map_err(failed)?
                    .clone(),
                l.state.tokenizer.kind.clone(),
            )
        } else if let Some(p) = &a.tokenizer {
            let t = checkpoint::read_tokenizer_file(p)
                .map_err(|e| failed(format!("--tokenizer {e}")))?;
            (t, "bpe".to_string())
        } else if builtin {
            let n = a.vocab.unwrap_or(BUILTIN_VOCAB);
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let t0 = Instant::now();
            let t = train_bpe(&refs, n, &TrainOptions::default())
                .map_err(|e| usage(format!("--vocab {n}: {e}")))?;
            note!(
                con,
                "tokenizer: trained a {}-id BPE vocabulary on the built-in corpus in {}",
                t.vocab_size(),
                fmt_duration(t0.elapsed().as_secs_f64())
            );
            (t, "bpe".to_string())
        } else {
            (Tokenizer::gpt2().clone(), "gpt2".to_string())
        };
        let family = match &init {
            Some(l) => l.family,
            None => family_config(a, &tok, builtin)?,
        };
        let cfg = if let Some(l) = &init {
            l.config
        } else if let Some(f) = &family {
            GptConfig {
                vocab_size: f.vocab_size,
                context_length: f.context_length,
                dim: f.dim,
                n_layers: f.n_layers,
                n_heads: f.n_heads,
                qkv_bias: false,
                tied_head: f.tied_head,
            }
        } else {
            let mut cfg = match &a.config {
                Some(name) => {
                    GptConfig::preset(name).map_err(|e| usage(format!("--config: {e}")))?
                }
                None => GptConfig {
                    vocab_size: 0,
                    context_length: DEFAULT_CONTEXT,
                    dim: DEFAULT_DIM,
                    n_layers: DEFAULT_LAYERS,
                    n_heads: DEFAULT_HEADS,
                    qkv_bias: false,
                    tied_head: false,
                },
            };
            cfg.n_layers = a.layers.unwrap_or(cfg.n_layers);
            cfg.n_heads = a.heads.unwrap_or(cfg.n_heads);
            cfg.dim = a.dim.unwrap_or(cfg.dim);
            cfg.context_length = a.context.unwrap_or(cfg.context_length);
            cfg.qkv_bias |= a.qkv_bias;
            cfg.tied_head |= a.tied_head;
            cfg.vocab_size = match a.vocab {
                Some(v) if !builtin => {
                    if v < tok.vocab_size() {
                        return Err(usage(format!(
                            "--vocab {v} is smaller than the tokenizer's {} ids",
                            tok.vocab_size()
                        )));
                    }
                    v
                }
                _ => tok.vocab_size(),
            };
            cfg.validate()
                .map_err(|e| usage(format!("model configuration: {e}")))?;
            cfg
        };
        let context = a.context.unwrap_or(cfg.context_length);
        if context > cfg.context_length {
            return Err(usage(format!(
                "--context {context} is larger than the model's context length {} (from --init {})",
                cfg.context_length,
                a.init.as_deref().unwrap_or(Path::new("?")).display()
            )));
        }
        let init_name = match (&a.init, a.init_scheme.as_deref()) {
            (Some(p), _) => InitScheme::Checkpoint(p.display().to_string()),
            (None, None) => InitScheme::Torch,
            (None, Some(o)) => {
                InitScheme::parse_scheme(o).map_err(|e| usage(format!("--init-scheme {e}")))?
            }
        };
        let h = new_hyper(a, builtin, context, init_name)?;
        (tok, kind, cfg, family, h)
    };
    let mut hyper = hyper;
    let tok_ref = TokenizerRef {
        kind: tok_kind,
        vocab_size: tokenizer.vocab_size(),
        hash: format!("{:016x}", data::tokenizer_fingerprint(&tokenizer)),
    };
    if let Some((dir, m)) = &shard_data {
        if m.tokenizer_fingerprint != tok_ref.hash {
            return Err(failed(format!(
                "--data {}: the shards were tokenized with another tokenizer (fingerprint {}, this \
                 run's is {}): pass the --tokenizer that `ember-train prepare` used",
                dir.display(),
                m.tokenizer_fingerprint,
                tok_ref.hash
            )));
        }
    }

    // 4. Memory, before any large allocation: training state plus the sampler's model copy.
    let need = match &family {
        // Parameters, gradients, two moments, the sampler's copy and a scratch gradient.
        Some(f) => (family_params(f) as u64).saturating_mul(24),
        None => memory_estimate(&cfg, hyper.batch, hyper.context)
            .saturating_add((cfg.param_count() as u64).saturating_mul(8)),
    };
    if let Some(avail) = mem_available() {
        if need > avail {
            return Err(failed(format!(
                "--batch {} --context {}: training this {}-parameter model needs about {} (parameters, \
                 gradients, AdamW moments, activations) but only {} is available (MemAvailable); \
                 lower --batch (use --grad-accum to keep the effective batch) or --context",
                hyper.batch,
                hyper.context,
                cfg.param_count(),
                gib(need),
                gib(avail)
            )));
        }
    }

    // 5. Tokens and windows.
    let t = hyper.context;
    let (train, val) = match &shard_data {
        Some((dir, m)) => {
            let open = |infos: &[shards::ShardInfo], split| {
                let ids = data::Ids::open_shards(dir, infos, m.width)
                    .map_err(|e| failed(format!("--data {e}")))?;
                Windows::over(ids, t, hyper.stride, split).map_err(|e| data_error(&data_name, e))
            };
            let (train, val) = (open(&m.train, "training")?, open(&m.val, "validation")?);
            note!(
                con,
                "data: {} + {} tokens in {} shards of {} (memory-mapped)",
                m.train_tokens(),
                m.val_tokens(),
                m.train.len() + m.val.len(),
                dir.display()
            );
            (train, val)
        }
        None => text_windows(&texts, &tokenizer, &hyper, &data_name, con)?,
    };
    let batches_per_epoch = train.num_batches(hyper.batch, true);
    let steps_per_epoch = (batches_per_epoch / hyper.grad_accum) as u64;
    if steps_per_epoch == 0 {
        return Err(failed(format!(
            "{data_name}: the training split has {} windows of {t} tokens (stride {}), not enough for one step of \
             --batch {} × --grad-accum {}; lower --batch, --grad-accum, --context or --stride, or give more text",
            train.len(),
            hyper.stride,
            hyper.batch,
            hyper.grad_accum
        )));
    }
    hyper.total_steps = match (a.steps, a.epochs, &resume) {
        (Some(s), _, _) => s,
        (None, Some(e), _) => e * steps_per_epoch,
        (None, None, Some(_)) => hyper.total_steps,
        (None, None, None) => steps_per_epoch * if builtin { MAIN_EPOCHS } else { DEFAULT_EPOCHS },
    };

    // 6. The output directory.
    let out_dir = create_out_dir(a, resume.as_ref(), lead)?;
    let files = OutFiles {
        csv: out_dir.join("loss.csv"),
        svg: out_dir.join("loss.svg"),
        dir: out_dir,
    };
    // An imported model's Hugging Face files travel on to this run's checkpoints.
    let hf = resume
        .as_ref()
        .or(init.as_ref())
        .and_then(|l| l.state.hf.clone());
    let init_params = init.map(|l| l.params);
    Ok(Setup {
        cfg,
        family,
        hyper,
        tokenizer,
        tok_ref,
        data_refs,
        data_name,
        train,
        val,
        batches_per_epoch,
        steps_per_epoch,
        files,
        resume,
        init_params,
        hf,
    })
}

/// The windows of an in-memory corpus: tokenized (or read from the token cache) and split.
fn text_windows(
    texts: &[String],
    tokenizer: &Tokenizer,
    hyper: &Hyper,
    data_name: &str,
    con: &mut Console<'_>,
) -> Result<(Windows, Windows), CliError> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let (splits, status) = data::load_splits(
        &refs,
        tokenizer,
        data::TRAIN_RATIO,
        data::cache_dir().as_deref(),
    );
    match status {
        CacheStatus::Hit(p) => note!(
            con,
            "data: {} + {} tokens read from the cache {} (not re-tokenized)",
            splits.train.len(),
            splits.val.len(),
            p.display()
        ),
        CacheStatus::Stored(p) => note!(
            con,
            "data: tokenized {} + {} tokens in {}; cached in {}",
            splits.train.len(),
            splits.val.len(),
            fmt_duration(t0.elapsed().as_secs_f64()),
            p.display()
        ),
        CacheStatus::Unavailable(why) => note!(
            con,
            "data: tokenized {} + {} tokens (not cached: {why})",
            splits.train.len(),
            splits.val.len()
        ),
    }
    let t = hyper.context;
    let train = Windows::new(splits.train, t, hyper.stride, "training")
        .map_err(|e| data_error(data_name, e))?;
    let val = Windows::new(splits.val, t, hyper.stride, "validation")
        .map_err(|e| data_error(data_name, e))?;
    Ok((train, val))
}

/// Mean of the per-batch mean losses over the first `max_batches` batches of `w` in `order`
/// (the book's `calc_loss_loader`); NaN when there is no batch.
fn mean_loss(
    model: &mut Net,
    w: &Windows,
    order: &Order,
    b: usize,
    max_batches: usize,
    drop_last: bool,
    (x, y): (&mut Vec<u32>, &mut Vec<i32>),
) -> Result<f32, CliError> {
    let nb = w.num_batches(b, drop_last).min(max_batches);
    if nb == 0 {
        return Ok(f32::NAN);
    }
    let mut sum = 0f64;
    let mut buf = Vec::with_capacity(b);
    for i in 0..nb {
        let idx = order.indices(i * b, ((i + 1) * b).min(w.len()), &mut buf);
        w.fill(idx, x, y);
        let l = model
            .eval_loss(x, y, (idx.len(), w.context))
            .map_err(|e| failed(format!("evaluation: {e}")))?;
        sum += l as f64;
    }
    Ok((sum / nb as f64) as f32)
}

/// Pretraining as a [`train_loop::Task`]: sliding windows, AdamW with its moments, a greedy
/// sample after every epoch, checkpoints that resume bit-for-bit.
struct Pretrain<'a> {
    train: &'a Windows,
    val: &'a Windows,
    val_order: Order,
    order: Order,
    /// The corpus is token shards: shuffles are computed, not listed ([`data::Shuffle`]).
    computed: bool,
    batch_idx: Vec<usize>,
    rng: &'a RngState,
    h: &'a Hyper,
    x: Vec<u32>,
    y: Vec<i32>,
    opt: AdamW,
    tok: &'a Tokenizer,
    /// `trainer.json` without the position.
    base: TrainerState,
    shapes: Vec<(String, Vec<usize>)>,
    dir: &'a Path,
    threads: usize,
    /// The last epoch's sample and the step it was taken at.
    last_sample: Option<(u64, String)>,
    /// The step the loop is at (for the sample's step).
    step: u64,
}

impl Pretrain<'_> {
    fn state(&self, cur: &Cursor) -> TrainerState {
        TrainerState {
            adam_step: Some(self.opt.step_count()),
            ..cur.stamp(&self.base)
        }
    }
}

impl Task<Net> for Pretrain<'_> {
    fn start_epoch(&mut self, epoch: u64) {
        self.order = Order::shuffle(
            self.train.len(),
            self.rng.shuffle_seed,
            epoch,
            self.computed,
        );
    }

    fn micro_batch(
        &mut self,
        model: &mut Net,
        pos: usize,
        seed: u64,
        step_no: u64,
    ) -> Result<(f32, u64), CliError> {
        let (b, t) = (self.h.batch, self.h.context);
        let idx = self
            .order
            .indices(pos * b, (pos + 1) * b, &mut self.batch_idx);
        self.train.fill(idx, &mut self.x, &mut self.y);
        let loss = model
            .train_batch(&self.x, &self.y, (b, t), seed)
            .map_err(|e| failed(format!("step {step_no}: {e}")))?;
        self.step = step_no;
        Ok((loss, (b * t) as u64))
    }

    fn update(&mut self, model: &mut Net, lr: f32) -> Result<(), String> {
        let (p, g) = model.params_and_grads();
        self.opt.step(p, g, lr).map_err(|e| e.to_string())
    }

    fn evaluate(&mut self, model: &mut Net, at: u64) -> Result<(f32, f32), CliError> {
        let (b, n) = (self.h.batch, self.h.eval_batches);
        let eval_order = Order::shuffle(self.train.len(), self.rng.eval_seed, at, self.computed);
        let xy = (&mut self.x, &mut self.y);
        let tl = mean_loss(model, self.train, &eval_order, b, n, true, xy)?;
        let xy = (&mut self.x, &mut self.y);
        let vl = mean_loss(model, self.val, &self.val_order, b, n, false, xy)?;
        Ok((tl, vl))
    }

    fn end_epoch(
        &mut self,
        model: &mut Net,
        epoch: u64,
        progress: &mut Progress,
        con: &mut Console<'_>,
    ) -> Result<(), CliError> {
        let h = self.h;
        let text = model
            .greedy(self.tok, &h.prompt, h.sample_tokens, self.threads)
            .map_err(|e| failed(format!("sample after epoch {}: {e}", epoch + 1)))?;
        progress.line(
            con.log,
            &format!("epoch {} sample: {}", epoch + 1, text.replace('\n', " ")),
        );
        self.last_sample = Some((self.step, text));
        Ok(())
    }

    fn save(&mut self, model: &Net, cur: &Cursor, to: SaveTo<'_>) -> Result<PathBuf, CliError> {
        let state = self.state(cur);
        let c = Contents {
            state: &state,
            shapes: &self.shapes,
            params: model.params(),
            moments: Some((self.opt.m(), self.opt.v())),
            tokenizer: self.tok,
        };
        // The best checkpoint (the lowest validation loss, without moments): what a run that
        // overfits should export.
        let which = if matches!(to, SaveTo::Best(_)) {
            "the best checkpoint"
        } else {
            "the checkpoint"
        };
        to.write(self.dir, c)
            .map_err(|e| failed(format!("saving {which}: {e}")))
    }
}

fn train(a: PretrainArgs, con: &mut Console<'_>, comm: &dyn Comm) -> Result<Outcome, CliError> {
    let wall = Instant::now();
    let s = setup(&a, con, comm.leads())?;
    let Setup {
        cfg,
        family,
        hyper: h,
        tokenizer: tok,
        tok_ref,
        data_refs,
        data_name,
        train,
        val,
        batches_per_epoch,
        steps_per_epoch,
        files,
        resume,
        init_params,
        hf,
    } = s;
    let t = h.context;
    let threads = rayon::current_num_threads();
    if let Some(why) = dist::check_split(comm.size(), h.grad_accum) {
        return Err(usage(why));
    }

    // Model and optimizer.
    let build = |params: Option<Vec<f32>>, what: &str| -> Result<Net, CliError> {
        let fail = |e: String| failed(format!("{what}{e}"));
        Ok(match (&family, params) {
            (Some(f), Some(p)) => Net::Family(FamilyModel::from_params(f, p).map_err(fail)?),
            (Some(f), None) => Net::Family(
                FamilyModel::with_embedding_std(f, h.seed, embed_std(&a, f)).map_err(fail)?,
            ),
            (None, Some(p)) => Net::Gpt(Gpt::from_params(cfg, p).map_err(|e| fail(e.to_string()))?),
            (None, None) => {
                let scheme = if h.init == InitScheme::Gpt2 {
                    Init::Gpt2
                } else {
                    Init::TorchDefault
                };
                Net::Gpt(Gpt::new(cfg, scheme, h.seed).map_err(|e| fail(e.to_string()))?)
            }
        })
    };
    let (mut model, rng, mut cur, mut opt_state) = match resume {
        Some(l) => {
            let model = build(Some(l.params), "--resume: ")?;
            let cur = Cursor::of(&l.state);
            let st = l.state;
            (
                model,
                st.rng,
                cur,
                Some((st.adam_step.unwrap_or(st.step), l.moments)),
            )
        }
        None => {
            let what = if init_params.is_some() {
                "--init: "
            } else {
                "model: "
            };
            let model = build(init_params, what)?;
            let rng = RngState {
                shuffle_seed: mix64(h.seed ^ 1),
                dropout_seed: mix64(h.seed ^ 2),
                eval_seed: mix64(h.seed ^ 3),
            };
            (model, rng, Cursor::default(), None)
        }
    };
    let policy = if h.decay_2d_only {
        DecayPolicy::MatricesOnly
    } else {
        DecayPolicy::All
    };
    let decay_mask = match &mut model {
        Net::Gpt(m) => {
            m.dropout = DropoutRates::uniform(h.dropout);
            m.decay_mask(policy)
        }
        // Norm scales are stored as 1 + w for Gemma: decaying them would pull them to 0.
        Net::Family(m) => m.layout.decay_mask(DecayPolicy::MatricesOnly),
    };
    let mut opt = AdamW::new(
        AdamWConfig {
            weight_decay: h.weight_decay,
            ..AdamWConfig::default()
        },
        decay_mask,
    );
    if let Some((adam_step, Some((m, v)))) = opt_state.take() {
        opt.restore(adam_step, &m, &v)
            .map_err(|e| failed(format!("--resume: optimizer state: {e}")))?;
    }

    let resumed = cur.step > 0;
    let n_params = match &family {
        Some(f) => family_params(f),
        None => cfg.param_count(),
    };
    let arch_note = match &family {
        Some(f) => format!(
            "{} ({} key/value heads, head size {}, MLP {}), ",
            f.arch.name(),
            f.n_kv_heads,
            f.head_dim,
            f.ffn_dim
        ),
        None => String::new(),
    };
    note!(
        con,
        "model: {arch_note}{}, {}, dim {}, context {}, vocabulary {} ({:.2}M parameters); {}",
        count(cfg.n_layers as u64, "layer"),
        count(cfg.n_heads as u64, "head"),
        cfg.dim,
        cfg.context_length,
        cfg.vocab_size,
        n_params as f64 / 1e6,
        count(threads as u64, "thread")
    );
    note!(
        con,
        "data: {data_name}: {} ({} of {} per epoch), {}; {} per epoch, {} in all",
        count(train.len() as u64, "training window"),
        count(batches_per_epoch as u64, "batch"),
        h.batch,
        count(val.len() as u64, "validation window"),
        count(steps_per_epoch, "step"),
        count(h.total_steps, "step")
    );
    if resumed {
        note!(
            con,
            "resuming at step {} (epoch {}, batch {} of the epoch)",
            cur.step,
            cur.epoch + 1,
            cur.pos
        );
    }
    note!(con, "output: {}", files.dir.display());
    if comm.size() > 1 {
        note!(
            con,
            "data parallel: {} ranks, {} of the {} per step each; gradients summed in a fixed tree \
             (bit-identical to one process)",
            comm.size(),
            count((h.grad_accum / comm.size()) as u64, "micro-batch"),
            h.grad_accum
        );
    }

    let (b, total) = (h.batch, h.total_steps);
    let best_dir = files.dir.join("checkpoints").join(checkpoint::BEST_DIR);
    let settings = Settings {
        total,
        batches_per_epoch,
        grad_accum: h.grad_accum,
        clip: h.clip,
        lr: h.lr_schedule(),
        dropout_seed: rng.dropout_seed,
        eval_every: h.eval_every,
        checkpoint_every: a.checkpoint_every,
        checkpoint_epochs: true,
        best_dir: Some(best_dir.clone()),
        chance_loss: Some((cfg.vocab_size as f32).ln()),
        advice: format!("lower --lr (now {}) or add --clip 1.0", h.lr),
        rate_unit: "tok/s",
        curves: Curves {
            csv: files.csv.clone(),
            svg: files.svg.clone(),
            title: plot::title("pretraining", &plot::model_name(&cfg)),
            seen: "tokens seen",
        },
    };
    let mut task = Pretrain {
        train: &train,
        val: &val,
        val_order: Order::Identity,
        order: Order::Identity,
        computed: matches!(train.ids, data::Ids::Shards(_)),
        batch_idx: Vec::with_capacity(b),
        rng: &rng,
        h: &h,
        x: Vec::with_capacity(b * t),
        y: Vec::with_capacity(b * t),
        opt,
        tok: &tok,
        base: TrainerState {
            hyper: Some(h.clone()),
            data: data_refs,
            family: family.as_ref().and_then(FamilyJson::of),
            hf,
            ..TrainerState::fresh(RunKind::Pretrain, cfg, rng.clone(), tok_ref)
        },
        shapes: match &family {
            Some(f) => emberlm_formats::arch::tensors(f, None)
                .into_iter()
                .map(|t| (t.name, t.shape))
                .collect(),
            None => cfg.tensor_shapes(),
        },
        dir: &files.dir,
        threads,
        last_sample: None,
        step: cur.step,
    };
    let ended = train_loop::run(&mut task, &mut model, &settings, &mut cur, comm, con)?;
    let best = ended.best;
    let ranks = json!({
        "ranks": comm.size(),
        "comm_seconds": ended.comm_seconds,
    });
    if !comm.leads() {
        // The leading rank reports, samples and writes; the others are done.
        return Ok(Outcome {
            json: ranks,
            exit_code: if ended.interrupted { 130 } else { 0 },
        });
    }
    if ended.interrupted {
        let ck = ended.checkpoint;
        say!(
            con,
            "interrupted at step {}/{total}: saved the model so far: checkpoint {} and loss curve {}\nresume with: {} pretrain --resume {}",
            cur.step,
            ck.display(),
            files.csv.display(),
            super::hint_bin("ember-train"),
            shell_path(&files.dir)
        );
        return Ok(Outcome {
            json: json!({
                "interrupted": true,
                "steps": cur.step,
                "total_steps": total,
                "out_dir": files.dir,
                "checkpoint": ck,
                "loss_csv": files.csv,
                "loss_plot": files.svg,
                "wall_seconds": wall.elapsed().as_secs_f64(),
                "best_checkpoint": best.map(|_| &best_dir),
                "best_val_loss": best.map(|b| b.val_loss),
                "best_step": best.map(|b| b.step),
                "ranks": ranks["ranks"],
                "comm_seconds": ranks["comm_seconds"],
            }),
            exit_code: 130,
        });
    }
    let sample_text = match task.last_sample.take() {
        Some((s, text)) if s == cur.step => text,
        _ => model
            .greedy(&tok, &h.prompt, h.sample_tokens, threads)
            .map_err(|e| failed(format!("final sample: {e}")))?,
    };
    let last = cur.history.last().copied();
    let (tl, vl) = last.map_or((f32::NAN, f32::NAN), |r| (r.train_loss, r.val_loss));
    let session_steps = ended.session_steps;
    let tok_s = ended.rate;
    let ckpt = ended.checkpoint;
    let wall_s = wall.elapsed().as_secs_f64();
    let epochs = cur.step as f64 / steps_per_epoch as f64;
    let out_dir = shell_path(&files.dir);
    say!(
        con,
        "\nsample ({:?}, greedy, {} tokens):\n{}\n",
        h.prompt,
        h.sample_tokens,
        sample_text
    );
    let already_finished = session_steps == 0;
    if already_finished {
        say!(
            con,
            "run {out_dir} already finished at step {} of {total} ({epochs:.2} epochs): train loss {tl:.3}, \
             val loss {vl:.3}; to train further pass --steps M with M greater than {} or --epochs E \
             with E greater than {}",
            cur.step,
            cur.step,
            epochs.floor()
        );
    } else {
        say!(
            con,
            "trained {} ({epochs:.2} epochs, {} tokens) in {}: train loss {tl:.3}, val loss {vl:.3}, {tok_s:.0} tokens/s",
            count(cur.step, "step"),
            cur.seen,
            fmt_duration(wall_s)
        );
    }
    say!(con, "checkpoint: {}", ckpt.display());
    let best_step = best.map(|b| b.step);
    let export_from = match best {
        Some(b) => {
            say!(
                con,
                "best checkpoint (lowest validation loss): {} (step {}, val loss {:.3})",
                best_dir.display(),
                b.step,
                b.val_loss
            );
            shell_path(&best_dir)
        }
        None => out_dir.clone(),
    };
    say!(
        con,
        "loss curve: {} and {}",
        files.csv.display(),
        files.svg.display()
    );
    say!(
        con,
        "export it and run it:\n  {} export {export_from} --dtype int8 --out model.ember\n  {} generate model.ember --prompt {}",
        super::hint_bin("ember-train"),
        super::hint_bin("ember"),
        shell_quote(&h.prompt)
    );
    Ok(Outcome {
        json: json!({
            "train_loss": finite_or_null(tl),
            "val_loss": finite_or_null(vl),
            "tokens_per_s": tok_s,
            "step_seconds": ended.step_seconds,
            "steps": cur.step,
            "epochs": epochs,
            "tokens_seen": cur.seen,
            "wall_seconds": wall_s,
            "train_seconds": cur.train_seconds,
            "out_dir": files.dir,
            "checkpoint": ckpt,
            "loss_csv": files.csv,
            "loss_plot": files.svg,
            "sample": sample_text,
            "parameters": n_params,
            "arch": family.map_or("gpt2", |f| f.arch.name()),
            "config": checkpoint::ConfigJson::from(cfg),
            "interrupted": false,
            "best_checkpoint": best.map(|_| &best_dir),
            "best_val_loss": best.map(|b| b.val_loss),
            "best_step": best_step,
            "already_finished": already_finished,
            "ranks": ranks["ranks"],
            "comm_seconds": ranks["comm_seconds"],
        }),
        exit_code: 0,
    })
}

/// `s` quoted for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The token embedding's standard deviation for a fresh modern-family model: `--embed-std`, else
/// 1 (PyTorch's `nn.Embedding`, the book's notebooks) for a model with its own head and no
/// `--config` preset, else 0.02 (transformers' initialisation; a tied head needs it small).
/// Drawn at 0.02 with an untied head, the book's chapter 5 Llama sits at the unigram loss
/// (README, "Pretraining a modern family from scratch").
fn embed_std(a: &PretrainArgs, f: &ModelConfig) -> f32 {
    a.embed_std
        .unwrap_or(if !f.tied_head && a.config.is_none() {
            1.0
        } else {
            0.02
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hyper(schedule: &str) -> Hyper {
        Hyper {
            batch: 2,
            context: 4,
            stride: 4,
            lr: 1e-3,
            schedule: schedule.parse().unwrap(),
            initial_lr: 1e-5,
            min_lr: 1e-5,
            warmup_steps: 27,
            weight_decay: 0.1,
            decay_2d_only: false,
            clip: None,
            grad_accum: 1,
            dropout: 0.1,
            seed: 123,
            eval_every: 5,
            eval_batches: 1,
            prompt: String::new(),
            sample_tokens: 1,
            total_steps: 135,
            init: InitScheme::Torch,
        }
    }

    #[test]
    fn schedules_follow_appendix_d() {
        let c = hyper("cosine");
        // Warmup: 1e-5 + s·(1e-3 − 1e-5)/27.
        assert!((c.lr_schedule().lr(0) - 1e-5).abs() < 1e-12);
        let want = 1e-5 + 13.0 * (1e-3 - 1e-5) / 27.0;
        assert!((c.lr_schedule().lr(13) as f64 - want).abs() < 1e-9);
        assert!(
            (c.lr_schedule().lr(27) - 1e-3).abs() < 1e-9,
            "peak after warmup"
        );
        assert!(
            (c.lr_schedule().lr(135) - 1e-5).abs() < 1e-9,
            "min at the end"
        );
        let k = hyper("constant");
        assert!((k.lr_schedule().lr(0) - 1e-5).abs() < 1e-12);
        assert_eq!(k.lr_schedule().lr(27), 1e-3);
        assert_eq!(k.lr_schedule().lr(1000), 1e-3);
        let mut none = hyper("constant");
        none.warmup_steps = 0;
        assert_eq!(none.lr_schedule().lr(0), 1e-3);
    }

    #[test]
    fn bad_numbers_are_usage_errors() {
        let mut h = hyper("constant");
        h.lr = f32::NAN;
        assert!(matches!(validate_numbers(&h), Err(CliError::Usage(m)) if m.contains("--lr")));
        // --schedule is parsed into the typed setting: an unknown name never reaches a run.
        assert!(
            "linear"
                .parse::<Schedule>()
                .is_err_and(|m| m.contains("linear"))
        );
        let mut h = hyper("constant");
        h.dropout = 1.0;
        assert!(matches!(validate_numbers(&h), Err(CliError::Usage(m)) if m.contains("--dropout")));
        assert!(validate_numbers(&hyper("cosine")).is_ok());
    }

    #[test]
    fn run_dirs_are_timestamped() {
        let p = fresh_run_dir();
        let s = p.to_string_lossy();
        assert!(s.starts_with("runs/20"), "{s}");
        assert_eq!(s.len(), "runs/YYYYMMDD-HHMMSS".len());
    }
}
