//! Test helpers: a small blocking HTTP/1.1 client over a Unix socket, and a
//! fake VMM that answers API requests from its own thread.

#![allow(dead_code)] // Each test binary uses a part.

use husk_api::model::*;
use husk_api::{ApiRequest, EventFd, Reply, Request, Response};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Duration;

/// One HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body {:?}: {e}", String::from_utf8_lossy(&self.body)))
    }

    pub fn fault_message(&self) -> String {
        self.json()["fault_message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fault_message in {self:?}"))
            .to_owned()
    }
}

/// A keep-alive HTTP/1.1 client on one Unix socket connection.
pub struct Client {
    reader: BufReader<UnixStream>,
}

impl Client {
    pub fn connect(path: &Path) -> io::Result<Client> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(Client {
            reader: BufReader::new(stream),
        })
    }

    pub fn stream(&self) -> &UnixStream {
        self.reader.get_ref()
    }

    /// Sends raw bytes (write errors are ignored: the server may close
    /// early, and what it answered is still to be read).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.reader.get_mut().write_all(bytes);
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> io::Result<HttpResponse> {
        self.send_raw(&encode(method, path, body));
        self.read_response()
    }

    /// Reads one response: status line, headers, then a Content-Length body.
    pub fn read_response(&mut self) -> io::Result<HttpResponse> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, line.clone()))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (n, v) = l
                .split_once(':')
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, l.to_owned()))?;
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
        let mut response = HttpResponse {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = response
            .header("content-length")
            .map(|v| v.parse().unwrap())
            .unwrap_or(0);
        response.body.resize(len, 0);
        self.reader.read_exact(&mut response.body)?;
        Ok(response)
    }

    /// True once the server has closed the connection (read sees EOF or
    /// an error).
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte), Ok(0) | Err(_))
    }
}

pub fn encode(method: &str, path: &str, body: Option<&str>) -> Vec<u8> {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    if let Some(body) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    req.into_bytes()
}

/// One request on a connection of its own.
pub fn request(path: &Path, method: &str, uri: &str, body: Option<&str>) -> HttpResponse {
    Client::connect(path)
        .and_then(|mut c| c.request(method, uri, body))
        .unwrap_or_else(|e| panic!("{method} {uri}: {e}"))
}

/// A VMM stand-in: wakes on the eventfd, drains the channel, answers.
pub struct FakeVmm {
    wake: EventFd,
    thread: Option<JoinHandle<usize>>,
}

/// The channel and eventfd to give `husk_api::start`.
pub struct VmmEnd {
    pub to_vmm: Sender<ApiRequest>,
    pub wake: EventFd,
}

impl FakeVmm {
    /// Answers with [`answer`]; `hold` requests (PUT /metrics with
    /// `metrics_path: "hold"`) are kept unanswered until the next request
    /// of another kind, and "drop" ones are dropped unanswered.
    pub fn spawn() -> (FakeVmm, VmmEnd) {
        let (to_vmm, rx) = mpsc::channel();
        let wake = EventFd::new(0).unwrap();
        let vmm_wake = wake.try_clone().unwrap();
        let thread = std::thread::spawn(move || run(rx, vmm_wake));
        (
            FakeVmm {
                wake: wake.try_clone().unwrap(),
                thread: Some(thread),
            },
            VmmEnd { to_vmm, wake },
        )
    }

    /// Waits for the fake VMM to see the channel closed (after the
    /// server's shutdown); returns how many requests it handled.
    pub fn join(mut self) -> usize {
        self.wake.write(1).unwrap();
        self.thread.take().unwrap().join().unwrap()
    }
}

fn run(rx: Receiver<ApiRequest>, wake: EventFd) -> usize {
    let mut handled = 0;
    let mut held: Vec<Reply> = Vec::new();
    loop {
        wake.read().unwrap();
        loop {
            match rx.try_recv() {
                Ok(ApiRequest { request, reply }) => {
                    handled += 1;
                    match &request {
                        Request::PutMetrics(m) if m.metrics_path == "hold" => held.push(reply),
                        Request::PutMetrics(m) if m.metrics_path == "drop" => drop(reply),
                        _ => {
                            let _ = reply.send(answer(&request));
                            for r in held.drain(..) {
                                let _ = r.send(Response::NoContent);
                            }
                        }
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return handled,
            }
        }
    }
}

/// What the fake VMM answers.
pub fn answer(request: &Request) -> Response {
    match request {
        Request::GetInstanceInfo => Response::json(&InstanceInfo {
            id: "test".into(),
            state: InstanceState::NotStarted,
            vmm_version: "0.1.0".into(),
            app_name: "husk".into(),
        }),
        Request::GetVersion => Response::json(&VersionInfo {
            firecracker_version: "0.1.0".into(),
        }),
        Request::GetMachineConfig => Response::json(&MachineConfig::default()),
        Request::GetVmConfig => Response::json(&VmConfigFile::default()),
        Request::Action(ActionType::SendCtrlAltDel) => {
            Response::BadRequest("the VM is not running".into())
        }
        _ => Response::NoContent,
    }
}

/// Entries of a /proc/self directory (fd, task).
pub fn count(dir: &str) -> usize {
    std::fs::read_dir(format!("/proc/self/{dir}"))
        .unwrap()
        .count()
}
