//! Test support shared by tersor's crates (a dev-dependency only).
//!
//! - [`assets`]: where the default assets are for tests (or a skip, on request).
//! - [`Rng`]: a tiny seeded generator (SplitMix64) for synthetic weights.
//! - [`TinyLlama`]: a small random Llama-family checkpoint written as a GGUF file
//!   and/or a Hugging Face directory, with a byte-level tokenizer, so pipelines can be
//!   tested end to end in seconds.
//! - [`python_has`]: whether `python3` can import the modules a cross-check needs
//!   (a missing module skips the check locally and fails it under CI).

use std::path::{Path, PathBuf};

use tersor_gguf::{GgmlType, GgufWriter, Value, ValueType};

/// The folder holding the default assets: `$TERSOR_ASSETS`, else the shared
/// `<repo>/../shared/assets`, else tersor's asset cache (where `tersor fetch` puts
/// them). `None` (test skipped) only when `TERSOR_SKIP_ASSET_TESTS=1`; otherwise
/// missing assets fail the test with instructions.
pub fn assets() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        [
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "all-MiniLM-L6-v2/model.safetensors",
            "botchan.txt",
            "botchan_calib.txt",
            "botchan_eval.txt",
        ]
        .iter()
        .all(|f| dir.join(f).is_file())
    };
    let candidates: Vec<PathBuf> = match std::env::var_os("TERSOR_ASSETS") {
        Some(d) => vec![PathBuf::from(d)],
        None => [
            Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/assets")),
            tersor_assets::assets_dir().ok(),
        ]
        .into_iter()
        .flatten()
        .collect(),
    };
    if let Some(dir) = candidates.iter().find(|d| complete(d)) {
        return Some(dir.clone());
    }
    if std::env::var("TERSOR_SKIP_ASSET_TESTS").as_deref() == Ok("1") {
        eprintln!("skipping: assets not found in {candidates:?} (TERSOR_SKIP_ASSET_TESTS=1)");
        return None;
    }
    panic!(
        "test assets not found in {candidates:?}: fetch them with `tersor fetch` or set \
         TERSOR_ASSETS to the asset folder; set TERSOR_SKIP_ASSET_TESTS=1 to skip these tests"
    );
}

/// The default decoder's file name in the asset folder.
pub const DEFAULT_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Whether `python3` imports every module in `modules`. When not: under CI (env `CI`
/// set) this panics, since CI installs them; locally the check is skipped with a notice.
pub fn python_has(modules: &[&str]) -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", &format!("import {}", modules.join(", "))])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("python3 with {modules:?} is required in CI");
        }
        eprintln!("notice: python3 with {modules:?} not found; skipping this cross-check");
    }
    ok
}

/// A small deterministic generator (SplitMix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [-scale, scale).
    pub fn uniform(&mut self, scale: f32) -> f32 {
        (2.0 * self.unit() - 1.0) * scale
    }

    /// `n` values uniform in [-scale, scale).
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(scale)).collect()
    }

    /// A random permutation of `0..n` (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            p.swap(i, j);
        }
        p
    }
}

/// A random Llama-family decoder small enough for unit tests, with a byte-level
/// tokenizer (256 tokens, one per byte, no merges).
#[derive(Clone, Debug)]
pub struct TinyLlama {
    pub hidden: usize,
    pub ffn: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Output projection tied to the embedding (no `output.weight`).
    pub tied: bool,
    pub seed: u64,
}

/// One tensor in GGUF naming and ggml dims order (`dims[0]` = row length).
pub struct TinyTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub data: Vec<f32>,
}

impl Default for TinyLlama {
    /// 256-aligned shapes (every k-quant applies) with grouped-query attention.
    fn default() -> Self {
        TinyLlama {
            hidden: 256,
            ffn: 512,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            tied: true,
            seed: 7,
        }
    }
}

impl TinyLlama {
    pub const VOCAB: usize = 256;

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// The weights in GGUF naming (q/k rows already in llama.cpp's permuted order:
    /// random weights, so no permutation is needed to be self-consistent).
    pub fn tensors(&self) -> Vec<TinyTensor> {
        let mut rng = Rng::new(self.seed);
        let (d, f, hd) = (self.hidden, self.ffn, self.head_dim());
        let mut out = Vec::new();
        let mut push = |name: String, rows: usize, cols: usize, scale: f32, offset: f32| {
            let data = rng
                .vec(rows * cols, scale)
                .into_iter()
                .map(|x| x + offset)
                .collect();
            let dims = if rows == 1 {
                vec![cols as u64]
            } else {
                vec![cols as u64, rows as u64]
            };
            out.push(TinyTensor { name, dims, data });
        };
        let s = |n: usize| 1.0 / (n as f32).sqrt();
        // Small enough that the tied output's logits do not saturate the softmax.
        push("token_embd.weight".into(), Self::VOCAB, d, 0.1, 0.0);
        push("output_norm.weight".into(), 1, d, 0.2, 1.0);
        if !self.tied {
            push("output.weight".into(), Self::VOCAB, d, 0.1, 0.0);
        }
        for l in 0..self.layers {
            let b = format!("blk.{l}");
            push(format!("{b}.attn_norm.weight"), 1, d, 0.2, 1.0);
            push(format!("{b}.ffn_norm.weight"), 1, d, 0.2, 1.0);
            push(
                format!("{b}.attn_q.weight"),
                self.heads * hd,
                d,
                3.0 * s(d),
                0.0,
            );
            push(
                format!("{b}.attn_k.weight"),
                self.kv_heads * hd,
                d,
                3.0 * s(d),
                0.0,
            );
            push(
                format!("{b}.attn_v.weight"),
                self.kv_heads * hd,
                d,
                s(d),
                0.0,
            );
            push(
                format!("{b}.attn_output.weight"),
                d,
                self.heads * hd,
                s(d),
                0.0,
            );
            push(format!("{b}.ffn_gate.weight"), f, d, s(d), 0.0);
            push(format!("{b}.ffn_up.weight"), f, d, s(d), 0.0);
            push(format!("{b}.ffn_down.weight"), d, f, s(f), 0.0);
        }
        out
    }

    /// Write the model as an F32 GGUF file with llama metadata and the byte tokenizer.
    pub fn write_gguf(&self, path: &Path) {
        let arch = "llama";
        let mut w = GgufWriter::new(3, 32);
        let u32v = |x: usize| Value::U32(x as u32);
        w.add_metadata("general.architecture", Value::String(arch.into()));
        w.add_metadata("general.name", Value::String("tiny-llama".into()));
        w.add_metadata("general.file_type", u32v(0));
        w.add_metadata(format!("{arch}.context_length"), u32v(256));
        w.add_metadata(format!("{arch}.embedding_length"), u32v(self.hidden));
        w.add_metadata(format!("{arch}.feed_forward_length"), u32v(self.ffn));
        w.add_metadata(format!("{arch}.block_count"), u32v(self.layers));
        w.add_metadata(format!("{arch}.attention.head_count"), u32v(self.heads));
        w.add_metadata(
            format!("{arch}.attention.head_count_kv"),
            u32v(self.kv_heads),
        );
        w.add_metadata(
            format!("{arch}.rope.dimension_count"),
            u32v(self.head_dim()),
        );
        w.add_metadata(format!("{arch}.rope.freq_base"), Value::F32(10000.0));
        w.add_metadata(
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        );
        w.add_metadata("tokenizer.ggml.model", Value::String("gpt2".into()));
        w.add_metadata("tokenizer.ggml.pre", Value::String("gpt-2".into()));
        w.add_metadata("tokenizer.ggml.tokens", Value::string_array(byte_tokens()));
        w.add_metadata(
            "tokenizer.ggml.token_type",
            Value::array(ValueType::I32, vec![Value::I32(1); Self::VOCAB]),
        );
        w.add_metadata(
            "tokenizer.ggml.merges",
            Value::string_array(Vec::<String>::new()),
        );
        w.add_metadata("tokenizer.ggml.bos_token_id", u32v(0));
        w.add_metadata("tokenizer.ggml.eos_token_id", u32v(1));
        w.add_metadata("tokenizer.ggml.add_bos_token", Value::Bool(false));
        let tensors = self.tensors();
        for t in &tensors {
            w.add_tensor(t.name.clone(), t.dims.clone(), GgmlType::F32)
                .expect("valid tiny tensor");
        }
        w.write(path, |i, out| {
            let bytes: Vec<u8> = tensors[i]
                .data
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            out.write_all(&bytes)?;
            Ok(())
        })
        .expect("write tiny GGUF");
    }
}

impl TinyLlama {
    /// Write the model as a Hugging Face directory: `config.json`, f32
    /// `model.safetensors` (HF names; q/k rows as generated, so the HF runtime's
    /// half-split RoPE applies to them) and a byte-level `tokenizer.json`.
    pub fn write_hf_dir(&self, dir: &Path) {
        std::fs::create_dir_all(dir).expect("create HF dir");
        let config = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_act": "silu",
            "vocab_size": Self::VOCAB,
            "hidden_size": self.hidden,
            "intermediate_size": self.ffn,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "max_position_embeddings": 256,
            "tie_word_embeddings": self.tied,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "torch_dtype": "float32"
        });
        std::fs::write(dir.join("config.json"), config.to_string()).expect("write config");
        let tensors = self.tensors();
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|t| t.data.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let list: Vec<(String, tersor_safetensors::Dtype, Vec<usize>, &[u8])> = tensors
            .iter()
            .zip(&bytes)
            .map(|(t, b)| {
                let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
                (
                    hf_name(&t.name),
                    tersor_safetensors::Dtype::F32,
                    shape,
                    b.as_slice(),
                )
            })
            .collect();
        tersor_safetensors::write_safetensors(&dir.join("model.safetensors"), &list, None)
            .expect("write safetensors");
        let vocab: tokenizers::models::bpe::Vocab = byte_tokens()
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect();
        let bpe = tokenizers::models::bpe::BPE::builder()
            .vocab_and_merges(vocab, vec![])
            .build()
            .expect("byte BPE");
        let mut tok = tokenizers::Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(
            tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, true),
        ));
        tok.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
        tok.save(dir.join("tokenizer.json"), false)
            .expect("write tokenizer.json");
    }
}

/// The Hugging Face name of a GGUF Llama tensor name.
pub fn hf_name(gguf: &str) -> String {
    match gguf {
        "token_embd.weight" => return "model.embed_tokens.weight".into(),
        "output_norm.weight" => return "model.norm.weight".into(),
        "output.weight" => return "lm_head.weight".into(),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.").expect("a block tensor");
    let (layer, part) = rest.split_once('.').expect("blk.N.x");
    let part = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        other => panic!("unexpected tensor {other}"),
    };
    format!("model.layers.{layer}.{part}")
}

/// GPT-2's byte-level alphabet as 256 token strings (ids in sorted character order).
pub fn byte_tokens() -> Vec<String> {
    let mut chars: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .collect();
    chars.sort();
    assert_eq!(chars.len(), 256);
    chars.into_iter().map(String::from).collect()
}

/// Writes `calib.txt` in `dir`: English text long enough for a few byte-level
/// calibration windows of a [`TinyLlama`].
pub fn calib_text(dir: &Path) -> PathBuf {
    let p = dir.join("calib.txt");
    let para = "It was a bright cold day in April, and the clocks were striking thirteen. \
                Winston Smith, his chin nuzzled into his breast in an effort to escape the vile wind, \
                slipped quickly through the glass doors of Victory Mansions. ";
    std::fs::write(&p, para.repeat(12)).expect("write calib.txt");
    p
}

/// sha256 of every tensor's f32 values as gguf-py's reader and dequantizer see them
/// (`(name, hex)` in file order). Callers check [`python_has`] first.
pub fn gguf_py_hashes(path: &Path) -> Vec<(String, String)> {
    let script = r#"
import sys, hashlib, numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
r = GGUFReader(sys.argv[1])
for t in r.tensors:
    v = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
    print(t.name, hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest())
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "gguf-py on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').expect("name and hash");
            (a.to_string(), b.to_string())
        })
        .collect()
}

/// A fresh empty temporary directory (removed when the value drops).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("tersor-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create temp dir");
        TempDir(d)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
