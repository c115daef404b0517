//! GPTQ solver speed on the default LM's layer shapes (576 hidden, 1536 ffn), against the
//! raw faer matmul throughput of this machine.
//!
//! `cargo run --release -p tersor-quant --example gptq_speed`
//!
//! For each `[rows, cols]` layer (4-bit, group 64, block 128; 576 is not a multiple of
//! 128, so the default LM cannot use GPTQ's usual g128) it times `gptq` end to end
//! and `inverse_cholesky_upper` alone (the f64 `Hinv` of the `cols × cols` Hessian), and
//! reports the walk's rate as (lazy + in-block update flops) / (gptq − Hinv time); the
//! walk time also holds the rounding and group fits, so this understates the updates.
//! For reference it times `[rows, cols] × [cols, cols]` matmuls in f32 and f64.

use std::time::{Duration, Instant};

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tersor_quant::gptq::{gptq, hessian_from_activations, inverse_cholesky_upper, GptqConfig};
use tersor_quant::gptq_grid::GptqFormatGrid;

/// Best of `reps` runs (after one warm-up).
fn best_of<T>(reps: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut out = f();
    let mut best = Duration::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        out = f();
        best = best.min(t.elapsed());
    }
    (best, out)
}

/// Flops of GPTQ's update steps: lazy `W[:, i2:] -= Err · Hinv[i1:i2, i2:]` plus the
/// in-block rank-1 updates (2 flops per multiply-add).
fn update_flops(rows: usize, cols: usize, bs: usize) -> f64 {
    let mut f = 0.0;
    for i1 in (0..cols).step_by(bs) {
        let i2 = (i1 + bs).min(cols);
        let count = i2 - i1;
        f += 2.0 * (rows * count * (cols - i2)) as f64;
        f += (rows * count * (count - 1)) as f64; // Σ_j 2·(count − 1 − j)
    }
    f
}

fn main() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let grid = GptqFormatGrid::new(4, 64, false).expect("valid grid");
    let cfg = GptqConfig::default();
    println!(
        "rayon threads: {}; best of 3 runs",
        rayon::current_num_threads()
    );
    println!(
        "{:>11} {:>9} {:>9} {:>10} {:>12} {:>12} {:>12}",
        "layer", "gptq ms", "Hinv ms", "upd GFLOP", "walk GFLOP/s", "f32 mm GF/s", "f64 mm GF/s"
    );
    for (rows, cols) in [(576, 576), (1536, 576), (576, 1536)] {
        let n = 2 * cols;
        let x: Vec<f32> = (0..n * cols)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let h = hessian_from_activations(&x, n, cols);
        let w: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();

        let (t_gptq, out) = best_of(3, || gptq(&w, rows, cols, &h, &grid, &cfg).expect("gptq"));
        let (t_hinv, _) = best_of(3, || inverse_cholesky_upper(&h, cols, 0.01).expect("Hinv"));
        let flops = update_flops(rows, cols, cfg.block_size);
        let t_upd = t_gptq.saturating_sub(t_hinv).as_secs_f64();

        let a32 = Mat::<f32>::from_fn(rows, cols, |i, j| w[i * cols + j]);
        let b32 = Mat::<f32>::from_fn(cols, cols, |i, j| h[i * cols + j] as f32);
        let mut c32 = Mat::<f32>::zeros(rows, cols);
        let (t32, _) = best_of(3, || {
            matmul(c32.as_mut(), Accum::Replace, &a32, &b32, 1.0, Par::rayon(0))
        });
        let a64 = Mat::<f64>::from_fn(rows, cols, |i, j| f64::from(w[i * cols + j]));
        let b64 = Mat::<f64>::from_fn(cols, cols, |i, j| h[i * cols + j]);
        let mut c64 = Mat::<f64>::zeros(rows, cols);
        let (t64, _) = best_of(3, || {
            matmul(c64.as_mut(), Accum::Replace, &a64, &b64, 1.0, Par::rayon(0))
        });
        let mm_flops = 2.0 * (rows * cols * cols) as f64;
        println!(
            "{:>11} {:>9.1} {:>9.1} {:>10.3} {:>12.1} {:>12.1} {:>12.1}",
            format!("{rows}x{cols}"),
            t_gptq.as_secs_f64() * 1e3,
            t_hinv.as_secs_f64() * 1e3,
            flops / 1e9,
            flops / t_upd / 1e9,
            mm_flops / t32.as_secs_f64() / 1e9,
            mm_flops / t64.as_secs_f64() / 1e9,
        );
        assert!(out.loss.is_finite());
    }
}
