//! Running a model compiled into the program with `include_bytes!`: no file system needed (a
//! microcontroller-class device, a single static binary). The bytes are wrapped in `Aligned` so
//! that the weights can be read in place.
//!
//!     cargo run -p emberlm-runtime --example embedded
//!
//! The model is the random tiny GPT-2 of `tests/fixtures/hf_tiny` exported to f32; its greedy
//! continuation of [5, 17, 42, 3] equals Hugging Face transformers' (see expected.json there).

use emberlm_formats::ember::Aligned;
use emberlm_runtime::{GenerateOptions, Model, Sampling, Session, SessionOptions};
use std::ops::ControlFlow;

static MODEL: &Aligned<[u8]> = &Aligned(*include_bytes!(
    "../../tests/fixtures/hf_tiny/tiny-f32.ember"
));

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = Model::from_bytes(&MODEL.0)?;
    let cfg = model.config();
    println!(
        "embedded model: {} layers, dim {}, vocabulary {}, {} bytes",
        cfg.n_layers,
        cfg.dim,
        cfg.vocab_size,
        model.file_size()
    );
    let mut session = Session::new(&model, &SessionOptions::default())?;
    let mut tokens = Vec::new();
    let limits = GenerateOptions {
        max_tokens: 20,
        ..GenerateOptions::default()
    };
    session.generate(&[5, 17, 42, 3], &Sampling::default(), &limits, |t| {
        tokens.push(t);
        ControlFlow::Continue(())
    })?;
    println!("greedy continuation of [5, 17, 42, 3]: {tokens:?}");
    Ok(())
}
