//! The writer: header first, then each tensor's data streamed from a callback,
//! so a model larger than RAM can be rewritten. The layout is the one
//! llama.cpp's `gguf_write_to_buf` and gguf-py's `GGUFWriter` produce: tensors
//! in order, each at the previous end rounded up to the alignment, zero
//! padding after the header and after every tensor (the last one included).

use std::collections::HashMap;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use tersor_ggml::GgmlType;

use crate::read::{GgufFile, TensorInfo};
use crate::value::{Value, ValueType};
use crate::{
    align_up, GgufError, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_DEPTH,
    MAX_NAME_LEN,
};

/// Builds a GGUF file: metadata and tensor infos in memory, tensor data
/// streamed at [`GgufWriter::write`].
#[derive(Clone, Debug)]
pub struct GgufWriter {
    version: u32,
    alignment: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
}

impl GgufWriter {
    /// `version` must be 2 or 3 (the layouts are identical; 3 is current).
    /// `alignment` must be a nonzero power of two that fits a u32; a value
    /// other than 32 is recorded as `general.alignment` (first key), since
    /// readers assume 32 without it. Invalid values are reported by `write`.
    pub fn new(version: u32, alignment: u64) -> Self {
        let mut w = GgufWriter {
            version,
            alignment,
            metadata: Vec::new(),
            tensors: Vec::new(),
        };
        if alignment != DEFAULT_ALIGNMENT {
            let a = u32::try_from(alignment).unwrap_or(0);
            w.metadata.push((ALIGNMENT_KEY.to_owned(), Value::U32(a)));
        }
        w
    }

    /// Same version, alignment, metadata (all of it, in order) and tensor
    /// infos (names, shapes, types, in order) as `f`, to rewrite a model
    /// preserving its metadata. Offsets are recomputed (for files written by
    /// llama.cpp or gguf-py they come out identical).
    pub fn from_file(f: &GgufFile) -> Self {
        let mut w = GgufWriter {
            version: f.version(),
            alignment: f.alignment(),
            metadata: f.metadata().to_vec(),
            tensors: f.tensors().to_vec(),
        };
        w.relayout();
        w
    }

    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    /// Tensor infos with the offsets they will be written at.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Adds a key at the end, or replaces the value of an existing key in
    /// place (keeping its position). Setting `general.alignment` to a `u32`
    /// changes the alignment; an invalid value is reported by `write`.
    pub fn add_metadata(&mut self, key: impl Into<String>, v: Value) {
        let key = key.into();
        if key == ALIGNMENT_KEY {
            if let Value::U32(a) = v {
                self.alignment = u64::from(a);
                self.relayout();
            }
        }
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = v,
            None => self.metadata.push((key, v)),
        }
    }

    /// Removes a key, returning its value. Removing `general.alignment`
    /// restores the default alignment.
    pub fn remove_metadata(&mut self, key: &str) -> Option<Value> {
        let i = self.metadata.iter().position(|(k, _)| k == key)?;
        if key == ALIGNMENT_KEY {
            self.alignment = DEFAULT_ALIGNMENT;
            self.relayout();
        }
        Some(self.metadata.remove(i).1)
    }

    /// Appends a tensor; its offset is the end of the previous one rounded up
    /// to the alignment. Checks what llama.cpp checks on load: name shorter
    /// than 64 bytes and unique, at most 4 dims, each ≥ 1, element count below
    /// 2^63, row length a multiple of the type's block size.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: Vec<u64>,
        ty: GgmlType,
    ) -> Result<(), GgufError> {
        let name = name.into();
        check_name(&name)?;
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(GgufError::Invalid(format!(
                "duplicate tensor name '{name}'"
            )));
        }
        TensorInfo::check_shape(&name, &dims, ty).map_err(GgufError::Invalid)?;
        self.tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset: 0,
        });
        self.relayout();
        Ok(())
    }

    /// Changes the type (and so the byte size) of an existing tensor, e.g. to
    /// requantize a model read with [`GgufWriter::from_file`].
    pub fn set_tensor_type(&mut self, name: &str, ty: GgmlType) -> Result<(), GgufError> {
        let t = self
            .tensors
            .iter_mut()
            .find(|t| t.name == name)
            .ok_or_else(|| GgufError::Invalid(format!("no tensor named '{name}'")))?;
        TensorInfo::check_shape(name, &t.dims, ty).map_err(GgufError::Invalid)?;
        t.ty = ty;
        self.relayout();
        Ok(())
    }

    /// Bytes of the file `write` produces: the header padded to the alignment plus
    /// the data section. Tensor types do not change the header's length.
    pub fn file_size(&self) -> u64 {
        self.header_bytes().len() as u64 + self.data_size()
    }

    /// Total bytes of the data section (each tensor padded to the alignment).
    pub fn data_size(&self) -> u64 {
        self.tensors.last().map_or(0, |t| {
            align_up(t.offset.saturating_add(t.n_bytes()), self.safe_alignment())
                .unwrap_or(u64::MAX)
        })
    }

    fn safe_alignment(&self) -> u64 {
        if self.alignment.is_power_of_two() {
            self.alignment
        } else {
            DEFAULT_ALIGNMENT
        }
    }

    /// Recomputes offsets: contiguous, each aligned (llama.cpp
    /// `gguf_add_tensor` / gguf-py `add_tensor_info`). Sizes are validated, so
    /// this only saturates on nonsense that `write` rejects anyway.
    fn relayout(&mut self) {
        let align = self.safe_alignment();
        let mut off = 0u64;
        for t in &mut self.tensors {
            t.offset = off;
            off = align_up(off.saturating_add(t.n_bytes()), align).unwrap_or(u64::MAX);
        }
    }

    fn validate(&self, path: &Path) -> Result<(), GgufError> {
        let bad = |m: String| GgufError::format(path, m);
        if !matches!(self.version, 2 | 3) {
            return Err(bad(format!(
                "cannot write GGUF version {} (2 or 3)",
                self.version
            )));
        }
        if !self.alignment.is_power_of_two() || self.alignment > u64::from(u32::MAX) {
            return Err(bad(format!(
                "alignment {} is not a nonzero power of two that fits a u32",
                self.alignment
            )));
        }
        match self.get(ALIGNMENT_KEY) {
            None if self.alignment == DEFAULT_ALIGNMENT => {}
            Some(Value::U32(a)) if u64::from(*a) == self.alignment => {}
            other => {
                return Err(bad(format!(
                    "{ALIGNMENT_KEY} is {other:?} but the writer aligns to {}",
                    self.alignment
                )))
            }
        }
        let mut seen = HashMap::with_capacity(self.metadata.len());
        for (k, v) in &self.metadata {
            if seen.insert(k.as_str(), ()).is_some() {
                return Err(bad(format!("duplicate metadata key '{k}'")));
            }
            check_value(v, 0).map_err(|m| bad(format!("metadata key '{k}': {m}")))?;
        }
        let mut names = HashMap::with_capacity(self.tensors.len());
        for t in &self.tensors {
            check_name(&t.name).map_err(|e| bad(e.to_string()))?;
            if names.insert(t.name.as_str(), ()).is_some() {
                return Err(bad(format!("duplicate tensor name '{}'", t.name)));
            }
            TensorInfo::check_shape(&t.name, &t.dims, t.ty).map_err(bad)?;
        }
        Ok(())
    }

    /// The header bytes, up to and including the padding before the data
    /// section.
    fn header_bytes(&self) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&GGUF_MAGIC);
        h.extend_from_slice(&self.version.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut h, k.as_bytes());
            h.extend_from_slice(&v.value_type().id().to_le_bytes());
            put_value(&mut h, v);
        }
        for t in &self.tensors {
            put_str(&mut h, t.name.as_bytes());
            h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.ty.id().to_le_bytes());
            h.extend_from_slice(&t.offset.to_le_bytes());
        }
        let padded = align_up(h.len() as u64, self.alignment).unwrap_or(h.len() as u64);
        h.resize(padded as usize, 0);
        h
    }

    /// Writes the file atomically: a temporary file in the same directory,
    /// fsynced, then renamed over `path`. `data(i, w)` must write exactly
    /// `tensors()[i].n_bytes()` bytes of tensor `i` to `w`; tensors are
    /// requested in order, one at a time. On any error (including a callback
    /// error or a wrong byte count) the temporary file is removed and `path`
    /// is left untouched.
    pub fn write(
        self,
        path: &Path,
        mut data: impl FnMut(usize, &mut dyn Write) -> Result<(), GgufError>,
    ) -> Result<(), GgufError> {
        self.validate(path)?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| GgufError::format(path, "output path has no file name"))?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", file_name.to_string_lossy()))
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| GgufError::io(dir, e))?;
        let io_err = |e: io::Error| GgufError::io(tmp.path(), e);

        // tempfile creates 0600 files; give the output the usual mode.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))
                .map_err(io_err)?;
        }
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
        w.write_all(&self.header_bytes()).map_err(io_err)?;
        let zeros = [0u8; 4096];
        for (i, t) in self.tensors.iter().enumerate() {
            let n = t.n_bytes();
            let mut cw = Counting {
                inner: &mut w,
                written: 0,
                limit: n,
            };
            data(i, &mut cw).map_err(|e| {
                GgufError::format(path, format!("writing data of tensor '{}': {e}", t.name))
            })?;
            if cw.written != n {
                return Err(GgufError::format(
                    path,
                    format!(
                        "tensor '{}' ({} {:?}) must be {n} bytes but {} were written",
                        t.name,
                        t.ty.name(),
                        t.dims,
                        cw.written
                    ),
                ));
            }
            let end = t.offset + n;
            let mut pad = align_up(end, self.alignment).unwrap_or(end) - end;
            while pad > 0 {
                let k = pad.min(zeros.len() as u64) as usize;
                w.write_all(&zeros[..k]).map_err(io_err)?;
                pad -= k as u64;
            }
        }
        w.flush().map_err(io_err)?;
        drop(w);
        tmp.as_file().sync_all().map_err(io_err)?;
        tmp.persist(path)
            .map_err(|e| GgufError::io(path, e.error))?;
        // Make the rename durable; not all platforms allow fsync on a
        // directory, so this is best effort.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Counts bytes and refuses to write past `limit`, so a callback writing too
/// much fails at once instead of corrupting the next tensor's offset.
struct Counting<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
    limit: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "tensor data longer than its {} bytes ({} already written, {} more offered)",
                    self.limit,
                    self.written,
                    buf.len()
                ),
            ));
        }
        let k = self.inner.write(buf)?;
        self.written += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn check_name(name: &str) -> Result<(), GgufError> {
    if name.len() >= MAX_NAME_LEN {
        return Err(GgufError::Invalid(format!(
            "tensor name '{name}' is {} bytes long, llama.cpp allows at most {}",
            name.len(),
            MAX_NAME_LEN - 1
        )));
    }
    Ok(())
}

fn check_value(v: &Value, depth: usize) -> Result<(), String> {
    if let Value::Array(a) = v {
        if a.elem_type == ValueType::Array && depth + 1 >= MAX_ARRAY_DEPTH {
            return Err(format!(
                "arrays nested deeper than {MAX_ARRAY_DEPTH} levels"
            ));
        }
        for (i, e) in a.values.iter().enumerate() {
            if e.value_type() != a.elem_type {
                return Err(format!(
                    "array of {} holds a {} at index {i}",
                    a.elem_type,
                    e.value_type()
                ));
            }
            check_value(e, depth + 1).map_err(|m| format!("element {i}: {m}"))?;
        }
    }
    Ok(())
}

fn put_str(h: &mut Vec<u8>, s: &[u8]) {
    h.extend_from_slice(&(s.len() as u64).to_le_bytes());
    h.extend_from_slice(s);
}

fn put_value(h: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => h.push(*x),
        Value::I8(x) => h.push(*x as u8),
        Value::U16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => h.push(u8::from(*x)),
        Value::String(s) => put_str(h, s.as_bytes()),
        Value::RawString(b) => put_str(h, b),
        Value::U64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::Array(a) => {
            h.extend_from_slice(&a.elem_type.id().to_le_bytes());
            h.extend_from_slice(&(a.values.len() as u64).to_le_bytes());
            for e in &a.values {
                put_value(h, e);
            }
        }
    }
}
