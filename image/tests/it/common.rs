//! Shared helpers: images built from entry lists, written in every form,
//! unpacked, and trees described for comparison.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use husk_image::testimage::{BuiltImage, Compression, Entry, ImageSpec, Layer};
use husk_image::{Error, Image, ImageDefaults};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Layout,
    OciArchive,
    Docker,
    DockerWithOci,
}

pub const FORMS: [Form; 4] = [
    Form::Layout,
    Form::OciArchive,
    Form::Docker,
    Form::DockerWithOci,
];

/// Writes `built` in `form` under `dir`; returns the path to open.
pub fn write(built: &BuiltImage, form: Form, dir: &Path) -> PathBuf {
    let path = dir.join(format!("{form:?}"));
    match form {
        Form::Layout => built.write_layout(&path),
        Form::OciArchive => built.write_oci_archive(&path),
        Form::Docker => built.write_docker_archive(&path, false),
        Form::DockerWithOci => built.write_docker_archive(&path, true),
    }
    .expect("writing the image");
    path
}

/// An image of gzip layers with some defaults.
pub fn spec(layers: Vec<Vec<Entry>>) -> ImageSpec {
    ImageSpec {
        layers: layers
            .into_iter()
            .map(|entries| Layer::new(entries, Compression::Gzip))
            .collect(),
        defaults: ImageDefaults {
            cmd: vec!["/bin/true".into()],
            env: vec!["PATH=/bin".into()],
            ..ImageDefaults::default()
        },
        ..ImageSpec::default()
    }
}

/// Writes `spec` as a layout in `dir` and unpacks it into `dir/root`.
pub fn try_unpack(spec: &ImageSpec, dir: &Path) -> Result<PathBuf, Error> {
    let built = spec.build()?;
    let layout = write(&built, Form::Layout, dir);
    let root = dir.join("root");
    Image::open(&layout)?.unpack(&root, &mut |_| {})?;
    Ok(root)
}

pub fn unpack(spec: &ImageSpec, dir: &Path) -> PathBuf {
    try_unpack(spec, dir).expect("unpack")
}

/// Every path under `root` (not `root` itself) with its type, mode,
/// owner, mtime, link count and content, link target or device number.
pub fn listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The files under `root` and their content hashes.
pub fn contents(root: &Path) -> BTreeMap<String, String> {
    listing(root)
        .into_iter()
        .map(|(path, desc)| (path, desc.split(" mode=").next().unwrap().to_string()))
        .collect()
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        let ft = meta.file_type();
        let what = if ft.is_dir() {
            walk(root, &path, out);
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("symlink -> {}", fs::read_link(&path).unwrap().display())
        } else if ft.is_file() {
            let data = fs::read(&path).unwrap();
            format!("file {:x}", Sha256::digest(&data))
        } else if ft.is_char_device() || ft.is_block_device() {
            format!("dev {:x}", meta.rdev())
        } else if ft.is_fifo() {
            "fifo".to_string()
        } else {
            "other".to_string()
        };
        let mtime = if ft.is_symlink() { 0 } else { meta.mtime() };
        out.insert(
            path.strip_prefix(root).unwrap().display().to_string(),
            format!(
                "{what} mode={:o} owner={}:{} mtime={mtime} nlink={}",
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid(),
                meta.nlink()
            ),
        );
    }
}

fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

fn read_blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    fs::read(layout.join("blobs/sha256").join(hex)).unwrap()
}

fn write_blob(layout: &Path, data: &[u8]) -> (String, usize) {
    let hex = sha256_hex(data);
    fs::write(layout.join("blobs/sha256").join(&hex), data).unwrap();
    (format!("sha256:{hex}"), data.len())
}

/// Edits a layout's config and manifest (in that order) and re-links the
/// blobs: the new config's digest goes into the manifest, the manifest's
/// into index.json.
pub fn rewrite_layout(
    layout: &Path,
    edit_config: impl FnOnce(&mut Value),
    edit_manifest: impl FnOnce(&mut Value),
) {
    let index_path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut manifest: Value = serde_json::from_slice(&read_blob(layout, &manifest_digest)).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let mut config: Value = serde_json::from_slice(&read_blob(layout, &config_digest)).unwrap();
    edit_config(&mut config);
    let (digest, size) = write_blob(layout, &serde_json::to_vec(&config).unwrap());
    manifest["config"]["digest"] = digest.into();
    manifest["config"]["size"] = size.into();
    edit_manifest(&mut manifest);
    let (digest, size) = write_blob(layout, &serde_json::to_vec(&manifest).unwrap());
    index["manifests"][0]["digest"] = digest.into();
    index["manifests"][0]["size"] = size.into();
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Adds `data` as a blob of the layout; returns its descriptor.
pub fn add_blob(layout: &Path, media_type: &str, data: &[u8]) -> Value {
    let (digest, size) = write_blob(layout, data);
    serde_json::json!({ "mediaType": media_type, "digest": digest, "size": size })
}

pub fn layer_blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// Files left in a cache directory (temporary trees and outputs included).
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
