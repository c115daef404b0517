//! BERT sentence encoder (Devlin et al. 2019) with sentence-transformers pooling
//! (Reimers & Gurevych 2019), e.g. `all-MiniLM-L6-v2`.
//!
//! Mirrors `transformers`' `modeling_bert.py` (post-norm blocks: attention and MLP
//! each followed by residual + LayerNorm, exact erf GELU) and sentence-transformers'
//! `Pooling` (mean over the attention mask) and `Normalize` (L2) modules, as
//! configured in the checkpoint's `modules.json`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::{Error, Result};
use crate::hf::{read_json, Config};
use crate::hook::{ActivationHook, LinearKind};
use crate::weights::WeightSource;

/// Hyper-parameters of a BERT encoder (`config.json`).
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
}

impl BertConfig {
    pub(crate) fn from_hf(cfg: &Config) -> Result<Self> {
        if let Some(act) = cfg.opt_str("hidden_act") {
            if act != "gelu" {
                return Err(Error::format(
                    cfg.path,
                    format!("hidden_act `{act}` is not supported (only gelu)"),
                ));
            }
        }
        if let Some(p) = cfg.opt_str("position_embedding_type") {
            if p != "absolute" {
                return Err(Error::format(
                    cfg.path,
                    format!("position_embedding_type `{p}` is not supported (only absolute)"),
                ));
            }
        }
        let c = BertConfig {
            vocab_size: cfg.usize("vocab_size")?,
            hidden_size: cfg.usize("hidden_size")?,
            intermediate_size: cfg.usize("intermediate_size")?,
            n_layers: cfg.usize("num_hidden_layers")?,
            n_heads: cfg.usize("num_attention_heads")?,
            max_position_embeddings: cfg.usize("max_position_embeddings")?,
            type_vocab_size: cfg.opt_usize("type_vocab_size")?.unwrap_or(2),
            layer_norm_eps: cfg.opt_f64("layer_norm_eps")?.unwrap_or(1e-12),
        };
        if c.n_heads == 0 || c.hidden_size % c.n_heads != 0 || c.type_vocab_size == 0 {
            return Err(Error::format(
                cfg.path,
                format!("inconsistent hyper-parameters: {c:?}"),
            ));
        }
        Ok(c)
    }

    /// Number of parameters.
    pub fn param_count(&self) -> usize {
        let (d, f) = (self.hidden_size, self.intermediate_size);
        let emb =
            (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * d + 2 * d;
        let block = 4 * (d * d + d) + 2 * d + (d * f + f) + (f * d + d) + 2 * d;
        emb + self.n_layers * block
    }
}

#[derive(Clone, Debug)]
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?)
    }
}

#[derive(Clone, Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

#[derive(Clone, Debug)]
struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    attn_norm: LayerNorm,
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
}

impl Layer {
    fn linear_mut(&mut self, kind: LinearKind) -> Option<&mut Linear> {
        Some(match kind {
            LinearKind::Q => &mut self.q,
            LinearKind::K => &mut self.k,
            LinearKind::V => &mut self.v,
            LinearKind::O => &mut self.o,
            LinearKind::Up => &mut self.up,
            LinearKind::Down => &mut self.down,
            LinearKind::Gate => return None,
        })
    }
}

/// How token states become one sentence vector (sentence-transformers modules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pooling {
    /// Mean over the non-padding tokens (`pooling_mode_mean_tokens`).
    pub mean: bool,
    /// L2-normalise the result (a `Normalize` module in `modules.json`).
    pub normalize: bool,
}

/// A BERT sentence encoder.
#[derive(Clone, Debug)]
pub struct Bert {
    config: BertConfig,
    word_emb: Tensor,
    pos_emb: Tensor,
    type_emb: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    tokenizer: Box<Tokenizer>,
    pooling: Pooling,
    source: PathBuf,
}

impl Bert {
    /// Load a sentence-transformers / Hugging Face directory: `config.json`,
    /// `model.safetensors` (or a sharded index), `tokenizer.json`, and the optional
    /// `modules.json`, `1_Pooling/config.json`, `sentence_bert_config.json`.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let json = read_json(&cfg_path)?;
        let cfg = Config {
            path: &cfg_path,
            json: &json,
        };
        let config = BertConfig::from_hf(&cfg)?;
        let weights = crate::safetensors::SafetensorsWeights::open(dir)?;
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(Error::Tokenizer {
                path: tok_path,
                msg: "tokenizer file not found".into(),
            });
        }
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| Error::Tokenizer {
            path: tok_path.clone(),
            msg: e.to_string(),
        })?;
        // sentence-transformers truncates to `max_seq_length` and pads to the longest
        // sentence of the batch (tokenizer.json's own fixed padding is not used).
        let st_cfg = dir.join("sentence_bert_config.json");
        let max_len = if st_cfg.is_file() {
            let j = read_json(&st_cfg)?;
            Config {
                path: &st_cfg,
                json: &j,
            }
            .opt_usize("max_seq_length")?
        } else {
            None
        }
        .unwrap_or(config.max_position_embeddings)
        .min(config.max_position_embeddings);
        let pad_id = json
            .get("pad_token_id")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as u32;
        let pad_token = tokenizer
            .id_to_token(pad_id)
            .unwrap_or_else(|| "[PAD]".to_string());
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer {
                path: tok_path.clone(),
                msg: e.to_string(),
            })?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id,
            pad_token,
            ..Default::default()
        }));
        let pooling = read_pooling(dir)?;
        let mut bert = Self::from_weights(config, &weights, tokenizer, pooling)?;
        bert.source = dir.to_path_buf();
        Ok(bert)
    }

    /// Build from any weight source with HF BERT tensor names (an optional `bert.`
    /// prefix is accepted).
    pub fn from_weights(
        config: BertConfig,
        weights: &dyn WeightSource,
        tokenizer: Tokenizer,
        pooling: Pooling,
    ) -> Result<Self> {
        let prefix = if weights.contains("embeddings.word_embeddings.weight") {
            ""
        } else {
            "bert."
        };
        let c = &config;
        let (d, f) = (c.hidden_size, c.intermediate_size);
        let mut wanted: Vec<(String, Vec<usize>)> = vec![
            (
                format!("{prefix}embeddings.word_embeddings.weight"),
                vec![c.vocab_size, d],
            ),
            (
                format!("{prefix}embeddings.position_embeddings.weight"),
                vec![c.max_position_embeddings, d],
            ),
            (
                format!("{prefix}embeddings.token_type_embeddings.weight"),
                vec![c.type_vocab_size, d],
            ),
            (format!("{prefix}embeddings.LayerNorm.weight"), vec![d]),
            (format!("{prefix}embeddings.LayerNorm.bias"), vec![d]),
        ];
        for l in 0..c.n_layers {
            let p = format!("{prefix}encoder.layer.{l}");
            for (name, out, inp) in [
                ("attention.self.query", d, d),
                ("attention.self.key", d, d),
                ("attention.self.value", d, d),
                ("attention.output.dense", d, d),
                ("intermediate.dense", f, d),
                ("output.dense", d, f),
            ] {
                wanted.push((format!("{p}.{name}.weight"), vec![out, inp]));
                wanted.push((format!("{p}.{name}.bias"), vec![out]));
            }
            for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
                wanted.push((format!("{p}.{name}.weight"), vec![d]));
                wanted.push((format!("{p}.{name}.bias"), vec![d]));
            }
        }
        let mut t = weights.load_many(&wanted)?.into_iter();
        let mut next = || t.next().expect("one tensor per wanted name");
        let word_emb = next();
        let pos_emb = next();
        let type_emb = next();
        let emb_norm = LayerNorm {
            weight: next(),
            bias: next(),
        };
        let mut layers = Vec::with_capacity(c.n_layers);
        for _ in 0..c.n_layers {
            let mut lin = || Linear {
                weight: next(),
                bias: next(),
            };
            let (q, k, v, o, up, down) = (lin(), lin(), lin(), lin(), lin(), lin());
            let mut norm = || LayerNorm {
                weight: next(),
                bias: next(),
            };
            let (attn_norm, out_norm) = (norm(), norm());
            layers.push(Layer {
                q,
                k,
                v,
                o,
                attn_norm,
                up,
                down,
                out_norm,
            });
        }
        Ok(Self {
            config,
            word_emb,
            pos_emb,
            type_emb,
            emb_norm,
            layers,
            tokenizer: Box::new(tokenizer),
            pooling,
            source: weights.path().to_path_buf(),
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn param_count(&self) -> usize {
        self.config.param_count()
    }

    /// Sentence embeddings: tokenize (padded to the longest sentence, truncated to
    /// `max_seq_length`), encode, mean-pool over the attention mask, and
    /// L2-normalise if `modules.json` has a `Normalize` module.
    pub fn embed(&self, sentences: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embed_hooked(sentences, None)
    }

    /// [`Bert::embed`] with a calibration hook. The hook sees the inputs of the
    /// Q/K/V/O (attention), Up (intermediate) and Down (output) linears of each
    /// layer, padding positions excluded.
    pub fn embed_hooked(
        &self,
        sentences: &[&str],
        hook: Option<&mut dyn ActivationHook>,
    ) -> Result<Vec<Vec<f32>>> {
        if sentences.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, mask) = self.tokenize(sentences)?;
        let hidden = self.encode(&ids, &mask, hook)?;
        let pooled = self.pool(&hidden, &mask)?;
        Ok(pooled.to_vec2()?)
    }

    /// Token ids and attention mask `[B, T]` (u32 and f32) of a padded batch.
    fn tokenize(&self, sentences: &[&str]) -> Result<(Tensor, Tensor)> {
        let enc = self
            .tokenizer
            .encode_batch(sentences.to_vec(), true)
            .map_err(|e| Error::Tokenizer {
                path: self.source.join("tokenizer.json"),
                msg: e.to_string(),
            })?;
        let b = enc.len();
        let t = enc.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t);
        for e in &enc {
            if e.get_ids().len() != t {
                return Err(Error::Invalid("tokenizer did not pad the batch".into()));
            }
            ids.extend_from_slice(e.get_ids());
            mask.extend(e.get_attention_mask().iter().map(|&m| m as f32));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.config.vocab_size) {
            return Err(Error::Invalid(format!(
                "token id {bad} out of range (vocabulary has {} tokens)",
                self.config.vocab_size
            )));
        }
        Ok((
            Tensor::from_vec(ids, (b, t), &Device::Cpu)?,
            Tensor::from_vec(mask, (b, t), &Device::Cpu)?,
        ))
    }

    /// Final hidden states `[B, T, hidden]` for token ids and attention mask `[B, T]`.
    pub fn encode(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        mut hook: Option<&mut dyn ActivationHook>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, t) = ids.dims2()?;
        if t > c.max_position_embeddings {
            return Err(Error::Invalid(format!(
                "sequence of {t} tokens exceeds max_position_embeddings {}",
                c.max_position_embeddings
            )));
        }
        let d = c.hidden_size;
        let words = self
            .word_emb
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, d))?;
        let pos = self.pos_emb.narrow(0, 0, t)?;
        // token_type_ids are all 0 for single sentences.
        let typ = self.type_emb.narrow(0, 0, 1)?;
        let x = words.broadcast_add(&pos)?.broadcast_add(&typ)?;
        let mut x = layer_norm(&x.reshape((b * t, d))?, &self.emb_norm, c.layer_norm_eps)?;

        // Rows of real (non-padding) tokens, for the hook.
        let keep: Vec<u32> = mask
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .enumerate()
            .filter(|(_, &m)| m > 0.0)
            .map(|(i, _)| i as u32)
            .collect();
        let keep = Tensor::from_vec(keep.clone(), keep.len(), &Device::Cpu)?;
        // Additive key mask [B, 1, 1, T]: 0 for tokens, f32::MIN for padding (HF's
        // `torch.finfo(dtype).min`).
        let key_mask = ((mask - 1.0)?.abs()? * f64::from(f32::MIN))?.reshape((b, 1, 1, t))?;

        for (li, layer) in self.layers.iter().enumerate() {
            let mut observe = |kind: LinearKind, x: &Tensor| -> Result<()> {
                match hook.as_deref_mut() {
                    Some(h) => h.on_linear_input(li, kind, &x.index_select(&keep, 0)?),
                    None => Ok(()),
                }
            };
            observe(LinearKind::Q, &x)?;
            observe(LinearKind::K, &x)?;
            observe(LinearKind::V, &x)?;
            let ctx = self.attention(layer, &x, &key_mask, b, t)?;
            observe(LinearKind::O, &ctx)?;
            let h = (layer.o.forward(&ctx)? + &x)?;
            let h = layer_norm(&h, &layer.attn_norm, c.layer_norm_eps)?;
            observe(LinearKind::Up, &h)?;
            let a = layer.up.forward(&h)?.gelu_erf()?;
            observe(LinearKind::Down, &a)?;
            let out = (layer.down.forward(&a)? + &h)?;
            x = layer_norm(&out, &layer.out_norm, c.layer_norm_eps)?;
        }
        Ok(x.reshape((b, t, d))?)
    }

    /// Bidirectional multi-head attention; `x`: `[B*T, d]` → `[B*T, d]`.
    fn attention(
        &self,
        l: &Layer,
        x: &Tensor,
        key_mask: &Tensor,
        b: usize,
        t: usize,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (nh, hd) = (c.n_heads, c.hidden_size / c.n_heads);
        let heads = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q = heads((l.q.forward(x)? * (1.0 / (hd as f64).sqrt()))?)?;
        let k = heads(l.k.forward(x)?)?;
        let v = heads(l.v.forward(x)?)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(key_mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = probs.matmul(&v)?.transpose(1, 2)?;
        Ok(y.reshape((b * t, c.hidden_size))?)
    }

    /// Pooling and optional normalisation: `[B, T, d]` → `[B, d]`.
    fn pool(&self, hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let pooled = if self.pooling.mean {
            // sentence-transformers: sum(h * m) / clamp(sum(m), 1e-9).
            let m = mask.unsqueeze(2)?;
            let sum = hidden.broadcast_mul(&m)?.sum(1)?;
            let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
            sum.broadcast_div(&count)?
        } else {
            // CLS token.
            hidden.narrow(1, 0, 1)?.squeeze(1)?
        };
        if self.pooling.normalize {
            // torch.nn.functional.normalize: x / max(||x||, 1e-12).
            let norm = pooled
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .clamp(1e-12, f64::MAX)?;
            Ok(pooled.broadcast_div(&norm)?)
        } else {
            Ok(pooled)
        }
    }

    /// The `[out, in]` weight of a linear layer (Q/K/V/O/Up/Down; BERT has no Gate).
    pub fn linear_weight(&self, layer: usize, kind: LinearKind) -> Result<&Tensor> {
        let l = self.layers.get(layer).ok_or_else(|| {
            Error::Invalid(format!(
                "layer {layer} out of range ({} layers)",
                self.layers.len()
            ))
        })?;
        Ok(match kind {
            LinearKind::Q => &l.q.weight,
            LinearKind::K => &l.k.weight,
            LinearKind::V => &l.v.weight,
            LinearKind::O => &l.o.weight,
            LinearKind::Up => &l.up.weight,
            LinearKind::Down => &l.down.weight,
            LinearKind::Gate => {
                return Err(Error::Invalid("BERT layers have no gate projection".into()))
            }
        })
    }

    /// Replace the weight of a linear layer; the shape must not change.
    pub fn set_linear_weight(&mut self, layer: usize, kind: LinearKind, w: Tensor) -> Result<()> {
        let n = self.layers.len();
        let l = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| Error::Invalid(format!("layer {layer} out of range ({n} layers)")))?;
        let lin = l
            .linear_mut(kind)
            .ok_or_else(|| Error::Invalid("BERT layers have no gate projection".into()))?;
        if w.dims() != lin.weight.dims() {
            return Err(Error::Invalid(format!(
                "set_linear_weight: layer {layer} {kind}: shape {:?}, expected {:?}",
                w.dims(),
                lin.weight.dims()
            )));
        }
        lin.weight = w.to_dtype(DType::F32)?.contiguous()?;
        Ok(())
    }
}

/// LayerNorm over the last dimension (`torch.nn.LayerNorm`).
fn layer_norm(x: &Tensor, ln: &LayerNorm, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::layer_norm(
        x, &ln.weight, &ln.bias, eps as f32,
    )?)
}

/// Pooling and normalisation from `modules.json` and the pooling module's config.
/// Without `modules.json` (a plain HF BERT), mean pooling without normalisation.
fn read_pooling(dir: &Path) -> Result<Pooling> {
    let modules_path = dir.join("modules.json");
    if !modules_path.is_file() {
        return Ok(Pooling {
            mean: true,
            normalize: false,
        });
    }
    let modules = read_json(&modules_path)?;
    let list = modules
        .as_array()
        .ok_or_else(|| Error::format(&modules_path, "expected a JSON array of modules"))?;
    let mut pooling = Pooling {
        mean: true,
        normalize: false,
    };
    for m in list {
        let ty = m.get("type").and_then(|v| v.as_str()).unwrap_or("");
        let sub = m.get("path").and_then(|v| v.as_str()).unwrap_or("");
        match ty.rsplit('.').next().unwrap_or("") {
            "Transformer" => {}
            "Normalize" => pooling.normalize = true,
            "Pooling" => {
                let p = dir.join(sub).join("config.json");
                if p.is_file() {
                    let j = read_json(&p)?;
                    let flag = |k: &str| j.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
                    if flag("pooling_mode_max_tokens")
                        || flag("pooling_mode_mean_sqrt_len_tokens")
                        || (flag("pooling_mode_cls_token") && flag("pooling_mode_mean_tokens"))
                    {
                        return Err(Error::format(
                            &p,
                            "only mean or CLS pooling (one of them) is supported",
                        ));
                    }
                    pooling.mean = !flag("pooling_mode_cls_token");
                }
            }
            other => {
                return Err(Error::format(
                    &modules_path,
                    format!("sentence-transformers module `{other}` is not supported"),
                ))
            }
        }
    }
    Ok(pooling)
}
