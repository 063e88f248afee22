//! emberlm-runtime: run `.ember` models (GPT-2, Llama 3.x / SmolLM2, Qwen2.5, Qwen3, Gemma 3) with a
//! KV cache and allocation-free decoding.

pub mod classify;
pub mod error;
pub mod kernels;
pub mod model;
pub mod random;
pub mod sampler;
pub mod session;

pub use classify::{Classification, Classifier, ClassifierSpec};
pub use error::RuntimeError;
pub use model::Model;
pub use sampler::Sampling;
pub use session::{
    Batch, BatchOptions, Event, GenerateOptions, GenerateStats, KvDtype, Next, Session,
    SessionOptions, Stop, StopReason,
};
