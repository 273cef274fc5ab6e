//! The container's `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname`,
//! composed on the host as Docker composes them and handed to the agent as
//! a `files` volume the spec bind-mounts over the image's.
//!
//! resolv.conf is the host's, less what a container cannot reach: loopback
//! nameservers (a local stub such as systemd-resolved's 127.0.0.53 is the
//! host's, not the VM's; then systemd-resolved's own upstream list is used
//! when it has one) and IPv6 ones (the guest has no IPv6 route). Nothing
//! left means Google's public resolvers, as with Docker, said in one line.

use clap::Args;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

/// Where the agent writes the files in the guest.
pub const MOUNT_POINT: &str = "/run/husk/etc";
/// The files, by name under `/etc`.
pub const RESOLV_CONF: &str = "resolv.conf";
pub const HOSTS: &str = "hosts";
pub const HOSTNAME: &str = "hostname";

/// The host's resolver list when its own names only a local stub.
const SYSTEMD_RESOLVED: &str = "/run/systemd/resolve/resolv.conf";
/// Docker's fallback when the host has no nameserver a container reaches.
const FALLBACK: [Ipv4Addr; 2] = [Ipv4Addr::new(8, 8, 8, 8), Ipv4Addr::new(8, 8, 4, 4)];

/// `--dns`, `--dns-search`, `--dns-option`, `--add-host`, as Docker has them.
#[derive(Args, Debug, Default, Clone)]
pub struct DnsFlags {
    /// A nameserver for the container (repeatable); replaces the host's.
    #[arg(long = "dns", value_name = "IP")]
    pub dns: Vec<IpAddr>,
    /// A DNS search domain (repeatable); replaces the host's (`.` for none).
    #[arg(long = "dns-search", value_name = "DOMAIN")]
    pub dns_search: Vec<String>,
    /// A resolv.conf option (repeatable); replaces the host's.
    #[arg(long = "dns-option", value_name = "OPTION")]
    pub dns_option: Vec<String>,
    /// A line in the container's /etc/hosts (repeatable); `host-gateway`
    /// is the host's address on husk's bridge.
    #[arg(long = "add-host", value_name = "NAME:IP")]
    pub add_host: Vec<String>,
}

/// What the files say about the container itself.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub hostname: &'a str,
    /// The container's address, when it has a network.
    pub addr: Option<Ipv4Addr>,
    /// The host's side of its network (`host-gateway`).
    pub gateway: Option<Ipv4Addr>,
    /// The network's own DNS server (a named network's), which then is
    /// the only nameserver: it answers the network's names and passes the
    /// rest on.
    pub network_dns: Option<Ipv4Addr>,
}

/// The host's resolv.conf as a container should start from it: the
/// systemd-resolved upstream list when /etc/resolv.conf names only a
/// loopback stub. Empty when there is none.
pub fn host_resolv_conf() -> String {
    let etc = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let only_loopback = {
        let mut servers = nameservers(&etc).peekable();
        servers.peek().is_some() && servers.all(|s| s.is_loopback())
    };
    if only_loopback {
        if let Ok(upstream) = std::fs::read_to_string(SYSTEMD_RESOLVED) {
            return upstream;
        }
    }
    etc
}

/// The host's own nameservers, loopback ones included: whom a named
/// network's DNS server, in the host's network, passes questions on to.
pub fn host_nameservers() -> Vec<IpAddr> {
    let etc = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    nameservers(&etc).collect()
}

fn nameservers(text: &str) -> impl Iterator<Item = IpAddr> + '_ {
    text.lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|rest| {
            // A scoped IPv6 address (fe80::1%eth0) is the host's link's.
            let word = rest.split_whitespace().next()?;
            word.parse().ok()
        })
}

/// The three files, by name; `skip` names those the user mounts over
/// (`-v x:/etc/hosts`), which are left out. Also a warning to print, if
/// the fallback resolvers were used for a container with a network.
pub fn compose(
    flags: &DnsFlags,
    host_resolv: &str,
    me: Identity,
    skip: &[&str],
) -> Result<(BTreeMap<String, String>, Option<String>), String> {
    let mut files = BTreeMap::new();
    let (resolv, warning) = match me.network_dns {
        Some(server) => {
            let none = flags.dns.is_empty() && nameservers(host_resolv).next().is_none();
            let resolv = resolv_conf(
                &DnsFlags {
                    dns: vec![server.into()],
                    ..flags.clone()
                },
                host_resolv,
            )
            .0;
            let warning = none.then(|| {
                "the host names no nameserver: names outside the network go to 8.8.8.8 and 8.8.4.4 \
                 (--dns names others)"
                    .to_string()
            });
            (resolv, warning)
        }
        None => {
            let (resolv, fell_back) = resolv_conf(flags, host_resolv);
            let warning = (fell_back && me.addr.is_some()).then(|| {
                "the host names no nameserver a container can reach (none, or only loopback or IPv6 ones): \
                 the container uses 8.8.8.8 and 8.8.4.4 (--dns names others)"
                    .to_string()
            });
            (resolv, warning)
        }
    };
    files.insert(RESOLV_CONF.to_string(), resolv);
    files.insert(HOSTS.to_string(), hosts(&flags.add_host, me)?);
    files.insert(HOSTNAME.to_string(), format!("{}\n", me.hostname));
    files.retain(|name, _| !skip.contains(&name.as_str()));
    Ok((files, warning))
}

/// resolv.conf, and whether the fallback nameservers stand in.
fn resolv_conf(flags: &DnsFlags, host: &str) -> (String, bool) {
    let mut servers: Vec<IpAddr> = if flags.dns.is_empty() {
        nameservers(host)
            .filter(|s| s.is_ipv4() && !s.is_loopback())
            .collect()
    } else {
        flags.dns.clone()
    };
    let fell_back = servers.is_empty();
    if fell_back {
        servers = FALLBACK.iter().copied().map(IpAddr::V4).collect();
    }
    let words = |key: &str| -> Vec<String> {
        host.lines()
            .filter_map(|l| l.strip_prefix(key))
            .filter(|rest| rest.starts_with([' ', '\t']))
            .flat_map(|rest| rest.split_whitespace().map(str::to_owned))
            .collect()
    };
    // The last of `search` and `domain` wins in resolv.conf; both are a
    // search list here.
    let search = if flags.dns_search.is_empty() {
        let mut s = words("search");
        if s.is_empty() {
            s = words("domain");
        }
        s
    } else {
        flags
            .dns_search
            .iter()
            .filter(|d| d.as_str() != ".")
            .cloned()
            .collect()
    };
    let options = if flags.dns_option.is_empty() {
        words("options")
    } else {
        flags.dns_option.clone()
    };
    let mut out = String::from("# Generated by husk from the host's resolv.conf and the flags.\n");
    for s in servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    (out, fell_back)
}

fn hosts(add_host: &[String], me: Identity) -> Result<String, String> {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\n\
         ff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    for entry in add_host {
        let (name, ip) = parse_add_host(entry, me.gateway)?;
        out.push_str(&format!("{ip}\t{name}\n"));
    }
    // Without an address of its own the name is the loopback's, so a
    // program that looks itself up still finds itself.
    let own = me.addr.unwrap_or(Ipv4Addr::LOCALHOST);
    out.push_str(&format!("{own}\t{}\n", me.hostname));
    Ok(out)
}

/// `NAME:IP` or `NAME=IP` (Docker takes both; IPv6 has colons of its own,
/// a name has none).
fn parse_add_host(entry: &str, gateway: Option<Ipv4Addr>) -> Result<(String, IpAddr), String> {
    let (name, ip) = entry
        .split_once('=')
        .or_else(|| entry.split_once(':'))
        .ok_or_else(|| format!("--add-host {entry:?}: expected NAME:IP"))?;
    let bad_name = name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if bad_name {
        return Err(format!("--add-host {entry:?}: {name:?} is not a host name"));
    }
    let ip = if ip == "host-gateway" {
        IpAddr::V4(gateway.ok_or_else(|| {
            format!("--add-host {entry:?}: host-gateway is the host's address on husk's bridge: add --network bridge")
        })?)
    } else {
        let bare = ip.trim_start_matches('[').trim_end_matches(']');
        bare.parse()
            .map_err(|_| format!("--add-host {entry:?}: {ip:?} is not an IP address"))?
    };
    Ok((name.to_string(), ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "# a comment\nnameserver 127.0.0.53\nnameserver 192.0.2.53\n\
                        nameserver 2001:db8::53\nnameserver fe80::1%eth0\n\
                        search corp.example lab.example\noptions edns0 trust-ad\n";

    fn me(addr: Option<Ipv4Addr>) -> Identity<'static> {
        Identity {
            hostname: "c1",
            addr,
            gateway: addr.map(|_| Ipv4Addr::new(10, 90, 0, 1)),
            network_dns: None,
        }
    }

    #[test]
    fn resolv_conf_keeps_what_a_container_reaches() {
        let (text, fell_back) = resolv_conf(&DnsFlags::default(), HOST);
        assert!(!fell_back);
        let body: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            body,
            [
                "nameserver 192.0.2.53",
                "search corp.example lab.example",
                "options edns0 trust-ad"
            ]
        );
    }

    #[test]
    fn flags_replace_the_hosts_settings() {
        let flags = DnsFlags {
            dns: vec!["9.9.9.9".parse().unwrap()],
            dns_search: vec![".".into()],
            dns_option: vec!["ndots:2".into()],
            add_host: vec![],
        };
        let (text, _) = resolv_conf(&flags, HOST);
        let body: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(body, ["nameserver 9.9.9.9", "options ndots:2"]);
    }

    #[test]
    fn no_reachable_nameserver_falls_back_and_says_so() {
        let (files, warning) = compose(
            &DnsFlags::default(),
            "nameserver 127.0.0.53\n",
            me(Some(Ipv4Addr::new(10, 90, 0, 2))),
            &[],
        )
        .unwrap();
        assert!(files[RESOLV_CONF].contains("nameserver 8.8.8.8\nnameserver 8.8.4.4\n"));
        assert!(warning.unwrap().contains("8.8.8.8"));
        // No network: nothing to warn about.
        let (_, warning) = compose(&DnsFlags::default(), "", me(None), &[]).unwrap();
        assert!(warning.is_none());
    }

    #[test]
    fn on_a_named_network_its_server_is_the_only_nameserver() {
        let mut who = me(Some(Ipv4Addr::new(10, 90, 3, 2)));
        who.network_dns = Some(Ipv4Addr::new(10, 90, 3, 1));
        let flags = DnsFlags {
            dns: vec!["9.9.9.9".parse().unwrap()],
            ..DnsFlags::default()
        };
        let (files, warning) = compose(&flags, HOST, who, &[]).unwrap();
        let body: Vec<&str> = files[RESOLV_CONF].lines().skip(1).collect();
        assert_eq!(
            body,
            [
                "nameserver 10.90.3.1",
                "search corp.example lab.example",
                "options edns0 trust-ad"
            ]
        );
        assert!(warning.is_none());
        let (_, warning) = compose(&DnsFlags::default(), "", who, &[]).unwrap();
        assert!(warning.unwrap().contains("outside the network"));
    }

    #[test]
    fn hosts_names_the_container_and_the_added_hosts() {
        let flags = DnsFlags {
            add_host: vec![
                "db:192.0.2.7".into(),
                "v6=2001:db8::7".into(),
                "gw:host-gateway".into(),
            ],
            ..DnsFlags::default()
        };
        let (files, _) = compose(&flags, HOST, me(Some(Ipv4Addr::new(10, 90, 0, 2))), &[]).unwrap();
        let hosts = &files[HOSTS];
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(hosts.ends_with("192.0.2.7\tdb\n2001:db8::7\tv6\n10.90.0.1\tgw\n10.90.0.2\tc1\n"));
        assert_eq!(files[HOSTNAME], "c1\n");
        let (files, _) = compose(&DnsFlags::default(), HOST, me(None), &[HOSTS]).unwrap();
        assert!(!files.contains_key(HOSTS));
        assert!(files.contains_key(RESOLV_CONF));
    }

    #[test]
    fn bad_add_host_entries_are_named() {
        let bad = |e: &str, gw| parse_add_host(e, gw).unwrap_err();
        assert!(bad("nocolon", None).contains("NAME:IP"));
        assert!(bad("a b:1.2.3.4", None).contains("not a host name"));
        assert!(bad("x:999.1.1.1", None).contains("not an IP address"));
        assert!(bad("x:host-gateway", None).contains("--network bridge"));
    }
}
