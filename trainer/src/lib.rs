//! emberlm-trainer: GPT-2 training on the CPU with hand-written forward and backward passes.

pub mod layers;
pub mod model;
pub mod adamw;
