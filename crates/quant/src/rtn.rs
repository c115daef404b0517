//! Round-to-nearest: fit every group on the original weights and round each weight to the
//! nearest grid point, with no error compensation. The baseline every other solver must
//! beat, and what llama.cpp's `quantize_row_*` functions do for one block at a time.

use rayon::prelude::*;

use crate::error::{QuantError, Result};
use crate::gptq::clear_upper_simd_state_all_threads;
use crate::grid::{Grid, Quantized};

/// Round `w` (`[rows, cols]`, row-major) onto `grid`.
///
/// `importance` (one non-negative weight per input column, e.g. an imatrix row) is passed
/// to [`Grid::fit`] group by group; `None` weights all columns equally.
pub fn rtn<G: Grid>(
    w: &[f32],
    rows: usize,
    cols: usize,
    grid: &G,
    importance: Option<&[f32]>,
) -> Result<Quantized<G::Group>> {
    // The caller may have run gemm kernels (faer, candle) on the pool's threads; see
    // `clear_upper_simd_state`.
    clear_upper_simd_state_all_threads();
    let gs = grid.group_size();
    check_layer(w, rows, cols, gs)?;
    if let Some(imp) = importance {
        check_importance(imp, cols)?;
    }
    let gpr = cols.div_ceil(gs);
    let mut codes = vec![0u8; rows * cols];
    let mut values = vec![0f32; rows * cols];
    let groups: Vec<G::Group> = w
        .par_chunks(cols)
        .zip(codes.par_chunks_mut(cols))
        .zip(values.par_chunks_mut(cols))
        .flat_map_iter(|((wr, cr), vr)| {
            (0..gpr)
                .map(|k| {
                    let span = k * gs..((k + 1) * gs).min(cols);
                    let g = grid.fit(&wr[span.clone()], importance.map(|imp| &imp[span.clone()]));
                    for i in 0..span.len() {
                        let (c, v) = grid.round(&g, i, wr[k * gs + i]);
                        cr[k * gs + i] = c;
                        vr[k * gs + i] = v;
                    }
                    g
                })
                .collect::<Vec<_>>()
        })
        .collect();
    Ok(Quantized {
        rows,
        cols,
        group_size: gs,
        groups,
        codes,
        values,
    })
}

/// Shape and finiteness checks shared by the solvers: a non-empty `[rows, cols]` matrix,
/// a positive group size (the last group of a row may be partial: GPTQ checkpoints allow
/// `cols % group_size != 0`, e.g. groups of 128 on rows of 576; ggml grids check their
/// own block alignment), every weight finite (the error names the first bad element).
pub fn check_layer(w: &[f32], rows: usize, cols: usize, group_size: usize) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Err(QuantError::Shape(format!(
            "empty weight matrix [{rows}, {cols}]"
        )));
    }
    let n = rows
        .checked_mul(cols)
        .ok_or_else(|| QuantError::Shape(format!("[{rows}, {cols}] overflows")))?;
    if w.len() != n {
        return Err(QuantError::Shape(format!(
            "weights have {} elements, [{rows}, {cols}] needs {n}",
            w.len()
        )));
    }
    if group_size == 0 {
        return Err(QuantError::Shape("group size 0".into()));
    }
    if let Some(i) = w.iter().position(|x| !x.is_finite()) {
        return Err(QuantError::NonFinite(format!(
            "weight [{rows}, {cols}] at row {} col {} is {}",
            i / cols,
            i % cols,
            w[i]
        )));
    }
    Ok(())
}

/// An importance vector: one finite, non-negative weight per input column.
pub(crate) fn check_importance(imp: &[f32], cols: usize) -> Result<()> {
    if imp.len() != cols {
        return Err(QuantError::Shape(format!(
            "importance has {} entries, the layer has {cols} input columns",
            imp.len()
        )));
    }
    if let Some(i) = imp.iter().position(|x| !x.is_finite()) {
        return Err(QuantError::NonFinite(format!(
            "importance of column {i} is {}",
            imp[i]
        )));
    }
    if let Some(i) = imp.iter().position(|x| *x < 0.0) {
        return Err(QuantError::Unsupported(format!(
            "importance of column {i} is negative ({})",
            imp[i]
        )));
    }
    Ok(())
}
