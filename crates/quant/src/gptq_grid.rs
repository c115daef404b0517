//! The grid of GPTQ checkpoints (the `auto_gptq` / HF `GPTQConfig` format): per group of
//! `group_size` input columns one fp16 scale and one integer zero point, codes of `bits`
//! bits, decoded as `scale * (q - zero)`.
//!
//! Parameters are chosen by the GPTQ reference's min-max rule, `Quantizer.find_params` in
//! `quant.py` of IST-DASLab/gptq (the `mse` grid search is not implemented). Rounding
//! works with the fp16 scale the checkpoint stores, so the values a solver sees (and
//! feeds its error compensation with) are exactly what the HF kernels decode.

use half::f16;

use crate::error::{QuantError, Result};
use crate::grid::Grid;

/// GPTQ checkpoint grid: `bits`-bit codes, one fp16 scale and one zero point per
/// `group_size` consecutive input columns of a row (`group_size == cols` is per-channel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GptqFormatGrid {
    /// Code width: 2, 3, 4 or 8 (the widths the GPTQ packers support).
    pub bits: u32,
    /// Input columns per group.
    pub group_size: usize,
    /// Symmetric grid (zero point fixed at `(maxq + 1) / 2`).
    pub sym: bool,
}

/// One fitted group of a [`GptqFormatGrid`]: what the checkpoint stores for it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqGroup {
    /// The group's scale as stored (fp16 `scales` tensor).
    pub scale: f16,
    /// The group's zero point in `0..=maxq` (packed into `qzeros`).
    pub zero: u8,
}

impl GptqFormatGrid {
    /// A validated grid: `bits` in {2, 3, 4, 8}, `group_size > 0`.
    pub fn new(bits: u32, group_size: usize, sym: bool) -> Result<Self> {
        if !matches!(bits, 2 | 3 | 4 | 8) {
            return Err(QuantError::Unsupported(format!(
                "GPTQ grid: {bits} bits is not supported (2, 3, 4 or 8)"
            )));
        }
        if group_size == 0 {
            return Err(QuantError::Shape("GPTQ grid: group_size is 0".into()));
        }
        Ok(Self {
            bits,
            group_size,
            sym,
        })
    }

    /// The largest code, `2^bits - 1` (the reference's `maxq`).
    pub fn maxq(&self) -> u32 {
        (1u32 << self.bits.min(8)) - 1
    }

    /// The value the HF kernels decode for code `q` of group `g`: an fp16 multiply
    /// `scale * (q - zero)`. The f32 product of an f16 and an integer of at most 9 bits
    /// is exact, so rounding it to f16 once gives the fp16 product bit for bit.
    pub fn decode(g: &GptqGroup, q: u8) -> f32 {
        decode_with(g.scale.to_f32(), f32::from(g.zero), f32::from(q))
    }
}

impl Grid for GptqFormatGrid {
    type Group = GptqGroup;

    fn group_size(&self) -> usize {
        self.group_size
    }

    /// `Quantizer.find_params` (min-max, `perchannel=True` over the group). `importance`
    /// is ignored: the reference's rule does not weight columns (GPTQ's error
    /// compensation is where the Hessian enters).
    fn fit(&self, w: &[f32], _importance: Option<&[f32]>) -> GptqGroup {
        let maxq = self.maxq() as f32;
        // The range always includes 0, so 0 stays representable (up to rounding of zero).
        let mut xmin = w.iter().fold(0.0f32, |m, &x| m.min(x));
        let mut xmax = w.iter().fold(0.0f32, |m, &x| m.max(x));
        if self.sym {
            xmax = xmax.max(xmin.abs());
            if xmin < 0.0 {
                xmin = -xmax;
            }
        }
        if xmin == 0.0 && xmax == 0.0 {
            xmin = -1.0;
            xmax = 1.0;
        }
        let mut scale = (xmax - xmin) / maxq;
        let mut zero = if self.sym {
            (maxq + 1.0) / 2.0
        } else {
            (-xmin / scale).round_ties_even()
        };
        // The v1 checkpoint stores `zero - 1`, so a zero point of 0 has no portable
        // encoding (loaders read it as 2^bits, as 0, or carry into the next field). A
        // group with no negative weight would get one: shift its grid up by one step
        // (zero 1) and widen the step so the largest weight still fits.
        if !self.sym && zero < 1.0 {
            zero = 1.0;
            scale = xmax / (maxq - 1.0);
        }
        GptqGroup {
            scale: to_f16_scale(scale, maxq),
            zero: zero.clamp(1.0, maxq) as u8,
        }
    }

    /// The reference's `quantize`: `q = clamp(round(x / scale) + zero, 0, maxq)` with the
    /// fp16 scale; the decoded value is the fp16 product. Because the product is rounded
    /// to fp16 (by up to `maxq · 2^-11` steps), `round(x / scale)` can miss the nearest
    /// decoded value by one step when `x` lies that close to a midpoint or beyond the
    /// grid's ends; then the two neighbours are checked too (a tie keeps the reference's
    /// code).
    fn round(&self, g: &GptqGroup, _i: usize, x: f32) -> (u8, f32) {
        let maxq = self.maxq() as f32;
        let s = g.scale.to_f32();
        let zero = f32::from(g.zero);
        let t = x / s;
        let rt = t.round_ties_even();
        let q0 = (rt + zero).clamp(0.0, maxq);
        let v0 = decode_with(s, zero, q0);
        // Fast path. fp16 rounding moves a decoded value by at most 2^-11 of itself
        // (subnormal products are multiples of the scale's 2^-24 ulp, so exact), i.e. at
        // most δ/2 = maxq·2^-11 steps. With x within 0.5 − δ steps of s·(q0 − zero) and q0
        // not clamped, v(q0) is within 0.5 − δ/2 steps and every other code at least
        // 0.5 + δ/2 away.
        if q0 == rt + zero && (t - rt).abs() < 0.5 - maxq * 2f32.powi(-10) {
            return (q0 as u8, v0);
        }
        let mut best = (q0 as u8, v0);
        let mut best_err = (x - v0).abs();
        for q in [q0 - 1.0, q0 + 1.0] {
            if !(0.0..=maxq).contains(&q) {
                continue;
            }
            let v = decode_with(s, zero, q);
            let err = (x - v).abs();
            if err < best_err {
                best = (q as u8, v);
                best_err = err;
            }
        }
        best
    }
}

/// `scale * (q - zero)` rounded once to fp16 (exact f32 product, see
/// [`GptqFormatGrid::decode`]).
fn decode_with(scale: f32, zero: f32, q: f32) -> f32 {
    f16::from_f32(scale * (q - zero)).to_f32()
}

/// The scale as the checkpoint stores it: fp16, kept positive (a scale that underflows
/// fp16 becomes the smallest subnormal) and small enough that `scale * maxq` stays finite
/// in fp16, so no code decodes to infinity. Only weights beyond fp16 range hit the cap.
fn to_f16_scale(scale: f32, maxq: f32) -> f16 {
    let mut cap = f16::from_f32(f16::MAX.to_f32() / maxq);
    while cap.to_f32() * maxq > f16::MAX.to_f32() {
        cap = f16::from_bits(cap.to_bits() - 1);
    }
    let s = f16::from_f32(scale);
    if s.to_f32() <= 0.0 {
        f16::MIN_POSITIVE_SUBNORMAL
    } else if s.to_f32() > cap.to_f32() {
        cap
    } else {
        s
    }
}
