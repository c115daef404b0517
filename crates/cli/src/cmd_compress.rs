//! `tersor compress`: the per-layer allocation that loses the least at a size budget
//! (EvoPress), with the baselines it must beat.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tersor_compress::sparsity::{Budget as SparsityBudget, ParamLevel, SparsityOptions};
use tersor_compress::{
    Budget, CompressOptions, DbInputs, Event, Format, SearchOptions, UnitErrors,
};
use tersor_levels::LevelKind;
use tersor_quantize::prune::{FloatDtype, Pattern};
use tersor_quantize::{CalibConfig, MethodSpec};

#[derive(Debug, Args)]
pub struct CompressArgs {
    /// Model: a GGUF file or a Hugging Face directory (default: the default LM).
    #[arg(value_name = "MODEL")]
    model: Option<PathBuf>,

    /// Output family: gguf (the budget is the whole file; the default), gptq (a GPTQ
    /// checkpoint directory; the budget counts the blocks' linear layers) or dense (a
    /// Hugging Face directory holding each level's values densely; --levels mixes
    /// sparsity, N:M, low rank, drop and skip with GPTQ grids, like 0.5+gptq:4:g128, and the
    /// budget counts the linears' payload: kept values, masks, scales, factors).
    #[arg(long, value_name = "FORMAT")]
    format: Option<String>,

    /// Budget in bits per weight (default 5.25 for gguf, 3.0 for gptq).
    #[arg(long, value_name = "B", conflicts_with = "target_size")]
    target_bpw: Option<f64>,

    /// Budget in bytes (suffixes K, M, G = 1000^n; KiB, MiB, GiB = 1024^n).
    #[arg(long, value_name = "S")]
    target_size: Option<String>,

    /// Budget as a global sparsity of the block linears (0.6 or 60%: the share of their
    /// parameters removed): EvoPress chooses each linear's level among --levels (SparseGPT
    /// at 0, 10 %, …, 90 % by default; also `lowrank:R`, activation-aware SVD factors
    /// holding R of the parameters, `drop`, the linear removed, and `skip`, whole
    /// sublayers skipped: the search's units are then the attention and MLP sublayers,
    /// each at one level on all its linears) and the result is a Hugging Face directory
    /// (zeros stored, factored linears as their two factors, blocks whose two sublayers
    /// are skipped left out).
    /// Several targets (0.5,0.6,0.7) share one level database; -o is then a parent
    /// directory.
    #[arg(
        long,
        value_name = "S",
        value_delimiter = ',',
        conflicts_with_all = ["target_bpw", "target_size"]
    )]
    target_sparsity: Vec<String>,

    /// Calibration text (default: the calibration split of Botchan).
    #[arg(long, value_name = "FILE")]
    calib: Option<PathBuf>,

    /// Calibration tokens for the level database (whole windows).
    #[arg(long, default_value_t = 8192, value_name = "N")]
    calib_tokens: usize,

    /// Window length in tokens (calibration, fitness and evaluation).
    #[arg(long, default_value_t = 512, value_name = "N")]
    ctx: usize,

    /// Level kinds, comma-separated (default: Q4_0,IQ4_NL,Q5_0,Q8_0 on 32-block rows and
    /// Q2_K..Q6_K,Q8_0 on 256-multiple rows; gptq: gptq:{2,3,4,8}:g{32,64,128};
    /// with --target-sparsity: sparsities 0,0.1,...,0.9, and lowrank:R, drop or skip levels;
    /// dense: gptq:3:g128,gptq:4:g128 and 0.5/0.6/0.7+gptq:4:g128).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    levels: Vec<String>,

    /// How levels are built: gptq | imatrix | rtn.
    #[arg(long, default_value = "gptq", value_name = "METHOD")]
    method: String,

    /// Activations each level is calibrated on: `reference` (every level on the
    /// original model's, EvoPress's independent database) or `sequential` (each level
    /// kind on the model whose earlier blocks are at that kind, as GPTQ quantizes).
    /// Default: sequential for gptq and dense, reference for gguf and --target-sparsity.
    #[arg(long, value_name = "INPUTS")]
    db_inputs: Option<DbInputs>,

    /// Level database directory (default: OUT.levels).
    #[arg(long, value_name = "DIR")]
    db: Option<PathBuf>,

    /// EvoPress generations.
    #[arg(long, default_value_t = 10, value_name = "N")]
    generations: usize,

    #[command(flatten)]
    selection: SelectionArgs,

    /// Random assignments tried by the best-of-N baseline.
    #[arg(long, default_value_t = 16, value_name = "N")]
    random_samples: usize,

    /// Keep only the reference's K most likely tokens per position for the fitness
    /// (bounds memory; the KL then lumps the other tokens into one bucket).
    #[arg(long, value_name = "K")]
    kl_top_k: Option<usize>,

    /// Per-unit errors of the DP baseline: `scaled` (one model run per tensor, its
    /// other levels scaled by their output errors) or `kl` (one run per level).
    #[arg(long, default_value = "scaled", value_name = "KIND")]
    unit_errors: UnitErrors,

    /// EvoPress's level switches all uniformly random, as in the paper (default: half
    /// of them guided by the per-tensor error table).
    #[arg(long)]
    unguided: bool,

    /// Continue an interrupted search from its checkpoint (OUT.evopress.json).
    #[arg(long)]
    resume: bool,

    /// Also write every baseline's model into this directory.
    #[arg(long, value_name = "DIR")]
    baselines_dir: Option<PathBuf>,

    /// Evaluation text for the summary (default: the evaluation split of Botchan).
    #[arg(long, value_name = "FILE")]
    eval: Option<PathBuf>,

    /// Windows of the evaluation text scored for the summary (0: no evaluation).
    #[arg(long, default_value_t = 8, value_name = "N")]
    eval_chunks: usize,

    /// Write the full report (levels, search curve, all figures) as JSON.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,

    /// Print the llama-quantize --tensor-type arguments of the result (GGUF).
    #[arg(long)]
    emit_llama_quantize_args: bool,

    /// Output file (GGUF) or directory (GPTQ).
    #[arg(long, short = 'o', value_name = "OUT")]
    output: Option<PathBuf>,

    /// Print the report as JSON instead of a summary.
    #[arg(long)]
    json: bool,

    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// EvoPress's selection settings, shared by `compress` and `depth`.
#[derive(Debug, Args)]
pub struct SelectionArgs {
    /// Offspring per generation.
    #[arg(long, default_value_t = 8, value_name = "N")]
    offspring: usize,

    /// Calibration windows per selection stage, comma-separated (increasing). The
    /// last stage always scores the first windows; smaller stages rotate through them
    /// from one generation to the next. Capped at the calibration windows
    /// (--calib-tokens / --ctx).
    #[arg(
        long,
        default_value = "1,4,8",
        value_name = "LIST",
        value_delimiter = ','
    )]
    stage_windows: Vec<usize>,

    /// Survivors after each stage but the last, comma-separated.
    #[arg(
        long,
        default_value = "2,1",
        value_name = "LIST",
        value_delimiter = ','
    )]
    survivors: Vec<usize>,

    /// Seed of the search (runs with the same seed and inputs give the same result).
    #[arg(long, default_value_t = 0, value_name = "S")]
    seed: u64,
}

impl SelectionArgs {
    /// These settings over `base`.
    pub fn apply(&self, base: SearchOptions) -> SearchOptions {
        SearchOptions {
            offspring: self.offspring,
            stage_windows: self.stage_windows.clone(),
            survivors: self.survivors.clone(),
            seed: self.seed,
            ..base
        }
    }
}

/// The calibration text (default: Botchan's calibration split) and the evaluation text
/// (default: its evaluation split) with its window count (`None` for 0 windows).
pub fn texts(
    calib: Option<&PathBuf>,
    eval: Option<&PathBuf>,
    eval_chunks: usize,
) -> anyhow::Result<(PathBuf, Option<(PathBuf, usize)>)> {
    let calib = match calib {
        Some(p) => p.clone(),
        None => {
            tersor_assets::botchan_calib().context("cannot obtain the default calibration text")?
        }
    };
    let eval = if eval_chunks == 0 {
        None
    } else {
        let p = match eval {
            Some(p) => p.clone(),
            None => tersor_assets::botchan_eval()
                .context("cannot obtain the default evaluation text")?,
        };
        Some((p, eval_chunks))
    };
    Ok((calib, eval))
}

fn search_options(args: &CompressArgs) -> SearchOptions {
    args.selection.apply(SearchOptions {
        generations: args.generations,
        max_switches: 3,
        random_samples: args.random_samples,
        batch: 1,
        kl_top_k: args.kl_top_k,
        unit_errors: args.unit_errors,
        guided: !args.unguided,
        ..SearchOptions::default()
    })
}

/// `--target-sparsity`: EvoPress over per-linear SparseGPT sparsities.
/// The default levels of `--format dense`: GPTQ at 3 and 4 bits and SparseGPT at 50, 60
/// and 70 % jointly with 4-bit GPTQ (2:4 costs what 50 % does, and 25 % saves less than
/// its mask costs).
const DENSE_LEVELS: &str =
    "gptq:3:g128,gptq:4:g128,0.5+gptq:4:g128,0.6+gptq:4:g128,0.7+gptq:4:g128";

fn run_sparsity(
    args: &CompressArgs,
    model: &std::path::Path,
    budget: SparsityBudget,
) -> anyhow::Result<()> {
    let fractions = match budget {
        SparsityBudget::Sparsity => args
            .target_sparsity
            .iter()
            .map(|t| match t.trim().parse::<Pattern>() {
                Ok(Pattern::Unstructured(s)) if s > 0.0 => Ok(s),
                _ => bail!("--target-sparsity {t}: expected a fraction like 0.6 or 60%"),
            })
            .collect::<anyhow::Result<Vec<f64>>>()?,
        SparsityBudget::Bpw => match (args.target_bpw, &args.target_size) {
            (Some(b), None) => vec![b],
            _ => bail!("--format dense takes its budget as --target-bpw B (bits per weight of the block linears' payload)"),
        },
    };
    let with = match budget {
        SparsityBudget::Sparsity => "--target-sparsity",
        SparsityBudget::Bpw => "--format dense",
    };
    for (set, flag) in [
        (
            budget == SparsityBudget::Sparsity && args.format.is_some(),
            "--format",
        ),
        (args.db.is_some(), "--db"),
        (args.resume, "--resume"),
        (args.baselines_dir.is_some(), "--baselines-dir"),
        (args.emit_llama_quantize_args, "--emit-llama-quantize-args"),
    ] {
        if set {
            bail!("{flag} does not apply to {with} (its output is a Hugging Face directory)");
        }
    }
    let parse = |s: &str| {
        s.parse::<ParamLevel>()
            .map_err(|e| anyhow::anyhow!("--levels {s} (with {with}): {e}"))
    };
    let levels: Vec<ParamLevel> = match (args.levels.is_empty(), budget) {
        (true, SparsityBudget::Sparsity) => tersor_compress::sparsity::DEFAULT_LEVELS
            .iter()
            .map(|&s| ParamLevel::Sparse(s))
            .collect(),
        (true, SparsityBudget::Bpw) => DENSE_LEVELS
            .split(',')
            .map(parse)
            .collect::<anyhow::Result<Vec<_>>>()?,
        (false, _) => args
            .levels
            .iter()
            .map(|s| parse(s))
            .collect::<anyhow::Result<Vec<_>>>()?,
    };
    let (calib, eval) = texts(args.calib.as_ref(), args.eval.as_ref(), args.eval_chunks)?;
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "model".into());
    let name = |t: f64| match budget {
        SparsityBudget::Sparsity => {
            PathBuf::from(format!("{stem}.tersor-sparse{}", (t * 100.0).round()))
        }
        SparsityBudget::Bpw => PathBuf::from(format!("{stem}.tersor-dense{t}bpw")),
    };
    let targets: Vec<(f64, Option<PathBuf>)> = match (&args.output, fractions.as_slice()) {
        (Some(o), [t]) => vec![(*t, Some(o.clone()))],
        (Some(dir), ts) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            ts.iter().map(|&t| (t, Some(dir.join(name(t))))).collect()
        }
        (None, ts) => ts.iter().map(|&t| (t, Some(name(t)))).collect(),
    };
    let opts = SparsityOptions {
        input: model.to_path_buf(),
        targets,
        levels,
        budget,
        db_inputs: args.db_inputs.unwrap_or(match budget {
            SparsityBudget::Sparsity => DbInputs::Reference,
            SparsityBudget::Bpw => DbInputs::Sequential,
        }),
        calib: CalibConfig {
            path: calib,
            max_tokens: args.calib_tokens,
            ctx: args.ctx,
        },
        sparsegpt: Default::default(),
        search: search_options(args),
        eval,
        dtype: FloatDtype::F16,
    };
    let (bar, progress) = progress_bar(args.quiet);
    let report = tersor_compress::sparsity::run(&opts, &progress)
        .with_context(|| format!("cannot compress {}", opts.input.display()))?;
    bar.finish_and_clear();
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(p) = &args.report {
        tersor_levels::atomic_write(p, json.as_bytes())
            .with_context(|| format!("cannot write the report {}", p.display()))?;
    }
    if args.json {
        println!("{json}");
        return Ok(());
    }
    println!(
        "{}: {} block-linear weights, levels {}; fitness on {:?} calibration tokens per stage",
        report.input.display(),
        report.linear_params,
        report
            .levels
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join(","),
        report.fitness_tokens
    );
    for t in &report.targets {
        println!();
        if let Some(o) = &t.output {
            println!("wrote {}", o.display());
        }
        match t.zeros_required {
            Some(z) => println!(
                "  target sparsity {:.4} ({z} zeros); EvoPress: {} generations",
                t.target,
                t.curve.len()
            ),
            None => println!(
                "  target {:.4} bits per weight of the block linears ({} bits); EvoPress: {} generations",
                t.target,
                t.budget_units,
                t.curve.len()
            ),
        }
        println!(
            "  {:<16} {:>10} {:>8} {:>9} {:>12} {:>10} {:>10}",
            "method", "sparsity", "bpw", "factored", "calib KL", "PPL", "KL"
        );
        for m in &t.methods {
            let (ppl, kl) = eval_cells(m.eval.as_ref());
            println!(
                "  {:<16} {:>10.4} {:>8.4} {:>9} {:>12.5} {:>10} {:>10}",
                m.name, m.sparsity, m.bpw, m.factored, m.fitness, ppl, kl
            );
        }
    }
    Ok(())
}

/// The progress bar of a compress run and the callback that drives it.
fn progress_bar(quiet: bool) -> (ProgressBar, impl Fn(Event) + Sync) {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg} (eta {eta})",
        )
        .expect("valid progress template"),
    );
    let b = bar.clone();
    let progress = move |e: Event| match e {
        Event::Note(n) => {
            if !quiet {
                b.suspend(|| eprintln!("note: {n}"));
            }
        }
        Event::BuildStart { levels, .. } => {
            b.set_length(levels as u64);
            b.set_position(0);
            b.set_message("building levels");
        }
        Event::BuildLevel { done, tensor, .. } => {
            b.set_position(done as u64);
            b.set_message(format!("levels: {tensor}"));
        }
        Event::UnitKl { done, total } => {
            b.set_length(total as u64);
            b.set_position(done as u64);
            b.set_message("per-tensor KL (DP baseline)");
        }
        Event::Baseline { name, fitness } => {
            if !quiet {
                b.suspend(|| eprintln!("baseline {name}: calibration KL {fitness:.5}"));
            }
        }
        Event::Generation {
            done,
            total,
            fitness,
        } => {
            b.set_length(total as u64);
            b.set_position(done as u64);
            b.set_message(format!("EvoPress, calibration KL {fitness:.5}"));
        }
        Event::Eval { name } => b.set_message(format!("evaluating {name}")),
        Event::Writing { path } => b.set_message(format!("writing {}", path.display())),
    };
    (bar, progress)
}

/// The perplexity and mean KL cells of a summary row (`-` without an evaluation).
pub fn eval_cells(e: Option<&tersor_compress::EvalFigures>) -> (String, String) {
    e.map_or(("-".into(), "-".into()), |e| {
        (format!("{:.3}", e.perplexity), format!("{:.5}", e.kld_mean))
    })
}

fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let (num, mult) = [
        ("GiB", 1u64 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("G", 1_000_000_000),
        ("M", 1_000_000),
        ("K", 1_000),
        ("B", 1),
    ]
    .iter()
    .find_map(|(suf, m)| t.strip_suffix(suf).map(|n| (n.trim(), *m)))
    .unwrap_or((t, 1));
    let v: f64 = num
        .parse()
        .with_context(|| format!("--target-size {s}: expected a size like 60M or 62914560"))?;
    if !(v.is_finite() && v > 0.0) {
        bail!("--target-size {s}: expected a positive size");
    }
    Ok((v * mult as f64).floor() as u64)
}

pub fn run(args: Box<CompressArgs>) -> anyhow::Result<()> {
    let model = crate::model_or_default(args.model.clone())?;
    if !args.target_sparsity.is_empty() {
        return run_sparsity(&args, &model, SparsityBudget::Sparsity);
    }
    let format = match args.format.as_deref().unwrap_or("gguf") {
        "gguf" => Format::Gguf,
        "gptq" => Format::Gptq,
        "dense" => return run_sparsity(&args, &model, SparsityBudget::Bpw),
        f => bail!("--format {f}: expected gguf, gptq or dense"),
    };
    let budget = match (&args.target_size, args.target_bpw) {
        (Some(s), _) => Budget::Bytes(parse_size(s)?),
        (None, Some(b)) => Budget::Bpw(b),
        (None, None) => Budget::Bpw(if format == Format::Gguf { 5.25 } else { 3.0 }),
    };
    let method: MethodSpec = args.method.parse()?;
    if method.awq {
        bail!(
            "--method {}: AWQ is not available as a level builder yet (gptq, imatrix or rtn)",
            args.method
        );
    }
    let levels = if args.levels.is_empty() {
        None
    } else {
        Some(
            args.levels
                .iter()
                .map(|s| s.trim().parse::<LevelKind>().map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<_>>>()?,
        )
    };
    let (calib, eval) = texts(args.calib.as_ref(), args.eval.as_ref(), args.eval_chunks)?;
    let db_inputs = args
        .db_inputs
        .unwrap_or_else(|| DbInputs::default_for(format));
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| tersor_compress::output::default_output(&model, format, &budget));
    let opts = CompressOptions {
        input: model.to_path_buf(),
        output,
        format,
        budget,
        calib: CalibConfig {
            path: calib,
            max_tokens: args.calib_tokens,
            ctx: args.ctx,
        },
        levels,
        method: method.base,
        gptq: Default::default(),
        db_inputs,
        db: args.db.clone(),
        search: search_options(&args),
        resume: args.resume,
        baselines_dir: args.baselines_dir.clone(),
        eval,
    };
    if let Some(d) = &opts.baselines_dir {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }

    let (bar, progress) = progress_bar(args.quiet);
    let report = tersor_compress::run(&opts, &progress)
        .with_context(|| format!("cannot compress {}", opts.input.display()))?;
    bar.finish_and_clear();

    if let Some(p) = &args.report {
        let text = serde_json::to_string_pretty(&report)?;
        tersor_levels::atomic_write(p, text.as_bytes())
            .with_context(|| format!("cannot write the report {}", p.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("wrote {}", report.output.display());
    println!(
        "  budget {} bytes ({:.4} bpw {}), database {}",
        report.budget_bytes,
        report.budget_bytes as f64 * 8.0 / report.bpw_params as f64,
        if format == Format::Gguf {
            "whole file"
        } else {
            "block linears"
        },
        report.db.display()
    );
    println!(
        "  EvoPress: {} generations from {}, fitness on {:?} calibration tokens per stage",
        report.curve.len(),
        report.evopress_start,
        report.fitness_tokens
    );
    println!();
    println!(
        "  {:<12} {:>12} {:>8} {:>12} {:>10} {:>10}",
        "method", "bytes", "bpw", "calib KL", "PPL", "KL"
    );
    for m in &report.methods {
        let (ppl, kl) = eval_cells(m.eval.as_ref());
        println!(
            "  {:<12} {:>12} {:>8.4} {:>12.5} {:>10} {:>10}",
            m.name, m.bytes, m.bpw, m.fitness, ppl, kl
        );
    }
    if args.emit_llama_quantize_args {
        if let Some(a) = &report.llama_quantize_args {
            println!();
            println!("llama-quantize arguments for the same tensor types:");
            println!("  {}", a.join(" "));
        }
    }
    Ok(())
}
