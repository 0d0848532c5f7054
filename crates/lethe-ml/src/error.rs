use std::path::PathBuf;

/// Errors of the ML engine.
///
/// Everything that can come from user data (files, shapes, specs) is reported here rather than
/// panicking, so a bad input fails one attempt and never the process that runs it.
#[derive(Debug, thiserror::Error)]
pub enum MlError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A data or checkpoint file is not what its format promises.
    #[error("{}: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    /// A specification (dataset, model, recipe, ensemble) is invalid.
    #[error("invalid {what}: {reason}")]
    InvalidSpec { what: &'static str, reason: String },
    /// Tensors do not have the shapes an operation needs.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// An output directory holds results of a different job.
    #[error("{}: {reason}", path.display())]
    Conflict { path: PathBuf, reason: String },
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Result type of the ML engine.
pub type Result<T, E = MlError> = std::result::Result<T, E>;

impl MlError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MlError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn malformed(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        MlError::Malformed {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn spec(what: &'static str, reason: impl Into<String>) -> Self {
        MlError::InvalidSpec {
            what,
            reason: reason.into(),
        }
    }
}
