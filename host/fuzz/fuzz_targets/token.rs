#![no_main]
// See hearth::fuzzing::token for the input format and the invariants checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| hearth::fuzzing::token(data));
