//! Format detection and the top-level [`load`].

use std::path::{Path, PathBuf};

use crate::bert::Bert;
use crate::error::{Error, Result};
use crate::gguf::{self, GgufWeights, SUPPORTED_GGUF_ARCHS};
use crate::hf::{self, read_json, Config, SUPPORTED_HF};
use crate::llama::{Llama, TensorNaming};
use crate::safetensors::SafetensorsWeights;
use crate::tokenizer::TextTokenizer;

/// A loaded model with what is needed to feed it text.
#[derive(Clone, Debug)]
pub enum LoadedModel {
    Decoder {
        model: Llama,
        tokenizer: TextTokenizer,
    },
    Encoder(Bert),
}

/// A summary of a loaded model (for `tersor inspect`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// Architecture (`llama`, `qwen2`, `mistral`, `bert`).
    pub arch: String,
    /// `decoder` or `encoder`.
    pub kind: &'static str,
    /// `gguf` or `safetensors`.
    pub format: &'static str,
    pub n_layers: usize,
    pub hidden_size: usize,
    pub vocab_size: usize,
    /// Parameters (tied embeddings counted once).
    pub param_count: usize,
    pub source: PathBuf,
}

impl std::fmt::Display for ModelInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} ({}): {} layers, hidden {}, vocab {}, {} parameters",
            self.arch,
            self.kind,
            self.format,
            self.n_layers,
            self.hidden_size,
            self.vocab_size,
            self.param_count
        )
    }
}

impl LoadedModel {
    pub fn describe(&self) -> ModelInfo {
        match self {
            LoadedModel::Decoder { model, .. } => {
                let c = model.config();
                ModelInfo {
                    arch: c.arch.clone(),
                    kind: "decoder",
                    format: if is_gguf(model.source()) {
                        "gguf"
                    } else {
                        "safetensors"
                    },
                    n_layers: c.n_layers,
                    hidden_size: c.hidden_size,
                    vocab_size: c.vocab_size,
                    param_count: model.param_count(),
                    source: model.source().to_path_buf(),
                }
            }
            LoadedModel::Encoder(b) => ModelInfo {
                arch: "bert".into(),
                kind: "encoder",
                format: "safetensors",
                n_layers: b.n_layers(),
                hidden_size: b.config().hidden_size,
                vocab_size: b.config().vocab_size,
                param_count: b.param_count(),
                source: b.source().to_path_buf(),
            },
        }
    }
}

/// Whether `path` is a GGUF file (by its magic bytes).
fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    path.is_file()
        && std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && magic == *b"GGUF"
}

/// Load a model: a GGUF file (decoder + tokenizer from its metadata) or a Hugging
/// Face directory (`config.json` decides: llama/mistral/qwen2 → decoder, bert →
/// encoder).
pub fn load(path: &Path) -> Result<LoadedModel> {
    if is_gguf(path) {
        let w = GgufWeights::open(path)?;
        let model = Llama::from_gguf_weights(&w)?;
        let tokenizer = TextTokenizer::from_gguf_vocab(&gguf::vocab(&w)?, path)?;
        check_vocab(&model, &tokenizer)?;
        return Ok(LoadedModel::Decoder { model, tokenizer });
    }
    if path.is_dir() {
        let cfg_path = path.join("config.json");
        if !cfg_path.is_file() {
            return Err(Error::format(
                path,
                "not a Hugging Face model directory (no config.json)",
            ));
        }
        let json = read_json(&cfg_path)?;
        let cfg = Config {
            path: &cfg_path,
            json: &json,
        };
        let model_type = cfg.model_type().ok_or_else(|| {
            Error::format(&cfg_path, "neither `model_type` nor `architectures` is set")
        })?;
        return match hf::family(&model_type) {
            Some("bert") => Ok(LoadedModel::Encoder(Bert::from_hf_dir(path)?)),
            Some(_) => {
                let model = Llama::from_hf_dir(path)?;
                let tokenizer = TextTokenizer::from_hf_dir(
                    path,
                    cfg.opt_token_id("bos_token_id"),
                    cfg.opt_token_id("eos_token_id"),
                )?;
                check_vocab(&model, &tokenizer)?;
                Ok(LoadedModel::Decoder { model, tokenizer })
            }
            None => Err(Error::UnsupportedArch {
                path: cfg_path,
                arch: model_type,
                supported: SUPPORTED_HF,
            }),
        };
    }
    if !path.exists() {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        });
    }
    Err(Error::format(
        path,
        "not a GGUF file (bad magic) nor a Hugging Face model directory",
    ))
}

/// The tokenizer must not produce ids the embedding cannot look up.
fn check_vocab(model: &Llama, tok: &TextTokenizer) -> Result<()> {
    if tok.vocab_size() > model.vocab_size() {
        return Err(Error::format(
            model.source(),
            format!(
                "tokenizer has {} tokens but the embedding only {}",
                tok.vocab_size(),
                model.vocab_size()
            ),
        ));
    }
    Ok(())
}

impl Llama {
    /// Load the decoder of a GGUF file, dequantizing every tensor to f32.
    pub fn from_gguf(path: &Path) -> Result<Self> {
        Self::from_gguf_weights(&GgufWeights::open(path)?)
    }

    /// Load the decoder from an open GGUF file.
    pub fn from_gguf_weights(w: &GgufWeights) -> Result<Self> {
        let config = gguf::llama_config(w)?;
        Llama::from_weights(config, w, TensorNaming::Gguf)
    }

    /// Load a Hugging Face directory: `config.json` and safetensors (single or sharded).
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let json = read_json(&cfg_path)?;
        let cfg = Config {
            path: &cfg_path,
            json: &json,
        };
        let model_type = cfg.model_type().unwrap_or_default();
        let family = match hf::family(&model_type) {
            Some(f @ ("llama" | "mistral" | "qwen2")) => f,
            _ => {
                return Err(Error::UnsupportedArch {
                    path: cfg_path,
                    arch: model_type,
                    supported: "llama, mistral, qwen2",
                })
            }
        };
        let config = hf::llama_config(&cfg, family)?;
        let w = SafetensorsWeights::open(dir)?;
        Llama::from_weights(config, &w, TensorNaming::HuggingFace)
    }
}

impl TextTokenizer {
    /// The tokenizer stored in a GGUF file's metadata.
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let w = GgufWeights::open(path)?;
        TextTokenizer::from_gguf_vocab(&gguf::vocab(&w)?, path)
    }
}

/// Supported GGUF architectures (for messages).
pub const GGUF_ARCHS: &str = SUPPORTED_GGUF_ARCHS;
