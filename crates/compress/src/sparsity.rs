//! Non-uniform unstructured sparsity: how much of each block linear to prune so that
//! the model loses the least at a global sparsity, searched with EvoPress (Sieberling et
//! al., "EvoPress: Towards Optimal Dynamic Model Compression via Evolutionary Search",
//! 2024, §4.2 unstructured sparsity).
//!
//! ```text
//! reference model ─ calibration windows, block by block ─► XᵀX per linear input
//!   │ level database: every block linear pruned by SparseGPT to every sparsity of the
//!   │   ladder (0, 10 %, …, 90 % by default), independently, on the reference's
//!   │   activations, so any combination of levels can be assembled (or, with
//!   │   `DbInputs::Sequential`, each level on the model whose earlier blocks are at it)
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
//!
//! The budget is in parameters, so levels of other kinds that remove parameters mix
//! into the same ladder ([`ParamLevel`]): N:M patterns (`2:4`), `lowrank:R`
//! (activation-aware SVD whose two factors hold at most `R` of the linear's parameters,
//! costed as the factors) and `drop` (the linear removed: a dropped `o_proj` or
//! `down_proj` skips its sublayer).
//! Each linear's levels are sorted by kept parameters, whatever their kind, so a level
//! switch may trade sparsity in one linear for rank in another.
//!
//! Depth mixes in with `skip` (EvoPress §4.1's sublayer dropping): the units become the
//! attention and MLP sublayers, each taking one level on all its linears or skipped
//! whole, so a search may skip one sublayer to keep others denser.
//!
//! Mixed with bit-widths ([`Budget::Bpw`]): levels may also be SparseGPT jointly with
//! GPTQ-grid quantization of the kept weights (`0.5+gptq:4:g128`, `2:4+gptq:4:g128`,
//! or `gptq:3:g128` = GPTQ alone). Then every level is costed by its payload in bits (the
//! kept values at the grid's bits or f16, a bitmask or N:M indices where that is smaller
//! than dense, each group's fp16 scale and zero point, a factored linear's f16 factors)
//! and the budget is bits per weight of the block linears. The written directory holds
//! the levels' values densely (the grid's values are exact in f16).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::{Serialize, Serializer};
use tersor_model::{LinearKind, LoadedModel};
use tersor_prune::lowrank::{asvd, rank_for_ratio};
use tersor_prune::pattern::zeros_for;
use tersor_prune::sparsegpt::sparsegpt_quantized;
use tersor_prune::sparsegpt::{sparsegpt, SparseGptConfig};
use tersor_prune::Pattern;
use tersor_quantize::prune::{sparse_bits, FloatDtype};
use tersor_quantize::{CalibConfig, Calibration, Collector, GptqSpec, Site, Target};
use tersor_search::{Assignment, Fitness, GenerationRecord, Problem};

use crate::fitness::Evaluator;
use crate::units::{Sublayer, Unit, UnitRef};
use crate::{CompressError, DbInputs, EvalFigures, Event, MemoLm, Result, SearchOptions};

/// The default sparsity ladder of every linear.
pub const DEFAULT_LEVELS: [f64; 10] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// Damping of `XᵀX` for the low-rank levels' whitening (as `tersor lowrank`).
const ASVD_DAMP: f64 = 0.01;

/// One way a linear may lose parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamLevel {
    /// SparseGPT at this sparsity; `1.0` is the linear removed (all zeros, no SparseGPT).
    Sparse(f64),
    /// SparseGPT to an N:M pattern: at most `n` nonzeros in every `m` consecutive inputs
    /// of a row (linears whose rows `m` does not divide do not get this level).
    NM { n: usize, m: usize },
    /// Activation-aware SVD (SVD-LLM whitening) at the largest rank whose two factors
    /// hold at most this fraction of the linear's parameters; written as the factors.
    LowRank(f64),
    /// SparseGPT at `pattern` jointly with quantization of the kept weights onto `grid`
    /// (at sparsity 0: GPTQ). Costed in bits, so only under [`Budget::Bpw`].
    Quantized { pattern: Pattern, grid: GptqSpec },
    /// A whole sublayer (attention or MLP) skipped: its residual branch adds nothing.
    /// With this level the search's units are sublayers (each taking one level on all
    /// its linears) instead of single linears; a block whose two sublayers are skipped
    /// is left out of the written model.
    Skip,
}

/// What a target counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Budget {
    /// The share of the block linears' parameters removed; levels cost kept parameters.
    Sparsity,
    /// Bits per weight of the block linears' payload; levels cost bits.
    Bpw,
}

/// Kinds of [`ParamLevel`], each with its own uniform baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    Unstructured,
    NM,
    LowRank,
    Quantized,
    Skip,
}

impl Family {
    /// The name of this family's uniform baseline.
    fn uniform_name(self) -> &'static str {
        match self {
            Family::Unstructured => "uniform",
            Family::NM => "uniform-nm",
            Family::LowRank => "uniform-lowrank",
            Family::Quantized => "uniform-quantized",
            Family::Skip => "skip",
        }
    }
}

impl ParamLevel {
    pub fn family(self) -> Family {
        match self {
            ParamLevel::Sparse(_) => Family::Unstructured,
            ParamLevel::NM { .. } => Family::NM,
            ParamLevel::LowRank(_) => Family::LowRank,
            ParamLevel::Quantized { .. } => Family::Quantized,
            ParamLevel::Skip => Family::Skip,
        }
    }

    /// The nominal fraction of the linear's parameters this level removes.
    pub fn removed(self) -> f64 {
        match self {
            ParamLevel::Sparse(s) => s,
            ParamLevel::NM { n, m } => (m - n) as f64 / m as f64,
            ParamLevel::LowRank(r) => 1.0 - r,
            ParamLevel::Quantized { pattern, .. } => pattern.sparsity(),
            ParamLevel::Skip => 1.0,
        }
    }

    /// Parameters a `[rows, cols]` linear keeps at this level: its non-zeros, or its
    /// factors' parameters; `None` where the level does not apply (an N:M pattern whose
    /// `m` does not divide the row, a rank that would not save parameters).
    pub fn kept(self, rows: usize, cols: usize) -> Option<u64> {
        let n = rows * cols;
        match self {
            ParamLevel::Sparse(s) => Some((n - zeros_for(n, s)) as u64),
            ParamLevel::NM { n: k, m } => (cols % m == 0).then_some((rows * cols / m * k) as u64),
            ParamLevel::LowRank(r) => {
                let k = rank_for_ratio(rows, cols, r);
                (k * (rows + cols) < n).then_some((k * (rows + cols)) as u64)
            }
            ParamLevel::Quantized { pattern, .. } => match pattern {
                Pattern::Unstructured(s) => ParamLevel::Sparse(s).kept(rows, cols),
                Pattern::NM { n, m } => ParamLevel::NM { n, m }.kept(rows, cols),
            },
            ParamLevel::Skip => Some(0),
        }
    }

    /// Bits of a `[rows, cols]` linear's payload at this level: the kept values (f16, or
    /// the grid's bits) with a bitmask or N:M indices where that is smaller than dense
    /// (`tersor prune`'s sparse cost), plus a quantized level's fp16 scale and
    /// `bits`-bit zero point per group; a factored linear's f16 factors; 0 for `drop`.
    /// `None` where the level does not apply.
    pub fn bits(self, rows: usize, cols: usize) -> Option<u64> {
        let n = (rows * cols) as u64;
        let kept = self.kept(rows, cols)?;
        Some(match self {
            // A dropped linear needs no mask.
            _ if kept == 0 => 0,
            ParamLevel::Sparse(s) => sparse_bits(n, n - kept, Pattern::Unstructured(s), 16),
            ParamLevel::NM { n: k, m } => sparse_bits(n, n - kept, Pattern::NM { n: k, m }, 16),
            ParamLevel::LowRank(_) => kept * 16,
            ParamLevel::Quantized { pattern, grid } => {
                let b = u64::from(grid.bits);
                let groups = (rows * cols.div_ceil(grid.group_size.unwrap_or(cols))) as u64;
                sparse_bits(n, n - kept, pattern, b) + groups * (16 + b)
            }
            ParamLevel::Skip => unreachable!("keeps nothing"),
        })
    }

    /// What this level costs under `budget`.
    pub fn cost(self, rows: usize, cols: usize, budget: Budget) -> Option<u64> {
        match budget {
            Budget::Sparsity => self.kept(rows, cols),
            Budget::Bpw => self.bits(rows, cols),
        }
    }
}

impl fmt::Display for ParamLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamLevel::Sparse(s) if *s >= 1.0 => f.write_str("drop"),
            ParamLevel::Sparse(s) => write!(f, "{s}"),
            ParamLevel::NM { n, m } => write!(f, "{n}:{m}"),
            ParamLevel::LowRank(r) => write!(f, "lowrank:{r}"),
            ParamLevel::Quantized {
                pattern: Pattern::Unstructured(s),
                grid,
            } if *s == 0.0 => write!(f, "{grid}"),
            ParamLevel::Quantized { pattern, grid } => write!(f, "{pattern}+{grid}"),
            ParamLevel::Skip => f.write_str("skip"),
        }
    }
}

impl FromStr for ParamLevel {
    type Err = String;

    /// `0.5` / `50%` (sparsity), `2:4` (N:M), `lowrank:0.6` (factors holding 60 % of
    /// the parameters), `drop` (the linear removed), `skip` (the whole sublayer
    /// skipped); `0.5+gptq:4:g128` / `2:4+gptq:4:g128`
    /// (SparseGPT jointly with quantization of the kept weights), `gptq:3:g128` (GPTQ).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if let Some(at) = s.find("gptq:") {
            let base = s[..at].trim();
            let base = match base.strip_suffix('+') {
                Some(b) => b.parse::<ParamLevel>()?,
                None if base.is_empty() => ParamLevel::Sparse(0.0),
                None => {
                    return Err(format!(
                        "`{s}`: expected PATTERN+gptq:…, like 0.5+gptq:4:g128"
                    ))
                }
            };
            let pattern = match base {
                ParamLevel::Sparse(x) if x < 1.0 => Pattern::Unstructured(x),
                ParamLevel::NM { n, m } => Pattern::NM { n, m },
                _ => {
                    return Err(format!(
                        "`{s}`: only a sparsity or an N:M pattern can be quantized"
                    ))
                }
            };
            let grid = match s[at..].parse::<Target>() {
                Ok(Target::Gptq(g)) if !g.act_order => g,
                Ok(_) => return Err(format!("`{s}`: act-order is not supported with pruning")),
                Err(e) => return Err(format!("`{s}`: {e}")),
            };
            return Ok(ParamLevel::Quantized { pattern, grid });
        }
        let frac = |x: &str| -> Option<f64> {
            match x.strip_suffix('%') {
                Some(p) => p.trim().parse::<f64>().ok().map(|v| v / 100.0),
                None => x.trim().parse().ok(),
            }
        };
        if s == "drop" {
            return Ok(ParamLevel::Sparse(1.0));
        }
        if s == "skip" {
            return Ok(ParamLevel::Skip);
        }
        if let Some(r) = s.strip_prefix("lowrank:") {
            return match frac(r) {
                Some(r) if r > 0.0 && r < 1.0 => Ok(ParamLevel::LowRank(r)),
                _ => Err(format!(
                    "`{s}`: a low-rank level keeps a fraction of the parameters in (0, 1), \
                     like lowrank:0.6"
                )),
            };
        }
        if let Some((n, m)) = s.split_once(':') {
            return match (n.trim().parse::<usize>(), m.trim().parse::<usize>()) {
                (Ok(n), Ok(m)) if n < m => Ok(ParamLevel::NM { n, m }),
                _ => Err(format!(
                    "`{s}`: an N:M level keeps N < M of every M, like 2:4"
                )),
            };
        }
        match frac(s) {
            Some(x) if (0.0..1.0).contains(&x) => Ok(ParamLevel::Sparse(x)),
            _ => Err(format!(
                "`{s}`: expected a sparsity like 0.5 or 50%, an N:M pattern like 2:4, a \
                 low-rank level like lowrank:0.6, drop or skip"
            )),
        }
    }
}

impl Serialize for ParamLevel {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// What `tersor compress --target-sparsity` needs.
#[derive(Clone, Debug)]
pub struct SparsityOptions {
    pub input: PathBuf,
    /// Global sparsities to search (fractions of the block linears' weights to remove,
    /// `0 < s < 1`), each with where to write its EvoPress model (a Hugging Face
    /// directory; `None`: report only). They share the level database and the per-linear
    /// error table.
    pub targets: Vec<(f64, Option<PathBuf>)>,
    /// Levels each linear may take (sorted, deduplicated here).
    pub levels: Vec<ParamLevel>,
    /// What the targets count.
    pub budget: Budget,
    pub calib: CalibConfig,
    pub sparsegpt: SparseGptConfig,
    pub search: SearchOptions,
    /// Score every allocation on this text (ctx = calibration ctx), first N windows.
    pub eval: Option<(PathBuf, usize)>,
    /// Storage type of the written tensors.
    pub dtype: FloatDtype,
    /// Which activations calibrate the levels: the reference model's (each linear
    /// compressed on its own), or, per level of the ladder, the model whose earlier
    /// blocks are all at that level (as `tersor prune` calibrates).
    pub db_inputs: DbInputs,
}

/// One allocation's result.
#[derive(Clone, Debug, Serialize)]
pub struct SparsityMethod {
    pub name: String,
    /// Bits of the block linears' payload at the chosen levels over their parameters
    /// ([`ParamLevel::bits`]).
    pub bpw: f64,
    /// Parameters removed over the block linears' parameters (zeros, a dropped linear's
    /// weights, and what factored linears save).
    pub sparsity: f64,
    /// Zeros counted on the assembled weights of the linears that are not factored.
    pub zeros: u64,
    /// Linears at a low-rank level, and their factors' parameters (from the factors'
    /// shapes).
    pub factored: usize,
    pub factor_params: u64,
    /// Last-stage calibration fitness (mean KL).
    pub fitness: f64,
    pub eval: Option<EvalFigures>,
    /// Level of each unit (a linear, or a sublayer with `skip`), in unit order.
    pub levels: Vec<ParamLevel>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SparsityReport {
    pub input: PathBuf,
    pub budget: Budget,
    pub db_inputs: DbInputs,
    /// The ladder, most parameters removed first.
    pub levels: Vec<ParamLevel>,
    /// The search's units and their parameters: the block linears
    /// (`blk.L.attn_q.weight` …), or with `skip` the sublayers (`blk.L.attn`, `blk.L.mlp`).
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
    /// Weights that must be removed (the target applied to every linear); `None` under
    /// a bits budget.
    pub zeros_required: Option<u64>,
    /// The budget in the levels' cost unit (kept parameters, or bits).
    pub budget_units: u64,
    pub curve: Vec<GenerationRecord>,
    pub methods: Vec<SparsityMethod>,
    /// Fraction of the parameters of each block (all seven linears) the EvoPress
    /// allocation removes.
    pub evopress_block_sparsity: Vec<f64>,
    pub seconds_baselines: f64,
    pub seconds_search: f64,
    pub seconds_eval: f64,
}

/// The ladder sorted by decreasing removal (sparsity levels before low-rank ones at
/// equal removal), checked: every target must lie within the removals of one kind's
/// levels, the uniform baseline of that kind.
fn ladder(levels: &[ParamLevel], targets: &[f64], budget: Budget) -> Result<Vec<ParamLevel>> {
    let flag = match budget {
        Budget::Sparsity => "--target-sparsity",
        Budget::Bpw => "--target-bpw",
    };
    if targets.is_empty() {
        return Err(CompressError::Usage(format!("{flag}: no target given")));
    }
    match budget {
        Budget::Sparsity => {
            if let Some(t) = targets.iter().find(|t| !(**t > 0.0 && **t < 1.0)) {
                return Err(CompressError::Usage(format!(
                    "--target-sparsity {t}: expected a fraction between 0 and 1 (exclusive)"
                )));
            }
            if let Some(q) = levels.iter().find(|l| l.family() == Family::Quantized) {
                return Err(CompressError::Usage(format!(
                    "level {q} is costed in bits: use --format dense --target-bpw B"
                )));
            }
        }
        Budget::Bpw => {
            if let Some(t) = targets.iter().find(|t| !(t.is_finite() && **t > 0.0)) {
                return Err(CompressError::Usage(format!(
                    "--target-bpw {t}: expected a positive number of bits"
                )));
            }
        }
    }
    if let Some(bad) = levels.iter().find(|l| match l {
        ParamLevel::Sparse(s) => !(*s >= 0.0 && *s <= 1.0),
        ParamLevel::NM { n, m } => n >= m,
        ParamLevel::LowRank(r) => !(*r > 0.0 && *r < 1.0),
        ParamLevel::Quantized { pattern, .. } => match pattern {
            Pattern::Unstructured(s) => !(*s >= 0.0 && *s < 1.0),
            Pattern::NM { n, m } => n >= m,
        },
        ParamLevel::Skip => false,
    }) {
        return Err(CompressError::Usage(format!(
            "level {bad}: expected a sparsity 0 <= s <= 1, an N:M pattern with N < M or a \
             low-rank ratio 0 < r < 1"
        )));
    }
    let skip = levels.contains(&ParamLevel::Skip);
    if skip {
        if let Some(bad) = levels
            .iter()
            .find(|l| matches!(l, ParamLevel::LowRank(_) | ParamLevel::Sparse(1.0)))
        {
            return Err(CompressError::Usage(format!(
                "level {bad} with skip: skip searches whole sublayers, each at one level on \
                 all its linears; low-rank factors are per linear, and a dropped sublayer \
                 is skip itself"
            )));
        }
    }
    let mut l = levels.to_vec();
    l.sort_by(|a, b| {
        b.removed()
            .total_cmp(&a.removed())
            .then(a.family().cmp(&b.family()))
    });
    l.dedup();
    // A bits budget is checked against the model's achievable range once the linears'
    // shapes are known; with `skip` every sparsity is reachable (all skipped keeps
    // nothing), though no uniform baseline may bracket it.
    for &target in targets
        .iter()
        .filter(|_| budget == Budget::Sparsity && !skip)
    {
        if uniform_kinds(&l, target).is_empty() {
            return Err(CompressError::Usage(format!(
                "--target-sparsity {target} is outside the levels {}: the sparsity levels \
                 (or the low-rank ones) must remove at most and at least the target",
                l.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )));
        }
    }
    Ok(l)
}

/// The families whose levels bracket `target` (a uniform baseline each).
fn uniform_kinds(levels: &[ParamLevel], target: f64) -> Vec<Family> {
    [Family::Unstructured, Family::NM, Family::LowRank]
        .into_iter()
        .filter(|&family| {
            let r: Vec<f64> = levels
                .iter()
                .filter(|l| l.family() == family)
                .map(|l| l.removed())
                .collect();
            r.iter().any(|&x| x <= target) && r.iter().any(|&x| x >= target)
        })
        .collect()
}

/// Runs the job: level database, baselines, EvoPress, evaluation and the written model.
pub fn run(opts: &SparsityOptions, progress: &(dyn Fn(Event) + Sync)) -> Result<SparsityReport> {
    let target_list: Vec<f64> = opts.targets.iter().map(|t| t.0).collect();
    let levels = ladder(&opts.levels, &target_list, opts.budget)?;
    let (model, tokenizer) = match tersor_model::load(&opts.input)? {
        LoadedModel::Decoder { model, tokenizer } => (model, tokenizer),
        LoadedModel::Encoder(_) => return Err(CompressError::Input {
            path: opts.input.clone(),
            msg: "sparsity search needs a decoder LM (prune sentence encoders with `tersor prune`)"
                .into(),
        }),
    };
    let n_layers = model.n_layers();

    // The linears, and each one's levels sorted by cost (kept parameters or bits;
    // level 0 = the cheapest, as [`Problem`] wants); a level that costs as much as a
    // cheaper one is left out, unless sublayers are the units (each of a sublayer's
    // linears must then have every level the sublayer takes).
    let sublayers = levels.contains(&ParamLevel::Skip);
    let linears = crate::units::block_linears(&model)?;
    let linear_levels: Vec<Vec<(ParamLevel, u64)>> = linears
        .iter()
        .map(|u| {
            let mut v: Vec<(ParamLevel, u64)> = levels
                .iter()
                .filter(|&&lv| lv != ParamLevel::Skip)
                .filter_map(|&lv| lv.cost(u.rows, u.cols, opts.budget).map(|k| (lv, k)))
                .collect();
            // `levels` is most-removed first, so a stable sort keeps sparsity before
            // low rank at equal cost.
            v.sort_by_key(|&(_, k)| k);
            if !sublayers {
                v.dedup_by_key(|&mut (_, k)| k);
            }
            v
        })
        .collect();
    // The search's units: the linears, or the sublayers, each with `skip` and the
    // levels all its linears have, costed as their sum (their linears' indices in
    // `members`).
    let (units, members) = if sublayers {
        sublayer_units(&linears)?
    } else {
        (
            linears.clone(),
            (0..linears.len()).map(|i| vec![i]).collect(),
        )
    };
    let unit_levels: Vec<Vec<(ParamLevel, u64)>> = if sublayers {
        members
            .iter()
            .map(|ms| {
                let mut v: Vec<(ParamLevel, u64)> = levels
                    .iter()
                    .filter_map(|&lv| {
                        if lv == ParamLevel::Skip {
                            return Some((lv, 0));
                        }
                        let cost = |m: usize| {
                            linear_levels[m]
                                .iter()
                                .find(|(l, _)| *l == lv)
                                .map(|&(_, k)| k)
                        };
                        ms.iter()
                            .map(|&m| cost(m))
                            .sum::<Option<u64>>()
                            .map(|k| (lv, k))
                    })
                    .collect();
                // `skip` first among levels that keep nothing.
                v.sort_by_key(|&(l, k)| (k, l != ParamLevel::Skip));
                v.dedup_by_key(|&mut (_, k)| k);
                v
            })
            .collect()
    } else {
        linear_levels.clone()
    };
    // Each unit level's payload bits and kept parameters, summed over its linears.
    let level_sums = |f: fn(ParamLevel, usize, usize) -> Option<u64>| -> Vec<Vec<u64>> {
        members
            .iter()
            .zip(&unit_levels)
            .map(|(ms, lv)| {
                lv.iter()
                    .map(|&(l, _)| {
                        ms.iter()
                            .map(|&m| {
                                f(l, linears[m].rows, linears[m].cols)
                                    .expect("a unit's levels apply to its linears")
                            })
                            .sum()
                    })
                    .collect()
            })
            .collect()
    };
    let (level_bits, level_kept) = (level_sums(ParamLevel::bits), level_sums(ParamLevel::kept));
    let search_units: Vec<tersor_search::Unit> = units
        .iter()
        .zip(&unit_levels)
        .map(|(u, lv)| tersor_search::Unit {
            name: u.name.clone(),
            costs: lv.iter().map(|&(_, k)| k).collect(),
        })
        .collect();
    if let Some(u) = search_units.iter().find(|u| u.costs.len() < 2) {
        return Err(CompressError::Usage(format!(
            "{}: the levels {} leave it fewer than two distinct sizes",
            u.name,
            levels
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        )));
    }
    let linear_params: u64 = linears.iter().map(|u| u.params()).sum();
    let budgets: Vec<u64> = match opts.budget {
        // The kept weights of the target sparsity applied to every linear.
        Budget::Sparsity => target_list
            .iter()
            .map(|&t| {
                linears
                    .iter()
                    .map(|u| (u.params() as usize - zeros_for(u.params() as usize, t)) as u64)
                    .sum()
            })
            .collect(),
        Budget::Bpw => {
            let bpw = |f: fn(&[(ParamLevel, u64)]) -> u64| {
                unit_levels.iter().map(|l| f(l)).sum::<u64>() as f64 / linear_params as f64
            };
            let (lo, hi) = (bpw(|l| l[0].1), bpw(|l| l[l.len() - 1].1));
            target_list
                .iter()
                .map(|&t| {
                    let b = (t * linear_params as f64).floor() as u64;
                    if t < lo || t > hi {
                        return Err(CompressError::Usage(format!(
                            "--target-bpw {t}: the levels {} reach {lo:.3} to {hi:.3} bits per weight of the block linears",
                            levels.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")
                        )));
                    }
                    Ok(b)
                })
                .collect::<Result<Vec<u64>>>()?
        }
    };

    // Level database: SparseGPT and ASVD, block by block, on the reference's activations
    // or on each level's stream. Every stream's statistics for the current block are
    // held at once (4 sites' XᵀX each): fine for small models; large ones would want the
    // GPTQ database's level-major order (build::build_sequential).
    let t0 = Instant::now();
    let cal = Calibration::load(&opts.calib, &tokenizer)?;
    let mut hidden = crate::build::embed_windows(&model, &cal.windows)?;
    // Sequential inputs: one hidden-state stream per ladder level that is calibrated,
    // advanced through blocks whose linears are at that level (the reference's weights
    // where a linear does not have it).
    let calibrated: Vec<ParamLevel> = match opts.db_inputs {
        DbInputs::Reference => Vec::new(),
        DbInputs::Sequential => levels
            .iter()
            .copied()
            .filter(|l| {
                !matches!(l, ParamLevel::Sparse(s) if *s == 0.0 || *s >= 1.0)
                    && *l != ParamLevel::Skip
            })
            .collect(),
    };
    let mut streams: Vec<Vec<Tensor>> = vec![hidden.clone(); calibrated.len()];
    let total_levels: usize = linear_levels.iter().map(|l| l.len()).sum();
    progress(Event::BuildStart {
        units: linears.len(),
        levels: total_levels,
    });
    let mut weights: Vec<Vec<Tensor>> = Vec::with_capacity(linears.len());
    let mut factors: Vec<Vec<Option<(Tensor, Tensor)>>> = Vec::with_capacity(linears.len());
    let mut output_errors: Vec<Vec<f64>> = Vec::with_capacity(linears.len());
    let mut done = 0;
    for l in 0..n_layers {
        let first_unit = weights.len();
        // Each stream's site statistics at block l, with the block's reference weights
        // (GPTQ's sequential mode: all of a block's linears calibrated on one pass).
        let stream_stats = streams
            .iter()
            .map(|hs| {
                let mut col = Collector::new(usize::MAX, false);
                for h in hs {
                    model.block_forward(l, h, Some(&mut col))?;
                }
                Ok(col.into_stats())
            })
            .collect::<Result<Vec<_>>>()?;
        let mut col = Collector::new(usize::MAX, false);
        for h in hidden.iter_mut() {
            *h = model.block_forward(l, h, Some(&mut col))?;
        }
        let stats = col.into_stats();
        // One f32 copy of each site's XᵀX for the output errors (q, k, v share a site,
        // as do gate and up).
        let mut h_site: [Option<Tensor>; 4] = Default::default();
        for kind in LinearKind::ALL {
            let ui = weights.len();
            let u = &linears[ui];
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
            let layer_err = |e: tersor_prune::PruneError| CompressError::Input {
                path: opts.input.clone(),
                msg: format!("{}: {e}", u.name),
            };
            let mut lv = Vec::with_capacity(linear_levels[ui].len());
            let mut fs = Vec::with_capacity(linear_levels[ui].len());
            let mut errs = Vec::with_capacity(linear_levels[ui].len());
            for &(level, _) in &linear_levels[ui] {
                let xtx = match calibrated.iter().position(|c| *c == level) {
                    Some(k) => &stream_stats[k][site].xtx,
                    None => xtx,
                };
                let (dense, f) = match level {
                    ParamLevel::Skip => unreachable!("not a linear's level"),
                    ParamLevel::Sparse(0.0) => (w.clone(), None),
                    ParamLevel::Sparse(s) if s >= 1.0 => (vec![0.0; w.len()], None),
                    ParamLevel::Sparse(s) => {
                        let p = sparsegpt(
                            &w,
                            u.rows,
                            u.cols,
                            xtx,
                            Pattern::Unstructured(s),
                            &opts.sparsegpt,
                        )
                        .map_err(layer_err)?;
                        (p.weights, None)
                    }
                    ParamLevel::NM { n, m } => {
                        let p = sparsegpt(
                            &w,
                            u.rows,
                            u.cols,
                            xtx,
                            Pattern::NM { n, m },
                            &opts.sparsegpt,
                        )
                        .map_err(layer_err)?;
                        (p.weights, None)
                    }
                    ParamLevel::Quantized { pattern, grid } => {
                        let g = grid
                            .grid(u.cols)
                            .map_err(|e| CompressError::Usage(format!("level {level}: {e}")))?;
                        let (p, _) = sparsegpt_quantized(
                            &w,
                            u.rows,
                            u.cols,
                            xtx,
                            pattern,
                            &g,
                            &opts.sparsegpt,
                        )
                        .map_err(layer_err)?;
                        (p.weights, None)
                    }
                    ParamLevel::LowRank(r) => {
                        let rank = rank_for_ratio(u.rows, u.cols, r);
                        let f =
                            asvd(&w, u.rows, u.cols, xtx, rank, ASVD_DAMP).map_err(layer_err)?;
                        let dense = f.product();
                        let a = Tensor::from_vec(f.a, (u.rows, rank), &Device::Cpu)?;
                        let b = Tensor::from_vec(f.b, (rank, u.cols), &Device::Cpu)?;
                        (dense, Some((a, b)))
                    }
                };
                let dw: Vec<f32> = w.iter().zip(&dense).map(|(a, b)| a - b).collect();
                errs.push(crate::build::energy(&dw, u.rows, u.cols, Some(h))? / w_energy);
                lv.push(Tensor::from_vec(dense, (u.rows, u.cols), &Device::Cpu)?);
                fs.push(f);
                done += 1;
                progress(Event::BuildLevel {
                    done,
                    total: total_levels,
                    tensor: u.name.clone(),
                });
            }
            weights.push(lv);
            factors.push(fs);
            output_errors.push(errs);
        }
        // Advance each stream through block l at its level.
        for (level, stream) in calibrated.iter().zip(streams.iter_mut()) {
            let mut at_level = model.clone();
            for (i, kind) in LinearKind::ALL.into_iter().enumerate() {
                let ui = first_unit + i;
                if let Some(j) = linear_levels[ui].iter().position(|(lv, _)| lv == level) {
                    at_level.set_linear_weight(l, kind, weights[ui][j].clone())?;
                }
            }
            for h in stream.iter_mut() {
                *h = at_level.block_forward(l, h, None)?;
            }
        }
    }
    drop(hidden);
    drop(streams);
    let seconds_build = t0.elapsed().as_secs_f64();

    let s = &opts.search;
    let stage_windows = crate::capped_stages(&s.stage_windows, &cal, opts.calib.ctx, progress);
    // Each unit level's tensors (a sublayer's linears in `Sublayer::kinds` order, zeros
    // where it is skipped), factors and relative output error (a sublayer's: its
    // linears' mean; skipped, ΔW = W: 1).
    let mut unit_weights: Vec<Vec<Vec<Tensor>>> = Vec::with_capacity(units.len());
    let mut unit_errors: Vec<Vec<f64>> = Vec::with_capacity(units.len());
    for (ms, lv) in members.iter().zip(&unit_levels) {
        let mut ws = Vec::with_capacity(lv.len());
        let mut es = Vec::with_capacity(lv.len());
        for &(level, _) in lv {
            let mut ts = Vec::with_capacity(ms.len());
            let mut e = 0.0;
            for &m in ms {
                if level == ParamLevel::Skip {
                    let u = &linears[m];
                    ts.push(Tensor::zeros((u.rows, u.cols), DType::F32, &Device::Cpu)?);
                    e += 1.0;
                    continue;
                }
                let j = linear_levels[m]
                    .iter()
                    .position(|(l, _)| *l == level)
                    .ok_or_else(|| {
                        CompressError::Invariant(format!("{}: no level {level}", linears[m].name))
                    })?;
                ts.push(weights[m][j].clone());
                e += output_errors[m][j];
            }
            ws.push(ts);
            es.push(e / ms.len() as f64);
        }
        unit_weights.push(ws);
        unit_errors.push(es);
    }
    drop(weights);
    let factors: Vec<Vec<Option<(Tensor, Tensor)>>> = if sublayers {
        // No factored levels with `skip` (checked by `ladder`).
        unit_levels.iter().map(|lv| vec![None; lv.len()]).collect()
    } else {
        factors
    };
    let eval = Evaluator::from_tensor_levels(
        model.clone(),
        units.clone(),
        unit_weights,
        cal.windows.clone(),
        stage_windows.clone(),
        s.batch,
        s.kl_top_k,
    )?;

    // The per-linear error table of the DP baseline and of EvoPress's guided switches:
    // the KL of each linear alone at its cheapest level that keeps some weights, scaled
    // to the other levels by their output errors; a `drop` level is measured on its own
    // (removing a linear is far outside the regime where KL scales with output error).
    // It does not depend on the target.
    let t1 = Instant::now();
    let report = |done, total| progress(Event::UnitKl { done, total });
    // Levels are sorted by kept parameters and deduplicated by them, so only level 0
    // may keep nothing (`drop` sorts before `0:M`), and level 1 then keeps weights.
    let anchors: Vec<Vec<usize>> = unit_levels
        .iter()
        .map(|lv| match lv[0] {
            (ParamLevel::Sparse(s), _) if s >= 1.0 => vec![0, 1],
            (ParamLevel::Skip, _) => vec![0, 1],
            // An N:M level keeping nothing (`0:4`) is scaled from level 1 instead.
            (_, 0) => vec![1],
            _ => vec![0],
        })
        .collect();
    let table = eval.unit_table_anchored(0, &unit_errors, &anchors, &report)?;
    let seconds_table = t1.elapsed().as_secs_f64();

    let reference = MemoLm::new(&model);
    let ctx = TargetCtx {
        eval: &eval,
        reference: &reference,
        tokenizer: &tokenizer,
        units: &units,
        levels: &levels,
        unit_levels: &unit_levels,
        level_bits: &level_bits,
        level_kept: &level_kept,
        factors: &factors,
        table: &table,
        linear_params,
        last_stage: stage_windows.len() - 1,
        budget: opts.budget,
    };
    let mut targets = Vec::new();
    for ((target, output), &budget) in opts.targets.iter().zip(&budgets) {
        let problem = Problem::new(search_units.clone(), 0, budget)?;
        targets.push(search_target(
            opts, &ctx, &problem, *target, output, progress,
        )?);
    }
    Ok(SparsityReport {
        input: opts.input.clone(),
        budget: opts.budget,
        db_inputs: opts.db_inputs,
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

/// The sublayers of a model as search units (`blk.3.attn`, `blk.3.mlp`, `tersor
/// depth`'s names), each with its linears' indices in `linears` ([`Sublayer::kinds`]
/// order).
fn sublayer_units(linears: &[Unit]) -> Result<(Vec<Unit>, Vec<Vec<usize>>)> {
    let n_layers = linears
        .iter()
        .map(|u| u.first_layer(0) + 1)
        .max()
        .unwrap_or(0);
    let (mut units, mut members) = (Vec::new(), Vec::new());
    for l in 0..n_layers {
        for s in Sublayer::BOTH {
            let ms = s
                .kinds()
                .iter()
                .map(|&k| {
                    linears
                        .iter()
                        .position(|u| u.what == UnitRef::Linear(l, k))
                        .ok_or_else(|| {
                            CompressError::Invariant(format!("block {l} lacks its {k} linear"))
                        })
                })
                .collect::<Result<Vec<usize>>>()?;
            let params: u64 = ms.iter().map(|&m| linears[m].params()).sum();
            units.push(Unit {
                name: format!("blk.{l}.{}", s.tag()),
                what: UnitRef::Sublayer(l, s),
                rows: params as usize,
                cols: 1,
                kinds: Vec::new(),
            });
            members.push(ms);
        }
    }
    Ok((units, members))
}

/// What every target's search shares.
struct TargetCtx<'a> {
    eval: &'a Evaluator,
    reference: &'a MemoLm<'a>,
    tokenizer: &'a tersor_model::TextTokenizer,
    units: &'a [Unit],
    levels: &'a [ParamLevel],
    /// Each unit's levels and costs, in its level order.
    unit_levels: &'a [Vec<(ParamLevel, u64)>],
    /// Each unit level's payload bits and kept parameters.
    level_bits: &'a [Vec<u64>],
    level_kept: &'a [Vec<u64>],
    /// The factors of each unit's low-rank levels (written as `weight_a` / `weight_b`).
    factors: &'a [Vec<Option<(Tensor, Tensor)>>],
    table: &'a [Vec<f64>],
    linear_params: u64,
    last_stage: usize,
    budget: Budget,
}

/// Uniform over one family of levels: every linear at the level of that family
/// removing the least that is at least `target` (its cheapest level if it has none),
/// then raised, in unit order, to the next level of the same family while the budget
/// allows. The dense level (sparsity 0) belongs to every family.
fn uniform(c: &TargetCtx<'_>, problem: &Problem, target: f64, family: Family) -> Assignment {
    let of_kind = |lv: &ParamLevel| lv.family() == family || *lv == ParamLevel::Sparse(0.0);
    let a: Assignment = c
        .unit_levels
        .iter()
        .map(|lv| {
            lv.iter()
                .enumerate()
                .filter(|(_, (l, _))| of_kind(l) && l.removed() >= target - 1e-12)
                .map(|(i, _)| i)
                .next_back()
                .unwrap_or(0) as u16
        })
        .collect();
    top_up(c, problem, a, of_kind)
}

/// Raises `a`, in unit order and in passes until nothing moves, to each unit's next level
/// that `of_kind` accepts, while the budget allows.
fn top_up(
    c: &TargetCtx<'_>,
    problem: &Problem,
    mut a: Assignment,
    of_kind: impl Fn(&ParamLevel) -> bool,
) -> Assignment {
    let mut cost = problem.cost(&a);
    loop {
        let mut raised = false;
        for (u, lv) in c.unit_levels.iter().enumerate() {
            let cur = a[u] as usize;
            if let Some(next) = (cur + 1..lv.len()).find(|&i| of_kind(&lv[i].0)) {
                let extra = lv[next].1 - lv[cur].1;
                if cost + extra <= problem.budget {
                    a[u] = next as u16;
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

/// Uniform under a bits budget: every linear at the costliest single level that fits
/// when every linear takes it, then raised, in unit order, to the next level on the same
/// grid (or the next unquantized one) while the budget allows. `None` when no level
/// applies to every linear within the budget.
fn uniform_bits(c: &TargetCtx<'_>, problem: &Problem) -> Option<Assignment> {
    let at = |lv: ParamLevel| -> Option<Assignment> {
        c.unit_levels
            .iter()
            .map(|ul| ul.iter().position(|(l, _)| *l == lv).map(|i| i as u16))
            .collect()
    };
    let (level, a) = c
        .levels
        .iter()
        .filter(|&&lv| lv != ParamLevel::Skip)
        .filter_map(|&lv| at(lv).map(|a| (lv, a)))
        .filter(|(_, a)| problem.fits(a))
        .max_by_key(|(_, a)| problem.cost(a))?;
    let grid = |l: &ParamLevel| match l {
        ParamLevel::Quantized { grid, .. } => Some(*grid),
        _ => None,
    };
    Some(top_up(c, problem, a, |l| grid(l) == grid(&level)))
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
    let (eval, units) = (c.eval, c.units);
    let s = &opts.search;

    // Baselines: uniform per kind of level (exact when the target is a level); DP
    // minimises the summed per-linear errors.
    let t1 = Instant::now();
    let mut allocs: Vec<(String, Assignment)> = Vec::new();
    if c.budget == Budget::Bpw {
        if let Some(a) = uniform_bits(c, problem) {
            allocs.push(("uniform".into(), a));
        }
    }
    for family in uniform_kinds(c.levels, target)
        .into_iter()
        .filter(|_| c.budget == Budget::Sparsity)
    {
        let a = uniform(c, problem, target, family);
        if !problem.fits(&a) {
            return Err(CompressError::Invariant(format!(
                "the uniform assignment at {target} exceeds its budget"
            )));
        }
        allocs.push((family.uniform_name().into(), a));
    }
    allocs.push(("dp".into(), tersor_search::dp(problem, c.table, 100_000)?));
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

    // EvoPress from the best baseline.
    let t2 = Instant::now();
    let best = (0..fits.len())
        .min_by(|&i, &j| fits[i].total_cmp(&fits[j]))
        .expect("at least dp");
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
        // Zeros counted on the assembled weights, not the level labels; factored
        // linears counted from their factors' shapes.
        let m = eval.model(&a.iter().map(|&l| Some(l)).collect::<Vec<_>>())?;
        let (mut zeros, mut factored, mut factor_params) = (0u64, 0usize, 0u64);
        // What factored linears save: their dense parameters less their factors'.
        let mut factor_saving = 0u64;
        for (u, unit) in units.iter().enumerate() {
            if let Some((fa, fb)) = &c.factors[u][a[u] as usize] {
                let p = (fa.elem_count() + fb.elem_count()) as u64;
                factored += 1;
                factor_params += p;
                factor_saving += unit.params() - p;
                continue;
            }
            let (l, kinds) = match unit.what {
                UnitRef::Linear(l, k) => (l, vec![k]),
                UnitRef::Sublayer(l, s) => (l, s.kinds().to_vec()),
                _ => unreachable!("sparsity units are linears or sublayers"),
            };
            for k in kinds {
                let w = m.linear_weight(l, k)?.flatten_all()?.to_vec1::<f32>()?;
                zeros += w.iter().filter(|&&x| x == 0.0).count() as u64;
            }
        }
        let removed = zeros + factor_saving;
        let bits: u64 = a
            .iter()
            .enumerate()
            .map(|(u, &l)| c.level_bits[u][l as usize])
            .sum();
        methods.push(SparsityMethod {
            name: name.clone(),
            bpw: bits as f64 / c.linear_params as f64,
            sparsity: removed as f64 / c.linear_params as f64,
            zeros,
            factored,
            factor_params,
            fitness,
            eval: eval_figures,
            levels: a
                .iter()
                .enumerate()
                .map(|(u, &l)| c.unit_levels[u][l as usize].0)
                .collect(),
        });
    }
    let seconds_eval = t3.elapsed().as_secs_f64();
    if let Some(out) = output {
        progress(Event::Writing { path: out.clone() });
        let mut m = eval.model(&state.parent.iter().map(|&l| Some(l)).collect::<Vec<_>>())?;
        for (u, unit) in units.iter().enumerate() {
            if let (Some((fa, fb)), UnitRef::Linear(l, k)) =
                (&c.factors[u][state.parent[u] as usize], unit.what)
            {
                m.set_linear_factors(l, k, fa.clone(), fb.clone())?;
            }
        }
        // Skipped sublayers as `tersor depth` writes them: a block without either is
        // left out.
        let skipped: Vec<String> = units
            .iter()
            .zip(&state.parent)
            .enumerate()
            .filter(|&(u, (_, &l))| c.unit_levels[u][l as usize].0 == ParamLevel::Skip)
            .map(|(_, (unit, _))| unit.name.clone())
            .collect();
        // With nothing skipped this is `write_dense_dir`.
        crate::depth::write_model(&opts.input, &m, &skipped, out, opts.dtype)?;
    }
    let per_block = units.iter().filter(|u| u.first_layer(0) == 0).count();
    let evopress_block_sparsity = units
        .chunks(per_block)
        .zip(state.parent.chunks(per_block))
        .zip(c.level_kept.chunks(per_block))
        .map(|((us, ls), kept)| {
            let (k, p) = us
                .iter()
                .zip(ls)
                .zip(kept)
                .fold((0u64, 0u64), |(k, p), ((u, &l), kept)| {
                    (k + kept[l as usize], p + u.params())
                });
            1.0 - k as f64 / p as f64
        })
        .collect();
    Ok(TargetReport {
        target,
        output: output.clone(),
        zeros_required: (c.budget == Budget::Sparsity).then(|| c.linear_params - problem.budget),
        budget_units: problem.budget,
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

    fn sp(v: &[f64]) -> Vec<ParamLevel> {
        v.iter().map(|&x| ParamLevel::Sparse(x)).collect()
    }

    #[test]
    fn ladder_is_sorted_most_removed_first_and_must_bracket_the_target() {
        let l = ladder(&sp(&[0.5, 0.0, 0.9, 0.5]), &[0.6], Budget::Sparsity).unwrap();
        assert_eq!(l, sp(&[0.9, 0.5, 0.0]));
        assert!(ladder(&sp(&[0.1, 0.2]), &[0.6], Budget::Sparsity).is_err());
        assert!(ladder(&sp(&[0.7, 0.8]), &[0.6], Budget::Sparsity).is_err());
        assert!(ladder(&sp(&[0.5, 0.8]), &[0.6, 0.9], Budget::Sparsity).is_err());
        assert!(ladder(&sp(&[0.5, 1.5]), &[0.6], Budget::Sparsity).is_err());
        assert!(ladder(&sp(&DEFAULT_LEVELS), &[0.0], Budget::Sparsity).is_err());
        assert!(ladder(&sp(&DEFAULT_LEVELS), &[f64::NAN], Budget::Sparsity).is_err());
        assert!(ladder(&sp(&DEFAULT_LEVELS), &[], Budget::Sparsity).is_err());
        // `drop` brackets from above; low-rank levels bracket on their own; at equal
        // removal sparsity comes first.
        assert!(ladder(&sp(&[0.5, 1.0]), &[0.6], Budget::Sparsity).is_ok());
        let mixed = [
            ParamLevel::LowRank(0.5),
            ParamLevel::Sparse(0.5),
            ParamLevel::LowRank(0.3),
        ];
        let l = ladder(&mixed, &[0.6], Budget::Sparsity).unwrap();
        assert_eq!(
            l,
            [
                ParamLevel::LowRank(0.3),
                ParamLevel::Sparse(0.5),
                ParamLevel::LowRank(0.5)
            ]
        );
        assert_eq!(uniform_kinds(&l, 0.6), [Family::LowRank]);
        assert_eq!(
            uniform_kinds(&l, 0.5),
            [Family::Unstructured, Family::LowRank]
        );
        let nm = ladder(
            &["0", "3:4", "2:4", "1:4"].map(|s| s.parse().unwrap()),
            &[0.6],
            Budget::Sparsity,
        )
        .unwrap();
        assert_eq!(nm[0], ParamLevel::NM { n: 1, m: 4 });
        assert_eq!(uniform_kinds(&nm, 0.6), [Family::NM]);
    }

    #[test]
    fn levels_parse_print_and_cost() {
        for (s, l) in [
            ("0.5", ParamLevel::Sparse(0.5)),
            ("50%", ParamLevel::Sparse(0.5)),
            ("drop", ParamLevel::Sparse(1.0)),
            ("lowrank:0.6", ParamLevel::LowRank(0.6)),
            ("2:4", ParamLevel::NM { n: 2, m: 4 }),
            ("skip", ParamLevel::Skip),
        ] {
            assert_eq!(s.parse::<ParamLevel>().unwrap(), l, "{s}");
            assert_eq!(l.to_string().parse::<ParamLevel>().unwrap(), l, "{s}");
        }
        for bad in [
            "1.0",
            "-0.1",
            "lowrank:1",
            "lowrank:0",
            "rank:0.5",
            "x",
            "4:4",
            "2:x",
        ] {
            assert!(bad.parse::<ParamLevel>().is_err(), "{bad}");
        }
        assert_eq!(ParamLevel::Sparse(1.0).to_string(), "drop");
        assert_eq!(ParamLevel::LowRank(0.6).to_string(), "lowrank:0.6");
        // [64, 128] at 0.5: rank floor(0.5 · 8192 / 192) = 21, 21 · 192 = 4032 kept.
        assert_eq!(ParamLevel::LowRank(0.5).kept(64, 128), Some(4032));
        assert_eq!(ParamLevel::Sparse(0.25).kept(64, 128), Some(6144));
        assert_eq!(ParamLevel::Sparse(1.0).kept(64, 128), Some(0));
        assert_eq!(ParamLevel::NM { n: 2, m: 4 }.kept(64, 128), Some(4096));
        assert_eq!(ParamLevel::NM { n: 2, m: 8 }.kept(64, 100), None);
        // A rank that would not save parameters is no level.
        assert_eq!(ParamLevel::LowRank(0.99).kept(2, 2), None);
        // A skipped sublayer keeps nothing and stores nothing.
        assert_eq!(ParamLevel::Skip.kept(64, 128), Some(0));
        assert_eq!(ParamLevel::Skip.bits(64, 128), Some(0));
    }

    #[test]
    fn skip_ladders_reach_any_sparsity_and_refuse_per_linear_removals() {
        let l = |v: &[&str]| -> Vec<ParamLevel> { v.iter().map(|s| s.parse().unwrap()).collect() };
        // No uniform level brackets 0.75, but skipping reaches it.
        let got = ladder(&l(&["0", "skip"]), &[0.75], Budget::Sparsity).unwrap();
        assert_eq!(got, l(&["skip", "0"]));
        assert!(ladder(&l(&["0", "0.5"]), &[0.75], Budget::Sparsity).is_err());
        for bad in ["lowrank:0.5", "drop"] {
            let e = ladder(&l(&["0", "skip", bad]), &[0.5], Budget::Sparsity)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("level {bad} with skip")), "{e}");
        }
    }

    #[test]
    fn quantized_levels_parse_print_and_cost_bits() {
        let q = |s: &str| s.parse::<ParamLevel>().unwrap();
        for s in [
            "gptq:3:g128",
            "0.5+gptq:4:g128",
            "2:4+gptq:4:g32:asym",
            "0.25+gptq:2:pc",
        ] {
            assert_eq!(q(s).to_string(), s);
            assert_eq!(q(s).family(), Family::Quantized);
        }
        for bad in [
            "drop+gptq:4:g128",
            "lowrank:0.5+gptq:4",
            "0.5gptq:4",
            "gptq:4:g128:act",
            "gptq:5",
        ] {
            assert!(bad.parse::<ParamLevel>().is_err(), "{bad}");
        }
        // [64, 128] = 8192 weights.
        // f16 dense: 16 bits each; 50 %: 4096 values + an 8192-bit mask; drop: nothing.
        assert_eq!(ParamLevel::Sparse(0.0).bits(64, 128), Some(8192 * 16));
        assert_eq!(
            ParamLevel::Sparse(0.5).bits(64, 128),
            Some(4096 * 16 + 8192)
        );
        assert_eq!(ParamLevel::Sparse(1.0).bits(64, 128), Some(0));
        // 2:4: 4096 values + 2 index bits each; factors: 4032 f16 values.
        assert_eq!(ParamLevel::NM { n: 2, m: 4 }.bits(64, 128), Some(4096 * 18));
        assert_eq!(ParamLevel::LowRank(0.5).bits(64, 128), Some(4032 * 16));
        // GPTQ 3-bit in groups of 32: 3 bits each + 64 rows × 4 groups × (16 + 3).
        assert_eq!(q("gptq:3:g32").bits(64, 128), Some(8192 * 3 + 256 * 19));
        // 50 % at 4 bits: 4096 × 4 + the mask (cheaper than 8192 × 4 dense) + groups.
        assert_eq!(
            q("0.5+gptq:4:g32").bits(64, 128),
            Some(4096 * 4 + 8192 + 256 * 20)
        );
        // 25 % at 2 bits: the mask costs more than it saves, so dense; per channel.
        assert_eq!(q("0.25+gptq:2:pc").bits(64, 128), Some(8192 * 2 + 64 * 18));
        assert_eq!(
            q("0.5+gptq:4:g32").cost(64, 128, Budget::Sparsity),
            Some(4096)
        );
        // Quantized levels need a bits budget; a bits budget takes any positive target.
        assert!(ladder(
            &[q("gptq:3:g128"), ParamLevel::Sparse(0.5)],
            &[0.6],
            Budget::Sparsity
        )
        .is_err());
        assert!(ladder(
            &[q("gptq:3:g128"), ParamLevel::Sparse(0.5)],
            &[3.0],
            Budget::Bpw
        )
        .is_ok());
        assert!(ladder(&[q("gptq:3:g128")], &[0.0], Budget::Bpw).is_err());
    }
}
