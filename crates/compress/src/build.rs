//! Building the level database: every unit compressed to every level kind.
//!
//! Levels are built on the *reference* model's activations (EvoPress's database:
//! each layer is compressed independently, so any combination of levels can be
//! assembled later). One calibration pass runs block by block; block `l`'s
//! `XᵀX` per input site drives GPTQ (or the imatrix weights) for all of its
//! linears at every level, and the final norm's output drives the output
//! projection (the token embedding when tied). Memory: the calibration hidden
//! states and one block's statistics.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};
use tersor_levels::{DbBuilder, LevelDb, LevelKind, NewLevel};
use tersor_model::{Llama, TextTokenizer};
use tersor_quantize::{
    quantize_linear, Calibration, Collector, LayerOut, LayerStats, LayerTarget, Method, Site,
};

use crate::units::{Unit, UnitRef};
use crate::{CompressError, CompressOptions, Event, Result};

/// The key of a database: everything its levels depend on.
pub fn db_key(opts: &CompressOptions, units: &[Unit]) -> Result<(String, serde_json::Value)> {
    let mut h = Sha256::new();
    h.update(b"tersor-levels 1\n");
    let model_hash = hash_model(&opts.input)?;
    let calib_hash = hash_file(&opts.calib.path)?;
    let inputs = serde_json::json!({
        "model": opts.input.display().to_string(),
        "model_sha256": model_hash,
        "calib": opts.calib.path.display().to_string(),
        "calib_sha256": calib_hash,
        "calib_tokens": opts.calib.max_tokens,
        "ctx": opts.calib.ctx,
        "method": format!("{:?}", opts.method),
        "damp_percent": opts.gptq.damp_percent,
        "act_order": opts.gptq.act_order,
        "tersor": env!("CARGO_PKG_VERSION"),
    });
    // Contents, not paths: the same files elsewhere give the same key.
    let mut no_paths = inputs.clone();
    no_paths["model"] = serde_json::Value::Null;
    no_paths["calib"] = serde_json::Value::Null;
    h.update(no_paths.to_string().as_bytes());
    for u in units {
        h.update(u.name.as_bytes());
        for k in &u.kinds {
            h.update(k.to_string().as_bytes());
            h.update(b",");
        }
        h.update(b"\n");
    }
    Ok((hex::encode(h.finalize()), inputs))
}

fn hash_file(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p).map_err(|e| CompressError::io(p, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| CompressError::io(p, e))?;
    Ok(hex::encode(h.finalize()))
}

/// SHA-256 of a GGUF file, or of an HF directory's config and weight files.
fn hash_model(p: &Path) -> Result<String> {
    if !p.is_dir() {
        return hash_file(p);
    }
    let mut names: Vec<_> = std::fs::read_dir(p)
        .map_err(|e| CompressError::io(p, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".safetensors") || n == "config.json")
        .collect();
    names.sort();
    let mut h = Sha256::new();
    for n in names {
        h.update(n.as_bytes());
        h.update(hash_file(&p.join(&n))?.as_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

fn target_of(kind: LevelKind) -> LayerTarget {
    match kind {
        LevelKind::Ggml(ty) => LayerTarget::Ggml(ty),
        LevelKind::Gptq {
            bits,
            group_size,
            sym,
        } => LayerTarget::Gptq {
            bits,
            group_size,
            sym,
            act_order: false,
        },
    }
}

/// `tr(M H Mᵀ)` for `M` `[rows, cols]` and `H = XᵀX` (`Σ ‖M x‖²` over the
/// calibration rows), or `‖M‖²` when there are no activations.
pub(crate) fn energy(m: &[f32], rows: usize, cols: usize, h: Option<&Tensor>) -> Result<f64> {
    let Some(h) = h else {
        return Ok(m.iter().map(|&x| (x as f64) * (x as f64)).sum());
    };
    let m = Tensor::from_slice(m, (rows, cols), &Device::Cpu)?;
    Ok((m.matmul(h)? * &m)?
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?)
}

/// The calibration windows embedded, four windows per batch: the hidden states a
/// block-by-block pass over the reference model starts from.
pub(crate) fn embed_windows(model: &Llama, windows: &[Vec<u32>]) -> Result<Vec<Tensor>> {
    windows
        .chunks(4)
        .map(|chunk| {
            let refs: Vec<&[u32]> = chunk.iter().map(|w| w.as_slice()).collect();
            Ok(model.embed_batch(&refs)?)
        })
        .collect()
}

/// Build (or resume, or reuse) the database of `units` in `dir`.
#[allow(clippy::too_many_arguments)]
pub fn build(
    opts: &CompressOptions,
    dir: &Path,
    model: &Llama,
    tokenizer: &TextTokenizer,
    units: &[Unit],
    progress: &(dyn Fn(Event) + Sync),
) -> Result<LevelDb> {
    let (key, inputs) = db_key(opts, units)?;
    let mut b = DbBuilder::create(dir, &key, inputs)?;
    if units.iter().all(|u| b.has(&u.name)) {
        progress(Event::Note(format!(
            "reusing the level database {}",
            dir.display()
        )));
        return Ok(b.finish()?);
    }
    let n_layers = model.n_layers();
    let total_levels: usize = units.iter().map(|u| u.kinds.len()).sum();
    progress(Event::BuildStart {
        units: units.len(),
        levels: total_levels,
    });
    let needs_stats = opts.method != Method::Rtn;
    let cal = Calibration::load(&opts.calib, tokenizer)?;
    let mut hidden = embed_windows(model, &cal.windows)?;
    let mut done_levels = 0usize;
    for l in 0..n_layers {
        let layer_units: Vec<&Unit> = units
            .iter()
            .filter(|u| matches!(u.what, UnitRef::Linear(ul, _) if ul == l))
            .collect();
        let todo = layer_units.iter().any(|u| !b.has(&u.name));
        if todo {
            let mut col = Collector::new(usize::MAX, false);
            for h in hidden.iter_mut() {
                *h = model.block_forward(l, h, Some(&mut col))?;
            }
            let stats = col.into_stats();
            for u in layer_units {
                let UnitRef::Linear(_, kind) = u.what else {
                    continue;
                };
                let s = &stats[Site::of(kind) as usize];
                let w = model
                    .linear_weight(l, kind)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let imp = s.imatrix();
                let ls = LayerStats {
                    xtx: needs_stats.then_some(s.xtx.as_slice()),
                    importance: needs_stats.then_some(imp.as_slice()),
                };
                add_unit(
                    opts,
                    &mut b,
                    u,
                    &w,
                    &ls,
                    Some(&s.xtx),
                    &mut done_levels,
                    total_levels,
                    progress,
                )?;
            }
        } else {
            for h in hidden.iter_mut() {
                *h = model.block_forward(l, h, None)?;
            }
            done_levels += layer_units.iter().map(|u| u.kinds.len()).sum::<usize>();
        }
    }
    // The output projection's input: the final norm of the last hidden states.
    let head_units: Vec<&Unit> = units
        .iter()
        .filter(|u| matches!(u.what, UnitRef::Embedding | UnitRef::Output))
        .filter(|u| !b.has(&u.name))
        .collect();
    if !head_units.is_empty() {
        let d = model.config().hidden_size;
        let mut xtx = vec![0f64; d * d];
        let mut n = 0usize;
        for h in &hidden {
            let x = model.head_input(h)?;
            n += x.dims2()?.0;
            let g = x.t()?.matmul(&x)?.flatten_all()?.to_vec1::<f32>()?;
            for (a, &v) in xtx.iter_mut().zip(&g) {
                *a += v as f64;
            }
        }
        let imp: Vec<f32> = (0..d)
            .map(|i| (xtx[i * d + i] / n.max(1) as f64) as f32)
            .collect();
        let tied = model.config().tie_embeddings;
        for u in head_units {
            // The embedding is the output projection only when tied; an untied
            // embedding is a lookup table, rounded without activations.
            let projects = u.what == UnitRef::Output || tied;
            let w = match u.what {
                UnitRef::Output => model.output_weight(),
                _ => model.embedding(),
            }
            .flatten_all()?
            .to_vec1::<f32>()?;
            let (ls, h) = if projects && needs_stats {
                (
                    LayerStats {
                        xtx: Some(&xtx),
                        importance: Some(&imp),
                    },
                    Some(xtx.as_slice()),
                )
            } else {
                (
                    LayerStats {
                        xtx: None,
                        importance: None,
                    },
                    None,
                )
            };
            let method = if projects { opts.method } else { Method::Rtn };
            let o = CompressOptions {
                method,
                ..opts.clone()
            };
            add_unit(
                &o,
                &mut b,
                u,
                &w,
                &ls,
                h,
                &mut done_levels,
                total_levels,
                progress,
            )?;
        }
    }
    Ok(b.finish()?)
}

#[allow(clippy::too_many_arguments)]
fn add_unit(
    opts: &CompressOptions,
    b: &mut DbBuilder,
    u: &Unit,
    w: &[f32],
    stats: &LayerStats<'_>,
    h: Option<&[f64]>,
    done: &mut usize,
    total: usize,
    progress: &(dyn Fn(Event) + Sync),
) -> Result<()> {
    let mut levels: Vec<NewLevel> = Vec::with_capacity(u.kinds.len());
    // Output error of a level: tr(ΔW H ΔWᵀ) / tr(W H Wᵀ), the layer's output error on
    // the calibration activations relative to its output energy.
    let h = match h {
        Some(h) => Some(Tensor::from_vec(
            h.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            (u.cols, u.cols),
            &Device::Cpu,
        )?),
        None => None,
    };
    let w_energy = energy(w, u.rows, u.cols, h.as_ref())?.max(f64::MIN_POSITIVE);
    for &kind in &u.kinds {
        let bytes = kind.bytes(u.rows, u.cols).ok_or_else(|| {
            CompressError::Invariant(format!("{}: level {kind} is not legal", u.name))
        })?;
        let LayerOut { values, payload } = quantize_linear(
            &u.name,
            w,
            u.rows,
            u.cols,
            target_of(kind),
            opts.method,
            stats,
            &opts.gptq,
        )?;
        let dw: Vec<f32> = w.iter().zip(&values).map(|(a, b)| a - b).collect();
        let err = energy(&dw, u.rows, u.cols, h.as_ref())? / w_energy;
        // Of two levels with the same cost, keep the more accurate one: the search
        // needs strictly increasing costs and would never pick the other.
        if let Some(same) = levels.iter_mut().find(|l| l.bytes == bytes) {
            if err < same.output_error {
                *same = NewLevel {
                    kind,
                    bytes,
                    output_error: err,
                    payload,
                };
            }
        } else {
            levels.push(NewLevel {
                kind,
                bytes,
                output_error: err,
                payload,
            });
        }
        *done += 1;
        progress(Event::BuildLevel {
            done: *done,
            total,
            tensor: u.name.clone(),
        });
    }
    b.add(&u.name, u.rows, u.cols, levels)?;
    Ok(())
}
