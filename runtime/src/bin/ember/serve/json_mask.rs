//! `response_format: {"type": "json_object"}`: a JSON object enforced while sampling. A small
//! pushdown recognizer of JSON (RFC 8259) prefixes ([`Json`]) and, each step, a token mask: a
//! token is allowed when its text keeps the output a prefix of a JSON object ([`mask`]).
//!
//! Decision: our own recognizer rather than llguidance — the JSON grammar is a page of code,
//! while llguidance brings a grammar compiler, its own tokenizer bridge and ~40 crates into a
//! binary meant to stay small; JSON Schema (`json_schema`) is not enforced yet and is refused.
//! Whitespace outside strings is limited to runs of two characters, so a model cannot loop on
//! spaces; the answer ends (finish_reason `stop`) as soon as the object closes.

/// What the recognizer expects next, outside a token being lexed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// The root `{` (whitespace before it allowed).
    Root,
    /// A value.
    Value,
    /// A key or `}` (right after `{`).
    KeyOrEnd,
    /// A key (after `,` in an object).
    Key,
    Colon,
    /// `,` or the container's end.
    CommaOrEnd,
    /// A value or `]` (right after `[`).
    ValueOrEnd,
    /// The root object is closed.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lex {
    None,
    /// Inside a string (`key`: an object key); `esc`: after `\`; `hex`: \u digits left.
    Str {
        key: bool,
        esc: bool,
        hex: u8,
    },
    /// Inside a number, in the grammar's state.
    Num(Num),
    /// Inside `true`, `false` or `null`: the literal and the bytes matched.
    Lit(&'static [u8], usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

impl Num {
    fn complete(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::Exp)
    }

    fn next(self, c: char) -> Option<Num> {
        Some(match (self, c) {
            (Num::Minus, '0') => Num::Zero,
            (Num::Minus, '1'..='9') => Num::Int,
            (Num::Int, '0'..='9') => Num::Int,
            (Num::Zero | Num::Int, '.') => Num::Dot,
            (Num::Dot | Num::Frac, '0'..='9') => Num::Frac,
            (Num::Zero | Num::Int | Num::Frac, 'e' | 'E') => Num::E,
            (Num::E, '+' | '-') => Num::ESign,
            (Num::E | Num::ESign | Num::Exp, '0'..='9') => Num::Exp,
            _ => return None,
        })
    }
}

/// Containers open deeper than this are refused (a bound on the stack).
const MAX_DEPTH: usize = 64;
/// Whitespace characters in a row allowed outside strings.
const MAX_WS_RUN: u8 = 2;

/// A JSON object being written: the state after the characters fed so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Json {
    /// Open containers, innermost last: true for an object.
    stack: Vec<bool>,
    expect: Expect,
    lex: Lex,
    ws: u8,
}

impl Json {
    pub(crate) fn new() -> Json {
        Json {
            stack: Vec::with_capacity(MAX_DEPTH),
            expect: Expect::Root,
            lex: Lex::None,
            ws: 0,
        }
    }

    /// The root object is closed.
    pub(crate) fn done(&self) -> bool {
        self.expect == Expect::Done
    }

    /// Feeds `s`; false (the state then undefined) when the text stops being a JSON prefix.
    pub(crate) fn feed(&mut self, s: &str) -> bool {
        s.chars().all(|c| self.push(c))
    }

    fn push(&mut self, c: char) -> bool {
        match self.lex {
            Lex::Str { key, esc, hex } => {
                self.lex = if hex > 0 {
                    if !c.is_ascii_hexdigit() {
                        return false;
                    }
                    Lex::Str {
                        key,
                        esc: false,
                        hex: hex - 1,
                    }
                } else if esc {
                    match c {
                        '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't' => Lex::Str {
                            key,
                            esc: false,
                            hex: 0,
                        },
                        'u' => Lex::Str {
                            key,
                            esc: false,
                            hex: 4,
                        },
                        _ => return false,
                    }
                } else {
                    match c {
                        '"' => {
                            self.lex = Lex::None;
                            self.expect = if key {
                                Expect::Colon
                            } else {
                                self.after_value()
                            };
                            return true;
                        }
                        '\\' => Lex::Str {
                            key,
                            esc: true,
                            hex: 0,
                        },
                        c if (c as u32) < 0x20 => return false,
                        _ => Lex::Str {
                            key,
                            esc: false,
                            hex: 0,
                        },
                    }
                };
                true
            }
            Lex::Num(n) => match n.next(c) {
                Some(n) => {
                    self.lex = Lex::Num(n);
                    true
                }
                None if n.complete() => {
                    self.lex = Lex::None;
                    self.expect = self.after_value();
                    self.structural(c)
                }
                None => false,
            },
            Lex::Lit(word, i) => {
                if word.get(i) != Some(&(c as u8)) || !c.is_ascii() {
                    return false;
                }
                if i + 1 == word.len() {
                    self.lex = Lex::None;
                    self.expect = self.after_value();
                } else {
                    self.lex = Lex::Lit(word, i + 1);
                }
                true
            }
            Lex::None => self.structural(c),
        }
    }

    /// What follows a complete value: inside a container `,` or its end; the root is done.
    fn after_value(&self) -> Expect {
        if self.stack.is_empty() {
            Expect::Done
        } else {
            Expect::CommaOrEnd
        }
    }

    fn structural(&mut self, c: char) -> bool {
        if matches!(c, ' ' | '\t' | '\n' | '\r') {
            if self.expect == Expect::Done {
                return false;
            }
            self.ws += 1;
            return self.ws <= MAX_WS_RUN;
        }
        self.ws = 0;
        match (self.expect, c) {
            (Expect::Root, '{') => self.open(true),
            (Expect::Value | Expect::ValueOrEnd, _) if self.value(c) => true,
            (Expect::ValueOrEnd, ']') | (Expect::KeyOrEnd, '}') => self.close(),
            (Expect::KeyOrEnd | Expect::Key, '"') => {
                self.lex = Lex::Str {
                    key: true,
                    esc: false,
                    hex: 0,
                };
                true
            }
            (Expect::Colon, ':') => {
                self.expect = Expect::Value;
                true
            }
            (Expect::CommaOrEnd, ',') => {
                self.expect = if self.stack.last() == Some(&true) {
                    Expect::Key
                } else {
                    Expect::Value
                };
                true
            }
            (Expect::CommaOrEnd, '}') if self.stack.last() == Some(&true) => self.close(),
            (Expect::CommaOrEnd, ']') if self.stack.last() == Some(&false) => self.close(),
            _ => false,
        }
    }

    /// Starts a value with `c`.
    fn value(&mut self, c: char) -> bool {
        match c {
            '{' => self.open(true),
            '[' => self.open(false),
            '"' => {
                self.lex = Lex::Str {
                    key: false,
                    esc: false,
                    hex: 0,
                };
                true
            }
            '-' => {
                self.lex = Lex::Num(Num::Minus);
                true
            }
            '0' => {
                self.lex = Lex::Num(Num::Zero);
                true
            }
            '1'..='9' => {
                self.lex = Lex::Num(Num::Int);
                true
            }
            't' => {
                self.lex = Lex::Lit(b"true", 1);
                true
            }
            'f' => {
                self.lex = Lex::Lit(b"false", 1);
                true
            }
            'n' => {
                self.lex = Lex::Lit(b"null", 1);
                true
            }
            _ => false,
        }
    }

    fn open(&mut self, object: bool) -> bool {
        if self.stack.len() >= MAX_DEPTH {
            return false;
        }
        self.stack.push(object);
        self.expect = if object {
            Expect::KeyOrEnd
        } else {
            Expect::ValueOrEnd
        };
        true
    }

    fn close(&mut self) -> bool {
        self.stack.pop();
        self.expect = self.after_value();
        true
    }
}

/// Sets the logits of every token that would break the JSON prefix `state` to −∞. `texts[id]`
/// is token id's text (`None`: a special token, or bytes that are not whole characters, never
/// allowed). `scratch` is reused between calls.
pub(crate) fn mask(state: &Json, texts: &[Option<String>], logits: &mut [f32], scratch: &mut Json) {
    for (id, l) in logits.iter_mut().enumerate() {
        let ok = match texts.get(id) {
            Some(Some(t)) if !t.is_empty() => {
                scratch.clone_from(state);
                scratch.feed(t)
            }
            _ => false,
        };
        if !ok {
            *l = f32::NEG_INFINITY;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(s: &str) -> Option<bool> {
        let mut j = Json::new();
        j.feed(s).then(|| j.done())
    }

    #[test]
    fn objects_and_prefixes_are_recognized() {
        for whole in [
            r#"{}"#,
            r#"{"a": 1}"#,
            r#" {"a": [1, -2.5e+3, 0, true, false, null, "x\"\u00e9\n"], "b": {"c": {}}}"#,
            r#"{"k":-0.0E-1}"#,
        ] {
            assert_eq!(accepts(whole), Some(true), "{whole}");
            serde_json::from_str::<serde_json::Value>(whole).unwrap();
            // Every prefix is accepted and not done.
            for (i, _) in whole.char_indices().skip(1) {
                assert_eq!(accepts(&whole[..i]), Some(false), "{:?}", &whole[..i]);
            }
        }
        for bad in [
            "[1]",
            "1",
            r#"{"a" 1}"#,
            r#"{"a": 01}"#,
            r#"{"a": tru }"#,
            r#"{,}"#,
            r#"{"a": 1,}"#,
            "{\"a\": \"\u{1}\"}",
            r#"{"a": 1} x"#,
            r#"{"a": 1}}"#,
            "{   }",
            r#"{"a": "\x"}"#,
            r#"{"a": 1.}"#,
            r#"{"a": -}"#,
        ] {
            assert_ne!(accepts(bad), Some(true), "{bad}");
        }
    }

    #[test]
    fn the_mask_allows_exactly_the_continuing_tokens() {
        let texts: Vec<Option<String>> = ["{", "}", " \"", "\"a\"", ":", "1", "x", "", "]"]
            .iter()
            .map(|s| Some(s.to_string()))
            .chain([None])
            .collect();
        let mut j = Json::new();
        assert!(j.feed("{\"a\":"));
        let mut logits = vec![0.0; texts.len()];
        mask(&j, &texts, &mut logits, &mut Json::new());
        let allowed: Vec<usize> = (0..texts.len()).filter(|&i| logits[i] == 0.0).collect();
        // `{`, ` "`, `"a"` and `1` start a value; nothing else does.
        assert_eq!(allowed, vec![0, 2, 3, 5]);
    }
}
