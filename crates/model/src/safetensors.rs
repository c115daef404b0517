//! Hugging Face safetensors checkpoints (single file, directory, or sharded
//! `model.safetensors.index.json`) as a [`WeightSource`], read with
//! `tersor-safetensors`.
//!
//! GPTQ checkpoints (`quantization_config.quant_method == "gptq"` in the
//! `config.json` beside the weights) are read with `tersor-gptq`: each quantized
//! linear's `<module>.qweight/.qzeros/.scales/.g_idx` is presented as the f32
//! `<module>.weight` `[out, in]` it decodes to (the reference kernels' fp16 values).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use tersor_gptq::{GptqError, GptqModule};
use tersor_safetensors::SafetensorsModel;

use crate::error::{Error, Result};
use crate::weights::WeightSource;

/// A safetensors checkpoint; tensors are converted to f32 (from F32/F16/BF16/F64)
/// when requested, GPTQ-quantized linears dequantized.
#[derive(Debug)]
pub struct SafetensorsWeights {
    model: SafetensorsModel,
    /// GPTQ modules by the name of the weight they stand for (`<module>.weight`).
    gptq: BTreeMap<String, GptqModule>,
}

impl SafetensorsWeights {
    /// Open `path`: a `.safetensors` file, a `*.index.json`, or a directory holding
    /// `model.safetensors` or `model.safetensors.index.json`. A GPTQ
    /// `quantization_config` in the `config.json` of that directory is honoured.
    pub fn open(path: &Path) -> Result<Self> {
        let model = SafetensorsModel::open(path)?;
        let mut gptq = BTreeMap::new();
        if let Some((cfg, _)) = crate::hf::gptq_config(path)? {
            let modules = tersor_gptq::scan_gptq_modules(&model, &cfg)
                .map_err(|e| gptq_error(e, model.path()))?;
            for m in modules {
                gptq.insert(m.weight_name(), m);
            }
        }
        Ok(Self { model, gptq })
    }

    /// The underlying checkpoint.
    pub fn model(&self) -> &SafetensorsModel {
        &self.model
    }
}

/// A `tersor-gptq` error as this crate's error (the file named once).
fn gptq_error(e: GptqError, path: &Path) -> Error {
    match e {
        GptqError::Format { path, msg } => Error::Format { path, msg },
        GptqError::Io { path, source } => Error::Io { path, source },
        GptqError::Safetensors(e) => Error::Safetensors(e),
        GptqError::Invalid(msg) => Error::format(path, msg),
    }
}

impl WeightSource for SafetensorsWeights {
    fn path(&self) -> &Path {
        self.model.path()
    }

    fn names(&self) -> Vec<String> {
        let packed: std::collections::HashSet<String> =
            self.gptq.values().flat_map(|m| m.tensor_names()).collect();
        let mut names: Vec<String> = self
            .model
            .names()
            .into_iter()
            .filter(|n| !packed.contains(*n))
            .map(str::to_string)
            .chain(self.gptq.keys().cloned())
            .collect();
        names.sort();
        names
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match self.gptq.get(name) {
            Some(m) => Some(vec![m.out_features, m.in_features]),
            None => self.model.info(name).map(|m| m.shape),
        }
    }

    fn tensor_f32(&self, name: &str) -> Result<Tensor> {
        let shape = self.shape(name).ok_or_else(|| Error::MissingTensor {
            path: self.path().to_path_buf(),
            name: name.to_string(),
        })?;
        let data = match self.gptq.get(name) {
            Some(m) => tersor_gptq::dequantize_module(&self.model, m)
                .map_err(|e| gptq_error(e, self.model.path()))?,
            None => self.model.to_f32(name)?,
        };
        Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
    }
}
