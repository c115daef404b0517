//! Byte costs of an output and writing it.
//!
//! GGUF: the budget is the whole file. Tensor types do not change the header's
//! length, and every tensor's data is padded to the file's alignment, so the file
//! size is `fixed + Σ align(bytes of each searched tensor)` exactly, where `fixed`
//! holds the header and the tensors that are not searched (norms). GPTQ: the budget
//! counts the blocks' linear layers (`qweight`, `qzeros`, `scales`, `g_idx`), the
//! convention of the GPTQ and EvoPress papers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tersor_gguf::{GgufError, GgufFile, GgufWriter};
use tersor_levels::{LevelDb, LevelKind, Payload};
use tersor_model::{LinearKind, Llama};
use tersor_quantize::gptq_out::{write_gptq_dir, GptqDirSpec};
use tersor_quantize::GptqSpec;

use crate::units::{Unit, UnitRef};
use crate::{CompressError, CompressOptions, Format, Result};

/// The allocation problem's byte accounting.
pub struct Layout {
    /// Costs per unit (in unit order), as the output counts them.
    pub search_units: Vec<tersor_search::Unit>,
    pub fixed_bytes: u64,
    /// Parameters bits per weight are reported over (GGUF: every tensor; GPTQ: the
    /// block linears).
    pub bpw_params: u64,
    /// Database index of each unit.
    pub db_index: Vec<usize>,
}

fn align_up(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

pub fn layout(opts: &CompressOptions, units: &[Unit], db: &LevelDb) -> Result<Layout> {
    let db_index: Vec<usize> = units
        .iter()
        .map(|u| {
            db.find(&u.name).ok_or_else(|| {
                CompressError::Invariant(format!("{} is not in the level database", u.name))
            })
        })
        .collect::<Result<_>>()?;
    let levels: Vec<(LevelKind, Vec<u64>)> = db_index
        .iter()
        .map(|&t| {
            let lv = &db.tensors()[t].levels;
            (lv[0].kind, lv.iter().map(|l| l.bytes).collect())
        })
        .collect();
    let (search_units, fixed_bytes, bpw_params) = costs(opts, units, &levels)?;
    Ok(Layout {
        search_units,
        fixed_bytes,
        bpw_params,
        db_index,
    })
}

/// The costs the search sees, from each unit's level byte counts (increasing) and
/// one of its kinds: `(units, fixed bytes, parameters of the bpw figures)`. Needs
/// no level database, so a budget is checked before anything is built.
pub fn costs(
    opts: &CompressOptions,
    units: &[Unit],
    levels: &[(LevelKind, Vec<u64>)],
) -> Result<(Vec<tersor_search::Unit>, u64, u64)> {
    match opts.format {
        Format::Gguf => {
            let f = GgufFile::open(&opts.input)?;
            let align = f.alignment();
            let mut w = GgufWriter::from_file(&f);
            let mut out = Vec::with_capacity(units.len());
            let mut searched = 0u64;
            for (u, (kind, bytes)) in units.iter().zip(levels) {
                let LevelKind::Ggml(ty) = *kind else {
                    return Err(CompressError::Invariant(format!(
                        "{}: not a ggml level",
                        u.name
                    )));
                };
                // Tensor types do not change the header; the data of each tensor is
                // padded to the alignment.
                w.set_tensor_type(&u.name, ty)?;
                let c: Vec<u64> = bytes.iter().map(|&b| align_up(b, align)).collect();
                searched += align_up(kind.bytes(u.rows, u.cols).unwrap_or(0), align);
                out.push(tersor_search::Unit {
                    name: u.name.clone(),
                    costs: c,
                });
            }
            let fixed = w.file_size().checked_sub(searched).ok_or_else(|| {
                CompressError::Invariant("GGUF layout smaller than its tensors".into())
            })?;
            let bpw_params = f.tensors().iter().map(|t| t.n_elements()).sum();
            Ok((out, fixed, bpw_params))
        }
        Format::Gptq => Ok((
            units
                .iter()
                .zip(levels)
                .map(|(u, (_, bytes))| tersor_search::Unit {
                    name: u.name.clone(),
                    costs: bytes.clone(),
                })
                .collect(),
            0,
            units.iter().map(|u| u.params()).sum(),
        )),
    }
}

/// File (or directory) name of a method's output in `--baselines-dir`.
pub fn file_name(method: &str, format: Format) -> String {
    match format {
        Format::Gguf => format!("{method}.gguf"),
        Format::Gptq => method.to_string(),
    }
}

/// Write the model of assignment `a` to `path`; returns the bytes the budget counts
/// (GGUF: the file; GPTQ: the linears' tensors).
pub fn write(
    opts: &CompressOptions,
    path: &Path,
    model: &Llama,
    units: &[Unit],
    db: &LevelDb,
    a: &[u16],
) -> Result<u64> {
    let level_of = |u: usize| -> Result<(usize, usize)> {
        let t = db.find(&units[u].name).ok_or_else(|| {
            CompressError::Invariant(format!("{} is not in the level database", units[u].name))
        })?;
        Ok((t, a[u] as usize))
    };
    match opts.format {
        Format::Gguf => {
            let f = GgufFile::open(&opts.input)?;
            let mut w = GgufWriter::from_file(&f);
            let mut chosen: HashMap<String, (usize, usize)> = HashMap::new();
            for (u, unit) in units.iter().enumerate() {
                let (t, l) = level_of(u)?;
                let LevelKind::Ggml(ty) = db.tensors()[t].levels[l].kind else {
                    return Err(CompressError::Invariant(format!(
                        "{}: not a ggml level",
                        unit.name
                    )));
                };
                w.set_tensor_type(&unit.name, ty)?;
                chosen.insert(unit.name.clone(), (t, l));
            }
            let infos = w.tensors().to_vec();
            let out = path.to_path_buf();
            w.write(path, |i, sink| {
                let info = &infos[i];
                let bytes = match chosen.get(&info.name) {
                    Some(&(t, l)) => db.payload_bytes(t, l),
                    None => {
                        let src = f.tensor(&info.name).ok_or_else(|| GgufError::Format {
                            path: out.clone(),
                            msg: format!("{}: not in the input", info.name),
                        })?;
                        f.tensor_data(src)
                    }
                };
                sink.write_all(bytes).map_err(|e| GgufError::Format {
                    path: out.clone(),
                    msg: format!("writing {}: {e}", info.name),
                })
            })?;
            Ok(std::fs::metadata(path)
                .map_err(|e| CompressError::io(path, e))?
                .len())
        }
        Format::Gptq => {
            let mut payloads: HashMap<(usize, LinearKind), Payload> = HashMap::new();
            let mut counts: HashMap<LevelKind, usize> = HashMap::new();
            let mut bytes = 0;
            for (u, unit) in units.iter().enumerate() {
                let UnitRef::Linear(layer, kind) = unit.what else {
                    return Err(CompressError::Invariant(format!(
                        "{}: not a block linear",
                        unit.name
                    )));
                };
                let (t, l) = level_of(u)?;
                let lv = &db.tensors()[t].levels[l];
                *counts.entry(lv.kind).or_default() += 1;
                bytes += lv.bytes;
                payloads.insert((layer, kind), db.payload(t, l)?);
            }
            // The most common level is the checkpoint's global setting: fewest
            // `dynamic` rules.
            let base = counts
                .iter()
                .max_by_key(|(k, n)| (**n, k.to_string()))
                .map(|(k, _)| *k)
                .ok_or_else(|| CompressError::Invariant("no linears".into()))?;
            let LevelKind::Gptq {
                bits,
                group_size,
                sym,
            } = base
            else {
                return Err(CompressError::Invariant("not a GPTQ level".into()));
            };
            let spec = GptqDirSpec {
                input: opts.input.clone(),
                output: path.to_path_buf(),
                base: GptqSpec {
                    bits,
                    group_size: Some(group_size),
                    sym,
                    act_order: false,
                },
                damp_percent: opts.gptq.damp_percent,
                method: format!("tersor compress ({:?})", opts.method).to_lowercase(),
            };
            write_gptq_dir(&spec, model, &|l, k| payloads.get(&(l, k)))?;
            Ok(bytes)
        }
    }
}

/// `llama-quantize` arguments that reproduce the allocation's types
/// (`--tensor-type` needs a llama.cpp from April 2025 or later). The rounding is
/// llama.cpp's own, so only the types carry over, not tersor's GPTQ values.
pub fn llama_quantize_args(units: &[Unit], levels: &[String]) -> Vec<String> {
    units
        .iter()
        .zip(levels)
        .flat_map(|(u, l)| {
            [
                "--tensor-type".to_string(),
                format!("^{}$={}", regex_escape(&u.name), l.to_ascii_lowercase()),
            ]
        })
        .collect()
}

fn regex_escape(s: &str) -> String {
    s.replace('.', "\\.")
}

/// Where `tersor compress` writes when `-o` is not given.
pub fn default_output(input: &Path, format: Format, budget: &crate::Budget) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "model".into());
    let tag = match budget {
        crate::Budget::Bpw(b) => format!("{b}bpw"),
        crate::Budget::Bytes(n) => format!("{n}B"),
    };
    match format {
        Format::Gguf => PathBuf::from(format!("{stem}.tersor-{tag}.gguf")),
        Format::Gptq => PathBuf::from(format!("{stem}.tersor-{tag}-gptq")),
    }
}
