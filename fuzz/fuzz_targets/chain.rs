//! Fuzz target `chain`: see `xxcapture_fuzz_common::backend::chain` for the input and the checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xxcapture_fuzz_common::backend::chain(data));
