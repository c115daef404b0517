//! Lossless packing of model files (`tersor pack` / `tersor unpack`).
//!
//! A file (or every file of a directory) is cut into segments, one per
//! tensor plus the headers and gaps between them (`scan`), each segment
//! into chunks of 768 KiB, and each chunk coded on its own (`chunk`):
//! float tensors as exponent-aligned byte planes with a static order-0
//! rANS coder per plane and chunk (`planes`, `rans`; ZipNN's and
//! DFloat11's idea, with tables that adapt every chunk), GGUF blocks with
//! their scales apart from their quants, everything else with zstd. The
//! container (`format`, specified in docs/pack-format.md) keeps every
//! header verbatim, a crc32 per chunk (payload and decoded bytes) and per
//! file, and an index for random access by tensor name.
//!
//! Memory stays bounded: chunks are coded a window at a time (a few per
//! thread), inputs are memory-mapped, outputs stream to a temporary file
//! that is renamed into place only when complete.

pub mod chunk;
pub mod error;
pub mod format;
pub mod nibble;
pub mod planes;
pub mod rans;
pub mod scan;

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

pub use error::{Corrupt, PackError, Result};
use format::{ChunkEntry, Index, Member, Segment};

/// Default raw chunk size: large enough that a chunk's tables and states
/// cost ~0.1 %, small enough that the tables follow the statistics along a
/// tensor. Measured on the default encoder's f32 weights (with the default
/// `min_gain`): 512 KiB 0.8185, 768 KiB 0.8184, 1 MiB 0.8190, 2 MiB 0.8194,
/// 4 MiB 0.8208.
pub const DEFAULT_CHUNK: usize = 768 << 10;

/// Default [`PackOptions::min_gain`]: on the default encoder's weights it
/// stores the sign-and-mantissa plane of f32 and bf16 raw (ratio 0.0004 /
/// 0.001 worse at 1 MiB chunks) and decodes them 1.1–1.4× faster.
pub const DEFAULT_MIN_GAIN: f64 = 0.005;

#[derive(Clone, Copy)]
pub struct PackOptions<'a> {
    /// Raw bytes per chunk (rounded down to whole records).
    pub chunk_size: usize,
    /// zstd level for generic segments up to [`SMALL_GENERIC`] bytes
    /// (headers, tokenizer metadata); larger ones use level 6.
    pub zstd_level: i32,
    /// The smallest saving (share of a plane) worth entropy coding a plane.
    pub min_gain: f64,
    /// Let the packed 4-bit quants of Q4/Q5 blocks take the nibble coder
    /// (`nibble`): faster to decode on CPUs with AVX-512 VBMI, slower
    /// without (see docs/pack-format.md).
    pub nibbles: bool,
    /// Called with the number of input bytes just coded.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

impl Default for PackOptions<'_> {
    fn default() -> Self {
        PackOptions {
            chunk_size: DEFAULT_CHUNK,
            zstd_level: 19,
            min_gain: DEFAULT_MIN_GAIN,
            nibbles: true,
            progress: None,
        }
    }
}

/// Generic segments up to this size get the (slow) high zstd level.
pub const SMALL_GENERIC: u64 = 8 << 20;

/// What one segment became.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SegmentStats {
    pub member: String,
    /// Tensor name, `<header>`, or empty for padding.
    pub name: String,
    /// `f32`, `bf16`, `q4_1`, ... or `generic`.
    pub layout: String,
    pub raw_bytes: u64,
    pub packed_bytes: u64,
    /// Order-0 entropy of the segment's planes per chunk, in bytes: the
    /// size a static per-plane coder could at best reach (for generic
    /// segments, of the bytes themselves).
    pub entropy_bytes: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PackSummary {
    pub original_bytes: u64,
    pub packed_bytes: u64,
    pub segments: Vec<SegmentStats>,
}

impl PackSummary {
    pub fn ratio(&self) -> f64 {
        self.packed_bytes as f64 / self.original_bytes.max(1) as f64
    }
}

/// One input file, as bytes (mapped or in memory).
struct Source<'a> {
    name: String,
    path: Option<&'a Path>,
    bytes: &'a [u8],
}

/// Packs a file or a directory into `output` (written atomically).
pub fn pack_path(input: &Path, output: &Path, opts: &PackOptions) -> Result<PackSummary> {
    // The file list comes first, so that neither the temporary output nor
    // an earlier output inside a packed directory becomes a member.
    let (is_dir, mut files) = list_inputs(input)?;
    if let Ok(out) = fs::canonicalize(output) {
        files.retain(|(_, p)| fs::canonicalize(p).map_or(true, |p| p != out));
    }
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| PackError::io(dir, e))?;
    let summary = {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
        let s = pack_files(input, is_dir, &files, &mut w, opts)?;
        w.flush().map_err(|e| PackError::io(output, e))?;
        s
    };
    tmp.persist(output)
        .map_err(|e| PackError::io(output, e.error))?;
    Ok(summary)
}

/// Packs a file or a directory into any writer (`--stats` packs into a
/// sink).
pub fn pack_to_writer<W: Write>(
    input: &Path,
    w: &mut W,
    opts: &PackOptions,
) -> Result<PackSummary> {
    let (is_dir, files) = list_inputs(input)?;
    pack_files(input, is_dir, &files, w, opts)
}

/// The members a path packs into: (is a directory, [(name, path)]).
fn list_inputs(input: &Path) -> Result<(bool, Vec<(String, PathBuf)>)> {
    let meta = fs::metadata(input).map_err(|e| PackError::io(input, e))?;
    Ok(if meta.is_dir() {
        let mut files = Vec::new();
        walk(input, input, &mut files)?;
        files.sort();
        (true, files)
    } else {
        let name = input
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| format::check_member_name(n).is_ok() && n.len() <= format::MAX_NAME)
            .unwrap_or("file")
            .to_string();
        (false, vec![(name, input.to_path_buf())])
    })
}

fn pack_files<W: Write>(
    input: &Path,
    is_dir: bool,
    files: &[(String, PathBuf)],
    w: &mut W,
    opts: &PackOptions,
) -> Result<PackSummary> {
    let maps: Vec<Option<memmap2::Mmap>> = files
        .iter()
        .map(|(_, p)| map_file(p))
        .collect::<Result<_>>()?;
    let sources: Vec<Source> = files
        .iter()
        .zip(&maps)
        .map(|((name, path), m)| Source {
            name: name.clone(),
            path: Some(path),
            bytes: m.as_deref().unwrap_or(&[]),
        })
        .collect();
    pack_sources(&sources, is_dir, w, opts).map_err(|e| PackError::io(input, e))
}

/// Packs one in-memory file (benchmarks, tests).
pub fn pack_bytes(name: &str, bytes: &[u8], opts: &PackOptions) -> (Vec<u8>, PackSummary) {
    let mut out = Vec::with_capacity(bytes.len() / 2);
    let src = [Source {
        name: name.to_string(),
        path: None,
        bytes,
    }];
    let s = pack_sources(&src, false, &mut out, opts).expect("writing to memory cannot fail");
    (out, s)
}

fn map_file(path: &Path) -> Result<Option<memmap2::Mmap>> {
    let f = fs::File::open(path).map_err(|e| PackError::io(path, e))?;
    let len = f.metadata().map_err(|e| PackError::io(path, e))?.len();
    if len == 0 {
        return Ok(None); // mapping an empty file fails on some systems
    }
    // SAFETY: read-only map; tersor does not write the file while packing it
    // (a concurrent writer would at worst make the member crc disagree).
    let m = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| PackError::io(path, e))?;
    Ok(Some(m))
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| PackError::io(dir, e))? {
        let entry = entry.map_err(|e| PackError::io(dir, e))?;
        let path = entry.path();
        let ft = entry.file_type().map_err(|e| PackError::io(&path, e))?;
        if ft.is_dir() {
            walk(root, &path, out)?;
        } else if ft.is_file() {
            let rel = path.strip_prefix(root).expect("walked under root");
            let name = rel
                .to_str()
                .ok_or_else(|| PackError::Input {
                    path: path.clone(),
                    what: "file name is not UTF-8".into(),
                })?
                .replace(std::path::MAIN_SEPARATOR, "/");
            if name.len() > format::MAX_NAME {
                return Err(PackError::Input {
                    path,
                    what: "path too long to pack".into(),
                });
            }
            out.push((name, path));
        } else {
            return Err(PackError::Input {
                path,
                what: "not a regular file or directory (symlinks are not packed)".into(),
            });
        }
    }
    Ok(())
}

/// A unit of work: one chunk of one segment.
struct Job {
    segment: usize,
    start: usize,
    end: usize,
    kind: chunk::Kind,
}

/// Writes the container for `sources` to `w`: header, chunks, index,
/// footer. Chunks are coded a window at a time in parallel and written in
/// order.
fn pack_sources<W: Write>(
    sources: &[Source],
    is_dir: bool,
    w: &mut W,
    opts: &PackOptions,
) -> std::io::Result<PackSummary> {
    let mut at = format::HEADER_LEN;
    w.write_all(&format::header())?;
    let mut members = Vec::new();
    let mut stats = Vec::new();
    let mut original = 0u64;
    let window = rayon::current_num_threads().max(1) * 4;
    for src in sources {
        let bytes = src.bytes;
        original += bytes.len() as u64;
        let (kind, plans) = scan::plan(src.path, bytes);
        let mut segments: Vec<Segment> = Vec::new();
        let mut jobs = Vec::new();
        for (i, p) in plans.iter().enumerate() {
            let ck = match p.layout {
                Some(l) => chunk::Kind::Planes(l),
                None => chunk::Kind::Generic {
                    zstd_level: if p.end - p.start <= SMALL_GENERIC {
                        opts.zstd_level
                    } else {
                        opts.zstd_level.min(6)
                    },
                },
            };
            let rec = p.layout.map_or(1, |l| l.record_size());
            let step = (opts.chunk_size.clamp(1, format::MAX_CHUNK as usize) / rec).max(1) * rec;
            let (s, e) = (p.start as usize, p.end as usize);
            let mut c = s;
            while c < e {
                let end = (c + step).min(e);
                jobs.push(Job {
                    segment: i,
                    start: c,
                    end,
                    kind: ck,
                });
                c = end;
            }
            segments.push(Segment {
                name: p.name.clone(),
                layout: p.layout.map_or(0, |l| l.id()),
                offset: p.start,
                len: p.end - p.start,
                chunks: Vec::new(),
            });
            stats.push(SegmentStats {
                member: src.name.clone(),
                name: p.name.clone(),
                layout: p.layout.map_or("generic".into(), layout_name),
                raw_bytes: p.end - p.start,
                packed_bytes: 0,
                entropy_bytes: 0.0,
            });
        }
        let first_stat = stats.len() - segments.len();
        for batch in jobs.chunks(window) {
            let coded: Vec<(chunk::Encoded, u32)> = batch
                .par_iter()
                .map(|j| {
                    let raw = &bytes[j.start..j.end];
                    let e = chunk::encode(raw, j.kind, opts.min_gain, opts.nibbles);
                    if let Some(p) = opts.progress {
                        p(raw.len() as u64);
                    }
                    (e, crc32fast::hash(raw))
                })
                .collect();
            for (j, (e, raw_crc)) in batch.iter().zip(coded) {
                w.write_all(&e.payload)?;
                let entry = ChunkEntry {
                    offset: at,
                    packed_len: e.payload.len() as u32,
                    raw_len: (j.end - j.start) as u32,
                    packed_crc: crc32fast::hash(&e.payload),
                    raw_crc,
                };
                at += e.payload.len() as u64;
                let st = &mut stats[first_stat + j.segment];
                st.packed_bytes += e.payload.len() as u64;
                st.entropy_bytes += e.entropy_bits / 8.0;
                segments[j.segment].chunks.push(entry);
            }
        }
        members.push(Member {
            name: src.name.clone(),
            kind,
            len: bytes.len() as u64,
            crc: crc32fast::hash(bytes),
            segments,
        });
    }
    let index = Index { is_dir, members }.to_bytes();
    w.write_all(&index)?;
    w.write_all(&format::footer(at, &index))?;
    let packed = at + index.len() as u64 + format::FOOTER_LEN;
    // The container's own bytes (header, index, footer) as a row of their
    // own, so that the rows add up to the file.
    let coded: u64 = stats.iter().map(|s| s.packed_bytes).sum();
    stats.push(SegmentStats {
        member: String::new(),
        name: "<container>".into(),
        layout: "container".into(),
        raw_bytes: 0,
        packed_bytes: packed - coded,
        entropy_bytes: 0.0,
    });
    Ok(PackSummary {
        original_bytes: original,
        packed_bytes: packed,
        segments: stats,
    })
}

fn layout_name(l: planes::Layout) -> String {
    use planes::Layout as L;
    match l {
        L::Bytes => "bytes".into(),
        L::F16 => "f16".into(),
        L::Bf16 => "bf16".into(),
        L::F32 => "f32".into(),
        L::Record(r) => match r.id {
            10 => "q4_0".into(),
            11 => "q4_1".into(),
            12 => "q5_0".into(),
            13 => "q5_1".into(),
            14 => "q8_0".into(),
            id => format!("record{id}"),
        },
    }
}

/// Whether `path` starts with the pack magic (false for directories and
/// unreadable or short files).
pub fn is_packed(path: &Path) -> bool {
    use std::io::Read;
    let mut m = [0u8; 8];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut m))
        .is_ok()
        && m == format::MAGIC
}

/// An opened, validated pack file.
pub struct Archive<B: AsRef<[u8]> + Sync> {
    path: PathBuf,
    bytes: B,
    index: Index,
}

impl Archive<memmap2::Mmap> {
    pub fn open(path: &Path) -> Result<Self> {
        let m = map_file(path)?.ok_or_else(|| PackError::NotPacked {
            path: path.to_path_buf(),
        })?;
        Archive::new(path.to_path_buf(), m)
    }
}

impl<B: AsRef<[u8]> + Sync> Archive<B> {
    fn new(path: PathBuf, bytes: B) -> Result<Self> {
        let b = bytes.as_ref();
        match format::check_header(b) {
            Ok(()) => {}
            Err(format::HeaderError::NotPacked) => return Err(PackError::NotPacked { path }),
            Err(format::HeaderError::Version(version)) => {
                return Err(PackError::Version {
                    path,
                    version,
                    supported: format::VERSION,
                })
            }
            Err(format::HeaderError::Corrupt(c)) => return Err(PackError::corrupt(path, c.0)),
        }
        let len = b.len() as u64;
        if len < format::HEADER_LEN + format::FOOTER_LEN {
            return Err(PackError::corrupt(
                path,
                "file too short for a footer (truncated?)",
            ));
        }
        let foot = &b[(len - format::FOOTER_LEN) as usize..];
        let (off, ilen, icrc) =
            format::parse_footer(foot, len).map_err(|c| PackError::corrupt(&path, c.0))?;
        let ibytes = &b[off as usize..(off + ilen) as usize];
        if crc32fast::hash(ibytes) != icrc {
            return Err(PackError::corrupt(path, "index checksum mismatch"));
        }
        let index = Index::parse(ibytes, off).map_err(|c| PackError::corrupt(&path, c.0))?;
        Ok(Archive { path, bytes, index })
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Opens a pack held in memory (`name` names it in errors).
    pub fn from_bytes(bytes: B, name: &str) -> Result<Self> {
        Archive::new(PathBuf::from(name), bytes)
    }

    /// The pack file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_ref()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn decode_chunk(&self, m: &Member, c: &ChunkEntry, out: &mut [u8]) -> Result<()> {
        let payload =
            &self.bytes.as_ref()[c.offset as usize..c.offset as usize + c.packed_len as usize];
        let fail = |what: &str| {
            PackError::corrupt(
                &self.path,
                format!("{} at byte {} ({what})", m.name, c.offset),
            )
        };
        // Plane chunks are fully determined by their structure (lengths,
        // table sums, rANS end states) and the decoded crc: a changed byte
        // either fails a check or changes the output. A zstd frame has
        // fields that need not change the output (window size), so other
        // codecs check the payload crc too. Skipping it for planes saves a
        // pass over the payload, ~7 % of decode time.
        if payload.first() != Some(&chunk::PLANES) && crc32fast::hash(payload) != c.packed_crc {
            return Err(fail("chunk checksum mismatch"));
        }
        chunk::decode(payload, out).map_err(|e| fail(e.0))?;
        if crc32fast::hash(out) != c.raw_crc {
            return Err(fail("decoded chunk checksum mismatch"));
        }
        Ok(())
    }

    /// Decodes `chunks` of member `m` in parallel into `out`, which holds
    /// exactly their raw bytes, one after another.
    fn decode_into(&self, m: &Member, chunks: &[&ChunkEntry], out: &mut [u8]) -> Result<()> {
        let mut slices = Vec::with_capacity(chunks.len());
        let mut rest = out;
        for c in chunks {
            let (a, b) = rest.split_at_mut(c.raw_len as usize);
            slices.push(a);
            rest = b;
        }
        debug_assert!(rest.is_empty());
        chunks
            .par_iter()
            .zip(slices.into_par_iter())
            .try_for_each(|(c, o)| self.decode_chunk(m, c, o))
    }

    /// Decodes member `i` into `w`, checking every checksum; a window of
    /// chunks at a time, so memory stays bounded.
    pub fn read_member<W: Write>(
        &self,
        i: usize,
        w: &mut W,
        progress: Option<&(dyn Fn(u64) + Sync)>,
    ) -> Result<()> {
        let m = &self.index.members[i];
        let chunks: Vec<&ChunkEntry> = m.segments.iter().flat_map(|s| &s.chunks).collect();
        let window = rayon::current_num_threads().max(1) * 4;
        let mut buf = Vec::new();
        for batch in chunks.chunks(window) {
            let n: usize = batch.iter().map(|c| c.raw_len as usize).sum();
            buf.resize(n, 0);
            self.decode_into(m, batch, &mut buf)?;
            w.write_all(&buf)
                .map_err(|e| PackError::io(&self.path, e))?;
            if let Some(p) = progress {
                p(n as u64);
            }
        }
        self.check_member_crc(m, &chunks)
    }

    /// The file's crc from its (already verified) chunk crcs, combined
    /// rather than recomputed: a second pass over the output would cost
    /// as much as the merge.
    fn check_member_crc(&self, m: &Member, chunks: &[&ChunkEntry]) -> Result<()> {
        let mut crc = crc32fast::Hasher::new();
        for c in chunks {
            crc.combine(&crc32fast::Hasher::new_with_initial_len(
                c.raw_crc,
                c.raw_len as u64,
            ));
        }
        if crc.finalize() != m.crc {
            return Err(PackError::corrupt(
                &self.path,
                format!("{}: file checksum mismatch", m.name),
            ));
        }
        Ok(())
    }

    /// Decodes member `i` whole into memory (its declared length, which
    /// the index has checked against its chunks).
    pub fn member_bytes(&self, i: usize) -> Result<Vec<u8>> {
        let m = &self.index.members[i];
        let chunks: Vec<&ChunkEntry> = m.segments.iter().flat_map(|s| &s.chunks).collect();
        let mut out = vec![0u8; m.len as usize];
        advise_huge_pages(&mut out);
        self.decode_into(m, &chunks, &mut out)?;
        self.check_member_crc(m, &chunks)?;
        Ok(out)
    }

    /// Decodes every member in memory (benchmarks, tests).
    pub fn read_all(&self) -> Result<Vec<(String, Vec<u8>)>> {
        (0..self.index.members.len())
            .map(|i| Ok((self.index.members[i].name.clone(), self.member_bytes(i)?)))
            .collect()
    }

    /// Random access: the bytes of the segment (tensor) `name` of member
    /// `member`, decoding only its chunks.
    pub fn read_segment(&self, member: usize, name: &str) -> Result<Vec<u8>> {
        let m = self
            .index
            .members
            .get(member)
            .ok_or_else(|| PackError::Input {
                path: self.path.clone(),
                what: format!("no member {member}"),
            })?;
        let s = m
            .segments
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| PackError::Input {
                path: self.path.clone(),
                what: format!("{}: no tensor named {name:?}", m.name),
            })?;
        let chunks: Vec<&ChunkEntry> = s.chunks.iter().collect();
        let mut out = vec![0u8; s.len as usize];
        self.decode_into(m, &chunks, &mut out)?;
        Ok(out)
    }

    /// Writes the unpacked file (or directory) to `out`, atomically: into a
    /// temporary sibling, renamed when every checksum has passed.
    pub fn unpack_to(&self, out: &Path, progress: Option<&(dyn Fn(u64) + Sync)>) -> Result<()> {
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !self.index.is_dir {
            let tmp =
                tempfile::NamedTempFile::new_in(parent).map_err(|e| PackError::io(parent, e))?;
            {
                let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
                self.read_member(0, &mut w, progress)?;
                w.flush().map_err(|e| PackError::io(out, e))?;
            }
            tmp.persist(out).map_err(|e| PackError::io(out, e.error))?;
            return Ok(());
        }
        if out.exists() {
            return Err(PackError::Input {
                path: out.to_path_buf(),
                what: "already exists; unpacking a directory will not overwrite one".into(),
            });
        }
        let tmp = tempfile::Builder::new()
            .prefix(".tersor-unpack")
            .tempdir_in(parent)
            .map_err(|e| PackError::io(parent, e))?;
        for (i, m) in self.index.members.iter().enumerate() {
            let dest = tmp.path().join(&m.name);
            if let Some(d) = dest.parent() {
                fs::create_dir_all(d).map_err(|e| PackError::io(d, e))?;
            }
            let f = fs::File::create(&dest).map_err(|e| PackError::io(&dest, e))?;
            let mut w = BufWriter::with_capacity(1 << 20, f);
            self.read_member(i, &mut w, progress)?;
            w.flush().map_err(|e| PackError::io(&dest, e))?;
        }
        let kept = tmp.keep();
        fs::rename(&kept, out).map_err(|e| {
            let _ = fs::remove_dir_all(&kept);
            PackError::io(out, e)
        })?;
        Ok(())
    }
}

/// Asks Linux for transparent huge pages on a large, still untouched
/// buffer: first-touch page faults of a fresh 4 KiB-paged output cost more
/// than decoding it. A hint only; failure changes nothing.
fn advise_huge_pages(buf: &mut [u8]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        if buf.len() < 2 * HUGE {
            return;
        }
        let start = buf.as_mut_ptr() as usize;
        let aligned = (start + HUGE - 1) & !(HUGE - 1);
        let end = (start + buf.len()) & !(HUGE - 1);
        if end > aligned {
            // SAFETY: the range lies inside `buf`, which we borrow mutably;
            // MADV_HUGEPAGE does not change the contents.
            unsafe {
                libc::madvise(
                    aligned as *mut libc::c_void,
                    end - aligned,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

/// Opens `path` as a model: a pack file is unpacked into a temporary
/// directory (removed when the returned guard drops) and the unpacked
/// path returned; anything else is returned as it is.
pub fn unpack_if_packed(path: &Path) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    if !is_packed(path) {
        return Ok((path.to_path_buf(), None));
    }
    let archive = Archive::open(path)?;
    let tmp = tempfile::Builder::new()
        .prefix("tersor-unpacked")
        .tempdir()
        .map_err(|e| PackError::io(std::env::temp_dir(), e))?;
    let out = if archive.index().is_dir {
        tmp.path().join(
            path.file_stem()
                .and_then(|s| s.to_str())
                .filter(|s| !s.is_empty())
                .unwrap_or("model"),
        )
    } else {
        tmp.path().join(&archive.index().members[0].name)
    };
    archive.unpack_to(&out, None)?;
    Ok((out, Some(tmp)))
}
