//! llama.cpp's `llama-quantize` presets: which ggml type each tensor of a
//! model gets.
//!
//! A faithful port of llama.cpp commit c392e509 (`src/llama-quant.cpp`):
//! [`plan`] walks the tensors the way `llama_model_quantize_impl` does (same
//! order, same "is this tensor quantized at all" tests, same counters) and
//! asks the port of `llama_tensor_get_type` for each one, including the
//! fallback to a smaller-block type when a row length is not a multiple of
//! the chosen type's block size. The `general.file_type` each preset writes is
//! [`Preset::file_type`]. The tests replay every preset against the types
//! llama-quantize itself wrote (`tests/fixtures/llama_presets.json`).
//!
//! Scope: llama-family dense models (`general.architecture` `llama`, which
//! also covers Mistral converted as llama, and `qwen2`). Left out of the port,
//! because those models or presets are out of scope:
//! - the IQ1/IQ2/IQ3/IQ4_XS/TQ presets (their ggml types cannot be encoded
//!   here) and every branch that only they reach (including the token
//!   embedding choices for them);
//! - Falcon's branches (`arch == LLM_ARCH_FALCON`);
//! - mixture-of-experts rules (`n_expert == 8` bumps, layer numbers parsed from
//!   the tensor name, per-expert imatrix slices): [`plan`] rejects MoE models;
//! - the BERT/T5/Mamba/RWKV exclusions that only match other architectures'
//!   tensor names (`position_embd`, `token_types`, `ssm_conv1d`, `time_mix_*`,
//!   `attn_rel_b` are still never quantized, as in llama.cpp);
//! - `--keep-split`, `COPY`, `--allow-requantize` (a plan does not read data).
//!
//! Additions that llama.cpp c392e509 does not have:
//! - user overrides `REGEX=TYPE` (later llama-quantize's `--tensor-type`),
//!   applied after the preset's rules and before the fallback;
//! - [`TensorPlan::needs_imatrix`], which marks the tensors llama-quantize
//!   would refuse to quantize without importance data.

use std::collections::HashSet;

use regex::Regex;
use tersor_ggml::{is_legal, llama_fallback_type, GgmlType};
use tersor_gguf::GgufFile;

use crate::{QuantError, Result};

/// A `llama-quantize` file type (`enum llama_ftype`) that tersor can produce.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Preset {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q2_K_S,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
    IQ4_NL,
    F16,
    BF16,
    F32,
}

/// llama-quantize's names for the types tersor cannot produce, so that asking
/// for one gives a clearer message than "unknown".
const UNSUPPORTED_LLAMA_TYPES: [&str; 14] = [
    "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0", "IQ3_XXS", "IQ3_S",
    "IQ3_M", "IQ3_XS", "IQ4_XS", "COPY",
];

impl Preset {
    /// Every supported preset, in llama-quantize's listing order.
    pub const ALL: [Preset; 19] = [
        Preset::Q4_0,
        Preset::Q4_1,
        Preset::Q5_0,
        Preset::Q5_1,
        Preset::Q2_K,
        Preset::Q2_K_S,
        Preset::Q3_K_S,
        Preset::Q3_K_M,
        Preset::Q3_K_L,
        Preset::IQ4_NL,
        Preset::Q4_K_S,
        Preset::Q4_K_M,
        Preset::Q5_K_S,
        Preset::Q5_K_M,
        Preset::Q6_K,
        Preset::Q8_0,
        Preset::F16,
        Preset::BF16,
        Preset::F32,
    ];

    /// llama-quantize's name for the preset ("Q4_K_M").
    pub fn name(self) -> &'static str {
        use Preset::*;
        match self {
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q2_K => "Q2_K",
            Q2_K_S => "Q2_K_S",
            Q3_K_S => "Q3_K_S",
            Q3_K_M => "Q3_K_M",
            Q3_K_L => "Q3_K_L",
            Q4_K_S => "Q4_K_S",
            Q4_K_M => "Q4_K_M",
            Q5_K_S => "Q5_K_S",
            Q5_K_M => "Q5_K_M",
            Q6_K => "Q6_K",
            IQ4_NL => "IQ4_NL",
            F16 => "F16",
            BF16 => "BF16",
            F32 => "F32",
        }
    }

    /// Parses a preset as llama-quantize does (`try_parse_ftype`): a name,
    /// case-insensitive, including the aliases `Q3_K` (= Q3_K_M), `Q4_K`
    /// (= Q4_K_M) and `Q5_K` (= Q5_K_M), or the numeric file type.
    pub fn from_name(s: &str) -> Result<Preset> {
        let up = s.trim().to_ascii_uppercase();
        let alias = match up.as_str() {
            "Q3_K" => Some(Preset::Q3_K_M),
            "Q4_K" => Some(Preset::Q4_K_M),
            "Q5_K" => Some(Preset::Q5_K_M),
            _ => None,
        };
        if let Some(p) = alias.or_else(|| Preset::ALL.into_iter().find(|p| p.name() == up)) {
            return Ok(p);
        }
        if let Ok(id) = up.parse::<u32>() {
            if let Some(p) = Preset::ALL.into_iter().find(|p| p.file_type() == id) {
                return Ok(p);
            }
        }
        let supported = Preset::ALL.map(Preset::name).join(", ");
        if UNSUPPORTED_LLAMA_TYPES.contains(&up.as_str()) {
            Err(QuantError::Unsupported(format!(
                "llama-quantize type {up} is not supported by tersor (its ggml types cannot be \
                 encoded here); supported presets: {supported}"
            )))
        } else {
            Err(QuantError::Unsupported(format!(
                "unknown quantization preset '{s}'; supported presets: {supported} \
                 (aliases Q3_K, Q4_K, Q5_K)"
            )))
        }
    }

    /// The `general.file_type` value (`enum llama_ftype` in llama.h) that
    /// llama-quantize writes for this preset.
    pub fn file_type(self) -> u32 {
        use Preset::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q8_0 => 7,
            Q5_0 => 8,
            Q5_1 => 9,
            Q2_K => 10,
            Q3_K_S => 11,
            Q3_K_M => 12,
            Q3_K_L => 13,
            Q4_K_S => 14,
            Q4_K_M => 15,
            Q5_K_S => 16,
            Q5_K_M => 17,
            Q6_K => 18,
            Q2_K_S => 21,
            IQ4_NL => 25,
            BF16 => 32,
        }
    }

    /// The type a tensor gets before the per-tensor rules (`default_type` in
    /// `llama_model_quantize_impl`).
    pub fn default_type(self) -> GgmlType {
        use Preset::*;
        match self {
            Q4_0 => GgmlType::Q4_0,
            Q4_1 => GgmlType::Q4_1,
            Q5_0 => GgmlType::Q5_0,
            Q5_1 => GgmlType::Q5_1,
            Q8_0 => GgmlType::Q8_0,
            F16 => GgmlType::F16,
            BF16 => GgmlType::BF16,
            F32 => GgmlType::F32,
            Q2_K | Q2_K_S => GgmlType::Q2K,
            Q3_K_S | Q3_K_M | Q3_K_L => GgmlType::Q3K,
            Q4_K_S | Q4_K_M => GgmlType::Q4K,
            Q5_K_S | Q5_K_M => GgmlType::Q5K,
            Q6_K => GgmlType::Q6K,
            IQ4_NL => GgmlType::IQ4NL,
        }
    }

    /// Whether llama-quantize refuses this preset without an importance
    /// matrix (examples/quantize/quantize.cpp: "Please do not use ... Q2_K_S
    /// quantization without an importance matrix").
    pub fn requires_imatrix(self) -> bool {
        self == Preset::Q2_K_S
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Preset {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<Preset> {
        Preset::from_name(s)
    }
}

/// One tensor of the model to plan for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// GGUF tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Shape in ggml order: `ne[0]` is the row length (input features).
    pub ne: Vec<u64>,
    /// The type the tensor is stored in now. llama-quantize leaves a tensor
    /// alone when the chosen type equals it, and keeps this type for every
    /// tensor it does not quantize (norms, biases).
    pub ty: GgmlType,
}

impl TensorInfo {
    pub fn new(name: impl Into<String>, ne: Vec<u64>, ty: GgmlType) -> Self {
        TensorInfo {
            name: name.into(),
            ne,
            ty,
        }
    }

    /// The tensors of a GGUF file, in file order.
    pub fn from_gguf(file: &GgufFile) -> Vec<TensorInfo> {
        file.tensors()
            .iter()
            .map(|t| TensorInfo::new(t.name.clone(), t.dims.clone(), t.ty))
            .collect()
    }

    /// `ggml_n_dims`: the number of dimensions up to the last one above 1
    /// (at least 1).
    fn n_dims(&self) -> usize {
        self.ne.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1)
    }

    fn row_len(&self) -> u64 {
        self.ne.first().copied().unwrap_or(1)
    }
}

/// The hyperparameters the preset rules read (`llama_hparams`, `llm_type`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFacts {
    /// `general.architecture`: "llama" or "qwen2".
    pub arch: String,
    /// `{arch}.block_count`.
    pub n_layer: usize,
    /// `{arch}.attention.head_count`.
    pub n_head: usize,
    /// `{arch}.attention.head_count_kv` (llama.cpp defaults it to `n_head`).
    pub n_head_kv: usize,
    /// `{arch}.expert_count` (0 for a dense model).
    pub n_expert: usize,
}

impl ModelFacts {
    /// Reads the facts from a GGUF file's metadata, with llama.cpp's defaults
    /// (`llama_model::load_hparams`).
    pub fn from_gguf(file: &GgufFile) -> Result<ModelFacts> {
        let path = file.path().to_path_buf();
        let bad = |msg: String| QuantError::File {
            path: path.clone(),
            msg,
        };
        let arch = file
            .get_str("general.architecture")
            .ok_or_else(|| bad("no general.architecture string".into()))?
            .to_string();
        let scalar = |key: String, default: Option<u64>| -> Result<usize> {
            match file.get(&key) {
                None => default.ok_or_else(|| bad(format!("missing key {key}"))),
                Some(v) => v
                    .as_u64()
                    .ok_or_else(|| bad(format!("{key} is not an unsigned integer scalar"))),
            }
            .and_then(|v| usize::try_from(v).map_err(|_| bad(format!("{key} = {v} is too large"))))
        };
        let n_layer = scalar(format!("{arch}.block_count"), None)?;
        let n_head = scalar(format!("{arch}.attention.head_count"), None)?;
        let n_head_kv = scalar(
            format!("{arch}.attention.head_count_kv"),
            Some(n_head as u64),
        )?;
        let n_expert = scalar(format!("{arch}.expert_count"), Some(0))?;
        Ok(ModelFacts {
            arch,
            n_layer,
            n_head,
            n_head_kv,
            n_expert,
        })
    }

    /// `llama_hparams::n_gqa`: query heads per key/value head (0 without kv heads).
    pub fn n_gqa(&self) -> usize {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }

    /// Whether llama.cpp classifies the model as `LLM_TYPE_70B`
    /// (`llama_model::load_hparams`): llama with 80 layers and grouped-query
    /// attention, or qwen2 with 80 layers. The attn_v rule gives such models
    /// Q5_K where others get Q3_K/Q4_K.
    pub fn is_70b(&self) -> bool {
        match self.arch.as_str() {
            "llama" => self.n_layer == 80 && self.n_head != self.n_head_kv,
            "qwen2" => self.n_layer == 80,
            _ => false,
        }
    }
}

/// The `llama-quantize` options that change type choices.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// `REGEX=TYPE` overrides (later llama-quantize's `--tensor-type`): a
    /// pattern matches anywhere in the tensor name (`std::regex_search`); the
    /// last matching pattern wins. Applied to every tensor that is quantized
    /// at all, after the preset's rules and before the row-length fallback.
    pub overrides: Vec<(Regex, GgmlType)>,
    /// An importance matrix will be supplied (`--imatrix`). Changes the
    /// ffn_down rules of Q4_0, Q5_0 and IQ4_NL, and Q2_K_S requires it.
    pub has_imatrix: bool,
    /// `--output-tensor-type`: type for `output.weight` (and a tied
    /// `token_embd.weight`).
    pub output_tensor_type: Option<GgmlType>,
    /// `--token-embedding-type`.
    pub token_embedding_type: Option<GgmlType>,
    /// `--pure`: the preset's default type everywhere, no per-tensor rules.
    pub pure: bool,
    /// `--leave-output-tensor`: keep `output.weight` as it is.
    pub leave_output_tensor: bool,
}

/// What llama-quantize does with one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorPlan {
    pub name: String,
    /// The type the tensor has in the output file.
    pub ty: GgmlType,
    /// Whether the tensor is converted (false: copied as it is, `ty` is its
    /// current type).
    pub quantize: bool,
    /// The type the rules chose when it did not fit the row length and
    /// llama.cpp's fallback replaced it (Q4_K → Q5_0, ...).
    pub fallback_from: Option<GgmlType>,
    /// A user override (`PlanOptions::overrides`) chose the type.
    pub overridden: bool,
    /// llama-quantize stops with "Missing importance matrix for tensor ... in
    /// a very low-bit quantization" when the imatrix has no entry for this
    /// tensor (Q2_K tensors of a Q2_K_S file, except the token embedding).
    pub needs_imatrix: bool,
}

/// Plans a preset with llama-quantize's default options plus `overrides`.
///
/// Returns one entry per tensor, in the order llama-quantize processes and
/// writes them (`llama_model_loader::weight_name_comparer`: tensors outside
/// `blk.N.` first, then by layer number, each group by name).
pub fn plan(
    preset: Preset,
    tensors: &[TensorInfo],
    facts: &ModelFacts,
    overrides: &[(Regex, GgmlType)],
    has_imatrix: bool,
) -> Result<Vec<TensorPlan>> {
    let opts = PlanOptions {
        overrides: overrides.to_vec(),
        has_imatrix,
        ..PlanOptions::default()
    };
    plan_with(preset, tensors, facts, &opts)
}

/// `sscanf(name, "blk.%d.", &layer)` as `weight_name_comparer` uses it: the
/// layer number after `blk.`, or -1.
fn layer_of(name: &str) -> i64 {
    let Some(rest) = name.strip_prefix("blk.") else {
        return -1;
    };
    let rest = rest.trim_start();
    let (neg, digits) = match rest.as_bytes().first() {
        Some(b'-') => (true, &rest[1..]),
        Some(b'+') => (false, &rest[1..]),
        _ => (false, rest),
    };
    let end = digits
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    match digits[..end].parse::<i64>() {
        Ok(v) if end > 0 => {
            if neg {
                -v
            } else {
                v
            }
        }
        _ => -1,
    }
}

/// `ggml_is_quantized`.
fn is_quantized(ty: GgmlType) -> bool {
    use GgmlType::*;
    !matches!(ty, F32 | F16 | BF16 | F64 | I8 | I16 | I32 | I64)
}

/// `llama_model_quantize_impl`'s test for whether a tensor is quantized at
/// all (before the type is chosen).
fn is_quantizable(t: &TensorInfo, opts: &PlanOptions) -> bool {
    let name = t.name.as_str();
    name.ends_with("weight")
        && t.n_dims() >= 2
        && !name.contains("_norm.weight")
        && (!opts.leave_output_tensor || name != "output.weight")
        && !name.contains("ffn_gate_inp.weight")
        && !name.contains("ssm_conv1d.weight")
        && ![
            "time_mix_first.weight",
            "time_mix_w1.weight",
            "time_mix_w2.weight",
            "time_mix_decay_w1.weight",
            "time_mix_decay_w2.weight",
            "time_mix_lerp_fused.weight",
            "attn_rel_b.weight",
        ]
        .iter()
        .any(|s| name.contains(s))
}

/// `quantize_state_impl`: the counters `llama_tensor_get_type` advances.
struct State<'a> {
    preset: Preset,
    facts: &'a ModelFacts,
    opts: &'a PlanOptions,
    has_output: bool,
    n_attention_wv: usize,
    i_attention_wv: usize,
    n_ffn_down: usize,
    i_ffn_down: usize,
    i_ffn_gate: usize,
    i_ffn_up: usize,
}

/// `use_more_bits` in `llama_tensor_get_type`: the first and last eighth of
/// the layers, and every third layer in between.
fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    let (i, n) = (i_layer as i64, n_layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

impl State<'_> {
    /// The rule part of `llama_tensor_get_type` (everything before the
    /// "convert_incompatible_tensor" fallback), for the supported presets and
    /// a dense, non-Falcon model. The branches keep llama.cpp's order, even
    /// where two of them give the same type.
    #[allow(clippy::if_same_then_else)]
    fn rules(&mut self, mut new_type: GgmlType, t: &TensorInfo) -> GgmlType {
        use GgmlType::*;
        use Preset as P;
        let name = t.name.as_str();
        let ftype = self.preset;
        let n_gqa = self.facts.n_gqa();

        if name == "output.weight" || (!self.has_output && name == "token_embd.weight") {
            // Tied embeddings take the output tensor's type.
            if let Some(ty) = self.opts.output_tensor_type {
                new_type = ty;
            } else if t.row_len() % new_type.block_size() as u64 != 0 {
                new_type = Q8_0;
            } else if new_type != Q8_0 {
                new_type = Q6K;
            }
        } else if name == "token_embd.weight" {
            // Only the IQ1/IQ2/IQ3_XXS/TQ presets change a separate token
            // embedding's type.
            if let Some(ty) = self.opts.token_embedding_type {
                new_type = ty;
            }
        } else if name.contains("attn_v.weight") {
            let (i, n) = (self.i_attention_wv, self.n_attention_wv);
            if ftype == P::Q2_K {
                new_type = if n_gqa >= 4 { Q4K } else { Q3K };
            } else if ftype == P::Q2_K_S && n_gqa >= 4 {
                new_type = Q4K;
            } else if ftype == P::Q3_K_M {
                new_type = if i < 2 { Q5K } else { Q4K };
            } else if ftype == P::Q3_K_L {
                new_type = Q5K;
            } else if ftype == P::IQ4_NL && n_gqa >= 4 {
                new_type = Q5K;
            } else if (ftype == P::Q4_K_M || ftype == P::Q5_K_M) && use_more_bits(i, n) {
                new_type = Q6K;
            } else if ftype == P::Q4_K_S && i < 4 {
                new_type = Q5K;
            }
            if self.facts.is_70b() && (new_type == Q3K || new_type == Q4K) {
                // 8 query heads share each attn_v head in the 70B models.
                new_type = Q5K;
            }
            self.i_attention_wv += 1;
        } else if name.contains("attn_k.weight") || name.contains("attn_q.weight") {
            // Only the IQ3 presets and 8-expert models change these.
        } else if name.contains("ffn_down") {
            // Dense model: the layer is the running count of ffn_down tensors.
            let (i, n) = (self.i_ffn_down, self.n_ffn_down);
            if ftype == P::Q2_K {
                new_type = Q3K;
            } else if ftype == P::Q2_K_S {
                if i < n / 8 {
                    new_type = Q4K;
                }
            } else if ftype == P::Q3_K_M {
                // Falcon alone keeps Q3_K in some layers.
                new_type = if i < n / 16 { Q5K } else { Q4K };
            } else if ftype == P::Q3_K_L {
                new_type = Q5K;
            } else if ftype == P::Q4_K_M {
                if use_more_bits(i, n) {
                    new_type = Q6K;
                }
            } else if i < n / 8 && ftype == P::IQ4_NL && !self.opts.has_imatrix {
                new_type = Q5K;
            } else if ftype == P::Q5_K_M && use_more_bits(i, n) {
                new_type = Q6K;
            } else if ftype == P::Q4_K_S && i < n / 8 {
                new_type = Q5K;
            } else if (ftype == P::Q4_0 || ftype == P::Q5_0) && self.opts.has_imatrix && i < n / 8 {
                // "Guard against craziness in the first few ffn_down layers".
                new_type = if ftype == P::Q4_0 { Q4_1 } else { Q5_1 };
            }
            self.i_ffn_down += 1;
        } else if name.contains("attn_output.weight") {
            match ftype {
                P::Q2_K => new_type = Q3K,
                P::Q3_K_M => new_type = Q4K,
                P::Q3_K_L => new_type = Q5K,
                _ => {}
            }
        } else if name.contains("attn_qkv.weight") {
            match ftype {
                P::Q3_K_M | P::Q3_K_L => new_type = Q4K,
                P::Q4_K_M => new_type = Q5K,
                P::Q5_K_M => new_type = Q6K,
                _ => {}
            }
        } else if name.contains("ffn_gate") {
            // Only IQ3_XS changes ffn_gate/ffn_up; the counters still advance.
            self.i_ffn_gate += 1;
        } else if name.contains("ffn_up") {
            self.i_ffn_up += 1;
        }
        new_type
    }
}

/// The fallback at the end of `llama_tensor_get_type`: `ty` if the row
/// length fits its blocks, else llama.cpp's substitute (see
/// [`tersor_ggml::llama_fallback_type`]), else the error llama-quantize stops
/// with.
fn fit_row(t: &TensorInfo, ty: GgmlType) -> Result<(GgmlType, Option<GgmlType>)> {
    let nx = t.row_len();
    let unsupported = || {
        QuantError::Unsupported(format!(
            "tensor '{}': rows of {nx} elements are not a multiple of {}'s block size {} and \
             llama.cpp has no fallback for {} (llama-quantize stops with \"Unsupported tensor \
             size encountered\")",
            t.name,
            ty,
            ty.block_size(),
            ty
        ))
    };
    let nx_usize = usize::try_from(nx).map_err(|_| unsupported())?;
    if is_legal(ty, nx_usize) {
        return Ok((ty, None));
    }
    match llama_fallback_type(ty, nx_usize) {
        Some(fb) => Ok((fb, Some(ty))),
        None => Err(unsupported()),
    }
}

/// Plans a preset with all of llama-quantize's type options; see [`plan`].
pub fn plan_with(
    preset: Preset,
    tensors: &[TensorInfo],
    facts: &ModelFacts,
    opts: &PlanOptions,
) -> Result<Vec<TensorPlan>> {
    match facts.arch.as_str() {
        "llama" | "qwen2" => {}
        other => {
            return Err(QuantError::Unsupported(format!(
                "architecture '{other}': tersor mirrors llama-quantize's presets for llama and \
                 qwen2 models only"
            )))
        }
    }
    if facts.n_expert > 1 {
        return Err(QuantError::Unsupported(format!(
            "mixture-of-experts models (expert_count = {}) are not supported: llama.cpp's expert \
             rules were not ported",
            facts.n_expert
        )));
    }
    if preset.requires_imatrix() && !opts.has_imatrix {
        return Err(QuantError::Unsupported(format!(
            "preset {preset} needs an importance matrix: llama-quantize refuses \"IQ1_S, IQ1_M, \
             IQ2_S, IQ2_XXS, IQ2_XS or Q2_K_S quantization without an importance matrix\""
        )));
    }
    let mut seen = HashSet::new();
    for t in tensors {
        if !seen.insert(t.name.as_str()) {
            return Err(QuantError::Shape(format!(
                "tensor '{}' appears twice in the model",
                t.name
            )));
        }
    }

    // llama_model_loader::weights_map order.
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by(|a, b| {
        (layer_of(&a.name), a.name.as_str()).cmp(&(layer_of(&b.name), b.name.as_str()))
    });

    let n_attention_wv = order
        .iter()
        .filter(|t| {
            ["attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight"]
                .iter()
                .any(|s| t.name.contains(s))
        })
        .count();
    let has_output = order.iter().any(|t| t.name == "output.weight");
    // "n_attention_wv is unexpected": every layer of these models has attention.
    if n_attention_wv != 0 && n_attention_wv != facts.n_layer {
        return Err(QuantError::Shape(format!(
            "the model has {n_attention_wv} attention value tensors but {} layers \
             (llama-quantize asserts they are equal)",
            facts.n_layer
        )));
    }

    let mut st = State {
        preset,
        facts,
        opts,
        has_output,
        n_attention_wv,
        i_attention_wv: 0,
        n_ffn_down: facts.n_layer,
        i_ffn_down: 0,
        i_ffn_gate: 0,
        i_ffn_up: 0,
    };
    let default_type = preset.default_type();
    let mixture = !opts.pure && is_quantized(default_type);

    let mut out = Vec::with_capacity(order.len());
    for t in order {
        let mut plan = TensorPlan {
            name: t.name.clone(),
            ty: t.ty,
            quantize: false,
            fallback_from: None,
            overridden: false,
            needs_imatrix: false,
        };
        if !is_quantizable(t, opts) {
            out.push(plan);
            continue;
        }
        let mut new_type = default_type;
        if mixture {
            new_type = st.rules(new_type, t);
        }
        if let Some((_, ty)) = opts
            .overrides
            .iter()
            .rev()
            .find(|(re, _)| re.is_match(&t.name))
        {
            new_type = *ty;
            plan.overridden = true;
        }
        if mixture || plan.overridden {
            let (ty, from) = fit_row(t, new_type)?;
            new_type = ty;
            plan.fallback_from = from;
        }
        // Applied after llama_tensor_get_type, so without a fallback.
        if t.name == "token_embd.weight" {
            if let Some(ty) = opts.token_embedding_type {
                new_type = ty;
                plan.fallback_from = None;
            }
        }
        if t.name == "output.weight" {
            if let Some(ty) = opts.output_tensor_type {
                new_type = ty;
                plan.fallback_from = None;
            }
        }
        plan.quantize = new_type != t.ty;
        plan.ty = if plan.quantize { new_type } else { t.ty };
        if plan.quantize {
            let nx = t.row_len();
            if nx % new_type.block_size() as u64 != 0 {
                return Err(QuantError::Unsupported(format!(
                    "tensor '{}': rows of {nx} elements cannot be stored as {new_type} \
                     (block size {})",
                    t.name,
                    new_type.block_size()
                )));
            }
            plan.needs_imatrix = new_type == GgmlType::Q2K
                && preset == Preset::Q2_K_S
                && t.name != "token_embd.weight";
        }
        out.push(plan);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_numbers_as_sscanf() {
        assert_eq!(layer_of("blk.12.attn_q.weight"), 12);
        assert_eq!(layer_of("blk.3"), 3);
        assert_eq!(layer_of("token_embd.weight"), -1);
        assert_eq!(layer_of("blk.x.attn"), -1);
        assert_eq!(layer_of("blk.-2.a"), -2);
    }

    #[test]
    fn use_more_bits_pattern() {
        // 30 layers: first 3, last 4 (>= 26), and (i - 3) % 3 == 2.
        let got: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(got, vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
    }

    #[test]
    fn names_and_file_types() {
        for p in Preset::ALL {
            assert_eq!(Preset::from_name(p.name()).unwrap(), p);
            assert_eq!(Preset::from_name(&p.name().to_lowercase()).unwrap(), p);
            assert_eq!(
                Preset::from_name(&p.file_type().to_string()).unwrap(),
                p,
                "{p}"
            );
        }
        assert_eq!(Preset::from_name("q4_k").unwrap(), Preset::Q4_K_M);
        let e = Preset::from_name("IQ2_XXS").unwrap_err().to_string();
        assert!(e.contains("not supported") && e.contains("Q4_K_M"), "{e}");
        let e = Preset::from_name("Q7").unwrap_err().to_string();
        assert!(e.contains("unknown") && e.contains("IQ4_NL"), "{e}");
    }
}
