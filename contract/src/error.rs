//! The one error type every stage returns: each variant names the file (and line) or param at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("param `{name}`: {message}")]
    Param { name: String, message: String },
    #[error("inputs: {0}")]
    Input(String),
    #[error("{path}: writing table: {message}")]
    Table { path: PathBuf, message: String },
}

impl StageError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StageError::Io {
            path: path.into(),
            source,
        }
    }

    /// A problem with a whole file (empty, corrupt, wrong format).
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        StageError::File {
            path: path.into(),
            message: message.into(),
        }
    }
}
