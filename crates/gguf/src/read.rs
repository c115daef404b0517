//! The reader. Mirrors the checks of llama.cpp's `gguf_init_from_file_impl`
//! and adds the ones it leaves to `fread` failing: every length is compared
//! with the bytes left in the file before anything is allocated for it.

use std::collections::HashMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use tersor_ggml::GgmlType;

use crate::value::{ArrayValue, Value, ValueType};
use crate::{
    align_up, GgufError, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS,
    MAX_NAME_LEN,
};

/// One tensor's header entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` (`ne[0]`) is the row length, the fastest-varying
    /// dimension. Empty for a scalar.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Byte offset of the data, relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Product of the dims (saturating; exact for any validated tensor).
    pub fn n_elements(&self) -> u64 {
        self.dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .unwrap_or(u64::MAX)
    }

    /// `ne[0]`, the number of elements in one row (1 for a scalar).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows: the product of `ne[1..]`.
    pub fn n_rows(&self) -> u64 {
        self.dims
            .iter()
            .skip(1)
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .unwrap_or(u64::MAX)
    }

    /// Bytes of one row (`ggml_row_size`): `row_len / block_size * type_size`.
    pub fn row_bytes(&self) -> u64 {
        let bs = self.ty.block_size() as u64;
        (self.row_len() / bs).saturating_mul(self.ty.type_size() as u64)
    }

    /// Bytes of the tensor's data (`ggml_nbytes`; saturating, exact for any
    /// validated tensor).
    pub fn n_bytes(&self) -> u64 {
        self.row_bytes().saturating_mul(self.n_rows())
    }

    /// Checks the shape and type as llama.cpp does when loading: at most
    /// `GGML_MAX_DIMS` dims, each in `1..=i64::MAX`, element count and byte
    /// size representable, row length a multiple of the block size.
    /// Returns the byte size. The message does not name a file.
    pub(crate) fn check_shape(name: &str, dims: &[u64], ty: GgmlType) -> Result<u64, String> {
        if dims.len() > MAX_DIMS {
            return Err(format!(
                "tensor '{name}' has {} dimensions (at most {MAX_DIMS})",
                dims.len()
            ));
        }
        let mut n: u64 = 1;
        for (j, &d) in dims.iter().enumerate() {
            if d == 0 || d > i64::MAX as u64 {
                return Err(format!(
                    "tensor '{name}' dimension {j} has invalid size {d} (must be 1..=2^63-1)"
                ));
            }
            n = match n.checked_mul(d) {
                Some(v) if v <= i64::MAX as u64 => v,
                _ => {
                    return Err(format!(
                        "tensor '{name}' with shape {dims:?} has more than 2^63-1 elements"
                    ))
                }
            };
        }
        let row = dims.first().copied().unwrap_or(1);
        let bs = ty.block_size() as u64;
        if row % bs != 0 {
            return Err(format!(
                "tensor '{name}' of type {} has {row} elements per row, not a multiple of the block size {bs}",
                ty.name()
            ));
        }
        ty.bytes_for(n).ok_or_else(|| {
            format!(
                "tensor '{name}' with shape {dims:?} of type {} is too large",
                ty.name()
            )
        })
    }
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

/// A validated GGUF file. Opening checks the whole header and that every
/// tensor's data lies inside the file, so the accessors cannot fail.
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    version: u32,
    alignment: u64,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and validates `path`.
    ///
    /// As with any mmap, the file must not be truncated by another process
    /// while it is open.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let file = std::fs::File::open(path).map_err(|e| GgufError::io(path, e))?;
        let len = file.metadata().map_err(|e| GgufError::io(path, e))?.len();
        if len < 24 {
            return Err(GgufError::format(
                path,
                format!("file is {len} bytes, too short for a GGUF header (24 bytes)"),
            ));
        }
        // SAFETY: read-only private mapping; see the doc comment about
        // concurrent truncation.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| GgufError::io(path, e))?;
        Self::from_storage(path.to_path_buf(), Storage::Mmap(mmap))
    }

    /// Validates an in-memory file; `name` is used as the path in errors.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<GgufFile, GgufError> {
        Self::from_storage(PathBuf::from(name), Storage::Owned(bytes))
    }

    fn from_storage(path: PathBuf, storage: Storage) -> Result<GgufFile, GgufError> {
        let h = parse(&storage, &path)?;
        let key_index = h
            .metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        let tensor_index = h
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            path,
            storage,
            version: h.version,
            alignment: h.alignment,
            metadata: h.metadata,
            key_index,
            tensors: h.tensors,
            tensor_index,
            data_offset: h.data_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// All key-value pairs, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }
    /// `get(key)` as a UTF-8 string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
    /// `get(key)` as an unsigned integer.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }
    /// `get(key)` as f32.
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key).and_then(Value::as_f32)
    }
    /// Tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
    /// The data of a tensor of this file (checked to lie inside the file when
    /// it was opened).
    ///
    /// # Panics
    /// If `t` is not one of this file's tensors and its range lies outside the
    /// file (a programming error, not bad input).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let start = self.data_offset.saturating_add(t.offset);
        let end = start.saturating_add(t.n_bytes());
        usize::try_from(start)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(s, e)| self.storage.get(s..e))
            .unwrap_or_else(|| {
                panic!(
                    "{}: TensorInfo '{}' does not belong to this file",
                    self.path.display(),
                    t.name
                )
            })
    }
    /// Offset of the data section from the start of the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
    pub fn file_size(&self) -> u64 {
        self.storage.len() as u64
    }
    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.storage
    }
}

struct Header {
    version: u32,
    alignment: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    data_offset: u64,
}

/// Bounds-checked little-endian cursor. All reads check the remaining length.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

type R<T> = Result<T, GgufError>;

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl Into<String>) -> GgufError {
        GgufError::format(self.path, msg)
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    /// Takes `n` bytes; `what` describes the item for the error message.
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> R<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "file ends inside {} (needs {n} bytes at offset {}, {} left)",
                what(),
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> R<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> R<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> R<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A GGUF string: u64 length, then bytes. The length is checked against
    /// the bytes left before anything is copied.
    fn string_bytes(&mut self, what: &dyn Fn() -> String) -> R<&'a [u8]> {
        let at = self.pos;
        let len = self.u64(&|| format!("the length of {}", what()))?;
        if len > self.remaining() {
            return Err(self.err(format!(
                "{} at offset {at} claims {len} bytes but only {} bytes are left in the file",
                what(),
                self.remaining()
            )));
        }
        self.take(len, what)
    }

    fn utf8_string(&mut self, what: &dyn Fn() -> String) -> R<String> {
        let at = self.pos;
        let b = self.string_bytes(what)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(self.err(format!(
                "{} at offset {at} is not valid UTF-8 ({e})",
                what()
            ))),
        }
    }

    /// One value of type `ty`. `depth` counts enclosing arrays.
    fn value(&mut self, ty: ValueType, depth: usize, what: &dyn Fn() -> String) -> R<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(what)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Bool => {
                let at = self.pos;
                match self.array::<1>(what)?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => {
                        return Err(self.err(format!(
                            "{} at offset {at} is a bool with byte value {b} (must be 0 or 1)",
                            what()
                        )))
                    }
                }
            }
            ValueType::String => {
                let b = self.string_bytes(what)?;
                match std::str::from_utf8(b) {
                    Ok(s) => Value::String(s.to_owned()),
                    Err(_) => Value::RawString(b.to_vec()),
                }
            }
            ValueType::Array => {
                let at = self.pos;
                let id = self.u32(&|| format!("the element type of {}", what()))?;
                let elem = ValueType::from_id(id).ok_or_else(|| {
                    self.err(format!(
                        "{} at offset {at} is an array of unknown value type {id}",
                        what()
                    ))
                })?;
                let n = self.u64(&|| format!("the length of {}", what()))?;
                if elem == ValueType::Array && depth + 1 >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!(
                        "{} at offset {at} nests arrays deeper than {MAX_ARRAY_DEPTH} levels",
                        what()
                    )));
                }
                // Each element needs at least min_size bytes: reject lengths
                // that could not fit before reserving memory for them.
                let need = u128::from(n) * u128::from(elem.min_size());
                if need > u128::from(self.remaining()) {
                    return Err(self.err(format!(
                        "{} at offset {at} claims {n} elements of type {elem} (at least {need} bytes) \
                         but only {} bytes are left in the file",
                        what(),
                        self.remaining()
                    )));
                }
                let mut values = Vec::with_capacity(n as usize);
                for i in 0..n {
                    let inner = || format!("element {i} of {}", what());
                    values.push(self.value(elem, depth + 1, &inner)?);
                }
                Value::Array(ArrayValue::new(elem, values))
            }
        })
    }
}

fn parse(buf: &[u8], path: &Path) -> R<Header> {
    let mut c = Cursor { buf, pos: 0, path };
    let magic = c.array::<4>(&|| "the magic".into())?;
    if magic != GGUF_MAGIC {
        return Err(c.err(format!(
            "not a GGUF file: magic bytes are {magic:02x?} ({:?}), expected \"GGUF\"",
            String::from_utf8_lossy(&magic)
        )));
    }
    let version = c.u32(&|| "the version".into())?;
    if version & 0xFFFF == 0 && version != 0 {
        return Err(c.err(format!(
            "GGUF version field is {version:#010x}: this looks like a big-endian GGUF file \
             (version {}), only little-endian files are supported",
            version.swap_bytes()
        )));
    }
    match version {
        2 | 3 => {}
        1 => {
            return Err(c.err(
                "GGUF version 1 is no longer supported (convert it with a current llama.cpp)",
            ))
        }
        v => {
            return Err(c.err(format!(
                "unsupported GGUF version {v} (versions 2 and 3 are supported)"
            )))
        }
    }
    let n_tensors = c.u64(&|| "the tensor count".into())?;
    let n_kv = c.u64(&|| "the key-value count".into())?;
    // Each key-value pair needs at least 8 (key length) + 4 (type) + 1 bytes,
    // each tensor info 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
    const MIN_KV: u128 = 13;
    const MIN_TENSOR: u128 = 24;
    let need = u128::from(n_kv) * MIN_KV + u128::from(n_tensors) * MIN_TENSOR;
    if need > u128::from(c.remaining()) {
        return Err(c.err(format!(
            "header claims {n_kv} key-value pairs and {n_tensors} tensors, which need at least \
             {need} bytes, but the file has only {} bytes after the header",
            c.remaining()
        )));
    }

    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv as usize);
    let mut keys: HashMap<String, usize> = HashMap::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key = c.utf8_string(&|| format!("the key of metadata entry {i}"))?;
        if let Some(&j) = keys.get(&key) {
            return Err(c.err(format!(
                "duplicate metadata key '{key}' (entries {j} and {i})"
            )));
        }
        let at = c.pos;
        let id = c.u32(&|| format!("the type of metadata key '{key}'"))?;
        let ty = ValueType::from_id(id).ok_or_else(|| {
            c.err(format!(
                "metadata key '{key}' at offset {at} has unknown value type {id}"
            ))
        })?;
        let v = c.value(ty, 0, &|| format!("the value of metadata key '{key}'"))?;
        keys.insert(key.clone(), i as usize);
        metadata.push((key, v));
    }

    let alignment = match keys.get(ALIGNMENT_KEY).map(|&i| &metadata[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(Value::U32(a)) => {
            return Err(c.err(format!(
                "{ALIGNMENT_KEY} is {a}, it must be a nonzero power of two"
            )))
        }
        Some(v) => {
            return Err(c.err(format!(
                "{ALIGNMENT_KEY} has type {}, it must be u32",
                v.value_type()
            )))
        }
    };

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
    let mut names: HashMap<String, usize> = HashMap::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = c.utf8_string(&|| format!("the name of tensor {i}"))?;
        if name.len() >= MAX_NAME_LEN {
            return Err(c.err(format!(
                "tensor {i} name '{name}' is {} bytes long, llama.cpp allows at most {}",
                name.len(),
                MAX_NAME_LEN - 1
            )));
        }
        if let Some(&j) = names.get(&name) {
            return Err(c.err(format!(
                "duplicate tensor name '{name}' (tensors {j} and {i})"
            )));
        }
        let n_dims = c.u32(&|| format!("the dimension count of tensor '{name}'"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(c.err(format!(
                "tensor '{name}' has {n_dims} dimensions (at most {MAX_DIMS})"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for j in 0..n_dims {
            dims.push(c.u64(&|| format!("dimension {j} of tensor '{name}'"))?);
        }
        let at = c.pos;
        let id = c.u32(&|| format!("the type of tensor '{name}'"))?;
        let ty = GgmlType::from_id(id).map_err(|_| {
            c.err(format!(
                "tensor '{name}' at offset {at} has unknown ggml type id {id}"
            ))
        })?;
        TensorInfo::check_shape(&name, &dims, ty).map_err(|m| c.err(m))?;
        let offset = c.u64(&|| format!("the data offset of tensor '{name}'"))?;
        names.insert(name.clone(), i as usize);
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
        });
    }

    let file_size = buf.len() as u64;
    let header_end = c.pos as u64;
    let data_offset = align_up(header_end, alignment)
        .filter(|&d| d <= file_size)
        .ok_or_else(|| {
            c.err(format!(
                "file ends at {file_size}, inside the padding after the header \
                 (header ends at {header_end}, data must start at a multiple of {alignment})"
            ))
        })?;

    for t in &tensors {
        if t.offset % alignment != 0 {
            return Err(c.err(format!(
                "tensor '{}' data offset {} is not a multiple of the alignment {alignment}",
                t.name, t.offset
            )));
        }
        // u128: neither sum can overflow.
        let start = u128::from(data_offset) + u128::from(t.offset);
        let end = start + u128::from(t.n_bytes());
        if end > u128::from(file_size) {
            return Err(c.err(format!(
                "tensor '{}' data [{start}..{end}) lies outside the file (size {file_size})",
                t.name
            )));
        }
    }
    // No two tensors may share bytes.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors[i].offset);
    for w in order.windows(2) {
        let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
        if a.offset + a.n_bytes() > b.offset {
            return Err(c.err(format!(
                "tensors '{}' [{}..{}) and '{}' [{}..) overlap in the data section",
                a.name,
                a.offset,
                a.offset + a.n_bytes(),
                b.name,
                b.offset
            )));
        }
    }

    Ok(Header {
        version,
        alignment,
        metadata,
        tensors,
        data_offset,
    })
}
