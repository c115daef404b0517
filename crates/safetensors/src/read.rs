//! Opening single files and sharded checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::path::{Path, PathBuf};

use crate::{bytes_to_f32, Dtype, StError};

/// The `safetensors` crate's limit on the JSON header (100 MB).
const MAX_HEADER: u64 = 100_000_000;
/// Largest index JSON we read (real ones are well under 1 MB).
const MAX_INDEX: u64 = 64 << 20;

/// Dtype, shape and location of one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMeta {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// The file holding the tensor.
    pub shard: PathBuf,
    pub n_bytes: usize,
}

enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

struct Shard {
    path: PathBuf,
    storage: Storage,
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug)]
struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Absolute byte range in the shard file.
    start: usize,
    end: usize,
}

/// One or more memory-mapped safetensors files seen as one set of tensors.
pub struct SafetensorsModel {
    path: PathBuf,
    shards: Vec<Shard>,
    tensors: BTreeMap<String, Entry>,
}

impl std::fmt::Debug for SafetensorsModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsModel")
            .field("path", &self.path)
            .field("shards", &self.shards.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl SafetensorsModel {
    /// Opens a `.safetensors` file, a `*.safetensors.index.json`, or a
    /// directory holding `model.safetensors.index.json`, `model.safetensors`,
    /// or exactly one of either kind.
    pub fn open(path: &Path) -> Result<Self, StError> {
        if path.is_dir() {
            return Self::open(&find_in_dir(path)?);
        }
        if path.to_string_lossy().ends_with(".json") {
            return Self::open_index(path);
        }
        let shard = open_shard(path)?;
        Self::from_shards(path.to_path_buf(), vec![shard], None)
    }

    /// A single safetensors file held in memory; `name` stands for its path
    /// in errors. For tests and fuzzing.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<Self, StError> {
        let path = PathBuf::from(name);
        let shard = Shard {
            metadata: None,
            path: path.clone(),
            storage: Storage::Owned(bytes),
        };
        Self::from_shards(path, vec![shard], None)
    }

    fn open_index(index_path: &Path) -> Result<Self, StError> {
        let len = std::fs::metadata(index_path)
            .map_err(|e| StError::io(index_path, e))?
            .len();
        if len > MAX_INDEX {
            return Err(StError::format(
                index_path,
                format!("index is {len} bytes, larger than the {MAX_INDEX}-byte limit"),
            ));
        }
        let text = std::fs::read(index_path).map_err(|e| StError::io(index_path, e))?;
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let index: Index = serde_json::from_slice(&text).map_err(|e| {
            StError::format(
                index_path,
                format!("not a safetensors index (expected JSON with a \"weight_map\" object of tensor name → shard file): {e}"),
            )
        })?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        // Open each listed shard once, in sorted file-name order.
        let mut files: Vec<&str> = index.weight_map.values().map(String::as_str).collect();
        files.sort_unstable();
        files.dedup();
        let mut shards = Vec::with_capacity(files.len());
        for f in &files {
            let p = Path::new(f);
            let plain = p.components().count() == 1
                && matches!(p.components().next(), Some(std::path::Component::Normal(_)));
            if !plain {
                return Err(StError::format(
                    index_path,
                    format!("shard name '{f}' must be a plain file name in the index's directory"),
                ));
            }
            shards.push(open_shard(&dir.join(p))?);
        }
        let wm: Vec<(String, usize)> = index
            .weight_map
            .iter()
            .map(|(name, f)| (name.clone(), files.binary_search(&f.as_str()).unwrap_or(0)))
            .collect();
        Self::from_shards(index_path.to_path_buf(), shards, Some(wm))
    }

    /// Collects the shards' tensors; with an index, checks that it lists
    /// exactly the tensors found, each in the shard that holds it.
    fn from_shards(
        path: PathBuf,
        shards: Vec<Shard>,
        weight_map: Option<Vec<(String, usize)>>,
    ) -> Result<Self, StError> {
        let mut shards = shards;
        let mut parsed = Vec::with_capacity(shards.len());
        for shard in &mut shards {
            let (metadata, entries) = parse_header(&shard.storage, &shard.path)?;
            shard.metadata = metadata;
            parsed.push(entries);
        }
        let mut tensors: BTreeMap<String, Entry> = BTreeMap::new();
        for (si, entries) in parsed.into_iter().enumerate() {
            for (name, mut e) in entries {
                e.shard = si;
                if let Some(prev) = tensors.get(&name) {
                    return Err(StError::format(
                        &path,
                        format!(
                            "tensor '{name}' is in two shards: {} and {}",
                            shards[prev.shard].path.display(),
                            shards[si].path.display()
                        ),
                    ));
                }
                tensors.insert(name, e);
            }
        }
        let model = SafetensorsModel {
            path,
            shards,
            tensors,
        };
        if let Some(wm) = weight_map {
            model.check_index(&wm)?;
        }
        Ok(model)
    }

    fn check_index(&self, wm: &[(String, usize)]) -> Result<(), StError> {
        let listed: HashMap<&str, usize> = wm.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        for (name, &si) in &listed {
            let named = self.shards[si].path.display();
            match self.tensors.get(*name) {
                None => {
                    return Err(StError::format(
                        &self.path,
                        format!("index maps tensor '{name}' to {named}, which does not contain it"),
                    ))
                }
                Some(e) if e.shard != si => {
                    return Err(StError::format(
                        &self.path,
                        format!(
                            "index maps tensor '{name}' to {named}, but it is in {}",
                            self.shards[e.shard].path.display()
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some((name, e)) = self
            .tensors
            .iter()
            .find(|(n, _)| !listed.contains_key(n.as_str()))
        {
            return Err(StError::format(
                &self.path,
                format!(
                    "tensor '{name}' in {} is not listed in the index",
                    self.shards[e.shard].path.display()
                ),
            ));
        }
        Ok(())
    }

    /// What was opened (file, index or the file found in a directory).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The files holding the tensors.
    pub fn shard_paths(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn info(&self, name: &str) -> Option<TensorMeta> {
        self.tensors.get(name).map(|e| TensorMeta {
            dtype: e.dtype,
            shape: e.shape.clone(),
            shard: self.shards[e.shard].path.clone(),
            n_bytes: e.end - e.start,
        })
    }

    fn entry(&self, name: &str) -> Result<&Entry, StError> {
        self.tensors.get(name).ok_or_else(|| StError::NotFound {
            path: self.path.clone(),
            name: name.to_owned(),
        })
    }

    /// Dtype, shape and little-endian bytes of a tensor.
    pub fn raw(&self, name: &str) -> Result<(Dtype, Vec<usize>, &[u8]), StError> {
        let e = self.entry(name)?;
        // The range was validated against the file when it was opened.
        let bytes = &self.shards[e.shard].storage[e.start..e.end];
        Ok((e.dtype, e.shape.clone(), bytes))
    }

    /// A tensor as f32 values in row-major order. F32, F16 and BF16 convert
    /// exactly; F64 is rounded to nearest. Other dtypes are an error.
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>, StError> {
        let (dtype, _, bytes) = self.raw(name)?;
        bytes_to_f32(dtype, bytes).ok_or_else(|| {
            let e = &self.tensors[name];
            StError::format(
                &self.shards[e.shard].path,
                format!("tensor '{name}' has dtype {dtype}; conversion to f32 supports F32, F16, BF16 and F64"),
            )
        })
    }

    /// The `__metadata__` map of the first shard (e.g. `{"format": "pt"}`).
    pub fn metadata(&self) -> Option<&BTreeMap<String, String>> {
        self.shards.first().and_then(|s| s.metadata.as_ref())
    }
}

fn find_in_dir(dir: &Path) -> Result<PathBuf, StError> {
    for name in ["model.safetensors.index.json", "model.safetensors"] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    let mut indexes = Vec::new();
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| StError::io(dir, e))? {
        let e = e.map_err(|e| StError::io(dir, e))?;
        let n = e.file_name().to_string_lossy().into_owned();
        if n.ends_with(".safetensors.index.json") {
            indexes.push(e.path());
        } else if n.ends_with(".safetensors") {
            files.push(e.path());
        }
    }
    match (indexes.len(), files.len()) {
        (1, _) => Ok(indexes.remove(0)),
        (0, 1) => Ok(files.remove(0)),
        (0, 0) => Err(StError::format(dir, "no .safetensors file or index in this directory")),
        _ => Err(StError::format(
            dir,
            format!(
                "several candidate checkpoints ({} index files, {} .safetensors files); open one explicitly",
                indexes.len(),
                files.len()
            ),
        )),
    }
}

fn open_shard(path: &Path) -> Result<Shard, StError> {
    let file = std::fs::File::open(path).map_err(|e| StError::io(path, e))?;
    // SAFETY: read-only mapping; the file must not be truncated while open.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| StError::io(path, e))?;
    Ok(Shard {
        path: path.to_path_buf(),
        storage: Storage::Mmap(mmap),
        metadata: None,
    })
}

type Parsed = (Option<BTreeMap<String, String>>, Vec<(String, Entry)>);

/// Validates a whole safetensors file: the header length against the file
/// size (before reading it), then the header with the `safetensors` crate.
fn parse_header(buf: &[u8], path: &Path) -> Result<Parsed, StError> {
    let len = buf.len() as u64;
    if len < 8 {
        return Err(StError::format(
            path,
            format!(
                "file is {len} bytes, too short for a safetensors header (8-byte length + JSON)"
            ),
        ));
    }
    let n = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    if n > len - 8 {
        return Err(StError::format(
            path,
            format!(
                "header length field says {n} bytes but only {} bytes follow it (not a safetensors file, or truncated)",
                len - 8
            ),
        ));
    }
    if n > MAX_HEADER {
        return Err(StError::format(
            path,
            format!("JSON header is {n} bytes, over the safetensors limit of {MAX_HEADER}"),
        ));
    }
    let (n, meta) = safetensors::SafeTensors::read_metadata(buf)
        .map_err(|e| StError::format(path, describe(&e, buf, n)))?;
    let data_start = 8 + n;
    let mut entries = Vec::with_capacity(meta.tensors().len());
    for (name, info) in meta.tensors() {
        let dtype = Dtype::from_st(info.dtype).ok_or_else(|| {
            StError::format(
                path,
                format!("tensor '{name}' has unsupported dtype {}", info.dtype),
            )
        })?;
        let (s, e) = info.data_offsets;
        entries.push((
            name,
            Entry {
                shard: 0,
                dtype,
                shape: info.shape.clone(),
                start: data_start + s,
                end: data_start + e,
            },
        ));
    }
    let metadata = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    Ok((metadata, entries))
}

/// Turns a `safetensors` error into a message that names the tensor where
/// the crate's error does not (it reports e.g. only "invalid shape, data
/// type, or offset"): the header is re-read as plain JSON to find it.
fn describe(e: &safetensors::SafeTensorError, buf: &[u8], n: u64) -> String {
    use safetensors::SafeTensorError as E;
    let header = || -> Option<serde_json::Map<String, serde_json::Value>> {
        serde_json::from_slice(buf.get(8..8 + n as usize)?).ok()
    };
    match e {
        E::InvalidHeader(u) => format!("JSON header is not valid UTF-8 ({u})"),
        E::InvalidHeaderDeserialization(j) => format!("invalid safetensors JSON header: {j}"),
        E::InvalidOffset(name) => format!(
            "tensor '{name}' has data_offsets that do not start where the previous tensor ends \
             (tensors must tile the data section without gaps or overlaps)"
        ),
        E::TensorInvalidInfo | E::ValidationOverflow | E::MisalignedSlice => {
            let culprit = header().and_then(|h| {
                h.into_iter().filter(|(k, _)| k != "__metadata__").find_map(|(k, v)| {
                    let dtype: safetensors::Dtype = serde_json::from_value(v.get("dtype")?.clone()).ok()?;
                    let shape: Vec<usize> = serde_json::from_value(v.get("shape")?.clone()).ok()?;
                    let offs: (usize, usize) = serde_json::from_value(v.get("data_offsets")?.clone()).ok()?;
                    let bytes = shape
                        .iter()
                        .try_fold(1usize, |a, &d| a.checked_mul(d))
                        .and_then(|n| n.checked_mul(dtype.bitsize()))
                        .filter(|b| b % 8 == 0)
                        .map(|b| b / 8);
                    let span = offs.1.checked_sub(offs.0);
                    (bytes != span).then(|| {
                        format!(
                            "tensor '{k}' is {dtype} with shape {shape:?} ({}) but its data_offsets [{}, {}] span {} bytes",
                            bytes.map_or("a size that overflows or is not a whole number of bytes".into(), |b| format!("{b} bytes")),
                            offs.0,
                            offs.1,
                            span.map_or("a negative number of".into(), |s| s.to_string())
                        )
                    })
                })
            });
            culprit.unwrap_or_else(|| format!("invalid tensor entry in header: {e}"))
        }
        E::MetadataIncompleteBuffer => {
            let covered = header().map(|h| {
                h.values()
                    .filter_map(|v| v.get("data_offsets")?.get(1)?.as_u64())
                    .max()
                    .unwrap_or(0)
            });
            let data = buf.len() as u64 - 8 - n;
            match covered {
                Some(c) if c > data => format!(
                    "tensor data ends at byte {c} of the data section, past the end of the file \
                     (data section is {data} bytes; truncated?)"
                ),
                Some(c) => format!(
                    "the tensors cover {c} bytes but the data section is {data} bytes (trailing bytes)"
                ),
                None => format!("tensor data does not match the data section ({data} bytes)"),
            }
        }
        other => format!("invalid safetensors header: {other}"),
    }
}
