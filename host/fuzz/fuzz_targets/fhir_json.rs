#![no_main]
// See hearth_server::fuzzing::fhir_json for the input format and the invariants checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| hearth_server::fuzzing::fhir_json(data));
