//! tersor-quant: layer quantizers and the llama.cpp conventions around them.
//!
//! - [`grid`]: the [`Grid`](grid::Grid) trait, a quantization grid whose parameters are
//!   chosen per group of input columns (ggml blocks, GPTQ groups).
//! - [`gptq`]: GPTQ / Optimal Brain Compression (Frantar et al. 2022) onto any grid.
//! - [`ggml_grid`]: llama.cpp's block types as grids (scales from llama.cpp's quantizer).
//! - [`rtn`]: round-to-nearest onto any grid (the baseline).
//! - [`awq`]: AWQ's activation-aware per-input-channel scale search (Lin et al. 2023).
//! - [`preset`]: llama.cpp's `llama-quantize` presets (which ggml type each tensor gets).
//! - [`imatrix`]: llama.cpp's importance-matrix files (read and write).

pub mod awq;
pub mod error;
pub mod ggml_grid;
pub mod gptq;
pub mod gptq_grid;
pub mod grid;
pub mod imatrix;
pub mod preset;
pub mod rtn;

pub use error::{QuantError, Result};
