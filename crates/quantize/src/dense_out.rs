//! Dense Hugging Face output: every tensor as a float (`model.safetensors`, sharded when
//! large), `config.json` without `quantization_config`, the tokenizer. What pruned models
//! are written as: the zeros are stored, so the file is the dense size; the job reports
//! the sparse payload separately.

use std::path::Path;

use serde_json::Value;
use tersor_gptq::{FloatDtype, GptqWriter};
use tersor_model::{LinearKind, Llama, TensorNaming};

use crate::error::Result;
use crate::gptq_out::{
    add_float_tensors, check_hf_exportable, hf_config_and_tokenizer, hf_row_map,
};
use crate::TensorSummary;

/// Write `model` (loaded from `input`, a GGUF file or an HF directory) to the directory
/// `output` with every tensor as `dtype`.
pub fn write_dense_dir(
    input: &Path,
    output: &Path,
    model: &Llama,
    dtype: FloatDtype,
) -> Result<Vec<TensorSummary>> {
    check_hf_exportable(input, model)?;
    let from_gguf = !input.is_dir();
    let mut w = GptqWriter::dense();
    let mut summary = add_float_tensors(&mut w, model, dtype)?;
    let (format, width, torch) = match dtype {
        FloatDtype::F16 => ("F16", 2, "float16"),
        FloatDtype::BF16 => ("BF16", 2, "bfloat16"),
        FloatDtype::F32 => ("F32", 4, "float32"),
    };
    let hf = TensorNaming::HuggingFace;
    for l in 0..model.n_layers() {
        for kind in LinearKind::ALL {
            let t = model.linear_weight(l, kind)?;
            let (rows, cols) = t.dims2()?;
            let data = t.flatten_all()?.to_vec1::<f32>()?;
            let mut hf_rows = Vec::with_capacity(rows * cols);
            for src in hf_row_map(model, from_gguf, kind, rows) {
                hf_rows.extend_from_slice(&data[src * cols..(src + 1) * cols]);
            }
            let name = hf.linear(l, kind, "weight");
            w.add_tensor(&name, &[rows, cols], &hf_rows, dtype)?;
            summary.push(TensorSummary {
                name,
                format: format.into(),
                params: (rows * cols) as u64,
                bytes: (rows * cols * width) as u64,
                fallback_from: None,
            });
        }
    }
    let mut config = hf_config_and_tokenizer(input, model, &mut w)?;
    if let Some(o) = config.as_object_mut() {
        o.insert("torch_dtype".into(), Value::from(torch));
    }
    w.write(output, &config)?;
    Ok(summary)
}
