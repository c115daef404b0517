//! Float Hugging Face output: every tensor as a float (`model.safetensors`, sharded when
//! large), `config.json` without `quantization_config`, the tokenizer. Pruned models keep
//! their zeros (the file is the dense size; the job reports the sparse payload); low-rank
//! linears are stored as their two factors, `<module>.weight_a` `[out, r]` and
//! `<module>.weight_b` `[r, in]`, which tersor-model loads as a two-matmul layer.

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
    // Output rows in HF order (q/k rows of a GGUF input are interleaved): for a factored
    // layer `W = A B` only `A`'s rows are permuted.
    let mut add = |w: &mut GptqWriter,
                   name: String,
                   t: &candle_core::Tensor,
                   rows: Option<&[usize]>|
     -> Result<()> {
        let (r, c) = t.dims2()?;
        let data = t.flatten_all()?.to_vec1::<f32>()?;
        let data = match rows {
            Some(map) => map
                .iter()
                .flat_map(|&src| data[src * c..(src + 1) * c].iter().copied())
                .collect(),
            None => data,
        };
        w.add_tensor(&name, &[r, c], &data, dtype)?;
        summary.push(TensorSummary {
            name,
            format: format.into(),
            params: (r * c) as u64,
            bytes: (r * c * width) as u64,
            fallback_from: None,
        });
        Ok(())
    };
    for l in 0..model.n_layers() {
        for kind in LinearKind::ALL {
            let t = model.linear_weight(l, kind)?;
            let rows = hf_row_map(model, from_gguf, kind, t.dims2()?.0);
            match model.linear_factors(l, kind)? {
                None => add(&mut w, hf.linear(l, kind, "weight"), t, Some(&rows))?,
                Some((a, b)) => {
                    add(&mut w, hf.linear(l, kind, "weight_a"), a, Some(&rows))?;
                    add(&mut w, hf.linear(l, kind, "weight_b"), b, None)?;
                }
            }
        }
    }
    let mut config = hf_config_and_tokenizer(input, model, &mut w)?;
    if let Some(o) = config.as_object_mut() {
        o.insert("torch_dtype".into(), Value::from(torch));
    }
    w.write(output, &config)?;
    Ok(summary)
}
