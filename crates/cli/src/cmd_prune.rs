//! `tersor prune`: remove weights (magnitude, Wanda, SparseGPT; unstructured or N:M) and
//! write a dense Hugging Face directory, or a GGUF file for a GGUF input.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use tersor_quantize::prune::{Pattern, PruneMethod, PruneOptions, PruneReport};
use tersor_quantize::CalibConfig;

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Model to prune: a GGUF file or a Hugging Face directory (default: the default
    /// LM, fetched on first use).
    #[arg(value_name = "MODEL")]
    model: Option<PathBuf>,

    /// Fraction of every block linear's weights to remove: 0.6 or 60%.
    #[arg(long, value_name = "S")]
    sparsity: Option<String>,

    /// Structured pattern N:M instead: at most N nonzeros in every M inputs (2:4, 4:8).
    #[arg(long, value_name = "N:M")]
    pattern: Option<String>,

    /// magnitude | magnitude-global | wanda | sparsegpt.
    #[arg(long, default_value = "sparsegpt", value_name = "METHOD")]
    method: String,

    /// Calibration text for wanda and sparsegpt (default: the calibration split of
    /// Botchan).
    #[arg(long, value_name = "FILE")]
    calib: Option<PathBuf>,

    /// Use at most N calibration tokens (whole windows).
    #[arg(long, default_value_t = 16384, value_name = "N")]
    calib_tokens: usize,

    /// Calibration window length in tokens.
    #[arg(long, default_value_t = 512, value_name = "N")]
    ctx: usize,

    /// SparseGPT: dampening, as a fraction of the mean Hessian diagonal.
    #[arg(long, default_value_t = 0.01, value_name = "F")]
    damp: f64,

    /// SparseGPT: columns per mask-selection block.
    #[arg(long, default_value_t = 128, value_name = "N")]
    block_size: usize,

    /// Storage type of the written tensors: f16, bf16 or f32.
    #[arg(long, default_value = "f16", value_name = "TYPE")]
    dtype: String,

    /// SparseGPT jointly with GPTQ-grid quantization of the kept weights
    /// (gptq:BITS[:gN|:pc][:asym], e.g. gptq:4:g128). The directory holds the decoded
    /// values (exact in f16); the summary costs the kept values at BITS bits.
    #[arg(long, value_name = "SPEC")]
    quantize: Option<String>,

    /// Output directory (Hugging Face layout: config.json, model.safetensors, tokenizer),
    /// or OUT.gguf for a GGUF input: its header and tokenizer, the block linears as
    /// --dtype with their zeros, every other tensor copied unchanged.
    #[arg(long, short = 'o', value_name = "DIR|OUT.gguf")]
    output: PathBuf,

    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,

    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(args: PruneArgs) -> anyhow::Result<()> {
    let pattern: Pattern = match (&args.sparsity, &args.pattern) {
        (Some(s), None) => {
            let p: Pattern = s.parse()?;
            if !matches!(p, Pattern::Unstructured(_)) {
                bail!("--sparsity takes a fraction (0.6 or 60%); use --pattern for N:M");
            }
            p
        }
        (None, Some(s)) => {
            let p: Pattern = s.parse()?;
            if !matches!(p, Pattern::NM { .. }) {
                bail!("--pattern takes N:M (e.g. 2:4); use --sparsity for a fraction");
            }
            p
        }
        (Some(_), Some(_)) => bail!("give either --sparsity or --pattern, not both"),
        (None, None) => bail!("give --sparsity S (e.g. 0.5) or --pattern N:M (e.g. 2:4)"),
    };
    let method: PruneMethod = args.method.parse()?;
    let dtype = crate::block_job::parse_dtype(&args.dtype)?;
    let model = crate::model_or_default(args.model.clone())?;
    let calib_path = match &args.calib {
        Some(p) => p.clone(),
        None if method.calibrates() => {
            tersor_assets::botchan_calib().context("cannot obtain the default calibration text")?
        }
        None => PathBuf::new(),
    };
    let mut opts = PruneOptions::new(
        model.to_path_buf(),
        args.output.clone(),
        pattern,
        method,
        CalibConfig {
            path: calib_path,
            max_tokens: args.calib_tokens,
            ctx: args.ctx,
        },
    );
    opts.sparsegpt.damp_percent = args.damp;
    opts.sparsegpt.block_size = args.block_size;
    opts.dtype = dtype;
    opts.quantize = match &args.quantize {
        None => None,
        Some(q) => match q.parse::<tersor_quantize::Target>()? {
            tersor_quantize::Target::Gptq(g) => Some(g),
            other => bail!("--quantize takes a GPTQ spec such as gptq:4:g128, not {other}"),
        },
    };

    let (bar, progress) = crate::block_job::progress(args.quiet);
    let report = tersor_quantize::prune::run(&opts, &progress)
        .with_context(|| format!("cannot prune {}", opts.input.display()))?;
    bar.finish_and_clear();

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let summary = match report {
        PruneReport::Decoder(s) => s,
        PruneReport::Encoder(s) => {
            crate::block_job::print_encoder_summary(&s);
            return Ok(());
        }
    };
    println!("wrote {}", summary.output.display());
    match &summary.quantize {
        Some(q) => println!(
            "  method        {} at {}, kept weights on {q}",
            summary.method, summary.pattern
        ),
        None => println!("  method        {} at {}", summary.method, summary.pattern),
    }
    println!(
        "  block linears {:.4} sparse ({} of {} weights are zero)",
        summary.linear_sparsity, summary.linear_zeros, summary.linear_params
    );
    println!(
        "  size          {} bytes dense; {} bytes with the linears stored sparse ({:.3} bpw)",
        summary.file_bytes,
        summary.sparse_bytes,
        summary.sparse_bytes as f64 * 8.0 / summary.params.max(1) as f64
    );
    if summary.calib_windows > 0 {
        println!(
            "  calibration   {} windows, {} tokens",
            summary.calib_windows, summary.calib_tokens
        );
    }
    println!(
        "  time          {:.1} s load, {:.1} s prune, {:.1} s write",
        summary.seconds_load, summary.seconds_prune, summary.seconds_write
    );
    Ok(())
}
