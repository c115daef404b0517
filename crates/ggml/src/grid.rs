//! [`BlockGrid`]: one quantized block whose scale fields are fixed, with a
//! free code per element. A solver such as GPTQ fits the scales once (with
//! llama.cpp's own quantizer), then picks every element's code itself,
//! needing the decoded value of a code exactly as llama.cpp will decode it.

use crate::dequant::{get_scale_min_k4, q3k_scales};
use crate::fp::fp16_to_fp32;
use crate::quant::{best_index_int8, KVALUES_F32};
use crate::quant_weighted::{quantize_weighted, WEIGHTED_TYPES};
use crate::{CodecError, GgmlType};

/// The integers -128..=127 as f32: the levels of the linear types are
/// windows of this table.
const LINEAR: [f32; 256] = {
    let mut v = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        v[i] = (i as i32 - 128) as f32;
        i += 1;
    }
    v
};

/// One block (32 elements, or 256 for the k-quants) of one row, with its
/// scale fields (d, m/dmin, sub-block scales and mins) fixed and a code per
/// element.
///
/// Element `i` decodes to `value = a_i · level(code) + b_i`, where `a_i`
/// and `b_i` come from the scale fields with the same f32 operations as
/// llama.cpp's `dequantize_row_*` (so [`value`](Self::value) is bitwise what
/// [`crate::dequantize`] gives for [`bytes`](Self::bytes)), `b_i` being
/// `-0.0` (an exact additive identity) for the symmetric types. Codes, per
/// type:
///
/// | type | code | level |
/// |------|------|-------|
/// | Q8_0 | the stored `i8` as `u8` (0..=255) | `code as i8` |
/// | Q4_0 / Q5_0 | 0..16 / 0..32 | code − 8 / code − 16 |
/// | Q4_1, Q4_K / Q5_1, Q5_K | 0..16 / 0..32 | code (minus the min via `b_i`) |
/// | IQ4_NL | 0..16 | `kvalues_iq4nl[code]` |
/// | Q2_K | 0..4 | code (minus the min via `b_i`) |
/// | Q3_K | 0..8 (2 bits in `qs`, the third in `hmask`) | code − 4 |
/// | Q6_K | 0..64 (4 bits in `ql`, 2 in `qh`) | code − 32 |
///
/// The k-quants interleave their bit planes (see `dequantize_row_q2_K`
/// etc.); [`set_code`](Self::set_code) writes element `i`'s bits where the
/// decoder reads element `i`.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockGrid {
    ty: GgmlType,
    bytes: Vec<u8>,
    codes: Vec<u8>,
    /// `a_i`: the decoded value's factor on the level.
    scale: Vec<f32>,
    /// `b_i`: added after the product (`-0.0` when the type has none).
    offset: Vec<f32>,
    /// The levels in ascending order; position `p` is code `p ^ code_xor`.
    levels: &'static [f32],
    code_xor: u8,
    /// Position of the level nearest 0 (used when every code decodes alike).
    zero_pos: usize,
}

impl BlockGrid {
    /// Fits the scales of one block `x` (exactly one block:
    /// `ty.block_size()` values) with llama.cpp's quantizer,
    /// [`quantize_weighted`] (`weights`: the block's importance weights, one
    /// per element, or `None`), and starts from the codes it chose, so that
    /// [`bytes`](Self::bytes) is at first that quantizer's block.
    ///
    /// For Q4_0, Q4_1, Q5_0 and Q5_1 with weights, llama.cpp weighs with the
    /// mean square of the whole row; a lone block only sees its own. Use
    /// [`fit_row`](Self::fit_row) to get the row's exact llama.cpp scales.
    pub fn fit(ty: GgmlType, x: &[f32], weights: Option<&[f32]>) -> Result<Self, CodecError> {
        let expected = ty.block_size();
        if WEIGHTED_TYPES.contains(&ty) && x.len() != expected {
            return Err(CodecError::BlockLength {
                ty,
                expected,
                actual: x.len(),
            });
        }
        let bytes = quantize_weighted(ty, x, expected, weights)?;
        Self::from_block(ty, &bytes)
    }

    /// Quantizes a whole row with [`quantize_weighted`] (`weights`: one per
    /// column of the row) and returns one grid per block, in order.
    pub fn fit_row(
        ty: GgmlType,
        row: &[f32],
        weights: Option<&[f32]>,
    ) -> Result<Vec<Self>, CodecError> {
        let bytes = quantize_weighted(ty, row, row.len(), weights)?;
        bytes
            .chunks_exact(ty.type_size())
            .map(|b| Self::from_block(ty, b))
            .collect()
    }

    /// A grid over an existing block's bytes: its scale fields are kept, its
    /// codes become the starting codes.
    pub fn from_block(ty: GgmlType, bytes: &[u8]) -> Result<Self, CodecError> {
        if !WEIGHTED_TYPES.contains(&ty) {
            return Err(CodecError::UnsupportedWeighted { ty });
        }
        let n = ty.block_size();
        if bytes.len() != ty.type_size() {
            return Err(CodecError::LengthMismatch {
                ty,
                n_elements: n,
                expected: ty.type_size(),
                actual: bytes.len(),
            });
        }
        let (levels, code_xor): (&'static [f32], u8) = match ty {
            GgmlType::Q8_0 => (&LINEAR, 0x80),
            GgmlType::Q4_0 => (&LINEAR[120..136], 0),
            GgmlType::Q5_0 => (&LINEAR[112..144], 0),
            GgmlType::Q4_1 | GgmlType::Q4K => (&LINEAR[128..144], 0),
            GgmlType::Q5_1 | GgmlType::Q5K => (&LINEAR[128..160], 0),
            GgmlType::Q2K => (&LINEAR[128..132], 0),
            GgmlType::Q3K => (&LINEAR[124..132], 0),
            GgmlType::Q6K => (&LINEAR[96..160], 0),
            GgmlType::IQ4NL => (&KVALUES_F32, 0),
            _ => unreachable!("checked against WEIGHTED_TYPES"),
        };
        let zero_pos = (0..levels.len())
            .min_by(|&p, &q| levels[p].abs().total_cmp(&levels[q].abs()))
            .unwrap_or(0);
        let mut g = BlockGrid {
            ty,
            bytes: bytes.to_vec(),
            codes: vec![0; n],
            scale: vec![0.0; n],
            offset: vec![-0.0; n],
            levels,
            code_xor,
            zero_pos,
        };
        g.read_params();
        for i in 0..n {
            g.codes[i] = get_code(ty, &g.bytes, i);
        }
        Ok(g)
    }

    /// The per-element factor and offset from the scale fields, with the
    /// f32 operations of `dequantize_row_*` (see `dequant.rs`).
    fn read_params(&mut self) {
        use GgmlType::*;
        let b = &self.bytes;
        let f16_at =
            |o: usize| fp16_to_fp32(half::f16::from_bits(u16::from_le_bytes([b[o], b[o + 1]])));
        let (scale, offset) = (&mut self.scale, &mut self.offset);
        match self.ty {
            Q4_0 | Q5_0 | Q8_0 | IQ4NL => scale.fill(f16_at(0)),
            Q4_1 | Q5_1 => {
                scale.fill(f16_at(0));
                offset.fill(f16_at(2));
            }
            Q2K => {
                let (d, min) = (f16_at(80), f16_at(82));
                for j in 0..16 {
                    let sc = b[j];
                    let dl = d * (sc & 0xF) as f32;
                    let ml = min * (sc >> 4) as f32;
                    scale[16 * j..16 * j + 16].fill(dl);
                    offset[16 * j..16 * j + 16].fill(-ml);
                }
            }
            Q3K => {
                let d_all = f16_at(108);
                let s: [u8; 12] = b[96..108].try_into().expect("12 bytes");
                for (j, &sc) in q3k_scales(&s).iter().enumerate() {
                    scale[16 * j..16 * j + 16].fill(d_all * sc as f32);
                }
            }
            Q4K | Q5K => {
                let (d, min) = (f16_at(0), f16_at(2));
                let s: [u8; 12] = b[4..16].try_into().expect("12 bytes");
                for j in 0..8 {
                    let (sc, m) = get_scale_min_k4(j, &s);
                    scale[32 * j..32 * j + 32].fill(d * sc as f32);
                    offset[32 * j..32 * j + 32].fill(-(min * m as f32));
                }
            }
            Q6K => {
                let d = f16_at(208);
                for j in 0..16 {
                    let sc = b[192 + j] as i8;
                    scale[16 * j..16 * j + 16].fill(d * sc as f32);
                }
            }
            _ => unreachable!("checked against WEIGHTED_TYPES"),
        }
    }

    /// The block's type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Elements in the block (32, or 256 for the k-quants).
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// Always false: a block has at least 32 elements.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// How many distinct codes an element can take (16 for 4-bit types, 256
    /// for Q8_0, ...).
    pub fn n_codes(&self) -> usize {
        self.levels.len()
    }

    /// The code of element `i`.
    pub fn code(&self, i: usize) -> u8 {
        self.codes[i]
    }

    /// All codes, element order.
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// The decoded value of element `i` with its current code, bitwise as
    /// [`crate::dequantize`] decodes [`bytes`](Self::bytes).
    pub fn value(&self, i: usize) -> f32 {
        self.decode(i, self.pos(self.codes[i]))
    }

    /// The block's bytes with the current codes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Sets the code of element `i` (the scale fields stay as fitted).
    ///
    /// # Panics
    /// If `i >= self.len()` or `code` is not a code of this type (see the
    /// table on [`BlockGrid`]).
    pub fn set_code(&mut self, i: usize, code: u8) {
        assert!(
            self.pos_checked(code).is_some(),
            "code {code} is out of range for {} (codes 0..{})",
            self.ty,
            self.n_codes()
        );
        self.codes[i] = code;
        set_code(self.ty, &mut self.bytes, i, code);
    }

    /// The code whose decoded value is nearest to `x` for element `i`, and
    /// that value (bitwise what decoding the block will give).
    ///
    /// When two codes are equally near, the one with the lower decoded value
    /// wins. When every code decodes alike (a zero scale) or `x` is NaN, the
    /// code of the level nearest zero is returned.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn nearest(&self, i: usize, x: f32) -> (u8, f32) {
        let (a, b) = (self.scale[i], self.offset[i]);
        let n = self.levels.len();
        let p = if a == 0.0 || x.is_nan() {
            self.zero_pos
        } else {
            let est = self.estimate((x - b) / a);
            if a > 0.0 {
                search(n, est, |p| self.decode(i, p), x)
            } else {
                // Decreasing in the level: search the mirrored order.
                n - 1 - search(n, n - 1 - est, |q| self.decode(i, n - 1 - q), x)
            }
        };
        (self.code_at(p), self.decode(i, p))
    }

    /// Decoded value of element `i` at level position `p`.
    #[inline]
    fn decode(&self, i: usize, p: usize) -> f32 {
        self.scale[i] * self.levels[p] + self.offset[i]
    }

    #[inline]
    fn code_at(&self, p: usize) -> u8 {
        p as u8 ^ self.code_xor
    }

    #[inline]
    fn pos(&self, code: u8) -> usize {
        (code ^ self.code_xor) as usize
    }

    fn pos_checked(&self, code: u8) -> Option<usize> {
        let p = self.pos(code);
        (p < self.levels.len()).then_some(p)
    }

    /// Level position nearest to level value `t` (a first guess: the search
    /// then checks it against the actual decoded values).
    #[inline]
    fn estimate(&self, t: f32) -> usize {
        let n = self.levels.len();
        if self.ty == GgmlType::IQ4NL {
            return best_index_int8(t) as usize;
        }
        let r = (t - self.levels[0]).round();
        if r.is_nan() || r < 0.0 {
            0
        } else if r >= (n - 1) as f32 {
            n - 1
        } else {
            r as usize
        }
    }
}

/// The position in `0..n` whose value `v(p)` (non-decreasing in `p`) is
/// nearest to `x`, starting from the guess `p`: walk to the last position
/// with `v(p) <= x`, then compare it with the next one. Distances are
/// compared in f64, where the difference of two f32 is exact for any values
/// within a factor 2^29 of each other.
#[inline]
fn search(n: usize, mut p: usize, v: impl Fn(usize) -> f32, x: f32) -> usize {
    while p + 1 < n && v(p + 1) <= x {
        p += 1;
    }
    while p > 0 && v(p) > x {
        p -= 1;
    }
    // Now v(p) <= x < v(p + 1), or p == 0 with x < v(0), or p == n - 1.
    let lo = v(p);
    if p + 1 < n && lo <= x {
        let d_lo = x as f64 - lo as f64;
        let d_hi = v(p + 1) as f64 - x as f64;
        if d_hi < d_lo {
            return p + 1;
        }
    }
    p
}

/// Where element `i`'s code bits live, per type (`dequantize_row_*`).
fn get_code(ty: GgmlType, b: &[u8], i: usize) -> u8 {
    use GgmlType::*;
    let nib = |off: usize| (b[off + i % 16] >> (4 * (i / 16))) & 0xF;
    let bit5 = |off: usize| (b[off + i / 8] >> (i % 8)) & 1;
    match ty {
        Q4_0 | IQ4NL => nib(2),
        Q4_1 => nib(4),
        Q5_0 => nib(6) | (bit5(2) << 4),
        Q5_1 => nib(8) | (bit5(4) << 4),
        Q8_0 => b[2 + i],
        Q2K => (b[16 + q2_byte(i)] >> q2_shift(i)) & 3,
        Q3K => {
            let low = (b[32 + q2_byte(i)] >> q2_shift(i)) & 3;
            low | (((b[i % 32] >> (i / 32)) & 1) << 2)
        }
        Q4K | Q5K => {
            let qs = if ty == Q4K { 16 } else { 48 };
            let low = (b[qs + q4k_byte(i)] >> q4k_shift(i)) & 0xF;
            if ty == Q4K {
                low
            } else {
                low | (((b[16 + i % 32] >> (i / 32)) & 1) << 4)
            }
        }
        Q6K => {
            let (ql, sl, qh, sh) = q6k_loc(i);
            ((b[ql] >> sl) & 0xF) | (((b[qh] >> sh) & 3) << 4)
        }
        _ => unreachable!("checked against WEIGHTED_TYPES"),
    }
}

/// Writes `code` (in range) as element `i`'s bits; the inverse of
/// [`get_code`].
fn set_code(ty: GgmlType, b: &mut [u8], i: usize, code: u8) {
    use GgmlType::*;
    fn put(b: &mut [u8], at: usize, shift: usize, mask: u8, v: u8) {
        b[at] = (b[at] & !(mask << shift)) | ((v & mask) << shift);
    }
    let nib_at = |off: usize| (off + i % 16, 4 * (i / 16));
    match ty {
        Q4_0 | IQ4NL | Q4_1 => {
            let (at, s) = nib_at(if ty == Q4_1 { 4 } else { 2 });
            put(b, at, s, 0xF, code);
        }
        Q5_0 | Q5_1 => {
            let (qh, qs) = if ty == Q5_0 { (2, 6) } else { (4, 8) };
            let (at, s) = nib_at(qs);
            put(b, at, s, 0xF, code);
            put(b, qh + i / 8, i % 8, 1, code >> 4);
        }
        Q8_0 => b[2 + i] = code,
        Q2K => put(b, 16 + q2_byte(i), q2_shift(i), 3, code),
        Q3K => {
            put(b, 32 + q2_byte(i), q2_shift(i), 3, code);
            put(b, i % 32, i / 32, 1, code >> 2);
        }
        Q4K => put(b, 16 + q4k_byte(i), q4k_shift(i), 0xF, code),
        Q5K => {
            put(b, 48 + q4k_byte(i), q4k_shift(i), 0xF, code);
            put(b, 16 + i % 32, i / 32, 1, code >> 4);
        }
        Q6K => {
            let (ql, sl, qh, sh) = q6k_loc(i);
            put(b, ql, sl, 0xF, code);
            put(b, qh, sh, 3, code >> 4);
        }
        _ => unreachable!("checked against WEIGHTED_TYPES"),
    }
}

/// Q2_K/Q3_K low bits: each half of 128 has 32 bytes; element `l` of plane
/// `p` (32 elements each) sits in byte `l` at bits `2p`.
#[inline]
fn q2_byte(i: usize) -> usize {
    32 * (i / 128) + i % 32
}
#[inline]
fn q2_shift(i: usize) -> usize {
    2 * ((i % 128) / 32)
}

/// Q4_K/Q5_K low nibbles: each 64 elements share 32 bytes, the first 32 in
/// the low nibbles, the next 32 in the high ones.
#[inline]
fn q4k_byte(i: usize) -> usize {
    32 * (i / 64) + i % 32
}
#[inline]
fn q4k_shift(i: usize) -> usize {
    4 * ((i % 64) / 32)
}

/// Q6_K: (ql byte, its shift, qh byte, its shift) of element `i`. Per 128
/// elements, 64 `ql` bytes and 32 `qh` bytes; quarter `k` (32 elements) of
/// the 128 uses `ql[l + 32·(k & 1)]`'s low (k < 2) or high nibble and bits
/// `2k` of `qh[l]`.
#[inline]
fn q6k_loc(i: usize) -> (usize, usize, usize, usize) {
    let (h, k, l) = (i / 128, (i % 128) / 32, i % 32);
    (
        64 * h + l + 32 * (k & 1),
        4 * (k / 2),
        128 + 32 * h + l,
        2 * k,
    )
}
