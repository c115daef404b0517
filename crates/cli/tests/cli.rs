//! End-to-end tests of the `tersor` binary: `inspect` and `fetch` on the
//! default assets, bad inputs, usage errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const TERSOR: &str = env!("CARGO_BIN_EXE_tersor");

// Published figures (shared/assets/README.md).
const LM_PARAMS: u64 = 134_515_008;
const LM_TENSORS: u64 = 272;
const ENCODER_PARAMS: u64 = 22_713_728;

fn tersor(args: &[&str]) -> Output {
    Command::new(TERSOR)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("cannot run the tersor binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(args: &[&str]) -> String {
    let o = tersor(args);
    assert!(
        o.status.success(),
        "tersor {args:?} failed ({}):\n{}",
        o.status,
        stderr(&o)
    );
    stdout(&o)
}

fn json(args: &[&str]) -> Value {
    let out = ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("tersor {args:?}: bad JSON ({e}):\n{out}"))
}

fn default_lm() -> PathBuf {
    tersor_assets::ensure_default_lm().unwrap_or_else(|e| panic!("default LM: {e}"))
}

fn default_encoder() -> PathBuf {
    tersor_assets::ensure_default_encoder().unwrap_or_else(|e| panic!("default encoder: {e}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `path`'s size × 8 / `params`, as inspect should report it.
fn expected_bpw(path: &Path, params: u64) -> f64 {
    std::fs::metadata(path).unwrap().len() as f64 * 8.0 / params as f64
}

fn type_row<'a>(report: &'a Value, ty: &str) -> &'a Value {
    report["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == ty)
        .unwrap_or_else(|| panic!("no {ty} row in {}", report["types"]))
}

#[test]
fn inspect_default_lm_text() {
    let lm = default_lm();
    // No MODEL argument means the default LM.
    let out = ok(&["inspect"]);
    assert!(out.contains(s(&lm)), "{out}");
    assert!(out.contains("architecture  llama"), "{out}");
    assert!(out.contains("tensors       272"), "{out}");
    assert!(out.contains("parameters    134,515,008"), "{out}");
    let bpw = format!("bits/weight   {:.3}", expected_bpw(&lm, LM_PARAMS));
    assert!(out.contains(&bpw), "want {bpw:?} in\n{out}");
    assert!(bpw.contains("5.850"));
    // One line per tensor.
    assert!(out.contains("token_embd.weight"), "{out}");
    assert!(out.contains("blk.29.ffn_down.weight"), "{out}");
}

#[test]
fn inspect_default_lm_json() {
    let lm = default_lm();
    let r = json(&["inspect", s(&lm), "--json"]);
    let file_bytes = std::fs::metadata(&lm).unwrap().len();
    assert_eq!(r["format"], "gguf");
    assert_eq!(r["architecture"], "llama");
    assert_eq!(r["parameters"], LM_PARAMS);
    assert_eq!(r["n_tensors"], LM_TENSORS);
    assert_eq!(r["file_bytes"], file_bytes);
    let bpw = r["bits_per_weight"].as_f64().unwrap();
    assert!((bpw - expected_bpw(&lm, LM_PARAMS)).abs() < 1e-12, "{bpw}");

    // Types: 210 Q4_1 matrices, the Q8_0 (tied) embedding, F32 norms; their
    // bits per weight follow from the block layouts (20 B / 32, 34 B / 32).
    let q4_1 = type_row(&r, "q4_1");
    assert_eq!(q4_1["tensors"], 210);
    assert_eq!(q4_1["bits_per_weight"], 5.0);
    let q8_0 = type_row(&r, "q8_0");
    assert_eq!(q8_0["tensors"], 1);
    assert_eq!(q8_0["bits_per_weight"], 8.5);
    let f32_ = type_row(&r, "f32");
    assert_eq!(f32_["tensors"], 61);
    assert_eq!(f32_["bits_per_weight"], 32.0);
    let types = r["types"].as_array().unwrap();
    assert_eq!(types.len(), 3, "{types:?}");

    let tensors = r["tensors"].as_array().unwrap();
    assert_eq!(tensors.len() as u64, LM_TENSORS);
    let sum_params: u64 = tensors.iter().map(|t| t["params"].as_u64().unwrap()).sum();
    let sum_bytes: u64 = tensors.iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
    assert_eq!(sum_params, LM_PARAMS);
    assert!(sum_bytes < file_bytes, "tensor data must fit in the file");
    let by_type: u64 = types.iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
    assert_eq!(by_type, sum_bytes);

    let t = |name: &str| {
        tensors
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    };
    let emb = t("token_embd.weight");
    assert_eq!(emb["type"], "q8_0");
    assert_eq!(emb["shape"], serde_json::json!([576, 49152]));
    assert_eq!(emb["bytes"], 576 * 49152 / 32 * 34);
    let down = t("blk.0.ffn_down.weight");
    assert_eq!(down["type"], "q4_1");
    assert_eq!(down["shape"], serde_json::json!([1536, 576]));
    assert_eq!(down["bytes"], 1536 * 576 / 32 * 20);
    assert!(tensors.iter().all(|t| t["name"] != "output.weight"));
}

/// Whether python3 can `import gguf`; under CI (env CI set) it must.
fn python_gguf() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import gguf"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but python3 cannot `import gguf` (pip install gguf==0.19.0 numpy)"
        );
        eprintln!("skipping: python3 cannot `import gguf`");
    }
    ok
}

#[test]
fn inspect_agrees_with_python_gguf() {
    if !python_gguf() {
        return;
    }
    let lm = default_lm();
    let r = json(&["inspect", s(&lm), "--json"]);
    let script = r#"
import sys, json
from gguf import GGUFReader
r = GGUFReader(sys.argv[1])
print(json.dumps([[t.name, [int(d) for d in t.shape], t.tensor_type.name.lower(), int(t.n_elements), int(t.n_bytes)] for t in r.tensors]))
"#;
    let out = Command::new("python3")
        .args(["-c", script, s(&lm)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let reference: Vec<(String, Vec<u64>, String, u64, u64)> =
        serde_json::from_slice(&out.stdout).unwrap();
    let ours: Vec<(String, Vec<u64>, String, u64, u64)> = r["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            serde_json::from_value(serde_json::json!([
                t["name"],
                t["shape"],
                t["type"],
                t["params"],
                t["bytes"]
            ]))
            .unwrap()
        })
        .collect();
    assert_eq!(ours, reference);
}

#[test]
fn inspect_default_encoder_folder() {
    let dir = default_encoder();
    let r = json(&["inspect", s(&dir), "--json"]);
    assert_eq!(r["format"], "safetensors");
    assert_eq!(r["architecture"], "bert");
    assert_eq!(r["parameters"], ENCODER_PARAMS);
    let weights = dir.join("model.safetensors");
    assert_eq!(r["files"], serde_json::json!([s(&weights)]));
    let bpw = r["bits_per_weight"].as_f64().unwrap();
    assert!((bpw - expected_bpw(&weights, ENCODER_PARAMS)).abs() < 1e-12);
    // f32 weights plus the int64 position_ids buffer.
    assert_eq!(type_row(&r, "F32")["params"], ENCODER_PARAMS - 512);
    assert_eq!(type_row(&r, "I64")["params"], 512);
    let tensors = r["tensors"].as_array().unwrap();
    let word = tensors
        .iter()
        .find(|t| t["name"] == "embeddings.word_embeddings.weight")
        .expect("word embeddings");
    assert_eq!(word["shape"], serde_json::json!([30522, 384]));
    assert_eq!(word["bytes"], 30522 * 384 * 4);

    // The weights file alone gives the same totals.
    let single = json(&["inspect", s(&weights), "--json"]);
    assert_eq!(single["parameters"], ENCODER_PARAMS);
    assert_eq!(single["n_tensors"], r["n_tensors"]);
}

/// Runs `tersor inspect path` expecting a clean failure that names `path`.
fn assert_clean_failure(path: &Path) -> String {
    let o = tersor(&["inspect", s(path)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "stderr:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(s(path)), "error must name the file:\n{err}");
    assert!(o.stdout.is_empty(), "no half report on failure");
    err
}

#[test]
fn bad_inputs_fail_cleanly() {
    let lm = default_lm();
    let bytes = std::fs::read(&lm).unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Cut inside the metadata (the vocabulary alone is far larger than 1 MB).
    let head = dir.path().join("head.gguf");
    std::fs::write(&head, &bytes[..1 << 20]).unwrap();
    assert_clean_failure(&head);

    // Header intact, tensor data cut short.
    let short = dir.path().join("short.gguf");
    std::fs::write(&short, &bytes[..bytes.len() - 4096]).unwrap();
    assert_clean_failure(&short);

    // GGUF magic followed by noise.
    let noise: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let magic = dir.path().join("magic.gguf");
    std::fs::write(&magic, [b"GGUF".as_slice(), &noise].concat()).unwrap();
    assert_clean_failure(&magic);

    // Garbage with no telling extension, and an empty file.
    let garbage = dir.path().join("garbage.bin");
    std::fs::write(&garbage, &noise).unwrap();
    assert_clean_failure(&garbage);
    let empty = dir.path().join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    assert_clean_failure(&empty);

    // A truncated safetensors file.
    let st = std::fs::read(default_encoder().join("model.safetensors")).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &st[..st.len() / 2]).unwrap();
    assert_clean_failure(&cut);

    // A folder without weights.
    let empty_dir = dir.path().join("no-weights");
    std::fs::create_dir(&empty_dir).unwrap();
    assert_clean_failure(&empty_dir);

    // Missing file.
    let missing = dir.path().join("missing.gguf");
    let err = assert_clean_failure(&missing);
    assert!(err.to_lowercase().contains("no such file"), "{err}");
}

#[test]
fn usage_errors_exit_2_and_version_works() {
    for args in [
        &["inspect", "--bogus"][..],
        &["no-such-command"],
        &["--threads", "0", "inspect"],
        &[],
    ] {
        let o = tersor(args);
        assert_eq!(o.status.code(), Some(2), "tersor {args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"));
    }
    let v = ok(&["--version"]);
    assert_eq!(v.trim(), format!("tersor {}", env!("CARGO_PKG_VERSION")));
    assert!(ok(&["--help"]).contains("inspect"));
}

#[test]
fn threads_flag_is_accepted() {
    let lm = default_lm();
    let r = json(&["--threads", "1", "inspect", s(&lm), "--json"]);
    assert_eq!(r["parameters"], LM_PARAMS);
    let r = json(&["inspect", s(&lm), "--json", "--threads", "2"]);
    assert_eq!(r["parameters"], LM_PARAMS);
}

#[test]
fn fetch_reports_verified_paths() {
    let r = json(&["fetch", "--json"]);
    let path = |k: &str| PathBuf::from(r[k].as_str().unwrap_or_else(|| panic!("no {k} in {r}")));
    assert_eq!(path("lm"), default_lm());
    assert_eq!(path("encoder_dir"), default_encoder());
    for (k, sha) in [
        (
            "lm",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        (
            "botchan_eval",
            "72acb6dfcb5f8c56279c7662d1264cf17135549db5dfc25d4eb4cfe72fa7dfe7",
        ),
        (
            "botchan_calib",
            "6907a86ed5ac6fb3e138ad3dab1ff4fd81b6e231836270423a9899a5cd653866",
        ),
    ] {
        assert_eq!(tersor_assets::sha256_file(&path(k)).unwrap(), sha, "{k}");
    }
    assert!(path("encoder_dir").join("model.safetensors").is_file());
    assert!(path("botchan").is_file());
    let text = ok(&["fetch"]);
    assert!(text.contains(s(&default_lm())), "{text}");
}

#[test]
fn compress_rejects_bad_budgets_and_options_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    // 1 bit per weight is below what any combination of the default levels reaches.
    let o = tersor(&["compress", "--target-bpw", "1.0", "-o", s(&out), "-q"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("no allocation meets the budget") && e.contains("bpw"),
        "{e}"
    );
    // The range it names is exact: at its top every tensor is Q8_0, the file
    // llama-quantize writes for Q8_0 (144,811,072 bytes in ../shared/REFERENCE.md).
    assert!(e.contains("..=144811072 bytes"), "{e}");
    assert!(!out.exists());
    assert!(
        !dir.path().join("x.gguf.levels").exists(),
        "no database for a bad budget"
    );

    let o = tersor(&["compress", "--format", "onnx", "-o", s(&out)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--format onnx"), "{}", stderr(&o));
    let o = tersor(&["compress", "--db-inputs", "sideways", "-o", s(&out)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("reference or sequential"),
        "{}",
        stderr(&o)
    );
    let o = tersor(&["compress", "--target-size", "lots", "-o", s(&out)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--target-size lots"), "{}", stderr(&o));
    let o = tersor(&["compress", "--levels", "Q4_0,gptq:3:g64", "-o", s(&out)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("gptq:3:g64 cannot be written to a gguf output"),
        "{}",
        stderr(&o)
    );

    // Sparsity budgets: their own option checks, all before any work.
    let sparse = dir.path().join("sparse");
    for (args, want) in [
        (
            &["--target-sparsity", "0.6", "--format", "gguf"][..],
            "--format does not apply",
        ),
        (
            &["--target-sparsity", "2:4"][..],
            "--target-sparsity 2:4: expected a fraction",
        ),
        (
            &["--target-sparsity", "0.6", "--levels", "Q4_0"][..],
            "--levels Q4_0",
        ),
        (
            &["--target-sparsity", "0.6", "--levels", "0.5,lowrank:1.5"][..],
            "--levels lowrank:1.5",
        ),
        (&["--target-sparsity", "0.95"][..], "is outside the levels"),
        (
            &[
                "--target-sparsity",
                "0.6",
                "--levels",
                "0.5,0.5+gptq:4:g128",
            ][..],
            "is costed in bits: use --format dense",
        ),
        // Payload budgets (--format dense): bits per weight only, levels checked, the
        // target against what the levels reach.
        (
            &["--format", "dense", "--target-size", "60M"][..],
            "--format dense takes its budget as --target-bpw",
        ),
        (
            &[
                "--format",
                "dense",
                "--target-bpw",
                "3",
                "--levels",
                "drop+gptq:4:g128",
            ][..],
            "only a sparsity or an N:M pattern can be quantized",
        ),
        (
            &["--format", "dense", "--target-bpw", "3", "--resume"][..],
            "--resume does not apply to --format dense",
        ),
        (
            &["--format", "dense", "--target-bpw", "1.5"][..],
            "reach 2.369 to 4.169 bits per weight",
        ),
    ] {
        let mut a = vec!["compress", "-o", s(&sparse), "-q"];
        a.extend_from_slice(args);
        let o = tersor(&a);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
    let o = tersor(&["compress", "--target-sparsity", "0.6", "--target-bpw", "3"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!sparse.exists());
}

/// Killing `tersor compress` in the middle of its search and running it again with
/// `--resume` ends exactly where an uninterrupted run with the same seed ends.
#[test]
fn compress_killed_mid_search_resumes_to_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("tiny.gguf");
    tersor_testkit::TinyLlama::default().write_gguf(&model);
    let calib = tersor_testkit::calib_text(d);
    let db = d.join("levels");
    const GENERATIONS: usize = 100;
    let gens = GENERATIONS.to_string();
    let args = |out: &Path, report: &Path| -> Vec<String> {
        let mut a: Vec<String> = ["compress", s(&model), "--calib", s(&calib)]
            .iter()
            .map(|x| x.to_string())
            .collect();
        a.extend(
            [
                "--calib-tokens",
                "1024",
                "--ctx",
                "128",
                "--db",
                s(&db),
                "--target-bpw",
                "5.0",
                "--generations",
                &gens,
                "--offspring",
                "4",
                "--stage-windows",
                "1,2,4",
                "--survivors",
                "2,1",
                "--random-samples",
                "2",
                "--eval-chunks",
                "0",
                "--report",
                s(report),
                "-o",
                s(out),
                "-q",
            ]
            .iter()
            .map(|x| x.to_string()),
        );
        a
    };
    let report =
        |p: &Path| -> Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };

    let (whole, whole_report) = (d.join("whole.gguf"), d.join("whole.json"));
    let a = args(&whole, &whole_report);
    ok(&a.iter().map(|x| x.as_str()).collect::<Vec<_>>());

    let (cut, cut_report) = (d.join("cut.gguf"), d.join("cut.json"));
    let a = args(&cut, &cut_report);
    let mut child = Command::new(TERSOR).args(&a).spawn().unwrap();
    let ckpt = d.join("cut.gguf.evopress.json");
    let generation = |p: &Path| -> Option<u64> {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
        v["generation"].as_u64()
    };
    let killed_at = loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the search finished before it could be killed"
        );
        match generation(&ckpt) {
            Some(g) if g >= 3 => {
                child.kill().unwrap();
                child.wait().unwrap();
                break generation(&ckpt).unwrap();
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(2)),
        }
    };
    assert!((killed_at as usize) < GENERATIONS, "killed at {killed_at}");
    assert!(!cut.exists(), "no output before the search ends");

    let mut a = args(&cut, &cut_report);
    a.push("--resume".into());
    ok(&a.iter().map(|x| x.as_str()).collect::<Vec<_>>());
    let (w, c) = (report(&whole_report), report(&cut_report));
    assert_eq!(c["curve"].as_array().unwrap().len(), GENERATIONS);
    assert_eq!(w["curve"], c["curve"], "search curves differ");
    assert_eq!(w["methods"][0]["levels"], c["methods"][0]["levels"]);
    assert_eq!(w["methods"][0]["fitness"], c["methods"][0]["fitness"]);
    // It did resume: the second process ran fewer model calls than a whole search.
    let calls = |r: &Value| -> u64 {
        r["evaluations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .sum()
    };
    assert!(calls(&c) < calls(&w), "{} vs {}", calls(&c), calls(&w));
    assert_eq!(std::fs::read(&whole).unwrap(), std::fs::read(&cut).unwrap());
}

#[test]
fn prune_default_lm_to_two_of_four_as_directory_and_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pruned");
    let lm = default_lm();
    // Magnitude needs no calibration: the fast path through the whole job on real weights.
    let v = json(&[
        "prune",
        s(&lm),
        "--pattern",
        "2:4",
        "--method",
        "magnitude",
        "-o",
        s(&out),
        "--json",
        "-q",
    ]);
    // 30 blocks × (2·576² + 2·576·192 + 3·576·1536) weights, from the model's config.
    let linear_params = 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536);
    assert_eq!(v["linear_params"], linear_params);
    // Half the linears' weights are removed; a few hundred kept ones were already zero
    // (the reference weights are Q4_1 codes, and q·d + m can be exactly 0).
    let zeros = v["linear_zeros"].as_u64().unwrap();
    assert!(
        zeros >= linear_params / 2 && zeros < linear_params / 2 + 10_000,
        "{zeros}"
    );
    assert_eq!(v["params"], LM_PARAMS);
    // f16 everywhere, so the dense directory holds 2 bytes per parameter plus headers;
    // 2:4 stores half the linears' values and 2 index bits per kept one.
    let dense = 2 * LM_PARAMS;
    let file_bytes = v["file_bytes"].as_u64().unwrap();
    assert!(
        file_bytes > dense && file_bytes < dense + 4_000_000,
        "{file_bytes}"
    );
    assert_eq!(
        v["sparse_bytes"],
        dense - linear_params + linear_params / 2 / 4
    );
    // The directory is a checkpoint tersor reads back: every parameter, no quantization.
    let r = json(&["inspect", s(&out), "--json"]);
    assert_eq!(r["parameters"], LM_PARAMS);

    // Usage errors name the problem, and nothing is written.
    let bad = dir.path().join("bad");
    for (args, want) in [
        (vec!["--sparsity", "0.5", "--pattern", "2:4"], "not both"),
        (vec!["--sparsity", "1.5"], "bad sparsity pattern"),
        (vec!["--pattern", "0.5"], "--pattern takes N:M"),
        (
            vec!["--pattern", "2:4", "--method", "obs"],
            "unknown pruning method",
        ),
        (
            vec!["--sparsity", "0.5", "--quantize", "Q4_0"],
            "--quantize takes a GPTQ spec",
        ),
        (
            vec![
                "--sparsity",
                "0.5",
                "--quantize",
                "gptq:4:g128",
                "--method",
                "wanda",
            ],
            "needs --method sparsegpt",
        ),
        (vec!["lowrank", "--ratio", "0"], "outside (0, 1]"),
        (
            vec!["lowrank", "--ratio", "0.5", "--method", "pca"],
            "unknown low-rank method",
        ),
    ] {
        // `lowrank` cases name their command first; the rest are `prune`'s.
        let (cmd, args) = match args.split_first() {
            Some((&"lowrank", rest)) => ("lowrank", rest.to_vec()),
            _ => ("prune", args),
        };
        let mut a = vec![cmd, s(&lm), "-o", s(&bad), "-q"];
        a.extend(args);
        let o = tersor(&a);
        assert_eq!(o.status.code(), Some(1), "{a:?}");
        assert!(stderr(&o).contains(want), "{a:?}: {}", stderr(&o));
    }
    assert!(!bad.exists());

    // The same job to a GGUF file (the input is one): its header, the linears as F16.
    let gguf = dir.path().join("pruned.gguf");
    let v = json(&[
        "prune",
        s(&lm),
        "--pattern",
        "2:4",
        "--method",
        "magnitude",
        "-o",
        s(&gguf),
        "--json",
        "-q",
    ]);
    let zeros = v["linear_zeros"].as_u64().unwrap();
    assert!(zeros >= v["linear_params"].as_u64().unwrap() / 2, "{zeros}");
    assert_eq!(v["params"], LM_PARAMS);
    assert_eq!(
        v["file_bytes"].as_u64().unwrap(),
        std::fs::metadata(&gguf).unwrap().len()
    );

    // The gguf package reads the file: the block linears are F16 with at most 2
    // nonzeros in every 4 inputs and exactly the zeros the summary counts; every other
    // tensor is the input's, byte for byte.
    if python_gguf() {
        let script = r#"
import sys
import numpy as np
from gguf import GGUFReader
out, src = GGUFReader(sys.argv[1]), GGUFReader(sys.argv[2])
src = {t.name: t for t in src.tensors}
linears = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
zeros = over = n = 0
for t in out.tensors:
    if t.name.startswith("blk.") and t.name.split(".")[2] in linears:
        assert t.tensor_type.name == "F16", (t.name, t.tensor_type.name)
        groups = np.asarray(t.data, dtype=np.float32).reshape(-1, 4)
        over += int(((groups != 0).sum(axis=1) > 2).sum())
        zeros += int((groups == 0).sum())
        n += 1
    else:
        s = src[t.name]
        assert s.tensor_type == t.tensor_type, t.name
        assert s.data.tobytes() == t.data.tobytes(), t.name
print(n, over, zeros, int(out.fields["general.file_type"].parts[-1][0]))
"#;
        let py = Command::new("python3")
            .args(["-c", script, s(&gguf), s(&lm)])
            .output()
            .unwrap();
        assert!(py.status.success(), "{}", stderr(&py));
        // 30 blocks × 7 linears, none over 2:4, LLAMA_FTYPE_MOSTLY_F16.
        assert_eq!(
            String::from_utf8_lossy(&py.stdout).trim(),
            format!("210 0 {zeros} 1")
        );
    }

    // The directory output holds the same linears: tersor scores the two files alike.
    // Only the embedding differs (the GGUF keeps the input's Q4_1 codes, the directory
    // rounds them to f16), so KL is tiny but not zero.
    let hf = &out;
    let e = json(&[
        "eval",
        s(&gguf),
        "--ref",
        s(hf),
        "--max-windows",
        "1",
        "--json",
        "-q",
    ]);
    let kl = e["perplexity"]["kl"]["kld_mean"].as_f64().unwrap();
    assert!(kl < 1e-4, "{kl}");

    // GGUF output needs a GGUF decoder input (its header) and plain linears; nothing is
    // written.
    let bad = dir.path().join("bad.gguf");
    let encoder = default_encoder();
    for (args, want) in [
        (
            vec![
                "prune",
                s(&encoder),
                "--sparsity",
                "0.5",
                "--method",
                "magnitude",
            ],
            "sentence encoders are written as Hugging Face directories",
        ),
        (
            vec!["prune", s(hf), "--pattern", "2:4", "--method", "magnitude"],
            "is a Hugging Face directory",
        ),
        (
            vec!["lowrank", s(&lm), "--ratio", "0.5", "--method", "svd"],
            "low-rank factors have no GGUF layout",
        ),
    ] {
        let mut a = args.clone();
        a.extend(["-o", s(&bad), "-q"]);
        let o = tersor(&a);
        assert_eq!(o.status.code(), Some(1), "{a:?}");
        assert!(stderr(&o).contains(want), "{a:?}: {}", stderr(&o));
    }
    assert!(!bad.exists());
}

/// `tersor pack` / `unpack` on the default LM and the encoder folder: bit-exact,
/// and `inspect` reads the packed files as it reads the originals.
#[test]
fn pack_unpack_and_inspect_packed_models() {
    let dir = tempfile::tempdir().unwrap();
    let lm = default_lm();
    let packed = dir.path().join("lm.tsp");
    let report = json(&[
        "pack",
        s(&lm),
        "-o",
        s(&packed),
        "--verify",
        "--stats",
        "--json",
    ]);
    let packed_len = std::fs::metadata(&packed).unwrap().len();
    assert_eq!(report["packed_bytes"].as_u64(), Some(packed_len));
    assert_eq!(report["verified"], true);
    assert!(
        report["ratio"].as_f64().unwrap() <= 0.88,
        "{}",
        report["ratio"]
    );
    let q41 = report["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["layout"] == "q4_1")
        .expect("Q4_1 tensors coded as q4_1 planes");
    assert!(q41["packed_bytes"].as_u64() < q41["raw_bytes"].as_u64());

    let out = dir.path().join("lm.gguf");
    ok(&["unpack", s(&packed), "-o", s(&out)]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&lm).unwrap());
    // --no-nibbles codes the Q4_1 quants as bytes: another file, the same
    // bytes back.
    let bytes_packed = dir.path().join("lm-bytes.tsp");
    let r = json(&[
        "pack",
        s(&lm),
        "-o",
        s(&bytes_packed),
        "--no-nibbles",
        "--json",
    ]);
    assert_ne!(r["packed_bytes"], report["packed_bytes"]);
    let out2 = dir.path().join("lm2.gguf");
    ok(&["unpack", s(&bytes_packed), "-o", s(&out2)]);
    assert!(std::fs::read(&out2).unwrap() == std::fs::read(&lm).unwrap());

    let direct = json(&["inspect", s(&lm), "--json"]);
    let via_pack = json(&["inspect", s(&packed), "--json"]);
    assert_eq!(via_pack["parameters"], direct["parameters"]);
    assert_eq!(via_pack["parameters"].as_u64(), Some(LM_PARAMS));

    // A directory: the encoder folder, inspected straight from the pack.
    let enc = default_encoder();
    let enc_packed = dir.path().join("minilm.tsp");
    ok(&["pack", s(&enc), "-o", s(&enc_packed)]);
    let via_pack = json(&["inspect", s(&enc_packed), "--json"]);
    assert_eq!(via_pack["parameters"].as_u64(), Some(ENCODER_PARAMS));
    let enc_out = dir.path().join("minilm");
    ok(&["unpack", s(&enc_packed), "-o", s(&enc_out)]);
    assert!(
        std::fs::read(enc_out.join("model.safetensors")).unwrap()
            == std::fs::read(enc.join("model.safetensors")).unwrap()
    );
    // Unpacking a directory never overwrites one.
    let o = tersor(&["unpack", s(&enc_packed), "-o", s(&enc_out)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
}

/// A damaged pack file is reported (naming the file), and nothing is written.
#[test]
fn unpack_reports_corruption_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let enc = default_encoder();
    let packed = dir.path().join("m.tsp");
    ok(&["pack", s(&enc.join("model.safetensors")), "-o", s(&packed)]);
    let mut bytes = std::fs::read(&packed).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    let bad = dir.path().join("bad.tsp");
    std::fs::write(&bad, &bytes).unwrap();
    let out = dir.path().join("out.safetensors");
    let o = tersor(&["unpack", s(&bad), "-o", s(&out)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(s(&bad)) && err.contains("corrupt"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "no half-written output");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 2, "temporary files left behind");
    // Not a pack file at all.
    let o = tersor(&["unpack", s(&enc.join("config.json")), "-o", s(&out)]);
    assert!(
        stderr(&o).contains("not a tersor pack file"),
        "{}",
        stderr(&o)
    );
}
