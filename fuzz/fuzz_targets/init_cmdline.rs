//! The guest init's kernel command-line parser on arbitrary text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data) {
        let _ = husk_wire::cmdline::parse(line);
    }
});
