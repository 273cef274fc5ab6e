//! One process's stdio as the agent sees it: output pipes (or a pty
//! master) to read and forward, a stdin pipe fed from the host's frames.

use husk_container::ProcessIo;
use husk_wire::agent::ExitStatus;
use nix::errno::Errno;
use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Instant;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Output {
    Stdout,
    Stderr,
}

/// Pending stdin is bounded by the host's frames; the host sends no more
/// than the process reads plus what is in flight, so a plain queue will do.
pub struct Stream {
    pub pid: i32,
    pub container: String,
    pub exec_id: Option<String>,
    tty: bool,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    stdin: Option<OwnedFd>,
    stdin_buf: VecDeque<u8>,
    stdin_eof: bool,
    /// The process's status and when it was reaped.
    pub exit: Option<(ExitStatus, Instant)>,
    /// Held for a checkpoint (`Park`): output stays in the pipes and the
    /// exit is kept until an `Attach`.
    pub parked: bool,
}

fn set_nonblocking(fd: &OwnedFd) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    if let Ok(flags) = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags));
    }
}

impl Stream {
    pub fn new(
        pid: i32,
        tty: bool,
        io: ProcessIo,
        container: String,
        exec_id: Option<String>,
    ) -> Stream {
        for fd in [&io.stdin, &io.stderr].into_iter().flatten() {
            set_nonblocking(fd);
        }
        set_nonblocking(&io.stdout);
        Stream {
            pid,
            container,
            exec_id,
            tty,
            parked: false,
            stdout: Some(io.stdout),
            stderr: io.stderr,
            stdin: io.stdin,
            stdin_buf: VecDeque::new(),
            stdin_eof: false,
            exit: None,
        }
    }

    pub fn output(&self, which: Output) -> Option<BorrowedFd<'_>> {
        match which {
            Output::Stdout => self.stdout.as_ref().map(|f| f.as_fd()),
            Output::Stderr => self.stderr.as_ref().map(|f| f.as_fd()),
        }
    }

    pub fn tty_master(&self) -> Option<BorrowedFd<'_>> {
        self.tty
            .then(|| self.stdout.as_ref().map(|f| f.as_fd()))
            .flatten()
    }

    /// Reads what is there: `Some(data)` to forward, `None` when nothing
    /// was read. End of output (EOF, or EIO from a pty whose other side is
    /// gone) closes that side; its end-of-stream frame goes with the exit.
    pub fn read(&mut self, which: Output, buf: &mut [u8]) -> Option<Vec<u8>> {
        let slot = match which {
            Output::Stdout => &mut self.stdout,
            Output::Stderr => &mut self.stderr,
        };
        let fd = slot.as_ref()?;
        match nix::unistd::read(fd.as_raw_fd(), buf) {
            Ok(0) | Err(Errno::EIO) => {
                *slot = None;
                if self.tty {
                    // The terminal's other side is gone: nobody reads stdin.
                    self.stdin = None;
                }
                None
            }
            Ok(n) => Some(buf[..n].to_vec()),
            Err(_) => None,
        }
    }

    pub fn outputs_done(&self) -> bool {
        self.stdout.is_none() && self.stderr.is_none()
    }

    /// Closes what is left; the outputs that get an end-of-stream frame
    /// (EOF only closed the descriptor, the frame goes out with the exit).
    pub fn close_outputs(&mut self) -> Vec<Output> {
        self.stdout = None;
        self.stderr = None;
        if self.tty {
            vec![Output::Stdout]
        } else {
            vec![Output::Stdout, Output::Stderr]
        }
    }

    pub fn queue_stdin(&mut self, data: &[u8]) {
        if data.is_empty() {
            self.stdin_eof = true;
        } else if self.stdin.is_some() {
            self.stdin_buf.extend(data);
        }
        self.write_stdin();
    }

    pub fn stdin_wants_write(&self) -> Option<BorrowedFd<'_>> {
        let fd = self.stdin.as_ref()?;
        (!self.stdin_buf.is_empty()).then(|| fd.as_fd())
    }

    pub fn write_stdin(&mut self) {
        let Some(fd) = self.stdin.as_ref() else {
            self.stdin_buf.clear();
            return;
        };
        while !self.stdin_buf.is_empty() {
            let (a, _) = self.stdin_buf.as_slices();
            match nix::unistd::write(fd, a) {
                Ok(n) => {
                    self.stdin_buf.drain(..n);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                Err(_) => {
                    // The reader is gone (EPIPE): drop what it will never read.
                    self.stdin_buf.clear();
                    self.stdin = None;
                    return;
                }
            }
        }
        if self.stdin_eof {
            if self.tty {
                // A pty has no half-close: send the terminal's EOF character.
                let _ = nix::unistd::write(fd, &[4u8]);
                self.stdin_eof = false;
            } else {
                self.stdin = None;
            }
        }
    }
}
