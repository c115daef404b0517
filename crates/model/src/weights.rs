//! Where model weights come from: a GGUF file, a safetensors checkpoint, or memory.
//!
//! Every source hands out tensors as row-major f32 in PyTorch order (`[out, in]` for
//! a linear weight). For GGUF that means ggml's `ne` list reversed and quantized
//! blocks dequantized with llama.cpp's reference dequantizers (`tersor-ggml`):
//! in this project the dequantized f32 weights *are* the reference model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// A checkpoint that can list its tensors and produce each one as f32.
///
/// Implementations must be `Sync`: loaders fetch tensors in parallel.
pub trait WeightSource: Sync {
    /// The file or directory the weights come from (for error messages).
    fn path(&self) -> &Path;

    /// Names of all tensors, in the checkpoint's own naming scheme.
    fn names(&self) -> Vec<String>;

    /// Row-major (PyTorch-order) shape of a tensor, or `None` if absent.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;

    /// The tensor as a contiguous row-major f32 tensor on the CPU.
    fn tensor_f32(&self, name: &str) -> Result<Tensor>;

    /// Whether the checkpoint has a tensor of this name.
    fn contains(&self, name: &str) -> bool {
        self.shape(name).is_some()
    }

    /// Fetch a tensor and check that its shape is `shape`.
    fn load(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let found = self.shape(name).ok_or_else(|| Error::MissingTensor {
            path: self.path().to_path_buf(),
            name: name.to_string(),
        })?;
        if found != shape {
            return Err(Error::format(
                self.path(),
                format!("tensor `{name}` has shape {found:?}, expected {shape:?}"),
            ));
        }
        let t = self.tensor_f32(name)?;
        if t.dims() != shape {
            return Err(Error::format(
                self.path(),
                format!(
                    "tensor `{name}` decoded to shape {:?}, expected {shape:?}",
                    t.dims()
                ),
            ));
        }
        Ok(t)
    }

    /// Fetch many tensors in parallel (one rayon task per tensor), checking shapes.
    fn load_many(&self, wanted: &[(String, Vec<usize>)]) -> Result<Vec<Tensor>> {
        wanted
            .par_iter()
            .map(|(name, shape)| self.load(name, shape))
            .collect()
    }
}

/// An in-memory weight source (tests, synthetic models, weights produced by a compressor).
#[derive(Debug, Clone, Default)]
pub struct TensorMap {
    path: PathBuf,
    tensors: BTreeMap<String, Tensor>,
}

impl TensorMap {
    /// An empty map; `label` stands in for a path in error messages.
    pub fn new(label: impl Into<PathBuf>) -> Self {
        Self {
            path: label.into(),
            tensors: BTreeMap::new(),
        }
    }

    /// Insert a tensor (converted to contiguous f32).
    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) -> Result<()> {
        let t = t.to_dtype(candle_core::DType::F32)?.contiguous()?;
        self.tensors.insert(name.into(), t);
        Ok(())
    }

    /// Insert a tensor built from row-major data.
    pub fn insert_vec(
        &mut self,
        name: impl Into<String>,
        data: Vec<f32>,
        shape: &[usize],
    ) -> Result<()> {
        let t = Tensor::from_vec(data, shape, &Device::Cpu)?;
        self.insert(name, t)
    }

    /// The stored tensor, if any.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Iterate over `(name, tensor)` in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.tensors.iter()
    }
}

impl WeightSource for TensorMap {
    fn path(&self) -> &Path {
        &self.path
    }

    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.dims().to_vec())
    }

    fn tensor_f32(&self, name: &str) -> Result<Tensor> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| Error::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })
    }
}
