//! The progress display every long command shares (`pretrain`, `finetune classify|instruct`,
//! `eval`), on the console's log: a `\r`-redrawn bar (done/total, epoch, loss, lr, rate, ETA)
//! when the log is a terminal; otherwise a plain status line after the first step and then at
//! most every [`PLAIN_EVERY`] when nothing else was printed (a long job in a log file or CI is
//! never silent for minutes). Whole lines (evaluations, samples, notes) go through
//! [`Progress::line`] so that they never break the bar.

use super::fmt_duration;
use std::io::Write;
use std::time::{Duration, Instant};

/// Minimum time between two redraws of the bar.
const REDRAW: Duration = Duration::from_millis(120);
/// Without a terminal: a status line when nothing was printed for this long.
pub const PLAIN_EVERY: Duration = Duration::from_secs(30);

/// The state of the display.
#[derive(Debug)]
pub struct Progress {
    tty: bool,
    last: Option<Instant>,
    drawn: bool,
    /// When the last whole line was printed (plain mode); `None` before the first.
    last_line: Option<Instant>,
}

/// What the bar shows. `epoch`, `loss` and `lr` are left out when `None`.
#[derive(Clone, Copy, Debug)]
pub struct Status {
    /// Units done (steps, or windows for `eval`).
    pub step: u64,
    /// Total units.
    pub total: u64,
    /// What a unit is: `step`, `window`.
    pub unit: &'static str,
    /// Epoch (from 1).
    pub epoch: Option<u64>,
    /// Loss of the last step (or the running mean).
    pub loss: Option<f32>,
    /// Learning rate of the last step.
    pub lr: Option<f32>,
    /// Throughput, in `rate_unit`.
    pub rate: f64,
    /// `tok/s`, `examples/s`.
    pub rate_unit: &'static str,
    /// Seconds left (estimate).
    pub eta: f64,
}

impl Status {
    /// The seconds left when `done` of `total` units took `elapsed` seconds (from the first
    /// unit on: a linear extrapolation).
    pub fn eta(elapsed: f64, done: u64, total: u64) -> f64 {
        if done == 0 {
            return f64::NAN;
        }
        elapsed / done as f64 * total.saturating_sub(done) as f64
    }

    fn text(&self) -> String {
        let mut s = format!("{} {}/{}", self.unit, self.step, self.total);
        if let Some(e) = self.epoch {
            s.push_str(&format!(" | epoch {e}"));
        }
        if let Some(l) = self.loss {
            s.push_str(&format!(" | loss {l:.3}"));
        }
        if let Some(lr) = self.lr {
            s.push_str(&format!(" | lr {lr:.2e}"));
        }
        // A 124M model fine-tunes at a few examples per second: keep a digit there.
        let digits = usize::from(self.rate < 10.0);
        s.push_str(&format!(
            " | {:.digits$} {} | ETA {}",
            self.rate,
            self.rate_unit,
            fmt_duration(self.eta)
        ));
        s
    }
}

impl Progress {
    /// A bar on a terminal (`tty`) or plain lines.
    pub fn new(tty: bool) -> Progress {
        Progress {
            tty,
            last: None,
            drawn: false,
            last_line: None,
        }
    }

    /// Redraws the bar (terminal: at most every [`REDRAW`] unless `force`); without a terminal,
    /// prints the status as a line after the first update and when nothing was printed for
    /// [`PLAIN_EVERY`].
    pub fn update(&mut self, log: &mut dyn Write, s: &Status, force: bool) {
        let now = Instant::now();
        if !self.tty {
            if self.last_line.is_none_or(|t| now - t >= PLAIN_EVERY) {
                self.line(log, &s.text());
            }
            return;
        }
        if !force && self.last.is_some_and(|t| now - t < REDRAW) {
            return;
        }
        self.last = Some(now);
        const WIDTH: usize = 24;
        let filled = (WIDTH as u64 * s.step.min(s.total))
            .checked_div(s.total)
            .map_or(WIDTH, |f| f as usize);
        let bar: String = "#".repeat(filled) + &"-".repeat(WIDTH - filled);
        let _ = write!(log, "\r\x1b[2K[{bar}] {}", s.text());
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
        self.last_line = Some(Instant::now());
    }

    /// Clears the bar (before the caller writes elsewhere, e.g. a summary line on stdout); the
    /// next update redraws it.
    pub fn clear(&mut self, log: &mut dyn Write) {
        if self.drawn {
            let _ = write!(log, "\r\x1b[2K");
            let _ = log.flush();
            self.drawn = false;
            self.last = None;
        }
    }

    /// Ends the bar's line.
    pub fn finish(&mut self, log: &mut dyn Write) {
        if self.drawn {
            let _ = writeln!(log);
            self.drawn = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Status {
        Status {
            step: 3,
            total: 10,
            unit: "step",
            epoch: Some(1),
            loss: Some(2.5),
            lr: None,
            rate: 12.0,
            rate_unit: "examples/s",
            eta: 70.0,
        }
    }

    #[test]
    fn plain_mode_prints_the_first_status_then_waits() {
        let mut p = Progress::new(false);
        let mut out = Vec::new();
        p.update(&mut out, &status(), false);
        p.update(&mut out, &status(), false);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "step 3/10 | epoch 1 | loss 2.500 | 12 examples/s | ETA 1m10s\n"
        );
    }

    #[test]
    fn a_terminal_gets_a_bar_with_the_eta() {
        let mut p = Progress::new(true);
        let mut out = Vec::new();
        p.update(&mut out, &status(), true);
        p.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("\r\x1b[2K[#######-----"), "{text:?}");
        assert!(text.ends_with("ETA 1m10s\n"), "{text:?}");
    }

    #[test]
    fn slow_rates_keep_a_decimal() {
        let mut s = status();
        s.rate = 2.34;
        assert!(s.text().contains("| 2.3 examples/s |"), "{}", s.text());
    }

    #[test]
    fn eta_extrapolates_from_the_first_unit() {
        assert_eq!(Status::eta(2.0, 1, 11), 20.0);
        assert!(Status::eta(2.0, 0, 11).is_nan());
        assert_eq!(Status::eta(2.0, 11, 11), 0.0);
    }
}
