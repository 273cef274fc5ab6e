//! The image formats: an OCI layout (directory or archive, including the
//! layout newer Docker puts in `docker save` archives) and the classic
//! `docker save` archive (`manifest.json`). Both end in the same thing: the
//! verified config and the list of layers to apply.

use std::io::Read;

use oci_spec::image::{
    Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os,
};
use serde::de::DeserializeOwned;

use crate::digest::{self, Digest, HashingReader};
use crate::store::{clean_name, read_up_to, Store};
use crate::Error;

/// Limit for JSON documents (index, manifest, config): registries cap
/// manifests at 4 MiB; configs with long histories are larger but nowhere
/// near this. It keeps a hostile "manifest" from eating memory.
const MAX_JSON: u64 = 16 << 20;

/// Nested indexes are followed this deep.
const MAX_INDEX_DEPTH: usize = 4;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From a blob's first bytes, for formats whose layers carry no media
    /// type (`docker save`).
    pub fn sniff(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// One layer blob and what it must hash to.
#[derive(Debug)]
pub struct LayerRef {
    /// Path of the blob inside the image.
    pub location: String,
    /// The layer's name in messages (its blob digest, or its diff_id when
    /// there is no blob digest).
    pub name: String,
    /// Digest and size of the blob as stored, when the format records them.
    pub blob: Option<(Digest, Option<u64>)>,
    pub compression: Compression,
    /// Digest of the uncompressed tar, from the config.
    pub diff_id: Option<Digest>,
}

#[derive(Debug)]
pub struct Opened {
    /// The names the file gives the image (an OCI layout's annotations,
    /// a docker save archive's RepoTags), as written.
    pub names: Vec<String>,
    /// The manifest as stored, where the format has one (not docker save).
    pub manifest_json: Option<Vec<u8>>,
    pub config_json: Vec<u8>,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub config: ImageConfiguration,
    pub layers: Vec<LayerRef>,
}

/// Opens the image in `store`; `name` picks an OCI layout's index entry by
/// its ref name (none for a docker save archive, which has no such names).
pub fn open(store: &Store, name: Option<&str>) -> Result<Opened, Error> {
    let opened = if store.exists("index.json") {
        open_oci(store, name)?
    } else if let Some(name) = name {
        return Err(Error::NoSuchImage {
            name: name.to_string(),
            store: store.describe(),
        });
    } else if store.exists("manifest.json") {
        open_docker(store)?
    } else {
        return Err(Error::UnknownFormat {
            path: store.path().to_path_buf(),
            reason: "it has neither index.json nor manifest.json".into(),
        });
    };
    let (os, arch) = (opened.config.os(), opened.config.architecture());
    if *os != Os::Linux || *arch != Arch::Amd64 {
        return Err(Error::Platform {
            image: store.describe(),
            reason: format!("the image is for {os}/{arch}; husk runs linux/amd64"),
        });
    }
    Ok(opened)
}

fn open_oci(store: &Store, name: Option<&str>) -> Result<Opened, Error> {
    let image = store.describe();
    if let Some(layout) = store.read_small("oci-layout", 64 << 10)? {
        let what = format!("oci-layout in {image}");
        let layout: serde_json::Value =
            serde_json::from_slice(&layout).map_err(|e| Error::malformed(&what, e))?;
        let version = layout["imageLayoutVersion"].as_str().unwrap_or_default();
        if !version.starts_with("1.") {
            return Err(Error::malformed(
                what,
                format!("unsupported imageLayoutVersion {version:?}"),
            ));
        }
    }
    let what = format!("index.json in {image}");
    let index_json = store
        .read_small("index.json", MAX_JSON)?
        .ok_or_else(|| Error::malformed(&what, "missing"))?;
    let mut index: ImageIndex = parse_json(&index_json, &what)?;
    if let Some(name) = name {
        let named: Vec<Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| {
                d.annotations()
                    .as_ref()
                    .and_then(|a| a.get(crate::imagestore::REF_NAME))
                    .is_some_and(|n| n == name)
            })
            .cloned()
            .collect();
        if named.is_empty() {
            return Err(Error::NoSuchImage {
                name: name.to_string(),
                store: image,
            });
        }
        index.set_manifests(named);
    }
    let names = index
        .manifests()
        .iter()
        .filter_map(|d| {
            let a = d.annotations().as_ref()?;
            a.get("io.containerd.image.name")
                .or_else(|| a.get(crate::imagestore::REF_NAME))
                .cloned()
        })
        .collect();
    let manifest_desc = select_manifest(store, &index, &what, 0)?;
    let manifest_digest = descriptor_digest(&manifest_desc)?;
    let manifest_json = read_blob(store, &manifest_digest, manifest_desc.size())?;
    let manifest: ImageManifest =
        parse_json(&manifest_json, &format!("manifest {manifest_digest}"))?;

    let config_desc = manifest.config();
    let config_digest = descriptor_digest(config_desc)?;
    let config_type = config_desc.media_type().as_ref();
    if config_type != OCI_CONFIG && config_type != DOCKER_CONFIG {
        return Err(Error::UnsupportedMediaType {
            digest: config_digest.to_string(),
            media_type: config_type.to_string(),
        });
    }
    let config_json = read_blob(store, &config_digest, config_desc.size())?;
    let config: ImageConfiguration = parse_json(&config_json, &format!("config {config_digest}"))?;
    let diff_ids = diff_ids(&config, &config_digest, manifest.layers().len())?;

    let mut layers = Vec::new();
    for (desc, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let digest = descriptor_digest(desc)?;
        let compression =
            layer_compression(desc.media_type()).ok_or_else(|| Error::UnsupportedMediaType {
                digest: digest.to_string(),
                media_type: desc.media_type().to_string(),
            })?;
        layers.push(LayerRef {
            location: blob_path(&digest),
            name: digest.to_string(),
            blob: Some((digest, Some(desc.size()))),
            compression,
            diff_id: Some(diff_id),
        });
    }
    Ok(Opened {
        names,
        manifest_json: Some(manifest_json),
        config_json,
        manifest_digest,
        config_digest,
        config,
        layers,
    })
}

/// Picks the image manifest from an index: the linux/amd64 one, or the
/// only one, following nested indexes.
fn select_manifest(
    store: &Store,
    index: &ImageIndex,
    what: &str,
    depth: usize,
) -> Result<Descriptor, Error> {
    let is_manifest = |d: &Descriptor| {
        let t = d.media_type().as_ref();
        t == OCI_MANIFEST || t == DOCKER_MANIFEST
    };
    let is_index = |d: &Descriptor| {
        let t = d.media_type().as_ref();
        t == OCI_INDEX || t == DOCKER_LIST
    };
    // BuildKit lists provenance attestations beside the images, as
    // manifests for the platform unknown/unknown.
    let is_attestation = |d: &Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get("vnd.docker.reference.type"))
            .is_some_and(|t| t == "attestation-manifest")
            || d.platform()
                .as_ref()
                .is_some_and(|p| p.os().to_string() == "unknown")
    };
    let candidates: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| (is_manifest(d) || is_index(d)) && !is_attestation(d))
        .collect();
    if candidates.is_empty() {
        let types: Vec<String> = index
            .manifests()
            .iter()
            .map(|d| d.media_type().to_string())
            .collect();
        return Err(Error::malformed(
            what,
            format!("it lists no supported image manifest (media types: {types:?})"),
        ));
    }
    let amd64 = candidates.iter().find(|d| is_linux_amd64(d));
    let chosen = match amd64 {
        Some(d) => *d,
        None if candidates.len() == 1 => candidates[0],
        None if candidates.iter().all(|d| d.platform().is_none()) => {
            // `docker save a b` writes one entry per image, without platforms.
            log::warn!(
                "{what} lists {} images; using the first, {}",
                candidates.len(),
                candidates[0].digest()
            );
            candidates[0]
        }
        None => {
            let platforms: Vec<String> = candidates
                .iter()
                .map(|d| match d.platform() {
                    Some(p) => format!("{}/{}", p.os(), p.architecture()),
                    None => "unspecified".to_string(),
                })
                .collect();
            return Err(Error::Platform {
                image: store.describe(),
                reason: format!(
                    "no linux/amd64 image among the platforms {}",
                    platforms.join(", ")
                ),
            });
        }
    };
    if !is_index(chosen) {
        return Ok(chosen.clone());
    }
    if depth >= MAX_INDEX_DEPTH {
        return Err(Error::malformed(
            what,
            format!("indexes nested more than {MAX_INDEX_DEPTH} deep"),
        ));
    }
    let digest = descriptor_digest(chosen)?;
    let nested_json = read_blob(store, &digest, chosen.size())?;
    let nested_what = format!("index {digest}");
    let nested: ImageIndex = parse_json(&nested_json, &nested_what)?;
    select_manifest(store, &nested, &nested_what, depth + 1)
}

fn open_docker(store: &Store) -> Result<Opened, Error> {
    let what = format!("manifest.json in {}", store.describe());
    let json = store
        .read_small("manifest.json", MAX_JSON)?
        .ok_or_else(|| Error::malformed(&what, "missing"))?;
    let value: serde_json::Value = parse_json(&json, &what)?;
    let images = value
        .as_array()
        .ok_or_else(|| Error::malformed(&what, "expected a JSON array"))?;
    let image = images
        .first()
        .ok_or_else(|| Error::malformed(&what, "it lists no image"))?;
    if images.len() > 1 {
        log::warn!("{what} lists {} images; using the first", images.len());
    }
    let config_name = image["Config"]
        .as_str()
        .ok_or_else(|| Error::malformed(&what, "the image has no Config"))?;
    let layer_names: Vec<&str> = image["Layers"]
        .as_array()
        .ok_or_else(|| Error::malformed(&what, "the image has no Layers"))?
        .iter()
        .map(|l| {
            l.as_str()
                .ok_or_else(|| Error::malformed(&what, "a Layers item is not a string"))
        })
        .collect::<Result<_, _>>()?;

    let config_json = store
        .read_small(config_name, MAX_JSON)?
        .ok_or_else(|| Error::malformed(&what, format!("its Config {config_name} is missing")))?;
    let config_digest = Digest::of(&config_json);
    // The config's file name is its digest (`<hex>.json` or
    // `blobs/sha256/<hex>`): check it like any other blob.
    if let Some(named) = digest_in_name(config_name) {
        digest::check(&named, None, &config_digest, config_json.len() as u64)?;
    }
    let config: ImageConfiguration = parse_json(&config_json, &format!("config {config_digest}"))?;
    let diff_ids = diff_ids(&config, &config_digest, layer_names.len())?;

    let mut layers = Vec::new();
    for (name, diff_id) in layer_names.into_iter().zip(diff_ids) {
        let location = clean_name(name).ok_or_else(|| {
            Error::malformed(&what, format!("layer path {name:?} is outside the archive"))
        })?;
        let Some((mut reader, _)) = store.open_file(&location)? else {
            return Err(Error::MissingBlob {
                digest: format!("{diff_id} ({location})"),
                image: store.describe(),
            });
        };
        let mut magic = [0u8; 4];
        let got = read_up_to(&mut reader, &mut magic)
            .map_err(|e| Error::io(store.path().join(&location), e))?;
        let compression = Compression::sniff(&magic[..got]);
        // An uncompressed layer is its own diff: its digest is the diff_id.
        let blob = match (compression, digest_in_name(&location)) {
            (_, Some(named)) if location.starts_with("blobs/") => Some((named, None)),
            (Compression::None, _) => Some((diff_id.clone(), None)),
            _ => None,
        };
        layers.push(LayerRef {
            location,
            name: diff_id.to_string(),
            blob,
            compression,
            diff_id: Some(diff_id),
        });
    }
    let names = image["RepoTags"]
        .as_array()
        .map(|tags| {
            tags.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok(Opened {
        names,
        manifest_json: None,
        config_json,
        // Without a manifest, the config digest (Docker's image ID) is what
        // names the image's content.
        manifest_digest: config_digest.clone(),
        config_digest,
        config,
        layers,
    })
}

fn diff_ids(
    config: &ImageConfiguration,
    config_digest: &Digest,
    layers: usize,
) -> Result<Vec<Digest>, Error> {
    let ids = config.rootfs().diff_ids();
    if ids.len() != layers {
        return Err(Error::malformed(
            format!("config {config_digest}"),
            format!("it lists {} diff_ids for {layers} layers", ids.len()),
        ));
    }
    ids.iter().map(|id| Digest::parse(id)).collect()
}

fn layer_compression(media_type: &MediaType) -> Option<Compression> {
    match media_type {
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Some(Compression::None),
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
            Some(Compression::Gzip)
        }
        MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => {
            Some(Compression::Zstd)
        }
        MediaType::Other(t) => match t.as_str() {
            "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
            _ => None,
        },
        _ => None,
    }
}

/// Whether an index entry is the image husk runs.
pub fn is_linux_amd64(d: &Descriptor) -> bool {
    d.platform()
        .as_ref()
        .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
}

pub fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

fn descriptor_digest(desc: &Descriptor) -> Result<Digest, Error> {
    Digest::parse(desc.digest().as_ref())
}

/// The digest a docker-save file name carries: `<hex>.json`,
/// `blobs/sha256/<hex>`.
fn digest_in_name(name: &str) -> Option<Digest> {
    let base = name.rsplit('/').next()?;
    Digest::from_hex(base.strip_suffix(".json").unwrap_or(base))
}

fn parse_json<T: DeserializeOwned>(data: &[u8], what: &str) -> Result<T, Error> {
    serde_json::from_slice(data).map_err(|e| Error::malformed(what, e))
}

/// Reads a JSON blob whole and verifies it before anything parses it.
fn read_blob(store: &Store, digest: &Digest, size: u64) -> Result<Vec<u8>, Error> {
    let location = blob_path(digest);
    let Some((reader, actual_size)) = store.open_file(&location)? else {
        return Err(Error::MissingBlob {
            digest: digest.to_string(),
            image: store.describe(),
        });
    };
    if actual_size != size {
        return Err(Error::WrongSize {
            digest: digest.to_string(),
            expected: size,
            actual: actual_size,
        });
    }
    if size > MAX_JSON {
        return Err(Error::malformed(
            format!("blob {digest}"),
            format!("{size} bytes is too large for a manifest or config"),
        ));
    }
    let mut data = Vec::with_capacity(size as usize);
    reader
        .take(size)
        .read_to_end(&mut data)
        .map_err(|e| Error::io(store.path().join(&location), e))?;
    digest::check(digest, Some(size), &Digest::of(&data), data.len() as u64)?;
    Ok(data)
}

/// Hashes a layer blob as stored, before any of it is unpacked.
pub fn verify_blob(store: &Store, layer: &LayerRef) -> Result<(), Error> {
    let Some((digest, size)) = &layer.blob else {
        return Ok(());
    };
    let (reader, _) = open_layer(store, layer)?;
    let (actual, len) = HashingReader::new(reader)
        .finish()
        .map_err(|e| Error::io(store.path().join(&layer.location), e))?;
    digest::check(digest, *size, &actual, len)
}

pub fn open_layer(
    store: &Store,
    layer: &LayerRef,
) -> Result<(crate::store::BlobReader, u64), Error> {
    store
        .open_file(&layer.location)?
        .ok_or_else(|| Error::MissingBlob {
            digest: layer.name.clone(),
            image: store.describe(),
        })
}
