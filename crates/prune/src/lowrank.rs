//! Low-rank factorisation of a layer: `W ≈ A B` with `A` `[rows, r]` and `B` `[r, cols]`,
//! run as two matmuls (`y = (x Bᵀ) Aᵀ`), `r (rows + cols)` parameters instead of
//! `rows · cols`.
//!
//! - [`svd`]: truncated SVD, optimal in `‖W − A B‖_F` (Eckart–Young).
//! - [`asvd`]: activation-aware SVD with whitening (SVD-LLM, Wang et al. 2024): with
//!   `H = XᵀX = S Sᵀ` (Cholesky), the output error `‖(W − W′) Xᵀ‖² = ‖(W − W′) S‖_F²`, so
//!   the truncated SVD of `W S` followed by `· S⁻¹` is optimal in the output error, and the
//!   error equals the sum of the discarded squared singular values of `W S`.
//!
//! Both compute in f64 and store the factors in f32, split as `A = U_r Σ_r^½`,
//! `B = Σ_r^½ V_rᵀ (S⁻¹)`.

use faer::linalg::matmul::matmul;
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Accum, Mat, Par, Side};
use tersor_quant::gptq::{check_hessian, clear_upper_simd_state_all_threads};
use tersor_quant::rtn::check_layer;

use crate::{PruneError, Result};

/// A factored layer.
#[derive(Clone, Debug)]
pub struct Factors {
    pub rows: usize,
    pub cols: usize,
    pub rank: usize,
    /// `[rows, rank]`, row-major.
    pub a: Vec<f32>,
    /// `[rank, cols]`, row-major.
    pub b: Vec<f32>,
    /// All singular values of the factorised matrix (`W`, or `W S` for [`asvd`]), largest
    /// first.
    pub singular_values: Vec<f64>,
}

impl Factors {
    /// `A B`, `[rows, cols]` row-major.
    pub fn product(&self) -> Vec<f32> {
        let (r, c, k) = (self.rows, self.cols, self.rank);
        let mut out = vec![0f32; r * c];
        for i in 0..r {
            for t in 0..k {
                let a = self.a[i * k + t];
                for (o, &b) in out[i * c..(i + 1) * c]
                    .iter_mut()
                    .zip(&self.b[t * c..(t + 1) * c])
                {
                    *o += a * b;
                }
            }
        }
        out
    }

    /// Parameters of the two factors.
    pub fn params(&self) -> usize {
        self.rank * (self.rows + self.cols)
    }

    /// `Σ_{i > rank} σ_i²`: the squared Frobenius error of [`svd`], the output error
    /// `tr(ΔW (H + λI) ΔWᵀ)` of [`asvd`].
    pub fn discarded_energy(&self) -> f64 {
        self.singular_values[self.rank..]
            .iter()
            .map(|s| s * s)
            .sum()
    }
}

/// The largest rank whose factors hold at most `ratio · rows · cols` parameters (at least
/// 1; at most `min(rows, cols)`).
pub fn rank_for_ratio(rows: usize, cols: usize, ratio: f64) -> usize {
    let r = (ratio * (rows * cols) as f64 / (rows + cols) as f64).floor() as usize;
    r.clamp(1, rows.min(cols))
}

/// The smallest rank keeping at least `energy` (0..=1) of `Σ σ_i²`.
pub fn rank_for_energy(singular_values: &[f64], energy: f64) -> usize {
    let total: f64 = singular_values.iter().map(|s| s * s).sum();
    let mut acc = 0.0;
    for (i, s) in singular_values.iter().enumerate() {
        acc += s * s;
        if acc >= energy * total * (1.0 - 1e-12) {
            return i + 1;
        }
    }
    singular_values.len().max(1)
}

/// How a factorisation's rank is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rank {
    /// This rank.
    Fixed(usize),
    /// The smallest rank keeping at least this fraction (0 < e <= 1) of the factorised
    /// matrix's `Σσ²` ([`rank_for_energy`]).
    Energy(f64),
}

impl From<usize> for Rank {
    fn from(r: usize) -> Self {
        Rank::Fixed(r)
    }
}

/// Truncated SVD of `w` (`[rows, cols]`) at `rank`.
pub fn svd(w: &[f32], rows: usize, cols: usize, rank: impl Into<Rank>) -> Result<Factors> {
    let rank = rank.into();
    check_layer(w, rows, cols, 1)?;
    check_rank(rank, rows, cols)?;
    let m = Mat::<f64>::from_fn(rows, cols, |i, j| f64::from(w[i * cols + j]));
    factor(m, None, rows, cols, rank)
}

/// Activation-aware SVD of `w` at `rank` given `h = XᵀX` (`cols × cols`, f64): whitening
/// by the Cholesky factor of `H + λI`, `λ = damp_percent · mean(diag H)` (so a rank-deficient
/// calibration set still factorises).
pub fn asvd(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &[f64],
    rank: impl Into<Rank>,
    damp_percent: f64,
) -> Result<Factors> {
    let rank = rank.into();
    check_layer(w, rows, cols, 1)?;
    check_rank(rank, rows, cols)?;
    check_hessian(h, cols)?;
    let damp = damp_percent * (0..cols).map(|i| h[i * cols + i]).sum::<f64>() / cols as f64;
    let hm = Mat::<f64>::from_fn(cols, cols, |i, j| {
        h[i * cols + j] + if i == j { damp } else { 0.0 }
    });
    let llt = hm.llt(Side::Lower).map_err(|e| {
        PruneError::NotPositiveDefinite(format!("whitening Cholesky of [{rows}, {cols}]: {e:?}"))
    })?;
    let s = llt.L().to_owned();
    let mut s_inv = Mat::<f64>::zeros(cols, cols);
    invert_lower_triangular(s_inv.as_mut(), s.as_ref(), Par::rayon(0));
    let wm = Mat::<f64>::from_fn(rows, cols, |i, j| f64::from(w[i * cols + j]));
    let mut ws = Mat::<f64>::zeros(rows, cols);
    matmul(
        ws.as_mut(),
        Accum::Replace,
        wm.as_ref(),
        s.as_ref(),
        1.0,
        Par::rayon(0),
    );
    factor(ws, Some(s_inv), rows, cols, rank)
}

fn check_rank(rank: Rank, rows: usize, cols: usize) -> Result<()> {
    match rank {
        Rank::Fixed(r) if r == 0 || r > rows.min(cols) => Err(PruneError::Unsupported(format!(
            "rank {r} for a [{rows}, {cols}] layer (want 1..={})",
            rows.min(cols)
        ))),
        Rank::Energy(e) if !(e > 0.0 && e <= 1.0) => Err(PruneError::Unsupported(format!(
            "retained energy {e} (want 0 < e <= 1)"
        ))),
        _ => Ok(()),
    }
}

/// Truncated SVD of `m`, the right factor multiplied by `post` when given.
fn factor(
    m: Mat<f64>,
    post: Option<Mat<f64>>,
    rows: usize,
    cols: usize,
    rank: Rank,
) -> Result<Factors> {
    let svd = m.thin_svd().map_err(|e| {
        PruneError::Unsupported(format!("SVD of [{rows}, {cols}] did not converge: {e:?}"))
    })?;
    let sv: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    let rank = match rank {
        Rank::Fixed(r) => r,
        Rank::Energy(e) => rank_for_energy(&sv, e).min(rows.min(cols)),
    };
    let (u, v) = (svd.U(), svd.V());
    // B = Σ_r^½ V_rᵀ (post).
    let mut vt = Mat::<f64>::from_fn(rank, cols, |t, j| sv[t].sqrt() * v[(j, t)]);
    if let Some(p) = post {
        let mut o = Mat::<f64>::zeros(rank, cols);
        matmul(
            o.as_mut(),
            Accum::Replace,
            vt.as_ref(),
            p.as_ref(),
            1.0,
            Par::rayon(0),
        );
        vt = o;
    }
    clear_upper_simd_state_all_threads();
    let a = (0..rows * rank)
        .map(|t| (u[(t / rank, t % rank)] * sv[t % rank].sqrt()) as f32)
        .collect();
    let b = (0..rank * cols)
        .map(|t| vt[(t / cols, t % cols)] as f32)
        .collect();
    Ok(Factors {
        rows,
        cols,
        rank,
        a,
        b,
        singular_values: sv,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use tersor_quant::gptq::hessian_from_activations;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
    }

    fn output_error(w: &[f32], q: &[f32], h: &[f64], rows: usize, cols: usize, damp: f64) -> f64 {
        let mut total = 0.0;
        for r in 0..rows {
            let d: Vec<f64> = (0..cols)
                .map(|j| f64::from(w[r * cols + j] - q[r * cols + j]))
                .collect();
            for i in 0..cols {
                total +=
                    d[i] * ((0..cols).map(|j| h[i * cols + j] * d[j]).sum::<f64>() + damp * d[i]);
            }
        }
        total
    }

    #[test]
    fn full_rank_reproduces_the_layer() {
        let (rows, cols) = (30, 20);
        let w = random(rows * cols, 7);
        let f = svd(&w, rows, cols, 20).unwrap();
        let p = f.product();
        let max = w
            .iter()
            .zip(&p)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(max < 1e-5, "max error {max}");
        assert!(f.discarded_energy() == 0.0);
        let x = random(100 * cols, 8);
        let h = hessian_from_activations(&x, 100, cols);
        let p = asvd(&w, rows, cols, &h, 20, 0.01).unwrap().product();
        let max = w
            .iter()
            .zip(&p)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(max < 1e-4, "max error {max}");
    }

    #[test]
    fn truncation_errors_match_the_discarded_singular_values() {
        let (rows, cols, n) = (40, 32, 300);
        let w = random(rows * cols, 9);
        // Inputs with very unequal column scales: whitening should matter.
        let mut x = random(n * cols, 10);
        for (t, v) in x.iter_mut().enumerate() {
            *v *= 1.0 + 4.0 * ((t % cols) as f32 / cols as f32).powi(3);
        }
        let h = hessian_from_activations(&x, n, cols);
        let damp = 0.01 * (0..cols).map(|i| h[i * cols + i]).sum::<f64>() / cols as f64;
        for rank in [4, 12, 24] {
            let s = svd(&w, rows, cols, rank).unwrap();
            let fro: f64 = w
                .iter()
                .zip(s.product())
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            assert!(
                (fro - s.discarded_energy()).abs() < 1e-3 * fro,
                "rank {rank}: {fro} vs {}",
                s.discarded_energy()
            );
            let a = asvd(&w, rows, cols, &h, rank, 0.01).unwrap();
            let ea = output_error(&w, &a.product(), &h, rows, cols, damp);
            assert!(
                (ea - a.discarded_energy()).abs() < 1e-3 * ea,
                "rank {rank}: {ea} vs {}",
                a.discarded_energy()
            );
            // Eckart–Young in the whitened norm: no rank-r matrix does better, plain SVD
            // included.
            let es = output_error(&w, &s.product(), &h, rows, cols, damp);
            assert!(ea < es, "rank {rank}: asvd {ea} vs svd {es}");
        }
    }

    #[test]
    fn ranks_from_ratio_and_energy() {
        // 209 · (576 + 1536) = 441,408 ≤ 442,368 = ½ · 576 · 1536 < 210 · 2112.
        let r = rank_for_ratio(576, 1536, 0.5);
        assert_eq!(r, 209);
        assert!(r * (576 + 1536) <= 576 * 1536 / 2 && (r + 1) * (576 + 1536) > 576 * 1536 / 2);
        assert_eq!(rank_for_ratio(10, 10, 0.0), 1);
        assert_eq!(rank_for_ratio(10, 10, 9.0), 10);
        assert_eq!(rank_for_energy(&[3.0, 2.0, 1.0], 0.9), 2);
        assert_eq!(rank_for_energy(&[3.0, 2.0, 1.0], 1.0), 3);
        assert!(svd(&[1.0; 6], 2, 3, 3).is_err());
    }

    #[test]
    fn energy_rank_keeps_the_energy_and_no_more_rank_than_needed() {
        let (rows, cols, n) = (40, 32, 300);
        let w = random(rows * cols, 11);
        let x = random(n * cols, 12);
        let h = hessian_from_activations(&x, n, cols);
        for e in [0.5, 0.9, 0.99] {
            for f in [
                svd(&w, rows, cols, Rank::Energy(e)).unwrap(),
                asvd(&w, rows, cols, &h, Rank::Energy(e), 0.01).unwrap(),
            ] {
                let total: f64 = f.singular_values.iter().map(|s| s * s).sum();
                let kept = |r: usize| f.singular_values[..r].iter().map(|s| s * s).sum::<f64>();
                // The smallest rank whose leading σ² reach e of the total.
                assert!(
                    kept(f.rank) >= e * total * (1.0 - 1e-12),
                    "{e}: rank {}",
                    f.rank
                );
                assert!(
                    kept(f.rank - 1) < e * total,
                    "{e}: rank {} not minimal",
                    f.rank
                );
                assert!(f.discarded_energy() <= (1.0 - e) * total * (1.0 + 1e-9));
                assert_eq!((f.a.len(), f.b.len()), (rows * f.rank, f.rank * cols));
            }
        }
        // All the energy is the full rank: the layer itself.
        let f = svd(&w, rows, cols, Rank::Energy(1.0)).unwrap();
        assert_eq!(f.rank, cols);
        let max = w
            .iter()
            .zip(f.product())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(max < 1e-5, "max error {max}");
        for bad in [0.0, 1.5, f64::NAN] {
            assert!(svd(&w, rows, cols, Rank::Energy(bad)).is_err(), "{bad}");
        }
    }
}
