//! tersor-quantize: the layer-wise compression jobs behind `tersor quantize`, and (in
//! [`prune`] and [`lowrank`]) `tersor prune` and `tersor lowrank`.
//!
//! ```text
//! MODEL (GGUF / HF dir) ─ tersor-model::load ─► Llama (f32) + tokenizer
//!   │ plan: per-tensor target (llama.cpp preset rules, --tensor-type, GPTQ spec)
//!   │ calibration text ─► windows of --ctx tokens (Calibration)
//!   ▼
//! for each block l (sequential: its inputs come from the already-quantized blocks):
//!   run block l on the current hidden states, collecting X^T X (+ samples) per site
//!   [awq] search per-channel scales, fold them into the norms / producers
//!   quantize Q K V O gate up down (rtn | imatrix | gptq) onto the target grids
//!   put the dequantized weights back, run block l again → inputs of block l+1
//!   ▼
//! write: GGUF (input metadata + new tensor types, atomically) or a GPTQ HF directory
//! ```
//!
//! Memory: the f32 model plus the hidden states of the calibration windows (one
//! `[tokens, hidden]` buffer) and one block's statistics at a time.

mod awq_fold;
mod calib;
mod collect;
mod dense_out;
pub mod encoder;
mod error;
mod gguf_out;
pub mod gptq_out;
mod layer;
pub mod lowrank;
mod plan;
pub mod prune;
mod spec;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;
use tersor_model::{LinearKind, Llama, LoadedModel, TextTokenizer};
use tersor_quant::gptq::GptqConfig;

pub use calib::{CalibConfig, Calibration};
pub use collect::{Collector, Site, SiteStats};
pub use dense_out::{check_gguf_writable, is_gguf_output, write_dense_dir, write_dense_gguf};
pub use error::{QuantizeError, Result};
pub use layer::{quantize_linear, LayerOut, LayerStats, LayerTarget, Payload};
pub use plan::{Plan, PlannedTensor};
pub use spec::{parse_tensor_override, GptqSpec, Method, MethodSpec, Target, QUANT_TYPES};

/// Everything `tersor quantize` needs.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    pub target: Target,
    pub method: MethodSpec,
    pub calib: CalibConfig,
    /// `--tensor-type REGEX=TYPE` (GGUF outputs).
    pub overrides: Vec<(regex::Regex, tersor_ggml::GgmlType)>,
    /// A llama.cpp imatrix file to use instead of computing one (`--imatrix`).
    pub imatrix_in: Option<PathBuf>,
    /// Write the imatrix computed from the calibration (`--imatrix-out`).
    pub imatrix_out: Option<PathBuf>,
    pub gptq: GptqConfig,
    /// AWQ grid points for the scale exponent (20 in the paper).
    pub awq_grid: usize,
    /// AWQ search sample: at most this many token rows per site.
    pub awq_rows: usize,
    /// Calibration windows per forward batch (memory vs speed).
    pub batch_windows: usize,
}

impl QuantizeOptions {
    pub fn new(
        input: PathBuf,
        output: PathBuf,
        target: Target,
        method: MethodSpec,
        calib: CalibConfig,
    ) -> Self {
        QuantizeOptions {
            input,
            output,
            target,
            method,
            calib,
            overrides: Vec::new(),
            imatrix_in: None,
            imatrix_out: None,
            gptq: GptqConfig::default(),
            awq_grid: 20,
            awq_rows: 4096,
            batch_windows: 4,
        }
    }
}

/// Progress of a run, for progress bars.
#[derive(Clone, Debug)]
pub enum Event {
    /// The model is loaded and the plan made.
    Planned { layers: usize, tensors: usize },
    /// Calibration text tokenized.
    Calibrated { windows: usize, tokens: usize },
    /// Block `index` (0-based) of `total` is done.
    Layer { index: usize, total: usize },
    /// Writing the output.
    Writing,
    /// Something the user should know (a fallback, a skipped step).
    Note(String),
}

/// One output tensor in the summary.
#[derive(Clone, Debug, Serialize)]
pub struct TensorSummary {
    pub name: String,
    /// ggml type name, `gptq:B:gG`, or a float type.
    pub format: String,
    pub params: u64,
    pub bytes: u64,
    /// The type asked for, when llama.cpp's fallback replaced it.
    pub fallback_from: Option<String>,
}

/// What a run did.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub input: PathBuf,
    pub output: PathBuf,
    pub target: String,
    pub method: String,
    pub file_bytes: u64,
    /// Bits per weight of the whole file over all parameters.
    pub bpw_file: f64,
    /// Bits per weight of the transformer blocks' linear layers only.
    pub bpw_linear: f64,
    pub params: u64,
    pub linear_params: u64,
    pub calib_windows: usize,
    pub calib_tokens: usize,
    pub seconds_load: f64,
    pub seconds_calibrate_quantize: f64,
    pub seconds_write: f64,
    pub notes: Vec<String>,
    pub tensors: Vec<TensorSummary>,
}

/// What a run did, by model kind.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Report {
    Decoder(Summary),
    Encoder(encoder::EncoderSummary),
}

/// Run the job: a decoder LM as described above, a sentence encoder through
/// [`encoder`] (GPTQ-grid targets only, RTN or GPTQ).
pub fn run(opts: &QuantizeOptions, progress: &(dyn Fn(Event) + Sync)) -> Result<Report> {
    let t0 = Instant::now();
    match tersor_model::load(&opts.input)? {
        LoadedModel::Decoder { model, tokenizer } => {
            run_decoder(opts, model, tokenizer, t0, progress).map(Report::Decoder)
        }
        LoadedModel::Encoder(bert) => {
            let (Target::Gptq(spec), false, Method::Rtn | Method::Gptq) =
                (&opts.target, opts.method.awq, opts.method.base)
            else {
                return Err(QuantizeError::Input {
                    path: opts.input.clone(),
                    msg: "a sentence encoder takes a GPTQ grid (--type gptq:BITS:gN) with \
                          --method rtn or gptq"
                        .into(),
                });
            };
            let group = spec.group_size.ok_or_else(|| {
                QuantizeError::Usage("encoders take grouped GPTQ grids (gptq:BITS:gN)".into())
            })?;
            let mut gptq = opts.gptq.clone();
            gptq.act_order = spec.act_order;
            // Groups stay positional (the dequantized weights are what is written).
            gptq.static_groups = spec.act_order;
            let op = encoder::EncoderOp::Quantize {
                grid: tersor_quant::gptq_grid::GptqFormatGrid::new(spec.bits, group, spec.sym)?,
                method: opts.method.base,
                gptq,
            };
            let job = encoder::EncoderJob::new(&opts.input, &opts.output, op, &opts.calib);
            encoder::run(&job, bert, progress).map(Report::Encoder)
        }
    }
}

fn run_decoder(
    opts: &QuantizeOptions,
    mut model: Llama,
    tokenizer: TextTokenizer,
    t0: Instant,
    progress: &(dyn Fn(Event) + Sync),
) -> Result<Summary> {
    let plan = Plan::make(opts, &model)?;
    let mut notes = plan.notes.clone();
    for n in &plan.notes {
        progress(Event::Note(n.clone()));
    }
    progress(Event::Planned {
        layers: model.n_layers(),
        tensors: plan.tensors.len(),
    });
    let imatrix_file = match &opts.imatrix_in {
        Some(p) => Some(tersor_quant::imatrix::Imatrix::read(p)?),
        None => None,
    };
    let seconds_load = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut results = Results::default();
    let (calib_windows, calib_tokens) = quantize_blocks(
        opts,
        &plan,
        &mut model,
        &tokenizer,
        imatrix_file.as_ref(),
        &mut results,
        &mut notes,
        progress,
    )?;
    let seconds_calibrate_quantize = t1.elapsed().as_secs_f64();
    if opts.method.base == Method::Imatrix {
        results.imatrix_meta = Some(match (&opts.imatrix_in, &imatrix_file) {
            (Some(p), Some(im)) => (
                p.display().to_string(),
                im.datasets.first().cloned().unwrap_or_default(),
                im.entries.len() as i32,
                im.chunks as i32,
            ),
            _ => (
                "tersor calibration".to_string(),
                opts.calib.path.display().to_string(),
                (7 * model.n_layers()) as i32,
                calib_windows as i32,
            ),
        });
    }

    progress(Event::Writing);
    let t2 = Instant::now();
    let tensors = if opts.target.is_gguf() {
        gguf_out::write(opts, &plan, &model, &results)?
    } else {
        gptq_out::write(opts, &plan, &model, &tokenizer, &results)?
    };
    let seconds_write = t2.elapsed().as_secs_f64();

    let file_bytes = output_bytes(&opts.output)?;
    let params: u64 = tensors.iter().map(|t| t.params).sum();
    let (lin_params, lin_bytes) = tensors
        .iter()
        .filter(|t| plan.is_block_linear(&t.name))
        .fold((0u64, 0u64), |(p, b), t| (p + t.params, b + t.bytes));
    Ok(Summary {
        input: opts.input.clone(),
        output: opts.output.clone(),
        target: opts.target.to_string(),
        method: opts.method.to_string(),
        file_bytes,
        bpw_file: file_bytes as f64 * 8.0 / params.max(1) as f64,
        bpw_linear: lin_bytes as f64 * 8.0 / lin_params.max(1) as f64,
        params,
        linear_params: lin_params,
        calib_windows,
        calib_tokens,
        seconds_load,
        seconds_calibrate_quantize,
        seconds_write,
        notes,
        tensors,
    })
}

pub(crate) fn output_bytes(p: &std::path::Path) -> Result<u64> {
    let io = |e| QuantizeError::Io {
        path: p.to_path_buf(),
        source: e,
    };
    let md = std::fs::metadata(p).map_err(io)?;
    if md.is_file() {
        return Ok(md.len());
    }
    let mut total = 0;
    for e in std::fs::read_dir(p).map_err(io)? {
        let e = e.map_err(io)?;
        let m = e.metadata().map_err(io)?;
        if m.is_file() {
            total += m.len();
        }
    }
    Ok(total)
}

/// Quantized linears and modified float tensors, by block and kind.
#[derive(Default)]
pub(crate) struct Results {
    pub linears: std::collections::HashMap<(usize, LinearKind), LayerOut>,
    /// llama-quantize's `quantize.imatrix.*` keys: file, dataset, entries, chunks.
    pub imatrix_meta: Option<(String, String, i32, i32)>,
}

pub(crate) fn tensor_vec(t: &Tensor) -> Result<(Vec<f32>, usize, usize)> {
    let (r, c) = t.dims2()?;
    Ok((t.flatten_all()?.to_vec1::<f32>()?, r, c))
}

#[allow(clippy::too_many_arguments)]
fn quantize_blocks(
    opts: &QuantizeOptions,
    plan: &Plan,
    model: &mut Llama,
    tokenizer: &TextTokenizer,
    imatrix_file: Option<&tersor_quant::imatrix::Imatrix>,
    results: &mut Results,
    notes: &mut Vec<String>,
    progress: &(dyn Fn(Event) + Sync),
) -> Result<(usize, usize)> {
    let n_layers = model.n_layers();
    let m = opts.method;
    // imatrix from a file needs no activations; everything else but RTN does.
    let calibrate = m.awq
        || m.base == Method::Gptq
        || (m.base == Method::Imatrix && imatrix_file.is_none())
        || opts.imatrix_out.is_some();
    let mut hidden: Vec<Tensor> = Vec::new();
    let mut n_windows = 0;
    let mut stride = 1;
    if calibrate {
        let cal = Calibration::load(&opts.calib, tokenizer)?;
        n_windows = cal.windows.len();
        progress(Event::Calibrated {
            windows: n_windows,
            tokens: cal.n_tokens(),
        });
        stride = (cal.n_tokens() / opts.awq_rows.max(1)).max(1);
        for chunk in cal.windows.chunks(opts.batch_windows.max(1)) {
            let refs: Vec<&[u32]> = chunk.iter().map(|w| w.as_slice()).collect();
            hidden.push(model.embed_batch(&refs)?);
        }
    }
    let mut imatrix_sums: Vec<(String, Vec<f64>, usize)> = Vec::new();
    for l in 0..n_layers {
        let mut stats: Option<[SiteStats; 4]> = None;
        if calibrate {
            let mut col = collect::Collector::new(stride, m.awq);
            for h in &hidden {
                model.block_forward(l, h, Some(&mut col))?;
            }
            stats = Some(col.into_stats());
        }
        if let Some(st) = stats.as_mut() {
            if opts.imatrix_out.is_some() {
                for site in Site::ALL {
                    let s = &st[site as usize];
                    for &k in site.kinds() {
                        let diag = (0..s.cols).map(|i| s.xtx[i * s.cols + i]).collect();
                        imatrix_sums.push((plan.gguf_name(l, k), diag, s.n));
                    }
                }
            }
            if m.awq {
                let rtn_of = |k: LinearKind, w: &[f32], r: usize, c: usize| -> Result<Vec<f32>> {
                    let target = plan.linear_target(l, k)?;
                    let out = quantize_linear(
                        "awq search",
                        w,
                        r,
                        c,
                        target,
                        Method::Rtn,
                        &LayerStats {
                            xtx: None,
                            importance: None,
                        },
                        &opts.gptq,
                    )?;
                    Ok(out.values)
                };
                let sites = awq_fold::awq_block(model, l, st, opts.awq_grid, &rtn_of)?;
                if l == 0 {
                    for s in &sites {
                        notes.push(format!(
                            "awq block 0 {:?}: exponent {:.2}, objective -{:.1}%",
                            s.site,
                            s.ratio,
                            100.0 * s.gain
                        ));
                    }
                }
            }
        }
        for kind in LinearKind::ALL {
            let name = plan.gguf_name(l, kind);
            let target = plan.linear_target(l, kind)?;
            let (w, rows, cols) = tensor_vec(model.linear_weight(l, kind)?)?;
            let site_stats = stats.as_ref().map(|s| &s[Site::of(kind) as usize]);
            let importance: Option<Vec<f32>> = match (imatrix_file, site_stats) {
                (Some(f), _) => f.importance(&name),
                (None, Some(s)) => Some(s.imatrix()),
                (None, None) => None,
            };
            if m.base == Method::Imatrix && importance.is_none() {
                return Err(QuantizeError::Input {
                    path: opts.imatrix_in.clone().unwrap_or_default(),
                    msg: format!("the imatrix has no entry for {name}"),
                });
            }
            let ls = LayerStats {
                xtx: site_stats.map(|s| s.xtx.as_slice()),
                importance: importance.as_deref(),
            };
            let out = quantize_linear(&name, &w, rows, cols, target, m.base, &ls, &opts.gptq)?;
            model.set_linear_weight(
                l,
                kind,
                Tensor::from_vec(out.values.clone(), (rows, cols), &Device::Cpu)?,
            )?;
            results.linears.insert((l, kind), out);
        }
        if calibrate && l + 1 < n_layers {
            for h in hidden.iter_mut() {
                *h = model.block_forward(l, h, None)?;
            }
        }
        progress(Event::Layer {
            index: l,
            total: n_layers,
        });
    }
    if let Some(p) = &opts.imatrix_out {
        let dataset = opts.calib.path.display().to_string();
        let im = tersor_quant::imatrix::Imatrix::from_sums(
            imatrix_sums
                .into_iter()
                .map(|(name, sums, n)| (name, (sums, n as u64))),
            n_windows,
            Some(&dataset),
        )?;
        im.write_dat(p)?;
        notes.push(format!("wrote the imatrix to {}", p.display()));
    }
    Ok((n_windows, n_windows * opts.calib.ctx))
}
