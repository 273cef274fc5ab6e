//! QEMU `-M microvm`, the peer VMM: boots the project's guest with the same
//! kernel, rootfs and init protocol husk uses, so tests can prove the guest
//! and later benchmarks can compare husk against it.

use husk_wire::{cmdline::encode_command, status::CONSOLE_PREFIX};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub const QEMU: &str = "qemu-system-x86_64";

/// One microVM boot.
#[derive(Debug, Clone)]
pub struct MicroVm {
    pub kernel: PathBuf,
    /// Attached read-write as the root disk `/dev/vda`.
    pub rootfs: PathBuf,
    pub cpus: u32,
    pub mem_mib: u32,
    /// The command for the guest init; `None` boots to a shell.
    pub command: Option<Vec<String>>,
    /// Appended to the kernel command line as-is.
    pub extra_cmdline: String,
    pub timeout: Duration,
}

/// What came back from a boot.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Everything on the serial console, `\r` removed.
    pub console: String,
    /// The status the init printed on the console, if it got that far.
    pub status: Option<u8>,
    /// QEMU's own exit code; `isa-debug-exit` makes it `(status << 1) | 1`.
    pub qemu_exit: Option<i32>,
    pub timed_out: bool,
    pub elapsed: Duration,
    pub stderr: String,
}

impl MicroVm {
    pub fn new(kernel: PathBuf, rootfs: PathBuf) -> Self {
        MicroVm {
            kernel,
            rootfs,
            cpus: 1,
            mem_mib: 256,
            command: None,
            extra_cmdline: String::new(),
            timeout: Duration::from_secs(90),
        }
    }

    pub fn command<S: AsRef<str>>(mut self, argv: &[S]) -> Self {
        self.command = Some(argv.iter().map(|s| s.as_ref().to_owned()).collect());
        self
    }

    pub fn kernel_cmdline(&self) -> String {
        // quiet: every console line is an expensive exit in the testbed.
        // reboot=t: microvm without defaults has no i8042, so a panic must
        // reset by triple fault for QEMU (-no-reboot) to exit.
        let mut line = String::from(
            "console=ttyS0 reboot=t panic=1 quiet root=/dev/vda rw husk.status=console",
        );
        if let Some(argv) = &self.command {
            line.push_str(" husk.cmd=");
            line.push_str(&encode_command(argv));
        }
        if !self.extra_cmdline.is_empty() {
            line.push(' ');
            line.push_str(&self.extra_cmdline);
        }
        line
    }

    pub fn qemu_args(&self) -> Vec<String> {
        let drive = format!("id=root,file={},format=raw,if=none", self.rootfs.display());
        husk_compare::envs::QEMU_MICROVM_ARGS
            .iter()
            .copied()
            .chain([
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=0x01",
                "-drive",
                &drive,
                "-device",
                "virtio-blk-device,drive=root",
            ])
            .map(str::to_string)
            .chain([
                "-smp".into(),
                self.cpus.to_string(),
                "-m".into(),
                self.mem_mib.to_string(),
                "-kernel".into(),
                self.kernel.display().to_string(),
                "-append".into(),
                self.kernel_cmdline(),
            ])
            .collect()
    }

    /// Boots, waits for QEMU to exit (or kills it at the timeout).
    pub fn run(&self) -> Outcome {
        let mut cmd = Command::new(QEMU);
        cmd.args(self.qemu_args());
        let f = crate::process::run(cmd, self.timeout);
        Outcome {
            status: parse_status(&f.stdout),
            console: f.stdout,
            qemu_exit: f.code,
            timed_out: f.timed_out,
            elapsed: f.elapsed,
            stderr: f.stderr,
        }
    }
}

/// The status from the init's console line (the last one, if several).
pub fn parse_status(console: &str) -> Option<u8> {
    console
        .lines()
        .rev()
        .filter_map(|l| l.trim().strip_prefix(CONSOLE_PREFIX))
        .find_map(|s| s.trim().parse().ok())
}

impl Outcome {
    /// A readable dump for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "status {:?}, qemu exit {:?}, timed out {}, {:?}\n--- console ---\n{}\n--- qemu stderr ---\n{}",
            self.status, self.qemu_exit, self.timed_out, self.elapsed, self.console, self.stderr
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_is_found_among_output() {
        let console = "hello\nhusk-init: exit status 3\n";
        assert_eq!(parse_status(console), Some(3));
        assert_eq!(parse_status("no status here\n"), None);
        assert_eq!(parse_status("husk-init: exit status x\n"), None);
    }

    #[test]
    fn command_is_encoded_on_the_cmdline() {
        let vm = MicroVm::new("k".into(), "r".into()).command(&["echo", "a b"]);
        let line = vm.kernel_cmdline();
        assert!(line.contains(&format!("husk.cmd={}", encode_command(&["echo", "a b"]))));
        assert!(line.contains("husk.status=console"));
    }
}
