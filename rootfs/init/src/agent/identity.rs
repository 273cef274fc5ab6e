//! A VM restored from a template becomes itself: every clone starts with
//! the template's clock, entropy pool and hostname, so the host sends the
//! time, fresh random bytes and the name (`Request::Identity`).

use husk_wire::agent::MIN_ENTROPY;
use std::os::fd::AsRawFd;

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])` (libc's request type is
/// musl's int or glibc's unsigned long).
const RNDADDENTROPY: libc::Ioctl = 0x4008_5203 as libc::Ioctl;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::Ioctl = 0x5207;

pub fn apply(realtime_ns: u64, entropy: &[u8], hostname: &str) -> Result<(), String> {
    if entropy.len() < MIN_ENTROPY {
        return Err(format!(
            "identity: {} random bytes, at least {MIN_ENTROPY} wanted",
            entropy.len()
        ));
    }
    set_clock(realtime_ns)?;
    reseed(entropy)?;
    nix::unistd::sethostname(hostname).map_err(|e| format!("sethostname {hostname:?}: {e}"))
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
