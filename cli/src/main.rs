//! `husk`: the command line.

mod agent;
mod boot;
mod commit_cmd;
mod compare_cmd;
mod containers;
mod dbus;
mod image_cmd;
mod lockfile;
mod netlink;
mod network;
mod network_cmd;
mod oci;
mod pool_cmd;
mod registry_cmd;
mod run;
mod snapshot_cmd;
mod virtiofsd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "husk",
    version,
    about = "A lightweight KVM microVM monitor: one VM per container"
)]
struct Cli {
    /// runc's global flags, for the OCI runtime commands.
    #[command(flatten)]
    oci: oci::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot the raw guest (kernel + root disk) and run a command in it.
    Boot(boot::BootArgs),
    /// The same workloads natively, in a container (crun), in a husk
    /// microVM and in QEMU microvm: a report with charts.
    Compare(compare_cmd::CompareArgs),
    /// Image tools (prune the store; the project's test image).
    Image(image_cmd::ImageArgs),
    /// Run a container from an image in its own microVM.
    Run(Box<run::RunArgs>),
    /// Pull an image from a registry into the image store.
    Pull(registry_cmd::PullArgs),
    /// Store a running container's changes as a new image.
    Commit(commit_cmd::CommitArgs),
    /// Save a detached container's VM (memory, state, writable layer) to a
    /// directory; the container stops unless --leave-running.
    Checkpoint(CheckpointArgs),
    /// Start a container again from a checkpoint directory, detached,
    /// where it was; prints its id.
    Restore(RestoreArgs),
    /// Push a stored image to a registry.
    Push(registry_cmd::PushArgs),
    /// Write a stored image as an archive (OCI and docker save at once).
    Save(registry_cmd::SaveArgs),
    /// Store an image from an archive (OCI, docker save) or layout.
    Load(registry_cmd::LoadArgs),
    /// Give a stored image another name.
    Tag(registry_cmd::TagArgs),
    /// List the image store's images.
    Images(registry_cmd::ImagesArgs),
    /// Remove images from the store (blobs another image uses stay).
    Rmi(registry_cmd::RmiArgs),
    /// Save credentials for a registry (checked against it first).
    Login(registry_cmd::LoginArgs),
    /// Forget a registry's credentials.
    Logout(registry_cmd::LogoutArgs),
    /// Named networks, whose containers find each other by name.
    Network(network_cmd::NetworkArgs),
    /// Run one VMM driven by the Firecracker-compatible API (or a config file).
    Vmm(husk_vmm_bin::VmmArgs),
    /// Snapshots of a raw VM: create one from a `husk vmm`, or run a VM
    /// from one.
    #[command(subcommand)]
    Snapshot(snapshot_cmd::SnapshotCommand),
    /// The pool's templates, which `husk run` restores instead of booting.
    #[command(subcommand)]
    Pool(pool_cmd::PoolCommand),
    /// List containers (running; -a for all).
    Ps(containers::PsArgs),
    /// Run a command in a running container.
    Exec(containers::ExecArgs),
    /// Send a signal (default KILL) to a container's process.
    Kill(containers::KillArgs),
    /// Print a detached container's output.
    Logs(containers::IdArgs),
    /// Print a container's published ports.
    Port(containers::IdArgs),
    /// Remove stopped containers' records (-f: running ones too).
    Rm(containers::RmArgs),
    /// OCI runtime: create a container from a bundle (runc's `create`).
    Create(oci::CreateArgs),
    /// OCI runtime: start a created container.
    Start(oci::IdArg),
    /// OCI runtime: print a container's state as JSON.
    State(oci::IdArg),
    /// OCI runtime: delete a stopped container (-f: any).
    Delete(oci::DeleteArgs),
    /// OCI runtime: freeze a container (its VM's vCPUs).
    Pause(oci::IdArg),
    /// OCI runtime: thaw a paused container.
    Resume(oci::IdArg),
    /// OCI runtime: write a starting config.json.
    Spec(oci::SpecArgs),
    /// OCI runtime: list the containers under --root.
    List(oci::ListArgs),
    /// OCI runtime: what this runtime implements (runtime-spec features).
    Features,
    /// OCI runtime: set a running container's cgroup limits anew.
    Update(oci::update::UpdateArgs),
}

pub use husk_vmm_bin::Failure;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // HUSK_LOG=FILE [HUSK_LOG_LEVEL=debug]: the VMM's log for any command
    // (`husk vmm` can also set it through PUT /logger).
    if let Err(e) = husk_vmm_bin::logger::configure_from_env() {
        eprintln!("husk: HUSK_LOG: {e}");
        return ExitCode::from(2);
    }
    let g = &cli.oci;
    let oci_command = matches!(
        cli.command,
        Command::Create(_)
            | Command::Start(_)
            | Command::State(_)
            | Command::Delete(_)
            | Command::Pause(_)
            | Command::Resume(_)
            | Command::Spec(_)
            | Command::List(_)
            | Command::Features
            | Command::Update(_)
    ) || matches!(&cli.command, Command::Kill(k) if containers::kill_is_oci(g, k))
        || matches!(&cli.command, Command::Ps(p) if containers::ps_is_oci(g, p))
        || matches!(&cli.command, Command::Exec(e) if containers::exec_is_oci(g, e));
    if g.any() && !oci_command {
        eprintln!("husk: --root, --log, --log-format, --systemd-cgroup, --debug and --rootless belong to the OCI runtime commands (create, start, state, kill, exec, ps, update, pause, resume, delete, spec, list, features)");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Create(a) => oci::run(g, |g| oci::create(g, &a)),
        Command::Start(a) => oci::run(g, |g| oci::start(g, &a)),
        Command::State(a) => oci::run(g, |g| oci::state(g, &a)),
        Command::Delete(a) => oci::run(g, |g| oci::delete(g, &a)),
        Command::Pause(a) => oci::run(g, |g| oci::pause(g, &a, true)),
        Command::Resume(a) => oci::run(g, |g| oci::pause(g, &a, false)),
        Command::Spec(a) => oci::run(g, |g| oci::spec(g, &a)),
        Command::List(a) => oci::run(g, |g| oci::list(g, &a)),
        Command::Features => oci::run(g, oci::features),
        Command::Update(a) => oci::run(g, |g| oci::update::update(g, &a)),
        Command::Ps(a) if oci_command => oci::run(g, |g| containers::oci_ps(g, &a)),
        Command::Kill(a) if oci_command => oci::run(g, |g| containers::oci_kill(g, &a)),
        Command::Exec(a) if oci_command => oci::run(g, |g| containers::oci_exec(g, &a)),
        Command::Boot(args) => boot::run(args),
        Command::Compare(args) => compare_cmd::run(args),
        Command::Vmm(args) => husk_vmm_bin::run(args),
        Command::Snapshot(c) => snapshot_cmd::run(c),
        Command::Pool(c) => pool_cmd::run(c),
        Command::Run(args) => run::run(*args),
        Command::Pull(args) => registry_cmd::pull(args),
        Command::Images(args) => registry_cmd::images(args),
        Command::Push(args) => registry_cmd::push(args),
        Command::Commit(args) => commit_cmd::commit(args),
        Command::Checkpoint(a) => {
            run::checkpoint::request(&a.id, &a.dir, a.leave_running).map(|()| 0)
        }
        Command::Restore(a) => run::checkpoint::start_restored(&a.dir),
        Command::Tag(args) => registry_cmd::tag(args),
        Command::Save(args) => registry_cmd::save(args),
        Command::Load(args) => registry_cmd::load(args),
        Command::Rmi(args) => registry_cmd::rmi(args),
        Command::Login(args) => registry_cmd::login(args),
        Command::Logout(args) => registry_cmd::logout(args),
        Command::Image(args) => image_cmd::run(args),
        Command::Network(args) => network_cmd::run(args),
        Command::Ps(args) => containers::ps(args),
        Command::Exec(args) => containers::exec(args),
        Command::Kill(args) => containers::kill(args),
        Command::Logs(args) => containers::logs(args),
        Command::Port(args) => containers::port(args),
        Command::Rm(args) => containers::rm(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("husk: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

#[derive(clap::Args)]
struct CheckpointArgs {
    /// Keep the container running after the checkpoint.
    #[arg(long)]
    leave_running: bool,
    /// The container's id (a unique prefix of it, or its name).
    id: String,
    /// The directory to write the checkpoint in (made if missing).
    dir: std::path::PathBuf,
}

#[derive(clap::Args)]
struct RestoreArgs {
    /// A directory `husk checkpoint` wrote.
    dir: std::path::PathBuf,
}
