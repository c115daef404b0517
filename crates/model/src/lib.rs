//! tersor-model: f32 reference runtimes for the models tersor compresses.
//!
//! - [`Llama`]: Llama-family decoders (Llama, SmolLM, Mistral, Qwen2) from GGUF files
//!   (weights dequantized to f32) or Hugging Face directories (safetensors).
//! - [`Bert`]: BERT sentence encoders (sentence-transformers layout).
//! - [`TextTokenizer`]: tokenizers built from GGUF metadata (matching llama.cpp) or
//!   from `tokenizer.json`.
//! - [`ActivationHook`] / [`XtxAccumulator`]: calibration statistics for GPTQ-style
//!   compressors, collected layer by layer.
//! - [`load`]: open a `.gguf` file or a Hugging Face directory as a [`LoadedModel`].
//!
//! Everything runs in f32 on the CPU with candle; matmuls go through the `gemm`
//! crate (multithreaded with rayon; AVX-512 kernels enabled, see Cargo.toml). GGUF
//! weights are dequantized once at load time with `tersor-ggml`, bit-exactly as
//! llama.cpp does: that f32 model is the reference every quality figure is
//! measured against. Throughput of the default model (SmolLM2-135M, one 512-token
//! window, all logits) is about 300 tokens/s on 2 cores in a release build
//! (`cargo run --release -p tersor-model --example speed`).

mod bert;
mod error;
mod gguf;
mod hf;
mod hook;
mod llama;
mod load;
mod safetensors;
mod spm;
mod tokenizer;
mod weights;

pub use bert::{Bert, BertConfig, Pooling};
pub use error::{Error, Result};
pub use gguf::GgufWeights;
pub use hook::{ActivationHook, LinearKind, Xtx, XtxAccumulator};
pub use llama::{Llama, LlamaConfig, RopeScaling, RopeStyle, TensorNaming};
pub use load::{load, LoadedModel, ModelInfo, GGUF_ARCHS};
pub use safetensors::SafetensorsWeights;
pub use tokenizer::{token_type, GgufVocab, TextTokenizer};
pub use weights::{TensorMap, WeightSource};
