//! Errors of the quantization job.

use std::path::PathBuf;

/// What can go wrong in `tersor quantize`.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    /// A bad option or option combination.
    #[error("{0}")]
    Usage(String),
    /// The input model cannot be quantized as asked (names the file).
    #[error("{path}: {msg}")]
    Input { path: PathBuf, msg: String },
    /// The calibration text is unusable (names the file).
    #[error("calibration text {path}: {msg}")]
    Calibration { path: PathBuf, msg: String },
    /// A layer failed to quantize (names the tensor).
    #[error("{tensor}")]
    Layer {
        tensor: String,
        #[source]
        source: tersor_quant::QuantError,
    },
    /// An internal consistency check failed (a bug, never bad input).
    #[error("internal check failed: {0}")]
    Invariant(String),
    #[error(transparent)]
    Model(#[from] tersor_model::Error),
    #[error(transparent)]
    Quant(#[from] tersor_quant::QuantError),
    #[error(transparent)]
    Gguf(#[from] tersor_gguf::GgufError),
    #[error(transparent)]
    Codec(#[from] tersor_ggml::CodecError),
    #[error(transparent)]
    Gptq(#[from] tersor_gptq::GptqError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, QuantizeError>;
