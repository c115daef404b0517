//! End-to-end runs of the low-rank job on tiny synthetic Llamas: the written directory
//! holds each layer's two factors at the rank the ratio allows, tersor loads them as a
//! two-matmul layer that computes what the dense product does, and activation-aware SVD
//! loses less than plain SVD.

mod common;

use std::path::Path;

use common::{decoder, kl_to_reference};

use tersor_model::LinearKind;
use tersor_prune::lowrank::rank_for_ratio;
use tersor_quantize::lowrank::{run, LowrankMethod, LowrankOptions};
use tersor_quantize::prune::FloatDtype;
use tersor_quantize::{CalibConfig, Event};
use tersor_testkit::{calib_text, TempDir, TinyLlama};

fn quiet(_: Event) {}

fn options(
    input: &Path,
    output: &Path,
    ratio: f64,
    method: LowrankMethod,
    calib: &Path,
) -> LowrankOptions {
    let mut o = LowrankOptions::new(
        input.to_path_buf(),
        output.to_path_buf(),
        ratio,
        method,
        CalibConfig {
            path: calib.to_path_buf(),
            max_tokens: 1024,
            ctx: 128,
        },
    );
    o.dtype = FloatDtype::F32;
    o
}

#[test]
fn factored_directories_load_as_two_matmuls_and_asvd_loses_less() {
    let dir = TempDir::new("lowrank");
    let tiny = TinyLlama {
        tied: false,
        ..TinyLlama::default()
    };
    let gguf = dir.path().join("tiny.gguf");
    tiny.write_gguf(&gguf);
    let hf = dir.path().join("tiny-hf");
    tiny.write_hf_dir(&hf);
    let calib = calib_text(dir.path());
    for (input, label) in [(&gguf, "gguf"), (&hf, "hf")] {
        let mut kl = Vec::new();
        for method in [LowrankMethod::Svd, LowrankMethod::Asvd] {
            let out = dir.path().join(format!("{label}-{method}"));
            let s = run(&options(input, &out, 0.5, method, &calib), &quiet).unwrap();
            assert!(
                s.linear_params * 2 <= s.dense_linear_params,
                "{} vs {}",
                s.linear_params,
                s.dense_linear_params
            );
            let (m, tok) = decoder(&out);
            let mut dense = m.clone();
            for l in 0..m.n_layers() {
                for kind in LinearKind::ALL {
                    let (rows, cols) = m.linear_weight(l, kind).unwrap().dims2().unwrap();
                    let (a, b) = m.linear_factors(l, kind).unwrap().expect("factored");
                    assert_eq!(a.dims2().unwrap(), (rows, rank_for_ratio(rows, cols, 0.5)));
                    assert_eq!(b.dims2().unwrap(), (rank_for_ratio(rows, cols, 0.5), cols));
                    // The same layer as one dense matmul.
                    let w = m.linear_weight(l, kind).unwrap().clone();
                    dense.set_linear_weight(l, kind, w).unwrap();
                    assert!(dense.linear_factors(l, kind).unwrap().is_none());
                }
            }
            let ids = tok
                .encode("It was a bright cold day in April", false)
                .unwrap();
            let (y2, y1) = (m.forward(&ids).unwrap(), dense.forward(&ids).unwrap());
            let diff = (y2 - y1)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                diff < 1e-3,
                "{label} {method}: two matmuls vs dense differ by {diff}"
            );
            kl.push(kl_to_reference(&out, input, &calib));
        }
        eprintln!("{label} ratio 0.5: KL svd {:.4}, asvd {:.4}", kl[0], kl[1]);
        assert!(kl[1] < kl[0], "{label}: {kl:?}");
    }
}

#[test]
fn bad_ratios_are_usage_errors_and_write_nothing() {
    let dir = TempDir::new("lowrank-bad");
    let input = dir.path().join("tiny.gguf");
    TinyLlama::default().write_gguf(&input);
    let calib = calib_text(dir.path());
    let out = dir.path().join("out");
    for r in [0.0, 1.5, f64::NAN] {
        let e = run(
            &options(&input, &out, r, LowrankMethod::Svd, &calib),
            &quiet,
        )
        .unwrap_err();
        assert!(e.to_string().contains("outside (0, 1]"), "{e}");
    }
    assert!(!out.exists());
    // At ratio 1 a square layer saves nothing by factoring (r = n/2 holds n² parameters),
    // so it stays dense; a 256 × 512 one still saves a little at rank 170.
    let s = run(
        &options(&input, &out, 1.0, LowrankMethod::Svd, &calib),
        &quiet,
    )
    .unwrap();
    for l in &s.linears {
        match l.rank {
            None => assert_eq!(l.rows, l.cols, "{}", l.name),
            Some(r) => assert!(r * (l.rows + l.cols) < l.rows * l.cols, "{}", l.name),
        }
    }
    assert!(
        s.linears.iter().any(|l| l.rank.is_none()) && s.linears.iter().any(|l| l.rank == Some(170))
    );
    assert!(s.linear_params < s.dense_linear_params);
}

/// `energy`: each layer at the smallest rank keeping that share of its own `Σσ²`, so
/// every factored layer discards at most 1 − e of it and a higher share never lowers a
/// layer's rank; all of it (e = 1) is the full rank, which saves nothing, so every layer
/// stays dense. An energy outside (0, 1] is a usage error.
#[test]
fn energy_ranks_keep_each_layers_share() {
    let dir = TempDir::new("lowrank-energy");
    let input = dir.path().join("tiny.gguf");
    TinyLlama::default().write_gguf(&input);
    let calib = calib_text(dir.path());
    let mut ranks = Vec::new();
    for (i, e) in [0.5, 0.9, 1.0].into_iter().enumerate() {
        for method in [LowrankMethod::Svd, LowrankMethod::Asvd] {
            let out = dir.path().join(format!("e{i}-{method}"));
            let mut o = options(&input, &out, 1.0, method, &calib);
            o.energy = Some(e);
            let s = run(&o, &quiet).unwrap();
            assert_eq!((s.ratio, s.energy), (None, Some(e)));
            for l in &s.linears {
                assert!(
                    l.discarded_energy <= 1.0 - e + 1e-9,
                    "{e} {method} {}: {}",
                    l.name,
                    l.discarded_energy
                );
                if let Some(r) = l.rank {
                    assert!(r * (l.rows + l.cols) < l.rows * l.cols, "{}", l.name);
                }
            }
            if e == 1.0 {
                assert!(s.linears.iter().all(|l| l.rank.is_none()));
                assert_eq!(s.linear_params, s.dense_linear_params);
            }
            if method == LowrankMethod::Svd {
                ranks.push(s.linears.iter().map(|l| l.rank).collect::<Vec<_>>());
            }
        }
    }
    // Dense counts as the full rank.
    let full = |r: &Option<usize>| r.unwrap_or(usize::MAX);
    for (lo, hi) in ranks[0].iter().zip(&ranks[1]) {
        assert!(full(lo) <= full(hi), "{lo:?} > {hi:?}");
    }
    assert!(ranks[0].iter().any(|r| r.is_some()));
    let out = dir.path().join("bad");
    for e in [0.0, 1.5, f64::NAN] {
        let mut o = options(&input, &out, 1.0, LowrankMethod::Svd, &calib);
        o.energy = Some(e);
        let err = run(&o, &quiet).unwrap_err().to_string();
        assert!(err.contains("outside (0, 1]"), "{err}");
    }
    assert!(!out.exists());
}
