//! The crate's error type: every variant that concerns a file names it.

use std::path::PathBuf;

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is readable but its content is not what the loader expects
    /// (bad JSON, missing metadata key, inconsistent shapes, ...).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// The model declares an architecture this crate does not implement.
    #[error("{path}: unsupported architecture `{arch}` (supported: {supported})")]
    UnsupportedArch {
        path: PathBuf,
        arch: String,
        supported: &'static str,
    },
    /// A tensor the architecture needs is absent from the checkpoint.
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    /// The tokenizer could not be built or run.
    #[error("{path}: tokenizer: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    /// Invalid arguments from the caller (empty input, token id out of range, bad shape).
    #[error("{0}")]
    Invalid(String),
    /// An error reading a GGUF file (the message names the file).
    #[error(transparent)]
    Gguf(#[from] tersor_gguf::GgufError),
    /// An error reading a safetensors checkpoint (the message names the file).
    #[error(transparent)]
    Safetensors(#[from] tersor_safetensors::StError),
    /// An error from a candle tensor operation.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Shorthand for `std::result::Result<T, tersor_model::Error>`.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
