//! Fuzz target `dataset_readers`: see [`emberlm_fuzz::dataset_readers::run`] (the body, shared with the regression test).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| emberlm_fuzz::dataset_readers::run(data));
