//! `ember-train finetune instruct`: the book's chapter 7 (instruction fine-tuning on Alpaca JSON).
//!
//! The run: read `--data` (a JSON array of {instruction, input, output}), split it by order
//! 85/10/5 (train/test/validation, as the book), tokenize every example with the Alpaca template,
//! and train from `--init`'s weights. Per optimizer step: one shuffled batch (drop_last), collated
//! to its own longest example + 1 (the book's `custom_collate_fn`, capped at `--max-length`),
//! forward + backward, AdamW (lr `--lr`, decoupled weight decay `--weight-decay` on every
//! parameter, as the book). Every `--eval-every` steps (counting from the first, the book's
//! `global_step % eval_freq == 0`) and at the end: the mean loss of `--eval-batches` training and
//! validation batches with dropout off, printed and written to `loss.csv` / `loss.svg`. After each
//! epoch: the greedy response to the first validation example. At the end: a checkpoint in
//! `DIR/checkpoints/`, the f32 model `DIR/model.ember` with the template stored, the loss on the
//! whole test split, and `DIR/responses.json` (the test split with the model's greedy responses,
//! generated from the exported file). Ctrl-C saves a checkpoint and stops (exit code 130).
//!
//! Letters: B batch, T the padded length of a batch, V vocabulary.

use super::net::Net;
use super::progress::Progress;
use super::train_loop::{
    self, Cursor, Curves, SaveTo, Settings as LoopSettings, Task, finite_or_null, mem_available,
};
use super::{CliError, Console, Outcome, count, failed, fmt_duration, shell_path, signal, usage};
use crate::adamw::LrSchedule;
use crate::checkpoint::{self, Contents, DataRef, RngState, RunKind, TrainerState};
use crate::data::{self, mix64};
use crate::dist::Single;
use crate::export::{ExportDtype, ExportMeta, export_ember, export_family_ember_with};
use crate::family::FamilyModel;
use crate::finetune::data::{Instruction, read_instructions, split_instructions};
use crate::finetune::instruct::{
    BatchRule, Example, Response, batch_indices, chat_user_text, encode_chat_examples,
    encode_examples, make_batch, mean_loss, num_batches, respond, respond_ids, write_responses,
};
use crate::finetune::tune::{LoraSpec, Trainable, TuneOptions, Tuner, tuning_from_flags};
use crate::model::{DropoutRates, Gpt, memory_estimate};
use crate::plot::{self, LossRow};
use crate::{note, say};
use argh::FromArgs;
use emberlm_formats::chat::{ChatTemplate, Message};
use emberlm_formats::config::{GptConfig, ModelConfig};
use emberlm_formats::meta::{PromptTemplate, Task as ModelTask};
use emberlm_formats::tokenizer::{SpecialTokens, Tokenizer};
use emberlm_runtime::{Model, Session, SessionOptions};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// The book's chapter-7 settings.
const DEFAULT_EPOCHS: u64 = 2;
const DEFAULT_LR: f32 = 5e-5;
const DEFAULT_WEIGHT_DECAY: f64 = 0.1;
const DEFAULT_BATCH: usize = 8;
const DEFAULT_SEED: u64 = 123;
const DEFAULT_EVAL_EVERY: u64 = 5;
const DEFAULT_EVAL_BATCHES: usize = 5;
const DEFAULT_MAX_NEW_TOKENS: usize = 256;
/// The book fine-tunes with `drop_rate` 0.0.
const DEFAULT_DROPOUT: f32 = 0.0;
/// Tokens of the response printed after every epoch (the book's `generate_and_print_sample`).
const EPOCH_SAMPLE_TOKENS: usize = 50;
/// A progress line every this many generated responses.
const RESPONSE_NOTE_EVERY: usize = 25;

#[derive(FromArgs, Debug, Default, Clone)]
#[argh(subcommand, name = "instruct")]
/// Fine-tune a checkpoint to follow instructions from Alpaca-style JSON (instruction, input,
/// output), and export it as a .ember file for ember chat.
pub struct InstructArgs {
    /// the checkpoint (directory or step directory) to start from
    #[argh(option)]
    pub init: Option<PathBuf>,
    /// the Alpaca JSON file
    #[argh(option)]
    pub data: Option<PathBuf>,
    /// output directory (checkpoints, the exported model, responses.json)
    #[argh(option)]
    pub out: Option<PathBuf>,
    /// epochs over the training split (default 2, the book)
    #[argh(option)]
    pub epochs: Option<u64>,
    /// learning rate, constant (default 5e-5, the book)
    #[argh(option)]
    pub lr: Option<f32>,
    /// decoupled AdamW weight decay on every parameter (default 0.1, the book)
    #[argh(option)]
    pub weight_decay: Option<f64>,
    /// batch size (default 8, the book)
    #[argh(option)]
    pub batch: Option<usize>,
    /// truncate examples to this many tokens (default: the model's context length)
    #[argh(option)]
    pub max_length: Option<usize>,
    /// leave the prompt's tokens out of the loss (the book's exercise 7.2)
    #[argh(switch)]
    pub mask_prompt: bool,
    /// dropout rate during training (default 0, the book's fine-tuning setting)
    #[argh(option)]
    pub dropout: Option<f32>,
    /// seed of the shuffles and dropout (default 123)
    #[argh(option)]
    pub seed: Option<u64>,
    /// evaluate every N optimizer steps (default 5)
    #[argh(option)]
    pub eval_every: Option<u64>,
    /// batches per evaluation of each split (default 5)
    #[argh(option)]
    pub eval_batches: Option<usize>,
    /// longest generated response in tokens (default 256)
    #[argh(option)]
    pub max_new_tokens: Option<usize>,
    /// which parameters train: head, last-block, last-N or all (default all, the book)
    #[argh(option)]
    pub trainable: Option<String>,
    /// rank of LoRA adapters (train low-rank adapters instead of the weights)
    #[argh(option)]
    pub lora_rank: Option<usize>,
    /// alpha of LoRA adapters (scaling alpha/rank; default: the rank)
    #[argh(option)]
    pub lora_alpha: Option<f32>,
    /// layers that get LoRA adapters: all, or a comma list of q,k,v,o,gate,up,down,head,emb (also
    /// qkv, proj, fc, ff-proj, and PEFT's q_proj, ..., lm_head, embed_tokens; default all)
    #[argh(option)]
    pub lora_targets: Option<String>,
    /// the prompt format: auto (the model's own chat template when its checkpoint has one, else
    /// Alpaca), chat, or alpaca (the book's)
    #[argh(option)]
    pub template: Option<String>,
    /// worker threads (default: one per core)
    #[argh(option)]
    pub threads: Option<usize>,
    /// print one JSON object on stdout at the end
    #[argh(switch)]
    pub json: bool,
}

/// Runs `ember-train finetune instruct`.
pub fn run(a: InstructArgs, con: &mut Console<'_>) -> Result<Outcome, CliError> {
    let threads = a.threads;
    super::with_threads(threads, || train(a, con))?
}

/// The resolved settings.
#[derive(Clone, Debug)]
struct Settings {
    init: PathBuf,
    data: PathBuf,
    out: PathBuf,
    epochs: u64,
    lr: f32,
    weight_decay: f64,
    batch: usize,
    mask_prompt: bool,
    dropout: f32,
    seed: u64,
    eval_every: u64,
    eval_batches: usize,
    max_new_tokens: usize,
    trainable: Trainable,
    lora: Option<LoraSpec>,
    template: TemplateChoice,
}

/// `--template`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TemplateChoice {
    /// The model's chat template when the checkpoint has one, else Alpaca.
    Auto,
    /// The model's chat template (an error when there is none).
    Chat,
    /// The book's Alpaca template.
    Alpaca,
}

/// Checks the flags (usage errors) and applies the defaults.
fn settings(a: &InstructArgs) -> Result<Settings, CliError> {
    let need = |p: &Option<PathBuf>, name: &str| {
        p.clone().ok_or_else(|| {
            usage(format!(
                "{name} is required (see ember-train finetune instruct --help)"
            ))
        })
    };
    let (trainable, lora) = tuning_from_flags(
        a.trainable.as_deref(),
        Trainable::All,
        a.lora_rank,
        a.lora_alpha,
        a.lora_targets.as_deref(),
    )
    .map_err(usage)?;
    let s = Settings {
        init: need(&a.init, "--init")?,
        data: need(&a.data, "--data")?,
        out: need(&a.out, "--out")?,
        epochs: a.epochs.unwrap_or(DEFAULT_EPOCHS),
        lr: a.lr.unwrap_or(DEFAULT_LR),
        weight_decay: a.weight_decay.unwrap_or(DEFAULT_WEIGHT_DECAY),
        batch: a.batch.unwrap_or(DEFAULT_BATCH),
        mask_prompt: a.mask_prompt,
        dropout: a.dropout.unwrap_or(DEFAULT_DROPOUT),
        seed: a.seed.unwrap_or(DEFAULT_SEED),
        eval_every: a.eval_every.unwrap_or(DEFAULT_EVAL_EVERY),
        eval_batches: a.eval_batches.unwrap_or(DEFAULT_EVAL_BATCHES),
        max_new_tokens: a.max_new_tokens.unwrap_or(DEFAULT_MAX_NEW_TOKENS),
        trainable,
        lora,
        template: match a.template.as_deref() {
            None | Some("auto") => TemplateChoice::Auto,
            Some("chat") => TemplateChoice::Chat,
            Some("alpaca") => TemplateChoice::Alpaca,
            Some(other) => {
                return Err(usage(format!(
                    "--template {other:?}: expected auto, chat or alpaca"
                )));
            }
        },
    };
    for (v, name) in [
        (s.epochs as usize, "--epochs"),
        (s.batch, "--batch"),
        (s.eval_every as usize, "--eval-every"),
        (s.eval_batches, "--eval-batches"),
        (s.max_new_tokens, "--max-new-tokens"),
    ] {
        if v == 0 {
            return Err(usage(format!("{name} must be at least 1")));
        }
    }
    if a.max_length == Some(0) {
        return Err(usage("--max-length must be at least 1"));
    }
    if !(s.lr.is_finite() && s.lr > 0.0) {
        return Err(usage(format!("--lr {}: must be a positive number", s.lr)));
    }
    if !(s.weight_decay.is_finite() && s.weight_decay >= 0.0) {
        return Err(usage(format!(
            "--weight-decay {}: must be >= 0",
            s.weight_decay
        )));
    }
    if !(s.dropout.is_finite() && (0.0..1.0).contains(&s.dropout)) {
        return Err(usage(format!("--dropout {}: must be in [0, 1)", s.dropout)));
    }
    Ok(s)
}

/// What trains (`--trainable`, or LoRA adapters with `--lora-rank`) and its AdamW, from the
/// tuning module. Checkpoints and the export hold the merged model (GPT-2 merges after every
/// step; the families run the adapters directly and merge at the end: [`Tuner::finish`]).
fn tuner(model: &mut Net, s: &Settings) -> Result<Tuner, CliError> {
    let lora = s.lora;
    Tuner::new(
        model,
        &TuneOptions {
            trainable: s.trainable,
            lora,
            weight_decay: s.weight_decay as f32,
            seed: s.seed,
        },
    )
    .map_err(|e| {
        let flag = if lora.is_some() {
            "--lora-rank"
        } else {
            "--trainable"
        };
        usage(format!("{flag}: {e}"))
    })
}

/// How examples become prompts: the book's Alpaca template, or the model's own chat template.
enum Format {
    /// Alpaca; replies end with `eot` (`<|endoftext|>`).
    Alpaca { template: PromptTemplate, eot: u32 },
    /// The chat template; replies end at any id of `stops` (the model's end-of-reply ids).
    Chat {
        template: Box<ChatTemplate>,
        stops: Vec<u32>,
    },
}

impl Format {
    fn name(&self) -> &'static str {
        match self {
            Format::Alpaca { .. } => "Alpaca",
            Format::Chat { .. } => "the model's chat",
        }
    }

    /// The greedy response of `session`'s model to `item`, up to `max_new` tokens.
    fn respond(
        &self,
        session: &mut Session<'_, '_>,
        tok: &Tokenizer,
        item: &Instruction,
        max_new: usize,
    ) -> Result<String, String> {
        match self {
            Format::Alpaca { template, eot } => {
                let prompt = template.render(&item.instruction, &item.input);
                respond(session, tok, &prompt, *eot, max_new).map_err(|e| e.to_string())
            }
            Format::Chat {
                template, stops, ..
            } => {
                let user = Message::new("user", chat_user_text(item));
                let prompt = template
                    .render(&[user], true)
                    .map_err(|e| format!("the chat template: {e}"))?;
                let ids = tok.encode_to_vec(&prompt, SpecialTokens::Allow);
                respond_ids(session, tok, &ids, stops, max_new).map_err(|e| e.to_string())
            }
        }
    }
}

/// The greedy response of the training model to `item` (an in-memory f32 copy run by the
/// runtime).
fn sample_response(
    model: &Net,
    tok: &Tokenizer,
    format: &Format,
    item: &Instruction,
    threads: usize,
) -> Result<String, String> {
    let bytes = model.ember_bytes()?;
    let m = Model::from_bytes(&bytes).map_err(|e| e.to_string())?;
    let mut s = Session::new(
        &m,
        &SessionOptions {
            threads,
            ..SessionOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    format.respond(&mut s, tok, item, EPOCH_SAMPLE_TOKENS)
}

/// Instruction tuning as a [`train_loop::Task`]: Alpaca batches padded to their longest
/// example, the tuner's AdamW, the response to a validation example after every epoch.
struct Instruct<'a> {
    train_ex: &'a [Example],
    val_ex: &'a [Example],
    val_order: Vec<usize>,
    order: Vec<usize>,
    rng: &'a RngState,
    rule: &'a BatchRule,
    s: &'a Settings,
    tuner: Tuner,
    tok: &'a Tokenizer,
    format: &'a Format,
    threads: usize,
    /// The example answered after every epoch.
    sample_item: Option<&'a Instruction>,
    /// `trainer.json` without the position.
    state: TrainerState,
    shapes: Vec<(String, Vec<usize>)>,
}

impl Task<Net> for Instruct<'_> {
    fn start_epoch(&mut self, epoch: u64) {
        self.order = data::epoch_order(self.train_ex.len(), self.rng.shuffle_seed, epoch);
    }

    fn micro_batch(
        &mut self,
        model: &mut Net,
        pos: usize,
        seed: u64,
        step_no: u64,
    ) -> Result<(f32, u64), CliError> {
        let idx = batch_indices(&self.order, pos, self.s.batch);
        let batch = make_batch(self.train_ex, idx, self.rule);
        let loss = match model
            .tune_batch(
                &batch.inputs,
                &batch.targets,
                (batch.batch, batch.len),
                seed,
            )
            .map_err(|e| failed(format!("step {step_no}: {e}")))?
        {
            Some(l) => l,
            // Only possible with --mask-prompt and a --max-length that cuts every response.
            None => {
                return Err(failed(format!(
                    "step {step_no}: every target of the batch is masked (--mask-prompt with --max-length {} \
                     cuts off the responses); raise --max-length",
                    self.rule.max_len
                )));
            }
        };
        Ok((loss, (batch.batch * batch.len) as u64))
    }

    fn update(&mut self, model: &mut Net, lr: f32) -> Result<(), String> {
        self.tuner.step(model, lr).map_err(|e| e.to_string())
    }

    fn evaluate(&mut self, model: &mut Net, at: u64) -> Result<(f32, f32), CliError> {
        let (b, n) = (self.s.batch, Some(self.s.eval_batches));
        let order = data::epoch_order(self.train_ex.len(), self.rng.eval_seed, at);
        let tl = mean_loss(model, self.train_ex, &order, b, n, true, self.rule)
            .map_err(|e| failed(format!("evaluation: {e}")))?;
        let vl = mean_loss(model, self.val_ex, &self.val_order, b, n, false, self.rule)
            .map_err(|e| failed(format!("evaluation: {e}")))?;
        Ok((tl, vl))
    }

    fn end_epoch(
        &mut self,
        model: &mut Net,
        epoch: u64,
        progress: &mut Progress,
        con: &mut Console<'_>,
    ) -> Result<(), CliError> {
        if let Some(item) = self.sample_item {
            // The sample runs on an f32 copy of the weights: free the step's buffers first, or
            // the run's peak memory holds them, the weights and the copy at once.
            model.release_buffers();
            let text = sample_response(model, self.tok, self.format, item, self.threads)
                .map_err(|e| failed(format!("sample after epoch {}: {e}", epoch + 1)))?;
            progress.line(
                con.log,
                &format!(
                    "epoch {} response to {:?}: {}",
                    epoch + 1,
                    item.instruction,
                    text.replace('\n', " ")
                ),
            );
        }
        Ok(())
    }

    fn save(&mut self, model: &Net, cur: &Cursor, to: SaveTo<'_>) -> Result<PathBuf, CliError> {
        let state = cur.stamp(&self.state);
        // Adapters the model runs directly are merged into the saved copy.
        let params = model.merged_params();
        let c = Contents {
            state: &state,
            shapes: &self.shapes,
            params: &params,
            moments: None,
            tokenizer: self.tok,
        };
        to.write(&self.s.out, c)
            .map_err(|e| failed(format!("saving the checkpoint: {e}")))
    }
}

/// Parameters of the model: GPT-2's count, or the family's.
fn params_of(cfg: &GptConfig, family: Option<&ModelConfig>) -> usize {
    match family {
        Some(f) => crate::family::Layout::new(f).len,
        None => cfg.param_count(),
    }
}

/// The loss plot's model description.
fn model_name(cfg: &GptConfig, family: Option<&ModelConfig>) -> String {
    match family {
        Some(f) => format!(
            "{} {}",
            f.arch.name(),
            plot::model_name(cfg).replace(
                &format!("{:.2}M", cfg.param_count() as f64 / 1e6),
                &format!("{:.2}M", params_of(cfg, family) as f64 / 1e6)
            )
        ),
        None => plot::model_name(cfg),
    }
}

/// The prompt format `--template` asks for, with what it needs from the checkpoint: the chat
/// template and end-of-reply ids of an imported model's `hf/` files, or `<|endoftext|>` (or the
/// model's first end-of-reply id) for Alpaca.
fn prompt_format(
    s: &Settings,
    tok: &Tokenizer,
    extras: Option<&crate::hf::extras::Extras>,
) -> Result<Format, CliError> {
    let chat = extras.and_then(|e| e.chat.as_ref().map(|c| (c, &e.eos_ids)));
    let use_chat = match (s.template, chat.is_some()) {
        (TemplateChoice::Alpaca, _) | (TemplateChoice::Auto, false) => false,
        (TemplateChoice::Auto, true) | (TemplateChoice::Chat, true) => true,
        (TemplateChoice::Chat, false) => {
            return Err(usage(format!(
                "--template chat: {} has no chat template (only models imported from a Hugging \
                 Face directory with one carry it); use --template alpaca",
                s.init.display()
            )));
        }
    };
    if let (true, Some((src, eos))) = (use_chat, chat) {
        let template = ChatTemplate::new(&src.source, src.special.clone()).map_err(|e| {
            failed(format!(
                "--init {}: the chat template: {e}",
                s.init.display()
            ))
        })?;
        let mut stops = eos.clone();
        if let Some(e) = src
            .special
            .eos_token
            .as_deref()
            .and_then(|t| tok.special_id(t))
        {
            if !stops.contains(&e) {
                stops.push(e);
            }
        }
        if stops.is_empty() {
            stops.extend(tok.eot_id());
        }
        if stops.is_empty() {
            return Err(failed(format!(
                "--init {}: the model names no end-of-reply token (generation_config.json's \
                 eos_token_id or the template's eos_token)",
                s.init.display()
            )));
        }
        return Ok(Format::Chat {
            template: Box::new(template),
            stops,
        });
    }
    let eot = tok
        .eot_id()
        .or_else(|| extras.and_then(|e| e.eos_ids.first().copied()))
        .ok_or_else(|| {
            failed(format!(
                "--init {}: the tokenizer has no <|endoftext|> token and the model names no \
                 end-of-reply id, which instruction tuning pads and stops with",
                s.init.display()
            ))
        })?;
    Ok(Format::Alpaca {
        template: PromptTemplate::alpaca(),
        eot,
    })
}

fn train(a: InstructArgs, con: &mut Console<'_>) -> Result<Outcome, CliError> {
    let wall = Instant::now();
    let s = settings(&a)?;
    let threads = rayon::current_num_threads();

    // 1. The model, its tokenizer and the data.
    let init = checkpoint::load(&s.init, false).map_err(|e| failed(format!("--init {e}")))?;
    if let Some(c) = &init.state.classifier {
        return Err(failed(format!(
            "--init {}: a classifier checkpoint (labels {:?}); instruction tuning starts from a \
             language model (a pretrained or imported checkpoint)",
            s.init.display(),
            c.labels
        )));
    }
    let cfg = init.config;
    let family = init.family;
    let tok = init
        .text_tokenizer("ember-train finetune instruct")
        .map_err(failed)?
        .clone();
    let extras = checkpoint::hf_extras(&s.init).map_err(|e| failed(format!("--init {e}")))?;
    let format = prompt_format(&s, &tok, extras.as_ref())?;
    let max_len = a.max_length.unwrap_or(cfg.context_length);
    if max_len > cfg.context_length {
        return Err(usage(format!(
            "--max-length {max_len} is larger than the model's context length {}",
            cfg.context_length
        )));
    }
    let all = read_instructions(&s.data).map_err(|e| failed(format!("--data {e}")))?;
    let raw = std::fs::read(&s.data).map_err(|e| {
        failed(format!(
            "--data {}: {}",
            s.data.display(),
            data::io_reason(&e)
        ))
    })?;
    let data_ref = DataRef {
        path: s.data.display().to_string(),
        bytes: raw.len() as u64,
        hash: format!("{:016x}", data::fingerprint(&raw)),
    };
    drop(raw);
    let (train_items, val_items, test_items) = split_instructions(&all);
    let encode = |items: &[Instruction]| -> Result<(Vec<Example>, u32), CliError> {
        match &format {
            Format::Alpaca { template, eot } => Ok((encode_examples(&tok, template, items), *eot)),
            Format::Chat {
                template, stops, ..
            } => {
                let c = encode_chat_examples(&tok, template, stops, items)
                    .map_err(|e| failed(format!("--data {}: {e}", s.data.display())))?;
                Ok((c.examples, c.end))
            }
        }
    };
    let (train_ex, pad) = encode(train_items)?;
    let (val_ex, _) = encode(val_items)?;
    let (test_ex, _) = encode(test_items)?;
    let b = s.batch;
    let steps_per_epoch = num_batches(train_ex.len(), b, true) as u64;
    if steps_per_epoch == 0 {
        return Err(failed(format!(
            "--data {}: the training split has {} examples ({} in all, 85% for training), not enough \
             for one batch of --batch {b}; lower --batch or give more examples",
            s.data.display(),
            train_ex.len(),
            all.len()
        )));
    }
    let total = steps_per_epoch.checked_mul(s.epochs).ok_or_else(|| {
        usage(format!(
            "--epochs {}: {steps_per_epoch} steps per epoch make too many steps",
            s.epochs
        ))
    })?;
    let longest = train_ex
        .iter()
        .chain(&val_ex)
        .chain(&test_ex)
        .map(|e| e.ids.len() + 1)
        .max()
        .unwrap_or(1);
    let truncated = train_ex.iter().filter(|e| e.ids.len() > max_len).count();
    let rule = BatchRule {
        pad,
        mask_prompt: s.mask_prompt,
        max_len,
    };

    // 2. Memory before any large allocation: training state for the longest batch plus the
    // sampler's copy of the model.
    let t_max = longest.min(max_len);
    let need = match &family {
        // Training state of the longest batch, the sampler's copy of the weights, and AdamW's
        // moments of every weight. LoRA runs its adapters directly on the frozen weights: no
        // gradient of them (the estimate's second copy is then the sampler's) and small moments.
        Some(f) => {
            let p = crate::family::Layout::new(f).len as u64;
            let est = crate::family::memory_estimate(f, b, t_max);
            if s.lora.is_some() {
                est
            } else {
                est.saturating_add(4 * p).saturating_add(8 * p)
            }
        }
        None => memory_estimate(&cfg, b, t_max)
            .saturating_add((cfg.param_count() as u64).saturating_mul(8)),
    };
    if let Some(avail) = mem_available() {
        if need > avail {
            return Err(failed(format!(
                "--batch {b} --max-length {max_len}: fine-tuning this {}-parameter model needs about \
                 {:.1} GiB but only {:.1} GiB is available (MemAvailable); lower --batch or --max-length{}",
                params_of(&cfg, family.as_ref()),
                need as f64 / (1u64 << 30) as f64,
                avail as f64 / (1u64 << 30) as f64,
                if s.lora.is_none() {
                    ", or train LoRA adapters (--lora-rank) instead of every weight"
                } else {
                    ""
                }
            )));
        }
    }

    // 3. The output directory.
    let out = s.out.clone();
    if out.join("checkpoints").exists() {
        return Err(usage(format!(
            "--out {}: already holds a run; choose another --out",
            out.display()
        )));
    }
    let existed = out.exists();
    std::fs::create_dir_all(&out)
        .map_err(|e| failed(format!("--out {}: {}", out.display(), data::io_reason(&e))))?;
    if !existed {
        signal::fresh_dir(out.clone());
    }

    // 4. Model and optimizer.
    let mut model = match &family {
        Some(f) => {
            if s.dropout != 0.0 {
                return Err(usage(format!(
                    "--dropout {}: the {} family trains without dropout",
                    s.dropout,
                    f.arch.name()
                )));
            }
            Net::Family(
                FamilyModel::from_params(f, init.params)
                    .map_err(|e| failed(format!("--init: {e}")))?,
            )
        }
        None => {
            let mut m =
                Gpt::from_params(cfg, init.params).map_err(|e| failed(format!("--init: {e}")))?;
            m.dropout = DropoutRates::uniform(s.dropout);
            m.reserve(b, t_max)
                .map_err(|e| failed(format!("model: {e}")))?;
            Net::Gpt(m)
        }
    };
    let tuner = tuner(&mut model, &s)?;
    let trainable = tuner.trainable_params();
    let rng = RngState {
        shuffle_seed: mix64(s.seed ^ 1),
        dropout_seed: mix64(s.seed ^ 2),
        eval_seed: mix64(s.seed ^ 3),
    };
    note!(
        con,
        "model: {}, {}, dim {}, context {}, vocabulary {} ({:.2}M parameters); training {}: {} trainable parameters; {}",
        count(cfg.n_layers as u64, "layer"),
        count(cfg.n_heads as u64, "head"),
        cfg.dim,
        cfg.context_length,
        cfg.vocab_size,
        params_of(&cfg, family.as_ref()) as f64 / 1e6,
        tuner.description(),
        trainable,
        count(threads as u64, "thread")
    );
    note!(
        con,
        "data: {}: {} examples → {} train / {} validation / {} test (the book's split by order); \
         longest example {} tokens, max length {max_len}{}{}",
        s.data.display(),
        all.len(),
        train_ex.len(),
        val_ex.len(),
        test_ex.len(),
        longest,
        if truncated > 0 {
            format!(" ({truncated} training examples truncated)")
        } else {
            String::new()
        },
        if s.mask_prompt {
            "; prompt tokens masked"
        } else {
            ""
        }
    );
    note!(
        con,
        "training: {} × {} of batch {b} = {}, lr {:e}, weight decay {}",
        count(s.epochs, "epoch"),
        count(steps_per_epoch, "step"),
        count(total, "step"),
        s.lr,
        s.weight_decay
    );
    note!(con, "output: {}", out.display());

    let mut task = Instruct {
        train_ex: &train_ex,
        val_ex: &val_ex,
        val_order: (0..val_ex.len()).collect(),
        order: Vec::new(),
        rng: &rng,
        rule: &rule,
        s: &s,
        tuner,
        tok: &tok,
        format: &format,
        threads,
        sample_item: val_items.first().or(train_items.first()),
        state: TrainerState {
            data: vec![data_ref.clone()],
            source: Some(s.init.display().to_string()),
            family: init.state.family.clone(),
            hf: init.state.hf.clone(),
            ..TrainerState::fresh(
                RunKind::Instruct,
                cfg,
                rng.clone(),
                init.state.tokenizer.clone(),
            )
        },
        shapes: model.shapes(),
    };

    // The book prints the loss before fine-tuning; it is also the first point of the curve.
    note!(
        con,
        "evaluating the model before fine-tuning ({} per split)…",
        count(s.eval_batches as u64, "batch")
    );
    let (tl0, vl0) = task.evaluate(&mut model, u64::MAX)?;
    note!(
        con,
        "before fine-tuning: train loss {tl0:.3} | val loss {vl0:.3}"
    );
    let mut cur = Cursor::default();
    cur.history.push(LossRow {
        step: 0,
        epoch: 1,
        tokens_seen: 0,
        lr: s.lr,
        train_loss: tl0,
        val_loss: vl0,
    });

    // 5. The loop.
    let settings = LoopSettings {
        total,
        batches_per_epoch: steps_per_epoch as usize,
        grad_accum: 1,
        clip: None,
        lr: LrSchedule {
            initial_lr: s.lr,
            peak_lr: s.lr,
            min_lr: s.lr,
            warmup_steps: 0,
            total_steps: total,
        },
        dropout_seed: rng.dropout_seed,
        eval_every: s.eval_every,
        checkpoint_every: None,
        checkpoint_epochs: true,
        best_dir: None,
        chance_loss: Some((cfg.vocab_size as f32).ln()),
        advice: format!("lower --lr (now {})", s.lr),
        rate_unit: "tok/s",
        curves: Curves::in_dir(
            &out,
            plot::title(
                "instruction fine-tuning",
                &model_name(&cfg, family.as_ref()),
            ),
            "tokens seen",
        ),
    };
    let ended = train_loop::run(&mut task, &mut model, &settings, &mut cur, &Single, con)?;
    // LoRA run directly: merge it into the weights for the export and what follows.
    task.tuner.finish(&mut model);
    let step = cur.step;
    let (tokens_seen, train_s) = (cur.seen, cur.train_seconds);
    let ckpt = ended.checkpoint;
    if ended.interrupted {
        say!(
            con,
            "interrupted at step {step}/{total}: saved the model so far: checkpoint {} and loss curve {}\nexport it with: {} export {} --dtype f32 --out model.ember",
            ckpt.display(),
            out.join("loss.csv").display(),
            super::hint_bin("ember-train"),
            shell_path(&out)
        );
        return Ok(Outcome {
            json: json!({
                "interrupted": true,
                "steps": step,
                "total_steps": total,
                "out_dir": out,
                "checkpoint": ckpt,
                "loss_csv": out.join("loss.csv"),
                "loss_plot": out.join("loss.svg"),
                "wall_seconds": wall.elapsed().as_secs_f64(),
            }),
            exit_code: 130,
        });
    }
    let history = cur.history;

    // 6. Export, test loss, responses.
    let model_path = out.join("model.ember");
    let provenance = vec![
        ("source".to_string(), s.init.display().to_string()),
        ("finetune".to_string(), "instruct".to_string()),
        ("data".to_string(), data_ref.path.clone()),
        ("data_hash".to_string(), data_ref.hash.clone()),
        ("steps".to_string(), step.to_string()),
        ("epochs".to_string(), s.epochs.to_string()),
        ("lr".to_string(), s.lr.to_string()),
        ("mask_prompt".to_string(), s.mask_prompt.to_string()),
    ];
    let size = match (&model, &format) {
        (Net::Gpt(m), Format::Alpaca { template, .. }) => {
            let meta = ExportMeta {
                config: cfg,
                task: ModelTask::LanguageModel,
                prompt: Some(template.clone()),
                tokenizer: Some(&tok),
                provenance,
            };
            export_ember(&model_path, &meta, ExportDtype::F32, &|n| m.param(n))
        }
        (Net::Family(m), _) => {
            // The file answers in the format it was tuned on: the chat template with the
            // model's special tokens, or Alpaca (then without the chat template).
            let (chat_extras, prompt) = match &format {
                Format::Chat { .. } => (extras.clone(), None),
                Format::Alpaca { template, .. } => (
                    extras
                        .clone()
                        .map(|e| crate::hf::extras::Extras { chat: None, ..e }),
                    Some(template.clone()),
                ),
            };
            export_family_ember_with(
                &model_path,
                m.config(),
                &m.tensors(),
                Some(&tok),
                chat_extras.as_ref(),
                prompt.as_ref(),
                ExportDtype::F32,
                &crate::export::Keep::default(),
                &provenance,
            )
        }
        (Net::Gpt(_), Format::Chat { .. }) => {
            unreachable!("prompt_format gives GPT-2 checkpoints the Alpaca template")
        }
    }
    .map_err(|e| failed(format!("{}: {e}", model_path.display())))?;
    let test_order: Vec<usize> = (0..test_ex.len()).collect();
    let test_loss = mean_loss(&mut model, &test_ex, &test_order, b, None, false, &rule)
        .map_err(|e| failed(format!("test loss: {e}")))?;
    // The weights live on in the exported file, which the responses below map and read whole:
    // free the model (weights, kept buffers) first, or the peak memory holds both copies.
    drop(model);
    let last = history.last().copied();
    let (tl, vl) = last.map_or((f32::NAN, f32::NAN), |r| (r.train_loss, r.val_loss));
    say!(
        con,
        "fine-tuned {} ({}, {tokens_seen} tokens) in {}: train loss {tl:.3}, val loss {vl:.3}, test loss {test_loss:.3}, {:.0} tokens/s",
        count(step, "step"),
        count(s.epochs, "epoch"),
        fmt_duration(train_s),
        tokens_seen as f64 / train_s.max(1e-9)
    );

    // The responses come from the exported file (what `ember chat` runs), with its own template.
    let responses_path = out.join("responses.json");
    let gen_t0 = Instant::now();
    // Ctrl-C while generating: the responses so far are written, the run ends with 130.
    let mut responses_cut: Option<usize> = None;
    let responses = {
        let m = Model::open(&model_path)
            .map_err(|e| failed(format!("{}: {e}", model_path.display())))?;
        // The file must carry the format it was tuned on (what `ember chat` uses).
        let stored = match &format {
            Format::Alpaca { .. } => m.prompt_template().is_some(),
            Format::Chat { .. } => emberlm_formats::meta::get_chat_template(m.header())
                .ok()
                .flatten()
                .is_some(),
        };
        if !stored {
            return Err(failed(format!(
                "{}: the exported model lacks its {} template",
                model_path.display(),
                format.name()
            )));
        }
        let mut session = Session::new(
            &m,
            &SessionOptions {
                threads,
                ..SessionOptions::default()
            },
        )
        .map_err(|e| failed(format!("generation: {e}")))?;
        let mut out_rows = Vec::with_capacity(test_items.len());
        for (i, item) in test_items.iter().enumerate() {
            let r = format
                .respond(&mut session, &tok, item, s.max_new_tokens)
                .map_err(|e| failed(format!("response to test entry {i}: {e}")))?;
            out_rows.push(Response {
                instruction: item.instruction.clone(),
                input: item.input.clone(),
                output: item.output.clone(),
                model_response: r,
            });
            let done = i + 1;
            if done % RESPONSE_NOTE_EVERY == 0 && done < test_items.len() {
                note!(
                    con,
                    "responses: {done}/{} ({})",
                    test_items.len(),
                    fmt_duration(gen_t0.elapsed().as_secs_f64())
                );
            }
            if signal::interrupted() && done < test_items.len() {
                responses_cut = Some(done);
                break;
            }
        }
        out_rows
    };
    write_responses(&responses_path, &responses).map_err(|e| {
        failed(format!(
            "{}: {}",
            responses_path.display(),
            data::io_reason(&e)
        ))
    })?;
    if let Some(done) = responses_cut {
        say!(
            con,
            "interrupted while generating responses: saved the {done} of {} done (the model and \
             checkpoint are complete)",
            test_items.len()
        );
    }
    say!(
        con,
        "responses: {} test entries (greedy, at most {} tokens each) in {}: {}",
        responses.len(),
        s.max_new_tokens,
        fmt_duration(gen_t0.elapsed().as_secs_f64()),
        responses_path.display()
    );
    if let Some(r) = responses.first() {
        say!(
            con,
            "  first: {:?}\n    reference: {:?}\n    model:     {:?}",
            r.instruction,
            r.output,
            r.model_response
        );
    }
    say!(con, "checkpoint: {}", ckpt.display());
    say!(
        con,
        "model: {} ({size} bytes, f32, {} template stored)",
        model_path.display(),
        format.name()
    );
    say!(
        con,
        "loss curve: {} and {}",
        out.join("loss.csv").display(),
        out.join("loss.svg").display()
    );
    say!(
        con,
        "chat with it: {} chat {}",
        super::hint_bin("ember"),
        shell_path(&model_path)
    );
    Ok(Outcome {
        json: json!({
            "train_loss": finite_or_null(tl),
            "val_loss": finite_or_null(vl),
            "test_loss": finite_or_null(test_loss),
            "initial_train_loss": finite_or_null(tl0),
            "initial_val_loss": finite_or_null(vl0),
            "steps": step,
            "epochs": s.epochs,
            "trainable_params": trainable,
            "parameters": params_of(&cfg, family.as_ref()),
            "template": match format {
                Format::Alpaca { .. } => "alpaca",
                Format::Chat { .. } => "chat",
            },
            "tokens_per_s": tokens_seen as f64 / train_s.max(1e-9),
            "tokens_seen": tokens_seen,
            "train_seconds": train_s,
            "wall_seconds": wall.elapsed().as_secs_f64(),
            "model": model_path,
            "responses": responses_path,
            "checkpoint": ckpt,
            "loss_csv": out.join("loss.csv"),
            "loss_plot": out.join("loss.svg"),
            "out_dir": out,
            "split": {"train": train_ex.len(), "val": val_ex.len(), "test": test_ex.len()},
            "interrupted": responses_cut.is_some(),
        }),
        exit_code: if responses_cut.is_some() { 130 } else { 0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> InstructArgs {
        let mut v = vec!["--init", "i", "--data", "d.json", "--out", "o"];
        v.extend_from_slice(extra);
        InstructArgs::from_args(&["instruct"], &v).unwrap()
    }

    #[test]
    fn defaults_are_the_books() {
        let s = settings(&args(&[])).unwrap();
        assert_eq!(
            (s.epochs, s.lr, s.weight_decay, s.batch, s.seed),
            (2, 5e-5, 0.1, 8, 123)
        );
        assert_eq!(
            (s.eval_every, s.eval_batches, s.max_new_tokens),
            (5, 5, 256)
        );
        assert_eq!(s.dropout, 0.0);
        assert!(!s.mask_prompt);
        assert_eq!((s.trainable, s.lora), (Trainable::All, None));
        let s = settings(&args(&["--lora-rank", "16", "--lora-targets", "qkv,head"])).unwrap();
        let l = s.lora.unwrap();
        assert_eq!((l.rank, l.alpha), (16, 16.0));
        assert!(l.targets.q && l.targets.k && l.targets.v && l.targets.head && !l.targets.up);
        let s = settings(&args(&["--trainable", "last-2"])).unwrap();
        assert_eq!(s.trainable, Trainable::LastBlocks(2));
    }

    #[test]
    fn bad_flags_are_usage_errors_naming_the_flag() {
        for (flags, name) in [
            (&["--batch", "0"][..], "--batch"),
            (&["--epochs", "0"][..], "--epochs"),
            (&["--eval-every", "0"][..], "--eval-every"),
            (&["--eval-batches", "0"][..], "--eval-batches"),
            (&["--max-new-tokens", "0"][..], "--max-new-tokens"),
            (&["--max-length", "0"][..], "--max-length"),
            (&["--lr", "-1"][..], "--lr"),
            (&["--lr", "NaN"][..], "--lr"),
            (&["--weight-decay", "-0.1"][..], "--weight-decay"),
            (&["--dropout", "1"][..], "--dropout"),
            (&["--lora-rank", "0"][..], "--lora-rank"),
            (&["--lora-alpha", "8"][..], "--lora-alpha"),
            (&["--trainable", "middle"][..], "--trainable"),
            (&["--trainable", "last-0"][..], "--trainable"),
            (
                &["--lora-rank", "4", "--lora-targets", "mlp"][..],
                "--lora-targets",
            ),
            (
                &["--lora-rank", "4", "--trainable", "head"][..],
                "--trainable",
            ),
        ] {
            match settings(&args(flags)) {
                Err(CliError::Usage(m)) => assert!(m.contains(name), "{flags:?}: {m}"),
                other => panic!("{flags:?}: {other:?}"),
            }
        }
        let missing = InstructArgs::from_args(&["instruct"], &["--data", "d.json"]).unwrap();
        assert!(matches!(settings(&missing), Err(CliError::Usage(m)) if m.contains("--init")));
    }
}
