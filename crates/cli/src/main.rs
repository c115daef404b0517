//! The `tersor` command line. Thin by design: argument parsing, output
//! formatting and error reporting live here; every computation lives in the
//! library crates.

use std::num::NonZeroUsize;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod block_job;
mod cmd_compress;
mod cmd_depth;
mod cmd_eval;
mod cmd_fetch;
mod cmd_inspect;
mod cmd_lowrank;
mod cmd_pack;
mod cmd_prune;
mod cmd_quantize;

/// tersor: compress neural networks (GGUF / safetensors) and measure what
/// the compression costs in quality.
#[derive(Debug, Parser)]
#[command(name = "tersor", version, about, propagate_version = true)]
struct Cli {
    /// Worker threads for all parallel work (default: one per core).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<NonZeroUsize>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Download (or copy) and verify the default assets; print their paths.
    Fetch(cmd_fetch::FetchArgs),
    /// Describe a GGUF or safetensors model: architecture, parameters,
    /// tensors, bits per weight.
    Inspect(cmd_inspect::InspectArgs),
    /// Evaluate a model's quality (perplexity, ...) on the default texts.
    Eval(cmd_eval::EvalArgs),
    /// Quantize a model to llama.cpp's types (GGUF) or the GPTQ format (RTN,
    /// imatrix, GPTQ, AWQ).
    Quantize(cmd_quantize::QuantizeArgs),
    /// Prune a model (magnitude, Wanda, SparseGPT; unstructured or N:M) to a
    /// dense Hugging Face directory.
    Prune(cmd_prune::PruneArgs),
    /// Factor every block linear into two low-rank matrices (SVD or
    /// activation-aware SVD); tersor runs them as two matmuls.
    Lowrank(cmd_lowrank::LowrankArgs),
    /// Find the per-tensor compression that loses the least at a size budget
    /// (EvoPress over a level database), beside uniform, heuristic, DP and random
    /// baselines; with no arguments, the default LM to a 5.25 bpw GGUF.
    Compress(Box<cmd_compress::CompressArgs>),
    /// Depth pruning: which attention / MLP sublayers to drop for a number of
    /// blocks' worth of parameters (EvoPress), against dropping the last blocks.
    Depth(cmd_depth::DepthArgs),
    /// Pack a model file or directory losslessly (byte planes, rANS, zstd;
    /// checksummed, random access by tensor).
    Pack(cmd_pack::PackArgs),
    /// Restore the file or directory a pack file holds, checking every
    /// checksum.
    Unpack(cmd_pack::UnpackArgs),
}

/// Sizes the thread pools before anything can start them: rayon's global
/// pool directly, and candle (whose CPU kernels size themselves from
/// `RAYON_NUM_THREADS`) through the environment.
fn set_threads(n: NonZeroUsize) -> anyhow::Result<()> {
    // Still single-threaded here, so changing the environment is sound.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(n.get())
        .build_global()
        .context("cannot size the thread pool")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(n) = cli.threads {
        set_threads(n)?;
    }
    match cli.command {
        Command::Fetch(args) => cmd_fetch::run(args),
        Command::Inspect(args) => cmd_inspect::run(args),
        Command::Eval(args) => cmd_eval::run(args),
        Command::Quantize(args) => cmd_quantize::run(args),
        Command::Prune(args) => cmd_prune::run(args),
        Command::Lowrank(args) => cmd_lowrank::run(args),
        Command::Compress(args) => cmd_compress::run(args),
        Command::Depth(args) => cmd_depth::run(args),
        Command::Pack(args) => cmd_pack::run_pack(args),
        Command::Unpack(args) => cmd_pack::run_unpack(args),
    }
}

fn main() -> ExitCode {
    restore_sigpipe();
    // Usage errors: clap prints them and exits with code 2 (0 for --help and
    // --version).
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole context chain: "a: b: c".
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Rust ignores SIGPIPE, so `tersor inspect | head` would fail (and
/// `println!` panic) when `head` exits. Restore the default action: the
/// process ends quietly, as any Unix filter does.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in `main`, before any other thread exists;
    // SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The model to work on: the one given, else the default LM (fetched and
/// verified on first use). A `tersor pack` file is unpacked to a temporary
/// folder, removed when the returned value drops, so every command takes
/// packed models directly.
pub(crate) fn model_or_default(model: Option<std::path::PathBuf>) -> anyhow::Result<ModelPath> {
    match model {
        Some(p) => open_model(p),
        None => Ok(ModelPath {
            path: tersor_assets::ensure_default_lm().context("cannot obtain the default model")?,
            _unpacked: None,
        }),
    }
}

/// `path`, unpacked first when it is a pack file.
pub(crate) fn open_model(path: std::path::PathBuf) -> anyhow::Result<ModelPath> {
    let (p, tmp) = tersor_pack::unpack_if_packed(&path)?;
    if tmp.is_some() {
        eprintln!(
            "note: {} is a pack file; unpacked to {}",
            path.display(),
            p.display()
        );
    }
    Ok(ModelPath {
        path: p,
        _unpacked: tmp,
    })
}

/// A model path, and the temporary folder it lives in when it was unpacked.
pub(crate) struct ModelPath {
    path: std::path::PathBuf,
    _unpacked: Option<tempfile::TempDir>,
}

impl std::ops::Deref for ModelPath {
    type Target = std::path::PathBuf;
    fn deref(&self) -> &std::path::PathBuf {
        &self.path
    }
}

impl AsRef<std::path::Path> for ModelPath {
    fn as_ref(&self) -> &std::path::Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
