//! husk-init: PID 1 of a husk guest.
//!
//! Boot: make sure fds 0-2 are the console, mount the pseudo filesystems,
//! read the kernel command line, set the hostname, run the command (or a
//! shell), then stop everything, flush the root filesystem, report the
//! command's status (see `status`) and reset the machine so the VMM exits.
//! The protocol is documented in rootfs/README.md.

mod agent;
mod mounts;
mod status;
mod supervise;

use husk_wire::cmdline;
use nix::sys::reboot::{reboot, set_cad_enabled, RebootMode};
use std::io::Write;
use std::os::fd::AsRawFd;

fn log(msg: &str) {
    eprintln!("husk-init: {msg}");
}

/// Without /dev/console in the image the kernel starts init with no fds 0-2;
/// once devtmpfs is up we can open it ourselves.
fn ensure_console() {
    // SAFETY: F_GETFD on an integer fd only queries the fd table.
    let open = |fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
    if (0..3).all(open) {
        return;
    }
    if let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            if !open(fd) {
                // SAFETY: dup2 onto a closed standard fd; `console` stays
                // open for the duration of the call.
                unsafe { libc::dup2(console.as_raw_fd(), fd) };
            }
        }
    }
}

fn command_line() -> Result<cmdline::Config, String> {
    let text = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| format!("cannot read /proc/cmdline: {e}"))?;
    cmdline::parse(text.trim_end()).map_err(|e| e.to_string())
}

/// Flushes, reports and resets. Never returns: if the reset itself fails,
/// PID 1 exits and the kernel's panic path (`panic=1`) resets instead.
fn finish(status: u8, on_console: bool) -> ! {
    nix::unistd::sync();
    if let Err(e) = mounts::remount_root_readonly() {
        // tmpfs/initramfs roots cannot be remounted; sync above did the job.
        if e != nix::errno::Errno::EINVAL {
            log(&format!("remounting / read-only: {e}"));
        }
    }
    if on_console {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(status::console_line(status).as_bytes());
        let _ = out.flush();
    }
    // The UART sends what the command wrote from a kernel buffer, by
    // interrupt; the status write ends the VM at once, so wait until the
    // console has transmitted everything or the tail of the output is lost.
    let _ = nix::sys::termios::tcdrain(std::io::stdout());
    if let Err(e) = status::write_port(status) {
        log(&format!("cannot write the status port: {e}"));
        // The reset below would cut this line off too.
        let _ = nix::sys::termios::tcdrain(std::io::stderr());
    }
    let err = reboot(RebootMode::RB_AUTOBOOT).unwrap_err();
    log(&format!("reset failed: {err}"));
    std::process::exit(i32::from(status));
}

fn main() {
    if std::process::id() != 1 {
        eprintln!("husk-init: must run as PID 1 (the guest's init)");
        std::process::exit(2);
    }
    let early_problems = mounts::mount_all();
    ensure_console();
    for p in early_problems {
        log(&p);
    }

    let config = match command_line() {
        Ok(c) => c,
        Err(e) => {
            log(&e);
            finish(status::INIT_FAILURE, true);
        }
    };
    if let Err(e) = nix::unistd::sethostname(&config.hostname) {
        log(&format!("sethostname {}: {e}", config.hostname));
    }
    // Ctrl-Alt-Del (the VMM's soft stop) becomes SIGINT to us, so we can
    // flush disks instead of the kernel resetting at once.
    if let Err(e) = set_cad_enabled(false) {
        log(&format!("cannot take over Ctrl-Alt-Del: {e}"));
    }
    let mut sfd = match supervise::signal_fd() {
        Ok(s) => s,
        Err(e) => {
            log(&format!("signalfd: {e}"));
            finish(status::INIT_FAILURE, config.status_on_console);
        }
    };
    std::env::set_var("PATH", supervise::DEFAULT_PATH);
    std::env::set_var("HOME", "/root");
    if config.agent {
        let status = agent::run(&mut sfd, config.fault);
        finish(status, config.status_on_console);
    }
    let argv = config
        .command
        .clone()
        .unwrap_or_else(|| vec!["/bin/sh".to_owned()]);
    supervise::take_console();
    let status = supervise::run(&argv, &mut sfd);
    finish(status, config.status_on_console);
}
