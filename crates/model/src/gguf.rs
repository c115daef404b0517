//! GGUF checkpoints: weights (dequantized to f32), decoder hyper-parameters and
//! the tokenizer metadata, read with `tersor-gguf` / `tersor-ggml`.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use tersor_gguf::{GgufFile, TensorInfo, Value};

use crate::error::{Error, Result};
use crate::llama::{LlamaConfig, RopeScaling, RopeStyle};
use crate::tokenizer::GgufVocab;
use crate::weights::WeightSource;

/// `general.architecture` values this crate runs (llama.cpp's converter writes
/// `llama` for Mistral models too).
pub(crate) const SUPPORTED_GGUF_ARCHS: &str = "llama, mistral, qwen2";

/// An open GGUF file as a [`WeightSource`]: each tensor is dequantized to f32 with
/// llama.cpp's reference dequantizers (in parallel over blocks) when requested.
pub struct GgufWeights {
    file: GgufFile,
    path: PathBuf,
}

impl GgufWeights {
    /// Open (memory-map and parse the header of) a GGUF file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The parsed file (metadata, tensor infos).
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.file.tensor(name)
    }
}

impl std::fmt::Debug for GgufWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWeights")
            .field("path", &self.path)
            .finish()
    }
}

impl WeightSource for GgufWeights {
    fn path(&self) -> &Path {
        &self.path
    }

    fn names(&self) -> Vec<String> {
        self.file.tensors().iter().map(|t| t.name.clone()).collect()
    }

    /// ggml's `ne` list reversed: `[ne[1], ne[0]]` = `[out, in]` for a matrix.
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let t = self.info(name)?;
        Some(t.dims.iter().rev().map(|&d| d as usize).collect())
    }

    fn tensor_f32(&self, name: &str) -> Result<Tensor> {
        let t = self.info(name).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        let shape = self.shape(name).unwrap_or_default();
        let n = usize::try_from(t.n_elements())
            .map_err(|_| Error::format(&self.path, format!("tensor `{name}` is too large")))?;
        let data = self.file.tensor_data(t);
        // The byte count is checked against the element count before allocating.
        tersor_ggml::bytes_for(t.ty, n)
            .ok()
            .filter(|&b| b == data.len())
            .ok_or_else(|| {
                Error::format(
                    &self.path,
                    format!(
                        "tensor `{name}` ({} {:?}) has {} bytes of data",
                        t.ty.name(),
                        t.dims,
                        data.len()
                    ),
                )
            })?;
        let mut out = vec![0f32; n];
        tersor_ggml::dequantize_par(t.ty, data, &mut out).map_err(|e| {
            Error::format(
                &self.path,
                format!("cannot dequantize tensor `{name}`: {e}"),
            )
        })?;
        Ok(Tensor::from_vec(out, shape, &Device::Cpu)?)
    }
}

/// Typed metadata access with errors naming the file and the key.
struct Meta<'a> {
    file: &'a GgufFile,
    path: &'a Path,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.file.get(key)
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| {
                    Error::format(
                        self.path,
                        format!("`{key}` is not an unsigned integer: {v:?}"),
                    )
                }),
        }
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| Error::format(self.path, format!("missing metadata key `{key}`")))
    }

    fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        self.opt_usize(key)?
            .map(|x| {
                u32::try_from(x)
                    .map_err(|_| Error::format(self.path, format!("`{key}` = {x} is too large")))
            })
            .transpose()
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| Error::format(self.path, format!("`{key}` is not a number: {v:?}"))),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                Error::format(self.path, format!("`{key}` is not a boolean: {v:?}"))
            }),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| Error::format(self.path, format!("`{key}` is not a string: {v:?}"))),
        }
    }
}

/// `general.architecture` of a GGUF file.
pub(crate) fn architecture(file: &GgufFile, path: &Path) -> Result<String> {
    let m = Meta { file, path };
    m.opt_str("general.architecture")?
        .map(str::to_string)
        .ok_or_else(|| Error::format(path, "missing metadata key `general.architecture`"))
}

/// Decoder hyper-parameters from the `{arch}.*` keys (llama.cpp's `llm_load_hparams`).
pub(crate) fn llama_config(w: &GgufWeights) -> Result<LlamaConfig> {
    let path = w.path.as_path();
    let m = Meta {
        file: &w.file,
        path,
    };
    let arch = architecture(&w.file, path)?;
    let rope_style = match arch.as_str() {
        // llama.cpp's converter permutes q/k of Llama/Mistral for interleaved RoPE
        // (`LLAMA_ROPE_TYPE_NORM`); Qwen2 keeps HF's layout (`LLAMA_ROPE_TYPE_NEOX`).
        "llama" | "mistral" => RopeStyle::Interleaved,
        "qwen2" => RopeStyle::HalfSplit,
        _ => {
            return Err(Error::UnsupportedArch {
                path: path.to_path_buf(),
                arch,
                supported: SUPPORTED_GGUF_ARCHS,
            })
        }
    };
    let k = |s: &str| format!("{arch}.{s}");
    if let Some(n) = m.opt_usize(&k("expert_count"))? {
        if n > 1 {
            return Err(Error::format(
                path,
                format!("mixture-of-experts models ({n} experts) are not supported"),
            ));
        }
    }
    let hidden_size = m.usize(&k("embedding_length"))?;
    let n_heads = m.usize(&k("attention.head_count"))?;
    if n_heads == 0 {
        return Err(Error::format(path, "attention.head_count is 0"));
    }
    // `head_count_kv` may be a per-layer array in some architectures.
    let n_kv_heads = match m.get(&k("attention.head_count_kv")) {
        Some(Value::Array(_)) => {
            return Err(Error::format(
                path,
                "per-layer attention.head_count_kv is not supported",
            ))
        }
        _ => m
            .opt_usize(&k("attention.head_count_kv"))?
            .unwrap_or(n_heads),
    };
    let head_dim = m
        .opt_usize(&k("attention.key_length"))?
        .unwrap_or(hidden_size / n_heads);
    if let Some(vl) = m.opt_usize(&k("attention.value_length"))? {
        if vl != head_dim {
            return Err(Error::format(
                path,
                format!("value_length {vl} differs from key_length {head_dim}"),
            ));
        }
    }
    if let Some(rd) = m.opt_usize(&k("rope.dimension_count"))? {
        if rd != head_dim {
            return Err(Error::format(
                path,
                format!("partial RoPE ({rd} of {head_dim} dimensions) is not supported"),
            ));
        }
    }
    let vocab_size = match m.opt_usize(&k("vocab_size"))? {
        Some(v) => v,
        None => w
            .shape("token_embd.weight")
            .and_then(|s| s.first().copied())
            .ok_or_else(|| Error::MissingTensor {
                path: path.to_path_buf(),
                name: "token_embd.weight".into(),
            })?,
    };
    let attention_bias = w.contains("blk.0.attn_q.bias");
    Ok(LlamaConfig {
        vocab_size,
        hidden_size,
        intermediate_size: m.usize(&k("feed_forward_length"))?,
        n_layers: m.usize(&k("block_count"))?,
        n_heads,
        n_kv_heads,
        head_dim,
        rms_norm_eps: m
            .opt_f64(&k("attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| {
                Error::format(
                    path,
                    format!(
                        "missing metadata key `{}`",
                        k("attention.layer_norm_rms_epsilon")
                    ),
                )
            })?,
        rope_theta: m.opt_f64(&k("rope.freq_base"))?.unwrap_or(10_000.0),
        rope_style,
        rope_scaling: rope_scaling(w, &m, &arch)?,
        attention_bias,
        tie_embeddings: !w.contains("output.weight"),
        sliding_window: None,
        arch,
    })
}

/// RoPE scaling from `{arch}.rope.scaling.*` and the `rope_freqs.weight` tensor.
fn rope_scaling(w: &GgufWeights, m: &Meta, arch: &str) -> Result<RopeScaling> {
    let k = |s: &str| format!("{arch}.{s}");
    let kind = m.opt_str(&k("rope.scaling.type"))?.unwrap_or("none");
    // `rope.scale_linear` is the older spelling of a linear factor.
    let factor = match m.opt_f64(&k("rope.scaling.factor"))? {
        Some(f) => Some(f),
        None => m.opt_f64(&k("rope.scale_linear"))?,
    };
    let scaling = match (kind, factor) {
        ("none", None) => RopeScaling::None,
        ("none" | "linear", Some(f)) if f == 0.0 || f == 1.0 => RopeScaling::None,
        ("none" | "linear", Some(f)) => RopeScaling::Linear { factor: f },
        ("linear", None) => {
            return Err(Error::format(
                m.path,
                "linear RoPE scaling without a factor",
            ))
        }
        (other, _) => {
            return Err(Error::format(
                m.path,
                format!("RoPE scaling type `{other}` is not supported (supported: none, linear)"),
            ))
        }
    };
    // Llama 3.1-style scaling is stored as per-frequency divisors.
    if w.contains("rope_freqs.weight") {
        if scaling != RopeScaling::None {
            return Err(Error::format(
                m.path,
                "both rope_freqs.weight and linear RoPE scaling are set",
            ));
        }
        let t = w.tensor_f32("rope_freqs.weight")?.flatten_all()?;
        let ff: Vec<f32> = t.to_vec1()?;
        return Ok(RopeScaling::FreqFactors(
            ff.into_iter().map(f64::from).collect(),
        ));
    }
    Ok(scaling)
}

/// The `tokenizer.ggml.*` metadata.
pub(crate) fn vocab(w: &GgufWeights) -> Result<GgufVocab> {
    let path = w.path.as_path();
    let m = Meta {
        file: &w.file,
        path,
    };
    let model = m
        .opt_str("tokenizer.ggml.model")?
        .ok_or_else(|| Error::Tokenizer {
            path: path.to_path_buf(),
            msg: "no tokenizer in the metadata (missing `tokenizer.ggml.model`)".into(),
        })?
        .to_string();
    let strings = |key: &str| -> Result<Vec<String>> {
        match m.get(key) {
            None => Ok(Vec::new()),
            Some(v) => v
                .as_string_array()
                .map(|a| a.into_iter().map(str::to_string).collect())
                .ok_or_else(|| Error::Tokenizer {
                    path: path.to_path_buf(),
                    msg: format!("`{key}` is not an array of UTF-8 strings"),
                }),
        }
    };
    let token_types = match m.get("tokenizer.ggml.token_type") {
        None => Vec::new(),
        Some(v) => v
            .as_i64_array()
            .map(|a| a.into_iter().map(|x| x as i32).collect())
            .ok_or_else(|| Error::Tokenizer {
                path: path.to_path_buf(),
                msg: "`tokenizer.ggml.token_type` is not an integer array".into(),
            })?,
    };
    let scores = match m.get("tokenizer.ggml.scores") {
        None => Vec::new(),
        Some(v) => v.as_f32_array().ok_or_else(|| Error::Tokenizer {
            path: path.to_path_buf(),
            msg: "`tokenizer.ggml.scores` is not a float array".into(),
        })?,
    };
    Ok(GgufVocab {
        pre: m.opt_str("tokenizer.ggml.pre")?.map(str::to_string),
        tokens: strings("tokenizer.ggml.tokens")?,
        merges: strings("tokenizer.ggml.merges")?,
        token_types,
        scores,
        bos_id: m.opt_u32("tokenizer.ggml.bos_token_id")?,
        eos_id: m.opt_u32("tokenizer.ggml.eos_token_id")?,
        unk_id: m.opt_u32("tokenizer.ggml.unknown_token_id")?,
        add_bos: m.opt_bool("tokenizer.ggml.add_bos_token")?,
        add_space_prefix: m.opt_bool("tokenizer.ggml.add_space_prefix")?,
        model,
    })
}
