//! A token server for the registry's `token` auth (Docker's token
//! protocol, the one Docker Hub speaks): it checks a user and password
//! given with HTTP basic auth and answers with a JWT (ES256, its
//! certificate in the `x5c` header) granting what the `scope` asked for.
//! The registry trusts it through `rootcertbundle`.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub const SERVICE: &str = "husk-test-registry";
pub const ISSUER: &str = "husk-test-issuer";

/// Starts the server on 127.0.0.1 (a thread, for the test's life) and
/// writes its certificate to `cert_pem`; returns its realm URL.
pub fn start(user: &str, password: &str, cert_pem: &Path) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "husk test token issuer");
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(cert_pem, cert.pem()).unwrap();
    let rng = ring::rand::SystemRandom::new();
    let signer =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng)
            .unwrap();
    let issuer = Arc::new(Issuer {
        signer,
        cert_der: cert.der().to_vec(),
        basic: format!("Basic {}", STANDARD.encode(format!("{user}:{password}"))),
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let realm = format!("http://{}/token", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let issuer = issuer.clone();
            std::thread::spawn(move || issuer.serve(conn));
        }
    });
    realm
}

struct Issuer {
    signer: EcdsaKeyPair,
    cert_der: Vec<u8>,
    basic: String,
}

impl Issuer {
    fn serve(&self, conn: TcpStream) {
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut first = String::new();
        if reader.read_line(&mut first).is_err() {
            return;
        }
        let mut authorized = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("authorization") && v.trim() == self.basic {
                    authorized = true;
                }
            }
        }
        let path = first.split(' ').nth(1).unwrap_or_default();
        let (status, body) = if authorized {
            let token = self.token(path);
            (
                "200 OK",
                format!(r#"{{"token":"{token}","access_token":"{token}","expires_in":300}}"#),
            )
        } else {
            (
                "401 Unauthorized",
                r#"{"details":"wrong or no credentials"}"#.to_string(),
            )
        };
        let _ = write!(
            &conn,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }

    /// A JWT granting every `scope=repository:NAME:ACTIONS` of the query.
    fn token(&self, path: &str) -> String {
        let query = path.split_once('?').map_or("", |(_, q)| q);
        let access: Vec<serde_json::Value> = query
            .split('&')
            .filter_map(|kv| kv.strip_prefix("scope="))
            .filter_map(|scope| {
                let scope = scope
                    .replace("%3A", ":")
                    .replace("%2C", ",")
                    .replace("%2F", "/");
                let mut parts = scope.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                Some(serde_json::json!({
                    "type": kind, "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = serde_json::json!({
            "typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&self.cert_der)],
        });
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": "test", "aud": SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": format!("{now}-{}", access.len()), "access": access,
        });
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = ring::rand::SystemRandom::new();
        let sig = self.signer.sign(&rng, signed.as_bytes()).unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}
