//! A minimal blocking HTTP/1.1 client over a Unix socket, the way
//! orchestrators talk to a Firecracker-compatible API; and a GET over TCP,
//! for servers in containers.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub struct Client {
    reader: BufReader<UnixStream>,
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl Client {
    pub fn connect(socket: &Path) -> std::io::Result<Client> {
        let s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client {
            reader: BufReader::new(s),
        })
    }

    /// Sends one request on the kept-alive connection and reads the reply.
    pub fn request(&mut self, method: &str, path: &str, body: &str) -> std::io::Result<Reply> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let s = self.reader.get_mut();
        s.write_all(head.as_bytes())?;
        s.write_all(body.as_bytes())?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body)?;
        Ok(Reply {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// One request on a fresh connection.
pub fn request(socket: &Path, method: &str, path: &str, body: &str) -> std::io::Result<Reply> {
    Client::connect(socket)?.request(method, path, body)
}

/// Waits until the API socket accepts connections.
pub fn wait_for_socket(socket: &Path, timeout: Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if UnixStream::connect(socket).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// A container's script: busybox httpd on port 80 serving [`SERVED`].
pub const HTTPD_SCRIPT: &str =
    "mkdir -p /www; echo served-by-the-vm >/www/index.html; exec httpd -f -p 80 -h /www";
/// What `GET /` answers from [`HTTPD_SCRIPT`] (the body's end).
pub const SERVED: &str = "served-by-the-vm\n";

/// The response to `GET /` at `addr`, retried for a minute while the
/// server comes up; or the last error.
pub fn get_tcp(addr: &str) -> Result<String, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = std::net::TcpStream::connect(addr).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        });
        let error = match attempt {
            Ok(body) if !body.is_empty() => return Ok(body),
            Ok(_) => "an empty answer".to_string(),
            Err(e) => e.to_string(),
        };
        if std::time::Instant::now() > deadline {
            return Err(format!("no HTTP answer from {addr}: {error}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
