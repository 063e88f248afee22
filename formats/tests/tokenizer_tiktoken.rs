//! The GPT-2 tokenizer against tiktoken-rs (`r50k_base`) and its regex engine.
//!
//! - Every Unicode scalar value, in contexts that expose its pre-tokenizer class, splits as
//!   fancy-regex splits it with tiktoken's pattern (and GPT-2's original pattern), and encodes
//!   as tiktoken-rs encodes it.
//! - More than 1 MiB of seeded generated text (CJK, emoji with ZWJ sequences, combining marks,
//!   control characters, long white-space runs, digits, contractions, random scalars, special
//!   tokens) encodes identically, with and without special tokens allowed.
//! - The book's data (when `EMBER_DATA` is set) encodes identically.
//! - Properties: `decode(encode(s)) == s`; streaming decode == whole decode.

use emberlm_formats::tokenizer::{
    EncodeScratch, SpecialTokens, StreamDecoder, Tokenizer, UNICODE_VERSION, pieces,
};
use fancy_regex::Regex;
use proptest::prelude::*;
use tiktoken_rs::CoreBPE;

/// tiktoken-rs's `r50k_base` pattern, verbatim.
const TIKTOKEN_PATTERN: &str =
    r"'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s";
/// GPT-2's original pattern (encoder.py), which must split the same way.
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

fn tiktoken() -> &'static CoreBPE {
    tiktoken_rs::r50k_base_singleton()
}

fn regex_pieces<'a>(re: &Regex, text: &'a str) -> Vec<&'a str> {
    re.find_iter(text).map(|m| m.unwrap().as_str()).collect()
}

/// Asserts that emberlm and tiktoken-rs encode `text` identically in both modes; on a mismatch,
/// names the first piece where the pre-tokenizers disagree (or the first differing token).
fn assert_same_tokens(tok: &Tokenizer, re: &Regex, text: &str, scratch: &mut EncodeScratch) {
    let mut ours = Vec::new();
    tok.encode(text, SpecialTokens::AsText, scratch, &mut ours);
    let theirs = tiktoken().encode_ordinary(text);
    if ours != theirs {
        let (a, b) = (pieces(text).collect::<Vec<_>>(), regex_pieces(re, text));
        let k = a
            .iter()
            .zip(&b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len()));
        let k0 = k.saturating_sub(3);
        panic!(
            "encode_ordinary differs; pieces from {k0}: ours {:?} regex {:?}; first token diff at {}",
            &a[k0..(k + 3).min(a.len())],
            &b[k0..(k + 3).min(b.len())],
            ours.iter()
                .zip(&theirs)
                .position(|(x, y)| x != y)
                .unwrap_or(ours.len().min(theirs.len())),
        );
    }
    ours.clear();
    tok.encode(text, SpecialTokens::Allow, scratch, &mut ours);
    assert_eq!(
        ours,
        tiktoken().encode_with_special_tokens(text),
        "with special tokens: {text:?}"
    );
}

/// Snippets that expose a scalar's class: after a letter (joins iff \p{L}), a digit (iff \p{N}),
/// a '!' (iff other), a tab and an apostrophe (white space or not), after a space.
fn class_probe(c: char, out: &mut String) {
    for prefix in ['a', '1', '!', ' '] {
        out.push(prefix);
        out.push(c);
    }
    out.push('\t');
    out.push(c);
    out.push(c);
    out.push('\'');
    out.push(c);
    out.push('\n');
}

#[test]
fn pretok_classes_match_fancy_regex_on_every_scalar() {
    let tok = Tokenizer::gpt2();
    let re = Regex::new(TIKTOKEN_PATTERN).unwrap();
    let gpt2_re = Regex::new(GPT2_PATTERN).unwrap();
    let mut scratch = EncodeScratch::new();
    let mut checked = 0u32;
    let mut text = String::new();
    for block in (0..0x110000u32).step_by(0x2000) {
        text.clear();
        for c in (block..block + 0x2000).filter_map(char::from_u32) {
            class_probe(c, &mut text);
            checked += 1;
        }
        let ours: Vec<&str> = pieces(&text).collect();
        let theirs = regex_pieces(&re, &text);
        if ours != theirs {
            let k = ours.iter().zip(&theirs).position(|(x, y)| x != y).unwrap();
            panic!(
                "pre-tokenizer (Unicode {UNICODE_VERSION}) differs from fancy-regex near {:?}: ours {:?} regex {:?}",
                &theirs[k.saturating_sub(2)..k + 1],
                ours[k],
                theirs[k]
            );
        }
        assert_eq!(
            regex_pieces(&gpt2_re, &text),
            theirs,
            "GPT-2's pattern splits differently"
        );
        assert_same_tokens(tok, &re, &text, &mut scratch);
    }
    assert_eq!(
        checked,
        0x110000 - 0x800,
        "every scalar value (surrogates excluded)"
    );
}

/// xorshift64*: seeded and reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

const WORDS: &[&str] = &[
    "the",
    "quick",
    "brown",
    "fox",
    "Hello",
    "world",
    "tea",
    "don",
    "it",
    "you",
    "they",
    "I",
    "Implementation",
    "someunknownPlace",
    "terracesof",
    "naïve",
    "café",
    "Straße",
    "über",
    "résumé",
    "Ελληνικά",
    "русский",
    "日本語",
    "中文字符",
    "한국어",
    "עברית",
    "العربية",
    "हिन्दी",
    "ไทย",
    "ǅemal",
    "ﬁne",
    "ℌilbert",
    "µs",
    "ǈ",
    "ᾈ",
    "ʰ",
    "ª",
    "º",
    "x²",
    "H₂O",
    "Ⅻ",
    "ⅷ",
];
const CONTRACTIONS: &[&str] = &[
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'VE", "'M", "'LL", "'D", "'",
    "''", "'x", "'ss", "'lll", "'vee", " 's", "’s", "' s", "'\u{301}",
];
const EMOJI: &[&str] = &[
    "😀",
    "👍🏽",
    "👨\u{200d}👩\u{200d}👧\u{200d}👦",
    "🏳\u{fe0f}\u{200d}🌈",
    "🇫🇷",
    "❤\u{fe0f}",
    "🧑\u{200d}💻",
    "👩🏿\u{200d}🚀",
    "✌\u{fe0e}",
    "1\u{fe0f}\u{20e3}",
    "🫠",
    "🏴\u{e0067}\u{e0062}\u{e0065}\u{e006e}\u{e0067}\u{e007f}",
];
const COMBINING: &[&str] = &[
    "e\u{301}",
    "a\u{308}\u{304}",
    "ก\u{e31}",
    "क\u{94d}ष",
    "\u{301}\u{301}",
    "بِسْمِ",
    "n\u{303}",
    "Z\u{35a}\u{36b}\u{310}",
    "\u{20dd}",
    "ᄀ\u{1161}\u{11a8}",
    "ॐ",
];
const CONTROL: &[&str] = &[
    "\0",
    "\u{1}",
    "\u{1b}[0m",
    "\u{7f}",
    "\u{85}",
    "\u{1c}\u{1d}\u{1e}\u{1f}",
    "\u{200b}",
    "\u{feff}",
    "\u{2028}",
    "\u{2029}",
    "\u{3000}",
    "\u{a0}",
    "\u{180e}",
    "\u{202f}",
    "\r\n",
    "\u{b}\u{c}",
    "\u{ad}",
];
const PUNCT: &[&str] = &[
    ".",
    ",",
    ";",
    ":",
    "!",
    "?",
    "-",
    "--",
    "—",
    "–",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "\"",
    "“",
    "”",
    "‘",
    "’",
    "«",
    "»",
    "…",
    "/",
    "\\",
    "|",
    "@",
    "#",
    "$",
    "%",
    "^",
    "&",
    "*",
    "_",
    "+",
    "=",
    "~",
    "`",
    "<",
    ">",
    "<|",
    "|>",
    "!!",
    "?!",
    "...",
    "<|endoftext|>",
    "<|endoftext",
];
const NUMBERS: &[&str] = &["½", "Ⅻ", "٣٤", "१२", "①", "³", "〇", "𝟘𝟙", "1,000", "3.14"];
const SPACES: &[char] = &[
    ' ', ' ', ' ', '\n', '\n', '\t', '\r', '\u{3000}', '\u{a0}', '\u{2009}',
];

/// One seeded document of about `len` bytes mixing every kind of text the tokenizer must handle.
fn generated_document(rng: &mut Rng, len: usize) -> String {
    let mut s = String::new();
    while s.len() < len {
        match rng.below(20) {
            0..=6 => {
                if rng.below(2) == 0 {
                    s.push(' ');
                }
                s.push_str(rng.pick(WORDS));
            }
            7 => s.push_str(rng.pick(CONTRACTIONS)),
            8 => s.push_str(rng.pick(EMOJI)),
            9 => s.push_str(rng.pick(COMBINING)),
            10 => s.push_str(rng.pick(CONTROL)),
            11 | 12 => s.push_str(rng.pick(PUNCT)),
            13 => {
                let max = if rng.below(8) == 0 { 300 } else { 6 };
                let n = 1 + rng.below(max);
                for _ in 0..n {
                    s.push(SPACES[rng.below(SPACES.len())]);
                }
            }
            14 => {
                let max = if rng.below(8) == 0 { 200 } else { 8 };
                let n = 1 + rng.below(max);
                for _ in 0..n {
                    s.push(char::from(b'0' + rng.below(10) as u8));
                }
            }
            15 => s.push_str(rng.pick(NUMBERS)),
            16 => {
                // CJK, kana or Hangul runs.
                let base = [0x4E00u32, 0x3040, 0xAC00, 0x3400][rng.below(4)];
                for _ in 0..1 + rng.below(12) {
                    s.push(char::from_u32(base + rng.below(0x80) as u32).unwrap_or('?'));
                }
            }
            17 => {
                // Any scalar value at all (every class, unassigned code points too).
                let c = loop {
                    if let Some(c) = char::from_u32(rng.below(0x110000) as u32) {
                        break c;
                    }
                };
                s.push(c);
            }
            18 => s.push_str(["\n", "\n\n", " ", "  ", ". ", ", "][rng.below(6)]),
            _ => {
                // Apostrophes glued to words, upper and lower case.
                s.push_str(rng.pick(WORDS));
                s.push_str(rng.pick(CONTRACTIONS));
            }
        }
    }
    s
}

#[test]
fn agrees_with_tiktoken_on_a_mebibyte_of_generated_text() {
    let tok = Tokenizer::gpt2();
    let re = Regex::new(TIKTOKEN_PATTERN).unwrap();
    let mut scratch = EncodeScratch::new();
    let mut rng = Rng(0x00E3_BE21);
    let mut bytes = 0usize;
    let mut docs = 0usize;
    while bytes < (1 << 20) + (1 << 17) {
        let len = 200 + rng.below(8000);
        let doc = generated_document(&mut rng, len);
        assert_same_tokens(tok, &re, &doc, &mut scratch);
        bytes += doc.len();
        docs += 1;
    }
    eprintln!("compared {bytes} generated bytes in {docs} documents with tiktoken-rs");
    assert!(bytes >= 1 << 20);
}

fn ember_data(name: &str) -> Option<String> {
    let Some(dir) = std::env::var_os("EMBER_DATA") else {
        eprintln!("SKIPPED (EMBER_DATA is not set): comparison on {name}");
        return None;
    };
    let path = std::path::Path::new(&dir).join(name);
    Some(std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

#[test]
fn agrees_with_tiktoken_on_the_books_data() {
    let tok = Tokenizer::gpt2();
    let re = Regex::new(TIKTOKEN_PATTERN).unwrap();
    let mut scratch = EncodeScratch::new();
    let mut bytes = 0;
    for name in [
        "the-verdict.txt",
        "tinyshakespeare.txt",
        "instruction-data.json",
        "sms_spam_collection.tsv",
    ] {
        let Some(text) = ember_data(name) else { return };
        assert_same_tokens(tok, &re, &text, &mut scratch);
        bytes += text.len();
    }
    eprintln!("compared {bytes} bytes of the book's data with tiktoken-rs");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn decode_inverts_encode(s in any::<String>(), t in "[ \\t\\na-zA-Z0-9'.,!?éß日本😀\u{301}]{0,200}") {
        let tok = Tokenizer::gpt2();
        for text in [&s, &t] {
            let ids = tok.encode_to_vec(text, SpecialTokens::Allow);
            prop_assert_eq!(tok.decode_to_string(&ids).unwrap(), text.as_str());
            prop_assert_eq!(&ids, &tiktoken().encode_with_special_tokens(text));
        }
    }

    #[test]
    fn streaming_decode_equals_whole_decode(s in any::<String>(), ids in prop::collection::vec(0u32..50257, 0..64)) {
        let tok = Tokenizer::gpt2();
        let mut dec = StreamDecoder::new(tok);
        // Encodings of text: one token at a time gives back the text exactly.
        let mut streamed = String::new();
        for id in tok.encode_to_vec(&s, SpecialTokens::AsText) {
            streamed.push_str(dec.push(id).unwrap());
        }
        streamed.push_str(dec.finish());
        prop_assert_eq!(&streamed, &s);
        // Arbitrary ids (invalid UTF-8 included): the same text as a lossy decode of all bytes.
        streamed.clear();
        for &id in &ids {
            streamed.push_str(dec.push(id).unwrap());
        }
        streamed.push_str(dec.finish());
        let mut whole = Vec::new();
        tok.decode(&ids, &mut whole).unwrap();
        prop_assert_eq!(streamed, String::from_utf8_lossy(&whole));
    }
}
