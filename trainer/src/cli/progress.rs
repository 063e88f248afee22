//! The progress display on the console's log: a `\r`-redrawn bar (step/total, epoch, loss, lr,
//! tokens/s, ETA) when the log is a terminal; otherwise nothing per step and one plain line per
//! evaluation (which the caller writes with [`Progress::line`]).

use super::fmt_duration;
use std::io::Write;
use std::time::{Duration, Instant};

/// Minimum time between two redraws of the bar.
const REDRAW: Duration = Duration::from_millis(120);

/// The state of the bar.
#[derive(Debug)]
pub struct Progress {
    tty: bool,
    last: Option<Instant>,
    drawn: bool,
}

/// What the bar shows.
#[derive(Clone, Copy, Debug)]
pub struct Status {
    /// Steps done.
    pub step: u64,
    /// Total steps.
    pub total: u64,
    /// Epoch (from 1).
    pub epoch: u64,
    /// Loss of the last step.
    pub loss: f32,
    /// Learning rate of the last step.
    pub lr: f32,
    /// Training tokens per second.
    pub tokens_per_s: f64,
    /// Seconds left (estimate).
    pub eta: f64,
}

impl Progress {
    /// A bar on a terminal (`tty`) or plain lines.
    pub fn new(tty: bool) -> Progress {
        Progress {
            tty,
            last: None,
            drawn: false,
        }
    }

    /// Redraws the bar (terminal only; at most every [`REDRAW`] unless `force`).
    pub fn update(&mut self, log: &mut dyn Write, s: &Status, force: bool) {
        if !self.tty {
            return;
        }
        let now = Instant::now();
        if !force && self.last.is_some_and(|t| now - t < REDRAW) {
            return;
        }
        self.last = Some(now);
        const WIDTH: usize = 24;
        let filled = (WIDTH as u64 * s.step.min(s.total))
            .checked_div(s.total)
            .map_or(WIDTH, |f| f as usize);
        let bar: String = "#".repeat(filled) + &"-".repeat(WIDTH - filled);
        let _ = write!(
            log,
            "\r\x1b[2K[{bar}] step {}/{} | epoch {} | loss {:.3} | lr {:.2e} | {:.0} tok/s | ETA {}",
            s.step,
            s.total,
            s.epoch,
            s.loss,
            s.lr,
            s.tokens_per_s,
            fmt_duration(s.eta)
        );
        let _ = log.flush();
        self.drawn = true;
    }

    /// Prints a whole line (an evaluation, a sample, a note) without breaking the bar.
    pub fn line(&mut self, log: &mut dyn Write, text: &str) {
        if self.drawn {
            let _ = write!(log, "\r\x1b[2K");
            self.drawn = false;
            self.last = None;
        }
        let _ = writeln!(log, "{text}");
    }

    /// Ends the bar's line.
    pub fn finish(&mut self, log: &mut dyn Write) {
        if self.drawn {
            let _ = writeln!(log);
            self.drawn = false;
        }
    }
}
