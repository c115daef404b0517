//! `quantization_config` (in `config.json`) / `quantize_config.json`: the GPTQ settings
//! of a checkpoint, with GPTQModel's per-module `dynamic` overrides.
//!
//! Field names and defaults follow `transformers`' `GPTQConfig` and GPTQModel's
//! `QuantizeConfig.to_dict` (`gptqmodel/quantization/config.py`). `dynamic` maps a
//! pattern to overrides: `"+:regex"` (or a bare regex) applies `{bits, group_size,
//! desc_act, sym}` to the modules it matches, `"-:regex"` leaves them unquantized. As
//! in GPTQModel's `dynamic_get` / `_resolve_dynamic_override`, the first pattern in file
//! order that matches wins, and a pattern matches when it matches at the start of the
//! module name (Python's `re.match`). Key order is therefore significant: this module
//! parses and writes `dynamic` in document order (serde_json's own map would sort it).

use std::fmt;

use regex::Regex;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::error::{GptqError, Result};
use crate::pack::check_bits;

/// The effective settings of one module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleQuant {
    pub bits: u8,
    /// Input columns per group; `-1` for one group per output row (per-channel).
    pub group_size: i64,
    pub sym: bool,
    pub desc_act: bool,
}

impl ModuleQuant {
    /// Input columns per group for a layer with `in_features` columns (`-1` → all).
    pub fn group_len(&self, in_features: usize) -> usize {
        if self.group_size < 0 {
            in_features
        } else {
            self.group_size as usize
        }
    }

    /// Number of groups (`ceil(in / group_size)`, 1 per-channel): the rows of `scales`.
    pub fn n_groups(&self, in_features: usize) -> usize {
        in_features.div_ceil(self.group_len(in_features).max(1))
    }
}

/// Per-module overrides of a `dynamic` rule (absent fields keep the global value).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DynamicOverride {
    pub bits: Option<u8>,
    pub group_size: Option<i64>,
    pub desc_act: Option<bool>,
    pub sym: Option<bool>,
}

/// What a `dynamic` rule does to the modules it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DynamicAction {
    /// `"-:regex"`: the module is not quantized.
    Skip,
    /// `"+:regex"` or a bare regex: quantize with these overrides.
    Override(DynamicOverride),
}

/// One entry of `dynamic`.
#[derive(Clone, Debug)]
pub struct DynamicRule {
    /// The regex (without the `+:` / `-:` prefix).
    pub pattern: String,
    pub action: DynamicAction,
    /// `^(?:pattern)`: matches at the start, as Python's `re.match`.
    regex: Regex,
}

impl PartialEq for DynamicRule {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern && self.action == other.action
    }
}

impl DynamicRule {
    /// A rule; errors if the pattern is not a valid regex.
    pub fn new(pattern: &str, action: DynamicAction) -> Result<Self> {
        let regex = Regex::new(&format!("^(?:{pattern})")).map_err(|e| {
            GptqError::invalid(format!(
                "dynamic pattern `{pattern}` is not a supported regular expression: {e}"
            ))
        })?;
        if let DynamicAction::Override(o) = &action {
            validate_override(pattern, o)?;
        }
        Ok(Self {
            pattern: pattern.to_string(),
            action,
            regex,
        })
    }

    /// Whether the rule applies to `module` (a match at the start of the name).
    pub fn matches(&self, module: &str) -> bool {
        self.regex.is_match(module)
    }

    /// The key as written in JSON (`+:regex` / `-:regex`).
    pub fn key(&self) -> String {
        match self.action {
            DynamicAction::Skip => format!("-:{}", self.pattern),
            DynamicAction::Override(_) => format!("+:{}", self.pattern),
        }
    }
}

fn validate_group_size(g: i64, what: &str) -> Result<()> {
    if g == -1 || g > 0 {
        Ok(())
    } else {
        Err(GptqError::invalid(format!(
            "{what}group_size = {g}: expected a positive number of columns or -1 (per-channel)"
        )))
    }
}

fn validate_override(pattern: &str, o: &DynamicOverride) -> Result<()> {
    if let Some(b) = o.bits {
        check_bits(b).map_err(|e| GptqError::invalid(format!("dynamic `{pattern}`: {e}")))?;
    }
    if let Some(g) = o.group_size {
        validate_group_size(g, &format!("dynamic `{pattern}`: "))?;
    }
    Ok(())
}

/// The GPTQ settings of a checkpoint (`quantization_config`).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizationConfig {
    /// Default code width: 2, 3, 4 or 8.
    pub bits: u8,
    /// Default group size; `-1` = per-channel.
    pub group_size: i64,
    /// Act-order: columns quantized by decreasing Hessian diagonal (`g_idx` not monotonic).
    pub desc_act: bool,
    /// Symmetric grid: every zero point is `2^(bits-1)` (kernels such as vLLM's Marlin
    /// path rely on it and ignore `qzeros`).
    pub sym: bool,
    pub true_sequential: bool,
    /// GPTQ's Hessian dampening, as a fraction of the mean diagonal.
    pub damp_percent: f64,
    pub static_groups: bool,
    /// Per-module overrides in file order (first match wins).
    pub dynamic: Vec<DynamicRule>,
    /// Optional `meta` object written as is (e.g. `{"quantizer": ["tersor:0.1.0"]}`).
    pub meta: Option<Value>,
}

impl Default for QuantizationConfig {
    /// `transformers`' `GPTQConfig` defaults with 4 bits.
    fn default() -> Self {
        Self {
            bits: 4,
            group_size: 128,
            desc_act: false,
            sym: true,
            true_sequential: true,
            damp_percent: 0.1,
            static_groups: false,
            dynamic: Vec::new(),
            meta: None,
        }
    }
}

impl QuantizationConfig {
    /// Checks every field (called by the parser and the writer).
    pub fn validate(&self) -> Result<()> {
        check_bits(self.bits)?;
        validate_group_size(self.group_size, "")?;
        if !(self.damp_percent.is_finite() && (0.0..=1.0).contains(&self.damp_percent)) {
            return Err(GptqError::invalid(format!(
                "damp_percent = {} is not in [0, 1]",
                self.damp_percent
            )));
        }
        for r in &self.dynamic {
            if let DynamicAction::Override(o) = &r.action {
                validate_override(&r.pattern, o)?;
            }
        }
        Ok(())
    }

    /// The settings of `module` (a full module name such as
    /// `model.layers.0.self_attn.q_proj`): the first matching `dynamic` rule applied to
    /// the global settings, `None` when that rule is a `-:` skip.
    pub fn resolve(&self, module: &str) -> Option<ModuleQuant> {
        let mut q = ModuleQuant {
            bits: self.bits,
            group_size: self.group_size,
            sym: self.sym,
            desc_act: self.desc_act,
        };
        if let Some(rule) = self.dynamic.iter().find(|r| r.matches(module)) {
            match &rule.action {
                DynamicAction::Skip => return None,
                DynamicAction::Override(o) => {
                    q.bits = o.bits.unwrap_or(q.bits);
                    q.group_size = o.group_size.unwrap_or(q.group_size);
                    q.sym = o.sym.unwrap_or(q.sym);
                    q.desc_act = o.desc_act.unwrap_or(q.desc_act);
                }
            }
        }
        Some(q)
    }

    /// Parses a `quantization_config` object / `quantize_config.json` from JSON text,
    /// keeping the order of `dynamic`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| GptqError::invalid(e.to_string()))
    }

    /// The `quantization_config` of a `config.json` given as text: `Ok(None)` when it
    /// has none, an error when it is not a GPTQ v1 configuration.
    pub fn from_hf_config_str(text: &str) -> Result<Option<Self>> {
        #[derive(Deserialize)]
        struct HfConfig {
            #[serde(default)]
            quantization_config: Option<QuantizationConfig>,
        }
        let c: HfConfig = serde_json::from_str(text)
            .map_err(|e| GptqError::invalid(format!("quantization_config: {e}")))?;
        Ok(c.quantization_config)
    }

    /// Pretty JSON text, `dynamic` in order.
    pub fn to_json_string(&self) -> String {
        serde_json::to_string_pretty(self).expect("config serializes to JSON")
    }
}

/// The JSON form (fields and aliases as written by AutoGPTQ, GPTQModel, transformers).
#[derive(Deserialize)]
struct RawConfig {
    bits: u8,
    #[serde(default = "default_group_size")]
    group_size: i64,
    #[serde(default)]
    desc_act: bool,
    #[serde(default = "default_true")]
    sym: bool,
    #[serde(default = "default_true")]
    true_sequential: bool,
    #[serde(default = "default_damp")]
    damp_percent: f64,
    #[serde(default)]
    static_groups: bool,
    #[serde(default)]
    dynamic: Option<OrderedDynamic>,
    quant_method: Option<String>,
    method: Option<String>,
    checkpoint_format: Option<String>,
    format: Option<String>,
    pack_dtype: Option<String>,
    #[serde(default)]
    meta: Option<Value>,
}

fn default_group_size() -> i64 {
    128
}
fn default_true() -> bool {
    true
}
fn default_damp() -> f64 {
    0.1
}

/// `dynamic` entries in document order.
struct OrderedDynamic(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedDynamic {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedDynamic;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object mapping module patterns to overrides")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<OrderedDynamic, A::Error> {
                let mut v = Vec::new();
                while let Some((k, x)) = m.next_entry::<String, Value>()? {
                    v.push((k, x));
                }
                Ok(OrderedDynamic(v))
            }
        }
        d.deserialize_map(V)
    }
}

fn parse_override(key: &str, v: &Value) -> Result<DynamicOverride> {
    let obj = v.as_object().ok_or_else(|| {
        GptqError::invalid(format!("dynamic `{key}`: expected an object, found {v}"))
    })?;
    let bad = |field: &str, want: &str| {
        GptqError::invalid(format!(
            "dynamic `{key}`: `{field}` is not {want}: {}",
            obj[field]
        ))
    };
    let mut o = DynamicOverride::default();
    if let Some(x) = obj.get("bits").filter(|x| !x.is_null()) {
        let b = x
            .as_u64()
            .and_then(|b| u8::try_from(b).ok())
            .ok_or_else(|| bad("bits", "an integer"))?;
        o.bits = Some(b);
    }
    if let Some(x) = obj.get("group_size").filter(|x| !x.is_null()) {
        o.group_size = Some(x.as_i64().ok_or_else(|| bad("group_size", "an integer"))?);
    }
    if let Some(x) = obj.get("desc_act").filter(|x| !x.is_null()) {
        o.desc_act = Some(x.as_bool().ok_or_else(|| bad("desc_act", "a boolean"))?);
    }
    if let Some(x) = obj.get("sym").filter(|x| !x.is_null()) {
        o.sym = Some(x.as_bool().ok_or_else(|| bad("sym", "a boolean"))?);
    }
    Ok(o)
}

impl TryFrom<RawConfig> for QuantizationConfig {
    type Error = GptqError;

    fn try_from(r: RawConfig) -> Result<Self> {
        let method = r.quant_method.or(r.method).unwrap_or_else(|| "gptq".into());
        if !method.eq_ignore_ascii_case("gptq") {
            return Err(GptqError::invalid(format!(
                "quant_method `{method}` is not GPTQ"
            )));
        }
        let fmt = r
            .checkpoint_format
            .or(r.format)
            .unwrap_or_else(|| "gptq".into());
        if !fmt.eq_ignore_ascii_case("gptq") {
            return Err(GptqError::invalid(format!(
                "checkpoint_format `{fmt}` is not supported (only `gptq`, the v1 layout with \
                 zero points stored minus one)"
            )));
        }
        if let Some(p) = r.pack_dtype {
            if p != "int32" {
                return Err(GptqError::invalid(format!(
                    "pack_dtype `{p}` is not supported (only int32)"
                )));
            }
        }
        let mut dynamic = Vec::new();
        for (key, v) in r.dynamic.map(|d| d.0).unwrap_or_default() {
            let rule = if let Some(p) = key.strip_prefix("-:") {
                DynamicRule::new(p, DynamicAction::Skip)?
            } else {
                let p = key.strip_prefix("+:").unwrap_or(&key);
                DynamicRule::new(p, DynamicAction::Override(parse_override(&key, &v)?))?
            };
            dynamic.push(rule);
        }
        let c = QuantizationConfig {
            bits: r.bits,
            group_size: r.group_size,
            desc_act: r.desc_act,
            sym: r.sym,
            true_sequential: r.true_sequential,
            damp_percent: r.damp_percent,
            static_groups: r.static_groups,
            dynamic,
            meta: r.meta,
        };
        c.validate()?;
        Ok(c)
    }
}

impl<'de> Deserialize<'de> for QuantizationConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let raw = RawConfig::deserialize(d)?;
        QuantizationConfig::try_from(raw).map_err(de::Error::custom)
    }
}

/// `dynamic` written in rule order.
struct DynamicJson<'a>(&'a [DynamicRule]);

impl Serialize for DynamicJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for r in self.0 {
            let mut o = serde_json::Map::new();
            if let DynamicAction::Override(x) = &r.action {
                if let Some(b) = x.bits {
                    o.insert("bits".into(), b.into());
                }
                if let Some(g) = x.group_size {
                    o.insert("group_size".into(), g.into());
                }
                if let Some(d) = x.desc_act {
                    o.insert("desc_act".into(), d.into());
                }
                if let Some(y) = x.sym {
                    o.insert("sym".into(), y.into());
                }
            }
            m.serialize_entry(&r.key(), &o)?;
        }
        m.end()
    }
}

impl Serialize for QuantizationConfig {
    /// The union of what AutoGPTQ (`quantize_config.json`), GPTQModel and
    /// `transformers` / optimum read: `quant_method` + `checkpoint_format` (and
    /// GPTQModel's newer `method` / `format` spellings), `pack_dtype` int32.
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("bits", &self.bits)?;
        m.serialize_entry("group_size", &self.group_size)?;
        m.serialize_entry("desc_act", &self.desc_act)?;
        m.serialize_entry("sym", &self.sym)?;
        m.serialize_entry("true_sequential", &self.true_sequential)?;
        m.serialize_entry("damp_percent", &self.damp_percent)?;
        m.serialize_entry("static_groups", &self.static_groups)?;
        if !self.dynamic.is_empty() {
            m.serialize_entry("dynamic", &DynamicJson(&self.dynamic))?;
        }
        m.serialize_entry("quant_method", "gptq")?;
        m.serialize_entry("checkpoint_format", "gptq")?;
        m.serialize_entry("method", "gptq")?;
        m.serialize_entry("format", "gptq")?;
        m.serialize_entry("pack_dtype", "int32")?;
        if let Some(meta) = &self.meta {
            m.serialize_entry("meta", meta)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_first_match_in_file_order() {
        // "z" sorts after "a": a sorted map would try the skip rule first.
        let text = r#"{"bits": 4, "group_size": 128, "sym": true, "desc_act": false,
            "dynamic": {
                "+:z?model\\.layers\\.0\\.": {"bits": 8, "group_size": 32},
                "-:.*mlp": {},
                "model\\.layers\\.1\\..*q_proj$": {"bits": 2, "sym": false, "desc_act": true}
            }}"#;
        let c = QuantizationConfig::from_json_str(text).unwrap();
        let q = |m: &str| c.resolve(m);
        let base = ModuleQuant {
            bits: 4,
            group_size: 128,
            sym: true,
            desc_act: false,
        };
        assert_eq!(
            q("model.layers.0.mlp.up_proj"),
            Some(ModuleQuant {
                bits: 8,
                group_size: 32,
                ..base
            })
        );
        assert_eq!(q("model.layers.1.mlp.up_proj"), None);
        assert_eq!(
            q("model.layers.1.self_attn.q_proj"),
            Some(ModuleQuant {
                bits: 2,
                sym: false,
                desc_act: true,
                ..base
            })
        );
        // `re.match` semantics: anchored at the start only.
        assert_eq!(q("model.layers.1.self_attn.k_proj"), Some(base));
        assert_eq!(q("x.model.layers.0.self_attn.k_proj"), Some(base));
        // Writing keeps the order, and the text parses back to the same config.
        let out = c.to_json_string();
        let (a, b) = (
            out.find("layers\\\\.0").unwrap(),
            out.find("-:.*mlp").unwrap(),
        );
        assert!(a < b, "{out}");
        assert_eq!(QuantizationConfig::from_json_str(&out).unwrap(), c);
    }

    #[test]
    fn invalid_configs_are_rejected_with_reasons() {
        let err = |t: &str| {
            QuantizationConfig::from_json_str(t)
                .unwrap_err()
                .to_string()
        };
        assert!(err(r#"{"bits": 5}"#).contains("5-bit"));
        assert!(err(r#"{"bits": 4, "group_size": 0}"#).contains("group_size = 0"));
        assert!(err(r#"{"bits": 4, "quant_method": "awq"}"#).contains("awq"));
        assert!(err(r#"{"bits": 4, "checkpoint_format": "gptq_v2"}"#).contains("gptq_v2"));
        assert!(err(r#"{"bits": 4, "pack_dtype": "int16"}"#).contains("int16"));
        assert!(err(r#"{"bits": 4, "damp_percent": 2.0}"#).contains("damp_percent"));
        assert!(err(r#"{"bits": 4, "dynamic": {"+:(": {}}}"#).contains("`(`"));
        assert!(err(r#"{"bits": 4, "dynamic": {"+:a": {"bits": 6}}}"#).contains("6-bit"));
        assert!(err(r#"{"bits": 4, "dynamic": {"+:a": {"sym": 1}}}"#).contains("`sym`"));
        assert!(err(r#"{"group_size": 4}"#).contains("bits"));
        // Defaults and aliases of other writers.
        let c = QuantizationConfig::from_json_str(
            r#"{"bits": 3, "method": "gptq", "format": "gptq", "lm_head": false}"#,
        )
        .unwrap();
        assert_eq!(
            (c.bits, c.group_size, c.sym, c.desc_act),
            (3, 128, true, false)
        );
        assert_eq!(
            QuantizationConfig::from_hf_config_str(r#"{"model_type": "llama"}"#).unwrap(),
            None
        );
    }
}
