//! emberlm-runtime: run `.ember` GPT-2 models with a KV cache and allocation-free decoding.

pub mod gemm;
pub mod kernels;
