//! tersor-safetensors: read and write safetensors checkpoints, single files
//! and sharded ones (`model.safetensors.index.json`).
//!
//! Headers are parsed and validated by the `safetensors` crate (offsets must
//! tile the data section exactly, sizes must match dtype × shape), after our
//! own check of the 8-byte header length against the file size. Files are
//! memory-mapped; tensor data is returned as borrowed bytes or converted to
//! f32. Writing is atomic per file (temporary file in the same directory,
//! fsync, rename), with the header produced by the `safetensors` crate's own
//! serializer so other readers see the layout they expect.

mod read;
mod write;

use std::path::PathBuf;

pub use read::{SafetensorsModel, TensorMeta};
pub use write::{write_safetensors, write_sharded, INDEX_FILE};

/// Errors name the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum StError {
    /// The file is not a valid safetensors file / index, or is inconsistent.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// An I/O error on `path`.
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// No tensor of that name in the model at `path`.
    #[error("{}: no tensor named '{name}'", path.display())]
    NotFound { path: PathBuf, name: String },
    /// A request that cannot be written (bad sizes, duplicate names, ...).
    #[error("{0}")]
    Invalid(String),
}

impl StError {
    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        StError::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub(crate) fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        StError::Io {
            path: path.into(),
            err,
        }
    }
}

/// Element type of a safetensors tensor (the names in the JSON header).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
    /// Complex with f32 parts.
    C64,
    F8E5M2,
    F8E4M3,
    F8E8M0,
    /// Sub-byte microscaling formats: readable as raw bytes only.
    F4,
    F6E2M3,
    F6E3M2,
}

impl Dtype {
    /// Bits per element.
    pub fn bits(self) -> usize {
        self.to_st().bitsize()
    }

    /// The name used in safetensors headers ("F32", "BF16", ...).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
            Dtype::C64 => "C64",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E8M0 => "F8_E8M0",
            Dtype::F4 => "F4",
            Dtype::F6E2M3 => "F6_E2M3",
            Dtype::F6E3M2 => "F6_E3M2",
        }
    }

    /// Bytes for `n` elements, `None` on overflow or when it is not a whole
    /// number of bytes (sub-byte dtypes).
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        let bits = n.checked_mul(self.bits())?;
        (bits % 8 == 0).then_some(bits / 8)
    }

    pub(crate) fn to_st(self) -> safetensors::Dtype {
        use safetensors::Dtype as S;
        match self {
            Dtype::Bool => S::BOOL,
            Dtype::U8 => S::U8,
            Dtype::I8 => S::I8,
            Dtype::I16 => S::I16,
            Dtype::U16 => S::U16,
            Dtype::F16 => S::F16,
            Dtype::BF16 => S::BF16,
            Dtype::I32 => S::I32,
            Dtype::U32 => S::U32,
            Dtype::F32 => S::F32,
            Dtype::F64 => S::F64,
            Dtype::I64 => S::I64,
            Dtype::U64 => S::U64,
            Dtype::C64 => S::C64,
            Dtype::F8E5M2 => S::F8_E5M2,
            Dtype::F8E4M3 => S::F8_E4M3,
            Dtype::F8E8M0 => S::F8_E8M0,
            Dtype::F4 => S::F4,
            Dtype::F6E2M3 => S::F6_E2M3,
            Dtype::F6E3M2 => S::F6_E3M2,
        }
    }

    /// `None` for a dtype added to the `safetensors` crate after this code.
    pub(crate) fn from_st(d: safetensors::Dtype) -> Option<Self> {
        use safetensors::Dtype as S;
        Some(match d {
            S::BOOL => Dtype::Bool,
            S::U8 => Dtype::U8,
            S::I8 => Dtype::I8,
            S::I16 => Dtype::I16,
            S::U16 => Dtype::U16,
            S::F16 => Dtype::F16,
            S::BF16 => Dtype::BF16,
            S::I32 => Dtype::I32,
            S::U32 => Dtype::U32,
            S::F32 => Dtype::F32,
            S::F64 => Dtype::F64,
            S::I64 => Dtype::I64,
            S::U64 => Dtype::U64,
            S::C64 => Dtype::C64,
            S::F8_E5M2 => Dtype::F8E5M2,
            S::F8_E4M3 => Dtype::F8E4M3,
            S::F8_E8M0 => Dtype::F8E8M0,
            S::F4 => Dtype::F4,
            S::F6_E2M3 => Dtype::F6E2M3,
            S::F6_E3M2 => Dtype::F6E3M2,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Little-endian bytes of `dtype` to f32: F32 as is, F16 and BF16 exactly
/// (every value is representable), F64 rounded to nearest. `None` for other
/// dtypes or a length that is not a whole number of elements.
pub fn bytes_to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64) {
        return None;
    }
    let c = bytes.chunks_exact(dtype.bits() / 8);
    if !c.remainder().is_empty() {
        return None;
    }
    Some(match dtype {
        Dtype::F32 => c
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => c
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => c
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => c
            .map(|b| f64::from_le_bytes(b.try_into().expect("8-byte chunk")) as f32)
            .collect(),
        _ => unreachable!("checked above"),
    })
}
