//! The OCI runtime spec a `husk run` sends to the agent: the runtime's
//! defaults, then the image's settings, then the command line's.

use serde_json::{json, Value};

/// What the command line and the image say about the process.
#[derive(Debug, Default, Clone)]
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
}

/// The cgroup v2 cpu.max period the quota is computed against.
const CPU_PERIOD: u64 = 100_000;

pub fn build(defaults: Value, s: &Settings) -> Value {
    let mut spec = defaults;
    let p = &mut spec["process"];
    p["args"] = json!(s.args);
    p["env"] = json!(s.env);
    p["cwd"] = json!(s.cwd);
    p["terminal"] = json!(s.terminal);
    p["user"] = json!({"uid": s.uid, "gid": s.gid});
    spec["hostname"] = json!(s.hostname);
    let mut resources = serde_json::Map::new();
    if let Some(m) = s.memory {
        resources.insert("memory".into(), json!({"limit": m}));
    }
    if let Some(c) = s.cpus {
        let quota = (c * CPU_PERIOD as f64).round() as i64;
        resources.insert("cpu".into(), json!({"quota": quota, "period": CPU_PERIOD}));
    }
    if let Some(n) = s.pids {
        resources.insert("pids".into(), json!({"limit": n}));
    }
    if !resources.is_empty() {
        spec["linux"]["resources"] = Value::Object(resources);
    }
    if !s.binds.is_empty() {
        if !spec["mounts"].is_array() {
            spec["mounts"] = json!([]);
        }
        let mounts = spec["mounts"].as_array_mut().expect("made an array above");
        for (src, dst, ro) in &s.binds {
            let mut options = vec!["rbind", "nosuid", "nodev"];
            options.push(if *ro { "ro" } else { "rw" });
            mounts.push(json!({
                "destination": dst,
                "type": "bind",
                "source": src,
                "options": options,
            }));
        }
    }
    spec
}

/// The container joins the VM's network namespace (which has the NIC)
/// instead of getting its own, loopback-only one.
pub fn share_vm_network(spec: &mut Value) {
    if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "network");
    }
}

/// `--net`: the device part for the VMM, the address part for the guest
/// kernel's `ip=` autoconfiguration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Net {
    /// `tap=NAME[,mac=MAC]`.
    pub device: String,
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
        out.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
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
        let mut spec = json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "network"}]}});
        share_vm_network(&mut spec);
        assert_eq!(spec["linux"]["namespaces"], json!([{"type": "pid"}]));
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
        let spec = build(json!({"process": {}, "mounts": []}), &s);
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 150_000);
        assert_eq!(spec["linux"]["resources"]["pids"]["limit"], 32);
        assert_eq!(spec["mounts"][0]["destination"], "/data");
        assert!(spec["mounts"][0]["options"]
            .as_array()
            .unwrap()
            .contains(&json!("ro")));
    }
}
