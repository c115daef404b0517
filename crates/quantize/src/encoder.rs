//! The sentence-encoder path of `tersor prune` and `tersor quantize`: BERT-family
//! encoders (all-MiniLM-L6-v2) pruned or quantized layer by layer, written back as a
//! Hugging Face / sentence-transformers directory.
//!
//! ```text
//! DIR ─ load ─► Bert (f32)
//!   for each layer l:
//!     [calibrating methods] embed the calibration sentences with layers < l already
//!       compressed, collecting XᵀX at the inputs of layer l's linears
//!     compress Q K V O intermediate output (prune | GPTQ / RTN onto a GPTQ grid)
//!   ▼
//! write: DIR's files copied, model.safetensors with the compressed linears (in each
//! tensor's original dtype; quantized weights stored as their dequantized values)
//! ```
//!
//! Calibration is sequential, as for decoders, but by re-running the whole encoder once
//! per layer: BERT encoders are small, and this keeps the model code free of a
//! layer-by-layer API. The calibration set is the sentences of the calibration text
//! (`split_sentences`) up to `max_tokens` real tokens.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;
use tersor_model::{Bert, LinearKind, XtxAccumulator};
use tersor_prune::sparsegpt::{sparsegpt, SparseGptConfig};
use tersor_prune::{magnitude, wanda, Pattern};
use tersor_quant::gptq::{gptq, GptqConfig};
use tersor_quant::gptq_grid::GptqFormatGrid;
use tersor_safetensors::{Dtype, SafetensorsModel};

use crate::error::{QuantizeError, Result};
use crate::prune::PruneMethod;
use crate::spec::Method;
use crate::{output_bytes, tensor_vec, Event};

/// The linears of a BERT layer, in the order the layer applies them.
pub const BERT_KINDS: [LinearKind; 6] = [
    LinearKind::Q,
    LinearKind::K,
    LinearKind::V,
    LinearKind::O,
    LinearKind::Up,
    LinearKind::Down,
];

/// What to do to each linear.
#[derive(Clone, Debug)]
pub enum EncoderOp {
    Prune {
        method: PruneMethod,
        pattern: Pattern,
        sparsegpt: SparseGptConfig,
    },
    /// Round onto a GPTQ-format grid with RTN or GPTQ; the weights are stored as their
    /// dequantized values (the size reported is the GPTQ format's).
    Quantize {
        grid: GptqFormatGrid,
        method: Method,
        gptq: GptqConfig,
    },
}

impl EncoderOp {
    fn calibrates(&self) -> bool {
        match self {
            EncoderOp::Prune { method, .. } => method.calibrates(),
            EncoderOp::Quantize { method, .. } => *method != Method::Rtn,
        }
    }

    fn describe(&self) -> String {
        match self {
            EncoderOp::Prune {
                method, pattern, ..
            } => format!("prune {method} {pattern}"),
            EncoderOp::Quantize { grid, method, .. } => format!(
                "quantize {} gptq:{}:g{}{}",
                match method {
                    Method::Rtn => "rtn",
                    _ => "gptq",
                },
                grid.bits,
                grid.group_size,
                if grid.sym { "" } else { ":asym" }
            ),
        }
    }
}

/// Everything the encoder job needs.
#[derive(Clone, Debug)]
pub struct EncoderJob {
    pub input: PathBuf,
    pub output: PathBuf,
    pub op: EncoderOp,
    /// Calibration text: its sentences are the calibration set.
    pub calib_text: PathBuf,
    /// Stop adding calibration sentences at this many real tokens.
    pub max_tokens: usize,
    /// Sentences per forward pass.
    pub batch: usize,
}

impl EncoderJob {
    /// A job calibrated on the sentences of `calib`'s text, up to its `max_tokens`
    /// (`calib.ctx` does not apply: sentences are embedded whole), 32 per pass.
    pub fn new(input: &Path, output: &Path, op: EncoderOp, calib: &crate::CalibConfig) -> Self {
        EncoderJob {
            input: input.to_path_buf(),
            output: output.to_path_buf(),
            op,
            calib_text: calib.path.clone(),
            max_tokens: calib.max_tokens,
            batch: 32,
        }
    }
}

/// One compressed linear in the summary.
#[derive(Clone, Debug, Serialize)]
pub struct EncoderLinear {
    pub name: String,
    pub params: u64,
    pub zeros: u64,
    /// The solver's proxy loss (SparseGPT, GPTQ); `None` for the others.
    pub loss: Option<f64>,
}

/// What an encoder run did.
#[derive(Clone, Debug, Serialize)]
pub struct EncoderSummary {
    pub input: PathBuf,
    pub output: PathBuf,
    pub op: String,
    pub file_bytes: u64,
    pub linear_params: u64,
    pub linear_zeros: u64,
    pub linear_sparsity: f64,
    /// Quantization: bits per linear weight in the GPTQ format (codes, f16 scales and
    /// packed zeros per group).
    pub bpw_linear: Option<f64>,
    pub calib_sentences: usize,
    pub calib_tokens: usize,
    pub seconds: f64,
    pub linears: Vec<EncoderLinear>,
}

/// Counts the real tokens the encoder's hook sees (to cap the calibration set).
struct TokenCount<'a> {
    inner: &'a mut XtxAccumulator,
    tokens: usize,
}

impl tersor_model::ActivationHook for TokenCount<'_> {
    fn on_linear_input(
        &mut self,
        layer: usize,
        kind: LinearKind,
        x: &Tensor,
    ) -> tersor_model::Result<()> {
        if layer == 0 && kind == LinearKind::Q {
            self.tokens += x.dims2()?.0;
        }
        self.inner.on_linear_input(layer, kind, x)
    }
}

/// Run the job on `model`, loaded from `job.input`.
pub fn run(
    job: &EncoderJob,
    mut model: Bert,
    progress: &(dyn Fn(Event) + Sync),
) -> Result<EncoderSummary> {
    let t0 = Instant::now();
    check_output_outside(&job.input, &job.output)?;
    let n_layers = model.n_layers();
    if let EncoderOp::Prune {
        method, pattern, ..
    } = &job.op
    {
        if *method == PruneMethod::MagnitudeGlobal {
            return Err(QuantizeError::Usage(
                "magnitude-global is for decoders; use magnitude, wanda or sparsegpt".into(),
            ));
        }
        for l in 0..n_layers {
            for kind in BERT_KINDS {
                let (_, cols) = model.linear_weight(l, kind)?.dims2()?;
                pattern.check(cols).map_err(|e| QuantizeError::Input {
                    path: job.input.clone(),
                    msg: format!("layer {l} {kind}: {e}"),
                })?;
            }
        }
    }
    let sentences = if job.op.calibrates() {
        let text =
            std::fs::read_to_string(&job.calib_text).map_err(|e| QuantizeError::Calibration {
                path: job.calib_text.clone(),
                msg: e.to_string(),
            })?;
        let s = tersor_eval::split_sentences(&text, 3);
        if s.is_empty() {
            return Err(QuantizeError::Calibration {
                path: job.calib_text.clone(),
                msg: "no sentences of 3 words or more".into(),
            });
        }
        s
    } else {
        Vec::new()
    };
    progress(Event::Planned {
        layers: n_layers,
        tensors: n_layers * BERT_KINDS.len(),
    });

    // Set by the first calibration pass: how many sentences reach `max_tokens`.
    let mut n_sentences = sentences.len();
    let mut calib_tokens = 0usize;
    let mut linears = Vec::new();
    let mut bits = 0f64;
    for l in 0..n_layers {
        let mut acc = XtxAccumulator::for_layers(l..l + 1).with_kinds(&[
            LinearKind::Q,
            LinearKind::O,
            LinearKind::Up,
            LinearKind::Down,
        ]);
        if job.op.calibrates() {
            let mut hook = TokenCount {
                inner: &mut acc,
                tokens: 0,
            };
            let mut used = 0;
            for batch in sentences[..n_sentences].chunks(job.batch.max(1)) {
                let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
                model.embed_hooked(&refs, Some(&mut hook))?;
                used += batch.len();
                if l == 0 && hook.tokens >= job.max_tokens {
                    break;
                }
            }
            if l == 0 {
                n_sentences = used;
                calib_tokens = hook.tokens;
            }
        }
        for kind in BERT_KINDS {
            let name = format!("encoder.layer.{l}.{}.weight", bert_module(kind));
            let (w, rows, cols) = tensor_vec(model.linear_weight(l, kind)?)?;
            // Q, K and V share their input (so do the statistics).
            let share = if matches!(kind, LinearKind::K | LinearKind::V) {
                LinearKind::Q
            } else {
                kind
            };
            let h: Option<Vec<f64>> = match acc.get(l, share) {
                Some(x) => Some(x.xtx.flatten_all()?.to_vec1::<f64>()?),
                None => None,
            };
            let layer_err = |e| QuantizeError::Layer {
                tensor: name.clone(),
                source: e,
            };
            let need_h = || {
                h.as_deref().ok_or_else(|| {
                    QuantizeError::Invariant(format!("{name}: no calibration statistics"))
                })
            };
            let (out, loss) = match &job.op {
                EncoderOp::Prune {
                    method,
                    pattern,
                    sparsegpt: cfg,
                } => match method {
                    PruneMethod::Magnitude | PruneMethod::MagnitudeGlobal => (
                        magnitude::magnitude(&w, rows, cols, *pattern).map_err(layer_err)?,
                        None,
                    ),
                    PruneMethod::Wanda => {
                        let norms = wanda::column_norms(need_h()?, cols).map_err(layer_err)?;
                        (
                            wanda::wanda(&w, rows, cols, &norms, *pattern).map_err(layer_err)?,
                            None,
                        )
                    }
                    PruneMethod::SparseGpt => {
                        let o = sparsegpt(&w, rows, cols, need_h()?, *pattern, cfg)
                            .map_err(layer_err)?;
                        (o.weights, Some(o.loss))
                    }
                },
                EncoderOp::Quantize {
                    grid,
                    method,
                    gptq: cfg,
                } => {
                    let gpr = cols.div_ceil(grid.group_size);
                    // Codes, plus an f16 scale and a `bits`-wide packed zero per group.
                    bits += (rows * cols * grid.bits as usize
                        + rows * gpr * (16 + grid.bits as usize))
                        as f64;
                    match method {
                        Method::Rtn => (
                            tersor_quant::rtn::rtn(&w, rows, cols, grid, None)
                                .map_err(layer_err)?
                                .values,
                            None,
                        ),
                        _ => {
                            let o =
                                gptq(&w, rows, cols, need_h()?, grid, cfg).map_err(layer_err)?;
                            (o.quantized.values, Some(o.loss))
                        }
                    }
                }
            };
            let zeros = out.iter().filter(|&&x| x == 0.0).count() as u64;
            linears.push(EncoderLinear {
                name,
                params: (rows * cols) as u64,
                zeros,
                loss,
            });
            model.set_linear_weight(l, kind, Tensor::from_vec(out, (rows, cols), &Device::Cpu)?)?;
        }
        progress(Event::Layer {
            index: l,
            total: n_layers,
        });
    }

    progress(Event::Writing);
    write_encoder_dir(&job.input, &job.output, &model)?;
    let linear_params: u64 = linears.iter().map(|t| t.params).sum();
    let linear_zeros: u64 = linears.iter().map(|t| t.zeros).sum();
    Ok(EncoderSummary {
        input: job.input.clone(),
        output: job.output.clone(),
        op: job.op.describe(),
        file_bytes: output_bytes(&job.output)?,
        linear_params,
        linear_zeros,
        linear_sparsity: linear_zeros as f64 / linear_params.max(1) as f64,
        bpw_linear: matches!(job.op, EncoderOp::Quantize { .. })
            .then(|| bits / linear_params.max(1) as f64),
        calib_sentences: if job.op.calibrates() { n_sentences } else { 0 },
        calib_tokens,
        seconds: t0.elapsed().as_secs_f64(),
        linears,
    })
}

/// The HF module path of a BERT linear (`encoder.layer.N.<this>.weight`).
pub fn bert_module(kind: LinearKind) -> &'static str {
    match kind {
        LinearKind::Q => "attention.self.query",
        LinearKind::K => "attention.self.key",
        LinearKind::V => "attention.self.value",
        LinearKind::O => "attention.output.dense",
        LinearKind::Up => "intermediate.dense",
        LinearKind::Down => "output.dense",
        LinearKind::Gate => unreachable!("BERT has no gate projection"),
    }
}

/// Copy the encoder directory `input` to `output`, replacing the linear weights in its
/// `model.safetensors` by `model`'s (each in the tensor's original dtype). Every file is
/// written atomically; `output` may be a fresh or an existing directory.
fn write_encoder_dir(input: &Path, output: &Path, model: &Bert) -> Result<()> {
    let st_path = input.join("model.safetensors");
    if !st_path.is_file() {
        return Err(QuantizeError::Input {
            path: input.to_path_buf(),
            msg: "the encoder output needs a single model.safetensors (sharded encoders are not supported)".into(),
        });
    }
    let st_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e: tersor_safetensors::StError| QuantizeError::Input {
            path: path.clone(),
            msg: e.to_string(),
        }
    };
    let st = SafetensorsModel::open(&st_path).map_err(st_err(&st_path))?;
    let mut replaced: std::collections::HashMap<String, Vec<u8>> = Default::default();
    for name in st.names() {
        let Some((l, kind)) = parse_linear(name) else {
            continue;
        };
        let (dtype, _, _) = st.raw(name).map_err(st_err(&st_path))?;
        let (w, _, _) = tensor_vec(model.linear_weight(l, kind)?)?;
        let bytes = match dtype {
            Dtype::F32 => w.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F16 => w
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            Dtype::BF16 => w
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
            d => {
                return Err(QuantizeError::Input {
                    path: st_path.clone(),
                    msg: format!("{name}: cannot write weights as {}", d.name()),
                })
            }
        };
        replaced.insert(name.to_string(), bytes);
    }
    if replaced.len() != model.n_layers() * BERT_KINDS.len() {
        return Err(QuantizeError::Invariant(format!(
            "{}: found {} of the {} linear weights",
            st_path.display(),
            replaced.len(),
            model.n_layers() * BERT_KINDS.len()
        )));
    }
    std::fs::create_dir_all(output).map_err(|source| QuantizeError::Io {
        path: output.to_path_buf(),
        source,
    })?;
    let mut tensors = Vec::new();
    for name in st.names() {
        let (dtype, shape, raw) = st.raw(name).map_err(st_err(&st_path))?;
        let data = replaced.get(name).map_or(raw, Vec::as_slice);
        tensors.push((name.to_string(), dtype, shape, data));
    }
    let out_st = output.join("model.safetensors");
    tersor_safetensors::write_safetensors(&out_st, &tensors, st.metadata())
        .map_err(st_err(&out_st))?;
    copy_tree(input, output, &st_path)
}

/// The output directory is written by copying the input's files: it may not lie inside.
fn check_output_outside(input: &Path, output: &Path) -> Result<()> {
    // `output` may not exist yet: resolve its nearest existing ancestor.
    let resolve = |p: &Path| -> PathBuf {
        let mut tail = Vec::new();
        let mut cur = p.to_path_buf();
        loop {
            if let Ok(c) = std::fs::canonicalize(&cur) {
                return tail.iter().rev().fold(c, |acc: PathBuf, t| acc.join(t));
            }
            match (cur.file_name().map(|f| f.to_os_string()), cur.parent()) {
                (Some(f), Some(parent)) => {
                    tail.push(f);
                    cur = if parent.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        parent.to_path_buf()
                    };
                }
                _ => return p.to_path_buf(),
            }
        }
    };
    if resolve(output).starts_with(resolve(input)) {
        return Err(QuantizeError::Usage(format!(
            "the output {} must be outside the input directory {}",
            output.display(),
            input.display()
        )));
    }
    Ok(())
}

/// `encoder.layer.N.<module>.weight` (with an optional `bert.` prefix) → (N, kind).
fn parse_linear(name: &str) -> Option<(usize, LinearKind)> {
    let rest = name.strip_prefix("bert.").unwrap_or(name);
    let rest = rest.strip_prefix("encoder.layer.")?;
    let (l, module) = rest.split_once('.')?;
    let module = module.strip_suffix(".weight")?;
    let kind = BERT_KINDS.into_iter().find(|&k| bert_module(k) == module)?;
    Some((l.parse().ok()?, kind))
}

/// Copy every file under `from` but `skip` into `to` (atomically, file by file).
fn copy_tree(from: &Path, to: &Path, skip: &Path) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| QuantizeError::Io {
            path: path.clone(),
            source,
        }
    };
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        if src == skip {
            continue;
        }
        if src.is_dir() {
            std::fs::create_dir_all(&dst).map_err(io(&dst))?;
            copy_tree(&src, &dst, skip)?;
        } else if src.is_file() {
            let tmp = dst.with_extension("tersor-tmp");
            std::fs::copy(&src, &tmp).map_err(io(&tmp))?;
            std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_names_parse_both_ways() {
        for l in [0, 5, 11] {
            for kind in BERT_KINDS {
                let name = format!("encoder.layer.{l}.{}.weight", bert_module(kind));
                assert_eq!(parse_linear(&name), Some((l, kind)));
                assert_eq!(parse_linear(&format!("bert.{name}")), Some((l, kind)));
            }
        }
        assert_eq!(
            parse_linear("encoder.layer.0.attention.self.query.bias"),
            None
        );
        assert_eq!(
            parse_linear("encoder.layer.0.output.LayerNorm.weight"),
            None
        );
        assert_eq!(parse_linear("embeddings.word_embeddings.weight"), None);
    }
}
