//! Float Hugging Face output: every tensor as a float (`model.safetensors`, sharded when
//! large), `config.json` without `quantization_config`, the tokenizer. Pruned models keep
//! their zeros (the file is the dense size; the job reports the sparse payload); low-rank
//! linears are stored as their two factors, `<module>.weight_a` `[out, r]` and
//! `<module>.weight_b` `[r, in]`, which tersor-model loads as a two-matmul layer.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;
use tersor_ggml::GgmlType;
use tersor_gguf::{GgufError, GgufFile, GgufWriter};
use tersor_gptq::{FloatDtype, GptqWriter};
use tersor_model::{LinearKind, Llama, TensorNaming};

use crate::error::{QuantizeError, Result};
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

/// Whether `path` names a GGUF output (`.gguf`, any case) rather than a directory.
pub fn is_gguf_output(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Why `model` (loaded from `input`) cannot be written as GGUF by [`write_dense_gguf`],
/// checked before any work: the GGUF header (architecture metadata, tokenizer) is the
/// input's, so the input must be a GGUF file; llama.cpp has no two-factor linear, so a
/// factored model stays a directory.
pub fn check_gguf_writable(input: &Path, output: &Path, factored: bool) -> Result<()> {
    if input.is_dir() {
        return Err(QuantizeError::Usage(format!(
            "{}: GGUF output copies the input's GGUF header, but {} is a Hugging Face \
             directory; write a directory instead",
            output.display(),
            input.display()
        )));
    }
    if factored {
        return Err(QuantizeError::Usage(format!(
            "{}: low-rank factors have no GGUF layout llama.cpp loads; write a directory",
            output.display()
        )));
    }
    Ok(())
}

/// Write `model` (loaded from the GGUF file `input`) to the GGUF file `output`
/// (atomically): the input's metadata, tokenizer and tensor order, every block linear as
/// `dtype` (zeros of a pruned layer stored), every other tensor copied byte for byte
/// (its dequantized values are the reference model's). Rows stay in GGUF order, as the
/// model holds them.
pub fn write_dense_gguf(
    input: &Path,
    output: &Path,
    model: &Llama,
    dtype: FloatDtype,
) -> Result<Vec<TensorSummary>> {
    let mut factored = false;
    for l in 0..model.n_layers() {
        for kind in LinearKind::ALL {
            factored |= model.linear_factors(l, kind)?.is_some();
        }
    }
    check_gguf_writable(input, output, factored)?;
    let f = GgufFile::open(input)?;
    let (ty, file_type) = match dtype {
        FloatDtype::F32 => (GgmlType::F32, 0),
        FloatDtype::F16 => (GgmlType::F16, 1),
        FloatDtype::BF16 => (GgmlType::BF16, 32),
    };
    let mut w = GgufWriter::from_file(&f);
    let mut linears = HashMap::new();
    for l in 0..model.n_layers() {
        for kind in LinearKind::ALL {
            let name = TensorNaming::Gguf.linear(l, kind, "weight");
            if f.tensor(&name).is_none() {
                return Err(QuantizeError::Input {
                    path: input.to_path_buf(),
                    msg: format!(
                        "{name}: not in the file (a {}-block model)",
                        model.n_layers()
                    ),
                });
            }
            w.set_tensor_type(&name, ty)?;
            linears.insert(name, (l, kind));
        }
    }
    // llama.cpp's LLAMA_FTYPE_ALL_F32 / MOSTLY_F16 / MOSTLY_BF16.
    w.add_metadata("general.file_type", tersor_gguf::Value::U32(file_type));
    let out_tensors = w.tensors().to_vec();
    let fail = |msg: String| GgufError::Format {
        path: output.to_path_buf(),
        msg,
    };
    let mut summary = Vec::with_capacity(out_tensors.len());
    w.write(output, |i, sink| {
        let t = &out_tensors[i];
        let bytes = match linears.get(&t.name) {
            Some(&(l, kind)) => {
                let values = model
                    .linear_weight(l, kind)
                    .and_then(|x| Ok(x.flatten_all()?.to_vec1::<f32>()?))
                    .map_err(|e| fail(format!("{}: {e}", t.name)))?;
                tersor_ggml::quantize_par(ty, &values)
                    .map_err(|e| fail(format!("{}: {e}", t.name)))?
            }
            None => {
                let src = f
                    .tensor(&t.name)
                    .ok_or_else(|| fail(format!("{}: not in the input", t.name)))?;
                f.tensor_data(src).to_vec()
            }
        };
        summary.push(TensorSummary {
            name: t.name.clone(),
            format: t.ty.name().to_ascii_uppercase(),
            params: t.n_elements(),
            bytes: bytes.len() as u64,
            fallback_from: None,
        });
        sink.write_all(&bytes)
            .map_err(|e| fail(format!("writing {}: {e}", t.name)))
    })?;
    Ok(summary)
}
