//! `tersor depth`: which attention / MLP sublayers to drop (EvoPress over drop levels),
//! against dropping the last blocks and a per-sublayer importance ranking.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tersor_compress::depth::{DepthOptions, DepthReport};
use tersor_compress::{Event, SearchOptions};
use tersor_quantize::prune::FloatDtype;
use tersor_quantize::CalibConfig;

#[derive(Debug, Args)]
pub struct DepthArgs {
    /// Model: a GGUF file or a Hugging Face directory (default: the default LM).
    #[arg(value_name = "MODEL")]
    model: Option<PathBuf>,

    /// Remove this many blocks' worth of parameters (any mix of attention and MLP
    /// sublayers).
    #[arg(long, value_name = "N")]
    drop_blocks: usize,

    /// Calibration text (default: the calibration split of Botchan).
    #[arg(long, value_name = "FILE")]
    calib: Option<PathBuf>,

    /// Calibration tokens (whole windows) for the fitness.
    #[arg(long, default_value_t = 8192, value_name = "N")]
    calib_tokens: usize,

    /// Window length in tokens (fitness and evaluation).
    #[arg(long, default_value_t = 512, value_name = "N")]
    ctx: usize,

    /// EvoPress generations.
    #[arg(long, default_value_t = 20, value_name = "N")]
    generations: usize,

    #[command(flatten)]
    selection: crate::cmd_compress::SelectionArgs,

    /// Evaluation text (default: the evaluation split of Botchan).
    #[arg(long, value_name = "FILE")]
    eval: Option<PathBuf>,

    /// Windows of the evaluation text scored (0: no evaluation).
    #[arg(long, default_value_t = 8, value_name = "N")]
    eval_chunks: usize,

    /// Write EvoPress's model to this Hugging Face directory (f16): blocks that lose
    /// both sublayers are left out; a lone dropped sublayer is stored with a zero
    /// output projection.
    #[arg(long, short = 'o', value_name = "DIR")]
    output: Option<PathBuf>,

    /// Write the report as JSON to this file as well.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,

    /// Print the report as JSON instead of a summary.
    #[arg(long)]
    json: bool,

    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(args: DepthArgs) -> anyhow::Result<()> {
    let model = crate::model_or_default(args.model.clone())?;
    let (calib, eval) =
        crate::cmd_compress::texts(args.calib.as_ref(), args.eval.as_ref(), args.eval_chunks)?;
    let opts = DepthOptions {
        input: model.to_path_buf(),
        drop_blocks: args.drop_blocks,
        calib: CalibConfig {
            path: calib,
            max_tokens: args.calib_tokens,
            ctx: args.ctx,
        },
        search: args.selection.apply(SearchOptions {
            generations: args.generations,
            ..SearchOptions::default()
        }),
        eval,
        output: args.output.clone(),
        dtype: FloatDtype::F16,
    };
    let bar =
        ProgressBar::with_draw_target(Some(args.generations as u64), ProgressDrawTarget::stderr());
    if args.quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
            .expect("valid progress template"),
    );
    let quiet = args.quiet;
    let progress = |e: Event| match e {
        Event::Note(n) if !quiet => bar.suspend(|| eprintln!("note: {n}")),
        Event::Baseline { name, fitness } if !quiet => {
            bar.suspend(|| eprintln!("baseline {name}: calibration KL {fitness:.5}"))
        }
        Event::Generation { done, fitness, .. } => {
            bar.set_position(done as u64);
            bar.set_message(format!("EvoPress, calibration KL {fitness:.5}"));
        }
        Event::Eval { name } => bar.set_message(format!("evaluating {name}")),
        _ => {}
    };
    let report = tersor_compress::depth::run(&opts, &progress)
        .with_context(|| format!("depth pruning {}", model.display()))?;
    bar.finish_and_clear();
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(p) = &args.report {
        tersor_levels::atomic_write(p, json.as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print_summary(&report);
    }
    Ok(())
}

fn print_summary(r: &DepthReport) {
    println!(
        "{}: drop {} of {} blocks' worth ({} of {} sublayer parameters)",
        r.input.display(),
        r.drop_blocks,
        r.n_blocks,
        r.params_to_remove,
        r.params_total
    );
    println!(
        "{:<12} {:>9} {:>12} {:>10} {:>9}  dropped",
        "method", "removed", "calib KL", "PPL", "KL"
    );
    for m in &r.methods {
        let (ppl, kl) = crate::cmd_compress::eval_cells(m.eval.as_ref());
        println!(
            "{:<12} {:>9} {:>12.5} {:>10} {:>9}  {}",
            m.name,
            m.params_removed,
            m.fitness,
            ppl,
            kl,
            m.dropped.join(" ")
        );
    }
    if let Some(o) = &r.output {
        println!(
            "wrote {} ({} bytes): evopress with {} block(s) left out{}",
            o.path.display(),
            o.bytes,
            o.blocks_removed.len(),
            if o.sublayers_zeroed.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} lone sublayer(s) stored with a zero output projection",
                    o.sublayers_zeroed.len()
                )
            }
        );
    }
}
