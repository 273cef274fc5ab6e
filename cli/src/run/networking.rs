//! The run's network: where `--network` and `--net` put the VM, its
//! place on a husk network (lease, TAP, DNS), and its published ports,
//! all made before anything boots.

use super::{etc, publish, RunArgs};
use crate::Failure;

/// Where `--network` and `--net` put the container.
pub(super) enum Choice {
    /// Loopback only; with why, when that was not asked for.
    None(Option<String>),
    /// An existing TAP (`--net`, `--network tap=...`).
    Tap(String),
    /// A husk network: the default bridge or a named one.
    Network(crate::network::Network),
    /// passt's userspace stack (`--network passt`; the default without
    /// root).
    Passt,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub(super) fn choose_network(args: &RunArgs) -> Result<Choice, Failure> {
    choose(args, is_root(), crate::network::passt::unusable)
}

/// [`choose_network`] with the user and passt's state given.
fn choose(
    args: &RunArgs,
    root: bool,
    passt_unusable: impl Fn() -> Option<String>,
) -> Result<Choice, Failure> {
    use crate::network::passt;
    let network = match (args.network.as_deref(), &args.net) {
        (None, Some(net)) => return Ok(Choice::Tap(net.clone())),
        (Some(n), Some(_)) => {
            return Err(Failure::usage(format!(
                "--net and --network {n} both say what the VM's network is: choose one"
            )))
        }
        // Docker's default, where husk can make bridges; passt where it
        // cannot, as rootless podman and Docker use a userspace stack.
        (None, None) if root => crate::network::DEFAULT,
        (None, None) => {
            return Ok(match passt_unusable() {
                None => Choice::Passt,
                Some(why) => Choice::None(Some(format!(
                    "the container has no network: {why} (--network none says so and silences this)"
                ))),
            })
        }
        (Some(n), None) => n,
    };
    if network == "none" {
        return Ok(Choice::None(None));
    }
    if let Some(tap) = network.strip_prefix("tap=") {
        return Ok(Choice::Tap(format!("tap={tap}")));
    }
    if network == "host" {
        return Err(Failure::usage(
            "--network host: a microVM cannot share the host's network; publish ports with -p",
        ));
    }
    if network == passt::NAME {
        return match passt_unusable() {
            None => Ok(Choice::Passt),
            Some(why) => Err(Failure::runtime(format!("--network passt: {why}"))),
        };
    }
    if !root {
        return Err(Failure::usage(format!(
            "--network {network} needs root (husk makes the bridge and a TAP); without root there is --network passt (the default) or none"
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
    passt: Option<crate::network::passt::Passt>,
    /// The published ports, as `husk port` shows them.
    pub ports: Vec<String>,
    /// Said once the VM is up: why there is no network.
    pub notice: Option<String>,
}

impl Networking {
    fn without(tap: Option<String>, notice: Option<String>) -> Networking {
        Networking {
            attachment: None,
            _dns: None,
            listeners: Vec::new(),
            tap,
            passt: None,
            ports: Vec::new(),
            notice,
        }
    }

    /// The NIC a husk network or passt gives the VM, if any.
    pub fn nic(&self) -> Option<super::spec::Net> {
        match (&self.attachment, &self.passt) {
            (Some(a), _) => Some(a.net()),
            (None, Some(p)) => Some(p.net()),
            (None, None) => None,
        }
    }
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
        Choice::Passt => return with_passt(&ports),
        other => {
            if !ports.is_empty() || args.publish_all {
                return Err(Failure::usage(
                    "-p and -P publish ports of a container on a network: add --network bridge (or passt, or a network's name)",
                ));
            }
            return Ok(match other {
                Choice::Tap(t) => Networking::without(Some(t), None),
                Choice::None(why) => Networking::without(None, why),
                _ => Networking::without(None, None),
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
        ports: publish::describe(&listeners),
        listeners,
        tap: None,
        passt: None,
        notice: None,
    })
}

/// passt with the ports forwarded. husk binds each port first, so a port
/// in use is the same one-line error as on the bridge and `-p 80` gets a
/// free port; passt then binds what husk found free.
fn with_passt(ports: &[publish::Port]) -> Result<Networking, Failure> {
    let listeners = publish::bind(ports).map_err(Failure::runtime)?;
    let described = publish::describe(&listeners);
    let forwards = listeners
        .iter()
        .map(|(p, l)| l.local_addr().map(|at| (*p, at)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::runtime(format!("-p: {e}")))?;
    drop(listeners);
    let passt = crate::network::passt::start(&forwards).map_err(Failure::runtime)?;
    let mut n = Networking::without(None, None);
    n.passt = Some(passt);
    n.ports = described;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(line: &[&str]) -> Result<Choice, Failure> {
        choose_network(&crate::run::plan::tests::args(line))
    }

    fn choice_as(line: &[&str], root: bool, passt: Option<&str>) -> Result<Choice, Failure> {
        let passt = passt.map(str::to_owned);
        choose(&crate::run::plan::tests::args(line), root, move || {
            passt.clone()
        })
    }

    #[test]
    fn network_and_net_choose_the_vms_network() {
        assert!(matches!(
            choice(&["--network", "none", "img"]),
            Ok(Choice::None(None))
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
        assert!(matches!(
            choice_as(&["img"], true, None),
            Ok(Choice::Network(n)) if n.name == "bridge"
        ));
    }

    #[test]
    fn without_root_passt_is_the_default_and_bridges_are_refused() {
        assert!(matches!(
            choice_as(&["img"], false, None),
            Ok(Choice::Passt)
        ));
        // No passt: no network, and the run says why.
        match choice_as(&["img"], false, Some("passt is not installed")) {
            Ok(Choice::None(Some(why))) => assert!(why.contains("passt is not installed"), "{why}"),
            _ => panic!("no passt: no network, with a reason"),
        }
        // Asked for by name, a missing passt is an error.
        let e = choice_as(&["--network", "passt", "img"], false, Some("missing"))
            .err()
            .unwrap();
        assert_eq!(e.message, "--network passt: missing");
        assert!(matches!(
            choice_as(&["--network", "passt", "img"], true, None),
            Ok(Choice::Passt)
        ));
        let e = choice_as(&["--network", "bridge", "img"], false, None)
            .err()
            .unwrap();
        assert!(e.message.contains("needs root"), "{}", e.message);
        assert!(matches!(
            choice_as(&["--network", "none", "img"], false, None),
            Ok(Choice::None(None))
        ));
    }
}
