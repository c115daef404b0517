//! What the layer-by-layer commands (`quantize`, `prune`, `lowrank`) share: the progress
//! bar over blocks and the `--dtype` option.

use std::io::IsTerminal;

use anyhow::bail;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tersor_quantize::prune::FloatDtype;
use tersor_quantize::Event;

/// A progress bar over the model's blocks (hidden when `quiet` or stderr is not a
/// terminal) and the callback that drives it; notes go to stderr unless `quiet`.
pub fn progress(quiet: bool) -> (ProgressBar, impl Fn(Event) + Sync) {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} blocks {msg} (eta {eta})",
        )
        .expect("valid progress template"),
    );
    let b = bar.clone();
    let callback = move |e: Event| match e {
        Event::Planned { layers, .. } => b.set_length(layers as u64),
        Event::Calibrated { windows, tokens } => {
            b.set_message(format!("calibration: {windows} windows, {tokens} tokens"))
        }
        Event::Layer { index, .. } => b.set_position(index as u64 + 1),
        Event::Writing => b.set_message("writing"),
        Event::Note(n) => {
            if !quiet {
                b.suspend(|| eprintln!("note: {n}"));
            }
        }
    };
    (bar, callback)
}

/// `--dtype f16|bf16|f32`.
pub fn parse_dtype(s: &str) -> anyhow::Result<FloatDtype> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "f16" => FloatDtype::F16,
        "bf16" => FloatDtype::BF16,
        "f32" => FloatDtype::F32,
        other => bail!("unknown --dtype {other:?} (f16, bf16 or f32)"),
    })
}

/// The summary of a sentence-encoder run (`tersor prune` / `quantize` on an encoder).
pub fn print_encoder_summary(s: &tersor_quantize::encoder::EncoderSummary) {
    println!("wrote {}", s.output.display());
    println!("  encoder       {}", s.op);
    println!(
        "  linears       {:.4} sparse ({} of {} weights are zero)",
        s.linear_sparsity, s.linear_zeros, s.linear_params
    );
    match s.bpw_linear {
        Some(b) => println!(
            "  size          {} bytes (dequantized weights); {b:.3} bpw in the GPTQ format",
            s.file_bytes
        ),
        None => println!("  size          {} bytes (dense)", s.file_bytes),
    }
    if s.calib_sentences > 0 {
        println!(
            "  calibration   {} sentences, {} tokens",
            s.calib_sentences, s.calib_tokens
        );
    }
    println!("  time          {:.1} s", s.seconds);
}
