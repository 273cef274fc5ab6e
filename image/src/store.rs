//! Files of an image by their path inside it, whether the image is a
//! directory or a tar archive. A tar is indexed once (entry name → data
//! offset and size) and read by seeking, so an archive is never extracted
//! to disk just to be read.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::Error;

/// How many symlinks a name may go through inside an archive: docker save
/// links a repeated layer to its first copy, nothing needs long chains.
const MAX_LINK_HOPS: usize = 16;

pub enum Store {
    Dir(PathBuf),
    Tar(TarStore),
}

pub struct TarStore {
    path: PathBuf,
    entries: HashMap<String, TarEntry>,
}

enum TarEntry {
    File {
        offset: u64,
        size: u64,
    },
    /// A symlink or hardlink, its target already made archive-relative.
    Link(String),
    Other,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Store::Dir(path) => write!(f, "Dir({})", path.display()),
            Store::Tar(tar) => write!(
                f,
                "Tar({}, {} entries)",
                tar.path.display(),
                tar.entries.len()
            ),
        }
    }
}

pub type BlobReader = Box<dyn Read + Send>;

impl Store {
    pub fn open(path: &Path) -> Result<Store, Error> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            Ok(Store::Dir(path.to_path_buf()))
        } else {
            Ok(Store::Tar(TarStore::index(path, meta.len())?))
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Store::Dir(path) => path,
            Store::Tar(tar) => &tar.path,
        }
    }

    /// The image's name in messages.
    pub fn describe(&self) -> String {
        self.path().display().to_string()
    }

    pub fn exists(&self, name: &str) -> bool {
        match self {
            Store::Dir(dir) => clean_name(name).is_some_and(|n| dir.join(n).is_file()),
            Store::Tar(tar) => tar.lookup(name).is_some(),
        }
    }

    /// Opens the file `name` (a '/'-separated path inside the image) and
    /// returns it with its size, or None if the image has no such file.
    pub fn open_file(&self, name: &str) -> Result<Option<(BlobReader, u64)>, Error> {
        match self {
            Store::Dir(dir) => {
                let Some(clean) = clean_name(name) else {
                    return Ok(None);
                };
                let path = dir.join(clean);
                let file = match File::open(&path) {
                    Ok(file) => file,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(Error::io(path, e)),
                };
                let meta = file.metadata().map_err(|e| Error::io(&path, e))?;
                if !meta.is_file() {
                    return Ok(None);
                }
                Ok(Some((Box::new(file), meta.len())))
            }
            Store::Tar(tar) => {
                let Some((offset, size)) = tar.lookup(name) else {
                    return Ok(None);
                };
                let mut file = File::open(&tar.path).map_err(|e| Error::io(&tar.path, e))?;
                file.seek(SeekFrom::Start(offset))
                    .map_err(|e| Error::io(&tar.path, e))?;
                Ok(Some((Box::new(file.take(size)), size)))
            }
        }
    }

    /// Reads a small file (JSON) whole, refusing one larger than `limit`.
    pub fn read_small(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>, Error> {
        let Some((reader, size)) = self.open_file(name)? else {
            return Ok(None);
        };
        if size > limit {
            return Err(Error::malformed(
                format!("{name} in {}", self.describe()),
                format!("{size} bytes is more than the {limit} allowed"),
            ));
        }
        let mut data = Vec::with_capacity(size as usize);
        reader
            .take(limit)
            .read_to_end(&mut data)
            .map_err(|e| Error::io(self.path().join(name), e))?;
        Ok(Some(data))
    }
}

impl TarStore {
    fn index(path: &Path, file_len: u64) -> Result<TarStore, Error> {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut magic = [0u8; 4];
        let got = read_up_to(&mut file, &mut magic).map_err(|e| Error::io(path, e))?;
        let unknown = |reason: String| Error::UnknownFormat {
            path: path.to_path_buf(),
            reason,
        };
        if got >= 2 && magic[..2] == [0x1f, 0x8b] {
            return Err(unknown("gzip-compressed; decompress it first".into()));
        }
        if got == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
            return Err(unknown("zstd-compressed; decompress it first".into()));
        }
        file.rewind().map_err(|e| Error::io(path, e))?;

        let corrupt =
            |reason: String| Error::malformed(format!("archive {}", path.display()), reason);
        let mut archive = tar::Archive::new(file);
        let entries = archive
            .entries_with_seek()
            .map_err(|e| unknown(e.to_string()))?;
        let mut index = HashMap::new();
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if index.is_empty() => return Err(unknown(e.to_string())),
                Err(e) => return Err(corrupt(format!("truncated or corrupt tar: {e}"))),
            };
            let raw_name = entry.path_bytes();
            let Some(name) = std::str::from_utf8(&raw_name).ok().and_then(clean_name) else {
                // An image's own files have plain relative names; anything
                // else is nothing an image reader will ask for.
                continue;
            };
            let header = entry.header();
            let kind = header.entry_type();
            let value = if kind.is_file() || kind == tar::EntryType::Continuous {
                let offset = entry.raw_file_position();
                let size = entry.size();
                // Seeking past the end succeeds, so a cut-off archive is
                // only noticed by comparing with the file's length.
                if offset.checked_add(size).is_none_or(|end| end > file_len) {
                    return Err(corrupt(format!(
                        "truncated tar: {name} needs {size} bytes at offset {offset}, the file has {file_len}"
                    )));
                }
                TarEntry::File { offset, size }
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name_bytes()
                    .and_then(|t| std::str::from_utf8(&t).ok().map(str::to_string));
                let base = if kind.is_symlink() {
                    name.rsplit_once('/').map_or("", |(dir, _)| dir)
                } else {
                    ""
                };
                match target.and_then(|t| clean_name(&format!("{base}/{t}"))) {
                    Some(target) => TarEntry::Link(target),
                    None => TarEntry::Other,
                }
            } else {
                TarEntry::Other
            };
            index.insert(name, value);
        }
        if index.is_empty() {
            return Err(unknown("an empty archive".into()));
        }
        Ok(TarStore {
            path: path.to_path_buf(),
            entries: index,
        })
    }

    fn lookup(&self, name: &str) -> Option<(u64, u64)> {
        let mut name = clean_name(name)?;
        for _ in 0..MAX_LINK_HOPS {
            match self.entries.get(&name)? {
                TarEntry::File { offset, size } => return Some((*offset, *size)),
                TarEntry::Link(target) => name = target.clone(),
                TarEntry::Other => return None,
            }
        }
        None
    }
}

/// Normalizes a path inside an image: no leading `/` or `./`, no empty or
/// `.` components, `..` resolved lexically. None if it climbs out or is
/// empty.
pub fn clean_name(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Reads until `buf` is full or the input ends; returns how much was read.
pub fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_names() {
        assert_eq!(clean_name("./index.json").as_deref(), Some("index.json"));
        assert_eq!(clean_name("/a//b/./c").as_deref(), Some("a/b/c"));
        assert_eq!(clean_name("a/../b").as_deref(), Some("b"));
        assert_eq!(clean_name("abc/../../x"), None);
        assert_eq!(clean_name("./"), None);
    }
}
