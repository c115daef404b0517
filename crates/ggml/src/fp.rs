//! Scalar float conversions exactly as ggml performs them.
//!
//! The fp16 fields of every quantized block go through these, so the
//! quantizers and decoders agree bit for bit with llama.cpp's CPU code.

use half::f16;

/// fp32 → fp16, as `ggml_compute_fp32_to_fp16` (ggml-impl.h, the portable
/// path that `libggml-base` is built with): round to nearest even, overflow to
/// ±inf, subnormals kept; every NaN becomes the quiet NaN `0x7E00` with the
/// input's sign (ggml drops the payload, `half` would keep part of it).
#[inline]
pub fn fp32_to_fp16(x: f32) -> f16 {
    if x.is_nan() {
        let sign = ((x.to_bits() >> 16) & 0x8000) as u16;
        f16::from_bits(sign | 0x7E00)
    } else {
        f16::from_f32(x)
    }
}

/// fp16 → fp32, as `GGML_FP16_TO_FP32` (exact; NaNs stay NaN).
#[inline]
pub fn fp16_to_fp32(h: f16) -> f32 {
    h.to_f32()
}

/// fp32 → bf16 bits, as `ggml_compute_fp32_to_bf16` (ggml-impl.h): round to
/// nearest even on the upper 16 bits; NaN is truncated and forced quiet
/// (bit 6 of the bf16 set).
#[inline]
pub fn fp32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    // Cannot overflow: the largest non-NaN pattern is 0xff80_0000.
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// bf16 bits → fp32, as `ggml_compute_bf16_to_fp32` (a 16-bit shift, exact).
#[inline]
pub fn bf16_bits_to_fp32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 is exactly half way between two bf16 values: ties to even (1.0).
        assert_eq!(fp32_to_bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3*2^-8 is half way as well: ties to even (1 + 2^-6).
        assert_eq!(fp32_to_bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(fp32_to_bf16_bits(f32::INFINITY), 0x7f80);
        assert_eq!(fp32_to_bf16_bits(f32::MAX), 0x7f80);
        // signalling NaN 0x7f800001 → truncated 0x7f80, forced quiet → 0x7fc0.
        assert_eq!(fp32_to_bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(fp32_to_bf16_bits(f32::from_bits(0xffc1_2345)), 0xffc1);
        assert_eq!(bf16_bits_to_fp32(0x3f82), 1.0 + 1.0 / 64.0);
    }

    #[test]
    fn fp16_nan_is_ggml_canonical() {
        assert_eq!(fp32_to_fp16(f32::from_bits(0x7f80_0001)).to_bits(), 0x7e00);
        assert_eq!(fp32_to_fp16(f32::from_bits(0xffc0_1234)).to_bits(), 0xfe00);
        assert_eq!(fp32_to_fp16(65520.0).to_bits(), 0x7c00); // rounds up to inf
        assert_eq!(fp32_to_fp16(65504.0).to_bits(), 0x7bff);
        assert_eq!(fp32_to_fp16(5.960_464_5e-8).to_bits(), 0x0001); // smallest subnormal
        assert_eq!(fp32_to_fp16(2.980_232_2e-8).to_bits(), 0x0000); // half of it: ties to even
    }
}
