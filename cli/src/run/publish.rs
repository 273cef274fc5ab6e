//! `-p [IP:]HOST:CONTAINER[/tcp]`: a host port that reaches a port of the
//! container on the bridge.
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

use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::time::Duration;

/// One `-p`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port {
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub container_port: u16,
}

pub fn parse(spec: &str) -> Result<Port, String> {
    let bad = |why: &str| format!("-p {spec}: {why}");
    let (addr, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    if proto != "tcp" {
        return Err(bad(&format!(
            "{proto} ports are not published yet (tcp only)"
        )));
    }
    let parts: Vec<&str> = addr.split(':').collect();
    let (ip, host, container) = match parts[..] {
        [host, container] => (None, host, container),
        [ip, host, container] => (Some(ip), host, container),
        _ => return Err(bad("expected [IP:]HOST_PORT:CONTAINER_PORT[/tcp]")),
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
    })
}

/// Each published port with its listening socket.
pub type Listeners = Vec<(Port, TcpListener)>;

/// The listening sockets, bound now: a port in use is an error before the
/// VM exists.
pub fn bind(ports: &[Port]) -> Result<Listeners, String> {
    ports
        .iter()
        .map(|p| {
            let at = SocketAddrV4::new(p.host_ip, p.host_port);
            TcpListener::bind(at).map(|l| (*p, l)).map_err(|e| {
                format!(
                    "-p {}:{}: cannot listen on {at}: {e}",
                    p.host_port, p.container_port
                )
            })
        })
        .collect()
}

/// Serves every listener for the life of the process, each connection
/// copied to `guest` both ways on two threads.
pub fn serve(listeners: Listeners, guest: Ipv4Addr) {
    for (port, listener) in listeners {
        let target = SocketAddrV4::new(guest, port.container_port);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                std::thread::spawn(move || relay(client, target));
            }
        });
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
        assert_eq!(p.host_ip, Ipv4Addr::LOCALHOST);
        for (bad, why) in [
            ("5000", "expected"),
            ("0:80", "host port"),
            ("5000:70000", "container port"),
            ("x:1:2", "IPv4"),
            ("53:53/udp", "udp ports are not published yet"),
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
        };
        serve(vec![(p, host)], Ipv4Addr::LOCALHOST);
        let mut c = TcpStream::connect(("127.0.0.1", host_port)).unwrap();
        io::Write::write_all(&mut c, b"ping").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = String::new();
        io::Read::read_to_string(&mut c, &mut back).unwrap();
        assert_eq!(back, "ping");
    }
}
