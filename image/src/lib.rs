//! OCI images on the host, for `husk run IMAGE`: open an image in any of
//! the usual on-disk forms, verify every blob it reads, unpack its layers
//! the way container runtimes do, and turn its root filesystem into a
//! cached read-only erofs block image for the VM.
//!
//! ```no_run
//! # fn main() -> Result<(), husk_image::Error> {
//! use husk_image::{Cache, Image};
//! let image = Image::open("alpine.tar".as_ref())?;
//! let cache = Cache::new(Cache::default_dir());
//! let disk = cache.block_image(&image, &mut |p| eprintln!("layer {}/{}", p.layer, p.layers))?;
//! println!("{} ({}) from {}", disk.path.display(), disk.fs_type, image.manifest_digest());
//! # Ok(()) }
//! ```

mod cache;
pub mod compose;
mod decompress;
mod digest;
mod error;
pub mod imagestore;
pub mod mkfs;
pub mod registry;
mod source;
mod store;
pub mod testimage;
mod unpack;

use std::io::{self, Read};
use std::path::Path;

pub use cache::{user_dir, BlockImage, Cache};
pub use digest::Digest;
pub use error::Error;
pub use imagestore::{ImageStore, StoredImage};

use digest::HashingReader;
use source::LayerRef;
use store::Store;

/// How far an unpack has got: layer `layer` (1-based) of `layers`, with
/// `bytes_done` of its `bytes_total` stored (compressed) bytes read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub layer: usize,
    pub layers: usize,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// What the image's config asks a container to run with by default.
/// Empty strings in the config count as unset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` items, in order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// As written: `user`, `uid`, `user:group`, `uid:gid`...
    pub user: Option<String>,
    /// `ExposedPorts`: `PORT/tcp`, `PORT/udp` (what `husk run -P`
    /// publishes), sorted.
    pub exposed_ports: Vec<String>,
}

/// An opened image: its manifest and config are read and verified, its
/// layers are read (and verified) when unpacked.
#[derive(Debug)]
pub struct Image {
    store: Store,
    names: Vec<String>,
    manifest_json: Option<Vec<u8>>,
    config_json: Vec<u8>,
    manifest_digest: String,
    config_digest: String,
    defaults: ImageDefaults,
    layers: Vec<LayerRef>,
}

/// Calls the progress callback at most once per this many bytes read.
const PROGRESS_STEP: u64 = 1 << 20;

impl Image {
    /// Opens an OCI image layout directory, an OCI archive, or a `docker
    /// save` archive (or its extracted directory), whichever `path` is.
    /// For an index with several images it picks linux/amd64.
    pub fn open(path: &Path) -> Result<Image, Error> {
        Image::open_in(path, None)
    }

    /// Opens the image an OCI layout's index names `name` (annotation
    /// `org.opencontainers.image.ref.name`), as in husk's image store.
    pub fn open_named(layout: &Path, name: &str) -> Result<Image, Error> {
        Image::open_in(layout, Some(name))
    }

    fn open_in(path: &Path, name: Option<&str>) -> Result<Image, Error> {
        let store = Store::open(path)?;
        let opened = source::open(&store, name)?;
        let defaults = opened
            .config
            .config()
            .as_ref()
            .map(|c| {
                let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
                ImageDefaults {
                    entrypoint: c.entrypoint().clone().unwrap_or_default(),
                    cmd: c.cmd().clone().unwrap_or_default(),
                    env: c.env().clone().unwrap_or_default(),
                    working_dir: nonempty(c.working_dir()),
                    user: nonempty(c.user()),
                    exposed_ports: {
                        let mut p = c.exposed_ports().clone().unwrap_or_default();
                        p.sort();
                        p
                    },
                }
            })
            .unwrap_or_default();
        log::debug!(
            "opened {} ({}, {} layers)",
            path.display(),
            opened.manifest_digest,
            opened.layers.len()
        );
        Ok(Image {
            store,
            names: opened.names,
            manifest_json: opened.manifest_json,
            config_json: opened.config_json,
            manifest_digest: opened.manifest_digest.to_string(),
            config_digest: opened.config_digest.to_string(),
            defaults,
            layers: opened.layers,
        })
    }

    /// `sha256:<hex>` of the image manifest; for a `docker save` archive
    /// without an OCI layout, of the config (Docker's image ID). It names
    /// the image's content, so it keys the block image cache.
    pub fn manifest_digest(&self) -> &str {
        &self.manifest_digest
    }

    /// The names the file gives the image, as written (an OCI layout's
    /// `io.containerd.image.name` or `org.opencontainers.image.ref.name`
    /// annotations, which may be a bare tag; a docker save's RepoTags).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// `sha256:<hex>` of the image config.
    pub fn config_digest(&self) -> &str {
        &self.config_digest
    }

    pub fn defaults(&self) -> &ImageDefaults {
        &self.defaults
    }

    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// Applies the layers in order to `dest` (created if missing; meant to
    /// be empty). Each layer blob is verified against its digest before
    /// any of it is unpacked, and its uncompressed tar against the
    /// config's diff_id while it is. On error `dest` is left part-written.
    ///
    /// As root, ownership, setuid bits and device nodes are applied as the
    /// image says (without root, ownership and devices are skipped): unpack
    /// into a directory other users cannot reach, as [`Cache`] does.
    pub fn unpack(&self, dest: &Path, progress: &mut dyn FnMut(Progress)) -> Result<(), Error> {
        std::fs::create_dir_all(dest).map_err(|e| Error::io(dest, e))?;
        let mut unpacker = unpack::Unpacker::new(dest)?;
        let layers = self.layers.len();
        for (i, layer) in self.layers.iter().enumerate() {
            source::verify_blob(&self.store, layer)?;
            let (blob, size) = source::open_layer(&self.store, layer)?;
            let start = Progress {
                layer: i + 1,
                layers,
                bytes_done: 0,
                bytes_total: size,
            };
            progress(start);
            let counted = ProgressReader {
                inner: blob,
                progress: start,
                reported: 0,
                callback: &mut *progress,
            };
            let mut tar = HashingReader::new(decompress::decoder(counted, layer.compression));
            unpacker.apply_layer(&layer.name, &mut tar)?;
            let (actual, _) = tar.finish().map_err(|err| Error::Layer {
                layer: layer.name.clone(),
                err,
            })?;
            if let Some(diff_id) = &layer.diff_id {
                if actual != *diff_id {
                    return Err(Error::DiffIdMismatch {
                        layer: layer.name.clone(),
                        diff_id: diff_id.to_string(),
                        actual: actual.to_string(),
                    });
                }
            }
            progress(Progress {
                bytes_done: size,
                ..start
            });
        }
        unpacker.finish()
    }
}

/// Counts the stored bytes read and reports them.
struct ProgressReader<'a, R> {
    inner: R,
    progress: Progress,
    reported: u64,
    callback: &'a mut dyn FnMut(Progress),
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.bytes_done += n as u64;
        if self.progress.bytes_done - self.reported >= PROGRESS_STEP {
            self.reported = self.progress.bytes_done;
            (self.callback)(self.progress);
        }
        Ok(n)
    }
}
