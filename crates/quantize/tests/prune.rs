//! End-to-end runs of the pruning job on tiny synthetic Llamas: the written Hugging Face
//! directory loads, holds exactly the requested sparsity or N:M pattern, reproduces the
//! model at sparsity 0, and SparseGPT and Wanda lose less than magnitude pruning.

mod common;

use std::path::Path;

use common::kl_to_reference;

use tersor_model::{LinearKind, LoadedModel};
use tersor_prune::pattern::satisfies_nm;
use tersor_quantize::prune::{
    FloatDtype, Pattern, PruneMethod, PruneOptions, PruneReport, PruneSummary,
};
use tersor_quantize::{CalibConfig, Event};
use tersor_testkit::{calib_text, TempDir, TinyLlama};

/// The job on a decoder (every model here is one).
fn run(o: &PruneOptions, p: &(dyn Fn(Event) + Sync)) -> tersor_quantize::Result<PruneSummary> {
    tersor_quantize::prune::run(o, p).map(|r| match r {
        PruneReport::Decoder(s) => s,
        PruneReport::Encoder(_) => panic!("an encoder report for a decoder"),
    })
}

fn options(
    input: &Path,
    output: &Path,
    pattern: Pattern,
    method: PruneMethod,
    calib: &Path,
) -> PruneOptions {
    let mut o = PruneOptions::new(
        input.to_path_buf(),
        output.to_path_buf(),
        pattern,
        method,
        CalibConfig {
            path: calib.to_path_buf(),
            max_tokens: 1024,
            ctx: 128,
        },
    );
    // Exact zeros and weights: the comparisons below are on f32.
    o.dtype = FloatDtype::F32;
    o
}

fn quiet(_: Event) {}

fn linears(path: &Path) -> Vec<(Vec<f32>, usize, usize)> {
    let LoadedModel::Decoder { model, .. } = tersor_model::load(path).unwrap() else {
        panic!("not a decoder")
    };
    let mut out = Vec::new();
    for l in 0..model.n_layers() {
        for kind in LinearKind::ALL {
            let t = model.linear_weight(l, kind).unwrap();
            let (r, c) = t.dims2().unwrap();
            out.push((t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), r, c));
        }
    }
    out
}

#[test]
fn pruned_directories_hold_the_pattern_and_data_aware_pruners_lose_less() {
    let dir = TempDir::new("prune");
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
        // Sparsity 0 writes the model back unchanged (q/k rows back in HF order).
        let out = dir.path().join(format!("{label}-s0"));
        run(
            &options(
                input,
                &out,
                Pattern::Unstructured(0.0),
                PruneMethod::Magnitude,
                &calib,
            ),
            &quiet,
        )
        .unwrap();
        let kl0 = kl_to_reference(&out, input, &calib);
        assert!(
            kl0 < 1e-6,
            "{label}: sparsity 0 changed the model (KL {kl0})"
        );

        for pattern in [Pattern::Unstructured(0.6), Pattern::NM { n: 2, m: 4 }] {
            let mut kl = Vec::new();
            for method in [
                PruneMethod::Magnitude,
                PruneMethod::Wanda,
                PruneMethod::SparseGpt,
            ] {
                let out = dir.path().join(format!("{label}-{method}-{pattern}"));
                let s = run(&options(input, &out, pattern, method, &calib), &quiet).unwrap();
                assert!(out.join("config.json").is_file() && out.join("tokenizer.json").is_file());
                let cfg = std::fs::read_to_string(out.join("config.json")).unwrap();
                assert!(!cfg.contains("quantization_config"), "{cfg}");
                for (w, rows, cols) in linears(&out) {
                    let zeros = w.iter().filter(|&&x| x == 0.0).count();
                    match pattern {
                        // Wanda counts per row; the others per layer.
                        Pattern::Unstructured(sp) if method == PruneMethod::Wanda => {
                            assert_eq!(zeros, rows * (sp * cols as f64).round() as usize)
                        }
                        Pattern::Unstructured(sp) => {
                            assert_eq!(zeros, (sp * (rows * cols) as f64).round() as usize)
                        }
                        Pattern::NM { n, m } => {
                            assert!(
                                satisfies_nm(&w, cols, n, m),
                                "{label} {method}: not {n}:{m}"
                            );
                        }
                    }
                }
                // Within rounding to whole weights per row (Wanda, rows of 256: 154/256).
                assert!(
                    (s.linear_sparsity - pattern.sparsity()).abs() < 2.0 / 256.0,
                    "{}",
                    s.linear_sparsity
                );
                // Sparse payload: f32 values + mask/indices, well under the dense size.
                assert!(
                    s.sparse_bytes < s.file_bytes,
                    "{} vs {}",
                    s.sparse_bytes,
                    s.file_bytes
                );
                kl.push(kl_to_reference(&out, input, &calib));
            }
            eprintln!(
                "{label} {pattern}: KL magnitude {:.4}, wanda {:.4}, sparsegpt {:.4}",
                kl[0], kl[1], kl[2]
            );
            assert!(
                kl[2] < 0.8 * kl[0] && kl[1] < kl[0],
                "{label} {pattern}: {kl:?}"
            );
        }
    }
}

#[test]
fn global_magnitude_prunes_the_model_as_a_whole() {
    let dir = TempDir::new("prune-global");
    let input = dir.path().join("tiny.gguf");
    TinyLlama::default().write_gguf(&input);
    let calib = calib_text(dir.path());
    let out = dir.path().join("global");
    let s = run(
        &options(
            &input,
            &out,
            Pattern::Unstructured(0.5),
            PruneMethod::MagnitudeGlobal,
            &calib,
        ),
        &quiet,
    )
    .unwrap();
    let all = linears(&out);
    let total: usize = all.iter().map(|l| l.0.len()).sum();
    let zeros: usize = all
        .iter()
        .map(|l| l.0.iter().filter(|&&x| x == 0.0).count())
        .sum();
    assert_eq!(zeros, total / 2);
    assert_eq!(s.linear_zeros as usize, zeros);
    // One threshold: every kept weight is at least as large as every removed one.
    let before = linears(&input);
    let mut kept_min = f32::INFINITY;
    let mut removed_max = 0f32;
    for ((b, ..), (a, ..)) in before.iter().zip(&all) {
        // GGUF input and HF output order q/k rows differently; magnitudes per tensor
        // are what matter here, so compare as multisets of |w|.
        let mut kept: Vec<f32> = a.iter().filter(|&&x| x != 0.0).map(|x| x.abs()).collect();
        kept.sort_by(f32::total_cmp);
        let mut orig: Vec<f32> = b.iter().map(|x| x.abs()).collect();
        orig.sort_by(f32::total_cmp);
        let removed = orig.len() - kept.len();
        assert_eq!(&orig[removed..], &kept[..]);
        kept_min = kept_min.min(kept.first().copied().unwrap_or(f32::INFINITY));
        removed_max = removed_max.max(if removed > 0 { orig[removed - 1] } else { 0.0 });
    }
    assert!(removed_max <= kept_min, "{removed_max} > {kept_min}");
}

#[test]
fn bad_patterns_give_clear_errors_and_no_output() {
    let dir = TempDir::new("prune-bad");
    let input = dir.path().join("tiny.gguf");
    TinyLlama::default().write_gguf(&input);
    let calib = calib_text(dir.path());
    let out = dir.path().join("out");
    // Rows of 256 do not split into groups of 3.
    let e = run(
        &options(
            &input,
            &out,
            Pattern::NM { n: 1, m: 3 },
            PruneMethod::Magnitude,
            &calib,
        ),
        &quiet,
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("tiny.gguf") && msg.contains("multiple of 3"),
        "{msg}"
    );
    let e = run(
        &options(
            &input,
            &out,
            Pattern::NM { n: 2, m: 4 },
            PruneMethod::MagnitudeGlobal,
            &calib,
        ),
        &quiet,
    )
    .unwrap_err();
    assert!(e.to_string().contains("unstructured"), "{e}");
    assert!(!out.exists());
}

#[test]
fn joint_pruning_and_quantization_writes_grid_values_and_costs_them_honestly() {
    let dir = TempDir::new("prune-quant");
    let input = dir.path().join("tiny.gguf");
    TinyLlama::default().write_gguf(&input);
    let calib = calib_text(dir.path());
    let spec: tersor_quantize::Target = "gptq:4:g32".parse().unwrap();
    let tersor_quantize::Target::Gptq(spec) = spec else {
        unreachable!()
    };
    for pattern in [Pattern::Unstructured(0.5), Pattern::NM { n: 2, m: 4 }] {
        let out = dir.path().join(format!("joint-{pattern}"));
        let mut o = options(&input, &out, pattern, PruneMethod::SparseGpt, &calib);
        o.quantize = Some(spec);
        let s = run(&o, &quiet).unwrap();
        assert_eq!(s.quantize.as_deref(), Some("gptq:4:g32"));
        let mut payload_bits = 0u64;
        let mut other_bytes: u64 = s.tensors.iter().map(|t| t.bytes).sum();
        for (w, rows, cols) in linears(&out) {
            let zeros = w.iter().filter(|&&x| x == 0.0).count();
            match pattern {
                // Kept weights that round to zero add to the pruned ones.
                Pattern::Unstructured(sp) => {
                    assert!(zeros >= (sp * (rows * cols) as f64).round() as usize)
                }
                Pattern::NM { n, m } => assert!(satisfies_nm(&w, cols, n, m)),
            }
            // Every (row, group of 32) holds at most 16 distinct values (4-bit codes),
            // zero among them.
            for r in 0..rows {
                for g in (0..cols).step_by(32) {
                    let mut v: Vec<f32> = w[r * cols + g..r * cols + g + 32].to_vec();
                    v.push(0.0);
                    v.sort_by(f32::total_cmp);
                    v.dedup();
                    assert!(v.len() <= 16, "row {r} group {g}: {} values", v.len());
                }
            }
            // The payload, recomputed: kept values at 4 bits, a bitmask or 2-bit N:M
            // indices, a 16-bit scale and a 4-bit zero per group of 32.
            let params = (rows * cols) as u64;
            let groups = (rows * cols.div_ceil(32)) as u64;
            let (values, index) = match pattern {
                Pattern::Unstructured(_) => (params - zeros as u64, params),
                Pattern::NM { .. } => (params / 2, params),
            };
            payload_bits += values * 4 + index + groups * 20;
            other_bytes -= params * 4;
        }
        // Whole-byte rounding per linear: within one byte each.
        let linears_bytes = s.sparse_bytes - other_bytes;
        let n = s.linears.len() as u64;
        assert!(
            linears_bytes >= payload_bits / 8 && linears_bytes <= payload_bits / 8 + n,
            "{pattern}: {linears_bytes} vs {} bits",
            payload_bits
        );
        assert!(kl_to_reference(&out, &input, &calib).is_finite());
    }
    // Only SparseGPT prunes and quantizes jointly; bf16 cannot hold the grid's values.
    let out = dir.path().join("bad");
    let mut o = options(
        &input,
        &out,
        Pattern::Unstructured(0.5),
        PruneMethod::Wanda,
        &calib,
    );
    o.quantize = Some(spec);
    let e = run(&o, &quiet).unwrap_err().to_string();
    assert!(e.contains("sparsegpt"), "{e}");
    o.method = PruneMethod::SparseGpt;
    o.dtype = FloatDtype::BF16;
    let e = run(&o, &quiet).unwrap_err().to_string();
    assert!(e.contains("bf16"), "{e}");
    assert!(!out.exists());
}
