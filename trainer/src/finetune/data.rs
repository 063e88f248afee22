//! Fine-tuning datasets: labelled texts (the SMS Spam Collection's `label<TAB>text`, or CSV with a
//! header) for classification, Alpaca JSON for instruction tuning, and the book's batching rules.
//!
//! Letters: B batch, T sequence length (after padding), P the pad id (50256, `<|endoftext|>`).

use emberlm_formats::meta::PromptTemplate;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// The pad and end-of-text id of the GPT-2 vocabulary (the book pads with it).
pub const PAD_ID: u32 = 50256;
/// Target value ignored by the loss (PyTorch's default `ignore_index`).
pub const IGNORE: i32 = -100;

/// Why a dataset could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataError {
    /// The file could not be read.
    Io {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The file is not valid UTF-8.
    Utf8 {
        /// The file.
        path: String,
        /// Byte offset of the first invalid byte.
        offset: usize,
    },
    /// The file's structure is wrong (no rows, missing columns, malformed JSON…).
    Format {
        /// The file.
        path: String,
        /// What is wrong, with the line or entry.
        message: String,
    },
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::Io { path, message } => write!(f, "{path}: {message}"),
            DataError::Utf8 { path, offset } => {
                write!(
                    f,
                    "{path}: not valid UTF-8 (first bad byte at offset {offset})"
                )
            }
            DataError::Format { path, message } => write!(f, "{path}: {message}"),
        }
    }
}

impl std::error::Error for DataError {}

fn read_text(path: &Path) -> Result<String, DataError> {
    let p = path.display().to_string();
    if path.is_dir() {
        return Err(DataError::Io {
            path: p,
            message: "is a directory, expected a data file".into(),
        });
    }
    if let Some(kind) = crate::data::device_kind(path) {
        return Err(DataError::Io {
            path: p,
            message: format!("is a {kind}, expected a data file"),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| DataError::Io {
        path: p.clone(),
        message: e.to_string(),
    })?;
    String::from_utf8(bytes).map_err(|e| DataError::Utf8 {
        path: p,
        offset: e.utf8_error().valid_up_to(),
    })
}

/// A labelled dataset and what was skipped while reading it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelledData {
    /// (label index, text) rows in file order.
    pub rows: Vec<(usize, String)>,
    /// Label names; index = class id (sorted by name, so `ham` = 0 and `spam` = 1 as in the book).
    pub labels: Vec<String>,
    /// Why rows were skipped: reason → count.
    pub skipped: BTreeMap<String, usize>,
}

/// Splits a delimited file into records with pandas' default quoting (`read_csv(sep=…)`): a field
/// that starts with `"` is quoted until the next lone `"` (`""` is a literal quote), may span
/// lines, and text after its closing quote is appended; quotes elsewhere are literal.
pub fn split_records(text: &str, sep: char) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut at_field_start = true;
    let mut in_quotes = false;
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    field.push('"');
                    chars.next();
                } else {
                    in_quotes = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' if at_field_start => {
                in_quotes = true;
                at_field_start = false;
            }
            c if c == sep => {
                record.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\n' => {
                if field.ends_with('\r') {
                    field.pop();
                }
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                at_field_start = true;
            }
            c => {
                field.push(c);
                at_field_start = false;
            }
        }
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    records
}

/// Reads `label<TAB>text` (`.tsv` or any file without a header) or CSV with a header row naming a
/// label column (`label`, `Label`, `class`, `category`) and a text column (`text`, `Text`,
/// `message`, `sms`). Rows with a missing label or an empty text are skipped and counted.
pub fn read_labelled(path: &Path) -> Result<LabelledData, DataError> {
    let p = path.display().to_string();
    let text = read_text(path)?;
    let is_csv = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let records = split_records(&text, if is_csv { ',' } else { '\t' });
    let (label_col, text_col, body) = if is_csv {
        let header = records.first().ok_or_else(|| DataError::Format {
            path: p.clone(),
            message: "the file is empty".into(),
        })?;
        let find = |names: &[&str]| {
            header
                .iter()
                .position(|h| names.iter().any(|n| h.trim().eq_ignore_ascii_case(n)))
        };
        let l = find(&["label", "class", "category"]).ok_or_else(|| DataError::Format {
            path: p.clone(),
            message: format!(
                "no label column in the header {header:?} (expected label, class or category)"
            ),
        })?;
        let t = find(&["text", "message", "sms", "sentence"]).ok_or_else(|| DataError::Format {
            path: p.clone(),
            message: format!(
                "no text column in the header {header:?} (expected text, message, sms or sentence)"
            ),
        })?;
        (l, t, &records[1..])
    } else {
        (0, 1, &records[..])
    };
    let mut out = LabelledData::default();
    let mut raw: Vec<(String, String)> = Vec::new();
    for r in body {
        let label = r.get(label_col).map(|s| s.trim()).unwrap_or("");
        let txt = r.get(text_col).map(String::as_str).unwrap_or("");
        if r.iter().all(|f| f.trim().is_empty()) {
            *out.skipped.entry("blank line".into()).or_default() += 1;
        } else if label.is_empty() {
            *out.skipped.entry("no label".into()).or_default() += 1;
        } else if txt.trim().is_empty() {
            *out.skipped.entry("no text".into()).or_default() += 1;
        } else {
            raw.push((label.to_string(), txt.to_string()));
        }
    }
    if raw.is_empty() {
        return Err(DataError::Format {
            path: p,
            message: "no labelled rows".into(),
        });
    }
    let mut labels: Vec<String> = raw.iter().map(|(l, _)| l.clone()).collect();
    labels.sort();
    labels.dedup();
    if labels.len() < 2 {
        return Err(DataError::Format {
            path: p,
            message: format!(
                "only one label ({:?}); a classifier needs at least two",
                labels[0]
            ),
        });
    }
    out.rows = raw
        .into_iter()
        .map(|(l, t)| (labels.binary_search(&l).unwrap_or(0), t))
        .collect();
    out.labels = labels;
    Ok(out)
}

/// One Alpaca-format example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// The task.
    pub instruction: String,
    /// Optional input (may be empty).
    pub input: String,
    /// The reference response.
    pub output: String,
}

/// Reads Alpaca JSON: an array of objects with string fields `instruction`, `output` and optional
/// `input`. Errors name the entry.
pub fn read_instructions(path: &Path) -> Result<Vec<Instruction>, DataError> {
    let p = path.display().to_string();
    let text = read_text(path)?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| DataError::Format {
        path: p.clone(),
        message: format!("invalid JSON: {e}"),
    })?;
    let entries = json.as_array().ok_or_else(|| DataError::Format {
        path: p.clone(),
        message: "expected a JSON array of {instruction, input, output} objects".into(),
    })?;
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let field = |k: &str, required: bool| -> Result<String, DataError> {
            match e.get(k) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                None | Some(serde_json::Value::Null) if !required => Ok(String::new()),
                _ => Err(DataError::Format {
                    path: p.clone(),
                    message: format!("entry {i}: field {k:?} is missing or not a string"),
                }),
            }
        };
        out.push(Instruction {
            instruction: field("instruction", true)?,
            input: field("input", false)?,
            output: field("output", true)?,
        });
    }
    if out.is_empty() {
        return Err(DataError::Format {
            path: p,
            message: "the array is empty".into(),
        });
    }
    Ok(out)
}

/// The book's instruction split by order: train = first floor(0.85 n), test = next floor(0.10 n),
/// validation = the rest (935 / 110 / 55 for the book's 1,100 entries).
pub fn split_instructions(all: &[Instruction]) -> (&[Instruction], &[Instruction], &[Instruction]) {
    let n = all.len();
    let train = n * 85 / 100;
    let test = n * 10 / 100;
    let (tr, rest) = all.split_at(train);
    let (te, va) = rest.split_at(test.min(rest.len()));
    (tr, va, te)
}

/// The training text of an example: the prompt (template) followed by its reference output.
pub fn instruction_text(t: &PromptTemplate, e: &Instruction) -> (String, String) {
    let prompt = t.render(&e.instruction, &e.input);
    let full = format!("{prompt}{}", e.output);
    (prompt, full)
}

/// A padded batch: inputs (B, T) and targets (B, T).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// B.
    pub batch: usize,
    /// T.
    pub len: usize,
    /// Input ids (B, T).
    pub inputs: Vec<u32>,
    /// Target ids (B, T), [`IGNORE`] where the loss must not look.
    pub targets: Vec<i32>,
}

/// The book's `custom_collate_fn`: append one `pad` to every sequence, right-pad to the longest
/// plus one, inputs = all but the last position, targets = all but the first, and every pad in
/// the targets after the first one becomes [`IGNORE`]. `prompt_lens[i]` > 0 also ignores the first
/// `prompt_lens[i] - 1` targets of row i (exercise 7.2: the prompt's tokens). `max_len` truncates.
pub fn collate(
    seqs: &[Vec<u32>],
    pad: u32,
    prompt_lens: Option<&[usize]>,
    max_len: Option<usize>,
) -> Batch {
    let longest = seqs.iter().map(Vec::len).max().unwrap_or(0) + 1;
    let mut t = longest - 1;
    if let Some(m) = max_len {
        t = t.min(m);
    }
    let b = seqs.len();
    let mut inputs = Vec::with_capacity(b * t);
    let mut targets = Vec::with_capacity(b * t);
    for (i, s) in seqs.iter().enumerate() {
        let mut padded = s.clone();
        padded.resize(longest, pad);
        let mut tg: Vec<i32> = padded[1..].iter().map(|&x| x as i32).collect();
        // Every pad after the first end token is ignored.
        if let Some(first) = tg
            .iter()
            .skip(s.len().saturating_sub(1))
            .position(|&x| x == pad as i32)
        {
            let first = first + s.len().saturating_sub(1);
            for v in tg.iter_mut().skip(first + 1) {
                *v = IGNORE;
            }
        }
        if let Some(pl) = prompt_lens {
            let n = pl.get(i).copied().unwrap_or(0).saturating_sub(1);
            for v in tg.iter_mut().take(n) {
                *v = IGNORE;
            }
        }
        inputs.extend_from_slice(&padded[..t]);
        targets.extend_from_slice(&tg[..t]);
    }
    Batch {
        batch: b,
        len: t,
        inputs,
        targets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // BOOK.md chapter 7 [TV].
    #[test]
    fn collate_matches_the_books_example() {
        let p = PAD_ID;
        let b = collate(
            &[vec![0, 1, 2, 3, 4], vec![5, 6], vec![7, 8, 9]],
            p,
            None,
            None,
        );
        assert_eq!((b.batch, b.len), (3, 5));
        assert_eq!(b.inputs, vec![0, 1, 2, 3, 4, 5, 6, p, p, p, 7, 8, 9, p, p]);
        let p = p as i32;
        assert_eq!(
            b.targets,
            vec![1, 2, 3, 4, p, 6, p, -100, -100, -100, 8, 9, p, -100, -100]
        );
    }

    #[test]
    fn prompt_masking_and_truncation() {
        // Row 0: prompt of 3 tokens -> its first 2 targets are ignored.
        let b = collate(
            &[vec![10, 11, 12, 13, 14], vec![20, 21]],
            PAD_ID,
            Some(&[3, 1]),
            Some(4),
        );
        assert_eq!(b.len, 4);
        assert_eq!(b.inputs, vec![10, 11, 12, 13, 20, 21, PAD_ID, PAD_ID]);
        let p = PAD_ID as i32;
        assert_eq!(b.targets, vec![-100, -100, 13, 14, 21, p, -100, -100]);
    }

    #[test]
    fn pandas_quoting_merges_lines_like_the_book() {
        let text = "ham\t\"quoted\ttab\" and more\nspam\tplain \"inner\" quote\nham\t\"open\nline two\"\nham\tx\n";
        let r = split_records(text, '\t');
        assert_eq!(r.len(), 4);
        assert_eq!(r[0], vec!["ham", "quoted\ttab and more"]);
        assert_eq!(r[1], vec!["spam", "plain \"inner\" quote"]);
        assert_eq!(r[2], vec!["ham", "open\nline two"]);
    }

    #[test]
    fn the_books_sms_file_has_5572_rows() {
        let Some(dir) = std::env::var_os("EMBER_DATA") else {
            eprintln!("SKIPPED the_books_sms_file_has_5572_rows: EMBER_DATA is not set");
            return;
        };
        let d = read_labelled(&Path::new(&dir).join("sms_spam_collection.tsv")).unwrap();
        assert_eq!(d.labels, vec!["ham", "spam"]);
        let spam = d.rows.iter().filter(|(l, _)| *l == 1).count();
        assert_eq!((d.rows.len(), d.rows.len() - spam, spam), (5572, 4825, 747));
    }

    #[test]
    fn the_books_instruction_split() {
        let Some(dir) = std::env::var_os("EMBER_DATA") else {
            eprintln!("SKIPPED the_books_instruction_split: EMBER_DATA is not set");
            return;
        };
        let all = read_instructions(&Path::new(&dir).join("instruction-data.json")).unwrap();
        let (tr, va, te) = split_instructions(&all);
        assert_eq!(
            (all.len(), tr.len(), va.len(), te.len()),
            (1100, 935, 55, 110)
        );
    }

    #[test]
    fn csv_with_header_and_skips() {
        let tmp = tempfile::Builder::new()
            .prefix("emberlm-csv-")
            .tempdir()
            .unwrap();
        let dir = tmp.path();
        let f = dir.join("d.csv");
        std::fs::write(
            &f,
            "Text,Label\n\"hello, world\",pos\nbad,\n,neg\nfine,neg\n\n",
        )
        .unwrap();
        let d = read_labelled(&f).unwrap();
        assert_eq!(d.labels, vec!["neg", "pos"]);
        assert_eq!(
            d.rows,
            vec![(1, "hello, world".to_string()), (0, "fine".to_string())]
        );
        assert_eq!(d.skipped.get("no label"), Some(&1));
        assert_eq!(d.skipped.get("no text"), Some(&1));
        std::fs::write(&f, "a,b\n1,2\n").unwrap();
        assert!(
            matches!(read_labelled(&f), Err(DataError::Format { message, .. }) if message.contains("no label column"))
        );
    }
}
