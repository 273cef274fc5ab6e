//! The host's links over rtnetlink, for the commands that wire VMs into
//! networks (`husk run --network bridge`, the OCI runtime's namespaces):
//! one conversation per call, on a current-thread runtime of its own.

use futures_util::TryStreamExt;
use rtnetlink::Handle;

/// Runs `f` with a netlink handle and returns what it returns.
pub fn run<T, F, Fut>(f: F) -> Result<T, String>
where
    F: FnOnce(Handle) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("netlink: {e}"))?;
    rt.block_on(async {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| format!("netlink socket: {e}"))?;
        tokio::spawn(conn);
        f(handle).await
    })
}

/// The index of link `name`, if there is one.
pub async fn find(h: &Handle, name: &str) -> Result<Option<u32>, String> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(found) => Ok(found.map(|m| m.header.index)),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(format!("netlink: {name}: {e}")),
    }
}

/// The index of a link just made.
pub async fn index_of(h: &Handle, name: &str) -> Result<u32, String> {
    find(h, name)
        .await?
        .ok_or_else(|| format!("{name}: not found after creating it"))
}

/// Deletes a link if it is there.
pub async fn delete(h: &Handle, name: &str) -> Result<(), String> {
    match find(h, name).await? {
        Some(index) => h
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| format!("netlink: deleting {name}: {e}")),
        None => Ok(()),
    }
}
