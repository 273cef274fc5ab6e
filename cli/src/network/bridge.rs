//! `husk run --network bridge`: the VM's NIC on a TAP of its own, plugged
//! into husk's bridge (`huskbr0`, 10.90.0.1/24, made on first use), with an
//! address from a lease file under the runtime root.
//!
//! A lease names its owner (the husk process that runs the VM: pid and
//! start time) and its TAP. Leases are taken under a lock; one whose owner
//! is gone (a `kill -9`, a crash) is reclaimed, its TAP deleted, so no
//! address is handed out twice and nothing a dead run left stays. A run
//! that ends releases its lease and deletes its TAP itself.
//!
//! `huskbr0`, not `husk0`: that is the TAP the OCI runtime makes in a
//! container's network namespace, and a TAP's checks read sysfs, which
//! shows the host's namespace (same name and, in a fresh namespace, often
//! the same index: the first e2e run with both failed on it).
//!
//! 10.90.0.0/24 and not podman's 10.88.0.0/16 or Docker's 172.17.0.0/16:
//! all three may run on one host (the testbed has all three).

use std::fs::{self, File, OpenOptions};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use rtnetlink::{Handle, LinkBridge, LinkUnspec};

use super::spec::Net;
use super::state;

pub const BRIDGE: &str = "huskbr0";
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 90, 0, 1);
pub const PREFIX: u8 = 24;
/// The leases: one directory per host, like the bridge itself, whatever
/// runtime directory a run uses.
pub(super) const IPAM_DIR: &str = "/run/husk/network";

/// A VM's place on the bridge; dropping it deletes the TAP and releases
/// the address.
#[derive(Debug)]
pub struct Attachment {
    pub ip: Ipv4Addr,
    pub tap: String,
    lease: PathBuf,
}

impl Attachment {
    /// The VM's NIC and the guest kernel's address configuration.
    pub fn net(&self) -> Net {
        let [_, _, c, d] = self.ip.octets();
        Net {
            device: format!("tap={},mac=02:68:6b:0a:{c:02x}:{d:02x}", self.tap),
            addr: Some((self.ip, PREFIX)),
            gateway: Some(GATEWAY),
        }
    }
}

impl Drop for Attachment {
    /// Deletes the TAP and the lease; the last run to leave takes the
    /// bridge and the NAT table with it.
    fn drop(&mut self) {
        let lock = lock(&Path::new(IPAM_DIR).join("lock"));
        let tap = self.tap.clone();
        let _ = fs::remove_file(&self.lease);
        let last = fs::read_dir(self.lease.parent().unwrap_or(Path::new(IPAM_DIR)))
            .map(|mut d| d.next().is_none())
            .unwrap_or(true);
        if last {
            if let Err(e) = super::nat::remove() {
                log::warn!("{e}");
            }
        }
        let done = crate::netlink::run(|h| async move {
            crate::netlink::delete(&h, &tap).await?;
            if last {
                crate::netlink::delete(&h, BRIDGE).await?;
            }
            Ok(())
        });
        if let Err(e) = done {
            log::warn!("leaving {BRIDGE}: {e}");
        }
        drop(lock);
    }
}

/// Plugs run `id` into the bridge: the bridge (made if missing), a lease,
/// a TAP on the bridge.
pub fn attach(id: &str) -> Result<Attachment, String> {
    let root = Path::new(IPAM_DIR);
    let dir = root.join("leases");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let lock = lock(&root.join("lock"))?;
    let tap = format!("hk{}", &id[..id.len().min(12)]);
    let (ip, stale) = lease(&dir, id, &tap)?;
    let attachment = Attachment {
        ip,
        tap: tap.clone(),
        lease: dir.join(ip.to_string()),
    };
    let wired = crate::netlink::run(|h| async move {
        for old in &stale {
            crate::netlink::delete(&h, old).await?;
        }
        ensure_bridge(&h).await?;
        husk_vmm::virtio::create_tap(&tap).map_err(|e| format!("{tap}: {e}"))?;
        let (index, bridge) = (
            crate::netlink::index_of(&h, &tap).await?,
            crate::netlink::index_of(&h, BRIDGE).await?,
        );
        h.link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| format!("netlink: plugging {tap} into {BRIDGE}: {e}"))
    })
    .and_then(|()| super::nat::install());
    // Unlocked before a failed attachment is dropped: its drop takes the
    // lock again (through another open file, which flock would make wait
    // for this one forever).
    drop(lock);
    wired.map(|()| attachment)
}

/// Takes the first free address, reclaiming those of dead owners; returns
/// it and the TAPs of the reclaimed leases (to delete). Called locked.
fn lease(dir: &Path, id: &str, tap: &str) -> Result<(Ipv4Addr, Vec<String>), String> {
    let me = std::process::id() as i32;
    let mine = format!("{id} {me} {} {tap}\n", state::start_time(me).unwrap_or(0));
    let mut stale = Vec::new();
    let mut free = None;
    for host in 2..=254u8 {
        let ip = Ipv4Addr::new(10, 90, 0, host);
        let path = dir.join(ip.to_string());
        match fs::read_to_string(&path) {
            Ok(held) if owner_alive(&held) => continue,
            Ok(held) => {
                if let Some(old_tap) = held.split_whitespace().nth(3) {
                    stale.push(old_tap.to_string());
                }
                let _ = fs::remove_file(&path);
            }
            Err(_) => {}
        }
        free.get_or_insert(ip);
    }
    let ip = free.ok_or_else(|| format!("{BRIDGE}: all 253 addresses are in use"))?;
    let path = dir.join(ip.to_string());
    fs::write(&path, mine).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((ip, stale))
}

/// A lease's owner (`ID PID START TAP`) is the process that wrote it.
fn owner_alive(held: &str) -> bool {
    let mut f = held.split_whitespace().skip(1);
    let (Some(pid), Some(start)) = (f.next(), f.next()) else {
        return false;
    };
    match (pid.parse::<i32>(), start.parse::<u64>()) {
        (Ok(pid), Ok(start)) => state::start_time(pid) == Some(start),
        _ => false,
    }
}

fn lock(path: &Path) -> Result<nix::fcntl::Flock<File>, String> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("{}: {e}", path.display()))
}

/// The bridge with its address, up; made if missing (by us or another
/// husk at the same time: "exists" is fine).
async fn ensure_bridge(h: &Handle) -> Result<(), String> {
    if crate::netlink::find(h, BRIDGE).await?.is_none() {
        if let Err(e) = h
            .link()
            .add(LinkBridge::new(BRIDGE).build())
            .execute()
            .await
        {
            if crate::netlink::find(h, BRIDGE).await?.is_none() {
                return Err(format!("netlink: creating {BRIDGE}: {e}"));
            }
        }
    }
    let index = crate::netlink::index_of(h, BRIDGE).await?;
    h.address()
        .add(index, GATEWAY.into(), PREFIX)
        .replace()
        .execute()
        .await
        .map_err(|e| format!("netlink: {BRIDGE}'s address: {e}"))?;
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| format!("netlink: {BRIDGE} up: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_skip_live_owners_and_reclaim_dead_ones() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id() as i32;
        let start = state::start_time(me).unwrap();
        fs::write(
            dir.path().join("10.90.0.2"),
            format!("a {me} {start} hka\n"),
        )
        .unwrap();
        // pid 1's start time is not 1: a dead owner as far as we know.
        fs::write(dir.path().join("10.90.0.3"), "b 1 1 hkb\n").unwrap();
        let (ip, stale) = lease(dir.path(), "c", "hkc").unwrap();
        assert_eq!(ip, Ipv4Addr::new(10, 90, 0, 3));
        assert_eq!(stale, ["hkb"]);
        let held = fs::read_to_string(dir.path().join("10.90.0.3")).unwrap();
        assert!(
            held.starts_with(&format!("c {me} ")) && held.ends_with(" hkc\n"),
            "{held}"
        );
        let (next, _) = lease(dir.path(), "d", "hkd").unwrap();
        assert_eq!(next, Ipv4Addr::new(10, 90, 0, 4));
    }

    #[test]
    fn the_guest_gets_its_address_and_the_gateway() {
        let a = Attachment {
            ip: Ipv4Addr::new(10, 90, 0, 7),
            tap: "hkx".into(),
            lease: PathBuf::from("/nonexistent"),
        };
        let net = a.net();
        assert_eq!(net.device, "tap=hkx,mac=02:68:6b:0a:00:07");
        assert_eq!(
            net.cmdline(),
            " ip=10.90.0.7::10.90.0.1:255.255.255.0::eth0:off"
        );
        std::mem::forget(a);
    }
}
