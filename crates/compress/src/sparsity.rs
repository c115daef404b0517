//! Non-uniform unstructured sparsity: how much of each block linear to prune so that
//! the model loses the least at a global sparsity, searched with EvoPress (Sieberling et
//! al., "EvoPress: Towards Optimal Dynamic Model Compression via Evolutionary Search",
//! 2024, §4.2 unstructured sparsity).
//!
//! ```text
//! reference model ─ calibration windows, block by block ─► XᵀX per linear input
//!   │ level database: every block linear pruned by SparseGPT to every sparsity of the
//!   │   ladder (0, 10 %, …, 90 % by default), independently, on the reference's
//!   │   activations, so any combination of levels can be assembled
//!   ▼
//! Problem: a unit per linear, cost = its kept weights; budget = the kept weights of
//!   the target sparsity applied to every linear (so `uniform` meets it exactly)
//!   │ fitness: mean KL to the reference on calibration windows (Evaluator)
//!   ▼
//! baselines: uniform (every linear at the target), DP over per-linear KL (L-GreCo /
//! OWL-style per-layer sparsities from a separable error model)
//! EvoPress from the better baseline → written as a dense HF directory (zeros stored)
//! ```
//!
//! EvoPress's paper builds "equal-step" databases so that a level switch trades the
//! same number of weights between two layers; tersor's search instead keeps any switch
//! within the budget with exact per-level costs, so a plain sparsity ladder works for
//! layers of different sizes.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;
use tersor_model::{LinearKind, LoadedModel, TensorNaming};
use tersor_prune::pattern::zeros_for;
use tersor_prune::sparsegpt::{sparsegpt, SparseGptConfig};
use tersor_prune::Pattern;
use tersor_quantize::prune::FloatDtype;
use tersor_quantize::{CalibConfig, Calibration, Collector, Site};
use tersor_search::{Assignment, Fitness, GenerationRecord, Problem};

use crate::fitness::Evaluator;
use crate::units::{Unit, UnitRef};
use crate::{CompressError, EvalFigures, Event, MemoLm, Result, SearchOptions};

/// The default sparsity ladder of every linear.
pub const DEFAULT_LEVELS: [f64; 10] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// What `tersor compress --target-sparsity` needs.
#[derive(Clone, Debug)]
pub struct SparsityOptions {
    pub input: PathBuf,
    /// Global sparsities to search (fractions of the block linears' weights to remove,
    /// `0 < s < 1`), each with where to write its EvoPress model (a Hugging Face
    /// directory; `None`: report only). They share the level database and the per-linear
    /// error table.
    pub targets: Vec<(f64, Option<PathBuf>)>,
    /// Sparsities each linear may take (sorted, deduplicated here).
    pub levels: Vec<f64>,
    pub calib: CalibConfig,
    pub sparsegpt: SparseGptConfig,
    pub search: SearchOptions,
    /// Score every allocation on this text (ctx = calibration ctx), first N windows.
    pub eval: Option<(PathBuf, usize)>,
    /// Storage type of the written tensors.
    pub dtype: FloatDtype,
}

/// One allocation's result.
#[derive(Clone, Debug, Serialize)]
pub struct SparsityMethod {
    pub name: String,
    /// Zeros over the block linears' parameters.
    pub sparsity: f64,
    pub zeros: u64,
    /// Last-stage calibration fitness (mean KL).
    pub fitness: f64,
    pub eval: Option<EvalFigures>,
    /// Sparsity of each linear, in unit order.
    pub levels: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SparsityReport {
    pub input: PathBuf,
    pub levels: Vec<f64>,
    /// The block linears, `blk.L.attn_q.weight` …, and their parameters.
    pub units: Vec<(String, u64)>,
    pub linear_params: u64,
    pub fitness_tokens: Vec<usize>,
    /// Level database (SparseGPT at every level).
    pub seconds_build: f64,
    /// The per-linear error table.
    pub seconds_table: f64,
    pub targets: Vec<TargetReport>,
}

/// One target sparsity's search.
#[derive(Clone, Debug, Serialize)]
pub struct TargetReport {
    pub target: f64,
    pub output: Option<PathBuf>,
    /// Weights that must be removed (the target applied to every linear).
    pub zeros_required: u64,
    pub curve: Vec<GenerationRecord>,
    pub methods: Vec<SparsityMethod>,
    /// Mean sparsity of each block (all seven linears) in the EvoPress allocation.
    pub evopress_block_sparsity: Vec<f64>,
    pub seconds_baselines: f64,
    pub seconds_search: f64,
    pub seconds_eval: f64,
}

/// The ladder sorted by decreasing sparsity (level 0 = the sparsest = the cheapest, as
/// [`Problem`] wants), checked.
fn ladder(levels: &[f64], targets: &[f64]) -> Result<Vec<f64>> {
    if targets.is_empty() {
        return Err(CompressError::Usage(
            "--target-sparsity: no target given".into(),
        ));
    }
    if let Some(t) = targets.iter().find(|t| !(**t > 0.0 && **t < 1.0)) {
        return Err(CompressError::Usage(format!(
            "--target-sparsity {t}: expected a fraction between 0 and 1 (exclusive)"
        )));
    }
    if let Some(bad) = levels.iter().find(|s| !(**s >= 0.0 && **s < 1.0)) {
        return Err(CompressError::Usage(format!(
            "sparsity level {bad}: expected 0 <= s < 1"
        )));
    }
    let mut l = levels.to_vec();
    l.sort_by(|a, b| b.total_cmp(a));
    l.dedup();
    let (lo, hi) = (l.last().copied(), l.first().copied());
    for &target in targets {
        match (lo, hi) {
            (Some(lo), Some(hi)) if lo <= target && target <= hi => {}
            _ => {
                return Err(CompressError::Usage(format!(
                    "--target-sparsity {target} is outside the sparsity levels {levels:?}: the \
                     levels must include sparsities at and below and at and above the target"
                )))
            }
        }
    }
    Ok(l)
}

/// Runs the job: level database, baselines, EvoPress, evaluation and the written model.
pub fn run(opts: &SparsityOptions, progress: &(dyn Fn(Event) + Sync)) -> Result<SparsityReport> {
    let target_list: Vec<f64> = opts.targets.iter().map(|t| t.0).collect();
    let levels = ladder(&opts.levels, &target_list)?;
    let (model, tokenizer) = match tersor_model::load(&opts.input)? {
        LoadedModel::Decoder { model, tokenizer } => (model, tokenizer),
        LoadedModel::Encoder(_) => return Err(CompressError::Input {
            path: opts.input.clone(),
            msg: "sparsity search needs a decoder LM (prune sentence encoders with `tersor prune`)"
                .into(),
        }),
    };
    let n_layers = model.n_layers();

    // Units and the problem in kept weights.
    let mut units = Vec::new();
    for l in 0..n_layers {
        for kind in LinearKind::ALL {
            let (rows, cols) = model.linear_weight(l, kind)?.dims2()?;
            units.push(Unit {
                name: TensorNaming::Gguf.linear(l, kind, "weight"),
                what: UnitRef::Linear(l, kind),
                rows,
                cols,
                kinds: Vec::new(),
            });
        }
    }
    let kept = |u: &Unit, s: f64| (u.rows * u.cols - zeros_for(u.rows * u.cols, s)) as u64;
    let search_units: Vec<tersor_search::Unit> = units
        .iter()
        .map(|u| tersor_search::Unit {
            name: u.name.clone(),
            costs: levels.iter().map(|&s| kept(u, s)).collect(),
        })
        .collect();
    if let Some(u) = search_units
        .iter()
        .find(|u| u.costs.windows(2).any(|w| w[1] <= w[0]))
    {
        return Err(CompressError::Usage(format!(
            "{}: the sparsity levels {levels:?} do not differ by at least one of its weights",
            u.name
        )));
    }
    let linear_params: u64 = units.iter().map(|u| u.params()).sum();

    // Level database: SparseGPT on the reference's activations, block by block.
    let t0 = Instant::now();
    let cal = Calibration::load(&opts.calib, &tokenizer)?;
    let mut hidden = crate::build::embed_windows(&model, &cal.windows)?;
    let total_levels = units.len() * levels.len();
    progress(Event::BuildStart {
        units: units.len(),
        levels: total_levels,
    });
    let mut weights: Vec<Vec<Tensor>> = Vec::with_capacity(units.len());
    let mut output_errors: Vec<Vec<f64>> = Vec::with_capacity(units.len());
    for l in 0..n_layers {
        let mut col = Collector::new(usize::MAX, false);
        for h in hidden.iter_mut() {
            *h = model.block_forward(l, h, Some(&mut col))?;
        }
        let stats = col.into_stats();
        // One f32 copy of each site's XᵀX for the output errors (q, k, v share a site,
        // as do gate and up).
        let mut h_site: [Option<Tensor>; 4] = Default::default();
        for kind in LinearKind::ALL {
            let u = &units[weights.len()];
            let site = Site::of(kind) as usize;
            let xtx = &stats[site].xtx;
            let w = model
                .linear_weight(l, kind)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            if h_site[site].is_none() {
                h_site[site] = Some(Tensor::from_vec(
                    xtx.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                    (u.cols, u.cols),
                    &Device::Cpu,
                )?);
            }
            let h = h_site[site].as_ref().expect("set above");
            let w_energy =
                crate::build::energy(&w, u.rows, u.cols, Some(h))?.max(f64::MIN_POSITIVE);
            let mut lv = Vec::with_capacity(levels.len());
            let mut errs = Vec::with_capacity(levels.len());
            for (i, &s) in levels.iter().enumerate() {
                let pruned = if s == 0.0 {
                    w.clone()
                } else {
                    sparsegpt(
                        &w,
                        u.rows,
                        u.cols,
                        xtx,
                        Pattern::Unstructured(s),
                        &opts.sparsegpt,
                    )
                    .map_err(|e| CompressError::Input {
                        path: opts.input.clone(),
                        msg: format!("{}: {e}", u.name),
                    })?
                    .weights
                };
                let dw: Vec<f32> = w.iter().zip(&pruned).map(|(a, b)| a - b).collect();
                errs.push(crate::build::energy(&dw, u.rows, u.cols, Some(h))? / w_energy);
                lv.push(Tensor::from_vec(pruned, (u.rows, u.cols), &Device::Cpu)?);
                progress(Event::BuildLevel {
                    done: weights.len() * levels.len() + i + 1,
                    total: total_levels,
                    tensor: u.name.clone(),
                });
            }
            weights.push(lv);
            output_errors.push(errs);
        }
    }
    drop(hidden);
    let seconds_build = t0.elapsed().as_secs_f64();

    let s = &opts.search;
    let stage_windows: Vec<usize> = s
        .stage_windows
        .iter()
        .map(|&n| n.min(cal.windows.len()))
        .collect();
    let eval = Evaluator::from_levels(
        model.clone(),
        units.clone(),
        weights,
        cal.windows.clone(),
        stage_windows.clone(),
        s.batch,
        s.kl_top_k,
    )?;

    // The per-linear error table of the DP baseline and of EvoPress's guided switches:
    // the KL of each linear alone at the sparsest level, scaled to the other levels by
    // their output errors. It does not depend on the target.
    let t1 = Instant::now();
    let report = |done, total| progress(Event::UnitKl { done, total });
    let table = eval.unit_table_scaled(0, &output_errors, &report)?;
    let seconds_table = t1.elapsed().as_secs_f64();

    let reference = MemoLm::new(&model);
    let ctx = TargetCtx {
        eval: &eval,
        reference: &reference,
        tokenizer: &tokenizer,
        units: &units,
        levels: &levels,
        table: &table,
        linear_params,
        last_stage: stage_windows.len() - 1,
    };
    let mut targets = Vec::new();
    for (target, output) in &opts.targets {
        let budget: u64 = units.iter().map(|u| kept(u, *target)).sum();
        let problem = Problem::new(search_units.clone(), 0, budget)?;
        targets.push(search_target(
            opts, &ctx, &problem, *target, output, progress,
        )?);
    }
    Ok(SparsityReport {
        input: opts.input.clone(),
        levels: levels.clone(),
        units: units.iter().map(|u| (u.name.clone(), u.params())).collect(),
        linear_params,
        fitness_tokens: (0..stage_windows.len())
            .map(|s| eval.stage_tokens(s))
            .collect(),
        seconds_build,
        seconds_table,
        targets,
    })
}

/// What every target's search shares.
struct TargetCtx<'a> {
    eval: &'a Evaluator,
    reference: &'a MemoLm<'a>,
    tokenizer: &'a tersor_model::TextTokenizer,
    units: &'a [Unit],
    levels: &'a [f64],
    table: &'a [Vec<f64>],
    linear_params: u64,
    last_stage: usize,
}

/// Baselines, EvoPress, evaluation and the written model for one target.
fn search_target(
    opts: &SparsityOptions,
    c: &TargetCtx<'_>,
    problem: &Problem,
    target: f64,
    output: &Option<PathBuf>,
    progress: &(dyn Fn(Event) + Sync),
) -> Result<TargetReport> {
    let (eval, units, levels) = (c.eval, c.units, c.levels);
    let s = &opts.search;
    let n = units.len();

    // Baselines: uniform is the target level everywhere (it meets the budget exactly
    // when the target is a level); DP minimises the summed per-linear errors.
    let t1 = Instant::now();
    let target_level = levels
        .iter()
        .position(|&x| x <= target)
        .expect("ladder() keeps a level at or below every target");
    let uniform: Assignment = if levels[target_level] == target {
        vec![target_level as u16; n]
    } else {
        // Between two levels: the sparser one, topped up in unit order.
        tersor_search::greedy_topup(
            problem,
            &vec![(target_level - 1) as u16; n],
            &(0..n).collect::<Vec<_>>(),
        )
    };
    let dp = tersor_search::dp(problem, c.table, 100_000)?;
    let mut allocs: Vec<(String, Assignment)> =
        vec![("uniform".into(), uniform), ("dp".into(), dp)];
    let mut fits = Vec::new();
    for (name, a) in &allocs {
        let f = Fitness::evaluate(eval, c.last_stage, a, std::slice::from_ref(a))?[0];
        progress(Event::Baseline {
            name: format!("{name} at {target}"),
            fitness: f,
        });
        fits.push(f);
    }
    let seconds_baselines = t1.elapsed().as_secs_f64();

    // EvoPress from the better baseline.
    let t2 = Instant::now();
    let best = if fits[1] < fits[0] { 1 } else { 0 };
    let state = crate::evopress_from(problem, eval, s, c.table, allocs[best].1.clone(), progress)?;
    let seconds_search = t2.elapsed().as_secs_f64();
    allocs.insert(0, ("evopress".into(), state.parent.clone()));
    fits.insert(0, state.parent_fitness);

    // Evaluate, and write the winner.
    let t3 = Instant::now();
    let mut methods = Vec::new();
    for ((name, a), &fitness) in allocs.iter().zip(&fits) {
        let eval_figures = crate::evaluate_opt(
            &opts.eval,
            name,
            eval,
            c.reference,
            c.tokenizer,
            a,
            opts.calib.ctx,
            progress,
        )?;
        // Zeros counted on the assembled weights, not the level labels.
        let m = eval.model(&a.iter().map(|&l| Some(l)).collect::<Vec<_>>())?;
        let mut zeros = 0u64;
        for u in units {
            let UnitRef::Linear(l, k) = u.what else {
                unreachable!("sparsity units are linears")
            };
            let w = m.linear_weight(l, k)?.flatten_all()?.to_vec1::<f32>()?;
            zeros += w.iter().filter(|&&x| x == 0.0).count() as u64;
        }
        methods.push(SparsityMethod {
            name: name.clone(),
            sparsity: zeros as f64 / c.linear_params as f64,
            zeros,
            fitness,
            eval: eval_figures,
            levels: a.iter().map(|&l| levels[l as usize]).collect(),
        });
    }
    let seconds_eval = t3.elapsed().as_secs_f64();
    if let Some(out) = output {
        progress(Event::Writing { path: out.clone() });
        let m = eval.model(&state.parent.iter().map(|&l| Some(l)).collect::<Vec<_>>())?;
        tersor_quantize::write_dense_dir(&opts.input, out, &m, opts.dtype)?;
    }
    let per_block = LinearKind::ALL.len();
    let evopress_block_sparsity = units
        .chunks(per_block)
        .zip(state.parent.chunks(per_block))
        .map(|(us, ls)| {
            let (z, p) = us.iter().zip(ls).fold((0u64, 0u64), |(z, p), (u, &l)| {
                let n = u.params();
                (z + zeros_for(n as usize, levels[l as usize]) as u64, p + n)
            });
            z as f64 / p as f64
        })
        .collect();
    Ok(TargetReport {
        target,
        output: output.clone(),
        zeros_required: c.linear_params - problem.budget,
        curve: state.curve,
        methods,
        evopress_block_sparsity,
        seconds_baselines,
        seconds_search,
        seconds_eval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladder_is_sorted_sparsest_first_and_must_bracket_the_target() {
        let l = ladder(&[0.5, 0.0, 0.9, 0.5], &[0.6]).unwrap();
        assert_eq!(l, [0.9, 0.5, 0.0]);
        assert!(ladder(&[0.1, 0.2], &[0.6]).is_err());
        assert!(ladder(&[0.7, 0.8], &[0.6]).is_err());
        assert!(ladder(&[0.5, 0.8], &[0.6, 0.9]).is_err());
        assert!(ladder(&[0.5, 1.0], &[0.6]).is_err());
        assert!(ladder(&DEFAULT_LEVELS, &[0.0]).is_err());
        assert!(ladder(&DEFAULT_LEVELS, &[f64::NAN]).is_err());
        assert!(ladder(&DEFAULT_LEVELS, &[]).is_err());
    }
}
