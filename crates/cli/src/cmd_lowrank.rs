//! `tersor lowrank`: factor every block linear into two low-rank matrices (SVD or
//! activation-aware SVD) and write a Hugging Face directory holding the factors.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use tersor_quantize::lowrank::{LowrankMethod, LowrankOptions};
use tersor_quantize::CalibConfig;

#[derive(Debug, Args)]
pub struct LowrankArgs {
    /// Model to factor: a GGUF file or a Hugging Face directory (default: the default
    /// LM, fetched on first use).
    #[arg(value_name = "MODEL")]
    model: Option<PathBuf>,

    /// Parameters of each layer's two factors over the layer's own, in (0, 1]: the rank
    /// is the largest with r·(rows + cols) ≤ R·rows·cols.
    #[arg(long, value_name = "R", required_unless_present = "energy")]
    ratio: Option<f64>,

    /// Instead of --ratio: each layer at the smallest rank keeping E of its Σσ² (of W,
    /// or of the whitened W S for asvd), in (0, 1]; layers it would not shrink stay dense.
    #[arg(long, value_name = "E", conflicts_with = "ratio")]
    energy: Option<f64>,

    /// svd | asvd (activation-aware: whitened by the calibration inputs).
    #[arg(long, default_value = "asvd", value_name = "METHOD")]
    method: String,

    /// Calibration text for asvd (default: the calibration split of Botchan).
    #[arg(long, value_name = "FILE")]
    calib: Option<PathBuf>,

    /// Use at most N calibration tokens (whole windows).
    #[arg(long, default_value_t = 16384, value_name = "N")]
    calib_tokens: usize,

    /// Calibration window length in tokens.
    #[arg(long, default_value_t = 512, value_name = "N")]
    ctx: usize,

    /// Storage type of the written tensors: f16, bf16 or f32.
    #[arg(long, default_value = "f16", value_name = "TYPE")]
    dtype: String,

    /// Output directory.
    #[arg(long, short = 'o', value_name = "DIR")]
    output: PathBuf,

    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,

    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(args: LowrankArgs) -> anyhow::Result<()> {
    if let Some(r) = args.ratio.filter(|r| !(*r > 0.0 && *r <= 1.0)) {
        bail!("--ratio {r} is outside (0, 1]");
    }
    if let Some(e) = args.energy.filter(|e| !(*e > 0.0 && *e <= 1.0)) {
        bail!("--energy {e} is outside (0, 1]");
    }
    let method: LowrankMethod = args.method.parse()?;
    let dtype = crate::block_job::parse_dtype(&args.dtype)?;
    let model = crate::model_or_default(args.model.clone())?;
    let calib_path = match &args.calib {
        Some(p) => p.clone(),
        None if method == LowrankMethod::Asvd => {
            tersor_assets::botchan_calib().context("cannot obtain the default calibration text")?
        }
        None => PathBuf::new(),
    };
    let mut opts = LowrankOptions::new(
        model.to_path_buf(),
        args.output.clone(),
        args.ratio.unwrap_or(1.0),
        method,
        CalibConfig {
            path: calib_path,
            max_tokens: args.calib_tokens,
            ctx: args.ctx,
        },
    );
    opts.dtype = dtype;
    opts.energy = args.energy;

    let (bar, progress) = crate::block_job::progress(args.quiet);
    let summary = tersor_quantize::lowrank::run(&opts, &progress)
        .with_context(|| format!("cannot factor {}", opts.input.display()))?;
    bar.finish_and_clear();

    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    let factored = summary.linears.iter().filter(|l| l.rank.is_some()).count();
    println!("wrote {}", summary.output.display());
    match (summary.ratio, summary.energy) {
        (_, Some(e)) => println!(
            "  method        {} keeping {e} of each layer's energy",
            summary.method
        ),
        (r, None) => println!(
            "  method        {} at ratio {}",
            summary.method,
            r.unwrap_or(1.0)
        ),
    }
    println!(
        "  block linears {factored} of {} factored; {} of {} parameters ({:.3})",
        summary.linears.len(),
        summary.linear_params,
        summary.dense_linear_params,
        summary.linear_params as f64 / summary.dense_linear_params.max(1) as f64
    );
    println!(
        "  size          {} bytes; {} of {} model parameters",
        summary.file_bytes, summary.params, summary.dense_params
    );
    println!(
        "  time          {:.1} s load, {:.1} s factor, {:.1} s write",
        summary.seconds_load, summary.seconds_factor, summary.seconds_write
    );
    Ok(())
}
