//! The fine-tuning dataset readers on untrusted files: `split_records` (pandas-style quoting) on
//! the text, `read_labelled` on it saved as `.tsv` and as `.csv`, `read_instructions` on it saved
//! as `.json`. Raw bytes are written to the files (invalid UTF-8 included).
//!
//! Properties: with no quote character in the text, `split_records` is a plain split on lines
//! and separators (a trailing `\r` dropped from the last field of a line); accepted labelled
//! data has at least two labels, sorted and distinct, every row's label index in range and every
//! row's text non-blank; accepted instructions are non-empty.

use super::input::{put, scratch_dir};
use emberlm_trainer::finetune::data::{read_instructions, read_labelled, split_records};

/// The plain split `split_records` must equal when the text has no `"`.
fn naive_split(text: &str, sep: char) -> Vec<Vec<String>> {
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    lines
        .into_iter()
        .map(|line| {
            let line = line.strip_suffix('\r').unwrap_or(line);
            line.split(sep).map(str::to_string).collect()
        })
        .collect()
}

/// The target's body.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for sep in ['\t', ','] {
        let records = split_records(&text, sep);
        if !text.contains('"') && !text.contains('\r') {
            assert_eq!(records, naive_split(&text, sep), "sep {sep:?}");
        }
    }

    let dir = scratch_dir("dataset_readers");
    for name in ["data.tsv", "data.csv"] {
        let path = dir.join(name);
        put(&path, Some(data));
        if let Ok(d) = read_labelled(&path) {
            assert!(d.labels.len() >= 2);
            assert!(d.labels.windows(2).all(|w| w[0] < w[1]));
            assert!(!d.rows.is_empty());
            for (label, text) in &d.rows {
                assert!(*label < d.labels.len());
                assert!(!text.trim().is_empty());
            }
        }
    }
    let path = dir.join("data.json");
    put(&path, Some(data));
    if let Ok(v) = read_instructions(&path) {
        assert!(!v.is_empty());
    }
}
