#![no_main]

libfuzzer_sys::fuzz_target!(
    init: {
        // libFuzzer's main, unlike Rust's, leaves SIGPIPE fatal: a write to a socket the
        // backend closed would end the run.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    },
    |data: &[u8]| rauta_proxy::fuzz::http1_differential(data)
);
