//! The snapshot state file: a one-line JSON header (format, version, the
//! husk that wrote it, the body's length and SHA-256), then the body as
//! JSON. A file from another format version or husk, a truncated one or a
//! changed one is refused with one line before anything is built from it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

/// The header's `format`.
const FORMAT: &str = "husk-snapshot";
/// The body's layout version; bumped with any change to the state types.
pub const VERSION: u32 = 5;
/// The husk that writes and reads snapshots: another one may lay out
/// device state differently.
pub const HUSK: &str = env!("CARGO_PKG_VERSION");
/// A header longer than this is not ours.
const MAX_HEADER: usize = 4096;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u32,
    husk: String,
    body_bytes: u64,
    body_sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("snapshot {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0} is not a husk snapshot")]
    NotASnapshot(PathBuf),
    #[error("snapshot {path} was made by husk {husk} (format {version}); this is husk {HUSK} (format {VERSION}): make a new one")]
    OtherVersion {
        path: PathBuf,
        husk: String,
        version: u32,
    },
    #[error("snapshot {path} is truncated: {have} of {want} bytes")]
    Truncated { path: PathBuf, have: u64, want: u64 },
    #[error("snapshot {0} is corrupt (its checksum does not match)")]
    Corrupt(PathBuf),
    #[error("snapshot {0} cannot be read: {1}")]
    Body(PathBuf, String),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `body` to `path` whole or not at all (a temporary file renamed
/// into place after it is synced).
pub fn write<T: Serialize>(path: &Path, body: &T) -> Result<(), Error> {
    let io = |e| Error::Io(path.to_owned(), e);
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let f = std::fs::File::create(&tmp).map_err(io)?;
    write_to(&f, path, body)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Writes `body` into an open file (`name` says which in errors), from
/// its start, and syncs it.
pub fn write_to<T: Serialize>(mut f: &std::fs::File, name: &Path, body: &T) -> Result<(), Error> {
    let path = name;
    let io = |e| Error::Io(path.to_owned(), e);
    let body = serde_json::to_vec(body).map_err(|e| Error::Body(path.to_owned(), e.to_string()))?;
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        husk: HUSK.into(),
        body_bytes: body.len() as u64,
        body_sha256: hex(&Sha256::digest(&body)),
    };
    let mut line =
        serde_json::to_vec(&header).map_err(|e| Error::Body(path.to_owned(), e.to_string()))?;
    line.push(b'\n');
    f.set_len(0).map_err(io)?;
    f.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
    f.write_all(&line).map_err(io)?;
    f.write_all(&body).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Reads and checks a state file.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let data = std::fs::read(path).map_err(|e| Error::Io(path.to_owned(), e))?;
    parse(path, &data)
}

fn parse<T: DeserializeOwned>(path: &Path, data: &[u8]) -> Result<T, Error> {
    let not_ours = || Error::NotASnapshot(path.to_owned());
    let end = data
        .iter()
        .take(MAX_HEADER)
        .position(|&b| b == b'\n')
        .ok_or_else(not_ours)?;
    let header: Header = serde_json::from_slice(&data[..end]).map_err(|_| not_ours())?;
    if header.format != FORMAT {
        return Err(not_ours());
    }
    if header.version != VERSION || header.husk != HUSK {
        return Err(Error::OtherVersion {
            path: path.to_owned(),
            husk: header.husk,
            version: header.version,
        });
    }
    let body = &data[end + 1..];
    if (body.len() as u64) < header.body_bytes {
        return Err(Error::Truncated {
            path: path.to_owned(),
            have: (end + 1 + body.len()) as u64,
            want: (end + 1) as u64 + header.body_bytes,
        });
    }
    if body.len() as u64 != header.body_bytes || hex(&Sha256::digest(body)) != header.body_sha256 {
        return Err(Error::Corrupt(path.to_owned()));
    }
    serde_json::from_slice(body).map_err(|e| Error::Body(path.to_owned(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Body {
        a: u32,
        b: Vec<u8>,
    }

    fn written() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.snap");
        write(
            &path,
            &Body {
                a: 7,
                b: vec![1, 2, 3],
            },
        )
        .unwrap();
        let data = std::fs::read(&path).unwrap();
        (dir, path, data)
    }

    #[test]
    fn a_written_snapshot_reads_back() {
        let (_dir, path, _) = written();
        let body: Body = read(&path).unwrap();
        assert_eq!(
            body,
            Body {
                a: 7,
                b: vec![1, 2, 3]
            }
        );
    }

    #[test]
    fn truncated_changed_foreign_and_other_version_files_are_refused() {
        let (_dir, path, data) = written();
        let short = parse::<Body>(&path, &data[..data.len() - 3]).unwrap_err();
        assert!(matches!(short, Error::Truncated { .. }), "{short}");
        assert!(short.to_string().contains("truncated"));
        let mut changed = data.clone();
        let last = changed.len() - 2;
        changed[last] ^= 1;
        assert!(matches!(
            parse::<Body>(&path, &changed),
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(
            parse::<Body>(&path, b"\x7fELF garbage"),
            Err(Error::NotASnapshot(_))
        ));
        assert!(matches!(
            parse::<Body>(&path, b""),
            Err(Error::NotASnapshot(_))
        ));
        let text = String::from_utf8(data).unwrap();
        let old = text.replacen(&format!("\"husk\":\"{HUSK}\""), "\"husk\":\"0.0.1\"", 1);
        let e = parse::<Body>(&path, old.as_bytes()).unwrap_err();
        assert!(matches!(e, Error::OtherVersion { .. }));
        assert!(e.to_string().contains("made by husk 0.0.1"), "{e}");
        assert!(!e.to_string().contains('\n'));
    }
}
