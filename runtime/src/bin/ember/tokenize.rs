//! `ember tokenize` and `ember detokenize`.

use super::*;

#[derive(FromArgs, Debug)]
/// Print the token ids of a text (GPT-2's vocabulary when no model is given): with a model file,
/// a tokenizer file from `ember-train tokenizer`, or a Hugging Face tokenizer.json (or the
/// directory holding it).
#[argh(subcommand, name = "tokenize")]
pub(crate) struct TokenizeArgs {
    /// a model file, a tokenizer file, a tokenizer.json or its directory (default: GPT-2's)
    #[argh(positional)]
    model: Option<PathBuf>,
    /// the text
    #[argh(option)]
    text: Option<String>,
    /// read the text from this file (- for standard input; it may hold any byte a text can,
    /// NUL included, which a command line cannot)
    #[argh(option)]
    file: Option<PathBuf>,
    /// treat special-token names (<|endoftext|>, ...) as plain text
    #[argh(switch)]
    no_special: bool,
    /// add what the tokenizer's post-processor adds (a Hugging Face tokenizer's BOS/EOS)
    #[argh(switch)]
    bos: bool,
    /// print one JSON object (tokens, count)
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs, Debug)]
/// Print the text of token ids (GPT-2's vocabulary when no model is given).
#[argh(subcommand, name = "detokenize")]
pub(crate) struct DetokenizeArgs {
    /// a model file, a tokenizer file, a tokenizer.json or its directory (default: GPT-2's)
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
    // A Hugging Face tokenizer.json, or a model directory holding one.
    let json = if p.is_dir() {
        let j = p.join("tokenizer.json");
        if !j.is_file() {
            return Err(format!("{}: is a directory without a tokenizer.json", p.display()).into());
        }
        Some(j)
    } else if p.extension().is_some_and(|e| e == "json") {
        Some(p.clone())
    } else {
        None
    };
    if let Some(j) = json {
        return Tokenizer::from_hf_json_file(&j)
            .map(std::borrow::Cow::Owned)
            .map_err(|e| format!("{}: {e}", j.display()).into());
    }
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
    let text = match (&a.text, &a.file) {
        (Some(t), None) => t.clone(),
        (None, Some(f)) => read_text(f, "--file")?,
        _ => return Err(usage("give the text with exactly one of --text and --file")),
    };
    let tok = tokenizer_for(&a.model)?;
    let special = if a.no_special {
        SpecialTokens::AsText
    } else {
        SpecialTokens::Allow
    };
    let mut ids = Vec::new();
    if a.bos {
        ids.extend_from_slice(tok.bos_ids());
    }
    ids.extend(tok.encode_to_vec(&text, special));
    if a.bos {
        if let Some(hf) = tok.hf_parts() {
            ids.extend_from_slice(&hf.post_suffix);
        }
    }
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
