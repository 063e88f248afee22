//! Loading Hugging Face `tokenizer.json` files (`model.type == "BPE"`), behind the `hf` feature.
//!
//! JSON is parsed with `serde_json` (an optional dependency enabled by `hf`); the encode and
//! decode paths and the `.ember` storage need no JSON. What is recognised, and nothing else
//! (anything else is a [`TokenizerError::HfUnsupported`] naming the field and value):
//!
//! - model: BPE without dropout, `continuing_subword_prefix` or `end_of_word_suffix`; merges as
//!   `"a b"` strings or `["a", "b"]` pairs; `ignore_merges`, `byte_fallback`, `fuse_unk`,
//!   `unk_token`.
//! - normalizer: none, `NFC`, `Replace(" " -> "▁")`, `Prepend("▁")`, or a `Sequence` of those.
//! - pre-tokenizer: `ByteLevel` (with GPT-2's regex or none), a `Sequence` of a `Split` with one
//!   of the known regexes (GPT-2, Llama 3, Qwen2; matched by exact string, behaviour Isolated)
//!   and `ByteLevel` without regex, a `Sequence` of `Digits` (`individual_digits`) and
//!   `ByteLevel` with regex (SmolLM2), `Metaspace` (`split: false`), or none.
//! - post-processor: none, `ByteLevel`, `TemplateProcessing` (its `single` template: special
//!   tokens before and after `$A`), `RobertaProcessing` / `BertProcessing`, or a `Sequence`.
//! - `trim_offsets` (ByteLevel) only changes offsets, which emberlm does not produce: ignored.
//! - decoder: `ByteLevel`, `Metaspace`, or a `Sequence` of `Replace("▁" -> " ")`,
//!   `ByteFallback`, `Fuse`, `Strip(" ", start <= 1, stop 0)`.
//! - added tokens: split out of the raw text before normalization (leftmost, then longest), all
//!   of them stored as special tokens, those with `special: false` listed in
//!   [`HfParts::nonspecial`]; `lstrip` / `rstrip` take the white space before / after a match
//!   into it. `single_word` is refused (its word boundary is the regex `\w`, Unicode tables
//!   emberlm does not carry). `normalized: true` tokens are matched on the raw text too (the
//!   same unless the normalizer changes them).

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::hf_model::{HfModelKind, HfParts, HfPreTokenizer, MAX_MERGES, Prepend};
use super::{MAX_TOKEN_BYTES, MAX_VOCAB_SIZE, Tokenizer, TokenizerError, TokenizerParts, load};

/// Largest `tokenizer.json` accepted (Gemma 3's is about 33 MB).
pub const MAX_JSON_BYTES: usize = 256 << 20;

/// GPT-2's regex as `tokenizers` writes it.
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's split regex.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn bad(field: impl Into<String>, detail: impl Into<String>) -> TokenizerError {
    TokenizerError::HfJson {
        field: field.into(),
        detail: detail.into(),
    }
}

fn unsupported(field: impl Into<String>, value: &Value) -> TokenizerError {
    let mut value = value.to_string();
    if value.len() > 200 {
        let mut cut = 200;
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        value.truncate(cut);
        value.push('…');
    }
    TokenizerError::HfUnsupported {
        field: field.into(),
        value,
    }
}

fn str_of<'a>(v: &'a Value, field: &str) -> Result<&'a str, TokenizerError> {
    v.as_str().ok_or_else(|| bad(field, "expected a string"))
}

/// A boolean field that may be absent or null (then `default`).
fn flag(obj: &Value, key: &str, default: bool, field: &str) -> Result<bool, TokenizerError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(format!("{field}.{key}"), "expected a boolean")),
    }
}

fn type_of<'a>(v: &'a Value, field: &str) -> Result<&'a str, TokenizerError> {
    str_of(
        v.get("type")
            .ok_or_else(|| bad(field, "missing \"type\""))?,
        &format!("{field}.type"),
    )
}

fn array<'a>(v: Option<&'a Value>, field: &str) -> Result<&'a Vec<Value>, TokenizerError> {
    v.and_then(Value::as_array)
        .ok_or_else(|| bad(field, "expected an array"))
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json` (see the module doc for what is supported).
    pub fn from_hf_json_file(path: impl AsRef<Path>) -> Result<Tokenizer, TokenizerError> {
        let path = path.as_ref();
        let io = |e: std::io::Error| TokenizerError::Io {
            path: path.display().to_string(),
            kind: e.kind(),
        };
        // Refuse a huge file before reading it.
        if std::fs::metadata(path).map_err(io)?.len() > MAX_JSON_BYTES as u64 {
            return Err(bad("", format!("larger than {MAX_JSON_BYTES} bytes")));
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Tokenizer::from_hf_json(&bytes)
    }

    /// Builds a tokenizer from the bytes of a Hugging Face `tokenizer.json`.
    pub fn from_hf_json(bytes: &[u8]) -> Result<Tokenizer, TokenizerError> {
        if bytes.len() > MAX_JSON_BYTES {
            return Err(bad("", format!("larger than {MAX_JSON_BYTES} bytes")));
        }
        let root: Value = serde_json::from_slice(bytes).map_err(|e| bad("", e.to_string()))?;
        let model = root.get("model").ok_or_else(|| bad("model", "missing"))?;
        let mtype = type_of(model, "model")?;
        if mtype != "BPE" {
            return Err(unsupported("model.type", &model["type"]));
        }
        for key in ["dropout", "continuing_subword_prefix", "end_of_word_suffix"] {
            match model.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s.is_empty() => {}
                Some(v) => return Err(unsupported(format!("model.{key}"), v)),
            }
        }
        let (kind, pretokenizer, add_prefix_space, meta_prepend) =
            pre_tokenizer(root.get("pre_tokenizer").unwrap_or(&Value::Null))?;
        let norm = normalizer(root.get("normalizer").unwrap_or(&Value::Null), "normalizer")?;
        if kind == HfModelKind::ByteLevel && (norm.replace_space || norm.prepend) {
            return Err(unsupported("normalizer", &root["normalizer"]));
        }
        let prepend = match (norm.prepend, meta_prepend) {
            (true, Some(_)) => return Err(unsupported("normalizer", &root["normalizer"])),
            (true, None) => Prepend::Always,
            (false, Some(p)) => p,
            (false, None) => Prepend::Never,
        };
        let replace_space = norm.replace_space || meta_prepend.is_some();
        if kind == HfModelKind::SentencePiece && !replace_space {
            return Err(unsupported("pre_tokenizer", &root["pre_tokenizer"]));
        }
        let strip_leading_space = decoder(root.get("decoder").unwrap_or(&Value::Null), kind)?;

        // Vocabulary and added tokens: every id 0..n exactly once.
        let vocab = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("model.vocab", "expected an object"))?;
        let added = match root.get("added_tokens") {
            None | Some(Value::Null) => &[][..],
            v => array(v, "added_tokens")?.as_slice(),
        };
        if vocab.len() + added.len() > MAX_VOCAB_SIZE {
            return Err(bad("model.vocab", "more entries than MAX_VOCAB_SIZE"));
        }
        let mut slots: Vec<Option<Vec<u8>>> = Vec::new();
        let mut put = |id: u64, bytes: Vec<u8>, field: &str, overwrite: bool| {
            let i = usize::try_from(id)
                .ok()
                .filter(|&i| i < MAX_VOCAB_SIZE)
                .ok_or_else(|| bad(field, "id beyond MAX_VOCAB_SIZE"))?;
            if bytes.is_empty() || bytes.len() > MAX_TOKEN_BYTES {
                return Err(bad(field, "empty token or longer than MAX_TOKEN_BYTES"));
            }
            if slots.len() <= i {
                slots.resize(i + 1, None);
            }
            if slots[i].is_some() && !overwrite {
                return Err(bad(field, format!("id {i} given twice")));
            }
            slots[i] = Some(bytes);
            Ok(())
        };
        let mut by_str: HashMap<&str, u32> = HashMap::with_capacity(vocab.len());
        for (key, id) in vocab {
            let field = format!("model.vocab[{key:?}]");
            let id = id
                .as_u64()
                .ok_or_else(|| bad(&field, "expected a non-negative integer"))?;
            let bytes = match kind {
                HfModelKind::ByteLevel => load::from_alphabet(key)
                    .map_err(|c| bad(&field, format!("{c:?} is not in the byte-level alphabet")))?,
                HfModelKind::SentencePiece => key.as_bytes().to_vec(),
            };
            put(id, bytes, &field, false)?;
            by_str.insert(key.as_str(), id as u32);
        }
        let mut specials: Vec<(String, u32)> = Vec::new();
        let mut nonspecial = Vec::new();
        let (mut lstrip, mut rstrip) = (Vec::new(), Vec::new());
        for (k, a) in added.iter().enumerate() {
            let field = format!("added_tokens[{k}]");
            let id = a
                .get("id")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad(format!("{field}.id"), "expected a non-negative integer"))?;
            let content = str_of(
                a.get("content").unwrap_or(&Value::Null),
                &format!("{field}.content"),
            )?;
            if flag(a, "single_word", false, &field)? {
                return Err(unsupported(
                    format!("{field}.single_word"),
                    &Value::Bool(true),
                ));
            }
            put(id, content.as_bytes().to_vec(), &field, true)?;
            specials.push((content.to_string(), id as u32));
            if flag(a, "lstrip", false, &field)? {
                lstrip.push(id as u32);
            }
            if flag(a, "rstrip", false, &field)? {
                rstrip.push(id as u32);
            }
            if !flag(a, "special", false, &field)? {
                nonspecial.push(id as u32);
            }
        }
        let mut parts = TokenizerParts::default();
        for (id, slot) in slots.iter().enumerate() {
            let t = slot
                .as_ref()
                .ok_or_else(|| bad("model.vocab", format!("no token has id {id}")))?;
            parts.tokens.extend_from_slice(t);
            let end = u32::try_from(parts.tokens.len())
                .map_err(|_| bad("model.vocab", "more than 4 GiB of token bytes"))?;
            parts.token_ends.push(end);
        }
        for (name, id) in specials {
            parts.special_names.push(name);
            parts.special_ids.push(id);
        }

        let merges_v = array(model.get("merges"), "model.merges")?;
        if merges_v.len() > MAX_MERGES {
            return Err(bad("model.merges", "more merges than MAX_MERGES"));
        }
        let mut merges = Vec::with_capacity(merges_v.len());
        for (k, m) in merges_v.iter().enumerate() {
            let field = format!("model.merges[{k}]");
            let (a, b) = match m {
                Value::String(s) => {
                    let mut it = s.split(' ');
                    match (it.next(), it.next(), it.next()) {
                        (Some(a), Some(b), None) => (a, b),
                        _ => return Err(bad(field, "expected \"a b\"")),
                    }
                }
                Value::Array(p) if p.len() == 2 => (str_of(&p[0], &field)?, str_of(&p[1], &field)?),
                _ => return Err(bad(field, "expected \"a b\" or [\"a\", \"b\"]")),
            };
            let id = |t: &str| {
                by_str
                    .get(t)
                    .copied()
                    .ok_or_else(|| bad(&field, format!("{t:?} is not in the vocabulary")))
            };
            merges.push([id(a)?, id(b)?]);
        }
        let unk_id = match model.get("unk_token") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let s = str_of(v, "model.unk_token")?;
                Some(by_str.get(s).copied().ok_or_else(|| {
                    bad("model.unk_token", format!("{s:?} is not in the vocabulary"))
                })?)
            }
        };
        let (post_prefix, post_suffix) = post_processor(
            root.get("post_processor").unwrap_or(&Value::Null),
            "post_processor",
            &by_str,
        )?;
        let hf = HfParts {
            model: kind,
            pretokenizer,
            add_prefix_space,
            nfc: norm.nfc,
            replace_space,
            prepend,
            merges,
            ignore_merges: flag(model, "ignore_merges", false, "model")?,
            byte_fallback: flag(model, "byte_fallback", false, "model")?,
            fuse_unk: flag(model, "fuse_unk", false, "model")?,
            unk_id,
            post_prefix,
            post_suffix,
            strip_leading_space,
            nonspecial,
            lstrip,
            rstrip,
        };
        Tokenizer::from_hf_parts(parts, hf)
    }
}

/// The pre-tokenizer: model kind, split, `add_prefix_space`, Metaspace prepend scheme.
fn pre_tokenizer(
    v: &Value,
) -> Result<(HfModelKind, HfPreTokenizer, bool, Option<Prepend>), TokenizerError> {
    let field = "pre_tokenizer";
    if v.is_null() {
        return Ok((
            HfModelKind::SentencePiece,
            HfPreTokenizer::Whole,
            false,
            None,
        ));
    }
    let byte_level = |b: &Value, f: &str| -> Result<(bool, bool), TokenizerError> {
        Ok((
            flag(b, "add_prefix_space", false, f)?,
            flag(b, "use_regex", true, f)?,
        ))
    };
    match type_of(v, field)? {
        "ByteLevel" => {
            let (prefix, regex) = byte_level(v, field)?;
            let p = if regex {
                HfPreTokenizer::Gpt2
            } else {
                HfPreTokenizer::Whole
            };
            Ok((HfModelKind::ByteLevel, p, prefix, None))
        }
        "Sequence" => {
            let items = array(v.get("pretokenizers"), "pre_tokenizer.pretokenizers")?;
            let [split, bl] = items.as_slice() else {
                return Err(unsupported(field, v));
            };
            let f0 = "pre_tokenizer.pretokenizers[0]";
            let f1 = "pre_tokenizer.pretokenizers[1]";
            if type_of(split, f0)? == "Digits" && type_of(bl, f1)? == "ByteLevel" {
                // SmolLM2.
                let (prefix, regex) = byte_level(bl, f1)?;
                if !regex || !flag(split, "individual_digits", false, f0)? {
                    return Err(unsupported(field, v));
                }
                return Ok((
                    HfModelKind::ByteLevel,
                    HfPreTokenizer::Gpt2Digits,
                    prefix,
                    None,
                ));
            }
            if type_of(split, f0)? != "Split" || type_of(bl, f1)? != "ByteLevel" {
                return Err(unsupported(field, v));
            }
            let (prefix, regex) = byte_level(bl, f1)?;
            if regex {
                return Err(unsupported(format!("{f1}.use_regex"), &Value::Bool(true)));
            }
            if split.get("behavior").and_then(Value::as_str) != Some("Isolated") {
                return Err(unsupported(
                    format!("{f0}.behavior"),
                    split.get("behavior").unwrap_or(&Value::Null),
                ));
            }
            if flag(split, "invert", false, f0)? {
                return Err(unsupported(format!("{f0}.invert"), &Value::Bool(true)));
            }
            let pattern = split.get("pattern").and_then(|p| p.get("Regex"));
            let p = match pattern.and_then(Value::as_str) {
                Some(GPT2_REGEX) => HfPreTokenizer::Gpt2,
                Some(LLAMA3_REGEX) => HfPreTokenizer::Llama3,
                Some(QWEN2_REGEX) => HfPreTokenizer::Qwen2,
                _ => {
                    return Err(unsupported(
                        format!("{f0}.pattern"),
                        split.get("pattern").unwrap_or(&Value::Null),
                    ));
                }
            };
            Ok((HfModelKind::ByteLevel, p, prefix, None))
        }
        "Metaspace" => {
            if v.get("replacement").and_then(Value::as_str) != Some("\u{2581}") {
                return Err(unsupported(
                    "pre_tokenizer.replacement",
                    v.get("replacement").unwrap_or(&Value::Null),
                ));
            }
            if flag(v, "split", true, field)? {
                return Err(unsupported("pre_tokenizer.split", &Value::Bool(true)));
            }
            let scheme = match v.get("prepend_scheme").and_then(Value::as_str) {
                Some("first") => Prepend::MetaspaceFirst,
                Some("always") => Prepend::MetaspaceAlways,
                Some("never") => Prepend::Never,
                None if flag(v, "add_prefix_space", true, field)? => Prepend::MetaspaceAlways,
                None => Prepend::Never,
                Some(_) => return Err(unsupported("pre_tokenizer.prepend_scheme", v)),
            };
            Ok((
                HfModelKind::SentencePiece,
                HfPreTokenizer::Whole,
                false,
                Some(scheme),
            ))
        }
        // Gemma splits on " " after its normalizer turned every space into "▁": a no-op.
        "Split"
            if v.get("pattern")
                .and_then(|p| p.get("String"))
                .and_then(Value::as_str)
                == Some(" ") =>
        {
            Ok((
                HfModelKind::SentencePiece,
                HfPreTokenizer::Whole,
                false,
                None,
            ))
        }
        _ => Err(unsupported(field, v)),
    }
}

#[derive(Default)]
struct Normalizer {
    nfc: bool,
    replace_space: bool,
    prepend: bool,
}

fn normalizer(v: &Value, field: &str) -> Result<Normalizer, TokenizerError> {
    let mut n = Normalizer::default();
    if v.is_null() {
        return Ok(n);
    }
    match type_of(v, field)? {
        "NFC" => n.nfc = true,
        "Replace"
            if v.get("pattern")
                .and_then(|p| p.get("String"))
                .and_then(Value::as_str)
                == Some(" ")
                && v.get("content").and_then(Value::as_str) == Some("\u{2581}") =>
        {
            n.replace_space = true
        }
        "Prepend" if v.get("prepend").and_then(Value::as_str) == Some("\u{2581}") => {
            n.prepend = true
        }
        "Sequence" => {
            let items = array(v.get("normalizers"), &format!("{field}.normalizers"))?;
            for (k, item) in items.iter().enumerate() {
                let m = normalizer(item, &format!("{field}.normalizers[{k}]"))?;
                n.nfc |= m.nfc;
                n.replace_space |= m.replace_space;
                n.prepend |= m.prepend;
            }
        }
        _ => return Err(unsupported(field, v)),
    }
    Ok(n)
}

/// The decoder; returns whether it drops the leading space (SentencePiece `Strip`).
fn decoder(v: &Value, kind: HfModelKind) -> Result<bool, TokenizerError> {
    let field = "decoder";
    if v.is_null() {
        return Err(unsupported(field, v));
    }
    let t = type_of(v, field)?;
    match (kind, t) {
        (HfModelKind::ByteLevel, "ByteLevel") => Ok(false),
        (HfModelKind::SentencePiece, "Metaspace") => Ok(v
            .get("prepend_scheme")
            .and_then(Value::as_str)
            .is_none_or(|s| s != "never")),
        (HfModelKind::SentencePiece, "Sequence") => {
            let items = array(v.get("decoders"), "decoder.decoders")?;
            let mut strip = false;
            for (k, d) in items.iter().enumerate() {
                let f = format!("decoder.decoders[{k}]");
                match type_of(d, &f)? {
                    "ByteFallback" | "Fuse" => {}
                    "Replace"
                        if d.get("pattern")
                            .and_then(|p| p.get("String"))
                            .and_then(Value::as_str)
                            == Some("\u{2581}")
                            && d.get("content").and_then(Value::as_str) == Some(" ") => {}
                    "Strip"
                        if d.get("content").and_then(Value::as_str) == Some(" ")
                            && d.get("stop").and_then(Value::as_u64) == Some(0)
                            && d.get("start")
                                .and_then(Value::as_u64)
                                .is_some_and(|s| s <= 1) =>
                    {
                        strip = d.get("start").and_then(Value::as_u64) == Some(1);
                    }
                    _ => return Err(unsupported(f, d)),
                }
            }
            Ok(strip)
        }
        _ => Err(unsupported(field, v)),
    }
}

/// The post-processor's ids before and after the text of a single sequence.
fn post_processor(
    v: &Value,
    field: &str,
    by_str: &HashMap<&str, u32>,
) -> Result<(Vec<u32>, Vec<u32>), TokenizerError> {
    if v.is_null() {
        return Ok((Vec::new(), Vec::new()));
    }
    let pair_id = |key: &str| -> Result<u32, TokenizerError> {
        let f = format!("{field}.{key}");
        let p = array(v.get(key), &f)?;
        p.get(1)
            .and_then(Value::as_u64)
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| bad(f, "expected [token, id]"))
    };
    match type_of(v, field)? {
        "ByteLevel" => Ok((Vec::new(), Vec::new())),
        "RobertaProcessing" | "BertProcessing" => {
            Ok((vec![pair_id("cls")?], vec![pair_id("sep")?]))
        }
        "Sequence" => {
            let items = array(v.get("processors"), &format!("{field}.processors"))?;
            let (mut pre, mut post) = (Vec::new(), Vec::new());
            for (k, item) in items.iter().enumerate() {
                let (p, s) = post_processor(item, &format!("{field}.processors[{k}]"), by_str)?;
                pre.extend(p);
                post.extend(s);
            }
            Ok((pre, post))
        }
        "TemplateProcessing" => {
            let single = array(v.get("single"), &format!("{field}.single"))?;
            let (mut pre, mut post, mut seen_a) = (Vec::new(), Vec::new(), false);
            for (k, piece) in single.iter().enumerate() {
                let f = format!("{field}.single[{k}]");
                if let Some(s) = piece.get("SpecialToken") {
                    let name = str_of(s.get("id").unwrap_or(&Value::Null), &f)?;
                    let ids = v
                        .get("special_tokens")
                        .and_then(|t| t.get(name))
                        .and_then(|t| t.get("ids"))
                        .and_then(Value::as_array);
                    let ids: Vec<u32> =
                        match ids {
                            Some(a) => a
                                .iter()
                                .map(|x| x.as_u64().and_then(|i| u32::try_from(i).ok()))
                                .collect::<Option<_>>()
                                .ok_or_else(|| bad(&f, "bad special token ids"))?,
                            None => vec![*by_str.get(name).ok_or_else(|| {
                                bad(&f, format!("{name:?} is not a known token"))
                            })?],
                        };
                    if seen_a { &mut post } else { &mut pre }.extend(ids);
                } else if piece
                    .get("Sequence")
                    .and_then(|s| s.get("id"))
                    .and_then(Value::as_str)
                    == Some("A")
                    && !seen_a
                {
                    seen_a = true;
                } else {
                    return Err(unsupported(f, piece));
                }
            }
            Ok((pre, post))
        }
        _ => Err(unsupported(field, v)),
    }
}
