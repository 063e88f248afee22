//! The GPT-2 tokenizer on the book's test vectors, OpenAI/Hugging Face files, compact parts, and
//! BPE training. Tests that need the book's data read `EMBER_DATA` and skip loudly without it.

use std::path::PathBuf;
use std::time::Instant;

use emberlm_formats::tokenizer::{
    SpecialTokens, Tokenizer, TokenizerError, TrainOptions, train_bpe,
};

fn data_path(name: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("EMBER_DATA") else {
        eprintln!("SKIPPED (EMBER_DATA is not set): this test needs {name}");
        return None;
    };
    Some(PathBuf::from(dir).join(name))
}

fn data(name: &str) -> Option<String> {
    let path = data_path(name)?;
    Some(std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn enc(text: &str) -> Vec<u32> {
    Tokenizer::gpt2().encode_to_vec(text, SpecialTokens::Allow)
}

#[test]
fn books_chapter_2_vectors() {
    assert_eq!(
        enc("Hello, do you like tea? <|endoftext|> In the sunlit terracesof someunknownPlace."),
        [
            15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114,
            1659, 617, 34680, 27271, 13
        ]
    );
    assert_eq!(
        enc("Hello, world. Is this-- a test?"),
        [15496, 11, 995, 13, 1148, 428, 438, 257, 1332, 30]
    );
    assert_eq!(enc("\n"), [198]);
    assert_eq!(enc("Hello,"), [15496, 11]);
    assert_eq!(enc("Implementations"), [3546, 26908, 602]);
    assert_eq!(enc("This is some text"), [1212, 318, 617, 2420]);
    assert_eq!(
        enc("asdf asdfasdf a!!, @aba 9asdf90asdfk"),
        [
            292, 7568, 355, 7568, 292, 7568, 257, 3228, 11, 2488, 15498, 860, 292, 7568, 3829, 292,
            7568, 74
        ]
    );
    assert_eq!(enc("Every effort moves you"), [6109, 3626, 6100, 345]);
    assert_eq!(enc("Every day holds a"), [6109, 1110, 6622, 257]);
    assert_eq!(enc("Hello, I am"), [15496, 11, 314, 716]);
    assert_eq!(enc("Do you have time"), [5211, 345, 423, 640]);
    assert_eq!(enc("<|user|>"), [27, 91, 7220, 91, 29]);
    let tok = Tokenizer::gpt2();
    assert_eq!(tok.token_bytes(198), Some(&b"\n"[..]));
    // Without special tokens allowed, the end-of-text marker is ordinary text.
    let ids = tok.encode_to_vec("tea? <|endoftext|> In", SpecialTokens::AsText);
    assert!(!ids.contains(&50256), "{ids:?}");
    assert_eq!(tok.decode_to_string(&ids).unwrap(), "tea? <|endoftext|> In");
}

#[test]
fn the_verdict_is_5145_tokens() {
    let Some(text) = data("the-verdict.txt") else {
        return;
    };
    let ids = enc(&text);
    assert_eq!(ids.len(), 5145);
    assert_eq!(
        &ids[..14],
        [
            40, 367, 2885, 1464, 1807, 3619, 402, 271, 10899, 2138, 257, 7026, 15632, 438
        ]
    );
    assert_eq!(Tokenizer::gpt2().decode_to_string(&ids).unwrap(), text);
}

#[test]
fn embedded_gpt2_equals_openais_files() {
    let (Some(encoder), Some(vocab)) = (data_path("encoder.json"), data_path("vocab.bpe")) else {
        return;
    };
    let loaded = Tokenizer::from_openai_files(&encoder, &vocab).unwrap();
    assert_eq!(loaded.to_parts(), Tokenizer::gpt2().to_parts());
    assert_eq!(loaded.eot_id(), Some(50256));
    assert_eq!(
        loaded.specials().collect::<Vec<_>>(),
        [("<|endoftext|>", 50256)]
    );

    // Hugging Face's layout: the same content, vocab.json written compactly.
    let tmp = tempfile::Builder::new()
        .prefix("emberlm-tok-hf-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&encoder).unwrap()).unwrap();
    std::fs::write(dir.join("vocab.json"), serde_json::to_vec(&json).unwrap()).unwrap();
    std::fs::copy(&vocab, dir.join("merges.txt")).unwrap();
    let hf = Tokenizer::from_hf_files(dir.join("vocab.json"), dir.join("merges.txt")).unwrap();
    assert_eq!(hf.to_parts(), loaded.to_parts());

    // Damaged files give errors naming the file and the place.
    let enc_bytes = std::fs::read(&encoder).unwrap();
    let cut = &enc_bytes[..enc_bytes.len() / 2];
    let e = Tokenizer::from_vocab_and_merges(cut, "encoder.json", b"", "vocab.bpe").unwrap_err();
    assert!(
        matches!(e, TokenizerError::Json { ref file, line: 1, .. } if file == "encoder.json"),
        "{e}"
    );
    let merges = std::fs::read_to_string(&vocab).unwrap();
    let mut lines: Vec<&str> = merges.lines().collect();
    lines.swap(10, 11); // two merges out of rank order
    let e = Tokenizer::from_vocab_and_merges(
        &enc_bytes,
        "encoder.json",
        lines.join("\n").as_bytes(),
        "vocab.bpe",
    )
    .unwrap_err();
    assert_eq!(
        e,
        TokenizerError::MergeLine {
            file: "vocab.bpe".into(),
            line: 12,
            detail: format!(
                "merge result id {} does not follow the previous merge's id (ids are merge ranks)",
                256 + 9
            ),
        }
    );
}

#[test]
fn gpt2_parts_round_trip() {
    let tok = Tokenizer::gpt2();
    let parts = tok.to_parts();
    assert_eq!(parts.token_ends.len(), 50257);
    assert_eq!(parts.special_names, ["<|endoftext|>"]);
    assert_eq!(parts.special_ids, [50256]);
    let back = Tokenizer::from_parts(parts.clone()).unwrap();
    assert_eq!(back.to_parts(), parts);
    let text = "Round trip: café, 日本語, 123 — <|endoftext|>!";
    assert_eq!(back.encode_to_vec(text, SpecialTokens::Allow), enc(text));
}

/// English-like text generated from a fixed seed (so training runs without `EMBER_DATA`).
fn builtin_text(bytes: usize) -> String {
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
        "drawing-room",
        "Riviera",
    ];
    let mut state = 0x1234_5678_9ABC_DEF1u64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut s = String::new();
    let mut sentence_start = true;
    while s.len() < bytes {
        let w = WORDS[next(WORDS.len())];
        if sentence_start {
            s.push_str(&w[..1].to_uppercase());
            s.push_str(&w[1..]);
        } else {
            s.push_str(w);
        }
        sentence_start = false;
        match next(20) {
            0 => s.push_str(". "),
            1 => s.push_str(", "),
            2 => s.push_str("'s "),
            3 => s.push_str(".\n\n"),
            _ => s.push(' '),
        }
        sentence_start |= s.ends_with(". ") || s.ends_with('\n');
    }
    s
}

fn check_trained(texts: &[&str], vocab: usize) -> f64 {
    let opts = TrainOptions::default();
    let a = train_bpe(texts, vocab, &opts).unwrap();
    let b = train_bpe(texts, vocab, &opts).unwrap();
    assert_eq!(a.to_parts(), b.to_parts(), "training is deterministic");
    assert_eq!(
        a.vocab_size(),
        vocab,
        "enough repeated pairs to fill the vocabulary"
    );
    assert_eq!(a.eot_id(), Some(vocab as u32 - 1));
    let restored = Tokenizer::from_parts(a.to_parts()).unwrap();
    let (mut bytes, mut tokens) = (0, 0);
    for text in texts {
        let ids = restored.encode_to_vec(text, SpecialTokens::Allow);
        assert_eq!(restored.decode_to_string(&ids).unwrap(), *text);
        bytes += text.len();
        tokens += ids.len();
    }
    bytes as f64 / tokens as f64
}

#[test]
fn bpe_training_on_builtin_text() {
    let text = builtin_text(100_000);
    let bpt = check_trained(&[&text, "<|endoftext|>", "a second document"], 500);
    eprintln!("built-in text, vocab 500: {bpt:.2} bytes per token");
    assert!(bpt > 3.0, "{bpt:.2} bytes per token");
}

#[test]
fn bpe_training_on_the_verdict() {
    let Some(text) = data("the-verdict.txt") else {
        return;
    };
    let bpt = check_trained(&[&text], 1000);
    let gpt2 = text.len() as f64 / enc(&text).len() as f64;
    eprintln!("the-verdict, vocab 1000: {bpt:.2} bytes per token (GPT-2's 50257: {gpt2:.2})");
    assert!(bpt > 2.5, "{bpt:.2} bytes per token");
}

/// Timing of BPE training on tinyshakespeare with vocabulary 5,000 (a figure, not asserted:
/// run with `--release -- --nocapture` to read it).
#[test]
fn bpe_training_time_on_tinyshakespeare() {
    let Some(text) = data("tinyshakespeare.txt") else {
        return;
    };
    let t0 = Instant::now();
    let tok = train_bpe(&[&text], 5000, &TrainOptions::default()).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let ids = tok.encode_to_vec(&text, SpecialTokens::Allow);
    eprintln!(
        "tinyshakespeare ({} bytes), vocab {}: trained in {secs:.2} s, {:.2} bytes per token",
        text.len(),
        tok.vocab_size(),
        text.len() as f64 / ids.len() as f64
    );
    assert_eq!(tok.vocab_size(), 5000);
    assert_eq!(tok.decode_to_string(&ids).unwrap(), text);
}

/// The files `Tokenizer::to_vocab_and_merges` writes for GPT-2 are OpenAI's own: the same merges
/// in the same order as `vocab.bpe`, and the same entries as `encoder.json`.
#[test]
fn written_vocab_and_merges_equal_openais_files() {
    let (Some(bpe), Some(encoder)) = (data("vocab.bpe"), data("encoder.json")) else {
        return;
    };
    let (vocab, merges) = Tokenizer::gpt2().to_vocab_and_merges().unwrap();
    let theirs: Vec<&str> = bpe.lines().skip(1).filter(|l| !l.is_empty()).collect();
    let ours: Vec<&str> = merges.lines().skip(1).collect();
    assert_eq!(ours.len(), theirs.len());
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a, b, "merge line {}", i + 2);
    }
    let parse = |s: &str| -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(s).unwrap()
    };
    assert_eq!(parse(&vocab), parse(&encoder));
}
