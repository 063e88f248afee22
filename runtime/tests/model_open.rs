//! Opening a model leaves the tokenizer's tables in the file: `Model::from_bytes` neither copies
//! them nor builds the tokenizer (the test kit's counting allocator, this test binary's own), and
//! a table that is corrupt is found on first use, as a typed error (the API) or a clean message
//! and exit code 1 (`ember generate`), never a panic.

use emberlm_formats::config::GptConfig;
use emberlm_formats::ember::DType;
use emberlm_formats::tokenizer::Tokenizer;
use emberlm_runtime::random::{random_model_bytes, random_model_bytes_with_tokenizer};
use emberlm_runtime::{Model, RuntimeError, Session, SessionOptions};
use emberlm_testkit::alloc::thread_allocated_bytes;

#[global_allocator]
static GLOBAL: emberlm_testkit::alloc::Counting = emberlm_testkit::alloc::Counting;

fn config() -> GptConfig {
    GptConfig {
        vocab_size: 50257,
        context_length: 64,
        dim: 64,
        n_layers: 2,
        n_heads: 4,
        qkv_bias: true,
        tied_head: true,
    }
}

/// Bytes allocated (frees not subtracted) while opening a model from `bytes`.
fn allocated_by_open(bytes: &[u8]) -> usize {
    let before = thread_allocated_bytes();
    let model = Model::from_bytes(bytes).unwrap();
    let after = thread_allocated_bytes();
    drop(model);
    after - before
}

#[test]
fn opening_neither_copies_nor_builds_the_tokenizer() {
    let tok = Tokenizer::gpt2();
    let with = random_model_bytes_with_tokenizer(&config(), DType::Q8, 3, tok).unwrap();
    let without = random_model_bytes(&config(), DType::Q8, 3).unwrap();
    let (a, b) = (allocated_by_open(&with), allocated_by_open(&without));
    // GPT-2's tables are 0.5 MB in the file (token bytes and ends; copying them allocated
    // 537,516 bytes before this test) and its built tokenizer about 2 MB. What is left is the
    // small keys.
    assert!(
        a.saturating_sub(b) < 16 << 10,
        "opening with a tokenizer allocated {a} bytes, without {b}"
    );
    // Asked for, the whole tokenizer is built from the file.
    let model = Model::from_bytes(&with).unwrap();
    let before = thread_allocated_bytes();
    let loaded = model.tokenizer().unwrap().unwrap();
    assert!(thread_allocated_bytes() - before > 1 << 20);
    assert_eq!(loaded.to_parts(), tok.to_parts());
}

/// The offset of the first element of the u32 array stored under `key` (the key's bytes, then a
/// type tag, an element tag and a u64 count).
fn array_elements(bytes: &[u8], key: &str) -> usize {
    let at = bytes
        .windows(key.len())
        .position(|w| w == key.as_bytes())
        .unwrap();
    let value = at + key.len();
    assert_eq!(
        &bytes[value..value + 2],
        &[10, 1],
        "{key} is an array of u32"
    );
    value + 2 + 8
}

/// A GPT-2-shaped random model whose `key` array has element `i` set to `v`.
fn corrupted(key: &str, i: usize, v: u32) -> Vec<u8> {
    let mut bytes = random_model_bytes_with_tokenizer(&config(), DType::Q8, 3, Tokenizer::gpt2())
        .unwrap()
        .to_vec();
    let at = array_elements(&bytes, key) + 4 * i;
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    bytes
}

#[test]
fn a_corrupt_table_is_a_typed_error_on_first_use() {
    let cases = [
        // A token ending past the token bytes.
        ("tokenizer.token_ends", 300, u32::MAX),
        // Token ends going backwards.
        ("tokenizer.token_ends", 1000, 0),
        // An empty first token.
        ("tokenizer.token_ends", 0, 0),
    ];
    for (key, i, v) in cases {
        let bytes = corrupted(key, i, v);
        let aligned = emberlm_formats::ember::AlignedBytes::copy_from(&bytes);
        // Opening does not read the tables: the model opens and runs on token ids.
        let model = Model::from_bytes(&aligned).unwrap();
        let opts = SessionOptions {
            threads: 1,
            ..SessionOptions::default()
        };
        let mut session = Session::new(&model, &opts).unwrap();
        assert_eq!(session.prefill(&[1, 2, 3]).unwrap().len(), 50257);
        // The first use of the tokenizer finds the corruption, and so does every later one.
        for _ in 0..2 {
            match model.tokenizer() {
                Err(RuntimeError::Format(e)) => {
                    assert!(!e.to_string().is_empty());
                }
                other => panic!("{key}[{i}] = {v}: {:?}", other.map(|t| t.is_some())),
            }
        }
    }
}

#[cfg(feature = "cli")]
#[test]
fn inspect_and_generate_report_a_corrupt_table_cleanly() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad-tokenizer.ember");
    std::fs::write(&path, corrupted("tokenizer.token_ends", 300, u32::MAX)).unwrap();
    let p = path.to_str().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(args)
            .output()
            .unwrap()
    };
    // `inspect` shows the metadata and tensors without building the tokenizer.
    let out = run(&["inspect", p]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Text needs the tokenizer: a message naming the problem and exit code 1, not a panic (101).
    let out = run(&["generate", "--prompt", "Hello", "--max-tokens", "2", p]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("token"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
