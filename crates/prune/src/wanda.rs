//! Wanda (Sun, Liu, Bair, Kolter 2023, "A Simple and Effective Pruning Approach for Large
//! Language Models"): score every weight by `|W_ij| · ‖X_j‖₂`, the size of its
//! contribution to the output, and remove the lowest-scoring weights of each output row
//! (per-output comparison groups, the paper's finding for LLMs). No weight update.

use rayon::prelude::*;
use tersor_quant::rtn::check_layer;

use crate::pattern::{apply_nm, smallest_k, zeros_for, Pattern};
use crate::{PruneError, Result};

/// `‖X_j‖₂` for every input column from the Hessian `H = XᵀX` (`cols × cols`, row-major):
/// the square roots of its diagonal.
pub fn column_norms(h: &[f64], cols: usize) -> Result<Vec<f32>> {
    if h.len() != cols * cols {
        return Err(PruneError::Shape(format!(
            "Hessian has {} elements, [{cols}, {cols}] needs {}",
            h.len(),
            cols * cols
        )));
    }
    (0..cols)
        .map(|j| {
            let d = h[j * cols + j];
            if d.is_finite() && d >= 0.0 {
                Ok(d.sqrt() as f32)
            } else {
                Err(PruneError::NonFinite(format!(
                    "Hessian diagonal at column {j} is {d}"
                )))
            }
        })
        .collect()
}

/// Prune `w` (`[rows, cols]`) by Wanda's score with input norms `norms` (one per column):
/// unstructured, `round(s · cols)` weights of every row; N:M, within every group of `m`.
pub fn wanda(
    w: &[f32],
    rows: usize,
    cols: usize,
    norms: &[f32],
    pattern: Pattern,
) -> Result<Vec<f32>> {
    check_layer(w, rows, cols, 1)?;
    pattern.check(cols)?;
    if norms.len() != cols {
        return Err(PruneError::Shape(format!(
            "{} input norms for rows of {cols}",
            norms.len()
        )));
    }
    if let Some(j) = norms.iter().position(|x| !x.is_finite() || *x < 0.0) {
        return Err(PruneError::NonFinite(format!(
            "input norm {j} is {}",
            norms[j]
        )));
    }
    let mut out = w.to_vec();
    out.par_chunks_mut(cols).for_each(|wr| {
        let scores: Vec<f32> = wr.iter().zip(norms).map(|(x, n)| x.abs() * n).collect();
        match pattern {
            Pattern::Unstructured(s) => {
                for i in smallest_k(&scores, zeros_for(cols, s)) {
                    wr[i] = 0.0;
                }
            }
            Pattern::NM { n, m } => apply_nm(wr, &scores, cols, n, m),
        }
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::satisfies_nm;

    #[test]
    fn input_norms_change_which_weights_go() {
        // Row [1, 2, 3, 4]: magnitude drops 1 and 2; with input norms [10, 10, 1, 1] the
        // scores are [10, 20, 3, 4], so Wanda drops 3 and 4.
        let w = [1.0f32, 2.0, 3.0, 4.0, -4.0, 3.0, -2.0, 1.0];
        let p = wanda(
            &w,
            2,
            4,
            &[10.0, 10.0, 1.0, 1.0],
            Pattern::Unstructured(0.5),
        )
        .unwrap();
        assert_eq!(p, vec![1.0, 2.0, 0.0, 0.0, -4.0, 3.0, 0.0, 0.0]);
        let p = wanda(&w, 2, 4, &[1.0; 4], Pattern::NM { n: 2, m: 4 }).unwrap();
        assert_eq!(p, vec![0.0, 0.0, 3.0, 4.0, -4.0, 3.0, 0.0, 0.0]);
        assert!(satisfies_nm(&p, 4, 2, 4));
    }

    #[test]
    fn every_row_gets_its_share() {
        let (rows, cols) = (7, 50);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let norms: Vec<f32> = (0..cols).map(|j| 1.0 + (j % 5) as f32).collect();
        let p = wanda(&w, rows, cols, &norms, Pattern::Unstructured(0.6)).unwrap();
        for r in p.chunks(cols) {
            assert_eq!(
                r.iter().filter(|&&x| x == 0.0).count(),
                zeros_for(cols, 0.6)
            );
        }
    }

    #[test]
    fn norms_come_from_the_hessian_diagonal() {
        let h = [4.0, 1.0, 1.0, 9.0];
        assert_eq!(column_norms(&h, 2).unwrap(), vec![2.0, 3.0]);
        assert!(column_norms(&[f64::NAN, 0.0, 0.0, 1.0], 2).is_err());
        assert!(wanda(&[1.0, 2.0], 1, 2, &[1.0], Pattern::Unstructured(0.5)).is_err());
    }
}
