//! Depth pruning on a tiny random model: a zeroed output projection is exactly a
//! skipped sublayer, every method removes at least the budgeted parameters, and
//! EvoPress never ends worse than the baseline it starts from.

use candle_core::{DType, Tensor};
use tersor_compress::depth::{self, DepthOptions};
use tersor_compress::SearchOptions;
use tersor_model::{LinearKind, LoadedModel};
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
    };
    let r = depth::run(&opts, &|_| {}).unwrap();
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
