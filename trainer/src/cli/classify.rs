//! `ember-train finetune classify`: the book's chapter 6 (a spam classifier) and appendix E (LoRA).
//!
//! Flow: load the `--init` checkpoint → read the labelled file (rows skipped are counted by
//! reason) → optional balancing → seeded 70/10/20 split → tokenize and truncate → replace the
//! head by one row per label → train the `--trainable` subset or LoRA adapters → per epoch, loss
//! and accuracy on every split → checkpoint (`DIR/checkpoints`) and `DIR/model.ember` (a
//! classifier that `ember classify` runs). Ctrl-C stops after the current step and saves both.
//! There is no `--resume`: a fine-tuning run is short; rerun it.

use super::progress::{Progress, Status};
use super::{CliError, Console, Outcome, failed, shell_path, signal, usage, with_threads};
use crate::checkpoint::{self, ClassifierJson, Contents, TrainerState};
use crate::export::{ExportDtype, ExportMeta, export_ember};
use crate::finetune::classify::{Example, Metrics, balance, evaluate, make_batch, shuffle, split};
use crate::finetune::data::{PAD_ID, read_labelled};
use crate::finetune::tune::{LoraSpec, Trainable, TuneOptions, Tuner, tuning_from_flags};
use crate::layers::dropout::mix64;
use crate::model::{DropoutRates, Gpt, Mode};
use crate::plot::{self, LossRow, to_csv};
use crate::{note, say};
use argh::FromArgs;
use emberlm_formats::ember::write_atomically;
use emberlm_formats::meta::{Readout, Task};
use emberlm_formats::tokenizer::{EncodeScratch, SpecialTokens};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(FromArgs, Debug, Default, Clone)]
#[argh(subcommand, name = "classify")]
/// Fine-tune a checkpoint into a classifier on label<TAB>text rows (the SMS Spam Collection
/// format) or a CSV with a header, and export it as a .ember file for ember classify.
pub struct ClassifyArgs {
    /// the checkpoint to start from (a run directory or a step directory; e.g. an imported GPT-2)
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
    /// which layers get adapters: all (default) or a comma list of qkv, proj, fc, ff-proj, head
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
    /// dropout during training (default 0.0, as the book's classifier)
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
    let (mut train_set, val_set, test_set) = split(examples, mix64(a.seed ^ 0x5B1));
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

    let mut model = Gpt::from_params(cfg, l.params)
        .and_then(|m| m.into_classifier(k, mix64(a.seed ^ 0x4EAD)))
        .map_err(|e| failed(format!("model: {e}")))?;
    model.dropout = DropoutRates::uniform(a.dropout);
    let mut tuner = Tuner::new(
        &mut model,
        &TuneOptions {
            trainable,
            lora,
            weight_decay: a.weight_decay,
            seed: mix64(a.seed ^ 0x10AA),
        },
    )
    .map_err(|e| usage(e.to_string()))?;
    note!(
        con,
        "model: {}, dim {}, {} labels; training {}: {} of {} parameters",
        super::count(cfg.n_layers as u64, "layer"),
        cfg.dim,
        k,
        tuner.description(),
        tuner.trainable_params(),
        model.params().len()
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
    let steps_per_epoch = (train_set.len() / b).max(1);
    let total = steps_per_epoch as u64 * a.epochs;
    let mut step = 0u64;
    let mut history: Vec<LossRow> = Vec::new();
    let mut epochs: Vec<[Metrics; 3]> = Vec::new();
    let mut examples_seen = 0u64;
    let mut train_seconds = 0f64;
    let mut interrupted = false;
    let eval_subset = a.eval_batches * b;
    let mut progress = Progress::new(con.tty);
    let loop_t0 = Instant::now();
    'epochs: for epoch in 1..=a.epochs {
        shuffle(&mut train_set, mix64(a.seed ^ epoch));
        // drop_last, as the book's training loader
        for chunk in train_set.chunks_exact(b).take(steps_per_epoch) {
            let t0 = Instant::now();
            let refs: Vec<&Example> = chunk.iter().collect();
            let bt = make_batch(&refs, readout, length, pad);
            model.zero_grad();
            let loss = model
                .forward(
                    &bt.inputs,
                    Some(&bt.targets),
                    bt.batch,
                    bt.len,
                    Mode::Train {
                        seed: mix64(a.seed ^ step),
                    },
                )
                .and_then(|l| model.backward().map(|()| l))
                .map_err(|e| failed(format!("step {}: {e}", step + 1)))?;
            tuner
                .step(&mut model, a.lr)
                .map_err(|e| failed(format!("step {}: {e}", step + 1)))?;
            train_seconds += t0.elapsed().as_secs_f64();
            step += 1;
            examples_seen += b as u64;
            if step % a.eval_every == 0 || step == total {
                let ev = |m: &mut Gpt, set: &[Example]| {
                    evaluate(
                        m,
                        &set[..set.len().min(eval_subset)],
                        readout,
                        length,
                        pad,
                        b,
                    )
                };
                let tr = ev(&mut model, &train_set).map_err(|e| failed(e.to_string()))?;
                let va = ev(&mut model, &val_set).map_err(|e| failed(e.to_string()))?;
                progress.line(
                    con.log,
                    &format!(
                        "epoch {epoch} step {step}/{total}: train loss {:.3}, val loss {:.3} ({:.1} examples/s)",
                        tr.loss,
                        va.loss,
                        examples_seen as f64 / train_seconds.max(1e-9)
                    ),
                );
                history.push(LossRow {
                    step,
                    epoch,
                    tokens_seen: examples_seen,
                    lr: a.lr,
                    train_loss: tr.loss as f32,
                    val_loss: va.loss as f32,
                });
            }
            progress.update(
                con.log,
                &Status {
                    step,
                    total,
                    unit: "step",
                    epoch: Some(epoch),
                    loss,
                    lr: Some(a.lr),
                    rate: examples_seen as f64 / train_seconds.max(1e-9),
                    rate_unit: "examples/s",
                    eta: Status::eta(loop_t0.elapsed().as_secs_f64(), step, total),
                },
                step == total,
            );
            if signal::interrupted() {
                interrupted = true;
                break 'epochs;
            }
        }
        progress.line(
            con.log,
            &format!(
                "epoch {epoch}: loss and accuracy on every split ({} examples)…",
                train_set.len() + val_set.len() + test_set.len()
            ),
        );
        let m = every_split(
            &mut model,
            [&train_set, &val_set, &test_set],
            readout,
            length,
            pad,
            b,
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
        epochs.push(m);
        if signal::interrupted() {
            interrupted = step < total;
            break;
        }
    }
    progress.finish(con.log);
    // Ctrl-C skips the (long) evaluation of every split: what is saved is the model so far.
    if epochs.is_empty() && !interrupted {
        let m = every_split(
            &mut model,
            [&train_set, &val_set, &test_set],
            readout,
            length,
            pad,
            b,
        )?;
        epochs.push(m);
    }
    // The metrics of the last evaluated epoch (NaN, i.e. null in JSON, when none was).
    let nan = Metrics {
        loss: f64::NAN,
        accuracy: f64::NAN,
        count: 0,
    };
    let last = *epochs.last().unwrap_or(&[nan; 3]);

    // Curves and per-epoch metrics.
    let write = |name: &str, text: String| -> Result<PathBuf, CliError> {
        let p = out.join(name);
        write_atomically(&p, |w| w.write_all(text.as_bytes()))
            .map_err(|e| failed(format!("{}: {e}", p.display())))?;
        Ok(p)
    };
    let csv = write("loss.csv", to_csv(&history))?;
    let svg = write(
        "loss.svg",
        plot::to_svg_seen(
            &history,
            &plot::title("classifier fine-tuning", &plot::model_name(&cfg)),
            "examples seen",
        ),
    )?;
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

    // Checkpoint (merged weights) and the deployable model.
    let mut state: TrainerState = l.state.clone();
    state.kind = "finetune-classify".into();
    state.step = step;
    state.epoch = epochs.len() as u64;
    state.batch_in_epoch = 0;
    state.adam_step = None;
    state.train_seconds = train_seconds;
    state.history = history.clone();
    state.classifier = Some(classifier.clone());
    state.source = Some(l.dir.display().to_string());
    let shapes = checkpoint::tensor_shapes(&cfg, Some(&classifier));
    let ckpt = checkpoint::save_run(
        &out,
        &Contents {
            state: &state,
            shapes: &shapes,
            params: model.params(),
            moments: None,
            tokenizer: &tok,
        },
    )
    .map_err(|e| failed(e.to_string()))?;
    let task: Task = classifier.task().map_err(failed)?;
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
    let bytes = export_ember(&model_path, &meta, dtype, &|n| model.param(n))
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
    model: &mut Gpt,
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
