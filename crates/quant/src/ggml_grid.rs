//! GPTQ onto llama.cpp's block types: the scales come from llama.cpp's quantizer, the
//! rounding from the solver.
//!
//! How a ggml block is quantized with GPTQ (the "document exactly how"):
//! 1. When the solver reaches the first column of a block (32 columns, or a 256-column
//!    super-block for k-quants), it passes the block's *current* weights — the original
//!    weights plus all error feedback from the columns already quantized — to
//!    [`BlockGrid::fit`], which runs llama.cpp's quantizer for the type on that block
//!    (`quantize_row_*_impl` with the Hessian diagonal as the importance weights, the
//!    same weighting `llama-quantize --imatrix` uses). That fixes every scale field of
//!    the block (`d`, `dmin`, the 4/6-bit sub-block scales and mins, IQ4_NL's `d`).
//! 2. Column by column, each weight is rounded to the nearest value the block can
//!    decode to with those fixed scales ([`BlockGrid::nearest`]); the rounding error is
//!    propagated to the not-yet-quantized columns through the inverse Hessian.
//! 3. The block's bytes are the fixed scale fields plus the chosen codes; decoding them
//!    with llama.cpp's `dequantize_row_*` gives exactly the values the solver used.
//!
//! With round-to-nearest on the original weights (no error feedback) step 2 returns
//! llama.cpp's own codes, so the file equals llama-quantize's.

use tersor_ggml::{BlockGrid, GgmlType};

use crate::error::{QuantError, Result};
use crate::grid::{Grid, Quantized};

/// A ggml block type as a [`Grid`].
#[derive(Clone, Copy, Debug)]
pub struct GgmlGrid {
    pub ty: GgmlType,
}

impl GgmlGrid {
    pub fn new(ty: GgmlType, row_len: usize) -> Result<Self> {
        let bs = ty.block_size();
        if !tersor_ggml::is_legal(ty, row_len) || row_len % bs != 0 {
            return Err(QuantError::Unsupported(format!(
                "type {} cannot hold rows of {row_len} values",
                ty.name()
            )));
        }
        Ok(GgmlGrid { ty })
    }

    /// The tensor's bytes in llama.cpp's layout: rows of blocks, each block its fitted
    /// scale fields plus the codes the solver chose.
    pub fn pack(&self, q: &Quantized<BlockGrid>) -> Vec<u8> {
        let gs = q.group_size;
        let mut out = Vec::with_capacity(q.groups.len() * self.ty.type_size());
        for (gi, g) in q.groups.iter().enumerate() {
            let row = gi / q.groups_per_row();
            let col0 = (gi % q.groups_per_row()) * gs;
            let mut b = g.clone();
            for i in 0..gs {
                b.set_code(i, q.codes[row * q.cols + col0 + i]);
            }
            out.extend_from_slice(b.bytes());
        }
        out
    }
}

impl Grid for GgmlGrid {
    type Group = BlockGrid;

    fn group_size(&self) -> usize {
        self.ty.block_size()
    }

    fn fit(&self, w: &[f32], importance: Option<&[f32]>) -> BlockGrid {
        // llama.cpp's weighted IQ4_NL search yields a NaN scale when every importance
        // weight of a block is zero (dead columns); use the unweighted search there.
        // Solvers check shapes and finiteness first, so the second fit cannot fail.
        BlockGrid::fit(self.ty, w, importance)
            .or_else(|_| BlockGrid::fit(self.ty, w, None))
            .expect("block fit on checked input")
    }

    fn round(&self, g: &BlockGrid, i: usize, x: f32) -> (u8, f32) {
        g.nearest(i, x)
    }
}
