//! The public entry points: length checks, type dispatch, and the serial and
//! rayon-parallel drivers over whole blocks.

use crate::blocks::*;
use crate::fp::{bf16_bits_to_fp32, fp16_to_fp32, fp32_to_bf16_bits, fp32_to_fp16};
use crate::{dequant, quant, CodecError, GgmlType};
use rayon::prelude::*;
use std::mem::size_of;

/// A block type with its llama.cpp decoder and reference encoder.
trait Codec: Block {
    /// Decodes one block into `y` (`y.len() == ELEMS`).
    fn decode(&self, y: &mut [f32]);
    /// Encodes `x` (`x.len() == ELEMS`) into one block.
    fn encode(x: &[f32]) -> Self;
}

macro_rules! codec {
    ($b:ty, $f:ident) => {
        impl Codec for $b {
            #[inline]
            fn decode(&self, y: &mut [f32]) {
                dequant::$f(self, y)
            }
            #[inline]
            fn encode(x: &[f32]) -> Self {
                quant::$f(x)
            }
        }
    };
}
codec!(BlockQ4_0, q4_0);
codec!(BlockQ4_1, q4_1);
codec!(BlockQ5_0, q5_0);
codec!(BlockQ5_1, q5_1);
codec!(BlockQ8_0, q8_0);
codec!(BlockIq4Nl, iq4_nl);
codec!(BlockQ2K, q2_k);
codec!(BlockQ3K, q3_k);
codec!(BlockQ4K, q4_k);
codec!(BlockQ5K, q5_k);
codec!(BlockQ6K, q6_k);
codec!(BlockQ8K, q8_k);

fn decode_blocks<B: Codec>(data: &[u8], out: &mut [f32]) {
    for (bytes, y) in data
        .chunks_exact(size_of::<B>())
        .zip(out.chunks_exact_mut(B::ELEMS))
    {
        // Tensor data in a file has no alignment guarantee: copy the block out.
        let b: B = bytemuck::pod_read_unaligned(bytes);
        b.decode(y);
    }
}

fn encode_blocks<B: Codec>(src: &[f32], out: &mut [u8]) {
    for (x, bytes) in src
        .chunks_exact(B::ELEMS)
        .zip(out.chunks_exact_mut(size_of::<B>()))
    {
        bytes.copy_from_slice(bytemuck::bytes_of(&B::encode(x)));
    }
}

fn decode_f32(data: &[u8], out: &mut [f32]) {
    for (b, o) in data.chunks_exact(4).zip(out) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

fn encode_f32(src: &[f32], out: &mut [u8]) {
    for (x, b) in src.iter().zip(out.chunks_exact_mut(4)) {
        b.copy_from_slice(&x.to_le_bytes());
    }
}

/// `ggml_fp16_to_fp32_row`
fn decode_f16(data: &[u8], out: &mut [f32]) {
    for (b, o) in data.chunks_exact(2).zip(out) {
        *o = fp16_to_fp32(half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])));
    }
}

/// `ggml_fp32_to_fp16_row` (portable path)
fn encode_f16(src: &[f32], out: &mut [u8]) {
    for (x, b) in src.iter().zip(out.chunks_exact_mut(2)) {
        b.copy_from_slice(&fp32_to_fp16(*x).to_bits().to_le_bytes());
    }
}

/// `ggml_bf16_to_fp32_row`
fn decode_bf16(data: &[u8], out: &mut [f32]) {
    for (b, o) in data.chunks_exact(2).zip(out) {
        *o = bf16_bits_to_fp32(u16::from_le_bytes([b[0], b[1]]));
    }
}

/// `ggml_fp32_to_bf16_row_ref`
fn encode_bf16(src: &[f32], out: &mut [u8]) {
    for (x, b) in src.iter().zip(out.chunks_exact_mut(2)) {
        b.copy_from_slice(&fp32_to_bf16_bits(*x).to_le_bytes());
    }
}

/// The decoder and encoder of one type, over whole blocks.
#[derive(Clone, Copy)]
struct Kernels {
    decode: fn(&[u8], &mut [f32]),
    encode: fn(&[f32], &mut [u8]),
    /// Whether the encoder is a quantizer (rejects non-finite input) rather
    /// than a plain float conversion.
    quantized: bool,
}

impl Kernels {
    fn of<B: Codec>() -> Self {
        Kernels {
            decode: decode_blocks::<B>,
            encode: encode_blocks::<B>,
            quantized: true,
        }
    }
}

fn kernels(ty: GgmlType) -> Option<Kernels> {
    use GgmlType::*;
    let plain = |decode, encode| Kernels {
        decode,
        encode,
        quantized: false,
    };
    Some(match ty {
        F32 => plain(decode_f32, encode_f32),
        F16 => plain(decode_f16, encode_f16),
        BF16 => plain(decode_bf16, encode_bf16),
        Q4_0 => Kernels::of::<BlockQ4_0>(),
        Q4_1 => Kernels::of::<BlockQ4_1>(),
        Q5_0 => Kernels::of::<BlockQ5_0>(),
        Q5_1 => Kernels::of::<BlockQ5_1>(),
        Q8_0 => Kernels::of::<BlockQ8_0>(),
        IQ4NL => Kernels::of::<BlockIq4Nl>(),
        Q2K => Kernels::of::<BlockQ2K>(),
        Q3K => Kernels::of::<BlockQ3K>(),
        Q4K => Kernels::of::<BlockQ4K>(),
        Q5K => Kernels::of::<BlockQ5K>(),
        Q6K => Kernels::of::<BlockQ6K>(),
        Q8K => Kernels::of::<BlockQ8K>(),
        _ => return None,
    })
}

/// Whether [`dequantize`] handles `ty`.
pub fn can_dequantize(ty: GgmlType) -> bool {
    kernels(ty).is_some()
}

/// Whether [`quantize`] handles `ty` (the same set as [`can_dequantize`]).
pub fn can_quantize(ty: GgmlType) -> bool {
    kernels(ty).is_some()
}

/// Looks up the kernels and checks that `n_elements` is whole blocks taking
/// exactly `n_bytes`.
fn checked(
    ty: GgmlType,
    op: &'static str,
    n_elements: usize,
    n_bytes: usize,
) -> Result<Kernels, CodecError> {
    let k = kernels(ty).ok_or(CodecError::Unsupported { ty, op })?;
    let expected = bytes_for(ty, n_elements)?;
    if expected != n_bytes {
        return Err(CodecError::LengthMismatch {
            ty,
            n_elements,
            expected,
            actual: n_bytes,
        });
    }
    Ok(k)
}

/// Bytes taken by `n_elements` of `ty`, or why that is not a valid count.
pub fn bytes_for(ty: GgmlType, n_elements: usize) -> Result<usize, CodecError> {
    let block_size = ty.block_size();
    if n_elements % block_size != 0 {
        return Err(CodecError::NotWholeBlocks {
            ty,
            n_elements,
            block_size,
        });
    }
    (n_elements / block_size)
        .checked_mul(ty.type_size())
        .ok_or(CodecError::TooLarge { ty, n_elements })
}

/// Blocks per rayon task: about 16k elements, enough to amortize scheduling.
fn blocks_per_task(ty: GgmlType) -> usize {
    (16 * 1024 / ty.block_size()).max(1)
}

/// Decodes `data` (the encoding of `out.len()` elements of `ty`) into `out`,
/// bit-exactly as llama.cpp's `dequantize_row_*` / `to_float`.
///
/// Fails without touching `out` if the type is not supported, `out.len()` is
/// not a whole number of blocks, or `data` is not exactly the bytes of
/// `out.len()` elements.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
    let k = checked(ty, "decoding", out.len(), data.len())?;
    (k.decode)(data, out);
    Ok(())
}

/// [`dequantize`] into a new vector of `n_elements`. The length is checked
/// against `data` before anything is allocated.
pub fn dequantize_to_vec(
    ty: GgmlType,
    data: &[u8],
    n_elements: usize,
) -> Result<Vec<f32>, CodecError> {
    checked(ty, "decoding", n_elements, data.len())?;
    let mut out = vec![0f32; n_elements];
    dequantize(ty, data, &mut out)?;
    Ok(out)
}

/// [`dequantize`] for whole tensors: blocks are decoded on the rayon pool in
/// chunks of about 16k elements. The result is identical to [`dequantize`].
pub fn dequantize_par(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
    let k = checked(ty, "decoding", out.len(), data.len())?;
    let nb = blocks_per_task(ty);
    out.par_chunks_mut(nb * ty.block_size())
        .zip(data.par_chunks(nb * ty.type_size()))
        .for_each(|(o, d)| (k.decode)(d, o));
    Ok(())
}

fn check_finite(ty: GgmlType, k: &Kernels, src: &[f32]) -> Result<(), CodecError> {
    if k.quantized {
        if let Some((index, &value)) = src.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(CodecError::NonFinite { ty, index, value });
        }
    }
    Ok(())
}

/// Encodes `src` as `ty` into `out`, which must be exactly the bytes of
/// `src.len()` elements. See [`quantize`].
pub fn quantize_into(ty: GgmlType, src: &[f32], out: &mut [u8]) -> Result<(), CodecError> {
    let k = checked(ty, "encoding", src.len(), out.len())?;
    check_finite(ty, &k, src)?;
    (k.encode)(src, out);
    Ok(())
}

/// Encodes `src` as `ty` with llama.cpp's reference quantizer: the bytes are
/// those `ggml_quantize_chunk` writes without an importance matrix
/// (`quantize_row_*_ref`, and `quantize_iq4_nl` for IQ4_NL). Every supported
/// type quantizes each block independently, so `src` may hold any number of
/// rows back to back as long as it is whole blocks.
///
/// F32/F16/BF16 are plain conversions (F16 and BF16 round to nearest even;
/// NaN and infinity pass through as ggml converts them). The quantized types
/// reject NaN and infinity with [`CodecError::NonFinite`].
pub fn quantize(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>, CodecError> {
    let k = kernels(ty).ok_or(CodecError::Unsupported { ty, op: "encoding" })?;
    let n_bytes = bytes_for(ty, src.len())?;
    check_finite(ty, &k, src)?;
    let mut out = vec![0u8; n_bytes];
    (k.encode)(src, &mut out);
    Ok(out)
}

/// [`quantize`] with the blocks spread over the rayon pool (about 16k
/// elements per task). Blocks are independent, so the bytes are identical to
/// [`quantize`]'s.
pub fn quantize_par(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>, CodecError> {
    let k = kernels(ty).ok_or(CodecError::Unsupported { ty, op: "encoding" })?;
    let n_bytes = bytes_for(ty, src.len())?;
    if k.quantized {
        // Find the first non-finite element (same error as `quantize`).
        if let Some(index) = src.par_iter().position_first(|v| !v.is_finite()) {
            return Err(CodecError::NonFinite {
                ty,
                index,
                value: src[index],
            });
        }
    }
    let mut out = vec![0u8; n_bytes];
    let nb = blocks_per_task(ty);
    out.par_chunks_mut(nb * ty.type_size())
        .zip(src.par_chunks(nb * ty.block_size()))
        .for_each(|(o, x)| (k.encode)(x, o));
    Ok(out)
}
