//! Samples during training: the current weights are written to an in-memory f32 `.ember` file and
//! run by the runtime (`emberlm_runtime::Session`, KV cache), greedy as the book's
//! `generate_text_simple`.

use crate::family::FamilyModel;
use crate::model::Gpt;
use emberlm_formats::ember::{DType, EmberWriter, TensorEntry, write_f32s};
use emberlm_formats::meta::{self, Task};
use emberlm_formats::tokenizer::{SpecialTokens, Tokenizer};
use emberlm_runtime::{GenerateOptions, Model, Sampling, Session, SessionOptions, Stop};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;

/// An `.ember` file in memory, 64-byte aligned as [`Model::from_bytes`] wants it, written in
/// place (one copy of the weights, not a vector and then its aligned copy).
pub struct EmberBuf {
    blocks: Vec<Block>,
    len: usize,
}

#[derive(Clone, Copy, bytemuck::Zeroable, bytemuck::Pod)]
#[repr(C, align(64))]
struct Block([u8; 64]);

impl std::fmt::Debug for EmberBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EmberBuf({} bytes)", self.len)
    }
}

impl std::ops::Deref for EmberBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &bytemuck::cast_slice::<Block, u8>(&self.blocks)[..self.len]
    }
}

/// Writes `w`'s file (tensor data from `fill`, as [`EmberWriter::write_to`]) into an [`EmberBuf`].
fn write_aligned(
    w: &EmberWriter,
    fill: impl FnMut(usize, &TensorEntry, &mut dyn Write) -> std::io::Result<()>,
) -> Result<EmberBuf, String> {
    let data = w.tensors().last().map_or(0, |t| t.offset + t.size);
    let len = usize::try_from(w.header_bytes().len() as u64 + data).map_err(|e| e.to_string())?;
    let mut blocks = vec![Block([0; 64]); len.div_ceil(64)];
    let mut out: &mut [u8] = &mut bytemuck::cast_slice_mut::<Block, u8>(&mut blocks)[..len];
    let written = w
        .write_to(&mut out, Path::new("<memory>"), fill)
        .map_err(|e| e.to_string())?;
    if written != len as u64 || !out.is_empty() {
        return Err(format!(
            "the in-memory model is {written} bytes, {len} expected"
        ));
    }
    Ok(EmberBuf { blocks, len })
}

/// The model as an f32 `.ember` file in memory (configuration, language-model task, tensors).
pub fn ember_bytes(model: &Gpt) -> Result<EmberBuf, String> {
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
    write_aligned(&w, |i, _, out| write_f32s(out, &params[tensors[i].range()]))
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

/// A model of the modern families as an f32 `.ember` file in memory (any LoRA adapters it runs
/// directly merged in).
pub fn family_ember_bytes(model: &FamilyModel) -> Result<EmberBuf, String> {
    let mut w = EmberWriter::new();
    meta::put_model_config(&mut w, model.config()).map_err(|e| e.to_string())?;
    meta::put_task(&mut w, &Task::LanguageModel).map_err(|e| e.to_string())?;
    let tensors = model.tensor_infos();
    for t in &tensors {
        w.add_tensor(&t.name, DType::F32, &t.shape)
            .map_err(|e| e.to_string())?;
    }
    // Adapters the model runs directly are merged one tensor at a time.
    write_aligned(&w, |i, _, out| {
        write_f32s(out, &model.merged_tensor(tensors[i].range()))
    })
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
    bytes: &[u8],
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
