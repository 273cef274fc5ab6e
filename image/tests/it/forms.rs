//! The same image in every form opens and unpacks to the same tree.

use std::fs;

use husk_image::testimage::{Compression, Entry, ImageSpec, Layer};
use husk_image::{Error, Image, ImageDefaults};
use serde_json::json;

use crate::common::*;

/// Three layers, one per compression, using most entry kinds.
fn rich_spec() -> ImageSpec {
    let long_name = format!("data/{}", "n".repeat(150));
    let layer1 = vec![
        Entry::dir("etc", 0o755),
        Entry::file("etc/config", 0o640, "one").owner(1000, 1000),
        Entry::file("etc/motd", 0o644, "hello"),
        Entry::dir("usr", 0o755),
        Entry::dir("usr/bin", 0o755),
        Entry::file("usr/bin/tool", 0o4755, "#!tool"),
        Entry::hardlink("usr/bin/tool-link", "usr/bin/tool"),
        Entry::symlink("usr/bin/alias", "tool"),
        Entry::dir("tmp", 0o1777),
        Entry::dir("data", 0o2775).owner(1000, 1000),
        Entry::file("data/old", 0o644, "old"),
        Entry::file(&long_name, 0o644, "long"),
        Entry::dir("dev", 0o755),
        Entry::char_device("dev/null", 0o666, 1, 3),
        Entry::fifo("dev/fifo", 0o600),
    ];
    let layer2 = vec![
        Entry::dir("etc", 0o755),
        Entry::whiteout("etc/motd"),
        Entry::file("etc/config", 0o644, "two"),
        Entry::dir("data", 0o2775).owner(1000, 1000),
        Entry::opaque("data"),
        Entry::file("data/new", 0o600, "new"),
    ];
    let layer3 = vec![
        Entry::dir("usr", 0o755),
        Entry::dir("usr/lib", 0o755),
        Entry::file("usr/lib/libx.so", 0o755, vec![0u8; 100_000]),
    ];
    ImageSpec {
        layers: vec![
            Layer::new(layer1, Compression::Gzip),
            Layer::new(layer2, Compression::Zstd),
            Layer::new(layer3, Compression::None),
        ],
        defaults: ImageDefaults {
            entrypoint: vec!["/usr/bin/tool".into(), "--serve".into()],
            cmd: vec!["--port".into(), "80".into()],
            env: vec!["PATH=/usr/bin".into(), "A=b=c".into()],
            working_dir: Some("/data".into()),
            user: Some("1000:1000".into()),
            exposed_ports: vec!["53/udp".into(), "80/tcp".into()],
        },
        ..ImageSpec::default()
    }
}

#[test]
fn every_form_opens_and_unpacks_to_the_same_tree() {
    let dir = tempdir();
    let spec = rich_spec();
    let built = spec.build().unwrap();
    let mut trees = Vec::new();
    for form in FORMS {
        let path = write(&built, form, dir.path());
        let image = Image::open(&path).unwrap_or_else(|e| panic!("{form:?}: {e}"));
        assert_eq!(image.defaults(), &spec.defaults, "{form:?}");
        assert_eq!(image.layer_count(), 3);
        assert_eq!(image.config_digest(), built.config_digest, "{form:?}");
        match form {
            Form::Layout | Form::OciArchive => {
                assert_eq!(image.manifest_digest(), built.manifest_digest)
            }
            // A classic docker save has no manifest: Docker's image ID.
            Form::Docker => assert_eq!(image.manifest_digest(), built.config_digest),
            // Its own manifest, of the uncompressed layers.
            Form::DockerWithOci => {
                assert!(image.manifest_digest().starts_with("sha256:"));
                assert_ne!(image.manifest_digest(), built.manifest_digest);
                assert_ne!(image.manifest_digest(), built.config_digest);
            }
        }
        let root = dir.path().join(format!("{form:?}-root"));
        image
            .unpack(&root, &mut |_| {})
            .unwrap_or_else(|e| panic!("{form:?}: {e}"));
        trees.push((form, listing(&root)));
    }
    let (_, layout_tree) = &trees[0];
    for (form, tree) in &trees[1..] {
        assert_eq!(tree, layout_tree, "{form:?} differs from the layout");
    }

    let root = dir.path().join("Layout-root");
    assert_eq!(fs::read_to_string(root.join("etc/config")).unwrap(), "two");
    assert!(!root.join("etc/motd").exists());
    assert!(
        !root.join("data/old").exists(),
        "opaque dir keeps lower files"
    );
    assert_eq!(fs::read_to_string(root.join("data/new")).unwrap(), "new");
    assert_eq!(
        fs::read(root.join("usr/lib/libx.so")).unwrap().len(),
        100_000
    );
    assert_eq!(
        layout_tree["usr/bin/tool"], layout_tree["usr/bin/tool-link"],
        "hardlinked"
    );
}

#[test]
fn an_index_of_several_platforms_gives_linux_amd64_through_nested_indexes() {
    let dir = tempdir();
    let built = spec(vec![vec![Entry::file("hello", 0o644, "hi")]])
        .build()
        .unwrap();
    let layout = write(&built, Form::Layout, dir.path());
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let amd64 = index["manifests"][0].clone();
    // Blobs that do not exist: choosing one of them would fail the open.
    let absent = |n: u8| format!("sha256:{}", format!("{n:02x}").repeat(32));
    let nested = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": absent(1),
              "size": 10, "platform": { "architecture": "arm64", "os": "linux" } },
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": absent(2),
              "size": 10, "platform": { "architecture": "unknown", "os": "unknown" },
              "annotations": { "vnd.docker.reference.type": "attestation-manifest" } },
            amd64,
        ],
    });
    let nested_desc = add_blob(
        &layout,
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&nested).unwrap(),
    );
    let top = json!({ "schemaVersion": 2, "manifests": [nested_desc] });
    fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    let image = Image::open(&layout).unwrap();
    assert_eq!(image.manifest_digest(), built.manifest_digest);

    // Without the amd64 entry there is nothing to run.
    let only_others = json!({
        "schemaVersion": 2,
        "manifests": [nested["manifests"][0].clone(), {
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": absent(3),
            "size": 10, "platform": { "architecture": "s390x", "os": "linux" } }],
    });
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&only_others).unwrap(),
    )
    .unwrap();
    let err = Image::open(&layout).unwrap_err();
    assert!(matches!(err, Error::Platform { .. }), "{err}");
    assert!(
        err.to_string().contains("linux/arm64, linux/s390x"),
        "{err}"
    );
}

#[test]
fn an_image_for_another_architecture_is_refused() {
    let dir = tempdir();
    let mut spec = spec(vec![vec![Entry::file("x", 0o644, "x")]]);
    spec.architecture = "arm64".into();
    let layout = write(&spec.build().unwrap(), Form::Layout, dir.path());
    let err = Image::open(&layout).unwrap_err();
    assert!(
        err.to_string()
            .contains("linux/arm64; husk runs linux/amd64"),
        "{err}"
    );
}

#[test]
fn docker_save_links_a_repeated_layer_to_its_first_copy() {
    let dir = tempdir();
    let layer = vec![Entry::file("same", 0o644, "same")];
    let spec = spec(vec![
        layer.clone(),
        vec![Entry::file("other", 0o644, "o")],
        layer,
    ]);
    let archive = write(&spec.build().unwrap(), Form::Docker, dir.path());
    let mut links = 0;
    for entry in tar::Archive::new(fs::File::open(&archive).unwrap())
        .entries()
        .unwrap()
    {
        links += usize::from(entry.unwrap().header().entry_type().is_symlink());
    }
    assert_eq!(links, 1);
    let root = dir.path().join("root");
    Image::open(&archive)
        .unwrap()
        .unpack(&root, &mut |_| {})
        .unwrap();
    assert_eq!(fs::read_to_string(root.join("same")).unwrap(), "same");
    assert_eq!(fs::read_to_string(root.join("other")).unwrap(), "o");
}

#[test]
fn an_extracted_docker_save_directory_opens_too() {
    let dir = tempdir();
    let built = spec(vec![vec![Entry::file("f", 0o644, "f")]])
        .build()
        .unwrap();
    let archive = write(&built, Form::Docker, dir.path());
    let extracted = dir.path().join("extracted");
    tar::Archive::new(fs::File::open(&archive).unwrap())
        .unpack(&extracted)
        .unwrap();
    let image = Image::open(&extracted).unwrap();
    assert_eq!(image.manifest_digest(), built.config_digest);
    image.unpack(&dir.path().join("root"), &mut |_| {}).unwrap();
    assert!(dir.path().join("root/f").is_file());
}

#[test]
fn progress_reports_every_layer_to_its_end() {
    let dir = tempdir();
    // Incompressible, so the gzip blob is megabytes too.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let big: Vec<u8> = (0..3_000_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let spec = spec(vec![
        vec![Entry::file("big", 0o644, big)],
        vec![Entry::file("small", 0o644, "s")],
    ]);
    let layout = write(&spec.build().unwrap(), Form::Layout, dir.path());
    let mut events = Vec::new();
    Image::open(&layout)
        .unwrap()
        .unpack(&dir.path().join("root"), &mut |p| events.push(p))
        .unwrap();
    assert!(events
        .iter()
        .all(|p| p.layers == 2 && p.bytes_done <= p.bytes_total));
    assert!(events.windows(2).all(|w| w[0].layer <= w[1].layer));
    for layer in 1..=2 {
        let last = events.iter().rev().find(|p| p.layer == layer).unwrap();
        assert_eq!(last.bytes_done, last.bytes_total);
        assert!(last.bytes_total > 0);
    }
    // The big layer reports along the way, not only at its ends.
    assert!(
        events.iter().filter(|p| p.layer == 1).count() > 2,
        "{events:?}"
    );
}
