//! GPTQ output: a Hugging Face directory (safetensors with `qweight` / `qzeros` /
//! `scales` / `g_idx` per block linear, fp16 embeddings and norms, `config.json` with
//! `quantization_config`, the tokenizer), written by tersor-gptq.
//!
//! From a GGUF input the q/k rows are put back in Hugging Face order (llama.cpp's
//! converter interleaves them for its RoPE): a row permutation, which commutes with
//! quantization because GPTQ groups run along rows.

use std::path::Path;

use serde_json::Value;
use tersor_gguf::GgufFile;
use tersor_gptq::{
    hf_llama_config, tokenizer_files_from_gguf, FloatDtype, GptqWriter, LlamaHfConfig,
    QuantizationConfig, QuantizedLinear,
};
use tersor_model::{LinearKind, Llama, RopeScaling, RopeStyle, TensorNaming, TextTokenizer};

use crate::error::{QuantizeError, Result};
use crate::layer::Payload;
use crate::plan::Plan;
use crate::spec::Target;
use crate::{QuantizeOptions, Results, TensorSummary};

/// HF row `src = h*hd + j*hd/2 + i` sits at GGUF row `h*hd + 2i + j`
/// (convert_hf_to_gguf.py's `permute`). Returns, for each HF row, its GGUF row.
fn hf_to_gguf_rows(rows: usize, n_heads: usize) -> Vec<usize> {
    let hd = rows / n_heads;
    let mut map = vec![0; rows];
    for h in 0..n_heads {
        for j in 0..2 {
            for i in 0..hd / 2 {
                map[h * hd + j * hd / 2 + i] = h * hd + 2 * i + j;
            }
        }
    }
    map
}

/// What a GPTQ directory is written from, besides the model and its payloads.
#[derive(Clone, Debug)]
pub struct GptqDirSpec {
    /// The input model (GGUF file or HF directory): config, tokenizer, row order.
    pub input: std::path::PathBuf,
    pub output: std::path::PathBuf,
    /// The checkpoint's global setting; modules that differ get a `dynamic` rule.
    pub base: crate::GptqSpec,
    pub damp_percent: f64,
    /// Recorded in `quantization_config.meta.method`.
    pub method: String,
}

pub(crate) fn write(
    opts: &QuantizeOptions,
    _plan: &Plan,
    model: &Llama,
    _tokenizer: &TextTokenizer,
    results: &Results,
) -> Result<Vec<TensorSummary>> {
    let Target::Gptq(spec) = opts.target else {
        return Err(QuantizeError::Invariant(
            "GPTQ writer for a GGUF target".into(),
        ));
    };
    let dir = GptqDirSpec {
        input: opts.input.clone(),
        output: opts.output.clone(),
        base: spec,
        damp_percent: opts.gptq.damp_percent,
        method: opts.method.to_string(),
    };
    write_gptq_dir(&dir, model, &|l, k| {
        results.linears.get(&(l, k)).map(|o| &o.payload)
    })
}

/// Write a GPTQ checkpoint directory: every block linear from `payload(layer, kind)`
/// (GPTQ payloads; bits and group size may differ per module: those modules get
/// GPTQModel `dynamic` overrides), fp16 embeddings and norms, config and tokenizer.
pub fn write_gptq_dir<'p>(
    dir: &GptqDirSpec,
    model: &Llama,
    payload: &dyn Fn(usize, LinearKind) -> Option<&'p Payload>,
) -> Result<Vec<TensorSummary>> {
    let spec = dir.base;
    let from_gguf = !dir.input.is_dir();
    check_hf_exportable(&dir.input, model)?;
    let hf = TensorNaming::HuggingFace;
    let module_of = |l: usize, kind: LinearKind| {
        let m = hf.linear(l, kind, "weight");
        m.strip_suffix(".weight").expect("weight name").to_string()
    };
    // Modules whose format differs from the global one: an exact-name `dynamic` rule.
    let mut dynamic = Vec::new();
    for l in 0..model.n_layers() {
        for kind in LinearKind::ALL {
            let Some(Payload::Gptq {
                bits,
                group_size,
                sym,
                ..
            }) = payload(l, kind)
            else {
                continue;
            };
            let (_, cols) = model.linear_weight(l, kind)?.dims2()?;
            let base_gs = spec.group_size.unwrap_or(cols);
            if *bits != spec.bits || *group_size != base_gs || *sym != spec.sym {
                let pattern = format!("{}$", regex::escape(&module_of(l, kind)));
                dynamic.push(tersor_gptq::DynamicRule::new(
                    &pattern,
                    tersor_gptq::DynamicAction::Override(tersor_gptq::DynamicOverride {
                        bits: (*bits != spec.bits).then_some(*bits as u8),
                        group_size: (*group_size != base_gs).then_some(*group_size as i64),
                        sym: (*sym != spec.sym).then_some(*sym),
                        desc_act: None,
                    }),
                )?);
            }
        }
    }
    let qcfg = QuantizationConfig {
        bits: spec.bits as u8,
        group_size: spec.group_size.map_or(-1, |g| g as i64),
        desc_act: spec.act_order,
        sym: spec.sym,
        true_sequential: false,
        damp_percent: dir.damp_percent,
        static_groups: false,
        dynamic,
        meta: Some(
            serde_json::json!({ "quantizer": [format!("tersor:{}", env!("CARGO_PKG_VERSION"))], "method": dir.method }),
        ),
    };
    let mut w = GptqWriter::new(qcfg)?;
    let mut summary = add_float_tensors(&mut w, model, FloatDtype::F16)?;
    let mut linears = Vec::new();
    for l in 0..model.n_layers() {
        for kind in LinearKind::ALL {
            let out = payload(l, kind).ok_or_else(|| {
                QuantizeError::Invariant(format!("block {l} {kind} was not quantized"))
            })?;
            let Payload::Gptq {
                bits,
                group_size,
                codes,
                scales,
                zeros,
                g_idx,
                ..
            } = out
            else {
                return Err(QuantizeError::Invariant(format!(
                    "block {l} {kind}: not GPTQ data"
                )));
            };
            let (rows, cols) = model.linear_weight(l, kind)?.dims2()?;
            let n_groups = cols.div_ceil(*group_size);
            let row_map = hf_row_map(model, from_gguf, kind, rows);
            let mut q = QuantizedLinear {
                bits: *bits as u8,
                out_features: rows,
                in_features: cols,
                codes: Vec::with_capacity(rows * cols),
                scales: vec![half::f16::ZERO; n_groups * rows],
                zeros: vec![0; n_groups * rows],
                g_idx: g_idx.clone(),
            };
            for (hf_row, &src) in row_map.iter().enumerate() {
                q.codes
                    .extend_from_slice(&codes[src * cols..(src + 1) * cols]);
                for g in 0..n_groups {
                    // Solver groups are [row][group]; the checkpoint's are [group][row].
                    q.scales[g * rows + hf_row] = scales[src * n_groups + g];
                    q.zeros[g * rows + hf_row] = zeros[src * n_groups + g];
                }
            }
            let module = module_of(l, kind);
            w.add_quantized(&module, &q)?;
            // qweight + qzeros + fp16 scales + int32 g_idx.
            let b = *bits as usize;
            let packed_bytes = (cols * rows * b + n_groups * rows * (b + 16)) / 8 + cols * 4;
            linears.push(TensorSummary {
                name: format!("{module}.weight"),
                format: format!("gptq:{bits}:g{group_size}"),
                params: (rows * cols) as u64,
                bytes: packed_bytes as u64,
                fallback_from: None,
            });
        }
    }
    summary.extend(linears);
    let hf_config = hf_config_and_tokenizer(&dir.input, model, &mut w)?;
    w.write(&dir.output, &hf_config)?;
    Ok(summary)
}

/// Fails early (before any work) for inputs whose config cannot be written as HF's.
pub(crate) fn check_hf_exportable(input: &Path, model: &Llama) -> Result<()> {
    if !input.is_dir() && model.config().rope_scaling != RopeScaling::None {
        return Err(QuantizeError::Input {
            path: input.to_path_buf(),
            msg: "GGUF inputs with RoPE scaling cannot be exported to a Hugging Face config yet"
                .into(),
        });
    }
    Ok(())
}

/// For each HF row of block linear `kind`, its row in the model (llama.cpp's converter
/// interleaves q/k rows for its RoPE; other inputs are already in HF order).
pub(crate) fn hf_row_map(
    model: &Llama,
    from_gguf: bool,
    kind: LinearKind,
    rows: usize,
) -> Vec<usize> {
    let c = model.config();
    match (from_gguf && c.rope_style == RopeStyle::Interleaved, kind) {
        (true, LinearKind::Q) => hf_to_gguf_rows(rows, c.n_heads),
        (true, LinearKind::K) => hf_to_gguf_rows(rows, c.n_kv_heads),
        _ => (0..rows).collect(),
    }
}

/// Adds the embedding, the norms and an untied head as `dtype` floats; returns their
/// summaries.
pub(crate) fn add_float_tensors(
    w: &mut GptqWriter,
    model: &Llama,
    dtype: FloatDtype,
) -> Result<Vec<TensorSummary>> {
    let hf = TensorNaming::HuggingFace;
    let (format, width) = match dtype {
        FloatDtype::F16 => ("F16", 2),
        FloatDtype::BF16 => ("BF16", 2),
        FloatDtype::F32 => ("F32", 4),
    };
    let mut summary = Vec::new();
    let mut float = |name: &str, shape: &[usize], t: &candle_core::Tensor| -> Result<()> {
        let data = t.flatten_all()?.to_vec1::<f32>()?;
        w.add_tensor(name, shape, &data, dtype)?;
        summary.push(TensorSummary {
            name: name.to_string(),
            format: format.into(),
            params: data.len() as u64,
            bytes: data.len() as u64 * width,
            fallback_from: None,
        });
        Ok(())
    };
    let (vocab, d) = model.embedding().dims2()?;
    float(hf.embed(), &[vocab, d], model.embedding())?;
    float(hf.final_norm(), &[d], &norm_of(model)?)?;
    if !model.config().tie_embeddings {
        float(hf.lm_head(), &[vocab, d], model.output_weight())?;
    }
    for l in 0..model.n_layers() {
        float(&hf.attn_norm(l), &[d], model.norm_weight(l, true)?)?;
        float(&hf.ffn_norm(l), &[d], model.norm_weight(l, false)?)?;
    }
    Ok(summary)
}

/// The HF `config.json` for `model` read from `input` (a GGUF's metadata or the input
/// directory's own config), with the tokenizer files added to `w`.
pub(crate) fn hf_config_and_tokenizer(
    input: &Path,
    model: &Llama,
    w: &mut GptqWriter,
) -> Result<Value> {
    let c = model.config().clone();
    let hf_config = if !input.is_dir() {
        let gguf = GgufFile::open(input)?;
        tokenizer_files_from_gguf(&gguf)?.add_to(w)?;
        let ctx = gguf
            .get_u64(&format!("{}.context_length", c.arch))
            .unwrap_or(2048) as usize;
        let get_id = |k: &str| gguf.get_u64(k).map(|v| v as u32);
        hf_llama_config(&LlamaHfConfig {
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.n_layers,
            num_attention_heads: c.n_heads,
            num_key_value_heads: c.n_kv_heads,
            head_dim: Some(c.head_dim),
            rms_norm_eps: c.rms_norm_eps,
            rope_theta: c.rope_theta,
            vocab_size: c.vocab_size,
            max_position_embeddings: ctx,
            tie_word_embeddings: c.tie_embeddings,
            bos_token_id: get_id("tokenizer.ggml.bos_token_id"),
            eos_token_id: get_id("tokenizer.ggml.eos_token_id"),
        })?
    } else {
        copy_tokenizer_files(input, w)?;
        let p = input.join("config.json");
        let text = std::fs::read_to_string(&p).map_err(|e| QuantizeError::Io {
            path: p.clone(),
            source: e,
        })?;
        let mut v: Value = serde_json::from_str(&text).map_err(|e| QuantizeError::Input {
            path: p.clone(),
            msg: format!("bad JSON: {e}"),
        })?;
        if let Some(o) = v.as_object_mut() {
            o.remove("quantization_config");
            o.insert("torch_dtype".into(), "float16".into());
            // Depth pruning removes whole blocks.
            o.insert("num_hidden_layers".into(), c.n_layers.into());
        }
        v
    };
    Ok(hf_config)
}

/// The final norm (not exposed by name on `Llama`; read through the head's weights).
fn norm_of(model: &Llama) -> Result<candle_core::Tensor> {
    Ok(model.final_norm_weight().clone())
}

fn copy_tokenizer_files(dir: &Path, w: &mut GptqWriter) -> Result<()> {
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
        "tokenizer.model",
        "vocab.json",
        "merges.txt",
    ] {
        let p = dir.join(name);
        if p.is_file() {
            if let Ok(text) = std::fs::read_to_string(&p) {
                w.add_file(name, text)?;
            }
        }
    }
    Ok(())
}
