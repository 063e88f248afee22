//! Memory a model and a session hold beyond the file, under the test kit's counting allocator
//! (this test binary's own): a tokenizer stored in the file costs nothing until it is asked for
//! (`Session::new` reads the end-of-text id from the metadata; `Model` leaves the tokenizer's
//! tables in the file), and asking for it still gives the whole tokenizer.

use emberlm_formats::config::GptConfig;
use emberlm_formats::ember::DType;
use emberlm_formats::tokenizer::Tokenizer;
use emberlm_runtime::random::{random_model_bytes, random_model_bytes_with_tokenizer};
use emberlm_runtime::{Model, Session, SessionOptions};
use emberlm_testkit::alloc::thread_live_bytes;

#[global_allocator]
static GLOBAL: emberlm_testkit::alloc::Counting = emberlm_testkit::alloc::Counting;

/// Bytes a model opened from `bytes` and a one-thread session on it hold.
fn held(bytes: &[u8]) -> isize {
    let before = thread_live_bytes();
    let model = Model::from_bytes(bytes).unwrap();
    let opts = SessionOptions {
        threads: 1,
        ..SessionOptions::default()
    };
    let session = Session::new(&model, &opts).unwrap();
    let after = thread_live_bytes();
    drop(session);
    drop(model);
    after - before
}

#[test]
fn a_stored_tokenizer_costs_nothing_until_asked_for() {
    let cfg = GptConfig {
        vocab_size: 50257,
        context_length: 64,
        dim: 64,
        n_layers: 2,
        n_heads: 4,
        qkv_bias: true,
        tied_head: true,
    };
    let tok = Tokenizer::gpt2();
    let with = random_model_bytes_with_tokenizer(&cfg, DType::Q8, 3, tok).unwrap();
    let without = random_model_bytes(&cfg, DType::Q8, 3).unwrap();
    let (a, b) = (held(&with), held(&without));
    // GPT-2's tokenizer built holds about 2 MB (its tables and a copy of its vocabulary), a
    // copy of its tables in the header 0.5 MB; what is left is its small keys.
    assert!(
        a - b < 16 << 10,
        "with a tokenizer {a} bytes, without {b}: the tokenizer costs {}",
        a - b
    );
    // Asked for, the whole tokenizer comes back from the file.
    let model = Model::from_bytes(&with).unwrap();
    let loaded = model.tokenizer().unwrap().unwrap();
    assert_eq!(loaded.to_parts(), tok.to_parts());
    assert_eq!(loaded.eot_id(), Some(50256));
}
