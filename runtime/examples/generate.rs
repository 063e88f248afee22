//! Generating text from Rust, as a library user does (the README's snippet is this file's core):
//! open a model, encode a prompt with the tokenizer stored in the file, stream the continuation
//! whole character by whole character. `GenerateOptions::default()` stops at the model's
//! end-of-text token and slides past the end of the context, as `ember generate` does.
//!
//!     cargo run -p emberlm-runtime --example generate [MODEL.ember [PROMPT]]
//!
//! Without a model file it runs offline on a tiny random model built in memory with GPT-2's
//! tokenizer and a 64-token context (the text is gibberish, but 100 tokens slide past the end of
//! the context without an error).

use emberlm_formats::config::GptConfig;
use emberlm_formats::ember::{AlignedBytes, DType};
use emberlm_formats::tokenizer::Tokenizer; // (GPT-2's, for the model built in memory)
use emberlm_formats::tokenizer::{SpecialTokens, StreamDecoder};
use emberlm_runtime::{GenerateOptions, Model, Sampling, Session, SessionOptions};
use std::io::Write;
use std::ops::ControlFlow;

/// A tiny random GPT-2 (2 layers, dim 32, context 64) holding GPT-2's tokenizer.
fn tiny_model() -> Result<AlignedBytes, Box<dyn std::error::Error>> {
    let cfg = GptConfig {
        vocab_size: 50257,
        context_length: 64,
        dim: 32,
        n_layers: 2,
        n_heads: 2,
        qkv_bias: true,
        tied_head: true,
    };
    let tok = Tokenizer::gpt2();
    Ok(emberlm_runtime::random::random_model_bytes_with_tokenizer(
        &cfg,
        DType::F32,
        7,
        tok,
    )?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bytes;
    let model = match args.first() {
        Some(path) => Model::open(path.as_ref())?, // memory-mapped, validated, no copy
        None => {
            bytes = tiny_model()?;
            Model::from_bytes(&bytes)?
        }
    };
    let prompt = args.get(1).map_or("Every effort moves you", String::as_str);

    let tok = model
        .tokenizer()?
        .ok_or("this model file holds no tokenizer")?;
    let prompt_ids = tok.encode_to_vec(prompt, SpecialTokens::Allow);
    let mut session = Session::new(&model, &SessionOptions::default())?; // every buffer allocated here
    let sampling = Sampling {
        temperature: 0.8,
        top_k: Some(40),
        ..Sampling::default()
    };
    // Stops at the model's <|endoftext|>; slides when the context is full.
    let options = GenerateOptions {
        max_tokens: 100,
        ..GenerateOptions::default()
    };
    // Characters that span several tokens come out whole (decoding token by token would not).
    let mut decoder = StreamDecoder::new(tok);
    let mut out = std::io::stdout();
    write!(out, "{prompt}")?;
    let stats = session.generate(&prompt_ids, &sampling, &options, |token| {
        let text = decoder.push(token).unwrap_or("");
        match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()), // stdout closed: stop generating
        }
    })?;
    writeln!(out, "{}", decoder.finish())?;
    eprintln!(
        "[{} tokens, stopped by {:?}]",
        stats.generated_tokens, stats.stop
    );
    Ok(())
}
