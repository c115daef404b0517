//! SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be
//! Accurately Pruned in One-Shot", Algorithm 1), following the reference
//! `SparseGPT.fasterprune`:
//!
//! ```text
//! H ← XᵀX + λI;  Hinv ← upper Cholesky factor of H⁻¹            (as GPTQ)
//! for each block of B columns [i1, i2):
//!     unstructured: mask ← the k smallest w² / Hinv[j,j]² of the block (all rows)
//!     for i in i1..i2:
//!         N:M: at each group start, mask the M−N smallest w² / Hinv[j,j]² of the group
//!         q ← 0 where masked, w elsewhere
//!         e ← (w − q) / Hinv[i,i];  W[:, i+1..i2] −= e · Hinv[i, i+1..i2]
//!     W[:, i2..] −= E · Hinv[i1..i2, i2..]                      (lazy batch update)
//! ```
//!
//! Each removal is an Optimal Brain Surgeon step that re-optimises the weights not yet
//! visited, so, as for GPTQ, the reported loss `Σ (w − q)² / Hinv[i,i]² / 2` equals
//! `½ tr((W − Q) (H + λI) (W − Q)ᵀ)` exactly. The mask of block `b` is chosen on the
//! weights as updated by all earlier blocks (adaptive mask selection). The count per block
//! is `round(s · rows · i2) − round(s · rows · i1)`, so the layer has exactly
//! `round(s · rows · cols)` zeros.
//!
//! [`sparsegpt_quantized`] is the paper's joint mode (§3.5 "Joint sparsification and
//! quantization"): `q` of a kept weight is its rounding onto a quantization grid instead
//! of `w`, and its error is compensated like a pruned weight's. Groups are fitted as
//! GPTQ fits them: when the solver reaches a group's first column, on that moment's
//! weights.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use tersor_quant::gptq::{
    check_hessian, clear_upper_simd_state, clear_upper_simd_state_all_threads,
    inverse_cholesky_upper, zero_dead_columns,
};
use tersor_quant::gptq_grid::GptqFormatGrid;
use tersor_quant::grid::Grid;
use tersor_quant::rtn::check_layer;

use crate::pattern::{smallest_k, zeros_for, Pattern};
use crate::{PruneError, Result};

/// Settings of [`sparsegpt`], with the reference's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseGptConfig {
    /// Damping added to the Hessian diagonal as a fraction of its mean (`percdamp`, 0.01).
    pub damp_percent: f64,
    /// Columns per mask-selection block and lazy update (`blocksize`, 128).
    pub block_size: usize,
}

impl Default for SparseGptConfig {
    fn default() -> Self {
        Self {
            damp_percent: 0.01,
            block_size: 128,
        }
    }
}

/// What [`sparsegpt`] returns.
#[derive(Clone, Debug)]
pub struct SparseGptOutput {
    /// The pruned and updated layer, `[rows, cols]` row-major.
    pub weights: Vec<f32>,
    /// `Σ (w − q)² / Hinv[i,i]² / 2` = `½ tr((W − Q)(H + λI)(W − Q)ᵀ)` in the scale of `h`.
    pub loss: f64,
    /// Columns with `H[i, i] == 0` (never activated): their weights are set to zero first.
    pub dead_columns: usize,
    /// The damping `λ` added to the Hessian diagonal (after any retries).
    pub damp: f64,
}

/// Prune `w` (`[rows, cols]`, row-major) with SparseGPT given `h = XᵀX` (`cols × cols`,
/// f64, row-major; its scale does not matter).
///
/// Errors: shapes, NaN/inf in `w` or `h`, a bad pattern (N:M needs `m` to divide both
/// `cols` and the block size), a negative Hessian diagonal, or a Hessian still not
/// positive definite after damping.
pub fn sparsegpt(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &[f64],
    pattern: Pattern,
    cfg: &SparseGptConfig,
) -> Result<SparseGptOutput> {
    solve::<GptqFormatGrid>(w, rows, cols, h, pattern, None, cfg).map(|(o, _)| o)
}

/// SparseGPT jointly with quantization: the kept weights are rounded onto `grid` (fitted
/// per row and group of `grid.group_size()` columns) and their rounding errors are
/// compensated as the pruned weights' are. Returns the layer (pruned weights exactly
/// zero, kept ones the grid's decoded values) and the fitted groups, row-major
/// `[rows, ⌈cols / group_size⌉]`. `loss` counts both kinds of error.
pub fn sparsegpt_quantized<G: Grid>(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &[f64],
    pattern: Pattern,
    grid: &G,
    cfg: &SparseGptConfig,
) -> Result<(SparseGptOutput, Vec<G::Group>)> {
    solve(w, rows, cols, h, pattern, Some(grid), cfg)
}

fn solve<G: Grid>(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &[f64],
    pattern: Pattern,
    grid: Option<&G>,
    cfg: &SparseGptConfig,
) -> Result<(SparseGptOutput, Vec<G::Group>)> {
    clear_upper_simd_state_all_threads();
    check_layer(w, rows, cols, grid.map_or(1, |g| g.group_size()))?;
    pattern.check(cols)?;
    let layer = format!("weight [{rows}, {cols}]");
    if cfg.block_size == 0 {
        return Err(PruneError::Unsupported("SparseGPT block size 0".into()));
    }
    let bs = cfg.block_size.min(cols);
    if let Pattern::NM { n, m } = pattern {
        if bs % m != 0 {
            return Err(PruneError::Unsupported(format!(
                "N:M pattern {n}:{m} needs a block size that is a multiple of {m}, got {bs}"
            )));
        }
    }
    check_hessian(h, cols)?;

    let mut w = w.to_vec();
    let mut h = h.to_vec();
    let dead_columns = zero_dead_columns(&mut w, &mut h, rows, cols, &layer)?;
    let (u, damp) = inverse_cholesky_upper(&h, cols, cfg.damp_percent).map_err(|e| match e {
        PruneError::NotPositiveDefinite(msg) => {
            PruneError::NotPositiveDefinite(format!("{layer}: {msg}"))
        }
        other => other,
    })?;
    clear_upper_simd_state_all_threads();
    drop(h);
    let hinv: Vec<f32> = u.iter().map(|&x| x as f32).collect();
    drop(u);
    let diag: Vec<f32> = (0..cols).map(|i| hinv[i * cols + i]).collect();

    let chunk_rows = rows
        .div_ceil(4 * rayon::current_num_threads())
        .clamp(16, 256);
    let mut err = vec![0f32; rows * bs];
    // One slot per (row, group), filled when the solver reaches the group's first column
    // (one unused slot per row without a grid, so rows chunk alike).
    let gpr = grid.map_or(1, |g| cols.div_ceil(g.group_size()));
    let mut groups: Vec<Option<G::Group>> = vec![None; rows * gpr];
    let mut loss = 0.0;
    for i1 in (0..cols).step_by(bs) {
        let i2 = (i1 + bs).min(cols);
        let count = i2 - i1;
        // Unstructured: one mask over the whole block (every row), on the current weights.
        let mask: Option<Vec<bool>> = match pattern {
            Pattern::Unstructured(s) => {
                let k = zeros_for(rows * i2, s) - zeros_for(rows * i1, s);
                let scores: Vec<f32> = (0..rows * count)
                    .map(|t| {
                        let (r, j) = (t / count, i1 + t % count);
                        saliency(w[r * cols + j], diag[j])
                    })
                    .collect();
                let mut m = vec![false; rows * count];
                for t in smallest_k(&scores, k) {
                    m[t] = true;
                }
                Some(m)
            }
            Pattern::NM { .. } => None,
        };
        let block = Block {
            hinv: &hinv,
            diag: &diag,
            mask: mask.as_deref(),
            pattern,
            grid,
            cols,
            bs,
            i1,
            i2,
        };
        loss += w
            .par_chunks_mut(chunk_rows * cols)
            .zip(err.par_chunks_mut(chunk_rows * bs))
            .zip(groups.par_chunks_mut(chunk_rows * gpr))
            .enumerate()
            .map(|(k, ((wc, ec), gc))| block.solve(k * chunk_rows, wc, ec, gc))
            .sum::<f64>();
    }
    let groups = match grid {
        Some(_) => groups
            .into_iter()
            .map(|g| g.expect("every group is fitted at its first column"))
            .collect(),
        None => Vec::new(),
    };
    Ok((
        SparseGptOutput {
            weights: w,
            loss,
            dead_columns,
            damp,
        },
        groups,
    ))
}

/// OBS saliency of removing `w` with `d = Hinv[i, i]`: `w² / d²` (twice the loss added).
fn saliency(w: f32, d: f32) -> f32 {
    (w / d) * (w / d)
}

/// One block of columns, shared by the row chunks solving it.
struct Block<'a, G: Grid> {
    hinv: &'a [f32],
    diag: &'a [f32],
    /// Unstructured mask of the block, `[rows, count]`, all rows.
    mask: Option<&'a [bool]>,
    pattern: Pattern,
    /// Joint quantization of the kept weights.
    grid: Option<&'a G>,
    cols: usize,
    bs: usize,
    i1: usize,
    i2: usize,
}

impl<G: Grid> Block<'_, G> {
    /// Prune columns `i1..i2` of the rows `row0..` held in `w` (updated in place) and apply
    /// the lazy update to the columns after the block. `groups` holds the rows' group
    /// slots (empty without a grid). Returns the rows' loss.
    fn solve(
        &self,
        row0: usize,
        w: &mut [f32],
        err: &mut [f32],
        groups: &mut [Option<G::Group>],
    ) -> f64 {
        let Self {
            hinv,
            diag,
            mask,
            pattern,
            grid,
            cols,
            bs,
            i1,
            i2,
        } = *self;
        let count = i2 - i1;
        let rows = w.len() / cols;
        let mut loss = 0.0;
        let mut group = Vec::new();
        for r in 0..rows {
            let wr = &mut w[r * cols..(r + 1) * cols];
            let er = &mut err[r * bs..(r + 1) * bs];
            for i in i1..i2 {
                let pruned = match (pattern, mask) {
                    (Pattern::NM { n, m }, _) => {
                        if (i - i1) % m == 0 {
                            // The group's mask, on its weights as updated so far.
                            let scores: Vec<f32> =
                                (i..i + m).map(|j| saliency(wr[j], diag[j])).collect();
                            group = vec![false; m];
                            for t in smallest_k(&scores, m - n) {
                                group[t] = true;
                            }
                        }
                        group[(i - i1) % m]
                    }
                    (_, Some(mk)) => mk[(row0 + r) * count + i - i1],
                    (_, None) => unreachable!("unstructured blocks have a mask"),
                };
                let x = wr[i];
                let q = match grid {
                    Some(g) => {
                        let gs = g.group_size();
                        let slot = &mut groups[r * cols.div_ceil(gs) + i / gs];
                        if i % gs == 0 {
                            *slot = Some(g.fit(&wr[i..(i + gs).min(cols)], None));
                        }
                        match slot {
                            _ if pruned => 0.0,
                            Some(fitted) => g.round(fitted, i % gs, x).1,
                            None => unreachable!("a group is fitted at its first column"),
                        }
                    }
                    None if pruned => 0.0,
                    None => {
                        er[i - i1] = 0.0;
                        continue;
                    }
                };
                wr[i] = q;
                let d = hinv[i * cols + i];
                let e = (x - q) / d;
                loss += f64::from(e).powi(2) / 2.0;
                er[i - i1] = e;
                let hrow = &hinv[i * cols + i + 1..i * cols + i2];
                for (wv, hv) in wr[i + 1..i2].iter_mut().zip(hrow) {
                    *wv -= e * hv;
                }
            }
        }
        // W[:, i2:] -= Err · Hinv[i1:i2, i2:] (row-major view as the transpose of a
        // column-major one; see tersor_quant::gptq).
        if i2 < cols {
            let dst = MatMut::from_column_major_slice_with_stride_mut(
                &mut w[i2..],
                cols - i2,
                rows,
                cols,
            )
            .transpose_mut();
            let lhs = MatRef::from_row_major_slice_with_stride(err, rows, count, bs);
            let rhs = MatRef::from_row_major_slice_with_stride(
                &hinv[i1 * cols + i2..],
                count,
                cols - i2,
                cols,
            );
            matmul(dst, Accum::Add, lhs, rhs, -1.0f32, Par::Seq);
            clear_upper_simd_state();
        }
        loss
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::magnitude::magnitude;
    use crate::pattern::{satisfies_nm, sparsity_of};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use tersor_quant::gptq::hessian_from_activations;

    /// Correlated activations: x = z A with A mixing neighbouring inputs.
    fn activations(n: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let z: Vec<f32> = (0..n * cols)
            .map(|_| r.random_range(-1.0f32..1.0))
            .collect();
        let scale: Vec<f32> = (0..cols).map(|j| 0.2 + (j % 7) as f32).collect();
        (0..n * cols)
            .map(|t| {
                let (i, j) = (t / cols, t % cols);
                let prev = z[i * cols + (j + cols - 1) % cols];
                (z[t] + 0.8 * prev) * scale[j]
            })
            .collect()
    }

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
    }

    /// `½ tr(Δ H Δᵀ)` in f64.
    fn quadratic(w: &[f32], q: &[f32], h: &[f64], rows: usize, cols: usize, damp: f64) -> f64 {
        let mut total = 0.0;
        for r in 0..rows {
            let d: Vec<f64> = (0..cols)
                .map(|j| f64::from(w[r * cols + j] - q[r * cols + j]))
                .collect();
            for i in 0..cols {
                let hd: f64 = (0..cols).map(|j| h[i * cols + j] * d[j]).sum::<f64>() + damp * d[i];
                total += d[i] * hd;
            }
        }
        total / 2.0
    }

    /// `H = I` and one block of all columns: no weight is ever updated.
    fn identity_one_block(cols: usize) -> (Vec<f64>, SparseGptConfig) {
        let h = (0..cols * cols)
            .map(|t| if t / cols == t % cols { 1.0 } else { 0.0 })
            .collect();
        let cfg = SparseGptConfig {
            block_size: cols,
            ..Default::default()
        };
        (h, cfg)
    }

    #[test]
    fn identity_hessian_reduces_to_magnitude_pruning() {
        // H = I: Hinv is diagonal, so no weight is updated and the saliency is w² times a
        // constant; one block of all columns is layer-wise magnitude pruning, exactly.
        let (rows, cols) = (24, 64);
        let w = random(rows * cols, 3);
        let (h, cfg) = identity_one_block(cols);
        for p in [
            Pattern::Unstructured(0.5),
            Pattern::Unstructured(0.7),
            Pattern::NM { n: 2, m: 4 },
        ] {
            let s = sparsegpt(&w, rows, cols, &h, p, &cfg).unwrap();
            assert_eq!(s.weights, magnitude(&w, rows, cols, p).unwrap(), "{p}");
        }
    }

    #[test]
    fn identity_hessian_joint_mode_is_magnitude_pruning_then_round_to_nearest() {
        // With no weight updates the joint mode keeps magnitude pruning's mask and rounds
        // every kept weight onto groups fitted on the original weights: RTN's values.
        let (rows, cols) = (24, 64);
        let w = random(rows * cols, 3);
        let (h, cfg) = identity_one_block(cols);
        for (p, grid) in [
            (
                Pattern::Unstructured(0.5),
                GptqFormatGrid::new(4, 16, true).unwrap(),
            ),
            (
                Pattern::Unstructured(0.3),
                GptqFormatGrid::new(3, 32, false).unwrap(),
            ),
            (
                Pattern::NM { n: 2, m: 4 },
                GptqFormatGrid::new(2, 64, false).unwrap(),
            ),
        ] {
            let (s, groups) = sparsegpt_quantized(&w, rows, cols, &h, p, &grid, &cfg).unwrap();
            let mask = magnitude(&w, rows, cols, p).unwrap();
            let r = tersor_quant::rtn::rtn(&w, rows, cols, &grid, None).unwrap();
            let want: Vec<f32> = (0..rows * cols)
                .map(|t| if mask[t] == 0.0 { 0.0 } else { r.values[t] })
                .collect();
            assert_eq!(s.weights, want, "{p} {grid:?}");
            assert_eq!(groups, r.groups, "{p} {grid:?}");
        }
    }

    #[test]
    fn joint_mode_at_sparsity_zero_is_gptq() {
        // Nothing pruned, every weight rounded with its error compensated: GPTQ's
        // Algorithm 1 (same damping, blocks and group fitting), checked against the
        // GPTQ solver of tersor-quant.
        let (rows, cols, n) = (32, 128, 512);
        let x = activations(n, cols, 7);
        let h = hessian_from_activations(&x, n, cols);
        let w = random(rows * cols, 8);
        let grid = GptqFormatGrid::new(3, 32, false).unwrap();
        let cfg = SparseGptConfig {
            block_size: 64,
            ..Default::default()
        };
        let (s, groups) =
            sparsegpt_quantized(&w, rows, cols, &h, Pattern::Unstructured(0.0), &grid, &cfg)
                .unwrap();
        let gcfg = tersor_quant::gptq::GptqConfig {
            block_size: 64,
            ..Default::default()
        };
        let g = tersor_quant::gptq::gptq(&w, rows, cols, &h, &grid, &gcfg).unwrap();
        assert_eq!(s.weights, g.quantized.values);
        assert_eq!(groups, g.quantized.groups);
        assert!(
            (s.loss - g.loss).abs() <= 1e-6 * g.loss,
            "{} vs {}",
            s.loss,
            g.loss
        );
    }

    #[test]
    fn joint_mode_rounds_kept_weights_onto_the_grid_and_compensates_the_error() {
        let (rows, cols, n) = (40, 96, 512);
        let x = activations(n, cols, 4);
        let h = hessian_from_activations(&x, n, cols);
        let w = random(rows * cols, 5);
        let cfg = SparseGptConfig {
            block_size: 32,
            ..Default::default()
        };
        for (p, grid) in [
            (
                Pattern::Unstructured(0.5),
                GptqFormatGrid::new(4, 32, true).unwrap(),
            ),
            (
                Pattern::NM { n: 2, m: 4 },
                GptqFormatGrid::new(3, 64, false).unwrap(),
            ),
        ] {
            let (s, groups) = sparsegpt_quantized(&w, rows, cols, &h, p, &grid, &cfg).unwrap();
            assert_eq!(groups.len(), rows * cols.div_ceil(grid.group_size));
            // The pattern holds exactly, and every kept value is a point of its group's
            // grid: rounding it again returns it.
            match p {
                Pattern::Unstructured(sp) => assert_eq!(
                    s.weights.iter().filter(|&&v| v == 0.0).count(),
                    zeros_for(rows * cols, sp)
                ),
                Pattern::NM { n, m } => assert!(satisfies_nm(&s.weights, cols, n, m)),
            }
            let gs = grid.group_size;
            for (t, &v) in s.weights.iter().enumerate() {
                let (r, j) = (t / cols, t % cols);
                let g = &groups[r * cols.div_ceil(gs) + j / gs];
                assert_eq!(grid.round(g, j % gs, v).1, v, "{p}: ({r}, {j}) = {v}");
            }
            // Exact bookkeeping, as for pruning alone.
            let q = quadratic(&w, &s.weights, &h, rows, cols, s.damp);
            assert!(
                (s.loss - q).abs() <= 1e-3 * q,
                "{p}: loss {} vs {q}",
                s.loss
            );
            // Joint beats pruning first and rounding the survivors afterwards (RTN), whose
            // rounding errors nothing compensates.
            let pruned = sparsegpt(&w, rows, cols, &h, p, &cfg).unwrap().weights;
            let r = tersor_quant::rtn::rtn(&pruned, rows, cols, &grid, None).unwrap();
            let after: Vec<f32> = (0..rows * cols)
                .map(|t| if pruned[t] == 0.0 { 0.0 } else { r.values[t] })
                .collect();
            let q_after = quadratic(&w, &after, &h, rows, cols, s.damp);
            assert!(q < q_after, "{p}: joint {q}, prune then round {q_after}");
        }
    }

    #[test]
    fn exact_sparsity_and_loss_equals_the_quadratic_error() {
        let (rows, cols, n) = (40, 96, 512);
        let x = activations(n, cols, 4);
        let h = hessian_from_activations(&x, n, cols);
        let w = random(rows * cols, 5);
        let cfg = SparseGptConfig {
            block_size: 32,
            ..Default::default()
        };
        for p in [
            Pattern::Unstructured(0.6),
            Pattern::NM { n: 2, m: 4 },
            Pattern::NM { n: 4, m: 8 },
        ] {
            let s = sparsegpt(&w, rows, cols, &h, p, &cfg).unwrap();
            match p {
                Pattern::Unstructured(sp) => assert_eq!(
                    s.weights.iter().filter(|&&v| v == 0.0).count(),
                    zeros_for(rows * cols, sp)
                ),
                Pattern::NM { n, m } => {
                    assert!(satisfies_nm(&s.weights, cols, n, m));
                    assert_eq!(sparsity_of(&s.weights), p.sparsity());
                }
            }
            let q = quadratic(&w, &s.weights, &h, rows, cols, s.damp);
            assert!(
                (s.loss - q).abs() <= 1e-3 * q,
                "{p}: loss {} vs ½tr(ΔHΔᵀ) {q}",
                s.loss
            );
            // The updates must pay: on correlated inputs SparseGPT's output error is far
            // below magnitude pruning's and below Wanda's at the same pattern.
            let mg = magnitude(&w, rows, cols, p).unwrap();
            let norms = crate::wanda::column_norms(&h, cols).unwrap();
            let wd = crate::wanda::wanda(&w, rows, cols, &norms, p).unwrap();
            let (qm, qw) = (
                quadratic(&w, &mg, &h, rows, cols, s.damp),
                quadratic(&w, &wd, &h, rows, cols, s.damp),
            );
            assert!(
                q < 0.6 * qm && q < qw,
                "{p}: sparsegpt {q}, wanda {qw}, magnitude {qm}"
            );
        }
    }

    #[test]
    fn dead_columns_and_bad_input() {
        let (rows, cols) = (4, 8);
        let w = random(rows * cols, 6);
        let mut h: Vec<f64> = (0..cols * cols)
            .map(|t| if t / cols == t % cols { 2.0 } else { 0.0 })
            .collect();
        h[3 * cols + 3] = 0.0;
        let s = sparsegpt(
            &w,
            rows,
            cols,
            &h,
            Pattern::Unstructured(0.25),
            &SparseGptConfig::default(),
        )
        .unwrap();
        assert_eq!(s.dead_columns, 1);
        assert!((0..rows).all(|r| s.weights[r * cols + 3] == 0.0));
        assert_eq!(s.weights.iter().filter(|&&v| v == 0.0).count(), 8);
        h[0] = f64::NAN;
        assert!(sparsegpt(
            &w,
            rows,
            cols,
            &h,
            Pattern::Unstructured(0.5),
            &SparseGptConfig::default()
        )
        .is_err());
        let cfg = SparseGptConfig {
            block_size: 6,
            ..Default::default()
        };
        let id: Vec<f64> = (0..cols * cols)
            .map(|t| if t / cols == t % cols { 1.0 } else { 0.0 })
            .collect();
        assert!(sparsegpt(&w, rows, cols, &id, Pattern::NM { n: 2, m: 4 }, &cfg).is_err());
    }
}
