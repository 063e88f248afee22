//! The hand-written Llama 3, Qwen2 and SmolLM2 pre-tokenizers against fancy-regex running the
//! patterns of their `tokenizer.json` files, on generated text (the golden tests in
//! `tokenizer_hf.rs` check whole tokenizers against `tokenizers` on fewer strings).

use emberlm_formats::tokenizer::HfPreTokenizer;
use fancy_regex::Regex;

const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

fn regex_pieces<'a>(re: &Regex, text: &'a str) -> Vec<&'a str> {
    re.find_iter(text).map(|m| m.unwrap().as_str()).collect()
}

/// Digits(individual) then GPT-2's regex, as SmolLM2's `Sequence` does.
fn digits_then_gpt2<'a>(re: &Regex, text: &'a str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c.is_numeric() {
            out.extend(regex_pieces(re, &text[start..i]));
            out.push(&text[i..i + c.len_utf8()]);
            start = i + c.len_utf8();
        }
    }
    out.extend(regex_pieces(re, &text[start..]));
    out
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const FRAGMENTS: &[&str] = &[
    "a",
    "Z",
    "é",
    "日",
    "ſ",
    "'",
    "'s",
    "'S",
    "'LL",
    "'Re",
    "'ve",
    "'d",
    "'T",
    "'m",
    "'x",
    " ",
    "  ",
    "\t",
    "\n",
    "\r",
    "\r\n",
    "\u{a0}",
    "\u{3000}",
    "\u{85}",
    "1",
    "23",
    "456",
    "٣",
    "Ⅻ",
    "½",
    ".",
    ",",
    "!?",
    "(",
    ")",
    "-",
    "😀",
    "👨\u{200d}👩",
    "\u{301}",
    "\u{200b}",
    "\0",
    "_",
    "word",
    " word",
    "WORD",
    "\u{1f}",
];

#[test]
fn hand_written_splits_equal_fancy_regex_on_generated_text() {
    let llama3 = Regex::new(LLAMA3).unwrap();
    let qwen2 = Regex::new(QWEN2).unwrap();
    let gpt2 = Regex::new(GPT2).unwrap();
    let mut rng = Rng(0xC0FFEE);
    for case in 0..20_000 {
        let n = 1 + rng.below(if case % 50 == 0 { 200 } else { 16 });
        let text: String = (0..n)
            .map(|_| FRAGMENTS[rng.below(FRAGMENTS.len())])
            .collect();
        assert_eq!(
            HfPreTokenizer::Llama3.split(&text),
            regex_pieces(&llama3, &text),
            "llama3 on {text:?}"
        );
        assert_eq!(
            HfPreTokenizer::Qwen2.split(&text),
            regex_pieces(&qwen2, &text),
            "qwen2 on {text:?}"
        );
        assert_eq!(
            HfPreTokenizer::Gpt2.split(&text),
            regex_pieces(&gpt2, &text),
            "gpt2 on {text:?}"
        );
        assert_eq!(
            HfPreTokenizer::Gpt2Digits.split(&text),
            digits_then_gpt2(&gpt2, &text),
            "gpt2-digits on {text:?}"
        );
    }
}
