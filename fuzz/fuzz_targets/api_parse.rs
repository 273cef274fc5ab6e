//! The API's request parser on arbitrary method/path/body bytes: never a
//! panic, never a 5xx.
#![no_main]
use libfuzzer_sys::fuzz_target;

const METHODS: [&str; 5] = ["GET", "PUT", "PATCH", "POST", "DELETE"];

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let path = String::from_utf8_lossy(&rest[..split]);
    let body = rest.get(split + 1..).unwrap_or(&[]);
    let method = METHODS[usize::from(m) % METHODS.len()];
    if let Err(response) = husk_api::parse(method, &path, body) {
        assert!(
            response.status().as_u16() < 500,
            "{method} {path}: {response:?}"
        );
    }
});
