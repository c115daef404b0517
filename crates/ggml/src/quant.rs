//! Encoders: llama.cpp's reference quantizers (ggml-quants.c), one per block
//! type. Each function names the C function it mirrors; the f32 arithmetic
//! follows the C expression order so the bytes come out identical to
//! `ggml_quantize_chunk` without an importance matrix.
//!
//! A few C idioms need care in Rust:
//! * `nearest_int` rounds with the 1.5·2^23 magic-number trick (ties to even,
//!   and a defined result for any input), reproduced bit for bit.
//! * Narrowing an `int` into `int8_t`/`uint8_t` wraps modulo 256 in C (gcc),
//!   which is Rust's `as i8`/`as u8` on integers.
//! * A float cast straight to `int8_t` (`(int8_t)(x + 8.5f)` in Q4_0) goes
//!   through x86's `cvttss2si`, which gives `i32::MIN` for NaN or out-of-range
//!   values: see [`c_f32_to_i32`].

use crate::blocks::*;
use crate::dequant::{get_scale_min_k4, q3k_scales};
use crate::fp::{fp16_to_fp32, fp32_to_fp16};

/// `GROUP_MAX_EPS` (ggml-quants.c): groups whose largest magnitude is below
/// this are treated as all zero.
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// `nearest_int` (ggml-quants.c): round to nearest, ties to even, by adding
/// 1.5·2^23 and reading the mantissa. Valid for |x| <= 2^22 (llama.cpp only
/// asserts this in debug builds; the trick is reproduced for any input).
#[inline]
pub(crate) fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12582912.0;
    let i = val.to_bits() as i32;
    (i & 0x007f_ffff) - 0x0040_0000
}

/// A C float → int conversion as x86-64 performs it (`cvttss2si`): truncate
/// toward zero; NaN and values outside the i32 range give `i32::MIN`.
#[inline]
pub(crate) fn c_f32_to_i32(v: f32) -> i32 {
    if v.is_nan() || !(-2147483648.0..2147483648.0).contains(&v) {
        i32::MIN
    } else {
        v as i32
    }
}

/// `quantize_row_q4_0_ref`
pub(crate) fn q4_0(x: &[f32]) -> BlockQ4_0 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0u8; QK4_0 / 2];
    for (j, q) in qs.iter_mut().enumerate() {
        let x0 = x[j] * id;
        let x1 = x[QK4_0 / 2 + j] * id;
        // MIN(15, (int8_t)(x0 + 8.5f)), stored into a uint8_t.
        let xi0 = (c_f32_to_i32(x0 + 8.5) as i8 as i32).min(15) as u8;
        let xi1 = (c_f32_to_i32(x1 + 8.5) as i8 as i32).min(15) as u8;
        *q = xi0 | (xi1 << 4);
    }
    BlockQ4_0 {
        d: fp32_to_fp16(d),
        qs,
    }
}

/// `quantize_row_q4_1_ref`
pub(crate) fn q4_1(x: &[f32]) -> BlockQ4_1 {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0u8; QK4_1 / 2];
    for (j, q) in qs.iter_mut().enumerate() {
        let x0 = (x[j] - min) * id;
        let x1 = (x[QK4_1 / 2 + j] - min) * id;
        let xi0 = (c_f32_to_i32(x0 + 0.5) as i8 as i32).min(15) as u8;
        let xi1 = (c_f32_to_i32(x1 + 0.5) as i8 as i32).min(15) as u8;
        *q = xi0 | (xi1 << 4);
    }
    BlockQ4_1 {
        d: fp32_to_fp16(d),
        m: fp32_to_fp16(min),
        qs,
    }
}

/// `quantize_row_q5_0_ref`
pub(crate) fn q5_0(x: &[f32]) -> BlockQ5_0 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0u8; QK5_0 / 2];
    let mut qh = 0u32;
    for (j, q) in qs.iter_mut().enumerate() {
        let x0 = x[j] * id;
        let x1 = x[QK5_0 / 2 + j] * id;
        let xi0 = (c_f32_to_i32(x0 + 16.5) as i8 as i32).min(31) as u8;
        let xi1 = (c_f32_to_i32(x1 + 16.5) as i8 as i32).min(31) as u8;
        *q = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= (((xi0 & 0x10) >> 4) as u32) << j;
        qh |= (((xi1 & 0x10) >> 4) as u32) << (j + QK5_0 / 2);
    }
    BlockQ5_0 {
        d: fp32_to_fp16(d),
        qh: qh.to_le_bytes(),
        qs,
    }
}

/// `quantize_row_q5_1_ref`
pub(crate) fn q5_1(x: &[f32]) -> BlockQ5_1 {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0u8; QK5_1 / 2];
    let mut qh = 0u32;
    for (j, q) in qs.iter_mut().enumerate() {
        let x0 = (x[j] - min) * id;
        let x1 = (x[QK5_1 / 2 + j] - min) * id;
        // (uint8_t)(x0 + 0.5f): no clamp in llama.cpp.
        let xi0 = c_f32_to_i32(x0 + 0.5) as u8;
        let xi1 = c_f32_to_i32(x1 + 0.5) as u8;
        *q = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= (((xi0 & 0x10) >> 4) as u32) << j;
        qh |= (((xi1 & 0x10) >> 4) as u32) << (j + QK5_1 / 2);
    }
    BlockQ5_1 {
        d: fp32_to_fp16(d),
        m: fp32_to_fp16(min),
        qh: qh.to_le_bytes(),
        qs,
    }
}

/// `quantize_row_q8_0_ref`
pub(crate) fn q8_0(x: &[f32]) -> BlockQ8_0 {
    let mut amax = 0.0f32;
    for &v in x {
        // MAX(amax, fabsf(v))
        amax = if amax > v.abs() { amax } else { v.abs() };
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; QK8_0];
    for (q, &v) in qs.iter_mut().zip(x) {
        // roundf (half away from zero), then a float → int8_t conversion.
        *q = c_f32_to_i32((v * id).round()) as i8;
    }
    BlockQ8_0 {
        d: fp32_to_fp16(d),
        qs,
    }
}

/// The IQ4_NL code book as f32 (C compares the float against the promoted
/// `int8_t`, which is exact).
pub(crate) const KVALUES_F32: [f32; 16] = {
    let mut v = [0f32; 16];
    let mut i = 0;
    while i < 16 {
        v[i] = KVALUES_IQ4NL[i] as f32;
        i += 1;
    }
    v
};

/// `best_index_int8`: index of the code-book value nearest to `x` (the
/// upper one on a tie).
///
/// llama.cpp bisects for `mu`, the first value above `x`; for `x` strictly
/// inside the code book that is the number of values `<= x`, which is
/// counted here instead (same result, and it vectorizes). A NaN `x` fails
/// every comparison in the C bisection and ends at 15, as here.
#[inline]
pub(crate) fn best_index_int8(x: f32) -> u8 {
    let val = &KVALUES_F32;
    if x <= val[0] {
        return 0;
    }
    if x >= val[15] || x.is_nan() {
        return 15;
    }
    let mu = val.iter().map(|&v| (v <= x) as usize).sum::<usize>();
    if x - val[mu - 1] < val[mu] - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

/// `quantize_iq4_nl` as `ggml_quantize_chunk` runs it without an importance
/// matrix: `quantize_row_iq4_nl_impl(QK4_NL, 32, ..., quant_weights = NULL,
/// ntry = 7)` on each block of 32. (The separate `quantize_row_iq4_nl_ref`
/// passes `ntry = -1`, a cruder search nothing in llama.cpp uses to write
/// files.) Weights are x²; the scale starts at max/-127 and is refined by a
/// least-squares fit over 15 trial scales.
pub(crate) fn iq4_nl(x: &[f32]) -> BlockIq4Nl {
    const NTRY: i32 = 7;
    let values = &KVALUES_F32;
    let mut l = [0u8; QK4_NL];
    let mut weight = [0f32; QK4_NL];
    for (w, &v) in weight.iter_mut().zip(x) {
        *w = v * v;
    }
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
        for ((lj, &xj), &w) in l.iter_mut().zip(x).zip(&weight) {
            let al = id * xj;
            *lj = best_index_int8(al);
            let q = values[*lj as usize];
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
                let al = id * xj;
                let q = values[best_index_int8(al) as usize];
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
    // One block per super-block: d is stored directly, then every element is
    // re-assigned against the final scale.
    let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    for (lj, &xj) in l.iter_mut().zip(x) {
        *lj = best_index_int8(id * xj);
    }
    let mut qs = [0u8; QK4_NL / 2];
    for (j, q) in qs.iter_mut().enumerate() {
        *q = l[j] | (l[16 + j] << 4);
    }
    BlockIq4Nl {
        d: fp32_to_fp16(scale),
        qs,
    }
}

/// `make_qx_quants` with `rmse_type = 1` and no importance weights (the only
/// form the reference quantizers use, from Q6_K): symmetric quantization of
/// `x` to `L` in `0..2*nmax` (offset by `nmax`), weighting each element by
/// x² and searching 18 scales around `nmax/max` for the best weighted fit.
/// Returns the scale.
fn make_qx_quants_rmse1(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
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
    for (lo, &xi) in l_out.iter_mut().zip(x) {
        let l = clamp(nearest_int(iscale * xi));
        *lo = (l + nmax) as i8;
        let w = xi * xi;
        sumlx += w * xi * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &xi in x {
            let l = clamp(nearest_int(iscale * xi));
            let w = xi * xi;
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

/// `make_q3_quants` with `do_rmse = true` (Q3_K): start from round-to-nearest
/// at `nmax/max`, then up to 5 sweeps of coordinate descent on the x²-weighted
/// least-squares error, moving one element at a time. `L` ends in `0..2*nmax`.
fn make_q3_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
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
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (lo, &xi) in l_out.iter_mut().zip(x) {
        let l = clamp(nearest_int(iscale * xi));
        *lo = l as i8;
        let w = xi * xi;
        sumlx += w * xi * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (lo, &xi) in l_out.iter_mut().zip(x) {
            let w = xi * xi;
            let li = *lo as f32;
            let mut slx = sumlx - w * xi * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = clamp(nearest_int(xi * sl2 / slx));
                if new_l != *lo as i32 {
                    slx += w * xi * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *lo = new_l as i8;
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
    for lo in l_out.iter_mut() {
        *lo += nmax as i8;
    }
    sumlx / suml2
}

/// `make_qkx2_quants`: asymmetric quantization x ≈ scale·L − min with L in
/// `0..=nmax`, minimizing the weighted absolute (`use_mad`) or squared error
/// over `nstep + 1` trial scales `(nmax + rmin + rdelta·is) / (max − min)`,
/// each refit by weighted least squares. Returns `(scale, min)` with `min`
/// the positive offset that is subtracted (llama.cpp's `*the_min`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    // Same-length views let the compiler drop bounds checks in the loops.
    let (weights, l_out, laux) = (&weights[..n], &mut l_out[..n], &mut laux[..n]);
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.fill(0);
        return (0.0, -min);
    }
    let err = |diff: f32| if use_mad { diff.abs() } else { diff * diff };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_mad = 0.0f32;
    for ((lo, &xi), &w) in l_out.iter_mut().zip(x).zip(weights) {
        *lo = nearest_int(iscale * (xi - min)).clamp(0, nmax) as u8;
        let diff = scale * *lo as f32 + min - xi;
        best_mad += w * err(diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for ((la, &xi), &w) in laux.iter_mut().zip(x).zip(weights) {
            let l = nearest_int(iscale * (xi - min)).clamp(0, nmax);
            *la = l as u8;
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * xi;
        }
        let dd = sum_w * sum_l2 - sum_l * sum_l;
        if dd > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / dd;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / dd;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut mad = 0.0f32;
            for ((&la, &xi), &w) in laux.iter().zip(x).zip(weights) {
                let diff = this_scale * la as f32 + this_min - xi;
                mad += w * err(diff);
            }
            if mad < best_mad {
                l_out.copy_from_slice(laux);
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Packs 256 2-bit values as Q2_K/Q3_K do: byte `j/4 + l` of each 128-half
/// holds elements `l, l+32, l+64, l+96` in bits 0-1, 2-3, 4-5, 6-7.
pub(crate) fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8; QK_K / 4]) {
    for j in (0..QK_K).step_by(128) {
        for k in 0..32 {
            qs[j / 4 + k] =
                l[j + k] | (l[j + k + 32] << 2) | (l[j + k + 64] << 4) | (l[j + k + 96] << 6);
        }
    }
}

/// `quantize_row_q2_K_ref`
pub(crate) fn q2_k(x: &[f32]) -> BlockQ2K {
    const Q4SCALE: f32 = 15.0;
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 16];
    let mut weights = [0f32; 16];
    let mut mins = [0f32; QK_K / 16];
    let mut scales = [0f32; QK_K / 16];
    let mut y = BlockQ2K {
        scales: [0; QK_K / 16],
        qs: [0; QK_K / 4],
        d: Default::default(),
        dmin: Default::default(),
    };

    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..QK_K / 16 {
        let xs = &x[16 * j..16 * j + 16];
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = v.abs();
        }
        let (s, m) = make_qkx2_quants(
            3,
            xs,
            &weights,
            &mut l[16 * j..16 * j + 16],
            &mut laux,
            -0.5,
            0.1,
            15,
            true,
        );
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }

    if max_scale > 0.0 {
        let iscale = Q4SCALE / max_scale;
        for (s, &sc) in y.scales.iter_mut().zip(&scales) {
            *s = nearest_int(iscale * sc) as u8;
        }
        y.d = fp32_to_fp16(max_scale / Q4SCALE);
    } else {
        y.scales = [0; QK_K / 16];
        y.d = fp32_to_fp16(0.0);
    }
    if max_min > 0.0 {
        let iscale = Q4SCALE / max_min;
        for (s, &m) in y.scales.iter_mut().zip(&mins) {
            *s |= (nearest_int(iscale * m) << 4) as u8;
        }
        y.dmin = fp32_to_fp16(max_min / Q4SCALE);
    } else {
        y.dmin = fp32_to_fp16(0.0);
    }
    let (yd, ydmin) = (fp16_to_fp32(y.d), fp16_to_fp32(y.dmin));
    for j in 0..QK_K / 16 {
        let d = yd * (y.scales[j] & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = ydmin * (y.scales[j] >> 4) as f32;
        for ii in 0..16 {
            let q = nearest_int((x[16 * j + ii] + dm) / d);
            l[16 * j + ii] = q.clamp(0, 3) as u8;
        }
    }
    pack_2bit(&l, &mut y.qs);
    y
}

/// `quantize_row_q3_K_ref`
pub(crate) fn q3_k(x: &[f32]) -> BlockQ3K {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let mut y = BlockQ3K {
        hmask: [0; QK_K / 8],
        qs: [0; QK_K / 4],
        scales: [0; 12],
        d: Default::default(),
    };

    let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
    for j in 0..QK_K / 16 {
        scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
        let scale = scales[j].abs();
        if scale > amax {
            amax = scale;
            max_scale = scales[j];
        }
    }

    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for (j, &s) in scales.iter().enumerate() {
            // int8_t l = nearest_int(...): narrowed before the clamp.
            let q = ((nearest_int(iscale * s) as i8).clamp(-32, 31) + 32) as u8;
            if j < 8 {
                y.scales[j] = q & 0xF;
            } else {
                y.scales[j - 8] |= (q & 0xF) << 4;
            }
            y.scales[j % 4 + 8] |= (q >> 4) << (2 * (j / 4));
        }
        y.d = fp32_to_fp16(1.0 / iscale);
    } else {
        y.d = fp32_to_fp16(0.0);
    }

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

    // High bit of the first 32 quants into bit 0 of hmask[0..32], the next
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

/// Packs Q4_K/Q5_K 6-bit scales `ls` and mins `lm` (`j` in 0..8) into the 12
/// `scales` bytes, the inverse of [`get_scale_min_k4`].
pub(crate) fn pack_scale_min_k4(j: usize, ls: u8, lm: u8, s: &mut [u8; K_SCALE_SIZE]) {
    if j < 4 {
        s[j] = ls;
        s[j + 4] = lm;
    } else {
        s[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
        s[j - 4] |= (ls >> 4) << 6;
        s[j] |= (lm >> 4) << 6;
    }
}

/// The shared first half of `quantize_row_q4_K_ref` / `quantize_row_q5_K_ref`:
/// per 32-element sub-block, weights `sqrt(mean x²) + |x|`, an asymmetric fit
/// by [`make_qkx2_quants`], then the scales and mins quantized to 6 bits
/// against their maxima, and finally every element re-quantized with the
/// stored (fp16 and 6-bit rounded) scale and min. Returns d, dmin, packed
/// scales and the levels L.
fn qkx_k(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (half::f16, half::f16, [u8; K_SCALE_SIZE], [u8; QK_K]) {
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let mut weights = [0f32; 32];
    let mut mins = [0f32; QK_K / 32];
    let mut scales = [0f32; QK_K / 32];

    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            &mut laux,
            rmin,
            rdelta,
            nstep,
            false,
        );
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }

    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; K_SCALE_SIZE];
    for j in 0..QK_K / 32 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        pack_scale_min_k4(j, ls, lm, &mut packed);
    }
    let d = fp32_to_fp16(max_scale / 63.0);
    let dmin = fp32_to_fp16(max_min / 63.0);

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

/// `quantize_row_q4_K_ref`
pub(crate) fn q4_k(x: &[f32]) -> BlockQ4K {
    let (d, dmin, scales, l) = qkx_k(x, 15, -1.0, 0.1, 20);
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

/// `quantize_row_q5_K_ref`
pub(crate) fn q5_k(x: &[f32]) -> BlockQ5K {
    let (d, dmin, scales, l) = qkx_k(x, 31, -0.5, 0.1, 15);
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

/// `quantize_row_q6_K_ref`
pub(crate) fn q6_k(x: &[f32]) -> BlockQ6K {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for ib in 0..QK_K / 16 {
        let scale =
            make_qx_quants_rmse1(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
        scales[ib] = scale;
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

/// `quantize_row_q8_K_ref`
pub(crate) fn q8_k(x: &[f32]) -> BlockQ8K {
    let mut y = BlockQ8K {
        d: 0.0,
        qs: [0; QK_K],
        bsums: [0; QK_K / 16],
    };
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax == 0.0 {
        return y;
    }
    // llama.cpp: -127 rather than -128 "for IQ2_XXS".
    let iscale = -127.0 / max;
    for (q, &v) in y.qs.iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8;
    }
    for (s, q16) in y.bsums.iter_mut().zip(y.qs.chunks_exact(16)) {
        *s = q16.iter().map(|&q| q as i32).sum::<i32>() as i16;
    }
    y.d = 1.0 / iscale;
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_ties_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-2.4), -2);
        assert_eq!(nearest_int(4194303.0), 4194303);
        assert_eq!(nearest_int(f32::NAN), 0);
    }

    /// llama.cpp's bisection, transcribed literally.
    fn best_index_bisect(val: &[i8; 16], x: f32) -> u8 {
        if x <= val[0] as f32 {
            return 0;
        }
        if x >= val[15] as f32 {
            return 15;
        }
        let (mut ml, mut mu) = (0usize, 15usize);
        while mu - ml > 1 {
            let mav = (ml + mu) / 2;
            if x < val[mav] as f32 {
                mu = mav;
            } else {
                ml = mav;
            }
        }
        if x - (val[mu - 1] as f32) < (val[mu] as f32) - x {
            (mu - 1) as u8
        } else {
            mu as u8
        }
    }

    #[test]
    fn best_index_picks_nearest_code() {
        let v = &KVALUES_IQ4NL;
        assert_eq!(best_index_int8(-1000.0), 0);
        assert_eq!(best_index_int8(1000.0), 15);
        assert_eq!(best_index_int8(0.0), 8); // 1 is nearer than -10
        assert_eq!(best_index_int8(-4.5), 8); // tie between -10 and 1: upper
        assert_eq!(best_index_int8(-4.6), 7);
        assert_eq!(best_index_int8(f32::NAN), best_index_bisect(v, f32::NAN));
        for (i, &c) in v.iter().enumerate() {
            assert_eq!(best_index_int8(c as f32) as usize, i);
        }
        // Every quarter step over the code book's span (all midpoints are
        // exact ties) and points just either side of each code and midpoint.
        let mut xs: Vec<f32> = (-560..=520).map(|k| k as f32 * 0.25).collect();
        for w in v.windows(2) {
            for c in [w[0] as f32, (w[0] as f32 + w[1] as f32) / 2.0] {
                let eps = c.abs().max(1.0) * 1e-6;
                xs.extend([c + eps, c - eps]);
            }
        }
        for x in xs {
            assert_eq!(best_index_int8(x), best_index_bisect(v, x), "x = {x}");
        }
    }

    #[test]
    fn c_cast_matches_x86() {
        assert_eq!(c_f32_to_i32(8.9), 8);
        assert_eq!(c_f32_to_i32(-0.7), 0);
        assert_eq!(c_f32_to_i32(f32::INFINITY), i32::MIN);
        assert_eq!(c_f32_to_i32(f32::NAN), i32::MIN);
        assert_eq!(c_f32_to_i32(3e9), i32::MIN);
    }
}
