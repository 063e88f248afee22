//! Models with random weights, for tests, benchmarks and `ember bench --random` (no file needed).
//!
//! Every function takes any family's configuration: a [`emberlm_formats::config::GptConfig`] (or a GPT-2
//! [`ModelConfig`]) writes the same file as before, the other families are written with
//! [`meta::put_model_config`] and the tensor list of their description ([`arch::tensors`]).

use crate::sampler::Rng;
use emberlm_formats::arch;
use emberlm_formats::config::ModelConfig;
use emberlm_formats::ember::{
    AlignedBytes, DType, EmberWriter, FormatError, TensorEntry, write_f16s, write_f32s,
};
use emberlm_formats::meta::{self, Task};
use emberlm_formats::quant;
use emberlm_formats::tokenizer::Tokenizer;
use half::f16;
use std::io::{self, Write};
use std::path::Path;

/// A configuration of any family (`GptConfig` or [`ModelConfig`]).
pub trait AnyConfig: Copy + Into<ModelConfig> {}
impl<T: Copy + Into<ModelConfig>> AnyConfig for T {}

fn writer(
    cfg: &impl AnyConfig,
    task: &Task,
    dtype: DType,
    tokenizer: Option<&Tokenizer>,
) -> Result<EmberWriter, FormatError> {
    let model: ModelConfig = (*cfg).into();
    let Some(cfg) = model.gpt2() else {
        return family_writer(&model, task, dtype, tokenizer);
    };
    let cfg = &cfg;
    let mut w = EmberWriter::new();
    meta::put_config(&mut w, cfg)?;
    meta::put_task(&mut w, task)?;
    if let Some(t) = tokenizer {
        meta::put_tokenizer(&mut w, t)?;
    }
    w.set(
        "provenance.source",
        emberlm_formats::ember::Value::Str("random weights".into()),
    )?;
    let mut shapes = cfg.tensor_shapes();
    // A classifier's head: one row per class and a bias, in place of the vocabulary head.
    if let Task::Classifier { labels, .. } = task {
        shapes.retain(|(n, _)| n != "out_head.weight");
        shapes.push(("out_head.weight".into(), vec![labels.len(), cfg.dim]));
        shapes.push(("out_head.bias".into(), vec![labels.len()]));
    }
    for (name, shape) in shapes {
        let dt = match shape.len() {
            2 if dtype == DType::Q4 && quant::int4_keeps_q6(&name) => DType::Q6,
            2 => dtype,
            _ => DType::F32,
        };
        w.add_tensor(&name, dt, &shape)?;
    }
    Ok(w)
}

/// A Llama-style family's writer: its configuration keys and every tensor of its description
/// (a classifier's head as [`arch::tensors`] gives it).
fn family_writer(
    cfg: &ModelConfig,
    task: &Task,
    dtype: DType,
    tokenizer: Option<&Tokenizer>,
) -> Result<EmberWriter, FormatError> {
    let mut w = EmberWriter::new();
    meta::put_model_config(&mut w, cfg)?;
    meta::put_task(&mut w, task)?;
    if let Some(t) = tokenizer {
        meta::put_tokenizer(&mut w, t)?;
    }
    w.set(
        "provenance.source",
        emberlm_formats::ember::Value::Str("random weights".into()),
    )?;
    let classes = match task {
        Task::LanguageModel => None,
        Task::Classifier { labels, .. } => Some(labels.len()),
    };
    for t in arch::tensors(cfg, classes) {
        let dt = if t.desc.is_matrix() {
            // As an int4 export: the embeddings and heads at 6 bits.
            if dtype == DType::Q4 && quant::int4_keeps_q6(&t.name) {
                DType::Q6
            } else {
                dtype
            }
        } else {
            DType::F32
        };
        w.add_tensor(&t.name, dt, &t.shape)?;
    }
    Ok(w)
}

/// Fills one tensor: norm scales (`*.scale`, `*norm.weight`) near 1, everything else uniform in ±0.05 (about GPT-2's
/// N(0, 0.02) spread), quantized to the entry's dtype. Generates a few rows at a time, so building
/// a large model needs little memory.
fn fill(rng: &mut Rng, e: &TensorEntry, out: &mut dyn Write) -> io::Result<()> {
    let cols = (*e.shape.last().unwrap_or(&1) as usize).max(1);
    let rows = e.numel() as usize / cols;
    let norm = e.name.ends_with(".scale") || e.name.ends_with("norm.weight");
    let base = if norm { 1.0 } else { 0.0 };
    let chunk_rows = (65536 / cols).max(1);
    let nb = quant::q8_blocks_per_row(cols);
    let mut scales = Vec::new();
    let mut r0 = 0;
    while r0 < rows {
        let n = chunk_rows.min(rows - r0) * cols;
        let x: Vec<f32> = (0..n)
            .map(|_| base + (rng.next_f32() - 0.5) * 0.1)
            .collect();
        match e.dtype {
            DType::F32 => write_f32s(out, &x)?,
            DType::F16 => {
                let mut h = vec![f16::ZERO; n];
                quant::quantize_f16(&x, &mut h).map_err(io::Error::other)?;
                write_f16s(out, &h)?;
            }
            DType::Q8 => {
                let mut q = vec![0i8; n];
                let mut s = vec![f16::ZERO; n / cols * nb];
                quant::quantize_q8(&x, cols, &mut q, &mut s).map_err(io::Error::other)?;
                out.write_all(bytemuck::cast_slice(&q))?;
                scales.extend_from_slice(&s);
            }
            DType::Q4 => {
                let nb4 = quant::q4_blocks_per_row(cols);
                let mut q = vec![0u8; n / cols * nb4 * quant::Q4_BLOCK_BYTES];
                let mut s = vec![f16::ZERO; n / cols * nb4];
                quant::quantize_q4(&x, cols, &mut q, &mut s).map_err(io::Error::other)?;
                out.write_all(&q)?;
                scales.extend_from_slice(&s);
            }
            DType::Q6 => {
                let nb6 = quant::q6_blocks_per_row(cols);
                let mut q = vec![0u8; n / cols * nb6 * quant::Q6_BLOCK_BYTES];
                let mut s = vec![f16::ZERO; n / cols * nb6];
                quant::quantize_q6(&x, cols, &mut q, &mut s).map_err(io::Error::other)?;
                out.write_all(&q)?;
                scales.extend_from_slice(&s);
            }
        }
        r0 += n / cols;
    }
    if e.dtype == DType::Q8 {
        let numel = e.numel() as usize;
        out.write_all(&vec![0u8; numel.next_multiple_of(64) - numel])?;
        write_f16s(out, &scales)?;
    }
    if e.dtype == DType::Q4 {
        let n = scales.len() * quant::Q4_BLOCK_BYTES;
        out.write_all(&vec![0u8; n.next_multiple_of(64) - n])?;
        write_f16s(out, &scales)?;
    }
    if e.dtype == DType::Q6 {
        let n = scales.len() * quant::Q6_BLOCK_BYTES;
        out.write_all(&vec![0u8; n.next_multiple_of(64) - n])?;
        write_f16s(out, &scales)?;
    }
    Ok(())
}

/// Writes a random model file (atomically); returns its size.
pub fn write_random_model(
    path: &Path,
    cfg: &impl AnyConfig,
    dtype: DType,
    seed: u64,
    tokenizer: Option<&Tokenizer>,
) -> Result<u64, FormatError> {
    let w = writer(cfg, &Task::LanguageModel, dtype, tokenizer)?;
    let mut rng = Rng::new(seed);
    w.write_file(path, |_, e, out| fill(&mut rng, e, out))
}

/// A random model in memory, aligned for [`crate::Model::from_bytes`].
pub fn random_model_bytes(
    cfg: &impl AnyConfig,
    dtype: DType,
    seed: u64,
) -> Result<AlignedBytes, FormatError> {
    let w = writer(cfg, &Task::LanguageModel, dtype, None)?;
    let mut rng = Rng::new(seed);
    Ok(AlignedBytes::copy_from(
        &w.to_vec(|_, e, out| fill(&mut rng, e, out))?,
    ))
}

/// A random language model in memory that holds `tokenizer`, aligned for
/// [`crate::Model::from_bytes`]: text in, text out, with no file (examples, tests).
pub fn random_model_bytes_with_tokenizer(
    cfg: &impl AnyConfig,
    dtype: DType,
    seed: u64,
    tokenizer: &Tokenizer,
) -> Result<AlignedBytes, FormatError> {
    let w = writer(cfg, &Task::LanguageModel, dtype, Some(tokenizer))?;
    let mut rng = Rng::new(seed);
    Ok(AlignedBytes::copy_from(
        &w.to_vec(|_, e, out| fill(&mut rng, e, out))?,
    ))
}

/// Writes a random model for `task` (atomically); returns its size. For a classifier the head is
/// `out_head.weight` (K, C) in `dtype` and `out_head.bias` (K) in f32, both random; the labels,
/// readout, pad id and length are the task's.
pub fn write_random_classifier(
    path: &Path,
    cfg: &impl AnyConfig,
    task: &Task,
    dtype: DType,
    seed: u64,
    tokenizer: Option<&Tokenizer>,
) -> Result<u64, FormatError> {
    let w = writer(cfg, task, dtype, tokenizer)?;
    let mut rng = Rng::new(seed);
    w.write_file(path, |_, e, out| fill(&mut rng, e, out))
}

/// A random model for `task` in memory, aligned for [`crate::Model::from_bytes`] (see
/// [`write_random_classifier`]).
pub fn random_classifier_bytes(
    cfg: &impl AnyConfig,
    task: &Task,
    dtype: DType,
    seed: u64,
) -> Result<AlignedBytes, FormatError> {
    let w = writer(cfg, task, dtype, None)?;
    let mut rng = Rng::new(seed);
    Ok(AlignedBytes::copy_from(
        &w.to_vec(|_, e, out| fill(&mut rng, e, out))?,
    ))
}
