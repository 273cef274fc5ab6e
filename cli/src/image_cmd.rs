//! `husk image`: the project's own test image, so demos and tests need no
//! registry.

use crate::Failure;
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Delete what no stored image uses: blobs, interrupted downloads, and
    /// block images of images no longer in the store.
    Prune,
    /// Write the test image (static busybox, two layers, a whiteout).
    BuildTest {
        /// Where to write it: a directory for `layout`, a file otherwise.
        out: PathBuf,
        /// The static busybox to put in it.
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Layout)]
        format: Format,
        /// Add a host file to the image in a layer of its own, as
        /// `HOSTFILE:/PATH/IN/IMAGE` (repeatable; e.g. the bench tool).
        #[arg(long = "add", value_name = "HOSTFILE:/PATH")]
        add: Vec<String>,
        /// A port the image exposes, `PORT[/tcp|/udp]` (repeatable; what
        /// `husk run -P` publishes).
        #[arg(long = "expose", value_name = "PORT[/PROTO]")]
        expose: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// An OCI image layout directory.
    Layout,
    /// An OCI archive (the layout in a tar file).
    OciArchive,
    /// A `docker save` archive.
    DockerArchive,
}

pub fn run(args: ImageArgs) -> Result<u8, Failure> {
    match args.command {
        ImageCommand::Prune => crate::registry_cmd::prune(),
        ImageCommand::BuildTest {
            out,
            busybox,
            format,
            add,
            expose,
        } => {
            use husk_image::testimage;
            // The image is deterministic: rewriting it is cheap and keeps
            // a stale one from lingering.
            if out.is_dir() {
                std::fs::remove_dir_all(&out)
                    .map_err(|e| Failure::runtime(format!("removing {}: {e}", out.display())))?;
            }
            let fail = |e: husk_image::Error| {
                Failure::runtime(format!("test image {}: {e}", out.display()))
            };
            let mut image = testimage::husk_test_image(&busybox).map_err(fail)?;
            if !add.is_empty() {
                image.layers.push(extra_layer(&add)?);
            }
            for e in expose {
                let (port, proto) = e.split_once('/').unwrap_or((&e, "tcp"));
                if port.parse::<u16>().map_or(true, |p| p == 0) || !matches!(proto, "tcp" | "udp") {
                    return Err(Failure::usage(format!(
                        "--expose {e}: expected PORT[/tcp|/udp]"
                    )));
                }
                image.defaults.exposed_ports.push(format!("{port}/{proto}"));
            }
            image.defaults.exposed_ports.sort();
            let built = image.build().map_err(fail)?;
            match format {
                Format::Layout => built.write_layout(&out),
                Format::OciArchive => built.write_oci_archive(&out),
                Format::DockerArchive => built.write_docker_archive(&out, false),
            }
            .map_err(fail)?;
            println!("{}", out.display());
            Ok(0)
        }
    }
}

/// A layer with each `HOSTFILE:/PATH` file (mode kept) and its parent
/// directories.
fn extra_layer(add: &[String]) -> Result<husk_image::testimage::Layer, Failure> {
    use husk_image::testimage::{Compression, Entry, Layer};
    use std::os::unix::fs::PermissionsExt;
    let mut entries = Vec::new();
    let mut dirs = std::collections::BTreeSet::new();
    for spec in add {
        let (src, dst) = spec
            .split_once(':')
            .filter(|(s, d)| !s.is_empty() && d.starts_with('/') && d.len() > 1)
            .ok_or_else(|| Failure::usage(format!("--add {spec}: expected HOSTFILE:/PATH")))?;
        let data = std::fs::read(src).map_err(|e| Failure::runtime(format!("--add {src}: {e}")))?;
        let mode = std::fs::metadata(src)
            .map_err(|e| Failure::runtime(format!("--add {src}: {e}")))?
            .permissions()
            .mode()
            & 0o7777;
        let rel = dst.trim_start_matches('/');
        let mut parent = std::path::Path::new(rel).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
        entries.push(Entry::file(rel, mode, data));
    }
    let mut all: Vec<Entry> = dirs.iter().map(|d| Entry::dir(d, 0o755)).collect();
    all.extend(entries);
    Ok(Layer::new(all, Compression::Gzip))
}
