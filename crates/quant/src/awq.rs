//! AWQ (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression
//! and Acceleration"): search one scale per input channel that protects the weights fed
//! by large activations, as llm-awq's `auto_scale._search_module_scale`.
//!
//! Scaling input channel `c` of a linear by `s[c]` before quantization and by `1/s[c]`
//! after leaves the float layer unchanged (`(W diag(s)) (diag(1/s) x) = W x`) but shrinks
//! the relative rounding error of the scaled-up columns. The search tries
//! `s = mean|x|^α` for `α = 0, 1/n_grid, …` and keeps the one whose quantized outputs are
//! closest to the float outputs. The caller folds `1/s` into whatever produces `x` (the
//! preceding norm or linear); this module does not.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::error::{QuantError, Result};
use crate::gptq::clear_upper_simd_state_all_threads;

/// A quantizer as AWQ uses it: `(weights [rows, cols] row-major, rows, cols)` →
/// dequantized weights of the same shape.
pub type QuantizeFn<'a> = dyn Fn(&[f32], usize, usize) -> Result<Vec<f32>> + Sync + 'a;

/// The outcome of [`awq_search`].
#[derive(Clone, Debug, PartialEq)]
pub struct AwqResult {
    /// Per input channel scale `s` (multiply weight columns by it, divide the input by it).
    pub scales: Vec<f32>,
    /// The exponent `α` chosen (0 = no scaling).
    pub ratio: f64,
    /// The loss with no scaling (`α = 0`).
    pub loss_identity: f64,
    /// The loss with the chosen scales (`<= loss_identity`).
    pub loss_best: f64,
    /// The loss of every candidate `α = k / n_grid`, in order.
    pub losses: Vec<f64>,
}

/// Search AWQ scales for the linears in `weights` (each `(W [rows, cols], rows)`), which
/// all read the activations `x` (`[n, cols]`, row-major).
///
/// For `α = k / n_grid`, `k = 0..n_grid`: `s = max(mean|x|^α, 1e-4)`,
/// `s /= sqrt(max(s) · min(s))`; the loss is `Σ_linears mean((X Ŵᵀ − X Wᵀ)²)` with
/// `Ŵ = quantize(W diag(s)) diag(1/s)`. The smallest loss wins; ties keep the smaller `α`,
/// and `α = 0` is the unscaled layer, so the result never does worse than plain
/// quantization on this objective. (llm-awq measures the loss on the whole block's output;
/// here it is summed over the given linears.)
pub fn awq_search(
    x: &[f32],
    n: usize,
    cols: usize,
    weights: &[(&[f32], usize)],
    quantize: &QuantizeFn<'_>,
    n_grid: usize,
) -> Result<AwqResult> {
    check_inputs(x, n, cols, weights, n_grid)?;
    clear_upper_simd_state_all_threads();

    // x_max in llm-awq's naming (`get_act_scale`): the mean magnitude of each channel.
    let mut x_mean = vec![0f64; cols];
    for row in x.chunks(cols) {
        for (m, &v) in x_mean.iter_mut().zip(row) {
            *m += f64::from(v.abs());
        }
    }
    for m in &mut x_mean {
        *m /= n as f64;
    }

    let xm = MatRef::from_row_major_slice(x, n, cols);
    let mut losses = Vec::with_capacity(n_grid);
    let mut best: Option<(f64, f64, Vec<f32>)> = None;
    for k in 0..n_grid {
        let ratio = k as f64 / n_grid as f64;
        let scales = candidate_scales(&x_mean, ratio);
        let mut loss = 0.0;
        for (i, &(w, rows)) in weights.iter().enumerate() {
            let ws: Vec<f32> = w
                .par_chunks(cols)
                .flat_map_iter(|row| row.iter().zip(&scales).map(|(&v, &s)| v * s))
                .collect();
            let wq = quantize(&ws, rows, cols)?;
            if wq.len() != w.len() {
                return Err(QuantError::Shape(format!(
                    "AWQ: quantizer returned {} values for linear {i} [{rows}, {cols}]",
                    wq.len()
                )));
            }
            // D = Ŵ − W; X Ŵᵀ − X Wᵀ = X Dᵀ (one product, no cancellation of large outputs).
            let d: Vec<f32> = wq
                .par_chunks(cols)
                .zip(w.par_chunks(cols))
                .flat_map_iter(|(q, o)| {
                    q.iter()
                        .zip(o)
                        .zip(&scales)
                        .map(|((&q, &o), &s)| q / s - o)
                        .collect::<Vec<_>>()
                })
                .collect();
            if let Some(j) = d.iter().position(|v| !v.is_finite()) {
                return Err(QuantError::NonFinite(format!(
                    "AWQ: quantized linear {i} [{rows}, {cols}] at row {} col {} (ratio {ratio})",
                    j / cols,
                    j % cols
                )));
            }
            let mut y = vec![0f32; n * rows];
            matmul(
                MatMut::from_row_major_slice_mut(&mut y, n, rows),
                Accum::Replace,
                xm,
                MatRef::from_row_major_slice(&d, rows, cols).transpose(),
                1.0f32,
                Par::rayon(0),
            );
            // Back to scalar work (the next candidate's quantizer) on the pool's threads.
            clear_upper_simd_state_all_threads();
            // Per-row partial sums, added in a fixed order: the loss is deterministic, so
            // equal candidates tie exactly and the smaller α wins.
            let partial: Vec<f64> = y
                .par_chunks(rows)
                .map(|row| row.iter().map(|&v| f64::from(v) * f64::from(v)).sum())
                .collect();
            let sq: f64 = partial.iter().sum();
            loss += sq / (n * rows) as f64;
        }
        losses.push(loss);
        if best.as_ref().is_none_or(|(l, _, _)| loss < *l) {
            best = Some((loss, ratio, scales));
        }
    }
    let (loss_best, ratio, scales) = best.expect("n_grid >= 1 was checked");
    Ok(AwqResult {
        scales,
        ratio,
        loss_identity: losses[0],
        loss_best,
        losses,
    })
}

/// llm-awq's candidate: `s = clamp(x_mean^ratio, min = 1e-4)`, normalised by
/// `sqrt(max(s) · min(s))` so the scales are centred around 1 on a log scale.
fn candidate_scales(x_mean: &[f64], ratio: f64) -> Vec<f32> {
    let s: Vec<f64> = x_mean.iter().map(|&m| m.powf(ratio).max(1e-4)).collect();
    let max = s.iter().copied().fold(f64::MIN, f64::max);
    let min = s.iter().copied().fold(f64::MAX, f64::min);
    let norm = (max * min).sqrt();
    s.iter().map(|&v| (v / norm) as f32).collect()
}

fn check_inputs(
    x: &[f32],
    n: usize,
    cols: usize,
    weights: &[(&[f32], usize)],
    n_grid: usize,
) -> Result<()> {
    if n_grid == 0 {
        return Err(QuantError::Unsupported("AWQ: n_grid is 0".into()));
    }
    if n == 0 || cols == 0 || n.checked_mul(cols) != Some(x.len()) {
        return Err(QuantError::Shape(format!(
            "AWQ: activations have {} values, expected [{n}, {cols}] (non-empty)",
            x.len()
        )));
    }
    if let Some(j) = x.iter().position(|v| !v.is_finite()) {
        return Err(QuantError::NonFinite(format!(
            "AWQ: activation row {} col {} is {}",
            j / cols,
            j % cols,
            x[j]
        )));
    }
    if weights.is_empty() {
        return Err(QuantError::Shape("AWQ: no linears given".into()));
    }
    for (i, &(w, rows)) in weights.iter().enumerate() {
        if rows == 0 || rows.checked_mul(cols) != Some(w.len()) {
            return Err(QuantError::Shape(format!(
                "AWQ: linear {i} has {} weights, expected [{rows}, {cols}] (non-empty)",
                w.len()
            )));
        }
        if let Some(j) = w.iter().position(|v| !v.is_finite()) {
            return Err(QuantError::NonFinite(format!(
                "AWQ: linear {i} weight at row {} col {} is {}",
                j / cols,
                j % cols,
                w[j]
            )));
        }
    }
    Ok(())
}
