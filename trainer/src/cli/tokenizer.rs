//! `ember-train tokenizer`: train a byte-level BPE vocabulary on text files.

use super::eval::read_all;
use super::{CliError, Console, Outcome, TokenizerArgs, failed};
use crate::checkpoint;
use crate::{note, say};
use emberlm_formats::tokenizer::{SpecialTokens, TrainOptions, train_bpe};
use serde_json::json;
use std::time::Instant;

/// `ember-train tokenizer --data FILE... --vocab-size N --out FILE`.
pub fn tokenizer(a: TokenizerArgs, con: &mut Console<'_>) -> Result<Outcome, CliError> {
    let (texts, bytes) = read_all(&a.data)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let tok = train_bpe(&refs, a.vocab_size, &TrainOptions::default())
        .map_err(|e| CliError::Usage(format!("--vocab-size {}: {e}", a.vocab_size)))?;
    let secs = t0.elapsed().as_secs_f64();
    if tok.vocab_size() < a.vocab_size {
        note!(
            con,
            "note: stopped at {} ids: no pair of tokens occurs twice more",
            tok.vocab_size()
        );
    }
    let file_bytes =
        checkpoint::write_tokenizer_file(&a.out, &tok).map_err(|e| failed(format!("--out {e}")))?;
    let tokens: usize = refs
        .iter()
        .map(|t| tok.encode_to_vec(t, SpecialTokens::Allow).len())
        .sum();
    let bpt = bytes as f64 / tokens.max(1) as f64;
    note!(con, "trained in {secs:.1}s");
    say!(
        con,
        "{}: {} ids; {bytes} bytes of training text → {tokens} tokens ({bpt:.2} bytes per token)",
        a.out.display(),
        tok.vocab_size()
    );
    Ok(Outcome {
        json: json!({
            "out": a.out,
            "vocab_size": tok.vocab_size(),
            "bytes_per_token": bpt,
            "tokens": tokens,
            "bytes": bytes,
            "file_bytes": file_bytes,
        }),
        exit_code: 0,
    })
}
