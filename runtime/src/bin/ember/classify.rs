//! `ember classify`: labels from a classifier model.

use super::*;

#[derive(FromArgs, Debug)]
/// Classify texts with a classifier model (`ember-train finetune classify`): prints the label and
/// the probability of each label. The input is truncated to the model's training length and, with
/// readout `last`, padded to it, as the book's `classify_review` does.
#[argh(subcommand, name = "classify")]
pub(crate) struct ClassifyArgs {
    /// the model file (.ember)
    #[argh(positional)]
    model: PathBuf,
    /// text to classify (encoded with the model's tokenizer)
    #[argh(option)]
    text: Option<String>,
    /// token ids to classify, e.g. 15496,11,314
    #[argh(option)]
    tokens: Option<String>,
    /// a file with one text per line (blank lines are skipped; `-` reads standard input); prints
    /// one result per line
    #[argh(option)]
    file: Option<PathBuf>,
    /// worker threads (default: one per core)
    #[argh(option)]
    threads: Option<usize>,
    /// print one JSON object (label, label_id, probabilities, logits, tokens); with --file, one
    /// object per line (JSON Lines) that also holds the line number
    #[argh(switch)]
    json: bool,
}

/// One classification as a JSON object; `line` is the input file's line number, if any. (f32
/// values print with f32's shortest round-trip digits.)
fn classification_json(c: &Classification<'_>, line: Option<usize>) -> String {
    #[derive(serde::Serialize)]
    struct Json<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        line: Option<usize>,
        label: &'a str,
        label_id: usize,
        #[serde(serialize_with = "label_map")]
        probabilities: (&'a [String], &'a [f32]),
        logits: &'a [f32],
        tokens: usize,
        truncated: bool,
    }
    fn label_map<S: serde::Serializer>(
        m: &(&[String], &[f32]),
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(m.0.iter().zip(m.1))
    }
    let j = Json {
        line,
        label: c.label,
        label_id: c.label_id,
        probabilities: (c.labels, c.probabilities),
        logits: c.logits,
        tokens: c.tokens,
        truncated: c.truncated,
    };
    serde_json::to_string(&j).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

pub(crate) fn classify(a: ClassifyArgs) -> Result<()> {
    let model = open(&a.model)?;
    if matches!(model.task(), Task::LanguageModel) {
        return Err(format!(
            "{}: this model is a language model, not a classifier: use `ember generate` or `ember score`",
            a.model.display()
        )
        .into());
    }
    let given = [a.text.is_some(), a.tokens.is_some(), a.file.is_some()];
    if given.iter().filter(|&&g| g).count() != 1 {
        return Err(usage(
            "give exactly one of --text TEXT, --tokens 1,2,3 or --file FILE",
        ));
    }
    let opts = SessionOptions {
        threads: threads(a.threads)?,
        ..SessionOptions::default()
    };
    let mut clf = Classifier::new(&model, &opts).map_err(|e| e.to_string())?;
    let Some(path) = &a.file else {
        let c = match (&a.text, &a.tokens) {
            (Some(t), _) if t.is_empty() => return Err(usage("--text is empty")),
            (Some(t), _) => clf.classify_text(t),
            (None, Some(ids)) => clf.classify_tokens(&parse_ids(ids, "--tokens")?),
            (None, None) => return Err("give --text, --tokens or --file".into()),
        }
        .map_err(|e| e.to_string())?;
        if a.json {
            println!("{}", classification_json(&c, None));
        } else {
            println!(
                "{}  (p {:.6}, {} tokens{})",
                c.label,
                c.probabilities[c.label_id],
                c.tokens,
                if c.truncated { ", truncated" } else { "" }
            );
            let width = c
                .labels
                .iter()
                .map(|l| l.chars().count())
                .max()
                .unwrap_or(0);
            for (l, p) in c.labels.iter().zip(c.probabilities) {
                println!("  {l:<width$}  {p:.6}");
            }
        }
        return Ok(());
    };
    let mut reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut buf = Vec::new();
    let mut line_no = 0;
    let mut shown = false;
    loop {
        buf.clear();
        // Bounded: a file without newlines (`/dev/zero`, a binary) must not grow `buf` forever.
        let n = std::io::Read::take(&mut reader, MAX_CLASSIFY_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.len() > MAX_CLASSIFY_LINE {
            return Err(format!(
                "{}: line {line_no} is longer than {} MiB",
                path.display(),
                MAX_CLASSIFY_LINE >> 20
            )
            .into());
        }
        let text = std::str::from_utf8(&buf)
            .map_err(|_| format!("{}: line {line_no} is not valid UTF-8", path.display()))?;
        let text = text.strip_suffix('\n').unwrap_or(text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.trim().is_empty() {
            continue;
        }
        let c = clf
            .classify_text(text)
            .map_err(|e| format!("{}: line {line_no}: {e}", path.display()))?;
        let written = if a.json {
            writeln!(out, "{}", classification_json(&c, Some(line_no)))
        } else {
            if !shown {
                writeln!(
                    out,
                    "{:>6}  {:<16} {:>9} {:>6}  text",
                    "line", "label", "p", "tokens"
                )
                .map_err(|e| e.to_string())?;
                shown = true;
            }
            let preview: String = text.chars().take(60).collect();
            let more = if text.chars().nth(60).is_some() {
                "…"
            } else {
                ""
            };
            writeln!(
                out,
                "{line_no:>6}  {:<16} {:>9.6} {:>6}  {preview}{more}",
                c.label, c.probabilities[c.label_id], c.tokens
            )
        };
        written.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The longest line `ember classify --file` reads (bytes).
const MAX_CLASSIFY_LINE: usize = 16 << 20;
