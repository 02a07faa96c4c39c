#![no_main]
// See hearth::fuzzing::plugin_values for the input format and the invariants checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| hearth::fuzzing::plugin_values(data));
