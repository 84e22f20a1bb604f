//! Fuzz target `card_sequence`: see `xxcapture_fuzz_common::model::card_sequence` for the input and the checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xxcapture_fuzz_common::model::card_sequence(data));
