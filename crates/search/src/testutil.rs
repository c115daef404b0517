//! Synthetic problems, an exhaustive reference solver and a test fitness.

use crate::{Assignment, Fitness, Problem, SearchError, Unit};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `n` units with a random number of levels in `levels`, random strictly increasing costs
/// (small integers) and a budget between 30% and 80% of the way from min to max.
pub fn random_problem(seed: u64, n: usize, levels: Range<usize>) -> Problem {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let units: Vec<Unit> = (0..n)
        .map(|i| {
            let k = rng.random_range(levels.clone());
            let mut c = rng.random_range(10..50);
            let costs = (0..k)
                .map(|_| {
                    let v = c;
                    c += rng.random_range(1..30);
                    v
                })
                .collect();
            Unit {
                name: format!("u{i}"),
                costs,
            }
        })
        .collect();
    let fixed = rng.random_range(0..100);
    let probe = Problem::new(units.clone(), fixed, u64::MAX).unwrap();
    let (lo, hi) = (probe.min_bytes(), probe.max_bytes());
    let budget = lo + (hi - lo) * rng.random_range(30..80) / 100;
    Problem::new(units, fixed, budget).unwrap()
}

/// Per-unit errors that decrease with the level, as real quantization errors do.
pub fn random_errors(seed: u64, p: &Problem) -> Vec<Vec<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    p.units
        .iter()
        .map(|u| {
            let mut e = rng.random_range(0.0..0.1);
            let mut v: Vec<f64> = (0..u.costs.len())
                .map(|_| {
                    let x = e;
                    e += rng.random_range(0.1..2.0);
                    x
                })
                .collect();
            v.reverse();
            v
        })
        .collect()
}

/// Enumerates every feasible assignment: the best one and the second-best value (to check
/// that the optimum is unique).
pub fn brute_force(p: &Problem, f: impl Fn(&[u16]) -> f64) -> (Assignment, f64) {
    let n = p.units.len();
    let mut a: Assignment = vec![0; n];
    let mut best = (a.clone(), f64::INFINITY);
    let mut second = f64::INFINITY;
    loop {
        if p.fits(&a) {
            let v = f(&a);
            if v < best.1 {
                second = best.1;
                best = (a.clone(), v);
            } else if v < second {
                second = v;
            }
        }
        // Odometer increment.
        let mut i = 0;
        loop {
            if i == n {
                return (best.0, second);
            }
            a[i] += 1;
            if usize::from(a[i]) < p.n_levels(i) {
                break;
            }
            a[i] = 0;
            i += 1;
        }
    }
}

/// A deterministic value in [-1, 1] from an assignment and a stage (SplitMix64 mixing).
fn hash_noise(a: &[u16], stage: usize) -> f64 {
    let mut h = 0x9E37_79B9_7F4A_7C15u64 ^ stage as u64;
    for &l in a {
        h = (h ^ u64::from(l)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 31;
        h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^= h >> 29;
    }
    (h >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

/// Synthetic fitness: `sum_i err[i][a_i] + pair * sum_k (a_2k - a_2k+1)^2`, plus
/// hash noise of amplitude `noise` at every stage but the last. It records every
/// candidate that does not fit the budget.
pub struct Synth {
    pub problem: Problem,
    pub err: Vec<Vec<f64>>,
    pub pair: f64,
    pub noise: f64,
    pub stages: usize,
    violations: AtomicUsize,
    pub evaluated: AtomicUsize,
}

impl Synth {
    pub fn separable(p: &Problem, seed: u64, stages: usize) -> Synth {
        Synth {
            problem: p.clone(),
            err: random_errors(seed, p),
            pair: 0.0,
            noise: 0.0,
            stages,
            violations: AtomicUsize::new(0),
            evaluated: AtomicUsize::new(0),
        }
    }

    /// The last-stage (noise-free) fitness.
    pub fn truth(&self, a: &[u16]) -> f64 {
        let sep: f64 = a
            .iter()
            .enumerate()
            .map(|(i, &l)| self.err[i][usize::from(l)])
            .sum();
        let inter: f64 = a
            .chunks_exact(2)
            .map(|w| (f64::from(w[0]) - f64::from(w[1])).powi(2))
            .sum();
        sep + self.pair * inter
    }

    pub fn violations(&self) -> usize {
        self.violations.load(Ordering::Relaxed)
    }
}

impl Fitness for Synth {
    fn n_stages(&self) -> usize {
        self.stages
    }

    fn evaluate(
        &self,
        stage: usize,
        parent: &Assignment,
        candidates: &[Assignment],
    ) -> Result<Vec<f64>, SearchError> {
        assert!(stage < self.stages);
        if !self.problem.fits(parent) {
            self.violations.fetch_add(1, Ordering::Relaxed);
        }
        self.evaluated
            .fetch_add(candidates.len(), Ordering::Relaxed);
        Ok(candidates
            .iter()
            .map(|a| {
                if !self.problem.fits(a) {
                    self.violations.fetch_add(1, Ordering::Relaxed);
                }
                let noise = if stage + 1 < self.stages {
                    self.noise * hash_noise(a, stage)
                } else {
                    0.0
                };
                self.truth(a) + noise
            })
            .collect())
    }
}
