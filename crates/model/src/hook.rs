//! Calibration hooks: observe the input of every linear layer during a forward pass.
//!
//! Post-training compression methods (GPTQ, Frantar et al. 2022; Wanda, Sun et al. 2023;
//! SparseGPT, Frantar & Alistarh 2023; EvoPress) need statistics of the activations that
//! enter each linear layer, most often the Gram matrix `X^T X` (the Hessian of the
//! layer-wise squared reconstruction error, up to a factor 2). The model calls
//! [`ActivationHook::on_linear_input`] with the `[N, in_features]` input of each linear,
//! one layer at a time, so statistics can be streamed without keeping activations.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// Which linear layer of a transformer block.
///
/// Decoder (Llama) blocks use `Q, K, V, O, Gate, Up, Down`. BERT blocks use
/// `Q, K, V, O` (attention output dense), `Up` (intermediate dense) and `Down`
/// (output dense). Q, K and V see the same input, as do Gate and Up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinearKind {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LinearKind {
    /// All kinds, in the order a decoder block applies them.
    pub const ALL: [LinearKind; 7] = [
        LinearKind::Q,
        LinearKind::K,
        LinearKind::V,
        LinearKind::O,
        LinearKind::Gate,
        LinearKind::Up,
        LinearKind::Down,
    ];

    /// Short lowercase name (`q`, `k`, `v`, `o`, `gate`, `up`, `down`).
    pub fn name(self) -> &'static str {
        match self {
            LinearKind::Q => "q",
            LinearKind::K => "k",
            LinearKind::V => "v",
            LinearKind::O => "o",
            LinearKind::Gate => "gate",
            LinearKind::Up => "up",
            LinearKind::Down => "down",
        }
    }
}

impl std::fmt::Display for LinearKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Receives the input of every linear layer during a hooked forward pass.
pub trait ActivationHook {
    /// `x` is the `[N, in_features]` f32 input of linear `kind` in block `layer`,
    /// where `N` is the number of token positions (batch × sequence) in this call.
    fn on_linear_input(&mut self, layer: usize, kind: LinearKind, x: &Tensor) -> Result<()>;
}

/// Accumulated Gram matrix of one linear layer's inputs.
#[derive(Clone, Debug)]
pub struct Xtx {
    /// `sum over samples of x x^T` as a row-major `[in, in]` f64 matrix.
    pub xtx: Tensor,
    /// Number of rows (token positions) accumulated.
    pub n_samples: usize,
}

/// An [`ActivationHook`] that accumulates `X^T X` and the sample count per linear.
///
/// Precision: each call's input is converted to f64 and `X^T X` is computed and
/// summed in f64, so the result does not depend on how the samples were batched
/// (beyond f64 rounding). The sum is not normalised: divide by `n_samples`
/// (GPTQ uses `2/n · X^T X`) as the method requires.
///
/// Q/K/V (and Gate/Up) share their input, so they get identical matrices; the
/// accumulator stores each separately so callers can index by linear without
/// knowing which share.
#[derive(Debug, Default)]
pub struct XtxAccumulator {
    layers: Option<std::ops::Range<usize>>,
    kinds: Option<Vec<LinearKind>>,
    acc: BTreeMap<(usize, LinearKind), Xtx>,
}

impl XtxAccumulator {
    /// Accumulate for every layer and every linear.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accumulate only for blocks in `layers` (e.g. the one block being compressed
    /// in a layer-by-layer pass, to bound memory).
    pub fn for_layers(layers: std::ops::Range<usize>) -> Self {
        Self {
            layers: Some(layers),
            ..Self::default()
        }
    }

    /// Restrict accumulation to these linear kinds.
    pub fn with_kinds(mut self, kinds: &[LinearKind]) -> Self {
        self.kinds = Some(kinds.to_vec());
        self
    }

    /// The accumulated statistics of one linear, if any input was seen.
    pub fn get(&self, layer: usize, kind: LinearKind) -> Option<&Xtx> {
        self.acc.get(&(layer, kind))
    }

    /// Remove and return the statistics of one linear.
    pub fn take(&mut self, layer: usize, kind: LinearKind) -> Option<Xtx> {
        self.acc.remove(&(layer, kind))
    }

    /// All accumulated `(layer, kind)` keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = (usize, LinearKind)> + '_ {
        self.acc.keys().copied()
    }

    fn wants(&self, layer: usize, kind: LinearKind) -> bool {
        self.layers.as_ref().is_none_or(|r| r.contains(&layer))
            && self.kinds.as_ref().is_none_or(|k| k.contains(&kind))
    }
}

impl ActivationHook for XtxAccumulator {
    fn on_linear_input(&mut self, layer: usize, kind: LinearKind, x: &Tensor) -> Result<()> {
        if !self.wants(layer, kind) {
            return Ok(());
        }
        let (n, d) = x.dims2()?;
        let x = x.to_dtype(DType::F64)?;
        let xtx = x.t()?.matmul(&x)?;
        match self.acc.get_mut(&(layer, kind)) {
            Some(e) => {
                if e.xtx.dims() != [d, d] {
                    return Err(Error::Invalid(format!(
                        "XtxAccumulator: layer {layer} {kind}: input width changed from {} to {d}",
                        e.xtx.dim(0)?
                    )));
                }
                e.xtx = (&e.xtx + xtx)?;
                e.n_samples += n;
            }
            None => {
                self.acc.insert((layer, kind), Xtx { xtx, n_samples: n });
            }
        }
        Ok(())
    }
}
