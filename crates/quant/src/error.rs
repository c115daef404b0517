//! Errors of the layer quantizers.

use std::path::PathBuf;

/// What can go wrong while quantizing a layer or reading quantization inputs.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// Shapes that do not fit together (weight vs Hessian, group size vs row length, ...).
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A NaN or infinity in a weight, Hessian or activation.
    #[error("non-finite value: {0}")]
    NonFinite(String),
    /// The damped Hessian is still not positive definite.
    #[error("Hessian is not positive definite after damping: {0}")]
    NotPositiveDefinite(String),
    /// An unsupported or unknown setting (type, preset, bit width, ...).
    #[error("{0}")]
    Unsupported(String),
    /// A malformed file (imatrix, ...), naming the file.
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    /// I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An error from the ggml codecs.
    #[error(transparent)]
    Codec(#[from] tersor_ggml::CodecError),
}

pub type Result<T> = std::result::Result<T, QuantError>;
