//! Hugging Face checkpoint directories: `config.json` parsing.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::llama::{LlamaConfig, RopeScaling, RopeStyle};

/// Read and parse a JSON file.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

/// Typed access to a `config.json` object, with errors naming the file and key.
pub(crate) struct Config<'a> {
    pub path: &'a Path,
    pub json: &'a Value,
}

impl Config<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| Error::format(self.path, format!("missing `{key}`")))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| {
                    Error::format(
                        self.path,
                        format!("`{key}` is not a non-negative integer: {v}"),
                    )
                }),
        }
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| Error::format(self.path, format!("`{key}` is not a number: {v}"))),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| Error::format(self.path, format!("`{key}` is not a boolean: {v}"))),
        }
    }

    pub fn opt_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| v.as_str())
    }

    /// A token id that may be given as an integer or a list (first entry is used).
    pub fn opt_token_id(&self, key: &str) -> Option<u32> {
        let v = self.get(key)?;
        let v = v.as_array().and_then(|a| a.first()).unwrap_or(v);
        v.as_u64().and_then(|x| u32::try_from(x).ok())
    }

    /// `model_type`, or the architecture named in `architectures[0]`.
    pub fn model_type(&self) -> Option<String> {
        if let Some(m) = self.opt_str("model_type") {
            return Some(m.to_string());
        }
        let arch = self.get("architectures")?.as_array()?.first()?.as_str()?;
        Some(arch.to_string())
    }
}

/// Normalise `model_type` / `architectures[0]` to the families this crate runs.
pub(crate) fn family(model_type: &str) -> Option<&'static str> {
    Some(match model_type.to_ascii_lowercase().as_str() {
        "llama" | "llamaforcausallm" => "llama",
        "mistral" | "mistralforcausallm" => "mistral",
        "qwen2" | "qwen2forcausallm" => "qwen2",
        "bert" | "bertmodel" | "bertformaskedlm" => "bert",
        _ => return None,
    })
}

/// The supported values, for error messages.
pub(crate) const SUPPORTED_HF: &str = "llama, mistral, qwen2 (decoders), bert (encoder)";

/// Decoder hyper-parameters from a `config.json` of model type `family`
/// (`llama`, `mistral` or `qwen2`), following `transformers`' config classes.
pub(crate) fn llama_config(cfg: &Config, family: &str) -> Result<LlamaConfig> {
    let path = cfg.path;
    if let Some(act) = cfg.opt_str("hidden_act") {
        if act != "silu" {
            return Err(Error::format(
                path,
                format!("hidden_act `{act}` is not supported (only silu)"),
            ));
        }
    }
    if cfg.opt_bool("mlp_bias")? == Some(true) {
        return Err(Error::format(path, "mlp_bias = true is not supported"));
    }
    let hidden_size = cfg.usize("hidden_size")?;
    let n_heads = cfg.usize("num_attention_heads")?;
    if n_heads == 0 || hidden_size % n_heads != 0 && cfg.opt_usize("head_dim")?.is_none() {
        return Err(Error::format(
            path,
            format!("hidden_size {hidden_size} is not divisible by {n_heads} heads"),
        ));
    }
    let head_dim = cfg.opt_usize("head_dim")?.unwrap_or(hidden_size / n_heads);
    let attention_bias = match family {
        // Qwen2Attention always has q/k/v biases.
        "qwen2" => true,
        _ => cfg.opt_bool("attention_bias")?.unwrap_or(false),
    };
    let sliding_window = match family {
        "mistral" => cfg.opt_usize("sliding_window")?,
        "qwen2" if cfg.opt_bool("use_sliding_window")? == Some(true) => {
            cfg.opt_usize("sliding_window")?
        }
        _ => None,
    };
    Ok(LlamaConfig {
        arch: family.to_string(),
        vocab_size: cfg.usize("vocab_size")?,
        hidden_size,
        intermediate_size: cfg.usize("intermediate_size")?,
        n_layers: cfg.usize("num_hidden_layers")?,
        n_heads,
        n_kv_heads: cfg.opt_usize("num_key_value_heads")?.unwrap_or(n_heads),
        head_dim,
        rms_norm_eps: cfg.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
        rope_theta: cfg.opt_f64("rope_theta")?.unwrap_or(10_000.0),
        rope_style: RopeStyle::HalfSplit,
        rope_scaling: rope_scaling(cfg)?,
        attention_bias,
        tie_embeddings: cfg.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        sliding_window,
    })
}

/// `rope_scaling` of `config.json`: absent/`default`, `linear` or `llama3`.
fn rope_scaling(cfg: &Config) -> Result<RopeScaling> {
    let Some(rs) = cfg.json.get("rope_scaling").filter(|v| !v.is_null()) else {
        return Ok(RopeScaling::None);
    };
    let sub = Config {
        path: cfg.path,
        json: rs,
    };
    let kind = sub
        .opt_str("rope_type")
        .or_else(|| sub.opt_str("type"))
        .unwrap_or("default");
    let need = |key: &str| -> Result<f64> {
        sub.opt_f64(key)?
            .ok_or_else(|| Error::format(cfg.path, format!("rope_scaling: missing `{key}`")))
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: need("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: need("original_max_position_embeddings")?,
        },
        other => {
            return Err(Error::format(
                cfg.path,
                format!("rope_scaling type `{other}` is not supported (supported: linear, llama3)"),
            ))
        }
    })
}

/// The GPTQ `quantization_config` of the `config.json` next to the weights at `path`
/// (a directory, or a file / index inside one), with the path of that `config.json`.
/// `None` when there is no `config.json` or it declares no quantization; an error for
/// another quantization method or an invalid GPTQ configuration.
pub(crate) fn gptq_config(
    path: &Path,
) -> Result<Option<(tersor_gptq::QuantizationConfig, std::path::PathBuf)>> {
    let dir = if path.is_dir() {
        path
    } else {
        match path.parent() {
            Some(p) => p,
            None => return Ok(None),
        }
    };
    let cfg_path = dir.join("config.json");
    if !cfg_path.is_file() {
        return Ok(None);
    }
    let json = read_json(&cfg_path)?;
    let Some(q) = json.get("quantization_config").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let method = q
        .get("quant_method")
        .or_else(|| q.get("method"))
        .and_then(Value::as_str)
        .unwrap_or("gptq");
    if !method.eq_ignore_ascii_case("gptq") {
        return Err(Error::format(
            &cfg_path,
            format!("quantization method `{method}` is not supported (only gptq)"),
        ));
    }
    // Parsed from the text: `dynamic` rules apply in file order, which a JSON value
    // (sorted keys) would lose.
    let text = std::fs::read_to_string(&cfg_path).map_err(|source| Error::Io {
        path: cfg_path.clone(),
        source,
    })?;
    let cfg = tersor_gptq::QuantizationConfig::from_hf_config_str(&text)
        .map_err(|e| Error::format(&cfg_path, e.to_string()))?;
    Ok(cfg.map(|c| (c, cfg_path)))
}
