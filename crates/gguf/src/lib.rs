//! tersor-gguf: a bounds-checked GGUF (v2/v3) reader and an atomic, streaming
//! GGUF writer.
//!
//! Why not candle's reader: it trusts the size fields of the header (string and
//! array lengths, counts) and allocates from them. Here every size field is
//! checked against the bytes that are actually left in the file before
//! anything is allocated, so a corrupt or hostile file gives an error naming the
//! file and the problem instead of a panic or an out-of-memory abort.
//!
//! Format (llama.cpp `ggml/src/gguf.cpp`, `gguf_init_from_file_impl`), all
//! little-endian:
//! `"GGUF"`, `u32 version`, `u64 n_tensors`, `u64 n_kv`, `n_kv` ×
//! (`string key`, `u32 type`, value), `n_tensors` × (`string name`,
//! `u32 n_dims`, `n_dims × u64 ne`, `u32 ggml_type`, `u64 offset`), zero padding
//! to `general.alignment` (default 32), then the data section. A string is a
//! `u64` length followed by that many bytes. Tensor offsets are relative to the
//! data section and aligned.
//!
//! Strings: llama.cpp stores GGUF strings as arbitrary bytes, and
//! `convert_hf_to_gguf.py` writes raw (not UTF-8) byte tokens for some
//! tokenizers (e.g. the RWKV "world" vocabulary). So metadata string *values*
//! that are not valid UTF-8 are kept losslessly as [`Value::RawString`]
//! (written back unchanged). Keys and tensor names must be UTF-8 (gguf-py's
//! reader also requires that). The default model's strings are all valid UTF-8
//! (checked by a test).

mod error;
mod read;
mod value;
mod write;

pub use error::GgufError;
pub use read::{GgufFile, TensorInfo};
pub use tersor_ggml::GgmlType;
pub use value::{ArrayValue, Value, ValueType};
pub use write::GgufWriter;

/// `"GGUF"` as it appears at the start of the file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of tensor offsets when the file has no
/// `general.alignment` key (llama.cpp `GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that overrides the alignment (must be a `u32`).
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// llama.cpp's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
/// llama.cpp's `GGML_MAX_NAME`: a tensor name must be shorter than this
/// (in bytes) for llama.cpp to load the file.
pub const MAX_NAME_LEN: usize = 64;
/// Deepest nesting of arrays inside arrays that we read or write
/// (llama.cpp rejects nested arrays entirely; gguf-py allows them).
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Round `x` up to a multiple of `align` (a power of two), `None` on overflow.
/// llama.cpp's `GGML_PAD`.
pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}
