//! The crate's error type: problems with a file name the file.

use std::path::PathBuf;

/// Errors from packing, parsing, writing or exporting GPTQ checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum GptqError {
    /// Invalid input from the caller (shapes, codes, zero points, configuration).
    #[error("{0}")]
    Invalid(String),
    /// A file whose content is not what a GPTQ checkpoint needs.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// An I/O error on `path`.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An error reading or writing safetensors (the message names the file).
    #[error(transparent)]
    Safetensors(#[from] tersor_safetensors::StError),
}

/// Shorthand for `std::result::Result<T, GptqError>`.
pub type Result<T> = std::result::Result<T, GptqError>;

impl GptqError {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        GptqError::Invalid(msg.into())
    }

    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        GptqError::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GptqError::Io {
            path: path.into(),
            source,
        }
    }
}
