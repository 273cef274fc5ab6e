//! The run's network: where `--network` and `--net` put the VM, its
//! place on a husk network (lease, TAP, DNS), and its published ports,
//! all made before anything boots.

use super::{etc, publish, RunArgs};
use crate::Failure;

/// Where `--network` and `--net` put the container.
pub(super) enum Choice {
    /// Loopback only.
    None,
    /// An existing TAP (`--net`, `--network tap=...`).
    Tap(String),
    /// A husk network: the default bridge or a named one.
    Network(crate::network::Network),
}

pub(super) fn choose_network(args: &RunArgs) -> Result<Choice, Failure> {
    let root = {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    };
    let network = match (args.network.as_deref(), &args.net) {
        (None, Some(net)) => return Ok(Choice::Tap(net.clone())),
        (Some(n), Some(_)) => {
            return Err(Failure::usage(format!(
                "--net and --network {n} both say what the VM's network is: choose one"
            )))
        }
        // Docker's default, where husk can make bridges; rootless
        // networking is not there yet.
        (None, None) if root => crate::network::DEFAULT,
        (None, None) => return Ok(Choice::None),
        (Some(n), None) => n,
    };
    if network == "none" {
        return Ok(Choice::None);
    }
    if let Some(tap) = network.strip_prefix("tap=") {
        return Ok(Choice::Tap(format!("tap={tap}")));
    }
    if network == "host" {
        return Err(Failure::usage(
            "--network host: a microVM cannot share the host's network; publish ports with -p",
        ));
    }
    if !root {
        return Err(Failure::usage(format!(
            "--network {network} needs root (husk makes the bridge and a TAP); without root there is only --network none for now"
        )));
    }
    crate::network::lookup(network)
        .map(Choice::Network)
        .map_err(Failure::usage)
}

/// The run's place on its network, its share of the network's DNS
/// service, and its published ports' listeners: made before anything
/// boots (a port in use fails the run here).
pub(super) struct Networking {
    pub attachment: Option<crate::network::bridge::Attachment>,
    _dns: Option<crate::network::dns::Server>,
    pub listeners: publish::Listeners,
    /// `tap=...` for `--net`'s part of the plan.
    pub tap: Option<String>,
}

pub(super) fn network(args: &RunArgs, id: &str, exposed: &[String]) -> Result<Networking, Failure> {
    let mut ports = args
        .publish
        .iter()
        .map(|p| publish::parse(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::usage)?;
    if args.publish_all {
        let more = publish::exposed(exposed, &ports).map_err(Failure::usage)?;
        ports.extend(more);
    }
    let network = match choose_network(args)? {
        Choice::Network(n) => n,
        other => {
            if !ports.is_empty() || args.publish_all {
                return Err(Failure::usage(
                    "-p and -P publish ports of a container on a husk network: add --network bridge (or a network's name)",
                ));
            }
            let tap = match other {
                Choice::Tap(t) => Some(t),
                _ => None,
            };
            return Ok(Networking {
                attachment: None,
                _dns: None,
                listeners: Vec::new(),
                tap,
            });
        }
    };
    let listeners = publish::bind(&ports).map_err(Failure::runtime)?;
    let hostname = args.hostname.clone().unwrap_or_else(|| id.to_owned());
    let mut names: Vec<String> = args.name.iter().cloned().collect();
    for n in [hostname, id.to_owned()] {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let attachment = crate::network::bridge::attach(&network, id, names, args.dns.dns.clone())
        .map_err(Failure::runtime)?;
    let dns = if network.has_dns() {
        Some(
            crate::network::dns::serve(&network, etc::host_nameservers())
                .map_err(Failure::runtime)?,
        )
    } else {
        None
    };
    Ok(Networking {
        attachment: Some(attachment),
        _dns: dns,
        listeners,
        tap: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(line: &[&str]) -> Result<Choice, Failure> {
        choose_network(&crate::run::plan::tests::args(line))
    }

    #[test]
    fn network_and_net_choose_the_vms_network() {
        assert!(matches!(
            choice(&["--network", "none", "img"]),
            Ok(Choice::None)
        ));
        assert!(matches!(choice(&["--net", "tap=t0", "img"]), Ok(Choice::Tap(t)) if t == "tap=t0"));
        assert!(
            matches!(choice(&["--network", "tap=t1,ip=10.0.0.2/24", "img"]), Ok(Choice::Tap(t)) if t == "tap=t1,ip=10.0.0.2/24")
        );
        let both = choice(&["--network", "none", "--net", "tap=t0", "img"])
            .err()
            .unwrap();
        assert!(both.message.contains("choose one"), "{}", both.message);
        let host = choice(&["--network", "host", "img"]).err().unwrap();
        assert_eq!(host.code, 2);
        assert!(host.message.contains("cannot share the host's network"));
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() == 0 };
        match choice(&["img"]) {
            Ok(Choice::Network(n)) => assert!(root && n.name == "bridge"),
            Ok(Choice::None) => assert!(!root),
            _ => panic!("the default is the bridge (root) or none"),
        }
    }
}
