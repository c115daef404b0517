//! tersor-prune: layer compressors that remove weights or rank instead of rounding them.
//!
//! - [`pattern`]: which weights a pruner may zero (unstructured sparsity, N:M) and the
//!   exact-count selection every pruner shares.
//! - [`magnitude`]: smallest `|w|` per layer, or one threshold across layers (global).
//! - [`wanda`]: Wanda (Sun et al. 2023), `|w| · ‖x‖` per output row.
//! - [`sparsegpt`]: SparseGPT (Frantar & Alistarh 2023), OBS mask selection per block of
//!   columns with Hessian-aware updates of the remaining weights.
//! - [`lowrank`]: truncated SVD and activation-aware (whitened) SVD, SVD-LLM style.
//!
//! Every solver takes a weight `[rows, cols]` row-major (`y = x Wᵀ`, `cols` inputs) and,
//! where it needs calibration, the Hessian `H = XᵀX` of the layer's inputs in f64 (the same
//! one GPTQ takes, from [`tersor_quant::gptq::hessian_from_activations`]).

pub mod lowrank;
pub mod magnitude;
pub mod pattern;
pub mod sparsegpt;
pub mod wanda;

pub use pattern::Pattern;
pub use tersor_quant::{QuantError as PruneError, Result};
