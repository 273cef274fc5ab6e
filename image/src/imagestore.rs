//! The local image store: every image husk pulled (and, later, committed
//! or loaded) in one OCI image layout. Blobs are content-addressed and
//! shared, so a layer pulled once serves every image that lists it;
//! `index.json` names each image by its full reference in the annotation
//! `org.opencontainers.image.ref.name`, as skopeo's `oci:` transport does.
//!
//! Nothing enters `blobs/sha256/` unverified: downloads go to `tmp/` and
//! are renamed in only when their digest and size match. Three locks keep
//! concurrent husk processes apart:
//! - `tmp/<hex>.partial` is locked by whoever downloads that blob, so two
//!   pulls of one image fetch each blob once (the second finds it done);
//! - `index.lock` serialises changes of `index.json` (read, change, write a
//!   temporary file, rename);
//! - `gc.lock` is held shared by every pull while it runs and exclusively
//!   by a collection, so a blob fetched but not yet named by an image is
//!   never collected under a pull.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use rustix::fs::{flock, FlockOperation};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::Error;

/// The annotation that names an image in an OCI layout's index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Manifests and indexes larger than this are refused (registries cap
/// them at 4 MiB).
pub const MAX_MANIFEST: u64 = 4 << 20;

/// The store, at a directory.
#[derive(Clone, Debug)]
pub struct ImageStore {
    dir: PathBuf,
}

/// One named image of the store: the index entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredImage {
    /// The full reference, e.g. `docker.io/library/debian:12`.
    pub name: String,
    /// Of the manifest or index the name points at.
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// What a collection removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub blobs: usize,
    pub bytes: u64,
}

/// A shared hold on the store that keeps collections out (see the module
/// docs); dropping it releases the lock.
#[derive(Debug)]
pub struct Hold {
    _lock: File,
}

impl ImageStore {
    /// `$HUSK_STORE`, else `$XDG_DATA_HOME/husk/store`, else
    /// `~/.local/share/husk/store`. Data, not cache: a committed image
    /// cannot be fetched again.
    pub fn default_dir() -> PathBuf {
        default_dir_from(|name| std::env::var_os(name))
    }

    /// Opens the store at `dir`, creating an empty one if needed.
    pub fn open(dir: PathBuf) -> Result<ImageStore, Error> {
        let store = ImageStore { dir };
        for sub in ["blobs/sha256", "tmp"] {
            let path = store.dir.join(sub);
            fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
        let layout = store.dir.join("oci-layout");
        if !layout.is_file() {
            write_atomically(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = store.dir.join("index.json");
        if !index.is_file() {
            let _lock = store.lock("index.lock", FlockOperation::LockExclusive)?;
            if !index.is_file() {
                store.write_index(&[])?;
            }
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    /// True if the blob is stored with this size. Stored blobs were
    /// verified on the way in (and are again when unpacked).
    pub fn has_blob(&self, digest: &Digest, size: u64) -> bool {
        fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Stores a small blob (manifest, index, config) after checking it.
    pub fn put_blob(&self, digest: &Digest, data: &[u8]) -> Result<(), Error> {
        crate::digest::check(digest, None, &Digest::of(data), data.len() as u64)?;
        let path = self.blob_path(digest);
        if fs::metadata(&path).is_ok_and(|m| m.len() == data.len() as u64) {
            return Ok(());
        }
        write_atomically(&path, data)
    }

    /// Reads a stored manifest or index whole, verified.
    pub fn read_manifest(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        let path = self.blob_path(digest);
        let mut data = Vec::new();
        File::open(&path)
            .and_then(|f| f.take(MAX_MANIFEST + 1).read_to_end(&mut data))
            .map_err(|e| Error::io(&path, e))?;
        crate::digest::check(digest, None, &Digest::of(&data), data.len() as u64)?;
        Ok(data)
    }

    /// The image manifest of a stored image (for an index, of its
    /// linux/amd64 image): its digest, bytes and parsed form.
    pub fn image_manifest(
        &self,
        image: &StoredImage,
    ) -> Result<(Digest, Vec<u8>, ImageManifest), Error> {
        let mut digest = image.digest.clone();
        let mut data = self.read_manifest(&digest)?;
        if let Ok(index) = serde_json::from_slice::<ImageIndex>(&data) {
            let chosen = index
                .manifests()
                .iter()
                .find(|d| crate::source::is_linux_amd64(d))
                .ok_or_else(|| {
                    Error::malformed(format!("index {}", image.digest), "no linux/amd64 image")
                })?;
            digest = Digest::parse(chosen.digest().as_ref())?;
            data = self.read_manifest(&digest)?;
        }
        let manifest: ImageManifest = serde_json::from_slice(&data)
            .map_err(|e| Error::malformed(format!("manifest of {}", image.name), e))?;
        Ok((digest, data, manifest))
    }

    /// The bytes an image's blobs take (config and layers, as stored).
    pub fn image_size(&self, image: &StoredImage) -> Result<u64, Error> {
        let (_, _, manifest) = self.image_manifest(image)?;
        Ok(manifest.config().size() + manifest.layers().iter().map(|l| l.size()).sum::<u64>())
    }

    /// Starts (or, after an interrupted download, resumes) writing a blob.
    /// Blocks while another process writes the same blob; returns `None`
    /// if the blob is stored by then.
    pub fn partial(&self, digest: &Digest, size: u64) -> Result<Option<Partial>, Error> {
        let path = self
            .dir
            .join("tmp")
            .join(format!("{}.partial", digest.hex()));
        let file = open_locked(&path, FlockOperation::LockExclusive)?;
        if self.has_blob(digest, size) {
            let _ = fs::remove_file(&path);
            return Ok(None);
        }
        Partial::resume(file, path, self.blob_path(digest), digest.clone(), size).map(Some)
    }

    /// Keeps collections out until the hold is dropped.
    pub fn hold(&self) -> Result<Hold, Error> {
        Ok(Hold {
            _lock: self.lock("gc.lock", FlockOperation::LockShared)?,
        })
    }

    /// The named images, in index order.
    pub fn images(&self) -> Result<Vec<StoredImage>, Error> {
        Ok(self
            .read_index()?
            .manifests()
            .iter()
            .filter_map(stored_image)
            .collect())
    }

    pub fn find(&self, name: &str) -> Result<Option<StoredImage>, Error> {
        Ok(self.images()?.into_iter().find(|i| i.name == name))
    }

    /// Names the manifest or index `digest` (stored already) `name`,
    /// replacing what the name pointed at before.
    pub fn tag(&self, image: &StoredImage) -> Result<(), Error> {
        let _lock = self.lock("index.lock", FlockOperation::LockExclusive)?;
        let mut entries: Vec<Descriptor> = self.read_index()?.manifests().clone();
        entries.retain(|d| ref_name(d) != Some(image.name.as_str()));
        entries.push(descriptor_for(image)?);
        self.write_index(&entries)
    }

    /// Removes the name; the blobs stay until [`ImageStore::collect`].
    pub fn untag(&self, name: &str) -> Result<Option<StoredImage>, Error> {
        let _lock = self.lock("index.lock", FlockOperation::LockExclusive)?;
        let mut entries: Vec<Descriptor> = self.read_index()?.manifests().clone();
        let found = entries
            .iter()
            .find(|d| ref_name(d) == Some(name))
            .and_then(stored_image);
        if found.is_some() {
            entries.retain(|d| ref_name(d) != Some(name));
            self.write_index(&entries)?;
        }
        Ok(found)
    }

    /// Deletes every blob no named image reaches, and downloads nobody is
    /// writing. Waits for running pulls to end first.
    pub fn collect(&self) -> Result<Collected, Error> {
        let _gc = self.lock("gc.lock", FlockOperation::LockExclusive)?;
        let live = {
            let _lock = self.lock("index.lock", FlockOperation::LockShared)?;
            self.reachable()?
        };
        let mut collected = Collected::default();
        let blobs = self.dir.join("blobs/sha256");
        for entry in fs::read_dir(&blobs).map_err(|e| Error::io(&blobs, e))? {
            let entry = entry.map_err(|e| Error::io(&blobs, e))?;
            let name = entry.file_name();
            let keep = name.to_str().is_some_and(|n| live.contains(n));
            if !keep {
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
                collected.blobs += 1;
                collected.bytes += len;
            }
        }
        self.collect_partials(&mut collected)?;
        Ok(collected)
    }

    /// The hex digests of every blob a named image reaches. A manifest
    /// that is missing or unreadable is skipped: collection must never
    /// fail because an image is broken.
    fn reachable(&self) -> Result<HashSet<String>, Error> {
        let mut live = HashSet::new();
        let mut todo: Vec<(Digest, bool)> = self
            .images()?
            .into_iter()
            .map(|i| (i.digest, true))
            .collect();
        while let Some((digest, is_manifest)) = todo.pop() {
            if !live.insert(digest.hex().to_string()) || !is_manifest {
                continue;
            }
            if let Ok(data) = self.read_manifest(&digest) {
                todo.extend(children(&data));
            }
        }
        Ok(live)
    }

    fn collect_partials(&self, collected: &mut Collected) -> Result<(), Error> {
        let tmp = self.dir.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(|e| Error::io(&tmp, e))? {
            let entry = entry.map_err(|e| Error::io(&tmp, e))?;
            let Ok(file) = File::open(entry.path()) else {
                continue;
            };
            // Locked: a download is writing it.
            if flock(file.as_fd(), FlockOperation::NonBlockingLockExclusive).is_err() {
                continue;
            }
            collected.bytes += file.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = fs::remove_file(entry.path());
        }
        Ok(())
    }

    fn lock(&self, name: &str, how: FlockOperation) -> Result<File, Error> {
        open_locked(&self.dir.join(name), how)
    }

    fn read_index(&self) -> Result<ImageIndex, Error> {
        let path = self.dir.join("index.json");
        let data = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_slice(&data).map_err(|e| Error::malformed(path.display().to_string(), e))
    }

    fn write_index(&self, entries: &[Descriptor]) -> Result<(), Error> {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": entries,
        });
        let data = serde_json::to_vec_pretty(&index).expect("an index serialises");
        write_atomically(&self.dir.join("index.json"), &data)
    }
}

/// A blob whose digest is known only once it is written (a committed
/// layer, an imported one): hashed on the way into `tmp/`, renamed into
/// the store by [`NewBlob::finish`]. Write it under a [`Hold`].
pub struct NewBlob {
    store: ImageStore,
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    len: u64,
}

impl ImageStore {
    pub fn new_blob(&self) -> Result<NewBlob, Error> {
        let tmp = self.dir.join("tmp");
        Ok(NewBlob {
            store: self.clone(),
            file: tempfile::NamedTempFile::new_in(&tmp).map_err(|e| Error::io(&tmp, e))?,
            hasher: Sha256::new(),
            len: 0,
        })
    }
}

impl Write for NewBlob {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl NewBlob {
    /// Syncs the blob and moves it into the store; its digest and size.
    pub fn finish(self) -> Result<(Digest, u64), Error> {
        let digest = Digest::from_hex(&format!("{:x}", self.hasher.finalize()))
            .expect("sha256 hex is a digest");
        let path = self.file.path().to_path_buf();
        self.file
            .as_file()
            .sync_all()
            .map_err(|e| Error::io(&path, e))?;
        let target = self.store.blob_path(&digest);
        self.file
            .persist(&target)
            .map_err(|e| Error::io(&target, e.error))?;
        Ok((digest, self.len))
    }
}

/// A blob being downloaded: hashed as it is written, renamed into the
/// store only if it is whole and right.
#[derive(Debug)]
pub struct Partial {
    file: File,
    path: PathBuf,
    target: PathBuf,
    digest: Digest,
    size: u64,
    hasher: Sha256,
    len: u64,
}

impl Partial {
    /// Hashes what an earlier, interrupted download left, so the download
    /// can go on from there. More than the blob's size is junk: start over.
    fn resume(
        mut file: File,
        path: PathBuf,
        target: PathBuf,
        digest: Digest,
        size: u64,
    ) -> Result<Partial, Error> {
        let mut hasher = Sha256::new();
        let len =
            io::copy(&mut file, &mut HashWriter(&mut hasher)).map_err(|e| Error::io(&path, e))?;
        let mut partial = Partial {
            file,
            path,
            target,
            digest,
            size,
            hasher,
            len,
        };
        if len > size {
            partial.restart()?;
        }
        Ok(partial)
    }

    /// Bytes already written (where a resumed download starts).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        if self.len + data.len() as u64 > self.size {
            return Err(Error::WrongSize {
                digest: self.digest.to_string(),
                expected: self.size,
                actual: self.len + data.len() as u64,
            });
        }
        self.file
            .write_all(data)
            .map_err(|e| Error::io(&self.path, e))?;
        self.hasher.update(data);
        self.len += data.len() as u64;
        Ok(())
    }

    /// Throws away what was written: the server sent the whole blob where
    /// the rest was asked for.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.file
            .set_len(0)
            .and_then(|()| io::Seek::rewind(&mut self.file))
            .map_err(|e| Error::io(&self.path, e))?;
        self.hasher = Sha256::new();
        self.len = 0;
        Ok(())
    }

    /// Checks the digest and size, syncs, and moves the blob into the
    /// store. A wrong blob is deleted, never kept for a later resume.
    pub fn finish(self) -> Result<(), Error> {
        let actual = Digest::from_hex(&format!("{:x}", self.hasher.clone().finalize()))
            .expect("sha256 hex is a digest");
        if let Err(err) = crate::digest::check(&self.digest, Some(self.size), &actual, self.len) {
            let _ = fs::remove_file(&self.path);
            return Err(err);
        }
        self.file.sync_all().map_err(|e| Error::io(&self.path, e))?;
        fs::rename(&self.path, &self.target).map_err(|e| Error::io(&self.target, e))
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .map(String::as_str)
}

fn stored_image(d: &Descriptor) -> Option<StoredImage> {
    Some(StoredImage {
        name: ref_name(d)?.to_string(),
        digest: Digest::parse(d.digest().as_ref()).ok()?,
        media_type: d.media_type().to_string(),
        size: d.size(),
    })
}

fn descriptor_for(image: &StoredImage) -> Result<Descriptor, Error> {
    let digest: oci_spec::image::Digest = image
        .digest
        .to_string()
        .parse()
        .map_err(|e| Error::malformed(format!("digest {}", image.digest), e))?;
    let mut d = Descriptor::new(
        MediaType::from(image.media_type.as_str()),
        image.size,
        digest,
    );
    d.set_annotations(Some([(REF_NAME.to_string(), image.name.clone())].into()));
    Ok(d)
}

/// What a manifest or index refers to, each with whether it is itself a
/// manifest or index (an index's entries) or a leaf (a manifest's config
/// and layers).
pub(crate) fn children(data: &[u8]) -> Vec<(Digest, bool)> {
    let parse = |d: &Descriptor| Digest::parse(d.digest().as_ref()).ok();
    if let Ok(manifest) = serde_json::from_slice::<ImageManifest>(data) {
        return std::iter::once(manifest.config())
            .chain(manifest.layers())
            .filter_map(parse)
            .map(|d| (d, false))
            .collect();
    }
    if let Ok(index) = serde_json::from_slice::<ImageIndex>(data) {
        return index
            .manifests()
            .iter()
            .filter_map(parse)
            .map(|d| (d, true))
            .collect();
    }
    Vec::new()
}

/// Opens (creating it) and flocks a file, waiting for the lock.
fn open_locked(path: &Path, how: FlockOperation) -> Result<File, Error> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    flock(file.as_fd(), how).map_err(|e| Error::io(path, e.into()))?;
    Ok(file)
}

/// Writes a temporary file beside `path`, syncs it and renames it over
/// `path`: readers see the old content or the new, never a part.
fn write_atomically(path: &Path, data: &[u8]) -> Result<(), Error> {
    let dir = path.parent().expect("store paths have a parent");
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    tmp.write_all(data)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| Error::io(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

fn default_dir_from(var: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    crate::cache::user_dir(
        var,
        "HUSK_STORE",
        ("XDG_DATA_HOME", "husk/store"),
        ".local/share/husk/store",
        "/var/lib/husk/store",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str, data: &[u8]) -> StoredImage {
        StoredImage {
            name: name.into(),
            digest: Digest::of(data),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: data.len() as u64,
        }
    }

    #[test]
    fn tags_replace_and_untag() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("s")).unwrap();
        assert!(store.images().unwrap().is_empty());
        let (a, b) = (image("r/x:1", b"{}"), image("r/x:1", b"{ }"));
        store.tag(&a).unwrap();
        store.tag(&image("r/y:1", b"{}")).unwrap();
        store.tag(&b).unwrap();
        let names: Vec<_> = store
            .images()
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["r/y:1", "r/x:1"]);
        assert_eq!(store.find("r/x:1").unwrap(), Some(b.clone()));
        assert_eq!(store.untag("r/x:1").unwrap(), Some(b));
        assert_eq!(store.untag("r/x:1").unwrap(), None);
        // Reopening keeps what is there.
        let again = ImageStore::open(dir.path().join("s")).unwrap();
        assert_eq!(again.images().unwrap().len(), 1);
    }

    #[test]
    fn a_partial_blob_resumes_and_only_a_right_one_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().into()).unwrap();
        let data = b"0123456789";
        let digest = Digest::of(data);
        let mut p = store.partial(&digest, 10).unwrap().unwrap();
        p.write(b"0123").unwrap();
        drop(p); // interrupted
        let mut p = store.partial(&digest, 10).unwrap().unwrap();
        assert_eq!(p.len(), 4);
        p.write(b"456789").unwrap();
        assert!(p.write(b"x").is_err(), "past the size");
        p.finish().unwrap();
        assert!(store.has_blob(&digest, 10));
        assert!(store.partial(&digest, 10).unwrap().is_none());

        let other = Digest::of(b"abc");
        let mut p = store.partial(&other, 3).unwrap().unwrap();
        p.write(b"abd").unwrap();
        assert!(matches!(p.finish(), Err(Error::Corrupt { .. })));
        assert!(!store.has_blob(&other, 3));
        let p = store.partial(&other, 3).unwrap().unwrap();
        assert_eq!(p.len(), 0, "a wrong download is not resumed");
    }

    #[test]
    fn collection_keeps_what_named_images_reach() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().into()).unwrap();
        let layer = b"layer";
        let config = b"{\"config\":1}";
        let put = |d: &[u8]| store.put_blob(&Digest::of(d), d).unwrap();
        put(layer);
        put(config);
        put(b"stray");
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": Digest::of(config).to_string(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": Digest::of(layer).to_string(), "size": layer.len()}],
        })
        .to_string();
        put(manifest.as_bytes());
        store.tag(&image("r/x:1", manifest.as_bytes())).unwrap();
        assert_eq!(store.collect().unwrap().blobs, 1, "only the stray blob");
        assert!(store.has_blob(&Digest::of(layer), 5));
        store.untag("r/x:1").unwrap();
        assert_eq!(store.collect().unwrap().blobs, 3);
    }

    #[test]
    fn default_dir_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        assert_eq!(
            default_dir_from(env(&[("HUSK_STORE", "/s")])),
            PathBuf::from("/s")
        );
        assert_eq!(
            default_dir_from(env(&[("XDG_DATA_HOME", "/d"), ("HOME", "/h")])),
            PathBuf::from("/d/husk/store")
        );
        assert_eq!(
            default_dir_from(env(&[("HOME", "/h")])),
            PathBuf::from("/h/.local/share/husk/store")
        );
    }
}
