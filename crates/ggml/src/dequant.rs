//! Decoders, one per block type, each the Rust form of llama.cpp's
//! `dequantize_row_*` (ggml-quants.c). The arithmetic is done in f32 in the
//! same order as the C code (Rust never fuses a multiply and an add), so the
//! results are bit-identical to llama.cpp's CPU reference.

use crate::blocks::*;
use crate::fp::fp16_to_fp32;

/// Unpacks the 6-bit scale and min `j` (0..8) of a Q4_K/Q5_K block
/// (`get_scale_min_k4`).
#[inline]
pub(crate) fn get_scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Unpacks the 16 signed 6-bit scales of a Q3_K block (the `aux`/`kmask`
/// shuffle of `dequantize_row_q3_K`, written per scale): the low 4 bits of
/// scale j are nibble j of bytes 0..8, the high 2 bits come from byte
/// `8 + j % 4` at bit `2 * (j / 4)`; the stored value is offset by 32.
#[inline]
pub(crate) fn q3k_scales(s: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = (low | (high << 4)) as i8 - 32;
    }
    out
}

/// `dequantize_row_q4_0`
pub(crate) fn q4_0(b: &BlockQ4_0, y: &mut [f32]) {
    let d = fp16_to_fp32(b.d);
    let (lo, hi) = y.split_at_mut(QK4_0 / 2);
    for ((q, l), h) in b.qs.iter().zip(lo).zip(hi) {
        *l = ((q & 0x0F) as i32 - 8) as f32 * d;
        *h = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// `dequantize_row_q4_1`
pub(crate) fn q4_1(b: &BlockQ4_1, y: &mut [f32]) {
    let d = fp16_to_fp32(b.d);
    let m = fp16_to_fp32(b.m);
    let (lo, hi) = y.split_at_mut(QK4_1 / 2);
    for ((q, l), h) in b.qs.iter().zip(lo).zip(hi) {
        *l = (q & 0x0F) as f32 * d + m;
        *h = (q >> 4) as f32 * d + m;
    }
}

/// `dequantize_row_q5_0`
pub(crate) fn q5_0(b: &BlockQ5_0, y: &mut [f32]) {
    let d = fp16_to_fp32(b.d);
    let qh = u32::from_le_bytes(b.qh);
    let (lo, hi) = y.split_at_mut(QK5_0 / 2);
    for (j, ((q, l), h)) in b.qs.iter().zip(lo).zip(hi).enumerate() {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        *l = (((q & 0x0F) | xh0) as i32 - 16) as f32 * d;
        *h = (((q >> 4) | xh1) as i32 - 16) as f32 * d;
    }
}

/// `dequantize_row_q5_1`
pub(crate) fn q5_1(b: &BlockQ5_1, y: &mut [f32]) {
    let d = fp16_to_fp32(b.d);
    let m = fp16_to_fp32(b.m);
    let qh = u32::from_le_bytes(b.qh);
    let (lo, hi) = y.split_at_mut(QK5_1 / 2);
    for (j, ((q, l), h)) in b.qs.iter().zip(lo).zip(hi).enumerate() {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        *l = ((q & 0x0F) | xh0) as f32 * d + m;
        *h = ((q >> 4) | xh1) as f32 * d + m;
    }
}

/// `dequantize_row_q8_0`
pub(crate) fn q8_0(b: &BlockQ8_0, y: &mut [f32]) {
    let d = fp16_to_fp32(b.d);
    for (q, o) in b.qs.iter().zip(y) {
        *o = *q as f32 * d;
    }
}

/// `dequantize_row_iq4_nl`
pub(crate) fn iq4_nl(b: &BlockIq4Nl, y: &mut [f32]) {
    let d = fp16_to_fp32(b.d);
    let (lo, hi) = y.split_at_mut(QK4_NL / 2);
    for ((q, l), h) in b.qs.iter().zip(lo).zip(hi) {
        *l = d * KVALUES_IQ4NL[(q & 0xF) as usize] as f32;
        *h = d * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
    }
}

/// `dequantize_row_q2_K`: two halves of 128; in each, four 2-bit planes of
/// 32 bytes, each plane split into two sub-blocks of 16 with their own
/// scale/min byte.
pub(crate) fn q2_k(b: &BlockQ2K, y: &mut [f32]) {
    let d = fp16_to_fp32(b.d);
    let min = fp16_to_fp32(b.dmin);
    let mut is = 0;
    for (half, q) in y.chunks_exact_mut(128).zip(b.qs.chunks_exact(32)) {
        for (plane, out) in half.chunks_exact_mut(32).enumerate() {
            let shift = 2 * plane;
            for (sub, (o16, q16)) in out.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
                let sc = b.scales[is + sub];
                let dl = d * (sc & 0xF) as f32;
                let ml = min * (sc >> 4) as f32;
                for (o, qv) in o16.iter_mut().zip(q16) {
                    *o = dl * ((qv >> shift) & 3) as f32 - ml;
                }
            }
            is += 2;
        }
    }
}

/// `dequantize_row_q3_K`
pub(crate) fn q3_k(b: &BlockQ3K, y: &mut [f32]) {
    let d_all = fp16_to_fp32(b.d);
    let scales = q3k_scales(&b.scales);
    let mut is = 0;
    let mut m: u8 = 1;
    for (half, q) in y.chunks_exact_mut(128).zip(b.qs.chunks_exact(32)) {
        for (plane, out) in half.chunks_exact_mut(32).enumerate() {
            let shift = 2 * plane;
            for (sub, o16) in out.chunks_exact_mut(16).enumerate() {
                let dl = d_all * scales[is + sub] as f32;
                let q16 = &q[16 * sub..16 * sub + 16];
                let h16 = &b.hmask[16 * sub..16 * sub + 16];
                for ((o, qv), hv) in o16.iter_mut().zip(q16).zip(h16) {
                    let low = ((qv >> shift) & 3) as i32;
                    let sub4 = if hv & m != 0 { 0 } else { 4 };
                    *o = dl * (low - sub4) as f32;
                }
            }
            is += 2;
            m <<= 1;
        }
    }
}

/// `dequantize_row_q4_K`
pub(crate) fn q4_k(b: &BlockQ4K, y: &mut [f32]) {
    let d = fp16_to_fp32(b.d);
    let min = fp16_to_fp32(b.dmin);
    for (k, (out, q)) in y
        .chunks_exact_mut(64)
        .zip(b.qs.chunks_exact(32))
        .enumerate()
    {
        let (sc1, m1) = get_scale_min_k4(2 * k, &b.scales);
        let (sc2, m2) = get_scale_min_k4(2 * k + 1, &b.scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let (lo, hi) = out.split_at_mut(32);
        for ((l, h), qv) in lo.iter_mut().zip(hi).zip(q) {
            *l = d1 * (qv & 0xF) as f32 - m1;
            *h = d2 * (qv >> 4) as f32 - m2;
        }
    }
}

/// `dequantize_row_q5_K`
pub(crate) fn q5_k(b: &BlockQ5K, y: &mut [f32]) {
    let d = fp16_to_fp32(b.d);
    let min = fp16_to_fp32(b.dmin);
    let (mut u1, mut u2) = (1u8, 2u8);
    for (k, (out, ql)) in y
        .chunks_exact_mut(64)
        .zip(b.qs.chunks_exact(32))
        .enumerate()
    {
        let (sc1, m1) = get_scale_min_k4(2 * k, &b.scales);
        let (sc2, m2) = get_scale_min_k4(2 * k + 1, &b.scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let (lo, hi) = out.split_at_mut(32);
        for (((l, h), qv), hv) in lo.iter_mut().zip(hi).zip(ql).zip(&b.qh) {
            let h1 = if hv & u1 != 0 { 16 } else { 0 };
            let h2 = if hv & u2 != 0 { 16 } else { 0 };
            *l = d1 * ((qv & 0xF) + h1) as f32 - m1;
            *h = d2 * ((qv >> 4) + h2) as f32 - m2;
        }
        u1 <<= 2;
        u2 <<= 2;
    }
}

/// `dequantize_row_q6_K`
pub(crate) fn q6_k(b: &BlockQ6K, y: &mut [f32]) {
    let d = fp16_to_fp32(b.d);
    for (n, out) in y.chunks_exact_mut(128).enumerate() {
        let ql = &b.ql[64 * n..64 * n + 64];
        let qh = &b.qh[32 * n..32 * n + 32];
        let sc = &b.scales[8 * n..8 * n + 8];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * sc[is] as f32 * q1 as f32;
            out[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
            out[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
            out[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
        }
    }
}

/// `dequantize_row_q8_K`
pub(crate) fn q8_k(b: &BlockQ8K, y: &mut [f32]) {
    for (q, o) in b.qs.iter().zip(y) {
        *o = b.d * *q as f32;
    }
}
