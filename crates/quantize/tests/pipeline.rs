//! End-to-end runs of the quantization job on tiny synthetic Llamas: every ggml type
//! cross-checked against the `gguf` Python package, GPTQ against RTN, bad inputs.

mod common;

use std::path::Path;

use common::kl_to_reference;

use sha2::{Digest, Sha256};
use tersor_ggml::GgmlType;
use tersor_gguf::GgufFile;
use tersor_quantize::{CalibConfig, Event, MethodSpec, QuantizeOptions, Report, Summary, Target};

/// The job on a decoder (every model here is one).
fn run(o: &QuantizeOptions, p: &(dyn Fn(Event) + Sync)) -> tersor_quantize::Result<Summary> {
    tersor_quantize::run(o, p).map(|r| match r {
        Report::Decoder(s) => s,
        Report::Encoder(_) => panic!("an encoder report for a decoder"),
    })
}
use tersor_testkit::{calib_text, gguf_py_hashes, TempDir, TinyLlama};

const TYPES: [GgmlType; 11] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::IQ4NL,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

fn options(
    input: &Path,
    output: &Path,
    target: &str,
    method: &str,
    calib: &Path,
) -> QuantizeOptions {
    options_for(input, output, target.parse().unwrap(), method, calib)
}

fn options_for(
    input: &Path,
    output: &Path,
    target: Target,
    method: &str,
    calib: &Path,
) -> QuantizeOptions {
    let mut o = QuantizeOptions::new(
        input.to_path_buf(),
        output.to_path_buf(),
        target,
        method.parse::<MethodSpec>().unwrap(),
        CalibConfig {
            path: calib.to_path_buf(),
            max_tokens: 1024,
            ctx: 128,
        },
    );
    o.awq_rows = 256;
    o
}

fn quiet(_: Event) {}

/// sha256 of every tensor's f32 values as decoded by tersor.
fn tersor_hashes(path: &Path) -> Vec<(String, String)> {
    let f = GgufFile::open(path).unwrap();
    f.tensors()
        .iter()
        .map(|t| {
            let v = tersor_ggml::dequantize_to_vec(t.ty, f.tensor_data(t), t.n_elements() as usize)
                .unwrap();
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (t.name.clone(), hex(&Sha256::digest(&bytes)))
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn every_ggml_type_decodes_identically_in_gguf_py() {
    let dir = TempDir::new("quantize-types");
    let input = dir.path().join("tiny.gguf");
    TinyLlama::default().write_gguf(&input);
    let calib = calib_text(dir.path());
    let py = tersor_testkit::python_has(&["gguf", "numpy"]);
    for ty in TYPES {
        for method in ["rtn", "gptq"] {
            let out = dir.path().join(format!("{}-{method}.gguf", ty.name()));
            let o = options_for(&input, &out, Target::Uniform(ty), method, &calib);
            let s = run(&o, &quiet).unwrap();
            let f = GgufFile::open(&out).unwrap();
            // Every block linear and the embedding got the type; norms stayed F32.
            for t in f.tensors() {
                let want = if t.name.ends_with("norm.weight") {
                    GgmlType::F32
                } else {
                    ty
                };
                assert_eq!(t.ty, want, "{} in the {} file", t.name, ty.name());
            }
            assert_eq!(s.file_bytes, std::fs::metadata(&out).unwrap().len());
            if py {
                assert_eq!(
                    tersor_hashes(&out),
                    gguf_py_hashes(&out),
                    "{} {method}",
                    ty.name()
                );
            }
        }
    }
}

#[test]
fn gptq_and_awq_lose_less_than_rtn() {
    let dir = TempDir::new("quantize-gptq");
    let input = dir.path().join("tiny.gguf");
    TinyLlama::default().write_gguf(&input);
    let calib = calib_text(dir.path());
    for ty in ["Q3_K", "Q4_0"] {
        let kl = |method: &str| {
            let out = dir.path().join(format!("{ty}-{method}.gguf"));
            run(&options(&input, &out, ty, method, &calib), &quiet).unwrap();
            kl_to_reference(&out, &input, &calib)
        };
        let (rtn, gptq, awq) = (kl("rtn"), kl("gptq"), kl("awq+gptq"));
        eprintln!("{ty}: KL rtn {rtn:.5}, gptq {gptq:.5}, awq+gptq {awq:.5}");
        assert!(gptq < 0.8 * rtn, "{ty}: gptq {gptq} vs rtn {rtn}");
        assert!(awq < rtn, "{ty}: awq+gptq {awq} vs rtn {rtn}");
    }
}

#[test]
fn bad_inputs_give_clear_errors_and_no_output() {
    let dir = TempDir::new("quantize-bad");
    let input = dir.path().join("tiny.gguf");
    TinyLlama::default().write_gguf(&input);

    // Calibration text shorter than one window.
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "too short").unwrap();
    let out = dir.path().join("out.gguf");
    let e = run(&options(&input, &out, "Q4_K", "gptq", &short), &quiet).unwrap_err();
    let msg = chain(&e);
    assert!(
        msg.contains("short.txt") && msg.contains("fewer than one window"),
        "{msg}"
    );
    assert!(!out.exists());

    // A non-finite weight names the tensor.
    let tiny = TinyLlama {
        seed: 9,
        ..TinyLlama::default()
    };
    let bad = dir.path().join("nan.gguf");
    tiny.write_gguf(&bad);
    poison(&bad, "blk.1.ffn_up.weight");
    let calib = calib_text(dir.path());
    let e = run(&options(&bad, &out, "Q4_K", "rtn", &calib), &quiet).unwrap_err();
    let msg = chain(&e);
    assert!(
        msg.contains("blk.1.ffn_up.weight") && msg.contains("NaN"),
        "{msg}"
    );
    assert!(!out.exists());

    // Unknown targets and methods.
    assert!("Q9_K"
        .parse::<Target>()
        .unwrap_err()
        .to_string()
        .contains("unknown --type"));
    assert!("sgd".parse::<MethodSpec>().is_err());
}

#[test]
fn forbidden_types_fall_back_as_llama_cpp_does() {
    let dir = TempDir::new("quantize-fallback");
    let input = dir.path().join("narrow.gguf");
    // Rows of 96 values: no k-quant fits (256-blocks); llama.cpp falls back per type.
    TinyLlama {
        hidden: 96,
        ffn: 256,
        heads: 3,
        kv_heads: 1,
        ..TinyLlama::default()
    }
    .write_gguf(&input);
    let calib = calib_text(dir.path());
    let out = dir.path().join("q4k.gguf");
    let s = run(&options(&input, &out, "Q4_K", "rtn", &calib), &quiet).unwrap();
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.tensor("blk.0.attn_q.weight").unwrap().ty, GgmlType::Q5_0);
    // ffn_down's rows are 256 long: Q4_K fits there.
    assert_eq!(f.tensor("blk.0.ffn_down.weight").unwrap().ty, GgmlType::Q4K);
    assert!(
        s.notes
            .iter()
            .any(|n| n.contains("cannot be q4_K") || n.contains("cannot be Q4_K")),
        "{:?}",
        s.notes
    );
}

/// Overwrite the first value of `name` with NaN (an F32 tensor).
fn poison(path: &Path, name: &str) {
    let f = GgufFile::open(path).unwrap();
    let t = f.tensor(name).unwrap();
    let off = (f.data_offset() + t.offset) as usize;
    drop(f);
    let mut bytes = std::fs::read(path).unwrap();
    bytes[off..off + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

/// An error and its causes, as the CLI prints them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// GPTQ-format outputs, from a GGUF and from a Hugging Face input: they load back
/// (tersor-gptq's unpacking, checked against GPTQModel's reference in its own tests),
/// with the q/k rows of a GGUF input put back in Hugging Face order (else the KL would
/// explode), and GPTQ loses less than RTN.
#[test]
fn gptq_checkpoints_from_gguf_and_hf_inputs() {
    let dir = TempDir::new("quantize-gptq-format");
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
        let mut kls = Vec::new();
        for method in ["rtn", "gptq"] {
            // g96 leaves a partial last group on rows of 256 (96 + 96 + 64).
            let out = dir.path().join(format!("{label}-{method}"));
            let s = run(
                &options(input, &out, "gptq:3:g96:asym", method, &calib),
                &quiet,
            )
            .unwrap();
            assert!(out.join("config.json").is_file() && out.join("tokenizer.json").is_file());
            let cfg: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                    .unwrap();
            let q = &cfg["quantization_config"];
            assert_eq!(
                (q["bits"].as_u64(), q["group_size"].as_i64()),
                (Some(3), Some(96))
            );
            assert_eq!(q["sym"], serde_json::json!(false));
            // 3 bits + per-group fp16 scale and packed zero per 96 weights, + g_idx.
            assert!(s.bpw_linear > 3.0 && s.bpw_linear < 3.6, "{}", s.bpw_linear);
            kls.push(kl_to_reference(&out, input, &calib));
        }
        eprintln!(
            "{label}: 3-bit g96 KL rtn {:.5}, gptq {:.5}",
            kls[0], kls[1]
        );
        assert!(kls[1] < 0.8 * kls[0], "{label}: {kls:?}");
        assert!(kls[0] > 0.0);
    }
}
