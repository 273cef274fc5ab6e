//! `husk pull`: a manifest (via an index, the linux/amd64 one), then its
//! config and layers into the image store, several at a time, each hashed
//! while it streams to disk and resumed from where it stopped when the
//! connection breaks.

use std::cell::RefCell;
use std::time::Duration;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use oci_client::client::BlobResponse;
use oci_client::manifest::OciDescriptor;
use oci_client::Reference;
use oci_spec::image::{ImageIndex, ImageManifest};
use serde_json::Value;

use super::{one_line, transient, Options, Session};
use crate::imagestore::{ImageStore, StoredImage, MAX_MANIFEST};
use crate::{Digest, Error};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const ACCEPTED: [&str; 4] = [OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];

/// What a pull is doing, for a progress display.
#[derive(Debug)]
pub enum Event<'a> {
    /// The manifest is read: these blobs make the image.
    Manifest { digest: &'a Digest, blobs: usize },
    /// `done` of `size` bytes of a blob are on disk.
    Progress {
        digest: &'a Digest,
        done: u64,
        size: u64,
    },
    /// A blob is stored; `fetched` is false if it already was.
    Stored {
        digest: &'a Digest,
        size: u64,
        fetched: bool,
    },
    /// An earlier, interrupted pull left `done` bytes of the blob: the
    /// download goes on from there (they are hashed with the rest).
    Resumed { digest: &'a Digest, done: u64 },
    /// The connection broke; the blob goes on from `done` bytes.
    Retry {
        digest: &'a Digest,
        done: u64,
        error: &'a str,
    },
}

/// What a pull did.
#[derive(Debug)]
pub struct Pulled {
    pub image: StoredImage,
    /// Blobs downloaded (the rest were stored already).
    pub fetched: usize,
    pub fetched_bytes: u64,
}

/// Pulls `name` into `store` and names it there by its full reference.
pub fn pull(
    store: &ImageStore,
    name: &str,
    options: &Options,
    progress: &mut (dyn FnMut(Event) + Send),
) -> Result<Pulled, Error> {
    let reference = super::parse_reference(name)?;
    let session = Session::new(&reference, options)?;
    let runtime = super::runtime()?;
    let progress = RefCell::new(progress);
    runtime.block_on(pull_async(store, &session, &reference, options, &progress))
}

type Progress<'p> = RefCell<&'p mut (dyn FnMut(Event) + Send)>;

async fn pull_async(
    store: &ImageStore,
    session: &Session,
    reference: &Reference,
    options: &Options,
    progress: &Progress<'_>,
) -> Result<Pulled, Error> {
    let _hold = store.hold()?;
    let (top, top_type, top_digest) = fetch_manifest(session, reference).await?;
    let (manifest_bytes, manifest_digest) = if top_type == OCI_INDEX || top_type == DOCKER_LIST {
        let chosen = choose_amd64(session, &top, &top_digest)?;
        let (bytes, media_type, digest) =
            fetch_manifest(session, &reference.clone_with_digest(chosen.to_string())).await?;
        if digest != chosen {
            return Err(corrupt(session, &chosen, &digest));
        }
        if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
            return Err(session_error(
                session,
                format!("manifest {chosen}: unsupported media type {media_type}"),
            ));
        }
        (bytes, digest)
    } else {
        (top.clone(), top_digest.clone())
    };
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes).map_err(|e| {
        session_error(
            session,
            format!("manifest {manifest_digest} is malformed: {e}"),
        )
    })?;
    let mut blobs = vec![manifest.config().clone()];
    blobs.extend(manifest.layers().iter().cloned());
    (progress.borrow_mut())(Event::Manifest {
        digest: &manifest_digest,
        blobs: blobs.len(),
    });

    let results: Vec<(bool, u64)> = stream::iter(
        blobs
            .iter()
            .map(|desc| fetch_blob(store, session, reference, desc, options.attempts, progress)),
    )
    .buffer_unordered(options.parallel.max(1))
    .try_collect()
    .await?;

    // Blobs first, then the manifests that name them, then the name: a
    // reader that finds the name finds everything under it.
    store.put_blob(&manifest_digest, &manifest_bytes)?;
    if top_digest != manifest_digest {
        store.put_blob(&top_digest, &top)?;
    }
    let image = StoredImage {
        name: reference.whole(),
        digest: top_digest,
        media_type: top_type,
        size: top.len() as u64,
    };
    store.tag(&image)?;
    Ok(Pulled {
        image,
        fetched: results.iter().filter(|(f, _)| *f).count(),
        fetched_bytes: results.iter().filter(|(f, _)| *f).map(|(_, n)| n).sum(),
    })
}

/// Fetches a manifest or index and checks it: its digest (against the
/// reference's, when it has one) and its media type.
async fn fetch_manifest(
    session: &Session,
    reference: &Reference,
) -> Result<(Vec<u8>, String, Digest), Error> {
    let what = reference.whole();
    let (bytes, _) = session
        .client
        .pull_manifest_raw(reference, &session.auth, &ACCEPTED)
        .await
        .map_err(|e| session.error(&what, e))?;
    if bytes.len() as u64 > MAX_MANIFEST {
        return Err(session_error(
            session,
            format!("{what}: manifest larger than 4 MiB"),
        ));
    }
    let digest = Digest::of(&bytes);
    if let Some(wanted) = reference.digest() {
        let wanted = Digest::parse(wanted)?;
        if wanted != digest {
            return Err(corrupt(session, &wanted, &digest));
        }
    }
    let doc: Value = serde_json::from_slice(&bytes)
        .map_err(|e| session_error(session, format!("{what}: manifest is not JSON: {e}")))?;
    let media_type = doc["mediaType"].as_str().unwrap_or_default().to_string();
    // OCI lets a manifest omit mediaType; it then has a config.
    let media_type = match media_type.as_str() {
        "" if doc.get("manifests").is_some() => OCI_INDEX.to_string(),
        "" if doc.get("config").is_some() => OCI_MANIFEST.to_string(),
        _ => media_type,
    };
    if !ACCEPTED.contains(&media_type.as_str()) {
        let why = if doc["schemaVersion"] == 1 {
            "a Docker schema 1 manifest (deprecated; push the image again with a current tool)"
                .to_string()
        } else {
            format!("unsupported media type {media_type:?}")
        };
        return Err(session_error(session, format!("{what}: {why}")));
    }
    Ok((bytes.to_vec(), media_type, digest))
}

fn choose_amd64(session: &Session, index: &[u8], digest: &Digest) -> Result<Digest, Error> {
    let index: ImageIndex = serde_json::from_slice(index)
        .map_err(|e| session_error(session, format!("index {digest} is malformed: {e}")))?;
    let chosen = index
        .manifests()
        .iter()
        .find(|d| crate::source::is_linux_amd64(d));
    match chosen {
        Some(d) => Digest::parse(d.digest().as_ref()),
        None => {
            let platforms: Vec<String> = index
                .manifests()
                .iter()
                .filter_map(|d| d.platform().as_ref())
                .map(|p| format!("{}/{}", p.os(), p.architecture()))
                .collect();
            Err(session_error(
                session,
                format!(
                    "index {digest} has no linux/amd64 image (it has {})",
                    platforms.join(", ")
                ),
            ))
        }
    }
}

/// Downloads one blob into the store unless it is there; returns whether
/// it was downloaded, and its size.
async fn fetch_blob(
    store: &ImageStore,
    session: &Session,
    reference: &Reference,
    desc: &oci_spec::image::Descriptor,
    attempts: u32,
    progress: &Progress<'_>,
) -> Result<(bool, u64), Error> {
    let digest = Digest::parse(desc.digest().as_ref())?;
    let size = desc.size();
    if store.has_blob(&digest, size) {
        (progress.borrow_mut())(Event::Stored {
            digest: &digest,
            size,
            fetched: false,
        });
        return Ok((false, size));
    }
    // Waits (off the runtime's thread) while another process downloads it.
    let (owned_store, owned_digest) = (store.clone(), digest.clone());
    let partial = tokio::task::spawn_blocking(move || owned_store.partial(&owned_digest, size))
        .await
        .map_err(|e| Error::io("blob download", std::io::Error::other(e)))??;
    let Some(mut partial) = partial else {
        (progress.borrow_mut())(Event::Stored {
            digest: &digest,
            size,
            fetched: false,
        });
        return Ok((false, size));
    };
    if !partial.is_empty() {
        (progress.borrow_mut())(Event::Resumed {
            digest: &digest,
            done: partial.len(),
        });
    }
    let oci_desc = OciDescriptor {
        media_type: desc.media_type().to_string(),
        digest: digest.to_string(),
        size: size as i64,
        ..OciDescriptor::default()
    };
    let mut attempt = 0;
    while partial.len() < size {
        attempt += 1;
        match stream_into(
            session,
            reference,
            &oci_desc,
            &mut partial,
            &digest,
            progress,
        )
        .await
        {
            Ok(()) => {}
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Transient(why)) if attempt < attempts => {
                (progress.borrow_mut())(Event::Retry {
                    digest: &digest,
                    done: partial.len(),
                    error: &why,
                });
                tokio::time::sleep(Duration::from_millis(250 << attempt.min(5))).await;
            }
            Err(Failure::Transient(why)) => {
                return Err(session_error(
                    session,
                    format!("blob {digest}: {why} (gave up after {attempts} attempts; {} of {size} bytes kept for the next pull)", partial.len()),
                ));
            }
        }
    }
    partial
        .finish()
        .map_err(|e| session_error(session, e.to_string()))?;
    (progress.borrow_mut())(Event::Stored {
        digest: &digest,
        size,
        fetched: true,
    });
    Ok((true, size))
}

enum Failure {
    Transient(String),
    Fatal(Error),
}

/// One request for the rest of a blob, written as it arrives.
async fn stream_into(
    session: &Session,
    reference: &Reference,
    desc: &OciDescriptor,
    partial: &mut crate::imagestore::Partial,
    digest: &Digest,
    progress: &Progress<'_>,
) -> Result<(), Failure> {
    let response = session
        .client
        .pull_blob_stream_partial(reference, desc, partial.len(), None)
        .await;
    let mut sized = match response {
        Ok(BlobResponse::Partial(s)) => s,
        Ok(BlobResponse::Full(s)) => {
            // The server ignored the range: take it all again.
            partial.restart().map_err(Failure::Fatal)?;
            s
        }
        Err(e) if transient(&e) => return Err(Failure::Transient(one_line(&e))),
        Err(e) => return Err(Failure::Fatal(session.error(&format!("blob {digest}"), e))),
    };
    while let Some(chunk) = sized.stream.next().await {
        let chunk = chunk.map_err(|e| Failure::Transient(one_line(&e)))?;
        partial
            .write(&chunk)
            .map_err(|e| Failure::Fatal(session_error(session, e.to_string())))?;
        (progress.borrow_mut())(Event::Progress {
            digest,
            done: partial.len(),
            size: partial.size(),
        });
    }
    if partial.len() < partial.size() {
        return Err(Failure::Transient(format!(
            "the connection ended after {} of {} bytes",
            partial.len(),
            partial.size()
        )));
    }
    Ok(())
}

fn session_error(session: &Session, reason: String) -> Error {
    Error::Registry {
        registry: session.registry.clone(),
        reason,
    }
}

fn corrupt(session: &Session, wanted: &Digest, got: &Digest) -> Error {
    session_error(
        session,
        format!("{wanted} is corrupt: the registry sent content that hashes to {got}"),
    )
}
