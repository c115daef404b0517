//! tersor-compress: `tersor compress`, the per-layer allocation job.
//!
//! ```text
//! MODEL ─ load (f32 reference) ─► units: the tensors whose level is searched
//!   │ level database (--db): every unit at every level kind, GPTQ on the reference
//!   │   model's calibration activations; exact byte costs; reused while the inputs match
//!   ▼
//! Problem: per-unit costs + fixed bytes ≤ budget (--target-bpw / --target-size)
//!   │ fitness: mean KL to the reference on calibration windows (Evaluator)
//!   ▼
//! baselines: uniform, llama.cpp-style heuristic, DP over per-unit KL, best random
//! EvoPress from the best baseline (checkpoint every generation, --resume)
//!   ▼
//! write the winner (GGUF or GPTQ directory, atomically), optionally every baseline;
//! evaluate all on the evaluation text; report
//! ```

pub mod baselines;
pub mod build;
pub mod depth;
pub mod fitness;
pub mod output;
pub mod sparsity;
pub mod units;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tersor_levels::{LevelDb, LevelKind};
use tersor_model::{LoadedModel, TextTokenizer};
use tersor_quant::gptq::GptqConfig;
use tersor_quantize::{CalibConfig, Calibration, Method};
use tersor_search::{Assignment, EvoConfig, EvoStart, EvoState, Problem};

use fitness::Evaluator;

/// Errors of `tersor compress`.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {msg}")]
    Input { path: PathBuf, msg: String },
    #[error("internal check failed: {0}")]
    Invariant(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Model(#[from] tersor_model::Error),
    #[error(transparent)]
    Quantize(#[from] tersor_quantize::QuantizeError),
    #[error(transparent)]
    Levels(#[from] tersor_levels::LevelsError),
    #[error(transparent)]
    Search(#[from] tersor_search::SearchError),
    #[error(transparent)]
    Gguf(#[from] tersor_gguf::GgufError),
    #[error(transparent)]
    Eval(#[from] tersor_eval::EvalError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl CompressError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        CompressError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = CompressError> = std::result::Result<T, E>;

/// Which activations calibrate a level of the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DbInputs {
    /// Every level on the reference model's activations (EvoPress's database: each
    /// layer compressed independently).
    Reference,
    /// Each level kind on the activations of the model whose earlier blocks are all at
    /// that kind (GPTQ's sequential mode, one calibration stream per kind): the
    /// database's uniform assignment is then exactly sequential uniform GPTQ.
    Sequential,
}

impl DbInputs {
    /// The default for a format: sequential for GPTQ checkpoints, where at 2–3 bits the
    /// reference-input levels lose to sequential GPTQ by a factor of three in KL
    /// (bench/results/compress_gptq.md); reference for GGUF, whose levels are 4+ bits.
    pub fn default_for(format: Format) -> Self {
        match format {
            Format::Gguf => DbInputs::Reference,
            Format::Gptq => DbInputs::Sequential,
        }
    }
}

impl std::str::FromStr for DbInputs {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "reference" => Ok(DbInputs::Reference),
            "sequential" => Ok(DbInputs::Sequential),
            _ => Err(format!(
                "unknown database inputs {s:?} (reference or sequential)"
            )),
        }
    }
}

/// Output family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One GGUF file; the budget is the whole file.
    Gguf,
    /// A GPTQ checkpoint directory; the budget counts the blocks' linear layers.
    Gptq,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Gguf => "gguf",
            Format::Gptq => "gptq",
        })
    }
}

/// `--target-bpw` or `--target-size`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Budget {
    Bpw(f64),
    Bytes(u64),
}

/// Search settings.
#[derive(Clone, Debug)]
pub struct SearchOptions {
    pub generations: usize,
    pub offspring: usize,
    /// Calibration windows scored at each selection stage (increasing).
    pub stage_windows: Vec<usize>,
    /// Survivors after each stage but the last.
    pub survivors: Vec<usize>,
    pub max_switches: usize,
    pub seed: u64,
    /// Random assignments tried by the best-of-N baseline.
    pub random_samples: usize,
    /// Windows per model call.
    pub batch: usize,
    /// Keep only the reference's `k` most likely tokens per position (memory
    /// bound; the fitness becomes a lower bound of the KL divergence).
    pub kl_top_k: Option<usize>,
    /// How the DP baseline's per-unit errors are measured.
    pub unit_errors: UnitErrors,
    /// Guide half of EvoPress's level switches by the per-unit error table.
    pub guided: bool,
}

/// The per-unit error table of the dynamic-programming baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UnitErrors {
    /// KL of every (unit, level) pair: one model call per level.
    Kl,
    /// KL of every unit at its lowest level, scaled to the other levels by their
    /// output errors: one model call per unit.
    #[default]
    Scaled,
}

impl std::str::FromStr for UnitErrors {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "kl" => Ok(UnitErrors::Kl),
            "scaled" => Ok(UnitErrors::Scaled),
            _ => Err(format!("unknown unit-error table {s:?} (kl or scaled)")),
        }
    }
}

impl std::fmt::Display for UnitErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UnitErrors::Kl => "kl",
            UnitErrors::Scaled => "scaled",
        })
    }
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            generations: 10,
            offspring: 8,
            stage_windows: vec![1, 4, 8],
            survivors: vec![2, 1],
            max_switches: 3,
            seed: 0,
            random_samples: 16,
            batch: 1,
            kl_top_k: None,
            unit_errors: UnitErrors::Scaled,
            guided: true,
        }
    }
}

impl SearchOptions {
    /// The evolutionary search's settings.
    pub fn evo_config(&self) -> EvoConfig {
        EvoConfig {
            generations: self.generations,
            offspring: self.offspring,
            survivors: self.survivors.clone(),
            max_switches: self.max_switches,
            seed: self.seed,
        }
    }
}

/// The selection stages' window counts, each capped at the calibration's windows
/// (`--calib-tokens` / `--ctx`); a note says when a stage was cut down.
pub(crate) fn capped_stages(
    requested: &[usize],
    cal: &Calibration,
    ctx: usize,
    progress: &(dyn Fn(Event) + Sync),
) -> Vec<usize> {
    let n = cal.windows.len();
    let stages: Vec<usize> = requested.iter().map(|&w| w.min(n)).collect();
    if stages != requested {
        progress(Event::Note(format!(
            "the calibration text gives {n} windows of {ctx} tokens (--calib-tokens, --ctx): \
             selection stages {requested:?} capped to {stages:?}"
        )));
    }
    stages
}

/// EvoPress from `start` without a checkpoint, reporting every generation (the jobs
/// that are not resumable: depth, sparsity).
pub(crate) fn evopress_from(
    problem: &Problem,
    eval: &Evaluator,
    s: &SearchOptions,
    table: &[Vec<f64>],
    start: Assignment,
    progress: &(dyn Fn(Event) + Sync),
) -> Result<EvoState> {
    let total = s.generations;
    Ok(tersor_search::evopress_guided(
        problem,
        eval,
        &s.evo_config(),
        s.guided.then_some(table),
        EvoStart::From(start),
        &mut |st: &EvoState| {
            progress(Event::Generation {
                done: st.generation,
                total,
                fitness: st.parent_fitness,
            });
            Ok(())
        },
    )?)
}

/// Everything `tersor compress` needs.
#[derive(Clone, Debug)]
pub struct CompressOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    pub format: Format,
    pub budget: Budget,
    /// Calibration for the level database (Hessians) and the fitness windows.
    pub calib: CalibConfig,
    /// `--levels`; `None` for the format's default set.
    pub levels: Option<Vec<LevelKind>>,
    pub method: Method,
    pub gptq: GptqConfig,
    /// Which activations calibrate each level (`--db-inputs`).
    pub db_inputs: DbInputs,
    /// Level database directory (default: `OUTPUT.levels` beside the output).
    pub db: Option<PathBuf>,
    pub search: SearchOptions,
    /// Continue the search from its checkpoint (`OUTPUT.evopress.json`).
    pub resume: bool,
    /// Also write every baseline's model into this directory.
    pub baselines_dir: Option<PathBuf>,
    /// Score every allocation on this text (ctx = calibration ctx), first N windows.
    pub eval: Option<(PathBuf, usize)>,
}

impl CompressOptions {
    pub fn db_dir(&self) -> PathBuf {
        self.db
            .clone()
            .unwrap_or_else(|| with_suffix(&self.output, ".levels"))
    }

    pub fn checkpoint(&self) -> PathBuf {
        with_suffix(&self.output, ".evopress.json")
    }
}

fn with_suffix(p: &Path, s: &str) -> PathBuf {
    let mut o = p.as_os_str().to_owned();
    o.push(s);
    PathBuf::from(o)
}

/// Progress of a run.
#[derive(Clone, Debug)]
pub enum Event {
    Note(String),
    BuildStart {
        units: usize,
        levels: usize,
    },
    BuildLevel {
        done: usize,
        total: usize,
        tensor: String,
    },
    /// The per-unit KL table of the DP baseline.
    UnitKl {
        done: usize,
        total: usize,
    },
    Baseline {
        name: String,
        fitness: f64,
    },
    Generation {
        done: usize,
        total: usize,
        fitness: f64,
    },
    Eval {
        name: String,
    },
    Writing {
        path: PathBuf,
    },
}

/// Quality on the evaluation text.
#[derive(Clone, Debug, Serialize)]
pub struct EvalFigures {
    pub perplexity: f64,
    pub perplexity_uncertainty: f64,
    pub kld_mean: f64,
    pub same_top_percent: f64,
    pub windows: usize,
}

/// One allocation (EvoPress or a baseline).
#[derive(Clone, Debug, Serialize)]
pub struct MethodResult {
    pub name: String,
    /// Bytes of the output (GGUF: the whole file; GPTQ: the block linears).
    pub bytes: u64,
    /// Bits per weight of `bytes` (GGUF: over all parameters; GPTQ: over the linears).
    pub bpw: f64,
    /// Mean KL on the last fitness stage's calibration windows.
    pub fitness: f64,
    pub eval: Option<EvalFigures>,
    /// Written to, when written.
    pub path: Option<PathBuf>,
    /// Level per unit, in unit order (`units` of the report).
    pub levels: Vec<String>,
}

/// A unit in the report.
#[derive(Clone, Debug, Serialize)]
pub struct UnitReport {
    pub name: String,
    pub params: u64,
    pub levels: Vec<LevelReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LevelReport {
    pub kind: String,
    pub bytes: u64,
    pub output_error: f64,
    pub kl: Option<f64>,
}

/// What a run did (`--report`).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub input: PathBuf,
    pub output: PathBuf,
    pub format: Format,
    pub target: Budget,
    pub budget_bytes: u64,
    /// Bytes outside the searched tensors (GGUF header, norms, …).
    pub fixed_bytes: u64,
    /// Parameters the bpw figures divide by.
    pub bpw_params: u64,
    pub achievable_bytes: (u64, u64),
    pub db: PathBuf,
    /// Calibration tokens scored at each selection stage.
    pub fitness_tokens: Vec<usize>,
    pub offspring: usize,
    pub survivors: Vec<usize>,
    /// The DP baseline's per-unit error table (`kl` or `scaled`).
    pub unit_errors: String,
    pub guided: bool,
    pub evopress_start: String,
    pub curve: Vec<tersor_search::GenerationRecord>,
    pub evaluations: Vec<usize>,
    pub methods: Vec<MethodResult>,
    pub units: Vec<UnitReport>,
    pub seconds_build: f64,
    pub seconds_baselines: f64,
    pub seconds_search: f64,
    pub seconds_eval: f64,
    pub llama_quantize_args: Option<Vec<String>>,
}

/// Run the job.
pub fn run(opts: &CompressOptions, progress: &(dyn Fn(Event) + Sync)) -> Result<Report> {
    let (model, tokenizer) = match tersor_model::load(&opts.input)? {
        LoadedModel::Decoder { model, tokenizer } => (model, tokenizer),
        LoadedModel::Encoder(_) => {
            return Err(CompressError::Input {
                path: opts.input.clone(),
                msg: "sentence encoders cannot be compressed yet (decoder LMs only)".into(),
            })
        }
    };
    if opts.format == Format::Gguf && opts.input.is_dir() {
        return Err(CompressError::Input {
            path: opts.input.clone(),
            msg: "GGUF output needs a GGUF input (convert the checkpoint with llama.cpp's convert_hf_to_gguf.py first, or use --format gptq)".into(),
        });
    }
    let n_layers = model.n_layers();
    let tied = model.config().tie_embeddings;
    let units = units::units(&model, opts.format, opts.levels.as_deref())?;

    // The budget is checked before the level database is built.
    let planned: Vec<(LevelKind, Vec<u64>)> = units
        .iter()
        .map(|u| {
            let mut b: Vec<u64> = u
                .kinds
                .iter()
                .filter_map(|k| k.bytes(u.rows, u.cols))
                .collect();
            b.sort_unstable();
            b.dedup();
            (u.kinds[0], b)
        })
        .collect();
    let (planned_units, fixed, bpw_params) = output::costs(opts, &units, &planned)?;
    let budget = budget_bytes(opts.budget, bpw_params)?;
    problem_for(planned_units, fixed, budget, bpw_params)?;

    // Level database.
    let t0 = Instant::now();
    let db_dir = opts.db_dir();
    let db = build::build(opts, &db_dir, &model, &tokenizer, &units, progress)?;
    let seconds_build = t0.elapsed().as_secs_f64();

    // The allocation problem in exact bytes.
    let layout = output::layout(opts, &units, &db)?;
    let problem = problem_for(
        layout.search_units.clone(),
        layout.fixed_bytes,
        budget,
        layout.bpw_params,
    )?;

    // Fitness.
    let cal = Calibration::load(&opts.calib, &tokenizer)?;
    let s = &opts.search;
    let stage_windows = capped_stages(&s.stage_windows, &cal, opts.calib.ctx, progress);
    let eval = Evaluator::new(
        model.clone(),
        units.clone(),
        &db,
        cal.windows.clone(),
        stage_windows.clone(),
        s.batch,
        s.kl_top_k,
    )?;
    let last = stage_windows.len() - 1;

    // Baselines.
    let t1 = Instant::now();
    let mut allocs: Vec<(String, Assignment)> = Vec::new();
    allocs.push(("uniform".into(), baselines::uniform(&problem, &units)));
    allocs.push((
        "heuristic".into(),
        baselines::heuristic(&problem, &units, n_layers, tied),
    ));
    let kl_table = unit_kl_table(&db, &eval, &db_dir, &stage_windows, s.unit_errors, progress)?;
    allocs.push((
        "dp".into(),
        tersor_search::dp(&problem, &kl_table, 100_000)?,
    ));
    // L-GreCo's layer-local variant: the summed relative output errors, no model run.
    allocs.push((
        "dp-output".into(),
        tersor_search::dp(&problem, &output_errors(&db, eval.units())?, 100_000)?,
    ));
    if s.random_samples > 0 {
        let (a, _) = tersor_search::random_best(&problem, s.random_samples, &eval, 0, s.seed)?;
        allocs.push(("random-best".into(), a));
    }
    let mut fits = Vec::new();
    for (name, a) in &allocs {
        let f = tersor_search::Fitness::evaluate(&eval, last, a, std::slice::from_ref(a))?[0];
        progress(Event::Baseline {
            name: name.clone(),
            fitness: f,
        });
        fits.push(f);
    }
    let seconds_baselines = t1.elapsed().as_secs_f64();

    // EvoPress, from the best baseline (or the checkpoint).
    let t2 = Instant::now();
    let best = (0..allocs.len())
        .min_by(|&a, &b| fits[a].total_cmp(&fits[b]))
        .expect("baselines");
    let ckpt = opts.checkpoint();
    let start = if opts.resume && ckpt.is_file() {
        let st = EvoState::load(&ckpt)?;
        progress(Event::Note(format!(
            "resuming the search from {} (generation {})",
            ckpt.display(),
            st.generation
        )));
        EvoStart::Resume(st)
    } else {
        EvoStart::From(allocs[best].1.clone())
    };
    let cfg = s.evo_config();
    let total = s.generations;
    let guide = s.guided.then_some(kl_table.as_slice());
    let state = tersor_search::evopress_guided(
        &problem,
        &eval,
        &cfg,
        guide,
        start,
        &mut |st: &EvoState| {
            st.save(&ckpt)?;
            progress(Event::Generation {
                done: st.generation,
                total,
                fitness: st.parent_fitness,
            });
            Ok(())
        },
    )?;
    let seconds_search = t2.elapsed().as_secs_f64();
    allocs.insert(0, ("evopress".into(), state.parent.clone()));
    fits.insert(0, state.parent_fitness);

    // Write and evaluate.
    let t3 = Instant::now();
    let reference = MemoLm::new(&model);
    let mut methods: Vec<MethodResult> = Vec::new();
    for (i, (name, a)) in allocs.iter().enumerate() {
        let path = if i == 0 {
            Some(opts.output.clone())
        } else {
            opts.baselines_dir
                .as_ref()
                .map(|d| d.join(output::file_name(name, opts.format)))
        };
        if let Some(p) = &path {
            progress(Event::Writing { path: p.clone() });
            let written = output::write(opts, p, &model, &units, &db, a)?;
            if written != problem.cost(a) {
                return Err(CompressError::Invariant(format!(
                    "{} has {written} bytes, the allocation costs {}",
                    p.display(),
                    problem.cost(a)
                )));
            }
        }
        // An allocation equal to one already scored (EvoPress that kept its start) has
        // its figures.
        let earlier = allocs[..i].iter().position(|(_, b)| b == a);
        let figures = match (&opts.eval, earlier) {
            (Some(_), Some(j)) => methods[j].eval.clone(),
            (Some((text, chunks)), None) => {
                progress(Event::Eval { name: name.clone() });
                Some(evaluate(
                    &eval,
                    &reference,
                    &tokenizer,
                    a,
                    text,
                    *chunks,
                    opts.calib.ctx,
                )?)
            }
            (None, _) => None,
        };
        let bytes = problem.cost(a);
        methods.push(MethodResult {
            name: name.clone(),
            bytes,
            bpw: bytes as f64 * 8.0 / layout.bpw_params as f64,
            fitness: fits[i],
            eval: figures,
            path,
            levels: a
                .iter()
                .enumerate()
                .map(|(u, &l)| {
                    db.tensors()[layout.db_index[u]].levels[l as usize]
                        .kind
                        .to_string()
                })
                .collect(),
        });
    }
    let seconds_eval = t3.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&ckpt);

    let units_report = units
        .iter()
        .enumerate()
        .map(|(u, unit)| UnitReport {
            name: unit.name.clone(),
            params: unit.params(),
            levels: db.tensors()[layout.db_index[u]]
                .levels
                .iter()
                .enumerate()
                .map(|(l, lv)| LevelReport {
                    kind: lv.kind.to_string(),
                    bytes: problem.units[u].costs[l],
                    output_error: lv.output_error,
                    kl: Some(kl_table[u][l]),
                })
                .collect(),
        })
        .collect();
    let llama_quantize_args = (opts.format == Format::Gguf)
        .then(|| output::llama_quantize_args(&units, &methods[0].levels));
    Ok(Report {
        input: opts.input.clone(),
        output: opts.output.clone(),
        format: opts.format,
        target: opts.budget,
        budget_bytes: budget,
        fixed_bytes: layout.fixed_bytes,
        bpw_params: layout.bpw_params,
        achievable_bytes: (problem.min_bytes(), problem.max_bytes()),
        db: db_dir,
        fitness_tokens: (0..stage_windows.len())
            .map(|s| eval.stage_tokens(s))
            .collect(),
        offspring: s.offspring,
        survivors: s.survivors.clone(),
        unit_errors: s.unit_errors.to_string(),
        guided: s.guided,
        evopress_start: allocs[best + 1].0.clone(),
        curve: state.curve.clone(),
        evaluations: eval.evaluations(),
        methods,
        units: units_report,
        seconds_build,
        seconds_baselines,
        seconds_search,
        seconds_eval,
        llama_quantize_args,
    })
}

fn budget_bytes(b: Budget, bpw_params: u64) -> Result<u64> {
    match b {
        Budget::Bpw(b) if b.is_finite() && b > 0.0 => {
            Ok((b * bpw_params as f64 / 8.0).floor() as u64)
        }
        Budget::Bpw(b) => Err(CompressError::Usage(format!(
            "--target-bpw {b}: expected a positive number"
        ))),
        Budget::Bytes(n) => Ok(n),
    }
}

fn problem_for(
    units: Vec<tersor_search::Unit>,
    fixed: u64,
    budget: u64,
    bpw_params: u64,
) -> Result<Problem> {
    let bpw = |b: u64| b as f64 * 8.0 / bpw_params.max(1) as f64;
    Problem::new(units, fixed, budget).map_err(|e| match e {
        tersor_search::SearchError::Infeasible {
            min_bytes,
            max_bytes,
            ..
        } => CompressError::Usage(format!(
            "no allocation meets the budget of {budget} bytes ({:.4} bpw): the levels allow {min_bytes}..={max_bytes} bytes ({:.4}..={:.4} bpw)",
            bpw(budget),
            bpw(min_bytes),
            bpw(max_bytes)
        )),
        e => e.into(),
    })
}

/// Per-unit KL at stage 0, cached beside the database (keyed by the database, the
/// fitness windows and the table kind).
fn unit_kl_table(
    db: &LevelDb,
    eval: &Evaluator,
    dir: &Path,
    stage_windows: &[usize],
    kind: UnitErrors,
    progress: &(dyn Fn(Event) + Sync),
) -> Result<Vec<Vec<f64>>> {
    #[derive(Serialize, serde::Deserialize)]
    struct Cached {
        key: String,
        table: Vec<Vec<f64>>,
    }
    let key = format!("{} windows {}", db.key(), stage_windows[0]);
    let path = dir.join(match kind {
        UnitErrors::Kl => "unit_kl.json",
        UnitErrors::Scaled => "unit_kl_scaled.json",
    });
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(c) = serde_json::from_str::<Cached>(&text) {
            let shape_ok = c.table.len() == eval.units().len()
                && c.table
                    .iter()
                    .enumerate()
                    .all(|(u, r)| r.len() == eval.n_levels(u));
            if c.key == key && shape_ok {
                return Ok(c.table);
            }
        }
    }
    let report = |done, total| progress(Event::UnitKl { done, total });
    let table = match kind {
        UnitErrors::Kl => eval.unit_table(0, &report)?,
        UnitErrors::Scaled => {
            eval.unit_table_scaled(0, &output_errors(db, eval.units())?, &report)?
        }
    };
    let text = serde_json::to_string(&Cached {
        key,
        table: table.clone(),
    })
    .map_err(|e| CompressError::Invariant(e.to_string()))?;
    tersor_levels::atomic_write(&path, text.as_bytes())?;
    Ok(table)
}

/// The levels' relative output errors `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`, in unit order.
fn output_errors(db: &LevelDb, units: &[units::Unit]) -> Result<Vec<Vec<f64>>> {
    units
        .iter()
        .map(|u| {
            let t = db.find(&u.name).ok_or_else(|| {
                CompressError::Invariant(format!("{} is not in the level database", u.name))
            })?;
            Ok(db.tensors()[t]
                .levels
                .iter()
                .map(|l| l.output_error)
                .collect())
        })
        .collect()
}

/// The reference model for the evaluation of every allocation: its logits are the
/// same for each, so they are computed once per window and kept.
struct MemoLm<'a> {
    model: &'a tersor_model::Llama,
    memo: std::sync::Mutex<std::collections::HashMap<LogitsKey, Vec<f32>>>,
}

/// A `logits` call: its windows and first scored position.
type LogitsKey = (Vec<Vec<u32>>, usize);

impl<'a> MemoLm<'a> {
    fn new(model: &'a tersor_model::Llama) -> Self {
        MemoLm {
            model,
            memo: Default::default(),
        }
    }
}

impl tersor_eval::CausalLm for MemoLm<'_> {
    fn vocab_size(&self) -> usize {
        tersor_eval::CausalLm::vocab_size(self.model)
    }

    fn logits(
        &self,
        windows: &[&[u32]],
        from: usize,
    ) -> std::result::Result<Vec<f32>, tersor_eval::BoxError> {
        let key = (windows.iter().map(|w| w.to_vec()).collect(), from);
        if let Some(l) = self.memo.lock().expect("not poisoned").get(&key) {
            return Ok(l.clone());
        }
        let l = self.model.logits(windows, from)?;
        self.memo
            .lock()
            .expect("not poisoned")
            .insert(key, l.clone());
        Ok(l)
    }
}

/// [`evaluate`] when the job has an evaluation text (`Event::Eval` first).
#[allow(clippy::too_many_arguments)]
pub(crate) fn evaluate_opt(
    text: &Option<(PathBuf, usize)>,
    name: &str,
    eval: &Evaluator,
    reference: &MemoLm<'_>,
    tokenizer: &TextTokenizer,
    a: &Assignment,
    ctx: usize,
    progress: &(dyn Fn(Event) + Sync),
) -> Result<Option<EvalFigures>> {
    let Some((text, chunks)) = text else {
        return Ok(None);
    };
    progress(Event::Eval { name: name.into() });
    evaluate(eval, reference, tokenizer, a, text, *chunks, ctx).map(Some)
}

fn evaluate(
    eval: &Evaluator,
    reference: &MemoLm<'_>,
    tokenizer: &TextTokenizer,
    a: &Assignment,
    text: &Path,
    chunks: usize,
    ctx: usize,
) -> Result<EvalFigures> {
    let choice: Vec<Option<u16>> = a.iter().map(|&l| Some(l)).collect();
    let m = eval.model(&choice)?;
    let content = std::fs::read_to_string(text).map_err(|e| CompressError::io(text, e))?;
    let cfg = tersor_eval::PerplexityConfig {
        ctx,
        max_windows: Some(chunks),
        ..Default::default()
    };
    let r = tersor_eval::perplexity(
        tersor_eval::Lm {
            model: &m,
            tokenizer,
        },
        Some(tersor_eval::Lm {
            model: reference,
            tokenizer,
        }),
        &content,
        &cfg,
        &mut |_, _| {},
    )?;
    let kl =
        r.kl.as_ref()
            .ok_or_else(|| CompressError::Invariant("no KL figures".into()))?;
    Ok(EvalFigures {
        perplexity: r.perplexity,
        perplexity_uncertainty: r.perplexity_uncertainty,
        kld_mean: kl.kld_mean,
        same_top_percent: kl.same_top_percent,
        windows: r.windows,
    })
}
