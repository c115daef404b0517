//! Hugging Face safetensors checkpoints (single file, directory, or sharded
//! `model.safetensors.index.json`) as a [`WeightSource`], read with
//! `tersor-safetensors`.

use std::path::Path;

use candle_core::{Device, Tensor};
use tersor_safetensors::SafetensorsModel;

use crate::error::{Error, Result};
use crate::weights::WeightSource;

/// A safetensors checkpoint; tensors are converted to f32 (from F32/F16/BF16/F64)
/// when requested.
#[derive(Debug)]
pub struct SafetensorsWeights {
    model: SafetensorsModel,
}

impl SafetensorsWeights {
    /// Open `path`: a `.safetensors` file, a `*.index.json`, or a directory holding
    /// `model.safetensors` or `model.safetensors.index.json`.
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self {
            model: SafetensorsModel::open(path)?,
        })
    }

    /// The underlying checkpoint.
    pub fn model(&self) -> &SafetensorsModel {
        &self.model
    }
}

impl WeightSource for SafetensorsWeights {
    fn path(&self) -> &Path {
        self.model.path()
    }

    fn names(&self) -> Vec<String> {
        self.model.names().into_iter().map(str::to_string).collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.model.info(name).map(|m| m.shape)
    }

    fn tensor_f32(&self, name: &str) -> Result<Tensor> {
        let shape = self.shape(name).ok_or_else(|| Error::MissingTensor {
            path: self.path().to_path_buf(),
            name: name.to_string(),
        })?;
        let data = self.model.to_f32(name)?;
        Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
    }
}
