//! `husk commit CONTAINER NAME`: a running container's changes become one
//! more layer on top of the image it runs, stored under NAME. The guest's
//! agent writes the changes as a tar (the container frozen meanwhile); it
//! arrives as the output of a stream and goes through gzip into the store.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use husk_image::compose::{self, Base, CommitInfo, LayerWriter};
use husk_image::{Digest, Image, ImageStore};
use husk_wire::agent::Request;

use crate::agent::{Msg, Sinks};
use crate::containers::{self, AGENT_TIMEOUT, CONTAINER_ID};
use crate::run::state::State;
use crate::Failure;

/// The export's stream on its own connection.
const EXPORT_STREAM: u32 = 1;
/// How long an export may take (a big layer over a nested testbed's vsock).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Args)]
pub struct CommitArgs {
    /// The commit message (the new history entry's comment).
    #[arg(short, long)]
    message: Option<String>,
    /// The author (the config's and the history entry's).
    #[arg(short, long)]
    author: Option<String>,
    /// A running container (`husk run -d`).
    container: String,
    /// The new image's name.
    name: String,
}

pub fn commit(args: CommitArgs) -> Result<u8, Failure> {
    let name = crate::registry_cmd::full_name(&args.name)?;
    let found = containers::running(&args.container)?;
    let store = crate::registry_cmd::store()?;
    let fail = |e: husk_image::Error| Failure::runtime(e.to_string());
    let _hold = store.hold().map_err(fail)?;
    let base = base_of(&store, &found.state)?;
    let layer = export(&store, &found)?;
    let info = CommitInfo {
        message: args.message,
        author: args.author,
        created_by: found.state.command.join(" "),
    };
    let image = compose::commit(&store, &base, &layer, &info, &name).map_err(fail)?;
    println!("{name} {}", image.digest);
    Ok(0)
}

/// The image the container runs, in the store: there already, or copied
/// in from the file it was run from.
fn base_of(store: &ImageStore, state: &State) -> Result<Base, Failure> {
    let digest = state.image_digest.as_deref().ok_or_else(|| {
        Failure::runtime(format!(
            "container {}: its record names no image digest (started by an older husk)",
            state.id
        ))
    })?;
    let digest = Digest::parse(digest).map_err(|e| Failure::runtime(e.to_string()))?;
    if let Ok(base) = Base::in_store(store, &digest) {
        return Ok(base);
    }
    let image = Image::open(state.image.as_ref()).map_err(|e| {
        Failure::runtime(format!(
            "container {}: its image {} is neither stored nor readable: {e}",
            state.id, state.image
        ))
    })?;
    if image.manifest_digest() != digest.to_string() {
        return Err(Failure::runtime(format!(
            "container {}: {} is not the image it started from any more ({} now, {digest} then)",
            state.id,
            state.image,
            image.manifest_digest()
        )));
    }
    compose::import(store, &image).map_err(|e| Failure::runtime(e.to_string()))
}

/// Asks the agent for the changes and writes them into the store.
fn export(
    store: &ImageStore,
    found: &crate::run::state::Found,
) -> Result<compose::NewLayer, Failure> {
    let writer = LayerWriter::new(store).map_err(|e| Failure::runtime(e.to_string()))?;
    let layer = Shared::new(writer);
    let errors = Shared::new(Vec::new());
    let sinks = Sinks {
        out: Box::new(layer.clone()),
        err: Box::new(errors.clone()),
    };
    let client = containers::connect(found, sinks).map_err(Failure::runtime)?;
    let request = Request::ExportChanges {
        id: CONTAINER_ID.into(),
        stream: EXPORT_STREAM,
    };
    let what = "export the container's changes";
    client
        .call(request, what, AGENT_TIMEOUT, &|| true)
        .map_err(Failure::runtime)?;
    let status = loop {
        match client.next(EXPORT_TIMEOUT).map_err(Failure::runtime)? {
            Some(Msg::Exited { stream, status }) if stream == EXPORT_STREAM => break status,
            Some(Msg::Closed(why)) => {
                return Err(Failure::runtime(format!("cannot {what}: {why}")))
            }
            Some(_) => {}
            None => {
                return Err(Failure::runtime(format!(
                    "cannot {what}: no end in an hour"
                )))
            }
        }
    };
    let said = String::from_utf8_lossy(&errors.take()?).trim().to_string();
    if status != husk_wire::agent::ExitStatus::Code(0) {
        return Err(Failure::runtime(format!("cannot {what}: {said}")));
    }
    layer
        .take()?
        .finish()
        .map_err(|e| Failure::runtime(e.to_string()))
}

/// A sink the agent connection's reader writes into while we keep a
/// handle: the first write error is kept (the reader drops errors, and a
/// layer that lost bytes must not be stored).
struct Shared<W> {
    inner: Arc<Mutex<(Option<W>, Option<std::io::Error>)>>,
}

impl<W> Clone for Shared<W> {
    fn clone(&self) -> Self {
        Shared {
            inner: self.inner.clone(),
        }
    }
}

impl<W> Shared<W> {
    fn new(w: W) -> Self {
        Shared {
            inner: Arc::new(Mutex::new((Some(w), None))),
        }
    }

    fn take(&self) -> Result<W, Failure> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = guard.1.take() {
            return Err(Failure::runtime(format!("writing the new layer: {e}")));
        }
        guard
            .0
            .take()
            .ok_or_else(|| Failure::runtime("the new layer was taken twice"))
    }
}

impl<W: Write> Write for Shared<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (w, err) = &mut *guard;
        if err.is_none() {
            if let Some(w) = w.as_mut() {
                if let Err(e) = w.write_all(buf) {
                    *err = Some(e);
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
