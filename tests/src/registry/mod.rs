//! The real registry server (Debian's `docker-registry`, distribution v2)
//! on 127.0.0.1 for the tests: plain HTTP or TLS with a CA made for the
//! run, with or without htpasswd logins, its data in a directory of its own
//! so it can be killed and started again on the same port with the same
//! content. Plus a TCP relay in front of it that can slow the stream down
//! or change a byte of it, for the broken-connection and tampering tests.

pub mod token;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const PROGRAM: &str = "/usr/bin/docker-registry";
pub const SKOPEO: &str = "/usr/bin/skopeo";

/// How the registry is to be run.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    pub tls: bool,
    /// A user and password it requires (htpasswd, bcrypt).
    pub login: Option<(String, String)>,
    /// Ask for the login through a token server (Docker's token auth, as
    /// Docker Hub does) instead of HTTP basic auth.
    pub token: bool,
}

pub struct Registry {
    child: Option<Child>,
    dir: PathBuf,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    pub setup: Setup,
}

impl Registry {
    /// Starts one in `dir` (which it owns from now on) and waits until it
    /// answers.
    pub fn start(dir: &Path, setup: Setup) -> Registry {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.join("data").display()
        );
        if setup.tls {
            write_tls(dir);
            config += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.join("server.pem").display(),
                dir.join("server.key").display()
            );
        }
        if let (Some((user, password)), true) = (&setup.login, setup.token) {
            let cert = dir.join("token.pem");
            let realm = token::start(user, password, &cert);
            config += &format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                token::SERVICE,
                token::ISSUER,
                cert.display()
            );
        } else if let Some((user, password)) = &setup.login {
            let hash = bcrypt::hash(password, 5).unwrap();
            std::fs::write(dir.join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
            config += &format!(
                "auth:\n  htpasswd:\n    realm: husk-test\n    path: {}\n",
                dir.join("htpasswd").display()
            );
        }
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let mut registry = Registry {
            child: None,
            dir: dir.to_path_buf(),
            addr,
            setup,
        };
        registry.restart();
        registry
    }

    /// (Re)starts the server on the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::File::create(self.dir.join("registry.log")).unwrap();
        let child = Command::new(PROGRAM)
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {PROGRAM}: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry did not listen on {} in 20 s: {}",
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash or a pulled plug would end it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// The CA certificate (PEM) a TLS registry's certificate chains to.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A directory skopeo's `--cert-dir` reads the CA from.
    pub fn cert_dir(&self) -> PathBuf {
        self.dir.join("certs.d")
    }

    /// `skopeo copy` from `source` (e.g. `oci:DIR`) to `repo:tag` here.
    pub fn push_with_skopeo(&self, source: &str, repo_tag: &str) {
        let mut cmd = Command::new(SKOPEO);
        cmd.args(["--insecure-policy", "copy", "--quiet"]);
        if self.setup.tls {
            cmd.arg("--dest-cert-dir").arg(self.cert_dir());
        } else {
            cmd.arg("--dest-tls-verify=false");
        }
        if let Some((user, password)) = &self.setup.login {
            cmd.arg(format!("--dest-creds={user}:{password}"));
        }
        cmd.arg(source)
            .arg(format!("docker://{}/{repo_tag}", self.addr));
        let out = cmd.output().unwrap_or_else(|e| panic!("{SKOPEO}: {e}"));
        assert!(
            out.status.success(),
            "skopeo copy {source} → {repo_tag}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A test CA and a certificate for 127.0.0.1 and localhost signed by it.
fn write_tls(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "husk test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    std::fs::create_dir_all(dir.join("certs.d")).unwrap();
    std::fs::write(dir.join("certs.d/ca.crt"), ca_cert.pem()).unwrap();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What the relay does to the bytes coming back from the registry.
#[derive(Clone, Copy, Debug)]
pub enum Meddle {
    /// Pass them on at most this many bytes per second.
    Throttle(u64),
    /// Flip one bit of the first response body of at least this many
    /// bytes (a layer, not a manifest).
    Tamper(usize),
}

/// A TCP relay on 127.0.0.1 in front of a plain-HTTP registry.
pub struct Relay {
    pub addr: String,
    stop: Arc<AtomicBool>,
}

impl Relay {
    pub fn start(upstream: &str, meddle: Meddle) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let tampered = Arc::new(AtomicBool::new(false));
        let (upstream, stop2) = (upstream.to_string(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    // The registry is down: the client sees a broken connection.
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pump(c2, s2, None));
                let tampered = tampered.clone();
                std::thread::spawn(move || pump(server, client, Some((meddle, tampered))));
            }
        });
        Relay { addr, stop }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr);
    }
}

/// Copies `from` to `to` until either side closes, meddling on the way
/// back from the registry.
fn pump(mut from: TcpStream, mut to: TcpStream, meddle: Option<(Meddle, Arc<AtomicBool>)>) {
    let mut buf = vec![0u8; 16 << 10];
    let mut seen = 0usize;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match &meddle {
            Some((Meddle::Throttle(rate), _)) => {
                std::thread::sleep(Duration::from_secs_f64(n as f64 / *rate as f64));
            }
            // The body of a large response: past `min` bytes of this
            // connection's stream, well beyond its headers.
            Some((Meddle::Tamper(min), done))
                if seen + n > *min && !done.swap(true, Ordering::SeqCst) =>
            {
                let at = min.saturating_sub(seen).min(n - 1);
                buf[at] ^= 0x01;
            }
            _ => {}
        }
        seen += n;
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
