//! Block layouts of ggml's quantized types, mirroring the structs in
//! llama.cpp's `ggml/src/ggml-common.h` field for field.
//!
//! All structs are `#[repr(C)]` and `Pod`, so a block is read from (possibly
//! unaligned) file bytes with [`bytemuck::pod_read_unaligned`] and written with
//! [`bytemuck::bytes_of`]. Multi-byte fields are little-endian on disk; the
//! crate refuses to build on big-endian targets (see `lib.rs`).

use bytemuck::{Pod, Zeroable};
use half::f16;
use std::mem::size_of;

/// Elements per block of Q4_0 (`QK4_0`).
pub const QK4_0: usize = 32;
/// Elements per block of Q4_1 (`QK4_1`).
pub const QK4_1: usize = 32;
/// Elements per block of Q5_0 (`QK5_0`).
pub const QK5_0: usize = 32;
/// Elements per block of Q5_1 (`QK5_1`).
pub const QK5_1: usize = 32;
/// Elements per block of Q8_0 (`QK8_0`).
pub const QK8_0: usize = 32;
/// Elements per block of IQ4_NL (`QK4_NL`).
pub const QK4_NL: usize = 32;
/// Elements per super-block of the k-quants (`QK_K`).
pub const QK_K: usize = 256;
/// Bytes of packed 6-bit scales and mins in Q4_K / Q5_K (`K_SCALE_SIZE`).
pub const K_SCALE_SIZE: usize = 12;

/// `block_q4_0`: x = d * (q - 8), q in 0..16.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: f16,
    /// Element j in the low nibble of byte j, element j+16 in the high nibble.
    pub qs: [u8; QK4_0 / 2],
}
const _: () = assert!(size_of::<BlockQ4_0>() == 18);

/// `block_q4_1`: x = d * q + m, q in 0..16.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK4_1 / 2],
}
const _: () = assert!(size_of::<BlockQ4_1>() == 20);

/// `block_q5_0`: x = d * (q - 16), q in 0..32; the fifth bits live in `qh`
/// (a little-endian u32, bit j for element j).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK5_0 / 2],
}
const _: () = assert!(size_of::<BlockQ5_0>() == 22);

/// `block_q5_1`: x = d * q + m, q in 0..32.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK5_1 / 2],
}
const _: () = assert!(size_of::<BlockQ5_1>() == 24);

/// `block_q8_0`: x = d * q, q in -128..128.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK8_0],
}
const _: () = assert!(size_of::<BlockQ8_0>() == 34);

/// `block_iq4_nl`: x = d * `kvalues_iq4nl[q]`, q in 0..16 (nibbles as Q4_0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockIq4Nl {
    pub d: f16,
    pub qs: [u8; QK4_NL / 2],
}
const _: () = assert!(size_of::<BlockIq4Nl>() == 18);

/// `block_q2_K`: 16 sub-blocks of 16; x = d * sc * q - dmin * m, with the
/// 4-bit scale `sc` in the low and the 4-bit min `m` in the high nibble of
/// `scales[j]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}
const _: () = assert!(size_of::<BlockQ2K>() == 84);

/// `block_q3_K`: 16 sub-blocks of 16; x = d * (sc - 32) * (q - 4), the third
/// bit of q in `hmask`, the 6-bit scales packed into 12 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: f16,
}
const _: () = assert!(size_of::<BlockQ3K>() == 110);

/// `block_q4_K`: 8 sub-blocks of 32; x = d * sc * q - dmin * m with 6-bit
/// `sc`/`m` packed into `scales` (see `get_scale_min_k4`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ4K>() == 144);

/// `block_q5_K`: as Q4_K plus a fifth bit per element in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ5K>() == 176);

/// `block_q6_K`: 16 sub-blocks of 16; x = d * sc * (q - 32), q's low 4 bits
/// in `ql`, high 2 bits in `qh`, 8-bit signed scales.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}
const _: () = assert!(size_of::<BlockQ6K>() == 210);

/// `block_q8_K`: x = d * q with an fp32 `d`; `bsums` holds the sums of each
/// group of 16 quants (used by llama.cpp's dot products, not by decoding).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}
const _: () = assert!(size_of::<BlockQ8K>() == 292);

/// The non-linear 4-bit code book of IQ4_NL/IQ4_XS (`kvalues_iq4nl`,
/// ggml-quants.c).
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// A ggml block type: which [`GgmlType`](crate::GgmlType) it encodes and how
/// many elements it holds.
pub trait Block: Pod {
    /// Elements per block.
    const ELEMS: usize;
    /// The type this block belongs to.
    const TYPE: crate::GgmlType;
}

macro_rules! block {
    ($b:ty, $n:expr, $t:ident) => {
        impl Block for $b {
            const ELEMS: usize = $n;
            const TYPE: crate::GgmlType = crate::GgmlType::$t;
        }
    };
}
block!(BlockQ4_0, QK4_0, Q4_0);
block!(BlockQ4_1, QK4_1, Q4_1);
block!(BlockQ5_0, QK5_0, Q5_0);
block!(BlockQ5_1, QK5_1, Q5_1);
block!(BlockQ8_0, QK8_0, Q8_0);
block!(BlockIq4Nl, QK4_NL, IQ4NL);
block!(BlockQ2K, QK_K, Q2K);
block!(BlockQ3K, QK_K, Q3K);
block!(BlockQ4K, QK_K, Q4K);
block!(BlockQ5K, QK_K, Q5K);
block!(BlockQ6K, QK_K, Q6K);
block!(BlockQ8K, QK_K, Q8K);

/// The type table agrees with the structs (ids, block sizes, byte sizes).
#[cfg(test)]
mod tests {
    use super::*;

    fn check<B: Block>() {
        assert_eq!(B::TYPE.block_size(), B::ELEMS, "{}", B::TYPE);
        assert_eq!(B::TYPE.type_size(), size_of::<B>(), "{}", B::TYPE);
    }

    #[test]
    fn structs_match_type_table() {
        check::<BlockQ4_0>();
        check::<BlockQ4_1>();
        check::<BlockQ5_0>();
        check::<BlockQ5_1>();
        check::<BlockQ8_0>();
        check::<BlockIq4Nl>();
        check::<BlockQ2K>();
        check::<BlockQ3K>();
        check::<BlockQ4K>();
        check::<BlockQ5K>();
        check::<BlockQ6K>();
        check::<BlockQ8K>();
    }
}
