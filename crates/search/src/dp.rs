//! Exact allocation for separable objectives: a multiple-choice knapsack solved by dynamic
//! programming over a bucketed budget, as in L-GreCo (Markov et al., 2022).

use crate::{Assignment, Problem, SearchError};

/// Budget buckets used by [`dp`] when the caller has no reason to choose: enough for
/// ~200 units × ≤12 levels in well under a second, with at most 1/100,000 of the
/// spendable budget lost to rounding before the exact top-up.
pub const DEFAULT_RESOLUTION: usize = 100_000;

/// Back-pointers (chosen level per unit and bucket): one byte each when levels allow.
enum Choices {
    U8(Vec<u8>),
    U16(Vec<u16>),
}

impl Choices {
    fn set(&mut self, k: usize, l: usize) {
        match self {
            Choices::U8(v) => v[k] = l as u8,
            Choices::U16(v) => v[k] = l as u16,
        }
    }
    fn get(&self, k: usize) -> usize {
        match self {
            Choices::U8(v) => usize::from(v[k]),
            Choices::U16(v) => usize::from(v[k]),
        }
    }
}

/// Minimises `sum_i errors[i][a_i]` subject to `cost(a) <= budget`.
///
/// Only the bytes above the all-smallest assignment are "spendable", so each level is
/// priced by its increment over the unit's level 0, in buckets of
/// `g = ceil(spendable / resolution)` bytes, rounded **up**: any assignment the DP deems
/// feasible is then feasible in exact bytes, and the answer is exactly optimal whenever
/// `g == 1` (spendable bytes <= resolution). Bytes lost to rounding are then spent
/// greedily, in exact bytes, on the upgrade with the best error reduction per byte that
/// still fits, until no upgrade reduces the error.
///
/// Memory is `units × (resolution + 1)` back-pointers of one byte (two when a unit has more
/// than 256 levels); time is `units × levels × resolution`.
pub fn dp(p: &Problem, errors: &[Vec<f64>], resolution: usize) -> Result<Assignment, SearchError> {
    let n = p.units.len();
    if errors.len() != n {
        return Err(SearchError::Invalid(format!(
            "error table has {} rows for {n} units",
            errors.len()
        )));
    }
    for (i, (e, u)) in errors.iter().zip(&p.units).enumerate() {
        if e.len() != u.costs.len() {
            return Err(SearchError::Invalid(format!(
                "unit {i} ({:?}) has {} levels but {} errors",
                u.name,
                u.costs.len(),
                e.len()
            )));
        }
        if let Some(l) = e.iter().position(|x| !x.is_finite()) {
            return Err(SearchError::Invalid(format!(
                "unit {i} ({:?}) level {l} has non-finite error {}",
                u.name, e[l]
            )));
        }
    }
    if resolution == 0 {
        return Err(SearchError::Invalid("dp resolution must be >= 1".into()));
    }
    let min = p.min_bytes();
    if min > p.budget {
        return Err(SearchError::Infeasible {
            min_bytes: min,
            max_bytes: p.max_bytes(),
            budget: p.budget,
        });
    }
    let spendable = p.budget - min;
    let g = spendable.div_ceil(resolution as u64).max(1);
    let cap = (spendable / g) as usize; // <= resolution
    let width = cap + 1;
    // Bucket weight of each level's increment; levels heavier than the budget are dropped.
    let weights: Vec<Vec<usize>> = p
        .units
        .iter()
        .map(|u| {
            u.costs
                .iter()
                .map(|&c| ((c - u.costs[0]).div_ceil(g)).min(width as u64) as usize)
                .collect()
        })
        .collect();

    let cells = n
        .checked_mul(width)
        .ok_or_else(|| SearchError::Invalid("dp table size overflows".into()))?;
    let wide = p.units.iter().any(|u| u.costs.len() > 256);
    let mut choice = if wide {
        Choices::U16(vec![0; cells])
    } else {
        Choices::U8(vec![0; cells])
    };
    // best[c] = least error of the units so far using at most c buckets.
    let mut best = vec![0.0f64; width];
    let mut next = vec![0.0f64; width];
    for i in 0..n {
        let row = i * width;
        for c in 0..width {
            next[c] = best[c] + errors[i][0];
        }
        for (l, &w) in weights[i].iter().enumerate().skip(1) {
            let e = errors[i][l];
            for c in w..width {
                let v = best[c - w] + e;
                // Strict: on ties the cheaper (earlier) level wins, deterministically.
                if v < next[c] {
                    next[c] = v;
                    choice.set(row + c, l);
                }
            }
        }
        std::mem::swap(&mut best, &mut next);
    }
    let mut a: Assignment = vec![0; n];
    let mut c = cap;
    for i in (0..n).rev() {
        let l = choice.get(i * width + c);
        a[i] = l as u16;
        c -= weights[i][l];
    }
    debug_assert!(p.fits(&a));

    // Exact top-up of the bytes lost to rounding.
    let mut cost = p.cost(&a);
    loop {
        let mut pick: Option<(f64, usize, usize, u64)> = None;
        for (i, u) in p.units.iter().enumerate() {
            let cur = usize::from(a[i]);
            for l in cur + 1..u.costs.len() {
                let extra = u.costs[l] - u.costs[cur];
                let gain = errors[i][cur] - errors[i][l];
                if cost + extra <= p.budget && gain > 0.0 {
                    let rate = gain / extra as f64;
                    if pick.is_none_or(|(r, ..)| rate > r) {
                        pick = Some((rate, i, l, extra));
                    }
                }
            }
        }
        match pick {
            Some((_, i, l, extra)) => {
                a[i] = l as u16;
                cost += extra;
            }
            None => return Ok(a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{brute_force, random_errors, random_problem};

    fn objective(errors: &[Vec<f64>], a: &[u16]) -> f64 {
        a.iter()
            .enumerate()
            .map(|(i, &l)| errors[i][usize::from(l)])
            .sum()
    }

    #[test]
    fn dp_is_exactly_optimal_when_buckets_are_bytes() {
        for seed in 0..25 {
            let p = random_problem(seed, 6, 3..5);
            let errors = random_errors(seed + 1000, &p);
            let (opt, _) = brute_force(&p, |a| objective(&errors, a));
            let a = dp(&p, &errors, 1_000_000).unwrap();
            assert!(p.fits(&a), "seed {seed}");
            let (got, want) = (objective(&errors, &a), objective(&errors, &opt));
            assert!(
                (got - want).abs() < 1e-9,
                "seed {seed}: dp {got} vs brute force {want}"
            );
        }
    }

    #[test]
    fn coarse_dp_is_feasible_and_close() {
        for seed in 0..25 {
            let p = random_problem(seed, 6, 3..5);
            let errors = random_errors(seed + 1000, &p);
            let (opt, _) = brute_force(&p, |a| objective(&errors, a));
            let want = objective(&errors, &opt);
            for res in [1, 3, 7, 20] {
                let a = dp(&p, &errors, res).unwrap();
                assert!(p.fits(&a), "seed {seed} res {res}: over budget");
                let got = objective(&errors, &a);
                assert!(
                    got >= want - 1e-9,
                    "seed {seed} res {res}: better than optimal?"
                );
                // The exact top-up leaves no single upgrade that fits and lowers the error.
                let cost = p.cost(&a);
                for (i, u) in p.units.iter().enumerate() {
                    let cur = usize::from(a[i]);
                    for l in cur + 1..u.costs.len() {
                        let fits = cost + u.costs[l] - u.costs[cur] <= p.budget;
                        assert!(
                            !fits || errors[i][l] >= errors[i][cur],
                            "seed {seed} res {res}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rounding_loss_is_spent_exactly() {
        // Spendable 10 bytes in 3 buckets of 4: level 2 (+10 bytes = 3 buckets) is out of
        // the DP's reach, but fits in exact bytes, so the top-up must take it.
        let u = crate::Unit {
            name: "w".into(),
            costs: vec![100, 105, 110],
        };
        let p = Problem::new(vec![u], 0, 110).unwrap();
        let errors = vec![vec![3.0, 2.0, 1.0]];
        assert_eq!(dp(&p, &errors, 3).unwrap(), vec![2]);
        assert_eq!(dp(&p, &errors, 10).unwrap(), vec![2]);
        // No spendable bytes at all.
        let p = Problem::new(p.units.clone(), 0, 100).unwrap();
        assert_eq!(dp(&p, &errors, 3).unwrap(), vec![0]);
    }

    /// Model-sized instance (210 units × 12 levels, megabyte costs) at the default
    /// resolution: feasible, fast, and no worse than any of 200 random feasible assignments
    /// or the uniform one.
    #[test]
    fn model_sized_instance() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let units: Vec<crate::Unit> = (0..210)
            .map(|i| {
                let size = rng.random_range(300_000u64..3_000_000);
                let bits = [2.0, 2.5, 3.0, 3.4, 4.0, 4.5, 5.0, 5.5, 6.0, 6.6, 8.0, 16.0];
                crate::Unit {
                    name: format!("t{i}"),
                    costs: bits
                        .iter()
                        .map(|b| (size as f64 * b / 8.0) as u64)
                        .collect(),
                }
            })
            .collect();
        let probe = Problem::new(units.clone(), 1_000_000, u64::MAX).unwrap();
        let budget = probe.min_bytes() + (probe.max_bytes() - probe.min_bytes()) / 5;
        let p = Problem::new(units, 1_000_000, budget).unwrap();
        let errors = random_errors(6, &p);
        let t = std::time::Instant::now();
        let a = dp(&p, &errors, DEFAULT_RESOLUTION).unwrap();
        eprintln!(
            "dp on 210x12 at resolution {DEFAULT_RESOLUTION}: {:?}",
            t.elapsed()
        );
        assert!(p.fits(&a));
        let got = objective(&errors, &a);
        assert!(got <= objective(&errors, &crate::uniform(&p)));
        for _ in 0..200 {
            let r = crate::random_assignment(&p, &mut rng);
            assert!(got <= objective(&errors, &r));
        }
        // Independent reference: Lagrangian relaxation. For a price λ per byte, each unit
        // picks argmin e + λ·cost; the smallest λ whose picks fit gives a feasible solution
        // (the DP must not be worse) and `min_a sum e + λ(cost - budget)` lower-bounds the
        // optimum (the DP must not be better).
        let pick = |lam: f64| -> (Vec<u16>, f64) {
            let a: Vec<u16> = p
                .units
                .iter()
                .zip(&errors)
                .map(|(u, e)| {
                    (0..u.costs.len())
                        .min_by(|&x, &y| {
                            let f = |l: usize| e[l] + lam * u.costs[l] as f64;
                            f(x).total_cmp(&f(y))
                        })
                        .unwrap() as u16
                })
                .collect();
            let bound = objective(&errors, &a) + lam * (p.cost(&a) as f64 - p.budget as f64);
            (a, bound)
        };
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        while !p.fits(&pick(hi).0) {
            hi *= 2.0;
        }
        let mut lower = f64::NEG_INFINITY;
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            let (a, bound) = pick(mid);
            lower = lower.max(bound);
            if p.fits(&a) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        let lagrange = objective(&errors, &pick(hi).0);
        eprintln!("dp {got}, lagrangian feasible {lagrange}, lower bound {lower}");
        assert!(got <= lagrange + 1e-9 && got >= lower - 1e-9);
    }

    #[test]
    fn dp_rejects_bad_tables() {
        let p = random_problem(1, 3, 2..3);
        let errors = random_errors(2, &p);
        assert!(dp(&p, &errors[..2], 10).is_err());
        let mut bad = errors.clone();
        bad[1][0] = f64::NAN;
        assert!(dp(&p, &bad, 10)
            .unwrap_err()
            .to_string()
            .contains("non-finite"));
        let mut short = errors.clone();
        short[0].pop();
        assert!(dp(&p, &short, 10).is_err());
        assert!(dp(&p, &errors, 0).is_err());
    }
}
