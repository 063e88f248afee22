//! The one training loop of `pretrain`, `finetune classify` and `finetune instruct`.
//!
//! Per optimizer step: zero the gradients; `grad_accum` micro-batches of forward + backward,
//! micro-batch k of step s (from 0) with dropout seed [`dropout_seed`]`(run seed, s, k)`; each
//! loss checked by the divergence guard; gradients scaled by 1/grad_accum; global norm computed
//! (clipped with `clip`) and checked; the learning rate of step s from the schedule; the task's
//! optimizer. Then, with `done` = s (the book's `global_step`): an evaluation when
//! `done % eval_every == 0` or at the last step, which appends to the loss history, rewrites the
//! curves (CSV and SVG) and may write the best checkpoint; the progress bar; after the epoch's
//! last batch the task's end-of-epoch work (a sample, metrics); a checkpoint at the end of an
//! epoch (when the task asks for it), every `checkpoint_every` steps, at the end and on Ctrl-C.
//!
//! The task supplies the batches, the evaluation, the optimizer and the checkpoint's contents
//! ([`Task`]); the loop owns the order of things and the position ([`Cursor`]).

use super::progress::{Progress, Status};
use super::{CliError, Console, failed, fmt_duration, signal};
use crate::adamw::{LrSchedule, clip_grad_norm, grad_norm};
use crate::checkpoint::{self, Contents, TrainerState};
use crate::data::{self, mix64};
use crate::dist::{self, Comm, Reducer};
use crate::model::Gpt;
use crate::plot::{LossRow, to_csv, to_svg_seen};
use emberlm_formats::ember::write_atomically;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A step whose loss exceeds this many times max(first loss, chance loss) has diverged.
pub const EXPLODE_FACTOR: f32 = 3.0;

/// The dropout seed of micro-batch `micro` of step `step` (from 0), from the run's dropout seed.
pub fn dropout_seed(run_seed: u64, step: u64, micro: usize) -> u64 {
    mix64(run_seed ^ mix64(step.wrapping_mul(0x1_0000).wrapping_add(micro as u64)))
}

/// `MemAvailable` of /proc/meminfo in bytes (`None` where unknown).
pub fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// `v` as JSON, `null` when it is not finite.
pub fn finite_or_null(v: f32) -> serde_json::Value {
    if v.is_finite() {
        serde_json::json!(v)
    } else {
        serde_json::Value::Null
    }
}

/// The loss curve's files and labels.
#[derive(Clone, Debug)]
pub struct Curves {
    /// `loss.csv`.
    pub csv: PathBuf,
    /// `loss.svg`.
    pub svg: PathBuf,
    /// The picture's title.
    pub title: String,
    /// The x axis: what `tokens_seen` counts (`tokens seen`, `examples seen`).
    pub seen: &'static str,
}

impl Curves {
    /// `DIR/loss.csv` and `DIR/loss.svg`.
    pub fn in_dir(dir: &Path, title: String, seen: &'static str) -> Curves {
        Curves {
            csv: dir.join("loss.csv"),
            svg: dir.join("loss.svg"),
            title,
            seen,
        }
    }

    /// Writes both files (atomically).
    pub fn write(&self, rows: &[LossRow]) -> Result<(), CliError> {
        let csv = to_csv(rows);
        write_atomically(&self.csv, |w| w.write_all(csv.as_bytes()))
            .map_err(|e| failed(format!("{}: {}", self.csv.display(), data::io_reason(&e))))?;
        let svg = to_svg_seen(rows, &self.title, self.seen);
        write_atomically(&self.svg, |w| w.write_all(svg.as_bytes()))
            .map_err(|e| failed(format!("{}: {}", self.svg.display(), data::io_reason(&e))))
    }
}

/// How the loop runs; the same rules for every task.
#[derive(Debug)]
pub struct Settings {
    /// Optimizer steps of the whole run.
    pub total: u64,
    /// Micro-batches per epoch.
    pub batches_per_epoch: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Global gradient-norm clip.
    pub clip: Option<f32>,
    /// The learning rate of every step.
    pub lr: LrSchedule,
    /// The run's dropout seed (see [`dropout_seed`]).
    pub dropout_seed: u64,
    /// Evaluate when the 0-based index of the step just taken is a multiple of this.
    pub eval_every: u64,
    /// Checkpoint every this many steps.
    pub checkpoint_every: Option<u64>,
    /// Checkpoint at the end of every epoch.
    pub checkpoint_epochs: bool,
    /// Keep the checkpoint with the lowest validation loss in this directory.
    pub best_dir: Option<PathBuf>,
    /// The loss of a uniform guess (ln V): a loss above [`EXPLODE_FACTOR`] × max(first loss,
    /// this) has diverged. `None` checks only that losses are finite (a classifier's batch loss
    /// swings too far with a single confident mistake for a ratio to mean divergence).
    pub chance_loss: Option<f32>,
    /// What a diverged run should change (`lower --lr (now 0.001)`).
    pub advice: String,
    /// What the progress rate counts (`tok/s`, `examples/s`).
    pub rate_unit: &'static str,
    /// The loss curve.
    pub curves: Curves,
}

/// Where the run is: what `trainer.json` records.
#[derive(Clone, Debug, Default)]
pub struct Cursor {
    /// Optimizer steps done.
    pub step: u64,
    /// Current epoch (from 0).
    pub epoch: u64,
    /// Micro-batches of the epoch consumed.
    pub pos: usize,
    /// Units trained on (tokens, or examples for the classifier).
    pub seen: u64,
    /// The loss of the run's first step.
    pub first_loss: Option<f32>,
    /// Seconds spent in training steps.
    pub train_seconds: f64,
    /// Every evaluation.
    pub history: Vec<LossRow>,
}

impl Cursor {
    /// `base` with this position: what `trainer.json` records.
    pub fn stamp(&self, base: &TrainerState) -> TrainerState {
        TrainerState {
            step: self.step,
            epoch: self.epoch,
            batch_in_epoch: self.pos,
            tokens_seen: self.seen,
            first_loss: self.first_loss,
            train_seconds: self.train_seconds,
            history: self.history.clone(),
            ..base.clone()
        }
    }

    /// The cursor recorded in a checkpoint.
    pub fn of(st: &TrainerState) -> Cursor {
        Cursor {
            step: st.step,
            epoch: st.epoch,
            pos: st.batch_in_epoch,
            seen: st.tokens_seen,
            first_loss: st.first_loss,
            train_seconds: st.train_seconds,
            history: st.history.clone(),
        }
    }
}

/// Which checkpoint a [`Task::save`] writes.
#[derive(Clone, Copy, Debug)]
pub enum SaveTo<'a> {
    /// A new step directory of the run (`checkpoints/step-N`, `latest` moves).
    Run,
    /// The best checkpoint so far, written in place into this directory, without optimizer state.
    Best(&'a Path),
}

impl SaveTo<'_> {
    /// Writes `c` as this checkpoint of the run in `run_dir` (the best one without moments).
    pub fn write(
        self,
        run_dir: &Path,
        c: Contents<'_>,
    ) -> Result<PathBuf, checkpoint::CheckpointError> {
        match self {
            SaveTo::Run => checkpoint::save_run(run_dir, &c),
            SaveTo::Best(dir) => {
                let c = Contents { moments: None, ..c };
                checkpoint::write_dir(dir, &c).map(|()| dir.to_path_buf())
            }
        }
    }
}

/// What the loop needs of a model: its flat parameters and gradients (GPT-2's [`Gpt`], the
/// modern families' [`crate::family::FamilyModel`]).
pub trait Trainable {
    /// The flat parameter buffer.
    fn params(&self) -> &[f32];
    /// The flat gradient buffer (same layout), writable.
    fn grads_mut(&mut self) -> &mut [f32];
}

impl Trainable for Gpt {
    fn params(&self) -> &[f32] {
        Gpt::params(self)
    }
    fn grads_mut(&mut self) -> &mut [f32] {
        Gpt::grads_mut(self)
    }
}

impl Trainable for crate::family::FamilyModel {
    fn params(&self) -> &[f32] {
        crate::family::FamilyModel::params(self)
    }
    fn grads_mut(&mut self) -> &mut [f32] {
        crate::family::FamilyModel::grads_mut(self)
    }
}

/// What a task supplies to the loop, for a model of type `M`.
pub trait Task<M: Trainable = Gpt> {
    /// Epoch `epoch` (from 0) begins (also when the loop starts in it): shuffle.
    fn start_epoch(&mut self, epoch: u64);
    /// Forward and backward of micro-batch `pos` of the epoch with dropout seed `seed`, in step
    /// `step_no` (from 1, for messages); the gradients accumulate. Returns the mean loss (NaN when
    /// there is none) and the units it trained on.
    fn micro_batch(
        &mut self,
        model: &mut M,
        pos: usize,
        seed: u64,
        step_no: u64,
    ) -> Result<(f32, u64), CliError>;
    /// The optimizer's update with learning rate `lr` (the gradients are final).
    fn update(&mut self, model: &mut M, lr: f32) -> Result<(), String>;
    /// The (train, validation) loss with dropout off; `at` is the 0-based index of the step just
    /// taken (seeds the choice of training batches).
    fn evaluate(&mut self, model: &mut M, at: u64) -> Result<(f32, f32), CliError>;
    /// After the last batch of epoch `epoch` (from 0): a sample, metrics.
    fn end_epoch(
        &mut self,
        model: &mut M,
        epoch: u64,
        progress: &mut Progress,
        con: &mut Console<'_>,
    ) -> Result<(), CliError>;
    /// Writes a checkpoint of `model` at `cur`; returns its directory.
    fn save(&mut self, model: &M, cur: &Cursor, to: SaveTo<'_>) -> Result<PathBuf, CliError>;
}

/// The best checkpoint so far: its validation loss and step.
#[derive(Clone, Copy, Debug)]
pub struct Best {
    /// Its validation loss.
    pub val_loss: f32,
    /// Its step.
    pub step: u64,
}

/// The recorded best checkpoint of a run (its last evaluation), if `dir` holds one.
fn read_best(dir: &Path) -> Option<Best> {
    let text = std::fs::read_to_string(dir.join(checkpoint::STATE_FILE)).ok()?;
    let state: TrainerState = serde_json::from_str(&text).ok()?;
    let last = state.history.last()?;
    (last.step == state.step && last.val_loss.is_finite()).then_some(Best {
        val_loss: last.val_loss,
        step: state.step,
    })
}

/// How the loop ended.
#[derive(Debug)]
pub struct Ended {
    /// Ctrl-C before the last step.
    pub interrupted: bool,
    /// The newest checkpoint.
    pub checkpoint: PathBuf,
    /// The best checkpoint, when the settings keep one and an evaluation wrote it.
    pub best: Option<Best>,
    /// Steps taken in this session (0: a resumed run that had finished).
    pub session_steps: u64,
    /// Units per second of training in this session (0 when no step ran).
    pub rate: f64,
    /// Wall seconds of each step of this session (forward, backward and update; evaluations
    /// and checkpoints excluded).
    pub step_seconds: Vec<f64>,
    /// Seconds this rank spent combining gradients with the other ranks (0 for one process).
    pub comm_seconds: f64,
}

/// Trains `model` from `cur` to `s.total` steps.
pub fn run<M: Trainable>(
    task: &mut dyn Task<M>,
    model: &mut M,
    s: &Settings,
    cur: &mut Cursor,
    comm: &dyn Comm,
    con: &mut Console<'_>,
) -> Result<Ended, CliError> {
    let (ga, bpe, total) = (s.grad_accum, s.batches_per_epoch, s.total);
    if let Some(why) = dist::check_split(comm.size(), ga) {
        return Err(failed(why));
    }
    dist::check_same_start(comm, model.params()).map_err(failed)?;
    let lead = comm.leads();
    let mine = dist::share(comm.rank(), comm.size(), ga);
    let mut reducer = Reducer::default();
    // Per rank: (loss, units) of each of its micro-batches, then its Ctrl-C flag.
    let mut info = vec![0f64; 2 * mine.len() + 1];
    let mut all = vec![0f64; info.len() * comm.size()];
    if lead {
        s.curves.write(&cur.history)?;
    }
    task.start_epoch(cur.epoch);
    let mut progress = Progress::new(con.tty);
    let session_t0 = Instant::now();
    let (session_step0, session_seen0) = (cur.step, cur.seen);
    let mut session_train_s = 0f64;
    let mut step_seconds = Vec::new();
    let mut last_ckpt: Option<PathBuf> = None;
    let mut best = s.best_dir.as_deref().and_then(read_best);
    let diverged = |step: u64, what: String, last: &Option<PathBuf>| {
        failed(format!(
            "training diverged at step {step}: {what}; {}. {}",
            s.advice,
            match last {
                Some(p) => format!("The last good checkpoint is intact: {}", p.display()),
                None => "No checkpoint had been written yet.".to_string(),
            }
        ))
    };
    let rate = |seen: u64, secs: f64| (seen - session_seen0) as f64 / secs.max(1e-9);

    while cur.step < total {
        if cur.pos + ga > bpe {
            cur.epoch += 1;
            cur.pos = 0;
            task.start_epoch(cur.epoch);
        }
        let t0 = Instant::now();
        let step_no = cur.step + 1;
        // The step's gradient: this rank's micro-batches, summed with the other ranks' by the
        // fixed tree of `dist` (one process: the same tree).
        let (pos0, step0) = (cur.pos, cur.step);
        reducer.step(comm, ga, model, M::grads_mut, |micro, model| {
            let seed = dropout_seed(s.dropout_seed, step0, micro);
            let (loss, n) = task.micro_batch(model, pos0 + micro, seed, step_no)?;
            let i = 2 * (micro - mine.start);
            info[i] = loss as f64;
            info[i + 1] = n as f64;
            Ok::<(), CliError>(())
        })?;
        info[2 * mine.len()] = if signal::interrupted() { 1.0 } else { 0.0 };
        comm.all_gather(&info, &mut all);
        let (mut loss_sum, mut seen, mut interrupted) = (0f64, 0u64, false);
        for rank in all.chunks_exact(info.len()) {
            for mb in rank[..2 * mine.len()].chunks_exact(2) {
                let loss = mb[0] as f32;
                let limit = s.chance_loss.map_or(f32::INFINITY, |c| {
                    EXPLODE_FACTOR * cur.first_loss.unwrap_or(c).max(c)
                });
                if !loss.is_finite() || loss > limit {
                    return Err(diverged(step_no, format!("loss {loss}"), &last_ckpt));
                }
                loss_sum += mb[0];
                seen += mb[1] as u64;
            }
            interrupted |= rank[2 * mine.len()] != 0.0;
        }
        cur.pos += ga;
        let loss = (loss_sum / ga as f64) as f32;
        if ga > 1 {
            let scale = 1.0 / ga as f32;
            model.grads_mut().iter_mut().for_each(|g| *g *= scale);
        }
        let norm = match s.clip {
            Some(c) => clip_grad_norm(model.grads_mut(), c),
            None => grad_norm(model.grads_mut()),
        };
        if !norm.is_finite() {
            return Err(diverged(
                step_no,
                format!("gradient norm {norm}"),
                &last_ckpt,
            ));
        }
        let lr = s.lr.lr(cur.step);
        task.update(model, lr)
            .map_err(|e| failed(format!("step {step_no}: {e}")))?;
        let dt = t0.elapsed().as_secs_f64();
        cur.train_seconds += dt;
        session_train_s += dt;
        step_seconds.push(dt);
        cur.seen += seen;
        cur.first_loss.get_or_insert(loss);
        let done = cur.step; // 0-based index of the step just taken (the book's global_step)
        cur.step += 1;
        let session_steps = cur.step - session_step0;
        let per_s = rate(cur.seen, session_train_s);
        let eta =
            session_t0.elapsed().as_secs_f64() / session_steps as f64 * (total - cur.step) as f64;

        if lead && (done % s.eval_every == 0 || cur.step == total) {
            let (tl, vl) = task.evaluate(model, done)?;
            cur.history.push(LossRow {
                step: cur.step,
                epoch: cur.epoch + 1,
                tokens_seen: cur.seen,
                lr,
                train_loss: tl,
                val_loss: vl,
            });
            s.curves.write(&cur.history)?;
            if let Some(dir) = &s.best_dir
                && vl.is_finite()
                && best.is_none_or(|b| vl < b.val_loss)
            {
                task.save(model, cur, SaveTo::Best(dir))?;
                best = Some(Best {
                    val_loss: vl,
                    step: cur.step,
                });
            }
            progress.line(
                con.log,
                &format!(
                    "step {}/{total} | epoch {} | train loss {tl:.3} | val loss {vl:.3} | lr {lr:.2e} | {per_s:.0} {} | ETA {}",
                    cur.step,
                    cur.epoch + 1,
                    s.rate_unit,
                    fmt_duration(eta)
                ),
            );
        }
        let status = Status {
            step: cur.step,
            total,
            unit: "step",
            epoch: Some(cur.epoch + 1),
            loss: Some(loss),
            lr: Some(lr),
            rate: per_s,
            rate_unit: s.rate_unit,
            eta,
        };
        if lead {
            progress.update(con.log, &status, cur.step == total);
        }

        let epoch_end = cur.pos + ga > bpe;
        if epoch_end {
            if lead {
                task.end_epoch(model, cur.epoch, &mut progress, con)?;
            }
            cur.epoch += 1;
            cur.pos = 0;
            task.start_epoch(cur.epoch);
        }
        let periodic = s.checkpoint_every.is_some_and(|n| cur.step % n == 0);
        if lead
            && ((epoch_end && s.checkpoint_epochs) || periodic || cur.step == total || interrupted)
        {
            last_ckpt = Some(task.save(model, cur, SaveTo::Run)?);
        }
        if interrupted && cur.step < total {
            progress.finish(con.log);
            return Ok(Ended {
                interrupted: true,
                checkpoint: last_ckpt.unwrap_or_default(),
                best,
                session_steps,
                rate: rate(cur.seen, session_train_s),
                step_seconds,
                comm_seconds: reducer.comm_seconds,
            });
        }
    }
    progress.finish(con.log);

    // Nothing ran (a resumed run that had finished): evaluate and save once so the summary is
    // complete.
    if lead && cur.history.last().is_none_or(|r| r.step != cur.step) {
        let (tl, vl) = task.evaluate(model, cur.step)?;
        cur.history.push(LossRow {
            step: cur.step,
            epoch: cur.epoch.max(1),
            tokens_seen: cur.seen,
            lr: s.lr.lr(cur.step.saturating_sub(1)),
            train_loss: tl,
            val_loss: vl,
        });
        s.curves.write(&cur.history)?;
    }
    let checkpoint = match last_ckpt {
        Some(p) => p,
        None if lead => task.save(model, cur, SaveTo::Run)?,
        None => PathBuf::new(),
    };
    let session_steps = cur.step - session_step0;
    Ok(Ended {
        interrupted: false,
        checkpoint,
        best,
        session_steps,
        rate: if session_train_s > 0.0 {
            rate(cur.seen, session_train_s)
        } else {
            0.0
        },
        step_seconds,
        comm_seconds: reducer.comm_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::{Comm, Single};
    use crate::model::Init;
    use emberlm_formats::config::GptConfig;

    /// A task that trains nothing: scripted losses, and a record of what the loop asked for.
    #[derive(Default)]
    struct Script {
        /// The loss of every micro-batch, in order (the last repeats).
        losses: Vec<f32>,
        calls: usize,
        epochs_started: Vec<u64>,
        epochs_ended: Vec<u64>,
        evaluated_at: Vec<u64>,
        saved_at: Vec<u64>,
        best_at: Vec<u64>,
        seeds: Vec<u64>,
    }

    impl Task for Script {
        fn start_epoch(&mut self, epoch: u64) {
            self.epochs_started.push(epoch);
        }
        fn micro_batch(
            &mut self,
            _: &mut Gpt,
            _: usize,
            seed: u64,
            _: u64,
        ) -> Result<(f32, u64), CliError> {
            let l = self.losses[self.calls.min(self.losses.len() - 1)];
            self.calls += 1;
            self.seeds.push(seed);
            Ok((l, 10))
        }
        fn update(&mut self, _: &mut Gpt, _: f32) -> Result<(), String> {
            Ok(())
        }
        fn evaluate(&mut self, _: &mut Gpt, at: u64) -> Result<(f32, f32), CliError> {
            self.evaluated_at.push(at);
            // The validation loss falls until step index 4, then rises.
            Ok((1.0, (at as f32 - 4.0).abs()))
        }
        fn end_epoch(
            &mut self,
            _: &mut Gpt,
            epoch: u64,
            _: &mut Progress,
            _: &mut Console<'_>,
        ) -> Result<(), CliError> {
            self.epochs_ended.push(epoch);
            Ok(())
        }
        fn save(&mut self, _: &Gpt, cur: &Cursor, to: SaveTo<'_>) -> Result<PathBuf, CliError> {
            match to {
                SaveTo::Run => self.saved_at.push(cur.step),
                SaveTo::Best(_) => self.best_at.push(cur.step),
            }
            Ok(PathBuf::from(format!("step-{}", cur.step)))
        }
    }

    fn settings(dir: &Path, total: u64) -> Settings {
        Settings {
            total,
            batches_per_epoch: 6,
            grad_accum: 2,
            clip: None,
            lr: LrSchedule {
                initial_lr: 1e-3,
                peak_lr: 1e-3,
                min_lr: 1e-3,
                warmup_steps: 0,
                total_steps: total,
            },
            dropout_seed: 5,
            eval_every: 3,
            checkpoint_every: Some(4),
            checkpoint_epochs: true,
            best_dir: Some(dir.join("best")),
            chance_loss: Some(2.0),
            advice: "lower --lr".into(),
            rate_unit: "tok/s",
            curves: Curves::in_dir(dir, "t".into(), "tokens seen"),
        }
    }

    fn model() -> Gpt {
        let cfg = GptConfig {
            vocab_size: 16,
            context_length: 4,
            dim: 8,
            n_layers: 1,
            n_heads: 2,
            qkv_bias: false,
            tied_head: false,
        };
        Gpt::new(cfg, Init::TorchDefault, 1).unwrap()
    }

    #[test]
    fn one_rule_for_evaluation_epochs_and_checkpoints() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, mut out) = (Vec::new(), Vec::new());
        let mut con = Console {
            log: &mut log,
            out: &mut out,
            tty: false,
        };
        let mut task = Script {
            losses: vec![1.0],
            ..Script::default()
        };
        let mut cur = Cursor::default();
        let s = settings(tmp.path(), 10);
        let ended = run(&mut task, &mut model(), &s, &mut cur, &Single, &mut con).unwrap();
        assert!(!ended.interrupted);
        // 6 micro-batches of 2 per step: 3 steps per epoch.
        assert_eq!(task.epochs_started, [0, 1, 2, 3]);
        assert_eq!(task.epochs_ended, [0, 1, 2]);
        // done % 3 == 0 (0-based step index), and the last step.
        assert_eq!(task.evaluated_at, [0, 3, 6, 9]);
        let steps: Vec<u64> = cur.history.iter().map(|r| r.step).collect();
        assert_eq!(steps, [1, 4, 7, 10]);
        // Epoch ends (3, 6, 9), every 4 steps (4, 8) and the end (10).
        assert_eq!(task.saved_at, [3, 4, 6, 8, 9, 10]);
        assert_eq!(ended.checkpoint, PathBuf::from("step-10"));
        // The best checkpoint follows the validation loss down, not up.
        assert_eq!(task.best_at, [1, 4]);
        assert_eq!(ended.best.map(|b| b.step), Some(4));
        assert_eq!((cur.step, cur.seen, ended.session_steps), (10, 200, 10));
        // Micro-batch k of step s: dropout_seed(run seed, s, k).
        assert_eq!(task.seeds[3], dropout_seed(5, 1, 1));
        let csv = std::fs::read_to_string(tmp.path().join("loss.csv")).unwrap();
        assert_eq!(csv.lines().count(), 5, "{csv}");
    }

    #[test]
    fn a_loss_spike_is_divergence_naming_the_last_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, mut out) = (Vec::new(), Vec::new());
        let mut con = Console {
            log: &mut log,
            out: &mut out,
            tty: false,
        };
        // First loss 3 (limit 9), then fine until the 11th micro-batch (step 6).
        let mut losses = vec![3.0; 10];
        losses.push(9.5);
        let mut task = Script {
            losses,
            ..Script::default()
        };
        let s = settings(tmp.path(), 10);
        let e = run(
            &mut task,
            &mut model(),
            &s,
            &mut Cursor::default(),
            &Single,
            &mut con,
        )
        .unwrap_err();
        let CliError::Failed(m) = e else {
            panic!("{e:?}")
        };
        assert!(
            m.starts_with("training diverged at step 6: loss 9.5; lower --lr."),
            "{m}"
        );
        assert!(
            m.ends_with("The last good checkpoint is intact: step-4"),
            "{m}"
        );
        // Without a chance loss only a non-finite loss is divergence.
        let mut task = Script {
            losses: vec![3.0, 90.0, 3.0, f32::NAN],
            ..Script::default()
        };
        let s = Settings {
            chance_loss: None,
            ..settings(tmp.path(), 10)
        };
        let e = run(
            &mut task,
            &mut model(),
            &s,
            &mut Cursor::default(),
            &Single,
            &mut con,
        )
        .unwrap_err();
        assert!(
            matches!(&e, CliError::Failed(m) if m.contains("step 2: loss NaN") && m.contains("No checkpoint")),
            "{e:?}"
        );
    }

    #[test]
    fn dropout_seeds_differ_per_step_and_micro_batch() {
        let mut seen = std::collections::HashSet::new();
        for step in 0..50 {
            for micro in 0..4 {
                assert!(seen.insert(dropout_seed(7, step, micro)));
            }
        }
        assert_ne!(dropout_seed(7, 0, 0), dropout_seed(8, 0, 0));
    }

    /// Real training: micro-batch `pos` is fixed token windows made from `pos`, dropout on,
    /// AdamW updates.
    struct Real {
        opt: crate::adamw::AdamW,
    }

    impl Task for Real {
        fn start_epoch(&mut self, _: u64) {}
        fn micro_batch(
            &mut self,
            model: &mut Gpt,
            pos: usize,
            seed: u64,
            _: u64,
        ) -> Result<(f32, u64), CliError> {
            let x: Vec<u32> = (0..8).map(|i| ((pos * 5 + i * 3) % 16) as u32).collect();
            let y: Vec<i32> = x.iter().map(|&t| ((t + 1) % 16) as i32).collect();
            let loss = model
                .forward(&x, Some(&y), 2, 4, crate::model::Mode::Train { seed })
                .unwrap()
                .unwrap();
            model.backward().unwrap();
            Ok((loss, 8))
        }
        fn update(&mut self, model: &mut Gpt, lr: f32) -> Result<(), String> {
            let (p, g) = model.params_and_grads();
            self.opt.step(p, g, lr).map_err(|e| e.to_string())
        }
        fn evaluate(&mut self, _: &mut Gpt, _: u64) -> Result<(f32, f32), CliError> {
            Ok((1.0, 1.0))
        }
        fn end_epoch(
            &mut self,
            _: &mut Gpt,
            _: u64,
            _: &mut Progress,
            _: &mut Console<'_>,
        ) -> Result<(), CliError> {
            Ok(())
        }
        fn save(&mut self, _: &Gpt, cur: &Cursor, _: SaveTo<'_>) -> Result<PathBuf, CliError> {
            Ok(PathBuf::from(format!("step-{}", cur.step)))
        }
    }

    /// Trains 6 steps of `ga` micro-batches on `comm`; the final weights.
    fn train_on(comm: &dyn Comm, ga: usize, dir: &Path) -> Vec<f32> {
        let mut m = model();
        m.dropout = crate::model::DropoutRates::uniform(0.1);
        let mut task = Real {
            opt: crate::adamw::AdamW::new(
                crate::adamw::AdamWConfig::default(),
                m.decay_mask(crate::adamw::DecayPolicy::All),
            ),
        };
        let mut s = settings(dir, 6);
        s.grad_accum = ga;
        s.batches_per_epoch = 12;
        s.chance_loss = None;
        let (mut log, mut out) = (std::io::sink(), std::io::sink());
        let mut con = Console {
            log: &mut log,
            out: &mut out,
            tty: false,
        };
        run(
            &mut task,
            &mut m,
            &s,
            &mut Cursor::default(),
            comm,
            &mut con,
        )
        .unwrap();
        m.params().to_vec()
    }

    /// Fails if a rank computed another micro-batch, another dropout mask, or summed in
    /// another order than one process (a mutation of the micro-batch's seed index fails it).
    #[test]
    fn ranks_train_the_same_weights_as_one_process_bit_for_bit() {
        for (ranks, ga) in [(2, 2), (2, 4), (4, 4)] {
            let tmp = tempfile::tempdir().unwrap();
            let one = train_on(&Single, ga, tmp.path());
            let group = crate::dist::threads::group(ranks);
            let dirs: Vec<_> = (0..ranks).map(|_| tempfile::tempdir().unwrap()).collect();
            let all: Vec<Vec<f32>> = std::thread::scope(|sc| {
                let hs: Vec<_> = group
                    .iter()
                    .zip(&dirs)
                    .map(|(c, d)| sc.spawn(move || train_on(c, ga, d.path())))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for (r, w) in all.iter().enumerate() {
                assert_eq!(bits(w), bits(&one), "{ranks} ranks, ga {ga}: rank {r}");
            }
            // Only rank 0 wrote the curves.
            assert!(dirs[0].path().join("loss.csv").exists());
            assert!(!dirs[1].path().join("loss.csv").exists());
        }
    }

    #[test]
    fn ranks_that_cannot_share_the_micro_batches_are_refused() {
        let group = crate::dist::threads::group(2);
        let tmp = tempfile::tempdir().unwrap();
        let mut task = Script {
            losses: vec![1.0],
            ..Script::default()
        };
        let mut s = settings(tmp.path(), 2);
        s.grad_accum = 3;
        let (mut log, mut out) = (std::io::sink(), std::io::sink());
        let mut con = Console {
            log: &mut log,
            out: &mut out,
            tty: false,
        };
        let e = run(
            &mut task,
            &mut model(),
            &s,
            &mut Cursor::default(),
            &group[0],
            &mut con,
        )
        .unwrap_err();
        assert!(e.to_string().contains("power of two"), "{e}");
    }
}
