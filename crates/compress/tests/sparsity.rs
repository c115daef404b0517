//! Non-uniform sparsity on a tiny random model: the budget is met exactly as counted
//! on the weights, uniform puts every linear at the target, EvoPress never ends worse
//! than the baseline it starts from, and the written directory holds the allocation.

use tersor_compress::sparsity::{self, SparsityOptions};
use tersor_compress::SearchOptions;
use tersor_model::{LinearKind, LoadedModel};
use tersor_quantize::prune::FloatDtype;
use tersor_quantize::CalibConfig;
use tersor_testkit::{calib_text, TempDir, TinyLlama};

#[test]
fn sparsity_search_meets_the_target_and_writes_its_allocation() {
    let dir = TempDir::new("sparsity-run");
    let path = dir.path().join("m.gguf");
    TinyLlama {
        hidden: 64,
        ffn: 128,
        layers: 4,
        heads: 4,
        kv_heads: 2,
        tied: true,
        seed: 5,
    }
    .write_gguf(&path);
    let calib = calib_text(dir.path());
    let out = dir.path().join("sparse");
    let opts = SparsityOptions {
        input: path.clone(),
        targets: vec![(0.5, Some(out.clone())), (0.3, None)],
        levels: vec![0.0, 0.25, 0.5, 0.75],
        calib: CalibConfig {
            path: calib.clone(),
            max_tokens: 1024,
            ctx: 128,
        },
        sparsegpt: Default::default(),
        search: SearchOptions {
            generations: 6,
            offspring: 4,
            stage_windows: vec![1, 3],
            survivors: vec![2],
            seed: 2,
            ..SearchOptions::default()
        },
        eval: Some((calib, 2)),
        dtype: FloatDtype::F32,
    };
    let report = sparsity::run(&opts, &|_| {}).unwrap();
    assert_eq!(report.targets.len(), 2);
    let r = &report.targets[0];
    // q, o 64×64; k, v 32×64; gate, up, down 128×64; four blocks.
    let block = 2 * 64 * 64 + 2 * 32 * 64 + 3 * 128 * 64;
    assert_eq!(report.linear_params, 4 * block);
    assert_eq!(r.zeros_required, 2 * block);
    assert_eq!(report.levels, [0.75, 0.5, 0.25, 0.0]);
    let names: Vec<&str> = r.methods.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["evopress", "uniform", "dp"]);
    for m in &r.methods {
        // Zeros are counted on the assembled weights: SparseGPT's exact counts make
        // every allocation remove at least the required weights.
        assert!(m.zeros >= r.zeros_required, "{}: {} zeros", m.name, m.zeros);
        assert!(m.eval.as_ref().unwrap().kld_mean > 0.0, "{}", m.name);
    }
    let uniform = &r.methods[1];
    assert_eq!(uniform.zeros, r.zeros_required);
    assert!(uniform.levels.iter().all(|&s| s == 0.5));
    let start = r.methods[1].fitness.min(r.methods[2].fitness);
    assert!(
        r.methods[0].fitness <= start,
        "EvoPress {} > its start {start}",
        r.methods[0].fitness
    );
    assert_eq!(r.curve.len(), 6);

    // The written directory has EvoPress's sparsity in every linear.
    let LoadedModel::Decoder { model, .. } = tersor_model::load(&out).unwrap() else {
        panic!("not a decoder")
    };
    let evo = &r.methods[0];
    let mut u = 0;
    let mut zeros = 0u64;
    for l in 0..4 {
        for kind in LinearKind::ALL {
            let w = model
                .linear_weight(l, kind)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let z = w.iter().filter(|&&x| x == 0.0).count();
            let want = (evo.levels[u] * w.len() as f64).round() as usize;
            assert_eq!(z, want, "{} (level {})", report.units[u].0, evo.levels[u]);
            zeros += z as u64;
            u += 1;
        }
    }
    assert_eq!(zeros, evo.zeros);

    // 30 % lies between two levels: uniform is the sparser level topped up, and every
    // method still removes at least 30 %.
    let r30 = &report.targets[1];
    assert!(r30.output.is_none());
    for m in &r30.methods {
        assert!(
            m.zeros >= r30.zeros_required,
            "{}: {} zeros",
            m.name,
            m.zeros
        );
    }
    assert!(r30.methods[1].levels.iter().all(|&s| s == 0.25 || s == 0.5));

    // A target the levels cannot bracket is a usage error naming the flag.
    let e = sparsity::run(
        &SparsityOptions {
            targets: vec![(0.9, None)],
            ..opts.clone()
        },
        &|_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--target-sparsity"), "{e}");
}
