//! Bad input gives a clear error naming the blob or file at fault.

use std::fs;
use std::io::Write;

use husk_image::testimage::{layer_tar, Compression, Entry, Layer};
use husk_image::{Error, Image};
use serde_json::json;

use crate::common::*;

fn two_layer_layout(
    dir: &std::path::Path,
) -> (husk_image::testimage::BuiltImage, std::path::PathBuf) {
    let built = spec(vec![
        vec![Entry::file("a", 0o644, "a".repeat(1000))],
        vec![Entry::file("b", 0o644, "b")],
    ])
    .build()
    .unwrap();
    let layout = write(&built, Form::Layout, dir);
    (built, layout)
}

fn unpack_err(path: &std::path::Path, dest: &std::path::Path) -> Error {
    Image::open(path)
        .unwrap()
        .unpack(dest, &mut |_| {})
        .expect_err("unpack must fail")
}

#[test]
fn a_tampered_layer_is_named_by_its_digest() {
    let dir = tempdir();
    let (built, layout) = two_layer_layout(dir.path());
    let digest = &built.layer_digests[1];
    let blob = layer_blob_path(&layout, digest);
    let mut data = fs::read(&blob).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0x01;
    fs::write(&blob, &data).unwrap();
    let root = dir.path().join("root");
    let err = unpack_err(&layout, &root);
    let msg = err.to_string();
    assert!(matches!(err, Error::Corrupt { .. }), "{msg}");
    assert!(
        msg.starts_with(&format!(
            "blob {digest} is corrupt: content hashes to sha256:"
        )),
        "{msg}"
    );
    // Verified before unpacking: nothing of the bad layer is in the tree.
    assert!(!root.join("b").exists());
}

#[test]
fn a_layer_of_the_wrong_size_is_refused() {
    let dir = tempdir();
    let (built, layout) = two_layer_layout(dir.path());
    let blob = layer_blob_path(&layout, &built.layer_digests[0]);
    fs::OpenOptions::new()
        .append(true)
        .open(&blob)
        .unwrap()
        .write_all(b"extra")
        .unwrap();
    let err = unpack_err(&layout, &dir.path().join("root"));
    assert!(matches!(err, Error::WrongSize { .. }), "{err}");
    assert!(err.to_string().contains(&built.layer_digests[0]), "{err}");
}

#[test]
fn a_tampered_config_or_manifest_fails_the_open() {
    for which in ["config", "manifest"] {
        let dir = tempdir();
        let (built, layout) = two_layer_layout(dir.path());
        let digest = if which == "config" {
            &built.config_digest
        } else {
            &built.manifest_digest
        };
        let path = layer_blob_path(&layout, digest);
        let text = fs::read_to_string(&path).unwrap().replacen("2", "3", 1);
        fs::write(&path, text).unwrap();
        let err = Image::open(&layout).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{which}: {err}");
        assert!(
            err.to_string()
                .contains(&format!("blob {digest} is corrupt")),
            "{which}: {err}"
        );
    }
}

#[test]
fn missing_blobs_are_named() {
    let dir = tempdir();
    let (built, layout) = two_layer_layout(dir.path());
    fs::remove_file(layer_blob_path(&layout, &built.layer_digests[1])).unwrap();
    let err = unpack_err(&layout, &dir.path().join("root"));
    assert!(matches!(err, Error::MissingBlob { .. }), "{err}");
    assert!(err.to_string().contains(&built.layer_digests[1]), "{err}");

    fs::remove_file(layer_blob_path(&layout, &built.config_digest)).unwrap();
    let err = Image::open(&layout).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "blob {} is missing from {}",
            built.config_digest,
            layout.display()
        )
    );
}

#[test]
fn a_diff_id_that_does_not_match_the_layer_is_caught() {
    let dir = tempdir();
    let (built, layout) = two_layer_layout(dir.path());
    let wrong = format!("sha256:{}", "ab".repeat(32));
    rewrite_layout(
        &layout,
        |config| config["rootfs"]["diff_ids"][1] = wrong.clone().into(),
        |_| {},
    );
    let err = unpack_err(&layout, &dir.path().join("root"));
    assert!(matches!(err, Error::DiffIdMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&built.layer_digests[1]) && msg.contains(&wrong),
        "{msg}"
    );
}

#[test]
fn a_truncated_layer_tar_is_an_error() {
    let dir = tempdir();
    let mut tar = layer_tar(&[
        Entry::file("first", 0o644, "1"),
        Entry::file("second", 0o644, vec![b'x'; 10_000]),
    ])
    .unwrap();
    // In the middle of the second file's data; the digests are of the
    // truncated bytes, so only the tar reader can notice.
    tar.truncate(512 * 3 + 4000);
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let mut spec = spec(vec![]);
        spec.layers = vec![Layer::raw(tar.clone(), compression)];
        let work = dir.path().join(format!("{compression:?}"));
        let err = try_unpack(&spec, &work).unwrap_err();
        assert!(
            matches!(err, Error::Entry { .. } | Error::Layer { .. }),
            "{compression:?}: {err}"
        );
        assert!(err.to_string().starts_with("layer sha256:"), "{err}");
    }
}

#[test]
fn a_truncated_oci_archive_is_an_error() {
    let dir = tempdir();
    let built = spec(vec![vec![Entry::file("big", 0o644, vec![7u8; 50_000])]])
        .build()
        .unwrap();
    let archive = write(&built, Form::OciArchive, dir.path());
    let data = fs::read(&archive).unwrap();
    for cut in [data.len() - 2000, data.len() / 2, 700] {
        fs::write(&archive, &data[..cut]).unwrap();
        let err = Image::open(&archive)
            .and_then(|image| image.unpack(&dir.path().join("root"), &mut |_| {}))
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                Error::Malformed { .. } | Error::MissingBlob { .. } | Error::UnknownFormat { .. }
            ),
            "cut at {cut}: {msg}"
        );
        assert!(
            msg.contains(archive.to_str().unwrap()) || msg.contains("sha256:"),
            "{msg}"
        );
    }
}

#[test]
fn malformed_json_is_an_error() {
    let dir = tempdir();
    let (_, layout) = two_layer_layout(dir.path());
    let index = layout.join("index.json");
    for bad in [&b"{not json"[..], b"[]", b"{\"schemaVersion\":2}", b""] {
        fs::write(&index, bad).unwrap();
        let err = Image::open(&layout).unwrap_err();
        assert!(matches!(err, Error::Malformed { .. }), "{err}");
        assert!(
            err.to_string().starts_with(&format!(
                "index.json in {} is malformed: ",
                layout.display()
            )),
            "{err}"
        );
    }
    // Valid JSON, but nothing husk can run.
    let schema1 = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.docker.distribution.manifest.v1+json",
        "digest": format!("sha256:{}", "00".repeat(32)), "size": 1 }]});
    fs::write(&index, schema1.to_string()).unwrap();
    let err = Image::open(&layout).unwrap_err();
    assert!(
        err.to_string().contains("no supported image manifest"),
        "{err}"
    );

    let docker = write(
        &spec(vec![vec![Entry::file("f", 0o644, "f")]])
            .build()
            .unwrap(),
        Form::Docker,
        dir.path(),
    );
    let extracted = dir.path().join("docker-dir");
    tar::Archive::new(fs::File::open(&docker).unwrap())
        .unpack(&extracted)
        .unwrap();
    for bad in [
        "{}",
        "[]",
        "[{\"Config\": 3}]",
        "[{\"Config\":\"x.json\",\"Layers\":[]}]",
    ] {
        fs::write(extracted.join("manifest.json"), bad).unwrap();
        let err = Image::open(&extracted).unwrap_err();
        assert!(matches!(err, Error::Malformed { .. }), "{bad}: {err}");
        assert!(err.to_string().contains("manifest.json"), "{err}");
    }
}

#[test]
fn unknown_media_types_are_errors() {
    let dir = tempdir();
    let (built, layout) = two_layer_layout(dir.path());
    rewrite_layout(
        &layout,
        |_| {},
        |manifest| manifest["layers"][0]["mediaType"] = "application/x-squashfs".into(),
    );
    let err = Image::open(&layout).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "blob {}: unsupported media type application/x-squashfs",
            built.layer_digests[0]
        )
    );
    rewrite_layout(
        &layout,
        |_| {},
        |manifest| {
            manifest["config"]["mediaType"] = "application/vnd.cncf.helm.config.v1+json".into()
        },
    );
    let err = Image::open(&layout).unwrap_err();
    assert!(matches!(err, Error::UnsupportedMediaType { .. }), "{err}");
}

#[test]
fn things_that_are_not_images() {
    let dir = tempdir();
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let junk = dir.path().join("junk");
    fs::write(&junk, vec![0x42u8; 5000]).unwrap();
    let gz = dir.path().join("image.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&[0u8; 2048]).unwrap();
    fs::write(&gz, enc.finish().unwrap()).unwrap();
    for (path, expect) in [
        (&empty, "neither index.json nor manifest.json"),
        (&junk, "not an OCI image layout"),
        (&gz, "gzip-compressed; decompress it first"),
    ] {
        let err = Image::open(path).unwrap_err();
        assert!(matches!(err, Error::UnknownFormat { .. }), "{err}");
        assert!(err.to_string().contains(expect), "{err}");
        assert!(err.to_string().starts_with(path.to_str().unwrap()), "{err}");
    }
    let err = Image::open(&dir.path().join("absent")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}
