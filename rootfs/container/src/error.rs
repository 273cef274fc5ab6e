//! The runtime's error type.

use std::io;

/// Everything that can go wrong while creating or driving a container.
///
/// Every message is one line that names the step and, where there is one, the
/// path (`mount proc on /proc: Operation not permitted`,
/// `executable file not found: /bin/nope`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec asks for something invalid or unsupported.
    #[error("invalid spec: {0}")]
    Spec(String),

    /// The container's seccomp profile cannot be compiled.
    #[error("seccomp: {0}")]
    Seccomp(String),

    /// A step failed, in the runtime or inside the container's process during
    /// its setup (mounts, pivot_root, cwd, credentials, ...).
    #[error("{context}: {source}")]
    Os {
        /// The step and the path it worked on.
        context: String,
        /// The OS error.
        source: io::Error,
    },

    /// `execve` of the container's (or an exec'd) process failed. The process
    /// exits 127 (not found) or 126 (any other reason).
    #[error("{}", exec_message(.path, *.searched, .source))]
    Exec {
        /// The path that was executed, or the bare name when `$PATH` was searched.
        path: String,
        /// Whether `$PATH` was searched for `path`.
        searched: bool,
        /// Why the exec failed.
        source: io::Error,
    },

    /// The operation does not fit the container's state (start twice, stats
    /// without a cgroup, exec into a container that is gone, ...).
    #[error("{0}")]
    State(String),
}

fn exec_message(path: &str, searched: bool, source: &io::Error) -> String {
    match source.raw_os_error() {
        Some(libc::ENOENT) if searched => format!("executable file not found in $PATH: {path}"),
        Some(libc::ENOENT) => format!("executable file not found: {path}"),
        _ => format!("cannot execute {path}: {source}"),
    }
}

impl Error {
    /// An [`Error::Os`] from a step description and an OS error.
    pub(crate) fn os(context: impl Into<String>, source: io::Error) -> Self {
        Error::Os {
            context: context.into(),
            source,
        }
    }

    /// An [`Error::Os`] from a step description and the current `errno`.
    pub(crate) fn last(context: impl Into<String>) -> Self {
        Self::os(context, io::Error::last_os_error())
    }

    /// The OS error number behind this error, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Os { source, .. } | Error::Exec { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_messages_name_the_path() {
        let e = Error::Exec {
            path: "/bin/nope".into(),
            searched: false,
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(e.to_string(), "executable file not found: /bin/nope");
        let e = Error::Exec {
            path: "nope".into(),
            searched: true,
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(e.to_string(), "executable file not found in $PATH: nope");
        let e = Error::Exec {
            path: "/etc/passwd".into(),
            searched: false,
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(e.to_string().starts_with("cannot execute /etc/passwd: "));
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
    }
}
