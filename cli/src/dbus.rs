//! One D-Bus method call at a time on a peer-to-peer socket, such as
//! systemd's private one (`/run/systemd/private`, where root's systemctl and
//! runc talk to PID 1 with no bus daemon in between).
//!
//! zbus's codec (`zbus::wire`) encodes and decodes every value; the framing
//! here is the spec's fixed header and the EXTERNAL login. zbus's own
//! connection is not used because it runs executor threads, and the
//! processes that call systemd (the OCI monitor, before it forks its jailed
//! child and installs its seccomp filters) must not gain threads they do
//! not control.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use zbus::wire::serialized::{Context, Data};
use zbus::wire::{
    to_bytes, DynamicType, ObjectPath, OwnedVariant, Signature, Str, Type, Variant, LE,
};

/// A peer's answer was not what the protocol says.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("D-Bus encoding: {0}")]
    Codec(#[from] zbus::Error),
    #[error("D-Bus signature {0:?}")]
    Signature(String),
    #[error("D-Bus login refused: {0:?}")]
    Login(String),
    #[error("D-Bus: {0}")]
    Protocol(String),
    /// The peer answered with an error: its name and message.
    #[error("{name}: {message}")]
    Remote { name: String, message: String },
}

const METHOD_CALL: u8 = 1;
const METHOD_RETURN: u8 = 2;
const ERROR: u8 = 3;
/// Header field codes (D-Bus spec, "Header Fields").
const PATH: u8 = 1;
const INTERFACE: u8 = 2;
const MEMBER: u8 = 3;
const ERROR_NAME: u8 = 4;
const REPLY_SERIAL: u8 = 5;
const DESTINATION: u8 = 6;
const SIGNATURE: u8 = 8;
/// The spec's limit on a message; a length above it is a broken peer.
const MAX_MESSAGE: usize = 128 << 20;

/// A method's target: who, which object, which interface.
pub struct Target<'a> {
    pub destination: &'a str,
    pub path: &'a str,
    pub interface: &'a str,
}

/// A logged-in peer-to-peer connection.
pub struct Peer {
    stream: BufReader<UnixStream>,
    serial: u32,
}

/// The fixed part of a message header and its fields, as the codec sees
/// it: `(yyyyuua(yv))`.
type Header = (u8, u8, u8, u8, u32, u32, Vec<(u8, OwnedVariant)>);

impl Peer {
    /// Connects to `path` and logs in as our uid (SASL EXTERNAL).
    pub fn connect(path: &Path, timeout: Duration) -> Result<Peer, Error> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut stream = BufReader::new(stream);
        let uid = nix::unistd::Uid::effective().as_raw().to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        stream
            .get_mut()
            .write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())?;
        let mut line = String::new();
        stream.read_line(&mut line)?;
        if !line.starts_with("OK ") {
            return Err(Error::Login(line.trim_end().to_owned()));
        }
        stream.get_mut().write_all(b"BEGIN\r\n")?;
        Ok(Peer { stream, serial: 0 })
    }

    /// Calls `member` with `body` (a tuple of the arguments) and returns
    /// the reply's body decoded as `R` (a tuple of its values).
    pub fn call<B, R>(&mut self, to: &Target, member: &str, body: &B) -> Result<R, Error>
    where
        B: Serialize + DynamicType,
        R: DeserializeOwned + DynamicType,
    {
        self.serial += 1;
        let serial = self.serial;
        let message = encode_call(to, member, body, serial)?;
        self.stream.get_mut().write_all(&message)?;
        loop {
            let (header, body) = self.read_message()?;
            let fields = &header.6;
            let reply_to = field(fields, REPLY_SERIAL).and_then(|v| u32::try_from(&**v).ok());
            if reply_to != Some(serial) {
                // A signal, or an answer to someone else: not ours.
                continue;
            }
            let signature = field(fields, SIGNATURE)
                .and_then(|v| Signature::try_from(&**v).ok())
                .map(|s| s.to_string_no_parens())
                .unwrap_or_default();
            let data = Data::new(body, Context::new(LE, 0));
            return match header.1 {
                METHOD_RETURN => decode(&data, &signature),
                ERROR => Err(remote_error(fields, &data, &signature)),
                other => Err(Error::Protocol(format!("message type {other} in reply"))),
            };
        }
    }

    /// One whole message: its header and its body's bytes.
    fn read_message(&mut self) -> Result<(Header, Vec<u8>), Error> {
        let mut fixed = [0u8; 16];
        self.stream.read_exact(&mut fixed)?;
        if fixed[0] != b'l' {
            return Err(Error::Protocol(format!(
                "byte order {:?}: only little-endian peers are supported",
                fixed[0] as char
            )));
        }
        let word = |at: usize| u32::from_le_bytes(fixed[at..at + 4].try_into().unwrap()) as usize;
        let (body_len, fields_len) = (word(4), word(12));
        if body_len > MAX_MESSAGE || fields_len > MAX_MESSAGE {
            return Err(Error::Protocol("a message over 128 MiB".into()));
        }
        let header_len = 16 + fields_len;
        let mut bytes = fixed.to_vec();
        bytes.resize(header_len.next_multiple_of(8) + body_len, 0);
        self.stream.read_exact(&mut bytes[16..])?;
        let body = bytes.split_off(header_len.next_multiple_of(8));
        bytes.truncate(header_len);
        let header: Header = Data::new(bytes, Context::new(LE, 0)).deserialize()?.0;
        Ok((header, body))
    }
}

/// A method call's bytes.
fn encode_call<B: Serialize + DynamicType>(
    to: &Target,
    member: &str,
    body: &B,
    serial: u32,
) -> Result<Vec<u8>, Error> {
    let fields: Vec<(u8, Variant)> = vec![
        (PATH, Variant::ObjectPath(ObjectPath::try_from(to.path)?)),
        (INTERFACE, Variant::Str(Str::from(to.interface))),
        (MEMBER, Variant::Str(Str::from(member))),
        (DESTINATION, Variant::Str(Str::from(to.destination))),
    ];
    encode(METHOD_CALL, serial, fields, body)
}

/// A message's bytes: header (with the body's signature added to
/// `fields`), padding to 8, body.
fn encode<B: Serialize + DynamicType>(
    kind: u8,
    serial: u32,
    fields: Vec<(u8, Variant)>,
    body: &B,
) -> Result<Vec<u8>, Error> {
    let mut fields: Vec<(u8, Field)> = fields
        .into_iter()
        .map(|(c, v)| (c, Field::Value(v)))
        .collect();
    let ctxt = Context::new(LE, 0);
    let body_bytes = to_bytes(ctxt, body)?;
    // The body is the tuple's fields one after the other: the tuple's
    // signature without its parentheses.
    let signature = body.signature().to_string();
    let inner = signature
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or(&signature);
    if !inner.is_empty() {
        Signature::try_from(inner).map_err(|_| Error::Signature(inner.to_owned()))?;
        fields.push((SIGNATURE, Field::Signature(inner.to_owned())));
    }
    let len =
        u32::try_from(body_bytes.len()).map_err(|_| Error::Protocol("a body over 4 GiB".into()))?;
    let header = (b'l', kind, 0u8, 1u8, len, serial, fields);
    let mut out = to_bytes(ctxt, &header)?.to_vec();
    out.resize(out.len().next_multiple_of(8), 0);
    out.extend_from_slice(&body_bytes);
    Ok(out)
}

/// A header field's value. The body's signature is a list of types, not
/// one struct: its string goes on the wire without the parentheses that
/// the codec's `Signature` would add.
enum Field<'a> {
    Value(Variant<'a>),
    Signature(String),
}

impl Type for Field<'_> {
    const SIGNATURE: &'static Signature = &Signature::Variant;
}

impl Serialize for Field<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        match self {
            Field::Value(v) => v.serialize(serializer),
            // How the codec writes a variant: its signature, then its value.
            Field::Signature(text) => {
                let mut s = serializer.serialize_struct("Variant", 2)?;
                s.serialize_field("signature", &Signature::Signature)?;
                s.serialize_field("value", text)?;
                s.end()
            }
        }
    }
}

fn field(fields: &[(u8, OwnedVariant)], code: u8) -> Option<&OwnedVariant> {
    fields.iter().find(|(c, _)| *c == code).map(|(_, v)| v)
}

/// A reply's body as `R`: its values as one struct, the way the codec
/// decodes a tuple; no values as `()`.
fn decode<R: DeserializeOwned + DynamicType>(body: &Data, signature: &str) -> Result<R, Error> {
    if signature.is_empty() {
        return Ok(body.deserialize_for_signature("")?.0);
    }
    Ok(body
        .deserialize_for_signature(format!("({signature})").as_str())?
        .0)
}

fn remote_error(fields: &[(u8, OwnedVariant)], body: &Data, signature: &str) -> Error {
    let name = field(fields, ERROR_NAME)
        .and_then(|v| <&str>::try_from(&**v).ok().map(str::to_owned))
        .unwrap_or_else(|| "an unnamed D-Bus error".into());
    // An error's first argument, when it is a string, is its message.
    let message = if signature.starts_with('s') {
        body.deserialize_for_signature::<_, (String,)>("(s)")
            .map(|((m,), _)| m)
            .unwrap_or_default()
    } else {
        String::new()
    };
    Error::Remote { name, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_a_header_padded_to_eight_then_the_body() {
        let to = Target {
            destination: "org.freedesktop.systemd1",
            path: "/org/freedesktop/systemd1",
            interface: "org.freedesktop.systemd1.Manager",
        };
        let bytes = encode_call(&to, "StopUnit", &("a.scope", "replace"), 7).unwrap();
        assert_eq!(&bytes[..4], &[b'l', METHOD_CALL, 0, 1]);
        let body_len = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 7);
        let fields_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        let body_at = (16 + fields_len).next_multiple_of(8);
        assert_eq!(bytes.len(), body_at + body_len);
        let body = Data::new(bytes[body_at..].to_vec(), Context::new(LE, 0));
        let (name, mode): (String, String) = body.deserialize().unwrap().0;
        assert_eq!((name.as_str(), mode.as_str()), ("a.scope", "replace"));
        let header: Header = Data::new(bytes[..16 + fields_len].to_vec(), Context::new(LE, 0))
            .deserialize()
            .unwrap()
            .0;
        // On the wire: code 8, then the variant's own signature "g", then
        // the body's, "ss", with no parentheses.
        let wire = &bytes[16..16 + fields_len];
        let at = wire.windows(4).position(|w| w == [8, 1, b'g', 0]).unwrap();
        assert_eq!(&wire[at + 4..at + 8], &[2, b's', b's', 0]);
        let sig = field(&header.6, SIGNATURE).unwrap();
        assert_eq!(
            Signature::try_from(&**sig).unwrap().to_string_no_parens(),
            "ss"
        );
    }

    /// A peer that logs us in, sends a signal, then answers our one call
    /// with `answer(serial)`.
    fn fake_peer(answer: fn(u32) -> Vec<u8>) -> (tempfile::TempDir, std::thread::JoinHandle<()>) {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut s = BufReader::new(s);
            let mut line = Vec::new();
            s.read_until(b'\n', &mut line).unwrap();
            assert!(line.starts_with(b"\0AUTH EXTERNAL "), "{line:?}");
            s.get_mut().write_all(b"OK 0123\r\n").unwrap();
            line.clear();
            s.read_until(b'\n', &mut line).unwrap();
            assert_eq!(line, b"BEGIN\r\n");
            let mut fixed = [0u8; 16];
            s.read_exact(&mut fixed).unwrap();
            let word = |at: usize| u32::from_le_bytes(fixed[at..at + 4].try_into().unwrap());
            let rest = (16 + word(12) as usize).next_multiple_of(8) - 16 + word(4) as usize;
            s.read_exact(&mut vec![0; rest]).unwrap();
            let signal = encode(4, 1, vec![], &("noise",)).unwrap();
            s.get_mut().write_all(&signal).unwrap();
            s.get_mut().write_all(&answer(word(8))).unwrap();
        });
        (dir, t)
    }

    fn target() -> Target<'static> {
        Target {
            destination: "d.e",
            path: "/d/e",
            interface: "d.e.F",
        }
    }

    #[test]
    fn a_call_skips_other_messages_and_decodes_its_reply() {
        let (dir, t) = fake_peer(|serial| {
            let fields = vec![(REPLY_SERIAL, Variant::U32(serial))];
            let job = ObjectPath::try_from("/job/7").unwrap();
            encode(METHOD_RETURN, 2, fields, &(job,)).unwrap()
        });
        let mut peer = Peer::connect(&dir.path().join("s"), Duration::from_secs(5)).unwrap();
        let (job,): (zbus::wire::OwnedObjectPath,) =
            peer.call(&target(), "M", &("x", 1u32)).unwrap();
        assert_eq!(job.as_str(), "/job/7");
        t.join().unwrap();
    }

    #[test]
    fn an_empty_reply_is_unit() {
        let (dir, t) = fake_peer(|serial| {
            let fields = vec![(REPLY_SERIAL, Variant::U32(serial))];
            encode(METHOD_RETURN, 2, fields, &()).unwrap()
        });
        let mut peer = Peer::connect(&dir.path().join("s"), Duration::from_secs(5)).unwrap();
        peer.call::<_, ()>(&target(), "M", &("a",)).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn an_error_reply_is_its_name_and_message() {
        let (dir, t) = fake_peer(|serial| {
            let fields = vec![
                (REPLY_SERIAL, Variant::U32(serial)),
                (ERROR_NAME, Variant::Str(Str::from("org.x.NoSuchUnit"))),
            ];
            encode(ERROR, 2, fields, &("Unit a.scope not loaded.",)).unwrap()
        });
        let mut peer = Peer::connect(&dir.path().join("s"), Duration::from_secs(5)).unwrap();
        let e = peer.call::<_, ()>(&target(), "M", &("a",)).unwrap_err();
        assert_eq!(e.to_string(), "org.x.NoSuchUnit: Unit a.scope not loaded.");
        t.join().unwrap();
    }
}
