//! Fuzz target `ember_reader`: see [`emberlm_fuzz::ember_reader::run`] (the body, shared with the regression test).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| emberlm_fuzz::ember_reader::run(data));
