//! tersor-gptq: the GPTQ checkpoint format of AutoGPTQ / GPTQModel
//! (`quant_method: "gptq"`, `checkpoint_format: "gptq"`, the "v1" layout), as loaded
//! by `transformers` / optimum and vLLM.
//!
//! - [`QuantizedLinear`] / [`PackedLinear`]: integer codes, fp16 scales, zero points
//!   and `g_idx` of one linear layer, packed to and from `qweight` / `qzeros` /
//!   `scales` / `g_idx` (2, 3, 4 and 8 bits, act-order), and dequantized with the
//!   reference's fp16 arithmetic ([`pack`](crate::pack) module docs).
//! - [`QuantizationConfig`]: `quantization_config` / `quantize_config.json`, including
//!   GPTQModel's per-module `dynamic` overrides ([`QuantizationConfig::resolve`]).
//! - [`GptqWriter`]: writes a Hugging Face GPTQ directory (safetensors, sharded when
//!   large, `config.json`, `quantize_config.json`); [`hf_llama_config`] builds a
//!   `LlamaForCausalLM` config.
//! - [`scan_gptq_modules`] / [`dequantize_module`]: reading the quantized linears of a
//!   checkpoint back (used by `tersor-model` to load GPTQ directories).
//! - [`tokenizer_json_from_gguf`] / [`tokenizer_files_from_gguf`]: Hugging Face
//!   tokenizer files for a GGUF byte-level BPE vocabulary.
//!
//! `tools/gptq_reference/unpack.py` is a numpy transcription of GPTQModel's unpacking
//! and dequantization; `tests/reference.rs` checks this crate against it bit for bit.

mod config;
mod error;
pub mod pack;
mod read;
mod tokenizer;
mod write;

pub use config::{DynamicAction, DynamicOverride, DynamicRule, ModuleQuant, QuantizationConfig};
pub use error::{GptqError, Result};
pub use pack::{PackedLinear, QuantizedLinear, Shaped, SUPPORTED_BITS};
pub use read::{dequantize_module, read_packed, scan_gptq_modules, GptqModule};
pub use tokenizer::{tokenizer_files_from_gguf, tokenizer_json_from_gguf, HfTokenizerFiles};
pub use write::{
    hf_llama_config, FloatDtype, GptqWriter, LlamaHfConfig, DEFAULT_MAX_SHARD_BYTES, WEIGHTS_FILE,
};
