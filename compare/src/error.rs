#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program or file the comparison needs is missing or failed.
    #[error("{0}")]
    Tool(String),
    /// This environment does not run this workload (the reason): reported
    /// as not measured, not as a failure.
    #[error("{0}")]
    NotMeasured(String),
    /// A workload ran but did not produce its figures.
    #[error("{0}")]
    Workload(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }
}
