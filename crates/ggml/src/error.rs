use crate::GgmlType;

/// Why a buffer could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    /// The type has no decoder/encoder in this crate.
    #[error(
        "{op} ggml type {ty} is not supported (this crate handles F32, F16, BF16, Q4_0, Q4_1, \
         Q5_0, Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and Q8_K)"
    )]
    Unsupported { ty: GgmlType, op: &'static str },

    /// The element count does not fill whole blocks.
    #[error(
        "{n_elements} elements is not a whole number of {ty} blocks \
         ({block_size} elements per block)"
    )]
    NotWholeBlocks {
        ty: GgmlType,
        n_elements: usize,
        block_size: usize,
    },

    /// The byte buffer has the wrong length for the element count.
    #[error(
        "{n_elements} {ty} elements take {expected} bytes, but the buffer holds {actual} bytes"
    )]
    LengthMismatch {
        ty: GgmlType,
        n_elements: usize,
        expected: usize,
        actual: usize,
    },

    /// The byte size of the element count overflows `usize`.
    #[error("{n_elements} {ty} elements are too many to address")]
    TooLarge { ty: GgmlType, n_elements: usize },

    /// A quantizer was given NaN or infinity (llama.cpp would silently write
    /// a meaningless block).
    #[error("cannot quantize to {ty}: input element {index} is {value}, not a finite number")]
    NonFinite {
        ty: GgmlType,
        index: usize,
        value: f32,
    },
}
