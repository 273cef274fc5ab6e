//! Images from registries: `husk pull`, `images`, `rmi`, `image prune`,
//! `login`, `logout`, and the pull `husk run REF` does when it must.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use husk_image::registry::{self, Event, Options};
use husk_image::{Cache, Digest, Image, ImageStore};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::Failure;

/// How to reach a registry (pull, push, login, and run when it pulls).
#[derive(Args, Clone, Debug, Default)]
pub struct RegistryFlags {
    /// Trust this CA certificate (PEM) beside the system's (repeatable).
    #[arg(long = "tls-ca", value_name = "PEM")]
    tls_ca: Vec<PathBuf>,
    /// Speak plain HTTP to this registry (`host:port`; repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure: Vec<String>,
    /// Read (login: write) credentials from this file instead of the usual
    /// ones ($REGISTRY_AUTH_FILE, podman's, ~/.docker/config.json).
    #[arg(long = "authfile", value_name = "FILE")]
    auth_file: Option<PathBuf>,
}

impl RegistryFlags {
    fn options(&self) -> Options {
        Options {
            insecure: self.insecure.clone(),
            tls_ca: self.tls_ca.clone(),
            auth_file: self.auth_file.clone(),
            ..Options::default()
        }
    }
}

#[derive(Args)]
pub struct PullArgs {
    #[command(flatten)]
    registry: RegistryFlags,
    /// No progress, only the image's name and digest at the end.
    #[arg(short, long)]
    quiet: bool,
    /// The image, as Docker names it (`debian` is docker.io/library/debian:latest).
    reference: String,
}

/// When `husk run REF` pulls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum PullPolicy {
    /// When the store lacks the image.
    #[default]
    Missing,
    /// Every time (a newer image under the tag replaces the stored one).
    Always,
    /// Never: a missing image is an error.
    Never,
}

#[derive(Args)]
pub struct PushArgs {
    #[command(flatten)]
    registry: RegistryFlags,
    /// No progress, only the pushed name and digest.
    #[arg(short, long)]
    quiet: bool,
    /// The stored image.
    name: String,
    /// Where to push it (default: its own name).
    target: Option<String>,
}

#[derive(Args)]
pub struct TagArgs {
    /// A stored image.
    source: String,
    /// Another name for it.
    target: String,
}

#[derive(Args)]
pub struct SaveArgs {
    /// Write here instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// The stored image.
    name: String,
}

#[derive(Args)]
pub struct LoadArgs {
    /// Read this archive instead of standard input (an OCI layout
    /// directory works too).
    #[arg(short, long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// The name to store it under (default: the one the archive gives).
    name: Option<String>,
}

#[derive(Args)]
pub struct ImagesArgs {
    /// Only the names.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
pub struct RmiArgs {
    /// The images' names.
    #[arg(required = true)]
    names: Vec<String>,
}

#[derive(Args)]
pub struct LoginArgs {
    #[command(flatten)]
    registry: RegistryFlags,
    #[arg(short, long)]
    username: String,
    /// Read the password from standard input (the only way: a password on
    /// the command line shows in `ps`).
    #[arg(long, required = true)]
    password_stdin: bool,
    /// The registry, `host[:port]`.
    server: String,
}

#[derive(Args)]
pub struct LogoutArgs {
    #[arg(long = "authfile", value_name = "FILE")]
    auth_file: Option<PathBuf>,
    server: String,
}

pub(crate) fn store() -> Result<ImageStore, Failure> {
    let dir = ImageStore::default_dir();
    ImageStore::open(dir.clone())
        .map_err(|e| Failure::runtime(format!("image store {}: {e}", dir.display())))
}

/// The full name (`docker.io/library/debian:latest`) of what the user typed.
pub fn full_name(reference: &str) -> Result<String, Failure> {
    registry::parse_reference(reference)
        .map(|r| r.whole())
        .map_err(|e| Failure::usage(e.to_string()))
}

pub fn pull(args: PullArgs) -> Result<u8, Failure> {
    let store = store()?;
    let digest = pull_into(&store, &args.reference, &args.registry, args.quiet)?;
    println!("{} {digest}", full_name(&args.reference)?);
    Ok(0)
}

/// Pulls into the store with a progress display; returns the digest.
fn pull_into(
    store: &ImageStore,
    reference: &str,
    flags: &RegistryFlags,
    quiet: bool,
) -> Result<Digest, Failure> {
    let mut display = Display::new(quiet);
    let pulled = registry::pull(store, reference, &flags.options(), &mut |e| {
        display.event(e)
    })
    .map_err(|e| Failure::runtime(e.to_string()))?;
    display.done();
    if !quiet {
        eprintln!(
            "pulled {}: {} blobs fetched ({}), {} already stored",
            pulled.image.name,
            pulled.fetched,
            human(pulled.fetched_bytes),
            display.blobs.saturating_sub(pulled.fetched)
        );
    }
    Ok(pulled.image.digest)
}

/// Opens the image `husk run` names: a path as ever, or a reference from
/// the store, pulled first as the policy says.
pub fn open_for_run(
    arg: &str,
    policy: PullPolicy,
    flags: &RegistryFlags,
) -> Result<(Image, String), Failure> {
    let path = std::path::Path::new(arg);
    if path.exists() || !registry::looks_like_reference(arg) {
        let image = Image::open(path).map_err(|e| Failure::runtime(format!("image {arg}: {e}")))?;
        return Ok((image, arg.to_string()));
    }
    let name = full_name(arg)?;
    let store = store()?;
    let stored = store
        .find(&name)
        .map_err(|e| Failure::runtime(e.to_string()))?;
    match (policy, stored) {
        (PullPolicy::Never, None) => {
            return Err(Failure::runtime(format!(
                "no image {name} in {} (and --pull never)",
                store.dir().display()
            )))
        }
        (PullPolicy::Always, _) | (PullPolicy::Missing, None) => {
            pull_into(&store, arg, flags, false)?;
        }
        _ => {}
    }
    let image = Image::open_named(store.dir(), &name)
        .map_err(|e| Failure::runtime(format!("image {name}: {e}")))?;
    Ok((image, name))
}

pub fn push(args: PushArgs) -> Result<u8, Failure> {
    let store = store()?;
    let image = stored(&store, &args.name)?;
    let target = full_name(args.target.as_deref().unwrap_or(&args.name))?;
    let mut display = Display::new(args.quiet);
    let pushed = registry::push(
        &store,
        &image,
        &target,
        &args.registry.options(),
        &mut |e| display.event_as(e, "pushed", "already there"),
    )
    .map_err(|e| Failure::runtime(e.to_string()))?;
    display.done();
    if !args.quiet {
        eprintln!(
            "pushed {target}: {} blobs uploaded ({}), the rest already there",
            pushed.uploaded,
            human(pushed.uploaded_bytes)
        );
    }
    println!("{target} {}", pushed.digest);
    Ok(0)
}

pub fn tag(args: TagArgs) -> Result<u8, Failure> {
    let store = store()?;
    let mut image = stored(&store, &args.source)?;
    image.name = full_name(&args.target)?;
    store
        .tag(&image)
        .map_err(|e| Failure::runtime(e.to_string()))?;
    Ok(0)
}

pub fn save(args: SaveArgs) -> Result<u8, Failure> {
    let store = store()?;
    let image = stored(&store, &args.name)?;
    let name = full_name(&args.name)?;
    let fail = |e: husk_image::Error| Failure::runtime(e.to_string());
    match &args.output {
        Some(path) => {
            // Written beside, renamed when whole: no half archive under the name.
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(".".as_ref());
            let mut tmp = tempfile::NamedTempFile::new_in(dir)
                .map_err(|e| Failure::runtime(format!("{}: {e}", dir.display())))?;
            husk_image::compose::save(
                &store,
                &image,
                &name,
                std::io::BufWriter::new(tmp.as_file_mut()),
            )
            .map_err(fail)?;
            tmp.persist(path)
                .map_err(|e| Failure::runtime(format!("{}: {}", path.display(), e.error)))?;
        }
        None if std::io::stdout().is_terminal() => {
            return Err(Failure::usage(
                "refusing to write an archive to a terminal: use -o FILE or a pipe",
            ))
        }
        None => husk_image::compose::save(&store, &image, &name, std::io::stdout().lock())
            .map_err(fail)?,
    }
    Ok(0)
}

pub fn load(args: LoadArgs) -> Result<u8, Failure> {
    let store = store()?;
    let fail = |e: husk_image::Error| Failure::runtime(e.to_string());
    let _hold = store.hold().map_err(fail)?;
    // An archive is read by seeking: standard input is spooled first.
    let spooled;
    let path = match &args.input {
        Some(p) => p.clone(),
        None => {
            let mut tmp = tempfile::NamedTempFile::new_in(store.dir().join("tmp"))
                .map_err(|e| Failure::runtime(format!("spooling stdin: {e}")))?;
            std::io::copy(&mut std::io::stdin().lock(), tmp.as_file_mut())
                .map_err(|e| Failure::runtime(format!("reading stdin: {e}")))?;
            spooled = tmp;
            spooled.path().to_path_buf()
        }
    };
    let shown = args
        .input
        .as_ref()
        .map_or("stdin".into(), |p| p.display().to_string());
    let image = Image::open(&path).map_err(|e| Failure::runtime(format!("{shown}: {e}")))?;
    let name = match (&args.name, image.names()) {
        (Some(n), _) => full_name(n)?,
        (None, [one]) if one.contains(['/', ':']) => full_name(one)?,
        (None, names) => {
            return Err(Failure::usage(format!(
                "{shown} names no single image ({names:?}): give the name to load it as"
            )))
        }
    };
    let base = husk_image::compose::import(&store, &image).map_err(fail)?;
    let stored = husk_image::StoredImage {
        name: name.clone(),
        digest: base.manifest_digest.clone(),
        media_type: serde_json::from_slice::<serde_json::Value>(&base.manifest_json)
            .ok()
            .and_then(|m| m["mediaType"].as_str().map(str::to_string))
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into()),
        size: base.manifest_json.len() as u64,
    };
    store.tag(&stored).map_err(fail)?;
    println!("{name} {}", base.manifest_digest);
    Ok(0)
}

/// The stored image a name the user typed names.
fn stored(store: &ImageStore, name: &str) -> Result<husk_image::StoredImage, Failure> {
    let full = full_name(name)?;
    store
        .find(&full)
        .map_err(|e| Failure::runtime(e.to_string()))?
        .ok_or_else(|| Failure::runtime(format!("no image {full} in {}", store.dir().display())))
}

pub fn images(args: ImagesArgs) -> Result<u8, Failure> {
    let store = store()?;
    let list = store
        .images()
        .map_err(|e| Failure::runtime(e.to_string()))?;
    if args.quiet {
        for image in &list {
            println!("{}", image.name);
        }
        return Ok(0);
    }
    println!("{:<50} {:<19} {:>10}", "IMAGE", "DIGEST", "SIZE");
    for image in &list {
        let size = store
            .image_size(image)
            .map(human)
            .unwrap_or_else(|_| "broken".into());
        let short = &image.digest.hex()[..12];
        println!("{:<50} sha256:{short} {size:>10}", image.name);
    }
    Ok(0)
}

pub fn rmi(args: RmiArgs) -> Result<u8, Failure> {
    let store = store()?;
    for name in &args.names {
        let full = full_name(name)?;
        let removed = store
            .untag(&full)
            .map_err(|e| Failure::runtime(e.to_string()))?;
        if removed.is_none() {
            return Err(Failure::runtime(format!(
                "no image {full} in {}",
                store.dir().display()
            )));
        }
        println!("untagged {full}");
    }
    let collected = store
        .collect()
        .map_err(|e| Failure::runtime(e.to_string()))?;
    println!(
        "deleted {} blobs no other image uses ({})",
        collected.blobs,
        human(collected.bytes)
    );
    Ok(0)
}

/// `husk image prune`: blobs no image names, interrupted downloads, and
/// block images of images the store no longer has.
pub fn prune() -> Result<u8, Failure> {
    let store = store()?;
    let fail = |e: husk_image::Error| Failure::runtime(e.to_string());
    let collected = store.collect().map_err(fail)?;
    let mut keep = std::collections::HashSet::new();
    for image in store.images().map_err(fail)? {
        if let Ok(opened) = Image::open_named(store.dir(), &image.name) {
            keep.insert(opened.manifest_digest().to_string());
        }
    }
    let cache = Cache::new(Cache::default_dir());
    let (files, bytes) = cache
        .remove_except(&keep)
        .map_err(|e| Failure::runtime(e.to_string()))?;
    println!(
        "deleted {} blobs ({}) and {files} block images ({})",
        collected.blobs,
        human(collected.bytes),
        human(bytes)
    );
    Ok(0)
}

pub fn login(args: LoginArgs) -> Result<u8, Failure> {
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .map_err(|e| Failure::runtime(format!("reading the password from stdin: {e}")))?;
    let password = password.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(Failure::usage("the password on stdin is empty"));
    }
    let file = registry::auth::login_file(args.registry.auth_file.as_deref())
        .ok_or_else(|| Failure::usage("no place for credentials: set HOME or --authfile"))?;
    registry::login(
        &args.server,
        &args.username,
        &password,
        &args.registry.options(),
    )
    .map_err(|e| Failure::runtime(e.to_string()))?;
    registry::auth::save(&file, &args.server, &args.username, &password)
        .map_err(|e| Failure::runtime(e.to_string()))?;
    println!("login succeeded; credentials saved in {}", file.display());
    Ok(0)
}

pub fn logout(args: LogoutArgs) -> Result<u8, Failure> {
    let file = registry::auth::login_file(args.auth_file.as_deref())
        .ok_or_else(|| Failure::usage("no credentials file: set HOME or --authfile"))?;
    let removed =
        registry::auth::remove(&file, &args.server).map_err(|e| Failure::runtime(e.to_string()))?;
    if !removed {
        return Err(Failure::runtime(format!(
            "not logged in to {} (in {})",
            args.server,
            file.display()
        )));
    }
    println!(
        "removed the credentials for {} from {}",
        args.server,
        file.display()
    );
    Ok(0)
}

/// Progress: a bar per blob on a terminal; otherwise one line per blob as
/// it is stored, so logs stay readable.
struct Display {
    bars: Option<MultiProgress>,
    active: std::collections::HashMap<Digest, ProgressBar>,
    quiet: bool,
    blobs: usize,
}

impl Display {
    fn new(quiet: bool) -> Display {
        let tty = std::io::stderr().is_terminal();
        Display {
            bars: (tty && !quiet).then(MultiProgress::new),
            active: Default::default(),
            quiet,
            blobs: 0,
        }
    }

    fn event(&mut self, event: Event) {
        self.event_as(event, "fetched", "already stored")
    }

    /// `moved` and `kept` say what became of a blob that was (not) sent.
    fn event_as(&mut self, event: Event, moved: &str, kept: &str) {
        match event {
            Event::Manifest { blobs, .. } => self.blobs = blobs,
            Event::Progress { digest, done, size } => {
                if let Some(bars) = &self.bars {
                    let bar = self.active.entry(digest.clone()).or_insert_with(|| {
                        let bar = bars.add(ProgressBar::new(size));
                        bar.set_style(
                            ProgressStyle::with_template(
                                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                            )
                            .expect("a valid template")
                            .progress_chars("=> "),
                        );
                        bar.set_prefix(short(digest));
                        bar.enable_steady_tick(Duration::from_millis(200));
                        bar
                    });
                    bar.set_position(done);
                }
            }
            Event::Stored {
                digest,
                size,
                fetched,
            } => {
                if let Some(bar) = self.active.remove(digest) {
                    bar.finish();
                }
                if self.bars.is_none() && !self.quiet {
                    let how = if fetched { moved } else { kept };
                    eprintln!("{}: {how} ({})", short(digest), human(size));
                }
            }
            Event::Resumed { digest, done } => self.say(format!(
                "{}: resuming an interrupted download at {}",
                short(digest),
                human(done)
            )),
            Event::Retry {
                digest,
                done,
                error,
            } => self.say(format!(
                "{}: connection broken at {} ({error}); retrying",
                short(digest),
                human(done)
            )),
        }
    }

    /// A line that stays, above the bars on a terminal.
    fn say(&self, line: String) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    fn done(&mut self) {
        for (_, bar) in self.active.drain() {
            bar.finish_and_clear();
        }
    }
}

fn short(digest: &Digest) -> String {
    format!("sha256:{}", &digest.hex()[..12])
}

fn human(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / MIB)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}
