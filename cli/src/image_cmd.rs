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
    /// Write the test image (static busybox, two layers, a whiteout).
    BuildTest {
        /// Where to write it: a directory for `layout`, a file otherwise.
        out: PathBuf,
        /// The static busybox to put in it.
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Layout)]
        format: Format,
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
        ImageCommand::BuildTest {
            out,
            busybox,
            format,
        } => {
            use husk_image::testimage;
            // The image is deterministic: rewriting it is cheap and keeps
            // a stale one from lingering.
            if out.is_dir() {
                std::fs::remove_dir_all(&out)
                    .map_err(|e| Failure::runtime(format!("removing {}: {e}", out.display())))?;
            }
            let result = match format {
                Format::Layout => testimage::write_layout(&busybox, &out),
                Format::OciArchive => testimage::write_oci_archive(&busybox, &out),
                Format::DockerArchive => testimage::write_docker_archive(&busybox, &out),
            };
            result.map_err(|e| Failure::runtime(format!("test image {}: {e}", out.display())))?;
            println!("{}", out.display());
            Ok(0)
        }
    }
}
