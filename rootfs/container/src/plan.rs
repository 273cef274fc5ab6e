//! Everything the child processes need, computed by the parent before it
//! clones: C strings, flags, masks, argv/envp arrays, compiled seccomp
//! filters. The child (see `child.rs`) only reads these.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::str::FromStr;

use libc::{c_char, c_ulong};
use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxDevice, LinuxDeviceType, Mount, PosixRlimitType, Process,
};

use crate::seccomp::Programs;
use crate::Error;
use husk_wire::spec::DEFAULT_PATH;

/// What to create when a path component is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Create {
    No,
    Dir,
    /// Directories on the way, a regular file at the end.
    File,
}

/// One entry of `spec.mounts`.
#[derive(Debug)]
pub struct MountPlan {
    /// Normalized absolute path inside the container.
    pub dest: CString,
    pub source: Option<CString>,
    pub fstype: Option<CString>,
    /// Flags of the first mount(2).
    pub flags: c_ulong,
    pub data: Option<CString>,
    /// Bind mounts: flags for the MS_BIND|MS_REMOUNT that applies ro, nosuid, ...
    pub remount: Option<c_ulong>,
    /// MS_PRIVATE, MS_SLAVE, ... (with MS_REC for the r-forms), applied last.
    pub propagation: Vec<c_ulong>,
    pub create: Create,
    /// "bind" or the filesystem type, for messages.
    pub label: CString,
}

/// A device node to create.
#[derive(Debug)]
pub struct DevicePlan {
    /// The device's path, normalized (also the bind source when mknod is not allowed).
    pub path: CString,
    pub dir: CString,
    pub name: CString,
    pub mode: libc::mode_t,
    pub dev: libc::dev_t,
    pub uid: u32,
    pub gid: u32,
}

/// argv, envp and the paths to try.
#[derive(Debug)]
pub struct ExecPlan {
    _argv: Vec<CString>,
    pub argv_ptrs: Vec<*const c_char>,
    _envp: Vec<CString>,
    pub envp_ptrs: Vec<*const c_char>,
    /// Paths to execve, in order.
    pub candidates: Vec<CString>,
    /// args[0], for the "not found" message.
    pub name: CString,
    /// `$PATH` was searched (args[0] has no slash).
    pub searched: bool,
}

/// Capability sets as bit masks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapsPlan {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
    pub last_cap: u32,
}

/// The process part: shared by the container's init and exec'd processes.
#[derive(Debug)]
pub struct ProcPlan {
    pub cwd: CString,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
    pub umask: libc::mode_t,
    pub caps: Option<CapsPlan>,
    pub no_new_privs: bool,
    /// (resource, soft, hard)
    pub rlimits: Vec<(u32, u64, u64)>,
    pub seccomp: Programs,
    pub tty: bool,
    /// `process.consoleSize` as (rows, cols): the pty is sized before the
    /// process starts, so it never sees a 0x0 terminal.
    pub console_size: Option<(u16, u16)>,
    pub exec: ExecPlan,
    /// Written by the parent into /proc/<pid>/oom_score_adj.
    pub oom_score_adj: Option<i32>,
}

/// What is mounted on the root's mount point.
#[derive(Debug)]
pub enum RootMount {
    /// An overlay with these options (lowerdir, upperdir, workdir).
    Overlay(CString),
    /// This directory, bind-mounted with everything under it.
    Bind(CString),
}

/// The root filesystem.
#[derive(Debug)]
pub struct RootPlan {
    /// Mount point of the tmpfs that holds upper and work, when the caller
    /// gave no upper directory.
    pub tmpfs: Option<CString>,
    /// Directories to create after that tmpfs is mounted (upper, work).
    pub mkdirs: Vec<CString>,
    pub merged: CString,
    pub mount: RootMount,
    pub readonly: bool,
    /// `linux.rootfsPropagation`, applied to / after pivot_root.
    pub propagation: Option<c_ulong>,
}

/// The container's init.
#[derive(Debug)]
pub struct InitPlan {
    pub new_user: bool,
    pub unshare_cgroup: bool,
    pub hostname: Option<CString>,
    pub domainname: Option<CString>,
    pub root: RootPlan,
    pub mounts: Vec<MountPlan>,
    /// /dev is a fresh filesystem: create the device nodes and links.
    pub setup_dev: bool,
    pub devices: Vec<DevicePlan>,
    /// (path under /proc/sys, value)
    pub sysctls: Vec<(CString, CString)>,
    pub masked: Vec<CString>,
    pub readonly: Vec<CString>,
    pub process: ProcPlan,
}

pub fn cstring(what: &str, bytes: impl Into<Vec<u8>>) -> Result<CString, Error> {
    CString::new(bytes).map_err(|_| Error::Spec(format!("{what} contains a NUL byte")))
}

/// Lexically normalizes a path inside the container: absolute, no `.`, `..`
/// clamped at the root, no duplicate or trailing slashes.
pub fn clean_abs(p: &Path) -> Result<CString, Error> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                parts.pop();
            }
            Component::Normal(n) => parts.push(n.as_bytes()),
        }
    }
    let mut out = Vec::new();
    for part in &parts {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    cstring(&format!("path {}", p.display()), out)
}

/// Result of parsing a mount's options.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: c_ulong,
    pub propagation: Vec<c_ulong>,
    pub data: Vec<String>,
    pub bind: bool,
}

/// Parses mount options the way runc does: known flags become mount flags,
/// propagation keywords are collected, the rest is filesystem data.
pub fn parse_options(options: &[String]) -> Result<MountOptions, Error> {
    let mut o = MountOptions::default();
    for opt in options {
        let (set, clear): (c_ulong, c_ulong) = match opt.as_str() {
            "defaults" => (0, 0),
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "suid" => (0, libc::MS_NOSUID),
            "nosuid" => (libc::MS_NOSUID, 0),
            "dev" => (0, libc::MS_NODEV),
            "nodev" => (libc::MS_NODEV, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "noexec" => (libc::MS_NOEXEC, 0),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "remount" => (libc::MS_REMOUNT, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "atime" => (0, libc::MS_NOATIME),
            "noatime" => (libc::MS_NOATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "lazytime" => (libc::MS_LAZYTIME, 0),
            "nolazytime" => (0, libc::MS_LAZYTIME),
            "iversion" => (libc::MS_I_VERSION, 0),
            "noiversion" => (0, libc::MS_I_VERSION),
            "silent" => (libc::MS_SILENT, 0),
            "loud" => (0, libc::MS_SILENT),
            "nosymfollow" => (0x100, 0),
            "bind" => {
                o.bind = true;
                (libc::MS_BIND, 0)
            }
            "rbind" => {
                o.bind = true;
                (libc::MS_BIND | libc::MS_REC, 0)
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let base = match opt.trim_start_matches('r') {
                    "private" => libc::MS_PRIVATE,
                    "shared" => libc::MS_SHARED,
                    "slave" => libc::MS_SLAVE,
                    _ => libc::MS_UNBINDABLE,
                };
                let rec = if opt.starts_with('r') {
                    libc::MS_REC
                } else {
                    0
                };
                o.propagation.push(base | rec);
                (0, 0)
            }
            // Recursive read-only (mount_setattr) approximated by ro.
            "rro" => (libc::MS_RDONLY, 0),
            "rrw" => (0, libc::MS_RDONLY),
            // containerd/Docker extras that do not apply here.
            "tmpcopyup" | "rnosuid" | "rnodev" | "rnoexec" => (0, 0),
            "idmap" | "ridmap" => {
                return Err(Error::Spec(format!(
                    "mount option {opt} (idmapped mounts) is not supported"
                )))
            }
            _ => {
                o.data.push(opt.clone());
                (0, 0)
            }
        };
        o.flags = (o.flags | set) & !clear;
    }
    Ok(o)
}

/// Builds the plan of one spec mount. `cgroup2_host` tells whether the host
/// has cgroup v2 (a `cgroup` mount then becomes `cgroup2`). None: skip it.
pub fn mount_plan(m: &Mount, cgroup2_host: bool) -> Result<Option<MountPlan>, Error> {
    let dest_path = m.destination();
    if !dest_path.is_absolute() {
        return Err(Error::Spec(format!(
            "mount destination {} is not absolute",
            dest_path.display()
        )));
    }
    let dest = clean_abs(dest_path)?;
    if dest.as_bytes() == b"/" {
        return Err(Error::Spec("a mount on / is not allowed".into()));
    }
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]))?;
    let typ = m.typ().as_deref().unwrap_or("");
    let bind = opts.bind || typ == "bind";
    if bind {
        let src = m.source().as_ref().ok_or_else(|| {
            Error::Spec(format!(
                "bind mount on {} has no source",
                dest_path.display()
            ))
        })?;
        let meta = std::fs::metadata(src)
            .map_err(|e| Error::os(format!("bind mount source {}", src.display()), e))?;
        let create = if meta.is_dir() {
            Create::Dir
        } else {
            Create::File
        };
        let flags = libc::MS_BIND | (opts.flags & libc::MS_REC);
        let rest = opts.flags & !(libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT);
        return Ok(Some(MountPlan {
            dest,
            source: Some(cstring("mount source", src.as_os_str().as_bytes())?),
            fstype: None,
            flags,
            data: None,
            remount: (rest != 0).then_some(rest),
            propagation: opts.propagation,
            create,
            label: cstring("", "bind")?,
        }));
    }
    let fstype = match typ {
        "" => {
            return Err(Error::Spec(format!(
                "mount on {} has no type",
                dest_path.display()
            )))
        }
        "cgroup" if cgroup2_host => "cgroup2",
        "cgroup" => {
            log::warn!(
                "mount of cgroup v1 on {} skipped: only cgroup v2 is supported",
                dest_path.display()
            );
            return Ok(None);
        }
        t => t,
    };
    let source = match m.source() {
        Some(s) => s.as_os_str().as_bytes().to_vec(),
        None => fstype.as_bytes().to_vec(),
    };
    let data = (!opts.data.is_empty())
        .then(|| cstring("mount options", opts.data.join(",")))
        .transpose()?;
    Ok(Some(MountPlan {
        dest,
        source: Some(cstring("mount source", source)?),
        fstype: Some(cstring("mount type", fstype)?),
        flags: opts.flags,
        data,
        remount: None,
        propagation: opts.propagation,
        create: Create::Dir,
        label: cstring("mount type", fstype)?,
    }))
}

/// `makedev` for Linux's encoding.
pub fn makedev(major: u64, minor: u64) -> libc::dev_t {
    ((major & 0xffff_f000) << 32)
        | ((major & 0x0000_0fff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0x0000_00ff)
}

fn device(path: &str, typ: libc::mode_t, major: u64, minor: u64, perm: u32) -> DevicePlan {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("/", path));
    DevicePlan {
        path: CString::new(path).expect("static path"),
        dir: CString::new(if dir.is_empty() { "/" } else { dir }).expect("static path"),
        name: CString::new(name).expect("static path"),
        mode: typ | perm as libc::mode_t,
        dev: makedev(major, minor),
        uid: 0,
        gid: 0,
    }
}

/// null, zero, full, random, urandom, tty.
pub fn default_devices() -> Vec<DevicePlan> {
    [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
    .into_iter()
    .map(|(p, ma, mi)| device(p, libc::S_IFCHR, ma, mi, 0o666))
    .collect()
}

/// A device from `linux.devices`.
pub fn device_plan(d: &LinuxDevice) -> Result<DevicePlan, Error> {
    let path = clean_abs(d.path())?;
    let s = path
        .to_str()
        .map_err(|_| Error::Spec(format!("device path {} is not UTF-8", d.path().display())))?;
    if s == "/" {
        return Err(Error::Spec("device path /".into()));
    }
    let typ = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
        LinuxDeviceType::B => libc::S_IFBLK,
        LinuxDeviceType::P => libc::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(Error::Spec(format!(
                "device {s}: type 'a' is not a node type"
            )))
        }
    };
    let (major, minor) = (d.major(), d.minor());
    if major < 0 || minor < 0 {
        return Err(Error::Spec(format!("device {s}: negative major/minor")));
    }
    let mut p = device(
        s,
        typ,
        major as u64,
        minor as u64,
        d.file_mode().unwrap_or(0o666) & 0o7777,
    );
    p.uid = d.uid().unwrap_or(0);
    p.gid = d.gid().unwrap_or(0);
    Ok(p)
}

fn cap_index(c: &Capability) -> Option<u8> {
    caps::Capability::from_str(&format!("CAP_{c}"))
        .ok()
        .map(|c| c.index())
}

fn cap_mask(set: &Option<HashSet<Capability>>, supported: u64) -> u64 {
    let mut m = 0u64;
    for c in set.iter().flatten() {
        match cap_index(c) {
            Some(i) if supported & (1 << i) != 0 => m |= 1 << i,
            _ => log::warn!("capability {c} is not supported by this kernel, ignored"),
        }
    }
    m
}

/// The highest capability number the kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
        .min(63)
}

pub fn caps_plan(c: &LinuxCapabilities, last_cap: u32) -> CapsPlan {
    let supported = if last_cap >= 63 {
        u64::MAX
    } else {
        (1u64 << (last_cap + 1)) - 1
    };
    CapsPlan {
        bounding: cap_mask(c.bounding(), supported),
        effective: cap_mask(c.effective(), supported),
        permitted: cap_mask(c.permitted(), supported),
        inheritable: cap_mask(c.inheritable(), supported),
        ambient: cap_mask(c.ambient(), supported),
        last_cap,
    }
}

pub fn rlimit_resource(t: PosixRlimitType) -> u32 {
    match t {
        PosixRlimitType::RlimitCpu => 0,
        PosixRlimitType::RlimitFsize => 1,
        PosixRlimitType::RlimitData => 2,
        PosixRlimitType::RlimitStack => 3,
        PosixRlimitType::RlimitCore => 4,
        PosixRlimitType::RlimitRss => 5,
        PosixRlimitType::RlimitNproc => 6,
        PosixRlimitType::RlimitNofile => 7,
        PosixRlimitType::RlimitMemlock => 8,
        PosixRlimitType::RlimitAs => 9,
        PosixRlimitType::RlimitLocks => 10,
        PosixRlimitType::RlimitSigpending => 11,
        PosixRlimitType::RlimitMsgqueue => 12,
        PosixRlimitType::RlimitNice => 13,
        PosixRlimitType::RlimitRtprio => 14,
        PosixRlimitType::RlimitRttime => 15,
    }
}

/// The paths execve will try for `name`: itself when it has a slash, else
/// each `$PATH` entry (from `env`, or [`DEFAULT_PATH`]).
pub fn exec_candidates(name: &str, env: &[String]) -> (Vec<String>, bool) {
    if name.contains('/') {
        return (vec![name.to_string()], false);
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let c = path
        .split(':')
        .map(|d| {
            let d = if d.is_empty() { "." } else { d };
            format!("{}/{name}", d.trim_end_matches('/'))
        })
        .collect();
    (c, true)
}

fn ptrs(v: &[CString]) -> Vec<*const c_char> {
    v.iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

pub fn exec_plan(args: &[String], env: &[String]) -> Result<ExecPlan, Error> {
    let name = args
        .first()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| Error::Spec("process.args is empty".into()))?;
    let argv = args
        .iter()
        .map(|a| cstring("process.args", a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env
        .iter()
        .map(|e| cstring("process.env", e.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let (cands, searched) = exec_candidates(name, env);
    Ok(ExecPlan {
        argv_ptrs: ptrs(&argv),
        _argv: argv,
        envp_ptrs: ptrs(&envp),
        _envp: envp,
        candidates: cands
            .into_iter()
            .map(|c| cstring("executable path", c))
            .collect::<Result<_, _>>()?,
        name: cstring("process.args", name.as_bytes())?,
        searched,
    })
}

/// The process plan for `p` with the container's seccomp filters.
pub fn proc_plan(
    p: &Process,
    tty: bool,
    seccomp: Programs,
    last_cap: u32,
) -> Result<ProcPlan, Error> {
    let cwd = p.cwd();
    if !cwd.is_absolute() {
        return Err(Error::Spec(format!(
            "process.cwd {} is not absolute",
            cwd.display()
        )));
    }
    let env = p.env().clone().unwrap_or_default();
    let exec = exec_plan(p.args().as_deref().unwrap_or(&[]), &env)?;
    let user = p.user();
    let rlimits = p
        .rlimits()
        .iter()
        .flatten()
        .map(|r| (rlimit_resource(r.typ()), r.soft(), r.hard()))
        .collect();
    if p.apparmor_profile().is_some() || p.selinux_label().is_some() {
        log::debug!("apparmor/selinux settings ignored");
    }
    Ok(ProcPlan {
        cwd: cstring("process.cwd", cwd.as_os_str().as_bytes())?,
        uid: user.uid(),
        gid: user.gid(),
        groups: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask().unwrap_or(0o022) as libc::mode_t,
        caps: p.capabilities().as_ref().map(|c| caps_plan(c, last_cap)),
        no_new_privs: p.no_new_privileges().unwrap_or(false),
        rlimits,
        seccomp,
        tty,
        console_size: p.console_size().map(|b| {
            let clamp = |v: u64| v.min(u16::MAX as u64) as u16;
            (clamp(b.height()), clamp(b.width()))
        }),
        exec,
        oom_score_adj: p.oom_score_adj(),
    })
}

/// `/proc/sys/...` for a sysctl key (`net.ipv4.ip_forward`; a `/` in a key
/// stands for a `.` in a name, as sysctl(8) has it).
pub fn sysctl_path(key: &str) -> Result<String, Error> {
    let p: String = key
        .chars()
        .map(|c| match c {
            '.' => '/',
            '/' => '.',
            c => c,
        })
        .collect();
    if key.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(Error::Spec(format!("bad sysctl key {key:?}")));
    }
    Ok(format!("/proc/sys/{p}"))
}

/// Whether a sysctl is isolated by the namespaces the container has
/// (what runc allows).
pub fn sysctl_namespaced(key: &str, ipc: bool, net: bool, uts: bool) -> bool {
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    (ipc && (IPC.contains(&key) || key.starts_with("fs.mqueue.")))
        || (net && key.starts_with("net."))
        || (uts && (key == "kernel.hostname" || key == "kernel.domainname"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxCapabilitiesBuilder, LinuxDeviceBuilder, MountBuilder};

    #[test]
    fn clean_paths() {
        let c = |s: &str| clean_abs(Path::new(s)).unwrap().into_string().unwrap();
        assert_eq!(c("/proc"), "/proc");
        assert_eq!(c("/a//b/./c/"), "/a/b/c");
        assert_eq!(c("/a/../../etc"), "/etc");
        assert_eq!(c("a/b"), "/a/b");
        assert_eq!(c("/"), "/");
        assert_eq!(c("/.."), "/");
    }

    #[test]
    fn options() {
        let o = |v: &[&str]| {
            parse_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
        };
        let p = o(&[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ]);
        assert_eq!(p.flags, libc::MS_NOSUID | libc::MS_NOEXEC);
        assert_eq!(
            p.data,
            ["newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]
        );
        assert!(!p.bind);
        let p = o(&["rbind", "ro", "rprivate"]);
        assert!(p.bind);
        assert_eq!(p.flags, libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY);
        assert_eq!(p.propagation, [libc::MS_PRIVATE | libc::MS_REC]);
        let p = o(&["ro", "rw", "slave"]);
        assert_eq!(p.flags, 0);
        assert_eq!(p.propagation, [libc::MS_SLAVE]);
        assert!(parse_options(&["idmap".to_string()]).is_err());
    }

    #[test]
    fn mount_plans() {
        let m = MountBuilder::default()
            .destination("/data/")
            .typ("none")
            .source("/tmp")
            .options(vec!["bind".to_string(), "ro".to_string()])
            .build()
            .unwrap();
        let p = mount_plan(&m, true).unwrap().unwrap();
        assert_eq!(p.dest.to_bytes(), b"/data");
        assert_eq!(p.flags, libc::MS_BIND);
        assert_eq!(p.remount, Some(libc::MS_RDONLY));
        assert_eq!(p.create, Create::Dir);
        assert!(p.fstype.is_none());

        // A file source gets a file mount point.
        let m = MountBuilder::default()
            .destination("/etc/hosts")
            .typ("bind")
            .source("/etc/hostname")
            .options(vec!["rbind".to_string()])
            .build()
            .unwrap();
        let p = mount_plan(&m, true).unwrap().unwrap();
        assert_eq!(p.create, Create::File);
        assert_eq!(p.flags, libc::MS_BIND | libc::MS_REC);
        assert_eq!(p.remount, None);

        // Missing bind source.
        let m = MountBuilder::default()
            .destination("/x")
            .typ("bind")
            .source("/nonexistent/husk")
            .build()
            .unwrap();
        let e = mount_plan(&m, true).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/husk"), "{e}");

        // cgroup → cgroup2 on v2 hosts, skipped on v1 hosts.
        let m = MountBuilder::default()
            .destination("/sys/fs/cgroup")
            .typ("cgroup")
            .source("cgroup")
            .options(vec!["ro".to_string()])
            .build()
            .unwrap();
        let p = mount_plan(&m, true).unwrap().unwrap();
        assert_eq!(p.fstype.unwrap().to_bytes(), b"cgroup2");
        assert!(mount_plan(&m, false).unwrap().is_none());

        // Relative destination, mount on /.
        let m = MountBuilder::default()
            .destination("proc")
            .typ("proc")
            .build()
            .unwrap();
        assert!(mount_plan(&m, true).is_err());
        let m = MountBuilder::default()
            .destination("/")
            .typ("tmpfs")
            .build()
            .unwrap();
        assert!(mount_plan(&m, true).is_err());
    }

    #[test]
    fn devices() {
        let d = default_devices();
        assert_eq!(d.len(), 6);
        assert_eq!(d[0].dev, libc::makedev(1, 3));
        assert_eq!(d[0].dir.to_bytes(), b"/dev");
        assert_eq!(d[0].name.to_bytes(), b"null");
        assert_eq!(makedev(259, 300_000), libc::makedev(259, 300_000));
        let spec = LinuxDeviceBuilder::default()
            .path("/dev/net/tun")
            .typ(LinuxDeviceType::C)
            .major(10i64)
            .minor(200i64)
            .file_mode(0o600u32)
            .uid(5u32)
            .build()
            .unwrap();
        let p = device_plan(&spec).unwrap();
        assert_eq!(p.dir.to_bytes(), b"/dev/net");
        assert_eq!(p.name.to_bytes(), b"tun");
        assert_eq!(p.mode, libc::S_IFCHR | 0o600);
        assert_eq!(p.uid, 5);
    }

    #[test]
    fn capabilities() {
        let set: HashSet<Capability> = [Capability::Chown, Capability::SysAdmin].into();
        let c = LinuxCapabilitiesBuilder::default()
            .bounding(set.clone())
            .effective(set)
            .permitted(HashSet::new())
            .build()
            .unwrap();
        let p = caps_plan(&c, 40);
        assert_eq!(p.bounding, (1 << 0) | (1 << 21));
        assert_eq!(p.effective, p.bounding);
        assert_eq!(p.permitted, 0);
        // A kernel that stops below a capability drops it.
        let p = caps_plan(&c, 20);
        assert_eq!(p.bounding, 1);
        assert!(last_cap() >= 36);
    }

    #[test]
    fn exec_paths() {
        let (c, s) = exec_candidates("/bin/sh", &[]);
        assert_eq!((c, s), (vec!["/bin/sh".to_string()], false));
        let (c, s) = exec_candidates("ls", &["PATH=/a:/b/::/c".to_string()]);
        assert!(s);
        assert_eq!(c, ["/a/ls", "/b/ls", "./ls", "/c/ls"]);
        let (c, _) = exec_candidates("ls", &[]);
        assert_eq!(c.len(), DEFAULT_PATH.split(':').count());
        let e = exec_plan(&["ls".into(), "-l".into()], &["A=b".into()]).unwrap();
        assert_eq!(e.argv_ptrs.len(), 3);
        assert!(e.argv_ptrs[2].is_null());
        assert_eq!(e.envp_ptrs.len(), 2);
        assert!(exec_plan(&[], &[]).is_err());
        assert!(exec_plan(&["a\0b".into()], &[]).is_err());
    }

    #[test]
    fn sysctls() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            "/proc/sys/net/ipv4/ip_forward"
        );
        assert_eq!(
            sysctl_path("net.ipv4.conf.eth0/100.forwarding").unwrap(),
            "/proc/sys/net/ipv4/conf/eth0.100/forwarding"
        );
        assert!(sysctl_path("net..x").is_err());
        assert!(sysctl_path("").is_err());
        assert!(sysctl_namespaced("net.ipv4.ip_forward", false, true, false));
        assert!(!sysctl_namespaced("net.ipv4.ip_forward", true, false, true));
        assert!(sysctl_namespaced("kernel.shmmax", true, false, false));
        assert!(!sysctl_namespaced("vm.overcommit_memory", true, true, true));
    }
}
