//! Block images: converted once, cached, atomic, cleaned up.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use husk_image::testimage::Entry;
use husk_image::{BlockImage, Cache, Error, Image};

use crate::common::*;

const EROFS_MAGIC: u32 = 0xE0F5_E1E2;

fn small_image(dir: &Path) -> (Image, String) {
    let built = spec(vec![
        vec![
            Entry::dir("etc", 0o755),
            Entry::file("etc/hello", 0o644, "hello from the image\n"),
            Entry::dir("home", 0o755),
            Entry::dir("home/u", 0o700).owner(1000, 1000),
            Entry::file("home/u/suid", 0o4755, "x").owner(1000, 1000),
            Entry::file("etc/gone", 0o644, "x"),
        ],
        vec![Entry::whiteout("etc/gone")],
    ])
    .build()
    .unwrap();
    let layout = write(&built, Form::Layout, dir);
    (Image::open(&layout).unwrap(), built.manifest_digest)
}

fn assert_erofs(path: &Path) {
    let mut head = vec![0u8; 1028];
    fs::File::open(path).unwrap().read_exact(&mut head).unwrap();
    let magic = u32::from_le_bytes(head[1024..1028].try_into().unwrap());
    assert_eq!(magic, EROFS_MAGIC, "{}", path.display());
    assert!(fs::metadata(path).unwrap().len() >= 4096);
}

/// What dump.erofs says about `path` inside the image.
fn dump(image: &Path, path: &str) -> String {
    let out = Command::new("dump.erofs")
        .arg(format!("--path={path}"))
        .arg(image)
        .output()
        .expect("dump.erofs (erofs-utils)");
    assert!(out.status.success(), "dump.erofs --path={path}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn leftovers(dir: &Path) -> Vec<String> {
    dir_names(dir)
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn converts_once_then_serves_from_the_cache() {
    let dir = tempdir();
    let (image, digest) = small_image(dir.path());
    let cache_dir = dir.path().join("cache");
    let cache = Cache::new(cache_dir.clone());
    let mut events = 0;
    let first = cache.block_image(&image, &mut |_| events += 1).unwrap();
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert_eq!(
        first,
        BlockImage {
            path: cache_dir.join(format!("{hex}.erofs")),
            fs_type: "erofs",
            converted: true,
        }
    );
    assert!(events >= 2, "progress was reported");
    assert_erofs(&first.path);
    assert_eq!(
        leftovers(&cache_dir),
        Vec::<String>::new(),
        "temporary files remain"
    );
    assert_eq!(fs::metadata(&first.path).unwrap().mode() & 0o777, 0o644);

    let modified = fs::metadata(&first.path).unwrap().modified().unwrap();
    let mut events = 0;
    let second = cache.block_image(&image, &mut |_| events += 1).unwrap();
    assert_eq!(second.path, first.path);
    assert!(!second.converted);
    assert_eq!(events, 0, "no work the second time");
    assert_eq!(
        fs::metadata(&first.path).unwrap().modified().unwrap(),
        modified
    );

    // The content, as the guest will see it.
    let hello = dump(&first.path, "/etc/hello");
    assert!(hello.contains("Size: 21"), "{hello}");
    if is_root() {
        let suid = dump(&first.path, "/home/u/suid");
        assert!(suid.contains("Uid: 1000   Gid: 1000"), "{suid}");
    }
    let gone = Command::new("dump.erofs")
        .arg("--path=/etc/gone")
        .arg(&first.path)
        .output()
        .unwrap();
    assert!(
        !gone.status.success() || String::from_utf8_lossy(&gone.stdout).is_empty(),
        "the whiteout took /etc/gone out: {gone:?}"
    );
    let fsck = Command::new("fsck.erofs")
        .arg(&first.path)
        .output()
        .unwrap();
    assert!(fsck.status.success(), "{fsck:?}");
    if is_root() {
        check_mounted(&first.path);
    }
}

/// Loop-mounts the image read-only, where the kernel allows, and checks
/// what dump.erofs does not show (setuid bits, modes).
fn check_mounted(image: &Path) {
    let mnt = tempdir();
    let mounted = Command::new("mount")
        .args(["-t", "erofs", "-o", "loop,ro"])
        .arg(image)
        .arg(mnt.path())
        .output();
    if !mounted.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("not checking the mounted image: {mounted:?}");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(mnt.path());
    let meta = |p: &str| fs::symlink_metadata(mnt.path().join(p)).unwrap();
    assert_eq!(meta("home/u/suid").mode() & 0o7777, 0o4755);
    assert_eq!(
        (meta("home/u").uid(), meta("home/u").mode() & 0o7777),
        (1000, 0o700)
    );
    assert_eq!(meta(".").mode() & 0o7777, 0o755);
    assert_eq!(
        fs::read_to_string(mnt.path().join("etc/hello")).unwrap(),
        "hello from the image\n"
    );
    assert!(!mnt.path().join("etc/gone").exists());
}

#[test]
fn concurrent_conversions_of_one_image_agree() {
    let dir = tempdir();
    let (image, _) = small_image(dir.path());
    let cache = Cache::new(dir.path().join("cache"));
    let results: Vec<BlockImage> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| cache.block_image(&image, &mut |_| {}).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.iter().all(|r| r.path == results[0].path));
    assert!(results.iter().any(|r| r.converted));
    assert_erofs(&results[0].path);
    assert_eq!(leftovers(cache.dir()), Vec::<String>::new());
}

#[test]
fn a_missing_mkfs_erofs_says_what_to_install() {
    let dir = tempdir();
    let (image, _) = small_image(dir.path());
    let cache = Cache::new(dir.path().join("cache"))
        .with_mkfs_erofs(PathBuf::from("/nonexistent/mkfs.erofs"));
    let err = cache.block_image(&image, &mut |_| {}).unwrap_err();
    assert!(matches!(err, Error::MkfsMissing));
    assert_eq!(
        err.to_string(),
        "mkfs.erofs not found: apt-get install erofs-utils"
    );
    let cache = Cache::new(dir.path().join("cache"))
        .with_mkfs_erofs(PathBuf::from("no-such-mkfs-erofs-program"));
    assert!(matches!(
        cache.block_image(&image, &mut |_| {}),
        Err(Error::MkfsMissing)
    ));
}

#[test]
fn failures_leave_nothing_behind() {
    let dir = tempdir();
    let (image, _) = small_image(dir.path());
    let cache_dir = dir.path().join("cache");

    let script = dir.path().join("failing-mkfs");
    fs::write(
        &script,
        "#!/bin/sh\necho \"mkfs: no space left\" >&2\nexit 3\n",
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let cache = Cache::new(cache_dir.clone()).with_mkfs_erofs(script);
    let err = cache.block_image(&image, &mut |_| {}).unwrap_err();
    assert!(matches!(err, Error::Mkfs { .. }), "{err}");
    assert!(err.to_string().contains("no space left"), "{err}");
    assert_eq!(dir_names(&cache_dir), Vec::<String>::new());

    // A corrupt layer: the unpack fails half-way.
    let built = spec(vec![
        vec![Entry::file("a", 0o644, "a")],
        vec![Entry::file("b", 0o644, "b")],
    ])
    .build()
    .unwrap();
    let layout = write(&built, Form::Layout, dir.path());
    let blob = layer_blob_path(&layout, &built.layer_digests[1]);
    let mut data = fs::read(&blob).unwrap();
    data[20] ^= 0xff;
    fs::write(&blob, data).unwrap();
    let image = Image::open(&layout).unwrap();
    let err = Cache::new(cache_dir.clone())
        .block_image(&image, &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert_eq!(dir_names(&cache_dir), Vec::<String>::new());
}
