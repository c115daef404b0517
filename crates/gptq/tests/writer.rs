//! The directory writer: consistency checks against the config, single-file and
//! sharded output with identical contents, stale files, the JSON files.

mod common;

use std::path::Path;

use common::{random_layer, LayerSpec, Rng};
use serde_json::{json, Value};
use tersor_gptq::{
    hf_llama_config, FloatDtype, GptqWriter, LlamaHfConfig, QuantizationConfig, QuantizedLinear,
};
use tersor_safetensors::SafetensorsModel;

fn config() -> QuantizationConfig {
    QuantizationConfig::from_json_str(
        r#"{"bits": 4, "group_size": 32, "sym": true, "desc_act": false,
            "dynamic": {"-:skip\\.": {}, "+:act\\.": {"desc_act": true, "sym": false, "bits": 8}}}"#,
    )
    .unwrap()
}

fn spec(bits: u8, sym: bool, act_order: bool) -> LayerSpec {
    LayerSpec {
        bits,
        out_features: 32,
        in_features: 64,
        group_size: Some(32),
        sym,
        act_order,
    }
}

fn add_err(w: &mut GptqWriter, module: &str, l: &QuantizedLinear) -> String {
    w.add_quantized(module, l).unwrap_err().to_string()
}

#[test]
fn layers_must_agree_with_the_config() {
    let mut rng = Rng::new(1);
    let mut w = GptqWriter::new(config()).unwrap();
    let ok = random_layer(&mut rng, spec(4, true, false));
    w.add_quantized("m.a", &ok).unwrap();
    let e = add_err(&mut w, "m.a", &ok);
    assert!(e.contains("added twice"), "{e}");
    let e = add_err(&mut w, "m.b", &random_layer(&mut rng, spec(8, true, false)));
    assert!(
        e.contains("`m.b`") && e.contains("8 bits") && e.contains("4 bits"),
        "{e}"
    );
    let e = add_err(
        &mut w,
        "m.c",
        &random_layer(&mut rng, spec(4, false, false)),
    );
    assert!(e.contains("sym is set"), "{e}");
    let e = add_err(&mut w, "m.d", &random_layer(&mut rng, spec(4, true, true)));
    assert!(e.contains("without desc_act"), "{e}");
    let per_channel = LayerSpec {
        group_size: None,
        ..spec(4, true, false)
    };
    let e = add_err(&mut w, "m.e", &random_layer(&mut rng, per_channel));
    assert!(e.contains("1 groups") && e.contains("gives 2"), "{e}");
    let e = add_err(&mut w, "skip.x", &ok);
    assert!(e.contains("exclude"), "{e}");
    // The `act.` rule: 8 bits, asymmetric, act-order allowed.
    w.add_quantized("act.x", &random_layer(&mut rng, spec(8, false, true)))
        .unwrap();
    // A float weight for a quantized module, in either order.
    let e = w
        .add_tensor("m.a.weight", &[2], &[1.0, 2.0], FloatDtype::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already added quantized"), "{e}");
    w.add_tensor("m.f.weight", &[32, 64], &vec![0.5; 2048], FloatDtype::BF16)
        .unwrap();
    let e = add_err(&mut w, "m.f", &ok);
    assert!(e.contains("plain tensor"), "{e}");
    // Shapes and values of float tensors.
    let e = w
        .add_tensor("x", &[3], &[1.0, 2.0], FloatDtype::F16)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not match"), "{e}");
    let e = w
        .add_tensor("y", &[1], &[1e6], FloatDtype::F16)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not finite in F16"), "{e}");
    for bad in ["../x", "config.json", "a/b", ""] {
        assert!(w.add_file(bad, String::new()).is_err(), "{bad}");
    }
}

fn tensors_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let m = SafetensorsModel::open(dir).unwrap();
    m.names()
        .into_iter()
        .map(|n| (n.to_string(), m.raw(n).unwrap().2.to_vec()))
        .collect()
}

#[test]
fn single_and_sharded_outputs_hold_the_same_tensors() {
    let mut rng = Rng::new(2);
    let mut w = GptqWriter::new(config()).unwrap();
    for i in 0..6 {
        w.add_quantized(
            &format!("m.{i}"),
            &random_layer(&mut rng, spec(4, true, false)),
        )
        .unwrap();
    }
    w.add_tensor(
        "emb.weight",
        &[100, 64],
        &rng.vec(6400, 1.0),
        FloatDtype::F16,
    )
    .unwrap();
    w.add_file("tokenizer.json", "{}".into()).unwrap();
    let base = json!({"model_type": "llama", "quantization_config": {"bits": 2}});

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    w.write(&dir, &base).unwrap();
    assert!(dir.join("model.safetensors").is_file());
    let single = tensors_of(&dir);
    assert_eq!(single.len(), 6 * 4 + 1);

    // Rewrite the same directory sharded: the single file goes, the shards hold the
    // same bytes.
    let w = w.with_max_shard_bytes(4096);
    w.write(&dir, &base).unwrap();
    assert!(!dir.join("model.safetensors").exists());
    assert!(dir.join("model.safetensors.index.json").is_file());
    let shards = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name();
            let n = n.to_string_lossy();
            n.starts_with("model-0") && n.ends_with(".safetensors")
        })
        .count();
    assert!(shards > 2, "{shards} shards");
    assert_eq!(tensors_of(&dir), single);
    // And back: the shards and the index go.
    let w = w.with_max_shard_bytes(u64::MAX);
    w.write(&dir, &base).unwrap();
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "config.json",
            "model.safetensors",
            "quantize_config.json",
            "tokenizer.json"
        ],
        "no temporary or stale files"
    );
    assert_eq!(tensors_of(&dir), single);

    // config.json: the model's keys plus our quantization_config (replacing the given
    // one); quantize_config.json: the same object.
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "llama");
    let q = &cfg["quantization_config"];
    assert_eq!(q["bits"], 4);
    assert_eq!(q["quant_method"], "gptq");
    assert_eq!(q["checkpoint_format"], "gptq");
    assert_eq!(q["dynamic"]["-:skip\\."], json!({}));
    let qc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("quantize_config.json")).unwrap())
            .unwrap();
    assert_eq!(&qc, q);
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    assert_eq!(
        QuantizationConfig::from_hf_config_str(&text).unwrap(),
        Some(config())
    );
}

#[test]
fn write_rejects_bad_requests() {
    let w = GptqWriter::new(config()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let e = w.write(tmp.path(), &json!({})).unwrap_err().to_string();
    assert!(e.contains("no quantized module"), "{e}");
    let mut w = w;
    let mut rng = Rng::new(3);
    w.add_quantized("m", &random_layer(&mut rng, spec(4, true, false)))
        .unwrap();
    let e = w.write(tmp.path(), &json!([1])).unwrap_err().to_string();
    assert!(e.contains("JSON object"), "{e}");
    let mut bad = config();
    bad.bits = 7;
    assert!(GptqWriter::new(bad).is_err());
}

#[test]
fn llama_config_fields() {
    let c = LlamaHfConfig {
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: 30,
        num_attention_heads: 9,
        num_key_value_heads: 3,
        head_dim: None,
        rms_norm_eps: 1e-5,
        rope_theta: 100_000.0,
        vocab_size: 49152,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    };
    let v = hf_llama_config(&c).unwrap();
    assert_eq!(v["architectures"], json!(["LlamaForCausalLM"]));
    assert_eq!(v["model_type"], "llama");
    assert_eq!(v["head_dim"], 64);
    assert_eq!(v["num_key_value_heads"], 3);
    assert_eq!(v["rope_theta"], 100_000.0);
    assert_eq!(v["tie_word_embeddings"], true);
    assert_eq!(v["torch_dtype"], "float16");
    assert_eq!(v["eos_token_id"], 2);
    let err = |c: LlamaHfConfig| hf_llama_config(&c).unwrap_err().to_string();
    assert!(err(LlamaHfConfig {
        num_key_value_heads: 2,
        ..c.clone()
    })
    .contains("multiple of 2"));
    assert!(err(LlamaHfConfig {
        num_attention_heads: 7,
        num_key_value_heads: 7,
        ..c.clone()
    })
    .contains("not divisible"));
    assert!(err(LlamaHfConfig {
        rms_norm_eps: 0.0,
        ..c.clone()
    })
    .contains("rms_norm_eps"));
    assert!(err(LlamaHfConfig { vocab_size: 0, ..c }).contains("vocab_size is 0"));
}

#[test]
fn a_dense_checkpoint_has_no_quantization_config_and_replaces_a_gptq_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ckpt");
    let base = json!({"model_type": "llama", "quantization_config": {"bits": 4}});
    // First a GPTQ checkpoint in the directory...
    let mut rng = Rng::new(3);
    let mut q = GptqWriter::new(config()).unwrap();
    q.add_quantized("m.a", &random_layer(&mut rng, spec(4, true, false)))
        .unwrap();
    q.write(&out, &base).unwrap();
    assert!(out.join("quantize_config.json").is_file());
    // ...then a dense one over it: no sidecar, no quantization_config, plain floats.
    let mut d = GptqWriter::dense();
    assert!(d.config().is_none());
    let e = d
        .add_quantized("m.a", &random_layer(&mut rng, spec(4, true, false)))
        .unwrap_err();
    assert!(e.to_string().contains("dense checkpoint"), "{e}");
    d.add_tensor(
        "m.a.weight",
        &[2, 2],
        &[1.0, 0.0, 0.0, -2.5],
        FloatDtype::F32,
    )
    .unwrap();
    d.write(&out, &base).unwrap();
    assert!(!out.join("quantize_config.json").exists());
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg, json!({"model_type": "llama"}));
    let st = SafetensorsModel::open(&out).unwrap();
    assert_eq!(st.to_f32("m.a.weight").unwrap(), vec![1.0, 0.0, 0.0, -2.5]);
    assert_eq!(st.names(), vec!["m.a.weight"]);
}
