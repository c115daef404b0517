//! Depth pruning on a tiny random model: a zeroed output projection is exactly a
//! skipped sublayer, every method removes at least the budgeted parameters, and
//! EvoPress never ends worse than the baseline it starts from.

use candle_core::{DType, Tensor};
use tersor_compress::depth::{self, DepthOptions};
use tersor_compress::SearchOptions;
use tersor_model::{LinearKind, LoadedModel};
use tersor_quantize::prune::FloatDtype;
use tersor_quantize::CalibConfig;
use tersor_testkit::{calib_text, TempDir, TinyLlama};

fn tiny() -> TinyLlama {
    TinyLlama {
        hidden: 64,
        ffn: 128,
        layers: 6,
        heads: 4,
        kv_heads: 2,
        tied: true,
        seed: 3,
    }
}

#[test]
fn zeroed_output_projections_skip_the_block_exactly() {
    let dir = TempDir::new("depth-skip");
    let path = dir.path().join("m.gguf");
    tiny().write_gguf(&path);
    let LoadedModel::Decoder { model, .. } = tersor_model::load(&path).unwrap() else {
        panic!("not a decoder")
    };
    let tokens: Vec<u32> = b"a block that is dropped passes its input on"
        .iter()
        .map(|&b| b as u32)
        .collect();
    let mut dropped = model.clone();
    for k in [LinearKind::O, LinearKind::Down] {
        let w = model.linear_weight(2, k).unwrap();
        dropped
            .set_linear_weight(
                2,
                k,
                Tensor::zeros(w.dims(), DType::F32, w.device()).unwrap(),
            )
            .unwrap();
    }
    let got = dropped.forward_batch(&[&tokens]).unwrap();
    // The same model run with block 2 left out.
    let mut h = model.embed_batch(&[&tokens]).unwrap();
    for l in (0..6).filter(|&l| l != 2) {
        h = model.block_forward(l, &h, None).unwrap();
    }
    let want = model.head(&h).unwrap();
    let diff = (got - &want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-5, "max |Δlogit| {diff}");
    // And it is not a no-op.
    let full = model.forward_batch(&[&tokens]).unwrap();
    let moved = (full - want).unwrap().abs().unwrap().max_all().unwrap();
    assert!(moved.to_scalar::<f32>().unwrap() > 1e-3);
}

#[test]
fn every_method_meets_the_budget_and_evopress_beats_its_start() {
    let dir = TempDir::new("depth-run");
    let path = dir.path().join("m.gguf");
    tiny().write_gguf(&path);
    let calib = calib_text(dir.path());
    let opts = DepthOptions {
        input: path.clone(),
        drop_blocks: 2,
        calib: CalibConfig {
            path: calib.clone(),
            max_tokens: 1024,
            ctx: 128,
        },
        search: SearchOptions {
            generations: 6,
            offspring: 4,
            stage_windows: vec![1, 3],
            survivors: vec![2],
            seed: 1,
            ..SearchOptions::default()
        },
        eval: Some((calib, 2)),
        output: Some(dir.path().join("evopress")),
        dtype: FloatDtype::F16,
    };
    let r = depth::run(&opts, &|_| {}).unwrap();
    // The written model is EvoPress's choice.
    let out = r.output.as_ref().unwrap();
    let mut written: Vec<String> = out
        .blocks_removed
        .iter()
        .flat_map(|l| [format!("blk.{l}.attn"), format!("blk.{l}.mlp")])
        .chain(out.sublayers_zeroed.iter().cloned())
        .collect();
    let mut chosen = r.methods[0].dropped.clone();
    written.sort();
    chosen.sort();
    assert_eq!(written, chosen);
    assert!(out.bytes > 0);
    // hidden 64, ffn 128, 4 heads of 16, 2 KV heads: q, o 64×64; k, v 32×64; three
    // 128×64 MLP matrices.
    let block = 2 * 64 * 64 + 2 * 32 * 64 + 3 * 128 * 64;
    assert_eq!(r.params_total, 6 * block);
    assert_eq!(r.params_to_remove, 2 * block);
    let names: Vec<&str> = r.methods.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["evopress", "last", "importance"]);
    for m in &r.methods {
        assert!(
            m.params_removed >= r.params_to_remove,
            "{}: {}",
            m.name,
            m.params_removed
        );
        assert!(m.eval.as_ref().unwrap().kld_mean > 0.0, "{}", m.name);
    }
    let last = &r.methods[1];
    assert_eq!(
        last.dropped,
        ["blk.4.attn", "blk.4.mlp", "blk.5.attn", "blk.5.mlp"]
    );
    let start = r.methods[1].fitness.min(r.methods[2].fitness);
    assert!(
        r.methods[0].fitness <= start,
        "{} > {start}",
        r.methods[0].fitness
    );
    assert_eq!(r.curve.len(), 6);

    // Bad block counts are usage errors that name the flag.
    for n in [0, 6] {
        let e = depth::run(
            &DepthOptions {
                drop_blocks: n,
                ..opts.clone()
            },
            &|_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--drop-blocks"), "{e}");
    }
}

/// The written depth-pruned model computes what the search scored: blocks that lose
/// both sublayers are left out (the checkpoint has fewer layers), a lone dropped
/// sublayer is a zero output projection.
#[test]
fn written_model_leaves_out_dropped_blocks_and_computes_the_pruned_model() {
    let dir = TempDir::new("depth-write");
    let path = dir.path().join("m.gguf");
    tiny().write_gguf(&path);
    let LoadedModel::Decoder { model, .. } = tersor_model::load(&path).unwrap() else {
        panic!("not a decoder")
    };
    let out = dir.path().join("pruned");
    let dropped: Vec<String> = ["blk.1.attn", "blk.1.mlp", "blk.3.mlp", "blk.4.attn"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let w = depth::write_model(&path, &model, &dropped, &out, FloatDtype::F32).unwrap();
    assert_eq!(w.blocks_removed, [1]);
    assert_eq!(w.sublayers_zeroed, ["blk.3.mlp", "blk.4.attn"]);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 5);

    let LoadedModel::Decoder { model: got, .. } = tersor_model::load(&out).unwrap() else {
        panic!("not a decoder")
    };
    assert_eq!(got.n_layers(), 5);
    // The same computation on the input model: block 1 skipped, the other two
    // sublayers' output projections zeroed.
    let mut want = model.clone();
    for (l, k) in [
        (1, LinearKind::O),
        (1, LinearKind::Down),
        (3, LinearKind::Down),
        (4, LinearKind::O),
    ] {
        let w = model.linear_weight(l, k).unwrap();
        want.set_linear_weight(
            l,
            k,
            Tensor::zeros(w.dims(), DType::F32, w.device()).unwrap(),
        )
        .unwrap();
    }
    let tokens: Vec<u32> = b"fewer blocks, same function"
        .iter()
        .map(|&b| b as u32)
        .collect();
    let diff = (got.forward_batch(&[&tokens]).unwrap() - want.forward_batch(&[&tokens]).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-4, "max |Δlogit| {diff}");

    // A name that is not a sublayer of this model is an error, and writes nothing.
    let bad = dir.path().join("bad");
    let e = depth::write_model(&path, &model, &["blk.9.attn".into()], &bad, FloatDtype::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("blk.9.attn"), "{e}");
    assert!(!bad.exists());
}
