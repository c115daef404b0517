//! The pruning job behind `tersor prune`: the same sequential calibration as
//! quantization (block `l` is calibrated on the outputs of the already-pruned blocks
//! before it), with a pruner from tersor-prune in place of the quantizer, and a dense
//! Hugging Face directory as output.
//!
//! ```text
//! MODEL ─ load ─► Llama (f32)
//!   magnitude-global: one threshold over every block linear (no calibration)
//!   otherwise, for each block l:
//!     [wanda, sparsegpt] run block l on the current hidden states, collecting XᵀX per site
//!     prune Q K V O gate up down (magnitude | wanda | sparsegpt), put them back
//!     [wanda, sparsegpt] run the pruned block → inputs of block l+1
//!   ▼
//! write: HF directory, dense floats (zeros stored); the summary also costs the sparse
//! payload (values + bitmask, or values + N:M indices)
//! ```
//!
//! With `quantize` (SparseGPT only) the kept weights are rounded onto a GPTQ grid in the
//! same pass (SparseGPT's joint mode, [`sparsegpt_quantized`]); the directory holds their
//! decoded values, exact in f16 or f32, and the sparse payload costs each kept value at
//! the grid's bits plus every group's fp16 scale and zero point.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;
pub use tersor_gptq::FloatDtype;
use tersor_model::{LinearKind, Llama, LoadedModel, TensorNaming, TextTokenizer};
use tersor_prune::sparsegpt::{sparsegpt, sparsegpt_quantized, SparseGptConfig};
pub use tersor_prune::Pattern;
use tersor_prune::{magnitude, wanda};
use tersor_quant::gptq_grid::GptqFormatGrid;

use crate::calib::{CalibConfig, Sequential};
use crate::collect::Site;
use crate::dense_out::{check_gguf_writable, is_gguf_output, write_dense_dir, write_dense_gguf};
use crate::encoder::{self, EncoderJob, EncoderOp, EncoderSummary};
use crate::error::{QuantizeError, Result};
use crate::spec::GptqSpec;
use crate::{output_bytes, tensor_vec, Event, TensorSummary};

/// Which pruner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PruneMethod {
    /// Smallest `|w|` of each layer (N:M: of each group).
    Magnitude,
    /// Smallest `|w|` of all block linears together (unstructured only).
    MagnitudeGlobal,
    /// Wanda: `|w| · ‖x‖` per output row.
    Wanda,
    /// SparseGPT: OBS masks and weight updates.
    SparseGpt,
}

impl PruneMethod {
    pub const NAMES: [&'static str; 4] = ["magnitude", "magnitude-global", "wanda", "sparsegpt"];

    /// Whether the method needs calibration activations.
    pub fn calibrates(self) -> bool {
        matches!(self, PruneMethod::Wanda | PruneMethod::SparseGpt)
    }
}

impl fmt::Display for PruneMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = *self as usize;
        f.write_str(Self::NAMES[i])
    }
}

impl FromStr for PruneMethod {
    type Err = QuantizeError;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "magnitude" => PruneMethod::Magnitude,
            "magnitude-global" => PruneMethod::MagnitudeGlobal,
            "wanda" => PruneMethod::Wanda,
            "sparsegpt" => PruneMethod::SparseGpt,
            _ => {
                return Err(QuantizeError::Usage(format!(
                    "unknown pruning method {s:?} (one of {})",
                    Self::NAMES.join(", ")
                )))
            }
        })
    }
}

/// Everything `tersor prune` needs.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    pub input: PathBuf,
    /// The output directory.
    pub output: PathBuf,
    pub pattern: Pattern,
    pub method: PruneMethod,
    pub calib: CalibConfig,
    pub sparsegpt: SparseGptConfig,
    /// Calibration windows per forward batch.
    pub batch_windows: usize,
    /// Storage type of the written tensors.
    pub dtype: FloatDtype,
    /// SparseGPT jointly with quantization of the kept weights onto this grid.
    pub quantize: Option<GptqSpec>,
}

impl PruneOptions {
    pub fn new(
        input: PathBuf,
        output: PathBuf,
        pattern: Pattern,
        method: PruneMethod,
        calib: CalibConfig,
    ) -> Self {
        PruneOptions {
            input,
            output,
            pattern,
            method,
            calib,
            sparsegpt: SparseGptConfig::default(),
            batch_windows: 4,
            dtype: FloatDtype::F16,
            quantize: None,
        }
    }
}

/// One pruned linear in the summary.
#[derive(Clone, Debug, Serialize)]
pub struct PrunedLinear {
    pub name: String,
    pub params: u64,
    pub zeros: u64,
    /// Values plus mask (or N:M indices) at the output's value width, or at the grid's
    /// bits plus the groups' scales and zero points when quantized.
    pub sparse_bytes: u64,
    /// SparseGPT's `½ tr(ΔW H ΔWᵀ)` (calibration scale); `None` for the other methods.
    pub loss: Option<f64>,
}

/// What a run did.
#[derive(Clone, Debug, Serialize)]
pub struct PruneSummary {
    pub input: PathBuf,
    pub output: PathBuf,
    pub method: PruneMethod,
    pub pattern: String,
    /// The grid of the kept weights (`gptq:4:g128`), if quantized.
    pub quantize: Option<String>,
    /// The directory's bytes (dense: zeros stored).
    pub file_bytes: u64,
    pub params: u64,
    pub linear_params: u64,
    pub linear_zeros: u64,
    /// Zeros over the block linears' parameters.
    pub linear_sparsity: f64,
    /// Bytes with the block linears stored sparse and everything else dense.
    pub sparse_bytes: u64,
    pub calib_windows: usize,
    pub calib_tokens: usize,
    pub seconds_load: f64,
    pub seconds_prune: f64,
    pub seconds_write: f64,
    pub linears: Vec<PrunedLinear>,
    pub tensors: Vec<TensorSummary>,
}

/// Bytes of a pruned layer of `params` weights stored sparse. Unstructured: the nonzero
/// values at `value_bits` each plus a bitmask. N:M: `n` values of every `m` (zeros among
/// the kept ones included: the format has a fixed slot count) plus `⌈log₂ m⌉` index bits
/// each (NVIDIA's 2:4 metadata layout). `extra_bits` (quantization groups' scales and
/// zero points) is added before rounding up to bytes. A layer that is smaller dense (few
/// zeros: the mask costs more than they save) is costed dense.
pub fn sparse_bytes(
    params: u64,
    zeros: u64,
    pattern: Pattern,
    value_bits: u64,
    extra_bits: u64,
) -> u64 {
    (sparse_bits(params, zeros, pattern, value_bits) + extra_bits).div_ceil(8)
}

/// [`sparse_bytes`] in bits, without the extra bits: the values and the mask or indices,
/// or the dense values when that is smaller.
pub fn sparse_bits(params: u64, zeros: u64, pattern: Pattern, value_bits: u64) -> u64 {
    let (values, index_bits) = match pattern {
        Pattern::Unstructured(_) => (params - zeros, params),
        Pattern::NM { n, m } => {
            let kept = params / m as u64 * n as u64;
            let bits = u64::from((m as u32).next_power_of_two().trailing_zeros());
            (kept, kept * bits)
        }
    };
    (values * value_bits + index_bits).min(params * value_bits)
}

/// The grid of `spec` for joint pruning and quantization, or why there is none.
fn joint_grid(spec: &GptqSpec, opts: &PruneOptions, cols: usize) -> Result<GptqFormatGrid> {
    spec.grid(cols).map_err(|e| {
        QuantizeError::Usage(format!("--quantize {spec}: {e} ({})", opts.input.display()))
    })
}

/// What a run did, by model kind.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum PruneReport {
    Decoder(PruneSummary),
    Encoder(EncoderSummary),
}

/// Run the job: a decoder LM as described above, a sentence encoder through
/// [`crate::encoder`] (calibrated on the sentences of the same text).
pub fn run(opts: &PruneOptions, progress: &(dyn Fn(Event) + Sync)) -> Result<PruneReport> {
    let t0 = Instant::now();
    match tersor_model::load(&opts.input)? {
        LoadedModel::Decoder { model, tokenizer } => {
            run_decoder(opts, model, tokenizer, t0, progress).map(PruneReport::Decoder)
        }
        LoadedModel::Encoder(_) if is_gguf_output(&opts.output) => {
            Err(QuantizeError::Usage(format!(
                "{}: sentence encoders are written as Hugging Face directories, not GGUF",
                opts.output.display()
            )))
        }
        LoadedModel::Encoder(_) if opts.quantize.is_some() => Err(QuantizeError::Usage(format!(
            "{}: --quantize (joint pruning and quantization) is implemented for decoder LMs only",
            opts.input.display()
        ))),
        LoadedModel::Encoder(bert) => {
            let op = EncoderOp::Prune {
                method: opts.method,
                pattern: opts.pattern,
                sparsegpt: opts.sparsegpt.clone(),
            };
            let job = EncoderJob::new(&opts.input, &opts.output, op, &opts.calib);
            encoder::run(&job, bert, progress).map(PruneReport::Encoder)
        }
    }
}

fn run_decoder(
    opts: &PruneOptions,
    mut model: Llama,
    tokenizer: TextTokenizer,
    t0: Instant,
    progress: &(dyn Fn(Event) + Sync),
) -> Result<PruneSummary> {
    if opts.method == PruneMethod::MagnitudeGlobal
        && !matches!(opts.pattern, Pattern::Unstructured(_))
    {
        return Err(QuantizeError::Usage(
            "magnitude-global prunes unstructured only (N:M is per group: use magnitude)".into(),
        ));
    }
    if let Some(spec) = &opts.quantize {
        if opts.method != PruneMethod::SparseGpt {
            return Err(QuantizeError::Usage(format!(
                "--quantize {spec} needs --method sparsegpt (joint pruning and quantization); {} prunes only",
                opts.method
            )));
        }
        if spec.act_order {
            return Err(QuantizeError::Usage(format!(
                "--quantize {spec}: act-order is not supported with pruning (drop :act)"
            )));
        }
        if opts.dtype == FloatDtype::BF16 {
            return Err(QuantizeError::Usage(format!(
                "--quantize {spec}: the grid's fp16 values are not exact in bf16; write f16 or f32"
            )));
        }
    }
    if is_gguf_output(&opts.output) {
        check_gguf_writable(&opts.input, &opts.output, false)?;
    }
    let n_layers = model.n_layers();
    for l in 0..n_layers {
        for kind in LinearKind::ALL {
            let (_, cols) = model.linear_weight(l, kind)?.dims2()?;
            opts.pattern.check(cols).map_err(|e| QuantizeError::Input {
                path: opts.input.clone(),
                msg: format!("block {l} {kind}: {e}"),
            })?;
        }
    }
    progress(Event::Planned {
        layers: n_layers,
        tensors: n_layers * LinearKind::ALL.len(),
    });
    let seconds_load = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut losses = std::collections::HashMap::new();
    // Bits of each quantized linear's groups (fp16 scale and zero point each).
    let mut group_bits = std::collections::HashMap::new();
    let mut calib = Sequential::start(
        opts.method.calibrates(),
        &model,
        &tokenizer,
        &opts.calib,
        opts.batch_windows,
        progress,
    )?;
    if opts.method == PruneMethod::MagnitudeGlobal {
        let Pattern::Unstructured(s) = opts.pattern else {
            unreachable!("checked above")
        };
        let mut all = Vec::new();
        for l in 0..n_layers {
            for kind in LinearKind::ALL {
                all.push(tensor_vec(model.linear_weight(l, kind)?)?);
            }
        }
        let refs: Vec<(&[f32], usize, usize)> =
            all.iter().map(|(w, r, c)| (w.as_slice(), *r, *c)).collect();
        let pruned = magnitude::magnitude_global(&refs, s)?;
        let mut it = pruned.into_iter().zip(&all);
        for l in 0..n_layers {
            for kind in LinearKind::ALL {
                let (p, (_, r, c)) = it.next().expect("one per linear");
                model.set_linear_weight(l, kind, Tensor::from_vec(p, (*r, *c), &Device::Cpu)?)?;
            }
            progress(Event::Layer {
                index: l,
                total: n_layers,
            });
        }
    } else {
        for l in 0..n_layers {
            let stats = calib.stats(&model, l)?;
            for kind in LinearKind::ALL {
                let name = TensorNaming::HuggingFace.linear(l, kind, "weight");
                let (w, rows, cols) = tensor_vec(model.linear_weight(l, kind)?)?;
                let site = stats.as_ref().map(|s| &s[Site::of(kind) as usize]);
                let layer_err = |e| QuantizeError::Layer {
                    tensor: name.clone(),
                    source: e,
                };
                let out = match (opts.method, site) {
                    (PruneMethod::Magnitude, _) => {
                        magnitude::magnitude(&w, rows, cols, opts.pattern).map_err(layer_err)?
                    }
                    (PruneMethod::Wanda, Some(s)) => {
                        let norms = wanda::column_norms(&s.xtx, cols).map_err(layer_err)?;
                        wanda::wanda(&w, rows, cols, &norms, opts.pattern).map_err(layer_err)?
                    }
                    (PruneMethod::SparseGpt, Some(s)) => {
                        let o = match &opts.quantize {
                            None => {
                                sparsegpt(&w, rows, cols, &s.xtx, opts.pattern, &opts.sparsegpt)
                                    .map_err(layer_err)?
                            }
                            Some(spec) => {
                                let grid = joint_grid(spec, opts, cols)?;
                                let (o, groups) = sparsegpt_quantized(
                                    &w,
                                    rows,
                                    cols,
                                    &s.xtx,
                                    opts.pattern,
                                    &grid,
                                    &opts.sparsegpt,
                                )
                                .map_err(layer_err)?;
                                group_bits.insert(
                                    (l, kind),
                                    groups.len() as u64 * (16 + u64::from(spec.bits)),
                                );
                                o
                            }
                        };
                        losses.insert((l, kind), o.loss);
                        o.weights
                    }
                    (m, _) => {
                        return Err(QuantizeError::Invariant(format!(
                            "{m} without calibration statistics"
                        )))
                    }
                };
                model.set_linear_weight(
                    l,
                    kind,
                    Tensor::from_vec(out, (rows, cols), &Device::Cpu)?,
                )?;
            }
            calib.advance(&model, l)?;
            progress(Event::Layer {
                index: l,
                total: n_layers,
            });
        }
    }
    let seconds_prune = t1.elapsed().as_secs_f64();

    progress(Event::Writing);
    let t2 = Instant::now();
    let tensors = if is_gguf_output(&opts.output) {
        write_dense_gguf(&opts.input, &opts.output, &model, opts.dtype)?
    } else {
        write_dense_dir(&opts.input, &opts.output, &model, opts.dtype)?
    };
    let seconds_write = t2.elapsed().as_secs_f64();

    let width: u64 = match opts.dtype {
        FloatDtype::F32 => 4,
        FloatDtype::F16 | FloatDtype::BF16 => 2,
    };
    let mut linears = Vec::new();
    for l in 0..n_layers {
        for kind in LinearKind::ALL {
            let (w, rows, cols) = tensor_vec(model.linear_weight(l, kind)?)?;
            let params = (rows * cols) as u64;
            let zeros = w.iter().filter(|&&x| x == 0.0).count() as u64;
            let (value_bits, extra_bits) = match &opts.quantize {
                Some(spec) => (
                    u64::from(spec.bits),
                    group_bits.get(&(l, kind)).copied().unwrap_or(0),
                ),
                None => (width * 8, 0),
            };
            linears.push(PrunedLinear {
                name: TensorNaming::HuggingFace.linear(l, kind, "weight"),
                params,
                zeros,
                sparse_bytes: sparse_bytes(params, zeros, opts.pattern, value_bits, extra_bits),
                loss: losses.get(&(l, kind)).copied(),
            });
        }
    }
    let params: u64 = tensors.iter().map(|t| t.params).sum();
    let linear_params: u64 = linears.iter().map(|t| t.params).sum();
    let linear_zeros: u64 = linears.iter().map(|t| t.zeros).sum();
    let dense_other: u64 = tensors.iter().map(|t| t.bytes).sum::<u64>() - linear_params * width;
    Ok(PruneSummary {
        input: opts.input.clone(),
        output: opts.output.clone(),
        method: opts.method,
        pattern: opts.pattern.to_string(),
        quantize: opts.quantize.map(|q| q.to_string()),
        file_bytes: output_bytes(&opts.output)?,
        params,
        linear_params,
        linear_zeros,
        linear_sparsity: linear_zeros as f64 / linear_params.max(1) as f64,
        sparse_bytes: dense_other + linears.iter().map(|t| t.sparse_bytes).sum::<u64>(),
        calib_windows: calib.windows,
        calib_tokens: calib.windows * opts.calib.ctx,
        seconds_load,
        seconds_prune,
        seconds_write,
        linears,
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_payload_is_values_plus_mask_or_indices() {
        // 1,000 weights, half zero, f16: 500 values (1,000 B) + a 1,000-bit mask (125 B).
        assert_eq!(
            sparse_bytes(1000, 500, Pattern::Unstructured(0.5), 16, 0),
            1125
        );
        // 2:4: 500 values + 2 index bits each (125 B), NVIDIA's layout, however many of
        // the kept values happen to be zero.
        assert_eq!(
            sparse_bytes(1000, 500, Pattern::NM { n: 2, m: 4 }, 16, 0),
            1125
        );
        assert_eq!(
            sparse_bytes(1000, 510, Pattern::NM { n: 2, m: 4 }, 16, 0),
            1125
        );
        assert_eq!(
            sparse_bytes(1000, 510, Pattern::Unstructured(0.5), 16, 0),
            980 + 125
        );
        // 4:8: 3 bits per kept value.
        assert_eq!(
            sparse_bytes(1000, 500, Pattern::NM { n: 4, m: 8 }, 16, 0),
            1000 + 188
        );
        // Dense is cheaper with few zeros: 10 zeros save 160 bits, the mask costs 1,000.
        assert_eq!(
            sparse_bytes(1000, 10, Pattern::Unstructured(0.01), 16, 0),
            2000
        );
        // Quantized to 4 bits in groups: 500 values × 4 bits + 1,000 mask bits + 8 groups ×
        // (16-bit scale + 4-bit zero) = 3,160 bits = 395 bytes.
        assert_eq!(
            sparse_bytes(1000, 500, Pattern::Unstructured(0.5), 4, 8 * 20),
            395
        );
    }

    #[test]
    fn method_names_round_trip() {
        for n in PruneMethod::NAMES {
            assert_eq!(n.parse::<PruneMethod>().unwrap().to_string(), n);
        }
        assert!("obs".parse::<PruneMethod>().is_err());
    }
}
