//! The split regexes of Llama 3 and Qwen2, written by hand like GPT-2's in `pretok.rs`.
//!
//! Llama 3's pattern (Hugging Face `tokenizer.json`, `Split` pre-tokenizer, behaviour Isolated):
//! `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
//! Qwen2's is the same with `\p{N}` (one digit per piece) in place of `\p{N}{1,3}`. At each
//! position the first alternative that matches wins (Oniguruma, leftmost-first):
//!
//! 1. an apostrophe and a contraction, any case (`'S`, `'LL`; `ſ` folds to `s` as in Oniguruma);
//! 2. optionally one character that is not `\r`, `\n`, a letter or a number, then a letter run;
//! 3. one to `max_digits` numbers;
//! 4. an optional space, a run of "other" characters, then any `\r` / `\n` run;
//! 5. white space up to and including its last `\r` or `\n`;
//! 6. a white-space run followed by a non-space: all but its last character (to the end: all);
//! 7. a single white-space character.
//!
//! The alternatives cover every character, so the pieces tile the text (no gaps between matches).
//! The character classes are those of `pretok.rs` (Unicode tables of `regex-syntax`).

use super::pretok::{LETTER, NUMBER, OTHER, SPACE, char_at, run_end};

/// Length of a case-insensitive contraction suffix at the start of `b` (after the apostrophe).
#[inline]
fn contraction_len(b: &[u8]) -> Option<usize> {
    let lower = |k: usize| b.get(k).map(|c| c.to_ascii_lowercase());
    match lower(0)? {
        b's' | b't' | b'm' | b'd' => Some(1),
        b'r' | b'v' if lower(1) == Some(b'e') => Some(2),
        b'l' if lower(1) == Some(b'l') => Some(2),
        // U+017F LATIN SMALL LETTER LONG S case-folds to `s`.
        0xC5 if b.get(1) == Some(&0xBF) => Some(2),
        _ => None,
    }
}

/// End (exclusive byte index) of the piece starting at byte `i` of `text` (`i < text.len()`, on
/// a character boundary). `max_digits` is 3 for Llama 3 and 1 for Qwen2.
pub(crate) fn piece_end(text: &str, i: usize, max_digits: usize) -> usize {
    let b = text.as_bytes();
    let n = b.len();
    let b0 = b[i];
    if b0 == b'\'' {
        if let Some(len) = b.get(i + 1..).and_then(contraction_len) {
            return i + 1 + len;
        }
    }
    let (c0, l0) = char_at(b, i);
    if c0 == LETTER {
        return run_end(b, i + l0, LETTER);
    }
    let newline = |k: usize| matches!(b.get(k), Some(b'\r' | b'\n'));
    if c0 != NUMBER && !newline(i) && i + l0 < n && char_at(b, i + l0).0 == LETTER {
        return run_end(b, i + l0, LETTER);
    }
    if c0 == NUMBER {
        let mut j = i + l0;
        let mut count = 1;
        while count < max_digits && j < n {
            let (c, l) = char_at(b, j);
            if c != NUMBER {
                break;
            }
            j += l;
            count += 1;
        }
        return j;
    }
    let other_from = if c0 == OTHER {
        Some(i)
    } else if b0 == b' ' && i + 1 < n && char_at(b, i + 1).0 == OTHER {
        Some(i + 1)
    } else {
        None
    };
    if let Some(s) = other_from {
        let mut j = run_end(b, s, OTHER);
        while newline(j) {
            j += 1;
        }
        return j;
    }
    debug_assert_eq!(c0, SPACE);
    // `i` starts a white-space run: find its end, its last character and its last newline.
    let mut j = i;
    let mut last_start = i;
    let mut after_newline = None;
    while j < n {
        let (c, l) = char_at(b, j);
        if c != SPACE {
            break;
        }
        if newline(j) {
            after_newline = Some(j + 1);
        }
        last_start = j;
        j += l;
    }
    if let Some(e) = after_newline {
        e // 5. `\s*[\r\n]+`
    } else if j == n {
        n // 6. `\s+(?!\S)` at the end of the text
    } else if last_start > i {
        last_start // 6. `\s+(?!\S)`
    } else {
        j // 7. `\s+` of one character
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str, max_digits: usize) -> Vec<&str> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < s.len() {
            let e = piece_end(s, i, max_digits);
            out.push(&s[i..e]);
            i = e;
        }
        out
    }

    #[test]
    fn splits_like_llama3_on_hand_checked_cases() {
        assert_eq!(split("DON'T stop", 3), ["DON", "'T", " stop"]);
        assert_eq!(split("12345 x", 3), ["123", "45", " x"]);
        assert_eq!(split("12345", 1), ["1", "2", "3", "4", "5"]);
        assert_eq!(split("(hello)\n\nworld", 3), ["(hello", ")\n\n", "world"]);
        assert_eq!(split("a  \n  b", 3), ["a", "  \n", " ", " b"]);
        assert_eq!(split("\tword", 3), ["\tword"]);
        assert_eq!(split("x   ", 3), ["x", "   "]);
        assert_eq!(split("'ſ", 3), ["'ſ"]);
        assert_eq!(split("", 3), Vec::<&str>::new());
    }
}
