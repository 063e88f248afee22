//! Fuzz target `tokenizer_parts`: see [`emberlm_fuzz::tokenizer_parts::run`] (the body, shared with the regression test).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| emberlm_fuzz::tokenizer_parts::run(data));
