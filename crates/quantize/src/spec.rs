//! What to quantize to (`--type`) and how (`--method`), parsed from the command line.

use std::fmt;
use std::str::FromStr;

use tersor_ggml::GgmlType;
use tersor_quant::gptq_grid::GptqFormatGrid;
use tersor_quant::preset::Preset;

use crate::error::{QuantizeError, Result};

/// How each layer is rounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Round to nearest: llama.cpp's reference quantizers (GGUF) or min-max per group
    /// (GPTQ format). Needs no calibration.
    Rtn,
    /// Rounding and scale search weighted by per-column importance (the diagonal of
    /// `X^T X`), as llama.cpp's `--imatrix`.
    Imatrix,
    /// GPTQ (Frantar et al. 2022): Hessian-aware rounding with error feedback.
    Gptq,
}

/// `--method`: a base method, optionally preceded by AWQ scaling (`awq+gptq`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodSpec {
    pub awq: bool,
    pub base: Method,
}

impl MethodSpec {
    /// Whether the method needs calibration activations.
    pub fn needs_calibration(&self) -> bool {
        self.awq || self.base != Method::Rtn
    }
}

impl FromStr for MethodSpec {
    type Err = QuantizeError;
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        let (awq, rest) = match lower.strip_prefix("awq+") {
            Some(r) => (true, r),
            None if lower == "awq" => (true, "rtn"),
            None => (false, lower.as_str()),
        };
        let base = match rest {
            "rtn" => Method::Rtn,
            "imatrix" => Method::Imatrix,
            "gptq" => Method::Gptq,
            _ => {
                return Err(QuantizeError::Usage(format!(
                    "unknown method `{s}`: expected rtn, imatrix, gptq, awq+rtn, awq+imatrix or awq+gptq"
                )))
            }
        };
        Ok(MethodSpec { awq, base })
    }
}

impl fmt::Display for MethodSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base = match self.base {
            Method::Rtn => "rtn",
            Method::Imatrix => "imatrix",
            Method::Gptq => "gptq",
        };
        if self.awq {
            write!(f, "awq+{base}")
        } else {
            f.write_str(base)
        }
    }
}

/// A GPTQ-format target: `gptq:BITS[:gGROUP|:pc][:asym][:act]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GptqSpec {
    pub bits: u32,
    /// `None`: one group per row (per-channel, `group_size: -1` in the config).
    pub group_size: Option<usize>,
    pub sym: bool,
    /// Quantize columns in order of decreasing Hessian diagonal (`desc_act`).
    pub act_order: bool,
}

impl GptqSpec {
    /// The rounding grid this spec gives a row of `cols` weights: per-channel specs
    /// (`:pc`) are one group as wide as the row.
    pub fn grid(&self, cols: usize) -> tersor_quant::Result<GptqFormatGrid> {
        GptqFormatGrid::new(self.bits, self.group_size.unwrap_or(cols), self.sym)
    }
}

impl fmt::Display for GptqSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gptq:{}", self.bits)?;
        match self.group_size {
            Some(g) => write!(f, ":g{g}")?,
            None => f.write_str(":pc")?,
        }
        if !self.sym {
            f.write_str(":asym")?;
        }
        if self.act_order {
            f.write_str(":act")?;
        }
        Ok(())
    }
}

/// `--type`: a llama.cpp preset, a single ggml type, or a GPTQ spec.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// llama-quantize's per-tensor choice for a preset (`Q4_K_M`, `Q2_K`, `IQ4_NL`, ...).
    Preset(Preset),
    /// Every quantizable tensor gets this ggml type (falling back as llama.cpp does
    /// where the row length forbids it).
    Uniform(GgmlType),
    /// GPTQ-format safetensors directory.
    Gptq(GptqSpec),
}

impl Target {
    pub fn is_gguf(&self) -> bool {
        !matches!(self, Target::Gptq(_))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Preset(p) => f.write_str(p.name()),
            Target::Uniform(t) => write!(f, "{} (all tensors)", t.name()),
            Target::Gptq(g) => g.fmt(f),
        }
    }
}

impl FromStr for Target {
    type Err = QuantizeError;
    fn from_str(s: &str) -> Result<Self> {
        if let Some(rest) = s.strip_prefix("gptq:") {
            return parse_gptq(s, rest).map(Target::Gptq);
        }
        if let Ok(p) = Preset::from_name(s) {
            return Ok(Target::Preset(p));
        }
        let upper = s.to_ascii_uppercase();
        match GgmlType::from_name(&upper) {
            Some(t) if QUANT_TYPES.contains(&t) => Ok(Target::Uniform(t)),
            _ => Err(QuantizeError::Usage(format!(
                "unknown --type `{s}`: expected a llama.cpp preset ({}), a ggml type ({}) or a GPTQ spec such as gptq:4:g128 or gptq:3:g64:asym",
                Preset::ALL.iter().map(|p| p.name()).collect::<Vec<_>>().join(", "),
                QUANT_TYPES.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

/// The ggml types tersor writes.
pub const QUANT_TYPES: [GgmlType; 14] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::IQ4NL,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

fn parse_gptq(whole: &str, rest: &str) -> Result<GptqSpec> {
    let bad = |why: &str| {
        QuantizeError::Usage(format!(
            "bad GPTQ spec `{whole}`: {why} (form: gptq:BITS[:gN|:pc][:asym][:act], e.g. gptq:4:g128, gptq:3:g64:asym)"
        ))
    };
    let mut parts = rest.split(':');
    let bits: u32 = parts
        .next()
        .and_then(|b| b.parse().ok())
        .ok_or_else(|| bad("missing bit width"))?;
    if ![2, 3, 4, 8].contains(&bits) {
        return Err(bad("bits must be 2, 3, 4 or 8"));
    }
    let mut spec = GptqSpec {
        bits,
        group_size: Some(128),
        sym: true,
        act_order: false,
    };
    for p in parts {
        match p {
            "pc" | "g-1" => spec.group_size = None,
            "asym" => spec.sym = false,
            "sym" => spec.sym = true,
            "act" => spec.act_order = true,
            g if g.starts_with('g') => {
                let n: usize = g[1..].parse().map_err(|_| bad("bad group size"))?;
                if n == 0 || n % 32 != 0 {
                    return Err(bad("group size must be a positive multiple of 32"));
                }
                spec.group_size = Some(n);
            }
            _ => return Err(bad(&format!("unknown part `{p}`"))),
        }
    }
    Ok(spec)
}

/// `--tensor-type REGEX=TYPE`.
pub fn parse_tensor_override(s: &str) -> Result<(regex::Regex, GgmlType)> {
    let (re, ty) = s.rsplit_once('=').ok_or_else(|| {
        QuantizeError::Usage(format!(
            "bad --tensor-type `{s}`: expected REGEX=TYPE, e.g. ffn_down=Q6_K"
        ))
    })?;
    let re = regex::Regex::new(re)
        .map_err(|e| QuantizeError::Usage(format!("bad --tensor-type regex `{re}`: {e}")))?;
    let t = GgmlType::from_name(&ty.to_ascii_uppercase())
        .filter(|t| QUANT_TYPES.contains(t))
        .ok_or_else(|| QuantizeError::Usage(format!("bad --tensor-type type `{ty}`")))?;
    Ok((re, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_methods() {
        let m: MethodSpec = "awq+gptq".parse().unwrap();
        assert!(m.awq && m.base == Method::Gptq);
        assert_eq!(m.to_string(), "awq+gptq");
        assert!(
            "rtn".parse::<MethodSpec>().unwrap()
                == MethodSpec {
                    awq: false,
                    base: Method::Rtn
                }
        );
        assert!("foo".parse::<MethodSpec>().is_err());
    }

    #[test]
    fn parses_gptq_specs() {
        let Target::Gptq(g) = "gptq:3:g64:asym".parse().unwrap() else {
            panic!()
        };
        assert_eq!((g.bits, g.group_size, g.sym), (3, Some(64), false));
        let Target::Gptq(g) = "gptq:4:pc:act".parse().unwrap() else {
            panic!()
        };
        assert_eq!((g.group_size, g.act_order), (None, true));
        // Per-channel: one group as wide as the row; grouped specs keep their group.
        assert_eq!(g.grid(576).unwrap().group_size, 576);
        let Target::Gptq(g) = "gptq:3:g64:asym".parse().unwrap() else {
            panic!()
        };
        let grid = g.grid(576).unwrap();
        assert_eq!((grid.bits, grid.group_size, grid.sym), (3, 64, false));
        assert!("gptq:5".parse::<Target>().is_err());
        assert!("gptq:4:g33".parse::<Target>().is_err());
        assert!("gptq:4:x".parse::<Target>().is_err());
    }

    #[test]
    fn parses_overrides() {
        let (re, t) = parse_tensor_override("ffn_down=q6_k").unwrap();
        assert!(re.is_match("blk.3.ffn_down.weight"));
        assert_eq!(t, GgmlType::Q6K);
        assert!(parse_tensor_override("nope").is_err());
        assert!(parse_tensor_override("x=Q9_9").is_err());
    }
}
