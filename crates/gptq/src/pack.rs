//! The GPTQ v1 tensor layout (`checkpoint_format: "gptq"`): packing integer codes and
//! zero points into `qweight` / `qzeros`, unpacking them, and dequantizing.
//!
//! For a linear layer with weight `[out, in]` (PyTorch order) quantized to `bits` bits
//! in `n_groups` groups of input columns, a GPTQ checkpoint stores
//!
//! | tensor    | dtype | shape                     | content                                     |
//! |-----------|-------|---------------------------|---------------------------------------------|
//! | `qweight` | I32   | `[in * bits / 32, out]`   | codes, packed along the input dimension     |
//! | `qzeros`  | I32   | `[n_groups, out * bits / 32]` | `zero - 1`, packed along the output dimension |
//! | `scales`  | F16   | `[n_groups, out]`         | one scale per (group, output)               |
//! | `g_idx`   | I32   | `[in]`                    | group of each input column                  |
//!
//! and a weight decodes as `w[o, i] = scales[g, o] * (q[o, i] - zero[g, o])` with
//! `g = g_idx[i]`, computed in fp16.
//!
//! **Packing.** Mirrors `PackableQuantLinear.pack_original` / `pack_block` in
//! GPTQModel's `gptqmodel/nn_modules/qlinear/__init__.py` (and AutoGPTQ's
//! `qlinear_cuda_old.QuantLinear.pack`). For 2, 4 and 8 bits, word `r` holds the
//! `32 / bits` values `r * pf + j` at bit `bits * j`. For 3 bits, each run of 32 values
//! fills three words in the pattern 10 | 1 | 10 | 1 | 10: values 0–9 at bits 0, 3, …, 27
//! of word 0, the low two bits of value 10 at bits 30–31 and its top bit at bit 0 of
//! word 1, values 11–20 at bits 1, 4, …, 28, the low bit of value 21 at bit 31, its two
//! high bits at bits 0–1 of word 2, and values 22–31 at bits 2, 5, …, 29. Both rules are
//! the same thing: the values form a little-endian bit stream, value `k` at stream
//! bit `k * bits`, word `w` holding stream bits `32w .. 32w + 31`. That is how this module
//! packs every width ([`put_field`] / [`get_field`]); the reference check in
//! `tools/gptq_reference/unpack.py` decodes with the reference's own 3-bit shift tables.
//!
//! **Zero points (v1).** AutoGPTQ's packer stored `zero - 1` (`zeros -= 1` before
//! packing) and every v1 loader adds the 1 back when unpacking
//! (`dequantize_weight` in `qlinear_cuda_old.py`, `convert_gptq_v1_to_v2_format_module`
//! in GPTQModel's `gptqmodel/utils/model.py`, vLLM's GPTQ kernels). A zero point of 0
//! has no portable encoding: stored as `2^bits - 1`, AutoGPTQ's CUDA kernels and vLLM
//! decode it as `2^bits`, GPTQModel's safetensors dequantizer wraps it back to 0, and
//! GPTQModel's packed-word arithmetic carries into the neighbouring field. So
//! [`QuantizedLinear::pack`] requires zero points in `1..=2^bits - 1` and
//! [`PackedLinear::unpack`] rejects the ambiguous stored value `2^bits - 1`.
//!
//! **Dequantization.** `PackableQuantLinear._dequantize_from_codes` computes
//! `scales[g_idx] * (weight - zeros[g_idx])` with fp16 scales and int8/int16 codes, an
//! fp16 product. The f32 product of an fp16 scale (11 significant bits) and an integer
//! of magnitude below 2^9 is exact, so rounding it once to fp16 reproduces the fp16
//! multiply bit for bit.

use half::f16;

use crate::error::{GptqError, Result};

/// Code widths of the GPTQ v1 layout (the widths AutoGPTQ / GPTQModel pack).
pub const SUPPORTED_BITS: [u8; 4] = [2, 3, 4, 8];

/// Bits in a packing word (GPTQ checkpoints use `pack_dtype = int32`).
const WORD_BITS: usize = 32;

/// Checks `bits` is one of [`SUPPORTED_BITS`].
pub(crate) fn check_bits(bits: u8) -> Result<()> {
    if SUPPORTED_BITS.contains(&bits) {
        Ok(())
    } else {
        Err(GptqError::invalid(format!(
            "{bits}-bit GPTQ is not supported (supported: 2, 3, 4, 8)"
        )))
    }
}

/// Values a dimension must be a multiple of to fill whole 32-bit words: `32 / bits`
/// for 2, 4 and 8 bits; 32 for 3 bits (three words per 32 values).
pub fn dim_multiple(bits: u8) -> usize {
    if bits == 3 {
        WORD_BITS
    } else {
        WORD_BITS / usize::from(bits)
    }
}

/// Words needed for `n` values of `bits` bits, or an error naming `what` when `n` does
/// not fill whole words.
fn words_for(bits: u8, n: usize, what: &str) -> Result<usize> {
    let m = dim_multiple(bits);
    if n == 0 || n % m != 0 {
        return Err(GptqError::invalid(format!(
            "{what} = {n} cannot be packed at {bits} bits: it must be a positive multiple of {m}"
        )));
    }
    Ok(n * usize::from(bits) / WORD_BITS)
}

/// ORs value `k` of a little-endian stream of `bits`-bit fields into the words
/// `words[base + w * stride]` (`w = 0, 1, …`); a field that crosses a word boundary is
/// split across two words (the 3-bit case).
#[inline]
fn put_field(words: &mut [u32], base: usize, stride: usize, k: usize, bits: u32, v: u32) {
    let p = k * bits as usize;
    let (w, s) = (p / WORD_BITS, (p % WORD_BITS) as u32);
    words[base + w * stride] |= v << s;
    if s + bits > 32 {
        words[base + (w + 1) * stride] |= v >> (32 - s);
    }
}

/// Reads value `k` of the stream [`put_field`] writes.
#[inline]
fn get_field(words: &[u32], base: usize, stride: usize, k: usize, bits: u32) -> u32 {
    let p = k * bits as usize;
    let (w, s) = (p / WORD_BITS, (p % WORD_BITS) as u32);
    let mut v = words[base + w * stride] >> s;
    if s + bits > 32 {
        v |= words[base + (w + 1) * stride] << (32 - s);
    }
    v & ((1u32 << bits) - 1)
}

/// The decoded weight: the fp16 product `scale * (q - zero)` as f32 (see the module docs).
#[inline]
pub fn decode(scale: f16, q: u8, zero: u8) -> f32 {
    f16::from_f32(scale.to_f32() * (f32::from(q) - f32::from(zero))).to_f32()
}

/// One quantized linear layer in unpacked form: what a quantizer produces and
/// [`PackedLinear::unpack`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedLinear {
    /// Code width: 2, 3, 4 or 8.
    pub bits: u8,
    /// Rows of the weight (`out_features`).
    pub out_features: usize,
    /// Columns of the weight (`in_features`).
    pub in_features: usize,
    /// Codes in `0..2^bits`, row-major `[out, in]`.
    pub codes: Vec<u8>,
    /// fp16 scales, `[n_groups, out]`.
    pub scales: Vec<f16>,
    /// Zero points in `1..2^bits` (0 has no portable v1 encoding), `[n_groups, out]`.
    pub zeros: Vec<u8>,
    /// Group of each input column, `[in]`: `i / group_size` without act-order, a
    /// permutation-dependent assignment with it (`desc_act`).
    pub g_idx: Vec<u32>,
}

/// The four checkpoint tensors of one quantized linear layer (see the module docs for
/// shapes). Values are the raw int32 words / fp16 scales as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedLinear {
    pub bits: u8,
    pub out_features: usize,
    pub in_features: usize,
    /// `[in * bits / 32, out]`.
    pub qweight: Vec<i32>,
    /// `[n_groups, out * bits / 32]`, fields hold `zero - 1`.
    pub qzeros: Vec<i32>,
    /// `[n_groups, out]`.
    pub scales: Vec<f16>,
    /// `[in]`.
    pub g_idx: Vec<i32>,
}

/// A tensor as read from a checkpoint: its shape and row-major values.
#[derive(Clone, Debug, PartialEq)]
pub struct Shaped<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

impl QuantizedLinear {
    /// The largest code, `2^bits - 1`.
    pub fn maxq(&self) -> u32 {
        (1u32 << self.bits.min(8)) - 1
    }

    /// Number of groups (rows of `scales`).
    pub fn n_groups(&self) -> usize {
        self.scales
            .len()
            .checked_div(self.out_features)
            .unwrap_or(0)
    }

    /// Checks sizes and value ranges, and that the shape can be packed.
    pub fn validate(&self) -> Result<()> {
        check_bits(self.bits)?;
        let (out, inp) = (self.out_features, self.in_features);
        words_for(self.bits, inp, "in_features")?;
        words_for(self.bits, out, "out_features")?;
        let n = out
            .checked_mul(inp)
            .ok_or_else(|| GptqError::invalid(format!("shape [{out}, {inp}] overflows")))?;
        if self.codes.len() != n {
            return Err(GptqError::invalid(format!(
                "codes has {} values, expected out * in = {out} * {inp} = {n}",
                self.codes.len()
            )));
        }
        if self.scales.is_empty() || self.scales.len() % out != 0 {
            return Err(GptqError::invalid(format!(
                "scales has {} values, expected a positive multiple of out_features = {out} \
                 ([n_groups, out])",
                self.scales.len()
            )));
        }
        if self.zeros.len() != self.scales.len() {
            return Err(GptqError::invalid(format!(
                "zeros has {} values but scales has {} (both are [n_groups, out])",
                self.zeros.len(),
                self.scales.len()
            )));
        }
        if self.g_idx.len() != inp {
            return Err(GptqError::invalid(format!(
                "g_idx has {} entries, expected in_features = {inp}",
                self.g_idx.len()
            )));
        }
        let n_groups = self.n_groups();
        if let Some((i, &g)) = self
            .g_idx
            .iter()
            .enumerate()
            .find(|(_, &g)| g as usize >= n_groups)
        {
            return Err(GptqError::invalid(format!(
                "g_idx[{i}] = {g} is out of range ({n_groups} groups)"
            )));
        }
        let maxq = self.maxq();
        if let Some(i) = self.codes.iter().position(|&q| u32::from(q) > maxq) {
            return Err(GptqError::invalid(format!(
                "code {} at [{}, {}] exceeds the {}-bit maximum {maxq}",
                self.codes[i],
                i / inp,
                i % inp,
                self.bits
            )));
        }
        if let Some(i) = self.zeros.iter().position(|&z| u32::from(z) > maxq) {
            return Err(GptqError::invalid(format!(
                "zero point {} of group {}, output {} exceeds the {}-bit maximum {maxq}",
                self.zeros[i],
                i / out,
                i % out,
                self.bits
            )));
        }
        if let Some(i) = self.zeros.iter().position(|&z| z == 0) {
            return Err(GptqError::invalid(format!(
                "zero point 0 of group {}, output {} cannot be stored: GPTQ v1 stores zero - 1, \
                 and loaders decode the resulting field 2^bits - 1 differently (AutoGPTQ/vLLM \
                 kernels as 2^bits, GPTQModel as 0); use zero points in 1..={maxq}",
                i / out,
                i % out
            )));
        }
        if let Some(i) = self.scales.iter().position(|s| !s.is_finite()) {
            return Err(GptqError::invalid(format!(
                "scale of group {}, output {} is not finite ({})",
                i / out,
                i % out,
                self.scales[i]
            )));
        }
        Ok(())
    }

    /// Packs into the checkpoint tensors (see the module docs for the layout).
    pub fn pack(&self) -> Result<PackedLinear> {
        self.validate()?;
        let bits = u32::from(self.bits);
        let (out, inp) = (self.out_features, self.in_features);
        let n_groups = self.n_groups();
        let qw_rows = words_for(self.bits, inp, "in_features")?;
        let qz_cols = words_for(self.bits, out, "out_features")?;

        // qweight[r, o]: the codes of output `o` form one stream along the input axis.
        let mut qweight = vec![0u32; qw_rows * out];
        for o in 0..out {
            let row = &self.codes[o * inp..(o + 1) * inp];
            for (i, &q) in row.iter().enumerate() {
                put_field(&mut qweight, o, out, i, bits, u32::from(q));
            }
        }
        // qzeros[g, c]: the zero points of group `g` form one stream along the output axis.
        let mut qzeros = vec![0u32; n_groups * qz_cols];
        for g in 0..n_groups {
            for o in 0..out {
                let stored = u32::from(self.zeros[g * out + o]) - 1;
                put_field(&mut qzeros, g * qz_cols, 1, o, bits, stored);
            }
        }
        Ok(PackedLinear {
            bits: self.bits,
            out_features: out,
            in_features: inp,
            qweight: qweight.into_iter().map(|w| w as i32).collect(),
            qzeros: qzeros.into_iter().map(|w| w as i32).collect(),
            scales: self.scales.clone(),
            g_idx: self.g_idx.iter().map(|&g| g as i32).collect(),
        })
    }

    /// The decoded weight, row-major `[out, in]`: `fp16(scale * (q - zero))` as f32,
    /// bit-identical to the reference's fp16 dequantization. Errors on invalid input and
    /// on a product that overflows fp16.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        self.validate()?;
        let (out, inp) = (self.out_features, self.in_features);
        let mut w = Vec::with_capacity(out * inp);
        for o in 0..out {
            for (i, &g) in self.g_idx.iter().enumerate() {
                let k = g as usize * out + o;
                let v = decode(self.scales[k], self.codes[o * inp + i], self.zeros[k]);
                if !v.is_finite() {
                    return Err(GptqError::invalid(format!(
                        "weight [{o}, {i}] = {} * ({} - {}) overflows fp16",
                        self.scales[k],
                        self.codes[o * inp + i],
                        self.zeros[k]
                    )));
                }
                w.push(v);
            }
        }
        Ok(w)
    }
}

impl PackedLinear {
    /// Builds a layer from the four tensors as read from a checkpoint, checking every
    /// shape against the others: `in = g_idx.len()`, `out = qweight.shape[1]`,
    /// `n_groups = scales.shape[0]`.
    pub fn from_tensors(
        bits: u8,
        qweight: Shaped<i32>,
        qzeros: Shaped<i32>,
        scales: Shaped<f16>,
        g_idx: Shaped<i32>,
    ) -> Result<Self> {
        check_bits(bits)?;
        let dims2 = |name: &str, s: &[usize], len: usize| -> Result<[usize; 2]> {
            match *s {
                [a, b] if a.checked_mul(b) == Some(len) => Ok([a, b]),
                [_, _] => Err(GptqError::invalid(format!(
                    "{name}: shape {s:?} does not match its {len} values"
                ))),
                _ => Err(GptqError::invalid(format!(
                    "{name}: expected a 2-D tensor, found shape {s:?}"
                ))),
            }
        };
        let [qw_rows, out] = dims2("qweight", &qweight.shape, qweight.data.len())?;
        let [qz_rows, qz_cols] = dims2("qzeros", &qzeros.shape, qzeros.data.len())?;
        let [n_groups, sc_cols] = dims2("scales", &scales.shape, scales.data.len())?;
        let inp = match *g_idx.shape {
            [n] if n == g_idx.data.len() => n,
            _ => {
                return Err(GptqError::invalid(format!(
                    "g_idx: expected a 1-D tensor, found shape {:?}",
                    g_idx.shape
                )))
            }
        };
        let want_rows = words_for(bits, inp, "in_features (g_idx length)")?;
        let want_cols = words_for(bits, out, "out_features (qweight columns)")?;
        if qw_rows != want_rows {
            return Err(GptqError::invalid(format!(
                "qweight has {qw_rows} rows, expected in_features * bits / 32 = {inp} * {bits} / 32 \
                 = {want_rows}"
            )));
        }
        if sc_cols != out || n_groups == 0 {
            return Err(GptqError::invalid(format!(
                "scales has shape {:?}, expected [n_groups > 0, out_features = {out}]",
                scales.shape
            )));
        }
        if qz_rows != n_groups || qz_cols != want_cols {
            return Err(GptqError::invalid(format!(
                "qzeros has shape {:?}, expected [n_groups, out_features * bits / 32] = \
                 [{n_groups}, {want_cols}]",
                qzeros.shape
            )));
        }
        Ok(Self {
            bits,
            out_features: out,
            in_features: inp,
            qweight: qweight.data,
            qzeros: qzeros.data,
            scales: scales.data,
            g_idx: g_idx.data,
        })
    }

    /// Number of groups (rows of `scales`).
    pub fn n_groups(&self) -> usize {
        self.scales
            .len()
            .checked_div(self.out_features)
            .unwrap_or(0)
    }

    /// `[in * bits / 32, out]`.
    pub fn qweight_shape(&self) -> [usize; 2] {
        [
            self.in_features * usize::from(self.bits) / WORD_BITS,
            self.out_features,
        ]
    }

    /// `[n_groups, out * bits / 32]`.
    pub fn qzeros_shape(&self) -> [usize; 2] {
        [
            self.n_groups(),
            self.out_features * usize::from(self.bits) / WORD_BITS,
        ]
    }

    /// `[n_groups, out]`.
    pub fn scales_shape(&self) -> [usize; 2] {
        [self.n_groups(), self.out_features]
    }

    /// Inverse of [`QuantizedLinear::pack`], with every size and value checked. Errors on
    /// a stored zero field of `2^bits - 1` (zero point 0, which loaders decode
    /// inconsistently; see the module docs).
    pub fn unpack(&self) -> Result<QuantizedLinear> {
        check_bits(self.bits)?;
        let bits = u32::from(self.bits);
        let (out, inp) = (self.out_features, self.in_features);
        let qw_rows = words_for(self.bits, inp, "in_features")?;
        let qz_cols = words_for(self.bits, out, "out_features")?;
        let n_groups = self.n_groups();
        let sizes = [
            ("qweight", self.qweight.len(), qw_rows.checked_mul(out)),
            ("scales", self.scales.len(), n_groups.checked_mul(out)),
            ("qzeros", self.qzeros.len(), n_groups.checked_mul(qz_cols)),
            ("g_idx", self.g_idx.len(), Some(inp)),
        ];
        for (name, have, want) in sizes {
            if n_groups == 0 || Some(have) != want {
                return Err(GptqError::invalid(format!(
                    "{name} has {have} values, which does not fit [{out} x {inp}] at {} bits \
                     with {} scales",
                    self.bits,
                    self.scales.len()
                )));
            }
        }
        let mut g_idx = Vec::with_capacity(inp);
        for (i, &g) in self.g_idx.iter().enumerate() {
            match u32::try_from(g) {
                Ok(g) if (g as usize) < n_groups => g_idx.push(g),
                _ => {
                    return Err(GptqError::invalid(format!(
                        "g_idx[{i}] = {g} is out of range ({n_groups} groups)"
                    )))
                }
            }
        }
        if let Some(i) = self.scales.iter().position(|s| !s.is_finite()) {
            return Err(GptqError::invalid(format!(
                "scale of group {}, output {} is not finite ({})",
                i / out,
                i % out,
                self.scales[i]
            )));
        }

        let qweight: Vec<u32> = self.qweight.iter().map(|&w| w as u32).collect();
        let mut codes = vec![0u8; out * inp];
        for o in 0..out {
            for i in 0..inp {
                codes[o * inp + i] = get_field(&qweight, o, out, i, bits) as u8;
            }
        }
        let qzeros: Vec<u32> = self.qzeros.iter().map(|&w| w as u32).collect();
        let maxq = (1u32 << bits) - 1;
        let mut zeros = vec![0u8; n_groups * out];
        for g in 0..n_groups {
            for o in 0..out {
                let stored = get_field(&qzeros, g * qz_cols, 1, o, bits);
                if stored == maxq {
                    return Err(GptqError::invalid(format!(
                        "qzeros field of group {g}, output {o} holds {maxq} (= 2^bits - 1): under \
                         the v1 convention (stored = zero - 1) that is zero point 0, which GPTQ \
                         loaders decode inconsistently (AutoGPTQ/vLLM kernels as 2^bits, \
                         GPTQModel as 0)"
                    )));
                }
                zeros[g * out + o] = (stored + 1) as u8;
            }
        }
        Ok(QuantizedLinear {
            bits: self.bits,
            out_features: out,
            in_features: inp,
            codes,
            scales: self.scales.clone(),
            zeros,
            g_idx,
        })
    }

    /// The decoded weight, row-major `[out, in]` (unpack, then
    /// [`QuantizedLinear::dequantize`]).
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        self.unpack()?.dequantize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference's explicit 3-bit scheme (`pack_original`, bits == 3) for one run of
    /// 32 values, written out as in GPTQModel, against the bit-stream rule.
    #[test]
    #[allow(clippy::needless_range_loop)] // the reference's index loops, verbatim
    fn three_bit_stream_matches_reference_pattern() {
        let vals: Vec<u32> = (0..32u32).map(|k| (k * 5 + 3) % 8).collect();
        let mut reference = [0u32; 3];
        let mut i = 0;
        for j in i..i + 10 {
            reference[0] |= vals[j] << (3 * (j - i));
        }
        i += 10;
        reference[0] |= vals[i] << 30;
        reference[1] |= (vals[i] >> 2) & 1;
        i += 1;
        for j in i..i + 10 {
            reference[1] |= vals[j] << (3 * (j - i) + 1);
        }
        i += 10;
        reference[1] |= vals[i] << 31;
        reference[2] |= (vals[i] >> 1) & 0x3;
        i += 1;
        for j in i..i + 10 {
            reference[2] |= vals[j] << (3 * (j - i) + 2);
        }
        let mut ours = [0u32; 3];
        for (k, &v) in vals.iter().enumerate() {
            put_field(&mut ours, 0, 1, k, 3, v);
        }
        assert_eq!(ours, reference);
        for (k, &v) in vals.iter().enumerate() {
            assert_eq!(get_field(&ours, 0, 1, k, 3), v, "value {k}");
        }
    }

    /// 2/4/8 bits: word r holds values r * pf + j at bit bits * j.
    #[test]
    fn word_aligned_widths_match_reference_rule() {
        for bits in [2u32, 4, 8] {
            let pf = 32 / bits as usize;
            let vals: Vec<u32> = (0..2 * pf as u32)
                .map(|k| (k * 7 + 1) % (1 << bits))
                .collect();
            let mut reference = [0u32; 2];
            for (row, word) in reference.iter_mut().enumerate() {
                for j in 0..pf {
                    *word |= vals[row * pf + j] << (bits as usize * j);
                }
            }
            let mut ours = [0u32; 2];
            for (k, &v) in vals.iter().enumerate() {
                put_field(&mut ours, 0, 1, k, bits, v);
            }
            assert_eq!(ours, reference, "{bits} bits");
        }
    }
}
