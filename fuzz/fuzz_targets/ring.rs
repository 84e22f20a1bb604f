//! Fuzz target `ring`: see `xxcapture_fuzz_common::ring::ring` for the input and the checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xxcapture_fuzz_common::ring::ring(data));
