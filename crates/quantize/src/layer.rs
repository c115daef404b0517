//! Quantize one linear layer onto its target grid with the chosen method.

use half::f16;
use tersor_ggml::{dequantize_to_vec, GgmlType};
use tersor_quant::ggml_grid::GgmlGrid;
use tersor_quant::gptq::{gptq, GptqConfig};
use tersor_quant::gptq_grid::GptqFormatGrid;
use tersor_quant::grid::Quantized;
use tersor_quant::rtn::rtn;

use crate::error::{QuantizeError, Result};
use crate::spec::Method;

/// Where one linear goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerTarget {
    Ggml(GgmlType),
    Gptq {
        bits: u32,
        /// Resolved group size (the row length for per-channel).
        group_size: usize,
        sym: bool,
        act_order: bool,
    },
}

/// A quantized linear in its format's terms.
#[derive(Clone, Debug)]
pub enum Payload {
    /// llama.cpp block bytes of the whole tensor.
    Ggml { ty: GgmlType, bytes: Vec<u8> },
    /// GPTQ checkpoint fields (unpacked): codes `[rows, cols]`, per (row, group) fp16
    /// scale and integer zero point (`groups[row * n_groups + g]`), and the group of
    /// every input column.
    Gptq {
        bits: u32,
        group_size: usize,
        sym: bool,
        codes: Vec<u8>,
        scales: Vec<f16>,
        zeros: Vec<u8>,
        g_idx: Vec<u32>,
    },
}

impl Payload {
    /// The values the payload decodes to (`[rows, cols]`), as the written file does:
    /// llama.cpp's dequantization for ggml blocks, `scale * (q - zero)` in fp16 for
    /// GPTQ codes (column `c` uses group `g_idx[c]`).
    pub fn dequantize(&self, rows: usize, cols: usize) -> Result<Vec<f32>> {
        match self {
            Payload::Ggml { ty, bytes } => Ok(dequantize_to_vec(*ty, bytes, rows * cols)?),
            Payload::Gptq {
                group_size,
                codes,
                scales,
                zeros,
                g_idx,
                ..
            } => {
                let n_groups = cols.div_ceil((*group_size).max(1));
                if codes.len() != rows * cols
                    || scales.len() != rows * n_groups
                    || zeros.len() != rows * n_groups
                    || g_idx.len() != cols
                    || g_idx.iter().any(|&g| g as usize >= n_groups)
                {
                    return Err(QuantizeError::Invariant(format!(
                        "GPTQ payload does not match a {rows}x{cols} matrix in groups of {group_size}"
                    )));
                }
                let mut out = Vec::with_capacity(rows * cols);
                for r in 0..rows {
                    for c in 0..cols {
                        let g = r * n_groups + g_idx[c] as usize;
                        let group = tersor_quant::gptq_grid::GptqGroup {
                            scale: scales[g],
                            zero: zeros[g],
                        };
                        out.push(GptqFormatGrid::decode(&group, codes[r * cols + c]));
                    }
                }
                Ok(out)
            }
        }
    }
}

/// The result of quantizing one linear.
#[derive(Clone, Debug)]
pub struct LayerOut {
    /// Dequantized weights `[rows, cols]`: exactly what the written file decodes to.
    pub values: Vec<f32>,
    pub payload: Payload,
}

/// Inputs the methods may need.
pub struct LayerStats<'a> {
    /// `X^T X` of the layer's input, `[cols, cols]` (GPTQ).
    pub xtx: Option<&'a [f64]>,
    /// Per-column importance (imatrix method; GPTQ's scale fitting for ggml types).
    pub importance: Option<&'a [f32]>,
}

/// Quantize `w` (`[rows, cols]`, row-major) onto `target` with `method`.
#[allow(clippy::too_many_arguments)]
pub fn quantize_linear(
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    target: LayerTarget,
    method: Method,
    stats: &LayerStats<'_>,
    cfg: &GptqConfig,
) -> Result<LayerOut> {
    // candle's and faer's matmul kernels leave the upper halves of the vector registers
    // dirty, which slows the scalar codecs below by an order of magnitude on AVX-512
    // CPUs (see tersor_quant::gptq::clear_upper_simd_state).
    tersor_quant::gptq::clear_upper_simd_state_all_threads();
    let layer_err = |source| QuantizeError::Layer {
        tensor: name.to_string(),
        source,
    };
    if w.len() != rows * cols {
        return Err(QuantizeError::Invariant(format!(
            "{name}: {} weights for a {rows}x{cols} matrix",
            w.len()
        )));
    }
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(layer_err(tersor_quant::QuantError::NonFinite(format!(
            "weight at row {}, column {} is {}",
            i / cols,
            i % cols,
            w[i]
        ))));
    }
    let need =
        |what: &str| QuantizeError::Invariant(format!("{name}: method {method:?} needs {what}"));
    match target {
        LayerTarget::Ggml(ty) => {
            let float = matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
            let bytes = match method {
                _ if float => encode(ty, w, cols, None)?,
                Method::Rtn => encode(ty, w, cols, None)?,
                Method::Imatrix => {
                    let imp = stats
                        .importance
                        .ok_or_else(|| need("an importance matrix"))?;
                    encode(ty, w, cols, Some(imp))?
                }
                Method::Gptq => {
                    let h = stats.xtx.ok_or_else(|| need("X^T X"))?;
                    let grid = GgmlGrid::new(ty, cols).map_err(layer_err)?;
                    let cfg = GptqConfig {
                        // ggml blocks are positional: with act-order, fit them upfront.
                        static_groups: cfg.act_order || cfg.static_groups,
                        ..cfg.clone()
                    };
                    let out = gptq(w, rows, cols, h, &grid, &cfg).map_err(layer_err)?;
                    let bytes = grid.pack(&out.quantized);
                    let decoded = dequantize_to_vec(ty, &bytes, rows * cols)?;
                    check_same(name, &decoded, &out.quantized.values)?;
                    return Ok(LayerOut {
                        values: out.quantized.values,
                        payload: Payload::Ggml { ty, bytes },
                    });
                }
            };
            let values = dequantize_to_vec(ty, &bytes, rows * cols)?;
            Ok(LayerOut {
                values,
                payload: Payload::Ggml { ty, bytes },
            })
        }
        LayerTarget::Gptq {
            bits,
            group_size,
            sym,
            act_order,
        } => {
            let grid = GptqFormatGrid {
                bits,
                group_size,
                sym,
            };
            let (q, perm) = match method {
                // The min-max rule has no weighting: imatrix is plain RTN here.
                Method::Rtn | Method::Imatrix => {
                    (rtn(w, rows, cols, &grid, None).map_err(layer_err)?, None)
                }
                Method::Gptq => {
                    let h = stats.xtx.ok_or_else(|| need("X^T X"))?;
                    // A group must not start inside one lazy block and end in the next:
                    // with group sizes that do not divide the block (e.g. 96), use blocks
                    // of one group.
                    let bs = cfg.block_size;
                    let block_size = if bs % group_size == 0 || group_size % bs == 0 {
                        bs
                    } else {
                        group_size
                    };
                    let cfg = GptqConfig {
                        act_order,
                        block_size,
                        ..cfg.clone()
                    };
                    let out = gptq(w, rows, cols, h, &grid, &cfg).map_err(layer_err)?;
                    (out.quantized, out.perm)
                }
            };
            Ok(gptq_payload(q, perm, bits, group_size, sym))
        }
    }
}

fn gptq_payload(
    q: Quantized<<GptqFormatGrid as tersor_quant::grid::Grid>::Group>,
    perm: Option<Vec<usize>>,
    bits: u32,
    group_size: usize,
    sym: bool,
) -> LayerOut {
    // Groups follow the order the solver walked: with act-order, position p (holding
    // original column perm[p]) is in group p / group_size.
    let mut g_idx = vec![0u32; q.cols];
    match &perm {
        Some(perm) => {
            for (p, &c) in perm.iter().enumerate() {
                g_idx[c] = (p / group_size) as u32;
            }
        }
        None => {
            for (c, g) in g_idx.iter_mut().enumerate() {
                *g = (c / group_size) as u32;
            }
        }
    }
    let scales = q.groups.iter().map(|g| g.scale).collect();
    let zeros = q.groups.iter().map(|g| g.zero).collect();
    LayerOut {
        values: q.values,
        payload: Payload::Gptq {
            bits,
            group_size,
            sym,
            codes: q.codes,
            scales,
            zeros,
            g_idx,
        },
    }
}

/// The bytes written must decode to exactly the values the solver reported.
fn check_same(name: &str, decoded: &[f32], values: &[f32]) -> Result<()> {
    if let Some(i) = decoded
        .iter()
        .zip(values)
        .position(|(a, b)| a.to_bits() != b.to_bits())
    {
        return Err(QuantizeError::Invariant(format!(
            "{name}: element {i} decodes to {} but the solver used {}",
            decoded[i], values[i]
        )));
    }
    Ok(())
}

/// llama.cpp's `ggml_quantize_chunk`: the reference quantizers without importance
/// weights, the `quantize_row_*_impl` ones with.
pub(crate) fn encode(
    ty: GgmlType,
    values: &[f32],
    row_len: usize,
    importance: Option<&[f32]>,
) -> std::result::Result<Vec<u8>, tersor_ggml::CodecError> {
    match importance {
        None => tersor_ggml::quantize_par(ty, values),
        Some(imp) => tersor_ggml::quantize_weighted_par(ty, values, row_len, Some(imp)),
    }
}
