//! The protocol between husk on the host and the agent (the guest's PID 1)
//! over one vsock stream connection to [`AGENT_PORT`].
//!
//! Every message is a frame: a 4-byte big-endian length of what follows,
//! one kind byte, then the body. Control messages (requests, responses,
//! events) carry JSON; stream data carries a 4-byte big-endian stream id
//! followed by raw bytes, an empty payload meaning end of stream. The host
//! sends [`Request::Hello`] first; the agent answers with its version and
//! refuses other versions. Requests carry a sequence number their response
//! repeats, so responses and events can interleave with stream data on the
//! one connection. Stream ids belong to their connection: two connections
//! may both use stream 1. The full description is in rootfs/README.md.

use oci_spec::runtime::{LinuxResources, Process, Spec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};

pub use crate::status::ExitStatus;

/// Protocol version; bumped on any incompatible change. 2: typed specs,
/// disks named by their serial, stream ids scoped to their connection.
/// 3: a volume is a disk or a virtio-fs share. 4: the root is an image
/// disk or a virtio-fs share. 5: update, pids. 6: export_changes. 7: a
/// volume of files the host composed. 8: identity, for a VM restored from
/// a template. 9: sync, the end of a run whose VM the host stops; a
/// created container's steps.
pub const VERSION: u32 = 9;
/// The fewest random bytes an [`Request::Identity`] carries.
pub const MIN_ENTROPY: usize = 32;
/// The vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;
/// Largest frame body accepted: a runtime spec is a few KiB, stream chunks
/// are at most [`MAX_CHUNK`]; anything bigger is a broken peer.
pub const MAX_FRAME: usize = 1 << 20;
/// Largest stream payload a sender puts in one frame.
pub const MAX_CHUNK: usize = 32 * 1024;

const KIND_REQUEST: u8 = 1;
const KIND_RESPONSE: u8 = 2;
const KIND_EVENT: u8 = 3;
const KIND_STDIN: u8 = 4;
const KIND_STDOUT: u8 = 5;
const KIND_STDERR: u8 = 6;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The framing itself is broken: the connection cannot continue.
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("empty frame")]
    Empty,
    /// One frame's body is bad; the frames around it are still in step.
    #[error("bad {what} (seq {seq:?}): {message}")]
    Body {
        what: &'static str,
        seq: Option<u64>,
        message: String,
    },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether the connection can go on after this error.
    pub fn is_recoverable(&self) -> bool {
        matches!(self, Error::Body { .. })
    }
}

/// How a container's or exec'd process's stdio is wired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdioSpec {
    /// Stream id for its data frames, chosen by the host; unique among
    /// the live streams of its connection.
    pub stream: u32,
    /// A pseudo-terminal (stdout and stderr merged) instead of pipes.
    #[serde(default)]
    pub tty: bool,
    /// Whether the host sends stdin; without it the process's stdin is
    /// /dev/null.
    #[serde(default)]
    pub stdin: bool,
}

/// The container's root.
///
/// Disks are named by their serial, the drive id the host gave the
/// virtio-blk device (which answers GET_ID with it; Linux shows it as
/// `/sys/block/vdX/serial`), never by a device name guessed from the order
/// of attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RootfsSpec {
    /// The image's read-only disk, with a writable layer over it.
    Image {
        /// Serial of the disk holding the image tree.
        disk: String,
        /// Its filesystem type (`erofs`, `ext4`).
        fs_type: String,
        /// Serial of a disk for the writable layer (formatted ext4); a
        /// tmpfs when absent.
        #[serde(default)]
        scratch_disk: Option<String>,
    },
    /// A host directory shared through virtio-fs, used as it is: an OCI
    /// bundle's rootfs, which the caller (podman, containerd) prepared.
    Shared { tag: String },
}

/// A host volume the agent mounts before creating the container; the
/// runtime spec's bind mounts refer to `mount_point`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    pub source: VolumeSource,
    pub mount_point: String,
    #[serde(default)]
    pub read_only: bool,
}

/// Where a volume's content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum VolumeSource {
    /// A disk image attached as a virtio-blk disk, by its serial.
    Disk { serial: String, fs_type: String },
    /// A host directory shared live through virtio-fs, by its mount tag.
    Shared { tag: String },
    /// A few small files the host composed (the container's
    /// `/etc/resolv.conf`, `/etc/hosts`, `/etc/hostname`): the agent writes
    /// them, by plain file name, into a tmpfs of their own. Not worth a
    /// virtio-fs share each, and the container gets its own copy to edit,
    /// as with Docker.
    Files { files: BTreeMap<String, String> },
}

/// The most a [`VolumeSource::Files`] volume holds, in bytes of content.
pub const MAX_FILES_BYTES: usize = 64 * 1024;

impl VolumeSource {
    /// Why a [`VolumeSource::Files`] cannot be written as it is: a name
    /// that is not a plain file name, or too much content.
    pub fn check_files(files: &BTreeMap<String, String>) -> Result<(), String> {
        for name in files.keys() {
            if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
                return Err(format!("file name {name:?} is not a plain file name"));
            }
        }
        let total: usize = files.values().map(String::len).sum();
        if total > MAX_FILES_BYTES {
            return Err(format!("{total} bytes of files: at most {MAX_FILES_BYTES}"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Hello {
        version: u32,
    },
    /// Makes a VM restored from a template its own: the host's time (the
    /// guest's clock stood still in the snapshot), fresh entropy mixed in
    /// and the kernel's generator reseeded from it (every clone would
    /// otherwise draw the same numbers), and the VM's hostname.
    Identity {
        /// CLOCK_REALTIME on the host, in nanoseconds since the epoch.
        realtime_ns: u64,
        /// Random bytes from the host; at least [`MIN_ENTROPY`].
        entropy: Vec<u8>,
        hostname: String,
        /// The VM's interface as this run has it: the template's NIC kept
        /// the MAC and had no address.
        #[serde(default)]
        net: Option<NetIdentity>,
    },
    /// Mounts the root and volumes and creates the container with its
    /// process stopped before exec, as `runc create` does.
    CreateContainer {
        id: String,
        /// The OCI runtime spec (`config.json`).
        spec: Box<Spec>,
        rootfs: RootfsSpec,
        #[serde(default)]
        volumes: Vec<VolumeSpec>,
        stdio: StdioSpec,
    },
    StartContainer {
        id: String,
    },
    /// Holds the container's own process for a checkpoint: the agent stops
    /// reading its output and keeps its exit until an `Attach`. The answer
    /// comes after every frame of it the agent sent before, so the host
    /// has all of its output up to here; what it writes next waits in its
    /// pipes, in the VM's memory.
    Park {
        id: String,
    },
    /// Takes the container's own process (its output, stdin and exit) onto
    /// this connection as `stream`, and ends a `Park`. Its connection can be
    /// lost while it runs: a VM restored from a checkpoint has none (vsock
    /// connections do not survive a restore), and until the new host
    /// attaches the process is held as if parked, so nothing is lost.
    Attach {
        id: String,
        stream: u32,
    },
    /// Runs one more process (an OCI `process` object) in the container.
    Exec {
        id: String,
        exec_id: String,
        process: Box<Process>,
        stdio: StdioSpec,
    },
    /// Signals the container's process, or one exec'd process; `all`
    /// signals every process of the container.
    Signal {
        id: String,
        #[serde(default)]
        exec_id: Option<String>,
        signal: i32,
        #[serde(default)]
        all: bool,
    },
    ResizeTty {
        stream: u32,
        rows: u16,
        cols: u16,
    },
    Stats {
        id: String,
    },
    /// Writes the container's cgroup limits anew (`runc update`).
    Update {
        id: String,
        resources: Box<LinuxResources>,
    },
    /// The pids of the container's processes, as the guest numbers them
    /// (`runc ps`).
    Pids {
        id: String,
    },
    /// Writes the container's changes from its image as a tar (OCI
    /// whiteouts) on `stream`'s stdout, the container frozen meanwhile;
    /// the `exited` event for `stream` says whether it all went.
    ExportChanges {
        id: String,
        stream: u32,
    },
    /// Kills what is left of the container, unmounts and forgets it.
    DestroyContainer {
        id: String,
    },
    /// Syncs the guest's disks and powers the VM off.
    Shutdown,
    /// Writes what the guest's page cache holds dirty to its disks and
    /// shares, and answers once it is there: the end of a run whose VM the
    /// host then stops itself (nothing in it is kept).
    Sync,
}

/// One step of a container's creation in the guest, and its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub micros: u64,
}

/// eth0 of a VM restored from a template: its MAC, address and gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetIdentity {
    pub mac: [u8; 6],
    pub address: std::net::Ipv4Addr,
    pub prefix: u8,
    #[serde(default)]
    pub gateway: Option<std::net::Ipv4Addr>,
}

/// Resource usage from a container's cgroup (v2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Stats {
    /// memory.current, bytes.
    pub memory_current: u64,
    /// memory.max, bytes; None = no limit.
    pub memory_max: Option<u64>,
    /// usage_usec from cpu.stat.
    pub cpu_usage_usec: u64,
    /// pids.current.
    pub pids_current: u64,
    /// pids.max; None = no limit.
    pub pids_max: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    Ok,
    /// The container is created; what each step took (the host's
    /// `HUSK_TIMINGS` prints them).
    Created {
        steps: Vec<Step>,
    },
    Hello {
        version: u32,
        agent: String,
    },
    Stats {
        stats: Stats,
    },
    Pids {
        pids: Vec<i32>,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// A container's process or an exec'd process ended. Sent after its
    /// output streams' last data and their end-of-stream frames.
    Exited {
        id: String,
        #[serde(default)]
        exec_id: Option<String>,
        stream: u32,
        status: ExitStatus,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Request {
        seq: u64,
        request: Request,
    },
    Response {
        seq: u64,
        response: Response,
    },
    Event(Event),
    /// Host to guest. An empty `data` closes the process's stdin.
    Stdin {
        stream: u32,
        data: Vec<u8>,
    },
    /// Guest to host. An empty `data` is the end of that output.
    Stdout {
        stream: u32,
        data: Vec<u8>,
    },
    Stderr {
        stream: u32,
        data: Vec<u8>,
    },
}

#[derive(Serialize, Deserialize)]
struct Sequenced<T> {
    seq: u64,
    #[serde(flatten)]
    body: T,
}

/// Just the sequence number, to answer a request whose body is bad.
#[derive(Deserialize)]
struct SeqOnly {
    seq: Option<u64>,
}

impl Frame {
    /// The frame's bytes, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; 4];
        let json = |out: &mut Vec<u8>, kind, v: serde_json::Result<Vec<u8>>| {
            out.push(kind);
            // Serializing these plain data types cannot fail.
            out.extend(v.unwrap_or_default());
        };
        match self {
            Frame::Request { seq, request } => json(
                &mut out,
                KIND_REQUEST,
                serde_json::to_vec(&Sequenced {
                    seq: *seq,
                    body: request,
                }),
            ),
            Frame::Response { seq, response } => json(
                &mut out,
                KIND_RESPONSE,
                serde_json::to_vec(&Sequenced {
                    seq: *seq,
                    body: response,
                }),
            ),
            Frame::Event(e) => json(&mut out, KIND_EVENT, serde_json::to_vec(e)),
            Frame::Stdin { stream, data } => data_frame(&mut out, KIND_STDIN, *stream, data),
            Frame::Stdout { stream, data } => data_frame(&mut out, KIND_STDOUT, *stream, data),
            Frame::Stderr { stream, data } => data_frame(&mut out, KIND_STDERR, *stream, data),
        }
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        out
    }

    /// Parses one frame body (kind byte first, no length prefix).
    pub fn decode(body: &[u8]) -> Result<Frame, Error> {
        let (&kind, rest) = body.split_first().ok_or(Error::Empty)?;
        let bad = |what, seq, message: String| Error::Body { what, seq, message };
        match kind {
            KIND_REQUEST | KIND_RESPONSE => {
                let what = if kind == KIND_REQUEST {
                    "request"
                } else {
                    "response"
                };
                let seq = serde_json::from_slice::<SeqOnly>(rest)
                    .ok()
                    .and_then(|s| s.seq);
                if kind == KIND_REQUEST {
                    serde_json::from_slice::<Sequenced<Request>>(rest)
                        .map(|s| Frame::Request {
                            seq: s.seq,
                            request: s.body,
                        })
                        .map_err(|e| bad(what, seq, e.to_string()))
                } else {
                    serde_json::from_slice::<Sequenced<Response>>(rest)
                        .map(|s| Frame::Response {
                            seq: s.seq,
                            response: s.body,
                        })
                        .map_err(|e| bad(what, seq, e.to_string()))
                }
            }
            KIND_EVENT => serde_json::from_slice(rest)
                .map(Frame::Event)
                .map_err(|e| bad("event", None, e.to_string())),
            KIND_STDIN | KIND_STDOUT | KIND_STDERR => {
                if rest.len() < 4 {
                    return Err(bad(
                        "stream frame",
                        None,
                        "shorter than its stream id".into(),
                    ));
                }
                let stream = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let data = rest[4..].to_vec();
                Ok(match kind {
                    KIND_STDIN => Frame::Stdin { stream, data },
                    KIND_STDOUT => Frame::Stdout { stream, data },
                    _ => Frame::Stderr { stream, data },
                })
            }
            k => Err(bad("frame", None, format!("unknown kind {k}"))),
        }
    }
}

fn data_frame(out: &mut Vec<u8>, kind: u8, stream: u32, data: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(data);
}

/// Splits a byte stream into frames, for readers that get bytes in
/// arbitrary pieces (a non-blocking socket).
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed. A
    /// recoverable error consumes its frame; after any other the stream is
    /// out of step and must be dropped.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, Error> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(Error::TooLarge(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let result = Frame::decode(&self.buf[4..4 + len]);
        self.buf.drain(..4 + len);
        result.map(Some)
    }
}

/// Reads one frame from a blocking reader; `Ok(None)` at a clean end of
/// stream between frames.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, Error> {
    let mut len = [0u8; 4];
    // Only an end between frames is a clean end; one inside the length
    // prefix is a broken connection, as one inside the body is.
    let mut got = 0;
    while got < len.len() {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(Error::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Frame::decode(&body).map(Some)
}

pub fn write_frame(w: &mut impl Write, frame: &Frame) -> Result<(), Error> {
    w.write_all(&frame.encode())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_end_inside_the_length_prefix_is_an_error() {
        assert!(read_frame(&mut &[][..]).unwrap().is_none());
        assert!(read_frame(&mut &[0u8, 0][..]).is_err());
    }

    #[test]
    fn a_typed_process_survives_a_round_trip() {
        let f = Frame::Request {
            seq: 1,
            request: Request::Exec {
                id: "c".into(),
                exec_id: "e".into(),
                process: Box::new(
                    serde_json::from_value(serde_json::json!({
                        "cwd": "/",
                        "user": {"uid": 1, "gid": 2},
                        "args": ["sh"],
                        "rlimits": [{"type": "RLIMIT_CPU", "hard": 1, "soft": 1}],
                        "oomScoreAdj": -17
                    }))
                    .unwrap(),
                ),
                stdio: StdioSpec {
                    stream: 2,
                    tty: false,
                    stdin: false,
                },
            },
        };
        let again = Frame::decode(&f.encode()[4..]).unwrap();
        assert_eq!(again, f);
    }

    fn round_trip(f: Frame) {
        let bytes = f.encode();
        let mut d = Decoder::default();
        // Byte by byte: the decoder must not depend on how reads split.
        let mut got = None;
        for b in &bytes {
            d.push(std::slice::from_ref(b));
            if let Some(frame) = d.next_frame().unwrap() {
                got = Some(frame);
            }
        }
        assert_eq!(got.as_ref(), Some(&f));
        assert_eq!(read_frame(&mut &bytes[..]).unwrap(), Some(f));
    }

    #[test]
    fn files_volumes_take_plain_names_and_little_content() {
        let files = |name: &str, len: usize| BTreeMap::from([(name.to_string(), "x".repeat(len))]);
        assert!(VolumeSource::check_files(&files("resolv.conf", 100)).is_ok());
        for bad in ["", ".", "..", "../x", "a/b", "a\0"] {
            assert!(
                VolumeSource::check_files(&files(bad, 1)).is_err(),
                "{bad:?}"
            );
        }
        assert!(VolumeSource::check_files(&files("big", MAX_FILES_BYTES + 1)).is_err());
    }

    #[test]
    fn every_frame_kind_round_trips() {
        round_trip(Frame::Request {
            seq: 7,
            request: Request::CreateContainer {
                id: "c1".into(),
                spec: Box::new(crate::spec::default_spec(vec!["sh".into()])),
                rootfs: RootfsSpec::Image {
                    disk: "image".into(),
                    fs_type: "erofs".into(),
                    scratch_disk: None,
                },
                volumes: vec![
                    VolumeSpec {
                        source: VolumeSource::Disk {
                            serial: "volume0".into(),
                            fs_type: "ext4".into(),
                        },
                        mount_point: "/run/husk/volumes/0".into(),
                        read_only: true,
                    },
                    VolumeSpec {
                        source: VolumeSource::Shared { tag: "vol1".into() },
                        mount_point: "/run/husk/volumes/1".into(),
                        read_only: false,
                    },
                    VolumeSpec {
                        source: VolumeSource::Files {
                            files: [("hosts".to_string(), "127.0.0.1 localhost\n".to_string())]
                                .into(),
                        },
                        mount_point: "/run/husk/etc".into(),
                        read_only: false,
                    },
                ],
                stdio: StdioSpec {
                    stream: 1,
                    tty: false,
                    stdin: true,
                },
            },
        });
        round_trip(Frame::Request {
            seq: 8,
            request: Request::Shutdown,
        });
        round_trip(Frame::Request {
            seq: 8,
            request: Request::Sync,
        });
        round_trip(Frame::Response {
            seq: 9,
            response: Response::Created {
                steps: vec![Step {
                    name: "mount_image".into(),
                    micros: 1234,
                }],
            },
        });
        round_trip(Frame::Request {
            seq: 9,
            request: Request::CreateContainer {
                id: "c2".into(),
                spec: Box::new(crate::spec::default_spec(vec!["sh".into()])),
                rootfs: RootfsSpec::Shared { tag: "root".into() },
                volumes: Vec::new(),
                stdio: StdioSpec {
                    stream: 1,
                    tty: false,
                    stdin: false,
                },
            },
        });
        round_trip(Frame::Response {
            seq: 8,
            response: Response::Stats {
                stats: Stats {
                    memory_current: 1,
                    memory_max: Some(2),
                    ..Stats::default()
                },
            },
        });
        round_trip(Frame::Event(Event::Exited {
            id: "c1".into(),
            exec_id: None,
            stream: 1,
            status: ExitStatus::Signal(9),
        }));
        round_trip(Frame::Stdin {
            stream: 3,
            data: b"abc".to_vec(),
        });
        round_trip(Frame::Stdout {
            stream: 3,
            data: vec![],
        });
        round_trip(Frame::Stderr {
            stream: u32::MAX,
            data: vec![0; 100],
        });
    }

    #[test]
    fn the_wire_format_is_the_documented_one() {
        let f = Frame::Request {
            seq: 1,
            request: Request::Hello { version: 1 },
        };
        let b = f.encode();
        assert_eq!(&b[..5], &[0, 0, 0, (b.len() - 4) as u8, 1]);
        assert_eq!(&b[5..], br#"{"seq":1,"op":"hello","version":1}"#);
        let s = Frame::Stdout {
            stream: 2,
            data: b"hi".to_vec(),
        };
        assert_eq!(s.encode(), [0, 0, 0, 7, 5, 0, 0, 0, 2, b'h', b'i']);
    }

    #[test]
    fn a_bad_body_is_reported_with_its_seq_and_the_stream_stays_in_step() {
        let mut d = Decoder::default();
        let body = br#"{"seq":5,"op":"launch_missiles"}"#;
        d.push(&((body.len() + 1) as u32).to_be_bytes());
        d.push(&[KIND_REQUEST]);
        d.push(body);
        d.push(
            &Frame::Request {
                seq: 6,
                request: Request::Shutdown,
            }
            .encode(),
        );
        match d.next_frame() {
            Err(e @ Error::Body { seq: Some(5), .. }) => assert!(e.is_recoverable()),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            d.next_frame().unwrap(),
            Some(Frame::Request { seq: 6, .. })
        ));
        assert!(d.next_frame().unwrap().is_none());
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        for body in [
            &[][..],
            &[9][..],
            &[KIND_STDOUT, 0, 0][..],
            &[KIND_EVENT, b'{'][..],
            &[KIND_RESPONSE, b'[', b']'][..],
        ] {
            assert!(Frame::decode(body).is_err(), "{body:?}");
        }
        let mut d = Decoder::default();
        d.push(&u32::MAX.to_be_bytes());
        let e = d.next_frame().unwrap_err();
        assert!(!e.is_recoverable());
        assert!(read_frame(&mut &[0u8, 0][..]).is_err());
    }

    #[test]
    fn a_guest_sent_signal_number_cannot_overflow_the_status() {
        let f = Frame::Event(Event::Exited {
            id: "c".into(),
            exec_id: None,
            stream: 1,
            status: ExitStatus::Signal(i32::MAX),
        });
        let Frame::Event(Event::Exited { status, .. }) = Frame::decode(&f.encode()[4..]).unwrap()
        else {
            panic!("not an exit event");
        };
        assert_eq!(status.shell_status(), 255);
    }
}
