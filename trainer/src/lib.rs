//! emberlm-trainer: GPT-2 training on the CPU with hand-written forward and backward passes.

pub mod adamw;
pub mod export;
pub mod export_safetensors;
pub mod import;
pub mod layers;
pub mod model;
