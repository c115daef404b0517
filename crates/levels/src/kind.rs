//! What a level is: the format one tensor is compressed to.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tersor_ggml::GgmlType;

/// One compressed version of a tensor. New kinds (sparsity, low rank, a dropped
/// block) are new variants; the database stores every kind the same way (a name,
/// a byte cost, an opaque payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LevelKind {
    /// A llama.cpp block type (`Q4_K`, `IQ4_NL`, …).
    Ggml(GgmlType),
    /// A GPTQ checkpoint module: `bits`-bit codes in groups of `group_size` input
    /// columns (the row length for per-channel).
    Gptq {
        bits: u32,
        group_size: usize,
        sym: bool,
    },
}

impl LevelKind {
    /// Bytes the tensor takes in the output file at this level.
    ///
    /// ggml: the block bytes (`ggml_row_size`). GPTQ: `qweight` + `qzeros` (both
    /// `bits` per value, packed in int32 words) + fp16 `scales` + int32 `g_idx`, as
    /// GPTQModel's packer lays them out.
    pub fn bytes(&self, rows: usize, cols: usize) -> Option<u64> {
        match *self {
            LevelKind::Ggml(ty) => {
                if !tersor_ggml::is_legal(ty, cols) {
                    return None;
                }
                let row = (cols / ty.block_size() * ty.type_size()) as u64;
                Some(row * rows as u64)
            }
            LevelKind::Gptq {
                bits, group_size, ..
            } => {
                let (r, c, b) = (rows as u64, cols as u64, bits as u64);
                let g = c.div_ceil(group_size.max(1) as u64);
                // qweight [c*b/32, r] int32; qzeros [g, r*b/32] int32; scales [g, r] fp16.
                let qweight = (c * b).div_ceil(32) * r * 4;
                let qzeros = g * (r * b).div_ceil(32) * 4;
                Some(qweight + qzeros + g * r * 2 + c * 4)
            }
        }
    }
}

impl fmt::Display for LevelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LevelKind::Ggml(ty) => f.write_str(&ty.name().to_ascii_uppercase()),
            LevelKind::Gptq {
                bits,
                group_size,
                sym,
            } => {
                write!(f, "gptq:{bits}:g{group_size}")?;
                if !sym {
                    f.write_str(":asym")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for LevelKind {
    type Err = String;

    /// `Q4_K`, `iq4_nl`, `gptq:3:g64`, `gptq:4:g128:asym`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("gptq:") {
            let mut parts = rest.split(':');
            let bits: u32 = parts
                .next()
                .and_then(|b| b.parse().ok())
                .filter(|b| [2, 3, 4, 8].contains(b))
                .ok_or_else(|| format!("`{s}`: GPTQ bits must be 2, 3, 4 or 8"))?;
            let group_size: usize = parts
                .next()
                .and_then(|g| g.strip_prefix('g'))
                .and_then(|g| g.parse().ok())
                .filter(|&g| g > 0)
                .ok_or_else(|| format!("`{s}`: expected a group size like g128"))?;
            let sym = match parts.next() {
                None | Some("sym") => true,
                Some("asym") => false,
                Some(o) => return Err(format!("`{s}`: unknown GPTQ option `{o}`")),
            };
            if parts.next().is_some() {
                return Err(format!("`{s}`: too many fields"));
            }
            return Ok(LevelKind::Gptq {
                bits,
                group_size,
                sym,
            });
        }
        GgmlType::from_name(&s.to_ascii_lowercase())
            .or_else(|| GgmlType::from_name(s))
            .map(LevelKind::Ggml)
            .ok_or_else(|| format!("`{s}` is neither a ggml type nor a GPTQ spec like gptq:3:g64"))
    }
}

impl Serialize for LevelKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for LevelKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in ["Q4_K", "IQ4_NL", "Q8_0", "gptq:3:g64", "gptq:4:g128:asym"] {
            let k: LevelKind = s.parse().unwrap();
            assert_eq!(k.to_string(), s);
        }
        assert!("gptq:5:g64".parse::<LevelKind>().is_err());
        assert!("gptq:4:128".parse::<LevelKind>().is_err());
        assert!("Q9_9".parse::<LevelKind>().is_err());
    }

    #[test]
    fn byte_costs() {
        // Q2_K: 84 bytes per 256 weights = 2.625 bits per weight.
        let q2k = LevelKind::Ggml(GgmlType::Q2K);
        assert_eq!(q2k.bytes(576, 1536), Some(576 * 6 * 84));
        // Rows of 576 cannot hold 256-blocks.
        assert_eq!(q2k.bytes(1536, 576), None);
        // GPTQ 4-bit g128 on a 576x576 layer: 5 groups (the last of 64 columns).
        let g = LevelKind::Gptq {
            bits: 4,
            group_size: 128,
            sym: true,
        };
        let expect = 576 * 4 / 32 * 576 * 4 + 5 * (576 * 4 / 32) * 4 + 5 * 576 * 2 + 576 * 4;
        assert_eq!(g.bytes(576, 576), Some(expect as u64));
    }
}
