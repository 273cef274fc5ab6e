//! The monitor: the husk process behind an OCI container's pid. `create`
//! starts it (the same command line again, marked by [`MONITOR_ENV`]); it
//! boots the VM with the bundle's directories shared, has the agent create
//! the container, says "created" on a pipe to `create`, waits for `start`
//! on a FIFO, then relays the container's stdio (its own, inherited from
//! the caller: conmon's or the shim's pipes) until the process exits, and
//! exits with that status.

use super::bundle::{self, Planned, ROOT_TAG};
use super::state::{self, HostCgroup, Record, Status, START_FIFO};
use super::systemd::Scope;
use super::{control, network, CreateArgs, Global};
use crate::agent::{Client, Sinks};
use crate::run::{self, launch::RunDir, session, teardown};
use crate::Failure;
use husk_vmm::{Console, DiskConfig, FsConfig, VmConfig, VsockConfig};
use husk_wire::agent::{Request, Response, RootfsSpec, StdioSpec, VolumeSource, VolumeSpec};
use husk_wire::cmdline;
use husk_wire::oci_spec::runtime::Hook;
use nix::sys::signalfd::SignalFd;
use std::cell::Cell;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Set for the monitor process: the fd of the pipe to `create`.
const MONITOR_ENV: &str = "HUSK_OCI_MONITOR_FD";
/// What the monitor writes on that pipe once the container is created.
const CREATED: &str = "created";

pub fn is_monitor() -> bool {
    std::env::var_os(MONITOR_ENV).is_some()
}

/// Starts the monitor (this command line again) and waits until it has
/// created the container; its pid, or why it failed.
pub fn spawn(dir: &Path) -> Result<i32, String> {
    let result = spawn_self(MONITOR_ENV, CREATED, "the monitor");
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

/// Runs this command line again in a session of its own, with `env` naming
/// the fd of a pipe back to us, and waits for it to write `ready` there (or
/// why not); its pid. It lives on after we return: whoever inherits it
/// (conmon and the shims are subreapers) reaps it.
pub fn spawn_self(env: &str, ready: &str, what: &str) -> Result<i32, String> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills a two-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: two fresh fds that nothing else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the husk binary: {e}"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env(env, write.as_raw_fd().to_string());
    let fd = write.as_raw_fd();
    // SAFETY: setsid and fcntl are async-signal-safe. The child gets a
    // session of its own (the caller's terminal signals are not its) and
    // keeps the pipe's write end across exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            libc::setsid();
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    drop(write);
    let mut said = String::new();
    let _ = std::fs::File::from(read).read_to_string(&mut said);
    if said.trim() == ready {
        return Ok(child.id() as i32);
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(if said.trim().is_empty() {
        format!("{what} exited before it was ready")
    } else {
        said.trim().to_owned()
    })
}

/// The pipe back to whoever started us with [`spawn_self`], if it did.
pub fn pipe_back(env: &str) -> Option<std::fs::File> {
    let fd: i32 = std::env::var(env).ok()?.parse().ok()?;
    // SAFETY: fcntl on an fd our starter passed us. Close-on-exec again, so
    // virtiofsd and others cannot hold the starter's wait open.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return None;
    }
    // SAFETY: our starter passed this fd, open, for us alone.
    Some(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// The monitor's life; its exit status is the container's.
pub fn run(g: &Global, a: &CreateArgs) -> Result<u8, Failure> {
    let mut pipe = pipe_back(MONITOR_ENV);
    // Its errors go there too, from a jail without the file's path.
    g.open_log_now();
    let dir = RunDir {
        path: Record::dir(&g.root(), &a.id),
        keep: Cell::new(true),
    };
    let result = life(g, a, &dir, &mut pipe);
    if let (Err(e), Some(p)) = (&result, pipe.as_mut()) {
        // Not created: `create` reports it, on its stderr and in --log
        // (and removes the directory); said here too, it was said twice.
        let _ = writeln!(p, "{}", e.message);
        dir.keep.set(false);
        return Ok(e.code);
    }
    result
}

fn life(
    g: &Global,
    a: &CreateArgs,
    dir: &RunDir,
    pipe: &mut Option<std::fs::File>,
) -> Result<u8, Failure> {
    let mut planned = bundle::load(&a.bundle).map_err(Failure::runtime)?;
    let jail = jail_of(&planned, &a.id)?;
    let cgroup = join_cgroup(g, &mut planned, &a.id)?;
    network::enter(&network::Namespace::of(&planned.spec)).map_err(Failure::runtime)?;
    let me = std::process::id() as i32;
    let record = Record {
        id: a.id.clone(),
        bundle: planned.bundle.clone(),
        rootfs: planned.rootfs.clone(),
        created: state::now_rfc3339(),
        annotations: planned.annotations.clone(),
        monitor_pid: me,
        monitor_start: run::state::start_time(me).unwrap_or(0),
        status: Status::Creating,
        exit_status: None,
        cgroup,
    };
    record.save(&dir.path).map_err(Failure::runtime)?;
    let fifo = dir.path.join(START_FIFO);
    make_fifo(&fifo).map_err(|e| Failure::runtime(format!("{}: {e}", fifo.display())))?;
    // Before any thread exists, so all inherit the masks.
    let signals = husk_vmm::take_stop_signals()
        .map_err(|e| Failure::runtime(format!("cannot take over SIGINT/SIGTERM: {e}")))?;
    let terminal = planned.terminal();
    if terminal {
        crate::agent::tty::block_winch().map_err(Failure::runtime)?;
        let socket = a.console_socket.as_deref().ok_or_else(|| {
            Failure::runtime("process.terminal is true: --console-socket is needed")
        })?;
        hand_over_terminal(socket).map_err(Failure::runtime)?;
    }
    // runc runs these once the container's namespaces exist, before its
    // process does; here, before the VM boots, so that what they put in
    // the network namespace (Docker's veth) is there to be wired.
    let hooks = planned.spec.hooks().clone().unwrap_or_default();
    let state = record.oci_state();
    super::hooks::run(
        "prestart",
        hooks.prestart().as_deref().unwrap_or_default(),
        &state,
    )
    .map_err(Failure::runtime)?;
    let create_runtime = hooks.create_runtime().clone().unwrap_or_default();
    super::hooks::run("createRuntime", &create_runtime, &state).map_err(Failure::runtime)?;
    let wiring = network::wire().map_err(Failure::runtime)?;
    let sock = Record::sock_dir(&g.root(), &a.id);
    std::fs::create_dir_all(&sock)
        .map_err(|e| Failure::runtime(format!("{}: {e}", sock.display())))?;
    let _sockets = SockDir(sock.clone());
    let poststart_hooks = hooks.poststart().clone().unwrap_or_default();
    let (mut poststart, signals) = match jail {
        None => (Poststart::Here(poststart_hooks), signals),
        Some(_) => match split(pipe, signals)? {
            Side::Keeper(child, told) => return Ok(keep(child, told, poststart_hooks, g, &a.id)),
            Side::Jailed(tell, signals) => (Poststart::Keeper(Some(tell)), signals),
        },
    };
    let (mut backends, shares) = start_backends(&planned, &sock)?;
    let uds = sock.join(run::state::VSOCK_SOCKET);
    let config = vm_config(&a.id, &planned, shares, wiring, &uds, &dir.path)?;
    let enter = || match &jail {
        Some(j) => j.enter(&[&dir.path, &sock]),
        None => Ok(()),
    };
    let before: Option<husk_vmm::BeforeThreads> = jail.as_ref().map(|_| &enter as _);
    let vm = husk_vmm::start_with(&config, None, before).map_err(crate::boot::usage_or_runtime)?;
    if jail.is_some() {
        // The jail's user may not kill them (they run as root); they die
        // with this process.
        std::mem::forget(std::mem::take(&mut backends));
    }
    let controls = vm.controls();
    let (vm_thread, vm_done) = run::wait_on_a_thread(vm);
    let shared = control::Shared {
        record: Arc::new(Mutex::new(record)),
        dir: dir.path.clone(),
        sock,
    };
    control::serve(shared.clone(), controls.clone()).map_err(Failure::runtime)?;
    let session = session::Session {
        uds,
        sinks: Sinks::stdio(),
        controls: controls.clone(),
        vm_done,
        signals,
        identity: None,
        checkpoint: None,
        attach: false,
        // The bundle's root is the caller's directory, shared: its guest
        // unmounts it and powers off as before.
        disposable: false,
    };
    let mut created = || -> Result<(), String> {
        shared.set(Status::Created, None)?;
        if let Some(mut p) = pipe.take() {
            writeln!(p, "{CREATED}").map_err(|e| format!("telling create: {e}"))?;
        }
        wait_for_start(&shared.dir.join(START_FIFO))?;
        shared.set(Status::Running, None)
    };
    let result = session.run(
        container(&planned, terminal),
        &mut session::Hooks {
            created: &mut created,
            started: &mut || poststart.run(g, &shared.oci_state()),
        },
    );
    // Recorded before the VM is torn down: `state` says stopped at once.
    let _ = shared.set(
        Status::Stopped,
        result.as_ref().ok().map(|s| s.shell_status()),
    );
    teardown::teardown(result, vm_thread, &controls, dir, backends)
}

/// Where the poststart hooks run: here, or, for a jailed monitor, in the
/// keeper (root, on the host's files), told over a pipe.
enum Poststart {
    Here(Vec<Hook>),
    Keeper(Option<std::fs::File>),
}

/// What the keeper reads on the pipe once the container has started.
const STARTED: &str = "started";

impl Poststart {
    fn run(&mut self, g: &Global, state: &serde_json::Value) {
        match self {
            Poststart::Here(hooks) => warn_of_poststart(g, hooks, state),
            Poststart::Keeper(pipe) => {
                if let Some(mut p) = pipe.take() {
                    let _ = writeln!(p, "{STARTED}");
                }
            }
        }
    }
}

/// The container runs: the spec has a failed poststart hook only warned
/// about.
fn warn_of_poststart(g: &Global, hooks: &[Hook], state: &serde_json::Value) {
    for warning in super::hooks::run_all("poststart", hooks, state) {
        g.warn(&warning);
    }
}

/// Which side of a jailed monitor's fork this is.
enum Side {
    /// The keeper: the child, and the pipe on which it says it started.
    Keeper(nix::unistd::Pid, OwnedFd),
    /// The child, which runs the VM and enters the jail: the pipe to the
    /// keeper, and the stop signals.
    Jailed(std::fs::File, SignalFd),
}

/// Forks a jailed monitor once its host side is set up (cgroup, network,
/// terminal, the hooks that come before the VM).
fn split(pipe: &mut Option<std::fs::File>, signals: SignalFd) -> Result<Side, Failure> {
    let (told, tell) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Failure::runtime(format!("pipe: {e}")))?;
    Ok(match run::jail::fork()? {
        run::jail::Forked::Parent(child) => {
            // `create` waits for the end of its pipe: the child's. The
            // keeper takes the stop signals with a handler.
            drop((pipe.take(), tell, signals));
            Side::Keeper(child, told)
        }
        run::jail::Forked::Child => Side::Jailed(tell.into(), signals),
    })
}

/// The keeper's part of a jailed monitor: it stays the container's pid
/// (root, in its cgroup), runs the poststart hooks when the jailed child
/// says the container started, and exits with the child's status.
fn keep(child: nix::unistd::Pid, told: OwnedFd, hooks: Vec<Hook>, g: &Global, id: &str) -> u8 {
    let (g, id) = (g.clone(), id.to_owned());
    let hooks = std::thread::spawn(move || {
        let mut line = String::new();
        let mut told = std::io::BufReader::new(std::fs::File::from(told));
        if std::io::BufRead::read_line(&mut told, &mut line).is_err() || line.trim() != STARTED {
            return;
        }
        match Record::load(&g.root(), &id) {
            Ok(r) => warn_of_poststart(&g, &hooks, &r.oci_state()),
            Err(e) => g.warn(&format!("poststart hooks not run: {e}")),
        }
    });
    let status = run::jail::keep(child);
    // The pipe's end went with the child: the thread is done or ending.
    let _ = hooks.join();
    status
}

/// The sockets' directory, removed when the monitor is done with it.
struct SockDir(PathBuf);

impl Drop for SockDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A virtiofsd for the rootfs and for each shared directory; the VM's
/// shares.
fn start_backends(
    planned: &Planned,
    dir: &Path,
) -> Result<(Vec<crate::virtiofsd::Backend>, Vec<FsConfig>), Failure> {
    let mut backends = Vec::new();
    let mut shares = Vec::new();
    let dirs = std::iter::once((planned.rootfs.as_path(), ROOT_TAG)).chain(
        planned
            .shares
            .iter()
            .map(|s| (s.dir.as_path(), s.tag.as_str())),
    );
    for (shared, tag) in dirs {
        let b = crate::virtiofsd::start(shared, false, dir, tag).map_err(Failure::runtime)?;
        shares.push(share_config(&b.socket, tag));
        backends.push(b);
    }
    Ok((backends, shares))
}

/// The container as the agent creates it: on the rootfs share, with the
/// other shares mounted where the spec's bind mounts point.
fn container(planned: &Planned, terminal: bool) -> session::Container {
    // The hooks run here, on the host (bundle.rs refused the others).
    let mut spec = planned.spec.clone();
    spec.set_hooks(None);
    network::guest_spec(&mut spec);
    session::Container {
        spec,
        rootfs: RootfsSpec::Shared {
            tag: ROOT_TAG.into(),
        },
        volumes: planned
            .shares
            .iter()
            .map(|s| VolumeSpec {
                source: VolumeSource::Shared { tag: s.tag.clone() },
                mount_point: s.guest_path.clone(),
                read_only: false,
            })
            .collect(),
        stdio: StdioSpec {
            stream: run::MAIN_STREAM,
            tty: terminal,
            stdin: true,
        },
    }
}

/// runc's `--console-socket`: a pty whose master goes to the caller over
/// the socket (SCM_RIGHTS) and whose slave becomes this process's stdio and
/// controlling terminal. The session then treats it as any terminal: raw
/// mode, its size to the guest, SIGWINCH when the caller resizes it.
pub fn hand_over_terminal(socket: &Path) -> Result<(), String> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let pty = nix::pty::openpty(None, None).map_err(|e| format!("openpty: {e}"))?;
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("--console-socket {}: {e}", socket.display()))?;
    let master = [pty.master.as_raw_fd()];
    sendmsg::<UnixAddr>(
        stream.as_raw_fd(),
        &[std::io::IoSlice::new(b"/dev/ptmx")],
        &[ControlMessage::ScmRights(&master)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| {
        format!(
            "--console-socket {}: sending the terminal: {e}",
            socket.display()
        )
    })?;
    drop(pty.master);
    let slave = pty.slave.as_raw_fd();
    for fd in 0..3 {
        // SAFETY: dup2 of an fd we own onto our own stdio.
        if unsafe { libc::dup2(slave, fd) } < 0 {
            return Err(format!("dup2: {}", std::io::Error::last_os_error()));
        }
    }
    // SAFETY: TIOCSCTTY on our stdin, a terminal; we lead our session
    // (create made it with setsid) and have no controlling terminal yet.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(format!(
            "the terminal as controlling terminal: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn share_config(socket: &Path, tag: &str) -> FsConfig {
    FsConfig {
        socket: socket.to_owned(),
        tag: tag.into(),
        id: tag.into(),
    }
}

fn vm_config(
    id: &str,
    p: &Planned,
    fs: Vec<FsConfig>,
    wiring: network::Wiring,
    uds: &Path,
    dir: &Path,
) -> Result<VmConfig, Failure> {
    let guest = crate::boot::guest_dir();
    let (kernel, rootfs) = (guest.join("vmlinux"), guest.join("rootfs.ext4"));
    for (path, what) in [
        (&kernel, "guest kernel"),
        (&rootfs, "guest root filesystem"),
    ] {
        if !path.is_file() {
            return Err(Failure::runtime(format!(
                "the {what} {} is missing (scripts/build-guest builds it)",
                path.display()
            )));
        }
    }
    Ok(VmConfig {
        kernel,
        vcpus: p.vcpus,
        mem_mib: p.mem_mib,
        cmdline: format!(
            "{} root=/dev/vda ro {} {}=husk-{}{}",
            cmdline::BASE,
            cmdline::KEY_AGENT,
            cmdline::KEY_HOSTNAME,
            &id[..id.len().min(48)],
            wiring.cmdline
        ),
        disks: vec![DiskConfig {
            path: rootfs,
            read_only: true,
            id: run::serial::ROOTFS.into(),
            rate_limiter: None,
            read_write: Default::default(),
        }],
        nets: wiring.nets,
        vsock: Some(VsockConfig {
            guest_cid: 3,
            uds_path: uds.to_owned(),
            id: "vsock0".into(),
        }),
        fs,
        console: Console::Capped(
            dir.join(run::launch::CONSOLE_LOG),
            husk_vmm::console::CONSOLE_CAP,
        ),
        stdin: false,
        allow_pvm: false,
        track_dirty_pages: false,
    })
}

/// Whether and as whom the monitor runs the VM jailed (as `husk run` does,
/// see run/jail.rs): as root, unless the annotation `husk.jail` is
/// "false"; never without root, where "true" is an error.
fn jail_of(p: &Planned, id: &str) -> Result<Option<run::jail::RunJail>, Failure> {
    let root = nix::unistd::Uid::effective().is_root();
    match (p.jail, root) {
        (Some(false), _) | (None, false) => Ok(None),
        (Some(true), false) => Err(Failure::runtime(format!(
            "{}=true: the jail needs root (to set the VM up, then give root up)",
            bundle::ANNOTATION_JAIL
        ))),
        (_, true) => Ok(Some(run::jail::RunJail::for_id(id))),
    }
}

/// Puts the monitor (the container's pid on the host) in
/// `linux.cgroupsPath`, as runc puts the container's init there: a
/// directory under /sys/fs/cgroup, or with `--systemd-cgroup` a scope
/// systemd makes (systemd.rs), whose path the guest's cgroup then takes.
fn join_cgroup(g: &Global, p: &mut Planned, id: &str) -> Result<Option<HostCgroup>, Failure> {
    let path = p
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().into_owned());
    if g.systemd_cgroup {
        let scope = Scope::parse(path.as_deref(), id).map_err(Failure::runtime)?;
        scope
            .start(std::process::id(), &format!("husk container {id}"))
            .map_err(Failure::runtime)?;
        // (A spec without a linux section is the guest's to refuse.)
        if let Some(linux) = p.spec.linux_mut() {
            linux.set_cgroups_path(Some(scope.cgroup_path().into()));
        }
        return Ok(Some(HostCgroup::Scope(scope.unit)));
    }
    let Some(path) = path else {
        return Ok(None);
    };
    if path.contains(':') {
        return Err(Failure::runtime(format!(
            "cgroupsPath {path} is systemd's slice:prefix:name: pass --systemd-cgroup"
        )));
    }
    let dir = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()))
        .map_err(|e| Failure::runtime(format!("cgroupsPath {}: {e}", dir.display())))?;
    Ok(Some(HostCgroup::Dir(dir)))
}

fn make_fifo(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Blocks until `start` opens the FIFO, then hands it a byte.
fn wait_for_start(fifo: &Path) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(fifo)
        .map_err(|e| format!("{}: {e}", fifo.display()))?;
    f.write_all(b"1")
        .map_err(|e| format!("{}: {e}", fifo.display()))?;
    let _ = std::fs::remove_file(fifo);
    Ok(())
}

/// `start`: takes the monitor's byte from the FIFO.
pub fn release(dir: &Path, record: &Record) -> Result<(), String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let fifo = dir.join(START_FIFO);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .map_err(|e| format!("{}: {e}", fifo.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(&f), PollFlags::POLLIN)];
        let n = poll(&mut fds, PollTimeout::from(100u16)).map_err(|e| format!("poll: {e}"))?;
        if n > 0 {
            let mut byte = [0u8; 1];
            if (&f)
                .read(&mut byte)
                .map_err(|e| format!("{}: {e}", fifo.display()))?
                == 1
            {
                return Ok(());
            }
        }
        if !record.monitor_alive() {
            return Err("the container's monitor is gone".into());
        }
        if Instant::now() > deadline {
            return Err("the container's monitor did not answer in 30 s".into());
        }
    }
}

/// SIGKILL to the monitor: the VM, and the container in it, end with it.
pub fn kill(record: &Record) {
    if record.monitor_alive() {
        // SAFETY: kill(2) on a pid whose start time we just checked.
        unsafe { libc::kill(record.monitor_pid, libc::SIGKILL) };
    }
}

/// A signal for the container's process (or all of its processes),
/// through the agent.
pub fn signal(sock: &Path, signal: i32, all: bool) -> Result<(), String> {
    let request = Request::Signal {
        id: run::CONTAINER_ID.into(),
        exec_id: None,
        signal,
        all,
    };
    ask(sock, request, "signal the container").map(|_| ())
}

/// One request to the agent of the container whose sockets are in `sock`;
/// its answer, an error answer as an error naming `what`.
pub fn ask(sock: &Path, request: Request, what: &str) -> Result<Response, String> {
    let uds = sock.join(run::state::VSOCK_SOCKET);
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = Client::open(&uds, deadline, &|| true, Sinks::discard())
        .map_err(|e| format!("cannot {what}: {e}"))?;
    let seq = client
        .writer
        .request(request)
        .map_err(|e| format!("cannot {what}: {e}"))?;
    match client.response(seq, Duration::from_secs(10), &|| true) {
        Ok(Response::Error { message }) => Err(format!("cannot {what}: {message}")),
        Ok(r) => Ok(r),
        Err(e) => Err(format!("cannot {what}: {e}")),
    }
}
