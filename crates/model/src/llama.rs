//! Llama-family decoder (Llama 2/3, SmolLM, Mistral, Qwen2) in f32 on the CPU.
//!
//! Follows the structure of candle-transformers' `models/llama.rs` and Hugging Face
//! `transformers`' `modeling_llama.py`: pre-norm blocks with RMSNorm (Zhang & Sennrich
//! 2019), rotary position embeddings (RoPE, Su et al. 2021), grouped-query attention
//! (Ainslie et al. 2023) and a SwiGLU MLP (Shazeer 2020). The math of each step is
//! the one llama.cpp's `llm_build_llama` graph computes.
//!
//! There is no KV cache: [`Llama::forward`] runs a whole sequence with a causal mask,
//! which is what perplexity evaluation and calibration need. The forward pass is also
//! exposed piece by piece ([`Llama::embed`], [`Llama::block_forward`], [`Llama::head`])
//! so compressors can stream calibration data through one block at a time and swap
//! compressed weights in with [`Llama::set_linear_weight`].

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::hook::{ActivationHook, LinearKind};
use crate::weights::WeightSource;

/// How RoPE pairs up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)` (Meta's original Llama code; llama.cpp's
    /// `LLAMA_ROPE_TYPE_NORM`). GGUF files of Llama/Mistral use it because
    /// llama.cpp's converter permutes the rows of `attn_q`/`attn_k`.
    Interleaved,
    /// Halves `(i, i + d/2)` (Hugging Face `rotate_half`; llama.cpp's
    /// `LLAMA_ROPE_TYPE_NEOX`). Used by HF checkpoints and by Qwen2 GGUF files.
    HalfSplit,
}

/// Scaling of the RoPE frequencies for context extension.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Position interpolation (Chen et al. 2023): every frequency divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling (HF `_compute_llama3_parameters`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Per-frequency divisors, as stored by llama.cpp in the `rope_freqs.weight`
    /// tensor (one value per rotated pair; llama.cpp's `freq_factors`).
    FreqFactors(Vec<f64>),
}

/// Hyper-parameters of a Llama-family decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Architecture name as declared by the checkpoint (`llama`, `qwen2`, `mistral`).
    pub arch: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_style: RopeStyle,
    pub rope_scaling: RopeScaling,
    /// Q/K/V projections carry biases (Qwen2).
    pub attention_bias: bool,
    /// The output projection is the token embedding (no separate `lm_head`).
    pub tie_embeddings: bool,
    /// Sliding-window attention size (Mistral). Windows are not implemented:
    /// sequences longer than this are rejected.
    pub sliding_window: Option<usize>,
}

impl LlamaConfig {
    fn check(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::format(path, msg));
        if self.vocab_size == 0
            || self.hidden_size == 0
            || self.intermediate_size == 0
            || self.n_layers == 0
            || self.n_heads == 0
            || self.n_kv_heads == 0
            || self.head_dim == 0
        {
            return bad(format!("hyper-parameters must be positive: {self:?}"));
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return bad(format!(
                "{} attention heads are not a multiple of {} key/value heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return bad(format!(
                "head dimension {} is odd; RoPE needs pairs",
                self.head_dim
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return bad(format!("bad RMSNorm epsilon {}", self.rms_norm_eps));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!("bad RoPE base {}", self.rope_theta));
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        match &self.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                if !positive(*factor) {
                    return bad(format!("bad linear RoPE scaling factor {factor}"));
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                if ![
                    *factor,
                    *low_freq_factor,
                    *high_freq_factor,
                    *original_max_position_embeddings,
                ]
                .into_iter()
                .all(positive)
                    || high_freq_factor <= low_freq_factor
                {
                    return bad(format!("bad llama3 RoPE scaling {:?}", self.rope_scaling));
                }
            }
            RopeScaling::FreqFactors(f) => {
                if f.len() != self.head_dim / 2 || !f.iter().copied().all(positive) {
                    return bad(format!(
                        "rope_freqs has {} entries (need {} positive values)",
                        f.len(),
                        self.head_dim / 2
                    ));
                }
            }
        }
        Ok(())
    }

    /// RoPE inverse frequencies `theta^(-2i/d)` for each rotated pair, after scaling.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim as f64;
        let base: Vec<f64> = (0..self.head_dim / 2)
            .map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / d))
            .collect();
        match &self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::FreqFactors(ff) => base.iter().zip(ff).map(|(f, s)| f / s).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_ctx,
            } => {
                // transformers' `_compute_llama3_parameters`.
                let low_freq_wavelen = old_ctx / low_freq_factor;
                let high_freq_wavelen = old_ctx / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_freq_wavelen {
                            f
                        } else if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            let smooth = (old_ctx / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }

    /// Number of parameters (embedding, blocks, final norm, untied head).
    pub fn param_count(&self) -> usize {
        let (d, f, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let q = self.n_heads * hd;
        let kv = self.n_kv_heads * hd;
        let bias = if self.attention_bias { q + 2 * kv } else { 0 };
        let block = 2 * d + d * q + 2 * d * kv + q * d + bias + 3 * d * f;
        let head = if self.tie_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        self.vocab_size * d + self.n_layers * block + d + head
    }
}

/// A linear layer `y = x W^T + b` with `W` stored `[out, in]` as in PyTorch.
#[derive(Clone, Debug)]
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// A low-rank layer's factors `W = A B` (`A` `[out, r]`, `B` `[r, in]`): the forward
    /// pass runs as two matmuls, `(x Bᵀ) Aᵀ`. `weight` then holds the product, for the
    /// callers that read weights (it costs the dense layer's memory once more).
    factors: Option<(Tensor, Tensor)>,
}

impl Linear {
    /// `x`: `[N, in]` → `[N, out]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.factors {
            Some((a, b)) => x.matmul(&b.t()?)?.matmul(&a.t()?)?,
            None => x.matmul(&self.weight.t()?)?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

#[derive(Clone, Debug)]
struct Block {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Block {
    fn linear(&self, kind: LinearKind) -> &Linear {
        match kind {
            LinearKind::Q => &self.q,
            LinearKind::K => &self.k,
            LinearKind::V => &self.v,
            LinearKind::O => &self.o,
            LinearKind::Gate => &self.gate,
            LinearKind::Up => &self.up,
            LinearKind::Down => &self.down,
        }
    }

    fn linear_mut(&mut self, kind: LinearKind) -> &mut Linear {
        match kind {
            LinearKind::Q => &mut self.q,
            LinearKind::K => &mut self.k,
            LinearKind::V => &mut self.v,
            LinearKind::O => &mut self.o,
            LinearKind::Gate => &mut self.gate,
            LinearKind::Up => &mut self.up,
            LinearKind::Down => &mut self.down,
        }
    }
}

/// Tensor names of one checkpoint format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorNaming {
    /// llama.cpp's GGUF names (`token_embd.weight`, `blk.N.attn_q.weight`, ...).
    Gguf,
    /// Hugging Face `transformers` names (`model.embed_tokens.weight`,
    /// `model.layers.N.self_attn.q_proj.weight`, ...).
    HuggingFace,
}

impl TensorNaming {
    pub fn embed(self) -> &'static str {
        match self {
            TensorNaming::Gguf => "token_embd.weight",
            TensorNaming::HuggingFace => "model.embed_tokens.weight",
        }
    }

    pub fn final_norm(self) -> &'static str {
        match self {
            TensorNaming::Gguf => "output_norm.weight",
            TensorNaming::HuggingFace => "model.norm.weight",
        }
    }

    pub fn lm_head(self) -> &'static str {
        match self {
            TensorNaming::Gguf => "output.weight",
            TensorNaming::HuggingFace => "lm_head.weight",
        }
    }

    pub fn attn_norm(self, layer: usize) -> String {
        match self {
            TensorNaming::Gguf => format!("blk.{layer}.attn_norm.weight"),
            TensorNaming::HuggingFace => format!("model.layers.{layer}.input_layernorm.weight"),
        }
    }

    pub fn ffn_norm(self, layer: usize) -> String {
        match self {
            TensorNaming::Gguf => format!("blk.{layer}.ffn_norm.weight"),
            TensorNaming::HuggingFace => {
                format!("model.layers.{layer}.post_attention_layernorm.weight")
            }
        }
    }

    /// Name of a linear's weight (`suffix = "weight"`) or bias (`suffix = "bias"`).
    pub fn linear(self, layer: usize, kind: LinearKind, suffix: &str) -> String {
        match self {
            TensorNaming::Gguf => {
                let n = match kind {
                    LinearKind::Q => "attn_q",
                    LinearKind::K => "attn_k",
                    LinearKind::V => "attn_v",
                    LinearKind::O => "attn_output",
                    LinearKind::Gate => "ffn_gate",
                    LinearKind::Up => "ffn_up",
                    LinearKind::Down => "ffn_down",
                };
                format!("blk.{layer}.{n}.{suffix}")
            }
            TensorNaming::HuggingFace => {
                let n = match kind {
                    LinearKind::Q => "self_attn.q_proj",
                    LinearKind::K => "self_attn.k_proj",
                    LinearKind::V => "self_attn.v_proj",
                    LinearKind::O => "self_attn.o_proj",
                    LinearKind::Gate => "mlp.gate_proj",
                    LinearKind::Up => "mlp.up_proj",
                    LinearKind::Down => "mlp.down_proj",
                };
                format!("model.layers.{layer}.{n}.{suffix}")
            }
        }
    }
}

/// A Llama-family decoder with f32 weights.
#[derive(Clone, Debug)]
pub struct Llama {
    config: LlamaConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    /// `[vocab, hidden]`; shares storage with `embed` when tied.
    lm_head: Tensor,
    inv_freq: Vec<f64>,
    source: PathBuf,
}

impl Llama {
    /// Build the model from `weights` named per `naming`.
    ///
    /// With tied embeddings (or when the checkpoint has no output projection,
    /// as llama.cpp does when `output.weight` is absent) the token embedding
    /// doubles as the output projection.
    pub fn from_weights(
        mut config: LlamaConfig,
        weights: &dyn WeightSource,
        naming: TensorNaming,
    ) -> Result<Self> {
        let path = weights.path().to_path_buf();
        config.check(&path)?;
        let untied = !config.tie_embeddings && weights.contains(naming.lm_head());
        config.tie_embeddings = !untied;
        let c = &config;
        let (d, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let (q_out, kv_out) = (c.n_heads * hd, c.n_kv_heads * hd);
        let shape_of = |kind: LinearKind| -> Vec<usize> {
            match kind {
                LinearKind::Q => vec![q_out, d],
                LinearKind::K | LinearKind::V => vec![kv_out, d],
                LinearKind::O => vec![d, q_out],
                LinearKind::Gate | LinearKind::Up => vec![f, d],
                LinearKind::Down => vec![d, f],
            }
        };

        // A linear stored as two factors (`weight_a` [out, r], `weight_b` [r, in]; what
        // `tersor lowrank` writes) instead of `weight`: its rank comes from the checkpoint.
        let factored = |l: usize, kind: LinearKind| -> Result<Option<usize>> {
            if weights.contains(&naming.linear(l, kind, "weight")) {
                return Ok(None);
            }
            let (an, bn) = (
                naming.linear(l, kind, "weight_a"),
                naming.linear(l, kind, "weight_b"),
            );
            match (weights.shape(&an), weights.shape(&bn)) {
                (Some(a), Some(_)) if a.len() == 2 && a[1] > 0 => Ok(Some(a[1])),
                (Some(a), Some(_)) => Err(Error::format(
                    &path,
                    format!("tensor `{an}` has shape {a:?}, expected [out, rank]"),
                )),
                _ => Ok(None),
            }
        };
        let mut ranks = Vec::with_capacity(c.n_layers * LinearKind::ALL.len());
        for l in 0..c.n_layers {
            for kind in LinearKind::ALL {
                ranks.push(factored(l, kind)?);
            }
        }
        let mut wanted: Vec<(String, Vec<usize>)> = vec![
            (naming.embed().to_string(), vec![c.vocab_size, d]),
            (naming.final_norm().to_string(), vec![d]),
        ];
        if untied {
            wanted.push((naming.lm_head().to_string(), vec![c.vocab_size, d]));
        }
        for l in 0..c.n_layers {
            wanted.push((naming.attn_norm(l), vec![d]));
            wanted.push((naming.ffn_norm(l), vec![d]));
            for (k, kind) in LinearKind::ALL.into_iter().enumerate() {
                let (out, inp) = (shape_of(kind)[0], shape_of(kind)[1]);
                match ranks[l * LinearKind::ALL.len() + k] {
                    None => wanted.push((naming.linear(l, kind, "weight"), shape_of(kind))),
                    Some(r) => {
                        wanted.push((naming.linear(l, kind, "weight_a"), vec![out, r]));
                        wanted.push((naming.linear(l, kind, "weight_b"), vec![r, inp]));
                    }
                }
            }
            if c.attention_bias {
                wanted.push((naming.linear(l, LinearKind::Q, "bias"), vec![q_out]));
                wanted.push((naming.linear(l, LinearKind::K, "bias"), vec![kv_out]));
                wanted.push((naming.linear(l, LinearKind::V, "bias"), vec![kv_out]));
            }
        }
        let mut loaded = weights.load_many(&wanted)?.into_iter();
        let mut next = || loaded.next().expect("one tensor per wanted name");

        let embed = next();
        let norm = next();
        let lm_head = if untied { next() } else { embed.clone() };
        let mut blocks = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let attn_norm = next();
            let ffn_norm = next();
            let mut lin: Vec<Linear> = Vec::with_capacity(LinearKind::ALL.len());
            for k in 0..LinearKind::ALL.len() {
                lin.push(match ranks[l * LinearKind::ALL.len() + k] {
                    None => Linear {
                        weight: next(),
                        bias: None,
                        factors: None,
                    },
                    Some(_) => {
                        let (a, b) = (next(), next());
                        Linear {
                            weight: a.matmul(&b)?,
                            bias: None,
                            factors: Some((a, b)),
                        }
                    }
                });
            }
            if c.attention_bias {
                for l in lin.iter_mut().take(3) {
                    l.bias = Some(next());
                }
            }
            let mut lin = lin.into_iter();
            let mut take = || lin.next().expect("seven linears");
            blocks.push(Block {
                attn_norm,
                ffn_norm,
                q: take(),
                k: take(),
                v: take(),
                o: take(),
                gate: take(),
                up: take(),
                down: take(),
            });
        }
        let inv_freq = config.rope_inv_freq();
        Ok(Self {
            config,
            embed,
            blocks,
            norm,
            lm_head,
            inv_freq,
            source: path,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The checkpoint this model was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn n_layers(&self) -> usize {
        self.blocks.len()
    }

    /// Remove the blocks `drop` (indices in the current numbering); later blocks move
    /// up. At least one block must stay.
    pub fn remove_blocks(&mut self, drop: &[usize]) -> Result<()> {
        let n = self.blocks.len();
        if let Some(&l) = drop.iter().find(|&&l| l >= n) {
            return Err(Error::Invalid(format!(
                "remove_blocks: block {l} out of range ({n} blocks)"
            )));
        }
        let mut keep = vec![true; n];
        for &l in drop {
            keep[l] = false;
        }
        if !keep.contains(&true) {
            return Err(Error::Invalid(format!(
                "remove_blocks: all {n} blocks would go"
            )));
        }
        let mut i = 0;
        self.blocks.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        self.config.n_layers = self.blocks.len();
        Ok(())
    }

    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// Logits `[T, vocab]` for every position of one sequence.
    pub fn forward(&self, tokens: &[u32]) -> Result<Tensor> {
        Ok(self.forward_batch(&[tokens])?.squeeze(0)?)
    }

    /// Logits `[B, T, vocab]` for a batch of sequences of equal length.
    pub fn forward_batch(&self, batch: &[&[u32]]) -> Result<Tensor> {
        let mut h = self.embed_batch(batch)?;
        for i in 0..self.blocks.len() {
            h = self.block_forward(i, &h, None)?;
        }
        self.head(&h)
    }

    /// Like [`Llama::forward`], calling `hook` with the input of every linear layer.
    pub fn forward_hooked(&self, tokens: &[u32], hook: &mut dyn ActivationHook) -> Result<Tensor> {
        let mut h = self.embed(tokens)?;
        for i in 0..self.blocks.len() {
            h = self.block_forward(i, &h, Some(&mut *hook))?;
        }
        Ok(self.head(&h)?.squeeze(0)?)
    }

    /// Token embeddings `[1, T, hidden]` of one sequence.
    pub fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
        self.embed_batch(&[tokens])
    }

    /// Token embeddings `[B, T, hidden]` of a batch of sequences of equal length.
    pub fn embed_batch(&self, batch: &[&[u32]]) -> Result<Tensor> {
        let t = batch.first().map_or(0, |s| s.len());
        if t == 0 {
            return Err(Error::Invalid(
                "forward: empty batch or empty sequence".into(),
            ));
        }
        if let Some(s) = batch.iter().find(|s| s.len() != t) {
            return Err(Error::Invalid(format!(
                "forward_batch: sequences differ in length ({t} and {})",
                s.len()
            )));
        }
        if let Some(w) = self.config.sliding_window {
            if t > w {
                return Err(Error::Invalid(format!(
                    "sequence of {t} tokens exceeds the sliding window ({w}), which is not implemented"
                )));
            }
        }
        let v = self.config.vocab_size;
        let mut ids = Vec::with_capacity(batch.len() * t);
        for s in batch {
            for &id in s.iter() {
                if id as usize >= v {
                    return Err(Error::Invalid(format!(
                        "token id {id} out of range (vocabulary has {v} tokens)"
                    )));
                }
                ids.push(id);
            }
        }
        let ids = Tensor::from_vec(ids, batch.len() * t, &Device::Cpu)?;
        let h = self.embed.index_select(&ids, 0)?;
        Ok(h.reshape((batch.len(), t, self.config.hidden_size))?)
    }

    /// One transformer block: `[B, T, hidden]` → `[B, T, hidden]`.
    ///
    /// Mirrors llama.cpp's `llm_build_llama` layer: `h = x + Attn(RMSNorm(x))`,
    /// `out = h + MLP(RMSNorm(h))`.
    pub fn block_forward(
        &self,
        layer: usize,
        hidden: &Tensor,
        mut hook: Option<&mut dyn ActivationHook>,
    ) -> Result<Tensor> {
        let blk = self.blocks.get(layer).ok_or_else(|| {
            Error::Invalid(format!(
                "layer {layer} out of range ({} layers)",
                self.blocks.len()
            ))
        })?;
        let c = &self.config;
        let (b, t, d) = hidden.dims3()?;
        if d != c.hidden_size {
            return Err(Error::Invalid(format!(
                "block_forward: hidden width {d}, model has {}",
                c.hidden_size
            )));
        }
        let mut observe = |kind: LinearKind, x: &Tensor| -> Result<()> {
            match hook.as_deref_mut() {
                Some(h) => h.on_linear_input(layer, kind, x),
                None => Ok(()),
            }
        };
        let x = hidden.reshape((b * t, d))?;

        // Self-attention.
        let h = rms_norm(&x, &blk.attn_norm, c.rms_norm_eps)?;
        observe(LinearKind::Q, &h)?;
        observe(LinearKind::K, &h)?;
        observe(LinearKind::V, &h)?;
        let q = blk.q.forward(&h)?;
        let k = blk.k.forward(&h)?;
        let v = blk.v.forward(&h)?;
        let attn = self.attention(&q, &k, &v, b, t)?;
        observe(LinearKind::O, &attn)?;
        let x = (x + blk.o.forward(&attn)?)?;

        // SwiGLU MLP: down(silu(gate(h)) * up(h)).
        let h = rms_norm(&x, &blk.ffn_norm, c.rms_norm_eps)?;
        observe(LinearKind::Gate, &h)?;
        observe(LinearKind::Up, &h)?;
        let act = (blk.gate.forward(&h)?.silu()? * blk.up.forward(&h)?)?;
        observe(LinearKind::Down, &act)?;
        let x = (x + blk.down.forward(&act)?)?;
        Ok(x.reshape((b, t, d))?)
    }

    /// Causal grouped-query attention. `q`: `[B*T, H*hd]`, `k`, `v`: `[B*T, Hkv*hd]`;
    /// returns `[B*T, H*hd]` (heads concatenated, ready for the output projection).
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, b: usize, t: usize) -> Result<Tensor> {
        let c = &self.config;
        let (nh, nkv, hd) = (c.n_heads, c.n_kv_heads, c.head_dim);
        let n_rep = nh / nkv;
        // Fold 1/sqrt(hd) into q (cheaper than scaling the T×T scores).
        let q = (q * (1.0 / (hd as f64).sqrt()))?;
        let to_heads = |x: &Tensor, n: usize| -> Result<Tensor> {
            Ok(x.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let (cos, sin) = self.rope_tables(t)?;
        let q = self.apply_rope(&to_heads(&q, nh)?, &cos, &sin)?;
        let k = self.apply_rope(&to_heads(k, nkv)?, &cos, &sin)?;
        let v = to_heads(v, nkv)?;
        // Query head h uses key/value head h / n_rep (HF `repeat_kv`, ggml's broadcast
        // in `ggml_mul_mat`): group the n_rep query heads of a kv head along the rows
        // instead of copying k and v n_rep times.
        let q = q.reshape((b, nkv, n_rep * t, hd))?;
        let scores = q.matmul(&k.t()?)?; // [B, Hkv, n_rep*T, T]
        let probs = scores.apply_op1_no_bwd(&CausalSoftmax)?;
        let y = probs.matmul(&v)?; // [B, Hkv, n_rep*T, hd] = [B, H, T, hd]
        let y = y.reshape((b, nh, t, hd))?.transpose(1, 2)?;
        Ok(y.reshape((b * t, nh * hd))?)
    }

    /// cos/sin tables `[T, hd/2]` for positions `0..T` (angles computed in f64).
    fn rope_tables(&self, t: usize) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in 0..t {
            for &f in &self.inv_freq {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok((
            Tensor::from_vec(cos, (t, half), &Device::Cpu)?,
            Tensor::from_vec(sin, (t, half), &Device::Cpu)?,
        ))
    }

    fn apply_rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        Ok(match self.config.rope_style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(x, cos, sin)?,
            RopeStyle::HalfSplit => candle_nn::rotary_emb::rope(x, cos, sin)?,
        })
    }

    /// Final RMSNorm and output projection: `[B, T, hidden]` → `[B, T, vocab]`.
    pub fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        let (b, t, _) = hidden.dims3()?;
        let x = self.head_input(hidden)?;
        let logits = x.matmul(&self.lm_head.t()?)?;
        Ok(logits.reshape((b, t, self.config.vocab_size))?)
    }

    /// The `[out, in]` weight of one linear layer.
    pub fn linear_weight(&self, layer: usize, kind: LinearKind) -> Result<&Tensor> {
        let blk = self.blocks.get(layer).ok_or_else(|| {
            Error::Invalid(format!(
                "layer {layer} out of range ({} layers)",
                self.blocks.len()
            ))
        })?;
        Ok(&blk.linear(kind).weight)
    }

    /// The bias of one linear layer (Q/K/V of Qwen2), if it has one.
    pub fn linear_bias(&self, layer: usize, kind: LinearKind) -> Result<Option<&Tensor>> {
        let blk = self.blocks.get(layer).ok_or_else(|| {
            Error::Invalid(format!(
                "layer {layer} out of range ({} layers)",
                self.blocks.len()
            ))
        })?;
        Ok(blk.linear(kind).bias.as_ref())
    }

    /// Replace the weight of one linear layer (e.g. with its compressed version).
    /// The new weight must have the same `[out, in]` shape; it is stored as
    /// contiguous f32.
    pub fn set_linear_weight(&mut self, layer: usize, kind: LinearKind, w: Tensor) -> Result<()> {
        let n_layers = self.blocks.len();
        let blk = self.blocks.get_mut(layer).ok_or_else(|| {
            Error::Invalid(format!("layer {layer} out of range ({n_layers} layers)"))
        })?;
        let lin = blk.linear_mut(kind);
        if w.dims() != lin.weight.dims() {
            return Err(Error::Invalid(format!(
                "set_linear_weight: layer {layer} {kind}: shape {:?}, expected {:?}",
                w.dims(),
                lin.weight.dims()
            )));
        }
        lin.weight = w.to_dtype(DType::F32)?.contiguous()?;
        lin.factors = None;
        Ok(())
    }

    /// Make one linear layer low rank: `W = A B` with `a` `[out, r]` and `b` `[r, in]`.
    /// The forward pass then runs two matmuls; [`Llama::linear_weight`] returns the product.
    pub fn set_linear_factors(
        &mut self,
        layer: usize,
        kind: LinearKind,
        a: Tensor,
        b: Tensor,
    ) -> Result<()> {
        let n_layers = self.blocks.len();
        let blk = self.blocks.get_mut(layer).ok_or_else(|| {
            Error::Invalid(format!("layer {layer} out of range ({n_layers} layers)"))
        })?;
        let lin = blk.linear_mut(kind);
        let (out, inp) = lin.weight.dims2()?;
        let (ar, r) = a.dims2()?;
        let (rb, bc) = b.dims2()?;
        if ar != out || rb != r || bc != inp || r == 0 {
            return Err(Error::Invalid(format!(
                "set_linear_factors: layer {layer} {kind}: factors {:?} × {:?} for a [{out}, {inp}] weight",
                a.dims(),
                b.dims()
            )));
        }
        let a = a.to_dtype(DType::F32)?.contiguous()?;
        let b = b.to_dtype(DType::F32)?.contiguous()?;
        lin.weight = a.matmul(&b)?;
        lin.factors = Some((a, b));
        Ok(())
    }

    /// A low-rank linear's factors `(A [out, r], B [r, in])`, `None` for a dense one.
    pub fn linear_factors(
        &self,
        layer: usize,
        kind: LinearKind,
    ) -> Result<Option<(&Tensor, &Tensor)>> {
        let blk = self.blocks.get(layer).ok_or_else(|| {
            Error::Invalid(format!(
                "layer {layer} out of range ({} layers)",
                self.blocks.len()
            ))
        })?;
        Ok(blk.linear(kind).factors.as_ref().map(|(a, b)| (a, b)))
    }

    /// The weight `[hidden]` of a block's RMSNorm (`attn = true`: before attention,
    /// else before the MLP).
    pub fn norm_weight(&self, layer: usize, attn: bool) -> Result<&Tensor> {
        let blk = self.blocks.get(layer).ok_or_else(|| {
            Error::Invalid(format!(
                "layer {layer} out of range ({} layers)",
                self.blocks.len()
            ))
        })?;
        Ok(if attn { &blk.attn_norm } else { &blk.ffn_norm })
    }

    /// Replace a block's RMSNorm weight (AWQ folds its per-channel scales into it).
    pub fn set_norm_weight(&mut self, layer: usize, attn: bool, w: Tensor) -> Result<()> {
        let n_layers = self.blocks.len();
        let blk = self.blocks.get_mut(layer).ok_or_else(|| {
            Error::Invalid(format!("layer {layer} out of range ({n_layers} layers)"))
        })?;
        let slot = if attn {
            &mut blk.attn_norm
        } else {
            &mut blk.ffn_norm
        };
        if w.dims() != slot.dims() {
            return Err(Error::Invalid(format!(
                "set_norm_weight: layer {layer}: shape {:?}, expected {:?}",
                w.dims(),
                slot.dims()
            )));
        }
        *slot = w.to_dtype(DType::F32)?.contiguous()?;
        Ok(())
    }

    /// The final RMSNorm's weight `[hidden]`.
    pub fn final_norm_weight(&self) -> &Tensor {
        &self.norm
    }

    /// The token embedding `[vocab, hidden]`.
    pub fn embedding(&self) -> &Tensor {
        &self.embed
    }

    /// The output projection `[vocab, hidden]` (the embedding when tied).
    pub fn output_weight(&self) -> &Tensor {
        &self.lm_head
    }

    /// Replace the token embedding `[vocab, hidden]`; with tied embeddings the output
    /// projection changes with it, as it does in the file.
    pub fn set_embedding(&mut self, w: Tensor) -> Result<()> {
        if w.dims() != self.embed.dims() {
            return Err(Error::Invalid(format!(
                "set_embedding: shape {:?}, expected {:?}",
                w.dims(),
                self.embed.dims()
            )));
        }
        self.embed = w.to_dtype(DType::F32)?.contiguous()?;
        if self.config.tie_embeddings {
            self.lm_head = self.embed.clone();
        }
        Ok(())
    }

    /// Replace the output projection of a model with untied embeddings.
    pub fn set_output_weight(&mut self, w: Tensor) -> Result<()> {
        if self.config.tie_embeddings {
            return Err(Error::Invalid(
                "set_output_weight: the output projection is the (tied) token embedding".into(),
            ));
        }
        if w.dims() != self.lm_head.dims() {
            return Err(Error::Invalid(format!(
                "set_output_weight: shape {:?}, expected {:?}",
                w.dims(),
                self.lm_head.dims()
            )));
        }
        self.lm_head = w.to_dtype(DType::F32)?.contiguous()?;
        Ok(())
    }

    /// The input of the output projection: the final RMSNorm of `hidden`
    /// (`[B, T, hidden]` → `[B*T, hidden]`).
    pub fn head_input(&self, hidden: &Tensor) -> Result<Tensor> {
        let (b, t, d) = hidden.dims3()?;
        rms_norm(
            &hidden.reshape((b * t, d))?,
            &self.norm,
            self.config.rms_norm_eps,
        )
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn param_count(&self) -> usize {
        self.config.param_count()
    }
}

/// RMSNorm over the last dimension (Zhang & Sennrich 2019; llama.cpp `ggml_rms_norm`
/// followed by the multiplication with the norm weight).
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm(x, weight, eps as f32)?)
}

/// Softmax over the last dimension with a causal mask: in a `[.., R, T]` tensor,
/// row `r` is query position `p = r % T` and only keys `0..=p` take part; the
/// other entries are 0. Same result as adding a `-inf` upper-triangular mask and
/// calling `softmax_last_dim`, without materialising the mask or exponentiating
/// masked entries.
struct CausalSoftmax;

impl candle_core::CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let candle_core::CpuStorage::F32(src) = storage else {
            candle_core::bail!("causal softmax: f32 input expected");
        };
        let Some((o1, o2)) = layout.contiguous_offsets() else {
            candle_core::bail!("causal softmax: contiguous input expected");
        };
        let src = &src[o1..o2];
        let dims = layout.shape().dims();
        let t = dims[dims.len() - 1];
        let mut dst = vec![0f32; src.len()];
        src.par_chunks(t)
            .zip(dst.par_chunks_mut(t))
            .enumerate()
            .for_each(|(r, (s, d))| {
                let n = r % t + 1;
                let (s, d) = (&s[..n], &mut d[..n]);
                let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (x, y) in s.iter().zip(d.iter_mut()) {
                    *y = (x - max).exp();
                    sum += *y;
                }
                let inv = 1.0 / sum;
                d.iter_mut().for_each(|y| *y *= inv);
            });
        Ok((candle_core::CpuStorage::F32(dst), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_softmax_equals_masked_softmax() {
        let (t, n_rep) = (5, 3);
        let x = Tensor::randn(0f32, 2.0, (2, 2, n_rep * t, t), &Device::Cpu).unwrap();
        let mut mask = Vec::new();
        for _ in 0..n_rep {
            for i in 0..t {
                mask.extend((0..t).map(|j| if j <= i { 0f32 } else { f32::NEG_INFINITY }));
            }
        }
        let mask = Tensor::from_vec(mask, (n_rep * t, t), &Device::Cpu).unwrap();
        let want = candle_nn::ops::softmax_last_dim(&x.broadcast_add(&mask).unwrap()).unwrap();
        let got = x.apply_op1_no_bwd(&CausalSoftmax).unwrap();
        let d: f32 = (want - got)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(d < 1e-6, "max diff {d}");
    }

    fn config(rope_scaling: RopeScaling) -> LlamaConfig {
        LlamaConfig {
            arch: "llama".into(),
            vocab_size: 10,
            hidden_size: 16,
            intermediate_size: 32,
            n_layers: 1,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 8,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            rope_style: RopeStyle::HalfSplit,
            rope_scaling,
            attention_bias: false,
            tie_embeddings: true,
            sliding_window: None,
        }
    }

    #[test]
    fn rope_frequencies() {
        // theta^(-2i/d) for d = 8: 1, 0.1, 0.01, 0.001.
        let base = config(RopeScaling::None).rope_inv_freq();
        for (f, want) in base.iter().zip([1.0, 0.1, 0.01, 0.001]) {
            assert!((f - want).abs() < 1e-12 * want, "{f} vs {want}");
        }
        let lin = config(RopeScaling::Linear { factor: 4.0 }).rope_inv_freq();
        assert!(lin
            .iter()
            .zip(&base)
            .all(|(a, b)| (a * 4.0 - b).abs() < 1e-15));
        // Llama 3 with original context 100: wavelengths 2π·(1, 10, 100, 1000);
        // high-frequency cutoff 100/4 = 25, low-frequency cutoff 100/1 = 100.
        let l3 = config(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 100.0,
        })
        .rope_inv_freq();
        assert_eq!(l3[0], base[0]); // wavelength 6.3 < 25: unchanged
        assert_eq!(l3[3], base[3] / 8.0); // wavelength 6283 > 100: divided by 8
                                          // wavelength 62.8 is between: smooth = (100/62.8 - 1) / 3.
        let smooth = (100.0 / (2.0 * std::f64::consts::PI * 10.0) - 1.0) / 3.0;
        let want = (1.0 - smooth) * base[1] / 8.0 + smooth * base[1];
        assert!((l3[1] - want).abs() < 1e-15);
        // Bad scaling parameters are rejected.
        assert!(config(RopeScaling::Linear { factor: 0.0 })
            .check(Path::new("x"))
            .is_err());
        assert!(config(RopeScaling::FreqFactors(vec![1.0; 3]))
            .check(Path::new("x"))
            .is_err());
    }
}
