//! Depth pruning as a level kind: which transformer sublayers (attention or MLP) to
//! drop, searched with EvoPress (Sieberling et al., "EvoPress: Towards Optimal Dynamic
//! Model Compression via Evolutionary Search", 2024, §4.1 depth pruning).
//!
//! Every sublayer is one unit with two levels: dropped (its output projection `o_proj`
//! or `down_proj` zeroed, so the residual stream passes through unchanged: exactly a
//! skipped sublayer) and kept. A unit's cost is the parameter count of its sublayer
//! (q, k, v, o for attention; gate, up, down for the MLP), so the budget "remove the
//! parameters of N whole blocks" can be met by any mix of attention and MLP drops.
//!
//! Compared in the same run, on the same calibration fitness and evaluation text:
//! - `last`: drop the last N blocks (both sublayers), EvoPress's start;
//! - `importance`: drop the sublayers whose removal alone costs the least KL (a
//!   ShortGPT-style per-unit importance), chosen by the knapsack DP;
//! - `evopress`: the evolutionary search with multi-step selection.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Tensor};
use serde::Serialize;
use tersor_model::{LinearKind, Llama, LoadedModel};
use tersor_quantize::prune::FloatDtype;
use tersor_quantize::{CalibConfig, Calibration};
use tersor_search::{Assignment, Fitness, GenerationRecord, Problem};

use crate::fitness::Evaluator;
use crate::units::{Unit, UnitRef};
use crate::{CompressError, EvalFigures, Event, MemoLm, Result, SearchOptions};

/// What `tersor depth` needs.
#[derive(Clone, Debug)]
pub struct DepthOptions {
    pub input: PathBuf,
    /// Blocks' worth of parameters to remove (e.g. 3 of 30 = 10 %).
    pub drop_blocks: usize,
    pub calib: CalibConfig,
    pub search: SearchOptions,
    /// Score every allocation on this text (ctx = calibration ctx), first N windows.
    pub eval: Option<(PathBuf, usize)>,
    /// Write EvoPress's model here (a Hugging Face directory, see [`write_model`]).
    pub output: Option<PathBuf>,
    /// Float type of the written tensors.
    pub dtype: FloatDtype,
}

/// What [`write_model`] wrote.
#[derive(Clone, Debug, Serialize)]
pub struct DepthOutput {
    pub path: PathBuf,
    /// Blocks left out whole (both sublayers dropped), in the input's numbering.
    pub blocks_removed: Vec<usize>,
    /// Sublayers dropped inside kept blocks: stored with a zero output projection.
    pub sublayers_zeroed: Vec<String>,
    /// Bytes of the written directory.
    pub bytes: u64,
}

/// One allocation's result.
#[derive(Clone, Debug, Serialize)]
pub struct DepthMethod {
    pub name: String,
    /// Dropped sublayers, `blk.L.attn` / `blk.L.mlp`.
    pub dropped: Vec<String>,
    /// Parameters of the dropped sublayers.
    pub params_removed: u64,
    /// Last-stage calibration fitness (mean KL).
    pub fitness: f64,
    pub eval: Option<EvalFigures>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DepthReport {
    pub input: PathBuf,
    pub n_blocks: usize,
    pub drop_blocks: usize,
    /// Sublayer parameters that must be removed (those of `drop_blocks` blocks).
    pub params_to_remove: u64,
    /// Parameters of all sublayers (the blocks' linear layers).
    pub params_total: u64,
    pub fitness_tokens: Vec<usize>,
    /// First-stage KL of dropping each sublayer alone (the importance baseline's
    /// errors), in block order.
    pub alone_kl: Vec<(String, f64)>,
    pub curve: Vec<GenerationRecord>,
    pub methods: Vec<DepthMethod>,
    pub seconds_search: f64,
    /// EvoPress's model, when `output` was given.
    pub output: Option<DepthOutput>,
}

/// Writes `model` without the sublayers `dropped` (`blk.L.attn` / `blk.L.mlp`) to the
/// Hugging Face directory `output` (atomically): a block that loses both sublayers is
/// left out, so the checkpoint has fewer layers and is smaller; a lone dropped
/// sublayer keeps its tensors with its output projection (`o_proj` / `down_proj`)
/// zeroed, which computes exactly the skipped sublayer (Llama checkpoints cannot
/// omit one), so it saves no bytes.
pub fn write_model(
    input: &Path,
    model: &Llama,
    dropped: &[String],
    output: &Path,
    dtype: FloatDtype,
) -> Result<DepthOutput> {
    let n = model.n_layers();
    let mut gone = vec![[false; 2]; n];
    for name in dropped {
        let parsed = name.strip_prefix("blk.").and_then(|r| {
            let (l, tag) = r.split_once('.')?;
            let l: usize = l.parse().ok()?;
            let s = match tag {
                "attn" => 0,
                "mlp" => 1,
                _ => return None,
            };
            (l < n).then_some((l, s))
        });
        let (l, s) = parsed.ok_or_else(|| {
            CompressError::Invariant(format!("{name}: not a sublayer of this {n}-block model"))
        })?;
        gone[l][s] = true;
    }
    let mut m = model.clone();
    let mut blocks_removed = Vec::new();
    let mut sublayers_zeroed = Vec::new();
    for (l, g) in gone.iter().enumerate() {
        if g[0] && g[1] {
            blocks_removed.push(l);
            continue;
        }
        for (s, proj, tag) in [(0, LinearKind::O, "attn"), (1, LinearKind::Down, "mlp")] {
            if g[s] {
                let w = m.linear_weight(l, proj)?;
                let z = Tensor::zeros(w.dims(), DType::F32, w.device())?;
                m.set_linear_weight(l, proj, z)?;
                sublayers_zeroed.push(format!("blk.{l}.{tag}"));
            }
        }
    }
    m.remove_blocks(&blocks_removed)?;
    tersor_quantize::write_dense_dir(input, output, &m, dtype)?;
    let mut bytes = 0;
    for e in std::fs::read_dir(output).map_err(|e| CompressError::io(output, e))? {
        let e = e.map_err(|e| CompressError::io(output, e))?;
        bytes += e
            .metadata()
            .map_err(|x| CompressError::io(&e.path(), x))?
            .len();
    }
    Ok(DepthOutput {
        path: output.to_path_buf(),
        blocks_removed,
        sublayers_zeroed,
        bytes,
    })
}

/// Level 0 of every unit is "dropped", level 1 "kept".
const DROPPED: u16 = 0;
const KEPT: u16 = 1;

/// The sublayer units of a model in block order (attention, then MLP), with their
/// parameter counts.
fn sublayers(model: &tersor_model::Llama) -> Result<Vec<(Unit, u64)>> {
    let mut out = Vec::new();
    for l in 0..model.n_layers() {
        for (proj, kinds, tag) in [
            (
                LinearKind::O,
                &[LinearKind::Q, LinearKind::K, LinearKind::V, LinearKind::O][..],
                "attn",
            ),
            (
                LinearKind::Down,
                &[LinearKind::Gate, LinearKind::Up, LinearKind::Down][..],
                "mlp",
            ),
        ] {
            let mut params = 0u64;
            for &k in kinds {
                params += model.linear_weight(l, k)?.elem_count() as u64;
            }
            let (rows, cols) = model.linear_weight(l, proj)?.dims2()?;
            out.push((
                Unit {
                    name: format!("blk.{l}.{tag}"),
                    what: UnitRef::Linear(l, proj),
                    rows,
                    cols,
                    kinds: Vec::new(),
                },
                params,
            ));
        }
    }
    Ok(out)
}

/// Searches which sublayers to drop so that at least `drop_blocks` blocks' parameters
/// go, and scores EvoPress against the baselines.
pub fn run(opts: &DepthOptions, progress: &(dyn Fn(Event) + Sync)) -> Result<DepthReport> {
    let (model, tokenizer) = match tersor_model::load(&opts.input)? {
        LoadedModel::Decoder { model, tokenizer } => (model, tokenizer),
        LoadedModel::Encoder(_) => {
            return Err(CompressError::Input {
                path: opts.input.clone(),
                msg: "depth pruning needs a decoder LM (this is a sentence encoder)".into(),
            })
        }
    };
    let n = model.n_layers();
    if opts.drop_blocks == 0 || opts.drop_blocks >= n {
        return Err(CompressError::Usage(format!(
            "--drop-blocks {}: expected 1..{} (the model has {n} blocks)",
            opts.drop_blocks,
            n.saturating_sub(1)
        )));
    }
    let subs = sublayers(&model)?;
    let params_total: u64 = subs.iter().map(|s| s.1).sum();
    let block_params: Vec<u64> = subs.chunks(2).map(|c| c[0].1 + c[1].1).collect();
    // "N blocks' worth": the parameters of the last N blocks (all blocks are alike in
    // the models tersor reads, so any N would do).
    let params_to_remove: u64 = block_params[n - opts.drop_blocks..].iter().sum();
    let problem = Problem::new(
        subs.iter()
            .map(|(u, p)| tersor_search::Unit {
                name: u.name.clone(),
                costs: vec![0, *p],
            })
            .collect(),
        0,
        params_total - params_to_remove,
    )?;

    let mut weights = Vec::with_capacity(subs.len());
    for (u, _) in &subs {
        let UnitRef::Linear(l, k) = u.what else {
            unreachable!("sublayer units are linears")
        };
        let w = model.linear_weight(l, k)?.to_dtype(DType::F32)?;
        weights.push(vec![
            Tensor::zeros((u.rows, u.cols), DType::F32, w.device())?,
            w,
        ]);
    }
    let cal = Calibration::load(&opts.calib, &tokenizer)?;
    let s = &opts.search;
    let stage_windows = crate::capped_stages(&s.stage_windows, &cal, opts.calib.ctx, progress);
    let units: Vec<Unit> = subs.iter().map(|s| s.0.clone()).collect();
    let eval = Evaluator::from_levels(
        model.clone(),
        units,
        weights,
        cal.windows.clone(),
        stage_windows.clone(),
        s.batch,
        s.kl_top_k,
    )?;
    let last_stage = stage_windows.len() - 1;

    // Baselines.
    let all_kept: Assignment = vec![KEPT; subs.len()];
    let last: Assignment = (0..subs.len())
        .map(|u| {
            if u / 2 >= n - opts.drop_blocks {
                DROPPED
            } else {
                KEPT
            }
        })
        .collect();
    // Importance: the KL of dropping each sublayer alone (first stage), then the
    // knapsack over those errors.
    let mut table = Vec::with_capacity(subs.len());
    for u in 0..subs.len() {
        let mut a = all_kept.clone();
        a[u] = DROPPED;
        let kl = eval.evaluate(0, &all_kept, std::slice::from_ref(&a))?[0];
        table.push(vec![kl, 0.0]);
    }
    let importance = tersor_search::dp(&problem, &table, 100_000)?;
    let mut allocs: Vec<(String, Assignment)> =
        vec![("last".into(), last), ("importance".into(), importance)];
    let mut fits = Vec::new();
    for (name, a) in &allocs {
        let f = eval.evaluate(last_stage, a, std::slice::from_ref(a))?[0];
        progress(Event::Baseline {
            name: name.clone(),
            fitness: f,
        });
        fits.push(f);
    }

    // EvoPress from the better baseline.
    let t = Instant::now();
    let best = if fits[1] < fits[0] { 1 } else { 0 };
    let state = crate::evopress_from(&problem, &eval, s, &table, allocs[best].1.clone(), progress)?;
    let seconds_search = t.elapsed().as_secs_f64();
    allocs.insert(0, ("evopress".into(), state.parent.clone()));
    fits.insert(0, state.parent_fitness);

    let reference = MemoLm::new(&model);
    let mut methods = Vec::new();
    for ((name, a), &fitness) in allocs.iter().zip(&fits) {
        let eval_figures = crate::evaluate_opt(
            &opts.eval,
            name,
            &eval,
            &reference,
            &tokenizer,
            a,
            opts.calib.ctx,
            progress,
        )?;
        let dropped: Vec<usize> = (0..a.len()).filter(|&u| a[u] == DROPPED).collect();
        methods.push(DepthMethod {
            name: name.clone(),
            dropped: dropped.iter().map(|&u| subs[u].0.name.clone()).collect(),
            params_removed: dropped.iter().map(|&u| subs[u].1).sum(),
            fitness,
            eval: eval_figures,
        });
    }
    let output = match &opts.output {
        Some(out) => {
            progress(Event::Note(format!("writing {}", out.display())));
            Some(write_model(
                &opts.input,
                &model,
                &methods[0].dropped,
                out,
                opts.dtype,
            )?)
        }
        None => None,
    };
    Ok(DepthReport {
        output,
        input: opts.input.clone(),
        n_blocks: n,
        drop_blocks: opts.drop_blocks,
        params_to_remove,
        params_total,
        fitness_tokens: (0..stage_windows.len())
            .map(|s| eval.stage_tokens(s))
            .collect(),
        alone_kl: subs
            .iter()
            .zip(&table)
            .map(|(s, t)| (s.0.name.clone(), t[0]))
            .collect(),
        curve: state.curve,
        methods,
        seconds_search,
    })
}
