//! `preset::plan` against llama.cpp's own llama-quantize (commit c392e509).
//!
//! `fixtures/llama_presets.json` (tools/llama_presets/gen.py) records, for the
//! default LM as F32 and three synthetic llama/qwen2 GGUFs, the type
//! llama-quantize wrote for every tensor and the `general.file_type`, for
//! every supported preset with and without an importance matrix (or the error
//! it stopped with). The tests replay `plan` on the same tensor lists.

use std::collections::BTreeMap;
use std::path::PathBuf;

use regex::Regex;
use serde_json::Value;
use tersor_ggml::GgmlType;
use tersor_gguf::GgufFile;
use tersor_quant::imatrix::Imatrix;
use tersor_quant::preset::{plan, plan_with, ModelFacts, PlanOptions, Preset, TensorInfo};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load_fixture() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("llama_presets.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ty(id: &Value) -> GgmlType {
    GgmlType::from_id(id.as_u64().unwrap() as u32).unwrap()
}

struct Model {
    name: String,
    facts: ModelFacts,
    tensors: Vec<TensorInfo>,
    output_order: Vec<String>,
}

fn model(m: &Value) -> Model {
    let u = |k: &str| m[k].as_u64().unwrap() as usize;
    let tensors = m["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let ne = t[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            TensorInfo::new(t[0].as_str().unwrap(), ne, ty(&t[2]))
        })
        .collect();
    Model {
        name: m["name"].as_str().unwrap().to_string(),
        facts: ModelFacts {
            arch: m["arch"].as_str().unwrap().to_string(),
            n_layer: u("n_layer"),
            n_head: u("n_head"),
            n_head_kv: u("n_head_kv"),
            n_expert: u("n_expert"),
        },
        tensors,
        output_order: m["output_order"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect(),
    }
}

/// Every tensor's type and the file type, for every preset, model and
/// imatrix setting llama-quantize was run with.
#[test]
fn plans_match_llama_quantize() {
    let fx = load_fixture();
    let mut mismatches = Vec::new();
    let mut n_runs = 0;
    let mut n_fallbacks = 0;
    let mut n_errors = 0;
    let mut presets_seen = std::collections::HashSet::new();
    for m in fx["models"].as_array().unwrap() {
        let md = model(m);
        for run in m["runs"].as_array().unwrap() {
            n_runs += 1;
            let preset = Preset::from_name(run["preset"].as_str().unwrap()).unwrap();
            presets_seen.insert(preset);
            let has_imatrix = run["imatrix"].as_bool().unwrap();
            let tag = format!("{} {preset} imatrix={has_imatrix}", md.name);
            let got = plan(preset, &md.tensors, &md.facts, &[], has_imatrix);
            if let Some(err) = run.get("error") {
                n_errors += 1;
                let want = match err.as_str().unwrap() {
                    "needs_imatrix" => "needs an importance matrix",
                    "unsupported_tensor_size" => "Unsupported tensor size encountered",
                    other => panic!("{tag}: fixture error kind {other} not handled"),
                };
                match got {
                    Ok(_) => mismatches.push(format!("{tag}: planned, llama-quantize failed")),
                    Err(e) if !e.to_string().contains(want) => {
                        mismatches.push(format!("{tag}: error '{e}', want '{want}'"))
                    }
                    Err(_) => {}
                }
                continue;
            }
            let plans = match got {
                Ok(p) => p,
                Err(e) => {
                    mismatches.push(format!("{tag}: plan failed: {e}"));
                    continue;
                }
            };
            assert_eq!(
                run["file_type"].as_u64().unwrap() as u32,
                preset.file_type(),
                "{tag}: general.file_type"
            );
            let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(names, md.output_order, "{tag}: tensor order");
            let want_types = run["types"].as_array().unwrap();
            assert_eq!(want_types.len(), plans.len(), "{tag}");
            let source: BTreeMap<&str, GgmlType> =
                md.tensors.iter().map(|t| (t.name.as_str(), t.ty)).collect();
            for (p, w) in plans.iter().zip(want_types) {
                if p.ty != ty(w) {
                    mismatches.push(format!(
                        "{tag}: {} planned {} but llama-quantize wrote {}",
                        p.name,
                        p.ty,
                        ty(w)
                    ));
                }
                assert_eq!(
                    p.quantize,
                    p.ty != source[p.name.as_str()],
                    "{tag} {}",
                    p.name
                );
                assert!(!p.overridden);
                if let Some(from) = p.fallback_from {
                    n_fallbacks += 1;
                    assert_ne!(from, p.ty, "{tag} {}", p.name);
                }
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(30)].join("\n")
    );
    // The fixture covers every supported preset on 4 models, both ways.
    assert_eq!(presets_seen.len(), Preset::ALL.len());
    assert_eq!(n_runs, 4 * 2 * Preset::ALL.len());
    assert!(
        n_fallbacks > 1000 && n_errors >= 12,
        "{n_fallbacks} {n_errors}"
    );
}

/// Q2_K_S: the tensors llama-quantize needs importance data for all have it
/// in the imatrix the fixture's run used (that run succeeded).
#[test]
fn q2_k_s_imatrix_coverage() {
    let fx = load_fixture();
    let md = model(&fx["models"][0]);
    assert_eq!(md.name, "smollm2");
    let im = Imatrix::read(&fixture_dir().join("imatrix_smollm2_c128x2.dat")).unwrap();
    let plans = plan(Preset::Q2_K_S, &md.tensors, &md.facts, &[], true).unwrap();
    let needing: Vec<_> = plans.iter().filter(|p| p.needs_imatrix).collect();
    // ffn_down of layers 3..29 (the first 30/8 = 3 get Q4_K); the rest fall
    // back to IQ4_NL, which needs none.
    assert_eq!(needing.len(), 27);
    for p in needing {
        assert_eq!(p.ty, GgmlType::Q2K);
        assert!(im.importance(&p.name).is_some(), "{}", p.name);
    }
}

fn default_model() -> (Vec<TensorInfo>, ModelFacts) {
    let path = tersor_assets::ensure_default_lm().unwrap();
    let f = GgufFile::open(&path).unwrap();
    (
        TensorInfo::from_gguf(&f),
        ModelFacts::from_gguf(&f).unwrap(),
    )
}

/// Share of the parameters per type, in percent.
fn shares(
    tensors: &[TensorInfo],
    plans: &[tersor_quant::preset::TensorPlan],
) -> BTreeMap<String, f64> {
    let n: BTreeMap<&str, u64> = tensors
        .iter()
        .map(|t| (t.name.as_str(), t.ne.iter().product()))
        .collect();
    let total: u64 = n.values().sum();
    let mut out = BTreeMap::new();
    for p in plans {
        *out.entry(p.ty.to_string()).or_insert(0.0) += n[p.name.as_str()] as f64;
    }
    out.values_mut().for_each(|v| *v *= 100.0 / total as f64);
    out
}

/// Bits per weight over the 210 block matrices ("bpw linear").
fn bpw_linear(tensors: &[TensorInfo], plans: &[tersor_quant::preset::TensorPlan]) -> f64 {
    let by: BTreeMap<&str, &TensorInfo> = tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let (mut bits, mut n) = (0f64, 0u64);
    for p in plans
        .iter()
        .filter(|p| p.name.starts_with("blk.") && by[p.name.as_str()].ne.len() == 2)
    {
        let ne: u64 = by[p.name.as_str()].ne.iter().product();
        bits += p.ty.bytes_for(ne).unwrap() as f64 * 8.0;
        n += ne;
    }
    bits / n as f64
}

/// A REFERENCE.md row: preset, imatrix, bpw linear, (type, % of params).
type Row = (Preset, bool, f64, &'static [(&'static str, f64)]);

/// The default LM's type shares and linear bpw against llama.cpp's figures in
/// /work/shared/REFERENCE.md (rounded there to 0.1 % and 0.01 bpw).
#[test]
fn default_model_matches_reference_table() {
    let (tensors, facts) = default_model();
    assert_eq!(facts.n_layer, 30);
    assert_eq!(facts.n_gqa(), 3);
    #[rustfmt::skip]
    let table: &[Row] = &[
        (Preset::Q8_0, false, 8.50, &[("Q8_0", 100.0)]),
        (Preset::Q6_K, false, 8.02, &[("Q6_K", 19.7), ("Q8_0", 80.2)]),
        (Preset::Q5_K_M, false, 6.04, &[("Q5_1", 58.0), ("Q5_K", 10.5), ("Q6_K", 9.2), ("Q8_0", 22.2)]),
        (Preset::Q4_K_M, false, 5.53, &[("Q5_0", 58.0), ("Q4_K", 10.5), ("Q6_K", 9.2), ("Q8_0", 22.2)]),
        (Preset::Q4_K_M, true, 5.53, &[("Q5_0", 58.0), ("Q4_K", 10.5), ("Q6_K", 9.2), ("Q8_0", 22.2)]),
        (Preset::Q3_K_M, false, 4.63, &[("IQ4_NL", 49.3), ("Q4_K", 19.1), ("Q5_0", 9.7), ("Q5_1", 0.2), ("Q5_K", 0.7), ("Q8_0", 21.0)]),
        (Preset::Q3_K_M, true, 4.63, &[("IQ4_NL", 49.3), ("Q4_K", 19.1), ("Q5_0", 9.7), ("Q5_1", 0.2), ("Q5_K", 0.7), ("Q8_0", 21.0)]),
        (Preset::Q4_0, false, 4.50, &[("Q4_0", 78.9), ("Q8_0", 21.0)]),
        (Preset::IQ4_NL, true, 4.50, &[("IQ4_NL", 78.9), ("Q8_0", 21.0)]),
        (Preset::Q2_K, false, 4.23, &[("IQ4_NL", 59.2), ("Q3_K", 19.7), ("Q8_0", 21.0)]),
        (Preset::Q3_K_S, false, 4.23, &[("IQ4_NL", 59.2), ("Q3_K", 19.7), ("Q8_0", 21.0)]),
    ];
    for &(preset, imatrix, bpw, want) in table {
        let plans = plan(preset, &tensors, &facts, &[], imatrix).unwrap();
        let got = shares(&tensors, &plans);
        for &(t, pct) in want {
            let g = got.get(t).copied().unwrap_or(0.0);
            assert!((g - pct).abs() <= 0.051, "{preset}: {t} {g:.3}% vs {pct}%");
        }
        // Nothing else but the F32 norms (0.03 %).
        let listed: f64 = want
            .iter()
            .map(|w| got.get(w.0).copied().unwrap_or(0.0))
            .sum();
        let f32_share = got.get("F32").copied().unwrap_or(0.0);
        assert!(
            (listed + f32_share - 100.0).abs() < 1e-9,
            "{preset}: {got:?}"
        );
        assert!(f32_share < 0.03, "{preset}: {got:?}");
        let b = bpw_linear(&tensors, &plans);
        assert!(
            (b - bpw).abs() <= 0.0051,
            "{preset}: bpw linear {b:.4} vs {bpw}"
        );
    }
    // "Q2_K and Q3_K_S differ by one header byte".
    // (Only the types requested before the fallback differ.)
    let types = |p: Preset| -> Vec<(String, GgmlType)> {
        let plans = plan(p, &tensors, &facts, &[], false).unwrap();
        plans.into_iter().map(|p| (p.name, p.ty)).collect()
    };
    assert!(types(Preset::Q2_K) == types(Preset::Q3_K_S));
    assert_ne!(Preset::Q2_K.file_type(), Preset::Q3_K_S.file_type());

    // "IQ4_NL + imatrix, embedding too": IQ4_NL 100 % (with
    // --token-embedding-type iq4_nl).
    let opts = PlanOptions {
        has_imatrix: true,
        token_embedding_type: Some(GgmlType::IQ4NL),
        ..PlanOptions::default()
    };
    let plans = plan_with(Preset::IQ4_NL, &tensors, &facts, &opts).unwrap();
    let got = shares(&tensors, &plans);
    assert!((got["IQ4_NL"] + got["F32"] - 100.0).abs() < 1e-9, "{got:?}");
}

/// `REGEX=TYPE` overrides: after the preset's rules, before the fallback,
/// last match wins, never on tensors that are not quantized.
#[test]
fn overrides() {
    let (tensors, facts) = default_model();
    let ov = |s: &str, t: GgmlType| (Regex::new(s).unwrap(), t);
    let base = plan(Preset::Q4_K_M, &tensors, &facts, &[], false).unwrap();
    let overrides = [
        ov(r"attn_v", GgmlType::Q8_0),
        ov(r"ffn_(gate|up)", GgmlType::Q4K),
        ov(r"blk\.0\.ffn_gate", GgmlType::Q6K),
        ov(r"norm", GgmlType::Q8_0),
    ];
    let plans = plan(Preset::Q4_K_M, &tensors, &facts, &overrides, false).unwrap();
    assert_eq!(plans.len(), base.len());
    for (p, b) in plans.iter().zip(&base) {
        assert_eq!(p.name, b.name);
        let n = p.name.as_str();
        if n.contains("norm") {
            assert_eq!((p.ty, p.overridden), (GgmlType::F32, false), "{n}");
        } else if n.contains("attn_v") {
            assert_eq!(
                (p.ty, p.overridden, p.fallback_from),
                (GgmlType::Q8_0, true, None)
            );
        } else if n == "blk.0.ffn_gate.weight" {
            // last match wins; 576-wide rows do not fit Q6_K
            assert_eq!(
                (p.ty, p.fallback_from),
                (GgmlType::Q8_0, Some(GgmlType::Q6K))
            );
        } else if n.contains("ffn_gate") || n.contains("ffn_up") {
            assert_eq!(
                (p.ty, p.fallback_from),
                (GgmlType::Q5_0, Some(GgmlType::Q4K)),
                "{n}"
            );
            assert!(p.overridden);
        } else {
            assert_eq!(p, b, "{n}");
        }
    }
    // The attn_v counter still advances for an overridden tensor: overriding
    // layer 0 leaves every other layer's choice (Q8_0 where use_more_bits,
    // else Q5_0) as it was.
    let only0 = [ov(r"^blk\.0\.attn_v", GgmlType::F16)];
    let plans = plan(Preset::Q4_K_M, &tensors, &facts, &only0, false).unwrap();
    let v = |ps: &[tersor_quant::preset::TensorPlan]| -> Vec<GgmlType> {
        ps.iter()
            .filter(|p| p.name.contains("attn_v"))
            .map(|p| p.ty)
            .collect()
    };
    let (got, want) = (v(&plans), v(&base));
    assert_eq!(got[0], GgmlType::F16);
    assert_eq!(got[1..], want[1..]);
    assert_eq!(want[3], GgmlType::Q5_0);
    assert_eq!(want[5], GgmlType::Q8_0);
}

#[test]
fn options_and_errors() {
    let (tensors, facts) = default_model();
    // --pure Q4_K: the 576-wide matrices cannot be Q4_K and llama.cpp applies
    // no fallback under --pure.
    let pure = PlanOptions {
        pure: true,
        ..PlanOptions::default()
    };
    let e = plan_with(Preset::Q4_K_M, &tensors, &facts, &pure)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot be stored as Q4_K"), "{e}");
    let p = plan_with(Preset::Q8_0, &tensors, &facts, &pure).unwrap();
    assert!(p
        .iter()
        .all(|p| p.ty == GgmlType::Q8_0 || p.ty == GgmlType::F32));

    // --token-embedding-type is applied after the fallback: Q4_K on rows of
    // 576 is an error, not a silent substitute.
    let opts = PlanOptions {
        token_embedding_type: Some(GgmlType::Q4K),
        ..PlanOptions::default()
    };
    let e = plan_with(Preset::Q4_K_M, &tensors, &facts, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("token_embd.weight"), "{e}");

    // --output-tensor-type reaches the tied embedding; --leave-output-tensor
    // has nothing to leave in a tied model.
    let opts = PlanOptions {
        output_tensor_type: Some(GgmlType::F16),
        leave_output_tensor: true,
        ..PlanOptions::default()
    };
    let p = plan_with(Preset::Q4_K_M, &tensors, &facts, &opts).unwrap();
    assert_eq!(
        p.iter().find(|p| p.name == "token_embd.weight").unwrap().ty,
        GgmlType::F16
    );

    // Q4_1 from the Q4_1 file: the matrices already have the type.
    let p = plan(Preset::Q4_1, &tensors, &facts, &[], false).unwrap();
    let q41: Vec<_> = p.iter().filter(|p| p.ty == GgmlType::Q4_1).collect();
    assert_eq!(q41.len(), 210);
    assert!(q41.iter().all(|p| !p.quantize));

    let e = plan(Preset::Q2_K_S, &tensors, &facts, &[], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs an importance matrix"), "{e}");

    let moe = ModelFacts {
        n_expert: 8,
        ..facts.clone()
    };
    let e = plan(Preset::Q4_K_M, &tensors, &moe, &[], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("mixture-of-experts"), "{e}");
    let falcon = ModelFacts {
        arch: "falcon".into(),
        ..facts.clone()
    };
    let e = plan(Preset::Q4_K_M, &tensors, &falcon, &[], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("falcon"), "{e}");
    let short = ModelFacts {
        n_layer: 29,
        ..facts.clone()
    };
    let e = plan(Preset::Q4_K_M, &tensors, &short, &[], false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("30 attention value tensors but 29 layers"),
        "{e}"
    );
    let mut dup = tensors.clone();
    dup.push(tensors[5].clone());
    let e = plan(Preset::Q4_K_M, &dup, &facts, &[], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("appears twice"), "{e}");
}

/// The 70B rule and n_gqa ≥ 4 rules on a model with 256-aligned rows (no
/// fallbacks), which the fixtures' small models cannot reach.
#[test]
fn seventy_b_attn_v() {
    let n_layer = 80;
    let mut tensors = vec![TensorInfo::new(
        "token_embd.weight",
        vec![256, 512],
        GgmlType::F32,
    )];
    for i in 0..n_layer {
        tensors.push(TensorInfo::new(
            format!("blk.{i}.attn_v.weight"),
            vec![256, 32],
            GgmlType::F32,
        ));
    }
    let facts = ModelFacts {
        arch: "llama".into(),
        n_layer,
        n_head: 64,
        n_head_kv: 8,
        n_expert: 0,
    };
    assert!(facts.is_70b());
    // Q3_K_S gives attn_v Q3_K, bumped to Q5_K for 70B; Q4_K_M's non
    // use_more_bits layers get Q4_K, bumped to Q5_K.
    for preset in [Preset::Q3_K_S, Preset::Q4_K_S] {
        let p = plan(preset, &tensors, &facts, &[], false).unwrap();
        assert!(p
            .iter()
            .filter(|p| p.name.contains("attn_v"))
            .all(|p| p.ty == GgmlType::Q5K));
    }
    let p = plan(Preset::Q4_K_M, &tensors, &facts, &[], false).unwrap();
    let v: Vec<_> = p
        .iter()
        .filter(|p| p.name.contains("attn_v"))
        .map(|p| p.ty)
        .collect();
    assert_eq!(v[0], GgmlType::Q6K);
    assert_eq!(v[11], GgmlType::Q5K);
    let not70 = ModelFacts {
        n_head_kv: 64,
        ..facts
    };
    assert!(!not70.is_70b());
    let p = plan(Preset::Q3_K_S, &tensors, &not70, &[], false).unwrap();
    assert!(p
        .iter()
        .filter(|p| p.name.contains("attn_v"))
        .all(|p| p.ty == GgmlType::Q3K));
}
