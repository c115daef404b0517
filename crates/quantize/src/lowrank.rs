//! The low-rank job behind `tersor lowrank`: every block linear `W` `[out, in]` becomes
//! `A B` (`A` `[out, r]`, `B` `[r, in]`) with `r` the largest rank whose factors hold at
//! most `ratio` of the layer's parameters (or, with `energy`, the smallest rank keeping
//! that share of the factorised matrix's `Σσ²`), by truncated SVD or activation-aware SVD
//! (SVD-LLM whitening by the calibration inputs' `XᵀX`), block by block on the
//! already-factored blocks' outputs (as quantization). The output is a Hugging Face
//! directory whose factored linears are stored as `<module>.weight_a` / `.weight_b`;
//! tersor runs them as two matmuls.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;
use tersor_gptq::FloatDtype;
use tersor_model::{LinearKind, LoadedModel, TensorNaming};
use tersor_prune::lowrank::{asvd, rank_for_ratio, svd, Rank};

use crate::calib::{CalibConfig, Sequential};
use crate::collect::Site;
use crate::dense_out::write_dense_dir;
use crate::error::{QuantizeError, Result};
use crate::{output_bytes, tensor_vec, Event, TensorSummary};

/// How the factors are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LowrankMethod {
    /// Truncated SVD of `W` (optimal in `‖W − A B‖_F`).
    Svd,
    /// SVD of `W S` with `S Sᵀ = XᵀX` (optimal in the output error on calibration inputs).
    Asvd,
}

impl fmt::Display for LowrankMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LowrankMethod::Svd => "svd",
            LowrankMethod::Asvd => "asvd",
        })
    }
}

impl FromStr for LowrankMethod {
    type Err = QuantizeError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "svd" => Ok(LowrankMethod::Svd),
            "asvd" => Ok(LowrankMethod::Asvd),
            _ => Err(QuantizeError::Usage(format!(
                "unknown low-rank method {s:?} (svd or asvd)"
            ))),
        }
    }
}

/// Everything `tersor lowrank` needs.
#[derive(Clone, Debug)]
pub struct LowrankOptions {
    pub input: PathBuf,
    /// The output directory.
    pub output: PathBuf,
    /// Parameters of the factors over the layer's, in (0, 1]; a layer whose best rank
    /// would not save parameters stays dense.
    pub ratio: f64,
    /// Instead of `ratio`: each layer at the smallest rank keeping this fraction
    /// (0 < e <= 1) of its factorised matrix's `Σσ²`; a layer whose rank would not save
    /// parameters stays dense.
    pub energy: Option<f64>,
    pub method: LowrankMethod,
    pub calib: CalibConfig,
    /// ASVD: damping of `XᵀX` as a fraction of its mean diagonal.
    pub damp_percent: f64,
    pub batch_windows: usize,
    pub dtype: FloatDtype,
}

impl LowrankOptions {
    pub fn new(
        input: PathBuf,
        output: PathBuf,
        ratio: f64,
        method: LowrankMethod,
        calib: CalibConfig,
    ) -> Self {
        LowrankOptions {
            input,
            output,
            ratio,
            energy: None,
            method,
            calib,
            damp_percent: 0.01,
            batch_windows: 4,
            dtype: FloatDtype::F16,
        }
    }
}

/// One linear in the summary.
#[derive(Clone, Debug, Serialize)]
pub struct FactoredLinear {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    /// `None`: kept dense (the ratio or energy allows no saving).
    pub rank: Option<usize>,
    /// Parameters stored: `r (rows + cols)`, or `rows · cols` when dense.
    pub params: u64,
    /// Fraction of `Σσ²` (of `W`, or of `W S` for ASVD) discarded.
    pub discarded_energy: f64,
}

/// What a run did.
#[derive(Clone, Debug, Serialize)]
pub struct LowrankSummary {
    pub input: PathBuf,
    pub output: PathBuf,
    pub method: LowrankMethod,
    /// The parameter ratio asked for, or `None` with `energy`.
    pub ratio: Option<f64>,
    pub energy: Option<f64>,
    pub file_bytes: u64,
    /// Parameters stored in the output.
    pub params: u64,
    /// Parameters of the dense model.
    pub dense_params: u64,
    pub linear_params: u64,
    pub dense_linear_params: u64,
    pub calib_windows: usize,
    pub calib_tokens: usize,
    pub seconds_load: f64,
    pub seconds_factor: f64,
    pub seconds_write: f64,
    pub linears: Vec<FactoredLinear>,
    pub tensors: Vec<TensorSummary>,
}

/// Run the job.
pub fn run(opts: &LowrankOptions, progress: &(dyn Fn(Event) + Sync)) -> Result<LowrankSummary> {
    if !(opts.ratio > 0.0 && opts.ratio <= 1.0) {
        return Err(QuantizeError::Usage(format!(
            "low-rank ratio {} is outside (0, 1]",
            opts.ratio
        )));
    }
    if let Some(e) = opts.energy.filter(|e| !(*e > 0.0 && *e <= 1.0)) {
        return Err(QuantizeError::Usage(format!(
            "retained energy {e} is outside (0, 1]"
        )));
    }
    if crate::dense_out::is_gguf_output(&opts.output) {
        crate::dense_out::check_gguf_writable(&opts.input, &opts.output, true)?;
    }
    let t0 = Instant::now();
    let (mut model, tokenizer) = match tersor_model::load(&opts.input)? {
        LoadedModel::Decoder { model, tokenizer } => (model, tokenizer),
        LoadedModel::Encoder(_) => {
            return Err(QuantizeError::Input {
                path: opts.input.clone(),
                msg: "sentence encoders cannot be factored yet (decoder LMs only)".into(),
            })
        }
    };
    let n_layers = model.n_layers();
    progress(Event::Planned {
        layers: n_layers,
        tensors: n_layers * LinearKind::ALL.len(),
    });
    let seconds_load = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut calib = Sequential::start(
        opts.method == LowrankMethod::Asvd,
        &model,
        &tokenizer,
        &opts.calib,
        opts.batch_windows,
        progress,
    )?;
    let mut linears = Vec::new();
    for l in 0..n_layers {
        let stats = calib.stats(&model, l)?;
        for kind in LinearKind::ALL {
            let name = TensorNaming::HuggingFace.linear(l, kind, "weight");
            let (w, rows, cols) = tensor_vec(model.linear_weight(l, kind)?)?;
            let rank = match opts.energy {
                Some(e) => Rank::Energy(e),
                None => Rank::Fixed(rank_for_ratio(rows, cols, opts.ratio)),
            };
            let dense = FactoredLinear {
                name: name.clone(),
                rows,
                cols,
                rank: None,
                params: (rows * cols) as u64,
                discarded_energy: 0.0,
            };
            if matches!(rank, Rank::Fixed(r) if r * (rows + cols) >= rows * cols) {
                linears.push(dense);
                continue;
            }
            let layer_err = |e| QuantizeError::Layer {
                tensor: name.clone(),
                source: e,
            };
            let f = match stats.as_ref() {
                Some(s) => asvd(
                    &w,
                    rows,
                    cols,
                    &s[Site::of(kind) as usize].xtx,
                    rank,
                    opts.damp_percent,
                ),
                None => svd(&w, rows, cols, rank),
            }
            .map_err(layer_err)?;
            // An energy rank is known only now; factors no smaller than the layer stay
            // dense.
            if f.params() >= rows * cols {
                linears.push(dense);
                continue;
            }
            let rank = f.rank;
            let total: f64 = f.singular_values.iter().map(|s| s * s).sum();
            linears.push(FactoredLinear {
                name,
                rows,
                cols,
                rank: Some(rank),
                params: f.params() as u64,
                discarded_energy: f.discarded_energy() / total.max(f64::MIN_POSITIVE),
            });
            model.set_linear_factors(
                l,
                kind,
                Tensor::from_vec(f.a, (rows, rank), &Device::Cpu)?,
                Tensor::from_vec(f.b, (rank, cols), &Device::Cpu)?,
            )?;
        }
        calib.advance(&model, l)?;
        progress(Event::Layer {
            index: l,
            total: n_layers,
        });
    }
    let seconds_factor = t1.elapsed().as_secs_f64();

    progress(Event::Writing);
    let t2 = Instant::now();
    let tensors = write_dense_dir(&opts.input, &opts.output, &model, opts.dtype)?;
    let seconds_write = t2.elapsed().as_secs_f64();
    let params: u64 = tensors.iter().map(|t| t.params).sum();
    let linear_params: u64 = linears.iter().map(|t| t.params).sum();
    let dense_linear_params: u64 = linears.iter().map(|t| (t.rows * t.cols) as u64).sum();
    Ok(LowrankSummary {
        input: opts.input.clone(),
        output: opts.output.clone(),
        method: opts.method,
        ratio: opts.energy.is_none().then_some(opts.ratio),
        energy: opts.energy,
        file_bytes: output_bytes(&opts.output)?,
        params,
        dense_params: params - linear_params + dense_linear_params,
        linear_params,
        dense_linear_params,
        calib_windows: calib.windows,
        calib_tokens: calib.windows * opts.calib.ctx,
        seconds_load,
        seconds_factor,
        seconds_write,
        linears,
        tensors,
    })
}
