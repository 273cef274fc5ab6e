//! `husk network create|ls|inspect|rm`: named networks, whose containers
//! find each other by name (see `network`).

use crate::network::{self, bridge};
use crate::Failure;
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct NetworkArgs {
    #[command(subcommand)]
    command: NetworkCommand,
}

#[derive(Subcommand)]
enum NetworkCommand {
    /// Make a network (its bridge comes with its first container).
    Create {
        name: String,
        /// Its subnet (default 10.90.N.0/24, N its bridge's number).
        #[arg(long, value_name = "ADDR/PREFIX")]
        subnet: Option<String>,
    },
    /// List the networks (`bridge`, husk's default, first).
    #[command(alias = "list")]
    Ls,
    /// Print a network's definition and its containers as JSON.
    Inspect { name: String },
    /// Remove networks (none of their containers may be running).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub fn run(args: NetworkArgs) -> Result<u8, Failure> {
    match args.command {
        NetworkCommand::Create { name, subnet } => {
            let subnet = subnet
                .as_deref()
                .map(network::parse_subnet)
                .transpose()
                .map_err(Failure::usage)?;
            let made = network::create(&name, subnet).map_err(Failure::runtime)?;
            println!("{}", made.name);
        }
        NetworkCommand::Ls => {
            println!("NAME\tSUBNET\tBRIDGE");
            for n in network::list().map_err(Failure::runtime)? {
                println!("{}", n.describe());
            }
        }
        NetworkCommand::Inspect { name } => {
            let n = network::lookup(&name).map_err(Failure::runtime)?;
            let containers: Vec<serde_json::Value> = bridge::leases(&n)
                .into_iter()
                .map(|(ip, l)| serde_json::json!({"id": l.id, "address": ip, "names": l.names}))
                .collect();
            let out = serde_json::json!({
                "name": n.name,
                "subnet": format!("{}/{}", n.subnet, n.prefix),
                "gateway": n.gateway(),
                "bridge": n.bridge(),
                "dns": n.has_dns(),
                "containers": containers,
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        NetworkCommand::Rm { names } => {
            for name in names {
                network::remove(&name).map_err(Failure::runtime)?;
                println!("{name}");
            }
        }
    }
    Ok(0)
}
