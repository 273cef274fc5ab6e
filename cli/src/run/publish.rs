//! `-p [IP:]HOST:CONTAINER[/tcp|/udp]`: a host port that reaches a port of
//! the container on its network.
//!
//! A proxy in the husk process that runs the VM, as Docker's
//! docker-proxy is: it listens on the host port (bound before the VM
//! boots, so a port in use is an error before anything starts) and
//! copies each connection to the guest's address. Chosen over DNAT
//! because it reaches the container from 127.0.0.1 too without
//! `route_localnet` (which opens 127.0.0.0/8 to the network), and a
//! killed husk leaves no rule behind: its listening socket dies with it.
//! The cost: the container sees the bridge's address as the peer, and
//! every byte crosses user space (measured in docs/benchmarks.md).
//!
//! UDP has no connections: each client address gets a socket of its own
//! towards the container (so replies find their way back), forgotten
//! after [`UDP_IDLE`] without traffic, as docker-proxy does.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a UDP client's flow lives without a datagram either way.
const UDP_IDLE: Duration = Duration::from_secs(90);
/// UDP clients relayed at once per port; datagrams of more are dropped.
const UDP_MAX_FLOWS: usize = 1024;
/// The largest UDP payload.
const UDP_MAX: usize = 65535;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One `-p`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port {
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

pub fn parse(spec: &str) -> Result<Port, String> {
    let bad = |why: &str| format!("-p {spec}: {why}");
    let (addr, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let proto = match proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        other => return Err(bad(&format!("{other:?} is not tcp or udp"))),
    };
    let parts: Vec<&str> = addr.split(':').collect();
    let (ip, host, container) = match parts[..] {
        [host, container] => (None, host, container),
        [ip, host, container] => (Some(ip), host, container),
        _ => return Err(bad("expected [IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]")),
    };
    let port = |p: &str, what: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad(&format!("{what} {p:?} is not a port (1 to 65535)")))
    };
    Ok(Port {
        host_ip: match ip {
            Some(ip) => ip
                .parse()
                .map_err(|_| bad(&format!("{ip:?} is not an IPv4 address")))?,
            None => Ipv4Addr::UNSPECIFIED,
        },
        host_port: port(host, "host port")?,
        container_port: port(container, "container port")?,
        proto,
    })
}

/// A published port's bound socket.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// Each published port with its socket.
impl Listener {
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Listener::Tcp(t) => t.local_addr(),
            Listener::Udp(u) => u.local_addr(),
        }
    }
}

pub type Listeners = Vec<(Port, Listener)>;

/// The sockets, bound now: a port in use is an error before the VM
/// exists.
pub fn bind(ports: &[Port]) -> Result<Listeners, String> {
    ports
        .iter()
        .map(|p| {
            let at = SocketAddrV4::new(p.host_ip, p.host_port);
            let bound = match p.proto {
                Proto::Tcp => TcpListener::bind(at).map(Listener::Tcp),
                Proto::Udp => UdpSocket::bind(at).map(Listener::Udp),
            };
            bound.map(|l| (*p, l)).map_err(|e| {
                let proto = if p.proto == Proto::Udp { "/udp" } else { "" };
                format!(
                    "-p {}:{}{proto}: cannot listen on {at}: {e}",
                    p.host_port, p.container_port
                )
            })
        })
        .collect()
}

/// The image's `ExposedPorts` (`80/tcp`) as ports to publish on any free
/// host port (`-P`), but those `taken` already publishes.
pub fn exposed(exposed: &[String], taken: &[Port]) -> Result<Vec<Port>, String> {
    let mut out = Vec::new();
    for e in exposed {
        let spec = format!("0:{e}");
        let (addr, proto) = spec.split_once('/').unwrap_or((&spec, "tcp"));
        let port = addr[2..]
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("-P: the image exposes {e:?}, which is not PORT[/tcp|/udp]"))?;
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            // SCTP and the like: not published, as not served.
            _ => continue,
        };
        if taken
            .iter()
            .any(|t| t.container_port == port && t.proto == proto)
        {
            continue;
        }
        out.push(Port {
            host_ip: Ipv4Addr::UNSPECIFIED,
            host_port: 0,
            container_port: port,
            proto,
        });
    }
    Ok(out)
}

/// What each bound socket publishes, as `docker port` says it:
/// `80/tcp -> 0.0.0.0:32768`.
pub fn describe(listeners: &Listeners) -> Vec<String> {
    listeners
        .iter()
        .map(|(p, l)| {
            let at = l
                .local_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string());
            let proto = if p.proto == Proto::Udp { "udp" } else { "tcp" };
            format!("{}/{proto} -> {at}", p.container_port)
        })
        .collect()
}

/// Serves every port for the life of the process: each TCP connection
/// copied to `guest` both ways on two threads, each UDP client's
/// datagrams through a flow of its own.
pub fn serve(listeners: Listeners, guest: Ipv4Addr) {
    for (port, listener) in listeners {
        let target = SocketAddrV4::new(guest, port.container_port);
        match listener {
            Listener::Tcp(listener) => {
                std::thread::spawn(move || {
                    for client in listener.incoming().flatten() {
                        std::thread::spawn(move || relay(client, target));
                    }
                });
            }
            Listener::Udp(socket) => {
                std::thread::spawn(move || relay_udp(socket, target));
            }
        }
    }
}

/// One connection: refused (closed) if nothing listens in the guest yet.
fn relay(client: TcpStream, target: SocketAddrV4) {
    let Ok(server) = TcpStream::connect_timeout(&target.into(), Duration::from_secs(5)) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || pipe(c2, s2));
    pipe(server, client);
    let _ = up.join();
}

/// Copies until EOF, then passes the half-close on.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>>;

/// A published UDP port: datagrams from each client go out on the
/// client's flow socket; a thread per flow sends the container's replies
/// back from the published port.
fn relay_udp(public: UdpSocket, target: SocketAddrV4) {
    let public = Arc::new(public);
    let flows: Flows = Arc::default();
    let mut buf = vec![0u8; UDP_MAX];
    while let Ok((n, client)) = public.recv_from(&mut buf) {
        let flow = flows.lock().ok().and_then(|f| f.get(&client).cloned());
        let flow = match flow {
            Some(f) => f,
            None => match open_flow(&public, &flows, client, target) {
                Some(f) => f,
                None => continue,
            },
        };
        let _ = flow.send(&buf[..n]);
    }
}

fn open_flow(
    public: &Arc<UdpSocket>,
    flows: &Flows,
    client: SocketAddr,
    target: SocketAddrV4,
) -> Option<Arc<UdpSocket>> {
    let mut table = flows.lock().ok()?;
    if table.len() >= UDP_MAX_FLOWS {
        return None;
    }
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect(target).ok()?;
    socket.set_read_timeout(Some(UDP_IDLE)).ok()?;
    let socket = Arc::new(socket);
    table.insert(client, socket.clone());
    drop(table);
    let (back, public, flows) = (socket.clone(), public.clone(), flows.clone());
    std::thread::spawn(move || {
        let mut buf = vec![0u8; UDP_MAX];
        // Ends after UDP_IDLE of silence from the container (or an error
        // such as a refused port): the next datagram opens a new flow.
        while let Ok(n) = back.recv(&mut buf) {
            let _ = public.send_to(&buf[..n], client);
        }
        if let Ok(mut t) = flows.lock() {
            t.remove(&client);
        }
    });
    Some(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs() {
        let p = parse("5000:80").unwrap();
        assert_eq!(
            (p.host_ip, p.host_port, p.container_port),
            (Ipv4Addr::UNSPECIFIED, 5000, 80)
        );
        let p = parse("127.0.0.1:8080:8080/tcp").unwrap();
        assert_eq!((p.host_ip, p.proto), (Ipv4Addr::LOCALHOST, Proto::Tcp));
        assert_eq!(parse("53:5353/udp").unwrap().proto, Proto::Udp);
        for (bad, why) in [
            ("5000", "expected"),
            ("0:80", "host port"),
            ("5000:70000", "container port"),
            ("x:1:2", "IPv4"),
            ("53:53/sctp", "not tcp or udp"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(
                e.starts_with(&format!("-p {bad}: ")) && e.contains(why),
                "{e}"
            );
        }
    }

    #[test]
    fn a_port_in_use_is_refused_and_a_connection_is_relayed() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let p = Port {
            host_ip: Ipv4Addr::LOCALHOST,
            host_port: port,
            container_port: 1,
            proto: Proto::Tcp,
        };
        let e = bind(&[p]).unwrap_err();
        assert!(
            e.contains("cannot listen on 127.0.0.1:") && e.contains("in use"),
            "{e}"
        );

        // The "guest" is a local echo server.
        let guest = TcpListener::bind("127.0.0.1:0").unwrap();
        let guest_port = guest.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = guest.accept().unwrap();
            let mut r = s.try_clone().unwrap();
            io::copy(&mut r, &mut s).unwrap();
        });
        let host = TcpListener::bind("127.0.0.1:0").unwrap();
        let host_port = host.local_addr().unwrap().port();
        let p = Port {
            host_ip: Ipv4Addr::LOCALHOST,
            host_port,
            container_port: guest_port,
            proto: Proto::Tcp,
        };
        serve(vec![(p, Listener::Tcp(host))], Ipv4Addr::LOCALHOST);
        let mut c = TcpStream::connect(("127.0.0.1", host_port)).unwrap();
        io::Write::write_all(&mut c, b"ping").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = String::new();
        io::Read::read_to_string(&mut c, &mut back).unwrap();
        assert_eq!(back, "ping");
    }

    #[test]
    fn udp_datagrams_go_both_ways_per_client() {
        // The "guest": an echo server that prefixes what it saw.
        let guest = UdpSocket::bind("127.0.0.1:0").unwrap();
        let guest_port = guest.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = guest.recv_from(&mut buf) {
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                guest.send_to(&reply, from).unwrap();
            }
        });
        let p = Port {
            host_ip: Ipv4Addr::LOCALHOST,
            host_port: 0,
            container_port: guest_port,
            proto: Proto::Udp,
        };
        let mut bound = bind(&[p]).unwrap();
        let Listener::Udp(public) = &bound[0].1 else {
            panic!("not udp")
        };
        let public_addr = public.local_addr().unwrap();
        bound[0].0.host_port = public_addr.port();
        serve(bound, Ipv4Addr::LOCALHOST);
        // Two clients, each hearing only its own replies.
        let clients: Vec<UdpSocket> = (0..2)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for (i, c) in clients.iter().enumerate() {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.send_to(format!("hi{i}").as_bytes(), public_addr).unwrap();
        }
        for (i, c) in clients.iter().enumerate() {
            let mut buf = [0u8; 64];
            let n = c.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], format!("echo:hi{i}").as_bytes());
        }
    }

    #[test]
    fn exposed_ports_go_to_free_host_ports_unless_published() {
        let taken = [parse("8080:80").unwrap()];
        let ports = exposed(&["80/tcp".into(), "53/udp".into(), "9/sctp".into()], &taken).unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(
            (ports[0].container_port, ports[0].proto, ports[0].host_port),
            (53, Proto::Udp, 0)
        );
        assert!(exposed(&["x/tcp".into()], &[]).unwrap_err().contains("-P"));
        let mut bound = bind(&ports).unwrap();
        let said = describe(&bound);
        assert!(said[0].starts_with("53/udp -> 0.0.0.0:"), "{said:?}");
        assert!(!said[0].ends_with(":0"), "{said:?}");
        bound.clear();
    }
}
