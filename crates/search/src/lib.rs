//! Per-unit level allocation under a byte budget.
//!
//! A model is compressed by choosing, for every *unit* (one tensor), one of a few
//! *levels* (compressed versions of that tensor, each with an exact byte cost). The
//! allocation must fit a byte budget, and the caller judges allocations with an
//! expensive fitness (lower is better, e.g. the KL divergence of the compressed model
//! from the original). This crate knows nothing about models: it only sees costs and
//! fitness values, so the search algorithms can be tested exactly on synthetic problems.
//!
//! Algorithms, from cheapest to most expensive in fitness evaluations:
//! - [`uniform`]: the same level index everywhere, then a greedy top-up (no evaluations);
//! - [`dp`]: exact multiple-choice knapsack on per-unit errors (L-GreCo style), optimal
//!   when the fitness is separable (no evaluations, but the caller measures per-unit errors);
//! - [`random_best`]: the best of `n` random feasible allocations;
//! - [`evopress`]: evolutionary search with multi-step selection (EvoPress).

mod baselines;
mod dp;
mod evopress;
#[cfg(test)]
mod testutil;

pub use baselines::{greedy_topup, random_assignment, random_best, random_topup, repair, uniform};
pub use dp::{dp, DEFAULT_RESOLUTION};
pub use evopress::{evopress, evopress_guided, EvoConfig, EvoStart, EvoState, GenerationRecord};

use std::path::PathBuf;

/// Errors of the allocation algorithms.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// Even with every unit at its smallest level the model does not fit.
    #[error(
        "budget of {budget} bytes is infeasible: achievable sizes range from {min_bytes} bytes \
         (every unit at its smallest level) to {max_bytes} bytes (every unit at its largest level)"
    )]
    Infeasible {
        min_bytes: u64,
        max_bytes: u64,
        budget: u64,
    },
    /// The caller's fitness failed; callers wrap their own error types as text.
    #[error("fitness evaluation failed: {0}")]
    Fitness(String),
    /// An EvoPress checkpoint could not be written, read or resumed.
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    /// Malformed input (assignment, configuration, error table, fitness output).
    #[error("invalid input: {0}")]
    Invalid(String),
}

impl SearchError {
    /// Wraps any error of the caller's fitness (`SearchError::Fitness`).
    pub fn fitness(e: impl std::fmt::Display) -> Self {
        SearchError::Fitness(e.to_string())
    }
}

/// One unit's levels, ordered by increasing cost (index 0 = smallest). Costs are exact bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    pub name: String,
    pub costs: Vec<u64>,
}

/// The allocation problem: `fixed_bytes` (everything not being allocated) plus the chosen
/// levels' costs must not exceed `budget`.
///
/// Build it with [`Problem::new`], which establishes the invariants every algorithm relies
/// on (non-empty, strictly increasing costs; the all-smallest assignment fits; no overflow).
/// The fields are public for reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub units: Vec<Unit>,
    pub fixed_bytes: u64,
    pub budget: u64,
}

/// Level index per unit, in unit order.
pub type Assignment = Vec<u16>;

impl Problem {
    /// Validates the units and the budget.
    ///
    /// Strictly increasing costs are required because a level that is not smaller than a
    /// cheaper one can never be worth choosing, and several algorithms move "one level up"
    /// assuming it costs more. Level indices are `u16`, so a unit has at most 65,536 levels.
    pub fn new(units: Vec<Unit>, fixed_bytes: u64, budget: u64) -> Result<Problem, SearchError> {
        let mut min = fixed_bytes;
        let mut max = fixed_bytes;
        for u in &units {
            if u.costs.is_empty() {
                return Err(SearchError::Invalid(format!(
                    "unit {:?} has no levels",
                    u.name
                )));
            }
            if u.costs.len() > usize::from(u16::MAX) + 1 {
                return Err(SearchError::Invalid(format!(
                    "unit {:?} has {} levels; at most 65536 are supported",
                    u.name,
                    u.costs.len()
                )));
            }
            if let Some(w) = u.costs.windows(2).position(|w| w[1] <= w[0]) {
                return Err(SearchError::Invalid(format!(
                    "unit {:?}: level costs must be strictly increasing, but level {} costs {} \
                     bytes and level {} costs {}",
                    u.name,
                    w,
                    u.costs[w],
                    w + 1,
                    u.costs[w + 1]
                )));
            }
            let overflow = || SearchError::Invalid("total size overflows 64 bits".into());
            min = min.checked_add(u.costs[0]).ok_or_else(overflow)?;
            max = max
                .checked_add(*u.costs.last().unwrap())
                .ok_or_else(overflow)?;
        }
        if min > budget {
            return Err(SearchError::Infeasible {
                min_bytes: min,
                max_bytes: max,
                budget,
            });
        }
        Ok(Problem {
            units,
            fixed_bytes,
            budget,
        })
    }

    /// Total bytes: fixed bytes plus the chosen level of every unit.
    ///
    /// # Panics
    /// If `a` has the wrong length or a level out of range; use [`Problem::check`] on
    /// assignments that come from outside.
    pub fn cost(&self, a: &[u16]) -> u64 {
        assert_eq!(
            a.len(),
            self.units.len(),
            "assignment length != number of units"
        );
        self.fixed_bytes
            + self
                .units
                .iter()
                .zip(a)
                .map(|(u, &l)| u.costs[usize::from(l)])
                .sum::<u64>()
    }

    /// Whether `a` is well formed and fits the budget (false for malformed assignments).
    pub fn fits(&self, a: &[u16]) -> bool {
        self.well_formed(a) && self.cost(a) <= self.budget
    }

    /// Size with every unit at its smallest level.
    pub fn min_bytes(&self) -> u64 {
        self.fixed_bytes + self.units.iter().map(|u| u.costs[0]).sum::<u64>()
    }

    /// Size with every unit at its largest level.
    pub fn max_bytes(&self) -> u64 {
        self.fixed_bytes
            + self
                .units
                .iter()
                .map(|u| *u.costs.last().unwrap())
                .sum::<u64>()
    }

    /// Number of levels of unit `i`.
    pub fn n_levels(&self, i: usize) -> usize {
        self.units[i].costs.len()
    }

    /// Checks that `a` has one in-range level per unit and fits the budget, naming the problem.
    pub fn check(&self, a: &[u16]) -> Result<(), SearchError> {
        if a.len() != self.units.len() {
            return Err(SearchError::Invalid(format!(
                "assignment has {} levels but the problem has {} units",
                a.len(),
                self.units.len()
            )));
        }
        for (i, (&l, u)) in a.iter().zip(&self.units).enumerate() {
            if usize::from(l) >= u.costs.len() {
                return Err(SearchError::Invalid(format!(
                    "unit {i} ({:?}) is assigned level {l} but has only {} levels",
                    u.name,
                    u.costs.len()
                )));
            }
        }
        let cost = self.cost(a);
        if cost > self.budget {
            return Err(SearchError::Invalid(format!(
                "assignment needs {cost} bytes, over the budget of {} bytes",
                self.budget
            )));
        }
        Ok(())
    }

    fn well_formed(&self, a: &[u16]) -> bool {
        a.len() == self.units.len()
            && a.iter()
                .zip(&self.units)
                .all(|(&l, u)| usize::from(l) < u.costs.len())
    }

    /// Extra bytes to raise unit `i` from level `l` by one, if it is not at its top level.
    fn step_up(&self, i: usize, l: u16) -> Option<u64> {
        let c = &self.units[i].costs;
        let l = usize::from(l);
        (l + 1 < c.len()).then(|| c[l + 1] - c[l])
    }

    /// Bytes saved by lowering unit `i` from level `l` by one, if it is not at level 0.
    fn step_down(&self, i: usize, l: u16) -> Option<u64> {
        let c = &self.units[i].costs;
        let l = usize::from(l);
        (l > 0).then(|| c[l] - c[l - 1])
    }
}

/// Fitness of candidates at a selection stage (stage 0 = cheapest, e.g. fewest tokens;
/// the last stage is the most accurate). Lower is better; values must be finite.
///
/// Implementations may evaluate the batch in parallel and exploit that candidates are
/// mutations of `parent` (e.g. only re-quantize the units that differ).
pub trait Fitness {
    fn n_stages(&self) -> usize;
    /// Called by [`evopress`] before each generation (1-based, counting a resumed run's
    /// earlier ones). A fitness may draw its early stages' data afresh per generation,
    /// as EvoPress samples new calibration data, so that the cheap stages do not always
    /// favour the same few tokens; its last stage must stay fixed, since the parent's
    /// last-stage value is compared across generations.
    fn begin_generation(&self, _generation: usize) {}
    fn evaluate(
        &self,
        stage: usize,
        parent: &Assignment,
        candidates: &[Assignment],
    ) -> Result<Vec<f64>, SearchError>;
}

/// Calls the fitness and checks its output: one finite value per candidate.
fn evaluate_checked(
    fitness: &dyn Fitness,
    stage: usize,
    parent: &Assignment,
    candidates: &[Assignment],
) -> Result<Vec<f64>, SearchError> {
    let scores = fitness.evaluate(stage, parent, candidates)?;
    if scores.len() != candidates.len() {
        return Err(SearchError::Fitness(format!(
            "stage {stage}: {} values returned for {} candidates",
            scores.len(),
            candidates.len()
        )));
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(SearchError::Fitness(format!(
            "stage {stage}: candidate {i} has non-finite fitness {}",
            scores[i]
        )));
    }
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(name: &str, costs: &[u64]) -> Unit {
        Unit {
            name: name.into(),
            costs: costs.to_vec(),
        }
    }

    #[test]
    fn problem_validation() {
        let ok = Problem::new(vec![unit("a", &[1, 2, 4]), unit("b", &[3, 5])], 10, 20).unwrap();
        assert_eq!(ok.min_bytes(), 14);
        assert_eq!(ok.max_bytes(), 19);
        assert_eq!(ok.cost(&[1, 1]), 17);
        assert!(ok.fits(&[2, 1]));
        assert!(!ok.fits(&[3, 0]), "out-of-range level must not fit");
        assert!(!ok.fits(&[0]), "wrong length must not fit");
        assert!(ok
            .check(&[0, 2])
            .unwrap_err()
            .to_string()
            .contains("level 2"));

        let e = Problem::new(vec![unit("a", &[])], 0, 10).unwrap_err();
        assert!(e.to_string().contains("\"a\" has no levels"), "{e}");
        let e = Problem::new(vec![unit("w", &[1, 3, 3])], 0, 10).unwrap_err();
        assert!(e.to_string().contains("strictly increasing"), "{e}");
        let e = Problem::new(vec![unit("w", &[u64::MAX - 1]), unit("v", &[5])], 0, 10).unwrap_err();
        assert!(e.to_string().contains("overflow"), "{e}");

        let e = Problem::new(vec![unit("a", &[1, 2, 4]), unit("b", &[3, 5])], 10, 13).unwrap_err();
        assert!(matches!(
            e,
            SearchError::Infeasible {
                min_bytes: 14,
                max_bytes: 19,
                budget: 13
            }
        ));
        let msg = e.to_string();
        assert!(
            msg.contains("13 bytes") && msg.contains("14 bytes") && msg.contains("19 bytes"),
            "{msg}"
        );
        // Exactly the minimum is feasible.
        Problem::new(vec![unit("a", &[1, 2, 4]), unit("b", &[3, 5])], 10, 14).unwrap();
    }
}
