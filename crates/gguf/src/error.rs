use std::path::PathBuf;

/// Everything that can go wrong reading or writing a GGUF file. The messages
/// name the file and the problem, e.g.
/// `/x/model.gguf: tensor 'blk.0.attn_q.weight' data [1024..5120) lies outside the file (size 4096)`.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file is not a GGUF file we can read, or is corrupt.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// An I/O error on `path` (opening, mapping, writing, renaming).
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// A request to the writer that would produce an invalid file
    /// (bad tensor shape, duplicate name, ...). No file is involved yet.
    #[error("{0}")]
    Invalid(String),
    /// An I/O error raised by caller code (e.g. inside the tensor-data callback
    /// of [`crate::GgufWriter::write`]); lets such code use `?` on `io::Error`.
    #[error("{0}")]
    Other(#[from] std::io::Error),
    /// Any other error from caller code, as text.
    #[error("{0}")]
    Message(String),
}

impl GgufError {
    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        GgufError::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub(crate) fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        GgufError::Io {
            path: path.into(),
            err,
        }
    }
}
