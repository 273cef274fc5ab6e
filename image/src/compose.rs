//! New images in the store: an image from a file copied in (`husk load`,
//! and the base of a commit whose container ran a file), and a committed
//! image, its base plus one layer of the container's changes.

use std::io::{self, Write};

use flate2::write::GzEncoder;
use oci_spec::image::ImageManifest;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::imagestore::{ImageStore, NewBlob, StoredImage};
use crate::source::Compression;
use crate::{Digest, Error, Image};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// An image whose manifest and config are in the store.
#[derive(Debug, Clone)]
pub struct Base {
    pub manifest_digest: Digest,
    pub manifest_json: Vec<u8>,
    pub config_json: Vec<u8>,
}

impl Base {
    /// The stored image whose manifest is `digest` (not an index).
    pub fn in_store(store: &ImageStore, digest: &Digest) -> Result<Base, Error> {
        let manifest_json = store.read_manifest(digest)?;
        let manifest: ImageManifest = serde_json::from_slice(&manifest_json)
            .map_err(|e| Error::malformed(format!("manifest {digest}"), e))?;
        let config = Digest::parse(manifest.config().digest().as_ref())?;
        let config_json = store.read_manifest(&config)?;
        Ok(Base {
            manifest_digest: digest.clone(),
            manifest_json,
            config_json,
        })
    }

    /// The manifest as a JSON value, to extend.
    fn manifest(&self) -> Result<Value, Error> {
        serde_json::from_slice(&self.manifest_json)
            .map_err(|e| Error::malformed(format!("manifest {}", self.manifest_digest), e))
    }
}

/// Copies `image` (opened from a file) into the store, every blob hashed
/// on the way and checked against the digest the image names it by. An
/// image with a manifest keeps it, and so its digest; a `docker save`
/// archive gets an OCI manifest made for it.
pub fn import(store: &ImageStore, image: &Image) -> Result<Base, Error> {
    store.put_blob(&Digest::parse(image.config_digest())?, &image.config_json)?;
    let mut layers = Vec::new();
    for layer in &image.layers {
        let (mut reader, _) = crate::source::open_layer(&image.store, layer)?;
        let mut blob = store.new_blob()?;
        io::copy(&mut reader, &mut blob).map_err(|e| Error::Layer {
            layer: layer.name.clone(),
            err: e,
        })?;
        let (digest, size) = blob.finish()?;
        if let Some((expected, _)) = &layer.blob {
            crate::digest::check(expected, None, &digest, size)?;
        }
        let media_type = match layer.compression {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        };
        layers.push(json!({"mediaType": media_type, "digest": digest.to_string(), "size": size}));
    }
    let manifest_json = match &image.manifest_json {
        Some(bytes) => bytes.clone(),
        None => serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": image.config_digest(),
                "size": image.config_json.len(),
            },
            "layers": layers,
        }))
        .expect("JSON serialises"),
    };
    let manifest_digest = Digest::of(&manifest_json);
    store.put_blob(&manifest_digest, &manifest_json)?;
    Ok(Base {
        manifest_digest,
        manifest_json,
        config_json: image.config_json.clone(),
    })
}

/// Writes the stored image `image` as one tar that is both an OCI archive
/// (oci-layout, index.json naming it `name`) and a `docker save` archive
/// (manifest.json with RepoTags), as Docker 25 writes them: `docker load`,
/// `podman load`, skopeo's oci-archive: and docker-archive: all read it.
pub fn save(
    store: &ImageStore,
    image: &StoredImage,
    name: &str,
    out: impl Write,
) -> Result<(), Error> {
    let (digest, manifest_json, manifest) = store.image_manifest(image)?;
    let mut tar = tar::Builder::new(out);
    let io_err = |e: io::Error| Error::io("the archive", e);
    let add = |tar: &mut tar::Builder<_>, path: &str, data: &mut dyn io::Read, len: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(len);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, data).map_err(io_err)
    };
    let blob_name = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let mut blobs: Vec<(String, u64)> = vec![(
        manifest.config().digest().to_string(),
        manifest.config().size(),
    )];
    blobs.extend(
        manifest
            .layers()
            .iter()
            .map(|l| (l.digest().to_string(), l.size())),
    );
    for (d, size) in &blobs {
        let path = store.blob_path(&Digest::parse(d)?);
        let mut f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        add(&mut tar, &blob_name(d), &mut f, *size)?;
    }
    add(
        &mut tar,
        &blob_name(&digest.to_string()),
        &mut &manifest_json[..],
        manifest_json.len() as u64,
    )?;
    let media_type = manifest
        .media_type()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_else(|| OCI_MANIFEST.into());
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": media_type,
            "digest": digest.to_string(),
            "size": manifest_json.len(),
            "annotations": {
                "io.containerd.image.name": name,
                crate::imagestore::REF_NAME: name.rsplit_once(':').map_or("latest", |(_, t)| t),
            },
        }],
    }))
    .expect("JSON serialises");
    let docker = serde_json::to_vec(&json!([{
        "Config": blob_name(&blobs[0].0),
        "RepoTags": [name],
        "Layers": blobs[1..].iter().map(|(d, _)| blob_name(d)).collect::<Vec<_>>(),
    }]))
    .expect("JSON serialises");
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    add(
        &mut tar,
        "oci-layout",
        &mut &layout[..],
        layout.len() as u64,
    )?;
    add(&mut tar, "index.json", &mut &index[..], index.len() as u64)?;
    add(
        &mut tar,
        "manifest.json",
        &mut &docker[..],
        docker.len() as u64,
    )?;
    tar.into_inner().map_err(io_err)?.flush().map_err(io_err)
}

/// A layer being written into the store: gzip-compressed on the way, the
/// uncompressed tar hashed for its diff_id.
pub struct LayerWriter {
    gz: GzEncoder<NewBlob>,
    diff: Sha256,
}

/// A layer in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLayer {
    pub blob: Digest,
    pub size: u64,
    pub diff_id: Digest,
}

impl LayerWriter {
    pub fn new(store: &ImageStore) -> Result<LayerWriter, Error> {
        Ok(LayerWriter {
            gz: GzEncoder::new(store.new_blob()?, flate2::Compression::fast()),
            diff: Sha256::new(),
        })
    }

    pub fn finish(self) -> Result<NewLayer, Error> {
        let diff_id = Digest::from_hex(&format!("{:x}", self.diff.finalize()))
            .expect("sha256 hex is a digest");
        let blob = self
            .gz
            .finish()
            .map_err(|e| Error::io("the new layer", e))?;
        let (blob, size) = blob.finish()?;
        Ok(NewLayer {
            blob,
            size,
            diff_id,
        })
    }
}

impl Write for LayerWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.gz.write(buf)?;
        self.diff.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.gz.flush()
    }
}

/// Who made a commit and why, for the config's history.
#[derive(Debug, Clone, Default)]
pub struct CommitInfo {
    pub message: Option<String>,
    pub author: Option<String>,
    /// What made the layer (Docker writes the container's command).
    pub created_by: String,
}

/// Stores `base` + `layer` as a new image named `name`: the base config
/// with the layer's diff_id and a history entry, the base manifest with
/// the layer (Docker's media types if the base has them).
pub fn commit(
    store: &ImageStore,
    base: &Base,
    layer: &NewLayer,
    info: &CommitInfo,
    name: &str,
) -> Result<StoredImage, Error> {
    let what = |w: &str| format!("{w} of {}", base.manifest_digest);
    let mut config: Value = serde_json::from_slice(&base.config_json)
        .map_err(|e| Error::malformed(what("config"), e))?;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array_mut()
        .ok_or_else(|| Error::malformed(what("config"), "no rootfs.diff_ids"))?;
    diff_ids.push(json!(layer.diff_id.to_string()));
    let mut history = json!({"created": now, "created_by": info.created_by});
    if let Some(m) = &info.message {
        history["comment"] = json!(m);
    }
    if let Some(a) = &info.author {
        history["author"] = json!(a);
        config["author"] = json!(a);
    }
    match config["history"].as_array_mut() {
        Some(h) => h.push(history),
        None => config["history"] = json!([history]),
    }
    config["created"] = json!(now);
    let config_json = serde_json::to_vec(&config).expect("JSON serialises");
    let config_digest = Digest::of(&config_json);
    store.put_blob(&config_digest, &config_json)?;

    let mut manifest = base.manifest()?;
    let docker = manifest["mediaType"] == DOCKER_MANIFEST;
    let layer_type = if docker {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    } else {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    };
    manifest["config"]["digest"] = json!(config_digest.to_string());
    manifest["config"]["size"] = json!(config_json.len());
    manifest["layers"]
        .as_array_mut()
        .ok_or_else(|| Error::malformed(what("manifest"), "no layers"))?
        .push(json!({
            "mediaType": layer_type,
            "digest": layer.blob.to_string(),
            "size": layer.size,
        }));
    let manifest_json = serde_json::to_vec(&manifest).expect("JSON serialises");
    let digest = Digest::of(&manifest_json);
    store.put_blob(&digest, &manifest_json)?;
    let image = StoredImage {
        name: name.to_string(),
        digest,
        media_type: if docker {
            DOCKER_MANIFEST
        } else {
            OCI_MANIFEST
        }
        .to_string(),
        size: manifest_json.len() as u64,
    };
    store.tag(&image)?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_is_its_base_plus_the_layer_and_opens_from_the_store() {
        if !std::path::Path::new("/bin/busybox").exists() {
            husk_skip::skip("no /bin/busybox for the test image");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let layout = t.path().join("layout");
        crate::testimage::write_layout("/bin/busybox".as_ref(), &layout).unwrap();
        let source = Image::open(&layout).unwrap();
        let store = ImageStore::open(t.path().join("store")).unwrap();
        let base = import(&store, &source).unwrap();
        assert_eq!(base.manifest_digest.to_string(), source.manifest_digest());

        // A layer that adds a file and deletes the busybox symlink `ls`.
        let mut layer = LayerWriter::new(&store).unwrap();
        {
            let mut tar = tar::Builder::new(&mut layer);
            let mut add = |path: &str, data: &[u8]| {
                let mut h = tar::Header::new_gnu();
                h.set_mode(0o644);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(0);
                h.set_size(data.len() as u64);
                h.set_entry_type(tar::EntryType::Regular);
                tar.append_data(&mut h, path, data).unwrap();
            };
            add("etc/committed", b"yes\n");
            add("bin/.wh.ls", b"");
            tar.finish().unwrap();
        }
        let layer = layer.finish().unwrap();
        let info = CommitInfo {
            message: Some("a test".into()),
            created_by: "husk commit".into(),
            ..CommitInfo::default()
        };
        let image = commit(&store, &base, &layer, &info, "localhost/c:1").unwrap();
        let opened = Image::open_named(store.dir(), "localhost/c:1").unwrap();
        assert_eq!(opened.manifest_digest(), image.digest.to_string());
        assert_eq!(opened.layer_count(), source.layer_count() + 1);
        let tree = t.path().join("tree");
        opened.unpack(&tree, &mut |_| {}).unwrap();
        assert_eq!(
            std::fs::read_to_string(tree.join("etc/committed")).unwrap(),
            "yes\n"
        );
        assert!(tree.join("bin/sh").symlink_metadata().is_ok());
        assert!(
            tree.join("bin/ls").symlink_metadata().is_err(),
            "whited out"
        );
        let config: Value = serde_json::from_slice(&opened.config_json).unwrap();
        let history = config["history"].as_array().unwrap();
        assert_eq!(history.last().unwrap()["comment"], "a test");
    }
}
