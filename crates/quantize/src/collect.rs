//! Per-layer activation statistics: `X^T X` of each linear's input and a row sample.
//!
//! The four distinct inputs of a decoder block ("sites"): the normed hidden state read
//! by Q, K and V; the attention output read by O; the normed hidden state read by
//! gate and up; the SwiGLU product read by down. Linears that share a site share a
//! Hessian, so each site is accumulated once.

use candle_core::{DType, Tensor};
use tersor_model::{ActivationHook, LinearKind};

/// The distinct linear inputs of a decoder block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Site {
    /// Input of Q, K, V (after the attention RMSNorm).
    Attn,
    /// Input of O (the attention heads' output).
    AttnOut,
    /// Input of gate and up (after the MLP RMSNorm).
    Mlp,
    /// Input of down (silu(gate) * up).
    MlpOut,
}

impl Site {
    pub const ALL: [Site; 4] = [Site::Attn, Site::AttnOut, Site::Mlp, Site::MlpOut];

    pub fn of(kind: LinearKind) -> Site {
        match kind {
            LinearKind::Q | LinearKind::K | LinearKind::V => Site::Attn,
            LinearKind::O => Site::AttnOut,
            LinearKind::Gate | LinearKind::Up => Site::Mlp,
            LinearKind::Down => Site::MlpOut,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The linears reading this site.
    pub fn kinds(self) -> &'static [LinearKind] {
        match self {
            Site::Attn => &[LinearKind::Q, LinearKind::K, LinearKind::V],
            Site::AttnOut => &[LinearKind::O],
            Site::Mlp => &[LinearKind::Gate, LinearKind::Up],
            Site::MlpOut => &[LinearKind::Down],
        }
    }
}

/// Statistics of one site.
#[derive(Clone, Debug, Default)]
pub struct SiteStats {
    pub cols: usize,
    /// `sum x x^T` over all rows, row-major `[cols, cols]`, f64.
    pub xtx: Vec<f64>,
    /// Rows accumulated.
    pub n: usize,
    /// A strided sample of input rows, row-major `[n_samples, cols]` (AWQ's search).
    pub samples: Vec<f32>,
}

impl SiteStats {
    pub fn n_samples(&self) -> usize {
        self.samples.len().checked_div(self.cols).unwrap_or(0)
    }

    /// The diagonal of `X^T X / n`: llama.cpp's imatrix values (mean of x² per column).
    pub fn imatrix(&self) -> Vec<f32> {
        (0..self.cols)
            .map(|i| (self.xtx[i * self.cols + i] / self.n.max(1) as f64) as f32)
            .collect()
    }

    /// Replace the statistics by those of `x · diag(1/s)` (after AWQ folds `s`).
    pub fn scale_columns_inv(&mut self, s: &[f32]) {
        let c = self.cols;
        for i in 0..c {
            for j in 0..c {
                self.xtx[i * c + j] /= s[i] as f64 * s[j] as f64;
            }
        }
        for row in self.samples.chunks_exact_mut(c) {
            for (v, &si) in row.iter_mut().zip(s) {
                *v /= si;
            }
        }
    }
}

/// An [`ActivationHook`] accumulating [`SiteStats`] for one block.
pub struct Collector {
    stats: [SiteStats; 4],
    /// Keep every `stride`-th row as a sample.
    stride: usize,
    seen: [usize; 4],
    /// Collect samples (AWQ) or only `X^T X`.
    want_samples: bool,
}

impl Collector {
    pub fn new(stride: usize, want_samples: bool) -> Self {
        Collector {
            stats: Default::default(),
            stride: stride.max(1),
            seen: [0; 4],
            want_samples,
        }
    }

    pub fn into_stats(self) -> [SiteStats; 4] {
        self.stats
    }
}

impl ActivationHook for Collector {
    fn on_linear_input(
        &mut self,
        _layer: usize,
        kind: LinearKind,
        x: &Tensor,
    ) -> tersor_model::Result<()> {
        // One observation per site: Q stands for K and V, gate for up.
        if !matches!(
            kind,
            LinearKind::Q | LinearKind::O | LinearKind::Gate | LinearKind::Down
        ) {
            return Ok(());
        }
        let site = Site::of(kind);
        let (n, cols) = x.dims2()?;
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        // f32 Gram matrix of this batch (half the cost of f64), summed in f64 across
        // batches.
        let g = x.t()?.matmul(&x)?.flatten_all()?.to_vec1::<f32>()?;
        let st = &mut self.stats[site.index()];
        if st.cols == 0 {
            st.cols = cols;
            st.xtx = vec![0.0; cols * cols];
        }
        for (a, b) in st.xtx.iter_mut().zip(&g) {
            *a += *b as f64;
        }
        st.n += n;
        if self.want_samples {
            let rows = x.to_vec2::<f32>()?;
            let seen = &mut self.seen[site.index()];
            for r in rows {
                if *seen % self.stride == 0 {
                    st.samples.extend_from_slice(&r);
                }
                *seen += 1;
            }
        }
        Ok(())
    }
}
