//! The API thread: an HTTP/1.1 server (hyper) on a tokio current-thread
//! runtime, one task per connection, handing parsed requests to the VMM.

use crate::request::{route_request, Request};
use crate::response::Response;
use crate::socket::{self, FileId};
use crate::Error;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_LENGTH;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::{poll_fn, Future};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::{oneshot, Semaphore};
use vmm_sys_util::eventfd::EventFd;

/// The fault message when the VMM cannot take or did not answer a request.
const VMM_GONE: &str = "the VMM is not running: the request was not carried out";

/// Largest request line + headers taken.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Limits of the server. [`Options::default`] is what [`start`] uses.
#[derive(Debug, Clone)]
pub struct Options {
    /// Largest request body taken (413 beyond).
    pub max_body_bytes: usize,
    /// Time a client has to send a request's headers, counted from when
    /// the connection opens or the previous answer on it was sent (so it
    /// also closes idle keep-alive connections).
    pub header_read_timeout: Duration,
    /// Time a client has to send a request's body once its headers are in
    /// (408 beyond).
    pub body_read_timeout: Duration,
    /// Time the VMM has to answer a request (504 beyond).
    pub reply_timeout: Duration,
    /// Connections open at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// Run first on the server's thread, before it takes a connection
    /// (the VMM installs the thread's seccomp filter); an error stops the
    /// server from starting.
    pub thread_setup: Option<ThreadSetup>,
}

/// See [`Options::thread_setup`].
#[derive(Clone)]
pub struct ThreadSetup(pub std::sync::Arc<dyn Fn() -> Result<(), String> + Send + Sync>);

impl std::fmt::Debug for ThreadSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ThreadSetup")
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_body_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            reply_timeout: Duration::from_secs(30),
            max_connections: 64,
            thread_setup: None,
        }
    }
}

/// A request on its way to the VMM, with the way back.
#[derive(Debug)]
pub struct ApiRequest {
    /// What the client asked for.
    pub request: Request,
    /// Where the answer goes.
    pub reply: Reply,
}

impl ApiRequest {
    /// A request outside the server (for the VMM's own tests): the
    /// [`PendingReply`] receives what the handler sends.
    pub fn new(request: Request) -> (ApiRequest, PendingReply) {
        let (tx, rx) = oneshot::channel();
        (
            ApiRequest {
                request,
                reply: Reply(tx),
            },
            PendingReply(rx),
        )
    }
}

/// The sending end of a request's answer. Send exactly one [`Response`];
/// dropping it unanswered makes the client get a 400 saying the VMM is not
/// running.
#[derive(Debug)]
pub struct Reply(oneshot::Sender<Response>);

impl Reply {
    /// Sends the answer. Never blocks. `Err` gives the response back when
    /// the client is gone (disconnected, timed out, server shut down).
    pub fn send(self, response: Response) -> Result<(), Response> {
        self.0.send(response)
    }

    /// Whether nobody waits for the answer any more: the client was told
    /// the VMM did not answer in time (504), or went away. The VMM drops
    /// such a request instead of carrying it out late, when its client
    /// believes it failed.
    pub fn is_abandoned(&self) -> bool {
        self.0.is_closed()
    }
}

/// The receiving end made by [`ApiRequest::new`].
#[derive(Debug)]
pub struct PendingReply(oneshot::Receiver<Response>);

impl PendingReply {
    /// The answer, if one was sent; `None` if the [`Reply`] was dropped or
    /// has not been used yet.
    pub fn try_recv(&mut self) -> Option<Response> {
        self.0.try_recv().ok()
    }

    /// Blocks until the answer is sent (`None`: the [`Reply`] was dropped).
    /// Do not call from inside an async runtime.
    pub fn wait(self) -> Option<Response> {
        self.0.blocking_recv().ok()
    }
}

/// A running API server. Dropping it shuts it down like [`ApiServer::shutdown`].
#[derive(Debug)]
pub struct ApiServer {
    path: PathBuf,
    file_id: FileId,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// The socket's path.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, closes every connection (requests waiting for the
    /// VMM are dropped: their [`Reply::send`] fails), joins the thread and
    /// removes the socket file (if it is still this server's).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        // Unlink first: from here on nobody can connect.
        socket::remove(&self.path, self.file_id);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the API server thread panicked");
            }
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What every connection task needs.
struct Shared {
    to_vmm: Sender<ApiRequest>,
    wake: EventFd,
    options: Options,
}

/// Starts the API server on `socket` with [`Options::default`]. Every
/// request that parses is sent on `to_vmm`, then `wake` is written (1), and
/// the client gets the [`Response`] the VMM sends back on the request's
/// [`Reply`]. Returns once the socket is listening: a client may connect as
/// soon as this returns.
pub fn start(socket: &Path, to_vmm: Sender<ApiRequest>, wake: EventFd) -> Result<ApiServer, Error> {
    start_with(socket, to_vmm, wake, Options::default())
}

/// [`start`] with explicit limits.
pub fn start_with(
    socket: &Path,
    to_vmm: Sender<ApiRequest>,
    wake: EventFd,
    options: Options,
) -> Result<ApiServer, Error> {
    let (listener, file_id) = socket::bind(socket)?;
    // From here on, a failure must not leave the socket file behind.
    let cleanup = |err: Error| {
        socket::remove(socket, file_id);
        err
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| cleanup(Error::Runtime(e)))?;
    let listener = listener
        .set_nonblocking(true)
        .and_then(|()| {
            let _context = runtime.enter();
            UnixListener::from_std(listener)
        })
        .map_err(|e| cleanup(Error::Runtime(e)))?;
    let shared = Arc::new(Shared {
        to_vmm,
        wake,
        options,
    });
    let (stop_tx, stop_rx) = oneshot::channel();
    let setup = shared.options.thread_setup.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("husk-api".into())
        .spawn(move || {
            let ready = setup.map_or(Ok(()), |s| (s.0)());
            let go = ready.is_ok();
            let _ = ready_tx.send(ready);
            if go {
                runtime.block_on(serve(listener, stop_rx, shared));
            }
            // Dropping the runtime here cancels every connection task and
            // closes its socket.
        })
        .map_err(|e| cleanup(Error::Thread(e)))?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(why)) => {
            let _ = thread.join();
            return Err(cleanup(Error::Setup(why)));
        }
        Err(_) => {
            let _ = thread.join();
            return Err(cleanup(Error::Setup("the API thread died".into())));
        }
    }
    Ok(ApiServer {
        path: socket.to_owned(),
        file_id,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// The accept loop, until `stop` fires (or its sender is dropped).
async fn serve(listener: UnixListener, mut stop: oneshot::Receiver<()>, shared: Arc<Shared>) {
    let permits = Arc::new(Semaphore::new(shared.options.max_connections));
    // Set when the server ends: connections then close gracefully (see
    // `until_closed`), and a request still waiting for the VMM is dropped.
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(shared.options.header_read_timeout)
        // Request line and headers: 431 beyond.
        .max_header_size(MAX_HEADER_BYTES)
        // What hyper buffers per connection (its minimum is 8 KiB).
        .max_buf_size(64 * 1024);
    loop {
        let accepted = poll_fn(|cx| {
            if Pin::new(&mut stop).poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            listener.poll_accept(cx).map(Some)
        })
        .await;
        let stream = match accepted {
            None => break,
            Some(Ok((stream, _))) => stream,
            Some(Err(e)) => {
                // Out of fds, most likely: let some connections end.
                log::warn!("API socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            log::warn!(
                "API connection refused: {} connections are open",
                shared.options.max_connections
            );
            continue;
        };
        let shared = shared.clone();
        let for_requests = closing.clone();
        let connection = http.serve_connection(
            TokioIo::new(stream),
            service_fn(move |request| {
                let shared = shared.clone();
                let closing = for_requests.clone();
                async move {
                    let answered = answer(&shared, request);
                    unless_closed(answered, closing)
                        .await
                        .map(Response::into_http)
                }
            }),
        );
        let closing = closing.clone();
        tokio::spawn(async move {
            if let Err(e) = until_closed(connection, closing).await {
                log::debug!("API connection ended: {e}");
            }
            drop(permit);
        });
    }
    // A response the VMM has already given (a SendCtrlAltDel that ended
    // the guest, say) is written before the runtime goes: each connection
    // finishes writing, idle ones close at once, and a request still
    // waiting for the VMM is dropped unanswered. Bounded, for a client
    // that does not read.
    let _ = closing_tx.send(true);
    let all = u32::try_from(shared.options.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(CLOSING_GRACE, permits.acquire_many(all)).await;
}

/// The server is ending: a request's answer is not given (hyper closes
/// the connection without one, as before a graceful end existed).
#[derive(Debug)]
struct Closing;

impl std::fmt::Display for Closing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the API server is closing")
    }
}

impl std::error::Error for Closing {}

/// Resolves when `closing` says the server ends (at once if it has).
async fn closed(mut closing: tokio::sync::watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

/// What `work` gives, or `None` if the server ends first (`work` is left
/// where it stood, for the caller to finish or drop).
async fn unless_closing<F: Future + ?Sized>(
    mut work: Pin<&mut F>,
    closing: tokio::sync::watch::Receiver<bool>,
) -> Option<F::Output> {
    let mut closed = std::pin::pin!(closed(closing));
    poll_fn(|cx| {
        if let Poll::Ready(r) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        closed.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// `answered`, unless the server ends first.
async fn unless_closed(
    answered: impl std::future::Future<Output = Response>,
    closing: tokio::sync::watch::Receiver<bool>,
) -> Result<Response, Closing> {
    let answered = std::pin::pin!(answered);
    unless_closing(answered, closing).await.ok_or(Closing)
}

/// How long the server's end waits for connections to finish.
const CLOSING_GRACE: Duration = Duration::from_secs(1);

/// Serves `connection` until it ends or `closing` is set; then lets it
/// finish what it is writing (hyper's graceful shutdown) and close.
async fn until_closed<C: std::future::Future<Output = hyper::Result<()>> + GracefulConnection>(
    connection: C,
    closing: tokio::sync::watch::Receiver<bool>,
) -> hyper::Result<()> {
    let mut connection = std::pin::pin!(connection);
    match unless_closing(connection.as_mut(), closing).await {
        Some(r) => r,
        None => {
            connection.as_mut().shut_down_gracefully();
            connection.await
        }
    }
}

/// hyper's HTTP/1 connection, as [`until_closed`] needs it.
trait GracefulConnection {
    fn shut_down_gracefully(self: Pin<&mut Self>);
}

impl<I, S> GracefulConnection for http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shut_down_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Answers one HTTP request.
async fn answer(shared: &Shared, request: hyper::Request<Incoming>) -> Response {
    let (parts, body) = request.into_parts();
    let method = parts.method.as_str();
    let path = parts.uri.path();
    // Route before reading the body: a 404/405 does not wait for it.
    let response = match route_request(method, path) {
        Err(response) => response,
        Ok(routed) => match read_body(shared, &parts.headers, body).await {
            Err(response) => response,
            Ok(body) => match routed.decode(&body) {
                Err(response) => response,
                Ok(request) => dispatch(shared, request).await,
            },
        },
    };
    log::debug!("API {method} {path}: {}", response.status());
    response
}

/// Reads the whole body, within the size and time limits.
async fn read_body(
    shared: &Shared,
    headers: &hyper::HeaderMap,
    body: Incoming,
) -> Result<Bytes, Response> {
    let limit = shared.options.max_body_bytes;
    let too_large =
        || Response::PayloadTooLarge(format!("the request body is larger than {limit} bytes"));
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let timeout = shared.options.body_read_timeout;
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(Response::RequestTimeout(format!(
            "the request body did not arrive within {} ms",
            timeout.as_millis()
        ))),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(Response::BadRequest(format!(
            "cannot read the request body: {e}"
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Hands `request` to the VMM and waits (without blocking the thread) for
/// its answer.
async fn dispatch(shared: &Shared, request: Request) -> Response {
    let (api_request, pending) = ApiRequest::new(request);
    if shared.to_vmm.send(api_request).is_err() {
        return Response::BadRequest(VMM_GONE.into());
    }
    if let Err(e) = shared.wake.write(1) {
        // Only fails if the counter is about to overflow, i.e. the VMM has
        // a wake-up pending anyway.
        log::warn!("cannot wake the VMM for an API request: {e}");
    }
    let timeout = shared.options.reply_timeout;
    match tokio::time::timeout(timeout, pending.0).await {
        Ok(Ok(response)) => response,
        Ok(Err(_)) => Response::BadRequest(VMM_GONE.into()),
        Err(_) => Response::VmmTimeout(format!(
            "the VMM did not answer within {} ms",
            timeout.as_millis()
        )),
    }
}
