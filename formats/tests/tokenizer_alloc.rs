//! Encoding into reused buffers and streaming decode allocate nothing after warm-up.
//!
//! The test kit's counting global allocator (this file is its own test binary) counts the
//! allocations made by the current thread.

use emberlm_formats::tokenizer::{EncodeScratch, SpecialTokens, StreamDecoder, Tokenizer};

#[global_allocator]
static GLOBAL: emberlm_testkit::alloc::Counting = emberlm_testkit::alloc::Counting;

fn allocations() -> usize {
    emberlm_testkit::alloc::thread_allocations()
}

/// The same for Hugging Face tokenizers (Llama-3-style byte-level with BOS, SentencePiece-style
/// with byte fallback).
#[test]
fn hf_encode_and_stream_decode_allocate_nothing_after_warm_up() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hf_tokenizers");
    let texts = [
        "Hello, do you like tea? <|begin_of_text|> In the sunlit <s> terraces 12345.",
        "日本語のテキスト, emoji 👨\u{200d}👩\u{200d}👧 and e\u{301} — it's, they'LL, we've",
        "  indented\n\n\tcode(x) = y + 1;  \r\n",
    ];
    for kind in ["llama3", "spm", "qwen2", "smollm2"] {
        let tok = Tokenizer::from_hf_json_file(format!("{dir}/{kind}.json")).unwrap();
        let mut scratch = EncodeScratch::new();
        let mut ids = Vec::new();
        let mut all_ids = Vec::new();
        for text in &texts {
            tok.encode_with_post(text, &mut scratch, &mut all_ids);
            tok.encode(text, SpecialTokens::AsText, &mut scratch, &mut ids);
        }
        let mut dec = StreamDecoder::new(&tok);
        let before = allocations();
        let mut n_tokens = 0;
        for _ in 0..10 {
            for text in &texts {
                ids.clear();
                tok.encode_with_post(text, &mut scratch, &mut ids);
                n_tokens += ids.len();
                ids.clear();
                tok.encode(text, SpecialTokens::AsText, &mut scratch, &mut ids);
            }
            for &id in &all_ids {
                dec.push(id).unwrap();
            }
            dec.finish();
        }
        assert!(n_tokens > 100, "{kind}");
        assert_eq!(
            allocations() - before,
            0,
            "{kind}: allocations after warm-up"
        );
    }
}

#[test]
fn encode_and_stream_decode_allocate_nothing_after_warm_up() {
    let tok = Tokenizer::gpt2();
    let long_spaces = " ".repeat(500); // a piece long enough for the heap-based merge
    let texts = [
        "Hello, do you like tea? <|endoftext|> In the sunlit terracesof someunknownPlace."
            .to_string(),
        format!("Indentation:{long_spaces}x and digits 1234567890123456789012345678901234567890"),
        "日本語のテキスト, emoji 👨\u{200d}👩\u{200d}👧 and e\u{301} — it's, they'LL, we've"
            .to_string(),
        "unusualwordswithoutspacesthatneedmanymergesbecausetheyarenotinthevocabulary".repeat(3),
    ];
    let mut scratch = EncodeScratch::new();
    let mut ids = Vec::new();
    let mut all_ids = Vec::new();
    for text in &texts {
        tok.encode(text, SpecialTokens::Allow, &mut scratch, &mut all_ids);
    }
    all_ids.reserve(16);
    let mut dec = StreamDecoder::new(tok);
    // Warm-up: buffers grow to the largest input.
    for text in &texts {
        ids.clear();
        tok.encode(text, SpecialTokens::Allow, &mut scratch, &mut ids);
        tok.encode(text, SpecialTokens::AsText, &mut scratch, &mut ids);
    }

    let before = allocations();
    let mut n_tokens = 0;
    for _ in 0..20 {
        for text in &texts {
            ids.clear();
            tok.encode(text, SpecialTokens::Allow, &mut scratch, &mut ids);
            n_tokens += ids.len();
            ids.clear();
            tok.encode(text, SpecialTokens::AsText, &mut scratch, &mut ids);
        }
    }
    let encode_allocs = allocations() - before;

    let before = allocations();
    let mut text_bytes = 0;
    for _ in 0..20 {
        for &id in &all_ids {
            text_bytes += dec.push(id).map(str::len).unwrap_or(0);
        }
        text_bytes += dec.finish().len();
    }
    let decode_allocs = allocations() - before;

    // The counter itself must work, or the zeros above prove nothing.
    let before = allocations();
    let v: Vec<u8> = Vec::with_capacity(std::hint::black_box(64));
    drop(std::hint::black_box(v));
    assert_eq!(allocations() - before, 1, "the counting allocator counts");

    assert!(n_tokens > 1000 && text_bytes > 10_000);
    assert_eq!(
        encode_allocs, 0,
        "allocations in {n_tokens} tokens of encode"
    );
    assert_eq!(
        decode_allocs, 0,
        "allocations in streaming decode of {text_bytes} bytes"
    );
}
