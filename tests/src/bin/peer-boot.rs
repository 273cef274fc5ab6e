//! `peer-boot [--cpus N] [--memory MIB] [-- COMMAND ARGS...]`: boots the
//! project's guest under QEMU `-M microvm` (the peer VMM), prints its console
//! and exits with the command's status. The README demo until `husk boot`.

use husk_tests::qemu::MicroVm;
use husk_tests::{guest_artifacts, kvm};
use std::process::ExitCode;

fn usage(msg: &str) -> ExitCode {
    eprintln!("peer-boot: {msg}\nusage: peer-boot [--cpus N] [--memory MIB] [-- COMMAND ARGS...]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut cpus, mut mem) = (1u32, 256u32);
    let mut command = Vec::new();
    while let Some(a) = args.next() {
        let mut num = |name: &str| match args.next().map(|v| v.parse::<u32>()) {
            Some(Ok(n)) if n > 0 => Ok(n),
            _ => Err(format!("{name} needs a positive number")),
        };
        let parsed = match a.as_str() {
            "--cpus" => num("--cpus").map(|n| cpus = n),
            "--memory" => num("--memory").map(|n| mem = n),
            "--" => {
                command.extend(args.by_ref());
                Ok(())
            }
            other => Err(format!("unknown argument {other}")),
        };
        if let Err(e) = parsed {
            return usage(&e);
        }
    }
    let kind = kvm::detect();
    if !kind.runs_linux() {
        eprintln!("peer-boot: {kind}");
        return ExitCode::from(1);
    }
    let a = guest_artifacts();
    // The guest writes to its root disk: boot a scratch copy.
    let scratch = std::env::temp_dir().join(format!("peer-boot-{}.ext4", std::process::id()));
    if let Err(e) = std::fs::copy(&a.rootfs_ext4, &scratch) {
        eprintln!("peer-boot: copying {}: {e}", a.rootfs_ext4.display());
        return ExitCode::from(1);
    }
    let mut vm = MicroVm::new(a.vmlinux, scratch.clone());
    vm.cpus = cpus;
    vm.mem_mib = mem;
    if !command.is_empty() {
        vm = vm.command(&command);
    }
    let out = vm.run();
    let _ = std::fs::remove_file(&scratch);
    print!("{}", out.console);
    eprintln!(
        "peer-boot: guest ran for {:.2} s",
        out.elapsed.as_secs_f64()
    );
    match (out.timed_out, out.status) {
        (true, _) => {
            eprintln!(
                "peer-boot: the guest did not finish in {:?}\n{}",
                vm.timeout, out.stderr
            );
            ExitCode::from(1)
        }
        (false, Some(s)) => ExitCode::from(s),
        (false, None) => {
            eprintln!(
                "peer-boot: the guest stopped without reporting a status\n{}",
                out.stderr
            );
            ExitCode::from(1)
        }
    }
}
