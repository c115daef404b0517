//! `tersor compress` end to end on a tiny random model: budgets are met exactly, the
//! written files decode to the levels the search chose, EvoPress never ends worse
//! than the baseline it starts from, and bad budgets are clear errors.

use std::path::Path;
use std::sync::Mutex;

use candle_core::{Device, Tensor};
use tersor_compress::{Budget, CompressOptions, DbInputs, Event, Format, Report, SearchOptions};
use tersor_levels::LevelDb;
use tersor_model::{LinearKind, LoadedModel, TensorNaming};
use tersor_quantize::{CalibConfig, Method};
use tersor_testkit::{calib_text, TempDir, TinyLlama};

fn options(dir: &Path, input: &Path, format: Format, budget: Budget) -> CompressOptions {
    let calib = calib_text(dir);
    CompressOptions {
        input: input.to_path_buf(),
        output: dir.join(match format {
            Format::Gguf => "out.gguf",
            Format::Gptq => "out-gptq",
        }),
        format,
        budget,
        calib: CalibConfig {
            path: calib.clone(),
            max_tokens: 1024,
            ctx: 128,
        },
        levels: None,
        method: Method::Gptq,
        gptq: Default::default(),
        db_inputs: DbInputs::default_for(format),
        db: None,
        search: SearchOptions {
            generations: 6,
            offspring: 4,
            stage_windows: vec![1, 3],
            survivors: vec![2],
            max_switches: 2,
            seed: 1,
            random_samples: 4,
            batch: 2,
            kl_top_k: None,
            unit_errors: Default::default(),
            guided: true,
        },
        resume: false,
        baselines_dir: Some(dir.join("baselines")),
        eval: Some((calib, 2)),
    }
}

fn run(opts: &CompressOptions) -> (Report, Vec<String>) {
    if let Some(d) = &opts.baselines_dir {
        std::fs::create_dir_all(d).unwrap();
    }
    let notes = Mutex::new(Vec::new());
    let r = tersor_compress::run(opts, &|e| {
        if let Event::Note(n) = e {
            notes.lock().unwrap().push(n)
        }
    })
    .unwrap();
    (r, notes.into_inner().unwrap())
}

fn llama(path: &Path) -> tersor_model::Llama {
    match tersor_model::load(path).unwrap() {
        LoadedModel::Decoder { model, .. } => model,
        _ => panic!("not a decoder"),
    }
}

/// The input model with every unit's weights replaced by its chosen level.
fn expected_model(
    input: &Path,
    db: &LevelDb,
    report: &Report,
    method: usize,
) -> tersor_model::Llama {
    let mut m = llama(input);
    for (u, unit) in report.units.iter().enumerate() {
        let t = db.find(&unit.name).unwrap();
        let l = db.tensors()[t]
            .levels
            .iter()
            .position(|lv| lv.kind.to_string() == report.methods[method].levels[u])
            .unwrap();
        let ti = &db.tensors()[t];
        let w =
            Tensor::from_vec(db.values(t, l).unwrap(), (ti.rows, ti.cols), &Device::Cpu).unwrap();
        if unit.name == TensorNaming::Gguf.embed() {
            m.set_embedding(w).unwrap();
            continue;
        }
        let (layer, kind) = (0..m.n_layers())
            .flat_map(|l| LinearKind::ALL.iter().map(move |&k| (l, k)))
            .find(|&(l, k)| TensorNaming::Gguf.linear(l, k, "weight") == unit.name)
            .unwrap();
        m.set_linear_weight(layer, kind, w).unwrap();
    }
    m
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn gguf_budget_files_and_search() {
    let dir = TempDir::new("compress-gguf");
    let input = dir.path().join("tiny.gguf");
    TinyLlama::default().write_gguf(&input);
    let opts = options(dir.path(), &input, Format::Gguf, Budget::Bpw(5.0));
    let (r, _) = run(&opts);

    // Exact budget accounting: every written file is the size its allocation costs,
    // within the budget.
    assert_eq!(r.methods[0].name, "evopress");
    for m in &r.methods {
        let p = m.path.as_ref().expect("all written");
        let size = std::fs::metadata(p).unwrap().len();
        assert_eq!(size, m.bytes, "{}", m.name);
        assert!(
            size <= r.budget_bytes,
            "{}: {size} > {}",
            m.name,
            r.budget_bytes
        );
    }
    // Elitism: the search ends no worse than the baseline it started from.
    let start = r
        .methods
        .iter()
        .find(|m| m.name == r.evopress_start)
        .unwrap();
    assert!(r.methods[0].fitness <= start.fitness);
    let f0 = r.curve.first().map(|g| g.best_fitness).unwrap();
    assert!(r
        .curve
        .windows(2)
        .all(|w| w[1].best_fitness <= w[0].best_fitness));
    assert!(f0 <= start.fitness);

    // The written GGUF has the chosen types and decodes to the database's levels:
    // its logits equal the model the search scored.
    let db = LevelDb::open(&r.db).unwrap();
    let f = tersor_gguf::GgufFile::open(&opts.output).unwrap();
    for (u, unit) in r.units.iter().enumerate() {
        let t = f.tensor(&unit.name).unwrap();
        assert_eq!(t.ty.name().to_ascii_uppercase(), r.methods[0].levels[u]);
    }
    let tokens: Vec<u32> = b"the clocks were striking"
        .iter()
        .map(|&b| b as u32)
        .collect();
    let want = expected_model(&input, &db, &r, 0).forward(&tokens).unwrap();
    let got = llama(&opts.output).forward(&tokens).unwrap();
    assert_eq!(max_abs_diff(&want, &got), 0.0);

    // A second run reuses the database and its per-tensor KL table.
    let (r2, notes) = run(&opts);
    assert!(
        notes
            .iter()
            .any(|n| n.contains("reusing the level database")),
        "{notes:?}"
    );
    assert_eq!(
        r2.methods[0].levels, r.methods[0].levels,
        "deterministic for a seed"
    );
    assert!(!notes.iter().any(|n| n.contains("capped")), "{notes:?}");

    // Selection stages beyond the calibration's 8 windows (1024 tokens at ctx 128)
    // are capped, and the run says so.
    let mut wide = opts.clone();
    wide.search.stage_windows = vec![1, 3, 50];
    wide.search.survivors = vec![2, 1];
    wide.search.generations = 1;
    let (rw, notes) = run(&wide);
    // Whole batches of 2 windows.
    assert_eq!(rw.fitness_tokens, [256, 512, 1024]);
    assert!(
        notes.iter().any(|n| n.contains("8 windows of 128 tokens")
            && n.contains("[1, 3, 50] capped to [1, 3, 8]")),
        "{notes:?}"
    );

    // Budgets outside the achievable range name it.
    let mut bad = opts.clone();
    bad.budget = Budget::Bpw(1.0);
    let e = tersor_compress::run(&bad, &|_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("no allocation meets the budget") && e.contains("bpw"),
        "{e}"
    );
}

#[test]
fn gptq_mixed_bits_checkpoint_loads_as_searched() {
    let dir = TempDir::new("compress-gptq");
    let input = dir.path().join("tiny.gguf");
    TinyLlama::default().write_gguf(&input);
    let mut opts = options(dir.path(), &input, Format::Gptq, Budget::Bpw(3.5));
    opts.levels = Some(
        [
            "gptq:2:g64",
            "gptq:3:g64",
            "gptq:4:g64",
            "gptq:4:g128",
            "gptq:8:g128",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect(),
    );
    opts.baselines_dir = None;
    // The memory-bounded fitness (top-k reference tokens) drives this search.
    opts.search.kl_top_k = Some(32);
    let (r, _) = run(&opts);
    let lin_params: u64 = r.units.iter().map(|u| u.params).sum();
    let m = &r.methods[0];
    assert!(m.bytes <= r.budget_bytes);
    assert_eq!(r.budget_bytes, (3.5 * lin_params as f64 / 8.0) as u64);
    let mut kinds: Vec<&String> = m.levels.iter().collect();
    kinds.sort();
    kinds.dedup();
    assert!(
        kinds.len() > 1,
        "expected a mixed allocation, got {kinds:?}"
    );

    // The checkpoint (q/k rows back in HF order, per-module `dynamic` overrides)
    // computes what the search scored.
    let db = LevelDb::open(&r.db).unwrap();
    let tokens: Vec<u32> = b"glass doors of Victory"
        .iter()
        .map(|&b| b as u32)
        .collect();
    let want = expected_model(&input, &db, &r, 0).forward(&tokens).unwrap();
    let got = llama(&opts.output).forward(&tokens).unwrap();
    let d = max_abs_diff(&want, &got);
    // fp16 embeddings and norms in the checkpoint; the levels themselves are exact.
    assert!(d < 2e-2, "max |Δlogit| {d}");
    let cfg = std::fs::read_to_string(opts.output.join("config.json")).unwrap();
    assert!(cfg.contains("\"dynamic\""), "{cfg}");
}

/// The fitness's caches (the base's hidden states, candidates' states reused when one
/// becomes the base or is scored again at a later stage) change no value: every score
/// equals a fresh evaluator's full forward pass of the candidate, bit for bit.
#[test]
fn cached_fitness_equals_a_full_forward_pass() {
    use tersor_compress::fitness::{Choice, Evaluator};
    use tersor_search::Fitness;
    let dir = TempDir::new("compress-cache");
    let input = dir.path().join("tiny.gguf");
    TinyLlama::default().write_gguf(&input);
    let mut opts = options(dir.path(), &input, Format::Gguf, Budget::Bpw(5.0));
    opts.search.generations = 0;
    opts.search.random_samples = 0;
    opts.eval = None;
    opts.baselines_dir = None;
    let (r, _) = run(&opts);
    let db = LevelDb::open(&r.db).unwrap();
    let model = llama(&input);
    let units = tersor_compress::units::units(&model, Format::Gguf, None).unwrap();
    let windows: Vec<Vec<u32>> = (0..5u32)
        .map(|w| (0..24).map(|i| (w * 37 + i * 11) % 200 + 1).collect())
        .collect();
    let evaluator = |batch| {
        Evaluator::new(
            model.clone(),
            units.clone(),
            &db,
            windows.clone(),
            vec![1, 2, 5],
            batch,
            None,
        )
        .unwrap()
    };
    let n = units.len();
    let reference: Choice = vec![None; n];
    let mut c1 = reference.clone();
    c1[n / 2] = Some(0);
    let mut c2 = c1.clone();
    c2[n - 1] = Some(0);
    let mut c3 = c1.clone();
    c3[0] = Some(0);
    // (generation, stage, candidate, base): generations' patterns, the winner becoming
    // the base; early stages score other windows in each generation.
    let calls = [
        (0, 0, &c1, &reference),
        (0, 1, &c1, &reference),
        (0, 2, &c1, &reference),
        (1, 0, &c2, &c1),
        (1, 0, &c3, &c1),
        (1, 1, &c3, &c1),
        (1, 2, &c3, &c1),
        (2, 0, &c2, &c3),
        (2, 1, &c2, &c3),
        (2, 2, &c1, &c3),
        (3, 1, &c3, &c3),
        (4, 0, &c2, &c3),
    ];
    for batch in [1, 2] {
        let cached = evaluator(batch);
        let mut seen = std::collections::HashSet::new();
        for &(generation, stage, c, base) in &calls {
            cached.begin_generation(generation);
            let got = cached.kl(stage, c, base).unwrap();
            let fresh = evaluator(batch);
            fresh.begin_generation(generation);
            let want = fresh.kl(stage, c, c).unwrap();
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "stage {stage}, batch {batch}"
            );
            seen.insert((stage, got.to_bits()));
        }
        // The rotation changes what the early stages score.
        assert!(seen.iter().filter(|(s, _)| *s == 0).count() >= 3);
    }
}

/// The sequential database (`DbInputs::Sequential`) calibrates each level kind on the
/// model whose earlier blocks are at that kind, so its uniform assignment is sequential
/// uniform GPTQ: the same weights as `tersor quantize` at that spec, exactly. A build
/// interrupted part-way (the manifest cut back to its first tensors) resumes to the
/// same database, file for file.
#[test]
fn sequential_database_is_sequential_gptq_and_resumes_exactly() {
    let dir = TempDir::new("compress-seq");
    let input = dir.path().join("tiny.gguf");
    TinyLlama::default().write_gguf(&input);
    let kinds: Vec<tersor_levels::LevelKind> = ["gptq:3:g64", "gptq:8:g64"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let m = llama(&input);
    let three_bit: u64 = (0..m.n_layers())
        .flat_map(|l| LinearKind::ALL.iter().map(move |&k| (l, k)))
        .map(|(l, k)| {
            let (r, c) = m.linear_weight(l, k).unwrap().dims2().unwrap();
            kinds[0].bytes(r, c).unwrap()
        })
        .sum();
    // Only the all-3-bit assignment fits.
    let mut opts = options(dir.path(), &input, Format::Gptq, Budget::Bytes(three_bit));
    assert_eq!(opts.db_inputs, DbInputs::Sequential);
    opts.levels = Some(kinds.clone());
    opts.baselines_dir = None;
    opts.eval = None;
    opts.search.generations = 1;
    let (r, _) = run(&opts);
    assert!(r.methods[0].levels.iter().all(|l| l == "gptq:3:g64"));

    let seq_dir = dir.path().join("sequential-gptq");
    let q = tersor_quantize::QuantizeOptions::new(
        input.clone(),
        seq_dir.clone(),
        "gptq:3:g64".parse().unwrap(),
        "gptq".parse().unwrap(),
        opts.calib.clone(),
    );
    tersor_quantize::run(&q, &|_| {}).unwrap();
    let (a, b) = (llama(&opts.output), llama(&seq_dir));
    for l in 0..a.n_layers() {
        for k in LinearKind::ALL {
            let d = max_abs_diff(
                a.linear_weight(l, k).unwrap(),
                b.linear_weight(l, k).unwrap(),
            );
            assert_eq!(
                d, 0.0,
                "block {l} {k:?}: the database's level differs by {d}"
            );
        }
    }
    // Calibrated on their own streams, not the reference: the 3-bit levels of a later
    // block differ from the reference database's.
    let mut ref_opts = opts.clone();
    ref_opts.db_inputs = DbInputs::Reference;
    ref_opts.output = dir.path().join("ref-out");
    let (rr, _) = run(&ref_opts);
    let (sdb, rdb) = (
        LevelDb::open(&r.db).unwrap(),
        LevelDb::open(&rr.db).unwrap(),
    );
    let last = TensorNaming::Gguf.linear(m.n_layers() - 1, LinearKind::Down, "weight");
    let (ts, tr) = (sdb.find(&last).unwrap(), rdb.find(&last).unwrap());
    assert_ne!(sdb.values(ts, 0).unwrap(), rdb.values(tr, 0).unwrap());

    // Resume: keep the first 10 tensors (block 0 and part of block 1) and rebuild.
    let manifest_path = r.db.join("manifest.json");
    let full: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    let mut cut = full.clone();
    cut["tensors"].as_array_mut().unwrap().truncate(10);
    std::fs::write(&manifest_path, cut.to_string()).unwrap();
    run(&opts);
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    assert_eq!(again["tensors"], full["tensors"]);
}
