//! The same tiny random Llama written as a Hugging Face directory (config.json,
//! two bf16 safetensors shards + index, tokenizer.json) and as a GGUF file (q/k
//! rows permuted as llama.cpp's converter does, Llama 3 RoPE scaling as a
//! `rope_freqs` tensor, byte-level BPE vocabulary in the metadata). Both load paths
//! must give the same tokens and logits. Also: clear errors for bad inputs.

mod common;

use std::path::{Path, PathBuf};

use common::Rng;
use tersor_gguf::{GgmlType, GgufWriter, Value, ValueType};
use tersor_model::{load, Error, LoadedModel};
use tersor_safetensors::Dtype;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::Tokenizer;

// A 256-aligned synthetic shape with grouped-query attention.
const VOCAB: usize = 256;
const HIDDEN: usize = 256;
const FFN: usize = 768;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = HIDDEN / HEADS;
const THETA: f64 = 500_000.0;
// Llama 3 RoPE scaling parameters.
const FACTOR: f64 = 8.0;
const LOW_FREQ_FACTOR: f64 = 1.0;
const HIGH_FREQ_FACTOR: f64 = 4.0;
const OLD_CONTEXT: f64 = 64.0;

/// A tensor in Hugging Face naming, row-major, values exactly representable in bf16.
struct HfTensor {
    name: String,
    shape: Vec<usize>,
    data: Vec<f32>,
}

fn bf16_round(v: Vec<f32>) -> Vec<f32> {
    v.into_iter()
        .map(|x| half::bf16::from_f32(x).to_f32())
        .collect()
}

fn random_checkpoint(seed: u64) -> Vec<HfTensor> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n = shape.iter().product();
        let data = bf16_round(rng.vec(n, scale).into_iter().map(|x| x + offset).collect());
        out.push(HfTensor { name, shape, data });
    };
    push(
        "model.embed_tokens.weight".into(),
        vec![VOCAB, HIDDEN],
        1.0,
        0.0,
    );
    push("model.norm.weight".into(), vec![HIDDEN], 0.2, 1.0);
    push("lm_head.weight".into(), vec![VOCAB, HIDDEN], 0.1, 0.0);
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        push(
            format!("{p}.input_layernorm.weight"),
            vec![HIDDEN],
            0.2,
            1.0,
        );
        push(
            format!("{p}.post_attention_layernorm.weight"),
            vec![HIDDEN],
            0.2,
            1.0,
        );
        let s = |n: usize| 1.0 / (n as f32).sqrt();
        push(
            format!("{p}.self_attn.q_proj.weight"),
            vec![HEADS * HEAD_DIM, HIDDEN],
            3.0 * s(HIDDEN),
            0.0,
        );
        push(
            format!("{p}.self_attn.k_proj.weight"),
            vec![KV_HEADS * HEAD_DIM, HIDDEN],
            3.0 * s(HIDDEN),
            0.0,
        );
        push(
            format!("{p}.self_attn.v_proj.weight"),
            vec![KV_HEADS * HEAD_DIM, HIDDEN],
            s(HIDDEN),
            0.0,
        );
        push(
            format!("{p}.self_attn.o_proj.weight"),
            vec![HIDDEN, HEADS * HEAD_DIM],
            s(HIDDEN),
            0.0,
        );
        push(
            format!("{p}.mlp.gate_proj.weight"),
            vec![FFN, HIDDEN],
            s(HIDDEN),
            0.0,
        );
        push(
            format!("{p}.mlp.up_proj.weight"),
            vec![FFN, HIDDEN],
            s(HIDDEN),
            0.0,
        );
        push(
            format!("{p}.mlp.down_proj.weight"),
            vec![HIDDEN, FFN],
            s(FFN),
            0.0,
        );
    }
    out
}

/// GPT-2's byte-level alphabet as 256 token strings (ids in sorted character order).
fn byte_tokens() -> Vec<String> {
    let mut chars: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    chars.sort();
    assert_eq!(chars.len(), 256);
    chars.into_iter().map(String::from).collect()
}

fn write_hf_dir(dir: &Path, tensors: &[HfTensor]) {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": 1e-5,
        "rope_theta": THETA,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": FACTOR,
            "low_freq_factor": LOW_FREQ_FACTOR,
            "high_freq_factor": HIGH_FREQ_FACTOR,
            "original_max_position_embeddings": OLD_CONTEXT
        },
        "tie_word_embeddings": false,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "bfloat16"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();

    // bf16 shards (two, by size) and the index that maps names to them.
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| {
            t.data
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect()
        })
        .collect();
    let list: Vec<(String, Dtype, Vec<usize>, &[u8])> = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| (t.name.clone(), Dtype::BF16, t.shape.clone(), b.as_slice()))
        .collect();
    let total: usize = bytes.iter().map(Vec::len).sum();
    tersor_safetensors::write_sharded(dir, &list, (total * 6 / 10) as u64).unwrap();
    assert!(dir.join("model-00002-of-00002.safetensors").is_file());

    // Byte-level BPE without merges: one token per byte.
    let vocab: tokenizers::models::bpe::Vocab = byte_tokens()
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, vec![])
        .build()
        .unwrap();
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    tok.save(dir.join("tokenizer.json"), false).unwrap();
}

/// llama.cpp's converter permutation of q/k rows (`LlamaModel.permute` in
/// convert_hf_to_gguf.py): within each head, row `j * hd/2 + i` moves to `2 i + j`,
/// turning half-split RoPE pairs into adjacent ones.
fn permute_rows(w: &[f32], n_heads: usize, n_in: usize) -> Vec<f32> {
    let rows = w.len() / n_in;
    let hd = rows / n_heads;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_heads {
        for j in 0..2 {
            for i in 0..hd / 2 {
                let src = h * hd + j * hd / 2 + i;
                let dst = h * hd + 2 * i + j;
                out[dst * n_in..(dst + 1) * n_in].copy_from_slice(&w[src * n_in..(src + 1) * n_in]);
            }
        }
    }
    out
}

/// llama.cpp's converter's Llama 3 `rope_freqs` factors (one divisor per frequency).
fn llama3_rope_factors() -> Vec<f32> {
    let low_wavelen = OLD_CONTEXT / LOW_FREQ_FACTOR;
    let high_wavelen = OLD_CONTEXT / HIGH_FREQ_FACTOR;
    (0..HEAD_DIM / 2)
        .map(|i| {
            let freq = 1.0 / THETA.powf(2.0 * i as f64 / HEAD_DIM as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                FACTOR
            } else {
                let smooth = (OLD_CONTEXT / wavelen - LOW_FREQ_FACTOR)
                    / (HIGH_FREQ_FACTOR - LOW_FREQ_FACTOR);
                1.0 / ((1.0 - smooth) / FACTOR + smooth)
            };
            f as f32
        })
        .collect()
}

fn gguf_name(hf: &str) -> String {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, part) = rest.split_once('.').unwrap();
    let part = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        other => panic!("unexpected tensor {other}"),
    };
    format!("blk.{layer}.{part}")
}

fn write_gguf(path: &Path, tensors: &[HfTensor], arch: &str, permute: bool) {
    let mut w = GgufWriter::new(3, 32);
    let u32v = |x: usize| Value::U32(x as u32);
    w.add_metadata("general.architecture", Value::String(arch.into()));
    w.add_metadata(format!("{arch}.context_length"), u32v(128));
    w.add_metadata(format!("{arch}.embedding_length"), u32v(HIDDEN));
    w.add_metadata(format!("{arch}.feed_forward_length"), u32v(FFN));
    w.add_metadata(format!("{arch}.block_count"), u32v(LAYERS));
    w.add_metadata(format!("{arch}.attention.head_count"), u32v(HEADS));
    w.add_metadata(format!("{arch}.attention.head_count_kv"), u32v(KV_HEADS));
    w.add_metadata(format!("{arch}.rope.dimension_count"), u32v(HEAD_DIM));
    w.add_metadata(format!("{arch}.rope.freq_base"), Value::F32(THETA as f32));
    w.add_metadata(
        format!("{arch}.attention.layer_norm_rms_epsilon"),
        Value::F32(1e-5),
    );
    w.add_metadata("tokenizer.ggml.model", Value::String("gpt2".into()));
    w.add_metadata("tokenizer.ggml.pre", Value::String("gpt-2".into()));
    w.add_metadata("tokenizer.ggml.tokens", Value::string_array(byte_tokens()));
    w.add_metadata(
        "tokenizer.ggml.token_type",
        Value::array(ValueType::I32, vec![Value::I32(1); VOCAB]),
    );
    w.add_metadata(
        "tokenizer.ggml.merges",
        Value::string_array(Vec::<String>::new()),
    );
    w.add_metadata("tokenizer.ggml.bos_token_id", u32v(0));
    w.add_metadata("tokenizer.ggml.eos_token_id", u32v(1));
    w.add_metadata("tokenizer.ggml.add_bos_token", Value::Bool(false));

    let mut data: Vec<Vec<f32>> = Vec::new();
    for t in tensors {
        let name = gguf_name(&t.name);
        let values = if !permute {
            t.data.clone()
        } else if name.ends_with("attn_q.weight") {
            permute_rows(&t.data, HEADS, HIDDEN)
        } else if name.ends_with("attn_k.weight") {
            permute_rows(&t.data, KV_HEADS, HIDDEN)
        } else {
            t.data.clone()
        };
        let dims: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
        w.add_tensor(name, dims, GgmlType::F32).unwrap();
        data.push(values);
    }
    w.add_tensor(
        "rope_freqs.weight",
        vec![(HEAD_DIM / 2) as u64],
        GgmlType::F32,
    )
    .unwrap();
    data.push(llama3_rope_factors());
    w.write(path, |i, out| {
        let bytes: Vec<u8> = data[i].iter().flat_map(|x| x.to_le_bytes()).collect();
        out.write_all(&bytes)?;
        Ok(())
    })
    .unwrap();
}

fn temp_dir(label: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tersor-model-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn decoder(m: LoadedModel) -> (tersor_model::Llama, tersor_model::TextTokenizer) {
    match m {
        LoadedModel::Decoder { model, tokenizer } => (model, tokenizer),
        LoadedModel::Encoder(_) => panic!("expected a decoder"),
    }
}

#[test]
fn hf_directory_and_gguf_give_the_same_logits() {
    let root = temp_dir("roundtrip");
    let tensors = random_checkpoint(11);
    let hf_dir = root.join("hf");
    write_hf_dir(&hf_dir, &tensors);
    let gguf = root.join("tiny.gguf");
    write_gguf(&gguf, &tensors, "llama", true);

    let hf = load(&hf_dir).unwrap();
    let gg = load(&gguf).unwrap();
    let (hi, gi) = (hf.describe(), gg.describe());
    assert_eq!((hi.format, gi.format), ("safetensors", "gguf"));
    assert_eq!(hi.param_count, gi.param_count);
    let expected_params: usize = tensors.iter().map(|t| t.data.len()).sum();
    assert_eq!(hi.param_count, expected_params);
    let (hf_model, hf_tok) = decoder(hf);
    let (gg_model, gg_tok) = decoder(gg);
    assert_eq!(
        hf_model.config().rope_style,
        tersor_model::RopeStyle::HalfSplit
    );
    assert_eq!(
        gg_model.config().rope_style,
        tersor_model::RopeStyle::Interleaved
    );

    let text = "Now, what I am going to tell you is the story of a very 12345 stubborn fellow.";
    let ids = hf_tok.encode(text, false).unwrap();
    assert_eq!(ids, gg_tok.encode(text, false).unwrap());
    assert_eq!(ids.len(), text.len());
    assert_eq!(gg_tok.decode(&ids).unwrap(), text);

    let a = hf_model.forward(&ids).unwrap();
    let b = gg_model.forward(&ids).unwrap();
    let scale: f32 = a
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    let diff: f32 = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    println!("HF vs GGUF: max |dlogit| = {diff:.2e} (max |logit| {scale:.2})");
    assert!(scale > 0.5, "degenerate logits");
    assert!(diff < 1e-4, "HF and GGUF logits differ by {diff}");

    // The checks above are not vacuous: without llama.cpp's q/k permutation the
    // GGUF model differs, and so does the HF model without RoPE scaling.
    let max_diff = |x: &candle_core::Tensor, y: &candle_core::Tensor| -> f32 {
        (x - y)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let unpermuted = root.join("unpermuted.gguf");
    write_gguf(&unpermuted, &tensors, "llama", false);
    let (m, _) = decoder(load(&unpermuted).unwrap());
    let d = max_diff(&a, &m.forward(&ids).unwrap());
    assert!(d > 1e-2, "q/k permutation had no effect ({d})");
    let plain = root.join("unscaled");
    write_hf_dir(&plain, &tensors);
    let cfg = plain.join("config.json");
    let text_cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"llama3\"", "\"default\"");
    std::fs::write(&cfg, text_cfg).unwrap();
    let (m, _) = decoder(load(&plain).unwrap());
    let d = max_diff(&a, &m.forward(&ids).unwrap());
    assert!(d > 1e-2, "RoPE scaling had no effect ({d})");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn bad_inputs_give_clear_errors() {
    let root = temp_dir("errors");
    let tensors = random_checkpoint(12);

    // Unknown GGUF architecture: names the file and the architecture.
    let gguf = root.join("gpt.gguf");
    write_gguf(&gguf, &tensors[..3], "gptj", true);
    let e = load(&gguf).unwrap_err();
    assert!(matches!(e, Error::UnsupportedArch { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("gpt.gguf") && msg.contains("gptj"), "{msg}");

    // Unknown HF architecture.
    let dir = root.join("neox");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"model_type": "gpt_neox"}"#).unwrap();
    let msg = load(&dir).unwrap_err().to_string();
    assert!(
        msg.contains("config.json") && msg.contains("gpt_neox"),
        "{msg}"
    );

    // Missing tokenizer.json: names the file.
    let dir = root.join("notok");
    write_hf_dir(&dir, &tensors);
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let msg = load(&dir).unwrap_err().to_string();
    assert!(msg.contains("tokenizer.json"), "{msg}");

    // Missing shard: names the file.
    let dir = root.join("noshard");
    write_hf_dir(&dir, &tensors);
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let msg = load(&dir).unwrap_err().to_string();
    assert!(msg.contains("model-00002-of-00002.safetensors"), "{msg}");

    // A GGUF missing a tensor: names the file and the tensor.
    let gguf = root.join("partial.gguf");
    write_gguf(&gguf, &tensors[..tensors.len() - 1], "llama", true);
    let msg = load(&gguf).unwrap_err().to_string();
    assert!(
        msg.contains("partial.gguf") && msg.contains("blk.1.ffn_down.weight"),
        "{msg}"
    );

    // Neither GGUF nor a model directory; a missing path.
    let junk = root.join("junk.bin");
    std::fs::write(&junk, b"not a model").unwrap();
    assert!(load(&junk).unwrap_err().to_string().contains("junk.bin"));
    assert!(load(&root.join("nope"))
        .unwrap_err()
        .to_string()
        .contains("nope"));
    std::fs::remove_dir_all(&root).unwrap();
}
