//! Sparsity patterns and the exact-count selection shared by the pruners.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{PruneError, Result};

/// Which weights a pruner removes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Pattern {
    /// This fraction of the weights becomes zero, `0 <= s < 1`; the count is
    /// `round(s · n)` over the pruner's comparison group (layer, row or block).
    Unstructured(f64),
    /// At most `n` nonzero weights in every `m` consecutive inputs of a row (NVIDIA's
    /// convention: 2:4 keeps 2 of 4), so exactly `m - n` zeros per group.
    NM { n: usize, m: usize },
}

impl Pattern {
    /// The fraction of zeros this pattern produces on a layer whose rows it divides.
    pub fn sparsity(&self) -> f64 {
        match *self {
            Pattern::Unstructured(s) => s,
            Pattern::NM { n, m } => (m - n) as f64 / m as f64,
        }
    }

    /// Checks the pattern itself and that it fits rows of `cols` inputs.
    pub fn check(&self, cols: usize) -> Result<()> {
        match *self {
            Pattern::Unstructured(s) if (0.0..1.0).contains(&s) => Ok(()),
            Pattern::Unstructured(s) => Err(PruneError::Unsupported(format!(
                "sparsity {s} is outside [0, 1)"
            ))),
            Pattern::NM { n, m } if m == 0 || n >= m => Err(PruneError::Unsupported(format!(
                "N:M pattern {n}:{m} needs 0 <= N < M"
            ))),
            Pattern::NM { n, m } if cols % m != 0 => Err(PruneError::Shape(format!(
                "N:M pattern {n}:{m} needs rows whose length is a multiple of {m}, got {cols}"
            ))),
            Pattern::NM { .. } => Ok(()),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Unstructured(s) => write!(f, "{s}"),
            Pattern::NM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

impl FromStr for Pattern {
    type Err = PruneError;

    /// `0.5` / `50%` (unstructured) or `2:4` (N:M).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            PruneError::Unsupported(format!("bad sparsity pattern {s:?} (want 0.5, 50% or 2:4)"))
        };
        let p = if let Some((n, m)) = s.split_once(':') {
            Pattern::NM {
                n: n.trim().parse().map_err(|_| bad())?,
                m: m.trim().parse().map_err(|_| bad())?,
            }
        } else if let Some(pct) = s.strip_suffix('%') {
            Pattern::Unstructured(pct.trim().parse::<f64>().map_err(|_| bad())? / 100.0)
        } else {
            Pattern::Unstructured(s.trim().parse().map_err(|_| bad())?)
        };
        match p {
            Pattern::NM { n, m } if m == 0 || n >= m => Err(bad()),
            Pattern::Unstructured(x) if !(0.0..1.0).contains(&x) => Err(bad()),
            p => Ok(p),
        }
    }
}

/// `round(s · n)`: how many of `n` weights a sparsity `s` zeroes.
pub fn zeros_for(n: usize, s: f64) -> usize {
    ((s * n as f64).round() as usize).min(n)
}

/// Indices of the `k` smallest `scores`, ties broken by the lower index, in increasing
/// index order. `O(n)` (one selection, no sort): the `k`-th smallest value is the
/// threshold; everything below it is taken, then the first indices equal to it.
///
/// # Panics
/// If `k > scores.len()` or a score is NaN.
pub fn smallest_k(scores: &[f32], k: usize) -> Vec<usize> {
    assert!(k <= scores.len(), "{k} of {} scores", scores.len());
    if k == 0 {
        return Vec::new();
    }
    let mut tmp = scores.to_vec();
    let (_, &mut t, _) =
        tmp.select_nth_unstable_by(k - 1, |a, b| a.partial_cmp(b).expect("scores are not NaN"));
    let below = scores.iter().filter(|&&x| x < t).count();
    let mut ties = k - below;
    let mut out = Vec::with_capacity(k);
    for (i, &x) in scores.iter().enumerate() {
        if x < t {
            out.push(i);
        } else if x == t && ties > 0 {
            out.push(i);
            ties -= 1;
        }
    }
    out
}

/// Zero, in every row of `w` (`cols` wide), the `m - n` lowest-scoring weights of each
/// group of `m` consecutive inputs (ties to the lower index).
pub(crate) fn apply_nm(w: &mut [f32], scores: &[f32], cols: usize, n: usize, m: usize) {
    for (wg, sg) in w.chunks_mut(m).zip(scores.chunks(m)) {
        debug_assert_eq!(cols % m, 0);
        for i in smallest_k(sg, m - n) {
            wg[i] = 0.0;
        }
    }
}

/// Whether every group of `m` consecutive inputs of every row holds at most `n` nonzeros.
pub fn satisfies_nm(w: &[f32], cols: usize, n: usize, m: usize) -> bool {
    cols % m == 0
        && w.chunks(m)
            .all(|g| g.iter().filter(|&&x| x != 0.0).count() <= n)
}

/// The fraction of exact zeros in `w`.
pub fn sparsity_of(w: &[f32]) -> f64 {
    w.iter().filter(|&&x| x == 0.0).count() as f64 / w.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smallest_k_breaks_ties_by_index() {
        let s = [3.0, 1.0, 2.0, 1.0, 1.0, 0.5];
        assert_eq!(smallest_k(&s, 0), Vec::<usize>::new());
        assert_eq!(smallest_k(&s, 1), vec![5]);
        assert_eq!(smallest_k(&s, 3), vec![1, 3, 5]);
        assert_eq!(smallest_k(&s, 5), vec![1, 2, 3, 4, 5]);
        assert_eq!(smallest_k(&s, 6), vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn patterns_parse_and_check() {
        assert_eq!(
            "0.6".parse::<Pattern>().unwrap(),
            Pattern::Unstructured(0.6)
        );
        assert_eq!(
            "70%".parse::<Pattern>().unwrap(),
            Pattern::Unstructured(0.7)
        );
        assert_eq!(
            "2:4".parse::<Pattern>().unwrap(),
            Pattern::NM { n: 2, m: 4 }
        );
        for bad in ["1.0", "-0.1", "4:4", "2:0", "x", "50"] {
            assert!(bad.parse::<Pattern>().is_err(), "{bad}");
        }
        assert!(Pattern::NM { n: 2, m: 4 }.check(576).is_ok());
        assert!(Pattern::NM { n: 4, m: 8 }.check(4).is_err());
        assert_eq!(Pattern::NM { n: 4, m: 8 }.sparsity(), 0.5);
    }
}
