//! Encode throughput of a Hugging Face `tokenizer.json` on a text file (one thread).
//!
//! `cargo run --release -p emberlm-formats --features hf,gpt2 --example hf_encode_speed -- TOKENIZER_JSON TEXT`
//! (`TOKENIZER_JSON` = `gpt2` for the embedded GPT-2 vocabulary).
//!
//! Prints the token count and MB/s (best of five runs); compare with `tokenizers` in Python on
//! the same file (`TOKENIZERS_PARALLELISM=false`, `tok.encode(text)`), measured in the same run.

use std::time::Instant;

use emberlm_formats::tokenizer::{EncodeScratch, SpecialTokens, Tokenizer};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, json, text] = args.as_slice() else {
        eprintln!("usage: hf_encode_speed TOKENIZER_JSON TEXT");
        std::process::exit(2);
    };
    // `gpt2`: the embedded tiktoken-style GPT-2 vocabulary (the unchanged fast path).
    let owned;
    let tok: &Tokenizer = if json == "gpt2" {
        Tokenizer::gpt2()
    } else {
        match Tokenizer::from_hf_json_file(json) {
            Ok(t) => {
                owned = t;
                &owned
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
    };
    let text = match std::fs::read_to_string(text) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{text}: {e}");
            std::process::exit(1);
        }
    };
    let mut scratch = EncodeScratch::new();
    let mut out = Vec::new();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        out.clear();
        let t = Instant::now();
        tok.encode(&text, SpecialTokens::Allow, &mut scratch, &mut out);
        best = best.min(t.elapsed().as_secs_f64());
    }
    let mb = text.len() as f64 / 1e6;
    println!(
        "{} tokens, {:.1} MB/s (best of 5: {:.1} ms)",
        out.len(),
        mb / best,
        best * 1e3
    );
}
