//! emberlm-trainer: GPT-2 training on the CPU with hand-written forward and backward passes.

pub mod adamw;
pub mod checkpoint;
pub mod cli;
pub mod corpus;
pub mod data;
pub mod dist;
pub mod export;
pub mod export_safetensors;
pub mod family;
pub mod finetune;
pub mod gemm;
pub mod hf;
pub mod import;
pub mod layers;
pub mod model;
pub mod plot;
pub mod safetensors_io;
pub mod shards;
