//! `update` and `ps`: runc's commands that reach into a running
//! container. Both go to the guest's agent: the cgroup limits are the
//! guest's, and so are the processes.

use super::bundle;
use super::state::{Record, Status};
use super::Global;
use crate::{run, Failure};
use clap::Args;
use husk_wire::agent::{Request, Response};
use husk_wire::oci_spec::runtime::LinuxResources;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
pub struct UpdateArgs {
    /// A `linux.resources` object (JSON), `-` for stdin (containerd's way).
    #[arg(short = 'r', long, value_name = "FILE")]
    pub resources: PathBuf,
    pub id: String,
}

/// `update --resources F ID`: the new limits go to the container's cgroup
/// in the guest. The VM itself keeps the size it booted with, so a limit
/// above it is refused rather than promised.
pub fn update(g: &Global, a: &UpdateArgs) -> Result<u8, Failure> {
    let record = running(g, &a.id)?;
    let text = if a.resources == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Failure::runtime(format!("--resources -: {e}")))?;
        s
    } else {
        std::fs::read_to_string(&a.resources)
            .map_err(|e| Failure::runtime(format!("{}: {e}", a.resources.display())))?
    };
    let resources: LinuxResources = serde_json::from_str(&text)
        .map_err(|e| Failure::usage(format!("--resources: not a linux.resources object: {e}")))?;
    let planned = bundle::load(&record.bundle).map_err(Failure::runtime)?;
    fits(&resources, planned.vcpus, planned.mem_mib).map_err(Failure::runtime)?;
    let request = Request::Update {
        id: run::CONTAINER_ID.into(),
        resources: Box::new(resources),
    };
    ask(g, &a.id, request, "update the container's limits")?;
    Ok(0)
}

/// Refuses limits the VM cannot give: more memory than it has beside the
/// guest's own, more CPU than its vCPUs.
fn fits(r: &LinuxResources, vcpus: u8, mem_mib: u64) -> Result<(), String> {
    let room = mem_mib.saturating_sub(bundle::GUEST_OVERHEAD_MIB) << 20;
    if let Some(limit) = r.memory().as_ref().and_then(|m| m.limit()) {
        if limit > 0 && limit as u64 > room {
            return Err(format!(
                "memory limit {} MiB: the VM has {mem_mib} MiB ({} MiB for the container); it keeps the size it was created with",
                (limit as u64) >> 20,
                room >> 20
            ));
        }
    }
    if let Some((q, p)) = r
        .cpu()
        .as_ref()
        .and_then(|c| c.quota().zip(c.period()))
        .filter(|&(q, p)| q > 0 && p > 0)
    {
        if (q as u64).div_ceil(p) > u64::from(vcpus) {
            return Err(format!(
                "CPU quota {q}/{p}: the VM has {vcpus} vCPU(s); it keeps the size it was created with"
            ));
        }
    }
    Ok(())
}

#[derive(Args, Debug, Clone)]
pub struct OciPsArgs {
    /// table or json.
    #[arg(short = 'f', long, default_value = "table")]
    pub format: String,
}

/// `ps [--format json|table] ID`: json gives the host pids that stand for
/// the container (its monitor: what a caller may look up in the host's
/// process table); table lists the container's processes in the VM, by
/// the guest's pids, which mean nothing on the host.
pub fn ps(g: &Global, id: &str, format: &str, ps_args: &[String]) -> Result<u8, Failure> {
    if !ps_args.is_empty() {
        return Err(Failure::usage(format!(
            "ps options ({}): the container's processes are the VM's, not this host's",
            ps_args.join(" ")
        )));
    }
    let record = running(g, id)?;
    match format {
        "json" => {
            println!("[{}]", record.monitor_pid);
            Ok(0)
        }
        "table" => {
            let pids = match ask(
                g,
                id,
                Request::Pids {
                    id: run::CONTAINER_ID.into(),
                },
                "list the container's processes",
            )? {
                Response::Pids { pids } => pids,
                other => return Err(Failure::runtime(format!("unexpected answer {other:?}"))),
            };
            println!("PID (in the VM)");
            for p in pids {
                println!("{p}");
            }
            Ok(0)
        }
        other => Err(Failure::usage(format!("--format {other:?}: table or json"))),
    }
}

/// The container's record, if its VM can answer (created or running).
fn running(g: &Global, id: &str) -> Result<Record, Failure> {
    let record = Record::load(&g.root(), id).map_err(Failure::runtime)?;
    match record.current() {
        Status::Created | Status::Running => Ok(record),
        Status::Paused => Err(Failure::runtime("the container is paused: resume it first")),
        s => Err(Failure::runtime(format!("the container is {}", s.as_str()))),
    }
}

/// One request to the container's agent; its answer, errors as failures.
fn ask(g: &Global, id: &str, request: Request, what: &str) -> Result<Response, Failure> {
    super::monitor::ask(&Record::sock_dir(&g.root(), id), request, what).map_err(Failure::runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn limits_beyond_the_vm_are_refused_by_name() {
        let mem = 256 + bundle::GUEST_OVERHEAD_MIB;
        assert!(fits(&resources(r#"{"memory":{"limit":268435456}}"#), 1, mem).is_ok());
        let e = fits(&resources(r#"{"memory":{"limit":536870912}}"#), 1, mem).unwrap_err();
        assert!(e.contains("memory limit 512 MiB"), "{e}");
        assert!(fits(
            &resources(r#"{"cpu":{"quota":100000,"period":100000}}"#),
            1,
            mem
        )
        .is_ok());
        let e = fits(
            &resources(r#"{"cpu":{"quota":200000,"period":100000}}"#),
            1,
            mem,
        )
        .unwrap_err();
        assert!(e.contains("1 vCPU"), "{e}");
        assert!(fits(&resources(r#"{"pids":{"limit":10}}"#), 1, mem).is_ok());
    }
}
