//! Names on a named network: a DNS server on the network's gateway
//! address (UDP port 53), which the containers' resolv.conf names. It
//! answers the names of the containers on the network from their leases
//! and passes every other question on to the resolvers the container asked
//! for (`--dns`), else the host's, and the answer back.
//!
//! There is no daemon: every husk process with a container on the network
//! serves, all on one address through SO_REUSEPORT, each from the same
//! lease files. A process that ends (or is killed) takes only its own
//! socket along; the kernel gives its share of the questions to the others.
//!
//! UDP only: an answer too big for a datagram comes back truncated, and a
//! resolver's retry over TCP finds no server (names of containers always
//! fit).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

use super::bridge::{self, Lease};
use super::Network;

/// How long a name's answer may be kept: containers come and go.
const TTL: u32 = 5;
/// How long one upstream resolver gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Questions being passed on at once; more are dropped (the resolver
/// asks again).
const MAX_FORWARDING: usize = 32;
/// Docker's fallback when the host names no resolver at all.
const FALLBACK: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)),
    IpAddr::V4(Ipv4Addr::new(8, 8, 4, 4)),
];

/// This process's share of the network's DNS service; stops when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serves `network`'s names on its gateway address from now on;
/// `host_resolvers` are whom to ask for other names (the host's, which
/// this process, in the host's network, reaches even when they are a
/// loopback stub).
pub fn serve(network: &Network, host_resolvers: Vec<IpAddr>) -> Result<Server, String> {
    let at = SocketAddr::from((network.gateway(), 53));
    let socket =
        bind_shared(at).map_err(|e| format!("DNS for network {} on {at}: {e}", network.name))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let upstream = if host_resolvers.is_empty() {
        FALLBACK.to_vec()
    } else {
        host_resolvers
    };
    let state = Arc::new(Shared {
        network: network.clone(),
        upstream,
        forwarding: AtomicUsize::new(0),
    });
    let stopped = stop.clone();
    std::thread::Builder::new()
        .name("dns".into())
        .spawn(move || {
            let mut buf = [0u8; 1500];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    handle(&state, &socket, &buf[..n], from);
                }
            }
        })
        .map_err(|e| format!("DNS thread: {e}"))?;
    Ok(Server { stop })
}

struct Shared {
    network: Network,
    upstream: Vec<IpAddr>,
    forwarding: AtomicUsize,
}

/// A UDP socket on `at` that other processes may bind too.
fn bind_shared(at: SocketAddr) -> std::io::Result<UdpSocket> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd: OwnedFd = socket::socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    let SocketAddr::V4(v4) = at else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(v4))?;
    Ok(UdpSocket::from(fd))
}

fn handle(state: &Arc<Shared>, socket: &UdpSocket, query: &[u8], from: SocketAddr) {
    let leases = bridge::leases(&state.network);
    match decide(query, &leases) {
        Decision::Ignore => {}
        Decision::Reply(bytes) => {
            let _ = socket.send_to(&bytes, from);
        }
        Decision::Forward => {
            // The asking container's own resolvers, if it named some.
            let asker = leases
                .iter()
                .find(|(ip, _)| IpAddr::V4(*ip) == from.ip())
                .map(|(_, l)| l.upstream.clone())
                .filter(|u| !u.is_empty());
            let upstream = asker.unwrap_or_else(|| state.upstream.clone());
            if state.forwarding.fetch_add(1, Ordering::Relaxed) >= MAX_FORWARDING {
                state.forwarding.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            let servers: Vec<SocketAddr> = upstream.iter().map(|ip| (*ip, 53).into()).collect();
            let (shared, socket, query) = (state.clone(), socket.try_clone(), query.to_vec());
            let spawned = std::thread::Builder::new()
                .name("dns-fwd".into())
                .spawn(move || {
                    let reply = forward(&query, &servers)
                        .or_else(|| failure(&query, ResponseCode::ServFail));
                    if let (Some(reply), Ok(socket)) = (reply, socket) {
                        let _ = socket.send_to(&reply, from);
                    }
                    shared.forwarding.fetch_sub(1, Ordering::Relaxed);
                });
            if spawned.is_err() {
                // The thread never ran, nor its decrement.
                state.forwarding.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// What to do with one datagram.
#[derive(Debug, PartialEq)]
enum Decision {
    Ignore,
    Reply(Vec<u8>),
    Forward,
}

/// Answers a question about a container on the network; anything else is
/// forwarded, anything not a question ignored.
fn decide(query: &[u8], leases: &[(Ipv4Addr, Lease)]) -> Decision {
    let Ok(msg) = Message::from_vec(query) else {
        return Decision::Ignore;
    };
    if msg.metadata.message_type != MessageType::Query {
        return Decision::Ignore;
    }
    let [q] = msg.queries.as_slice() else {
        return failure(query, ResponseCode::FormErr).map_or(Decision::Ignore, Decision::Reply);
    };
    let wanted = q.name().to_ascii();
    let wanted = wanted.trim_end_matches('.');
    let found = leases
        .iter()
        .find(|(_, l)| l.names.iter().any(|n| n.eq_ignore_ascii_case(wanted)));
    let Some((ip, _)) = found else {
        return Decision::Forward;
    };
    let mut reply = Message::new(msg.metadata.id, MessageType::Response, msg.metadata.op_code);
    reply.metadata.recursion_desired = msg.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    reply.add_query(q.clone());
    // A container has an IPv4 address only: other types get an empty,
    // authoritative answer, never a trip upstream with its name.
    if q.query_type() == RecordType::A && q.query_class() == DNSClass::IN {
        reply.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(*ip))));
    }
    reply.to_vec().map_or(Decision::Ignore, Decision::Reply)
}

/// An error reply to `query` (when it parses as far as its id).
fn failure(query: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let mut reply = Message::error_msg(msg.metadata.id, msg.metadata.op_code, code);
    reply.metadata.recursion_desired = msg.metadata.recursion_desired;
    reply.add_queries(msg.queries.clone());
    reply.to_vec().ok()
}

/// The first answer of the `servers`, asked in turn.
fn forward(query: &[u8], servers: &[SocketAddr]) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    for server in servers {
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let Ok(socket) = UdpSocket::bind(local) else {
            continue;
        };
        if socket.connect(server).is_err()
            || socket.set_read_timeout(Some(UPSTREAM_TIMEOUT)).is_err()
            || socket.send(query).is_err()
        {
            continue;
        }
        let mut buf = [0u8; 4096];
        // A connected socket hears only its server; the id must match.
        while let Ok(n) = socket.recv(&mut buf) {
            if buf.get(..2) == Some(id) {
                return Some(buf[..n].to_vec());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x4242;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m.to_vec().unwrap()
    }

    fn leases() -> Vec<(Ipv4Addr, Lease)> {
        vec![(
            Ipv4Addr::new(10, 90, 3, 2),
            Lease {
                id: "abc".into(),
                pid: 1,
                start: 1,
                tap: "hkabc".into(),
                names: vec!["web".into(), "abc".into()],
                upstream: vec![],
            },
        )]
    }

    fn reply(d: Decision) -> Message {
        match d {
            Decision::Reply(bytes) => Message::from_vec(&bytes).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn containers_names_are_answered_whatever_their_case() {
        let r = reply(decide(&query("Web.", RecordType::A), &leases()));
        assert_eq!(r.metadata.id, 0x4242);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.recursion_desired);
        let answers: Vec<_> = r.answers.iter().map(|a| a.data.clone()).collect();
        assert_eq!(answers, [RData::A(A(Ipv4Addr::new(10, 90, 3, 2)))]);
        // Known name, no IPv6 address: nothing, and not forwarded.
        let r = reply(decide(&query("abc", RecordType::AAAA), &leases()));
        assert!(r.answers.is_empty());
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    }

    #[test]
    fn other_names_are_forwarded_and_garbage_ignored() {
        assert_eq!(
            decide(&query("example.com.", RecordType::A), &leases()),
            Decision::Forward
        );
        assert_eq!(decide(b"\x00\x01garbage", &leases()), Decision::Ignore);
        let servfail = failure(
            &query("example.com.", RecordType::A),
            ResponseCode::ServFail,
        )
        .unwrap();
        let m = Message::from_vec(&servfail).unwrap();
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (0x4242, ResponseCode::ServFail)
        );
    }

    #[test]
    fn forwarding_relays_the_upstream_answer_and_skips_a_silent_one() {
        // A server that never answers, then one that refuses everything.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let servers = [silent.local_addr().unwrap(), server.local_addr().unwrap()];
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, from) = server.recv_from(&mut buf).unwrap();
            let reply = failure(&buf[..n], ResponseCode::Refused).unwrap();
            server.send_to(&reply, from).unwrap();
        });
        let q = query("example.com.", RecordType::A);
        let relayed = forward(&q, &servers).unwrap();
        let m = Message::from_vec(&relayed).unwrap();
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (0x4242, ResponseCode::Refused)
        );
        assert_eq!(forward(&q, &[]), None);
    }
}
