//! tersor-ggml: llama.cpp's (ggml's) tensor element types.
//!
//! This crate knows the block layouts of ggml's quantized types, decodes them
//! bit-exactly as llama.cpp does, encodes them with llama.cpp's reference
//! (round-to-nearest) quantizers, and answers which types a tensor of a given
//! row length may take.
//!
//! # Types
//!
//! [`GgmlType`] lists every ggml type id (for reading any GGUF header). The
//! codecs cover the types a compressor writes or meets in common models:
//!
//! | type | block | bytes | x = |
//! |------|-------|-------|-----|
//! | F32, F16, BF16 | 1 | 4, 2, 2 | the value (F16/BF16 round to nearest even) |
//! | Q8_0 | 32 | 34 | d·q, q ∈ [-127, 127] |
//! | Q4_0 / Q5_0 | 32 | 18 / 22 | d·(q − 8) / d·(q − 16) |
//! | Q4_1 / Q5_1 | 32 | 20 / 24 | d·q + m |
//! | IQ4_NL | 32 | 18 | d·kvalues_iq4nl\[q\] (a fixed non-linear 16-entry code book) |
//! | Q2_K, Q4_K, Q5_K | 256 | 84, 144, 176 | d·sc·q − dmin·m with per-sub-block 4/6-bit scales and mins |
//! | Q3_K, Q6_K | 256 | 110, 210 | d·sc·q, symmetric, 6/8-bit sub-block scales |
//! | Q8_K | 256 | 292 | d·q with an f32 d (llama.cpp's intermediate for dot products) |
//!
//! The layouts are `#[repr(C)]` mirrors of llama.cpp's `ggml-common.h` in
//! [`blocks`]; the decoders mirror `dequantize_row_*` and the encoders
//! `quantize_row_*_ref` (plus the scale searches `make_qx_quants`,
//! `make_q3_quants`, `make_qkx2_quants` and IQ4_NL's
//! `quantize_row_iq4_nl_impl`) from `ggml-quants.c`, at llama.cpp commit
//! c392e5094deaf2d1a7c18683214f007fad3fe42b. The f32 arithmetic follows the
//! C expression order, so results are bit-identical, not merely close.
//!
//! # API
//!
//! * [`dequantize`], [`dequantize_to_vec`], [`dequantize_par`] (rayon).
//! * [`quantize`], [`quantize_into`], [`quantize_par`] (rayon; same bytes).
//! * [`is_legal`], [`fallback_type`], [`llama_fallback_type`]: whether a row
//!   length fits a type, and llama.cpp's `llama-quant.cpp` substitutions when
//!   it does not.
//! * [`quantize_weighted`], [`quantize_weighted_par`] (`quant_weighted.rs`):
//!   `ggml_quantize_chunk` with an importance matrix (the
//!   `quantize_row_*_impl` searches), bit-exact, for the [`WEIGHTED_TYPES`].
//! * [`BlockGrid`] (`grid.rs`): one block with its scales fixed by
//!   llama.cpp's quantizer and a code per element, for solvers (GPTQ) that
//!   choose the codes themselves: nearest code, exact decoded values, bytes.
//!
//! Errors are [`CodecError`]s (wrong lengths, partial blocks, unsupported
//! types, non-finite input to a quantizer); nothing panics on bad input.
//!
//! # References and fixtures
//!
//! The tests in `tests/fixtures.rs` compare against data produced by
//! independent implementations, committed under `tests/fixtures/`:
//!
//! * decoding: the `gguf` Python package (`gguf.quants.dequantize`, 0.19.0)
//!   for every type it supports, the closed form d·q for Q8_K, and llama.cpp's
//!   own `to_float` / `dequantize_row_q8_K` from `libggml-base.so`;
//! * encoding: `gguf.quants.quantize` for BF16, Q4_0, Q4_1, Q5_0, Q5_1 and
//!   Q8_0, and llama.cpp's `ggml_quantize_chunk` (`quantize_row_q8_K_ref` for
//!   Q8_K), called through ctypes, for every type;
//! * the default model: per-tensor SHA-256 of gguf-py's f32 dequantization
//!   of every tensor of `SmolLM2-135M-Instruct.Q4_1.gguf`;
//! * weighted encoding (`tests/weighted.rs`): `ggml_quantize_chunk` with and
//!   without an importance matrix, written by `tools/ggml_fixtures/gen_weighted.py`
//!   into `tests/fixtures/weighted/`.
//!
//! They are regenerated from the repository root with
//!
//! ```text
//! LIBGGML=/path/to/llama.cpp/build/bin/libggml-base.so python3 tools/ggml_fixtures/gen.py
//! ```
//!
//! where `LIBGGML` points at a llama.cpp build's `libggml-base.so` (built
//! without `-march=native`, as llama.cpp's CMake does for ggml-base, so no
//! fused multiply-adds change the rounding).

#[cfg(target_endian = "big")]
compile_error!("tersor-ggml reads ggml's little-endian block layouts in place; big-endian targets are not supported");

pub mod blocks;
mod codec;
mod dequant;
mod error;
pub mod fp;
mod grid;
mod legal;
mod quant;
mod quant_weighted;
mod types;

pub use codec::{
    bytes_for, can_dequantize, can_quantize, dequantize, dequantize_par, dequantize_to_vec,
    quantize, quantize_into, quantize_par,
};
pub use error::CodecError;
pub use grid::BlockGrid;
pub use legal::{fallback_type, is_legal, llama_fallback_type};
pub use quant_weighted::{quantize_weighted, quantize_weighted_par, WEIGHTED_TYPES};
pub use types::{GgmlType, UnknownType};
