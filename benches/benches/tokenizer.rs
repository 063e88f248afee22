//! Encode throughput of emberlm's GPT-2 tokenizer against tiktoken-rs (`encode_ordinary`),
//! single-threaded, on the same text in the same run.
//!
//! Text: `$EMBER_DATA/tinyshakespeare.txt`, or ~200 KB of generated English-like text when
//! `EMBER_DATA` is unset. Run: `cargo bench -p emberlm-benches --bench tokenizer`.
//! Besides criterion's figures it prints the median MB/s of both (interleaved runs) and the ratio.

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use emberlm_formats::tokenizer::{EncodeScratch, SpecialTokens, Tokenizer};

fn generated_text(bytes: usize) -> String {
    const WORDS: &[&str] = &[
        "the",
        "of",
        "and",
        "to",
        "in",
        "a",
        "is",
        "that",
        "for",
        "it",
        "as",
        "was",
        "with",
        "be",
        "by",
        "on",
        "not",
        "he",
        "this",
        "are",
        "or",
        "his",
        "from",
        "at",
        "which",
        "but",
        "have",
        "an",
        "had",
        "they",
        "you",
        "were",
        "their",
        "one",
        "all",
        "we",
        "can",
        "her",
        "has",
        "there",
        "been",
        "if",
        "more",
        "when",
        "will",
        "would",
        "who",
        "so",
        "no",
        "painter",
        "picture",
        "Gisburn",
        "Rickham",
        "Stroud",
        "terrace",
        "sunlit",
        "genius",
        "fellow",
        "always",
        "thought",
        "cheap",
        "enough",
        "surprise",
        "drawing",
        "Riviera",
        "KING",
        "HENRY",
        "thee",
        "thou",
        "art",
        "doth",
        "hath",
        "wherefore",
        "villainous",
        "1623",
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut s = String::with_capacity(bytes + 32);
    while s.len() < bytes {
        s.push_str(WORDS[next(WORDS.len())]);
        s.push_str(match next(24) {
            0 => ". ",
            1 => ", ",
            2 => "'s ",
            3 => ";\n",
            4 => ":\n\n",
            5 => "! ",
            6 => "? ",
            _ => " ",
        });
    }
    s
}

fn bench_text() -> (String, &'static str) {
    if let Some(dir) = std::env::var_os("EMBER_DATA") {
        let path = std::path::Path::new(&dir).join("tinyshakespeare.txt");
        if let Ok(text) = std::fs::read_to_string(&path) {
            return (text, "tinyshakespeare.txt");
        }
        eprintln!("cannot read {}: using generated text", path.display());
    } else {
        eprintln!("EMBER_DATA is not set: using ~200 KB of generated English-like text");
    }
    (generated_text(200_000), "generated text")
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn tokenizer(c: &mut Criterion) {
    let (text, name) = bench_text();
    let ours = Tokenizer::gpt2();
    let theirs = tiktoken_rs::r50k_base_singleton();
    let mut scratch = EncodeScratch::new();
    let mut ids = Vec::new();
    ours.encode(&text, SpecialTokens::AsText, &mut scratch, &mut ids);
    assert_eq!(
        ids,
        theirs.encode_ordinary(&text),
        "same tokens as tiktoken-rs"
    );

    let mut group = c.benchmark_group(format!("tokenizer encode ({name}, {} bytes)", text.len()));
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.sample_size(20);
    group.bench_function("emberlm", |b| {
        b.iter(|| {
            ids.clear();
            ours.encode(
                black_box(&text),
                SpecialTokens::AsText,
                &mut scratch,
                &mut ids,
            );
            black_box(ids.len())
        })
    });
    group.bench_function("tiktoken-rs encode_ordinary", |b| {
        b.iter(|| black_box(theirs.encode_ordinary(black_box(&text)).len()))
    });
    group.finish();

    // Same-run ratio from interleaved timings (medians).
    let mb = text.len() as f64 / 1e6;
    let (mut a, mut t) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        let t0 = Instant::now();
        ids.clear();
        ours.encode(
            black_box(&text),
            SpecialTokens::AsText,
            &mut scratch,
            &mut ids,
        );
        black_box(ids.len());
        a.push(mb / t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        black_box(theirs.encode_ordinary(black_box(&text)).len());
        t.push(mb / t0.elapsed().as_secs_f64());
    }
    let (a, t) = (median(a), median(t));
    println!(
        "tokenizer encode on {name}: emberlm {a:.1} MB/s, tiktoken-rs {t:.1} MB/s, ratio {:.2}x",
        a / t
    );
}

criterion_group!(benches, tokenizer);
criterion_main!(benches);
