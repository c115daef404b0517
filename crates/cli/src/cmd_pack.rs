//! `tersor pack` / `tersor unpack`: lossless packing of model files
//! (tersor-pack), with per-tensor statistics and an in-memory benchmark.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tersor_pack::{Archive, PackOptions, PackSummary};

#[derive(Debug, Args)]
pub struct PackArgs {
    /// A model file (safetensors, GGUF, anything) or a directory of them.
    #[arg(value_name = "FILE|DIR")]
    input: PathBuf,

    /// The pack file to write (optional with --stats or --bench).
    #[arg(long, short = 'o', value_name = "OUT")]
    output: Option<PathBuf>,

    /// Decode the written file again and check it against the input.
    #[arg(long)]
    verify: bool,

    /// Print per-tensor sizes, ratios and the order-0 entropy bound.
    #[arg(long)]
    stats: bool,

    /// Measure in memory: ratio and compress / decompress speed (best and
    /// median of --runs runs, on --threads threads) of one file.
    #[arg(long, conflicts_with_all = ["output", "verify", "stats"])]
    bench: bool,

    /// Runs per measurement for --bench.
    #[arg(long, default_value_t = 3, requires = "bench", value_name = "N")]
    runs: usize,

    /// Raw bytes per chunk (each chunk decodes on its own).
    #[arg(long, default_value_t = tersor_pack::DEFAULT_CHUNK, value_name = "BYTES")]
    chunk_size: usize,

    /// Entropy-code a byte plane only when that saves at least this share
    /// of it (0 codes every plane that gains at all: smallest, slowest).
    #[arg(long, default_value_t = tersor_pack::DEFAULT_MIN_GAIN, value_name = "SHARE")]
    min_gain: f64,

    /// Code the 4-bit quants of Q4/Q5 GGUF blocks as bytes, not nibbles:
    /// nibbles decode faster on CPUs with AVX-512 VBMI (Zen 4, Ice Lake and
    /// later Xeons) but slower on others (AVX2-only, Arm).
    #[arg(long)]
    no_nibbles: bool,

    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,

    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Args)]
pub struct UnpackArgs {
    /// A pack file written by `tersor pack`.
    #[arg(value_name = "IN")]
    input: PathBuf,

    /// Where to write the file (or directory) it holds.
    #[arg(long, short = 'o', value_name = "OUT")]
    output: PathBuf,

    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,

    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn bar(total: u64, quiet: bool, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{elapsed_precise}}] {{bar:40}} {{bytes}}/{{total_bytes}} ({{bytes_per_sec}})"
        ))
        .expect("valid progress template"),
    );
    bar
}

fn input_bytes(path: &Path) -> anyhow::Result<u64> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for e in std::fs::read_dir(path).with_context(|| format!("cannot read {}", path.display()))? {
        total += input_bytes(&e?.path())?;
    }
    Ok(total)
}

pub fn run_pack(args: PackArgs) -> anyhow::Result<()> {
    if args.bench {
        return bench(&args);
    }
    if args.chunk_size == 0 {
        bail!("--chunk-size must be positive");
    }
    if !(0.0..1.0).contains(&args.min_gain) {
        bail!("--min-gain {} is outside [0, 1)", args.min_gain);
    }
    let output = match (&args.output, args.stats) {
        (Some(o), _) => o.clone(),
        (None, true) => PathBuf::new(),
        (None, false) => bail!("give -o OUT (or --stats to only measure)"),
    };
    let pb = bar(input_bytes(&args.input)?, args.quiet, "pack");
    let tick = |n: u64| pb.inc(n);
    let opts = PackOptions {
        chunk_size: args.chunk_size,
        min_gain: args.min_gain,
        nibbles: !args.no_nibbles,
        progress: Some(&tick),
        ..PackOptions::default()
    };
    let t = Instant::now();
    let summary = if args.output.is_some() {
        tersor_pack::pack_path(&args.input, &output, &opts)?
    } else {
        tersor_pack::pack_to_writer(&args.input, &mut std::io::sink(), &opts)?
    };
    let secs = t.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let verified = if args.verify {
        let archive = Archive::open(&output)?;
        let vb = bar(summary.original_bytes, args.quiet, "verify");
        let tick = |n: u64| vb.inc(n);
        for i in 0..archive.index().members.len() {
            archive.read_member(i, &mut std::io::sink(), Some(&tick))?;
        }
        vb.finish_and_clear();
        true
    } else {
        false
    };
    if args.json {
        let mut v = serde_json::json!({
            "input": args.input,
            "output": args.output,
            "original_bytes": summary.original_bytes,
            "packed_bytes": summary.packed_bytes,
            "ratio": summary.ratio(),
            "seconds": secs,
            "verified": verified,
        });
        if args.stats {
            v["segments"] = serde_json::to_value(&summary.segments)?;
            v["entropy_bytes"] = serde_json::json!(entropy_total(&summary));
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if args.stats {
        print_stats(&summary);
    }
    println!(
        "{} → {}: {} → {} bytes, ratio {:.4}, {:.1} s ({:.0} MB/s){}",
        args.input.display(),
        args.output
            .as_ref()
            .map_or("(not written)".to_string(), |o| o.display().to_string()),
        summary.original_bytes,
        summary.packed_bytes,
        summary.ratio(),
        secs,
        summary.original_bytes as f64 / secs / 1e6,
        if verified { ", verified" } else { "" }
    );
    Ok(())
}

fn entropy_total(s: &PackSummary) -> f64 {
    s.segments.iter().map(|x| x.entropy_bytes).sum()
}

/// Per-layout totals, then the ten tensors that compress least.
fn print_stats(s: &PackSummary) {
    use std::collections::BTreeMap;
    let mut by: BTreeMap<&str, (u64, u64, f64, usize)> = BTreeMap::new();
    for x in &s.segments {
        let e = by.entry(x.layout.as_str()).or_default();
        e.0 += x.raw_bytes;
        e.1 += x.packed_bytes;
        e.2 += x.entropy_bytes;
        e.3 += 1;
    }
    println!(
        "{:<10} {:>8} {:>14} {:>14} {:>8} {:>9}",
        "layout", "segments", "raw bytes", "packed bytes", "ratio", "order-0"
    );
    for (l, (raw, packed, ent, n)) in &by {
        if *l == "container" {
            println!("{:<10} {:>8} {:>14} {:>14}", "container", "", "", packed);
            continue;
        }
        println!(
            "{:<10} {:>8} {:>14} {:>14} {:>8.4} {:>9.4}",
            l,
            n,
            raw,
            packed,
            *packed as f64 / (*raw).max(1) as f64,
            ent / (*raw).max(1) as f64
        );
    }
    println!(
        "{:<10} {:>8} {:>14} {:>14} {:>8.4} {:>9.4}",
        "total",
        s.segments.len() - 1,
        s.original_bytes,
        s.packed_bytes,
        s.ratio(),
        entropy_total(s) / s.original_bytes.max(1) as f64
    );
    let mut worst: Vec<_> = s
        .segments
        .iter()
        .filter(|x| x.raw_bytes >= 4096 && x.layout != "container")
        .collect();
    worst.sort_by(|a, b| {
        let ra = a.packed_bytes as f64 / a.raw_bytes as f64;
        let rb = b.packed_bytes as f64 / b.raw_bytes as f64;
        rb.total_cmp(&ra)
    });
    if !worst.is_empty() {
        println!("\nleast compressible tensors:");
        for x in worst.iter().take(10) {
            println!(
                "  {:<48} {:<8} {:>12} bytes  ratio {:.4}  order-0 {:.4}",
                format!("{}:{}", x.member, x.name),
                x.layout,
                x.raw_bytes,
                x.packed_bytes as f64 / x.raw_bytes as f64,
                x.entropy_bytes / x.raw_bytes as f64
            );
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// In-memory ratio and speed of one file: what bench/pack_table.sh
/// compares with ZipNN and zstd.
fn bench(args: &PackArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.input).with_context(|| {
        format!(
            "cannot read {} (--bench takes one file)",
            args.input.display()
        )
    })?;
    let name = args
        .input
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file");
    let opts = PackOptions {
        chunk_size: args.chunk_size,
        min_gain: args.min_gain,
        nibbles: !args.no_nibbles,
        ..PackOptions::default()
    };
    let (mut ct, mut dt) = (Vec::new(), Vec::new());
    let mut packed = Vec::new();
    for _ in 0..args.runs.max(1) {
        let t = Instant::now();
        packed = tersor_pack::pack_bytes(name, &bytes, &opts).0;
        ct.push(t.elapsed().as_secs_f64());
    }
    // One untimed decode first, as bench/pack_peers.py gives each peer an
    // untimed round trip: on a VM that hands freed memory back to its host
    // (free page reporting), the first touch of a large fresh buffer costs
    // more than decoding into it, and each tool's first run would measure
    // that instead.
    Archive::from_bytes(packed.as_slice(), name)?.member_bytes(0)?;
    let before = vm_events();
    for _ in 0..args.runs.max(1) {
        // Opening checks the footer and index checksums: part of decoding.
        let t = Instant::now();
        let archive = Archive::from_bytes(packed.as_slice(), name)?;
        let out = archive.member_bytes(0)?;
        dt.push(t.elapsed().as_secs_f64());
        if out != bytes {
            bail!("{}: round trip differs", args.input.display());
        }
    }
    // Kernel events during the decode runs (Linux): a slow run that comes with
    // compaction stalls was waiting for huge pages, not decoding.
    let vm: serde_json::Map<String, serde_json::Value> = vm_events()
        .into_iter()
        .map(|(k, v)| {
            let d = v.saturating_sub(before.iter().find(|b| b.0 == k).map_or(0, |b| b.1));
            (k.to_string(), d.into())
        })
        .collect();
    let mb = bytes.len() as f64 / 1e6;
    let v = serde_json::json!({
        "decompress_vm_events": vm,
        "file": args.input,
        "original_bytes": bytes.len(),
        "packed_bytes": packed.len(),
        "ratio": packed.len() as f64 / bytes.len().max(1) as f64,
        // Best of the runs: on a shared machine the fastest run is the one
        // least disturbed by other work; the median shows the spread.
        "compress_mb_s": mb / best(&ct),
        "decompress_mb_s": mb / best(&dt),
        "compress_mb_s_median": mb / median(ct),
        "decompress_mb_s_median": mb / median(dt),
        "runs": args.runs.max(1),
        "threads": rayon::current_num_threads(),
    });
    if args.json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

/// Counters of `/proc/vmstat` that tell page-fault work apart from decoding
/// (empty where there is no such file).
fn vm_events() -> Vec<(&'static str, u64)> {
    const KEYS: [&str; 4] = [
        "compact_stall",
        "thp_fault_alloc",
        "thp_fault_fallback",
        "pgfault",
    ];
    let text = std::fs::read_to_string("/proc/vmstat").unwrap_or_default();
    KEYS.iter()
        .filter_map(|&k| {
            let v = text
                .lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.trim().parse().ok())?;
            Some((k, v))
        })
        .collect()
}

pub fn run_unpack(args: UnpackArgs) -> anyhow::Result<()> {
    let archive = Archive::open(&args.input)?;
    let total: u64 = archive.index().members.iter().map(|m| m.len).sum();
    let pb = bar(total, args.quiet, "unpack");
    let tick = |n: u64| pb.inc(n);
    let t = Instant::now();
    archive.unpack_to(&args.output, Some(&tick))?;
    let secs = t.elapsed().as_secs_f64();
    pb.finish_and_clear();
    if args.json {
        let v = serde_json::json!({
            "input": args.input,
            "output": args.output,
            "files": archive.index().members.len(),
            "bytes": total,
            "seconds": secs,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{} → {}: {} file(s), {} bytes, checksums ok, {:.1} s",
            args.input.display(),
            args.output.display(),
            archive.index().members.len(),
            total,
            secs
        );
    }
    Ok(())
}
