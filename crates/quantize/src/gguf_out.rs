//! GGUF output: the input's header (metadata, tokenizer, tensor order) with the planned
//! types, written atomically by tersor-gguf.

use std::collections::HashMap;

use tersor_ggml::GgmlType;
use tersor_gguf::{GgufError, GgufFile, GgufWriter, Value};
use tersor_model::{LinearKind, Llama, TensorNaming};

use crate::error::{QuantizeError, Result};
use crate::layer::Payload;
use crate::plan::Plan;
use crate::{QuantizeOptions, Results, TensorSummary};

/// Where the bytes of one output tensor come from.
enum Source {
    Linear(usize, LinearKind),
    Norm(usize, bool),
    Embedding,
    Output,
    /// Copied from the input unchanged.
    Copy,
}

pub(crate) fn write(
    opts: &QuantizeOptions,
    plan: &Plan,
    model: &Llama,
    results: &Results,
) -> Result<Vec<TensorSummary>> {
    let f = GgufFile::open(&opts.input)?;
    tersor_quant::gptq::clear_upper_simd_state_all_threads();
    let mut w = GgufWriter::from_file(&f);
    let mut sources: HashMap<String, Source> = HashMap::new();
    for l in 0..model.n_layers() {
        for k in LinearKind::ALL {
            sources.insert(
                TensorNaming::Gguf.linear(l, k, "weight"),
                Source::Linear(l, k),
            );
        }
        sources.insert(TensorNaming::Gguf.attn_norm(l), Source::Norm(l, true));
        sources.insert(TensorNaming::Gguf.ffn_norm(l), Source::Norm(l, false));
    }
    sources.insert(TensorNaming::Gguf.embed().into(), Source::Embedding);
    if f.tensor(TensorNaming::Gguf.lm_head()).is_some() {
        sources.insert(TensorNaming::Gguf.lm_head().into(), Source::Output);
    }
    for t in &plan.tensors {
        if t.quantize {
            w.set_tensor_type(&t.name, t.ty)?;
        }
    }
    if let Some(ft) = plan.file_type {
        w.add_metadata("general.file_type", Value::U32(ft));
    }
    // As llama-quantize records the importance matrix it used.
    if let Some((file, dataset, entries, chunks)) = &results.imatrix_meta {
        w.add_metadata("quantize.imatrix.file", Value::String(file.clone()));
        w.add_metadata("quantize.imatrix.dataset", Value::String(dataset.clone()));
        w.add_metadata("quantize.imatrix.entries_count", Value::I32(*entries));
        w.add_metadata("quantize.imatrix.chunks_count", Value::I32(*chunks));
    }
    let out_tensors = w.tensors().to_vec();
    let planned: HashMap<&str, bool> = plan
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.quantize))
        .collect();
    let mut summary = Vec::with_capacity(out_tensors.len());
    let out_path = opts.output.clone();
    let fail = |msg: String| GgufError::Format {
        path: out_path.clone(),
        msg,
    };
    w.write(&opts.output, |i, sink| {
        let t = &out_tensors[i];
        let quantize = planned.get(t.name.as_str()).copied().unwrap_or(false);
        let src = sources.get(&t.name).unwrap_or(&Source::Copy);
        let row_len = t.row_len() as usize;
        let float_bytes = |ty: GgmlType, values: &[f32]| {
            crate::layer::encode(ty, values, row_len, None)
                .map_err(|e| fail(format!("{}: {e}", t.name)))
        };
        let tensor_f32 = |x: &candle_core::Tensor| {
            x.flatten_all()
                .and_then(|x| x.to_vec1::<f32>())
                .map_err(|e| fail(format!("{}: {e}", t.name)))
        };
        let bytes: Vec<u8> = match src {
            Source::Linear(l, k) => match results.linears.get(&(*l, *k)).map(|o| &o.payload) {
                Some(Payload::Ggml { ty, bytes }) if *ty == t.ty => bytes.clone(),
                _ => {
                    return Err(fail(format!(
                        "{}: no quantized data of type {}",
                        t.name,
                        t.ty.name()
                    )))
                }
            },
            // Norms are never quantized; AWQ may have rescaled them.
            Source::Norm(l, attn) => {
                let v = model
                    .norm_weight(*l, *attn)
                    .map_err(|e| fail(e.to_string()))?;
                float_bytes(t.ty, &tensor_f32(v)?)?
            }
            // The token embedding gets no imatrix (llama-imatrix has no entry for it).
            Source::Embedding if quantize => float_bytes(t.ty, &tensor_f32(model.embedding())?)?,
            Source::Output if quantize => float_bytes(t.ty, &tensor_f32(model.output_weight())?)?,
            _ => {
                let input = f
                    .tensor(&t.name)
                    .ok_or_else(|| fail(format!("{}: not in the input", t.name)))?;
                if input.ty == t.ty {
                    f.tensor_data(input).to_vec()
                } else {
                    let v = tersor_ggml::dequantize_to_vec(
                        input.ty,
                        f.tensor_data(input),
                        input.n_elements() as usize,
                    )
                    .map_err(|e| fail(format!("{}: {e}", t.name)))?;
                    float_bytes(t.ty, &v)?
                }
            }
        };
        summary.push(TensorSummary {
            name: t.name.clone(),
            format: t.ty.name().to_ascii_uppercase(),
            params: t.n_elements(),
            bytes: bytes.len() as u64,
            fallback_from: plan
                .tensors
                .iter()
                .find(|p| p.name == t.name)
                .and_then(|p| p.fallback_from)
                .map(|x| x.name().to_ascii_uppercase()),
        });
        sink.write_all(&bytes)
            .map_err(|e| fail(format!("writing {}: {e}", t.name)))
    })
    .map_err(QuantizeError::from)?;
    Ok(summary)
}
