//! A VM restored from a template becomes itself: every clone starts with
//! the template's clock, entropy pool and hostname, so the host sends the
//! time, fresh random bytes and the name (`Request::Identity`).

use husk_wire::agent::{NetIdentity, MIN_ENTROPY};
use std::os::fd::AsRawFd;

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])` (libc's request type is
/// musl's int or glibc's unsigned long).
const RNDADDENTROPY: libc::Ioctl = 0x4008_5203 as libc::Ioctl;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::Ioctl = 0x5207;

pub fn apply(
    realtime_ns: u64,
    entropy: &[u8],
    hostname: &str,
    net: Option<&NetIdentity>,
) -> Result<(), String> {
    if entropy.len() < MIN_ENTROPY {
        return Err(format!(
            "identity: {} random bytes, at least {MIN_ENTROPY} wanted",
            entropy.len()
        ));
    }
    set_clock(realtime_ns)?;
    reseed(entropy)?;
    nix::unistd::sethostname(hostname).map_err(|e| format!("sethostname {hostname:?}: {e}"))?;
    match net {
        Some(n) => eth0::configure(n).map_err(|e| format!("eth0: {e}")),
        None => Ok(()),
    }
}

/// What the kernel's `ip=` does for a booted VM, done for a clone: the
/// classic interface ioctls, which need no netlink library in the guest.
mod eth0 {
    use husk_wire::agent::NetIdentity;
    use std::net::Ipv4Addr;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const NAME: &[u8] = b"eth0";

    pub fn configure(n: &NetIdentity) -> Result<(), String> {
        // SAFETY: socket(2) with constant arguments; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh fd nobody else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = ifreq();
        // SAFETY: the union's hwaddr member is a sockaddr; we write its
        // family and the first six bytes of its data.
        unsafe {
            req.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
            for (d, m) in req.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(n.mac) {
                *d = m as libc::c_char;
            }
        }
        ioctl(&sock, libc::SIOCSIFHWADDR as _, &mut req, "SIOCSIFHWADDR")?;
        let mut req = ifreq();
        req.ifr_ifru.ifru_addr = sockaddr(n.address);
        ioctl(&sock, libc::SIOCSIFADDR as _, &mut req, "SIOCSIFADDR")?;
        let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(n.prefix)).unwrap_or(0));
        let mut req = ifreq();
        req.ifr_ifru.ifru_netmask = sockaddr(mask);
        ioctl(&sock, libc::SIOCSIFNETMASK as _, &mut req, "SIOCSIFNETMASK")?;
        let mut req = ifreq();
        ioctl(&sock, libc::SIOCGIFFLAGS as _, &mut req, "SIOCGIFFLAGS")?;
        // SAFETY: SIOCGIFFLAGS filled the flags member.
        unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
        ioctl(&sock, libc::SIOCSIFFLAGS as _, &mut req, "SIOCSIFFLAGS")?;
        if let Some(gw) = n.gateway {
            default_route(&sock, gw)?;
        }
        Ok(())
    }

    /// The default route through `gw`, in place of any there was: a VM
    /// restored from a checkpoint had one, maybe through another gateway.
    fn default_route(sock: &OwnedFd, gw: Ipv4Addr) -> Result<(), String> {
        let route = |request, gateway: Option<Ipv4Addr>| {
            // SAFETY: rtentry is plain data; all-zero is a valid start.
            let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
            rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
            rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
            rt.rt_flags = libc::RTF_UP;
            if let Some(gw) = gateway {
                rt.rt_gateway = sockaddr(gw);
                rt.rt_flags |= libc::RTF_GATEWAY;
            }
            let mut dev = *b"eth0\0";
            rt.rt_dev = dev.as_mut_ptr().cast();
            // SAFETY: SIOCADDRT/SIOCDELRT read the rtentry, whose rt_dev
            // points at `dev`, alive for the call.
            let r = unsafe { libc::ioctl(sock.as_raw_fd(), request, &mut rt) };
            if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        match route(libc::SIOCADDRT as _, Some(gw)) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => route(libc::SIOCDELRT as _, None)
                .and_then(|()| route(libc::SIOCADDRT as _, Some(gw)))
                .map_err(|e| format!("replacing the default route: {e}")),
            other => other.map_err(|e| format!("SIOCADDRT: {e}")),
        }
    }

    fn ifreq() -> libc::ifreq {
        // SAFETY: ifreq is plain data; all-zero is a valid start.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(NAME) {
            *d = *s as libc::c_char;
        }
        req
    }

    fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sockaddr_in and sockaddr have the same size; the kernel
        // reads an AF_INET sockaddr as a sockaddr_in.
        unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
    }

    fn ioctl(
        sock: &OwnedFd,
        request: libc::Ioctl,
        req: &mut libc::ifreq,
        what: &str,
    ) -> Result<(), String> {
        // SAFETY: the interface ioctls read or fill an ifreq, which `req` is.
        if unsafe { libc::ioctl(sock.as_raw_fd(), request, req as *mut libc::ifreq) } != 0 {
            return Err(format!("{what}: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

fn set_clock(realtime_ns: u64) -> Result<(), String> {
    let ts = libc::timespec {
        tv_sec: (realtime_ns / 1_000_000_000) as _,
        tv_nsec: (realtime_ns % 1_000_000_000) as _,
    };
    // SAFETY: clock_settime reads the timespec we pass, which lives for
    // the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(format!(
            "setting the clock: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Mixes the bytes into the input pool, credited, and makes the generator
/// reseed now rather than at its next interval, so what the container
/// reads from /dev/urandom already depends on them.
fn reseed(entropy: &[u8]) -> Result<(), String> {
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    // struct rand_pool_info { int entropy_count; int buf_size; u32 buf[]; }
    let mut info = Vec::with_capacity(8 + entropy.len());
    info.extend_from_slice(&((entropy.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(entropy.len() as i32).to_ne_bytes());
    info.extend_from_slice(entropy);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info of 8 + buf_size bytes,
    // which `info` holds; the fd is open for the call.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(format!(
            "RNDADDENTROPY: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(format!(
            "RNDRESEEDCRNG: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}
