//! The API socket file: claim it (replacing a stale one, refusing a live
//! one) and give it back.

use crate::Error;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Which file a path names (device, inode): to remove the socket only if it
/// is still ours.
pub(crate) type FileId = (u64, u64);

pub(crate) fn file_id(path: &Path) -> Option<FileId> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Binds and listens on `path`. A socket file nobody listens on (left by a
/// process that died) is replaced; one that accepts a connection is in use
/// and refused; anything else at the path is left alone and refused.
pub(crate) fn bind(path: &Path) -> Result<(UnixListener, FileId), Error> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(Error::Probe {
                path: path.to_owned(),
                err,
            })
        }
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(Error::NotASocket(path.to_owned()))
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => return Err(Error::InUse(path.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(Error::RemoveStale {
                            path: path.to_owned(),
                            err: e,
                        })
                    }
                    _ => {}
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(Error::Probe {
                    path: path.to_owned(),
                    err,
                })
            }
        },
    }
    let listener = UnixListener::bind(path).map_err(|err| Error::Bind {
        path: path.to_owned(),
        err,
    })?;
    let id = file_id(path).ok_or_else(|| Error::Bind {
        path: path.to_owned(),
        err: io::Error::new(io::ErrorKind::NotFound, "the socket vanished after bind"),
    })?;
    Ok((listener, id))
}

/// Removes the socket file if it is still the one bound (`id`).
pub(crate) fn remove(path: &Path, id: FileId) {
    if file_id(path) == Some(id) {
        if let Err(e) = std::fs::remove_file(path) {
            log::warn!("cannot remove API socket {}: {e}", path.display());
        }
    }
}
