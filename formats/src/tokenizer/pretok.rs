//! GPT-2's pre-tokenizer, written by hand (no regex engine on the runtime path).
//!
//! It splits text into the pieces that tiktoken's `r50k_base` pattern
//! `'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s`
//! finds (the same pieces as GPT-2's original `... |\s+(?!\S)|\s+`). At each position the first
//! alternative that matches wins:
//!
//! 1. an apostrophe followed by `s d m t ll ve re` (lowercase only: `'S` is not a contraction);
//! 2. an optional single space `' '` then a maximal run of letters (`\p{L}`: Lu Ll Lt Lm Lo);
//! 3. the same for numbers (`\p{N}`: Nd Nl No);
//! 4. the same for "other" characters (neither white space, letter nor number);
//! 5. white space (the White_Space property) running to the end of the text: all of it;
//! 6. a run of two or more white-space characters followed by a non-space: all but the last
//!    character (which then prefixes the next piece if it is a space);
//! 7. a single white-space character.
//!
//! The four classes are disjoint; their tables are generated (`unicode_tables.rs`) for the Unicode
//! version of the `regex-syntax` crate so the split equals tiktoken-rs's on every scalar value.

use super::unicode_tables::{ASCII_CLASS, RANGES};

/// Class of a character: neither of the three below.
pub(crate) const OTHER: u8 = 0;
/// Class of a character: `\p{L}`.
pub(crate) const LETTER: u8 = 1;
/// Class of a character: `\p{N}`.
pub(crate) const NUMBER: u8 = 2;
/// Class of a character: `\s` (White_Space).
pub(crate) const SPACE: u8 = 3;

/// The pre-tokenizer class (0 other, 1 letter, 2 number, 3 white space) of a scalar value.
#[cfg(test)]
pub(crate) fn class_of(cp: u32) -> u8 {
    if cp < 0x80 {
        ASCII_CLASS[cp as usize]
    } else {
        class_non_ascii(cp)
    }
}

fn class_non_ascii(cp: u32) -> u8 {
    let i = RANGES.partition_point(|r| r.1 < cp);
    match RANGES.get(i) {
        Some(&(lo, _, class)) if lo <= cp => class,
        _ => OTHER,
    }
}

/// Decodes the character starting at `i` of valid UTF-8 `b` (`i` on a character boundary,
/// `i < b.len()`): returns (class, byte length).
#[inline]
pub(crate) fn char_at(b: &[u8], i: usize) -> (u8, usize) {
    let b0 = b[i];
    if b0 < 0x80 {
        return (ASCII_CLASS[b0 as usize], 1);
    }
    // `b` is a `str`'s bytes, so the continuation bytes exist and the sequence is well formed.
    let cont = |k: usize| (b[i + k] & 0x3F) as u32;
    let (cp, len) = if b0 < 0xE0 {
        (((b0 & 0x1F) as u32) << 6 | cont(1), 2)
    } else if b0 < 0xF0 {
        (((b0 & 0x0F) as u32) << 12 | cont(1) << 6 | cont(2), 3)
    } else {
        (
            ((b0 & 0x07) as u32) << 18 | cont(1) << 12 | cont(2) << 6 | cont(3),
            4,
        )
    };
    (class_non_ascii(cp), len)
}

/// Index just past the maximal run of characters of `class` starting at `i`.
#[inline]
pub(crate) fn run_end(b: &[u8], mut i: usize, class: u8) -> usize {
    while i < b.len() {
        let b0 = b[i];
        if b0 < 0x80 {
            if ASCII_CLASS[b0 as usize] != class {
                break;
            }
            i += 1;
        } else {
            let (c, len) = char_at(b, i);
            if c != class {
                break;
            }
            i += len;
        }
    }
    i
}

/// End (exclusive byte index) of the piece that starts at byte `i` of `text` (`i < text.len()`,
/// on a character boundary).
#[inline]
pub(crate) fn piece_end(text: &str, i: usize) -> usize {
    let b = text.as_bytes();
    let n = b.len();
    let b0 = b[i];
    // 1. Contractions.
    if b0 == b'\'' && i + 1 < n {
        match b[i + 1] {
            b's' | b'd' | b'm' | b't' => return i + 2,
            b'l' if b.get(i + 2) == Some(&b'l') => return i + 3,
            b'v' | b'r' if b.get(i + 2) == Some(&b'e') => return i + 3,
            _ => {}
        }
    }
    let (class0, len0) = char_at(b, i);
    // 2.-4. An optional space, then a run of one class.
    if b0 == b' ' && i + 1 < n {
        let (class1, _) = char_at(b, i + 1);
        if class1 != SPACE {
            return run_end(b, i + 1, class1);
        }
    } else if class0 != SPACE {
        return run_end(b, i + len0, class0);
    }
    // 5.-7. White space: `i` starts a run of white space.
    let mut j = i + len0;
    let mut last_start = i;
    while j < n {
        let (c, len) = char_at(b, j);
        if c != SPACE {
            break;
        }
        last_start = j;
        j += len;
    }
    if j == n {
        n // 5. `\s++$`
    } else if last_start > i {
        last_start // 6. `\s+(?!\S)`
    } else {
        j // 7. `\s`
    }
}

/// [`piece_end`] for the Hugging Face paths, never inlined: extra inlined call sites would change
/// how the compiler treats [`piece_end`] in the GPT-2 encode loop (measured: ~10% more
/// instructions there).
#[inline(never)]
pub(crate) fn piece_end_outlined(text: &str, i: usize) -> usize {
    piece_end(text, i)
}

/// Iterator over the pre-tokenizer pieces of a text (see the module doc); never yields an empty
/// piece, and the pieces concatenate to the text.
#[derive(Debug, Clone)]
pub struct Pieces<'a> {
    text: &'a str,
    pos: usize,
}

/// Splits `text` into GPT-2 pre-tokenizer pieces (byte-level BPE then runs inside each piece).
pub fn pieces(text: &str) -> Pieces<'_> {
    Pieces { text, pos: 0 }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        if self.pos >= self.text.len() {
            return None;
        }
        let start = self.pos;
        self.pos = piece_end(self.text, start);
        self.text.get(start..self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<&str> {
        pieces(s).collect()
    }

    #[test]
    fn splits_like_gpt2_on_hand_checked_cases() {
        assert_eq!(split("Hello, world"), ["Hello", ",", " world"]);
        assert_eq!(split("it's 'S 'll"), ["it", "'s", " '", "S", " '", "ll"]);
        assert_eq!(split("a   b"), ["a", "  ", " b"]);
        assert_eq!(split("a\t\tb"), ["a", "\t", "\t", "b"]);
        assert_eq!(split("a  "), ["a", "  "]);
        assert_eq!(split("x \n y"), ["x", " \n", " y"]);
        assert_eq!(split("x\n\ny"), ["x", "\n", "\n", "y"]);
        assert_eq!(
            split("tea? <|endoftext|>"),
            ["tea", "?", " <|", "endoftext", "|>"]
        );
        assert_eq!(split(" 123abc"), [" 123", "abc"]);
        assert_eq!(split("Ⅻ½٣"), ["Ⅻ½٣"]); // Nl, No, Nd: one number run
        assert_eq!(split("café"), ["café"]);
        assert_eq!(split("e\u{301}"), ["e", "\u{301}"]); // a combining mark is not a letter
        assert_eq!(split(""), Vec::<&str>::new());
    }

    #[test]
    fn classes_of_tricky_scalars() {
        assert_eq!(class_of(0x1C), OTHER); // Python's isspace says yes; White_Space says no
        assert_eq!(class_of(0x85), SPACE);
        assert_eq!(class_of(0x3000), SPACE);
        assert_eq!(class_of(0x2160), NUMBER); // Ⅰ is Nl: Alphabetic for Rust, but \p{N}
        assert_eq!(class_of(0x0345), OTHER); // Mn with Other_Alphabetic: not \p{L}
        assert_eq!(class_of(0x4E00), LETTER);
        assert_eq!(class_of(0x1F600), OTHER);
        assert!(
            super::super::unicode_tables::RANGES
                .windows(2)
                .all(|w| w[0].1 < w[1].0)
        );
    }
}
