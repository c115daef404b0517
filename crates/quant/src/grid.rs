//! Quantization grids: where a quantizer may put a weight.
//!
//! A weight matrix `W` is `[rows = out_features, cols = in_features]`, row-major. Every
//! format tersor writes chooses its grid parameters (scales, minimums, zero points) per
//! *group* of consecutive input columns of one row: a ggml block (32 columns) or
//! super-block (256), a GPTQ group (`group_size` columns), or the whole row
//! (per-channel). A [`Grid`] fits one group's parameters from the weights it is given,
//! then rounds single weights onto the fitted grid. GPTQ fits a group when its solver
//! reaches the group's first column, on the error-compensated weights of that moment
//! (as the GPTQ reference does for `groupsize`); round-to-nearest fits on the original
//! weights.
//!
//! Rows are independent, so solvers run rows in parallel: a grid is shared (`Sync`) and
//! the per-group state lives in [`Grid::Group`] values the solver keeps.

/// A quantization grid fitted per (row, group of columns).
pub trait Grid: Sync {
    /// The fitted parameters of one group of one row (and whatever the format's writer
    /// needs from the fit, e.g. the block's scale bytes).
    type Group: Send + Sync + Clone;

    /// Number of consecutive input columns that share grid parameters in a row.
    fn group_size(&self) -> usize;

    /// Choose a group's parameters from its current weights `w` (length `group_size`,
    /// or less for the last group of a row whose length is not a multiple of it:
    /// GPTQ checkpoints allow that, e.g. groups of 128 on rows of 576 end with 64).
    /// `importance` holds a non-negative weight per column of the group (the diagonal of
    /// `X^T X`, as llama.cpp's imatrix), or `None` to weight all columns equally.
    fn fit(&self, w: &[f32], importance: Option<&[f32]>) -> Self::Group;

    /// Round `x`, the current value of element `i` (`0..w.len()` of the fit) of a group fitted as
    /// `g`, onto the grid: returns the integer code the format stores and the dequantized
    /// value (exactly what the format's decoder will produce for that code).
    fn round(&self, g: &Self::Group, i: usize, x: f32) -> (u8, f32);
}

/// A weight matrix rounded onto a grid: what a solver returns and a writer packs.
#[derive(Clone, Debug)]
pub struct Quantized<G> {
    pub rows: usize,
    pub cols: usize,
    pub group_size: usize,
    /// Fitted groups, row-major: `groups[row * groups_per_row() + group]`.
    pub groups: Vec<G>,
    /// The code of every weight, row-major `[rows, cols]`.
    pub codes: Vec<u8>,
    /// The dequantized value of every weight, row-major `[rows, cols]`.
    pub values: Vec<f32>,
}

impl<G> Quantized<G> {
    /// Groups per row (the last one may be partial).
    pub fn groups_per_row(&self) -> usize {
        self.cols.div_ceil(self.group_size)
    }
}
