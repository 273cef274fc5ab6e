//! husk's control API: Firecracker's REST API, HTTP/1.1 on a Unix socket.
//!
//! How a request travels:
//!
//! 1. The VMM calls [`start`] with the socket path, the sending end of a
//!    channel of [`ApiRequest`]s and an [`EventFd`] its event loop watches.
//!    `start` binds the socket and returns; the server runs on its own
//!    thread (`husk-api`) and never touches VMM state.
//! 2. For each HTTP request the server routes the path, reads the body
//!    (bounded in size and time) and [`parse`]s it into a [`Request`].
//!    Anything that fails here is answered at once (400/404/405/408/413)
//!    without bothering the VMM.
//! 3. A parsed request is sent on the channel with a [`Reply`], and the
//!    eventfd is written so the VMM's event loop wakes up.
//! 4. The VMM reads the eventfd, drains the channel, carries out each
//!    request and sends one [`Response`] on its `reply` — never blocking:
//!    the server waits asynchronously, so other connections are served
//!    meanwhile.
//! 5. The server turns the response into HTTP: 204 for
//!    [`Response::NoContent`], 200 + JSON for [`Response::Json`], 400 +
//!    `{"fault_message": ...}` for [`Response::BadRequest`]. A reply dropped
//!    unanswered (VMM gone) becomes a 400 saying so; no answer within the
//!    reply timeout (30 s), a 504.
//!
//! The request and answer bodies are in [`model`], with Firecracker's field
//! names; `openapi.yaml` beside this crate documents every path.
//!
//! The VMM's side, in short:
//!
//! ```no_run
//! use husk_api::model::VersionInfo;
//! use husk_api::{start, ApiRequest, EventFd, Request, Response};
//! use std::sync::mpsc;
//! use vmm_sys_util::eventfd::EFD_NONBLOCK;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (to_vmm, from_api) = mpsc::channel::<ApiRequest>();
//! let wake = EventFd::new(EFD_NONBLOCK)?;
//! let server = start("/tmp/husk.sock".as_ref(), to_vmm, wake.try_clone()?)?;
//! // ... register `wake` with the event loop; when it is readable:
//! let _ = wake.read();
//! while let Ok(ApiRequest { request, reply }) = from_api.try_recv() {
//!     let response = match request {
//!         Request::GetVersion => Response::json(&VersionInfo {
//!             firecracker_version: env!("CARGO_PKG_VERSION").into(),
//!         }),
//!         Request::PutBootSource(_) => Response::NoContent,
//!         _ => Response::BadRequest("not supported yet".into()),
//!     };
//!     // Fails only if the client is gone; nothing to do then.
//!     let _ = reply.send(response);
//! }
//! // When the VMM exits:
//! server.shutdown();
//! # Ok(())
//! # }
//! ```
//!
//! Each request is sent before the eventfd is written, so no request is
//! missed if the VMM drains the channel with `try_recv` after every wake-up
//! (a wake-up may also find it empty: its request was drained by the
//! previous one).

pub mod model;
mod request;
mod response;
mod server;
mod socket;

pub use request::{parse, Request, Route, ROUTES};
pub use response::Response;
pub use server::{
    start, start_with, ApiRequest, ApiServer, Options, PendingReply, Reply, ThreadSetup,
};
pub use vmm_sys_util::eventfd::EventFd;

use std::io;
use std::path::PathBuf;

/// Why the API server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another process listens on the socket.
    #[error("API socket {0} is in use by a running process")]
    InUse(PathBuf),
    /// Something else than a socket is at the path; it is left alone.
    #[error("cannot use {0} as the API socket: a file that is not a socket is there")]
    NotASocket(PathBuf),
    /// The path could not be examined.
    #[error("cannot check the API socket path {path}: {err}")]
    Probe {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        err: io::Error,
    },
    /// A stale socket could not be removed.
    #[error("cannot remove the stale API socket {path}: {err}")]
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        err: io::Error,
    },
    /// bind() or listen() failed.
    #[error("cannot listen on the API socket {path}: {err}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        err: io::Error,
    },
    /// The async runtime could not be set up.
    #[error("cannot set up the API server's runtime: {0}")]
    Runtime(io::Error),
    /// The thread could not be spawned.
    #[error("cannot spawn the API server thread: {0}")]
    Thread(io::Error),
    /// [`Options::thread_setup`] failed.
    #[error("cannot set up the API server thread: {0}")]
    Setup(String),
}
