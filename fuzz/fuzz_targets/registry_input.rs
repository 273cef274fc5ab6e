//! What a user hands the registry client: an image reference (`husk pull
//! REF`) and an auth file (`~/.docker/config.json`, `$REGISTRY_AUTH_FILE`),
//! looked up for the registry the reference names. Never a panic; an auth
//! file that does not parse is an error naming the file.
#![no_main]
use husk_image::registry::{self, auth};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first line is the reference, the rest the auth file.
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let reference = String::from_utf8_lossy(&data[..split]);
    let _ = registry::looks_like_reference(&reference);
    let registry = match registry::parse_reference(&reference) {
        Ok(r) => r.registry().to_string(),
        Err(_) => "docker.io".to_string(),
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    std::fs::write(&file, data.get(split + 1..).unwrap_or_default()).unwrap();
    if let Err(e) = auth::lookup(&registry, std::slice::from_ref(&file)) {
        // A credential helper named by the file is not run by the fuzzer's
        // inputs unless one is installed; any error names its source.
        let said = e.to_string();
        assert!(
            said.contains("config.json") || said.contains("docker-credential-"),
            "{said}"
        );
    }
});
