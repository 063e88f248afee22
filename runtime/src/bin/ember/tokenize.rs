//! `ember tokenize` and `ember detokenize`.

use super::*;

#[derive(FromArgs, Debug)]
/// Print the token ids of a text (GPT-2's vocabulary when no model is given).
#[argh(subcommand, name = "tokenize")]
pub(crate) struct TokenizeArgs {
    /// a model file, or a tokenizer file from `ember-train tokenizer` (default: GPT-2's)
    #[argh(positional)]
    model: Option<PathBuf>,
    /// the text
    #[argh(option)]
    text: String,
    /// treat <|endoftext|> as plain text instead of the special token
    #[argh(switch)]
    no_special: bool,
    /// print one JSON object (tokens, count)
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs, Debug)]
/// Print the text of token ids (GPT-2's vocabulary when no model is given).
#[argh(subcommand, name = "detokenize")]
pub(crate) struct DetokenizeArgs {
    /// a model file, or a tokenizer file from `ember-train tokenizer` (default: GPT-2's)
    #[argh(positional)]
    model: Option<PathBuf>,
    /// comma-separated token ids, e.g. 15496,11,995
    #[argh(option)]
    ids: String,
    /// print one JSON object (text)
    #[argh(switch)]
    json: bool,
}

/// Tokenizer-only files (`ember-train tokenizer`) are read whole: at most this big.
const MAX_TOKENIZER_FILE: u64 = 64 << 20;

/// The tokenizer of `tokenize` / `detokenize`: GPT-2's when no file is given, else the file's:
/// a model, or a tokenizer-only `.ember` file as `ember-train tokenizer` writes.
fn tokenizer_for(path: &Option<PathBuf>) -> Result<std::borrow::Cow<'static, Tokenizer>> {
    let Some(p) = path else {
        return Ok(std::borrow::Cow::Borrowed(Tokenizer::gpt2()));
    };
    let model_error = match open(p) {
        Ok(m) => {
            return tokenizer_of(&m)?
                .cloned()
                .map(std::borrow::Cow::Owned)
                .ok_or_else(|| format!("{}: this model file has no tokenizer", p.display()));
        }
        Err(e) => e,
    };
    // Not a model: perhaps a tokenizer file (the model's error stands otherwise).
    let small = std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() <= MAX_TOKENIZER_FILE);
    let bytes = if small { std::fs::read(p).ok() } else { None };
    let header = bytes
        .as_deref()
        .and_then(|b| emberlm_formats::ember::parse_header(b).ok());
    match header.map(|h| emberlm_formats::meta::get_tokenizer(&h)) {
        Some(Ok(Some(t))) => Ok(std::borrow::Cow::Owned(t)),
        _ => Err(model_error),
    }
}

pub(crate) fn tokenize(a: TokenizeArgs) -> Result<()> {
    let tok = tokenizer_for(&a.model)?;
    let special = if a.no_special {
        SpecialTokens::AsText
    } else {
        SpecialTokens::Allow
    };
    let ids = tok.encode_to_vec(&a.text, special);
    let s: Vec<String> = ids.iter().map(u32::to_string).collect();
    if a.json {
        println!("{{\"tokens\":[{}],\"count\":{}}}", s.join(","), ids.len());
    } else {
        println!("{}", s.join(","));
    }
    Ok(())
}

pub(crate) fn detokenize(a: DetokenizeArgs) -> Result<()> {
    let tok = tokenizer_for(&a.model)?;
    let ids = parse_ids(&a.ids, "--ids")?;
    let text = tok
        .decode_to_string(&ids)
        .map_err(|e| format!("--ids: {e}"))?;
    if a.json {
        println!("{{\"text\":{}}}", json_str(&text));
    } else {
        println!("{text}");
    }
    Ok(())
}
