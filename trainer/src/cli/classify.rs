//! `ember-train finetune classify`: the book's chapter 6 (a spam classifier) and appendix E (LoRA).
//!
//! Flow: load the `--init` checkpoint → read the labelled file (rows skipped are counted by
//! reason) → optional balancing → seeded 70/10/20 split → tokenize and truncate → replace the
//! head by one row per label → train the `--trainable` subset or LoRA adapters on the shared loop
//! (`train_loop.rs`: the loss of `--eval-batches` batches per split after steps 1, 1 + N, …, the
//! book's `global_step % eval_freq == 0`) → per epoch, loss and accuracy on every split → checkpoint (`DIR/checkpoints`) and `DIR/model.ember` (a
//! classifier that `ember classify` runs). Ctrl-C stops after the current step and saves both.
//! There is no `--resume`: a fine-tuning run is short; rerun it.
//!
//! `--init` may hold GPT-2 or a modern family (Llama, Qwen2, Qwen3, Gemma 3, e.g. imported with
//! `ember-train import`): the family's language-model head is replaced by the same (K, C) head
//! with a bias, trained without dropout, and exported as a family classifier.

use super::net::Net;
use super::progress::Progress;
use super::train_loop::{self, Cursor, Curves, SaveTo, Settings, Task};
use super::{CliError, Console, Outcome, failed, shell_path, signal, usage, with_threads};
use crate::adamw::LrSchedule;
use crate::checkpoint::{self, ClassifierJson, Contents, RunKind, TrainerState};
use crate::dist::Single;
use crate::export::{ExportDtype, ExportMeta, export_ember, export_family_ember_task};
use crate::family::FamilyModel;
use crate::finetune::classify::{Example, Metrics, balance, evaluate, make_batch, shuffle, split};
use crate::finetune::data::{PAD_ID, read_labelled};
use crate::finetune::tune::{LoraSpec, Trainable, TuneOptions, Tuner, tuning_from_flags};
use crate::layers::dropout::mix64;
use crate::model::{DropoutRates, Gpt};
use crate::plot;
use crate::{note, say};
use argh::FromArgs;
use emberlm_formats::ember::write_atomically;
use emberlm_formats::meta::{Readout, Task as ModelTask};
use emberlm_formats::tokenizer::Tokenizer;
use emberlm_formats::tokenizer::{EncodeScratch, SpecialTokens};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(FromArgs, Debug, Default, Clone)]
#[argh(subcommand, name = "classify")]
/// Fine-tune a checkpoint into a classifier on label<TAB>text rows (the SMS Spam Collection
/// format) or a CSV with a header, and export it as a .ember file for ember classify.
pub struct ClassifyArgs {
    /// the checkpoint to start from (a run directory or a step directory): GPT-2, or an imported
    /// Llama, Qwen2, Qwen3 or Gemma 3
    #[argh(option)]
    pub init: Option<PathBuf>,
    /// the labelled data: .tsv/.txt as label<TAB>text, .csv with label and text columns
    #[argh(option)]
    pub data: Option<PathBuf>,
    /// output directory: checkpoints/, model.ember, loss.csv, loss.svg, metrics.csv, accuracy.svg
    #[argh(option)]
    pub out: Option<PathBuf>,
    /// undersample every class to the size of the smallest (the book's balanced dataset)
    #[argh(switch)]
    pub balance: bool,
    /// pad and truncate to this many tokens (default: the longest training example)
    #[argh(option)]
    pub max_length: Option<usize>,
    /// where the head reads: last (the last padded position, as the book) or last-real (the last real token)
    #[argh(option, default = "String::from(\"last\")")]
    pub readout: String,
    /// what trains: head, last-block (default: the book's last block + final norm + head), last-N, or all
    #[argh(option)]
    pub trainable: Option<String>,
    /// train LoRA adapters of this rank instead (every base weight frozen)
    #[argh(option)]
    pub lora_rank: Option<usize>,
    /// the LoRA alpha: updates are scaled by alpha/rank (default: the rank, i.e. scale 1)
    #[argh(option)]
    pub lora_alpha: Option<f32>,
    /// which layers get adapters: all (default) or a comma list (GPT-2: qkv, proj, fc, ff-proj,
    /// head; the families: q, k, v, o, gate, up, down, head, emb)
    #[argh(option)]
    pub lora_targets: Option<String>,
    /// epochs (default 5, as the book)
    #[argh(option, default = "5")]
    pub epochs: u64,
    /// batch size (default 8)
    #[argh(option, default = "8")]
    pub batch: usize,
    /// learning rate (default 5e-5, as the book)
    #[argh(option, default = "5e-5")]
    pub lr: f32,
    /// the AdamW weight decay on the trained parameters (default 0.1)
    #[argh(option, default = "0.1")]
    pub weight_decay: f32,
    /// dropout during training (default 0.0, as the book's classifier; GPT-2 only)
    #[argh(option, default = "0.0")]
    pub dropout: f32,
    /// seed of the balancing, split, shuffles, new head and adapters (default 123)
    #[argh(option, default = "123")]
    pub seed: u64,
    /// print the training and validation loss every N steps (default 50, as the book)
    #[argh(option, default = "50")]
    pub eval_every: u64,
    /// batches per split for those loss prints (default 5)
    #[argh(option, default = "5")]
    pub eval_batches: usize,
    /// precision of the exported model: f32 (default), f16 or int8
    #[argh(option, default = "String::from(\"f32\")")]
    pub dtype: String,
    /// worker threads (default: one per core)
    #[argh(option)]
    pub threads: Option<usize>,
    /// print one JSON object on stdout at the end
    #[argh(switch)]
    pub json: bool,
}

/// Runs `ember-train finetune classify`.
pub fn run(a: ClassifyArgs, con: &mut Console<'_>) -> Result<Outcome, CliError> {
    let init = a
        .init
        .clone()
        .ok_or_else(|| usage("--init CKPT is required (a checkpoint to start from)"))?;
    let data_path = a
        .data
        .clone()
        .ok_or_else(|| usage("--data FILE is required (label<TAB>text rows or a CSV)"))?;
    let out = a
        .out
        .clone()
        .ok_or_else(|| usage("--out DIR is required"))?;
    if a.batch == 0 {
        return Err(usage("--batch must be at least 1"));
    }
    if a.epochs == 0 {
        return Err(usage("--epochs must be at least 1"));
    }
    if !(a.lr.is_finite() && a.lr > 0.0) {
        return Err(usage(format!("--lr {}: must be a positive number", a.lr)));
    }
    if !(a.weight_decay.is_finite() && a.weight_decay >= 0.0) {
        return Err(usage(format!(
            "--weight-decay {}: must be 0 or more",
            a.weight_decay
        )));
    }
    if !(0.0..1.0).contains(&a.dropout) {
        return Err(usage(format!("--dropout {}: must be in [0, 1)", a.dropout)));
    }
    if a.eval_every == 0 || a.eval_batches == 0 {
        return Err(usage("--eval-every and --eval-batches must be at least 1"));
    }
    if a.max_length == Some(0) {
        return Err(usage("--max-length must be at least 1"));
    }
    let readout = match a.readout.as_str() {
        "last" => Readout::Last,
        "last-real" => Readout::LastReal,
        other => {
            return Err(usage(format!(
                "--readout {other:?}: expected last or last-real"
            )));
        }
    };
    let (trainable, lora) = tuning_from_flags(
        a.trainable.as_deref(),
        Trainable::LastBlocks(1),
        a.lora_rank,
        a.lora_alpha,
        a.lora_targets.as_deref(),
    )
    .map_err(usage)?;
    let dtype: ExportDtype = a
        .dtype
        .parse()
        .map_err(|e| usage(format!("--dtype: {e}")))?;
    if out.is_file() {
        return Err(usage(format!(
            "--out {}: is a file, expected a directory",
            out.display()
        )));
    }
    let threads = a.threads;
    with_threads(threads, || {
        train(
            a, con, init, data_path, out, readout, trainable, lora, dtype,
        )
    })?
}

/// Classifier fine-tuning as a [`train_loop::Task`]: padded batches read at the last position,
/// the tuner's AdamW, loss and accuracy on every split after every epoch.
struct Classify<'a> {
    /// Train, validation, test.
    sets: [Vec<Example>; 3],
    seed: u64,
    batch: usize,
    /// Examples per split in the periodic loss evaluation.
    eval_subset: usize,
    readout: Readout,
    length: usize,
    pad: u32,
    tuner: Tuner,
    /// Every epoch's metrics on the three splits.
    epochs: Vec<[Metrics; 3]>,
    /// `trainer.json` without the position.
    state: TrainerState,
    shapes: Vec<(String, Vec<usize>)>,
    tok: &'a Tokenizer,
    out: &'a Path,
}

impl Task<Net> for Classify<'_> {
    fn start_epoch(&mut self, epoch: u64) {
        shuffle(&mut self.sets[0], mix64(self.seed ^ (epoch + 1)));
    }

    fn micro_batch(
        &mut self,
        model: &mut Net,
        pos: usize,
        seed: u64,
        step_no: u64,
    ) -> Result<(f32, u64), CliError> {
        let train = &self.sets[0];
        let start = (pos * self.batch).min(train.len());
        let refs: Vec<&Example> = train[start..(start + self.batch).min(train.len())]
            .iter()
            .collect();
        let bt = make_batch(&refs, self.readout, self.length, self.pad);
        let loss = model
            .tune_batch(&bt.inputs, &bt.targets, (bt.batch, bt.len), seed)
            .map_err(|e| failed(format!("step {step_no}: {e}")))?;
        Ok((loss.unwrap_or(f32::NAN), refs.len() as u64))
    }

    fn update(&mut self, model: &mut Net, lr: f32) -> Result<(), String> {
        self.tuner.step(model, lr).map_err(|e| e.to_string())
    }

    fn evaluate(&mut self, model: &mut Net, _at: u64) -> Result<(f32, f32), CliError> {
        let mut ev = |set: &[Example]| {
            evaluate(
                model,
                &set[..set.len().min(self.eval_subset)],
                self.readout,
                self.length,
                self.pad,
                self.batch,
            )
            .map_err(failed)
        };
        let tr = ev(&self.sets[0])?;
        let va = ev(&self.sets[1])?;
        Ok((tr.loss as f32, va.loss as f32))
    }

    fn end_epoch(
        &mut self,
        model: &mut Net,
        epoch: u64,
        progress: &mut Progress,
        con: &mut Console<'_>,
    ) -> Result<(), CliError> {
        let epoch = epoch + 1;
        progress.line(
            con.log,
            &format!(
                "epoch {epoch}: loss and accuracy on every split ({} examples)…",
                self.sets.iter().map(Vec::len).sum::<usize>()
            ),
        );
        let [tr, va, te] = &self.sets;
        let m = every_split(
            model,
            [tr, va, te],
            self.readout,
            self.length,
            self.pad,
            self.batch,
        )?;
        progress.clear(con.log);
        say!(
            con,
            "epoch {epoch}: accuracy train {:.2}% / val {:.2}% / test {:.2}%; loss {:.3} / {:.3} / {:.3}",
            100.0 * m[0].accuracy,
            100.0 * m[1].accuracy,
            100.0 * m[2].accuracy,
            m[0].loss,
            m[1].loss,
            m[2].loss
        );
        self.epochs.push(m);
        Ok(())
    }

    fn save(&mut self, model: &Net, cur: &Cursor, to: SaveTo<'_>) -> Result<PathBuf, CliError> {
        let state = TrainerState {
            step: cur.step,
            epoch: self.epochs.len() as u64,
            train_seconds: cur.train_seconds,
            history: cur.history.clone(),
            ..self.state.clone()
        };
        // Adapters the model runs directly are merged into the saved copy.
        let params = model.merged_params();
        let c = Contents {
            state: &state,
            shapes: &self.shapes,
            params: &params,
            moments: None,
            tokenizer: self.tok,
        };
        to.write(self.out, c).map_err(|e| failed(e.to_string()))
    }
}

#[allow(clippy::too_many_arguments)]
fn train(
    a: ClassifyArgs,
    con: &mut Console<'_>,
    init: PathBuf,
    data_path: PathBuf,
    out: PathBuf,
    readout: Readout,
    trainable: Trainable,
    lora: Option<LoraSpec>,
    dtype: ExportDtype,
) -> Result<Outcome, CliError> {
    let wall = Instant::now();
    let l = checkpoint::load(&init, false).map_err(|e| failed(format!("--init: {e}")))?;
    if l.state.classifier.is_some() {
        return Err(failed(format!(
            "--init {}: is already a classifier; start from a language-model checkpoint",
            init.display()
        )));
    }
    let cfg = l.config;
    let family = l.family;
    if let Some(f) = &family
        && a.dropout != 0.0
    {
        return Err(usage(format!(
            "--dropout {}: the {} family trains without dropout",
            a.dropout,
            f.arch.name()
        )));
    }
    let tok = l
        .text_tokenizer("ember-train finetune classify")
        .map_err(failed)?
        .clone();
    if let Some(m) = a.max_length
        && m > cfg.context_length
    {
        return Err(usage(format!(
            "--max-length {m}: the model's context is {}",
            cfg.context_length
        )));
    }
    let data = read_labelled(&data_path).map_err(|e| failed(e.to_string()))?;
    let k = data.labels.len();
    let skipped: usize = data.skipped.values().sum();
    note!(
        con,
        "data: {} rows, labels {:?}{}",
        data.rows.len(),
        data.labels,
        if skipped == 0 {
            String::new()
        } else {
            format!(
                "; skipped {skipped} ({})",
                data.skipped
                    .iter()
                    .map(|(r, n)| format!("{n} {r}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    let mut rows = data.rows;
    if a.balance {
        let kept = balance(&mut rows, k, mix64(a.seed ^ 0xBA1));
        note!(
            con,
            "balanced: {kept} rows per label, {} in all",
            rows.len()
        );
    }
    // The pad id: GPT-2's <|endoftext|> (50256), or the tokenizer's end-of-text id.
    let pad = if (PAD_ID as usize) < cfg.vocab_size && tok.eot_id() == Some(PAD_ID) {
        PAD_ID
    } else {
        tok.eot_id()
            .filter(|&id| (id as usize) < cfg.vocab_size)
            .unwrap_or(cfg.vocab_size as u32 - 1)
    };
    let mut scratch = EncodeScratch::new();
    let mut examples = Vec::with_capacity(rows.len());
    for (label, text) in &rows {
        let mut ids = Vec::new();
        tok.encode(text, SpecialTokens::AsText, &mut scratch, &mut ids);
        if ids.is_empty() {
            continue;
        }
        examples.push(Example {
            tokens: ids,
            label: *label,
        });
    }
    let (train_set, val_set, test_set) = split(examples, mix64(a.seed ^ 0x5B1));
    if train_set.is_empty() || val_set.is_empty() || test_set.is_empty() {
        return Err(failed(format!(
            "--data {}: {} usable rows is too few for a 70/10/20 split (every split needs a row)",
            data_path.display(),
            train_set.len() + val_set.len() + test_set.len()
        )));
    }
    let longest = train_set.iter().map(|e| e.tokens.len()).max().unwrap_or(1);
    let length = a.max_length.unwrap_or(longest.min(cfg.context_length));
    let truncated = train_set
        .iter()
        .chain(&val_set)
        .chain(&test_set)
        .filter(|e| e.tokens.len() > length)
        .count();
    note!(
        con,
        "split: {} train / {} validation / {} test; length {length} tokens (longest training example {longest}){}",
        train_set.len(),
        val_set.len(),
        test_set.len(),
        if truncated > 0 {
            format!("; {truncated} examples truncated")
        } else {
            String::new()
        }
    );

    let head_seed = mix64(a.seed ^ 0x4EAD);
    let mut model = match &family {
        Some(f) => Net::Family(
            FamilyModel::from_params(f, l.params)
                .and_then(|m| m.into_classifier(k, head_seed))
                .map_err(|e| failed(format!("model: {e}")))?,
        ),
        None => {
            let mut m = Gpt::from_params(cfg, l.params)
                .and_then(|m| m.into_classifier(k, head_seed))
                .map_err(|e| failed(format!("model: {e}")))?;
            m.dropout = DropoutRates::uniform(a.dropout);
            Net::Gpt(m)
        }
    };
    let tuner = Tuner::new(
        &mut model,
        &TuneOptions {
            trainable,
            lora,
            weight_decay: a.weight_decay,
            seed: mix64(a.seed ^ 0x10AA),
        },
    )
    .map_err(|e| {
        let flag = if lora.is_some() {
            "--lora-rank"
        } else {
            "--trainable"
        };
        usage(format!("{flag}: {e}"))
    })?;
    note!(
        con,
        "model: {}{}, dim {}, {} labels; training {}: {} of {} parameters",
        family
            .as_ref()
            .map_or(String::new(), |f| format!("{} ", f.arch.name())),
        super::count(cfg.n_layers as u64, "layer"),
        cfg.dim,
        k,
        tuner.description(),
        tuner.trainable_params(),
        train_loop::Trainable::params(&model).len()
    );
    let existed = out.exists();
    std::fs::create_dir_all(&out).map_err(|e| failed(format!("--out {}: {e}", out.display())))?;
    if !existed {
        signal::fresh_dir(out.clone());
    }
    let classifier = ClassifierJson {
        labels: data.labels.clone(),
        readout: a.readout.clone(),
        pad_id: pad,
        length: Some(length as u32),
    };

    let b = a.batch;
    // drop_last, as the book's training loader (one short batch when the split is smaller
    // than --batch)
    let steps_per_epoch = (train_set.len() / b).max(1);
    let total = steps_per_epoch as u64 * a.epochs;
    let csv = out.join("loss.csv");
    let svg = out.join("loss.svg");
    let settings = Settings {
        total,
        batches_per_epoch: steps_per_epoch,
        grad_accum: 1,
        clip: None,
        lr: LrSchedule {
            initial_lr: a.lr,
            peak_lr: a.lr,
            min_lr: a.lr,
            warmup_steps: 0,
            total_steps: total,
        },
        dropout_seed: mix64(a.seed ^ 2),
        eval_every: a.eval_every,
        checkpoint_every: None,
        checkpoint_epochs: false,
        best_dir: None,
        chance_loss: None,
        advice: format!("lower --lr (now {})", a.lr),
        rate_unit: "examples/s",
        curves: Curves::in_dir(
            &out,
            plot::title("classifier fine-tuning", &plot::model_name(&cfg)),
            "examples seen",
        ),
    };
    // The checkpoint: the --init checkpoint's record with this run's head, position and history.
    let mut state: TrainerState = l.state.clone();
    state.kind = RunKind::Classify;
    state.batch_in_epoch = 0;
    state.adam_step = None;
    state.classifier = Some(classifier.clone());
    state.source = Some(l.dir.display().to_string());
    let mut task = Classify {
        sets: [train_set, val_set, test_set],
        seed: a.seed,
        batch: b,
        eval_subset: a.eval_batches * b,
        readout,
        length,
        pad,
        tuner,
        epochs: Vec::new(),
        state,
        shapes: model.shapes(),
        tok: &tok,
        out: &out,
    };
    let mut cur = Cursor::default();
    let ended = train_loop::run(&mut task, &mut model, &settings, &mut cur, &Single, con)?;
    // LoRA run directly: merge it into the weights for the export and what follows.
    task.tuner.finish(&mut model);
    let (interrupted, ckpt, step) = (ended.interrupted, ended.checkpoint, cur.step);
    let (epochs, tuner) = (task.epochs, task.tuner);
    let (examples_seen, train_seconds) = (cur.seen, cur.train_seconds);
    // The metrics of the last evaluated epoch (NaN, i.e. null in JSON, when none was).
    let nan = Metrics {
        loss: f64::NAN,
        accuracy: f64::NAN,
        count: 0,
    };
    let last = *epochs.last().unwrap_or(&[nan; 3]);

    // Per-epoch metrics.
    let write = |name: &str, text: String| -> Result<PathBuf, CliError> {
        let p = out.join(name);
        write_atomically(&p, |w| w.write_all(text.as_bytes()))
            .map_err(|e| failed(format!("{}: {e}", p.display())))?;
        Ok(p)
    };
    let accuracy: Vec<(u64, [f64; 3])> = epochs
        .iter()
        .enumerate()
        .map(|(i, m)| (i as u64 + 1, [m[0].accuracy, m[1].accuracy, m[2].accuracy]))
        .collect();
    let accuracy_svg = write(
        "accuracy.svg",
        plot::accuracy_svg(
            &accuracy,
            &format!(
                "Accuracy — classifier fine-tuning ({})",
                plot::model_name(&cfg)
            ),
        ),
    )?;
    let mut mcsv = String::from(
        "epoch,train_accuracy,val_accuracy,test_accuracy,train_loss,val_loss,test_loss\n",
    );
    for (i, m) in epochs.iter().enumerate() {
        mcsv.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            i + 1,
            m[0].accuracy,
            m[1].accuracy,
            m[2].accuracy,
            m[0].loss,
            m[1].loss,
            m[2].loss
        ));
    }
    let metrics_csv = write("metrics.csv", mcsv)?;

    // The deployable model.
    let task: ModelTask = classifier.task().map_err(failed)?;
    let model_path = out.join("model.ember");
    let meta = ExportMeta {
        config: cfg,
        task,
        prompt: None,
        tokenizer: Some(&tok),
        provenance: vec![
            ("source".into(), l.dir.display().to_string()),
            ("finetune".into(), "classify".into()),
            ("data".into(), data_path.display().to_string()),
            ("trainable".into(), tuner.description().to_string()),
        ]
        .into_iter()
        .chain((!epochs.is_empty()).then(|| ("test_accuracy".into(), last[2].accuracy.to_string())))
        .collect(),
    };
    let bytes = match &model {
        Net::Gpt(m) => export_ember(&model_path, &meta, dtype, &|n| m.param(n)),
        Net::Family(m) => export_family_ember_task(
            &model_path,
            m.config(),
            &meta.task,
            &m.tensors(),
            Some(&tok),
            None,
            None,
            dtype,
            &crate::export::Keep::default(),
            &meta.provenance,
        ),
    }
    .map_err(|e| failed(format!("{}: {e}", model_path.display())))?;
    if interrupted {
        say!(
            con,
            "interrupted at step {step}/{total} ({} of {} evaluated); saved the model so far:\n  \
             checkpoint: {}\n  model: {} ({:.1} MB, {})\n  loss curve: {} and {}\n  metrics: {}",
            epochs.len(),
            super::count(a.epochs, "epoch"),
            ckpt.display(),
            model_path.display(),
            bytes as f64 / 1e6,
            dtype.name(),
            csv.display(),
            svg.display(),
            metrics_csv.display()
        );
    } else {
        say!(
            con,
            "final accuracy: train {:.2}%, validation {:.2}%, test {:.2}%\nmodel: {} ({:.1} MB, {})",
            100.0 * last[0].accuracy,
            100.0 * last[1].accuracy,
            100.0 * last[2].accuracy,
            model_path.display(),
            bytes as f64 / 1e6,
            dtype.name(),
        );
    }
    say!(
        con,
        "try: {} classify {} --text \"...\"",
        super::hint_bin("ember"),
        shell_path(&model_path)
    );
    Ok(Outcome {
        json: json!({
            "train_accuracy": last[0].accuracy,
            "val_accuracy": last[1].accuracy,
            "test_accuracy": last[2].accuracy,
            "train_loss": last[0].loss,
            "val_loss": last[1].loss,
            "test_loss": last[2].loss,
            "train_examples": last[0].count,
            "val_examples": last[1].count,
            "test_examples": last[2].count,
            "labels": data.labels,
            "skipped_rows": skipped,
            "length": length,
            "readout": a.readout,
            "trainable": tuner.description(),
            "trainable_params": tuner.trainable_params(),
            "steps": step,
            "epochs": epochs.len(),
            "examples_per_s": examples_seen as f64 / train_seconds.max(1e-9),
            "interrupted": interrupted,
            "model": model_path,
            "model_bytes": bytes,
            "checkpoint": ckpt,
            "loss_csv": csv,
            "loss_plot": svg,
            "metrics_csv": metrics_csv,
            "accuracy_plot": accuracy_svg,
            "wall_seconds": wall.elapsed().as_secs_f64(),
            // Per epoch (the keys above are the last epoch's): what metrics.csv holds.
            "epoch_metrics": epochs
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    json!({
                        "epoch": i + 1,
                        "train_loss": m[0].loss,
                        "val_loss": m[1].loss,
                        "test_loss": m[2].loss,
                        "train_accuracy": m[0].accuracy,
                        "val_accuracy": m[1].accuracy,
                        "test_accuracy": m[2].accuracy,
                    })
                })
                .collect::<Vec<_>>(),
        }),
        exit_code: if interrupted { 130 } else { 0 },
    })
}

/// Loss and accuracy on the train, validation and test splits.
fn every_split(
    model: &mut Net,
    splits: [&[Example]; 3],
    readout: Readout,
    length: usize,
    pad: u32,
    batch: usize,
) -> Result<[Metrics; 3], CliError> {
    let mut out = [Metrics::default(); 3];
    for (m, set) in out.iter_mut().zip(splits) {
        *m = evaluate(model, set, readout, length, pad, batch)
            .map_err(|e| failed(format!("evaluation: {e}")))?;
    }
    Ok(out)
}
