//! Thin syscall helpers, usable in a freshly cloned child: none of them
//! allocates, takes a lock or panics. Plus the parent's side of the message
//! protocol over the SOCK_SEQPACKET socket pair.
//!
//! Messages, one datagram each:
//! - child → parent: `P` + pid (i32 LE, from the intermediate process);
//!   `R` (ready, maybe with the pty master as SCM_RIGHTS);
//!   `E` + errno (i32 LE) + text (a setup step failed);
//!   `X` + errno (i32 LE) + searched (u8) + path (execve failed).
//! - parent → child: `G` (go: id maps written, cgroup joined); `S` (start:
//!   execve now).
//!
//! End of file on the parent's side after `R` means the child's execve
//! succeeded (the socket is close-on-exec).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use libc::{c_char, c_int, c_ulong, c_void};

pub const MSG_PID: u8 = b'P';
pub const MSG_READY: u8 = b'R';
pub const MSG_ERROR: u8 = b'E';
pub const MSG_EXEC: u8 = b'X';
pub const MSG_GO: u8 = b'G';
pub const MSG_START: u8 = b'S';

const MSG_MAX: usize = 2048;

/// The current thread's errno.
pub fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A message built on the stack; text past the size limit is cut.
pub struct MsgBuf {
    buf: [u8; MSG_MAX],
    len: usize,
}

impl MsgBuf {
    pub fn new(kind: u8) -> Self {
        let mut m = MsgBuf {
            buf: [0; MSG_MAX],
            len: 0,
        };
        m.push(&[kind]);
        m
    }

    pub fn push(&mut self, bytes: &[u8]) -> &mut Self {
        let room = MSG_MAX - self.len;
        let n = bytes.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        self
    }

    pub fn push_i32(&mut self, v: i32) -> &mut Self {
        self.push(&v.to_le_bytes())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Room for one SCM_RIGHTS control message carrying one fd (CMSG_SPACE(4)
/// is 24 on 64-bit, 16 on 32-bit), aligned for cmsghdr.
#[repr(C, align(8))]
struct CmsgBuf([u8; 32]);

/// Sends one datagram with an optional fd. Returns false on failure.
pub fn send_msg(sock: c_int, data: &[u8], fd: Option<c_int>) -> bool {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut c_void,
        iov_len: data.len(),
    };
    let mut cbuf = CmsgBuf([0; 32]);
    // SAFETY: msghdr is plain data; zero is a valid initial value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_* compute sizes and offsets inside cbuf, which is large
        // and aligned enough for one cmsghdr + one int.
        unsafe {
            let space = libc::CMSG_SPACE(std::mem::size_of::<c_int>() as u32) as usize;
            msg.msg_control = cbuf.0.as_mut_ptr() as *mut c_void;
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<c_int>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut c_int, fd);
        }
    }
    loop {
        // SAFETY: msg points to live buffers for the duration of the call.
        let r = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if r >= 0 {
            return true;
        }
        if errno() != libc::EINTR {
            return false;
        }
    }
}

/// Blocks for a one-byte control message. None on end of file or error.
pub fn recv_byte(sock: c_int) -> Option<u8> {
    let mut b = [0u8; 16];
    loop {
        // SAFETY: reads into a local buffer of the given length.
        let r = unsafe { libc::recv(sock, b.as_mut_ptr() as *mut c_void, b.len(), 0) };
        if r > 0 {
            return Some(b[0]);
        }
        if r == 0 || errno() != libc::EINTR {
            return None;
        }
    }
}

/// Reports a failed step to the parent (`E` message) and exits with `code`.
pub fn fail(sock: c_int, parts: &[&[u8]], err: i32) -> ! {
    let mut m = MsgBuf::new(MSG_ERROR);
    m.push_i32(err);
    for p in parts {
        m.push(p);
    }
    send_msg(sock, m.as_bytes(), None);
    exit(1)
}

/// `_exit`.
pub fn exit(code: c_int) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Formats `/proc/self/fd/<fd>` into `buf` and returns it as a C string.
pub fn fd_path(fd: c_int, buf: &mut [u8; 32]) -> *const c_char {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 12];
    let mut n = fd.max(0) as u32;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let d = &digits[i..];
    buf[PREFIX.len()..PREFIX.len() + d.len()].copy_from_slice(d);
    buf[PREFIX.len() + d.len()] = 0;
    buf.as_ptr() as *const c_char
}

/// Copies `bytes` into `buf` with a terminating NUL; None if too long.
pub fn cstr_in<'a>(bytes: &[u8], buf: &'a mut [u8; 4096]) -> Option<&'a CStr> {
    if bytes.len() >= buf.len() || bytes.contains(&0) {
        return None;
    }
    buf[..bytes.len()].copy_from_slice(bytes);
    buf[bytes.len()] = 0;
    CStr::from_bytes_with_nul(&buf[..=bytes.len()]).ok()
}

/// `clone` as a raw syscall without a new stack: returns twice like fork,
/// 0 in the child. `flags` gets SIGCHLD as the exit signal.
///
/// # Safety
/// The child shares nothing with the parent but runs on a copy of its
/// memory: if the parent is multi-threaded, locks held by other threads
/// (the allocator's included) stay locked in the child forever. The child
/// must only run async-signal-safe code and end with `_exit` or `execve`.
pub unsafe fn clone_raw(flags: c_ulong) -> io::Result<libc::pid_t> {
    // SAFETY: x86_64 and aarch64 order: flags, stack, parent_tid, child_tid,
    // tls. A null stack makes the child continue on a copy of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags | libc::SIGCHLD as c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as libc::pid_t)
    }
}

/// Closes every fd in `[first, last]`.
fn close_range(first: u32, last: u32) {
    if first > last {
        return;
    }
    // SAFETY: close_range only closes descriptors.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if r == 0 {
        return;
    }
    // Old kernel: close one by one up to the soft limit.
    // SAFETY: rlimit is plain data filled by the kernel.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a local.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        rl.rlim_cur.min(65536) as u32
    } else {
        4096
    };
    for fd in first..=last.min(max) {
        // SAFETY: closing a descriptor number, open or not.
        unsafe { libc::close(fd as c_int) };
    }
}

/// In a fresh child: puts `stdio` on 0, 1, 2 and closes every other fd but
/// the ones in `keep` (updated in place: an fd below 3 is moved up first).
/// Returns false if a dup failed.
pub fn arrange_fds(mut stdio: [c_int; 3], keep: &mut [c_int]) -> bool {
    // Move everything we need out of 0..3 first.
    for fd in stdio.iter_mut().chain(keep.iter_mut()) {
        if *fd >= 0 && *fd < 3 {
            // SAFETY: fcntl on a descriptor number.
            let n = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 3) };
            if n < 0 {
                return false;
            }
            *fd = n;
        }
    }
    for (i, fd) in stdio.iter().enumerate() {
        // SAFETY: dup2 on descriptor numbers; clears close-on-exec on i.
        if unsafe { libc::dup2(*fd, i as c_int) } < 0 {
            return false;
        }
    }
    // Close all ≥ 3 except `keep`: sort a copy, close the gaps.
    let mut sorted = [c_int::MAX; 16];
    let n = keep.len().min(sorted.len());
    sorted[..n].copy_from_slice(&keep[..n]);
    sorted[..n].sort_unstable();
    let mut next: u32 = 3;
    for &k in &sorted[..n] {
        if k < 3 {
            continue;
        }
        let k = k as u32;
        if k > next {
            close_range(next, k - 1);
        }
        next = next.max(k + 1);
    }
    close_range(next, u32::MAX);
    true
}

/// Default dispositions for every signal and an empty signal mask: the
/// caller may ignore or block signals (SIGPIPE, SIGCHLD) and both would be
/// inherited across execve. Raw syscalls: libc's sigaction may take a lock
/// (musl, for SIGABRT) and libc's sigprocmask filters its internal signals.
pub fn reset_signals() {
    // The kernel's struct sigaction, all zero: SIG_DFL, no flags, empty mask
    // (32 bytes cover every layout).
    let dfl = [0u64; 4];
    for sig in 1..65 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction reads a zeroed kernel sigaction; failures
        // (invalid numbers) are harmless.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                dfl.as_ptr(),
                std::ptr::null_mut::<c_void>(),
                8usize,
            )
        };
    }
    let empty = 0u64;
    // SAFETY: rt_sigprocmask reads an 8-byte kernel sigset.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        )
    };
}

// ---- parent side ----

/// One datagram received by the parent.
#[derive(Debug)]
pub struct Received {
    pub data: Vec<u8>,
    pub fd: Option<OwnedFd>,
}

/// Waits up to `timeout` for a datagram. `Ok(None)` is end of file.
pub fn recv_msg(sock: BorrowedFd, timeout: Duration) -> io::Result<Option<Received>> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no answer from the container process",
            ));
        }
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as c_int;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
        if r < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(io::Error::last_os_error());
        }
        if r == 0 {
            continue;
        }
        let mut data = vec![0u8; MSG_MAX];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr() as *mut c_void,
            iov_len: data.len(),
        };
        let mut cbuf = CmsgBuf([0; 32]);
        // SAFETY: plain data.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.0.as_mut_ptr() as *mut c_void;
        msg.msg_controllen = cbuf.0.len() as _;
        // SAFETY: msg points to live buffers.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(io::Error::last_os_error());
        }
        let mut fd = None;
        // SAFETY: walking the control messages the kernel wrote into cbuf.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const c_int);
                    fd = Some(OwnedFd::from_raw_fd(raw));
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if n == 0 && fd.is_none() {
            return Ok(None);
        }
        data.truncate(n as usize);
        return Ok(Some(Received { data, fd }));
    }
}

/// Sends a one-byte control message to the child.
pub fn send_byte(sock: BorrowedFd, b: u8) -> io::Result<()> {
    if send_msg(sock.as_raw_fd(), &[b], None) {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads an i32 (LE) at `at`.
pub fn i32_at(data: &[u8], at: usize) -> Option<i32> {
    data.get(at..at + 4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// waitpid(pid) until it is reaped; EINTR retried.
pub fn reap(pid: libc::pid_t) -> io::Result<c_int> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(status);
        }
        if r < 0 && errno() != libc::EINTR {
            return Err(io::Error::last_os_error());
        }
    }
}

/// A pidfd for `pid` (which must be an unreaped child, so that the pid
/// cannot have been reused).
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own (pidfds are close-on-exec).
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Sends `sig` to the process of a pidfd.
pub fn pidfd_signal(pidfd: BorrowedFd, sig: c_int) -> io::Result<()> {
    // SAFETY: pidfd_send_signal without siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the process of a pidfd has exited (the pidfd polls readable).
pub fn pidfd_exited(pidfd: BorrowedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
}

/// A SOCK_SEQPACKET pair, both ends close-on-exec.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair fills two ints.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_paths() {
        let mut b = [0u8; 32];
        let p = fd_path(0, &mut b);
        // SAFETY: fd_path returns a NUL-terminated string inside b.
        assert_eq!(unsafe { CStr::from_ptr(p) }.to_bytes(), b"/proc/self/fd/0");
        let p = fd_path(1234567, &mut b);
        // SAFETY: as above.
        let s = unsafe { CStr::from_ptr(p) };
        assert_eq!(s.to_bytes(), b"/proc/self/fd/1234567");
    }

    #[test]
    fn messages_round_trip_with_fd() {
        let (a, b) = seqpacket_pair().unwrap();
        let (r, _w) = pipe().unwrap();
        let mut m = MsgBuf::new(MSG_ERROR);
        m.push_i32(-7).push(b"mount proc on /proc");
        assert!(send_msg(a.as_raw_fd(), m.as_bytes(), Some(r.as_raw_fd())));
        let got = recv_msg(b.as_fd(), Duration::from_secs(1))
            .unwrap()
            .unwrap();
        assert_eq!(got.data[0], MSG_ERROR);
        assert_eq!(i32_at(&got.data, 1), Some(-7));
        assert_eq!(&got.data[5..], b"mount proc on /proc");
        assert!(got.fd.is_some());
        send_byte(a.as_fd(), MSG_GO).unwrap();
        assert_eq!(recv_byte(b.as_raw_fd()), Some(MSG_GO));
        drop(a);
        assert!(recv_msg(b.as_fd(), Duration::from_secs(1))
            .unwrap()
            .is_none());
        assert_eq!(recv_byte(b.as_raw_fd()), None);
    }

    #[test]
    fn pidfds() {
        // SAFETY: fork in a test; the child only calls pause/_exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: async-signal-safe calls only.
            unsafe {
                libc::pause();
                libc::_exit(0);
            }
        }
        let fd = pidfd_open(pid).unwrap();
        assert!(!pidfd_exited(fd.as_fd()));
        pidfd_signal(fd.as_fd(), libc::SIGKILL).unwrap();
        let status = reap(pid).unwrap();
        assert!(libc::WIFSIGNALED(status));
        assert!(pidfd_exited(fd.as_fd()));
        assert!(pidfd_signal(fd.as_fd(), libc::SIGKILL).is_err());
    }

    #[test]
    fn long_messages_are_cut() {
        let mut m = MsgBuf::new(MSG_ERROR);
        m.push(&[b'x'; 5000]);
        assert_eq!(m.as_bytes().len(), MSG_MAX);
    }

    #[test]
    fn cstr_copies() {
        let mut b = [0u8; 4096];
        assert_eq!(cstr_in(b"dev/pts", &mut b).unwrap().to_bytes(), b"dev/pts");
        assert!(cstr_in(b"a\0b", &mut b).is_none());
    }

    use std::os::fd::AsFd;
}
