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

    /// The type has no importance-weighted quantizer in this crate.
    #[error(
        "importance-weighted quantization to {ty} is not supported (only Q4_0, Q4_1, Q5_0, \
         Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K)"
    )]
    UnsupportedWeighted { ty: GgmlType },

    /// The row length is zero or not a multiple of the block size.
    #[error(
        "row length {n_per_row} is not a positive multiple of the {ty} block size {block_size}"
    )]
    BadRowLength {
        ty: GgmlType,
        n_per_row: usize,
        block_size: usize,
    },

    /// The input is not a whole number of rows.
    #[error("{n_elements} elements is not a whole number of rows of {n_per_row}")]
    NotWholeRows { n_elements: usize, n_per_row: usize },

    /// A single block was expected.
    #[error("a {ty} block holds {expected} elements, but {actual} were given")]
    BlockLength {
        ty: GgmlType,
        expected: usize,
        actual: usize,
    },

    /// The importance weights do not hold one value per column.
    #[error(
        "importance weights hold {actual} values, but a row has {n_per_row} columns \
         (one weight per column expected)"
    )]
    WeightsLength { n_per_row: usize, actual: usize },

    /// An importance weight is NaN, infinite or negative.
    #[error("importance weight {index} is {value}: weights must be finite and non-negative")]
    BadWeight { index: usize, value: f32 },

    /// llama.cpp's quantizer wrote a NaN or infinite scale, which
    /// llama-quantize rejects (`ggml_validate_row_data`).
    #[error(
        "quantizing to {ty} gave a non-finite scale ({value}) in block {block}, which llama.cpp \
         rejects as invalid; typically the importance weights of that block are all zero, or \
         the values are too large for fp16 scales"
    )]
    NonFiniteScale {
        ty: GgmlType,
        block: usize,
        value: f32,
    },
}
