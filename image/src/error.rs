use std::io;
use std::path::PathBuf;

/// Everything that can go wrong between an image path and a block image.
///
/// Each message is one line that names the file, blob or tar entry at fault,
/// so the CLI can print it as it is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: io::Error },

    #[error("{path}: not an OCI image layout, OCI archive or docker save archive ({reason})")]
    UnknownFormat { path: PathBuf, reason: String },

    #[error("{what} is malformed: {reason}")]
    Malformed { what: String, reason: String },

    #[error("blob {digest} is missing from {image}")]
    MissingBlob { digest: String, image: String },

    #[error("blob {digest} is corrupt: content hashes to {actual}")]
    Corrupt { digest: String, actual: String },

    #[error("blob {digest} is corrupt: it has {actual} bytes, its descriptor says {expected}")]
    WrongSize {
        digest: String,
        expected: u64,
        actual: u64,
    },

    #[error(
        "layer {layer} is corrupt: its uncompressed content hashes to {actual}, \
         the image config's diff_id is {diff_id}"
    )]
    DiffIdMismatch {
        layer: String,
        diff_id: String,
        actual: String,
    },

    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest { digest: String, reason: String },

    #[error("blob {digest}: unsupported media type {media_type}")]
    UnsupportedMediaType { digest: String, media_type: String },

    #[error("{image}: {reason}")]
    Platform { image: String, reason: String },

    #[error("layer {layer}: entry {entry:?}: {reason}")]
    UnsafeEntry {
        layer: String,
        entry: String,
        reason: String,
    },

    #[error("layer {layer}: entry {entry:?}: {err}")]
    Entry {
        layer: String,
        entry: String,
        err: io::Error,
    },

    #[error("layer {layer}: {err}")]
    Layer { layer: String, err: io::Error },

    #[error("mkfs.erofs not found: apt-get install erofs-utils")]
    MkfsMissing,

    #[error("mkfs.erofs failed on {tree} ({status}): {stderr}")]
    Mkfs {
        tree: PathBuf,
        status: String,
        stderr: String,
    },

    #[error("registry {registry}: {reason}")]
    Registry { registry: String, reason: String },

    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },

    #[error("{store} has no image named {name}")]
    NoSuchImage { name: String, store: String },

    #[error("test image: {0}")]
    TestImage(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, err: io::Error) -> Error {
        Error::Io {
            path: path.into(),
            err,
        }
    }

    pub(crate) fn malformed(what: impl Into<String>, reason: impl ToString) -> Error {
        Error::Malformed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}
