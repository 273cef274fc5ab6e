//! The project's test image, from Debian's static busybox.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use husk_image::testimage::{self, REF_NAME};
use husk_image::{Cache, Image};

use crate::common::*;

const BUSYBOX: &str = "/bin/busybox";

fn busybox() -> &'static Path {
    let path = Path::new(BUSYBOX);
    assert!(
        path.is_file(),
        "{BUSYBOX} missing: apt-get install busybox-static"
    );
    path
}

#[test]
fn the_layout_is_reproducible_and_has_what_the_e2e_tests_expect() {
    let dir = tempdir();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    testimage::write_layout(busybox(), &a).unwrap();
    testimage::write_layout(busybox(), &b).unwrap();
    let image = Image::open(&a).unwrap();
    assert_eq!(
        image.manifest_digest(),
        Image::open(&b).unwrap().manifest_digest()
    );
    assert_eq!(contents(&a), contents(&b));

    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(a.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        REF_NAME
    );
    let defaults = image.defaults();
    assert_eq!(defaults.cmd, ["/bin/sh"]);
    assert!(defaults.entrypoint.is_empty());
    assert_eq!(
        defaults.env,
        ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    );
    assert_eq!(defaults.working_dir.as_deref(), Some("/"));
    assert_eq!(defaults.user, None);
    assert_eq!(image.layer_count(), 2);

    let root = dir.path().join("root");
    image.unpack(&root, &mut |_| {}).unwrap();
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
    assert_eq!(
        fs::read_link(root.join("usr/bin/env")).unwrap().to_str(),
        Some("../../bin/busybox")
    );
    assert!(
        root.join("sbin/ifconfig").exists(),
        "links resolve in the tree"
    );
    assert!(!root.join("linuxrc").exists());
    assert_eq!(
        fs::read(root.join("bin/busybox")).unwrap(),
        fs::read(BUSYBOX).unwrap()
    );
    assert!(fs::read_to_string(root.join("etc/husk-test-image"))
        .unwrap()
        .contains("husk test image"));
    assert!(!root.join("etc/motd-to-delete").exists());
    assert!(!root.join("etc/.wh.motd-to-delete").exists());
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.contains("husk:x:1000:1000:husk:/home/husk:/bin/sh"));
    assert!(passwd.contains("nobody:x:65534:65534:"));
    let mode = |p: &str| fs::metadata(root.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(mode("root"), 0o700);
    for d in ["proc", "sys", "dev", "etc", "home/husk"] {
        assert!(root.join(d).is_dir(), "{d}");
    }
    if is_root() {
        let home = fs::metadata(root.join("home/husk")).unwrap();
        assert_eq!((home.uid(), home.gid()), (1000, 1000));
    }
}

#[test]
fn the_archives_hold_the_same_image() {
    let dir = tempdir();
    let layout = dir.path().join("layout");
    let oci = dir.path().join("oci.tar");
    let docker = dir.path().join("docker.tar");
    testimage::write_layout(busybox(), &layout).unwrap();
    testimage::write_oci_archive(busybox(), &oci).unwrap();
    testimage::write_docker_archive(busybox(), &docker).unwrap();
    let from_layout = Image::open(&layout).unwrap();
    let from_oci = Image::open(&oci).unwrap();
    let from_docker = Image::open(&docker).unwrap();
    assert_eq!(from_layout.manifest_digest(), from_oci.manifest_digest());
    assert_eq!(from_layout.config_digest(), from_docker.config_digest());
    assert_eq!(from_layout.defaults(), from_docker.defaults());
    let mut trees = Vec::new();
    for (name, image) in [
        ("layout", from_layout),
        ("oci", from_oci),
        ("docker", from_docker),
    ] {
        let root = dir.path().join(format!("{name}-root"));
        image.unpack(&root, &mut |_| {}).unwrap();
        trees.push(listing(&root));
    }
    assert_eq!(trees[0], trees[1]);
    assert_eq!(trees[0], trees[2]);
}

#[test]
fn the_test_image_converts_to_erofs() {
    let dir = tempdir();
    let layout = dir.path().join("layout");
    testimage::write_layout(busybox(), &layout).unwrap();
    let image = Image::open(&layout).unwrap();
    let block = Cache::new(dir.path().join("cache"))
        .block_image(&image, &mut |_| {})
        .unwrap();
    assert!(block.converted);
    let out = std::process::Command::new("dump.erofs")
        .arg("--path=/bin/sh")
        .arg(&block.path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("symlink"), "{text}");
}
