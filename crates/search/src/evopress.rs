//! EvoPress: evolutionary search for per-unit compression levels under a budget.
//!
//! Sieberling, Kuznedelev, Kurtic, Alistarh, "EvoPress: Towards Optimal Dynamic Model
//! Compression via Evolutionary Search" (2024). EvoPress is a (1+λ) evolutionary algorithm
//! whose mutation keeps the budget and whose selection is *multi-step*: offspring are first
//! ranked by a cheap, noisy fitness (few calibration tokens) and only the survivors are
//! scored on more data. Its pseudocode (Algorithm 1), as implemented here:
//!
//! ```text
//! parent ← start;  f_parent ← fitness(parent, last stage)
//! for generation in 1..=G:
//!     offspring ← λ distinct mutants of parent          // level switches, within budget
//!     for stage in 0..S-1:
//!         offspring ← the survivors[stage] best of offspring by fitness(·, stage)
//!     best ← argmin fitness(·, S-1) over offspring
//!     if fitness(best, S-1) < f_parent:                  // elitism, strict improvement
//!         parent ← best;  f_parent ← fitness(best, S-1)
//! ```
//!
//! Mutation (the paper's "level switch" adapted to exact byte costs): raise a random unit
//! that can go up by one level; while over budget, lower a random *other* unit that can go
//! down; if that is impossible, retry with another unit. A mutant applies `k` such switches,
//! `k ~ U{1..=max_switches}`.
//!
//! The parent is not re-scored: fitness is deterministic, so its stored last-stage value
//! equals a re-evaluation on the same data. The RNG is ChaCha8 seeded from `seed`; its
//! word position is saved after every generation, so a run resumed from a checkpoint
//! continues exactly as the uninterrupted run would have.

use crate::{evaluate_checked, Assignment, Fitness, Problem, SearchError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

/// EvoPress hyper-parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvoConfig {
    /// Total generations, counting those of a resumed run.
    pub generations: usize,
    /// Mutants per generation (λ).
    pub offspring: usize,
    /// Survivors after each stage except the last (len = n_stages - 1), e.g. `[4, 1]` for 3 stages.
    pub survivors: Vec<usize>,
    /// A mutation applies 1..=max_switches level switches, uniformly.
    pub max_switches: usize,
    pub seed: u64,
}

/// What happened in one generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationRecord {
    /// 1-based: the first generation is 1.
    pub generation: usize,
    /// The parent's last-stage fitness after this generation.
    pub best_fitness: f64,
    pub improved: bool,
    /// Candidates evaluated per stage.
    pub evaluations: Vec<usize>,
}

/// The search state after a generation; everything needed to resume (saved as JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvoState {
    /// Generations completed.
    pub generation: usize,
    pub parent: Assignment,
    /// The parent's last-stage fitness.
    pub parent_fitness: f64,
    /// The starting assignment's last-stage fitness.
    pub start_fitness: f64,
    pub curve: Vec<GenerationRecord>,
    /// Budget of the problem the state belongs to (checked on resume).
    pub budget: u64,
    /// RNG seed and ChaCha8 word position after the last completed generation.
    pub seed: u64,
    pub rng_word_pos: u128,
}

/// Where a run starts.
#[derive(Clone, Debug)]
pub enum EvoStart {
    /// A fresh run from a feasible assignment (e.g. [`crate::uniform`] or [`crate::dp`]).
    From(Assignment),
    /// Continue a checkpointed run.
    Resume(EvoState),
}

impl EvoState {
    /// Writes the state as JSON atomically (temp file in the same directory, then rename),
    /// so an interrupted save never leaves a truncated checkpoint.
    pub fn save(&self, path: &Path) -> Result<(), SearchError> {
        let fail = |msg: String| SearchError::Checkpoint {
            path: path.to_path_buf(),
            msg,
        };
        let json = serde_json::to_vec_pretty(self).map_err(|e| fail(format!("encode: {e}")))?;
        let name = path
            .file_name()
            .ok_or_else(|| fail("not a file path".into()))?
            .to_string_lossy();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            fail(format!("write: {e}"))
        })
    }

    /// Reads a state written by [`EvoState::save`].
    pub fn load(path: &Path) -> Result<EvoState, SearchError> {
        let fail = |msg: String| SearchError::Checkpoint {
            path: path.to_path_buf(),
            msg,
        };
        let bytes = std::fs::read(path).map_err(|e| fail(format!("read: {e}")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| fail(format!("not an EvoPress checkpoint (JSON state): {e}")))
    }

    /// Checks that this state can continue `cfg` on `p`.
    fn validate_resume(&self, p: &Problem, cfg: &EvoConfig) -> Result<(), SearchError> {
        let bad = |m: String| SearchError::Invalid(format!("cannot resume: {m}"));
        if self.parent.len() != p.units.len() {
            return Err(bad(format!(
                "the checkpoint assigns {} units but the problem has {}",
                self.parent.len(),
                p.units.len()
            )));
        }
        if self.budget != p.budget {
            return Err(bad(format!(
                "the checkpoint was made for a budget of {} bytes, this problem has {}",
                self.budget, p.budget
            )));
        }
        if self.seed != cfg.seed {
            return Err(bad(format!(
                "the checkpoint was made with seed {}, this run has seed {}",
                self.seed, cfg.seed
            )));
        }
        if self.curve.len() != self.generation || !self.parent_fitness.is_finite() {
            return Err(bad("inconsistent state (curve length or fitness)".into()));
        }
        p.check(&self.parent)
            .map_err(|e| bad(format!("parent: {e}")))
    }
}

fn validate_config(cfg: &EvoConfig, n_stages: usize) -> Result<(), SearchError> {
    let bad = |m: String| Err(SearchError::Invalid(m));
    if n_stages == 0 {
        return bad("the fitness has no stages".into());
    }
    if cfg.survivors.len() != n_stages - 1 {
        return bad(format!(
            "{} survivor counts given for {n_stages} stages (need one per stage but the last)",
            cfg.survivors.len()
        ));
    }
    if cfg.offspring == 0 || cfg.max_switches == 0 || cfg.survivors.contains(&0) {
        return bad("offspring, max_switches and survivor counts must be >= 1".into());
    }
    Ok(())
}

/// Runs EvoPress until `cfg.generations` generations in total, calling `on_generation` after
/// each one (e.g. to save a checkpoint; an error from it stops the run and is returned).
///
/// Stops early if no mutant distinct from the parent can be made (nothing left to explore).
pub fn evopress(
    p: &Problem,
    fitness: &dyn Fitness,
    cfg: &EvoConfig,
    start: EvoStart,
    on_generation: &mut dyn FnMut(&EvoState) -> Result<(), SearchError>,
) -> Result<EvoState, SearchError> {
    evopress_guided(p, fitness, cfg, None, start, on_generation)
}

/// [`evopress`] with mutations guided by per-unit errors `guide[unit][level]` (e.g. the
/// DP baseline's table): half of the level switches pick the unit to raise in
/// proportion to its error drop per byte, and the units to lower in proportion to the
/// bytes freed per error added; the other half pick uniformly, as in the paper.
///
/// From a start that is already optimal for the summed errors (DP's), uniform switches
/// mostly trade a cheap-to-lower unit for a costly one and waste their evaluations;
/// guided ones propose the moves that are nearly neutral under the additive model,
/// among which the true fitness (interactions, other tokens) finds the improvements.
pub fn evopress_guided(
    p: &Problem,
    fitness: &dyn Fitness,
    cfg: &EvoConfig,
    guide: Option<&[Vec<f64>]>,
    start: EvoStart,
    on_generation: &mut dyn FnMut(&EvoState) -> Result<(), SearchError>,
) -> Result<EvoState, SearchError> {
    if let Some(g) = guide {
        let ok = g.len() == p.units.len()
            && g.iter()
                .zip(&p.units)
                .all(|(e, u)| e.len() == u.costs.len() && e.iter().all(|x| x.is_finite()));
        if !ok {
            return Err(SearchError::Invalid(
                "the mutation guide needs one finite error per unit and level".into(),
            ));
        }
    }
    let n_stages = fitness.n_stages();
    validate_config(cfg, n_stages)?;
    let last = n_stages - 1;
    let (mut state, mut rng) = match start {
        EvoStart::From(a) => {
            p.check(&a)?;
            let f = evaluate_checked(fitness, last, &a, std::slice::from_ref(&a))?[0];
            let state = EvoState {
                generation: 0,
                parent: a,
                parent_fitness: f,
                start_fitness: f,
                curve: Vec::new(),
                budget: p.budget,
                seed: cfg.seed,
                rng_word_pos: 0,
            };
            (state, ChaCha8Rng::seed_from_u64(cfg.seed))
        }
        EvoStart::Resume(s) => {
            s.validate_resume(p, cfg)?;
            let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
            rng.set_word_pos(s.rng_word_pos);
            (s, rng)
        }
    };

    while state.generation < cfg.generations {
        fitness.begin_generation(state.generation + 1);
        let Some(mut pool) = offspring(p, &state.parent, cfg, guide, &mut rng)? else {
            break;
        };
        let mut evaluations = Vec::with_capacity(n_stages);
        let mut best = None;
        for stage in 0..n_stages {
            let scores = evaluate_checked(fitness, stage, &state.parent, &pool)?;
            evaluations.push(pool.len());
            let mut order: Vec<usize> = (0..pool.len()).collect();
            order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
            if stage < last {
                order.truncate(cfg.survivors[stage]);
                pool = order.iter().map(|&i| pool[i].clone()).collect();
            } else {
                best = Some((order[0], scores[order[0]]));
            }
        }
        let (i, f) = best.expect("the last stage ran");
        let improved = f < state.parent_fitness;
        if improved {
            state.parent = pool.swap_remove(i);
            state.parent_fitness = f;
        }
        state.generation += 1;
        state.rng_word_pos = rng.get_word_pos();
        state.curve.push(GenerationRecord {
            generation: state.generation,
            best_fitness: state.parent_fitness,
            improved,
            evaluations,
        });
        on_generation(&state)?;
    }
    Ok(state)
}

/// Up to `cfg.offspring` distinct mutants, all different from the parent; `None` if not
/// even one could be made within the attempt bound.
fn offspring(
    p: &Problem,
    parent: &Assignment,
    cfg: &EvoConfig,
    guide: Option<&[Vec<f64>]>,
    rng: &mut ChaCha8Rng,
) -> Result<Option<Vec<Assignment>>, SearchError> {
    let mut seen: HashSet<Assignment> = HashSet::from([parent.clone()]);
    let mut pool = Vec::with_capacity(cfg.offspring);
    let max_attempts = 20 * cfg.offspring + 100;
    for _ in 0..max_attempts {
        if pool.len() == cfg.offspring {
            break;
        }
        let Some(child) = mutate(p, parent, cfg.max_switches, guide, rng) else {
            continue;
        };
        debug_assert!(p.fits(&child), "mutation exceeded the budget");
        if !p.fits(&child) {
            return Err(SearchError::Invalid(
                "internal error: a mutation exceeded the budget".into(),
            ));
        }
        if seen.insert(child.clone()) {
            pool.push(child);
        }
    }
    Ok((!pool.is_empty()).then_some(pool))
}

/// Applies `k ~ U{1..=max_switches}` level switches; `None` if a switch kept failing.
fn mutate(
    p: &Problem,
    parent: &Assignment,
    max_switches: usize,
    guide: Option<&[Vec<f64>]>,
    rng: &mut ChaCha8Rng,
) -> Option<Assignment> {
    const TRIES: usize = 16;
    let k = rng.random_range(1..=max_switches);
    let mut a = parent.clone();
    let mut cost = p.cost(&a);
    for _ in 0..k {
        let (b, c) = (0..TRIES).find_map(|_| switch(p, &a, cost, guide, rng))?;
        a = b;
        cost = c;
    }
    Some(a)
}

/// One level switch: raise a random unit by one level, then lower random other units by
/// one level until the budget holds. `None` if the budget cannot be restored.
fn switch(
    p: &Problem,
    a: &[u16],
    cost: u64,
    guide: Option<&[Vec<f64>]>,
    rng: &mut ChaCha8Rng,
) -> Option<(Assignment, u64)> {
    // Guided half of the time (when a guide is given): the decision is drawn first so
    // that the draws stay in a fixed order.
    let guided = guide.filter(|_| rng.random_bool(0.5));
    let up: Vec<usize> = (0..a.len())
        .filter(|&i| p.step_up(i, a[i]).is_some())
        .collect();
    if up.is_empty() {
        return None;
    }
    let u = match guided {
        // Error drop per byte of raising.
        Some(g) => {
            up[weighted(
                rng,
                up.iter().map(|&i| {
                    let l = usize::from(a[i]);
                    (g[i][l] - g[i][l + 1]).max(0.0) / p.step_up(i, a[i]).expect("raisable") as f64
                }),
            )]
        }
        None => up[rng.random_range(0..up.len())],
    };
    let mut b = a.to_vec();
    let mut cost = cost + p.step_up(u, b[u]).expect("raisable");
    b[u] += 1;
    while cost > p.budget {
        let down: Vec<usize> = (0..b.len()).filter(|&i| i != u && b[i] > 0).collect();
        if down.is_empty() {
            return None;
        }
        let d = match guided {
            // Bytes freed per error added by lowering.
            Some(g) => {
                down[weighted(
                    rng,
                    down.iter().map(|&i| {
                        let l = usize::from(b[i]);
                        let added = (g[i][l - 1] - g[i][l]).max(0.0);
                        p.step_down(i, b[i]).expect("lowerable") as f64 / (added + 1e-12)
                    }),
                )]
            }
            None => down[rng.random_range(0..down.len())],
        };
        cost -= p.step_down(d, b[d]).expect("lowerable");
        b[d] -= 1;
    }
    Some((b, cost))
}

/// An index drawn with probability proportional to `weights` (uniform when they sum to
/// zero or are not finite).
fn weighted(rng: &mut ChaCha8Rng, weights: impl Iterator<Item = f64>) -> usize {
    let w: Vec<f64> = weights.collect();
    let total: f64 = w.iter().sum();
    if !(total > 0.0 && total.is_finite()) {
        return rng.random_range(0..w.len());
    }
    let mut x = rng.random::<f64>() * total;
    for (i, &wi) in w.iter().enumerate() {
        if x < wi {
            return i;
        }
        x -= wi;
    }
    w.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{brute_force, random_errors, random_problem, Synth};
    use crate::{dp, uniform};

    fn cfg(generations: usize, offspring: usize, survivors: Vec<usize>, seed: u64) -> EvoConfig {
        EvoConfig {
            generations,
            offspring,
            survivors,
            max_switches: 3,
            seed,
        }
    }

    fn run(p: &Problem, f: &Synth, c: &EvoConfig, start: EvoStart) -> EvoState {
        evopress(p, f, c, start, &mut |_| Ok(())).unwrap()
    }

    /// Separable fitness = DP's objective: EvoPress from uniform reaches the unique optimum.
    #[test]
    fn separable_reaches_the_optimum() {
        for seed in 0..4 {
            let p = random_problem(seed, 8, 3..6);
            let f = Synth::separable(&p, seed + 100, 1);
            let (opt, second) = brute_force(&p, |a| f.truth(a));
            let want = f.truth(&opt);
            assert!(second - want > 1e-6, "seed {seed}: optimum not unique");
            let d = dp(&p, &f.err, 1_000_000).unwrap();
            assert!(
                (f.truth(&d) - want).abs() < 1e-9,
                "seed {seed}: dp not optimal"
            );

            let s = run(
                &p,
                &f,
                &cfg(300, 16, vec![], seed),
                EvoStart::From(uniform(&p)),
            );
            assert!(
                (s.parent_fitness - want).abs() < 1e-9,
                "seed {seed}: evopress {} vs optimum {want} (start {})",
                s.parent_fitness,
                s.start_fitness
            );
            assert_eq!(s.parent, opt);
            assert!(
                s.start_fitness > want + 1e-3,
                "seed {seed}: uniform already optimal"
            );
            assert_eq!(f.violations(), 0);
            let reached = s.curve.iter().position(|r| r.best_fitness == want).unwrap() + 1;
            eprintln!("seed {seed}: optimum reached at generation {reached}");
            // The curve is monotone and records the parent's fitness.
            assert!(s
                .curve
                .windows(2)
                .all(|w| w[1].best_fitness <= w[0].best_fitness));
            assert_eq!(s.curve.last().unwrap().best_fitness, s.parent_fitness);
            assert!(s.curve.iter().all(|r| r.evaluations == vec![16]));
        }
    }

    /// With a pairwise interaction the DP (which only sees per-unit errors) is suboptimal;
    /// EvoPress optimises the true fitness and beats it.
    #[test]
    fn non_separable_beats_dp() {
        let p = random_problem(7, 8, 4..6);
        let mut f = Synth::separable(&p, 8, 1);
        f.pair = 0.8;
        let d = dp(&p, &f.err, 1_000_000).unwrap();
        let (opt, _) = brute_force(&p, |a| f.truth(a));
        let s = run(
            &p,
            &f,
            &cfg(150, 16, vec![], 1),
            EvoStart::From(uniform(&p)),
        );
        eprintln!(
            "evopress {} dp {} optimum {} uniform {}",
            s.parent_fitness,
            f.truth(&d),
            f.truth(&opt),
            s.start_fitness
        );
        assert!(
            s.parent_fitness < f.truth(&d) - 0.1,
            "evopress {} vs dp {}",
            s.parent_fitness,
            f.truth(&d)
        );
        assert!(
            s.parent_fitness - f.truth(&opt) < 1e-9,
            "evopress {} vs optimum {}",
            s.parent_fitness,
            f.truth(&opt)
        );
        assert_eq!(f.violations(), 0);
    }

    /// Multi-step selection with a noisy first stage still converges, because the last
    /// stage is exact and elitism only accepts true improvements.
    #[test]
    fn multi_stage_with_noise_converges() {
        let p = random_problem(5, 8, 3..6);
        let mut f = Synth::separable(&p, 105, 3);
        f.noise = 0.3;
        let (opt, _) = brute_force(&p, |a| f.truth(a));
        let c = cfg(150, 24, vec![6, 2], 9);
        let s = run(&p, &f, &c, EvoStart::From(uniform(&p)));
        assert!(
            s.start_fitness > f.truth(&opt) + 1e-3,
            "uniform already optimal"
        );
        assert!((s.parent_fitness - f.truth(&opt)).abs() < 1e-9);
        assert_eq!(
            s.parent_fitness,
            f.truth(&s.parent),
            "parent scored at the exact stage"
        );
        assert_eq!(f.violations(), 0);
        assert!(s.curve.iter().all(|r| r.evaluations == vec![24, 6, 2]));
    }

    #[test]
    fn deterministic_and_resumable() {
        let p = random_problem(11, 10, 3..6);
        let mut f = Synth::separable(&p, 12, 2);
        f.noise = 0.2;
        let full_cfg = cfg(30, 12, vec![3], 42);
        let start = EvoStart::From(uniform(&p));
        let mut at7 = None;
        let a = evopress(&p, &f, &full_cfg, start.clone(), &mut |s| {
            if s.generation == 7 {
                at7 = Some(s.clone());
            }
            Ok(())
        })
        .unwrap();
        let b = run(&p, &f, &full_cfg, start.clone());
        assert_eq!(a, b);
        assert_eq!(a.generation, 30);
        assert!(a.curve.iter().any(|r| r.improved));
        let other = run(&p, &f, &cfg(30, 12, vec![3], 43), start.clone());
        assert_ne!(a.curve, other.curve, "the seed must matter");

        // Interrupt after generation 7 (the callback checkpoints, then "crashes"), resume
        // from the file, and compare with the uninterrupted run.
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("evo.json");
        let err = evopress(&p, &f, &full_cfg, start, &mut |s| {
            s.save(&ckpt)?;
            if s.generation == 7 {
                return Err(SearchError::Fitness("interrupted".into()));
            }
            Ok(())
        })
        .unwrap_err();
        assert!(err.to_string().contains("interrupted"));
        let saved = EvoState::load(&ckpt).unwrap();
        assert_eq!(saved.generation, 7);
        assert_eq!(
            Some(&saved),
            at7.as_ref(),
            "checkpoint == the run's state at 7"
        );
        let resumed = run(&p, &f, &full_cfg, EvoStart::Resume(saved));
        assert_eq!(resumed, a);
        // Only the checkpoint is left in the directory (the temp file was renamed).
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// Elitism is strict: on a flat fitness the parent never changes.
    #[test]
    fn ties_keep_the_parent() {
        struct Flat;
        impl Fitness for Flat {
            fn n_stages(&self) -> usize {
                1
            }
            fn evaluate(
                &self,
                _: usize,
                _: &Assignment,
                c: &[Assignment],
            ) -> Result<Vec<f64>, SearchError> {
                Ok(vec![1.0; c.len()])
            }
        }
        let p = random_problem(4, 6, 3..5);
        let start = uniform(&p);
        let s = evopress(
            &p,
            &Flat,
            &cfg(20, 8, vec![], 0),
            EvoStart::From(start.clone()),
            &mut |_| Ok(()),
        )
        .unwrap();
        assert_eq!(s.parent, start);
        assert!(s.curve.iter().all(|r| !r.improved));
    }

    #[test]
    fn checkpoint_and_resume_errors() {
        let p = random_problem(2, 5, 2..4);
        let f = Synth::separable(&p, 3, 1);
        let c = cfg(3, 4, vec![], 0);
        let s = run(&p, &f, &c, EvoStart::From(uniform(&p)));
        let dir = tempfile::tempdir().unwrap();

        let missing = dir.path().join("nope.json");
        let e = EvoState::load(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.json") && e.contains("read"), "{e}");
        let junk = dir.path().join("junk.json");
        std::fs::write(&junk, b"{\"generation\": 3").unwrap();
        let e = EvoState::load(&junk).unwrap_err().to_string();
        assert!(e.contains("junk.json") && e.contains("JSON"), "{e}");
        let e = s.save(&dir.path().join("no/such/dir/x.json")).unwrap_err();
        assert!(e.to_string().contains("x.json"), "{e}");

        let mut short = s.clone();
        short.parent.pop();
        let e = evopress(&p, &f, &c, EvoStart::Resume(short), &mut |_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("units"), "{e}");
        let e = evopress(
            &p,
            &f,
            &cfg(3, 4, vec![], 1),
            EvoStart::Resume(s.clone()),
            &mut |_| Ok(()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("seed"), "{e}");
        let e = evopress(
            &p,
            &f,
            &cfg(3, 4, vec![2], 0),
            EvoStart::From(uniform(&p)),
            &mut |_| Ok(()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("survivor"), "{e}");
        let too_big: Assignment = (0..p.units.len())
            .map(|i| (p.n_levels(i) - 1) as u16)
            .collect();
        if !p.fits(&too_big) {
            assert!(evopress(&p, &f, &c, EvoStart::From(too_big), &mut |_| Ok(())).is_err());
        }
        // Resuming a finished run does nothing more.
        let again = run(&p, &f, &c, EvoStart::Resume(s.clone()));
        assert_eq!(again, s);
    }

    /// From DP's optimum of the summed errors, guided switches (half of them weighted,
    /// half uniform) propose moves that cost less under those errors than uniform
    /// switches do, so more of the evaluations go to moves the true fitness may
    /// prefer; and they still explore: they raise many different units.
    #[test]
    fn guided_mutations_stay_near_the_additive_optimum() {
        let p = random_problem(11, 40, 3..7);
        let errors = random_errors(12, &p);
        let start = dp(&p, &errors, 1_000_000).unwrap();
        let total = |a: &[u16]| -> f64 {
            a.iter()
                .enumerate()
                .map(|(i, &l)| errors[i][usize::from(l)])
                .sum()
        };
        let base = total(&start);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut mean = [0.0f64; 2];
        let mut raised = [HashSet::new(), HashSet::new()];
        for (k, guide) in [None, Some(errors.as_slice())].into_iter().enumerate() {
            let mut n = 0;
            for _ in 0..400 {
                if let Some((b, _)) = switch(&p, &start, p.cost(&start), guide, &mut rng) {
                    mean[k] += total(&b) - base;
                    n += 1;
                    raised[k].extend((0..b.len()).filter(|&i| b[i] > start[i]));
                }
            }
            mean[k] /= n as f64;
        }
        assert!(mean[0] > 0.0 && mean[1] >= 0.0, "{mean:?}");
        assert!(
            mean[1] < 0.9 * mean[0],
            "guided {} vs uniform {}",
            mean[1],
            mean[0]
        );
        assert!(raised[1].len() > 10, "guided raised only {:?}", raised[1]);
    }

    #[test]
    fn mutations_keep_the_budget() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for seed in 0..20 {
            let p = random_problem(seed, 6, 1..5);
            let parent = uniform(&p);
            let errors = random_errors(seed, &p);
            for i in 0..100 {
                let guide = (i % 2 == 1).then_some(errors.as_slice());
                if let Some(c) = mutate(&p, &parent, 4, guide, &mut rng) {
                    assert!(p.fits(&c), "seed {seed}");
                }
                // One switch raises exactly one unit by one level and only lowers others.
                let cost = p.cost(&parent);
                if let Some((b, c)) = switch(&p, &parent, cost, guide, &mut rng) {
                    assert_eq!(c, p.cost(&b));
                    assert!(c <= p.budget, "seed {seed}");
                    let ups: Vec<usize> = (0..b.len()).filter(|&i| b[i] > parent[i]).collect();
                    assert_eq!(ups.len(), 1, "seed {seed}: {parent:?} -> {b:?}");
                    assert_eq!(b[ups[0]], parent[ups[0]] + 1);
                }
            }
        }
        // A single unit with a single level has no neighbour: the run stops at once.
        let p = Problem::new(
            vec![crate::Unit {
                name: "only".into(),
                costs: vec![5],
            }],
            0,
            5,
        )
        .unwrap();
        let f = Synth::separable(&p, 0, 1);
        let s = run(&p, &f, &cfg(10, 4, vec![], 0), EvoStart::From(vec![0]));
        assert_eq!(s.generation, 0);
    }
}
