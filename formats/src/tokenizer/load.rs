//! Loading OpenAI's `encoder.json` + `vocab.bpe` and Hugging Face's `vocab.json` + `merges.txt`.
//!
//! Both pairs have the same content: a JSON object from token string to id, and a list of merges
//! "A B" (one per line, after an optional `#version` line). Token strings spell bytes with GPT-2's
//! printable byte alphabet (`bytes_to_unicode`: byte 0x20 is `Ġ`, 0x0A is `Ċ`, ...).
//!
//! emberlm merges by id (tiktoken's rule), so the files must agree with it: the merge results'
//! ids must increase down the merges list. Entries that are neither a single byte nor a merge
//! result (GPT-2's `<|endoftext|>`) become special tokens.

use std::collections::HashMap;
use std::path::Path;

use super::{Tokenizer, TokenizerError};

impl Tokenizer {
    /// Loads OpenAI's GPT-2 files (`encoder.json`, `vocab.bpe`).
    pub fn from_openai_files(
        encoder_json: impl AsRef<Path>,
        vocab_bpe: impl AsRef<Path>,
    ) -> Result<Tokenizer, TokenizerError> {
        let (vocab, vocab_name) = read(encoder_json.as_ref())?;
        let (merges, merges_name) = read(vocab_bpe.as_ref())?;
        Tokenizer::from_vocab_and_merges(&vocab, &vocab_name, &merges, &merges_name)
    }

    /// Loads Hugging Face's GPT-2 files (`vocab.json`, `merges.txt`).
    pub fn from_hf_files(
        vocab_json: impl AsRef<Path>,
        merges_txt: impl AsRef<Path>,
    ) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::from_openai_files(vocab_json, merges_txt)
    }

    /// Builds a tokenizer from the bytes of a JSON vocabulary and a merges file; the names are
    /// used in errors.
    pub fn from_vocab_and_merges(
        vocab_json: &[u8],
        vocab_name: &str,
        merges: &[u8],
        merges_name: &str,
    ) -> Result<Tokenizer, TokenizerError> {
        let entries = parse_json_vocab(vocab_json, vocab_name)?;
        let n = entries.len();
        let entry_err = |key: &str, detail: String| TokenizerError::VocabEntry {
            file: vocab_name.to_string(),
            entry: key.to_string(),
            detail,
        };
        if n > super::MAX_VOCAB_SIZE {
            return Err(entry_err(
                "",
                format!("more than {} entries", super::MAX_VOCAB_SIZE),
            ));
        }
        let mut tokens: Vec<Option<Vec<u8>>> = vec![None; n];
        let mut by_bytes: HashMap<Vec<u8>, u32> = HashMap::with_capacity(n);
        for (key, id) in &entries {
            let bytes = from_alphabet(key).map_err(|c| {
                entry_err(
                    key,
                    format!(
                        "character U+{:04X} is not in GPT-2's byte alphabet",
                        c as u32
                    ),
                )
            })?;
            let slot = usize::try_from(*id).ok().and_then(|i| tokens.get_mut(i));
            let Some(slot) = slot else {
                return Err(entry_err(
                    key,
                    format!("id {id} is not below the entry count {n}"),
                ));
            };
            if slot.is_some() {
                return Err(entry_err(key, format!("id {id} is used twice")));
            }
            if by_bytes.insert(bytes.clone(), *id as u32).is_some() {
                return Err(entry_err(key, "the same token appears twice".to_string()));
            }
            *slot = Some(bytes);
        }
        // Every id 0..n is used exactly once: n entries, distinct ids, all below n.
        let tokens: Vec<Vec<u8>> = tokens.into_iter().map(Option::unwrap_or_default).collect();

        let text = std::str::from_utf8(merges).map_err(|e| TokenizerError::MergeLine {
            file: merges_name.to_string(),
            line: 1 + merges[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count(),
            detail: "not valid UTF-8".to_string(),
        })?;
        let mut merged = vec![false; n];
        let mut last_id: Option<u32> = None;
        for (i, line) in text.lines().enumerate() {
            let line_err = |detail: String| TokenizerError::MergeLine {
                file: merges_name.to_string(),
                line: i + 1,
                detail,
            };
            if (i == 0 && line.starts_with("#version")) || line.is_empty() {
                continue;
            }
            let mut halves = line.split(' ');
            let (Some(a), Some(b), None) = (halves.next(), halves.next(), halves.next()) else {
                return Err(line_err(
                    "expected two tokens separated by one space".to_string(),
                ));
            };
            let mut joined = Vec::new();
            for half in [a, b] {
                let bytes = from_alphabet(half).map_err(|c| {
                    line_err(format!(
                        "character U+{:04X} is not in GPT-2's byte alphabet",
                        c as u32
                    ))
                })?;
                if bytes.is_empty() || !by_bytes.contains_key(&bytes) {
                    return Err(line_err(format!(
                        "{half:?} is not a token of the vocabulary"
                    )));
                }
                joined.extend_from_slice(&bytes);
            }
            let Some(&id) = by_bytes.get(&joined) else {
                return Err(line_err(format!(
                    "the merge {a}{b} is not a token of the vocabulary"
                )));
            };
            if last_id.is_some_and(|last| id <= last) {
                return Err(line_err(format!(
                    "merge result id {id} does not follow the previous merge's id (ids are merge ranks)"
                )));
            }
            last_id = Some(id);
            merged[id as usize] = true;
        }
        let mut specials: Vec<(String, u32)> = Vec::new();
        for (id, t) in tokens.iter().enumerate() {
            if t.len() > 1 && !merged[id] {
                let name = String::from_utf8(t.clone()).map_err(|_| {
                    entry_err(
                        &to_alphabet(t),
                        "special token is not valid UTF-8".to_string(),
                    )
                })?;
                specials.push((name, id as u32));
            }
        }
        let specials_ref: Vec<(&str, u32)> =
            specials.iter().map(|(s, id)| (s.as_str(), *id)).collect();
        Tokenizer::from_token_list(tokens.iter().map(Vec::as_slice), &specials_ref)
    }
}

impl Tokenizer {
    /// The inverse of [`Tokenizer::from_vocab_and_merges`]: Hugging Face's `vocab.json` (every
    /// id's bytes in GPT-2's alphabet; special tokens by name) and `merges.txt` (a `#version`
    /// line, then one merge per merged token in id order), from which that function (and
    /// `GPT2Tokenizer`) rebuild this tokenizer. For GPT-2's vocabulary these are OpenAI's
    /// `encoder.json` and `vocab.bpe`.
    ///
    /// Each token's merge is found by running byte-pair encoding on its bytes with the tokens of
    /// lower id (tiktoken's rule: ids are merge ranks), which ends in two parts for every token
    /// that encoding can produce. A token it cannot produce (a vocabulary edited by hand) gets
    /// no merge line and would come back as a special token: `Err` names the first such id.
    pub fn to_vocab_and_merges(&self) -> Result<(String, String), u32> {
        let n = self.vocab_size();
        let ids: HashMap<&[u8], u32> = (0..n as u32)
            .filter(|&id| !self.is_special(id))
            .filter_map(|id| Some((self.token_bytes(id)?, id)))
            .collect();
        let mut vocab = String::from("{");
        for id in 0..n as u32 {
            let key = to_alphabet(self.token_bytes(id).unwrap_or_default());
            if id > 0 {
                vocab.push_str(", ");
            }
            // The alphabet has no control characters: only quotes and backslashes need escapes.
            vocab.push('"');
            for c in key.chars() {
                if matches!(c, '"' | '\\') {
                    vocab.push('\\');
                }
                vocab.push(c);
            }
            vocab.push_str(&format!("\": {id}"));
        }
        vocab.push('}');
        let mut merges = String::from("#version: 0.2\n");
        for id in 0..n as u32 {
            let bytes = self.token_bytes(id).unwrap_or_default();
            if self.is_special(id) || bytes.len() < 2 {
                continue;
            }
            let (a, b) = split_by_rank(bytes, id, &ids).ok_or(id)?;
            merges.push_str(&format!("{} {}\n", to_alphabet(a), to_alphabet(b)));
        }
        Ok((vocab, merges))
    }
}

/// The two parts byte-pair encoding leaves of `token` (of id `limit`) when it may only use the
/// tokens of lower id: repeatedly merge the adjacent pair whose join has the lowest id. `None`
/// unless that ends in exactly two parts.
fn split_by_rank<'t>(
    token: &'t [u8],
    limit: u32,
    ids: &HashMap<&[u8], u32>,
) -> Option<(&'t [u8], &'t [u8])> {
    // Part boundaries: part i is token[cuts[i]..cuts[i + 1]].
    let mut cuts: Vec<usize> = (0..=token.len()).collect();
    loop {
        let best = (0..cuts.len().saturating_sub(2))
            .filter_map(|i| {
                let id = *ids.get(&token[cuts[i]..cuts[i + 2]])?;
                (id < limit).then_some((id, i))
            })
            .min();
        match best {
            Some((_, i)) => {
                cuts.remove(i + 1);
            }
            None => break,
        }
    }
    (cuts.len() == 3).then(|| (&token[..cuts[1]], &token[cuts[1]..]))
}

fn read(path: &Path) -> Result<(Vec<u8>, String), TokenizerError> {
    let name = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => Ok((bytes, name)),
        Err(e) => Err(TokenizerError::Io {
            path: name,
            kind: e.kind(),
        }),
    }
}

/// GPT-2's byte alphabet: the printable bytes stand for themselves, the other 68 bytes (in
/// increasing order) for U+0100, U+0101, ...
fn byte_to_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        b as char
    } else {
        let k = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(0x100 + k).unwrap_or(char::REPLACEMENT_CHARACTER)
    }
}

/// Decodes an alphabet string to bytes; `Err(c)` names the first character outside it.
pub(super) fn from_alphabet(s: &str) -> Result<Vec<u8>, char> {
    // Memoised inverse table: char_to_byte is slow, and a vocabulary has ~300k characters.
    thread_local! {
        static INV: [i16; 0x144] = {
            let mut t = [-1i16; 0x144];
            for b in 0..=255u8 {
                t[byte_to_char(b) as usize] = b as i16;
            }
            t
        };
    }
    INV.with(|inv| {
        s.chars()
            .map(|c| match inv.get(c as usize) {
                Some(&b) if b >= 0 => Ok(b as u8),
                _ => Err(c),
            })
            .collect()
    })
}

/// Encodes bytes in GPT-2's alphabet (for error messages).
fn to_alphabet(b: &[u8]) -> String {
    b.iter().map(|&x| byte_to_char(x)).collect()
}

/// Parses a JSON object whose values are non-negative integers: `{"key": 12, ...}`.
fn parse_json_vocab(src: &[u8], file: &str) -> Result<Vec<(String, u64)>, TokenizerError> {
    let mut p = Json { b: src, i: 0 };
    let err = |p: &Json<'_>, detail: &'static str| {
        let (line, column) = line_col(src, p.i);
        TokenizerError::Json {
            file: file.to_string(),
            line,
            column,
            detail,
        }
    };
    if let Err(e) = std::str::from_utf8(src) {
        p.i = e.valid_up_to();
        return Err(err(&p, "not valid UTF-8"));
    }
    let mut out = Vec::new();
    p.ws();
    if !p.eat(b'{') {
        return Err(err(&p, "expected '{'"));
    }
    p.ws();
    if !p.eat(b'}') {
        loop {
            p.ws();
            let key = p.string().map_err(|d| err(&p, d))?;
            p.ws();
            if !p.eat(b':') {
                return Err(err(&p, "expected ':'"));
            }
            p.ws();
            let value = p.uint().map_err(|d| err(&p, d))?;
            out.push((key, value));
            p.ws();
            if p.eat(b',') {
                continue;
            }
            if p.eat(b'}') {
                break;
            }
            return Err(err(&p, "expected ',' or '}'"));
        }
    }
    p.ws();
    if p.i != src.len() {
        return Err(err(&p, "unexpected data after the object"));
    }
    Ok(out)
}

/// 1-based (line, column) of byte offset `at`.
fn line_col(src: &[u8], at: usize) -> (usize, usize) {
    let before = &src[..at.min(src.len())];
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    let col = 1 + before.iter().rev().take_while(|&&b| b != b'\n').count();
    (line, col)
}

/// A cursor over JSON text known to be valid UTF-8.
struct Json<'a> {
    b: &'a [u8],
    i: usize,
}

impl Json<'_> {
    fn ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn uint(&mut self) -> Result<u64, &'static str> {
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(&d @ b'0'..=b'9') = self.b.get(self.i) {
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add((d - b'0') as u64))
                .ok_or("integer too large")?;
            self.i += 1;
        }
        if self.i == start {
            return Err("expected a non-negative integer");
        }
        if matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E')) {
            return Err("expected an integer, found a fraction or exponent");
        }
        Ok(v)
    }

    fn hex4(&mut self) -> Result<u32, &'static str> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = self.b.get(self.i).and_then(|&c| (c as char).to_digit(16));
            v = v * 16 + d.ok_or("expected 4 hex digits after \\u")?;
            self.i += 1;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, &'static str> {
        if !self.eat(b'"') {
            return Err("expected a string");
        }
        let mut s = Vec::new();
        loop {
            let Some(&c) = self.b.get(self.i) else {
                return Err("unterminated string");
            };
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.b.get(self.i) else {
                        return Err("unterminated string");
                    };
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if !(self.eat(b'\\') && self.eat(b'u')) {
                                    return Err("unpaired surrogate in \\u escape");
                                }
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err("unpaired surrogate in \\u escape");
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            char::from_u32(cp).ok_or("unpaired surrogate in \\u escape")?
                        }
                        _ => return Err("invalid escape"),
                    };
                    let mut buf = [0u8; 4];
                    s.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                0..=0x1F => return Err("control character in string"),
                _ => s.push(c),
            }
        }
        // The source is valid UTF-8 and escapes add whole characters.
        String::from_utf8(s).map_err(|_| "invalid UTF-8 in string")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocab_and_merges_round_trip_gpt2_and_a_trained_vocabulary() {
        let gpt2 = Tokenizer::gpt2();
        let (vocab, merges) = gpt2.to_vocab_and_merges().unwrap();
        // OpenAI's vocab.bpe: a version line and 50,000 merges (ids 256..50255).
        assert_eq!(merges.lines().count(), 50_001);
        assert!(
            merges.starts_with("#version: 0.2\nĠ t\n"),
            "{}",
            &merges[..40]
        );
        assert!(vocab.contains("\"<|endoftext|>\": 50256"));
        // The quote and backslash bytes are tokens too, and must come back as themselves.
        assert!(vocab.contains(r#""\"": "#) && vocab.contains(r#""\\": "#));
        let back = Tokenizer::from_vocab_and_merges(vocab.as_bytes(), "v", merges.as_bytes(), "m")
            .unwrap();
        assert_eq!(back.to_parts(), gpt2.to_parts());

        let text = "the theme of the thesis: then there, the other, the thing. ".repeat(20);
        let trained =
            super::super::train_bpe(&[&text], 300, &super::super::TrainOptions::default()).unwrap();
        let (vocab, merges) = trained.to_vocab_and_merges().unwrap();
        let back = Tokenizer::from_vocab_and_merges(vocab.as_bytes(), "v", merges.as_bytes(), "m")
            .unwrap();
        assert_eq!(back.to_parts(), trained.to_parts());
        assert_eq!(
            back.encode_to_vec("the other thesis", super::super::SpecialTokens::Allow),
            trained.encode_to_vec("the other thesis", super::super::SpecialTokens::Allow)
        );
    }

    /// The byte a character of GPT-2's alphabet stands for.
    fn char_to_byte(c: char) -> Option<u8> {
        let cp = c as u32;
        if cp < 0x100 {
            let b = cp as u8;
            (byte_to_char(b) == c).then_some(b)
        } else if cp < 0x100 + 68 {
            (0..=255u8).find(|&b| byte_to_char(b) == c)
        } else {
            None
        }
    }

    #[test]
    fn alphabet_matches_gpt2_examples() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(0), '\u{100}');
        assert_eq!(byte_to_char(0xAD), '\u{143}');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(from_alphabet("ĠHello"), Ok(b" Hello".to_vec()));
        assert_eq!(from_alphabet("a\u{144}"), Err('\u{144}'));
    }

    #[test]
    fn json_parser_unescapes_and_reports_positions() {
        let v = parse_json_vocab(
            br#"{"a": 1, "\u0120b\n": 22 , "\ud83d\ude00": 3}"#,
            "v.json",
        );
        assert_eq!(
            v,
            Ok(vec![
                ("a".into(), 1),
                ("\u{120}b\n".into(), 22),
                ("😀".into(), 3)
            ])
        );
        let e = parse_json_vocab(b"{\"a\": 1,\n \"b\" 2}", "v.json");
        assert_eq!(
            e,
            Err(TokenizerError::Json {
                file: "v.json".into(),
                line: 2,
                column: 6,
                detail: "expected ':'"
            })
        );
        let e = parse_json_vocab(b"{\"a\": -1}", "v.json").unwrap_err();
        assert!(matches!(
            e,
            TokenizerError::Json {
                detail: "expected a non-negative integer",
                ..
            }
        ));
        let e = parse_json_vocab(b"{\"a\": 1} x", "v.json").unwrap_err();
        assert!(matches!(
            e,
            TokenizerError::Json {
                detail: "unexpected data after the object",
                ..
            }
        ));
    }

    /// A complete toy vocabulary in GPT-2's file format: 256 bytes (ids in byte order here),
    /// then merges.
    fn toy_files(merges: &[&str], extra: &[(&str, u32)]) -> (String, String) {
        let mut json = String::from("{");
        for b in 0..=255u8 {
            let key = to_alphabet(&[b]).replace('\\', "\\\\").replace('"', "\\\"");
            json.push_str(&format!("\"{key}\": {b}, "));
        }
        for (k, id) in extra {
            json.push_str(&format!("\"{k}\": {id}, "));
        }
        json.truncate(json.len() - 2);
        json.push('}');
        let mut m = String::from("#version: 0.2\n");
        for line in merges {
            m.push_str(line);
            m.push('\n');
        }
        (json, m)
    }

    #[test]
    fn loads_a_toy_vocabulary_with_a_special_token() {
        let (json, merges) = toy_files(
            &["Ġ t", "Ġt h"],
            &[("Ġt", 256), ("Ġth", 257), ("<|endoftext|>", 258)],
        );
        let tok =
            Tokenizer::from_vocab_and_merges(json.as_bytes(), "v.json", merges.as_bytes(), "m.txt")
                .unwrap();
        assert_eq!(tok.vocab_size(), 259);
        assert_eq!(tok.eot_id(), Some(258));
        assert_eq!(tok.token_bytes(257), Some(&b" th"[..]));
        assert_eq!(
            tok.encode_to_vec(" the", crate::tokenizer::SpecialTokens::AsText),
            [257, b'e' as u32]
        );
    }

    #[test]
    fn bad_files_name_the_line_or_entry() {
        let (json, merges) = toy_files(&["Ġ t", "t h"], &[("Ġt", 256)]);
        let e =
            Tokenizer::from_vocab_and_merges(json.as_bytes(), "v.json", merges.as_bytes(), "m.txt");
        assert_eq!(
            e.unwrap_err(),
            TokenizerError::MergeLine {
                file: "m.txt".into(),
                line: 3,
                detail: "the merge th is not a token of the vocabulary".into()
            }
        );
        let (json, merges) = toy_files(&["Ġ t", "Ġt h"], &[("Ġth", 256), ("Ġt", 257)]);
        let e =
            Tokenizer::from_vocab_and_merges(json.as_bytes(), "v.json", merges.as_bytes(), "m.txt");
        assert!(
            matches!(e, Err(TokenizerError::MergeLine { line: 3, .. })),
            "{e:?}"
        );
        let (json, merges) = toy_files(&["Ġ t"], &[("Ġt", 256), ("Ġx", 256)]);
        let e =
            Tokenizer::from_vocab_and_merges(json.as_bytes(), "v.json", merges.as_bytes(), "m.txt");
        assert!(
            matches!(e, Err(TokenizerError::VocabEntry { ref entry, .. }) if entry == "Ġx"),
            "{e:?}"
        );
        let (json, merges) = toy_files(&["Ġ t"], &[("Ġt", 256), ("x\u{400}", 257)]);
        let e =
            Tokenizer::from_vocab_and_merges(json.as_bytes(), "v.json", merges.as_bytes(), "m.txt");
        assert_eq!(
            e.unwrap_err(),
            TokenizerError::VocabEntry {
                file: "v.json".into(),
                entry: "x\u{400}".into(),
                detail: "character U+0400 is not in GPT-2's byte alphabet".into()
            }
        );
        let (json, merges) = toy_files(&["Ġ t z"], &[("Ġt", 256)]);
        let e =
            Tokenizer::from_vocab_and_merges(json.as_bytes(), "v.json", merges.as_bytes(), "m.txt");
        assert!(
            matches!(e, Err(TokenizerError::MergeLine { line: 2, .. })),
            "{e:?}"
        );
        let e = Tokenizer::from_openai_files("/nonexistent/encoder.json", "/nonexistent/vocab.bpe");
        assert_eq!(
            e.unwrap_err(),
            TokenizerError::Io {
                path: "/nonexistent/encoder.json".into(),
                kind: std::io::ErrorKind::NotFound
            }
        );
    }
}
