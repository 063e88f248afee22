//! The loss curve: `loss.csv` (one row per evaluation) and `loss.svg` (train and validation
//! loss against the step, with tokens seen on a second x axis and the epoch boundaries marked,
//! as the book's `plot_losses`; hand-written SVG with axes, ticks, labels and a legend); and the
//! classifier's `accuracy.svg` (accuracy per epoch on every split, the book's chapter 6).

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
const H: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 60.0;
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

/// The title every loss plot uses: `Loss — <run kind> (<model>)`, e.g. `Loss — pretraining
/// (4 layers, dim 128, 0.96M parameters)`.
pub fn title(kind: &str, model: &str) -> String {
    format!("Loss — {kind} ({model})")
}

/// The model part of a title: layers, width and size.
pub fn model_name(cfg: &emberlm_formats::config::GptConfig) -> String {
    format!(
        "{} layer{}, dim {}, {:.2}M parameters",
        cfg.n_layers,
        if cfg.n_layers == 1 { "" } else { "s" },
        cfg.dim,
        cfg.param_count() as f64 / 1e6
    )
}

/// One curve.
struct Series {
    label: &'static str,
    color: &'static str,
    points: Vec<(f64, f64)>,
}

/// A line chart: curves over x, an optional second x axis on top (`top`: (x, value) pairs,
/// increasing, e.g. tokens seen at each step, as the book's `twiny`), and vertical marks (epoch
/// boundaries). The y range comes from the data with a margin, clamped to `y_clamp`.
struct Chart<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    series: Vec<Series>,
    top: Option<(&'a str, Vec<(f64, f64)>)>,
    marks: Vec<(f64, String)>,
    y_clamp: (f64, f64),
}

const COLORS: [&str; 3] = ["#1f77b4", "#ff7f0e", "#2ca02c"];

/// The SVG picture of the rows: x = step (tokens seen on the top axis, epoch boundaries marked),
/// y = loss; train in blue, validation in orange. Non-finite losses are left out. With no rows,
/// an empty frame with the labels.
pub fn to_svg(rows: &[LossRow], title: &str) -> String {
    to_svg_seen(rows, title, "tokens seen")
}

/// [`to_svg`] with the top axis named `seen` (the classifier counts examples, not tokens, in
/// [`LossRow::tokens_seen`]).
pub fn to_svg_seen(rows: &[LossRow], title: &str, seen: &str) -> String {
    let pts = |f: fn(&LossRow) -> f32| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| f(r).is_finite())
            .map(|r| (r.step as f64, f(r) as f64))
            .collect()
    };
    let top: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| (r.step as f64, r.tokens_seen as f64))
        .collect();
    let marks = rows
        .windows(2)
        .filter(|w| w[1].epoch > w[0].epoch)
        .map(|w| (w[0].step as f64, format!("epoch {}", w[1].epoch)))
        .collect();
    render(&Chart {
        title,
        x_label: "optimizer step",
        y_label: "loss (cross-entropy, nats)",
        series: vec![
            Series {
                label: "training loss",
                color: COLORS[0],
                points: pts(|r| r.train_loss),
            },
            Series {
                label: "validation loss",
                color: COLORS[1],
                points: pts(|r| r.val_loss),
            },
        ],
        top: Some((seen, top)),
        marks,
        y_clamp: (f64::MIN, f64::MAX),
    })
}

/// The classifier's accuracy per epoch (the book's chapter 6 plot): `rows` are (epoch, train,
/// validation, test accuracy as fractions); y in percent.
pub fn accuracy_svg(rows: &[(u64, [f64; 3])], title: &str) -> String {
    let series = ["training accuracy", "validation accuracy", "test accuracy"]
        .into_iter()
        .enumerate()
        .map(|(k, label)| Series {
            label,
            color: COLORS[k],
            points: rows
                .iter()
                .filter(|r| r.1[k].is_finite())
                .map(|r| (r.0 as f64, 100.0 * r.1[k]))
                .collect(),
        })
        .collect();
    render(&Chart {
        title,
        x_label: "epoch",
        y_label: "accuracy (%)",
        series,
        top: None,
        marks: Vec::new(),
        y_clamp: (0.0, 100.0),
    })
}

/// The x position of `v` on the top axis: linear interpolation over the (x, value) pairs.
fn top_to_x(map: &[(f64, f64)], v: f64) -> Option<f64> {
    map.windows(2).find_map(|w| {
        let ((xa, va), (xb, vb)) = (w[0], w[1]);
        (va <= v && v <= vb && vb > va).then(|| xa + (v - va) / (vb - va) * (xb - xa))
    })
}

fn render(c: &Chart<'_>) -> String {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in c.series.iter().flat_map(|s| &s.points) {
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
    // The y range from the data with a 5% margin (a curve from 10.8 to 9.8 fills the plot).
    let margin = ((y1 - y0) * 0.05).max(1e-3);
    (y0, y1) = (
        (y0 - margin).max(c.y_clamp.0),
        (y1 + margin).min(c.y_clamp.1),
    );
    let ys = tick_step(y1 - y0);
    (y0, y1) = ((y0 / ys).floor() * ys, (y1 / ys).ceil() * ys);
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
        r#"<text x="{}" y="18" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        escape(c.title)
    );
    // Grid and ticks.
    let mut y = y0;
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
    // The second x axis on top (tokens or examples seen), ticks placed by interpolation.
    if let Some((label, map)) = &c.top {
        let (v0, v1) = (
            map.first().map_or(0.0, |p| p.1),
            map.last().map_or(0.0, |p| p.1),
        );
        if v1 > v0 && map.len() >= 2 {
            let vs = tick_step(v1 - v0);
            let mut v = (v0 / vs).ceil() * vs;
            while v <= v1 + vs * 1e-9 {
                if let Some(h) = top_to_x(map, v).map(px) {
                    let _ = writeln!(
                        s,
                        "<line x1=\"{h:.1}\" y1=\"{TOP}\" x2=\"{h:.1}\" y2=\"{:.1}\" stroke=\"#333\"/>\
                         <text x=\"{h:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
                        TOP - 4.0,
                        TOP - 7.0,
                        fmt_count(v)
                    );
                }
                v += vs;
            }
            let _ = writeln!(
                s,
                "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{:.1}\" y2=\"{TOP}\" stroke=\"#333\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"10\">{}</text>",
                LEFT + pw,
                LEFT - 6.0,
                TOP - 7.0,
                escape(label)
            );
        }
    }
    // Epoch boundaries.
    for (x, label) in &c.marks {
        let h = px(*x);
        let _ = writeln!(
            s,
            "<line x1=\"{h:.1}\" y1=\"{TOP}\" x2=\"{h:.1}\" y2=\"{:.1}\" stroke=\"#999\" stroke-dasharray=\"4 4\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#666\">{}</text>",
            TOP + ph,
            h + 3.0,
            TOP + ph - 4.0,
            escape(label)
        );
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
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        H - 12.0,
        escape(c.x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        escape(c.y_label)
    );
    // Curves.
    for sr in c.series.iter().filter(|s| !s.points.is_empty()) {
        let path: Vec<String> = sr
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            sr.color,
            path.join(" ")
        );
    }
    // Legend: top right, or bottom right when a curve passes where it would sit (rising curves,
    // such as accuracy).
    let lx = LEFT + pw - 170.0;
    let rows = c.series.len() as f64;
    let covers = |top: f64| {
        c.series.iter().flat_map(|sr| &sr.points).any(|&(x, y)| {
            let (h, v) = (px(x), py(y));
            h >= lx - 4.0 && v >= top - 8.0 && v <= top + 18.0 * rows
        })
    };
    let bottom = TOP + ph - 18.0 * rows;
    let first = if covers(TOP + 14.0) && !covers(bottom) {
        bottom
    } else {
        TOP + 14.0
    };
    for (i, sr) in c.series.iter().enumerate() {
        let ly = first + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 24.0,
            sr.color,
            lx + 30.0,
            ly + 4.0,
            sr.label
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A count for a tick: `512`, `12k`, `1.5M`.
fn fmt_count(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        format!("{v:.0}")
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
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

    /// The y values of the grid labels (the `text-anchor="end"` texts).
    fn y_ticks(svg: &str) -> Vec<f64> {
        svg.split("text-anchor=\"end\">")
            .skip(1)
            .filter_map(|t| t.split('<').next()?.parse().ok())
            .collect()
    }

    #[test]
    fn the_y_range_comes_from_the_data() {
        // The instruct curve of the issue: 10.8 → 9.8 must not look flat against a 0-based axis.
        let rows = [row(0, 10.8, 10.8), row(5, 10.3, 10.4), row(10, 9.8, 9.9)];
        let ticks = y_ticks(&to_svg(&rows, "t"));
        let (lo, hi) = (ticks[0], *ticks.last().unwrap());
        assert!(
            (9.0..9.8).contains(&lo) && (10.8..11.5).contains(&hi),
            "{ticks:?}"
        );
        // A curve that crosses zero keeps its negative part (no clamp for losses).
        let ticks = y_ticks(&to_svg(&[row(0, 1.0, 1.0), row(1, -1.0, -1.0)], "t"));
        assert!(ticks[0] < -1.0, "{ticks:?}");
    }

    #[test]
    fn tokens_seen_on_top_and_epochs_marked() {
        let mut rows = [row(1, 10.0, 10.1), row(6, 6.0, 7.0), row(11, 3.0, 6.5)];
        rows[2].epoch = 2;
        let svg = to_svg(&rows, "t");
        assert!(svg.contains(">tokens seen<"), "{svg}");
        // 512 .. 5632 tokens: ticks at thousands ("1k" .. "5k").
        assert!(svg.contains(">1k<") && svg.contains(">5k<"), "{svg}");
        assert_eq!(svg.matches(">epoch 2<").count(), 1);
        assert!(!svg.contains(">epoch 1<"));
        assert!(to_svg_seen(&rows, "t", "examples seen").contains(">examples seen<"));
    }

    #[test]
    fn accuracy_has_a_curve_per_split_in_percent() {
        let svg = accuracy_svg(&[(1, [0.5, 0.6, 0.55]), (2, [0.9, 0.95, 0.97])], "acc");
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("accuracy (%)") && svg.contains("test accuracy"));
        let ticks = y_ticks(&svg);
        assert!(
            *ticks.last().unwrap() <= 100.0 && ticks[0] >= 40.0,
            "{ticks:?}"
        );
    }

    /// The y of the first legend entry's line (the `stroke-width="3"` line).
    fn legend_y(svg: &str) -> f64 {
        let at = svg.find(r#"stroke-width="3""#).unwrap();
        let line = &svg[svg[..at].rfind("<line").unwrap()..at];
        let y1 = line.split("y1=\"").nth(1).unwrap();
        y1[..y1.find('"').unwrap()].parse().unwrap()
    }

    #[test]
    fn the_legend_moves_off_a_rising_curve() {
        // Falling losses leave the top right free; rising accuracies fill it.
        let falling = to_svg(&[row(1, 10.0, 10.5), row(50, 2.0, 3.0)], "t");
        assert!(legend_y(&falling) < TOP + 40.0, "{}", legend_y(&falling));
        let rising = accuracy_svg(&[(1, [0.5, 0.6, 0.55]), (5, [0.9, 0.95, 0.97])], "acc");
        assert!(legend_y(&rising) > H / 2.0, "{}", legend_y(&rising));
    }

    #[test]
    fn one_title_rule() {
        assert_eq!(title("pretraining", "x"), "Loss — pretraining (x)");
    }

    #[test]
    fn tick_steps_are_nice() {
        assert_eq!(tick_step(10.0), 2.0);
        assert_eq!(tick_step(100.0), 20.0);
        assert_eq!(tick_step(3.0), 0.5);
        assert_eq!(tick_step(0.0), 1.0);
    }
}
