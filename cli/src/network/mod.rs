//! Networks for `husk run`: husk's default bridge (`bridge`: `huskbr0`,
//! 10.90.0.0/24) and the user's named networks (`husk network create`),
//! each a Linux bridge `huskbr<N>` with a subnet of its own, made with its
//! first container and deleted with its last.
//!
//! As with Docker, containers on a named network find each other by name
//! (an answering DNS server on the network's gateway address, [`dns`]);
//! on the default bridge they have the host's resolvers and addresses only.
//! Networks do not reach each other: each one's forwarding rules drop
//! traffic bound for another husk bridge ([`nat`]).
//!
//! A network's definition is a JSON file under [`CONFIG_DIR`] (it outlives
//! reboots, like Docker's); what lives and dies with its containers (the
//! bridge, the leases, the nftables table) is under [`RUNTIME_DIR`].

pub mod bridge;
pub mod dns;
pub mod nat;
pub mod passt;

use serde::{Deserialize, Serialize};
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The default network's name (Docker's).
pub const DEFAULT: &str = "bridge";
/// Named networks' definitions, one JSON file each.
pub const CONFIG_DIR: &str = "/var/lib/husk/networks";
/// Bridges' runtime state: leases per network, one lock for them all.
pub const RUNTIME_DIR: &str = "/run/husk/network";
/// Bridges are `huskbr<index>`: 15 bytes at most for any index.
const BRIDGE_PREFIX: &str = "huskbr";
/// Names `--network` gives another meaning to.
const RESERVED: [&str; 4] = [DEFAULT, "none", "host", passt::NAME];

/// One network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub name: String,
    /// N of its bridge `huskbr<N>` (0: the default network).
    pub index: u8,
    /// The subnet's first address; the gateway (the host) is the next.
    pub subnet: Ipv4Addr,
    pub prefix: u8,
}

impl Network {
    pub fn default_bridge() -> Network {
        Network {
            name: DEFAULT.into(),
            index: 0,
            subnet: Ipv4Addr::new(10, 90, 0, 0),
            prefix: 24,
        }
    }

    pub fn bridge(&self) -> String {
        format!("{BRIDGE_PREFIX}{}", self.index)
    }

    /// The host's address on the network, the containers' route out.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) + 1)
    }

    /// The addresses containers get: after the gateway, before broadcast.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.subnet) + 2;
        let broadcast = u32::from(self.subnet) | !mask(self.prefix);
        (first..broadcast).map(Ipv4Addr::from)
    }

    /// Whether containers find each other by name here (named networks,
    /// as with Docker; not the default bridge).
    pub fn has_dns(&self) -> bool {
        self.name != DEFAULT
    }

    /// Where its leases live.
    pub fn runtime_dir(&self) -> PathBuf {
        Path::new(RUNTIME_DIR).join(&self.name)
    }

    pub fn describe(&self) -> String {
        format!(
            "{}\t{}/{}\t{}",
            self.name,
            self.subnet,
            self.prefix,
            self.bridge()
        )
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn overlaps(a: &Network, b: &Network) -> bool {
    let m = mask(a.prefix.min(b.prefix));
    u32::from(a.subnet) & m == u32::from(b.subnet) & m
}

/// The network called `name`: the default one or a stored one.
pub fn lookup(name: &str) -> Result<Network, String> {
    if name == DEFAULT {
        return Ok(Network::default_bridge());
    }
    check_name(name)?;
    let path = Path::new(CONFIG_DIR).join(format!("{name}.json"));
    let text = fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!("no network {name:?} (husk network create {name} makes it)")
        }
        _ => format!("{}: {e}", path.display()),
    })?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Every network, the default one first.
pub fn list() -> Result<Vec<Network>, String> {
    let mut out = vec![Network::default_bridge()];
    let entries = match fs::read_dir(CONFIG_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(format!("{CONFIG_DIR}: {e}")),
    };
    let mut named = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "json") {
            let text = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let n: Network =
                serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            named.push(n);
        }
    }
    named.sort_by(|a, b| a.name.cmp(&b.name));
    out.extend(named);
    Ok(out)
}

/// Docker's rule for names (of networks and containers).
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let good = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 64;
    if good {
        Ok(())
    } else {
        Err(format!(
            "network name {name:?}: letters, digits, '_', '.', '-' (64 at most), starting with a letter or digit"
        ))
    }
}

/// `ADDR/PREFIX`, a subnet's first address, prefix 16 to 29.
pub fn parse_subnet(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = || format!("--subnet {s}: expected a subnet such as 10.91.0.0/24");
    let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if !(16..=29).contains(&prefix) {
        return Err(format!("--subnet {s}: the prefix must be 16 to 29"));
    }
    if u32::from(addr) & !mask(prefix) != 0 {
        let first = Ipv4Addr::from(u32::from(addr) & mask(prefix));
        return Err(format!(
            "--subnet {s}: not the subnet's first address (did you mean {first}/{prefix}?)"
        ));
    }
    Ok((addr, prefix))
}

/// Stores a new network: the first free bridge index, and `subnet` or
/// 10.90.<index>.0/24; refused if the name is taken or the subnet
/// overlaps another network's.
pub fn create(name: &str, subnet: Option<(Ipv4Addr, u8)>) -> Result<Network, String> {
    check_name(name)?;
    if RESERVED.contains(&name) {
        return Err(format!("{name:?} is a network mode, not a name to create"));
    }
    fs::create_dir_all(CONFIG_DIR).map_err(|e| format!("{CONFIG_DIR}: {e}"))?;
    let _lock = crate::lockfile::exclusive(&Path::new(CONFIG_DIR).join(".lock"))?;
    let existing = list()?;
    if existing.iter().any(|n| n.name == name) {
        return Err(format!("network {name} exists"));
    }
    let index = (1..=u8::MAX)
        .find(|i| existing.iter().all(|n| n.index != *i))
        .ok_or("255 networks exist: remove one first")?;
    let (subnet, prefix) = subnet.unwrap_or((Ipv4Addr::new(10, 90, index, 0), 24));
    let network = Network {
        name: name.to_owned(),
        index,
        subnet,
        prefix,
    };
    if let Some(other) = existing.iter().find(|n| overlaps(n, &network)) {
        return Err(format!(
            "network {name}: {subnet}/{prefix} overlaps network {}'s {}/{} (--subnet gives another)",
            other.name, other.subnet, other.prefix
        ));
    }
    let path = Path::new(CONFIG_DIR).join(format!("{name}.json"));
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(&network).map_err(|e| e.to_string())?;
    fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(network)
}

/// Forgets a named network; refused while a container is on it.
pub fn remove(name: &str) -> Result<(), String> {
    if name == DEFAULT {
        return Err("the default network cannot be removed".into());
    }
    let network = lookup(name)?;
    let _lock = crate::lockfile::exclusive(&Path::new(CONFIG_DIR).join(".lock"))?;
    let users = bridge::live_leases(&network);
    if !users.is_empty() {
        return Err(format!(
            "network {name} is in use by container(s) {}",
            users.join(", ")
        ));
    }
    let path = Path::new(CONFIG_DIR).join(format!("{name}.json"));
    fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(subnet: &str) -> Network {
        let (subnet, prefix) = parse_subnet(subnet).unwrap();
        Network {
            name: "n".into(),
            index: 1,
            subnet,
            prefix,
        }
    }

    #[test]
    fn subnets_give_the_gateway_and_the_hosts() {
        let n = net("10.91.0.0/29");
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 91, 0, 1));
        let hosts: Vec<_> = n.hosts().map(|h| h.octets()[3]).collect();
        assert_eq!(hosts, [2, 3, 4, 5, 6]);
        assert_eq!(n.bridge(), "huskbr1");
        assert_eq!(Network::default_bridge().bridge(), "huskbr0");
        assert!(!Network::default_bridge().has_dns() && n.has_dns());
    }

    #[test]
    fn subnets_are_checked_and_overlaps_found() {
        assert!(parse_subnet("10.91.0.1/24")
            .unwrap_err()
            .contains("10.91.0.0/24"));
        assert!(parse_subnet("10.0.0.0/8").unwrap_err().contains("16 to 29"));
        assert!(parse_subnet("10.91.0.0").is_err());
        assert!(overlaps(&net("10.91.0.0/16"), &net("10.91.7.0/24")));
        assert!(!overlaps(&net("10.91.0.0/24"), &net("10.91.1.0/24")));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("backend_1.x-y").is_ok());
        for bad in ["", "-x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
