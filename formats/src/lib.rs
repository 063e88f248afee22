//! emberlm-formats: the bytes that move between emberlm's parts.
//!
//! - [`arch`]: each model architecture described once (tensor roles, shapes, names in every layout).
//! - `chat` (feature `chat`): a model's Jinja chat template rendered as transformers renders it.
//! - [`config`]: the GPT-2 configuration.
//! - [`ember`]: the `.ember` model file (spec in `formats/FORMAT.md`): a zero-copy reader over
//!   `&[u8]` or a memory map, and a deterministic, atomic, streaming writer.
//! - [`quant`]: f16 and int8 (blocks of 32 with an f16 scale) reference quantizers, shared by the
//!   trainer's export and the runtime's kernels.
//! - [`tokenizer`]: GPT-2 byte-level BPE (tiktoken-exact), Hugging Face `tokenizer.json` BPE
//!   (exact against `tokenizers`), streaming decode, and BPE training.

pub mod arch;
#[cfg(feature = "chat")]
pub mod chat;
pub mod config;
pub mod ember;
pub mod meta;
pub mod quant;
pub mod tokenizer;
