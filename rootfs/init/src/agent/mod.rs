//! The guest agent: with `husk.agent` on the kernel command line, PID 1
//! serves the host over vsock (rootfs/README.md, "Agent protocol") instead
//! of running one command. One thread, one poll loop: the host connection,
//! the processes' pipes, and the signalfd that reports their deaths.

mod export;
mod identity;
mod streams;

use husk_container::{Container, Rootfs, Stdio};
use husk_wire::agent::{
    Decoder, Event, ExitStatus, Frame, Request, Response, RootfsSpec, StdioSpec, VolumeSource,
    VolumeSpec, AGENT_PORT, MAX_CHUNK, VERSION,
};
use husk_wire::cmdline::Fault;
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use streams::{Output, Stream};

/// Where containers' images, scratch layers and state live in the guest.
const STATE_DIR: &str = "/run/husk/containers";
/// How long a dead process's output may still trickle in (a background
/// child holding the pipe) before its exit is reported anyway.
const DRAIN_LIMIT: Duration = Duration::from_millis(500);
/// Output read from processes waits here while the host is slow; past this
/// we stop reading their pipes, so they block instead of us growing.
const OUTBUF_HIGH: usize = 1 << 20;
/// Host connections open at once: the container's own, plus exec/kill.
const MAX_CONNS: usize = 16;

/// A stream: its connection and the id the host chose on it. Ids are the
/// connection's own, so two `husk exec` clients can never collide.
type StreamKey = (u64, u32);

fn log(msg: &str) {
    eprintln!("husk-agent: {msg}");
}

struct Entry {
    container: Container,
    /// Mount points to undo on destroy, innermost first.
    mounts: Vec<PathBuf>,
    /// The image tree under a layered root (what a commit compares with).
    lower: Option<PathBuf>,
}

/// A host connection and what it has not yet taken. Several may be open:
/// the process that runs the container, and `husk exec`/`husk kill`.
struct Conn {
    fd: OwnedFd,
    decoder: Decoder,
    out: Vec<u8>,
}

pub struct Agent {
    listener: OwnedFd,
    /// Where process output is read into: one buffer for the agent's life
    /// rather than one per read.
    read_buf: Vec<u8>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    /// The connection whose frame is being handled; its streams are its own.
    current: u64,
    containers: HashMap<String, Entry>,
    streams: HashMap<StreamKey, Stream>,
    /// Live process → its stream.
    pids: HashMap<i32, StreamKey>,
    shutdown: bool,
    /// `husk.fault=`: what to fail on purpose (tests only).
    fault: Option<Fault>,
}

fn listen_vsock() -> nix::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    bind(
        fd.as_raw_fd(),
        &VsockAddr::new(libc::VMADDR_CID_ANY, AGENT_PORT),
    )?;
    listen(&fd, Backlog::new(4)?)?;
    Ok(fd)
}

/// Runs the agent until the host asks for a shutdown or the VM is told to
/// stop (Ctrl-Alt-Del, SIGTERM); returns the status byte for the VMM.
pub fn run(sfd: &mut SignalFd, fault: Option<Fault>) -> u8 {
    let listener = match listen_vsock() {
        Ok(l) => l,
        Err(e) => {
            log(&format!("cannot listen on vsock port {AGENT_PORT}: {e}"));
            return husk_wire::status::INIT_FAILURE;
        }
    };
    let _ = std::fs::create_dir_all(STATE_DIR);
    let mut agent = Agent {
        listener,
        read_buf: vec![0u8; MAX_CHUNK],
        conns: BTreeMap::new(),
        next_conn: 1,
        current: 0,
        containers: HashMap::new(),
        streams: HashMap::new(),
        pids: HashMap::new(),
        shutdown: false,
        fault,
    };
    let stop = agent.serve(sfd);
    agent.destroy_all();
    if stop {
        // Asked to stop from outside: like a container killed by SIGTERM.
        husk_wire::status::signal_status(Signal::SIGTERM as i32)
    } else {
        0
    }
}

impl Agent {
    /// The loop; true when a stop signal ended it.
    fn serve(&mut self, sfd: &mut SignalFd) -> bool {
        loop {
            if self.shutdown && self.conns.values().all(|c| c.out.is_empty()) {
                return false;
            }
            let backlog = self.conns.values().map(|c| c.out.len()).max().unwrap_or(0);
            let (mut fds, owners) = self.poll_set(sfd.as_fd(), backlog);
            let timeout = if self.streams.values().any(|s| s.exit.is_some()) {
                PollTimeout::from(50u16)
            } else {
                PollTimeout::NONE
            };
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    log(&format!("poll: {e}"));
                    return false;
                }
            }
            let ready: Vec<(Owner, PollFlags)> = fds
                .iter()
                .zip(owners)
                .filter_map(|(f, o)| f.revents().filter(|r| !r.is_empty()).map(|r| (o, r)))
                .collect();
            drop(fds);
            for (owner, revents) in ready {
                match owner {
                    Owner::Signals => {
                        if self.signals(sfd) {
                            return true;
                        }
                    }
                    Owner::Listener => self.accept(),
                    Owner::Conn(c) => self.conn_ready(c, revents),
                    Owner::Out(stream, which) => self.read_output(stream, which),
                    Owner::In(stream) => {
                        if let Some(s) = self.streams.get_mut(&stream) {
                            s.write_stdin();
                        }
                    }
                }
            }
            self.report_exits();
        }
    }

    fn poll_set<'a>(
        &'a self,
        sfd: BorrowedFd<'a>,
        backlog: usize,
    ) -> (Vec<PollFd<'a>>, Vec<Owner>) {
        let mut fds = vec![
            PollFd::new(sfd, PollFlags::POLLIN),
            PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
        ];
        let mut owners = vec![Owner::Signals, Owner::Listener];
        for (&id, c) in &self.conns {
            let mut ev = PollFlags::POLLIN;
            if !c.out.is_empty() {
                ev |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(c.fd.as_fd(), ev));
            owners.push(Owner::Conn(id));
        }
        for (&id, s) in &self.streams {
            if backlog < OUTBUF_HIGH && !self.parked(&id, s) {
                for which in [Output::Stdout, Output::Stderr] {
                    if let Some(fd) = s.output(which) {
                        fds.push(PollFd::new(fd, PollFlags::POLLIN));
                        owners.push(Owner::Out(id, which));
                    }
                }
            }
            if let Some(fd) = s.stdin_wants_write() {
                fds.push(PollFd::new(fd, PollFlags::POLLOUT));
                owners.push(Owner::In(id));
            }
        }
        (fds, owners)
    }

    /// Reaps children; true on a stop signal.
    fn signals(&mut self, sfd: &mut SignalFd) -> bool {
        let mut stop = false;
        while let Ok(Some(info)) = sfd.read_signal() {
            if info.ssi_signo == Signal::SIGINT as u32 || info.ssi_signo == Signal::SIGTERM as u32 {
                // On the console: a VM that ends this way under a session
                // otherwise looks like a silent reset.
                log(&format!(
                    "stop requested (signal {}, pid {}): ending the containers",
                    info.ssi_signo, info.ssi_pid
                ));
                stop = true;
            }
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.exited(pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.exited(pid, ExitStatus::Signal(sig as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        stop
    }

    fn exited(&mut self, pid: Pid, status: ExitStatus) {
        // Unknown pids are orphans and the runtime's helpers: nothing to say.
        if let Some(stream) = self.pids.remove(&pid.as_raw()) {
            if let Some(s) = self.streams.get_mut(&stream) {
                s.exit = Some((status, Instant::now()));
            }
        }
    }

    fn accept(&mut self) {
        let fd = match accept4(
            self.listener.as_raw_fd(),
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        ) {
            // SAFETY: accept4 returned a new descriptor nobody else owns.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(_) => return,
        };
        if self.conns.len() >= MAX_CONNS {
            log("refusing a host connection: too many open");
            return;
        }
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                fd,
                decoder: Decoder::default(),
                out: Vec::new(),
            },
        );
    }

    fn conn_ready(&mut self, id: u64, revents: PollFlags) {
        if revents.contains(PollFlags::POLLOUT) {
            self.flush_conn(id);
        }
        if !revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            return;
        }
        let mut buf = [0u8; 64 * 1024];
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match nix::unistd::read(conn.fd.as_raw_fd(), &mut buf) {
            Ok(0) => {
                self.conns.remove(&id);
                return;
            }
            Ok(n) => conn.decoder.push(&buf[..n]),
            Err(Errno::EAGAIN | Errno::EINTR) => return,
            Err(e) => {
                log(&format!("host connection: {e}"));
                self.conns.remove(&id);
                return;
            }
        }
        self.current = id;
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            match conn.decoder.next_frame() {
                Ok(None) => return,
                Ok(Some(frame)) => self.frame(frame),
                Err(e) if e.is_recoverable() => {
                    if let husk_wire::agent::Error::Body { seq: Some(seq), .. } = e {
                        self.reply(
                            seq,
                            Response::Error {
                                message: e.to_string(),
                            },
                        );
                    } else {
                        log(&format!("dropping a bad frame: {e}"));
                    }
                }
                Err(e) => {
                    log(&format!("host connection out of step, closing it: {e}"));
                    self.conns.remove(&id);
                    return;
                }
            }
        }
    }

    /// Queues `frame` for connection `conn`; dropped if it has closed (the
    /// process keeps running, as a container does when docker detaches).
    fn send(&mut self, conn: u64, frame: &Frame) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.out.extend_from_slice(&frame.encode());
        }
        self.flush_conn(conn);
    }

    fn flush_conn(&mut self, conn: u64) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        while !c.out.is_empty() {
            match nix::unistd::write(&c.fd, &c.out) {
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    log(&format!("host connection: {e}"));
                    self.conns.remove(&conn);
                    return;
                }
            }
        }
    }

    fn reply(&mut self, seq: u64, response: Response) {
        self.send(self.current, &Frame::Response { seq, response });
    }

    fn frame(&mut self, frame: Frame) {
        match frame {
            Frame::Request { seq, request } => {
                let response = match self.request(request) {
                    Ok(r) => r,
                    Err(message) => Response::Error { message },
                };
                self.reply(seq, response);
            }
            Frame::Stdin { stream, data } => {
                if let Some(s) = self.streams.get_mut(&(self.current, stream)) {
                    s.queue_stdin(&data);
                }
            }
            other => log(&format!(
                "ignoring a frame the host should not send: {other:?}"
            )),
        }
    }

    fn request(&mut self, request: Request) -> Result<Response, String> {
        match request {
            Request::Hello { version } if version == VERSION => Ok(Response::Hello {
                version: VERSION,
                agent: concat!("husk-agent ", env!("CARGO_PKG_VERSION")).into(),
            }),
            Request::Hello { version } => Err(format!(
                "protocol version {version} is not supported; this agent speaks {VERSION}"
            )),
            Request::Identity {
                realtime_ns,
                entropy,
                hostname,
                net,
            } => identity::apply(realtime_ns, &entropy, &hostname, net.as_ref())
                .map(|()| Response::Ok),
            Request::CreateContainer {
                id,
                spec,
                rootfs,
                volumes,
                stdio,
            } => self.create(id, spec, &rootfs, &volumes, stdio),
            Request::StartContainer { id } => {
                if self.fault == Some(Fault::AgentPanic) {
                    // PID 1 dies: the kernel panics and the VM resets.
                    panic!("husk.fault=agent-panic: the agent dies as asked");
                }
                let e = self.entry(&id)?;
                e.container.start().map_err(|e| e.to_string())?;
                Ok(Response::Ok)
            }
            Request::Park { id } => {
                let key = self.main_stream(&id)?;
                self.streams.get_mut(&key).expect("found").parked = true;
                Ok(Response::Ok)
            }
            Request::Attach { id, stream } => self.attach(&id, stream).map(|()| Response::Ok),
            Request::Exec {
                id,
                exec_id,
                process,
                stdio,
            } => {
                self.check_stream(&stdio)?;
                if self.live_exec(&id, &exec_id).is_some() {
                    return Err(format!("exec id {exec_id} is in use in {id}"));
                }
                let e = self.entry(&id)?;
                let (pid, io) = e
                    .container
                    .exec(&process, stdio_of(&stdio))
                    .map_err(|e| e.to_string())?;
                self.add_stream(pid, &stdio, io, id, Some(exec_id));
                Ok(Response::Ok)
            }
            Request::Signal {
                id,
                exec_id,
                signal,
                all,
            } => {
                let sig = Signal::try_from(signal).map_err(|_| format!("no signal {signal}"))?;
                match exec_id {
                    None => {
                        let e = self.entry(&id)?;
                        e.container
                            .signal(sig as i32, all)
                            .map_err(|e| e.to_string())?;
                    }
                    Some(x) => {
                        let pid = self
                            .live_exec(&id, &x)
                            .ok_or_else(|| format!("no running process {x} in {id}"))?;
                        kill(Pid::from_raw(pid), sig).map_err(|e| format!("kill {pid}: {e}"))?;
                    }
                }
                Ok(Response::Ok)
            }
            Request::ResizeTty { stream, rows, cols } => {
                let s = self
                    .streams
                    .get(&(self.current, stream))
                    .ok_or_else(|| format!("no stream {stream}"))?;
                let master = s
                    .tty_master()
                    .ok_or_else(|| format!("stream {stream} has no tty"))?;
                husk_container::resize_tty(master, rows, cols).map_err(|e| e.to_string())?;
                Ok(Response::Ok)
            }
            Request::Stats { id } => {
                let e = self.entry(&id)?;
                let s = e.container.stats().map_err(|e| e.to_string())?;
                Ok(Response::Stats { stats: s })
            }
            Request::Update { id, resources } => {
                let e = self.entry(&id)?;
                e.container.update(&resources).map_err(|e| e.to_string())?;
                Ok(Response::Ok)
            }
            Request::Pids { id } => {
                let e = self.entry(&id)?;
                Ok(Response::Pids {
                    pids: e.container.pids(),
                })
            }
            Request::ExportChanges { id, stream } => {
                let stdio = StdioSpec {
                    stream,
                    tty: false,
                    stdin: false,
                };
                self.check_stream(&stdio)?;
                let e = self.entry(&id)?;
                let lower = e.lower.clone().ok_or_else(|| {
                    format!("container {id} has no image layer to compare with (its root is a shared directory)")
                })?;
                let (pid, cgroup) = (
                    e.container.init_pid(),
                    e.container.cgroup_path().map(Path::to_path_buf),
                );
                let (child, io) = export::spawn(lower, pid, cgroup)?;
                self.add_stream(child, &stdio, io, id, Some(format!("export-{stream}")));
                Ok(Response::Ok)
            }
            Request::DestroyContainer { id } => {
                let e = self
                    .containers
                    .remove(&id)
                    .ok_or_else(|| format!("no container {id}"))?;
                destroy(e).map_err(|e| format!("destroy {id}: {e}"))?;
                Ok(Response::Ok)
            }
            Request::Shutdown => {
                self.shutdown = true;
                Ok(Response::Ok)
            }
            Request::Sync => {
                nix::unistd::sync();
                Ok(Response::Ok)
            }
        }
    }

    /// Container `id`'s own process's stream.
    fn main_stream(&mut self, id: &str) -> Result<StreamKey, String> {
        self.entry(id)?;
        self.streams
            .iter()
            .find(|(_, s)| s.container == id && s.exec_id.is_none())
            .map(|(&k, _)| k)
            .ok_or_else(|| format!("container {id} has no running process"))
    }

    /// Moves container `id`'s own stream onto the current connection, and
    /// ends its `Park`.
    fn attach(&mut self, id: &str, stream: u32) -> Result<(), String> {
        let old = self.main_stream(id)?;
        let new = (self.current, stream);
        if new != old && self.streams.contains_key(&new) {
            return Err(format!("stream {stream} is in use on this connection"));
        }
        let mut s = self.streams.remove(&old).expect("found above");
        s.parked = false;
        for key in self.pids.values_mut() {
            if *key == old {
                *key = new;
            }
        }
        self.streams.insert(new, s);
        Ok(())
    }

    /// A container's own process whose connection is gone waits for an
    /// `Attach`: its output stays in its pipes and its exit is kept.
    fn parked(&self, key: &StreamKey, s: &Stream) -> bool {
        s.parked || (s.exec_id.is_none() && !self.conns.contains_key(&key.0))
    }

    fn entry(&mut self, id: &str) -> Result<&mut Entry, String> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| format!("no container {id}"))
    }

    fn check_stream(&self, stdio: &StdioSpec) -> Result<(), String> {
        if self.streams.contains_key(&(self.current, stdio.stream)) {
            return Err(format!("stream {} is in use", stdio.stream));
        }
        Ok(())
    }

    /// The pid of a running exec'd process.
    fn live_exec(&self, id: &str, exec_id: &str) -> Option<i32> {
        self.streams
            .values()
            .find(|s| s.container == id && s.exec_id.as_deref() == Some(exec_id))
            .filter(|s| s.exit.is_none())
            .map(|s| s.pid)
    }

    fn create(
        &mut self,
        id: String,
        spec: Box<oci_spec::runtime::Spec>,
        rootfs: &RootfsSpec,
        volumes: &[VolumeSpec],
        stdio: StdioSpec,
    ) -> Result<Response, String> {
        if id.is_empty() || id.contains(['/', '\0']) || id == "." || id == ".." {
            return Err(format!("bad container id {id:?}"));
        }
        if self.containers.contains_key(&id) {
            return Err(format!("container {id} exists"));
        }
        self.check_stream(&stdio)?;
        let base = Path::new(STATE_DIR).join(format!("{id}.mnt"));
        let mut mounts = Vec::new();
        let mut trace = husk_container::trace::Trace::default();
        let result = (|| {
            let root = mount_root(rootfs, &base, &mut mounts, &mut trace)?;
            for v in volumes {
                let at = PathBuf::from(&v.mount_point);
                match &v.source {
                    VolumeSource::Disk { serial, fs_type } => {
                        mount_disk(serial, &at, fs_type, v.read_only)?
                    }
                    VolumeSource::Shared { tag } => mount_shared(tag, &at, v.read_only)?,
                    VolumeSource::Files { files } => mount_files(files, &at, v.read_only)?,
                }
                mounts.push(at);
            }
            trace.step("mount_volumes");
            let lower = match &root {
                Rootfs::Layered { lower, .. } => Some(lower.clone()),
                Rootfs::Dir(_) => None,
            };
            let stdio = stdio_of(&stdio);
            Container::create_traced(&id, &spec, &root, Path::new(STATE_DIR), stdio, &mut trace)
                .map(|made| (made, lower))
                .map_err(|e| e.to_string())
        })();
        mounts.reverse();
        match result {
            Ok(((container, io), lower)) => {
                let pid = container.init_pid();
                self.containers.insert(
                    id.clone(),
                    Entry {
                        container,
                        mounts,
                        lower,
                    },
                );
                self.add_stream(pid, &stdio, io, id, None);
                Ok(Response::Created {
                    steps: trace.into_steps(),
                })
            }
            Err(e) => {
                unmount_all(&mounts);
                Err(e)
            }
        }
    }

    fn add_stream(
        &mut self,
        pid: i32,
        stdio: &StdioSpec,
        io: husk_container::ProcessIo,
        container: String,
        exec_id: Option<String>,
    ) {
        let key = (self.current, stdio.stream);
        self.pids.insert(pid, key);
        self.streams
            .insert(key, Stream::new(pid, stdio.tty, io, container, exec_id));
    }

    fn read_output(&mut self, key: StreamKey, which: Output) {
        let Some(s) = self.streams.get_mut(&key) else {
            return;
        };
        let data = s.read(which, &mut self.read_buf);
        if let Some(data) = data {
            let (owner, stream) = key;
            let frame = match which {
                Output::Stdout => Frame::Stdout { stream, data },
                Output::Stderr => Frame::Stderr { stream, data },
            };
            self.send(owner, &frame);
        }
    }

    /// Reports processes that are dead and whose output is done (or has
    /// been given up on).
    fn report_exits(&mut self) {
        let done: Vec<StreamKey> = self
            .streams
            .iter()
            .filter(|(k, s)| {
                !self.parked(k, s)
                    && s.exit
                        .is_some_and(|(_, at)| s.outputs_done() || at.elapsed() > DRAIN_LIMIT)
            })
            .map(|(&k, _)| k)
            .collect();
        for key in done {
            let Some(mut s) = self.streams.remove(&key) else {
                continue;
            };
            let (owner, stream) = key;
            for which in s.close_outputs() {
                let data = Vec::new();
                self.send(
                    owner,
                    &match which {
                        Output::Stdout => Frame::Stdout { stream, data },
                        Output::Stderr => Frame::Stderr { stream, data },
                    },
                );
            }
            let status = s.exit.map(|(st, _)| st).unwrap_or(ExitStatus::Code(0));
            self.send(
                owner,
                &Frame::Event(Event::Exited {
                    id: s.container.clone(),
                    exec_id: s.exec_id.take(),
                    stream,
                    status,
                }),
            );
        }
    }

    fn destroy_all(&mut self) {
        for (id, e) in self.containers.drain() {
            if let Err(err) = destroy(e) {
                log(&format!("destroy {id}: {err}"));
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Owner {
    Signals,
    Listener,
    Conn(u64),
    Out(StreamKey, Output),
    In(StreamKey),
}

fn stdio_of(s: &StdioSpec) -> Stdio {
    if s.tty {
        Stdio::Tty
    } else {
        Stdio::Pipes { stdin: s.stdin }
    }
}

/// Mounts what the container's root is made of under `base`, adding each
/// mount point to `mounts`.
fn mount_root(
    rootfs: &RootfsSpec,
    base: &Path,
    mounts: &mut Vec<PathBuf>,
    trace: &mut husk_container::trace::Trace,
) -> Result<Rootfs, String> {
    match rootfs {
        RootfsSpec::Image {
            disk,
            fs_type,
            scratch_disk,
        } => {
            let image = base.join("image");
            mount_disk(disk, &image, fs_type, true)?;
            mounts.push(image.clone());
            trace.step("mount_image");
            let upper = match scratch_disk {
                Some(disk) => {
                    let scratch = base.join("scratch");
                    mount_disk(disk, &scratch, "ext4", false)?;
                    mounts.push(scratch.clone());
                    trace.step("mount_scratch");
                    Some(scratch.join("upper"))
                }
                None => None,
            };
            Ok(Rootfs::Layered {
                lower: image,
                upper,
            })
        }
        RootfsSpec::Shared { tag } => {
            // A root as the bundle has it: its setuid programs and device
            // nodes work as they would under runc.
            let tree = base.join("root");
            mount_virtiofs(tag, &tree, MsFlags::empty())?;
            mounts.push(tree.clone());
            trace.step("mount_root");
            Ok(Rootfs::Dir(tree))
        }
    }
}

/// Mounts the disk whose serial is `serial` (see [`RootfsSpec`]).
fn mount_disk(serial: &str, at: &Path, fs_type: &str, read_only: bool) -> Result<(), String> {
    let device = disk_by_serial(Path::new("/sys/block"), serial)?;
    wait_for_capacity(&device)?;
    let device = device.as_path();
    std::fs::create_dir_all(at).map_err(|e| format!("mkdir {}: {e}", at.display()))?;
    let mut flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(Some(device), at, Some(fs_type), flags, None::<&str>).map_err(|e| {
        format!(
            "mount {} ({serial}, {fs_type}) on {}: {e}",
            device.display(),
            at.display()
        )
    })
}

/// Mounts the virtio-fs share tagged `tag` as a volume (no devices, no
/// setuid).
fn mount_shared(tag: &str, at: &Path, read_only: bool) -> Result<(), String> {
    let mut flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount_virtiofs(tag, at, flags)
}

/// A tmpfs of its own at `at` holding `files` (plain names, 0644): the
/// files the host composed for the container.
fn mount_files(files: &BTreeMap<String, String>, at: &Path, read_only: bool) -> Result<(), String> {
    VolumeSource::check_files(files)?;
    std::fs::create_dir_all(at).map_err(|e| format!("mkdir {}: {e}", at.display()))?;
    let flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    let size = format!("size={},mode=0755", husk_wire::agent::MAX_FILES_BYTES * 2);
    mount(Some("tmpfs"), at, Some("tmpfs"), flags, Some(size.as_str()))
        .map_err(|e| format!("mount tmpfs on {}: {e}", at.display()))?;
    let written = (|| {
        for (name, content) in files {
            let path = at.join(name);
            std::fs::write(&path, content).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        if read_only {
            mount(
                None::<&str>,
                at,
                None::<&str>,
                flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|e| format!("remount {} read-only: {e}", at.display()))?;
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = umount2(at, MntFlags::MNT_DETACH);
    }
    written
}

fn mount_virtiofs(tag: &str, at: &Path, flags: MsFlags) -> Result<(), String> {
    std::fs::create_dir_all(at).map_err(|e| format!("mkdir {}: {e}", at.display()))?;
    mount(Some(tag), at, Some("virtiofs"), flags, None::<&str>)
        .map_err(|e| format!("mount virtio-fs {tag} on {}: {e}", at.display()))
}

/// How long a disk may take to show its size: in a VM restored from a
/// template, the disk was an empty stand-in and the new size arrives with
/// a config interrupt the kernel handles in a work queue.
const CAPACITY_WAIT: Duration = Duration::from_secs(5);

/// Waits until `/dev/<name>` has a size.
fn wait_for_capacity(device: &Path) -> Result<(), String> {
    let name = device.file_name().unwrap_or_default();
    let size = Path::new("/sys/block").join(name).join("size");
    let deadline = Instant::now() + CAPACITY_WAIT;
    loop {
        let sectors =
            std::fs::read_to_string(&size).map_err(|e| format!("{}: {e}", size.display()))?;
        if sectors.trim() != "0" {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} is still empty after {CAPACITY_WAIT:?}",
                device.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `/dev/<name>` of the block device under `sys_block` whose `serial`
/// attribute (virtio-blk's GET_ID answer) is `serial`.
fn disk_by_serial(sys_block: &Path, serial: &str) -> Result<PathBuf, String> {
    let entries =
        std::fs::read_dir(sys_block).map_err(|e| format!("{}: {e}", sys_block.display()))?;
    for e in entries.flatten() {
        let Ok(found) = std::fs::read_to_string(e.path().join("serial")) else {
            continue;
        };
        // The device pads an id shorter than 20 bytes with NULs, which
        // Linux stops at; trim a newline all the same.
        if found.trim_end_matches(['\n', '\0']) == serial {
            return Ok(Path::new("/dev").join(e.file_name()));
        }
    }
    Err(format!(
        "no disk with serial {serial:?} in {}",
        sys_block.display()
    ))
}

fn unmount_all(mounts: &[PathBuf]) {
    for m in mounts {
        if let Err(e) = umount2(m, MntFlags::MNT_DETACH) {
            log(&format!("umount {}: {e}", m.display()));
        }
    }
}

fn destroy(e: Entry) -> Result<(), String> {
    let result = e.container.destroy().map_err(|e| e.to_string());
    unmount_all(&e.mounts);
    result
}

#[cfg(test)]
mod tests {
    use super::disk_by_serial;

    #[test]
    fn disks_are_found_by_serial_not_by_order() {
        let d = tempfile_dir();
        for (name, serial) in [("vda", "rootfs\n"), ("vdb", "volume0"), ("vdc", "image")] {
            std::fs::create_dir_all(d.join(name)).unwrap();
            std::fs::write(d.join(name).join("serial"), serial).unwrap();
        }
        std::fs::create_dir_all(d.join("loop0")).unwrap();
        assert_eq!(
            disk_by_serial(&d, "image").unwrap(),
            std::path::Path::new("/dev/vdc")
        );
        assert_eq!(
            disk_by_serial(&d, "rootfs").unwrap(),
            std::path::Path::new("/dev/vda")
        );
        let e = disk_by_serial(&d, "scratch").unwrap_err();
        assert!(e.contains("no disk with serial \"scratch\""), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("husk-agent-serial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }
}
