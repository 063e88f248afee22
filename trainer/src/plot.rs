//! The loss curve: `loss.csv` (one row per evaluation) and `loss.svg` (train and validation
//! loss against the step, hand-written SVG with axes, ticks, labels and a legend).

use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// One evaluation (the book's `evaluate_model` output plus where training was).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossRow {
    /// Optimizer steps done when the evaluation ran.
    pub step: u64,
    /// Epoch (from 1) the step belonged to.
    pub epoch: u64,
    /// Training tokens consumed so far.
    pub tokens_seen: u64,
    /// Learning rate of the step.
    pub lr: f32,
    /// Mean loss on the evaluated training batches (dropout off).
    pub train_loss: f32,
    /// Mean loss on the evaluated validation batches.
    pub val_loss: f32,
}

/// The CSV header line.
pub const CSV_HEADER: &str = "step,epoch,tokens_seen,lr,train_loss,val_loss";

/// The rows as CSV. Floats are written in Rust's shortest round-trip form, so a value read back
/// is bit-identical.
pub fn to_csv(rows: &[LossRow]) -> String {
    let mut s = String::with_capacity(64 * (rows.len() + 1));
    s.push_str(CSV_HEADER);
    s.push('\n');
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{}",
            r.step, r.epoch, r.tokens_seen, r.lr, r.train_loss, r.val_loss
        );
    }
    s
}

/// Picture size and margins (pixels).
const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 55.0;

/// About this many ticks per axis.
const TICKS: f64 = 6.0;

/// A "nice" tick spacing (1, 2 or 5 × 10^k) for a range.
fn tick_step(range: f64) -> f64 {
    if !(range.is_finite() && range > 0.0) {
        return 1.0;
    }
    let raw = range / TICKS;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f < 1.5 {
        1.0
    } else if f < 3.5 {
        2.0
    } else if f < 7.5 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn fmt_tick(v: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{v:.0}")
    } else {
        let digits = (-step.log10().floor()) as usize;
        format!("{v:.digits$}")
    }
}

/// The SVG picture of the rows: x = step, y = loss; train in blue, validation in orange.
/// Non-finite losses are left out. With no rows, an empty frame with the labels.
pub fn to_svg(rows: &[LossRow], title: &str) -> String {
    let pts = |f: fn(&LossRow) -> f32| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| f(r).is_finite())
            .map(|r| (r.step as f64, f(r) as f64))
            .collect()
    };
    let train = pts(|r| r.train_loss);
    let val = pts(|r| r.val_loss);
    let all = train.iter().chain(&val);
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1.0 {
        x1 = x0 + 1.0;
    }
    y0 = y0.min(0.0).floor();
    if y1 - y0 < 1e-6 {
        y1 = y0 + 1.0;
    }
    let ys = tick_step(y1 - y0);
    y1 = (y1 / ys).ceil() * ys;
    let xs = tick_step(x1 - x0).max(1.0);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let py = |y: f64| TOP + (1.0 - (y - y0) / (y1 - y0)) * ph;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    // Grid and ticks.
    let mut y = (y0 / ys).ceil() * ys;
    while y <= y1 + ys * 1e-9 {
        let v = py(y);
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{v:.1}\" x2=\"{:.1}\" y2=\"{v:.1}\" stroke=\"#e5e5e5\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + pw,
            LEFT - 6.0,
            v + 4.0,
            fmt_tick(y, ys)
        );
        y += ys;
    }
    let mut x = (x0 / xs).ceil() * xs;
    while x <= x1 + xs * 1e-9 {
        let h = px(x);
        let _ = writeln!(
            s,
            "<line x1=\"{h:.1}\" y1=\"{:.1}\" x2=\"{h:.1}\" y2=\"{:.1}\" stroke=\"#333\"/>\
             <text x=\"{h:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            TOP + ph,
            TOP + ph + 5.0,
            TOP + ph + 19.0,
            fmt_tick(x, xs)
        );
        x += xs;
    }
    // Axes and their labels.
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{:.1}\" stroke=\"#333\"/>\
         <line x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#333\"/>",
        TOP + ph,
        TOP + ph,
        LEFT + pw,
        TOP + ph
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">optimizer step</text>"#,
        LEFT + pw / 2.0,
        H - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">loss (cross-entropy, nats)</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    // Curves.
    for (points, color) in [(&train, "#1f77b4"), (&val, "#ff7f0e")] {
        if points.is_empty() {
            continue;
        }
        let path: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
    }
    // Legend.
    let lx = LEFT + pw - 150.0;
    for (i, (label, color)) in [("training loss", "#1f77b4"), ("validation loss", "#ff7f0e")]
        .iter()
        .enumerate()
    {
        let ly = TOP + 12.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{label}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: u64, train: f32, val: f32) -> LossRow {
        LossRow {
            step,
            epoch: 1,
            tokens_seen: step * 512,
            lr: 4e-4,
            train_loss: train,
            val_loss: val,
        }
    }

    #[test]
    fn csv_has_the_contract_columns_and_exact_floats() {
        let rows = [row(1, 9.781_234, 9.933), row(6, 0.1 + 0.2, f32::NAN)];
        let csv = to_csv(&rows);
        let mut lines = csv.lines();
        assert_eq!(
            lines.next(),
            Some("step,epoch,tokens_seen,lr,train_loss,val_loss")
        );
        let first: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(first[0], "1");
        assert_eq!(first[2], "512");
        assert_eq!(first[4].parse::<f32>().unwrap(), 9.781_234);
        let second: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(second[4].parse::<f32>().unwrap(), 0.1f32 + 0.2f32);
        assert_eq!(second[5], "NaN");
    }

    #[test]
    fn svg_has_both_curves_axes_and_labels() {
        let rows = [row(1, 10.0, 10.1), row(6, 6.0, 7.0), row(11, 3.0, 6.5)];
        let svg = to_svg(&rows, "a <title>");
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("optimizer step"));
        assert!(svg.contains("training loss") && svg.contains("validation loss"));
        assert!(svg.contains("a &lt;title&gt;"));
        // Three points per curve; the first train point sits left of the last one.
        let train = svg.split("points=\"").nth(1).unwrap();
        let pts: Vec<&str> = train.split('"').next().unwrap().split(' ').collect();
        assert_eq!(pts.len(), 3);
        let x = |p: &str| p.split(',').next().unwrap().parse::<f64>().unwrap();
        assert!(x(pts[0]) < x(pts[2]));
        assert_eq!(to_svg(&[], "empty").matches("<polyline").count(), 0);
    }

    #[test]
    fn tick_steps_are_nice() {
        assert_eq!(tick_step(10.0), 2.0);
        assert_eq!(tick_step(100.0), 20.0);
        assert_eq!(tick_step(3.0), 0.5);
        assert_eq!(tick_step(0.0), 1.0);
    }
}
