#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rauta_controller::fuzz::yaml(data));
