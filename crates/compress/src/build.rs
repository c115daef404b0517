//! Building the level database: every unit compressed to every level kind.
//!
//! Each level is a tensor compressed on its own, so any combination of levels can be
//! assembled later (EvoPress's database). Which activations calibrate it is
//! [`DbInputs`]:
//! - `reference`: one calibration pass runs block by block over the reference model;
//!   block `l`'s `XᵀX` per input site drives GPTQ (or the imatrix weights) for all of
//!   its linears at every level, and the final norm's output drives the output
//!   projection (the token embedding when tied). Memory: the calibration hidden
//!   states and one block's statistics.
//! - `sequential`: one stream of hidden states per level kind, each advanced through
//!   blocks whose tensors are at that kind (GPTQ's sequential mode, as `tersor
//!   quantize` runs it): level `k` of block `l` is calibrated on the inputs the model
//!   with blocks `0..l` at `k` produces, so the uniform assignment is exactly
//!   sequential uniform GPTQ. Memory: one hidden-state stream per kind.
//!
//! Output errors are measured on the reference activations in both modes, so they
//! compare across levels.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};
use tersor_levels::{DbBuilder, LevelDb, LevelKind, NewLevel};
use tersor_model::{LinearKind, Llama, TextTokenizer};
use tersor_quantize::{
    quantize_linear, Calibration, Collector, LayerOut, LayerStats, LayerTarget, Method, Site,
    SiteStats,
};

use crate::units::{Unit, UnitRef};
use crate::{CompressError, CompressOptions, DbInputs, Event, Result};

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
        "db_inputs": opts.db_inputs,
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
    if needs_stats && opts.db_inputs == DbInputs::Sequential {
        build_sequential(opts, &mut b, model, &cal, units, total_levels, progress)?;
        return Ok(b.finish()?);
    }
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
        let (xtx, imp) = head_stats(model, &hidden)?;
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

/// `XᵀX` of the output projection's input (the final norm of `hidden`) and its
/// diagonal mean (the imatrix importance).
fn head_stats(model: &Llama, hidden: &[Tensor]) -> Result<(Vec<f64>, Vec<f32>)> {
    let d = model.config().hidden_size;
    let mut xtx = vec![0f64; d * d];
    let mut n = 0usize;
    for h in hidden {
        let x = model.head_input(h)?;
        n += x.dims2()?.0;
        let g = x.t()?.matmul(&x)?.flatten_all()?.to_vec1::<f32>()?;
        for (a, &v) in xtx.iter_mut().zip(&g) {
            *a += v as f64;
        }
    }
    let imp = (0..d)
        .map(|i| (xtx[i * d + i] / n.max(1) as f64) as f32)
        .collect();
    Ok((xtx, imp))
}

/// `XᵀX` per input site of block `l` on `hidden`, running the block as `model` has it
/// (the hidden states are not advanced).
fn block_stats(model: &Llama, l: usize, hidden: &[Tensor]) -> Result<[SiteStats; 4]> {
    let mut col = Collector::new(usize::MAX, false);
    for h in hidden {
        model.block_forward(l, h, Some(&mut col))?;
    }
    Ok(col.into_stats())
}

/// The `sequential` database (see the module doc): one hidden-state stream per level
/// kind, each advanced through blocks at that kind; the reference stream gives the
/// output errors. A resumed build reads the stored levels of finished blocks to
/// advance the streams, and recomputes a level only where its kind was not kept.
#[allow(clippy::too_many_arguments)]
fn build_sequential(
    opts: &CompressOptions,
    b: &mut DbBuilder,
    model: &Llama,
    cal: &Calibration,
    units: &[Unit],
    total_levels: usize,
    progress: &(dyn Fn(Event) + Sync),
) -> Result<()> {
    let mut kinds: Vec<LevelKind> = Vec::new();
    for k in units.iter().flat_map(|u| &u.kinds) {
        if !kinds.contains(k) {
            kinds.push(*k);
        }
    }
    let mut reference = embed_windows(model, &cal.windows)?;
    let mut streams: Vec<Vec<Tensor>> = vec![reference.clone(); kinds.len()];
    let mut done_levels = 0usize;
    for l in 0..model.n_layers() {
        let layer_units: Vec<(&Unit, LinearKind)> = units
            .iter()
            .filter_map(|u| match u.what {
                UnitRef::Linear(ul, kind) if ul == l => Some((u, kind)),
                _ => None,
            })
            .collect();
        let todo = layer_units.iter().any(|(u, _)| !b.has(&u.name));
        let ref_stats = if todo {
            Some(block_stats(model, l, &reference)?)
        } else {
            None
        };
        let mut new_levels: Vec<Vec<NewLevel>> = layer_units.iter().map(|_| Vec::new()).collect();
        for (k, kind) in kinds.iter().enumerate() {
            let mut at_kind = model.clone();
            let mut stats: Option<[SiteStats; 4]> = None;
            for (i, (u, lk)) in layer_units.iter().enumerate() {
                if !u.kinds.contains(kind) {
                    continue;
                }
                let stored = if todo { None } else { b.values(&u.name, kind)? };
                let values = match stored {
                    Some(v) => v,
                    None => {
                        if stats.is_none() {
                            stats = Some(block_stats(model, l, &streams[k])?);
                        }
                        let s = &stats.as_ref().expect("just set")[Site::of(*lk) as usize];
                        let w = model
                            .linear_weight(l, *lk)?
                            .flatten_all()?
                            .to_vec1::<f32>()?;
                        let imp = s.imatrix();
                        let ls = LayerStats {
                            xtx: Some(s.xtx.as_slice()),
                            importance: Some(imp.as_slice()),
                        };
                        let out = quantize_linear(
                            &u.name,
                            &w,
                            u.rows,
                            u.cols,
                            target_of(*kind),
                            opts.method,
                            &ls,
                            &opts.gptq,
                        )?;
                        if let Some(rs) = &ref_stats {
                            let h = hessian(Some(&rs[Site::of(*lk) as usize].xtx), u.cols)?;
                            let lvl =
                                new_level(u, &w, *kind, out.payload, &out.values, h.as_ref())?;
                            push_level(&mut new_levels[i], lvl);
                            done_levels += 1;
                            progress(Event::BuildLevel {
                                done: done_levels,
                                total: total_levels,
                                tensor: u.name.clone(),
                            });
                        }
                        out.values
                    }
                };
                at_kind.set_linear_weight(
                    l,
                    *lk,
                    Tensor::from_vec(values, (u.rows, u.cols), &Device::Cpu)?,
                )?;
            }
            for h in streams[k].iter_mut() {
                *h = at_kind.block_forward(l, h, None)?;
            }
        }
        for h in reference.iter_mut() {
            *h = model.block_forward(l, h, None)?;
        }
        if todo {
            for ((u, _), levels) in layer_units.iter().zip(new_levels) {
                if !b.has(&u.name) {
                    b.add(&u.name, u.rows, u.cols, levels)?;
                }
            }
        } else {
            done_levels += layer_units
                .iter()
                .map(|(u, _)| u.kinds.len())
                .sum::<usize>();
        }
    }
    // The output projection (and a tied embedding) at kind k: calibrated on stream k's
    // last hidden states; an untied embedding is a lookup table, rounded without them.
    let head_units: Vec<&Unit> = units
        .iter()
        .filter(|u| matches!(u.what, UnitRef::Embedding | UnitRef::Output))
        .filter(|u| !b.has(&u.name))
        .collect();
    if head_units.is_empty() {
        return Ok(());
    }
    let (ref_xtx, _) = head_stats(model, &reference)?;
    let tied = model.config().tie_embeddings;
    let mut head: Vec<Option<(Vec<f64>, Vec<f32>)>> = vec![None; kinds.len()];
    for u in head_units {
        let projects = u.what == UnitRef::Output || tied;
        let w = match u.what {
            UnitRef::Output => model.output_weight(),
            _ => model.embedding(),
        }
        .flatten_all()?
        .to_vec1::<f32>()?;
        let h = hessian(projects.then_some(ref_xtx.as_slice()), u.cols)?;
        let mut levels = Vec::new();
        for kind in &u.kinds {
            let k = kinds
                .iter()
                .position(|x| x == kind)
                .expect("kinds hold every unit's");
            let (ls, method) = if projects {
                if head[k].is_none() {
                    head[k] = Some(head_stats(model, &streams[k])?);
                }
                let (xtx, imp) = head[k].as_ref().expect("just set");
                (
                    LayerStats {
                        xtx: Some(xtx),
                        importance: Some(imp),
                    },
                    opts.method,
                )
            } else {
                (
                    LayerStats {
                        xtx: None,
                        importance: None,
                    },
                    Method::Rtn,
                )
            };
            let out = quantize_linear(
                &u.name,
                &w,
                u.rows,
                u.cols,
                target_of(*kind),
                method,
                &ls,
                &opts.gptq,
            )?;
            let lvl = new_level(u, &w, *kind, out.payload, &out.values, h.as_ref())?;
            push_level(&mut levels, lvl);
            done_levels += 1;
            progress(Event::BuildLevel {
                done: done_levels,
                total: total_levels,
                tensor: u.name.clone(),
            });
        }
        b.add(&u.name, u.rows, u.cols, levels)?;
    }
    Ok(())
}

/// `XᵀX` as an f32 `[cols, cols]` tensor (`None` without activations).
fn hessian(h: Option<&[f64]>, cols: usize) -> Result<Option<Tensor>> {
    h.map(|h| {
        Ok(Tensor::from_vec(
            h.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            (cols, cols),
            &Device::Cpu,
        )?)
    })
    .transpose()
}

/// A level of `u`: its cost and its output error `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`, the
/// layer's output error on the calibration activations relative to its output energy.
fn new_level(
    u: &Unit,
    w: &[f32],
    kind: LevelKind,
    payload: tersor_quantize::Payload,
    values: &[f32],
    h: Option<&Tensor>,
) -> Result<NewLevel> {
    let bytes = kind.bytes(u.rows, u.cols).ok_or_else(|| {
        CompressError::Invariant(format!("{}: level {kind} is not legal", u.name))
    })?;
    let w_energy = energy(w, u.rows, u.cols, h)?.max(f64::MIN_POSITIVE);
    let dw: Vec<f32> = w.iter().zip(values).map(|(a, b)| a - b).collect();
    let output_error = energy(&dw, u.rows, u.cols, h)? / w_energy;
    Ok(NewLevel {
        kind,
        bytes,
        output_error,
        payload,
    })
}

/// Add `lvl` to `levels`; of two levels with the same cost keep the more accurate one
/// (the search needs strictly increasing costs and would never pick the other).
fn push_level(levels: &mut Vec<NewLevel>, lvl: NewLevel) {
    match levels.iter_mut().find(|l| l.bytes == lvl.bytes) {
        Some(same) if lvl.output_error < same.output_error => *same = lvl,
        Some(_) => {}
        None => levels.push(lvl),
    }
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
    let h = hessian(h, u.cols)?;
    for &kind in &u.kinds {
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
        let lvl = new_level(u, w, kind, payload, &values, h.as_ref())?;
        push_level(&mut levels, lvl);
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
