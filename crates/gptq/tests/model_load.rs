//! A GPTQ directory written by [`GptqWriter`] loads with `tersor_model::load`: a small
//! random Llama with mixed-bits `dynamic` settings (a skipped module, 3-bit act-order
//! per-channel MLP, 8-bit down projections, 4-bit symmetric elsewhere) and the default
//! GGUF's tokenizer gives exactly the logits of the same model written unquantized with
//! our dequantized weights as f32. Broken directories fail with errors naming the file.

mod common;

use std::path::Path;

use common::{random_layer, LayerSpec, Rng};
use serde_json::Value;
use tersor_gguf::GgufFile;
use tersor_gptq::{
    hf_llama_config, tokenizer_files_from_gguf, FloatDtype, GptqWriter, LlamaHfConfig,
    QuantizationConfig,
};
use tersor_model::{load, Llama, LoadedModel};
use tersor_safetensors::{write_safetensors, Dtype};

const HIDDEN: usize = 64;
const FFN: usize = 128;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const VOCAB: usize = 49152;

fn llama_config() -> Value {
    hf_llama_config(&LlamaHfConfig {
        hidden_size: HIDDEN,
        intermediate_size: FFN,
        num_hidden_layers: LAYERS,
        num_attention_heads: HEADS,
        num_key_value_heads: KV_HEADS,
        head_dim: None,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        vocab_size: VOCAB,
        max_position_embeddings: 2048,
        tie_word_embeddings: true,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    })
    .unwrap()
}

const QUANT_CONFIG: &str = r#"{
    "bits": 4, "group_size": 32, "sym": true, "desc_act": false,
    "quant_method": "gptq", "checkpoint_format": "gptq",
    "dynamic": {
        "-:model\\.layers\\.0\\.self_attn\\.o_proj": {},
        "+:model\\.layers\\.1\\.mlp\\.": {"bits": 3, "group_size": -1, "sym": false, "desc_act": true},
        "+:.*down_proj": {"bits": 8, "group_size": 64, "sym": false}
    }
}"#;

/// (name, shape) of every linear, HF naming.
fn linears() -> Vec<(String, [usize; 2])> {
    let kv = HIDDEN / HEADS * KV_HEADS;
    let mut v = Vec::new();
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        for (n, s) in [
            ("self_attn.q_proj", [HIDDEN, HIDDEN]),
            ("self_attn.k_proj", [kv, HIDDEN]),
            ("self_attn.v_proj", [kv, HIDDEN]),
            ("self_attn.o_proj", [HIDDEN, HIDDEN]),
            ("mlp.gate_proj", [FFN, HIDDEN]),
            ("mlp.up_proj", [FFN, HIDDEN]),
            ("mlp.down_proj", [HIDDEN, FFN]),
        ] {
            v.push((format!("{p}.{n}"), s));
        }
    }
    v
}

/// Writes the GPTQ directory and an f32 reference directory with the same weights.
fn write_pair(gptq: &Path, reference: &Path, tokenizer_from: &Path) {
    let mut rng = Rng::new(99);
    let config = QuantizationConfig::from_json_str(QUANT_CONFIG).unwrap();
    let mut w = GptqWriter::new(config.clone()).unwrap();
    let mut f32_tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    // An unquantized tensor: f16 in the GPTQ directory, the same values as f32 in the
    // reference.
    let plain = |w: &mut GptqWriter,
                 f32_tensors: &mut Vec<(String, Vec<usize>, Vec<f32>)>,
                 name: String,
                 shape: Vec<usize>,
                 data: Vec<f32>| {
        let data: Vec<f32> = data
            .into_iter()
            .map(|x| half::f16::from_f32(x).to_f32())
            .collect();
        w.add_tensor(&name, &shape, &data, FloatDtype::F16).unwrap();
        f32_tensors.push((name, shape, data));
    };
    plain(
        &mut w,
        &mut f32_tensors,
        "model.embed_tokens.weight".into(),
        vec![VOCAB, HIDDEN],
        rng.vec(VOCAB * HIDDEN, 1.0),
    );
    let norm = |rng: &mut Rng| rng.vec(HIDDEN, 0.2).into_iter().map(|x| x + 1.0).collect();
    plain(
        &mut w,
        &mut f32_tensors,
        "model.norm.weight".into(),
        vec![HIDDEN],
        norm(&mut rng),
    );
    for l in 0..LAYERS {
        for n in ["input_layernorm", "post_attention_layernorm"] {
            let v = norm(&mut rng);
            plain(
                &mut w,
                &mut f32_tensors,
                format!("model.layers.{l}.{n}.weight"),
                vec![HIDDEN],
                v,
            );
        }
    }
    let mut quantized = 0;
    for (module, [out, inp]) in linears() {
        match config.resolve(&module) {
            None => {
                let v = rng.vec(out * inp, 0.1);
                plain(
                    &mut w,
                    &mut f32_tensors,
                    format!("{module}.weight"),
                    vec![out, inp],
                    v,
                );
            }
            Some(q) => {
                let spec = LayerSpec {
                    bits: q.bits,
                    out_features: out,
                    in_features: inp,
                    group_size: (q.group_size > 0).then_some(q.group_size as usize),
                    sym: q.sym,
                    act_order: q.desc_act,
                };
                let layer = random_layer(&mut rng, spec);
                w.add_quantized(&module, &layer).unwrap();
                f32_tensors.push((
                    format!("{module}.weight"),
                    vec![out, inp],
                    layer.dequantize().unwrap(),
                ));
                quantized += 1;
            }
        }
    }
    assert_eq!(quantized, 13);
    let gguf = GgufFile::open(tokenizer_from).unwrap();
    let tok = tokenizer_files_from_gguf(&gguf).unwrap();
    tok.add_to(&mut w).unwrap();
    w.write(gptq, &llama_config()).unwrap();

    std::fs::create_dir_all(reference).unwrap();
    let bytes: Vec<Vec<u8>> = f32_tensors
        .iter()
        .map(|(_, _, d)| d.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let list: Vec<(String, Dtype, Vec<usize>, &[u8])> = f32_tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| (n.clone(), Dtype::F32, s.clone(), b.as_slice()))
        .collect();
    write_safetensors(&reference.join("model.safetensors"), &list, None).unwrap();
    std::fs::write(
        reference.join("config.json"),
        serde_json::to_string(&llama_config()).unwrap(),
    )
    .unwrap();
}

#[test]
fn gptq_directory_loads_with_the_dequantized_weights() {
    let Some(assets) = common::assets() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (gptq, reference) = (tmp.path().join("gptq"), tmp.path().join("ref"));
    write_pair(&gptq, &reference, &assets.join(common::DEFAULT_GGUF));
    for f in [
        "config.json",
        "quantize_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        assert!(gptq.join(f).is_file(), "{f}");
    }
    // config.json keeps the `dynamic` order of the input.
    let cfg = std::fs::read_to_string(gptq.join("config.json")).unwrap();
    let (a, b) = (
        cfg.find("-:model").unwrap(),
        cfg.find("+:.*down_proj").unwrap(),
    );
    assert!(a < b);

    let LoadedModel::Decoder { model, tokenizer } = load(&gptq).unwrap() else {
        panic!("expected a decoder");
    };
    let want = Llama::from_hf_dir(&reference).unwrap();
    let tokens = tokenizer
        .encode("It was a fine day in Matsuyama, 123.", false)
        .unwrap();
    assert!(tokens.len() > 5);
    let got = model.forward(&tokens).unwrap().flatten_all().unwrap();
    let exp = want.forward(&tokens).unwrap().flatten_all().unwrap();
    let (got, exp) = (got.to_vec1::<f32>().unwrap(), exp.to_vec1::<f32>().unwrap());
    assert_eq!(got.len(), tokens.len() * VOCAB);
    assert!(got.iter().all(|x| x.is_finite()));
    assert!(
        got.iter()
            .zip(&exp)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "logits differ from the f32 reference"
    );
}

#[test]
fn broken_gptq_directories_fail_naming_the_file() {
    let Some(assets) = common::assets() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (gptq, reference) = (tmp.path().join("gptq"), tmp.path().join("ref"));
    write_pair(&gptq, &reference, &assets.join(common::DEFAULT_GGUF));
    let cfg_path = gptq.join("config.json");
    let original = std::fs::read_to_string(&cfg_path).unwrap();
    let load_err = |text: &str| {
        std::fs::write(&cfg_path, text).unwrap();
        let e = load(&gptq).unwrap_err().to_string();
        std::fs::write(&cfg_path, &original).unwrap();
        e
    };
    // Without the 8-bit rule the down projections' shapes contradict the config.
    let e = load_err(&original.replace("\"+:.*down_proj\"", "\"+:nothing\""));
    assert!(
        e.contains("model.safetensors")
            && e.contains("model.layers.0.mlp.down_proj")
            && e.contains("shape"),
        "{e}"
    );
    // A module the config excludes must not have GPTQ tensors (layer 0's o_proj, no
    // longer excluded, is simply a float weight).
    let e = load_err(&original.replace(
        "\"-:model\\\\.layers\\\\.0\\\\.self_attn\\\\.o_proj\"",
        "\"-:model\\\\.layers\\\\.1\\\\.self_attn\\\\.q_proj\"",
    ));
    assert!(
        e.contains("model.layers.1.self_attn.q_proj") && e.contains("exclude"),
        "{e}"
    );
    let e = load_err(&original.replace(
        "\"checkpoint_format\": \"gptq\"",
        "\"checkpoint_format\": \"gptq_v2\"",
    ));
    assert!(e.contains("config.json") && e.contains("gptq_v2"), "{e}");
    let e = load_err(&original.replace("\"quant_method\": \"gptq\"", "\"quant_method\": \"awq\""));
    assert!(e.contains("config.json") && e.contains("awq"), "{e}");
    assert!(load(&gptq).is_ok());

    // A corrupted value: g_idx[0] of one module points past the last group.
    let st_path = gptq.join("model.safetensors");
    let mut bytes = std::fs::read(&st_path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header["model.layers.0.self_attn.k_proj.g_idx"]["data_offsets"][0]
        .as_u64()
        .unwrap() as usize;
    bytes[8 + n + start..8 + n + start + 4].copy_from_slice(&1000i32.to_le_bytes());
    std::fs::write(&st_path, bytes).unwrap();
    let e = load(&gptq).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors")
            && e.contains("model.layers.0.self_attn.k_proj")
            && e.contains("g_idx[0] = 1000"),
        "{e}"
    );
}
