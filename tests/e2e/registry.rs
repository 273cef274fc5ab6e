//! `husk run REF`: an image from a registry (Debian's docker-registry in
//! the same host, the test image pushed there by skopeo) pulled into the
//! store on first use and run in a microVM; later runs need no registry.

use husk_tests::process::Finished;
use husk_tests::registry::{Registry, Setup};
use husk_tests::require_linux_kvm;
use std::path::Path;
use std::process::Command;

use crate::run::{image, TIMEOUT};

/// `husk ARGS` with its store, cache, runtime dir and auth file in `dir`.
fn husk_in(dir: &Path, args: &[&str]) -> Finished {
    let mut c = Command::new(husk_tests::husk::binary());
    c.args(args)
        .env("HUSK_STORE", dir.join("store"))
        .env("HUSK_IMAGE_CACHE", dir.join("cache"))
        .env("HUSK_RUNTIME_DIR", dir.join("run"))
        .env("REGISTRY_AUTH_FILE", dir.join("auth.json"));
    husk_tests::process::run(c, TIMEOUT)
}

#[test]
fn run_pulls_a_missing_image_from_its_registry_and_runs_it() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::start(&dir.path().join("registry"), Setup::default());
    registry.push_with_skopeo(&format!("oci:{}", image().display()), "husk/test:1");
    let addr = registry.addr.clone();
    let name = format!("{addr}/husk/test:1");
    let husk = |args: &[&str]| {
        husk_in(
            dir.path(),
            &[&["run", "--rm", "--insecure-registry", &addr], args].concat(),
        )
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

/// The seeds' workflow: run an image from a registry, change the
/// container, commit it, push it, forget it locally, pull and run it again.
#[test]
fn commit_push_rmi_pull_run_sees_the_committed_change() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), Setup::default());
    registry.push_with_skopeo(&format!("oci:{}", image().display()), "husk/test:1");
    let addr = registry.addr.clone();
    let (base, committed) = (
        format!("{addr}/husk/test:1"),
        format!("{addr}/husk/committed:1"),
    );
    let husk = |args: &[&str]| husk_in(dir.path(), args);
    let ok = |run: &Finished, what: &str| {
        assert_eq!(run.code, Some(0), "{what}: {}", run.describe());
    };
    let insecure = ["--insecure-registry", addr.as_str()];

    let started = husk(&[&["run", "-d"], &insecure[..], &[&base, "sleep", "600"]].concat());
    ok(&started, "run -d");
    let id = started.stdout.trim().to_string();
    let change = "echo committed > /etc/committed && rm /etc/husk-test-image && mkdir -p /srv/data";
    ok(&husk(&["exec", &id, "sh", "-c", change]), "exec");
    let commit = husk(&["commit", "-m", "the e2e test", &id, &committed]);
    ok(&commit, "commit");
    assert!(
        commit.stdout.starts_with(&format!("{committed} sha256:")),
        "{}",
        commit.describe()
    );
    ok(&husk(&["rm", "-f", &id]), "rm -f");

    ok(
        &husk(&[&["push"], &insecure[..], &[&committed]].concat()),
        "push",
    );
    ok(&husk(&["rmi", &committed, &base]), "rmi");
    let images = husk(&["images", "-q"]);
    assert_eq!(images.stdout, "", "{}", images.describe());

    let check = "cat /etc/committed; test -e /etc/husk-test-image || echo deleted; test -d /srv/data && echo dir";
    let rerun = husk(
        &[
            &["run", "--rm"],
            &insecure[..],
            &[&committed, "sh", "-c", check],
        ]
        .concat(),
    );
    ok(&rerun, "run the pulled commit");
    assert_eq!(
        rerun.stdout,
        "committed\ndeleted\ndir\n",
        "{}",
        rerun.describe()
    );
    assert!(
        rerun.stderr.contains(&format!("pulled {committed}:")),
        "{}",
        rerun.describe()
    );
}
