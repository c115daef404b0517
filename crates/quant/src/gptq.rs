//! GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
//! Pre-trained Transformers", Algorithm 1) onto any [`Grid`].
//!
//! The code follows the reference `GPTQ.fasterquant` (IST-DASLab/gptq, also AutoGPTQ):
//! dead columns, optional act-order permutation, damping, `Hinv` = upper Cholesky factor
//! of `H^{-1}`, then a column loop in blocks of `block_size` with lazy batch updates.
//!
//! For a quadratic objective this greedy procedure is exact bookkeeping: quantizing the
//! weight at (permuted) position `i` while re-optimising the not yet quantized weights
//! raises `½ δW H δWᵀ` by `(w - q)² / (2 [H_F⁻¹]_ii) = (w - q)² / (2 d²)` with
//! `d = Hinv[i, i]`. Summed over all columns, the reported [`GptqOutput::loss`] therefore
//! equals `½ tr((W - Q) H_damped (W - Q)ᵀ)` for the damped Hessian actually factorised.

use faer::linalg::matmul::matmul;
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Accum, Mat, MatMut, MatRef, Par, Side};
use rayon::prelude::*;

use crate::error::{QuantError, Result};
use crate::grid::{Grid, Quantized};
use crate::rtn::check_layer;

/// Settings of [`gptq`], with the reference's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct GptqConfig {
    /// Damping added to the Hessian diagonal, as a fraction of its mean (`percdamp`, 0.01).
    pub damp_percent: f64,
    /// Columns per lazy batch update (`blocksize`, 128).
    pub block_size: usize,
    /// Quantize columns in order of decreasing Hessian diagonal (`actorder`).
    pub act_order: bool,
    /// Fit every group up front on the original weights, in original column order
    /// (`static_groups`). Needed with `act_order` for formats whose groups are positional
    /// (ggml blocks) rather than indexed through a `g_idx`.
    pub static_groups: bool,
}

impl Default for GptqConfig {
    fn default() -> Self {
        Self {
            damp_percent: 0.01,
            block_size: 128,
            act_order: false,
            static_groups: false,
        }
    }
}

/// What [`gptq`] returns.
#[derive(Clone, Debug)]
pub struct GptqOutput<T> {
    /// The rounded layer. `codes` and `values` are in ORIGINAL column order. `groups` are
    /// in original column order too, except with `act_order && !static_groups`: then the
    /// solver walked groups over permuted positions, and `groups[row * groups_per_row + k]`
    /// holds the group of positions `k * group_size .. (k + 1) * group_size`, i.e. of
    /// original columns `perm[k * group_size ..]` (GPTQ's
    /// `g_idx[col] = position_of(col) / group_size`).
    pub quantized: Quantized<T>,
    /// With `act_order`: position `p` of the solver's walk holds original column `perm[p]`.
    pub perm: Option<Vec<usize>>,
    /// The reference's proxy loss: `Σ (w - q)² / d² / 2` over all weights, which equals
    /// `½ tr((W - Q) (H + damp I) (W - Q)ᵀ)` in the scale of the `h` given.
    pub loss: f64,
    /// Columns with `H[i, i] == 0` (never activated): quantized as zero weights.
    pub dead_columns: usize,
    /// The damping added to the Hessian diagonal (after any retries).
    pub damp: f64,
}

/// How many times Cholesky is tried, each time with 10x the damping of the last.
const DAMP_ATTEMPTS: u32 = 3;

/// Quantize `w` (`[rows, cols]`, row-major) onto `grid` with GPTQ.
///
/// `h` is `X^T X` over calibration activations (`cols × cols`, row-major); its scale is
/// irrelevant to the result (the reference's `2/n` normalisation only rescales `loss`).
///
/// Groups are fitted by [`Grid::fit`] with `importance` = the undamped Hessian diagonal of
/// the group's columns. Without `static_groups`, a group is fitted when the walk reaches
/// its first column, on the weights updated by all error compensation so far. (The
/// reference reads the outer `W` there, which misses the in-block updates of earlier
/// columns of the same lazy block when `groupsize < blocksize`; we fit on the fully
/// updated weights, which is what the algorithm means and what it does for
/// `groupsize == blocksize`.)
///
/// Errors: shapes ([`QuantError::Shape`]), NaN/inf in `w` or `h`
/// ([`QuantError::NonFinite`], naming the element), a negative Hessian diagonal or a
/// Hessian still indefinite after damping ([`QuantError::NotPositiveDefinite`]), and,
/// without `static_groups`, a group that would start inside a lazy block and end in the
/// next ([`QuantError::Unsupported`]; fine whenever one of block and group size divides
/// the other, or for per-channel groups).
///
/// Cost (flops, `r = rows`, `c = cols`, `b = block_size`): the lazy batch updates
/// `W[:, i2:] -= Err · Hinv[i1:i2, i2:]` take `Σ_k 2·r·b·(c - (k+1)·b) ≈ r·c·(c - b)`; the
/// in-block updates take `≈ r·c·b`; forming `Hinv` takes `≈ ⅔ c³` (f64). Rounding and
/// fitting are `O(r·c)`.
pub fn gptq<G: Grid>(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &[f64],
    grid: &G,
    cfg: &GptqConfig,
) -> Result<GptqOutput<G::Group>> {
    // The caller may have run gemm kernels (faer, candle) on the pool's threads.
    clear_upper_simd_state_all_threads();
    let gs = grid.group_size();
    check_layer(w, rows, cols, gs)?;
    let layer = format!("weight [{rows}, {cols}]");
    check_config(cfg, gs, cols)?;
    check_hessian(h, cols)?;

    let mut w = w.to_vec();
    let mut h = h.to_vec();

    let dead_columns = zero_dead_columns(&mut w, &mut h, rows, cols, &layer)?;

    let gpr = cols.div_ceil(gs);
    let static_groups: Option<Vec<G::Group>> = cfg.static_groups.then(|| {
        let imp: Vec<f32> = (0..cols).map(|i| h[i * cols + i] as f32).collect();
        w.par_chunks(cols)
            .flat_map_iter(|wr| {
                (0..gpr)
                    .map(|k| {
                        let span = k * gs..((k + 1) * gs).min(cols);
                        grid.fit(&wr[span.clone()], Some(&imp[span]))
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    });

    // Act order: largest Hessian diagonal first (stable for ties).
    let perm: Option<Vec<usize>> = cfg.act_order.then(|| {
        let mut p: Vec<usize> = (0..cols).collect();
        p.sort_by(|&a, &b| h[b * cols + b].total_cmp(&h[a * cols + a]));
        p
    });
    if let Some(p) = &perm {
        w = permute_columns(&w, cols, p);
        let hp = permute_columns(&h, cols, p);
        h = (0..cols)
            .flat_map(|i| hp[p[i] * cols..(p[i] + 1) * cols].iter().copied())
            .collect();
    }
    // Importance for in-loop fits: the undamped diagonal, in walk order.
    let diag: Vec<f32> = (0..cols).map(|i| h[i * cols + i] as f32).collect();

    let (u, damp) = inverse_cholesky_upper(&h, cols, cfg.damp_percent).map_err(|e| match e {
        QuantError::NotPositiveDefinite(msg) => {
            QuantError::NotPositiveDefinite(format!("{layer}: {msg}"))
        }
        other => other,
    })?;
    clear_upper_simd_state_all_threads();
    drop(h);
    let hinv: Vec<f32> = u.iter().map(|&x| x as f32).collect();
    drop(u);

    // Every step of the walk, the lazy batch update included, is row by row (row r's
    // update uses only row r's errors), so chunks of rows are solved independently in
    // parallel, each with its own sequential matmuls: one parallel region per layer, no
    // synchronisation per block.
    let walk = Walk {
        grid,
        hinv: &hinv,
        diag: &diag,
        perm: perm.as_deref(),
        static_groups: static_groups.as_deref(),
        cols,
        gs,
        bs: cfg.block_size.min(cols),
    };
    let chunk_rows = rows
        .div_ceil(4 * rayon::current_num_threads())
        .clamp(16, 256);
    let mut codes = vec![0u8; rows * cols];
    let mut values = vec![0f32; rows * cols];
    let solved: Vec<(Vec<G::Group>, f64)> = w
        .par_chunks_mut(chunk_rows * cols)
        .zip(codes.par_chunks_mut(chunk_rows * cols))
        .zip(values.par_chunks_mut(chunk_rows * cols))
        .enumerate()
        .map(|(k, ((wc, cc), vc))| walk.solve(k * chunk_rows, wc, cc, vc))
        .collect();
    let mut row_groups = Vec::with_capacity(if static_groups.is_some() {
        0
    } else {
        rows * gpr
    });
    let mut loss = 0.0;
    for (g, l) in solved {
        row_groups.extend(g);
        loss += l;
    }

    if let Some(p) = &perm {
        codes = unpermute_columns(&codes, cols, p);
        values = unpermute_columns(&values, cols, p);
    }
    let groups = static_groups.unwrap_or(row_groups);
    Ok(GptqOutput {
        quantized: Quantized {
            rows,
            cols,
            group_size: gs,
            groups,
            codes,
            values,
        },
        perm,
        loss,
        dead_columns,
        damp,
    })
}

/// What every row chunk of the GPTQ walk shares.
struct Walk<'a, G: Grid> {
    grid: &'a G,
    /// Upper Cholesky factor of the damped inverse Hessian, f32, walk order, `cols × cols`.
    hinv: &'a [f32],
    /// Undamped Hessian diagonal in walk order (importance for in-walk fits).
    diag: &'a [f32],
    /// Walk position -> original column (act order).
    perm: Option<&'a [usize]>,
    /// Groups fitted before the walk (all rows, original column order).
    static_groups: Option<&'a [G::Group]>,
    cols: usize,
    gs: usize,
    bs: usize,
}

impl<G: Grid> Walk<'_, G> {
    /// GPTQ's column loop over the rows `row0..` held in `w` (walk order, updated in
    /// place), writing codes and values (walk order). Returns the groups fitted during
    /// the walk (row-major; empty with static groups) and the rows' proxy loss.
    fn solve(
        &self,
        row0: usize,
        w: &mut [f32],
        codes: &mut [u8],
        values: &mut [f32],
    ) -> (Vec<G::Group>, f64) {
        let Self {
            grid,
            hinv,
            diag,
            perm,
            static_groups,
            cols,
            gs,
            bs,
        } = *self;
        let rows = w.len() / cols;
        let gpr = cols.div_ceil(gs);
        let mut err = vec![0f32; rows * bs];
        let mut groups: Vec<Vec<G::Group>> = (0..rows)
            .map(|_| Vec::with_capacity(if static_groups.is_some() { 0 } else { gpr }))
            .collect();
        let mut loss = 0.0;
        for i1 in (0..cols).step_by(bs) {
            let i2 = (i1 + bs).min(cols);
            for (r, gr) in groups.iter_mut().enumerate() {
                let wr = &mut w[r * cols..(r + 1) * cols];
                let er = &mut err[r * bs..(r + 1) * bs];
                for i in i1..i2 {
                    let x = wr[i];
                    let (c, q) = match static_groups {
                        Some(sg) => {
                            let orig = perm.map_or(i, |p| p[i]);
                            grid.round(&sg[(row0 + r) * gpr + orig / gs], orig % gs, x)
                        }
                        None => {
                            if i % gs == 0 {
                                // `check_config` ensured the group either lies inside
                                // this block, where its columns carry every update so far,
                                // or starts at this block's start, where the lazy updates
                                // have brought all of W[:, i1..] up to date. Either way
                                // the fit sees the current, error-compensated weights.
                                let end = (i + gs).min(cols);
                                gr.push(grid.fit(&wr[i..end], Some(&diag[i..end])));
                            }
                            grid.round(&gr[i / gs], i % gs, x)
                        }
                    };
                    codes[r * cols + i] = c;
                    values[r * cols + i] = q;
                    // Spread the rounding error over the block's remaining columns.
                    let d = hinv[i * cols + i];
                    let e = (x - q) / d;
                    loss += (f64::from(x - q) / f64::from(d)).powi(2) / 2.0;
                    er[i - i1] = e;
                    let hrow = &hinv[i * cols + i + 1..i * cols + i2];
                    for (wv, hv) in wr[i + 1..i2].iter_mut().zip(hrow) {
                        *wv -= e * hv;
                    }
                }
            }
            // Lazy batch update of the columns after the block:
            // W[:, i2:] -= Err1 · Hinv[i1:i2, i2:].
            if i2 < cols {
                let count = i2 - i1;
                // Row-major view built as the transpose of a column-major one: faer
                // 0.24.4's `from_row_major_slice_with_stride_mut` builds a column-major
                // view (and so writes out of bounds; faer-rs PR #267).
                let dst = MatMut::from_column_major_slice_with_stride_mut(
                    &mut w[i2..],
                    cols - i2,
                    rows,
                    cols,
                )
                .transpose_mut();
                let lhs = MatRef::from_row_major_slice_with_stride(&err, rows, count, bs);
                let rhs = MatRef::from_row_major_slice_with_stride(
                    &hinv[i1 * cols + i2..],
                    count,
                    cols - i2,
                    cols,
                );
                matmul(dst, Accum::Add, lhs, rhs, -1.0f32, Par::Seq);
                clear_upper_simd_state();
            }
        }
        (groups.into_iter().flatten().collect(), loss)
    }
}

/// Dead columns: an input that is always zero (`H[i, i] == 0`) carries no information;
/// the reference sets `H[i, i] = 1` (so H stays invertible) and the column's weights to 0.
/// Returns how many there were; a negative diagonal is an error naming `layer`.
pub fn zero_dead_columns(
    w: &mut [f32],
    h: &mut [f64],
    rows: usize,
    cols: usize,
    layer: &str,
) -> Result<usize> {
    let mut dead = 0;
    for i in 0..cols {
        let d = h[i * cols + i];
        if d < 0.0 {
            return Err(QuantError::NotPositiveDefinite(format!(
                "{layer}: Hessian diagonal at column {i} is negative ({d})"
            )));
        }
        if d == 0.0 {
            h[i * cols + i] = 1.0;
            for r in 0..rows {
                w[r * cols + i] = 0.0;
            }
            dead += 1;
        }
    }
    Ok(dead)
}

/// `X^T X` in f64 for activations `x` (`[n, cols]`, row-major): the (unnormalised)
/// Hessian [`gptq`] takes. Exactly symmetric.
///
/// # Panics
/// If `x.len() != n * cols`.
pub fn hessian_from_activations(x: &[f32], n: usize, cols: usize) -> Vec<f64> {
    assert_eq!(x.len(), n * cols, "activations are not [{n}, {cols}]");
    let xm = Mat::<f64>::from_fn(n, cols, |i, j| f64::from(x[i * cols + j]));
    let mut hm = Mat::<f64>::zeros(cols, cols);
    matmul(
        hm.as_mut(),
        Accum::Replace,
        xm.transpose(),
        xm.as_ref(),
        1.0,
        Par::rayon(0),
    );
    clear_upper_simd_state_all_threads();
    (0..cols * cols)
        .map(|k| {
            let (i, j) = (k / cols, k % cols);
            hm[(i.max(j), i.min(j))]
        })
        .collect()
}

/// The reference's `Hinv`: the upper Cholesky factor `U` of `(H + damp·I)⁻¹`
/// (`UᵀU = (H + damp·I)⁻¹`), row-major `n × n` f64, with `damp = damp_percent · mean(diag H)`.
/// If Cholesky fails the damping is multiplied by 10 and retried (up to 3 attempts in
/// all); returns `U` and the damping used, or a message naming the failing position.
///
/// The reference computes `cholesky(H)`, `cholesky_inverse`, then `cholesky(·, upper)`
/// (`≈ c³` flops). Here one factorisation suffices: with `J` the reversal permutation,
/// `J H J = L̂ L̂ᵀ` gives `H = V Vᵀ` with `V = J L̂ J` upper triangular, so
/// `H⁻¹ = V⁻ᵀ V⁻¹ = UᵀU` with `U = V⁻¹ = J L̂⁻¹ J` upper triangular with a positive
/// diagonal — by uniqueness, the same factor (`≈ ⅔ c³` flops).
pub fn inverse_cholesky_upper(h: &[f64], n: usize, damp_percent: f64) -> Result<(Vec<f64>, f64)> {
    check_hessian(h, n)?;
    let mean_diag = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
    let mut damp = damp_percent * mean_diag;
    let mut why = String::new();
    for _ in 0..DAMP_ATTEMPTS {
        let a = Mat::<f64>::from_fn(n, n, |i, j| h[i * n + j] + if i == j { damp } else { 0.0 });
        match a.as_ref().reverse_rows_and_cols().llt(Side::Lower) {
            Ok(llt) => {
                let mut m = Mat::<f64>::zeros(n, n);
                invert_lower_triangular(m.as_mut(), llt.L(), Par::rayon(0));
                let mut u = vec![0f64; n * n];
                for i in 0..n {
                    for j in i..n {
                        u[i * n + j] = m[(n - 1 - i, n - 1 - j)];
                    }
                }
                let ok = u.iter().all(|x| x.is_finite())
                    && (0..n).all(|i| u[i * n + i] > 0.0 && (u[i * n + i] as f32).is_finite());
                if ok {
                    return Ok((u, damp));
                }
                why = format!("inverse overflows with damping {damp:e}");
            }
            Err(faer::linalg::cholesky::llt::factor::LltError::NonPositivePivot { index }) => {
                why = format!(
                    "Cholesky pivot at position {} is not positive with damping {damp:e}",
                    n - 1 - index
                );
            }
        }
        damp *= 10.0;
    }
    Err(QuantError::NotPositiveDefinite(format!(
        "{why} ({DAMP_ATTEMPTS} attempts from damp_percent {damp_percent}, mean diagonal {mean_diag:e})"
    )))
}

fn check_config(cfg: &GptqConfig, gs: usize, cols: usize) -> Result<()> {
    if !(cfg.damp_percent.is_finite() && cfg.damp_percent >= 0.0) {
        return Err(QuantError::Unsupported(format!(
            "GPTQ damp_percent must be finite and >= 0, got {}",
            cfg.damp_percent
        )));
    }
    if cfg.block_size == 0 {
        return Err(QuantError::Unsupported("GPTQ block_size is 0".into()));
    }
    // A group fitted during the walk must see current weights when the walk reaches its
    // first column: it must start at a lazy block's start or lie inside one block (see the
    // fit in `Walk::solve`). True whenever one of block size and group size divides the
    // other, and for per-channel groups. Static groups are fitted before the walk.
    let bs = cfg.block_size.min(cols);
    let straddles = (0..cols)
        .step_by(gs)
        .find(|&g| g % bs != 0 && g / bs != ((g + gs).min(cols) - 1) / bs);
    if let (false, Some(g)) = (cfg.static_groups, straddles) {
        return Err(QuantError::Unsupported(format!(
            "GPTQ block_size {} and group size {gs}: the group at column {g} starts inside a \
             block and ends in the next (use sizes where one divides the other)",
            cfg.block_size
        )));
    }
    Ok(())
}

/// A Hessian `[cols, cols]` of the right length whose entries are all finite (the error
/// names the first bad element).
pub fn check_hessian(h: &[f64], cols: usize) -> Result<()> {
    let n = cols
        .checked_mul(cols)
        .ok_or_else(|| QuantError::Shape(format!("Hessian [{cols}, {cols}] overflows")))?;
    if h.len() != n {
        return Err(QuantError::Shape(format!(
            "Hessian has {} elements, [{cols}, {cols}] needs {n}",
            h.len()
        )));
    }
    if let Some(k) = h.iter().position(|x| !x.is_finite()) {
        return Err(QuantError::NonFinite(format!(
            "Hessian [{cols}, {cols}] at ({}, {}) is {}",
            k / cols,
            k % cols,
            h[k]
        )));
    }
    Ok(())
}

/// `out[r, p] = x[r, perm[p]]`.
fn permute_columns<T: Copy + Send + Sync>(x: &[T], cols: usize, perm: &[usize]) -> Vec<T> {
    x.par_chunks(cols)
        .flat_map_iter(|row| perm.iter().map(|&c| row[c]).collect::<Vec<_>>())
        .collect()
}

/// Inverse of [`permute_columns`]: `out[r, perm[p]] = x[r, p]`.
fn unpermute_columns<T: Copy + Send + Sync + Default>(
    x: &[T],
    cols: usize,
    perm: &[usize],
) -> Vec<T> {
    let mut out = vec![T::default(); x.len()];
    out.par_chunks_mut(cols)
        .zip(x.par_chunks(cols))
        .for_each(|(o, row)| {
            for (p, &c) in perm.iter().enumerate() {
                o[c] = row[p];
            }
        });
    out
}

/// Clear the upper halves of the vector registers (`vzeroupper`) on this thread.
///
/// faer's x86 matmul kernels (gemm 0.19's assembly microkernels) return without
/// `vzeroupper`, leaving AVX-512 state dirty on the thread that ran them. Legacy-SSE code
/// run afterwards on that thread (all scalar f32 code compiled for baseline x86-64, e.g.
/// [`Grid::round`]) then pays a state-transition penalty per instruction: on this
/// project's Xeon VM it made `GptqFormatGrid::round` about 30 times slower. Call this after
/// a faer (or candle/gemm) kernel on the thread that ran it. No-op off x86-64 or without AVX.
pub fn clear_upper_simd_state() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: AVX is available (checked above). `vzeroupper` only zeroes bits 128 and
        // up of the vector registers, which compiled Rust code never keeps live across an
        // intrinsic call on a baseline (non-AVX) target.
        unsafe { std::arch::x86_64::_mm256_zeroupper() }
    }
}

/// [`clear_upper_simd_state`] on this thread and on every thread of the rayon pool: after
/// a parallel faer call, before scalar work spread over the pool.
pub fn clear_upper_simd_state_all_threads() {
    clear_upper_simd_state();
    rayon::broadcast(|_| clear_upper_simd_state());
}
