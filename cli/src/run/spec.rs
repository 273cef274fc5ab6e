//! The OCI runtime spec a `husk run` sends to the agent: the runtime's
//! defaults (`husk_wire::spec`), then the image's settings, then the
//! command line's. Typed from end to end (oci-spec), never edited as JSON.

use husk_wire::oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, MountBuilder, Process, Spec, UserBuilder,
};
use husk_wire::spec::{default_spec, DEFAULT_PATH};

/// What the command line and the image say about the process.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Settings {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    pub terminal: bool,
    /// memory.max in bytes.
    pub memory: Option<u64>,
    /// CPUs as a fraction (`--cpus 1.5`).
    pub cpus: Option<f64>,
    pub pids: Option<i64>,
    /// (guest source path, container path, read-only).
    pub binds: Vec<(String, String, bool)>,
    /// The container joins the VM's network namespace (which has the NIC)
    /// instead of getting its own, loopback-only one.
    pub vm_network: bool,
}

/// The cgroup v2 cpu.max period the quota is computed against.
const CPU_PERIOD: u64 = 100_000;

/// The process part: the default process with the settings' fields.
pub fn process(s: &Settings) -> Process {
    let mut p = default_spec(s.args.clone())
        .process()
        .clone()
        .unwrap_or_default();
    p.set_args(Some(s.args.clone()));
    p.set_env(Some(s.env.clone()));
    p.set_cwd(s.cwd.clone().into());
    p.set_terminal(Some(s.terminal));
    p.set_user(
        UserBuilder::default()
            .uid(s.uid)
            .gid(s.gid)
            .build()
            .expect("a user of two numbers"),
    );
    p
}

pub fn build(s: &Settings) -> Spec {
    let mut spec = default_spec(s.args.clone());
    spec.set_process(Some(process(s)));
    spec.set_hostname(Some(s.hostname.clone()));
    if let Some(linux) = spec.linux_mut() {
        linux.set_resources(resources(s));
        if s.vm_network {
            if let Some(ns) = linux.namespaces_mut() {
                ns.retain(|n| n.typ() != LinuxNamespaceType::Network);
            }
        }
    }
    let mounts = spec.mounts_mut().get_or_insert_with(Vec::new);
    for (src, dst, ro) in &s.binds {
        let options = ["rbind", "nosuid", "nodev", if *ro { "ro" } else { "rw" }];
        mounts.push(
            MountBuilder::default()
                .destination(dst)
                .typ("bind")
                .source(src)
                .options(options.map(String::from).to_vec())
                .build()
                .expect("a bind mount of plain strings"),
        );
    }
    spec
}

fn resources(s: &Settings) -> Option<husk_wire::oci_spec::runtime::LinuxResources> {
    if s.memory.is_none() && s.cpus.is_none() && s.pids.is_none() {
        return None;
    }
    let mut r = LinuxResourcesBuilder::default();
    if let Some(m) = s.memory {
        let limit = i64::try_from(m).unwrap_or(i64::MAX);
        r = r.memory(LinuxMemoryBuilder::default().limit(limit).build().ok()?);
    }
    if let Some(c) = s.cpus {
        let quota = (c * CPU_PERIOD as f64).round() as i64;
        let cpu = LinuxCpuBuilder::default()
            .quota(quota)
            .period(CPU_PERIOD)
            .build()
            .ok()?;
        r = r.cpu(cpu);
    }
    if let Some(n) = s.pids {
        r = r.pids(LinuxPidsBuilder::default().limit(n).build().ok()?);
    }
    r.build().ok()
}

/// `--net`: the device part for the VMM, the address part for the guest
/// kernel's `ip=` autoconfiguration.
#[derive(Debug, Clone)]
pub struct Net {
    /// `tap=NAME[,mac=MAC]`; unused with `stream`.
    pub device: String,
    /// A userspace network's socket (passt) instead of a TAP.
    pub stream: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    pub addr: Option<(std::net::Ipv4Addr, u8)>,
    pub gateway: Option<std::net::Ipv4Addr>,
}

impl Net {
    /// ` ip=ADDR::GW:MASK::eth0:off`, or nothing without an address.
    pub fn cmdline(&self) -> String {
        let Some((addr, prefix)) = self.addr else {
            return String::new();
        };
        let mask =
            std::net::Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0));
        let gw = self.gateway.map(|g| g.to_string()).unwrap_or_default();
        format!(" ip={addr}::{gw}:{mask}::eth0:off")
    }
}

pub fn net(spec: &str) -> Result<Net, String> {
    let mut device = Vec::new();
    let (mut addr, mut gateway) = (None, None);
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("ip", v)) => {
                let (a, p) = v.split_once('/').unwrap_or((v, "24"));
                let a = a
                    .parse()
                    .map_err(|_| format!("--net {spec}: ip {v:?} is not ADDR[/PREFIX]"))?;
                let p: u8 = p
                    .parse()
                    .ok()
                    .filter(|p| (1..=32).contains(p))
                    .ok_or_else(|| format!("--net {spec}: prefix {p:?} is not 1 to 32"))?;
                addr = Some((a, p));
            }
            Some(("gw", v)) => {
                gateway = Some(
                    v.parse()
                        .map_err(|_| format!("--net {spec}: gw {v:?} is not an IPv4 address"))?,
                );
            }
            _ => device.push(part),
        }
    }
    if gateway.is_some() && addr.is_none() {
        return Err(format!("--net {spec}: gw= needs ip="));
    }
    Ok(Net {
        device: device.join(","),
        stream: None,
        addr,
        gateway,
    })
}

/// Docker's rule: the command line's command replaces the image's Cmd, and
/// both follow the image's Entrypoint.
pub fn args(entrypoint: &[String], image_cmd: &[String], cli: &[String]) -> Vec<String> {
    let cmd = if cli.is_empty() { image_cmd } else { cli };
    entrypoint.iter().chain(cmd).cloned().collect()
}

/// The image's Env with `-e` entries overriding by name; `-e NAME` alone
/// takes the host's value, as docker does.
pub fn env(image: &[String], cli: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = image.to_vec();
    for e in cli {
        let entry = match e.split_once('=') {
            Some(("", _)) => return Err(format!("-e {e:?}: no variable name")),
            Some(_) => e.clone(),
            None => match std::env::var(e) {
                Ok(v) => format!("{e}={v}"),
                Err(_) => continue,
            },
        };
        let name = entry.split('=').next().unwrap_or_default().to_owned();
        out.retain(|x| x.split('=').next() != Some(name.as_str()));
        out.push(entry);
    }
    if !out.iter().any(|x| x.starts_with("PATH=")) {
        out.push(format!("PATH={DEFAULT_PATH}"));
    }
    Ok(out)
}

/// `UID[:GID]`, numbers only: names would need the image's /etc/passwd.
pub fn user(spec: &str) -> Result<(u32, u32), String> {
    let num = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("user {spec:?}: only numeric UID[:GID] is supported, not {s:?}"))
    };
    match spec.split_once(':') {
        Some((u, g)) => Ok((num(u)?, num(g)?)),
        None if spec.is_empty() => Ok((0, 0)),
        None => {
            let u = num(spec)?;
            Ok((u, u))
        }
    }
}

/// `512m`, `1g`, `100000k`, plain bytes: docker's --memory syntax.
pub fn size(spec: &str) -> Result<u64, String> {
    let s = spec.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mult) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("--memory {spec:?}: expected a size like 256m or 1g"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_specs() {
        let n = net("tap=t0,ip=10.0.9.2/16,gw=10.0.0.1").unwrap();
        assert_eq!(n.device, "tap=t0");
        assert_eq!(n.cmdline(), " ip=10.0.9.2::10.0.0.1:255.255.0.0::eth0:off");
        let n = net("tap=t0,mac=02:00:00:00:00:01,ip=10.0.9.2").unwrap();
        assert_eq!(n.device, "tap=t0,mac=02:00:00:00:00:01");
        assert_eq!(n.cmdline(), " ip=10.0.9.2:::255.255.255.0::eth0:off");
        assert_eq!(net("tap=t0").unwrap().cmdline(), "");
        assert!(net("tap=t0,ip=10.0.9.300").is_err());
        assert!(net("tap=t0,ip=10.0.9.3/33").is_err());
        assert!(net("tap=t0,gw=10.0.0.1").unwrap_err().contains("needs ip="));
    }

    fn namespaces(spec: &Spec) -> Vec<LinuxNamespaceType> {
        let linux = spec.linux().as_ref().unwrap();
        linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect()
    }

    #[test]
    fn the_vm_network_replaces_the_network_namespace() {
        let own = build(&Settings::default());
        assert!(namespaces(&own).contains(&LinuxNamespaceType::Network));
        let shared = build(&Settings {
            vm_network: true,
            ..Settings::default()
        });
        let ns = namespaces(&shared);
        assert!(!ns.contains(&LinuxNamespaceType::Network));
        assert_eq!(ns.len(), namespaces(&own).len() - 1);
    }

    #[test]
    fn command_follows_docker() {
        let ep = vec!["/bin/tini".to_owned(), "--".into()];
        let cmd = vec!["/bin/sh".to_owned()];
        assert_eq!(args(&ep, &cmd, &[]), ["/bin/tini", "--", "/bin/sh"]);
        assert_eq!(
            args(&[], &cmd, &["echo".into(), "hi".into()]),
            ["echo", "hi"]
        );
    }

    #[test]
    fn env_overrides_by_name() {
        let image = vec!["PATH=/bin".to_owned(), "A=1".into()];
        let got = env(&image, &["A=2".into(), "B=".into()]).unwrap();
        assert_eq!(got, ["PATH=/bin", "A=2", "B="]);
        assert!(env(&[], &["=x".into()]).is_err());
        assert!(env(&[], &[]).unwrap()[0].starts_with("PATH="));
    }

    #[test]
    fn users_and_sizes_parse() {
        assert_eq!(user("1000"), Ok((1000, 1000)));
        assert_eq!(user("1000:50"), Ok((1000, 50)));
        assert!(user("husk").unwrap_err().contains("numeric"));
        assert_eq!(size("256m"), Ok(256 << 20));
        assert_eq!(size("1G"), Ok(1 << 30));
        assert_eq!(size("4096"), Ok(4096));
        assert!(size("lots").is_err());
        assert!(size("0").is_err());
        assert!(size("99999999999999g").is_err());
    }

    #[test]
    fn limits_and_binds_land_in_the_spec() {
        let s = Settings {
            args: vec!["true".into()],
            memory: Some(64 << 20),
            cpus: Some(1.5),
            pids: Some(32),
            binds: vec![("/run/husk/volumes/0".into(), "/data".into(), true)],
            ..Settings::default()
        };
        let spec = build(&s);
        let r = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        assert_eq!(r.memory().unwrap().limit(), Some(64 << 20));
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(150_000));
        assert_eq!(r.cpu().as_ref().unwrap().period(), Some(CPU_PERIOD));
        assert_eq!(r.pids().unwrap().limit(), 32);
        let bind = spec.mounts().as_ref().unwrap().last().unwrap().clone();
        assert_eq!(bind.destination(), std::path::Path::new("/data"));
        assert!(bind.options().as_ref().unwrap().contains(&"ro".to_string()));
        // What the agent gets is what was built: the spec survives the wire.
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<Spec>(&json).unwrap(), spec);
    }

    #[test]
    fn no_limits_means_no_resources_section() {
        let spec = build(&Settings {
            args: vec!["sh".into()],
            uid: 7,
            gid: 8,
            cwd: "/w".into(),
            terminal: true,
            ..Settings::default()
        });
        assert!(spec.linux().as_ref().unwrap().resources().is_none());
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.user().uid(), 7);
        assert_eq!(p.user().gid(), 8);
        assert_eq!(p.cwd(), std::path::Path::new("/w"));
        assert_eq!(p.terminal(), Some(true));
    }
}
