//! Forward-pass throughput of the default decoder on one window of botchan_eval.
//!
//! `cargo run --release -p tersor-model --example speed -- [model.gguf] [text] [window]`
//!
//! Prints wall time and, because the machine may be shared, the process CPU time
//! (from /proc/self/stat on Linux) as well.

use std::path::PathBuf;
use std::time::Instant;

/// User + system CPU seconds of this process (Linux), if available.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let assets = std::env::var("TERSOR_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/assets")
        });
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| assets.join("SmolLM2-135M-Instruct.Q4_1.gguf"));
    let text = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| assets.join("botchan_eval.txt"));
    let window: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(512);

    let t0 = Instant::now();
    let tersor_model::LoadedModel::Decoder { model, tokenizer } = tersor_model::load(&model)?
    else {
        return Err("not a decoder".into());
    };
    println!(
        "load: {:.2} s ({})",
        t0.elapsed().as_secs_f64(),
        model.config().arch
    );
    let ids = tokenizer.encode(&std::fs::read_to_string(&text)?, false)?;
    let w = &ids[..window.min(ids.len())];
    let _ = model.forward(&w[..16])?; // warm-up
    for _ in 0..3 {
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let logits = model.forward(w)?;
        let dt = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds().zip(c0).map(|(a, b)| a - b);
        println!(
            "forward {} tokens -> {:?}: {:.3} s wall = {:.0} tokens/s; CPU {}",
            w.len(),
            logits.dims(),
            dt,
            w.len() as f64 / dt,
            cpu.map_or("n/a".into(), |c| format!("{c:.2} s")),
        );
    }
    Ok(())
}
