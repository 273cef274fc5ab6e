//! Writing images: the project's own small test image (static busybox in
//! two layers, one with a whiteout) and, for tests, any image described as
//! lists of entries, in all three on-disk forms the reader accepts.
//!
//! Output is deterministic (fixed mtimes, entries in the order given, gzip
//! without timestamps), so the same inputs give the same manifest digest.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::digest::Digest;
use crate::{Error, ImageDefaults};

pub use crate::source::Compression;

/// `org.opencontainers.image.ref.name` of the husk test image.
pub const REF_NAME: &str = "husk-test";
/// Every entry's mtime in images built here (2024-01-01T00:00:00Z).
pub const MTIME: u64 = 1_704_067_200;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// Writes the husk test image as an OCI image layout directory.
pub fn write_layout(busybox: &Path, out_dir: &Path) -> Result<(), Error> {
    husk_test_image(busybox)?.build()?.write_layout(out_dir)
}

/// Writes the husk test image as an OCI archive (the layout in a tar).
pub fn write_oci_archive(busybox: &Path, out_file: &Path) -> Result<(), Error> {
    husk_test_image(busybox)?
        .build()?
        .write_oci_archive(out_file)
}

/// Writes the husk test image as a classic `docker save` archive.
pub fn write_docker_archive(busybox: &Path, out_file: &Path) -> Result<(), Error> {
    husk_test_image(busybox)?
        .build()?
        .write_docker_archive(out_file, false)
}

/// The husk test image. Layer 1: `/bin/busybox` with a symlink per applet
/// where `busybox --list-full` puts it, `/etc/passwd` and `/etc/group`
/// (root, `husk` 1000:1000, nobody 65534), `/etc/hostname`,
/// `/etc/motd-to-delete`, `/tmp` (1777), `/root`, `/home/husk` (owned by
/// husk), `/proc`, `/sys`, `/dev`. Layer 2: `/etc/husk-test-image` and a
/// whiteout of `/etc/motd-to-delete`. Both gzip-compressed.
pub fn husk_test_image(busybox: &Path) -> Result<ImageSpec, Error> {
    let binary = fs::read(busybox).map_err(|e| Error::io(busybox, e))?;
    let output = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| Error::TestImage(format!("running {} --list-full: {e}", busybox.display())))?;
    if !output.status.success() {
        return Err(Error::TestImage(format!(
            "{} --list-full failed ({})",
            busybox.display(),
            output.status
        )));
    }
    let list = String::from_utf8_lossy(&output.stdout);

    let mut layer1: BTreeMap<String, Entry> = BTreeMap::new();
    let add = |layer: &mut BTreeMap<String, Entry>, entry: Entry| {
        layer.insert(entry.path.clone(), entry);
    };
    for dir in [
        "bin", "dev", "etc", "home", "proc", "sbin", "sys", "usr", "usr/bin", "usr/sbin",
    ] {
        add(&mut layer1, Entry::dir(dir, 0o755));
    }
    add(
        &mut layer1,
        Entry::dir("home/husk", 0o755).owner(1000, 1000),
    );
    add(&mut layer1, Entry::dir("root", 0o700));
    add(&mut layer1, Entry::dir("tmp", 0o1777));
    add(&mut layer1, Entry::file("bin/busybox", 0o755, binary));
    add(
        &mut layer1,
        Entry::file(
            "etc/passwd",
            0o644,
            "root:x:0:0:root:/root:/bin/sh\n\
         husk:x:1000:1000:husk:/home/husk:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
    );
    add(
        &mut layer1,
        Entry::file(
            "etc/group",
            0o644,
            "root:x:0:\nhusk:x:1000:\nnogroup:x:65534:\n",
        ),
    );
    add(&mut layer1, Entry::file("etc/hostname", 0o644, "husk\n"));
    add(
        &mut layer1,
        Entry::file(
            "etc/motd-to-delete",
            0o644,
            "layer 2 of the husk test image whites this file out\n",
        ),
    );
    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if applet == "linuxrc" || applet == "bin/busybox" {
            continue;
        }
        let parts: Vec<&str> = applet.split('/').collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
        {
            return Err(Error::TestImage(format!("odd applet path {applet:?}")));
        }
        for depth in 1..parts.len() {
            let dir = parts[..depth].join("/");
            if !layer1.contains_key(&dir) {
                add(&mut layer1, Entry::dir(&dir, 0o755));
            }
        }
        // Relative, so the link also resolves in an unpacked tree on the host.
        let target = match parts.len() {
            2 if parts[0] == "bin" => "busybox".to_string(),
            n => format!("{}bin/busybox", "../".repeat(n - 1)),
        };
        add(&mut layer1, Entry::symlink(applet, &target));
    }

    let layer2 = vec![
        Entry::dir("etc", 0o755),
        Entry::whiteout("etc/motd-to-delete"),
        Entry::file("etc/husk-test-image", 0o644, "husk test image\n"),
    ];
    Ok(ImageSpec {
        layers: vec![
            Layer::new(layer1.into_values().collect(), Compression::Gzip),
            Layer::new(layer2, Compression::Gzip),
        ],
        defaults: ImageDefaults {
            cmd: vec!["/bin/sh".into()],
            env: vec![format!("PATH={}", husk_wire::spec::DEFAULT_PATH)],
            working_dir: Some("/".into()),
            ..ImageDefaults::default()
        },
        ref_name: Some(REF_NAME.into()),
        ..ImageSpec::default()
    })
}

/// One tar entry. `path` is written as given (even `../x` or `/x`, to test
/// the reader's refusals).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    /// Target path from the image root.
    Hardlink(String),
    CharDevice(u32, u32),
    BlockDevice(u32, u32),
    Fifo,
}

impl Entry {
    fn new(path: &str, kind: EntryKind, mode: u32) -> Entry {
        Entry {
            path: path.to_string(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: MTIME,
        }
    }

    pub fn dir(path: &str, mode: u32) -> Entry {
        Entry::new(path, EntryKind::Dir, mode)
    }

    pub fn file(path: &str, mode: u32, data: impl Into<Vec<u8>>) -> Entry {
        Entry::new(path, EntryKind::File(data.into()), mode)
    }

    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::new(path, EntryKind::Symlink(target.to_string()), 0o777)
    }

    pub fn hardlink(path: &str, target: &str) -> Entry {
        Entry::new(path, EntryKind::Hardlink(target.to_string()), 0o644)
    }

    pub fn char_device(path: &str, mode: u32, major: u32, minor: u32) -> Entry {
        Entry::new(path, EntryKind::CharDevice(major, minor), mode)
    }

    pub fn block_device(path: &str, mode: u32, major: u32, minor: u32) -> Entry {
        Entry::new(path, EntryKind::BlockDevice(major, minor), mode)
    }

    pub fn fifo(path: &str, mode: u32) -> Entry {
        Entry::new(path, EntryKind::Fifo, mode)
    }

    /// The whiteout that deletes `path` from the layers below.
    pub fn whiteout(path: &str) -> Entry {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        Entry::file(&wh, 0o644, Vec::new())
    }

    /// The marker that makes directory `dir` opaque.
    pub fn opaque(dir: &str) -> Entry {
        Entry::file(&format!("{dir}/.wh..wh..opq"), 0o644, Vec::new())
    }

    pub fn owner(mut self, uid: u32, gid: u32) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mtime(mut self, mtime: u64) -> Entry {
        self.mtime = mtime;
        self
    }
}

#[derive(Clone, Debug)]
pub struct Layer {
    pub entries: Vec<Entry>,
    pub compression: Compression,
    /// The layer's tar as given, instead of one made from `entries` (for
    /// tests of broken tars).
    pub raw_tar: Option<Vec<u8>>,
}

impl Layer {
    pub fn new(entries: Vec<Entry>, compression: Compression) -> Layer {
        Layer {
            entries,
            compression,
            raw_tar: None,
        }
    }

    pub fn raw(tar: Vec<u8>, compression: Compression) -> Layer {
        Layer {
            entries: Vec::new(),
            compression,
            raw_tar: Some(tar),
        }
    }
}

/// An image to write: layers plus the config's runtime defaults.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    pub layers: Vec<Layer>,
    pub defaults: ImageDefaults,
    pub architecture: String,
    pub os: String,
    /// `org.opencontainers.image.ref.name` on the index entry.
    pub ref_name: Option<String>,
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec {
            layers: Vec::new(),
            defaults: ImageDefaults::default(),
            architecture: "amd64".into(),
            os: "linux".into(),
            ref_name: None,
        }
    }
}

/// An image's blobs, ready to be written in any form.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub manifest_digest: String,
    pub config_digest: String,
    /// Digests of the layer blobs as stored (compressed).
    pub layer_digests: Vec<String>,
    /// Digests of the uncompressed layer tars.
    pub diff_ids: Vec<String>,
    manifest: Vec<u8>,
    config: Vec<u8>,
    index: Vec<u8>,
    /// (blob as stored, uncompressed tar) per layer.
    layers: Vec<(Vec<u8>, Vec<u8>)>,
    ref_name: Option<String>,
    platform: (String, String),
}

impl ImageSpec {
    pub fn build(&self) -> Result<BuiltImage, Error> {
        let mut layers = Vec::new();
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        for layer in &self.layers {
            let tar = match &layer.raw_tar {
                Some(tar) => tar.clone(),
                None => layer_tar(&layer.entries)?,
            };
            let blob = compress(&tar, layer.compression)?;
            let media_type = match layer.compression {
                Compression::None => "application/vnd.oci.image.layer.v1.tar",
                Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            };
            diff_ids.push(Digest::of(&tar).to_string());
            layer_descs.push(descriptor(media_type, &blob));
            layers.push((blob, tar));
        }
        let config = self.config_json(&diff_ids)?;
        let manifest = manifest_json(&config, layer_descs)?;
        let platform = (self.os.clone(), self.architecture.clone());
        let index = index_json(&manifest, &platform, self.ref_name.as_deref())?;
        Ok(BuiltImage {
            manifest_digest: Digest::of(&manifest).to_string(),
            config_digest: Digest::of(&config).to_string(),
            layer_digests: layers
                .iter()
                .map(|(b, _)| Digest::of(b).to_string())
                .collect(),
            diff_ids,
            manifest,
            config,
            index,
            layers,
            ref_name: self.ref_name.clone(),
            platform,
        })
    }

    fn config_json(&self, diff_ids: &[String]) -> Result<Vec<u8>, Error> {
        let d = &self.defaults;
        let mut config = serde_json::Map::new();
        let mut set = |key: &str, value: serde_json::Value| {
            config.insert(key.to_string(), value);
        };
        if !d.entrypoint.is_empty() {
            set("Entrypoint", json!(d.entrypoint));
        }
        if !d.cmd.is_empty() {
            set("Cmd", json!(d.cmd));
        }
        if !d.env.is_empty() {
            set("Env", json!(d.env));
        }
        if let Some(dir) = &d.working_dir {
            set("WorkingDir", json!(dir));
        }
        if let Some(user) = &d.user {
            set("User", json!(user));
        }
        if !d.exposed_ports.is_empty() {
            let ports: serde_json::Map<String, serde_json::Value> = d
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), json!({})))
                .collect();
            set("ExposedPorts", serde_json::Value::Object(ports));
        }
        // One history entry per layer, as every builder writes: buildah
        // checks the count against the layers when it builds on this image.
        let history: Vec<serde_json::Value> = (1..=diff_ids.len())
            .map(|n| {
                json!({
                    "created": "2024-01-01T00:00:00Z",
                    "created_by": format!("husk image build-test: layer {n}"),
                })
            })
            .collect();
        to_json(&json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": self.architecture,
            "os": self.os,
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": history,
        }))
    }
}

impl BuiltImage {
    /// The blob files of the OCI layout: path → content.
    fn layout_files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut files = BTreeMap::new();
        files.insert(
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        );
        files.insert("index.json".to_string(), self.index.clone());
        for blob in [&self.manifest, &self.config]
            .into_iter()
            .chain(self.layers.iter().map(|(b, _)| b))
        {
            files.insert(blob_name(blob), blob.clone());
        }
        files
    }

    pub fn write_layout(&self, dir: &Path) -> Result<(), Error> {
        for (name, data) in self.layout_files() {
            let path = dir.join(&name);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            fs::write(&path, data).map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    pub fn write_oci_archive(&self, file: &Path) -> Result<(), Error> {
        write_archive(file, &self.layout_files(), &BTreeMap::new())
    }

    /// A `docker save` archive: `manifest.json`, `<config hex>.json`, and
    /// each layer uncompressed at `<id>/layer.tar`, a repeated layer as a
    /// symlink to its first copy, as Docker writes them. With
    /// `with_oci_layout`, the newer form instead: blobs, `index.json` and
    /// `oci-layout` (for a manifest of the uncompressed layers) beside a
    /// `manifest.json` that points into `blobs/`.
    pub fn write_docker_archive(&self, file: &Path, with_oci_layout: bool) -> Result<(), Error> {
        let mut files = BTreeMap::new();
        let mut links = BTreeMap::new();
        let repo_tag = format!("{}:latest", self.ref_name.as_deref().unwrap_or("image"));
        let (config_name, layer_names) = if with_oci_layout {
            let mut descs = Vec::new();
            let mut names = Vec::new();
            for (_, tar) in &self.layers {
                descs.push(descriptor("application/vnd.oci.image.layer.v1.tar", tar));
                names.push(blob_name(tar));
                files.insert(blob_name(tar), tar.clone());
            }
            let manifest = manifest_json(&self.config, descs)?;
            let index = index_json(&manifest, &self.platform, self.ref_name.as_deref())?;
            files.insert(blob_name(&manifest), manifest);
            files.insert("index.json".into(), index);
            files.insert(
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            );
            files.insert(blob_name(&self.config), self.config.clone());
            (blob_name(&self.config), names)
        } else {
            let mut names = Vec::new();
            let mut first_by_diff: BTreeMap<String, String> = BTreeMap::new();
            for (i, (_, tar)) in self.layers.iter().enumerate() {
                let diff = Digest::of(tar);
                // Docker's v1 layer IDs are not content digests.
                let id = Digest::of(format!("layer {i} {diff}").as_bytes());
                let name = format!("{}/layer.tar", id.hex());
                match first_by_diff.get(diff.hex()) {
                    Some(first) => {
                        links.insert(name.clone(), format!("../{first}"));
                    }
                    None => {
                        first_by_diff.insert(diff.hex().to_string(), name.clone());
                        files.insert(name.clone(), tar.clone());
                    }
                }
                names.push(name);
            }
            let config_name = format!("{}.json", Digest::of(&self.config).hex());
            files.insert(config_name.clone(), self.config.clone());
            (config_name, names)
        };
        let manifest = to_json(&json!([{
            "Config": config_name,
            "RepoTags": [repo_tag],
            "Layers": layer_names,
        }]))?;
        files.insert("manifest.json".into(), manifest);
        write_archive(file, &files, &links)
    }
}

fn descriptor(media_type: &str, blob: &[u8]) -> serde_json::Value {
    json!({
        "mediaType": media_type,
        "digest": Digest::of(blob).to_string(),
        "size": blob.len(),
    })
}

fn manifest_json(config: &[u8], layers: Vec<serde_json::Value>) -> Result<Vec<u8>, Error> {
    to_json(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": layers,
    }))
}

fn index_json(
    manifest: &[u8],
    (os, architecture): &(String, String),
    ref_name: Option<&str>,
) -> Result<Vec<u8>, Error> {
    let mut desc = descriptor(OCI_MANIFEST, manifest);
    desc["platform"] = json!({ "architecture": architecture, "os": os });
    if let Some(name) = ref_name {
        desc["annotations"] = json!({ "org.opencontainers.image.ref.name": name });
    }
    to_json(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [desc],
    }))
}

fn blob_name(blob: &[u8]) -> String {
    format!("blobs/sha256/{}", Digest::of(blob).hex())
}

fn to_json(value: &serde_json::Value) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::TestImage(e.to_string()))
}

fn compress(tar: &[u8], compression: Compression) -> Result<Vec<u8>, Error> {
    Ok(match compression {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            // GzBuilder writes mtime 0 and no file name: deterministic.
            let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
            gz.write_all(tar)
                .and_then(|()| gz.finish())
                .map_err(|e| Error::TestImage(format!("gzip: {e}")))?
        }
        Compression::Zstd => {
            ruzstd::encoding::compress_to_vec(tar, ruzstd::encoding::CompressionLevel::Fastest)
        }
    })
}

/// A layer tar of `entries`, in order.
pub fn layer_tar(entries: &[Entry]) -> Result<Vec<u8>, Error> {
    let fail = |path: &str, e: std::io::Error| Error::TestImage(format!("tar entry {path}: {e}"));
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode);
        header.set_uid(entry.uid.into());
        header.set_gid(entry.gid.into());
        header.set_mtime(entry.mtime);
        header.set_size(0);
        let (entry_type, data, link): (tar::EntryType, &[u8], Option<&str>) = match &entry.kind {
            EntryKind::Dir => (tar::EntryType::Directory, &[], None),
            EntryKind::File(data) => (tar::EntryType::Regular, data, None),
            EntryKind::Symlink(target) => (tar::EntryType::Symlink, &[], Some(target)),
            EntryKind::Hardlink(target) => (tar::EntryType::Link, &[], Some(target)),
            EntryKind::CharDevice(..) => (tar::EntryType::Char, &[], None),
            EntryKind::BlockDevice(..) => (tar::EntryType::Block, &[], None),
            EntryKind::Fifo => (tar::EntryType::Fifo, &[], None),
        };
        header.set_entry_type(entry_type);
        if let EntryKind::CharDevice(major, minor) | EntryKind::BlockDevice(major, minor) =
            entry.kind
        {
            header
                .set_device_major(major)
                .and_then(|()| header.set_device_minor(minor))
                .map_err(|e| fail(&entry.path, e))?;
        }
        header.set_size(data.len() as u64);
        let name = entry.path.as_bytes();
        let fits = name.len() <= 100 && link.is_none_or(|l| l.len() <= 100);
        if fits {
            // Raw fields, so paths that tar-rs refuses to write (`..`,
            // absolute) can be written to test the reader.
            let old = header.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
            if let Some(link) = link {
                old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_cksum();
            builder
                .append(&header, data)
                .map_err(|e| fail(&entry.path, e))?;
        } else if let Some(link) = link {
            builder
                .append_link(&mut header, &entry.path, link)
                .map_err(|e| fail(&entry.path, e))?;
        } else {
            builder
                .append_data(&mut header, &entry.path, data)
                .map_err(|e| fail(&entry.path, e))?;
        }
    }
    builder
        .into_inner()
        .map_err(|e| Error::TestImage(format!("tar: {e}")))
}

/// A deterministic tar of `files` (with their parent directories) and
/// symlinks `links` (name → target).
fn write_archive(
    out: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    links: &BTreeMap<String, String>,
) -> Result<(), Error> {
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    let names = files.keys().chain(links.keys());
    for name in names {
        let mut dir = name.as_str();
        while let Some((parent, _)) = dir.rsplit_once('/') {
            entries
                .entry(format!("{parent}/"))
                .or_insert_with(|| Entry::dir(&format!("{parent}/"), 0o755));
            dir = parent;
        }
    }
    for (name, data) in files {
        entries.insert(name.clone(), Entry::file(name, 0o644, data.clone()));
    }
    for (name, target) in links {
        entries.insert(name.clone(), Entry::symlink(name, target));
    }
    let tar = layer_tar(&entries.into_values().collect::<Vec<_>>())?;
    fs::write(out, tar).map_err(|e| Error::io(out, e))
}
