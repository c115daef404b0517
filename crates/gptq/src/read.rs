//! Reading GPTQ modules from a safetensors checkpoint: finding the
//! `<module>.qweight/.qzeros/.scales/.g_idx` groups, checking them against the
//! quantization config, and dequantizing them to `[out, in]` f32 weights.

use half::f16;
use tersor_safetensors::{Dtype, SafetensorsModel};

use crate::config::{ModuleQuant, QuantizationConfig};
use crate::error::{GptqError, Result};
use crate::pack::{dim_multiple, PackedLinear, Shaped};

/// Suffixes of the four tensors of a quantized linear.
const PARTS: [&str; 4] = ["qweight", "qzeros", "scales", "g_idx"];

/// One quantized linear found in a checkpoint, its shapes checked against the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GptqModule {
    /// Module name, e.g. `model.layers.0.mlp.down_proj`.
    pub module: String,
    /// Its settings, resolved from the config (with `dynamic` overrides).
    pub quant: ModuleQuant,
    pub out_features: usize,
    pub in_features: usize,
}

impl GptqModule {
    /// The name of the float weight it stands for: `<module>.weight`.
    pub fn weight_name(&self) -> String {
        format!("{}.weight", self.module)
    }

    /// The names of its four checkpoint tensors.
    pub fn tensor_names(&self) -> [String; 4] {
        PARTS.map(|p| format!("{}.{p}", self.module))
    }
}

/// Finds every quantized linear of `model` (a `<module>.qweight` with its three
/// companions), resolves its settings from `config` and checks dtypes and shapes:
/// `qweight` I32 `[in * bits / 32, out]`, `qzeros` I32 `[n_groups, out * bits / 32]`,
/// `scales` F16 `[n_groups, out]`, `g_idx` I32 `[in]`, with
/// `n_groups = ceil(in / group_size)`. Errors (naming the file) on a missing companion,
/// a stray `qzeros`/`g_idx`, a module the config excludes, a module that also has a
/// float `.weight`, or a checkpoint with no quantized module at all.
pub fn scan_gptq_modules(
    model: &SafetensorsModel,
    config: &QuantizationConfig,
) -> Result<Vec<GptqModule>> {
    let names = model.names();
    let has = |n: &str| model.info(n).is_some();
    let at = |name: &str| {
        model
            .info(name)
            .map(|i| i.shard)
            .unwrap_or_else(|| model.path().to_path_buf())
    };
    for n in &names {
        for stray in [".qzeros", ".g_idx"] {
            if let Some(m) = n.strip_suffix(stray) {
                if !has(&format!("{m}.qweight")) {
                    return Err(GptqError::format(
                        at(n),
                        format!("`{n}` has no matching `{m}.qweight`"),
                    ));
                }
            }
        }
    }
    let mut out = Vec::new();
    for n in &names {
        let Some(module) = n.strip_suffix(".qweight") else {
            continue;
        };
        let file = at(n);
        let fail = |msg: String| GptqError::format(&file, format!("GPTQ module `{module}`: {msg}"));
        for p in PARTS {
            if !has(&format!("{module}.{p}")) {
                return Err(fail(format!("missing tensor `{module}.{p}`")));
            }
        }
        if has(&format!("{module}.weight")) {
            return Err(fail(format!(
                "has both `{module}.qweight` and a float `{module}.weight`"
            )));
        }
        let quant = config.resolve(module).ok_or_else(|| {
            fail(
                "the quantization config's `dynamic` rules exclude this module, but it has \
                  GPTQ tensors"
                    .into(),
            )
        })?;
        let info = |p: &str| model.info(&format!("{module}.{p}")).expect("checked above");
        let [qweight, qzeros, scales, g_idx] = PARTS.map(info);
        for (p, i, want) in [
            ("qweight", &qweight, Dtype::I32),
            ("qzeros", &qzeros, Dtype::I32),
            ("scales", &scales, Dtype::F16),
            ("g_idx", &g_idx, Dtype::I32),
        ] {
            if i.dtype != want {
                return Err(fail(format!(
                    "`{p}` has dtype {}, expected {want}",
                    i.dtype
                )));
            }
        }
        let bits = usize::from(quant.bits);
        let in_features = match g_idx.shape[..] {
            [n] => n,
            _ => {
                return Err(fail(format!(
                    "`g_idx` has shape {:?}, expected [in]",
                    g_idx.shape
                )))
            }
        };
        let out_features = match qweight.shape[..] {
            [_, o] => o,
            _ => {
                return Err(fail(format!(
                    "`qweight` has shape {:?}, expected 2-D",
                    qweight.shape
                )))
            }
        };
        let m = dim_multiple(quant.bits);
        for (what, d) in [("in_features", in_features), ("out_features", out_features)] {
            if d == 0 || d % m != 0 {
                return Err(fail(format!(
                    "{what} = {d} is not a positive multiple of {m}, as {bits}-bit packing needs"
                )));
            }
        }
        let n_groups = quant.n_groups(in_features);
        let expect = [
            (
                "qweight",
                &qweight.shape,
                vec![in_features * bits / 32, out_features],
            ),
            (
                "qzeros",
                &qzeros.shape,
                vec![n_groups, out_features * bits / 32],
            ),
            ("scales", &scales.shape, vec![n_groups, out_features]),
        ];
        for (p, have, want) in expect {
            if *have != want {
                return Err(fail(format!(
                    "`{p}` has shape {have:?}, expected {want:?} for [out = {out_features}, \
                     in = {in_features}] at bits = {bits}, group_size = {}",
                    quant.group_size
                )));
            }
        }
        out.push(GptqModule {
            module: module.to_string(),
            quant,
            out_features,
            in_features,
        });
    }
    if out.is_empty() {
        return Err(GptqError::format(
            model.path(),
            "the config declares GPTQ quantization but the checkpoint has no `.qweight` tensors",
        ));
    }
    Ok(out)
}

fn read_i32(model: &SafetensorsModel, name: &str) -> Result<Shaped<i32>> {
    let (_, shape, bytes) = model.raw(name)?;
    let data = bytes
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Shaped { shape, data })
}

/// The packed tensors of `m` (as found by [`scan_gptq_modules`]).
pub fn read_packed(model: &SafetensorsModel, m: &GptqModule) -> Result<PackedLinear> {
    let [qweight, qzeros, scales, g_idx] = m.tensor_names();
    let (_, sc_shape, sc_bytes) = model.raw(&scales)?;
    let sc = Shaped {
        shape: sc_shape,
        data: sc_bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]))
            .collect(),
    };
    PackedLinear::from_tensors(
        m.quant.bits,
        read_i32(model, &qweight)?,
        read_i32(model, &qzeros)?,
        sc,
        read_i32(model, &g_idx)?,
    )
    .map_err(|e| in_file(model, &qweight, &m.module, e))
}

/// The dequantized weight of `m`, row-major `[out, in]` f32 (the reference's fp16
/// values).
pub fn dequantize_module(model: &SafetensorsModel, m: &GptqModule) -> Result<Vec<f32>> {
    let p = read_packed(model, m)?;
    p.dequantize()
        .map_err(|e| in_file(model, &format!("{}.qweight", m.module), &m.module, e))
}

/// Attaches the file and module to an error about a module's values.
fn in_file(model: &SafetensorsModel, tensor: &str, module: &str, e: GptqError) -> GptqError {
    match e {
        GptqError::Invalid(msg) => GptqError::format(
            model
                .info(tensor)
                .map(|i| i.shard)
                .unwrap_or_else(|| model.path().to_path_buf()),
            format!("GPTQ module `{module}`: {msg}"),
        ),
        other => other,
    }
}
