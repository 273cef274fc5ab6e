//! A container's VM on a network: its NIC on a TAP of its own, plugged
//! into the network's bridge (made on first use), with an address from a
//! lease file under the network's runtime directory.
//!
//! A lease names its owner (the husk process that runs the VM: pid and
//! start time), its TAP, the names the container answers to on the network
//! and the resolvers it asked for. Leases are taken under one lock for all
//! networks; one whose owner is gone (a `kill -9`, a crash) is reclaimed,
//! its TAP deleted, so no address is handed out twice and nothing a dead
//! run left stays. A run that ends releases its lease and deletes its TAP
//! itself; the last one on a network takes the bridge and its rules along,
//! the last one on any network turns IPv4 forwarding back off if husk
//! turned it on.
//!
//! The default bridge is `huskbr0`, not `husk0`: that is the TAP the OCI
//! runtime makes in a container's network namespace, and a TAP's checks
//! read sysfs, which shows the host's namespace (same name and, in a fresh
//! namespace, often the same index: the first e2e run with both failed on
//! it). Its 10.90.0.0/24 is neither podman's 10.88.0.0/16 nor Docker's
//! 172.17.0.0/16: all three may run on one host (the testbed has all
//! three).

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rtnetlink::{Handle, LinkBridge, LinkUnspec};
use serde::{Deserialize, Serialize};

use super::{Network, RUNTIME_DIR};
use crate::run::spec::Net;
use crate::run::state;

/// What a lease file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: String,
    pub pid: i32,
    /// The owner's start time ([`state::start_time`]).
    pub start: u64,
    pub tap: String,
    /// Names other containers on the network resolve to this address.
    #[serde(default)]
    pub names: Vec<String>,
    /// The resolvers the network's DNS server asks for this container's
    /// other names (`--dns`); empty: the host's.
    #[serde(default)]
    pub upstream: Vec<IpAddr>,
}

impl Lease {
    fn owner_alive(&self) -> bool {
        state::start_time(self.pid) == Some(self.start)
    }
}

/// A VM's place on a network; dropping it deletes the TAP and releases
/// the address.
#[derive(Debug)]
pub struct Attachment {
    pub ip: Ipv4Addr,
    pub tap: String,
    pub network: Network,
    lease: PathBuf,
}

impl Attachment {
    /// The VM's NIC and the guest kernel's address configuration.
    pub fn net(&self) -> Net {
        let [_, b, c, d] = self.ip.octets();
        Net {
            device: format!(
                "tap={},mac=02:68:{b:02x}:{c:02x}:{d:02x}:{:02x}",
                self.tap, self.network.index
            ),
            stream: None,
            addr: Some((self.ip, self.network.prefix)),
            gateway: Some(self.network.gateway()),
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let lock = crate::lockfile::exclusive(&Path::new(RUNTIME_DIR).join("lock"));
        let _ = fs::remove_file(&self.lease);
        let last_here = leases(&self.network).is_empty();
        if last_here {
            if let Err(e) = super::nat::remove(&self.network) {
                log::warn!("{e}");
            }
        }
        let (tap, bridge) = (self.tap.clone(), self.network.bridge());
        let done = crate::netlink::run(|h| async move {
            crate::netlink::delete(&h, &tap).await?;
            if last_here {
                crate::netlink::delete(&h, &bridge).await?;
            }
            Ok(())
        });
        if let Err(e) = done {
            log::warn!("leaving {}: {e}", self.network.bridge());
        }
        if last_here && no_leases_anywhere() {
            if let Err(e) = super::nat::restore_forwarding() {
                log::warn!("{e}");
            }
        }
        drop(lock);
    }
}

/// Plugs run `id` into `network`: the bridge (made if missing), a lease,
/// a TAP on the bridge, the network's rules.
pub fn attach(
    network: &Network,
    id: &str,
    names: Vec<String>,
    upstream: Vec<IpAddr>,
) -> Result<Attachment, String> {
    let dir = network.runtime_dir().join("leases");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let lock = crate::lockfile::exclusive(&Path::new(RUNTIME_DIR).join("lock"))?;
    let me = std::process::id() as i32;
    let mine = Lease {
        id: id.to_owned(),
        pid: me,
        start: state::start_time(me).unwrap_or(0),
        tap: format!("hk{}", &id[..id.len().min(12)]),
        names,
        upstream,
    };
    let tap = mine.tap.clone();
    let (ip, stale) = take_lease(network, &dir, &mine)?;
    let attachment = Attachment {
        ip,
        tap: tap.clone(),
        network: network.clone(),
        lease: dir.join(ip.to_string()),
    };
    let (bridge, gateway, prefix) = (network.bridge(), network.gateway(), network.prefix);
    let wired = crate::netlink::run(|h| async move {
        for old in &stale {
            crate::netlink::delete(&h, old).await?;
        }
        ensure_bridge(&h, &bridge, gateway, prefix).await?;
        husk_vmm::virtio::create_tap(&tap).map_err(|e| format!("{tap}: {e}"))?;
        let (index, master) = (
            crate::netlink::index_of(&h, &tap).await?,
            crate::netlink::index_of(&h, &bridge).await?,
        );
        h.link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(master)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| format!("netlink: plugging {tap} into {bridge}: {e}"))
    })
    .and_then(|()| super::nat::install(network));
    // Unlocked before a failed attachment is dropped: its drop takes the
    // lock again (through another open file, which flock would make wait
    // for this one forever).
    drop(lock);
    wired.map(|()| attachment)
}

/// The live leases of `network`, by address. Dead owners' are left for
/// the next [`attach`] to reclaim.
pub fn leases(network: &Network) -> Vec<(Ipv4Addr, Lease)> {
    let dir = network.runtime_dir().join("leases");
    let mut out = Vec::new();
    for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
        let Ok(ip) = e.file_name().to_string_lossy().parse::<Ipv4Addr>() else {
            continue;
        };
        if let Some(lease) = read_lease(&e.path()).filter(Lease::owner_alive) {
            out.push((ip, lease));
        }
    }
    out.sort_by_key(|(ip, _)| *ip);
    out
}

/// The ids of the containers on `network` now.
pub fn live_leases(network: &Network) -> Vec<String> {
    leases(network).into_iter().map(|(_, l)| l.id).collect()
}

fn read_lease(path: &Path) -> Option<Lease> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Whether no container is on any network (stale leases do not count).
fn no_leases_anywhere() -> bool {
    let Ok(networks) = fs::read_dir(RUNTIME_DIR) else {
        return true;
    };
    networks.flatten().all(|n| {
        fs::read_dir(n.path().join("leases"))
            .into_iter()
            .flatten()
            .flatten()
            .all(|l| !read_lease(&l.path()).is_some_and(|l| l.owner_alive()))
    })
}

/// Takes the first free address, reclaiming those of dead owners; returns
/// it and the TAPs of the reclaimed leases (to delete). Called locked.
fn take_lease(
    network: &Network,
    dir: &Path,
    mine: &Lease,
) -> Result<(Ipv4Addr, Vec<String>), String> {
    let mut stale = Vec::new();
    let mut held = std::collections::HashSet::new();
    for e in fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
    {
        let Ok(ip) = e.file_name().to_string_lossy().parse::<Ipv4Addr>() else {
            continue;
        };
        match read_lease(&e.path()) {
            Some(lease) if lease.owner_alive() => {
                held.insert(ip);
            }
            lease => {
                // Dead, or torn by a crash mid-write: reclaimed.
                if let Some(lease) = lease {
                    stale.push(lease.tap);
                }
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let ip = network
        .hosts()
        .find(|ip| !held.contains(ip))
        .ok_or_else(|| format!("network {}: every address is in use", network.name))?;
    let path = dir.join(ip.to_string());
    let text = serde_json::to_vec(mine).map_err(|e| e.to_string())?;
    fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((ip, stale))
}

/// The bridge with its address, up; made if missing (by us or another
/// husk at the same time: "exists" is fine).
async fn ensure_bridge(
    h: &Handle,
    bridge: &str,
    gateway: Ipv4Addr,
    prefix: u8,
) -> Result<(), String> {
    if crate::netlink::find(h, bridge).await?.is_none() {
        if let Err(e) = h
            .link()
            .add(LinkBridge::new(bridge).build())
            .execute()
            .await
        {
            if crate::netlink::find(h, bridge).await?.is_none() {
                return Err(format!("netlink: creating {bridge}: {e}"));
            }
        }
    }
    let index = crate::netlink::index_of(h, bridge).await?;
    h.address()
        .add(index, gateway.into(), prefix)
        .replace()
        .execute()
        .await
        .map_err(|e| format!("netlink: {bridge}'s address: {e}"))?;
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| format!("netlink: {bridge} up: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: &str, pid: i32, start: u64) -> Lease {
        Lease {
            id: id.into(),
            pid,
            start,
            tap: format!("hk{id}"),
            names: vec![id.into()],
            upstream: vec![],
        }
    }

    #[test]
    fn leases_skip_live_owners_and_reclaim_dead_ones() {
        let dir = tempfile::tempdir().unwrap();
        let net = Network::default_bridge();
        let me = std::process::id() as i32;
        let start = state::start_time(me).unwrap();
        let put = |ip: &str, l: &Lease| {
            fs::write(dir.path().join(ip), serde_json::to_vec(l).unwrap()).unwrap()
        };
        put("10.90.0.2", &lease("a", me, start));
        // pid 1's start time is not 1: a dead owner as far as we know.
        put("10.90.0.3", &lease("b", 1, 1));
        fs::write(dir.path().join("10.90.0.4"), "{torn").unwrap();
        let (ip, stale) = take_lease(&net, dir.path(), &lease("c", me, start)).unwrap();
        assert_eq!(ip, Ipv4Addr::new(10, 90, 0, 3));
        assert_eq!(stale, ["hkb"]);
        assert!(!dir.path().join("10.90.0.4").exists());
        assert_eq!(read_lease(&dir.path().join("10.90.0.3")).unwrap().id, "c");
        let (next, _) = take_lease(&net, dir.path(), &lease("d", me, start)).unwrap();
        assert_eq!(next, Ipv4Addr::new(10, 90, 0, 4));
    }

    #[test]
    fn the_guest_gets_its_address_and_the_gateway() {
        let a = Attachment {
            ip: Ipv4Addr::new(10, 90, 0, 7),
            tap: "hkx".into(),
            network: Network::default_bridge(),
            lease: PathBuf::from("/nonexistent"),
        };
        let net = a.net();
        assert_eq!(net.device, "tap=hkx,mac=02:68:5a:00:07:00");
        assert_eq!(
            net.cmdline(),
            " ip=10.90.0.7::10.90.0.1:255.255.255.0::eth0:off"
        );
        std::mem::forget(a);
    }
}
