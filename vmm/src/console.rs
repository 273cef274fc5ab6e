//! The serial console's two ends on the host: where guest output goes, and
//! the pump that feeds the VMM's stdin to the guest.

use crate::Shared;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Console {
    /// Guest output on the VMM's stdout.
    Stdio,
    /// Discarded.
    Off,
    /// Appended to a file.
    File(PathBuf),
    /// Appended to a file that never holds more than this many bytes
    /// (see [`Capped`]): a run's console.log, which a guest that prints
    /// forever must not grow without end.
    Capped(PathBuf, u64),
}

/// What a run's console.log holds at most.
pub const CONSOLE_CAP: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the console file {0}: {1}")]
    File(String, std::io::Error),
    #[error("console input: {0}")]
    Input(std::io::Error),
}

impl std::str::FromStr for Console {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdio" => Ok(Console::Stdio),
            "off" => Ok(Console::Off),
            _ => match s.strip_prefix("file=") {
                Some(p) if !p.is_empty() => Ok(Console::File(p.into())),
                _ => Err(format!(
                    "invalid console {s:?}: use stdio, off or file=PATH"
                )),
            },
        }
    }
}

/// Writes every byte straight through: the guest's console output must show
/// up as it is produced, and a line-buffered stdout would hold prompts back.
struct Unbuffered<W: Write>(W);

impl<W: Write> Write for Unbuffered<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(b)?;
        self.0.flush()?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl Console {
    /// The console's writer, watched for a kernel panic (see [`PanicNote`]).
    pub fn watched_writer(&self) -> Result<(Box<dyn Write + Send>, PanicNote), Error> {
        let note = PanicNote::default();
        let w = PanicWatch {
            inner: self.writer()?,
            matched: 0,
            line: None,
            note: note.clone(),
        };
        Ok((Box::new(w), note))
    }

    pub fn writer(&self) -> Result<Box<dyn Write + Send>, Error> {
        let open = |p: &PathBuf| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| Error::File(p.display().to_string(), e))
        };
        Ok(match self {
            Console::Stdio => Box::new(Unbuffered(std::io::stdout())),
            Console::Off => Box::new(std::io::sink()),
            Console::File(p) => Box::new(Unbuffered(open(p)?)),
            Console::Capped(p, max) => {
                let file = open(p)?;
                let written = file
                    .metadata()
                    .map_err(|e| Error::File(p.display().to_string(), e))?
                    .len();
                Box::new(Capped {
                    file,
                    written,
                    max: (*max).max(1),
                    dropped: 0,
                })
            }
        })
    }
}

/// A console file that never grows past `max` bytes. A write that would
/// take it past empties it first (ftruncate of the descriptor the vCPU
/// thread holds: its seccomp filter opens and renames nothing) and says
/// how much went, so the file keeps the newest output: a panic at the end
/// is what a failed run shows.
struct Capped {
    file: std::fs::File,
    written: u64,
    max: u64,
    dropped: u64,
}

impl Write for Capped {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.written > 0 && self.written + b.len() as u64 > self.max {
            self.file.set_len(0)?;
            self.dropped += self.written;
            let note = format!(
                "[husk: the console's first {} bytes were dropped: this file holds at most {} bytes]\n",
                self.dropped, self.max
            );
            self.file.write_all(note.as_bytes())?;
            self.written = note.len() as u64;
        }
        let room = usize::try_from(self.max.saturating_sub(self.written))
            .unwrap_or(usize::MAX)
            .max(1);
        let n = self.file.write(&b[..b.len().min(room)])?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// What a panicking Linux prints first; the rest of the line is the reason.
const PANIC_MARK: &[u8] = b"Kernel panic - not syncing: ";
/// Enough of a reason to name it; the console has the rest.
const PANIC_REASON_MAX: usize = 160;

/// The reason of the guest kernel's first panic, as its console said it.
///
/// A reset without an exit status is all the VMM sees of a panic (the
/// kernel reboots, `panic=1`); the console line lets the caller say which
/// it was. It is the guest's word, used only to word that error.
#[derive(Debug, Clone, Default)]
pub struct PanicNote(Arc<std::sync::Mutex<Option<String>>>);

impl PanicNote {
    pub fn reason(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Passes console output through, keeping the first panic line's reason.
struct PanicWatch {
    inner: Box<dyn Write + Send>,
    /// Bytes of `PANIC_MARK` matched so far.
    matched: usize,
    /// The reason being read, once the mark was seen.
    line: Option<Vec<u8>>,
    note: PanicNote,
}

impl PanicWatch {
    fn keep(&self) {
        if let Some(line) = &self.line {
            *self.note.0.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(String::from_utf8_lossy(line).trim().to_string());
        }
    }

    fn scan(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(line) = &mut self.line {
                if b == b'\n' || b == b'\r' || line.len() >= PANIC_REASON_MAX {
                    self.keep();
                    self.line = None;
                    // Only the first panic counts; stop scanning.
                    self.matched = usize::MAX;
                    return;
                }
                line.push(b);
                continue;
            }
            if self.matched == usize::MAX {
                return;
            }
            // The mark's first byte occurs nowhere else in it, so a
            // mismatch restarts the match at this byte.
            self.matched = if b == PANIC_MARK[self.matched] {
                self.matched + 1
            } else {
                usize::from(b == PANIC_MARK[0])
            };
            if self.matched == PANIC_MARK.len() {
                self.line = Some(Vec::new());
            }
        }
    }
}

impl Write for PanicWatch {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.scan(&b[..n]);
        // Kept as it grows too: the VM may end before the line does.
        self.keep();
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A thread that copies stdin into the UART's receive FIFO, waiting while
/// the FIFO is full (the guest reads it at its own pace).
pub struct StdinPump {
    stop: EventFd,
    thread: std::thread::JoinHandle<()>,
}

impl StdinPump {
    pub fn start(shared: Arc<Shared>) -> Result<Self, Error> {
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::Input)?;
        let stop_rx = stop.try_clone().map_err(Error::Input)?;
        let thread = std::thread::Builder::new()
            .name("console-in".into())
            .spawn(move || pump(&shared, &stop_rx))
            .map_err(Error::Input)?;
        Ok(StdinPump { stop, thread })
    }

    pub fn stop(self) {
        let _ = self.stop.write(1);
        let _ = self.thread.join();
    }
}

/// UART interrupt-enable bit: "received data available".
const IER_RECEIVED_DATA: u8 = 0x01;
/// Modem-control bits: OUT2 gates the UART's interrupt line on PC
/// hardware; LOOP turns the port into a self-test loop.
const MCR_OUT2: u8 = 0x08;
const MCR_LOOP: u8 = 0x10;

/// Whether the guest's driver has the port open and is reading it.
///
/// Receive interrupts alone are not enough: Linux's 8250 probe writes 0x0F
/// to IER for an instant to see whether a UART is there, and the port's
/// startup then reads RX "for luck" and would swallow whatever we queued in
/// that instant. Startup raises OUT2 before those reads and enables receive
/// interrupts after them; shutdown drops both; the probe runs with OUT2 low
/// (the console setup already wrote MCR) or in loopback.
fn guest_listening(interrupt_enable: u8, modem_control: u8) -> bool {
    interrupt_enable & IER_RECEIVED_DATA != 0
        && modem_control & MCR_OUT2 != 0
        && modem_control & MCR_LOOP == 0
}

fn pump(shared: &Shared, stop: &EventFd) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::{AsRawFd, BorrowedFd};
    if let Err(e) = crate::seccomp::guard(crate::seccomp::Kind::Helper, &shared.seccomp) {
        shared.finish(crate::Exit::Failed(format!("the console's input: {e}")));
        return;
    }
    let stdin = std::io::stdin();
    // SAFETY: `stop` outlives this function, so its fd stays open while
    // the borrow is used.
    let stop_fd = unsafe { BorrowedFd::borrow_raw(stop.as_raw_fd()) };
    let mut buf = [0u8; 64];
    // The guest must be seen listening on two checks a poll interval apart
    // before it gets input: a second guard against a register test that
    // happens to match for a moment.
    let mut seen_listening = false;
    loop {
        let mut fds = [
            PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop_fd, PollFlags::POLLIN),
        ];
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            return;
        }
        if fds[1].any().unwrap_or(true) {
            return;
        }
        let n = match nix::unistd::read(stdin.as_raw_fd(), &mut buf) {
            Ok(0) | Err(_) => return, // EOF: the guest keeps running without input
            Ok(n) => n,
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let taken = {
                let mut serial = crate::pio::lock(&shared.pio.serial);
                let state = serial.state();
                let listening = guest_listening(state.interrupt_enable, state.modem_control);
                let ready = listening && seen_listening;
                seen_listening = listening;
                if ready {
                    serial.enqueue_raw_bytes(rest).unwrap_or(0)
                } else {
                    0
                }
            };
            rest = &rest[taken..];
            if !rest.is_empty() {
                if shared.stopping() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// Puts a terminal in raw mode and restores it when dropped, so every exit
/// path (error, signal, guest reset) gives the user their terminal back.
pub struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    /// `None` when stdin is not a terminal.
    pub fn enter() -> Option<RawTerminal> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        // Keep output post-processing so guest "\n" still starts a line.
        raw.output_flags = saved.output_flags;
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_specs_parse() {
        assert_eq!("stdio".parse(), Ok(Console::Stdio));
        assert_eq!("off".parse(), Ok(Console::Off));
        assert_eq!("file=/tmp/x".parse(), Ok(Console::File("/tmp/x".into())));
        assert!("file=".parse::<Console>().is_err());
        assert!("tty".parse::<Console>().is_err());
    }

    #[test]
    fn a_capped_console_file_keeps_its_newest_output_within_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut w = Console::Capped(path.clone(), 200).writer().unwrap();
        for i in 0..100 {
            writeln!(w, "line {i:03}").unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() <= 200, "{} bytes", text.len());
        assert!(text.ends_with("line 099\n"), "{text}");
        assert!(text.starts_with("[husk: the console's first "), "{text}");
        let kept: Vec<&str> = text.lines().skip(1).collect();
        let from = 100 - kept.len();
        let want: Vec<String> = (from..100).map(|i| format!("line {i:03}")).collect();
        assert_eq!(kept, want);
    }

    fn watched(chunks: &[&[u8]]) -> Option<String> {
        let (mut w, note) = Console::Off.watched_writer().unwrap();
        for c in chunks {
            w.write_all(c).unwrap();
        }
        note.reason()
    }

    #[test]
    fn the_first_panic_line_is_kept_across_writes() {
        assert_eq!(watched(&[b"[ 1.0] all fine\n"]), None);
        let line: &[u8] = b"[ 2.1] Kernel panic - not syncing: VFS: Unable to mount root fs\n";
        assert_eq!(
            watched(&[b"boot\n", line]).as_deref(),
            Some("VFS: Unable to mount root fs")
        );
        // Byte by byte, after a near miss ("Kernel p" then "KKernel").
        let mut bytes = b"Kernel pKKernel panic - not syncing: Out of memory\r\n".to_vec();
        bytes.extend_from_slice(b"Kernel panic - not syncing: second\n");
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(watched(&chunks).as_deref(), Some("Out of memory"));
        // A line the VM did not finish is kept as far as it got.
        assert_eq!(
            watched(&[b"Kernel panic - not syncing: Attempted"]).as_deref(),
            Some("Attempted")
        );
        let long = [b"Kernel panic - not syncing: ".as_slice(), &[b'x'; 400]].concat();
        assert_eq!(watched(&[&long]).map(|r| r.len()), Some(PANIC_REASON_MAX));
    }

    #[test]
    fn input_waits_for_an_open_port_not_a_register_probe() {
        // Reset state: OUT2 high, no interrupts.
        assert!(!guest_listening(0x00, MCR_OUT2));
        // The probe's IER test after the console setup cleared OUT2.
        assert!(!guest_listening(0x0F, 0x01));
        // The probe's loopback test.
        assert!(!guest_listening(0x0F, MCR_LOOP | 0x0A));
        // Startup: OUT2 (plus DTR/RTS) first, receive interrupts last.
        assert!(!guest_listening(0x00, MCR_OUT2 | 0x03));
        assert!(guest_listening(0x05, MCR_OUT2 | 0x03));
        // Shutdown drops OUT2.
        assert!(!guest_listening(0x05, 0x03));
    }
}
