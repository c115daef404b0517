//! The units of an allocation (the tensors whose level is searched) and the level
//! kinds each may take.

use tersor_ggml::GgmlType;
use tersor_levels::LevelKind;
use tersor_model::{LinearKind, Llama, TensorNaming};

use crate::{CompressError, Format, Result};

/// Where a unit sits in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitRef {
    /// The token embedding (also the output projection when tied).
    Embedding,
    /// The output projection of a model with untied embeddings.
    Output,
    Linear(usize, LinearKind),
    /// All linears of one sublayer of a block, set together (the sparsity search's
    /// units when whole sublayers may be skipped). Its `rows × cols` is the sublayer's
    /// parameter count (`cols` = 1).
    Sublayer(usize, Sublayer),
}

/// A block's two residual branches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sublayer {
    Attn,
    Mlp,
}

impl Sublayer {
    pub const BOTH: [Sublayer; 2] = [Sublayer::Attn, Sublayer::Mlp];

    /// Its linears, the output projection last.
    pub fn kinds(self) -> &'static [LinearKind] {
        match self {
            Sublayer::Attn => &[LinearKind::Q, LinearKind::K, LinearKind::V, LinearKind::O],
            Sublayer::Mlp => &[LinearKind::Gate, LinearKind::Up, LinearKind::Down],
        }
    }

    /// `attn` / `mlp`, as in `blk.3.attn` (`tersor depth`'s names).
    pub fn tag(self) -> &'static str {
        match self {
            Sublayer::Attn => "attn",
            Sublayer::Mlp => "mlp",
        }
    }
}

/// One tensor whose level is searched.
#[derive(Clone, Debug)]
pub struct Unit {
    /// GGUF name (`blk.3.attn_q.weight`); the database and reports use it.
    pub name: String,
    pub what: UnitRef,
    pub rows: usize,
    pub cols: usize,
    /// Level kinds this tensor may take (legal for its row length).
    pub kinds: Vec<LevelKind>,
}

impl Unit {
    pub fn params(&self) -> u64 {
        (self.rows * self.cols) as u64
    }

    /// The first block whose output changes when this unit does (`n_layers`: only
    /// the output head).
    pub fn first_layer(&self, n_layers: usize) -> usize {
        match self.what {
            UnitRef::Embedding => 0,
            UnitRef::Linear(l, _) | UnitRef::Sublayer(l, _) => l,
            UnitRef::Output => n_layers,
        }
    }
}

/// The default level set of a tensor with rows of `cols` (the choice):
/// 256-multiples get the k-quants and Q8_0, other 32-multiples Q4_0, IQ4_NL, Q5_0
/// and Q8_0. Q4_1/Q5_1 are left out: the default LM's reference weights are Q4_1
/// themselves, which would make Q4_1 a free lossless level.
pub fn default_gguf_kinds(cols: usize) -> Vec<LevelKind> {
    use GgmlType::*;
    let types: &[GgmlType] = if cols % 256 == 0 {
        &[Q2K, Q3K, Q4K, Q5K, Q6K, Q8_0]
    } else {
        &[Q4_0, IQ4NL, Q5_0, Q8_0]
    };
    types
        .iter()
        .filter(|&&t| tersor_ggml::is_legal(t, cols))
        .map(|&t| LevelKind::Ggml(t))
        .collect()
}

/// GPTQ-format default: bits {2, 3, 4, 8} × groups {32, 64, 128}, symmetric.
pub fn default_gptq_kinds() -> Vec<LevelKind> {
    let mut v = Vec::new();
    for bits in [2, 3, 4, 8] {
        for group_size in [32, 64, 128] {
            v.push(LevelKind::Gptq {
                bits,
                group_size,
                sym: true,
            });
        }
    }
    v
}

/// The units of `model` for `format`, with the level kinds of `levels` (or the
/// defaults) that each tensor's row length allows.
pub fn units(model: &Llama, format: Format, levels: Option<&[LevelKind]>) -> Result<Vec<Unit>> {
    let c = model.config();
    let naming = TensorNaming::Gguf;
    let mut out = Vec::new();
    let mut push = |name: String, what: UnitRef, rows: usize, cols: usize| -> Result<()> {
        let kinds: Vec<LevelKind> = match (levels, format) {
            (Some(l), _) => l
                .iter()
                .copied()
                .filter(|k| k.bytes(rows, cols).is_some())
                .collect(),
            (None, Format::Gguf) => default_gguf_kinds(cols),
            (None, Format::Gptq) => default_gptq_kinds(),
        };
        if let Some(bad) = kinds.iter().find(|k| {
            !matches!(
                (k, format),
                (LevelKind::Ggml(_), Format::Gguf) | (LevelKind::Gptq { .. }, Format::Gptq)
            )
        }) {
            return Err(CompressError::Usage(format!(
                "level {bad} cannot be written to a {format} output"
            )));
        }
        if kinds.is_empty() {
            return Err(CompressError::Usage(format!(
                "{name} (rows of {cols}) can take none of the levels {}",
                levels
                    .unwrap_or_default()
                    .iter()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        out.push(Unit {
            name,
            what,
            rows,
            cols,
            kinds,
        });
        Ok(())
    };
    // GPTQ checkpoints keep embeddings in fp16 (the format's convention).
    if format == Format::Gguf {
        push(
            naming.embed().to_string(),
            UnitRef::Embedding,
            c.vocab_size,
            c.hidden_size,
        )?;
    }
    for l in 0..model.n_layers() {
        for kind in LinearKind::ALL {
            let (rows, cols) = model.linear_weight(l, kind)?.dims2()?;
            push(
                naming.linear(l, kind, "weight"),
                UnitRef::Linear(l, kind),
                rows,
                cols,
            )?;
        }
    }
    if format == Format::Gguf && !c.tie_embeddings {
        push(
            naming.lm_head().to_string(),
            UnitRef::Output,
            c.vocab_size,
            c.hidden_size,
        )?;
    }
    Ok(out)
}

/// Every block linear of `model` as a unit without level kinds (jobs whose levels are
/// not format types: sparsity, low rank), in block order, `LinearKind::ALL` within a
/// block.
pub fn block_linears(model: &Llama) -> Result<Vec<Unit>> {
    let mut out = Vec::with_capacity(model.n_layers() * LinearKind::ALL.len());
    for l in 0..model.n_layers() {
        for kind in LinearKind::ALL {
            let (rows, cols) = model.linear_weight(l, kind)?.dims2()?;
            out.push(Unit {
                name: TensorNaming::Gguf.linear(l, kind, "weight"),
                what: UnitRef::Linear(l, kind),
                rows,
                cols,
                kinds: Vec::new(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sets_follow_row_length() {
        let k = default_gguf_kinds(1536);
        assert_eq!(k.len(), 6);
        assert_eq!(k[0].to_string(), "Q2_K");
        let k = default_gguf_kinds(576);
        let names: Vec<String> = k.iter().map(|k| k.to_string()).collect();
        assert_eq!(names, ["Q4_0", "IQ4_NL", "Q5_0", "Q8_0"]);
        assert!(default_gguf_kinds(100).is_empty());
        assert_eq!(default_gptq_kinds().len(), 12);
    }
}
