//! The error type of the backbones: every variant names the weights file (when there is one) and
//! what is wrong with it.

use std::path::{Path, PathBuf};

use onenet_stages::StageError;

#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a checkpoint this reader understands (corrupt, truncated, unsupported).
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error("{}: tensor `{name}` is missing (expected shape {expected:?})", path.display())]
    MissingTensor {
        path: PathBuf,
        name: String,
        expected: Vec<i64>,
    },
    #[error(
        "{}: tensor `{name}` has shape {found:?}, expected shape {expected:?}",
        path.display()
    )]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error(
        "{}: unexpected tensor `{name}` (shape {found:?}): {model} has no such weight",
        path.display()
    )]
    UnexpectedTensor {
        path: PathBuf,
        name: String,
        found: Vec<i64>,
        model: &'static str,
    },
    #[error("{}: {source}", path.display())]
    Torch {
        path: PathBuf,
        #[source]
        source: tch::TchError,
    },
    #[error("unknown backbone `{0}` (known: inception_v3, efficientnet_lite0)")]
    UnknownKind(String),
    #[error("unknown pooling `{0}` (known: final, multiscale, grid)")]
    UnknownPooling(String),
    #[error("pooling `{pooling}` is not available for {kind} (it is for efficientnet_lite0)")]
    UnsupportedPooling { kind: String, pooling: String },
}

impl BackboneError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        BackboneError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn format(path: &Path, message: impl Into<String>) -> Self {
        BackboneError::Format {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    pub(crate) fn torch(path: &Path, source: tch::TchError) -> Self {
        BackboneError::Torch {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Lets a stage use `?` on backbone calls: I/O errors stay I/O errors, everything else becomes a
/// problem with the weights file (or with the backbone name, a param).
impl From<BackboneError> for StageError {
    fn from(error: BackboneError) -> Self {
        match error {
            BackboneError::Io { path, source } => StageError::Io { path, source },
            BackboneError::UnknownKind(_) => StageError::Param {
                name: "backbone".to_string(),
                message: error.to_string(),
            },
            BackboneError::UnknownPooling(_) | BackboneError::UnsupportedPooling { .. } => {
                StageError::Param {
                    name: "pooling".to_string(),
                    message: error.to_string(),
                }
            }
            BackboneError::Format { ref path, .. }
            | BackboneError::MissingTensor { ref path, .. }
            | BackboneError::ShapeMismatch { ref path, .. }
            | BackboneError::UnexpectedTensor { ref path, .. }
            | BackboneError::Torch { ref path, .. } => {
                let path = path.clone();
                // The message without the leading path, which StageError::File adds back.
                let full = error.to_string();
                let prefix = format!("{}: ", path.display());
                let message = full.strip_prefix(&prefix).unwrap_or(&full).to_string();
                StageError::File { path, message }
            }
        }
    }
}
