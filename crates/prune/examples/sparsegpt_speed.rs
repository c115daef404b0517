//! SparseGPT's time per layer against GPTQ's on the same layer and Hessian (the default
//! LM's shapes: 576 hidden, 1536 ffn), with Wanda and magnitude pruning for scale.
//!
//! `cargo run --release -p tersor-prune --example sparsegpt_speed`
//!
//! Both solvers factor the same `cols × cols` inverse Hessian and walk the columns in
//! blocks of 128 with lazy updates; SparseGPT adds the per-block mask selection and
//! skips the update for kept weights, GPTQ adds the group fits and rounding. Times are
//! the best of 3 runs after a warm-up; the ratio column is SparseGPT / GPTQ.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tersor_prune::sparsegpt::{sparsegpt, SparseGptConfig};
use tersor_prune::{magnitude, wanda, Pattern};
use tersor_quant::gptq::{gptq, hessian_from_activations, GptqConfig};
use tersor_quant::gptq_grid::GptqFormatGrid;

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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let grid = GptqFormatGrid::new(4, 64, false).expect("valid grid");
    println!(
        "rayon threads: {}; best of 3 runs",
        rayon::current_num_threads()
    );
    println!(
        "{:>11} {:>10} {:>14} {:>14} {:>9} {:>9} {:>13} {:>13}",
        "layer",
        "gptq ms",
        "sparsegpt50 ms",
        "sparsegpt24 ms",
        "wanda ms",
        "magn. ms",
        "ratio 50%/gptq",
        "ratio 2:4/gptq"
    );
    for (rows, cols) in [(576, 576), (1536, 576), (576, 1536)] {
        let n = 2 * cols;
        let x: Vec<f32> = (0..n * cols)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let h = hessian_from_activations(&x, n, cols);
        let w: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-0.1f32..0.1))
            .collect();
        let (tg, _) = best_of(3, || {
            gptq(&w, rows, cols, &h, &grid, &GptqConfig::default()).expect("gptq")
        });
        let cfg = SparseGptConfig::default();
        let (t50, _) = best_of(3, || {
            sparsegpt(&w, rows, cols, &h, Pattern::Unstructured(0.5), &cfg).expect("sparsegpt")
        });
        let (t24, _) = best_of(3, || {
            sparsegpt(&w, rows, cols, &h, Pattern::NM { n: 2, m: 4 }, &cfg).expect("sparsegpt")
        });
        let norms = wanda::column_norms(&h, cols).expect("norms");
        let (tw, _) = best_of(3, || {
            wanda::wanda(&w, rows, cols, &norms, Pattern::Unstructured(0.5)).expect("wanda")
        });
        let (tm, _) = best_of(3, || {
            magnitude::magnitude(&w, rows, cols, Pattern::Unstructured(0.5)).expect("magnitude")
        });
        println!(
            "{:>11} {:>10.1} {:>14.1} {:>14.1} {:>9.1} {:>9.1} {:>13.2} {:>13.2}",
            format!("{rows}x{cols}"),
            ms(tg),
            ms(t50),
            ms(t24),
            ms(tw),
            ms(tm),
            ms(t50) / ms(tg),
            ms(t24) / ms(tg)
        );
    }
}
