//! Writing a Hugging Face GPTQ directory: `model.safetensors` (sharded when large),
//! `config.json` with `quantization_config`, AutoGPTQ's `quantize_config.json`, and
//! any extra files (tokenizer).
//!
//! The layout is what GPTQModel's `save_quantized` and `transformers`'
//! `save_pretrained` produce for a GPTQ model: per quantized linear
//! `<module>.qweight` (I32), `<module>.qzeros` (I32), `<module>.scales` (F16),
//! `<module>.g_idx` (I32) and no `<module>.weight`; every other tensor as a float.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;

use half::{bf16, f16};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::{json, Value};
use tersor_safetensors::{write_safetensors, write_sharded, Dtype, INDEX_FILE};

use crate::config::{ModuleQuant, QuantizationConfig};
use crate::error::{GptqError, Result};
use crate::pack::QuantizedLinear;

/// Shard size above which the weights are split (`transformers`' `max_shard_size`
/// default of 5 GB).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// Single-file weights name.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Storage type of an unquantized tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatDtype {
    F16,
    BF16,
    F32,
}

/// One tensor to write.
struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Collects the tensors of a GPTQ checkpoint (or, from [`GptqWriter::dense`], of a plain
/// float one) and writes the directory.
pub struct GptqWriter {
    /// `None`: a dense checkpoint (no quantized module, no `quantization_config`).
    config: Option<QuantizationConfig>,
    tensors: Vec<Entry>,
    names: HashSet<String>,
    /// Quantized module prefixes and their settings.
    quantized: BTreeMap<String, ModuleQuant>,
    files: Vec<(String, String)>,
    max_shard_bytes: u64,
}

fn le_bytes<T, const N: usize>(v: &[T], f: impl Fn(&T) -> [u8; N]) -> Vec<u8> {
    v.iter().flat_map(f).collect()
}

impl GptqWriter {
    /// A writer for checkpoints quantized as `config` says (validated here).
    pub fn new(config: QuantizationConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config: Some(config),
            tensors: Vec::new(),
            names: HashSet::new(),
            quantized: BTreeMap::new(),
            files: Vec::new(),
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
        })
    }

    /// A writer for a plain Hugging Face checkpoint: float tensors only (pruned or
    /// factored models), `config.json` without `quantization_config`.
    pub fn dense() -> Self {
        Self {
            config: None,
            tensors: Vec::new(),
            names: HashSet::new(),
            quantized: BTreeMap::new(),
            files: Vec::new(),
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
        }
    }

    /// Split the weights into shards of at most `n` bytes of tensor data (a larger
    /// tensor gets a shard of its own) when they do not fit one file of `n` bytes.
    pub fn with_max_shard_bytes(mut self, n: u64) -> Self {
        self.max_shard_bytes = n.max(1);
        self
    }

    /// The quantization configuration being written (`None` for a dense checkpoint).
    pub fn config(&self) -> Option<&QuantizationConfig> {
        self.config.as_ref()
    }

    fn push(&mut self, name: String, dtype: Dtype, shape: Vec<usize>, bytes: Vec<u8>) {
        self.names.insert(name.clone());
        self.tensors.push(Entry {
            name,
            dtype,
            shape,
            bytes,
        });
    }

    fn check_new(&self, name: &str) -> Result<()> {
        if self.names.contains(name) {
            return Err(GptqError::invalid(format!("tensor `{name}` added twice")));
        }
        Ok(())
    }

    /// Adds the quantized linear `module` (its HF name without `.weight`, e.g.
    /// `model.layers.0.self_attn.q_proj`). The layer must agree with what the
    /// configuration resolves for the module: same bits, `ceil(in / group_size)` groups,
    /// `g_idx[i] = i / group_size` unless `desc_act`, and every zero point `2^(bits-1)`
    /// when `sym` (kernels such as vLLM's Marlin path ignore `qzeros` for symmetric
    /// checkpoints, so a different zero would decode differently there).
    pub fn add_quantized(&mut self, module: &str, layer: &QuantizedLinear) -> Result<()> {
        let ctx = |e: GptqError| GptqError::invalid(format!("GPTQ module `{module}`: {e}"));
        let config = self.config.as_ref().ok_or_else(|| {
            GptqError::invalid(format!(
                "GPTQ module `{module}`: a dense checkpoint holds no quantized modules"
            ))
        })?;
        let q = config.resolve(module).ok_or_else(|| {
            GptqError::invalid(format!(
                "GPTQ module `{module}`: the quantization config's `dynamic` rules exclude it \
                 (`-:` pattern); add it as a plain tensor instead"
            ))
        })?;
        layer.validate().map_err(ctx)?;
        if layer.bits != q.bits {
            return Err(ctx(GptqError::invalid(format!(
                "quantized with {} bits but the config resolves {} bits",
                layer.bits, q.bits
            ))));
        }
        let inp = layer.in_features;
        let want_groups = q.n_groups(inp);
        if layer.n_groups() != want_groups {
            return Err(ctx(GptqError::invalid(format!(
                "{} groups but group_size {} over {inp} columns gives {want_groups}",
                layer.n_groups(),
                q.group_size
            ))));
        }
        if !q.desc_act {
            let len = q.group_len(inp);
            if let Some(i) = (0..inp).find(|&i| layer.g_idx[i] as usize != i / len) {
                return Err(ctx(GptqError::invalid(format!(
                    "g_idx[{i}] = {} but without desc_act it must be i / group_size = {} \
                     (loaders may ignore g_idx then)",
                    layer.g_idx[i],
                    i / len
                ))));
            }
        }
        if q.sym {
            let mid = 1u8 << (q.bits - 1);
            if let Some(i) = layer.zeros.iter().position(|&z| z != mid) {
                return Err(ctx(GptqError::invalid(format!(
                    "sym is set but the zero point of group {}, output {} is {} (must be {mid})",
                    i / layer.out_features,
                    i % layer.out_features,
                    layer.zeros[i]
                ))));
            }
        }
        let weight = format!("{module}.weight");
        if self.names.contains(&weight) {
            return Err(ctx(GptqError::invalid(format!(
                "`{weight}` was also added as a plain tensor"
            ))));
        }
        let names = ["qweight", "qzeros", "scales", "g_idx"].map(|s| format!("{module}.{s}"));
        for n in &names {
            self.check_new(n)?;
        }
        let p = layer.pack().map_err(ctx)?;
        let [qweight, qzeros, scales, g_idx] = names;
        let (qw_shape, qz_shape, sc_shape) =
            (p.qweight_shape(), p.qzeros_shape(), p.scales_shape());
        self.push(
            qweight,
            Dtype::I32,
            qw_shape.to_vec(),
            le_bytes(&p.qweight, |w| w.to_le_bytes()),
        );
        self.push(
            qzeros,
            Dtype::I32,
            qz_shape.to_vec(),
            le_bytes(&p.qzeros, |w| w.to_le_bytes()),
        );
        self.push(
            scales,
            Dtype::F16,
            sc_shape.to_vec(),
            le_bytes(&p.scales, |s| s.to_le_bytes()),
        );
        self.push(
            g_idx,
            Dtype::I32,
            vec![p.in_features],
            le_bytes(&p.g_idx, |g| g.to_le_bytes()),
        );
        self.quantized.insert(module.to_string(), q);
        Ok(())
    }

    /// Adds an unquantized tensor (embedding, norm, bias, unquantized linear), stored
    /// as `dtype`. Values must be finite and representable in `dtype`.
    pub fn add_tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        data: &[f32],
        dtype: FloatDtype,
    ) -> Result<()> {
        self.check_new(name)?;
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(data.len()) {
            return Err(GptqError::invalid(format!(
                "tensor `{name}`: shape {shape:?} does not match its {} values",
                data.len()
            )));
        }
        if let Some(module) = name.strip_suffix(".weight") {
            if self.quantized.contains_key(module) {
                return Err(GptqError::invalid(format!(
                    "tensor `{name}`: module `{module}` was already added quantized"
                )));
            }
        }
        let (st, bytes) = match dtype {
            FloatDtype::F32 => (Dtype::F32, le_bytes(data, |x| x.to_le_bytes())),
            FloatDtype::F16 => (
                Dtype::F16,
                le_bytes(data, |&x| f16::from_f32(x).to_le_bytes()),
            ),
            FloatDtype::BF16 => (
                Dtype::BF16,
                le_bytes(data, |&x| bf16::from_f32(x).to_le_bytes()),
            ),
        };
        let back = tersor_safetensors::bytes_to_f32(st, &bytes).expect("float dtype");
        if let Some(i) = back.iter().position(|x| !x.is_finite()) {
            return Err(GptqError::invalid(format!(
                "tensor `{name}`: value {} at index {i} is not finite in {st}",
                data[i]
            )));
        }
        self.push(name.to_string(), st, shape.to_vec(), bytes);
        Ok(())
    }

    /// An extra file written into the directory (e.g. `tokenizer.json`), before
    /// `config.json`.
    pub fn add_file(&mut self, name: &str, contents: String) -> Result<()> {
        let plain = Path::new(name).components().count() == 1
            && !matches!(
                name,
                "" | "."
                    | ".."
                    | "config.json"
                    | "quantize_config.json"
                    | WEIGHTS_FILE
                    | INDEX_FILE
            );
        if !plain || name.contains('/') || name.contains('\\') {
            return Err(GptqError::invalid(format!(
                "extra file name `{name}` must be a plain file name other than the checkpoint's own"
            )));
        }
        if self.files.iter().any(|(n, _)| n == name) {
            return Err(GptqError::invalid(format!(
                "extra file `{name}` added twice"
            )));
        }
        self.files.push((name.to_string(), contents));
        Ok(())
    }

    /// Module prefixes added quantized.
    pub fn quantized_modules(&self) -> impl Iterator<Item = &str> {
        self.quantized.keys().map(String::as_str)
    }

    /// Writes the directory `dir` (created if missing). `hf_config` is the model's
    /// `config.json` object (e.g. from [`hf_llama_config`]); `quantization_config` is
    /// added to it. Every file is written atomically (temporary file + rename). An
    /// existing `config.json` is removed first and the new one is written last, so an
    /// interrupted write never leaves a loadable directory with mixed contents; weight
    /// files of an earlier checkpoint in `dir` (`model.safetensors`, the index, its
    /// `model-NNNNN-of-NNNNN.safetensors` shards) are removed.
    pub fn write(&self, dir: &Path, hf_config: &Value) -> Result<()> {
        let base = hf_config.as_object().ok_or_else(|| {
            GptqError::invalid("the model config must be a JSON object (config.json)")
        })?;
        if self.config.is_some() && self.quantized.is_empty() {
            return Err(GptqError::invalid(
                "no quantized module was added: a GPTQ checkpoint needs at least one",
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| GptqError::io(dir, e))?;
        let cfg_path = dir.join("config.json");
        match std::fs::remove_file(&cfg_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(GptqError::io(&cfg_path, e)),
        }

        let list: Vec<(String, Dtype, Vec<usize>, &[u8])> = self
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.dtype, t.shape.clone(), t.bytes.as_slice()))
            .collect();
        let total: u64 = self.tensors.iter().map(|t| t.bytes.len() as u64).sum();
        let keep: HashSet<String> = if total <= self.max_shard_bytes {
            let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
            write_safetensors(&dir.join(WEIGHTS_FILE), &list, Some(&meta))?;
            HashSet::from([WEIGHTS_FILE.to_string()])
        } else {
            write_sharded(dir, &list, self.max_shard_bytes)?;
            let index = std::fs::read_to_string(dir.join(INDEX_FILE))
                .map_err(|e| GptqError::io(dir.join(INDEX_FILE), e))?;
            let index: Value = serde_json::from_str(&index)
                .map_err(|e| GptqError::format(dir.join(INDEX_FILE), e.to_string()))?;
            let mut keep: HashSet<String> = index["weight_map"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            keep.insert(INDEX_FILE.to_string());
            keep
        };
        remove_stale_weights(dir, &keep)?;

        for (name, contents) in &self.files {
            atomic_write(&dir.join(name), contents.as_bytes())?;
        }
        let qc_path = dir.join("quantize_config.json");
        let text = match &self.config {
            Some(config) => {
                atomic_write(&qc_path, config.to_json_string().as_bytes())?;
                serde_json::to_string_pretty(&WithQuant {
                    base,
                    quant: config,
                })
            }
            None => {
                // A stale GPTQ sidecar would make loaders treat the weights as quantized.
                match std::fs::remove_file(&qc_path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(GptqError::io(&qc_path, e)),
                }
                let mut plain = base.clone();
                plain.remove("quantization_config");
                serde_json::to_string_pretty(&plain)
            }
        }
        .expect("config serializes to JSON");
        atomic_write(&cfg_path, text.as_bytes())
    }
}

/// `config.json`: the model's keys, then `quantization_config` (with `dynamic` in order).
struct WithQuant<'a> {
    base: &'a serde_json::Map<String, Value>,
    quant: &'a QuantizationConfig,
}

impl Serialize for WithQuant<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for (k, v) in self.base {
            if k != "quantization_config" {
                m.serialize_entry(k, v)?;
            }
        }
        m.serialize_entry("quantization_config", self.quant)?;
        m.end()
    }
}

/// Removes HF weight files in `dir` that are not in `keep`.
fn remove_stale_weights(dir: &Path, keep: &HashSet<String>) -> Result<()> {
    let shard = regex::Regex::new(r"^model-\d{5}-of-\d{5}\.safetensors$").expect("valid regex");
    let entries = std::fs::read_dir(dir).map_err(|e| GptqError::io(dir, e))?;
    for e in entries {
        let e = e.map_err(|e| GptqError::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name == WEIGHTS_FILE || name == INDEX_FILE || shard.is_match(&name);
        if ours && !keep.contains(&name) {
            std::fs::remove_file(e.path()).map_err(|err| GptqError::io(e.path(), err))?;
        }
    }
    Ok(())
}

/// Writes `path` through a temporary file in the same directory (fsync, rename).
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| GptqError::format(path, "output path has no file name"))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| GptqError::io(dir, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| GptqError::io(tmp.path(), e))?;
    }
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| GptqError::io(tmp.path(), e))?;
    tmp.persist(path)
        .map_err(|e| GptqError::io(path, e.error))?;
    Ok(())
}

/// Plain hyper-parameters of a Llama-family decoder, for [`hf_llama_config`].
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaHfConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Per-head dimension; `None` for `hidden_size / num_attention_heads`.
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

/// A `config.json` for `LlamaForCausalLM` (the keys of `transformers`'
/// `LlamaConfig`), `torch_dtype` float16 as GPTQ kernels compute in fp16.
pub fn hf_llama_config(c: &LlamaHfConfig) -> Result<Value> {
    let positive = [
        ("hidden_size", c.hidden_size),
        ("intermediate_size", c.intermediate_size),
        ("num_hidden_layers", c.num_hidden_layers),
        ("num_attention_heads", c.num_attention_heads),
        ("num_key_value_heads", c.num_key_value_heads),
        ("vocab_size", c.vocab_size),
        ("max_position_embeddings", c.max_position_embeddings),
    ];
    if let Some((k, _)) = positive.iter().find(|(_, v)| *v == 0) {
        return Err(GptqError::invalid(format!("llama config: {k} is 0")));
    }
    if c.num_attention_heads % c.num_key_value_heads != 0 {
        return Err(GptqError::invalid(format!(
            "llama config: {} attention heads are not a multiple of {} key/value heads",
            c.num_attention_heads, c.num_key_value_heads
        )));
    }
    let head_dim = match c.head_dim {
        Some(0) => return Err(GptqError::invalid("llama config: head_dim is 0")),
        Some(d) => d,
        None if c.hidden_size % c.num_attention_heads == 0 => c.hidden_size / c.num_attention_heads,
        None => {
            return Err(GptqError::invalid(format!(
                "llama config: hidden_size {} is not divisible by {} heads",
                c.hidden_size, c.num_attention_heads
            )))
        }
    };
    for (k, v) in [
        ("rms_norm_eps", c.rms_norm_eps),
        ("rope_theta", c.rope_theta),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return Err(GptqError::invalid(format!(
                "llama config: {k} = {v} must be positive and finite"
            )));
        }
    }
    Ok(json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": head_dim,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": null,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": true,
        "torch_dtype": "float16",
    }))
}
