//! The bytes a level stores: a `tersor_quantize::Payload`, serialised.
//!
//! ggml levels store the tensor's llama.cpp blocks as they go into a GGUF file.
//! GPTQ levels store the unpacked checkpoint fields, little-endian, one after the
//! other: codes (`u8`, `[rows, cols]`), scales (`f16`, `[rows, groups]`), zero points
//! (`u8`, `[rows, groups]`), `g_idx` (`u32`, `[cols]`). Lengths follow from the shape
//! and the kind, so a stored payload of the wrong length is detected, never guessed.

use half::f16;
use tersor_quantize::Payload;

use crate::kind::LevelKind;

/// Serialise `p` (which must be of `kind`).
pub fn to_bytes(kind: &LevelKind, p: &Payload) -> Result<Vec<u8>, String> {
    match (kind, p) {
        (LevelKind::Ggml(t), Payload::Ggml { ty, bytes }) if t == ty => Ok(bytes.clone()),
        (
            LevelKind::Gptq {
                bits, group_size, ..
            },
            Payload::Gptq {
                bits: b,
                group_size: g,
                codes,
                scales,
                zeros,
                g_idx,
                ..
            },
        ) if bits == b && group_size == g => {
            let mut out = Vec::with_capacity(codes.len() + scales.len() * 3 + g_idx.len() * 4);
            out.extend_from_slice(codes);
            for s in scales {
                out.extend_from_slice(&s.to_bits().to_le_bytes());
            }
            out.extend_from_slice(zeros);
            for g in g_idx {
                out.extend_from_slice(&g.to_le_bytes());
            }
            Ok(out)
        }
        _ => Err(format!("payload does not match level {kind}")),
    }
}

/// Parse a payload of `kind` for a `[rows, cols]` tensor.
pub fn from_bytes(kind: &LevelKind, rows: usize, cols: usize, b: &[u8]) -> Result<Payload, String> {
    match *kind {
        LevelKind::Ggml(ty) => {
            let want = kind
                .bytes(rows, cols)
                .ok_or_else(|| format!("{kind} cannot hold rows of {cols}"))?;
            if b.len() as u64 != want {
                return Err(format!(
                    "{kind} payload of {} bytes, a {rows}x{cols} tensor needs {want}",
                    b.len()
                ));
            }
            Ok(Payload::Ggml {
                ty,
                bytes: b.to_vec(),
            })
        }
        LevelKind::Gptq {
            bits,
            group_size,
            sym,
        } => {
            let n = rows
                .checked_mul(cols)
                .ok_or_else(|| "tensor shape overflows".to_string())?;
            let groups = rows * cols.div_ceil(group_size.max(1));
            let want = n + groups * 3 + cols * 4;
            if b.len() != want {
                return Err(format!(
                    "{kind} payload of {} bytes, a {rows}x{cols} tensor needs {want}",
                    b.len()
                ));
            }
            let (codes, rest) = b.split_at(n);
            let (sc, rest) = rest.split_at(groups * 2);
            let (zeros, gi) = rest.split_at(groups);
            Ok(Payload::Gptq {
                bits,
                group_size,
                sym,
                codes: codes.to_vec(),
                scales: sc
                    .chunks_exact(2)
                    .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                    .collect(),
                zeros: zeros.to_vec(),
                g_idx: gi
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            })
        }
    }
}
