//! The container's network, carried into its VM the way Kata carries it.
//!
//! podman (netavark, CNI) and Docker (its prestart hook) give a container a
//! network namespace holding a veth with an address and a default route. A
//! VM cannot join a namespace, so the monitor stands in it: it makes a TAP
//! there, redirects every frame between the veth and the TAP with tc (an
//! ingress qdisc and a match-all u32 filter with a mirred redirect, each
//! way), and gives the guest's NIC the veth's MAC, address and gateway (the
//! guest kernel's `ip=`). To the network outside, the guest is the
//! container's end of the veth; the namespace's own stack sees no frame.

use futures_util::TryStreamExt;
use husk_vmm::NetConfig;
use husk_wire::oci_spec::runtime::{LinuxNamespaceType, Spec};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteType};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

/// The TAP's name in the container's namespace.
const TAP: &str = "husk0";
/// The guest NIC's MTU: husk's virtio-net does not offer another.
const GUEST_MTU: u32 = 1500;
/// `ETH_P_ALL`: the filters take every frame. In network byte order, as
/// the kernel compares it with a frame's protocol (rtnetlink passes it on
/// as given).
const ETH_P_ALL: u16 = 0x0003u16.to_be();

/// Where the container's network lives, by the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespace {
    /// No network namespace: the host's, which a VM cannot share.
    Host,
    /// A new one (ctr, Docker): the monitor makes it.
    New,
    /// The one the caller prepared (podman: `/run/netns/...`).
    Join(PathBuf),
}

impl Namespace {
    pub fn of(spec: &Spec) -> Self {
        let ns = spec.linux().as_ref().and_then(|l| {
            l.namespaces()
                .iter()
                .flatten()
                .find(|n| n.typ() == LinuxNamespaceType::Network)
                .cloned()
        });
        match ns {
            None => Namespace::Host,
            Some(n) => match n.path() {
                Some(p) => Namespace::Join(p.clone()),
                None => Namespace::New,
            },
        }
    }
}

/// Puts the monitor in the container's network namespace. Before any
/// thread exists: setns and unshare change the calling thread, and threads
/// made later inherit it.
pub fn enter(ns: &Namespace) -> Result<(), String> {
    use nix::sched::CloneFlags;
    match ns {
        Namespace::Host => Err(
            "the spec shares the host's network namespace, which a VM cannot: \
             give the container one of its own (podman --network none or bridge)"
                .into(),
        ),
        Namespace::New => nix::sched::unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("a network namespace for the container: {e}")),
        Namespace::Join(path) => {
            let f = std::fs::File::open(path)
                .map_err(|e| format!("network namespace {}: {e}", path.display()))?;
            nix::sched::setns(f, CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("network namespace {}: setns: {e}", path.display()))
        }
    }
}

/// What the VM gets: its NIC and the kernel's `ip=` for it.
#[derive(Debug, Default)]
pub struct Wiring {
    pub nets: Vec<NetConfig>,
    /// ` ip=...`, or empty.
    pub cmdline: String,
}

/// An interface the caller put in the namespace, as the guest gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interface {
    index: u32,
    name: String,
    mac: [u8; 6],
    mtu: u32,
    addr: Option<(Ipv4Addr, u8)>,
    gateway: Option<Ipv4Addr>,
}

/// Wires what the caller put in the monitor's network namespace (after the
/// hooks, which may have put it there) into the VM; a namespace with only
/// loopback gives a VM with only loopback.
pub fn wire() -> Result<Wiring, String> {
    crate::netlink::run(|handle| async move {
        let found = interfaces(&handle).await?;
        let Some(iface) = only_one(found)? else {
            return Ok(Wiring::default());
        };
        redirect(&handle, &iface).await?;
        Ok(Wiring {
            nets: vec![NetConfig {
                host: husk_vmm::NetHost::Tap(TAP.into()),
                mac: Some(iface.mac),
                id: "eth0".into(),
                limits: Default::default(),
            }],
            cmdline: kernel_ip(&iface),
        })
    })
}

/// The guest kernel's autoconfiguration for eth0 (no DHCP), as `husk run
/// --net` gives it.
fn kernel_ip(i: &Interface) -> String {
    crate::run::spec::Net {
        device: String::new(),
        stream: None,
        addr: i.addr,
        gateway: i.gateway,
    }
    .cmdline()
}

/// One Ethernet interface at most: the kernel's `ip=` configures one.
fn only_one(mut found: Vec<Interface>) -> Result<Option<Interface>, String> {
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|i| i.name.as_str()).collect();
        return Err(format!(
            "the network namespace has {} interfaces ({}): husk carries one into the VM",
            found.len(),
            names.join(", ")
        ));
    }
    let Some(i) = found.pop() else {
        return Ok(None);
    };
    if i.mtu != GUEST_MTU {
        return Err(format!(
            "interface {}: MTU {} (the guest's NIC has {GUEST_MTU})",
            i.name, i.mtu
        ));
    }
    Ok(Some(i))
}

async fn interfaces(h: &Handle) -> Result<Vec<Interface>, String> {
    let e = |e: rtnetlink::Error| format!("netlink: listing interfaces: {e}");
    let mut found = Vec::new();
    let mut links = h.link().get().execute();
    while let Some(m) = links.try_next().await.map_err(e)? {
        if let Some(i) = ethernet(&m) {
            found.push(i);
        }
    }
    let mut addrs = h.address().get().execute();
    while let Some(m) = addrs.try_next().await.map_err(e)? {
        if let Some(i) = found.iter_mut().find(|i| i.index == m.header.index) {
            add_address(i, &m)?;
        }
    }
    let mut routes = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(m) = routes.try_next().await.map_err(e)? {
        if m.header.table != RouteHeader::RT_TABLE_MAIN || m.header.kind != RouteType::Unicast {
            continue;
        }
        add_route(&mut found, &m.header, &m.attributes)?;
    }
    Ok(found)
}

/// An Ethernet interface other than loopback, or None.
fn ethernet(m: &LinkMessage) -> Option<Interface> {
    if m.header.flags.contains(LinkFlags::Loopback)
        || m.header.link_layer_type != LinkLayerType::Ether
    {
        return None;
    }
    let mut i = Interface {
        index: m.header.index,
        name: String::new(),
        mac: [0; 6],
        mtu: GUEST_MTU,
        addr: None,
        gateway: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => i.name = n.clone(),
            LinkAttribute::Address(mac) => i.mac = mac.as_slice().try_into().ok()?,
            LinkAttribute::Mtu(mtu) => i.mtu = *mtu,
            _ => {}
        }
    }
    Some(i)
}

fn add_address(i: &mut Interface, m: &AddressMessage) -> Result<(), String> {
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let addr = local.or_else(|| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    });
    match addr {
        // The guest makes the same link-local address from the same MAC.
        Some(IpAddr::V6(_)) if m.header.scope == AddressScope::Link => Ok(()),
        Some(IpAddr::V4(a)) if i.addr.is_none() => {
            i.addr = Some((a, m.header.prefix_len));
            Ok(())
        }
        Some(a) => Err(format!(
            "interface {}: address {a}/{}: husk gives the guest one IPv4 address",
            i.name, m.header.prefix_len
        )),
        None => Ok(()),
    }
}

/// The default route becomes the guest's gateway; the connected route of
/// the interface's own subnet comes with its address. Anything else would
/// be lost in the VM: refused.
fn add_route(
    found: &mut [Interface],
    header: &RouteHeader,
    attributes: &[RouteAttribute],
) -> Result<(), String> {
    let mut oif = None;
    let mut gateway = None;
    let mut dest = None;
    for a in attributes {
        match a {
            RouteAttribute::Oif(o) => oif = Some(*o),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dest = Some(*d),
            _ => {}
        }
    }
    let Some(i) = found.iter_mut().find(|i| Some(i.index) == oif) else {
        return Ok(());
    };
    let prefix = header.destination_prefix_length;
    match (prefix, gateway) {
        (0, Some(g)) if i.gateway.is_none() => {
            i.gateway = Some(g);
            Ok(())
        }
        (_, None) if connected(i.addr, dest, prefix) => Ok(()),
        _ => Err(format!(
            "interface {}: route to {}/{prefix}{}: husk gives the guest its subnet and a default gateway only",
            i.name,
            dest.unwrap_or(Ipv4Addr::UNSPECIFIED),
            gateway.map(|g| format!(" via {g}")).unwrap_or_default()
        )),
    }
}

/// Whether `dest/prefix` is the subnet of `addr`.
fn connected(addr: Option<(Ipv4Addr, u8)>, dest: Option<Ipv4Addr>, prefix: u8) -> bool {
    let (Some((a, p)), Some(d)) = (addr, dest) else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - u32::from(p)).unwrap_or(0);
    p == prefix && u32::from(a) & mask == u32::from(d)
}

/// The TAP, up, and every frame between it and the interface redirected
/// both ways.
async fn redirect(h: &Handle, i: &Interface) -> Result<(), String> {
    husk_vmm::virtio::create_tap(TAP).map_err(|e| format!("{TAP}: {e}"))?;
    let tap = crate::netlink::index_of(h, TAP).await?;
    let e = |what: &'static str| move |e: rtnetlink::Error| format!("netlink: {what}: {e}");
    h.link()
        .set(LinkUnspec::new_with_index(tap).mtu(i.mtu).up().build())
        .execute()
        .await
        .map_err(e("setting the TAP up"))?;
    for (from, to) in [(i.index, tap), (tap, i.index)] {
        let from = from as i32;
        h.qdisc()
            .add(from)
            .ingress()
            .execute()
            .await
            .map_err(e("adding an ingress qdisc"))?;
        h.traffic_filter(from)
            .add()
            .ingress()
            .protocol(ETH_P_ALL)
            .redirect(to)
            .map_err(e("building the redirect"))?
            .execute()
            .await
            .map_err(e("adding the redirect filter"))?;
    }
    Ok(())
}

/// The spec for the guest: the container shares the VM's network (its NIC
/// is the namespace's interface), so no network namespace of its own.
pub fn guest_spec(spec: &mut Spec) {
    if let Some(linux) = spec.linux_mut() {
        if let Some(ns) = linux.namespaces_mut() {
            ns.retain(|n| n.typ() != LinuxNamespaceType::Network);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface() -> Interface {
        Interface {
            index: 2,
            name: "eth0".into(),
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            addr: Some((Ipv4Addr::new(10, 88, 0, 5), 16)),
            gateway: Some(Ipv4Addr::new(10, 88, 0, 1)),
        }
    }

    #[test]
    fn the_kernel_gets_address_mask_and_gateway() {
        assert_eq!(
            kernel_ip(&iface()),
            " ip=10.88.0.5::10.88.0.1:255.255.0.0::eth0:off"
        );
        let mut i = iface();
        i.addr = None;
        assert_eq!(kernel_ip(&i), "");
    }

    #[test]
    fn more_than_the_guest_can_carry_is_refused_by_name() {
        assert_eq!(only_one(vec![]).unwrap(), None);
        assert!(only_one(vec![iface()]).unwrap().is_some());
        let mut b = iface();
        b.name = "eth1".into();
        let e = only_one(vec![iface(), b]).unwrap_err();
        assert!(e.contains("eth0, eth1"), "{e}");
        let mut j = iface();
        j.mtu = 9000;
        assert!(only_one(vec![j]).unwrap_err().contains("MTU 9000"));
    }

    #[test]
    fn the_subnet_route_comes_with_the_address_and_others_are_refused() {
        let h = |prefix| RouteHeader {
            destination_prefix_length: prefix,
            ..Default::default()
        };
        let mut found = vec![iface()];
        found[0].gateway = None;
        let subnet = [
            RouteAttribute::Oif(2),
            RouteAttribute::Destination(RouteAddress::Inet(Ipv4Addr::new(10, 88, 0, 0))),
        ];
        add_route(&mut found, &h(16), &subnet).unwrap();
        let default = [
            RouteAttribute::Oif(2),
            RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(10, 88, 0, 1))),
        ];
        add_route(&mut found, &h(0), &default).unwrap();
        assert_eq!(found[0].gateway, Some(Ipv4Addr::new(10, 88, 0, 1)));
        let other = [
            RouteAttribute::Oif(2),
            RouteAttribute::Destination(RouteAddress::Inet(Ipv4Addr::new(192, 168, 0, 0))),
        ];
        let e = add_route(&mut found, &h(24), &other).unwrap_err();
        assert!(e.contains("192.168.0.0/24"), "{e}");
        // Another interface's route is not ours to judge.
        let elsewhere = [RouteAttribute::Oif(9)];
        add_route(&mut found, &h(24), &elsewhere).unwrap();
    }
}
