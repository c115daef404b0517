//! Importance-weighted quantization: llama.cpp's `ggml_quantize_chunk` with
//! an importance matrix (imatrix), i.e. `quantize_q4_0(..., quant_weights)`
//! and friends from `ggml-quants.c` (commit c392e509).
//!
//! With weights, each type runs its `quantize_row_*_impl`: the element
//! weights are `qw[j] · sqrt(σ² + x[j]²)` (σ² the row's, super-block's or
//! block's mean square, depending on the type), the block or sub-block
//! scales come from weighted searches (`make_qx_quants`, `make_qkx3_quants`),
//! and the k-quants quantize their sub-block scales with `make_qp_quants`
//! weighted by the summed element weights. Without weights the bytes are
//! those of [`crate::quantize`] (the `_ref` quantizers; IQ4_NL's impl with
//! x² weights), exactly as `ggml_quantize_chunk` does with a NULL imatrix.
//! Q8_0 ignores the weights, as llama.cpp does.
//!
//! Every port keeps the C expression order (see `quant.rs` for the C idioms
//! that need care), so the bytes are identical to llama.cpp's.

use crate::blocks::*;
use crate::dequant::{get_scale_min_k4, q3k_scales};
use crate::fp::{fp16_to_fp32, fp32_to_fp16};
use crate::quant::{
    self, best_index_int8, make_qkx2_quants, nearest_int, pack_2bit, pack_scale_min_k4,
    GROUP_MAX_EPS, KVALUES_F32,
};
use crate::{CodecError, GgmlType};
use bytemuck::Pod;
use rayon::prelude::*;
use std::mem::size_of;

/// The types [`quantize_weighted`] handles.
pub const WEIGHTED_TYPES: [GgmlType; 11] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::IQ4NL,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// Quantizes `src`, rows of `n_per_row` values back to back, as llama.cpp's
/// `ggml_quantize_chunk(ty, src, dst, 0, nrows, n_per_row, weights)`.
///
/// `weights` (an importance matrix row: one non-negative value per column,
/// shared by every row) selects the `quantize_row_*_impl` searches; `None`
/// gives the NULL-imatrix bytes, those of [`crate::quantize`].
///
/// Like llama-quantize (`ggml_validate_row_data`), the output is checked for
/// NaN/infinite fp16 scales, which llama.cpp's searches can produce when the
/// weights of a whole block are zero (IQ4_NL) or when values exceed the fp16
/// range: that is [`CodecError::NonFiniteScale`] rather than a broken block.
///
/// Errors also for unsupported types, a row length that is not a positive
/// multiple of the block size, an input that is not whole rows, weights of
/// the wrong length or with a NaN/infinite/negative value, and NaN/infinite
/// input.
pub fn quantize_weighted(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    weights: Option<&[f32]>,
) -> Result<Vec<u8>, CodecError> {
    let row_bytes = check(ty, src, n_per_row, weights)?;
    let mut out = vec![0u8; src.len() / n_per_row * row_bytes];
    for (x, o) in src
        .chunks_exact(n_per_row)
        .zip(out.chunks_exact_mut(row_bytes))
    {
        quantize_row(ty, x, weights, o);
    }
    validate(ty, &out)?;
    Ok(out)
}

/// [`quantize_weighted`] with the rows spread over the rayon pool (about
/// 16k elements per task). Rows are independent, so the bytes are identical.
pub fn quantize_weighted_par(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    weights: Option<&[f32]>,
) -> Result<Vec<u8>, CodecError> {
    let row_bytes = check(ty, src, n_per_row, weights)?;
    let mut out = vec![0u8; src.len() / n_per_row * row_bytes];
    let rows_per_task = (16 * 1024 / n_per_row).max(1);
    out.par_chunks_mut(rows_per_task * row_bytes)
        .zip(src.par_chunks(rows_per_task * n_per_row))
        .for_each(|(o, x)| {
            for (x, o) in x.chunks_exact(n_per_row).zip(o.chunks_exact_mut(row_bytes)) {
                quantize_row(ty, x, weights, o);
            }
        });
    validate(ty, &out)?;
    Ok(out)
}

/// Checks the arguments; returns the bytes of one row.
fn check(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    weights: Option<&[f32]>,
) -> Result<usize, CodecError> {
    if !WEIGHTED_TYPES.contains(&ty) {
        return Err(CodecError::UnsupportedWeighted { ty });
    }
    let block_size = ty.block_size();
    if n_per_row == 0 || n_per_row % block_size != 0 {
        return Err(CodecError::BadRowLength {
            ty,
            n_per_row,
            block_size,
        });
    }
    if src.len() % n_per_row != 0 {
        return Err(CodecError::NotWholeRows {
            n_elements: src.len(),
            n_per_row,
        });
    }
    if let Some(w) = weights {
        if w.len() != n_per_row {
            return Err(CodecError::WeightsLength {
                n_per_row,
                actual: w.len(),
            });
        }
        if let Some((index, &value)) = w
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite() || **v < 0.0)
        {
            return Err(CodecError::BadWeight { index, value });
        }
    }
    if let Some((index, &value)) = src.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(CodecError::NonFinite { ty, index, value });
    }
    crate::bytes_for(ty, n_per_row)
}

/// Byte offsets of the fp16 scale fields of a block (`d`, and `m`/`dmin`
/// where the type has one), as `ggml_validate_row_data` checks them.
fn fp16_fields(ty: GgmlType) -> &'static [usize] {
    use GgmlType::*;
    match ty {
        Q4_1 | Q5_1 | Q4K | Q5K => &[0, 2],
        Q2K => &[80, 82],
        Q3K => &[108],
        Q6K => &[208],
        _ => &[0], // Q4_0, Q5_0, Q8_0, IQ4_NL
    }
}

/// `ggml_validate_row_data` for the fp16 scales: the first block with a NaN
/// or infinite one is an error.
fn validate(ty: GgmlType, out: &[u8]) -> Result<(), CodecError> {
    let fields = fp16_fields(ty);
    for (block, b) in out.chunks_exact(ty.type_size()).enumerate() {
        for &off in fields {
            let h = half::f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]]));
            if !h.is_finite() {
                return Err(CodecError::NonFiniteScale {
                    ty,
                    block,
                    value: fp16_to_fp32(h),
                });
            }
        }
    }
    Ok(())
}

/// One row (already checked) into `out` (its bytes).
fn quantize_row(ty: GgmlType, x: &[f32], weights: Option<&[f32]>, out: &mut [u8]) {
    use GgmlType::*;
    match (ty, weights) {
        // Q8_0 has no weighted quantizer (`quantize_q8_0` ignores them).
        (Q8_0, _) => blocks(x, out, quant::q8_0),
        (Q4_0, None) => blocks(x, out, quant::q4_0),
        (Q4_1, None) => blocks(x, out, quant::q4_1),
        (Q5_0, None) => blocks(x, out, quant::q5_0),
        (Q5_1, None) => blocks(x, out, quant::q5_1),
        (IQ4NL, None) => blocks(x, out, quant::iq4_nl),
        (Q2K, None) => blocks(x, out, quant::q2_k),
        (Q3K, None) => blocks(x, out, quant::q3_k),
        (Q4K, None) => blocks(x, out, quant::q4_k),
        (Q5K, None) => blocks(x, out, quant::q5_k),
        (Q6K, None) => blocks(x, out, quant::q6_k),
        (Q4_0, Some(qw)) => q4_0_row(x, qw, out),
        (Q4_1, Some(qw)) => q4_1_row(x, qw, out),
        (Q5_0, Some(qw)) => q5_0_row(x, qw, out),
        (Q5_1, Some(qw)) => q5_1_row(x, qw, out),
        (IQ4NL, Some(qw)) => weighted_blocks(x, qw, out, iq4_nl),
        (Q2K, Some(qw)) => weighted_blocks(x, qw, out, q2_k),
        (Q3K, Some(qw)) => weighted_blocks(x, qw, out, q3_k),
        (Q4K, Some(qw)) => weighted_blocks(x, qw, out, q4_k),
        (Q5K, Some(qw)) => weighted_blocks(x, qw, out, q5_k),
        (Q6K, Some(qw)) => weighted_blocks(x, qw, out, q6_k),
        _ => unreachable!("checked against WEIGHTED_TYPES"),
    }
}

fn store<B: Pod>(out: &mut [u8], b: &B) {
    out.copy_from_slice(bytemuck::bytes_of(b));
}

/// Blocks quantized one by one, without weights.
fn blocks<B: Block>(x: &[f32], out: &mut [u8], f: fn(&[f32]) -> B) {
    for (xb, ob) in x
        .chunks_exact(B::ELEMS)
        .zip(out.chunks_exact_mut(size_of::<B>()))
    {
        store(ob, &f(xb));
    }
}

/// Blocks quantized one by one with their slice of the weights (the types
/// whose weighting only looks at the block itself).
fn weighted_blocks<B: Block>(x: &[f32], qw: &[f32], out: &mut [u8], f: fn(&[f32], &[f32]) -> B) {
    for ((xb, wb), ob) in x
        .chunks_exact(B::ELEMS)
        .zip(qw.chunks_exact(B::ELEMS))
        .zip(out.chunks_exact_mut(size_of::<B>()))
    {
        store(ob, &f(xb, wb));
    }
}

// --------------------------------------------------------------------------
// scale searches

/// `make_qx_quants` with `rmse_type = 1` and importance weights `qw`:
/// symmetric levels `L` in `0..2·nmax` (offset by `nmax`), the scale refit
/// by weighted least squares over 19 trial scales `-(nmax + 0.1·is)/max`.
/// Returns the scale.
fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8], qw: &[f32]) -> f32 {
    let n = x.len();
    let (l_out, qw) = (&mut l_out[..n], &qw[..n]);
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for ((lo, &xi), &w) in l_out.iter_mut().zip(x).zip(qw) {
        let l = clamp(nearest_int(iscale * xi));
        *lo = (l + nmax) as i8;
        sumlx += w * xi * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    // `suml2 ? ... : 0` (a NaN counts as true)
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for (&xi, &w) in x.iter().zip(qw) {
            let l = clamp(nearest_int(iscale * xi));
            sumlx += w * xi * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (lo, &xi) in l_out.iter_mut().zip(x) {
                *lo = (nmax + clamp(nearest_int(iscale * xi))) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `make_qkx3_quants(n, nmax, x, weights, L, &the_min, Laux, -0.9f, 0.05f,
/// 36, false)` with non-NULL weights, as every weighted quantizer calls it.
/// For finite input this is `make_qkx2_quants` line for line: the only
/// difference, `max <= min` instead of `max == min` for the degenerate case,
/// cannot tell apart once `min` has been clamped to at most 0 and `max` is
/// the largest element. Returns `(scale, the_min)`.
fn make_qkx3_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    laux: &mut [u8],
) -> (f32, f32) {
    make_qkx2_quants(nmax, x, weights, l_out, laux, -0.9, 0.05, 36, false)
}

/// `make_qp_quants`: quantizes non-negative values `x` (sub-block scales or
/// mins) to levels `0..=nmax` of one positive scale, weighted by
/// `quant_weights`: the best of 9 trial scales around `nmax/max` by
/// weighted squared error, then up to 5 sweeps of coordinate descent on the
/// least-squares fit. Returns the scale.
///
/// The C code stores levels in `uint8_t` and only clamps them from above;
/// a (never expected) negative level wraps as it does in C.
fn make_qp_quants(nmax: i32, x: &[f32], l_out: &mut [u8], quant_weights: &[f32]) -> f32 {
    let n = x.len();
    let (l_out, qw) = (&mut l_out[..n], &quant_weights[..n]);
    let mut max = 0.0f32;
    for &v in x {
        // MAX(max, x[i])
        max = if max > v { max } else { v };
    }
    if max == 0.0 {
        l_out.fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    for (lo, &xi) in l_out.iter_mut().zip(x) {
        *lo = nearest_int(iscale * xi) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for ((&lo, &xi), &w) in l_out.iter().zip(x).zip(qw) {
        let diff = xi - scale * lo as f32;
        best_mse += w * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for (&xi, &w) in x.iter().zip(qw) {
            let l = nearest_int(iscale_is * xi).min(nmax);
            let diff = xi - scale_is * l as f32;
            mse += w * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for ((lo, &xi), &w) in l_out.iter_mut().zip(x).zip(qw) {
        let l = nearest_int(iscale * xi).min(nmax);
        *lo = l as u8;
        sumlx += w * xi * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for ((lo, &xi), &w) in l_out.iter_mut().zip(x).zip(qw) {
            let li = *lo as f32;
            let mut slx = sumlx - w * xi * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(xi * sl2 / slx).min(nmax);
                if new_l != *lo as i32 {
                    slx += w * xi * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *lo = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    sumlx / suml2
}

/// The weights `qw[j] · sqrtf(sigma2 + x[j]²)` every impl quantizer uses.
fn element_weights(x: &[f32], qw: &[f32], sigma2: f32, out: &mut [f32]) {
    for ((o, &xj), &q) in out.iter_mut().zip(x).zip(qw) {
        *o = q * (sigma2 + xj * xj).sqrt();
    }
}

fn sum_sq(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s
}

fn sum(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v;
    }
    s
}

// --------------------------------------------------------------------------
// 32-element blocks: σ² is the mean square of the whole row

/// Packs 32 levels `0..16` as Q4_0/Q4_1/IQ4_NL do: `L[j] | L[j+16] << 4`.
fn pack_nibbles(l: &[u8; 32]) -> [u8; 16] {
    let mut qs = [0u8; 16];
    for (j, q) in qs.iter_mut().enumerate() {
        *q = l[j] | (l[j + 16] << 4);
    }
    qs
}

/// Packs 32 levels `0..32` as Q5_0/Q5_1 do: low nibbles like
/// [`pack_nibbles`], the fifth bit of element j in bit j of `qh`.
fn pack_5bit(l: &[u8; 32]) -> ([u8; 16], [u8; 4]) {
    let mut qs = [0u8; 16];
    let mut qh = 0u32;
    for (j, q) in qs.iter_mut().enumerate() {
        let (xi0, xi1) = (l[j], l[j + 16]);
        *q = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= (((xi0 & 0x10) >> 4) as u32) << j;
        qh |= (((xi1 & 0x10) >> 4) as u32) << (j + 16);
    }
    (qs, qh.to_le_bytes())
}

/// `sum_x2 / n_per_row` of `quantize_row_q4_0_impl` and friends.
fn row_sigma2(x: &[f32]) -> f32 {
    sum_sq(x) / x.len() as f32
}

/// Levels as unsigned bytes (`make_qx_quants` returns them offset to >= 0).
fn to_u8(l: &[i8; 32]) -> [u8; 32] {
    l.map(|v| v as u8)
}

/// `quantize_row_q4_0_impl` (with weights)
fn q4_0_row(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let sigma2 = row_sigma2(x);
    let mut weight = [0f32; QK4_0];
    let mut l = [0i8; QK4_0];
    for ((xb, wb), ob) in x
        .chunks_exact(QK4_0)
        .zip(qw.chunks_exact(QK4_0))
        .zip(out.chunks_exact_mut(size_of::<BlockQ4_0>()))
    {
        element_weights(xb, wb, sigma2, &mut weight);
        let d = make_qx_quants(8, xb, &mut l, &weight);
        let b = BlockQ4_0 {
            d: fp32_to_fp16(d),
            qs: pack_nibbles(&to_u8(&l)),
        };
        store(ob, &b);
    }
}

/// `quantize_row_q4_1_impl` (with weights)
fn q4_1_row(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let sigma2 = row_sigma2(x);
    let mut weight = [0f32; QK4_1];
    let (mut l, mut laux) = ([0u8; QK4_1], [0u8; QK4_1]);
    for ((xb, wb), ob) in x
        .chunks_exact(QK4_1)
        .zip(qw.chunks_exact(QK4_1))
        .zip(out.chunks_exact_mut(size_of::<BlockQ4_1>()))
    {
        element_weights(xb, wb, sigma2, &mut weight);
        let (d, min) = make_qkx3_quants(15, xb, &weight, &mut l, &mut laux);
        let b = BlockQ4_1 {
            d: fp32_to_fp16(d),
            m: fp32_to_fp16(-min),
            qs: pack_nibbles(&l),
        };
        store(ob, &b);
    }
}

/// `quantize_row_q5_0_impl` (with weights)
fn q5_0_row(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let sigma2 = row_sigma2(x);
    let mut weight = [0f32; QK5_0];
    let mut l = [0i8; QK5_0];
    for ((xb, wb), ob) in x
        .chunks_exact(QK5_0)
        .zip(qw.chunks_exact(QK5_0))
        .zip(out.chunks_exact_mut(size_of::<BlockQ5_0>()))
    {
        element_weights(xb, wb, sigma2, &mut weight);
        let d = make_qx_quants(16, xb, &mut l, &weight);
        let (qs, qh) = pack_5bit(&to_u8(&l));
        let b = BlockQ5_0 {
            d: fp32_to_fp16(d),
            qh,
            qs,
        };
        store(ob, &b);
    }
}

/// `quantize_row_q5_1_impl` (with weights)
fn q5_1_row(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let sigma2 = row_sigma2(x);
    let mut weight = [0f32; QK5_1];
    let (mut l, mut laux) = ([0u8; QK5_1], [0u8; QK5_1]);
    for ((xb, wb), ob) in x
        .chunks_exact(QK5_1)
        .zip(qw.chunks_exact(QK5_1))
        .zip(out.chunks_exact_mut(size_of::<BlockQ5_1>()))
    {
        element_weights(xb, wb, sigma2, &mut weight);
        let (d, min) = make_qkx3_quants(31, xb, &weight, &mut l, &mut laux);
        let (qs, qh) = pack_5bit(&l);
        let b = BlockQ5_1 {
            d: fp32_to_fp16(d),
            m: fp32_to_fp16(-min),
            qh,
            qs,
        };
        store(ob, &b);
    }
}

/// `quantize_iq4_nl` with weights: `quantize_row_iq4_nl_impl(QK4_NL, 32,
/// ..., qw, ntry = 7)` on one block, σ² = 2·mean(x²) of the block. The same
/// search as [`quant::iq4_nl`] with weights `qw · sqrt(σ² + x²)` instead of
/// x².
fn iq4_nl(x: &[f32], qw: &[f32]) -> BlockIq4Nl {
    const NTRY: i32 = 7;
    let values = &KVALUES_F32;
    let mut sigma2 = sum_sq(x);
    sigma2 *= 2.0 / QK4_NL as f32;
    let mut weight = [0f32; QK4_NL];
    element_weights(x, qw, sigma2, &mut weight);
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    let scale = if amax < GROUP_MAX_EPS {
        0.0
    } else {
        let mut d = -max / values[0];
        let mut id = 1.0 / d;
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for (&xj, &w) in x.iter().zip(&weight) {
            let q = values[best_index_int8(id * xj) as usize];
            sumqx += w * q * xj;
            sumq2 += w * q * q;
        }
        d = sumqx / sumq2;
        let mut best = d * sumqx;
        for itry in -NTRY..=NTRY {
            id = (itry + KVALUES_IQ4NL[0] as i32) as f32 / max;
            sumqx = 0.0;
            sumq2 = 0.0;
            for (&xj, &w) in x.iter().zip(&weight) {
                let q = values[best_index_int8(id * xj) as usize];
                sumqx += w * q * xj;
                sumq2 += w * q * q;
            }
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        d
    };
    // One block per super-block: d is stored as is and every element
    // re-assigned against it.
    let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let mut l = [0u8; QK4_NL];
    for (lj, &xj) in l.iter_mut().zip(x) {
        *lj = best_index_int8(id * xj);
    }
    BlockIq4Nl {
        d: fp32_to_fp16(scale),
        qs: pack_nibbles(&l),
    }
}

// --------------------------------------------------------------------------
// k-quants: one super-block of 256 at a time

/// `quantize_row_q2_K_impl` (one super-block): asymmetric 2-bit levels per
/// sub-block of 16 by `make_qkx3_quants`, σ² = mean(x²); 4-bit sub-block
/// scales and mins by `make_qp_quants` weighted by the sub-block weight sums.
fn q2_k(x: &[f32], qw: &[f32]) -> BlockQ2K {
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 16];
    let mut mins = [0f32; QK_K / 16];
    let mut scales = [0f32; QK_K / 16];
    let mut sw = [0f32; QK_K / 16];
    let mut weight = [0f32; 16];
    let (mut ls, mut lm) = ([0u8; QK_K / 16], [0u8; QK_K / 16]);

    let sigma2 = sum_sq(x) / QK_K as f32;
    for j in 0..QK_K / 16 {
        let xs = &x[16 * j..16 * j + 16];
        element_weights(xs, &qw[16 * j..16 * j + 16], sigma2, &mut weight);
        sw[j] = sum(&weight);
        (scales[j], mins[j]) =
            make_qkx3_quants(3, xs, &weight, &mut l[16 * j..16 * j + 16], &mut laux);
    }
    let dm = make_qp_quants(15, &scales, &mut ls, &sw);
    let mm = make_qp_quants(15, &mins, &mut lm, &sw);

    let mut y = BlockQ2K {
        scales: [0; QK_K / 16],
        qs: [0; QK_K / 4],
        d: fp32_to_fp16(dm),
        dmin: fp32_to_fp16(mm),
    };
    let (dm, mm) = (fp16_to_fp32(y.d), fp16_to_fp32(y.dmin));
    for (s, (&a, &b)) in y.scales.iter_mut().zip(ls.iter().zip(&lm)) {
        *s = a | (b << 4);
    }
    for j in 0..QK_K / 16 {
        let d = dm * (y.scales[j] & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let m = mm * (y.scales[j] >> 4) as f32;
        for ii in 0..16 {
            let q = nearest_int((x[16 * j + ii] + m) / d);
            l[16 * j + ii] = q.clamp(0, 3) as u8;
        }
    }
    pack_2bit(&l, &mut y.qs);
    y
}

/// `quantize_row_q3_K_impl` (one super-block, with weights): symmetric
/// 3-bit levels per sub-block of 16 by weighted `make_qx_quants`,
/// σ² = 2·mean(x²); the 16 sub-block scales quantized to 6 bits by
/// `make_qx_quants` weighted by the sub-block weight sums.
fn q3_k(x: &[f32], qw: &[f32]) -> BlockQ3K {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let mut weight = [0f32; 16];
    let mut sw = [0f32; QK_K / 16];
    let mut ls = [0i8; QK_K / 16];

    let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
    for j in 0..QK_K / 16 {
        let xs = &x[16 * j..16 * j + 16];
        element_weights(xs, &qw[16 * j..16 * j + 16], sigma2, &mut weight);
        sw[j] = sum(&weight);
        scales[j] = make_qx_quants(4, xs, &mut l[16 * j..16 * j + 16], &weight);
    }

    let mut y = BlockQ3K {
        hmask: [0; QK_K / 8],
        qs: [0; QK_K / 4],
        scales: [0; 12],
        d: Default::default(),
    };
    let d_block = make_qx_quants(32, &scales, &mut ls, &sw);
    for (j, &lj) in ls.iter().enumerate() {
        let mut l = lj as i32;
        if j < 8 {
            y.scales[j] = (l & 0xF) as u8;
        } else {
            y.scales[j - 8] |= ((l & 0xF) << 4) as u8;
        }
        l >>= 4;
        y.scales[j % 4 + 8] |= (l << (2 * (j / 4))) as u8;
    }
    y.d = fp32_to_fp16(d_block);

    let yd = fp16_to_fp32(y.d);
    let sc = q3k_scales(&y.scales);
    for j in 0..QK_K / 16 {
        let d = yd * sc[j] as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-4, 3);
            l[16 * j + ii] = (q + 4) as i8;
        }
    }

    // High bit of the first 32 levels into bit 0 of hmask[0..32], the next
    // 32 into bit 1, and so on.
    let mut lu = [0u8; QK_K];
    for (j, (u, &v)) in lu.iter_mut().zip(&l).enumerate() {
        let mut v = v as u8;
        if v > 3 {
            y.hmask[j % (QK_K / 8)] |= 1 << (j / (QK_K / 8));
            v -= 4;
        }
        *u = v;
    }
    pack_2bit(&lu, &mut y.qs);
    y
}

/// The shared part of `quantize_row_q4_K_impl` / `quantize_row_q5_K_impl`
/// (one super-block, with weights): asymmetric levels per sub-block of 32
/// by `make_qkx3_quants`, σ² = 2·mean(x²); 6-bit scales and mins by
/// `make_qp_quants` weighted by the sub-block weight sums (Q5_K clamps them
/// to 63, Q4_K does not: `clamp63`); every element re-quantized with the
/// stored scale and min. Returns d, dmin, packed scales and the levels.
fn qkx_k_impl(
    x: &[f32],
    qw: &[f32],
    nmax: i32,
    clamp63: bool,
) -> (half::f16, half::f16, [u8; K_SCALE_SIZE], [u8; QK_K]) {
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let (mut ls, mut lm) = ([0u8; QK_K / 32], [0u8; QK_K / 32]);
    let mut weights = [0f32; 32];
    let mut sw = [0f32; QK_K / 32];
    let mut mins = [0f32; QK_K / 32];
    let mut scales = [0f32; QK_K / 32];

    let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        element_weights(xs, &qw[32 * j..32 * j + 32], sigma2, &mut weights);
        sw[j] = sum(&weights);
        (scales[j], mins[j]) =
            make_qkx3_quants(nmax, xs, &weights, &mut l[32 * j..32 * j + 32], &mut laux);
    }
    let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
    let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
    let mut packed = [0u8; K_SCALE_SIZE];
    for j in 0..QK_K / 32 {
        let (s, m) = if clamp63 {
            (ls[j].min(63), lm[j].min(63))
        } else {
            (ls[j], lm[j])
        };
        pack_scale_min_k4(j, s, m, &mut packed);
    }
    let d = fp32_to_fp16(d_block);
    let dmin = fp32_to_fp16(m_block);

    let (yd, ydmin) = (fp16_to_fp32(d), fp16_to_fp32(dmin));
    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, &packed);
        let d = yd * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = ydmin * m as f32;
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / d);
            l[32 * j + ii] = q.clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed, l)
}

/// `quantize_row_q4_K_impl` (one super-block, with weights)
fn q4_k(x: &[f32], qw: &[f32]) -> BlockQ4K {
    let (d, dmin, scales, l) = qkx_k_impl(x, qw, 15, false);
    let mut qs = [0u8; QK_K / 2];
    for (k, q) in qs.chunks_exact_mut(32).enumerate() {
        let j = 64 * k;
        for (i, b) in q.iter_mut().enumerate() {
            *b = l[j + i] | (l[j + i + 32] << 4);
        }
    }
    BlockQ4K {
        d,
        dmin,
        scales,
        qs,
    }
}

/// `quantize_row_q5_K_impl` (one super-block, with weights)
fn q5_k(x: &[f32], qw: &[f32]) -> BlockQ5K {
    let (d, dmin, scales, l) = qkx_k_impl(x, qw, 31, true);
    let mut qs = [0u8; QK_K / 2];
    let mut qh = [0u8; QK_K / 8];
    let (mut m1, mut m2) = (1u8, 2u8);
    for (k, ql) in qs.chunks_exact_mut(32).enumerate() {
        let n = 64 * k;
        for (j, b) in ql.iter_mut().enumerate() {
            let mut l1 = l[n + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = l[n + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            *b = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
    BlockQ5K {
        d,
        dmin,
        scales,
        qh,
        qs,
    }
}

/// `quantize_row_q6_K_impl` (one super-block, with weights): as the
/// reference quantizer, but each sub-block's scale comes from
/// `make_qx_quants` weighted by the raw importance weights (llama.cpp left
/// the σ² weighting commented out here).
fn q6_k(x: &[f32], qw: &[f32]) -> BlockQ6K {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for (ib, s) in scales.iter_mut().enumerate() {
        let r = 16 * ib..16 * ib + 16;
        let scale = make_qx_quants(32, &x[r.clone()], &mut l[r.clone()], &qw[r]);
        *s = scale;
        let abs_scale = scale.abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    let mut y = BlockQ6K {
        ql: [0; QK_K / 2],
        qh: [0; QK_K / 4],
        scales: [0; QK_K / 16],
        d: fp32_to_fp16(0.0),
    };
    if max_abs_scale < GROUP_MAX_EPS {
        return y;
    }

    let iscale = -128.0 / max_scale;
    y.d = fp32_to_fp16(1.0 / iscale);
    for (s, &sc) in y.scales.iter_mut().zip(&scales) {
        *s = nearest_int(iscale * sc).min(127) as i8;
    }
    let yd = fp16_to_fp32(y.d);
    for j in 0..QK_K / 16 {
        let d = yd * y.scales[j] as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as i8;
        }
    }

    for (h, j) in (0..QK_K).step_by(128).enumerate() {
        let ql = &mut y.ql[64 * h..64 * h + 64];
        let qh = &mut y.qh[32 * h..32 * h + 32];
        for k in 0..32 {
            let v = |o: usize| l[j + k + o] as u8;
            ql[k] = (v(0) & 0xF) | ((v(64) & 0xF) << 4);
            ql[k + 32] = (v(32) & 0xF) | ((v(96) & 0xF) << 4);
            qh[k] = (v(0) >> 4) | ((v(32) >> 4) << 2) | ((v(64) >> 4) << 4) | ((v(96) >> 4) << 6);
        }
    }
    y
}
