//! Applying layer tars to a directory the way container runtimes do, with
//! whiteouts, without ever leaving the destination.
//!
//! Every path is resolved from a descriptor of the destination, one
//! component at a time, with `O_NOFOLLOW`: a symlink already in the tree is
//! never followed while an entry is created (an entry that would go through
//! one is refused), and the entry itself replaces whatever was at its name
//! (a symlink there is removed, not written through). Nothing is resolved by
//! path string, so `..` tricks and symlinks to `/` or `../../..` cannot
//! reach outside.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::fs::{Gid, Uid};
use rustix::io::Errno;

use crate::Error;

/// Longest entry path accepted (PATH_MAX); it also bounds the recursion of
/// tree removal.
const MAX_PATH: usize = 4096;

const OPAQUE: &[u8] = b".wh..wh..opq";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// aufs bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`): not content.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

type Comps = Vec<Vec<u8>>;

pub struct Unpacker {
    root: OwnedFd,
    /// Whether ownership and device nodes can be applied (euid 0).
    privileged: bool,
    /// Mode and mtime of every directory an entry described, applied at the
    /// end: creating children changes a directory's mtime, and a read-only
    /// mode would stop an unprivileged unpacker from creating them.
    dirs: BTreeMap<Vec<u8>, DirMeta>,
    warned_devices: bool,
}

#[derive(Clone, Copy)]
struct DirMeta {
    mode: u32,
    mtime: Timespec,
}

struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
}

impl Meta {
    fn times(&self) -> Timestamps {
        Timestamps {
            last_access: self.mtime,
            last_modification: self.mtime,
        }
    }
}

/// The layer and entry being applied, for error messages.
struct Ctx<'a> {
    layer: &'a str,
    entry: String,
}

impl Ctx<'_> {
    fn refuse(&self, reason: impl Into<String>) -> Error {
        Error::UnsafeEntry {
            layer: self.layer.to_string(),
            entry: self.entry.clone(),
            reason: reason.into(),
        }
    }

    fn io(&self, err: impl Into<io::Error>) -> Error {
        Error::Entry {
            layer: self.layer.to_string(),
            entry: self.entry.clone(),
            err: err.into(),
        }
    }

    fn fail(&self, msg: String) -> Error {
        self.io(io::Error::other(msg))
    }
}

impl Unpacker {
    pub fn new(dest: &Path) -> Result<Unpacker, Error> {
        let root = rfs::open(
            dest,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(dest, e.into()))?;
        Ok(Unpacker {
            root,
            privileged: rustix::process::geteuid().is_root(),
            dirs: BTreeMap::new(),
            warned_devices: false,
        })
    }

    /// Applies one layer tar. `layer` names it in errors.
    pub fn apply_layer(&mut self, layer: &str, reader: &mut dyn Read) -> Result<(), Error> {
        let tar_error = |e: io::Error| Error::Layer {
            layer: layer.to_string(),
            err: io::Error::new(e.kind(), format!("reading the layer tar: {e}")),
        };
        let mut archive = tar::Archive::new(reader);
        // Paths this layer put in place (and their parents): an opaque
        // whiteout clears everything else in its directory.
        let mut touched: HashSet<Vec<u8>> = HashSet::new();
        for entry in archive.entries().map_err(tar_error)? {
            let mut entry = entry.map_err(tar_error)?;
            self.apply_entry(layer, &mut entry, &mut touched)?;
        }
        Ok(())
    }

    fn apply_entry(
        &mut self,
        layer: &str,
        entry: &mut tar::Entry<'_, &mut dyn Read>,
        touched: &mut HashSet<Vec<u8>>,
    ) -> Result<(), Error> {
        let raw_path = entry.path_bytes().into_owned();
        let ctx = Ctx {
            layer,
            entry: String::from_utf8_lossy(&raw_path).into_owned(),
        };
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let comps = normalize(&raw_path).map_err(|reason| ctx.refuse(reason))?;
        if self.apply_whiteout_name(&ctx, &comps, touched)? {
            return Ok(());
        }
        for i in 1..=comps.len() {
            touched.insert(comps[..i].join(&b'/'));
        }

        let meta = entry_meta(entry).map_err(|e| ctx.io(e))?;
        let Some((name, parent_comps)) = comps.split_last() else {
            return self.apply_root(&ctx, kind, &meta);
        };
        if kind.is_hard_link() {
            let target = entry.link_name_bytes().map(|t| t.into_owned());
            return self.hardlink(&ctx, &comps, name, parent_comps, target);
        }
        let parent = self.walk(&ctx, parent_comps, true)?;
        let slot = Slot {
            parent: parent.as_fd(),
            name,
            path: comps.join(&b'/'),
        };
        self.create_entry(&ctx, slot, entry, kind, &meta)
    }

    /// Entries named as whiteouts (or aufs bookkeeping) remove things
    /// instead of adding them. Returns whether the entry was one.
    fn apply_whiteout_name(
        &mut self,
        ctx: &Ctx<'_>,
        comps: &[Vec<u8>],
        touched: &HashSet<Vec<u8>>,
    ) -> Result<bool, Error> {
        let Some((last, parent)) = comps.split_last() else {
            return Ok(false);
        };
        if last == OPAQUE {
            self.opaque(ctx, parent, touched)?;
            return Ok(true);
        }
        if last.starts_with(AUFS_META_PREFIX) {
            return Ok(true);
        }
        if let Some(name) = last.strip_prefix(WHITEOUT_PREFIX) {
            if name.is_empty() || name == b"." || name == b".." {
                return Err(ctx.refuse("invalid whiteout name"));
            }
            self.whiteout(ctx, parent, name)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// An entry for the root itself gives it its metadata; it cannot be
    /// replaced.
    fn apply_root(
        &mut self,
        ctx: &Ctx<'_>,
        kind: tar::EntryType,
        meta: &Meta,
    ) -> Result<(), Error> {
        if !kind.is_dir() {
            return Err(ctx.refuse("the root can only be a directory"));
        }
        self.chown_at(ctx, self.root.as_fd(), c".", meta)?;
        self.record_dir(Vec::new(), meta);
        Ok(())
    }

    fn create_entry(
        &mut self,
        ctx: &Ctx<'_>,
        slot: Slot<'_>,
        entry: &mut tar::Entry<'_, &mut dyn Read>,
        kind: tar::EntryType,
        meta: &Meta,
    ) -> Result<(), Error> {
        match kind {
            k if k.is_dir() => self.create_dir(ctx, slot, meta),
            k if k.is_file() || k.is_contiguous() || k.is_gnu_sparse() => {
                self.create_file(ctx, slot, entry, k.is_gnu_sparse(), meta)
            }
            k if k.is_symlink() => self.create_symlink(ctx, slot, entry, meta),
            k if k.is_character_special() || k.is_block_special() || k.is_fifo() => {
                self.create_node(ctx, slot, entry.header(), k, meta)
            }
            k => Err(ctx.fail(format!(
                "unsupported tar entry type {:?}",
                char::from(k.as_byte())
            ))),
        }
    }

    /// A directory already there is kept with its contents (only its
    /// metadata changes): layers add to directories, they do not replace
    /// them.
    fn create_dir(&mut self, ctx: &Ctx<'_>, slot: Slot<'_>, meta: &Meta) -> Result<(), Error> {
        if !self.prepare_slot(ctx, slot.parent, slot.name, &slot.path, true)? {
            rfs::mkdirat(slot.parent, slot.name, Mode::from_raw_mode(0o700))
                .map_err(|e| ctx.io(e))?;
        }
        self.chown_at(ctx, slot.parent, slot.name, meta)?;
        self.record_dir(slot.path, meta);
        Ok(())
    }

    fn create_file(
        &mut self,
        ctx: &Ctx<'_>,
        slot: Slot<'_>,
        entry: &mut tar::Entry<'_, &mut dyn Read>,
        sparse: bool,
        meta: &Meta,
    ) -> Result<(), Error> {
        self.prepare_slot(ctx, slot.parent, slot.name, &slot.path, false)?;
        let fd = rfs::openat(
            slot.parent,
            slot.name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| ctx.io(e))?;
        let mut file = File::from(fd);
        let size = entry.size();
        let copied = io::copy(entry, &mut file).map_err(|e| ctx.io(e))?;
        // The tar reader ends an entry quietly where its input ends.
        if copied != size && !sparse {
            return Err(ctx.fail(format!("truncated: {copied} of {size} bytes")));
        }
        if self.privileged {
            rfs::fchown(&file, Some(uid(meta.uid)), Some(gid(meta.gid))).map_err(|e| ctx.io(e))?;
        }
        // After chown, which clears setuid/setgid.
        rfs::fchmod(&file, Mode::from_raw_mode(meta.mode)).map_err(|e| ctx.io(e))?;
        rfs::futimens(&file, &meta.times()).map_err(|e| ctx.io(e))
    }

    fn create_symlink(
        &mut self,
        ctx: &Ctx<'_>,
        slot: Slot<'_>,
        entry: &mut tar::Entry<'_, &mut dyn Read>,
        meta: &Meta,
    ) -> Result<(), Error> {
        let target = entry
            .link_name_bytes()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ctx.fail("symlink without a target".into()))?
            .into_owned();
        self.prepare_slot(ctx, slot.parent, slot.name, &slot.path, false)?;
        // The target is stored as it is: it is only dangerous when
        // followed, and nothing here follows it.
        rfs::symlinkat(target.as_slice(), slot.parent, slot.name).map_err(|e| ctx.io(e))?;
        self.chown_at(ctx, slot.parent, slot.name, meta)?;
        rfs::utimensat(
            slot.parent,
            slot.name,
            &meta.times(),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| ctx.io(e))
    }

    /// Device nodes need root: without it they are skipped (with one
    /// warning), while fifos are made anyway.
    fn create_node(
        &mut self,
        ctx: &Ctx<'_>,
        slot: Slot<'_>,
        header: &tar::Header,
        kind: tar::EntryType,
        meta: &Meta,
    ) -> Result<(), Error> {
        let file_type = node_type(kind);
        if file_type != FileType::Fifo && !self.privileged {
            if !self.warned_devices {
                log::warn!("not root: skipping device nodes (first: {})", ctx.entry);
                self.warned_devices = true;
            }
            return Ok(());
        }
        let dev = device_number(ctx, header, file_type)?;
        self.prepare_slot(ctx, slot.parent, slot.name, &slot.path, false)?;
        rfs::mknodat(
            slot.parent,
            slot.name,
            file_type,
            Mode::from_raw_mode(0o600),
            dev,
        )
        .map_err(|e| ctx.io(e))?;
        self.chown_at(ctx, slot.parent, slot.name, meta)?;
        // Just created by us, so not a symlink to follow.
        rfs::chmodat(
            slot.parent,
            slot.name,
            Mode::from_raw_mode(meta.mode),
            AtFlags::empty(),
        )
        .map_err(|e| ctx.io(e))?;
        rfs::utimensat(
            slot.parent,
            slot.name,
            &meta.times(),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| ctx.io(e))
    }

    /// Sets the directories' modes and mtimes once every layer is in.
    pub fn finish(self) -> Result<(), Error> {
        for (path, meta) in &self.dirs {
            // A directory later replaced by something else is skipped.
            let Some(dir) = self.open_existing_dir(path) else {
                continue;
            };
            let times = Timestamps {
                last_access: meta.mtime,
                last_modification: meta.mtime,
            };
            let shown = || String::from_utf8_lossy(path).into_owned();
            rfs::fchmod(&dir, Mode::from_raw_mode(meta.mode))
                .and_then(|()| rfs::futimens(&dir, &times))
                .map_err(|e| Error::io(shown(), e.into()))?;
        }
        Ok(())
    }

    fn open_existing_dir(&self, path: &[u8]) -> Option<OwnedFd> {
        let mut dir = open_dir_at(self.root.as_fd(), b".").ok()?;
        if path.is_empty() {
            return Some(dir);
        }
        for comp in path.split(|b| *b == b'/') {
            dir = open_dir_at(dir.as_fd(), comp).ok()?;
        }
        Some(dir)
    }

    fn record_dir(&mut self, path: Vec<u8>, meta: &Meta) {
        self.dirs.insert(
            path,
            DirMeta {
                mode: meta.mode,
                mtime: meta.mtime,
            },
        );
    }

    /// Drops the recorded metadata of `path` and everything under it, once
    /// they are removed.
    fn forget_dirs(&mut self, path: &[u8]) {
        let mut under = path.to_vec();
        under.push(b'/');
        self.dirs
            .retain(|p, _| p.as_slice() != path && !p.starts_with(&under));
    }

    fn chown_at(
        &self,
        ctx: &Ctx<'_>,
        dir: BorrowedFd<'_>,
        name: impl rustix::path::Arg,
        meta: &Meta,
    ) -> Result<(), Error> {
        if !self.privileged {
            return Ok(());
        }
        rfs::chownat(
            dir,
            name,
            Some(uid(meta.uid)),
            Some(gid(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| ctx.io(e))
    }

    /// Opens the directory `comps` under the root without following
    /// symlinks. With `create`, missing directories are made (mode 0755,
    /// as runtimes do for parents a layer does not list); without, a
    /// missing one gives None.
    fn walk(&self, ctx: &Ctx<'_>, comps: &[Vec<u8>], create: bool) -> Result<OwnedFd, Error> {
        self.try_walk(ctx, comps, create)?.ok_or_else(|| {
            ctx.fail(format!(
                "{:?} does not exist",
                String::from_utf8_lossy(&comps.join(&b'/'))
            ))
        })
    }

    fn try_walk(
        &self,
        ctx: &Ctx<'_>,
        comps: &[Vec<u8>],
        create: bool,
    ) -> Result<Option<OwnedFd>, Error> {
        let mut dir = open_dir_at(self.root.as_fd(), b".").map_err(|e| ctx.io(e))?;
        for (i, comp) in comps.iter().enumerate() {
            let next = match open_dir_at(dir.as_fd(), comp) {
                Ok(next) => next,
                Err(Errno::NOENT) if create => {
                    match rfs::mkdirat(&dir, comp.as_slice(), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(ctx.io(e)),
                    }
                    let next = open_dir_at(dir.as_fd(), comp).map_err(|e| ctx.io(e))?;
                    rfs::fchmod(&next, Mode::from_raw_mode(0o755)).map_err(|e| ctx.io(e))?;
                    next
                }
                Err(Errno::NOENT) => return Ok(None),
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    let shown = String::from_utf8_lossy(&comps[..=i].join(&b'/')).into_owned();
                    let stat = rfs::statat(&dir, comp.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| ctx.io(e))?;
                    if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink {
                        return Err(ctx.refuse(format!(
                            "{shown:?} is a symlink; refusing to write through it"
                        )));
                    }
                    return Err(ctx.fail(format!("{shown:?} is not a directory")));
                }
                Err(e) => return Err(ctx.io(e)),
            };
            dir = next;
        }
        Ok(Some(dir))
    }

    /// Clears the way for an entry at `name`: anything there goes, except a
    /// directory that a directory entry keeps (its contents stay, its
    /// metadata is updated). Returns whether a directory was kept.
    fn prepare_slot(
        &mut self,
        ctx: &Ctx<'_>,
        parent: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        want_dir: bool,
    ) -> Result<bool, Error> {
        let stat = match rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(ctx.io(e)),
        };
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            if want_dir {
                return Ok(true);
            }
            remove_tree(parent, name).map_err(|e| ctx.io(e))?;
            self.forget_dirs(path);
        } else {
            rfs::unlinkat(parent, name, AtFlags::empty()).map_err(|e| ctx.io(e))?;
        }
        Ok(false)
    }

    /// `.wh.NAME`: NAME goes, whatever it is.
    fn whiteout(&mut self, ctx: &Ctx<'_>, parent: &[Vec<u8>], name: &[u8]) -> Result<(), Error> {
        let Some(dir) = self.try_walk(ctx, parent, false)? else {
            return Ok(());
        };
        let mut path = parent.join(&b'/');
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        let stat = match rfs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(ctx.io(e)),
        };
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            remove_tree(dir.as_fd(), name).map_err(|e| ctx.io(e))?;
        } else {
            rfs::unlinkat(&dir, name, AtFlags::empty()).map_err(|e| ctx.io(e))?;
        }
        self.forget_dirs(&path);
        Ok(())
    }

    /// `.wh..wh..opq`: the directory shows only what this layer puts in it.
    fn opaque(
        &mut self,
        ctx: &Ctx<'_>,
        dir_comps: &[Vec<u8>],
        touched: &HashSet<Vec<u8>>,
    ) -> Result<(), Error> {
        let Some(dir) = self.try_walk(ctx, dir_comps, false)? else {
            return Ok(());
        };
        self.clear_untracked(ctx, dir, dir_comps.join(&b'/'), touched)
    }

    fn clear_untracked(
        &mut self,
        ctx: &Ctx<'_>,
        dir: OwnedFd,
        prefix: Vec<u8>,
        touched: &HashSet<Vec<u8>>,
    ) -> Result<(), Error> {
        for (name, is_dir) in list_dir(dir.as_fd()).map_err(|e| ctx.io(e))? {
            let mut path = prefix.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&name);
            if !touched.contains(&path) {
                if is_dir {
                    remove_tree(dir.as_fd(), &name).map_err(|e| ctx.io(e))?;
                } else {
                    rfs::unlinkat(&dir, name.as_slice(), AtFlags::empty())
                        .map_err(|e| ctx.io(e))?;
                }
                self.forget_dirs(&path);
            } else if is_dir {
                let sub = open_dir_at(dir.as_fd(), &name).map_err(|e| ctx.io(e))?;
                self.clear_untracked(ctx, sub, path, touched)?;
            }
        }
        Ok(())
    }

    /// A hardlink's target is a path from the image root, resolved like an
    /// entry path: it must already exist inside the tree.
    fn hardlink(
        &mut self,
        ctx: &Ctx<'_>,
        comps: &[Vec<u8>],
        name: &[u8],
        parent_comps: &[Vec<u8>],
        target: Option<Vec<u8>>,
    ) -> Result<(), Error> {
        let target = target
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ctx.fail("hardlink without a target".into()))?;
        let shown = String::from_utf8_lossy(&target).into_owned();
        let target_comps = normalize(&target)
            .map_err(|reason| ctx.refuse(format!("hardlink target {shown:?}: {reason}")))?;
        let Some((target_name, target_parent)) = target_comps.split_last() else {
            return Err(ctx.refuse("hardlink to the root"));
        };
        if target_comps == comps {
            return Ok(());
        }
        let target_dir = self
            .try_walk(ctx, target_parent, false)?
            .ok_or_else(|| ctx.fail(format!("hardlink target {shown:?} does not exist")))?;
        match rfs::statat(
            &target_dir,
            target_name.as_slice(),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => {
                return Err(ctx.fail(format!("hardlink target {shown:?} is a directory")));
            }
            Ok(_) => {}
            Err(Errno::NOENT) => {
                return Err(ctx.fail(format!("hardlink target {shown:?} does not exist")));
            }
            Err(e) => return Err(ctx.io(e)),
        }
        let parent = self.walk(ctx, parent_comps, true)?;
        self.prepare_slot(ctx, parent.as_fd(), name, &comps.join(&b'/'), false)?;
        // Without AT_SYMLINK_FOLLOW: a symlink target is linked itself,
        // never the file it points to.
        rfs::linkat(
            &target_dir,
            target_name.as_slice(),
            &parent,
            name,
            AtFlags::empty(),
        )
        .map_err(|e| ctx.io(e))
    }
}

/// Where an entry goes: its parent directory, already resolved without
/// following symlinks, its name in it and its path from the root.
struct Slot<'a> {
    parent: BorrowedFd<'a>,
    name: &'a [u8],
    path: Vec<u8>,
}

/// The file type of a character device, block device or fifo entry.
fn node_type(kind: tar::EntryType) -> FileType {
    if kind.is_fifo() {
        FileType::Fifo
    } else if kind.is_character_special() {
        FileType::CharacterDevice
    } else {
        FileType::BlockDevice
    }
}

fn device_number(
    ctx: &Ctx<'_>,
    header: &tar::Header,
    file_type: FileType,
) -> Result<rfs::Dev, Error> {
    // Writers leave a fifo's device fields empty, not zero.
    if file_type == FileType::Fifo {
        return Ok(rfs::makedev(0, 0));
    }
    let major = header.device_major().map_err(|e| ctx.io(e))?;
    let minor = header.device_minor().map_err(|e| ctx.io(e))?;
    Ok(rfs::makedev(major.unwrap_or(0), minor.unwrap_or(0)))
}

/// Splits an entry path into components relative to the root: leading `/`
/// and `.` components dropped, `..` resolved lexically (no component before
/// it can be a symlink: those are refused). Errors if it climbs out.
pub fn normalize(path: &[u8]) -> Result<Comps, String> {
    if path.len() > MAX_PATH {
        return Err(format!("path is longer than {MAX_PATH} bytes"));
    }
    let mut comps: Comps = Vec::new();
    for part in path.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if comps.pop().is_none() {
                    return Err("path escapes the image root".into());
                }
            }
            part => comps.push(part.to_vec()),
        }
    }
    Ok(comps)
}

fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The names in a directory and whether each is a directory (never
/// following symlinks).
fn list_dir(dir: BorrowedFd<'_>) -> rustix::io::Result<Vec<(Vec<u8>, bool)>> {
    let mut names = Vec::new();
    for entry in rfs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            FileType::Directory => true,
            FileType::Unknown => {
                let stat = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
                FileType::from_raw_mode(stat.st_mode) == FileType::Directory
            }
            _ => false,
        };
        names.push((name.to_vec(), is_dir));
    }
    Ok(names)
}

/// Removes `name` in `parent` and everything under it, never following a
/// symlink (they are unlinked like files).
fn remove_tree(parent: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<()> {
    let dir = open_dir_at(parent, name)?;
    for (child, is_dir) in list_dir(dir.as_fd())? {
        if is_dir {
            remove_tree(dir.as_fd(), &child)?;
        } else {
            rfs::unlinkat(&dir, child.as_slice(), AtFlags::empty())?;
        }
    }
    drop(dir);
    rfs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

fn entry_meta(entry: &mut tar::Entry<'_, &mut dyn Read>) -> io::Result<Meta> {
    let header = entry.header();
    let mode = header.mode()? & 0o7777;
    let mut uid = header.uid()?;
    let mut gid = header.gid()?;
    let mut mtime = Timespec {
        tv_sec: i64::try_from(header.mtime()?).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    // PAX records carry ids and times too large or too precise for the
    // header fields, and win over them.
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let (Ok(key), Ok(value)) = (ext.key(), ext.value()) else {
                continue;
            };
            match key {
                "uid" => uid = value.parse().map_err(|_| invalid("PAX uid"))?,
                "gid" => gid = value.parse().map_err(|_| invalid("PAX gid"))?,
                "mtime" => mtime = parse_pax_time(value).ok_or_else(|| invalid("PAX mtime"))?,
                _ => {}
            }
        }
    }
    let id = |v: u64, what: &str| {
        u32::try_from(v)
            .ok()
            .filter(|v| *v != u32::MAX)
            .ok_or_else(|| invalid(what))
    };
    Ok(Meta {
        mode,
        uid: id(uid, "uid")?,
        gid: id(gid, "gid")?,
        mtime,
    })
}

/// `seconds[.fraction]`, possibly negative.
fn parse_pax_time(value: &str) -> Option<Timespec> {
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let tv_sec: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let mut tv_nsec: i64 = digits.parse().ok()?;
    let mut tv_sec = tv_sec;
    if secs.starts_with('-') && tv_nsec > 0 {
        tv_sec -= 1;
        tv_nsec = 1_000_000_000 - tv_nsec;
    }
    Some(Timespec { tv_sec, tv_nsec })
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("invalid {what}"))
}

fn uid(raw: u32) -> Uid {
    Uid::from_raw(raw)
}

fn gid(raw: u32) -> Gid {
    Gid::from_raw(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_entry_paths() {
        let n = |p: &str| {
            normalize(p.as_bytes()).map(|c| {
                c.iter()
                    .map(|c| String::from_utf8(c.clone()).unwrap())
                    .collect::<Vec<_>>()
                    .join("/")
            })
        };
        assert_eq!(n("./etc/passwd").unwrap(), "etc/passwd");
        assert_eq!(n("/etc//passwd").unwrap(), "etc/passwd");
        assert_eq!(n("a/../b").unwrap(), "b");
        assert_eq!(n("./").unwrap(), "");
        assert!(n("../escape").is_err());
        assert!(n("a/../../escape").is_err());
        assert!(n(&"a/".repeat(3000)).is_err());
    }

    #[test]
    fn pax_times() {
        let t = parse_pax_time("1700000000.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 500_000_000));
        let t = parse_pax_time("-1.25").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (-2, 750_000_000));
        assert!(parse_pax_time("12x").is_none());
    }
}
