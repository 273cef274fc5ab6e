//! `husk pull`, `login`, `images` and `rmi` against the real registry
//! server (Debian's docker-registry) on 127.0.0.1, with skopeo pushing the
//! images. No VM is involved: these run natively on any host; running a
//! pulled image is an e2e test (tests/e2e/registry.rs).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_image::{Image, ImageStore};
use husk_tests::process::{self, Finished};
use husk_tests::registry::{Meddle, Registry, Relay, Setup, PROGRAM, SKOPEO};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A scratch home for one test: store, cache, auth file, registry.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    /// None (after reporting the skip) when the tools are missing.
    fn new() -> Option<Env> {
        for tool in [PROGRAM, SKOPEO, "/bin/busybox"] {
            if !Path::new(tool).exists() {
                husk_skip::skip(&format!(
                    "{tool} is not installed (scripts/setup installs it)"
                ));
                return None;
            }
        }
        Some(Env {
            dir: tempfile::tempdir().unwrap(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn store(&self) -> PathBuf {
        self.path("store")
    }

    fn registry(&self, setup: Setup) -> Registry {
        Registry::start(&self.path("registry"), setup)
    }

    /// The test image as an OCI layout; `extra` adds a layer of that many
    /// random bytes (gzip, as skopeo would push it anyway; random data stays its size).
    fn layout(&self, name: &str, extra: usize) -> PathBuf {
        use husk_image::testimage::{self, Compression, Entry, Layer};
        let mut image = testimage::husk_test_image(Path::new("/bin/busybox")).unwrap();
        if extra > 0 {
            let mut data = vec![0u8; extra];
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            for b in data.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            image.layers.push(Layer::new(
                vec![Entry::file("big", 0o644, data)],
                Compression::Gzip,
            ));
        }
        let out = self.path(name);
        image.build().unwrap().write_layout(&out).unwrap();
        out
    }

    fn husk(&self, args: &[&str]) -> Finished {
        process::run(self.command(args), TIMEOUT)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(husk_tests::husk::binary());
        cmd.args(args)
            .env("HUSK_STORE", self.store())
            .env("HUSK_IMAGE_CACHE", self.path("cache"))
            .env("REGISTRY_AUTH_FILE", self.path("auth.json"))
            .env_remove("DOCKER_CONFIG")
            .env_remove("XDG_RUNTIME_DIR");
        cmd
    }

    /// `husk login` (with --tls-ca for a TLS registry, else
    /// --insecure-registry), the password on stdin.
    fn login(&self, registry: &Registry, user: &str, password: &str) -> Finished {
        let ca = registry.ca();
        let reach = match registry.setup.tls {
            true => ["--tls-ca", ca.to_str().unwrap()],
            false => ["--insecure-registry", registry.addr.as_str()],
        };
        let mut cmd = self.command(
            &[
                &["login"],
                &reach[..],
                &["-u", user, "--password-stdin", &registry.addr],
            ]
            .concat(),
        );
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        let out = child.wait_with_output().unwrap();
        Finished {
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
            code: out.status.code(),
            timed_out: false,
            elapsed: Duration::ZERO,
        }
    }

    fn blobs(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.store().join("blobs/sha256"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn partials(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.store().join("tmp"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    }
}

fn ok(run: &Finished, what: &str) {
    assert_eq!(run.code, Some(0), "{what}: {}", run.describe());
}

/// A failure said in one line on stderr, naming the registry (after the
/// progress lines of what did arrive).
fn one_line_error(run: &Finished, registry: &str, needle: &str) {
    assert_eq!(run.code, Some(1), "{}", run.describe());
    let said: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("husk:"))
        .collect();
    assert_eq!(said.len(), 1, "one line: {}", run.describe());
    assert_eq!(
        Some(said[0]),
        run.stderr.lines().last(),
        "{}",
        run.describe()
    );
    assert!(
        said[0].starts_with(&format!("husk: registry {registry}: ")) && said[0].contains(needle),
        "{needle:?} from registry {registry}: {}",
        run.describe()
    );
}

/// The image the store names `name` opens, verifies and unpacks whole,
/// and is the image `layout` holds.
fn stored_image_is(env: &Env, name: &str, layout: &Path) {
    let stored = Image::open_named(&env.store(), name).unwrap();
    let source = Image::open(layout).unwrap();
    assert_eq!(stored.manifest_digest(), source.manifest_digest());
    let tree = env.path(&format!("unpacked-{}", stored.manifest_digest()));
    stored.unpack(&tree, &mut |_| {}).unwrap();
    assert!(tree.join("bin/busybox").is_file());
}

#[test]
fn pulls_by_tag_and_digest_over_tls_with_a_login() {
    let Some(env) = Env::new() else { return };
    let registry = env.registry(Setup {
        tls: true,
        login: Some(("alice".into(), "s3cret".into())),
        token: false,
    });
    let layout = env.layout("layout", 0);
    registry.push_with_skopeo(&format!("oci:{}", layout.display()), "husk/test:1");
    let (addr, ca) = (registry.addr.as_str(), registry.ca());
    let ca = ca.to_str().unwrap();
    let name = format!("{addr}/husk/test:1");

    let anonymous = env.husk(&["pull", "--tls-ca", ca, &name]);
    one_line_error(
        &anonymous,
        addr,
        &format!("wants a login (husk login {addr})"),
    );
    let wrong = env.login(&registry, "alice", "guess");
    one_line_error(&wrong, addr, "wrong user name or password");
    assert!(
        !env.path("auth.json").exists(),
        "a failed login saves nothing"
    );
    ok(&env.login(&registry, "alice", "s3cret"), "login");

    let untrusted = env.husk(&["pull", &name]);
    one_line_error(&untrusted, addr, "certificate");
    let unknown = env.husk(&["pull", "--tls-ca", ca, &format!("{addr}/husk/test:nope")]);
    one_line_error(&unknown, addr, "husk/test:nope: not found");

    // A system without CA certificates: the error says what is missing.
    let no_roots = |args: &[&str]| {
        let mut cmd = env.command(args);
        cmd.env("SSL_CERT_FILE", "/nonexistent")
            .env("SSL_CERT_DIR", "/nonexistent");
        process::run(cmd, TIMEOUT)
    };
    one_line_error(
        &no_roots(&["pull", &name]),
        addr,
        "apt-get install ca-certificates",
    );
    one_line_error(
        &no_roots(&["pull", "--tls-ca", ca, &name]),
        addr,
        "apt-get install ca-certificates",
    );

    let pulled = env.husk(&["pull", "--tls-ca", ca, &name]);
    ok(&pulled, "pull by tag");
    let digest = pulled
        .stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("name and digest: {}", pulled.describe()))
        .to_string();
    assert_eq!(pulled.stdout.trim(), format!("{name} {digest}"));
    stored_image_is(&env, &name, &layout);

    let by_digest = format!("{addr}/husk/test@{digest}");
    let again = env.husk(&["pull", "--tls-ca", ca, &by_digest]);
    ok(&again, "pull by digest");
    assert!(
        again.stderr.contains("0 blobs fetched"),
        "shared blobs: {}",
        again.describe()
    );
    stored_image_is(&env, &by_digest, &layout);
    let images = env.husk(&["images", "-q"]);
    ok(&images, "images");
    assert_eq!(images.stdout, format!("{name}\n{by_digest}\n"));
}

#[test]
fn a_registry_killed_mid_pull_leaves_nothing_trusted_and_the_next_pull_resumes() {
    let Some(env) = Env::new() else { return };
    let mut registry = env.registry(Setup::default());
    let layout = env.layout("layout", 6 << 20);
    registry.push_with_skopeo(&format!("oci:{}", layout.display()), "husk/big:1");
    // 2 MiB/s: the 6 MiB layer takes 3 s, time enough to pull the plug.
    let relay = Relay::start(&registry.addr, Meddle::Throttle(2 << 20));
    let name = format!("{}/husk/big:1", relay.addr);
    let pull = || {
        let mut cmd = env.command(&["pull", "--insecure-registry", &relay.addr, &name]);
        cmd.stdin(Stdio::null());
        cmd
    };
    let first = process::Running::spawn(pull());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env
        .partials()
        .iter()
        .any(|p| p.metadata().is_ok_and(|m| m.len() > 512 << 10))
    {
        assert!(
            Instant::now() < deadline,
            "no download in progress after 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    registry.kill();
    let first = first.finish(TIMEOUT);
    assert_eq!(first.code, Some(1), "{}", first.describe());
    assert!(first.stderr.contains("retrying"), "{}", first.describe());
    let last = first.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("husk: registry {}: blob sha256:", relay.addr))
            && last.contains("gave up after 5 attempts"),
        "{}",
        first.describe()
    );
    assert!(ImageStore::open(env.store())
        .unwrap()
        .images()
        .unwrap()
        .is_empty());

    registry.restart();
    let second = process::run(pull(), TIMEOUT);
    ok(&second, "the pull after the registry came back");
    assert!(
        second
            .stderr
            .contains("resuming an interrupted download at"),
        "{}",
        second.describe()
    );
    stored_image_is(&env, &name, &layout);
    assert!(env.partials().is_empty(), "{:?}", env.partials());
}

#[test]
fn a_tampered_blob_is_refused_and_not_kept() {
    let Some(env) = Env::new() else { return };
    let registry = env.registry(Setup::default());
    let layout = env.layout("layout", 1 << 20);
    registry.push_with_skopeo(&format!("oci:{}", layout.display()), "husk/t:1");
    let relay = Relay::start(&registry.addr, Meddle::Tamper(256 << 10));
    let name = format!("{}/husk/t:1", relay.addr);
    let run = env.husk(&["pull", "--insecure-registry", &relay.addr, &name]);
    one_line_error(&run, &relay.addr, "is corrupt");
    assert!(ImageStore::open(env.store())
        .unwrap()
        .images()
        .unwrap()
        .is_empty());
    // "husk: registry ADDR: blob sha256:HEX is corrupt: ..."
    let hex = run
        .stderr
        .split("blob sha256:")
        .nth(1)
        .and_then(|t| t.get(..64))
        .unwrap_or_else(|| panic!("the blob's digest: {}", run.describe()));
    assert!(
        !env.blobs().iter().any(|b| b == hex),
        "the wrong blob is not stored"
    );
    let partial = env.store().join(format!("tmp/{hex}.partial"));
    assert!(!partial.exists(), "a wrong blob is not kept to resume from");
    // The blobs that arrived whole are kept and serve the next pull.
    let untampered = env.husk(&[
        "pull",
        "--insecure-registry",
        &registry.addr,
        &format!("{}/husk/t:1", registry.addr),
    ]);
    ok(&untampered, "the same image without the relay");
}

#[test]
fn two_pulls_at_once_fetch_each_blob_once() {
    let Some(env) = Env::new() else { return };
    let registry = env.registry(Setup::default());
    let layout = env.layout("layout", 4 << 20);
    registry.push_with_skopeo(&format!("oci:{}", layout.display()), "husk/p:1");
    let relay = Relay::start(&registry.addr, Meddle::Throttle(8 << 20));
    let name = format!("{}/husk/p:1", relay.addr);
    let pulls: Vec<_> = (0..2)
        .map(|_| {
            let cmd = env.command(&["pull", "--insecure-registry", &relay.addr, &name]);
            std::thread::spawn(move || process::run(cmd, TIMEOUT))
        })
        .collect();
    let runs: Vec<Finished> = pulls.into_iter().map(|p| p.join().unwrap()).collect();
    let mut fetched = 0;
    for run in &runs {
        ok(run, "a concurrent pull");
        // "pulled NAME: N blobs fetched (SIZE), M already stored"
        let count: usize = run
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("pulled ")?.split(": ").nth(1))
            .and_then(|t| t.split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("a fetched count: {}", run.describe()));
        fetched += count;
    }
    let source = Image::open(&layout).unwrap();
    assert_eq!(
        fetched,
        source.layer_count() + 1,
        "config and layers, once each"
    );
    let store = ImageStore::open(env.store()).unwrap();
    assert_eq!(store.images().unwrap().len(), 1);
    assert!(env.partials().is_empty());
    stored_image_is(&env, &name, &layout);
}

#[test]
fn rmi_keeps_the_blobs_another_image_uses() {
    let Some(env) = Env::new() else { return };
    let registry = env.registry(Setup::default());
    let small = env.layout("small", 0);
    let big = env.layout("big", 64 << 10);
    registry.push_with_skopeo(&format!("oci:{}", small.display()), "husk/a:1");
    registry.push_with_skopeo(&format!("oci:{}", big.display()), "husk/b:1");
    let (a, b) = (
        format!("{}/husk/a:1", registry.addr),
        format!("{}/husk/b:1", registry.addr),
    );
    for name in [&a, &b] {
        ok(
            &env.husk(&["pull", "--insecure-registry", &registry.addr, name]),
            name,
        );
    }
    let before = env.blobs();
    // a: manifest, config, 2 layers; b: manifest, config, the same 2 + 1.
    assert_eq!(before.len(), 7, "{before:?}");
    let rmi = env.husk(&["rmi", &a]);
    ok(&rmi, "rmi a");
    assert!(rmi.stdout.contains("deleted 2 blobs"), "{}", rmi.describe());
    stored_image_is(&env, &b, &big);
    let unknown = env.husk(&["rmi", &a]);
    assert_eq!(unknown.code, Some(1), "{}", unknown.describe());
    assert!(unknown.stderr.contains(&format!("no image {a}")));
    ok(&env.husk(&["rmi", &b]), "rmi b");
    assert!(env.blobs().is_empty(), "{:?}", env.blobs());
}

#[test]
fn push_sends_what_the_registry_lacks_and_the_image_pulls_back_the_same() {
    let Some(env) = Env::new() else { return };
    let registry = env.registry(Setup {
        tls: true,
        login: Some(("bob".into(), "hunter2".into())),
        token: false,
    });
    let layout = env.layout("layout", 256 << 10);
    registry.push_with_skopeo(&format!("oci:{}", layout.display()), "husk/src:1");
    let (addr, ca) = (registry.addr.as_str(), registry.ca());
    let ca = ca.to_str().unwrap();
    let (source, target) = (format!("{addr}/husk/src:1"), format!("{addr}/husk/dst:2"));
    ok(&env.login(&registry, "bob", "hunter2"), "login");
    ok(&env.husk(&["pull", "-q", "--tls-ca", ca, &source]), "pull");

    let pushed = env.husk(&["push", "--tls-ca", ca, &source, &target]);
    ok(&pushed, "push");
    // A new repository: the registry mounts nothing across, every blob goes.
    assert!(
        pushed.stderr.contains("4 blobs uploaded"),
        "{}",
        pushed.describe()
    );
    let again = env.husk(&["push", "--tls-ca", ca, &source, &target]);
    ok(&again, "push again");
    assert!(
        again.stderr.contains("0 blobs uploaded"),
        "{}",
        again.describe()
    );
    let digest = pushed.stdout.split_whitespace().nth(1).unwrap().to_string();

    ok(&env.husk(&["rmi", &source]), "rmi");
    assert!(env.blobs().is_empty());
    let back = env.husk(&["pull", "--tls-ca", ca, &target]);
    ok(&back, "pull what was pushed");
    assert_eq!(back.stdout.trim(), format!("{target} {digest}"));
    stored_image_is(&env, &target, &layout);

    let logout = env.husk(&["logout", addr]);
    ok(&logout, "logout");
    let denied = env.husk(&[
        "push",
        "--tls-ca",
        ca,
        &target,
        &format!("{addr}/husk/dst:3"),
    ]);
    one_line_error(&denied, addr, "wants a login");
}

#[test]
fn save_and_load_round_trip_and_skopeo_reads_the_archive_both_ways() {
    let Some(env) = Env::new() else { return };
    let layout = env.layout("layout", 0);
    let layout_digest = Image::open(&layout).unwrap().manifest_digest().to_string();
    let docker_tar = env.path("docker.tar");
    husk_image::testimage::write_docker_archive(Path::new("/bin/busybox"), &docker_tar).unwrap();

    let nameless = env.husk(&["load", "-i", layout.to_str().unwrap()]);
    assert_eq!(nameless.code, Some(2), "{}", nameless.describe());
    assert!(
        nameless.stderr.contains("give the name"),
        "{}",
        nameless.describe()
    );
    let loaded = env.husk(&["load", "-i", layout.to_str().unwrap(), "localhost/husk/l:1"]);
    ok(&loaded, "load a layout");
    assert_eq!(
        loaded.stdout.trim(),
        format!("localhost/husk/l:1 {layout_digest}")
    );
    ok(
        &env.husk(&[
            "load",
            "-i",
            docker_tar.to_str().unwrap(),
            "localhost/husk/d:1",
        ]),
        "load a docker save",
    );
    stored_image_is_loaded(&env, "localhost/husk/d:1");

    let archive = env.path("saved.tar");
    ok(
        &env.husk(&[
            "save",
            "-o",
            archive.to_str().unwrap(),
            "localhost/husk/l:1",
        ]),
        "save",
    );
    // skopeo copies (and so checks every blob of) the archive either way.
    for transport in ["oci-archive", "docker-archive"] {
        let out = Command::new(SKOPEO)
            .args(["--insecure-policy", "copy", "--quiet"])
            .arg(format!("{transport}:{}", archive.display()))
            .arg(format!("oci:{}:x", env.path(transport).display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo {transport}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ok(&env.husk(&["rmi", "localhost/husk/l:1"]), "rmi");
    let mut cmd = env.command(&["load"]);
    cmd.stdin(std::fs::File::open(&archive).unwrap());
    let back = cmd.output().unwrap();
    assert!(
        back.status.success(),
        "{}",
        String::from_utf8_lossy(&back.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&back.stdout).trim(),
        format!("localhost/husk/l:1 {layout_digest}"),
        "the archive's own name and the same manifest"
    );
    stored_image_is(&env, "localhost/husk/l:1", &layout);
}

/// A loaded image opens from the store and unpacks whole.
fn stored_image_is_loaded(env: &Env, name: &str) {
    let stored = Image::open_named(&env.store(), name).unwrap();
    let tree = env.path(&format!("unpacked-{}", stored.manifest_digest()));
    stored.unpack(&tree, &mut |_| {}).unwrap();
    assert!(tree.join("bin/busybox").is_file());
}

/// An OCI layout whose index lists `amd64` as linux/amd64 and `other` as
/// `other_platform` (a nested index, as multi-arch images are pushed).
fn multi_arch(env: &Env, amd64: Option<&Path>, other: &Path, other_platform: &str) -> PathBuf {
    let dir = env.path(&format!("multi-{}", amd64.is_some()));
    let mut entries = Vec::new();
    let (os, arch) = other_platform.split_once('/').unwrap();
    for (layout, os, arch) in [(amd64, "linux", "amd64"), (Some(other), os, arch)] {
        let Some(layout) = layout else { continue };
        let digest = Image::open(layout).unwrap().manifest_digest().to_string();
        std::fs::create_dir_all(&dir).unwrap();
        let copied = Command::new("cp")
            .arg("-r")
            .arg(format!("{}/.", layout.display()))
            .arg(&dir)
            .status()
            .unwrap();
        assert!(copied.success());
        let size = std::fs::metadata(dir.join("blobs/sha256").join(&digest[7..]))
            .unwrap()
            .len();
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": size,
            "platform": {"os": os, "architecture": arch},
        }));
    }
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .unwrap();
    let digest = husk_image::Digest::of(&nested);
    std::fs::write(dir.join("blobs/sha256").join(digest.hex()), &nested).unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest.to_string(), "size": nested.len(),
        }],
    });
    std::fs::write(dir.join("index.json"), top.to_string()).unwrap();
    dir
}

#[test]
fn a_multi_arch_image_pulls_as_its_linux_amd64_image_only() {
    let Some(env) = Env::new() else { return };
    let registry = env.registry(Setup::default());
    let (amd64, other) = (env.layout("amd64", 0), env.layout("other", 64 << 10));
    let multi = multi_arch(&env, Some(&amd64), &other, "linux/arm64");
    let push_all = |layout: &Path, repo: &str| {
        let out = Command::new(SKOPEO)
            .args([
                "--insecure-policy",
                "copy",
                "--all",
                "--quiet",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci:{}", layout.display()))
            .arg(format!("docker://{}/{repo}", registry.addr))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    push_all(&multi, "husk/multi:1");
    let name = format!("{}/husk/multi:1", registry.addr);
    let pulled = env.husk(&["pull", "--insecure-registry", &registry.addr, &name]);
    ok(&pulled, "pull a multi-arch image");
    stored_image_is(&env, &name, &amd64);
    // The index, the amd64 manifest, its config and its two layers: none
    // of the arm64 image's blobs.
    assert_eq!(env.blobs().len(), 5, "{:?}", env.blobs());

    let arm_only = multi_arch(&env, None, &other, "linux/arm64");
    push_all(&arm_only, "husk/arm:1");
    let arm = format!("{}/husk/arm:1", registry.addr);
    let refused = env.husk(&["pull", "--insecure-registry", &registry.addr, &arm]);
    one_line_error(
        &refused,
        &registry.addr,
        "has no linux/amd64 image (it has linux/arm64)",
    );
}

#[test]
fn prune_drops_interrupted_downloads_and_block_images_of_unstored_images() {
    let Some(env) = Env::new() else { return };
    let registry = env.registry(Setup::default());
    let layout = env.layout("layout", 0);
    registry.push_with_skopeo(&format!("oci:{}", layout.display()), "husk/p:1");
    let name = format!("{}/husk/p:1", registry.addr);
    ok(
        &env.husk(&["pull", "--insecure-registry", &registry.addr, &name]),
        "pull",
    );
    ok(&env.husk(&["tag", &name, "localhost/kept:1"]), "tag");
    ok(&env.husk(&["rmi", &name]), "rmi the first name");
    stored_image_is(&env, "localhost/kept:1", &layout);
    let blobs = env.blobs();

    let cache = env.path("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let kept = Image::open(&layout).unwrap().manifest_digest()[7..].to_string();
    let stale = "0".repeat(64);
    for hex in [&kept, &stale] {
        std::fs::write(cache.join(format!("{hex}.erofs")), "block image").unwrap();
    }
    std::fs::write(env.store().join(format!("tmp/{stale}.partial")), "half").unwrap();
    let prune = env.husk(&["image", "prune"]);
    ok(&prune, "prune");
    assert!(
        prune.stdout.contains("deleted 0 blobs") && prune.stdout.contains("1 block images"),
        "{}",
        prune.describe()
    );
    assert!(cache.join(format!("{kept}.erofs")).exists());
    assert!(!cache.join(format!("{stale}.erofs")).exists());
    assert!(env.partials().is_empty());
    assert_eq!(env.blobs(), blobs);
}

#[test]
fn a_token_auth_registry_as_docker_hub_runs_it() {
    let Some(env) = Env::new() else { return };
    let registry = env.registry(Setup {
        tls: false,
        login: Some(("carol".into(), "t0ken".into())),
        token: true,
    });
    let layout = env.layout("layout", 0);
    registry.push_with_skopeo(&format!("oci:{}", layout.display()), "husk/tok:1");
    let addr = registry.addr.as_str();
    let name = format!("{addr}/husk/tok:1");
    let insecure = ["--insecure-registry", addr];

    let anonymous = env.husk(&[&["pull"], &insecure[..], &[&name]].concat());
    one_line_error(&anonymous, addr, "wants a login");
    let wrong = env.login(&registry, "carol", "guess");
    one_line_error(&wrong, addr, "wrong user name or password");
    ok(&env.login(&registry, "carol", "t0ken"), "login");

    ok(
        &env.husk(&[&["pull"], &insecure[..], &[&name]].concat()),
        "pull with a token",
    );
    stored_image_is(&env, &name, &layout);
    let pushed = env.husk(
        &[
            &["push"],
            &insecure[..],
            &[&name, &format!("{addr}/husk/tok2:1")],
        ]
        .concat(),
    );
    ok(&pushed, "push with a token");
}
