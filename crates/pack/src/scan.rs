//! Recognises a file's structure so that each tensor gets its own segment
//! and plane layout. Recognition is best effort: a file that is not a
//! well-formed safetensors or GGUF file (or one whose tensors overlap) is
//! packed as one generic segment, which is always lossless.

use std::path::Path;

use crate::format::MemberKind;
use crate::planes::Layout;

/// A planned segment: a byte range of the file and how to code it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    pub start: u64,
    pub end: u64,
    pub layout: Option<Layout>,
}

/// Plans the segments of `bytes` (the contents of `path`, which GGUF
/// recognition reopens through the GGUF reader).
pub fn plan(path: Option<&Path>, bytes: &[u8]) -> (MemberKind, Vec<Plan>) {
    let len = bytes.len() as u64;
    let typed = if bytes.starts_with(&tersor_gguf::GGUF_MAGIC) {
        gguf_ranges(path, bytes).map(|r| (MemberKind::Gguf, r))
    } else {
        safetensors_ranges(bytes).map(|r| (MemberKind::Safetensors, r))
    };
    let (kind, mut ranges) = typed.unwrap_or((MemberKind::Other, Vec::new()));
    ranges.sort_by_key(|r| (r.start, r.end));
    let overlapping = ranges.windows(2).any(|w| w[1].start < w[0].end)
        || ranges.iter().any(|r| r.end > len || r.start > r.end);
    if overlapping {
        return (MemberKind::Other, fill(Vec::new(), len));
    }
    ranges.retain(|r| r.end > r.start);
    (kind, fill(ranges, len))
}

/// Fills the gaps between typed ranges with generic segments; the first
/// gap is the file's header.
fn fill(ranges: Vec<Plan>, len: u64) -> Vec<Plan> {
    let mut out = Vec::new();
    let mut at = 0;
    for r in ranges {
        if r.start > at {
            out.push(Plan {
                name: if at == 0 {
                    "<header>".into()
                } else {
                    String::new()
                },
                start: at,
                end: r.start,
                layout: None,
            });
        }
        at = r.end;
        out.push(r);
    }
    if len > at {
        out.push(Plan {
            name: if at == 0 {
                "<file>".into()
            } else {
                String::new()
            },
            start: at,
            end: len,
            layout: None,
        });
    }
    out
}

fn gguf_ranges(path: Option<&Path>, bytes: &[u8]) -> Option<Vec<Plan>> {
    let file = match path {
        Some(p) => tersor_gguf::GgufFile::open(p).ok()?,
        None => tersor_gguf::GgufFile::from_bytes(bytes.to_vec(), "<memory>").ok()?,
    };
    if file.file_size() != bytes.len() as u64 {
        return None;
    }
    let base = file.data_offset();
    let mut out = Vec::new();
    for t in file.tensors() {
        let start = base.checked_add(t.offset)?;
        out.push(Plan {
            name: t.name.clone(),
            start,
            end: start.checked_add(t.n_bytes())?,
            layout: Layout::for_ggml(t.ty),
        });
    }
    Some(out)
}

#[derive(serde::Deserialize)]
struct StEntry {
    dtype: String,
    data_offsets: (u64, u64),
}

fn safetensors_ranges(bytes: &[u8]) -> Option<Vec<Plan>> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let header = bytes.get(8..8usize.checked_add(usize::try_from(n).ok()?)?)?;
    if header.first() != Some(&b'{') {
        return None;
    }
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
    let base = 8 + n;
    let mut out = Vec::new();
    for (name, v) in map {
        if name == "__metadata__" {
            continue;
        }
        let e: StEntry = serde_json::from_value(v).ok()?;
        out.push(Plan {
            start: base.checked_add(e.data_offsets.0)?,
            end: base.checked_add(e.data_offsets.1)?,
            layout: Layout::for_safetensors(&e.dtype),
            name,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_tensors_become_segments_and_gaps_fill() {
        let header = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[1; 16]);
        let (kind, plan) = plan(None, &bytes);
        assert_eq!(kind, MemberKind::Safetensors);
        let names: Vec<&str> = plan.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["<header>", "a", "b"]);
        assert_eq!(plan[1].layout, Some(Layout::F32));
        assert_eq!(plan[2].layout, None);
        assert_eq!(plan[2].end, bytes.len() as u64);
    }

    #[test]
    fn malformed_or_overlapping_files_are_one_generic_segment() {
        let header = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[1; 12]);
        let (kind, plan) = plan(None, &bytes);
        assert_eq!(kind, MemberKind::Other);
        assert_eq!(plan.len(), 1);
        for junk in [&b""[..], b"abc", &[255u8; 20]] {
            let (kind, plan) = super::plan(None, junk);
            assert_eq!(kind, MemberKind::Other);
            assert_eq!(
                plan.iter().map(|p| p.end - p.start).sum::<u64>(),
                junk.len() as u64
            );
        }
    }
}
