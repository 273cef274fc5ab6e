//! The host side of a virtio-net device.
//!
//! [`NetBackend`] is the narrow interface the device needs (one packet per
//! read or write, an fd to poll, offload flags), so the device is testable
//! with a socketpair. [`Tap`] is the real one: an existing, single-queue TAP
//! interface opened through `/dev/net/tun` with `IFF_VNET_HDR`, so packets
//! on its fd carry the same 12-byte virtio-net header the guest uses and
//! checksum/segmentation offloads pass straight through.
//!
//! `husk boot --net` never creates a TAP: the user sets one up (`ip tuntap
//! add NAME mode tap`, addresses, bridge...) and names it. The OCI runtime
//! makes its own with [`create_persistent`] in the container's network
//! namespace, which it owns. `TUNSETIFF` would silently create a missing
//! interface, so [`Tap::open`] looks it up first and, to close the race
//! with a concurrent delete, refuses an interface that turns out not to be
//! persistent (only the one `TUNSETIFF` just created can be: a
//! non-persistent TAP held by someone else is busy).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use libc::{c_int, c_short, c_ulong};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO,
};

use super::VNET_HDR_LEN;

/// `IFNAMSIZ`: interface names are at most 15 bytes plus the NUL.
pub const IFNAMSIZ: usize = 16;
/// Where the TUN/TAP clone device lives.
const TUN_DEVICE: &str = "/dev/net/tun";
/// Where interfaces are listed.
const SYS_CLASS_NET: &str = "/sys/class/net";

/// What can stop a TAP from being used.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name cannot be an interface name.
    #[error("invalid TAP device name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No interface of that name exists (husk does not create one).
    #[error("TAP device {0} does not exist")]
    NotFound(String),
    /// The interface exists but is not a TAP (a TUN, or not tun/tap at all).
    #[error("{0} is not a TAP device")]
    NotATap(String),
    /// The TAP was created with `multi_queue`; husk attaches one queue.
    #[error("TAP device {0} was created with multi_queue, husk needs a single-queue TAP")]
    MultiQueue(String),
    /// Another process (or another device of this VM) has it open.
    #[error("TAP device {0} is in use")]
    Busy(String),
    /// The TAP belongs to another user or group and we lack CAP_NET_ADMIN.
    #[error("not permitted to open TAP device {0}")]
    PermissionDenied(String),
    /// `/dev/net/tun` cannot be opened.
    #[error("cannot open {TUN_DEVICE}")]
    OpenTun(#[source] io::Error),
    /// An ioctl on the TAP failed for another reason.
    #[error("{op} on TAP device {name} failed")]
    Ioctl {
        /// The ioctl.
        op: &'static str,
        /// The interface.
        name: String,
        /// What it said.
        #[source]
        source: io::Error,
    },
}

/// What the device needs from its host-side network endpoint.
///
/// Reads and writes move exactly one packet (the 12-byte virtio-net header
/// followed by an Ethernet frame) and never block: with nothing to read,
/// `read_packet` fails with [`io::ErrorKind::WouldBlock`]. The fd is polled
/// for readability by the event loop.
pub trait NetBackend: AsRawFd + Send {
    /// Reads one packet into `buf`; returns its length. A packet longer than
    /// `buf` is truncated (the length returned is then `buf.len()` or more;
    /// the device's buffer is one byte longer than any packet it accepts, so
    /// either way it sees the packet is too large).
    fn read_packet(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes one packet; returns the bytes written.
    fn write_packet(&mut self, packet: &[u8]) -> io::Result<usize>;

    /// Sets which offloads the host may use in packets it hands us
    /// (`TUN_F_*`, see [`tap_offload_flags`]).
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;

    /// Whether packets cross with their virtio-net header, so checksum and
    /// segmentation offloads can be offered to the guest.
    fn offloads(&self) -> bool {
        true
    }

    /// Whether a packet the backend cannot take now must wait (the device
    /// stops sending until the fd is writable) instead of being dropped.
    /// A TAP drops, as a NIC with a full queue does; a stream to a
    /// userspace stack waits: a frame dropped there can reorder a
    /// connection's segments, which such a stack may not put back.
    fn backpressure(&self) -> bool {
        false
    }

    /// Sends what an earlier write left pending; `Ok(true)` once nothing
    /// is.
    fn flush(&mut self) -> io::Result<bool> {
        Ok(true)
    }
}

/// The `TUN_F_*` offloads a TAP may use towards a guest that acked
/// `acked_features`: the host may only hand the guest partially
/// checksummed (or segmentation-offloaded) packets it said it can take.
///
/// TSO and UFO need checksum offload (the kernel ignores them without
/// `TUN_F_CSUM`, and the spec makes `GUEST_TSO*`/`GUEST_UFO` depend on
/// `GUEST_CSUM`), so without `GUEST_CSUM` the result is 0.
pub fn tap_offload_flags(acked_features: u64) -> u32 {
    let acked = |bit: u32| acked_features & (1u64 << bit) != 0;
    if !acked(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if acked(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if acked(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    if acked(VIRTIO_NET_F_GUEST_UFO) {
        flags |= libc::TUN_F_UFO;
    }
    flags
}

/// `struct ifreq` as `TUNSETIFF`/`TUNGETIFF` use it: the name and the flags
/// member of the union, padded to the kernel's size.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: c_short,
    _pad: [u8; IFREQ_SIZE - IFNAMSIZ - std::mem::size_of::<c_short>()],
}

/// `sizeof(struct ifreq)`: the kernel copies this many bytes in and out.
const IFREQ_SIZE: usize = std::mem::size_of::<libc::ifreq>();
const _: () = assert!(std::mem::size_of::<IfReq>() == IFREQ_SIZE);

impl IfReq {
    /// `name` must have been checked by [`validate_name`].
    fn new(name: &str, flags: c_int) -> Self {
        let mut ifr = IfReq {
            name: [0; IFNAMSIZ],
            // The flags member of the union is a short; every IFF_* value we
            // pass fits in 16 bits.
            flags: flags as c_short,
            _pad: [0; IFREQ_SIZE - IFNAMSIZ - std::mem::size_of::<c_short>()],
        };
        ifr.name[..name.len()].copy_from_slice(name.as_bytes());
        ifr
    }
}

/// Checks that `name` can be an interface name (and a single sysfs path
/// component).
fn validate_name(name: &str) -> Result<(), TapError> {
    let invalid = |reason| {
        Err(TapError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() >= IFNAMSIZ {
        return invalid("longer than 15 bytes");
    }
    if name == "." || name == ".." || name.bytes().any(|b| b == b'/' || b == 0 || b <= b' ') {
        return invalid("contains '/', whitespace or control characters, or is '.'/'..'");
    }
    Ok(())
}

fn last_errno_result(ret: c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `ioctl(fd, request, &mut ifreq)`.
fn ifreq_ioctl(file: &File, request: libc::Ioctl, ifr: &mut IfReq) -> io::Result<()> {
    let ifr: *mut IfReq = ifr;
    // SAFETY: `file` is an open /dev/net/tun fd borrowed for the whole call.
    // `ifr` comes from an exclusive borrow of a live `IfReq`, which is
    // `repr(C)` and exactly `sizeof(struct ifreq)` bytes (compile-time
    // assertion above): the number of bytes TUNSETIFF/TUNGETIFF copy from
    // and to it. The kernel keeps no reference past the call.
    last_errno_result(unsafe { libc::ioctl(file.as_raw_fd(), request, ifr) })
}

/// `ioctl(fd, request, &value)` for ioctls reading an int through a pointer.
fn int_ioctl(file: &File, request: libc::Ioctl, value: c_int) -> io::Result<()> {
    let value: *const c_int = &value;
    // SAFETY: `file` is an open /dev/net/tun fd borrowed for the whole call;
    // `value` points to a live c_int on our stack, the exact size the ioctl
    // copies from user space, and is not retained by the kernel.
    last_errno_result(unsafe { libc::ioctl(file.as_raw_fd(), request, value) })
}

/// `ioctl(fd, request, value)` for ioctls taking their argument by value.
fn value_ioctl(file: &File, request: libc::Ioctl, value: c_ulong) -> io::Result<()> {
    // SAFETY: `file` is an open /dev/net/tun fd borrowed for the whole call;
    // the argument is an integer, not a pointer, so no memory is shared
    // with the kernel.
    last_errno_result(unsafe { libc::ioctl(file.as_raw_fd(), request, value) })
}

/// The interface's index in this thread's network namespace, if it has
/// one of that name. Not sysfs: `/sys/class/net` lists the namespace that
/// mounted `/sys`, and the OCI runtime opens its TAP in another.
fn if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// sysfs's `tun_flags` of the interface ("0x1002\n"; `Some(None)` when it
/// has none, so is no tun/tap), when sysfs shows this very interface (the
/// same index), else `None`.
fn sysfs_tun_flags(name: &str, index: u32) -> Option<Option<c_int>> {
    let sys = Path::new(SYS_CLASS_NET).join(name);
    let shown: u32 = std::fs::read_to_string(sys.join("ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if shown != index {
        return None;
    }
    match std::fs::read_to_string(sys.join("tun_flags")) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Some(None),
        Err(_) => None,
        Ok(text) => c_int::from_str_radix(text.trim().trim_start_matches("0x"), 16)
            .ok()
            .map(Some),
    }
}

/// Creates the persistent, single-queue TAP `name` (as `ip tuntap add NAME
/// mode tap` does), for [`Tap::open`] to attach to. An interface of that
/// name already there is an error, not reused.
pub fn create_persistent(name: &str) -> Result<(), TapError> {
    validate_name(name)?;
    if if_index(name).is_some() {
        return Err(TapError::Ioctl {
            op: "TUNSETIFF",
            name: name.to_string(),
            source: io::Error::from_raw_os_error(libc::EEXIST),
        });
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_DEVICE)
        .map_err(TapError::OpenTun)?;
    let error = |op, source: io::Error| match source.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => TapError::PermissionDenied(name.to_string()),
        _ => TapError::Ioctl {
            op,
            name: name.to_string(),
            source,
        },
    };
    let mut ifr = IfReq::new(name, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
    ifreq_ioctl(&file, libc::TUNSETIFF, &mut ifr).map_err(|e| error("TUNSETIFF", e))?;
    // Persistent, it outlives this fd; the namespace's end removes it.
    value_ioctl(&file, libc::TUNSETPERSIST, 1).map_err(|e| error("TUNSETPERSIST", e))
}

/// An attached TAP interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the existing TAP interface `name`.
    ///
    /// The fd is non-blocking, packets carry a 12-byte virtio-net header
    /// (`IFF_VNET_HDR`, `TUNSETVNETHDRSZ`), no packet-info prefix
    /// (`IFF_NO_PI`), and offloads start disabled until the guest's
    /// features are known ([`NetBackend::set_offload`]).
    pub fn open(name: &str) -> Result<Self, TapError> {
        validate_name(name)?;
        let Some(index) = if_index(name) else {
            return Err(TapError::NotFound(name.to_string()));
        };
        match sysfs_tun_flags(name, index) {
            // sysfs shows the interface, and it is no tun/tap.
            Some(None) => return Err(TapError::NotATap(name.to_string())),
            Some(Some(flags)) if flags & libc::IFF_TAP == 0 => {
                return Err(TapError::NotATap(name.to_string()))
            }
            Some(Some(flags)) if flags & libc::IFF_MULTI_QUEUE != 0 => {
                return Err(TapError::MultiQueue(name.to_string()))
            }
            // A TAP, or sysfs cannot tell: let TUNSETIFF judge.
            _ => {}
        }

        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(TUN_DEVICE)
            .map_err(TapError::OpenTun)?;

        // IFF_ONE_QUEUE is left out: the kernel has ignored it since 3.8.
        let mut ifr = IfReq::new(name, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
        if let Err(source) = ifreq_ioctl(&file, libc::TUNSETIFF, &mut ifr) {
            let name = name.to_string();
            return Err(match source.raw_os_error() {
                Some(libc::EBUSY) => TapError::Busy(name),
                Some(libc::EPERM | libc::EACCES) => TapError::PermissionDenied(name),
                // The interface is not a TAP, or its flags do not match
                // ours (multi_queue), and sysfs could not tell us.
                Some(libc::EINVAL) => TapError::NotATap(name),
                _ => TapError::Ioctl {
                    op: "TUNSETIFF",
                    name,
                    source,
                },
            });
        }
        let tap = Tap {
            file,
            name: name.to_string(),
        };

        let mut ifr = IfReq::new(name, 0);
        ifreq_ioctl(&tap.file, libc::TUNGETIFF, &mut ifr)
            .map_err(|e| tap.ioctl_error("TUNGETIFF", e))?;
        if c_int::from(ifr.flags) & libc::IFF_PERSIST == 0 {
            // The interface vanished between the sysfs check and TUNSETIFF,
            // which then created a fresh one; dropping the fd removes it.
            return Err(TapError::NotFound(name.to_string()));
        }

        // VNET_HDR_LEN is 12.
        int_ioctl(&tap.file, libc::TUNSETVNETHDRSZ, VNET_HDR_LEN as c_int)
            .map_err(|e| tap.ioctl_error("TUNSETVNETHDRSZ", e))?;
        // A persistent TAP keeps the offloads its previous user set.
        value_ioctl(&tap.file, libc::TUNSETOFFLOAD, 0)
            .map_err(|e| tap.ioctl_error("TUNSETOFFLOAD", e))?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn ioctl_error(&self, op: &'static str, source: io::Error) -> TapError {
        TapError::Ioctl {
            op,
            name: self.name.clone(),
            source,
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn read_packet(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn write_packet(&mut self, packet: &[u8]) -> io::Result<usize> {
        self.file.write(packet)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        value_ioctl(&self.file, libc::TUNSETOFFLOAD, c_ulong::from(flags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_before_any_syscall() {
        for (name, bad) in [
            ("", true),
            ("a-name-of-16-by", false),
            ("a-name-of-16-byt", true),
            ("../eth0", true),
            ("..", true),
            ("tap 0", true),
            ("tap\n", true),
            ("tap0", false),
        ] {
            let result = validate_name(name);
            assert_eq!(result.is_err(), bad, "{name:?}: {result:?}");
            if bad {
                assert!(matches!(result, Err(TapError::InvalidName { .. })));
            }
        }
        // Through the public entry point too.
        assert!(matches!(
            Tap::open("way-too-long-for-ifnamsiz"),
            Err(TapError::InvalidName { .. })
        ));
    }

    #[test]
    fn ifreq_holds_the_name_and_flags() {
        let ifr = IfReq::new("tap0", libc::IFF_TAP | libc::IFF_NO_PI);
        assert_eq!(&ifr.name[..5], b"tap0\0");
        assert_eq!(c_int::from(ifr.flags), 0x1002);
        let full = IfReq::new("a-name-of-16-by", 0);
        // Always NUL-terminated.
        assert_eq!(full.name[IFNAMSIZ - 1], 0);
    }

    #[test]
    fn error_messages_name_the_tap() {
        assert_eq!(
            TapError::NotFound("tap9".into()).to_string(),
            "TAP device tap9 does not exist"
        );
        assert_eq!(
            TapError::Busy("tap9".into()).to_string(),
            "TAP device tap9 is in use"
        );
    }
}
