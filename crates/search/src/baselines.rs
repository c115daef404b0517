//! Baselines that need few or no fitness evaluations: uniform levels, greedy top-up,
//! random feasible assignments.

use crate::{evaluate_checked, Assignment, Fitness, Problem, SearchError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The same level index for every unit (capped at each unit's top level), as high as fits,
/// then a greedy top-up in unit order so that no byte that could buy a level is wasted.
///
/// "Same index" is the uniform notion here because levels are per unit; callers that want
/// "same quantization type" map types to indices themselves and use [`greedy_topup`].
pub fn uniform(p: &Problem) -> Assignment {
    let n = p.units.len();
    let top = (0..n).map(|i| p.n_levels(i)).max().unwrap_or(1);
    let at = |l: usize| -> Assignment { (0..n).map(|i| l.min(p.n_levels(i) - 1) as u16).collect() };
    // The cost is non-decreasing in the common level, so the first level that does not
    // fit ends the scan. Level 0 fits by `Problem::new`'s invariant.
    let mut best = 0;
    for l in 1..top {
        if p.fits(&at(l)) {
            best = l;
        } else {
            break;
        }
    }
    let order: Vec<usize> = (0..n).collect();
    greedy_topup(p, &at(best), &order)
}

/// Raises units one level at a time following `priority`, cycling through the list
/// (each pass raises every listed unit at most once), skipping units at their top level
/// or whose next level does not fit, until a whole pass raises nothing.
///
/// `a` must fit the budget (the result then fits too). Indices in `priority` that are
/// not units are ignored.
pub fn greedy_topup(p: &Problem, a: &[u16], priority: &[usize]) -> Assignment {
    debug_assert!(p.fits(a), "greedy_topup needs a feasible start");
    let mut a = a.to_vec();
    let mut cost = p.cost(&a);
    let n = a.len();
    loop {
        let mut raised = false;
        for &i in priority.iter().filter(|&&i| i < n) {
            if let Some(extra) = p.step_up(i, a[i]) {
                if cost + extra <= p.budget {
                    a[i] += 1;
                    cost += extra;
                    raised = true;
                }
            }
        }
        if !raised {
            return a;
        }
    }
}

/// Makes `a` feasible by lowering random units (one level at a time, any unit above its
/// smallest level) until it fits. Levels above a unit's top are first clamped to it.
/// Always succeeds because the all-smallest assignment fits.
///
/// `a` must have one level per unit.
pub fn repair<R: Rng + ?Sized>(p: &Problem, a: &[u16], rng: &mut R) -> Assignment {
    assert_eq!(
        a.len(),
        p.units.len(),
        "assignment length != number of units"
    );
    let mut a: Assignment = a
        .iter()
        .enumerate()
        .map(|(i, &l)| l.min((p.n_levels(i) - 1) as u16))
        .collect();
    let mut cost = p.cost(&a);
    while cost > p.budget {
        let down: Vec<usize> = (0..a.len()).filter(|&i| a[i] > 0).collect();
        let i = down[rng.random_range(0..down.len())];
        cost -= p.step_down(i, a[i]).expect("unit above level 0");
        a[i] -= 1;
    }
    a
}

/// Spends the leftover budget of a feasible `a` by raising random units (among those whose
/// next level still fits) one level at a time until none can be raised.
pub fn random_topup<R: Rng + ?Sized>(p: &Problem, a: &[u16], rng: &mut R) -> Assignment {
    debug_assert!(p.fits(a), "random_topup needs a feasible start");
    let mut a = a.to_vec();
    let mut cost = p.cost(&a);
    loop {
        let up: Vec<(usize, u64)> = (0..a.len())
            .filter_map(|i| p.step_up(i, a[i]).map(|x| (i, x)))
            .filter(|&(_, x)| cost + x <= p.budget)
            .collect();
        if up.is_empty() {
            return a;
        }
        let (i, x) = up[rng.random_range(0..up.len())];
        a[i] += 1;
        cost += x;
    }
}

/// A random feasible assignment: uniformly random levels, [`repair`], then [`random_topup`].
pub fn random_assignment<R: Rng + ?Sized>(p: &Problem, rng: &mut R) -> Assignment {
    let raw: Assignment = (0..p.units.len())
        .map(|i| rng.random_range(0..p.n_levels(i)) as u16)
        .collect();
    let fixed = repair(p, &raw, rng);
    random_topup(p, &fixed, rng)
}

/// Evaluates `n` random feasible assignments at `stage` in one batch and returns the best
/// (the first on ties) with its fitness. The batch's `parent` is [`uniform`]'s assignment,
/// a reference the fitness may use for incremental evaluation.
pub fn random_best(
    p: &Problem,
    n: usize,
    fitness: &dyn Fitness,
    stage: usize,
    rng_seed: u64,
) -> Result<(Assignment, f64), SearchError> {
    if n == 0 {
        return Err(SearchError::Invalid(
            "random_best needs n >= 1 candidates".into(),
        ));
    }
    if stage >= fitness.n_stages() {
        return Err(SearchError::Invalid(format!(
            "stage {stage} requested but the fitness has {} stages",
            fitness.n_stages()
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(rng_seed);
    let candidates: Vec<Assignment> = (0..n).map(|_| random_assignment(p, &mut rng)).collect();
    let scores = evaluate_checked(fitness, stage, &uniform(p), &candidates)?;
    let best = (0..n)
        .min_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)))
        .expect("n >= 1");
    Ok((candidates[best].clone(), scores[best]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{random_problem, Synth};
    use crate::Unit;

    fn raisable(p: &Problem, a: &[u16]) -> bool {
        let cost = p.cost(a);
        (0..a.len()).any(|i| p.step_up(i, a[i]).is_some_and(|x| cost + x <= p.budget))
    }

    #[test]
    fn uniform_by_hand() {
        let u = |c: &[u64]| Unit {
            name: String::new(),
            costs: c.to_vec(),
        };
        // Common level 1 costs 2+3+3 = 8 of 11; level 2 would cost 4+6+3 = 13.
        // Top-up in unit order with 3 bytes left: unit 0 (+2) fits, unit 1 (+3) does not.
        let p = Problem::new(vec![u(&[1, 2, 4]), u(&[1, 3, 6]), u(&[3])], 0, 11).unwrap();
        assert_eq!(uniform(&p), vec![2, 1, 0]);
        // Everything fits: every unit at its top level.
        let p = Problem::new(vec![u(&[1, 2, 4]), u(&[1, 3]), u(&[3])], 0, 100).unwrap();
        assert_eq!(uniform(&p), vec![2, 1, 0]);
        // Only the minimum fits.
        let p = Problem::new(vec![u(&[1, 2]), u(&[1, 3])], 5, 7).unwrap();
        assert_eq!(uniform(&p), vec![0, 0]);
    }

    #[test]
    fn baselines_are_feasible_and_maximal() {
        for seed in 0..40 {
            let p = random_problem(seed, 7, 2..6);
            let a = uniform(&p);
            assert!(p.fits(&a), "seed {seed}");
            assert!(
                !raisable(&p, &a),
                "seed {seed}: uniform left a raisable unit"
            );

            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let prio: Vec<usize> = (0..p.units.len()).rev().chain([99]).collect();
            let g = greedy_topup(&p, &vec![0; p.units.len()], &prio);
            assert!(p.fits(&g) && !raisable(&p, &g), "seed {seed}");

            let top: Assignment = (0..p.units.len())
                .map(|i| p.n_levels(i) as u16 + 3)
                .collect();
            let r = repair(&p, &top, &mut rng);
            assert!(p.fits(&r), "seed {seed}");
            let t = random_topup(&p, &r, &mut rng);
            assert!(p.fits(&t) && !raisable(&p, &t), "seed {seed}");
            assert!(t.iter().zip(&r).all(|(x, y)| x >= y));
        }
    }

    #[test]
    fn random_best_is_feasible_and_best_of_its_batch() {
        let p = random_problem(3, 8, 3..5);
        let f = Synth::separable(&p, 3, 1);
        let (a, fa) = random_best(&p, 64, &f, 0, 11).unwrap();
        assert!(p.fits(&a));
        assert_eq!(fa, f.truth(&a));
        assert_eq!(f.violations(), 0);
        // Every candidate of the batch is feasible and none beats the returned one.
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for _ in 0..64 {
            let c = random_assignment(&p, &mut rng);
            assert!(p.fits(&c) && f.truth(&c) >= fa);
        }
        assert_eq!(
            random_best(&p, 64, &f, 0, 11).unwrap().0,
            a,
            "deterministic"
        );
        assert!(random_best(&p, 0, &f, 0, 11).is_err());
        assert!(random_best(&p, 4, &f, 1, 11).is_err());
    }
}
