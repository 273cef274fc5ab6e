//! `husk pool ls|rm`: the templates `husk run` restores instead of booting
//! (`run/pool.rs`). A rebuilt or upgraded husk replaces its own; these
//! show what is there and clear it.

use crate::run::pool::{self, Listed, Maker};
use crate::Failure;
use std::time::SystemTime;

#[derive(clap::Subcommand, Debug)]
pub enum PoolCommand {
    /// List the templates: their VM shape, the disk they take, when and by
    /// which husk they were made.
    Ls,
    /// Remove templates (running containers keep theirs); the next run
    /// that needs one makes it again.
    Rm(RmArgs),
}

#[derive(clap::Args, Debug)]
pub struct RmArgs {
    /// Every template.
    #[arg(long, conflicts_with = "names")]
    all: bool,
    /// Templates by name (as `husk pool ls` shows them).
    #[arg(required_unless_present = "all")]
    names: Vec<String>,
}

pub fn run(c: PoolCommand) -> Result<u8, Failure> {
    let root = pool::default_dir();
    match c {
        PoolCommand::Ls => {
            let listed = pool::list(&root).map_err(Failure::runtime)?;
            print!("{}", table(&listed, SystemTime::now()));
            Ok(0)
        }
        PoolCommand::Rm(a) => {
            let names = if a.all {
                pool::list(&root)
                    .map_err(Failure::runtime)?
                    .into_iter()
                    .map(|l| l.name)
                    .collect()
            } else {
                a.names
            };
            for name in &names {
                pool::remove(&root, name).map_err(Failure::usage)?;
                println!("{name}");
            }
            Ok(0)
        }
    }
}

/// `ls`'s table: a header, then a line per template.
fn table(listed: &[Listed], now: SystemTime) -> String {
    let mut out = format!(
        "{:<28} {:>5} {:>7} {:>9} {:>8}  HUSK\n",
        "TEMPLATE", "CPUS", "MEMORY", "DISK", "MADE"
    );
    for l in listed {
        // The name starts with the shape: `<vcpus>c-<mib>m-<hash>`.
        let mut parts = l.name.splitn(3, '-');
        let cpus = parts
            .next()
            .and_then(|c| c.strip_suffix('c'))
            .unwrap_or("?");
        let mib = parts
            .next()
            .and_then(|m| m.strip_suffix('m'))
            .unwrap_or("?");
        let made = l
            .made
            .and_then(|t| now.duration_since(t).ok())
            .map_or_else(|| "?".to_owned(), |d| ago(d.as_secs()));
        let maker = match &l.maker {
            Maker::This => "this one".to_owned(),
            Maker::Former => "a former build of this one".to_owned(),
            Maker::Other(exe) => exe.clone(),
            Maker::Unknown => "unknown".to_owned(),
        };
        out.push_str(&format!(
            "{:<28} {cpus:>5} {:>7} {:>9} {made:>8}  {maker}\n",
            l.name,
            format!("{mib} MiB"),
            format!("{:.1} MiB", l.disk_bytes as f64 / (1u64 << 20) as f64),
        ));
    }
    out
}

/// `s` seconds as "12s ago", "5m ago", "3h ago", "2d ago".
fn ago(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_table_shows_shape_size_age_and_maker() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let listed = [
            Listed {
                name: "1c-256m-0123456789abcdef".into(),
                disk_bytes: 41 << 20,
                made: Some(now - Duration::from_secs(7200)),
                maker: Maker::This,
            },
            Listed {
                name: "2c-512m-fedcba9876543210".into(),
                disk_bytes: 3 << 19,
                made: None,
                maker: Maker::Former,
            },
        ];
        let t = table(&listed, now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("TEMPLATE"), "{t}");
        let words: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            words,
            [
                "1c-256m-0123456789abcdef",
                "1",
                "256",
                "MiB",
                "41.0",
                "MiB",
                "2h",
                "ago",
                "this",
                "one"
            ]
        );
        assert!(
            lines[2].contains(" 2 ") && lines[2].contains("512 MiB"),
            "{t}"
        );
        assert!(
            lines[2].contains("1.5 MiB") && lines[2].contains(" ? "),
            "{t}"
        );
        assert!(lines[2].ends_with("a former build of this one"), "{t}");
    }

    #[test]
    fn ages_round_down_to_their_unit() {
        assert_eq!(ago(59), "59s ago");
        assert_eq!(ago(60), "1m ago");
        assert_eq!(ago(3 * 3600 + 59), "3h ago");
        assert_eq!(ago(86_400 * 2 + 1), "2d ago");
    }
}
