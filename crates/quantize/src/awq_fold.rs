//! AWQ (Lin et al. 2023) inside a decoder block: search a per-input-channel scale `s`
//! for each group of linears sharing an input, and fold it so the float model computes
//! the same function:
//!
//! - Q, K, V read `RMSNorm(x) · γ`: `γ ← γ / s`, `W ← W · diag(s)`.
//! - gate, up read `RMSNorm(h) · γ'`: the same with the MLP norm.
//! - down reads `silu(gate) ⊙ up`: `up` rows `← / s`, `down` columns `← · s`.
//! - O reads the attention heads' output, a linear map of V's rows only when every
//!   query head has its own key/value head; with grouped-query attention (the default
//!   LM: 9 query heads, 3 kv heads) a per-channel scale of O's input cannot be folded
//!   into V, so O is left unscaled there (as AutoAWQ does when shapes differ).
//!
//! The search objective is the output error of the group's linears under the target
//! grid's round-to-nearest (the first linear's grid stands for the group when the
//! preset mixes types), on a sample of the layer's calibration inputs.

use candle_core::{Device, Tensor};
use tersor_model::{LinearKind, Llama};
use tersor_quant::awq::awq_search;

use crate::collect::{Site, SiteStats};
use crate::error::Result;

/// What AWQ did to one site of one block.
#[derive(Clone, Debug)]
pub struct AwqSite {
    pub site: Site,
    pub ratio: f64,
    /// Relative reduction of the search objective (0 = no gain).
    pub gain: f64,
}

fn weight(model: &Llama, layer: usize, kind: LinearKind) -> Result<(Vec<f32>, usize, usize)> {
    let w = model.linear_weight(layer, kind)?;
    let (r, c) = w.dims2()?;
    Ok((w.flatten_all()?.to_vec1::<f32>()?, r, c))
}

fn set(
    model: &mut Llama,
    layer: usize,
    kind: LinearKind,
    w: Vec<f32>,
    r: usize,
    c: usize,
) -> Result<()> {
    model.set_linear_weight(layer, kind, Tensor::from_vec(w, (r, c), &Device::Cpu)?)?;
    Ok(())
}

/// Rounds a weight matrix (`w`, rows, cols) onto the grid of linear `kind`.
pub type RtnFn<'a> = dyn Fn(LinearKind, &[f32], usize, usize) -> Result<Vec<f32>> + Sync + 'a;

/// Search and fold AWQ scales for block `layer`; updates `stats` to the scaled inputs.
/// `rtn(kind, w, rows, cols)` rounds a weight matrix onto the grid of linear `kind`.
pub fn awq_block(
    model: &mut Llama,
    layer: usize,
    stats: &mut [SiteStats; 4],
    n_grid: usize,
    rtn: &RtnFn<'_>,
) -> Result<Vec<AwqSite>> {
    let cfg = model.config().clone();
    let mut done = Vec::new();
    for site in Site::ALL {
        let si = site as usize;
        if site == Site::AttnOut && cfg.n_heads != cfg.n_kv_heads {
            continue;
        }
        let st = &stats[si];
        if st.n_samples() == 0 {
            continue;
        }
        let kinds = site.kinds();
        let ws: Vec<(Vec<f32>, usize, usize)> = kinds
            .iter()
            .map(|&k| weight(model, layer, k))
            .collect::<Result<_>>()?;
        let lead = kinds[0];
        let quant = |w: &[f32], r: usize, c: usize| -> tersor_quant::Result<Vec<f32>> {
            rtn(lead, w, r, c).map_err(|e| tersor_quant::QuantError::Unsupported(e.to_string()))
        };
        let refs: Vec<(&[f32], usize)> = ws.iter().map(|(w, r, _)| (w.as_slice(), *r)).collect();
        let res = awq_search(&st.samples, st.n_samples(), st.cols, &refs, &quant, n_grid)?;
        let gain = if res.loss_identity > 0.0 {
            1.0 - res.loss_best / res.loss_identity
        } else {
            0.0
        };
        done.push(AwqSite {
            site,
            ratio: res.ratio,
            gain,
        });
        if res.scales.iter().all(|&s| s == 1.0) {
            continue;
        }
        let s = &res.scales;
        // W · diag(s) for the linears reading the site.
        for (&k, (mut w, r, c)) in kinds.iter().zip(ws) {
            for row in w.chunks_exact_mut(c) {
                for (v, &sj) in row.iter_mut().zip(s) {
                    *v *= sj;
                }
            }
            set(model, layer, k, w, r, c)?;
        }
        // ... and divide the producer of the input by s.
        match site {
            Site::Attn | Site::Mlp => {
                let attn = site == Site::Attn;
                let g = model.norm_weight(layer, attn)?.to_vec1::<f32>()?;
                let g: Vec<f32> = g.iter().zip(s).map(|(a, b)| a / b).collect();
                let n = g.len();
                model.set_norm_weight(layer, attn, Tensor::from_vec(g, n, &Device::Cpu)?)?;
            }
            Site::MlpOut | Site::AttnOut => {
                let producer = if site == Site::MlpOut {
                    LinearKind::Up
                } else {
                    LinearKind::V
                };
                let (mut w, r, c) = weight(model, layer, producer)?;
                for (row, &sr) in w.chunks_exact_mut(c).zip(s) {
                    for v in row {
                        *v /= sr;
                    }
                }
                set(model, layer, producer, w, r, c)?;
            }
        }
        stats[si].scale_columns_inv(s);
    }
    Ok(done)
}
