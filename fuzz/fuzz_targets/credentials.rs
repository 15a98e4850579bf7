#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rauta_proxy::fuzz::credentials(data));
