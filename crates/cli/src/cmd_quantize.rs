//! `tersor quantize`: quantize a model to a llama.cpp preset / ggml type (GGUF) or to
//! the GPTQ checkpoint format (Hugging Face directory).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tersor_quantize::{CalibConfig, MethodSpec, QuantizeOptions, Report, Target};

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// Model to quantize: a GGUF file or a Hugging Face directory (default: the
    /// default LM, fetched on first use).
    #[arg(value_name = "MODEL")]
    model: Option<PathBuf>,

    /// Target: a llama.cpp preset (Q2_K, Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M, Q6_K, Q4_0,
    /// Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL), a ggml type for every tensor (Q4_K, ...), or a
    /// GPTQ spec gptq:BITS[:gN|:pc][:asym][:act] (e.g. gptq:4:g128, gptq:3:g64:asym).
    #[arg(long = "type", short = 't', value_name = "TYPE")]
    target: String,

    /// rtn | imatrix | gptq | awq+rtn | awq+imatrix | awq+gptq.
    #[arg(long, default_value = "gptq", value_name = "METHOD")]
    method: String,

    /// Calibration text (default: the calibration split of Botchan).
    #[arg(long, value_name = "FILE")]
    calib: Option<PathBuf>,

    /// Use at most N calibration tokens (whole windows).
    #[arg(long, default_value_t = 16384, value_name = "N")]
    calib_tokens: usize,

    /// Calibration window length in tokens.
    #[arg(long, default_value_t = 512, value_name = "N")]
    ctx: usize,

    /// Override a tensor's type: REGEX=TYPE (repeatable; GGUF outputs), e.g.
    /// --tensor-type 'ffn_down=Q6_K'.
    #[arg(long = "tensor-type", value_name = "REGEX=TYPE")]
    tensor_type: Vec<String>,

    /// Use this llama.cpp imatrix file (legacy .dat or GGUF) instead of computing one.
    #[arg(long, value_name = "FILE")]
    imatrix: Option<PathBuf>,

    /// Also write the imatrix computed from the calibration text (llama.cpp .dat).
    #[arg(long, value_name = "FILE")]
    imatrix_out: Option<PathBuf>,

    /// GPTQ: quantize columns in order of decreasing activation energy.
    #[arg(long)]
    act_order: bool,

    /// GPTQ: dampening, as a fraction of the mean Hessian diagonal.
    #[arg(long, default_value_t = 0.01, value_name = "F")]
    damp: f64,

    /// Output: a .gguf file, or a directory for GPTQ specs.
    #[arg(long, short = 'o', value_name = "OUT")]
    output: PathBuf,

    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,

    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(args: QuantizeArgs) -> anyhow::Result<()> {
    let model = crate::model_or_default(args.model.clone())?;
    let target: Target = args.target.parse()?;
    let method: MethodSpec = args.method.parse()?;
    let calib_path = match &args.calib {
        Some(p) => p.clone(),
        None if method.needs_calibration() || args.imatrix_out.is_some() => {
            tersor_assets::botchan_calib().context("cannot obtain the default calibration text")?
        }
        None => PathBuf::new(),
    };
    let mut opts = QuantizeOptions::new(
        model.to_path_buf(),
        args.output.clone(),
        target,
        method,
        CalibConfig {
            path: calib_path,
            max_tokens: args.calib_tokens,
            ctx: args.ctx,
        },
    );
    for s in &args.tensor_type {
        opts.overrides
            .push(tersor_quantize::parse_tensor_override(s)?);
    }
    opts.imatrix_in = args.imatrix.clone();
    opts.imatrix_out = args.imatrix_out.clone();
    opts.gptq.act_order = args.act_order;
    opts.gptq.damp_percent = args.damp;
    if let Target::Gptq(g) = &mut opts.target {
        g.act_order |= args.act_order;
    }

    let (bar, progress) = crate::block_job::progress(args.quiet);
    let report = tersor_quantize::run(&opts, &progress)
        .with_context(|| format!("cannot quantize {}", opts.input.display()))?;
    bar.finish_and_clear();

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let summary = match report {
        Report::Decoder(s) => s,
        Report::Encoder(s) => {
            crate::block_job::print_encoder_summary(&s);
            return Ok(());
        }
    };
    println!("wrote {}", summary.output.display());
    println!("  target        {}", summary.target);
    println!("  method        {}", summary.method);
    println!(
        "  size          {} bytes, {:.3} bpw (file), {:.3} bpw (block linears)",
        summary.file_bytes, summary.bpw_file, summary.bpw_linear
    );
    if summary.calib_windows > 0 {
        println!(
            "  calibration   {} windows, {} tokens",
            summary.calib_windows, summary.calib_tokens
        );
    }
    println!(
        "  time          load {:.1} s, calibrate+quantize {:.1} s, write {:.1} s",
        summary.seconds_load, summary.seconds_calibrate_quantize, summary.seconds_write
    );
    let mut shares: Vec<(String, u64)> = Vec::new();
    for t in &summary.tensors {
        match shares.iter_mut().find(|s| s.0 == t.format) {
            Some(s) => s.1 += t.params,
            None => shares.push((t.format.clone(), t.params)),
        }
    }
    shares.sort_by_key(|s| std::cmp::Reverse(s.1));
    let total: u64 = shares.iter().map(|s| s.1).sum::<u64>().max(1);
    let shares: Vec<String> = shares
        .iter()
        .map(|(f, p)| format!("{f} {:.1}%", 100.0 * *p as f64 / total as f64))
        .collect();
    println!("  tensor types  {}", shares.join(", "));
    Ok(())
}
