//! `tersor compress`: the per-layer allocation that loses the least at a size budget
//! (EvoPress), with the baselines it must beat.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tersor_compress::{Budget, CompressOptions, Event, Format, SearchOptions, UnitErrors};
use tersor_levels::LevelKind;
use tersor_quantize::{CalibConfig, MethodSpec};

#[derive(Debug, Args)]
pub struct CompressArgs {
    /// Model: a GGUF file or a Hugging Face directory (default: the default LM).
    #[arg(value_name = "MODEL")]
    model: Option<PathBuf>,

    /// Output family: gguf (the budget is the whole file) or gptq (a GPTQ checkpoint
    /// directory; the budget counts the blocks' linear layers).
    #[arg(long, default_value = "gguf", value_name = "FORMAT")]
    format: String,

    /// Budget in bits per weight (default 5.25 for gguf, 3.0 for gptq).
    #[arg(long, value_name = "B", conflicts_with = "target_size")]
    target_bpw: Option<f64>,

    /// Budget in bytes (suffixes K, M, G = 1000^n; KiB, MiB, GiB = 1024^n).
    #[arg(long, value_name = "S")]
    target_size: Option<String>,

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
    /// Q2_K..Q6_K,Q8_0 on 256-multiple rows; gptq: gptq:{2,3,4,8}:g{32,64,128}).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    levels: Vec<String>,

    /// How levels are built: gptq | imatrix | rtn.
    #[arg(long, default_value = "gptq", value_name = "METHOD")]
    method: String,

    /// Level database directory (default: OUT.levels).
    #[arg(long, value_name = "DIR")]
    db: Option<PathBuf>,

    /// EvoPress generations.
    #[arg(long, default_value_t = 10, value_name = "N")]
    generations: usize,

    /// Offspring per generation.
    #[arg(long, default_value_t = 8, value_name = "N")]
    offspring: usize,

    /// Calibration windows per selection stage, comma-separated (increasing). The
    /// last stage always scores the first windows; smaller stages rotate through them
    /// from one generation to the next.
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

    /// Random assignments tried by the best-of-N baseline.
    #[arg(long, default_value_t = 16, value_name = "N")]
    random_samples: usize,

    #[arg(long, default_value_t = 0, value_name = "S")]
    seed: u64,

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
    let format = match args.format.as_str() {
        "gguf" => Format::Gguf,
        "gptq" => Format::Gptq,
        f => bail!("--format {f}: expected gguf or gptq"),
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
    let calib = match &args.calib {
        Some(p) => p.clone(),
        None => {
            tersor_assets::botchan_calib().context("cannot obtain the default calibration text")?
        }
    };
    let eval = if args.eval_chunks == 0 {
        None
    } else {
        let p = match &args.eval {
            Some(p) => p.clone(),
            None => tersor_assets::botchan_eval()
                .context("cannot obtain the default evaluation text")?,
        };
        Some((p, args.eval_chunks))
    };
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
        db: args.db.clone(),
        search: SearchOptions {
            generations: args.generations,
            offspring: args.offspring,
            stage_windows: args.stage_windows.clone(),
            survivors: args.survivors.clone(),
            max_switches: 3,
            seed: args.seed,
            random_samples: args.random_samples,
            batch: 1,
            kl_top_k: args.kl_top_k,
            unit_errors: args.unit_errors,
            guided: !args.unguided,
        },
        resume: args.resume,
        baselines_dir: args.baselines_dir.clone(),
        eval,
    };
    if let Some(d) = &opts.baselines_dir {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }

    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if args.quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg} (eta {eta})",
        )
        .expect("valid progress template"),
    );
    let quiet = args.quiet;
    let progress = |e: Event| match e {
        Event::Note(n) => {
            if !quiet {
                bar.suspend(|| eprintln!("note: {n}"));
            }
        }
        Event::BuildStart { levels, .. } => {
            bar.set_length(levels as u64);
            bar.set_position(0);
            bar.set_message("building levels");
        }
        Event::BuildLevel { done, tensor, .. } => {
            bar.set_position(done as u64);
            bar.set_message(format!("levels: {tensor}"));
        }
        Event::UnitKl { done, total } => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message("per-tensor KL (DP baseline)");
        }
        Event::Baseline { name, fitness } => {
            if !quiet {
                bar.suspend(|| eprintln!("baseline {name}: calibration KL {fitness:.5}"));
            }
        }
        Event::Generation {
            done,
            total,
            fitness,
        } => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(format!("EvoPress, calibration KL {fitness:.5}"));
        }
        Event::Eval { name } => bar.set_message(format!("evaluating {name}")),
        Event::Writing { path } => bar.set_message(format!("writing {}", path.display())),
    };
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
        let (ppl, kl) = m
            .eval
            .as_ref()
            .map_or(("-".to_string(), "-".to_string()), |e| {
                (format!("{:.3}", e.perplexity), format!("{:.5}", e.kld_mean))
            });
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
