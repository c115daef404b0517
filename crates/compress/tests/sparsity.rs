//! Non-uniform sparsity on a tiny random model: the budget is met exactly as counted
//! on the weights, uniform puts every linear at the target, EvoPress never ends worse
//! than the baseline it starts from, and the written directory holds the allocation.

use tersor_compress::sparsity::{self, Budget, ParamLevel, SparsityOptions};
use tersor_compress::SearchOptions;
use tersor_model::{LinearKind, LoadedModel};
use tersor_quantize::prune::FloatDtype;
use tersor_quantize::CalibConfig;
use tersor_testkit::{calib_text, TempDir, TinyLlama};

fn sp(v: &[f64]) -> Vec<ParamLevel> {
    v.iter().map(|&x| ParamLevel::Sparse(x)).collect()
}

fn parse(levels: &[&str]) -> Vec<ParamLevel> {
    levels.iter().map(|s| s.parse().unwrap()).collect()
}

/// A tiny model of `layers` blocks (q, o 64×64; k, v 32×64; gate, up, down 128×64)
/// written to `dir`, and search options over `levels` with `generations` and `seed`
/// (calibration and evaluation on the test text; `eval`: score two windows).
fn setup(
    dir: &TempDir,
    layers: usize,
    model_seed: u64,
    targets: Vec<(f64, Option<std::path::PathBuf>)>,
    levels: Vec<ParamLevel>,
    (generations, seed): (usize, u64),
    eval: bool,
) -> SparsityOptions {
    let path = dir.path().join("m.gguf");
    TinyLlama {
        hidden: 64,
        ffn: 128,
        layers,
        heads: 4,
        kv_heads: 2,
        tied: true,
        seed: model_seed,
    }
    .write_gguf(&path);
    let calib = calib_text(dir.path());
    SparsityOptions {
        input: path,
        targets,
        levels,
        budget: Budget::Sparsity,
        db_inputs: tersor_compress::DbInputs::Reference,
        calib: CalibConfig {
            path: calib.clone(),
            max_tokens: 1024,
            ctx: 128,
        },
        sparsegpt: Default::default(),
        search: SearchOptions {
            generations,
            offspring: 4,
            stage_windows: vec![1, 3],
            survivors: vec![2],
            seed,
            ..SearchOptions::default()
        },
        eval: eval.then_some((calib, 2)),
        dtype: FloatDtype::F32,
    }
}

/// Mean KL of `model` against the model at `reference` on the first two windows of 128
/// tokens of `text` (the setup's evaluation).
fn kl_on_two_windows(
    model: &tersor_model::Llama,
    reference: &std::path::Path,
    text: &std::path::Path,
) -> f64 {
    let LoadedModel::Decoder {
        model: reference,
        tokenizer,
    } = tersor_model::load(reference).unwrap()
    else {
        panic!("not a decoder")
    };
    let r = tersor_eval::perplexity(
        tersor_eval::Lm {
            model,
            tokenizer: &tokenizer,
        },
        Some(tersor_eval::Lm {
            model: &reference,
            tokenizer: &tokenizer,
        }),
        &std::fs::read_to_string(text).unwrap(),
        &tersor_eval::PerplexityConfig {
            ctx: 128,
            max_windows: Some(2),
            ..Default::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    r.kl.unwrap().kld_mean
}

/// The decoder a search wrote.
fn load_decoder(path: &std::path::Path) -> tersor_model::Llama {
    let LoadedModel::Decoder { model, .. } = tersor_model::load(path).unwrap() else {
        panic!("{}: not a decoder", path.display())
    };
    model
}

/// A written model scores on the evaluation text as the search scored its allocation.
fn assert_scores_as_searched(
    model: &tersor_model::Llama,
    reference: &std::path::Path,
    text: &std::path::Path,
    method: &sparsity::SparsityMethod,
) {
    let written = kl_on_two_windows(model, reference, text);
    let want = method.eval.as_ref().unwrap().kld_mean;
    assert!(
        (written - want).abs() <= 1e-4 * want,
        "{}: written {written} vs searched {want}",
        method.name
    );
}

/// Zeros are counted on the assembled weights: SparseGPT's exact counts make every
/// allocation remove at least the required weights.
fn assert_every_method_meets_the_budget(r: &sparsity::TargetReport) {
    for m in &r.methods {
        assert!(
            m.zeros >= r.zeros_required.unwrap(),
            "{}: {} zeros",
            m.name,
            m.zeros
        );
    }
}

#[test]
fn sparsity_search_meets_the_target_and_writes_its_allocation() {
    let dir = TempDir::new("sparsity-run");
    let out = dir.path().join("sparse");
    let opts = setup(
        &dir,
        4,
        5,
        vec![(0.5, Some(out.clone())), (0.3, None)],
        sp(&[0.0, 0.25, 0.5, 0.75]),
        (6, 2),
        true,
    );
    let report = sparsity::run(&opts, &|_| {}).unwrap();
    assert_eq!(report.targets.len(), 2);
    let r = &report.targets[0];
    // q, o 64×64; k, v 32×64; gate, up, down 128×64; four blocks.
    let block = 2 * 64 * 64 + 2 * 32 * 64 + 3 * 128 * 64;
    assert_eq!(report.linear_params, 4 * block);
    assert_eq!(r.zeros_required.unwrap(), 2 * block);
    assert_eq!(report.levels, sp(&[0.75, 0.5, 0.25, 0.0]));
    let names: Vec<&str> = r.methods.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["evopress", "uniform", "dp"]);
    assert_every_method_meets_the_budget(r);
    for m in &r.methods {
        assert!(m.eval.as_ref().unwrap().kld_mean > 0.0, "{}", m.name);
    }
    let uniform = &r.methods[1];
    assert_eq!(uniform.zeros, r.zeros_required.unwrap());
    assert!(uniform.levels.iter().all(|&s| s == ParamLevel::Sparse(0.5)));
    let start = r.methods[1].fitness.min(r.methods[2].fitness);
    assert!(
        r.methods[0].fitness <= start,
        "EvoPress {} > its start {start}",
        r.methods[0].fitness
    );
    assert_eq!(r.curve.len(), 6);

    // The written directory has EvoPress's sparsity in every linear.
    let model = load_decoder(&out);
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
            let ParamLevel::Sparse(s) = evo.levels[u] else {
                panic!("a sparsity ladder gave {}", evo.levels[u])
            };
            let want = (s * w.len() as f64).round() as usize;
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
    assert_every_method_meets_the_budget(r30);
    assert!(r30.methods[1]
        .levels
        .iter()
        .all(|&s| s == ParamLevel::Sparse(0.25) || s == ParamLevel::Sparse(0.5)));

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

/// Sparsity, low-rank and drop levels in one ladder: both uniforms meet the budget in
/// their own kind, EvoPress ends at or below the best start, and the written directory
/// runs the factored linears as their two factors: its logits match the search's model
/// (the factors' product) and its parameters are the allocation's.
#[test]
fn mixed_levels_search_counts_parameters_and_writes_factors() {
    let dir = TempDir::new("sparsity-mixed");
    let out = dir.path().join("mixed");
    let levels = parse(&[
        "0",
        "0.25",
        "0.5",
        "0.75",
        "drop",
        "lowrank:0.3",
        "lowrank:0.6",
    ]);
    let opts = setup(
        &dir,
        3,
        9,
        vec![(0.5, Some(out.clone()))],
        levels,
        (8, 4),
        true,
    );
    let (path, calib) = (opts.input.clone(), opts.calib.path.clone());
    let report = sparsity::run(&opts, &|_| {}).unwrap();
    let r = &report.targets[0];
    let names: Vec<&str> = r.methods.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["evopress", "uniform", "uniform-lowrank", "dp"]);
    let required = r.zeros_required.unwrap() as f64 / report.linear_params as f64;
    for m in &r.methods {
        assert!(
            m.sparsity >= required - 1e-12,
            "{}: removes {}",
            m.name,
            m.sparsity
        );
    }
    let lowrank = &r.methods[2];
    assert!(lowrank.factored > 0);
    assert!(lowrank
        .levels
        .iter()
        .all(|l| matches!(l, ParamLevel::LowRank(_)) || *l == ParamLevel::Sparse(0.0)));
    let start = r.methods[1..]
        .iter()
        .map(|m| m.fitness)
        .fold(f64::INFINITY, f64::min);
    assert!(
        r.methods[0].fitness <= start,
        "EvoPress {} > {start}",
        r.methods[0].fitness
    );

    // The written model: factored linears as weight_a / weight_b of the level's rank,
    // the rest dense with the level's zeros; the parameters add up to the allocation's.
    let model = load_decoder(&out);
    let evo = &r.methods[0];
    // This seed's allocation mixes all three kinds, so the writer's paths are covered.
    assert!(evo.factored > 0, "{:?}", evo.levels);
    assert!(
        evo.levels.contains(&ParamLevel::Sparse(1.0)),
        "{:?}",
        evo.levels
    );
    let (mut kept, mut u) = (0u64, 0);
    for l in 0..3 {
        for kind in LinearKind::ALL {
            let level = evo.levels[u];
            let (rows, cols) = model.linear_weight(l, kind).unwrap().dims2().unwrap();
            match (level, model.linear_factors(l, kind).unwrap()) {
                (ParamLevel::LowRank(ratio), Some((a, b))) => {
                    let rank = tersor_prune::lowrank::rank_for_ratio(rows, cols, ratio);
                    assert_eq!(a.dims2().unwrap(), (rows, rank), "{}", report.units[u].0);
                    assert_eq!(b.dims2().unwrap(), (rank, cols), "{}", report.units[u].0);
                    kept += (rank * (rows + cols)) as u64;
                }
                (ParamLevel::Sparse(s), None) => {
                    let w = model.linear_weight(l, kind).unwrap().flatten_all().unwrap();
                    let w = w.to_vec1::<f32>().unwrap();
                    let z = w.iter().filter(|&&x| x == 0.0).count();
                    assert_eq!(
                        z,
                        (s * w.len() as f64).round() as usize,
                        "{}",
                        report.units[u].0
                    );
                    kept += (w.len() - z) as u64;
                }
                (level, f) => panic!(
                    "{}: level {level}, factors {}",
                    report.units[u].0,
                    f.is_some()
                ),
            }
            u += 1;
        }
    }
    let removed = 1.0 - kept as f64 / report.linear_params as f64;
    assert!(
        (removed - evo.sparsity).abs() < 1e-12,
        "{removed} vs {}",
        evo.sparsity
    );

    // Its KL on the evaluation text (two matmuls per factored linear) is the search's
    // figure for the same allocation (the factors' product).
    assert_scores_as_searched(&model, &path, &calib, evo);
}

/// Sparsity mixed with bit-widths under a bits budget: GPTQ levels and SparseGPT jointly
/// with 4-bit GPTQ, costed by payload. Every method fits, uniform is the costliest
/// single level that fits, EvoPress ends no worse than its start, and the written
/// directory holds each linear on its level's pattern and grid with the search's KL.
#[test]
fn quantized_levels_mix_with_sparsity_under_a_bits_budget() {
    let dir = TempDir::new("sparsity-bits");
    let out = dir.path().join("mixed");
    // Per weight on rows of 64: 2.5625 (2-bit), 3.3125 (2:4 + 4-bit g64: 2 value bits +
    // 1 index bit + 20/64), 3.625 (50 % + 4-bit g32: 2 + 1 mask bit + 20/32), 4.625
    // (4-bit g32), 16 (f16) and 0 (drop).
    let levels = parse(&[
        "gptq:2:g32",
        "gptq:4:g32",
        "0.5+gptq:4:g32",
        "2:4+gptq:4:g64",
        "drop",
        "0",
    ]);
    let mut opts = setup(
        &dir,
        2,
        13,
        vec![(3.0, Some(out.clone()))],
        levels,
        (8, 5),
        true,
    );
    opts.budget = Budget::Bpw;
    let (path, calib) = (opts.input.clone(), opts.calib.path.clone());
    let report = sparsity::run(&opts, &|_| {}).unwrap();
    assert_eq!(report.budget, Budget::Bpw);
    let r = &report.targets[0];
    assert_eq!(r.zeros_required, None);
    assert_eq!(r.budget_units, (3.0 * report.linear_params as f64) as u64);
    let names: Vec<&str> = r.methods.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["evopress", "uniform", "dp"]);
    let two_bit: ParamLevel = "gptq:2:g32".parse().unwrap();
    assert!(r.methods[1].levels.iter().all(|l| *l == two_bit));
    for m in &r.methods {
        assert!(m.bpw <= 3.0, "{}: {} bpw", m.name, m.bpw);
    }
    let evo = &r.methods[0];
    let start = r.methods[1..]
        .iter()
        .map(|m| m.fitness)
        .fold(f64::INFINITY, f64::min);
    assert!(evo.fitness <= start, "EvoPress {} > {start}", evo.fitness);
    assert!(evo.bpw > 2.6, "{}: {:?}", evo.bpw, evo.levels);
    // This seed's allocation mixes pruned and dense quantized linears, so the written
    // directory below covers both.
    let pruned_quantized = |l: &ParamLevel| matches!(l, ParamLevel::Quantized { pattern, .. } if pattern.sparsity() > 0.0);
    assert!(evo.levels.iter().any(pruned_quantized), "{:?}", evo.levels);
    assert!(evo.levels.contains(&two_bit), "{:?}", evo.levels);

    // The written directory: each linear on its level's pattern, every (row, group)
    // holding at most 2^bits distinct values.
    let model = load_decoder(&out);
    let (mut u, mut bits) = (0, 0u64);
    for l in 0..2 {
        for kind in LinearKind::ALL {
            let t = model.linear_weight(l, kind).unwrap();
            let (rows, cols) = t.dims2().unwrap();
            let w = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let zeros = w.iter().filter(|&&x| x == 0.0).count();
            let name = &report.units[u].0;
            bits += evo.levels[u].bits(rows, cols).unwrap();
            match evo.levels[u] {
                ParamLevel::Quantized { pattern, grid } => {
                    match pattern {
                        tersor_prune::Pattern::Unstructured(s) => {
                            assert!(zeros >= (s * w.len() as f64).round() as usize, "{name}")
                        }
                        tersor_prune::Pattern::NM { n, m } => {
                            assert!(
                                tersor_prune::pattern::satisfies_nm(&w, cols, n, m),
                                "{name}"
                            )
                        }
                    }
                    let g = grid.group_size.unwrap_or(cols);
                    for row in w.chunks(cols) {
                        for group in row.chunks(g) {
                            let mut v = group.to_vec();
                            v.push(0.0);
                            v.sort_by(f32::total_cmp);
                            v.dedup();
                            assert!(v.len() <= 1 << grid.bits, "{name}: {} values", v.len());
                        }
                    }
                }
                ParamLevel::Sparse(s) => {
                    assert_eq!(zeros, (s * (rows * cols) as f64).round() as usize, "{name}")
                }
                other => panic!("{name}: unexpected level {other}"),
            }
            u += 1;
        }
    }
    // The payload the report gives is the levels' bits over the parameters.
    assert_eq!(evo.bpw, bits as f64 / report.linear_params as f64);

    // Its KL on the evaluation text is the search's figure for the same allocation.
    assert_scores_as_searched(&model, &path, &calib, evo);

    // A target outside what the levels reach names the range.
    opts.targets = vec![(20.0, None)];
    let e = sparsity::run(&opts, &|_| {}).unwrap_err().to_string();
    assert!(e.contains("bits per weight") && e.contains("reach"), "{e}");
}

/// A sequential database calibrates each level on the model whose earlier blocks are at
/// that level, as `tersor prune` does: its all-50 % assignment scores as the prune job's
/// 50 % model, and differs from the reference-input database's.
#[test]
fn sequential_database_levels_are_the_prune_jobs() {
    let dir = TempDir::new("sparsity-seq");
    let mut opts = setup(
        &dir,
        3,
        17,
        vec![(0.5, None)],
        parse(&["0.5", "drop"]),
        (1, 1),
        true,
    );
    let (path, calib) = (opts.input.clone(), opts.calib.path.clone());
    let uniform_kl = |opts: &SparsityOptions| {
        let r = sparsity::run(opts, &|_| {}).unwrap();
        let m = &r.targets[0].methods[1];
        assert_eq!(m.name, "uniform");
        assert!(m.levels.iter().all(|l| *l == ParamLevel::Sparse(0.5)));
        m.eval.as_ref().unwrap().kld_mean
    };
    let reference = uniform_kl(&opts);
    opts.db_inputs = tersor_compress::DbInputs::Sequential;
    let sequential = uniform_kl(&opts);

    let out = dir.path().join("pruned");
    let mut p = tersor_quantize::prune::PruneOptions::new(
        path.clone(),
        out.clone(),
        tersor_prune::Pattern::Unstructured(0.5),
        tersor_quantize::prune::PruneMethod::SparseGpt,
        opts.calib.clone(),
    );
    p.dtype = FloatDtype::F32;
    tersor_quantize::prune::run(&p, &|_| {}).unwrap();
    let model = load_decoder(&out);
    let pruned = kl_on_two_windows(&model, &path, &calib);
    assert!(
        (sequential - pruned).abs() <= 1e-3 * pruned,
        "sequential database {sequential} vs tersor prune {pruned}"
    );
    assert!(
        (reference - pruned).abs() > 1e-3 * pruned,
        "reference-input database {reference} vs tersor prune {pruned}"
    );
}

/// An N:M ladder: uniform puts every linear at 2:4, and EvoPress's non-uniform N:M
/// allocation (dense, 3:4, 2:4 and 1:4 per linear) is written with every row group
/// holding at most its level's N nonzeros.
#[test]
fn nm_ladder_keeps_every_linear_on_its_pattern() {
    let dir = TempDir::new("sparsity-nm");
    let out = dir.path().join("nm");
    let levels = parse(&["0", "3:4", "2:4", "1:4"]);
    let opts = setup(
        &dir,
        2,
        11,
        vec![(0.5, Some(out.clone()))],
        levels,
        (6, 3),
        false,
    );
    let report = sparsity::run(&opts, &|_| {}).unwrap();
    let r = &report.targets[0];
    let names: Vec<&str> = r.methods.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["evopress", "uniform-nm", "dp"]);
    let two_four = ParamLevel::NM { n: 2, m: 4 };
    assert!(r.methods[1].levels.iter().all(|&l| l == two_four));
    assert_eq!(r.methods[1].zeros, r.zeros_required.unwrap());
    let evo = &r.methods[0];
    assert!(evo.zeros >= r.zeros_required.unwrap());
    assert!(
        evo.levels.iter().any(|&l| l != two_four),
        "{:?}",
        evo.levels
    );

    let model = load_decoder(&out);
    let mut u = 0;
    for l in 0..2 {
        for kind in LinearKind::ALL {
            let w = model.linear_weight(l, kind).unwrap();
            let (_, cols) = w.dims2().unwrap();
            let w = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (n, m) = match evo.levels[u] {
                ParamLevel::NM { n, m } => (n, m),
                ParamLevel::Sparse(0.0) => (4, 4),
                other => panic!("level {other} in an N:M ladder"),
            };
            for row in w.chunks(cols) {
                for g in row.chunks(m) {
                    let nz = g.iter().filter(|&&x| x != 0.0).count();
                    assert!(
                        nz <= n,
                        "{}: {nz} nonzeros in a group of {m}",
                        report.units[u].0
                    );
                }
            }
            if n < m {
                let z = w.iter().filter(|&&x| x == 0.0).count();
                assert_eq!(z, w.len() / m * (m - n), "{}", report.units[u].0);
            }
            u += 1;
        }
    }
}

/// The anchored per-linear KL table: anchored levels carry their measured KL (equal to
/// the one-run-per-level table), the others are scaled from the anchor nearest in
/// output error, and a lossless level scales to zero.
#[test]
fn anchored_table_measures_its_anchors_and_scales_the_rest() {
    use candle_core::Tensor;
    use tersor_compress::fitness::Evaluator;
    use tersor_compress::units::{block_linears, UnitRef};

    let dir = TempDir::new("sparsity-anchored");
    let path = dir.path().join("m.gguf");
    TinyLlama {
        hidden: 64,
        ffn: 128,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        tied: true,
        seed: 13,
    }
    .write_gguf(&path);
    let LoadedModel::Decoder { model, tokenizer } = tersor_model::load(&path).unwrap() else {
        panic!("not a decoder")
    };
    let text = std::fs::read_to_string(calib_text(dir.path())).unwrap();
    let ids = tokenizer.encode(&text, false).unwrap();
    let windows: Vec<Vec<u32>> = ids.chunks(64).take(2).map(|c| c.to_vec()).collect();
    // Levels of every linear: removed, 0.5 W, 0.9 W, W; relative output errors
    // (1 - c)² for a scaled copy c W.
    let scales = [0.0f32, 0.5, 0.9, 1.0];
    let errs: Vec<f64> = scales
        .iter()
        .map(|&c| f64::from((1.0 - c) * (1.0 - c)))
        .collect();
    let units = block_linears(&model).unwrap();
    let weights: Vec<Vec<Tensor>> = units
        .iter()
        .map(|u| {
            let UnitRef::Linear(l, kind) = u.what else {
                unreachable!("block linears")
            };
            let w = model.linear_weight(l, kind).unwrap();
            scales
                .iter()
                .map(|&c| (w * f64::from(c)).unwrap())
                .collect()
        })
        .collect();
    let n = units.len();
    let eval = Evaluator::from_levels(model, units, weights, windows, vec![2], 1, None).unwrap();
    let exact = eval.unit_table(0, &|_, _| {}).unwrap();
    let output_errors = vec![errs.clone(); n];
    let anchored = eval
        .unit_table_anchored(0, &output_errors, &vec![vec![0, 1]; n], &|_, _| {})
        .unwrap();
    let scaled = eval
        .unit_table_scaled(0, &output_errors, &|_, _| {})
        .unwrap();
    for u in 0..n {
        assert!(
            exact[u][0] > exact[u][1] && exact[u][1] > 0.0,
            "{:?}",
            exact[u]
        );
        assert_eq!(anchored[u][0], exact[u][0]);
        assert_eq!(anchored[u][1], exact[u][1]);
        // 0.9 W is nearer 0.5 W (error ratio 25) than the removed linear (100).
        let want = exact[u][1] * errs[2] / errs[1];
        assert!(
            (anchored[u][2] - want).abs() <= 1e-12 * want,
            "{} vs {want}",
            anchored[u][2]
        );
        assert_eq!(anchored[u][3], 0.0);
        // One anchor at level 0: everything scaled from the removed linear.
        assert_eq!(scaled[u][0], exact[u][0]);
        let want = exact[u][0] * errs[1];
        assert!((scaled[u][1] - want).abs() <= 1e-12 * want);
    }
    // Anchors outside a unit's levels are an error, not a panic.
    assert!(eval
        .unit_table_anchored(0, &output_errors, &vec![vec![4]; n], &|_, _| {})
        .is_err());
}

/// Whole sublayers skipped (`skip`): the search's units become the sublayers, each at
/// one level on all its linears. Every method meets the budget as counted on the
/// weights; a skipped sublayer's linears are zero; the written directory leaves out a
/// block whose two sublayers are skipped and scores exactly as the search's model.
#[test]
fn skip_levels_search_whole_sublayers() {
    let attn = (2 * 64 * 64 + 2 * 32 * 64) as u64;
    let mlp = (3 * 128 * 64) as u64;
    let dir = TempDir::new("sparsity-skip");
    // Skip or keep only (a depth search). 75 % of the parameters must go: with
    // sublayers of 12288 and 24576 weights that takes all four MLPs and an attention, or
    // three and three, so at least one block loses both.
    let out = dir.path().join("depth");
    let opts = setup(
        &dir,
        4,
        9,
        vec![(0.75, Some(out.clone()))],
        parse(&["skip", "0"]),
        (6, 3),
        true,
    );
    let report = sparsity::run(&opts, &|_| {}).unwrap();
    let units: Vec<(&str, u64)> = report.units.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    assert_eq!(units.len(), 8);
    assert_eq!(units[..2], [("blk.0.attn", attn), ("blk.0.mlp", mlp)]);
    let r = &report.targets[0];
    let names: Vec<&str> = r.methods.iter().map(|m| m.name.as_str()).collect();
    // No uniform level removes 75 %, so DP is the only baseline.
    assert_eq!(names, ["evopress", "dp"]);
    assert_every_method_meets_the_budget(r);
    for m in &r.methods {
        assert!(m
            .levels
            .iter()
            .all(|&l| l == ParamLevel::Skip || l == ParamLevel::Sparse(0.0)));
        // Zeros are the skipped sublayers' parameters (the random weights have none).
        let skipped: u64 = m
            .levels
            .iter()
            .zip(&units)
            .filter(|(&l, _)| l == ParamLevel::Skip)
            .map(|(_, u)| u.1)
            .sum();
        assert_eq!(m.zeros, skipped, "{}", m.name);
    }
    let evo = &r.methods[0];
    assert!(evo.fitness <= r.methods[1].fitness);
    let model = load_decoder(&out);
    let both = evo
        .levels
        .chunks(2)
        .filter(|b| b.iter().all(|&l| l == ParamLevel::Skip))
        .count();
    assert!(both >= 1);
    assert_eq!(model.n_layers(), 4 - both);
    assert_scores_as_searched(&model, &opts.input, &opts.calib.path, evo);

    // Mixed with sparsity: uniform 50 % is a baseline, every method removes at least
    // half, and a skipped sublayer's linears are all zero in the written directory.
    let out = dir.path().join("mixed");
    let opts = SparsityOptions {
        targets: vec![(0.5, Some(out.clone()))],
        levels: parse(&["skip", "0", "0.5"]),
        ..opts
    };
    let report = sparsity::run(&opts, &|_| {}).unwrap();
    let r = &report.targets[0];
    let names: Vec<&str> = r.methods.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["evopress", "uniform", "dp"]);
    assert_every_method_meets_the_budget(r);
    assert_eq!(r.methods[1].zeros, r.zeros_required.unwrap());
    let evo = &r.methods[0];
    assert!(evo.fitness <= r.methods[1].fitness.min(r.methods[2].fitness));
    let model = load_decoder(&out);
    let mut l = 0;
    for block in evo.levels.chunks(2) {
        if block.iter().all(|&x| x == ParamLevel::Skip) {
            continue;
        }
        for (level, kinds) in block.iter().zip([
            &[LinearKind::Q, LinearKind::K, LinearKind::V, LinearKind::O][..],
            &[LinearKind::Gate, LinearKind::Up, LinearKind::Down][..],
        ]) {
            for &k in kinds {
                let w = model.linear_weight(l, k).unwrap().flatten_all().unwrap();
                let w = w.to_vec1::<f32>().unwrap();
                let zeros = w.iter().filter(|&&x| x == 0.0).count();
                let want = match level {
                    ParamLevel::Skip => w.len(),
                    ParamLevel::Sparse(s) => (s * w.len() as f64).round() as usize,
                    other => panic!("{other}"),
                };
                assert_eq!(zeros, want, "block {l} {k} at {level}");
            }
        }
        l += 1;
    }
    assert_eq!(l, model.n_layers());
    assert_scores_as_searched(&model, &opts.input, &opts.calib.path, evo);

    // Under a bits budget skipping is free: at 2 bits per weight, below every
    // quantized level (3.625 and 4.625 on rows of 64), no uniform level fits, and every
    // allocation skips enough to stay within the bits.
    let out = dir.path().join("bits");
    let opts = SparsityOptions {
        targets: vec![(2.0, Some(out.clone()))],
        levels: parse(&["skip", "gptq:4:g32", "0.5+gptq:4:g32"]),
        budget: Budget::Bpw,
        ..opts
    };
    let report = sparsity::run(&opts, &|_| {}).unwrap();
    let r = &report.targets[0];
    let names: Vec<&str> = r.methods.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["evopress", "dp"]);
    for m in &r.methods {
        assert!(m.bpw <= 2.0, "{}: {} bpw", m.name, m.bpw);
        assert!(m.levels.contains(&ParamLevel::Skip), "{}", m.name);
    }
    let evo = &r.methods[0];
    let model = load_decoder(&out);
    assert_scores_as_searched(&model, &opts.input, &opts.calib.path, evo);
}
