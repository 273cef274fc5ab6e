//! `husk run REF`: an image from a registry (Debian's docker-registry in
//! the same host, the test image pushed there by skopeo) pulled into the
//! store on first use and run in a microVM; later runs need no registry.

use husk_tests::registry::{Registry, Setup};
use husk_tests::require_linux_kvm;
use std::process::Command;

use crate::run::{image, TIMEOUT};

#[test]
fn run_pulls_a_missing_image_from_its_registry_and_runs_it() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::start(&dir.path().join("registry"), Setup::default());
    registry.push_with_skopeo(&format!("oci:{}", image().display()), "husk/test:1");
    let addr = registry.addr.clone();
    let name = format!("{addr}/husk/test:1");
    let husk = |args: &[&str]| {
        let mut c = Command::new(husk_tests::husk::binary());
        c.arg("run")
            .args(["--rm", "--insecure-registry", &addr])
            .args(args)
            .env("HUSK_STORE", dir.path().join("store"))
            .env("HUSK_IMAGE_CACHE", dir.path().join("cache"))
            .env("HUSK_RUNTIME_DIR", dir.path().join("run"))
            .env("REGISTRY_AUTH_FILE", dir.path().join("auth.json"));
        husk_tests::process::run(c, TIMEOUT)
    };

    let first = husk(&[&name, "sh", "-c", "echo ran from the registry"]);
    assert_eq!(first.code, Some(0), "{}", first.describe());
    assert_eq!(
        first.stdout,
        "ran from the registry\n",
        "{}",
        first.describe()
    );
    assert!(
        first.stderr.contains(&format!("pulled {name}:")),
        "{}",
        first.describe()
    );

    // Stored now: no registry needed, nothing pulled.
    registry.kill();
    let second = husk(&["--pull", "never", &name, "echo", "again"]);
    assert_eq!(second.code, Some(0), "{}", second.describe());
    assert_eq!(second.stdout, "again\n");
    assert!(!second.stderr.contains("pulled"), "{}", second.describe());

    let missing = husk(&["--pull", "never", &format!("{addr}/husk/other:1"), "true"]);
    assert_eq!(missing.code, Some(1), "{}", missing.describe());
    assert!(
        missing.stderr.contains("(and --pull never)"),
        "{}",
        missing.describe()
    );
}
