//! The container: header, chunk payloads, index, footer. The byte-level
//! specification is docs/pack-format.md; this module is its one reader and
//! writer. Every field read from a file is checked before use: offsets and
//! lengths against the file, counts against the bytes left, chunk sizes
//! against [`MAX_CHUNK`], and the chunks must tile the file between header
//! and index exactly, so that every byte of a pack file is covered by a
//! check (a magic, a checksum or a structural rule).

use crate::error::Corrupt;

pub const MAGIC: [u8; 8] = *b"TERSPAK\0";
pub const VERSION: u32 = 2;
/// The oldest version this build reads (version 2 added the nibble plane
/// codec; version 1 files are version 2 files without it).
pub const MIN_VERSION: u32 = 1;
pub const HEADER_LEN: u64 = 16;
pub const FOOTER_LEN: u64 = 32;
/// The largest raw chunk a reader accepts: decoding allocates at most this
/// much per chunk in flight.
pub const MAX_CHUNK: u32 = 16 << 20;
/// Longest name (member path or tensor name) in bytes.
pub const MAX_NAME: usize = 4096;

/// What a member was recognised as when packed (informational: decoding
/// does not depend on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberKind {
    Other,
    Safetensors,
    Gguf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkEntry {
    /// Where the payload starts in the pack file.
    pub offset: u64,
    pub packed_len: u32,
    pub raw_len: u32,
    /// crc32 (IEEE) of the payload and of the decoded bytes.
    pub packed_crc: u32,
    pub raw_crc: u32,
}

/// A contiguous byte range of a member: a tensor's data, a header, or the
/// padding between tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The tensor name; empty for headers and gaps.
    pub name: String,
    /// The plane layout id the chunks were coded with, 0 for generic.
    pub layout: u8,
    pub offset: u64,
    pub len: u64,
    pub chunks: Vec<ChunkEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Path relative to the packed directory ('/'-separated), or the file
    /// name when a single file was packed.
    pub name: String,
    pub kind: MemberKind,
    pub len: u64,
    /// crc32 of the whole original file.
    pub crc: u32,
    pub segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    /// A directory was packed (unpack recreates it) rather than one file.
    pub is_dir: bool,
    pub members: Vec<Member>,
}

pub fn header() -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Checks the 16-byte header: magic, version, reserved zero.
pub fn check_header(h: &[u8]) -> Result<(), HeaderError> {
    if h.len() < HEADER_LEN as usize || h[..8] != MAGIC {
        return Err(HeaderError::NotPacked);
    }
    let version = u32::from_le_bytes(h[8..12].try_into().unwrap());
    if !(MIN_VERSION..=VERSION).contains(&version) {
        return Err(HeaderError::Version(version));
    }
    if h[12..16] != [0; 4] {
        return Err(HeaderError::Corrupt(Corrupt(
            "reserved header bytes are not zero",
        )));
    }
    Ok(())
}

#[derive(Debug)]
pub enum HeaderError {
    NotPacked,
    Version(u32),
    Corrupt(Corrupt),
}

pub fn footer(index_offset: u64, index: &[u8]) -> [u8; FOOTER_LEN as usize] {
    let mut f = [0u8; FOOTER_LEN as usize];
    f[..8].copy_from_slice(&index_offset.to_le_bytes());
    f[8..16].copy_from_slice(&(index.len() as u64).to_le_bytes());
    f[16..20].copy_from_slice(&crc32fast::hash(index).to_le_bytes());
    let crc = crc32fast::hash(&f[..20]);
    f[20..24].copy_from_slice(&crc.to_le_bytes());
    f[24..32].copy_from_slice(&MAGIC);
    f
}

/// Reads the footer of a `file_len`-byte pack file: (index offset, index
/// length, index crc).
pub fn parse_footer(f: &[u8], file_len: u64) -> Result<(u64, u64, u32), Corrupt> {
    if f.len() != FOOTER_LEN as usize || f[24..32] != MAGIC {
        return Err(Corrupt("footer magic missing (truncated file?)"));
    }
    let crc = u32::from_le_bytes(f[20..24].try_into().unwrap());
    if crc32fast::hash(&f[..20]) != crc {
        return Err(Corrupt("footer checksum mismatch"));
    }
    let off = u64::from_le_bytes(f[..8].try_into().unwrap());
    let len = u64::from_le_bytes(f[8..16].try_into().unwrap());
    let index_crc = u32::from_le_bytes(f[16..20].try_into().unwrap());
    let end = off.checked_add(len).and_then(|e| e.checked_add(FOOTER_LEN));
    if off < HEADER_LEN || end != Some(file_len) {
        return Err(Corrupt("footer points outside the file"));
    }
    Ok((off, len, index_crc))
}

impl Index {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Vec::new();
        w.push(self.is_dir as u8);
        w.extend_from_slice(&(self.members.len() as u32).to_le_bytes());
        for m in &self.members {
            put_str(&mut w, &m.name);
            w.push(match m.kind {
                MemberKind::Other => 0,
                MemberKind::Safetensors => 1,
                MemberKind::Gguf => 2,
            });
            w.extend_from_slice(&m.len.to_le_bytes());
            w.extend_from_slice(&m.crc.to_le_bytes());
            w.extend_from_slice(&(m.segments.len() as u32).to_le_bytes());
            for s in &m.segments {
                put_str(&mut w, &s.name);
                w.push(s.layout);
                w.extend_from_slice(&s.offset.to_le_bytes());
                w.extend_from_slice(&s.len.to_le_bytes());
                w.extend_from_slice(&(s.chunks.len() as u32).to_le_bytes());
                for c in &s.chunks {
                    w.extend_from_slice(&c.offset.to_le_bytes());
                    for v in [c.packed_len, c.raw_len, c.packed_crc, c.raw_crc] {
                        w.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        w
    }

    /// Parses and validates an index found at `index_offset`: the chunks
    /// must tile `[HEADER_LEN, index_offset)` in order, the segments must
    /// tile each member, names must be safe relative paths.
    pub fn parse(buf: &[u8], index_offset: u64) -> Result<Index, Corrupt> {
        let mut r = Reader { buf, pos: 0 };
        let is_dir = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(Corrupt("index flag out of range")),
        };
        let n_members = r.u32()?;
        let mut members = Vec::new();
        let mut next_chunk = HEADER_LEN;
        for _ in 0..n_members {
            let name = r.str()?;
            check_member_name(&name)?;
            if members.iter().any(|m: &Member| m.name == name) {
                return Err(Corrupt("two members with one name"));
            }
            let kind = match r.u8()? {
                0 => MemberKind::Other,
                1 => MemberKind::Safetensors,
                2 => MemberKind::Gguf,
                _ => return Err(Corrupt("member kind out of range")),
            };
            let len = r.u64()?;
            let crc = r.u32()?;
            let n_segments = r.u32()?;
            let mut segments = Vec::new();
            let mut at = 0u64;
            for _ in 0..n_segments {
                let name = r.str()?;
                let layout = r.u8()?;
                if layout != 0 && crate::planes::Layout::from_id(layout).is_none() {
                    return Err(Corrupt("segment layout unknown"));
                }
                let offset = r.u64()?;
                let seg_len = r.u64()?;
                if offset != at {
                    return Err(Corrupt("segments do not tile their member"));
                }
                let n_chunks = r.u32()?;
                let mut chunks = Vec::new();
                let mut sum = 0u64;
                for _ in 0..n_chunks {
                    let c = ChunkEntry {
                        offset: r.u64()?,
                        packed_len: r.u32()?,
                        raw_len: r.u32()?,
                        packed_crc: r.u32()?,
                        raw_crc: r.u32()?,
                    };
                    if c.offset != next_chunk || c.packed_len == 0 {
                        return Err(Corrupt("chunks do not tile the file"));
                    }
                    if c.raw_len == 0 || c.raw_len > MAX_CHUNK {
                        return Err(Corrupt("chunk length out of range"));
                    }
                    next_chunk += c.packed_len as u64;
                    if next_chunk > index_offset {
                        return Err(Corrupt("chunk runs into the index"));
                    }
                    sum += c.raw_len as u64;
                    chunks.push(c);
                }
                if sum != seg_len {
                    return Err(Corrupt("segment length is not the sum of its chunks"));
                }
                at = at
                    .checked_add(seg_len)
                    .ok_or(Corrupt("segment length overflows"))?;
                segments.push(Segment {
                    name,
                    layout,
                    offset,
                    len: seg_len,
                    chunks,
                });
            }
            if at != len {
                return Err(Corrupt("segments do not add up to the member's length"));
            }
            members.push(Member {
                name,
                kind,
                len,
                crc,
                segments,
            });
        }
        if r.pos != buf.len() {
            return Err(Corrupt("trailing bytes after the index"));
        }
        if next_chunk != index_offset {
            return Err(Corrupt("bytes between the last chunk and the index"));
        }
        if !is_dir && members.len() != 1 {
            return Err(Corrupt("a single-file pack must hold one member"));
        }
        Ok(Index { is_dir, members })
    }
}

/// Member names become paths on unpack: relative, no `..`, no empty or
/// `.` components, no NUL or backslash.
pub fn check_member_name(name: &str) -> Result<(), Corrupt> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name.contains('\0')
        || name.contains('\\')
        || name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        Err(Corrupt("member name is not a safe relative path"))
    } else {
        Ok(())
    }
}

fn put_str(w: &mut Vec<u8>, s: &str) {
    // Names longer than MAX_NAME are cut by the writer's caller; a u16
    // length is plenty.
    w.extend_from_slice(&(s.len() as u16).to_le_bytes());
    w.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Corrupt> {
        let s = self
            .buf
            .get(self.pos..self.pos.checked_add(n).ok_or(Corrupt("index truncated"))?)
            .ok_or(Corrupt("index truncated"))?;
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, Corrupt> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, Corrupt> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, Corrupt> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn str(&mut self) -> Result<String, Corrupt> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().unwrap()) as usize;
        if n > MAX_NAME {
            return Err(Corrupt("name too long"));
        }
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| Corrupt("name is not UTF-8"))
    }
}
