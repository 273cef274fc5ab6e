//! `husk-vmm`: one VMM for one VM, driven through the Firecracker-compatible
//! API (`--api-sock`) or booted from a config file (`--no-api
//! --config-file`); the same process as `husk vmm`, without the rest of the
//! command line.

use clap::Parser;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "husk-vmm",
    version,
    about = "husk's VMM: one microVM, driven through the Firecracker-compatible API"
)]
struct Cli {
    #[command(flatten)]
    vmm: husk_vmm_bin::VmmArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = husk_vmm_bin::logger::configure_from_env() {
        eprintln!("husk-vmm: HUSK_LOG: {e}");
        return ExitCode::from(2);
    }
    match husk_vmm_bin::run(cli.vmm) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("husk-vmm: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
