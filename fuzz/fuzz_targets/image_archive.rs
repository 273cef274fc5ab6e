//! The image reader on an arbitrary file as an OCI archive or `docker save`
//! tar: open it and, if it opens, read its digest and defaults and unpack
//! it. Never a panic, and the unpack writes nothing outside its
//! destination: the scratch directory holds only the archive (unchanged)
//! and `out/root` afterwards.
//!
//! Layer blobs are checked against their digests before they are unpacked,
//! which mutation alone almost never satisfies; what reaches the unpacker
//! is a `docker save` layer that is compressed and named without a digest
//! (its diff_id is checked only after it is unpacked). The seed
//! `docker-gzip-stored` is one, with its gzip in stored (uncompressed)
//! blocks so that the tar inside stays mutable.
#![no_main]
use std::fs;
use std::path::Path;
use std::sync::Once;

use husk_image::Image;
use libfuzzer_sys::fuzz_target;

/// Largest file the unpack may write: a few KiB of zstd can expand to
/// gigabytes. Past it a write fails with EFBIG (SIGXFSZ is ignored), which
/// the unpacker reports as an error.
const MAX_FILE: libc::rlim_t = 64 << 20;

fn limit_file_size() {
    // SAFETY: plain libc calls with valid arguments, made once before any
    // other thread of this target runs.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let limit = libc::rlimit {
            rlim_cur: MAX_FILE,
            rlim_max: MAX_FILE,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Makes every directory under `dir` writable and searchable again (a
/// layer may leave modes like 0000), so the scratch directory can go.
fn unlock(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                unlock(&entry.path());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    static LIMIT: Once = Once::new();
    LIMIT.call_once(limit_file_size);

    let scratch = tempfile::Builder::new()
        .prefix("husk-fuzz-image-")
        .tempdir()
        .unwrap();
    let archive = scratch.path().join("image.tar");
    fs::write(&archive, data).unwrap();
    let Ok(image) = Image::open(&archive) else {
        return;
    };
    let digest = image.manifest_digest();
    assert!(
        digest.len() == 71
            && digest.starts_with("sha256:")
            && digest[7..]
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{digest:?}"
    );
    let _ = image.config_digest();
    let _ = image.defaults();
    let _ = image.layer_count();

    let out = scratch.path().join("out");
    fs::create_dir(&out).unwrap();
    let root = out.join("root");
    let _ = image.unpack(&root, &mut |p| {
        assert!(p.layer >= 1 && p.layer <= p.layers, "{p:?}");
        assert!(p.bytes_done <= p.bytes_total, "{p:?}");
    });

    assert_eq!(names(scratch.path()), ["image.tar", "out"]);
    assert_eq!(names(&out), ["root"]);
    assert_eq!(
        fs::read(&archive).unwrap(),
        data,
        "the archive was written to"
    );
    unlock(&root);
});
