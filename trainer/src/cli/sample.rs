//! Samples during training: the current weights are written to an in-memory f32 `.ember` file and
//! run by the runtime (`emberlm_runtime::Session`, KV cache), greedy as the book's
//! `generate_text_simple`.

use crate::family::FamilyModel;
use crate::model::Gpt;
use emberlm_formats::ember::{AlignedBytes, DType, EmberWriter, write_f32s};
use emberlm_formats::meta::{self, Task};
use emberlm_formats::tokenizer::{SpecialTokens, Tokenizer};
use emberlm_runtime::{GenerateOptions, Model, Sampling, Session, SessionOptions, Stop};
use std::ops::ControlFlow;

/// The model as an f32 `.ember` file in memory (configuration, language-model task, tensors).
pub fn ember_bytes(model: &Gpt) -> Result<AlignedBytes, String> {
    let cfg = model.config();
    let mut w = EmberWriter::new();
    meta::put_config(&mut w, cfg).map_err(|e| e.to_string())?;
    meta::put_task(&mut w, &Task::LanguageModel).map_err(|e| e.to_string())?;
    let tensors = model.tensors();
    for t in tensors {
        w.add_tensor(&t.name, DType::F32, &t.shape)
            .map_err(|e| e.to_string())?;
    }
    let params = model.params();
    let bytes = w
        .to_vec(|i, _, out| write_f32s(out, &params[tensors[i].range()]))
        .map_err(|e| e.to_string())?;
    Ok(AlignedBytes::copy_from(&bytes))
}

/// `prompt` followed by `n` greedily chosen tokens, decoded (ids the tokenizer does not know,
/// possible with a padded vocabulary, become U+FFFD). The prompt is cropped to its last
/// context − 1 tokens; an empty prompt starts from `<|endoftext|>` (or id 0).
pub fn greedy(
    model: &Gpt,
    tok: &Tokenizer,
    prompt: &str,
    n: usize,
    threads: usize,
) -> Result<String, String> {
    greedy_from(&ember_bytes(model)?, tok, prompt, n, threads)
}

/// A model of the modern families as an f32 `.ember` file in memory.
pub fn family_ember_bytes(model: &FamilyModel) -> Result<AlignedBytes, String> {
    let mut w = EmberWriter::new();
    meta::put_model_config(&mut w, model.config()).map_err(|e| e.to_string())?;
    meta::put_task(&mut w, &Task::LanguageModel).map_err(|e| e.to_string())?;
    let tensors = model.tensors();
    for (name, shape, _) in &tensors {
        w.add_tensor(name, DType::F32, shape)
            .map_err(|e| e.to_string())?;
    }
    let bytes = w
        .to_vec(|i, _, out| write_f32s(out, tensors[i].2))
        .map_err(|e| e.to_string())?;
    Ok(AlignedBytes::copy_from(&bytes))
}

/// [`greedy`] for a model of the modern families.
pub fn greedy_family(
    model: &FamilyModel,
    tok: &Tokenizer,
    prompt: &str,
    n: usize,
    threads: usize,
) -> Result<String, String> {
    greedy_from(&family_ember_bytes(model)?, tok, prompt, n, threads)
}

/// [`greedy`] on a model given as `.ember` bytes.
fn greedy_from(
    bytes: &AlignedBytes,
    tok: &Tokenizer,
    prompt: &str,
    n: usize,
    threads: usize,
) -> Result<String, String> {
    let m = Model::from_bytes(bytes).map_err(|e| e.to_string())?;
    let ctx = m.config().context_length;
    let mut ids = tok.encode_to_vec(prompt, SpecialTokens::Allow);
    if ids.is_empty() {
        ids.push(tok.eot_id().unwrap_or(0));
    }
    if ids.len() >= ctx {
        ids.drain(..ids.len() + 1 - ctx);
    }
    let opts = SessionOptions {
        threads,
        ..SessionOptions::default()
    };
    let mut s = Session::new(&m, &opts).map_err(|e| e.to_string())?;
    let mut out = ids.clone();
    s.generate(
        &ids,
        &Sampling::default(),
        &GenerateOptions {
            max_tokens: n,
            stop: Stop::None,
            slide: true,
        },
        |t| {
            out.push(t);
            ControlFlow::Continue(())
        },
    )
    .map_err(|e| e.to_string())?;
    let mut text = Vec::new();
    for id in out {
        text.extend_from_slice(tok.token_bytes(id).unwrap_or("\u{FFFD}".as_bytes()));
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}
