//! The plan: which format every tensor of the output gets.

use std::collections::HashMap;

use tersor_ggml::GgmlType;
use tersor_gguf::GgufFile;
use tersor_model::{LinearKind, Llama, TensorNaming};
use tersor_quant::preset::{self, Preset};

use crate::error::{QuantizeError, Result};
use crate::layer::LayerTarget;
use crate::spec::Target;
use crate::QuantizeOptions;

/// One tensor of a GGUF output.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    pub name: String,
    pub ty: GgmlType,
    /// Whether the tensor is (re)quantized; otherwise its bytes are copied.
    pub quantize: bool,
    /// The type asked for when llama.cpp's fallback replaced it.
    pub fallback_from: Option<GgmlType>,
}

/// The per-tensor targets of a run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// GGUF outputs: every tensor of the input, in file order.
    pub tensors: Vec<PlannedTensor>,
    /// `general.file_type` to write (GGUF presets).
    pub file_type: Option<u32>,
    pub notes: Vec<String>,
    linears: HashMap<(usize, LinearKind), LayerTarget>,
    n_layers: usize,
}

impl Plan {
    pub fn make(opts: &QuantizeOptions, model: &Llama) -> Result<Self> {
        let n_layers = model.n_layers();
        match opts.target {
            Target::Gptq(g) => {
                let mut linears = HashMap::new();
                for l in 0..n_layers {
                    for kind in LinearKind::ALL {
                        let (_, cols) = model.linear_weight(l, kind)?.dims2()?;
                        let gs = g.group_size.unwrap_or(cols);
                        // A last partial group is allowed (GPTQ's g_idx = col / group_size).
                        linears.insert(
                            (l, kind),
                            LayerTarget::Gptq {
                                bits: g.bits,
                                group_size: gs,
                                sym: g.sym,
                                act_order: g.act_order,
                            },
                        );
                    }
                }
                Ok(Plan {
                    tensors: Vec::new(),
                    file_type: None,
                    notes: Vec::new(),
                    linears,
                    n_layers,
                })
            }
            Target::Preset(_) | Target::Uniform(_) => Self::gguf(opts, model),
        }
    }

    fn gguf(opts: &QuantizeOptions, model: &Llama) -> Result<Self> {
        let path = &opts.input;
        if path.is_dir() {
            return Err(QuantizeError::Input {
                path: path.clone(),
                msg: "GGUF output needs a GGUF input (Hugging Face → GGUF conversion is not built in yet: convert with llama.cpp's convert_hf_to_gguf.py first, or quantize to a GPTQ spec such as gptq:4:g128)".into(),
            });
        }
        let f = GgufFile::open(path)?;
        let infos = preset::TensorInfo::from_gguf(&f);
        let facts = preset::ModelFacts::from_gguf(&f)?;
        // A calibrated method is compared with llama-quantize --imatrix, whose rules
        // differ slightly (Q4_0/Q5_0/IQ4_NL's ffn_down).
        let has_imatrix = opts.method.base != crate::spec::Method::Rtn;
        let (preset, pure) = match opts.target {
            Target::Preset(p) => (p, false),
            // One type everywhere: llama-quantize --pure with the preset of that type.
            Target::Uniform(t) => (
                *Preset::ALL
                    .iter()
                    .find(|p| p.default_type() == t)
                    .ok_or_else(|| {
                        QuantizeError::Usage(format!(
                            "no llama.cpp file type uses {} throughout",
                            t.name()
                        ))
                    })?,
                true,
            ),
            Target::Gptq(_) => unreachable!("checked by the caller"),
        };
        let popts = preset::PlanOptions {
            overrides: opts.overrides.clone(),
            has_imatrix,
            pure,
            ..Default::default()
        };
        let planned = preset::plan_with(preset, &infos, &facts, &popts)?;
        let by_plan: HashMap<&str, &preset::TensorPlan> =
            planned.iter().map(|p| (p.name.as_str(), p)).collect();
        let mut notes = Vec::new();
        let mut tensors = Vec::with_capacity(planned.len());
        // Keep the input's tensor order (llama-quantize sorts by layer; sizes agree).
        for t in f.tensors() {
            let p = by_plan.get(t.name.as_str()).ok_or_else(|| {
                QuantizeError::Invariant(format!("the preset plan has no entry for {}", t.name))
            })?;
            if let Some(from) = p.fallback_from {
                notes.push(format!(
                    "{}: rows of {} values cannot be {}; using {} as llama.cpp does",
                    t.name,
                    t.row_len(),
                    from.name(),
                    p.ty.name()
                ));
            }
            tensors.push(PlannedTensor {
                name: t.name.clone(),
                ty: p.ty,
                quantize: p.quantize,
                fallback_from: p.fallback_from,
            });
        }
        // Fallback notes are per tensor; fold runs of identical ones into a count.
        let notes = summarize_notes(notes);
        let mut linears = HashMap::new();
        let by_name: HashMap<&str, &PlannedTensor> =
            tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        let n_layers = model.n_layers();
        for l in 0..n_layers {
            for kind in LinearKind::ALL {
                let name = TensorNaming::Gguf.linear(l, kind, "weight");
                let t = by_name
                    .get(name.as_str())
                    .ok_or_else(|| QuantizeError::Input {
                        path: path.clone(),
                        msg: format!("missing tensor {name}"),
                    })?;
                // A linear whose planned type is its current one is still re-rounded
                // by the chosen method (llama-quantize would copy it).
                linears.insert((l, kind), LayerTarget::Ggml(t.ty));
            }
        }
        let file_type = Some(preset.file_type());
        Ok(Plan {
            tensors,
            file_type,
            notes,
            linears,
            n_layers,
        })
    }

    /// The GGUF name of a block linear (also the imatrix entry name).
    pub fn gguf_name(&self, layer: usize, kind: LinearKind) -> String {
        TensorNaming::Gguf.linear(layer, kind, "weight")
    }

    pub fn linear_target(&self, layer: usize, kind: LinearKind) -> Result<LayerTarget> {
        self.linears
            .get(&(layer, kind))
            .copied()
            .ok_or_else(|| QuantizeError::Invariant(format!("no target for block {layer} {kind}")))
    }

    /// Whether `name` (GGUF or HF naming) is one of the blocks' linear weights.
    pub fn is_block_linear(&self, name: &str) -> bool {
        (0..self.n_layers).any(|l| {
            LinearKind::ALL.iter().any(|&k| {
                name == TensorNaming::Gguf.linear(l, k, "weight")
                    || name == TensorNaming::HuggingFace.linear(l, k, "weight")
                    || name == TensorNaming::HuggingFace.linear(l, k, "qweight")
            })
        })
    }
}

/// "x: ... using T" notes grouped by their text after the tensor name.
fn summarize_notes(notes: Vec<String>) -> Vec<String> {
    let mut groups: Vec<(String, usize, String)> = Vec::new();
    for n in notes {
        let (name, rest) = n.split_once(": ").unwrap_or(("", &n));
        match groups.iter_mut().find(|g| g.0 == rest) {
            Some(g) => g.1 += 1,
            None => groups.push((rest.to_string(), 1, name.to_string())),
        }
    }
    groups
        .into_iter()
        .map(|(rest, count, first)| {
            if count == 1 {
                format!("{first}: {rest}")
            } else {
                format!("{count} tensors (e.g. {first}): {rest}")
            }
        })
        .collect()
}
