//! Errors. Every decode failure names what was wrong; the drivers add the
//! file and the chunk.

use std::path::PathBuf;

/// A structural problem in packed data (a bad checksum, a field out of
/// range, a stream that does not decode). `&'static str` keeps the hot
/// decoders allocation-free; the caller adds where it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Corrupt(pub &'static str);

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a tersor pack file (no TERSPAK magic)")]
    NotPacked { path: PathBuf },
    #[error("{path}: unsupported tersor pack version {version} (this build reads versions {oldest} to {supported})", oldest = crate::format::MIN_VERSION)]
    Version {
        path: PathBuf,
        version: u32,
        supported: u32,
    },
    #[error("{path}: corrupt pack file: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("{path}: {what}")]
    Input { path: PathBuf, what: String },
}

impl PackError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> PackError {
        PackError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn corrupt(path: impl Into<PathBuf>, what: impl Into<String>) -> PackError {
        PackError::Corrupt {
            path: path.into(),
            what: what.into(),
        }
    }
}

pub type Result<T, E = PackError> = std::result::Result<T, E>;
