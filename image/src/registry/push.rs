//! `husk push`: a stored image's config and layers (those the registry
//! lacks), streamed from the store, then its manifest under the new name.
//! An image pulled through an index is pushed as its linux/amd64 image:
//! the store holds only that one.

use std::io::Read;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use oci_client::errors::OciDistributionError;
use oci_client::{Reference, RegistryOperation};

use super::pull::Event;
use super::{Options, Session};
use crate::imagestore::{ImageStore, StoredImage};
use crate::{Digest, Error};

/// Bytes per upload chunk read from the store.
const CHUNK: usize = 1 << 20;

/// What a push did.
#[derive(Debug)]
pub struct Pushed {
    /// The manifest's digest, as the registry now serves it.
    pub digest: Digest,
    /// Blobs uploaded (the rest the registry had).
    pub uploaded: usize,
    pub uploaded_bytes: u64,
}

/// Pushes the stored image `image` to `target`.
pub fn push(
    store: &ImageStore,
    image: &StoredImage,
    target: &str,
    options: &Options,
    progress: &mut (dyn FnMut(Event) + Send),
) -> Result<Pushed, Error> {
    let reference = super::parse_reference(target)?;
    if reference.digest().is_some() {
        return Err(Error::BadReference {
            reference: target.to_string(),
            reason: "a push needs a tag, not a digest".into(),
        });
    }
    let session = Session::new(&reference, options)?;
    let (digest, bytes, manifest) = store.image_manifest(image)?;
    let media_type = manifest
        .media_type()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
    let mut blobs = vec![manifest.config().clone()];
    blobs.extend(manifest.layers().iter().cloned());
    progress(Event::Manifest {
        digest: &digest,
        blobs: blobs.len(),
    });
    let runtime = super::runtime()?;
    let progress = std::cell::RefCell::new(progress);
    runtime.block_on(async {
        session
            .client
            .auth(&reference, &session.auth, RegistryOperation::Push)
            .await
            .map_err(|e| session.error(&reference.whole(), e))?;
        let results: Vec<(bool, u64)> = stream::iter(blobs.iter().map(|desc| async {
            let blob = Digest::parse(desc.digest().as_ref())?;
            let sent = upload(store, &session, &reference, &blob, desc.size()).await?;
            (progress.borrow_mut())(Event::Stored {
                digest: &blob,
                size: desc.size(),
                fetched: sent,
            });
            Ok::<_, Error>((sent, desc.size()))
        }))
        .buffer_unordered(options.parallel.max(1))
        .try_collect()
        .await?;
        let content_type = media_type
            .parse()
            .map_err(|_| Error::malformed(format!("manifest {digest}"), "bad media type"))?;
        session
            .client
            .push_manifest_raw(&reference, bytes, content_type)
            .await
            .map_err(|e| session.error(&reference.whole(), e))?;
        Ok(Pushed {
            digest,
            uploaded: results.iter().filter(|(s, _)| *s).count(),
            uploaded_bytes: results.iter().filter(|(s, _)| *s).map(|(_, n)| n).sum(),
        })
    })
}

/// Uploads one blob from the store unless the registry has it; returns
/// whether it was sent.
async fn upload(
    store: &ImageStore,
    session: &Session,
    reference: &Reference,
    digest: &Digest,
    size: u64,
) -> Result<bool, Error> {
    let what = format!("blob {digest}");
    let exists = session
        .client
        .blob_exists(reference, &digest.to_string())
        .await
        .map_err(|e| session.error(&what, e))?;
    if exists {
        return Ok(false);
    }
    let path = store.blob_path(digest);
    let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    // The registry checks the digest of what it got; a blob the store
    // holds wrongly is refused there, not pushed.
    let chunks = stream::unfold(file, |mut file| async move {
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf) {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(OciDistributionError::IoError(e)), file)),
        }
    });
    session
        .client
        .push_blob_stream(reference, chunks, &digest.to_string(), Some(size))
        .await
        .map_err(|e| session.error(&what, e))?;
    Ok(true)
}
