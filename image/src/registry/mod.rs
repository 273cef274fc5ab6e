//! Registries (OCI distribution v2) on `oci-client`: names as Docker reads
//! them, credentials from the usual auth files, TLS with the system roots
//! plus a private CA, plain HTTP only for registries named insecure.
//! Every error is one line that starts with the registry's name.

pub mod auth;
mod pull;
mod push;

use std::path::PathBuf;
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::Error;

pub use pull::{pull, Event, Pulled};
pub use push::{push, Pushed};

/// How to reach registries.
#[derive(Clone, Debug)]
pub struct Options {
    /// Registries (`host[:port]`) spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Extra CA certificates (PEM files) trusted beside the system's.
    pub tls_ca: Vec<PathBuf>,
    /// An auth file to use instead of the usual search.
    pub auth_file: Option<PathBuf>,
    /// Blobs downloaded at once.
    pub parallel: usize,
    /// Attempts per blob before a broken connection is an error.
    pub attempts: u32,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            insecure: Vec::new(),
            tls_ca: Vec::new(),
            auth_file: None,
            parallel: 3,
            attempts: 5,
        }
    }
}

/// Parses an image name as Docker does: `debian` is
/// `docker.io/library/debian:latest`.
pub fn parse_reference(name: &str) -> Result<Reference, Error> {
    name.parse::<Reference>().map_err(|e| Error::BadReference {
        reference: name.to_string(),
        reason: e.to_string(),
    })
}

/// True if `arg` reads as an image reference rather than a path: paths
/// start with `/` or `.`, or end with `.tar`.
pub fn looks_like_reference(arg: &str) -> bool {
    !(arg.starts_with('/') || arg.starts_with('.') || arg.ends_with(".tar"))
        && parse_reference(arg).is_ok()
}

/// Checks `user` and `password` against `server` (`host[:port]`): a
/// token registry issues a token only for right credentials; a registry
/// with basic auth is asked for its catalog with them.
pub fn login(server: &str, user: &str, password: &str, options: &Options) -> Result<(), Error> {
    let reference = parse_reference(&format!("{server}/husk/login-check"))?;
    let mut session = Session::new(&reference, options)?;
    session.auth = RegistryAuth::Basic(user.to_string(), password.to_string());
    session.auth_from = Some("the login".to_string());
    runtime()?.block_on(async {
        let token = session
            .client
            .auth(
                &reference,
                &session.auth,
                oci_client::RegistryOperation::Pull,
            )
            .await
            .map_err(|e| session.error("login", e))?;
        if token.is_some() {
            return Ok(());
        }
        match session
            .client
            .catalog(&reference, &session.auth, Some(1), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e @ OciDistributionError::UnauthorizedError { .. }) => {
                Err(session.error("login", e))
            }
            // A registry without a catalog: the credentials are checked
            // at the first pull.
            Err(e) => {
                log::warn!(
                    "registry {server}: cannot check the login: {}",
                    one_line(&e)
                );
                Ok(())
            }
        }
    })
}

/// A runtime for one command's requests: one thread is enough, the
/// downloads wait on the network, not on each other.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))
}

/// A connection to one registry: the client and the credentials for it.
pub(crate) struct Session {
    pub client: Client,
    pub auth: RegistryAuth,
    /// Where the credentials came from (for "wrong password" messages).
    pub auth_from: Option<String>,
    pub registry: String,
}

impl Session {
    pub fn new(reference: &Reference, options: &Options) -> Result<Session, Error> {
        let registry = reference.resolve_registry().to_string();
        let fail = |reason: String| Error::Registry {
            registry: registry.clone(),
            reason,
        };
        let mut certs = Vec::new();
        for path in &options.tls_ca {
            let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            certs.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let config = |extra: Vec<Certificate>| ClientConfig {
            protocol: ClientProtocol::HttpsExcept(options.insecure.clone()),
            extra_root_certificates: extra,
            platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
            connect_timeout: Some(Duration::from_secs(15)),
            // A registry that stops sending mid-blob is a broken
            // connection, retried from where it stopped.
            read_timeout: Some(Duration::from_secs(60)),
            ..ClientConfig::default()
        };
        // Without system roots reqwest cannot build a client, and
        // oci-client 0.18 panics then (its struct update makes a default
        // reqwest client) even when it was given a CA: so look first.
        if rustls_native_certs::load_native_certs().certs.is_empty() {
            return Err(fail(
                "no CA certificates on this system to check TLS with \
                 (apt-get install ca-certificates)"
                    .into(),
            ));
        }
        let client = Client::try_from(config(certs)).map_err(|e| fail(one_line(&e)))?;
        let files = auth::auth_files(options.auth_file.as_deref());
        let found = auth::lookup(reference.registry(), &files)?;
        let (auth, auth_from) = match found {
            Some(c) => (RegistryAuth::Basic(c.user, c.password), Some(c.from)),
            None => (RegistryAuth::Anonymous, None),
        };
        Ok(Session {
            client,
            auth,
            auth_from,
            registry,
        })
    }

    /// The one-line error for what the client returned, naming the
    /// registry and, where it helps, what to do.
    pub fn error(&self, what: &str, err: OciDistributionError) -> Error {
        let reason = match &err {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => self.denied(),
            OciDistributionError::ImageManifestNotFoundError(_) => format!("{what}: not found"),
            OciDistributionError::RequestError(e)
                if e.status()
                    .is_some_and(|s| s.as_u16() == 401 || s.as_u16() == 403) =>
            {
                self.denied()
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let unknown = codes.iter().any(|c| {
                    matches!(c, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown)
                });
                let denied = codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied));
                if denied {
                    self.denied()
                } else if unknown {
                    format!("{what}: not found")
                } else {
                    let said: Vec<String> = envelope.errors.iter().map(|e| e.to_string()).collect();
                    format!("{what}: {}", said.join("; "))
                }
            }
            _ => format!("{what}: {}", one_line(&err)),
        };
        Error::Registry {
            registry: self.registry.clone(),
            reason,
        }
    }

    fn denied(&self) -> String {
        match &self.auth_from {
            Some(from) => format!("access denied: wrong user name or password (from {from})"),
            None => format!(
                "access denied: the registry wants a login (husk login {})",
                self.registry
            ),
        }
    }
}

/// An error and its causes on one line: reqwest puts the useful part
/// ("invalid peer certificate: UnknownIssuer", "Connection refused") in
/// the sources.
pub(crate) fn one_line(err: &dyn std::error::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ").replace('\n', " ")
}

/// Whether a failed request is worth repeating: the connection broke or
/// timed out, or the server had a transient failure.
pub(crate) fn transient(err: &OciDistributionError) -> bool {
    match err {
        OciDistributionError::RequestError(e) => {
            e.is_connect() || e.is_timeout() || e.is_body() || e.is_request() || e.is_decode()
        }
        OciDistributionError::IoError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_docker_reads_them() {
        let r = parse_reference("debian").unwrap();
        assert_eq!(r.whole(), "docker.io/library/debian:latest");
        assert_eq!(r.resolve_registry(), "index.docker.io");
        let r = parse_reference("127.0.0.1:5000/husk/test:1").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("127.0.0.1:5000", "husk/test", Some("1"))
        );
        assert!(parse_reference("has space").is_err());
        assert!(parse_reference("x@sha256:zz").is_err());
        assert!(looks_like_reference("debian:12"));
        assert!(looks_like_reference("localhost:5000/x"));
        for path in ["/tmp/x", "./x", "../x", "alpine.tar"] {
            assert!(!looks_like_reference(path), "{path}");
        }
    }
}
