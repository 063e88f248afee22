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

/// The tokenizer of `tokenize` / `detokenize`: GPT-2's when no file is given, else the file's:
/// a model, or a tokenizer-only `.ember` file as `ember-train tokenizer` writes.
fn tokenizer_for(path: &Option<PathBuf>) -> Result<std::borrow::Cow<'static, Tokenizer>> {
    let Some(p) = path else {
        return Ok(std::borrow::Cow::Borrowed(Tokenizer::gpt2()));
    };
    if let Some((t, _)) = tokenizer_file(p) {
        return Ok(std::borrow::Cow::Owned(t));
    }
    let m = open(p)?;
    match tokenizer_of(&m)? {
        Some(t) => Ok(std::borrow::Cow::Owned(t.clone())),
        None => Err(format!("{}: this model file has no tokenizer", p.display()).into()),
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
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "tokens": ids, "count": ids.len() })
        );
    } else {
        let s: Vec<String> = ids.iter().map(u32::to_string).collect();
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
        println!("{}", serde_json::json!({ "text": text }));
    } else {
        println!("{text}");
    }
    Ok(())
}
