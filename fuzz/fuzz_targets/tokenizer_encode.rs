//! Fuzz target `tokenizer_encode`: see [`emberlm_fuzz::tokenizer_encode::run`] (the body, shared with the regression test).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| emberlm_fuzz::tokenizer_encode::run(data));
