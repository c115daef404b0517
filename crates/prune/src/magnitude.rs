//! Magnitude pruning: remove the weights of smallest absolute value, the baseline every
//! data-aware pruner must beat (Han et al. 2015; the baseline of the Wanda and SparseGPT
//! papers).

use rayon::prelude::*;
use tersor_quant::rtn::check_layer;

use crate::pattern::{apply_nm, smallest_k, zeros_for, Pattern};
use crate::{PruneError, Result};

/// Prune `w` (`[rows, cols]`): unstructured, the `round(s · rows · cols)` smallest `|w|`
/// of the whole layer; N:M, the smallest in every group of `m` inputs of a row.
pub fn magnitude(w: &[f32], rows: usize, cols: usize, pattern: Pattern) -> Result<Vec<f32>> {
    check_layer(w, rows, cols, 1)?;
    pattern.check(cols)?;
    let scores: Vec<f32> = w.iter().map(|x| x.abs()).collect();
    let mut out = w.to_vec();
    match pattern {
        Pattern::Unstructured(s) => {
            for i in smallest_k(&scores, zeros_for(w.len(), s)) {
                out[i] = 0.0;
            }
        }
        Pattern::NM { n, m } => out
            .par_chunks_mut(cols)
            .zip(scores.par_chunks(cols))
            .for_each(|(wr, sr)| apply_nm(wr, sr, cols, n, m)),
    }
    Ok(out)
}

/// Global magnitude pruning: one threshold over every layer, so the `round(s · total)`
/// smallest `|w|` of the model go, wherever they are (ties: earlier layer, lower index).
/// Layers are `(weights, rows, cols)`; returns the pruned layers in order.
pub fn magnitude_global(layers: &[(&[f32], usize, usize)], sparsity: f64) -> Result<Vec<Vec<f32>>> {
    Pattern::Unstructured(sparsity).check(1)?;
    for &(w, rows, cols) in layers {
        check_layer(w, rows, cols, 1)?;
    }
    let total: usize = layers.iter().map(|l| l.0.len()).sum();
    if total == 0 {
        return Err(PruneError::Shape("no layers to prune".into()));
    }
    let k = zeros_for(total, sparsity);
    // The k-th smallest |w| over all layers, found on a copy; then the same two passes
    // as `smallest_k`, across layers.
    let mut all: Vec<f32> = layers
        .iter()
        .flat_map(|l| l.0.iter().map(|x| x.abs()))
        .collect();
    let t = if k == 0 {
        f32::NEG_INFINITY
    } else {
        *all.select_nth_unstable_by(k - 1, f32::total_cmp).1
    };
    drop(all);
    let below: usize = layers
        .iter()
        .map(|l| l.0.iter().filter(|x| x.abs() < t).count())
        .sum();
    let mut ties = k - below;
    Ok(layers
        .iter()
        .map(|&(w, _, _)| {
            w.iter()
                .map(|&x| {
                    let a = x.abs();
                    if a < t {
                        0.0
                    } else if a == t && ties > 0 {
                        ties -= 1;
                        0.0
                    } else {
                        x
                    }
                })
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::{satisfies_nm, sparsity_of};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
    }

    #[test]
    fn unstructured_has_exactly_the_requested_zeros_and_keeps_the_largest() {
        let (rows, cols) = (37, 96);
        let w = random(rows * cols, 1);
        for s in [0.0, 0.5, 0.6, 0.7, 0.123] {
            let p = magnitude(&w, rows, cols, Pattern::Unstructured(s)).unwrap();
            let zeros = p.iter().filter(|&&x| x == 0.0).count();
            assert_eq!(zeros, zeros_for(w.len(), s), "sparsity {s}");
            let kept_min = p
                .iter()
                .filter(|&&x| x != 0.0)
                .map(|x| x.abs())
                .fold(f32::INFINITY, f32::min);
            let dropped_max = w
                .iter()
                .zip(&p)
                .filter(|(_, &q)| q == 0.0)
                .map(|(x, _)| x.abs())
                .fold(0.0, f32::max);
            assert!(dropped_max <= kept_min, "{dropped_max} > {kept_min}");
            assert!(w.iter().zip(&p).all(|(&a, &b)| b == 0.0 || a == b));
        }
    }

    #[test]
    fn n_m_keeps_the_largest_n_of_every_m() {
        let (rows, cols) = (5, 64);
        let w = random(rows * cols, 2);
        let p = magnitude(&w, rows, cols, Pattern::NM { n: 2, m: 4 }).unwrap();
        assert!(satisfies_nm(&p, cols, 2, 4));
        assert_eq!(sparsity_of(&p), 0.5);
        for (g, q) in w.chunks(4).zip(p.chunks(4)) {
            let mut a: Vec<f32> = g.iter().map(|x| x.abs()).collect();
            a.sort_by(f32::total_cmp);
            let kept: Vec<f32> = q.iter().filter(|&&x| x != 0.0).map(|x| x.abs()).collect();
            assert!(kept.iter().all(|&x| x >= a[2]), "{g:?} -> {q:?}");
        }
        let p = magnitude(&w, rows, cols, Pattern::NM { n: 4, m: 8 }).unwrap();
        assert!(satisfies_nm(&p, cols, 4, 8));
        assert!(magnitude(&w, rows, cols, Pattern::NM { n: 2, m: 3 }).is_err());
    }

    #[test]
    fn global_threshold_spans_layers() {
        // Layer b's weights are all smaller than layer a's: at 50% of the total, b goes
        // entirely and a is untouched.
        let a: Vec<f32> = (1..=12).map(|i| 10.0 + i as f32).collect();
        let b: Vec<f32> = (1..=12).map(|i| -(i as f32) / 100.0).collect();
        let out = magnitude_global(&[(&a, 3, 4), (&b, 2, 6)], 0.5).unwrap();
        assert_eq!(out[0], a);
        assert!(out[1].iter().all(|&x| x == 0.0));
        // Ties at the threshold: exactly k zeros, the earlier layer first.
        let c = vec![1.0f32; 8];
        let out = magnitude_global(&[(&c, 2, 4), (&c, 2, 4)], 0.25).unwrap();
        assert_eq!(out[0].iter().filter(|&&x| x == 0.0).count(), 4);
        assert_eq!(out[1], c);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(magnitude(&[1.0, f32::NAN], 1, 2, Pattern::Unstructured(0.5)).is_err());
        assert!(magnitude(&[1.0, 2.0], 1, 3, Pattern::Unstructured(0.5)).is_err());
        assert!(magnitude(&[1.0, 2.0], 1, 2, Pattern::Unstructured(1.0)).is_err());
    }
}
