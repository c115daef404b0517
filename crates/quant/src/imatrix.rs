//! llama.cpp's importance-matrix files: per weight matrix, the mean of x²
//! over calibration tokens for each input column, which llama-quantize passes
//! to `ggml_quantize_chunk` as per-column weights.
//!
//! Two formats:
//! - the legacy binary `.dat` of llama.cpp commit c392e509
//!   (`examples/imatrix/imatrix.cpp` `save_imatrix`), read and written
//!   byte-compatibly. All integers are little-endian i32:
//!   ```text
//!   n_entries
//!   n_entries × { name_len, name bytes, ncall, nval, nval × f32 value }
//!   last_chunk, dataset_len, dataset bytes        (absent in old files)
//!   ```
//!   where `value = Σx² / n_tokens × ncall` per column and `ncall` counts the
//!   matmul calls (one per chunk of `-c` tokens when the batch holds a chunk);
//! - the GGUF imatrix of newer llama.cpp (tools/imatrix/imatrix.cpp), read
//!   only: `general.type = "imatrix"`, `imatrix.datasets` (strings),
//!   `imatrix.chunk_count`, `imatrix.chunk_size`, and per matrix two F32
//!   tensors `<name>.in_sum2` (Σx², shape `[n_col, n_mat]`) and
//!   `<name>.counts` (tokens seen, shape `[1, n_mat]`; `n_mat` > 1 only for
//!   stacked experts).
//!
//! [`Imatrix::importance`] gives exactly what llama-quantize computes from
//! each: `value / ncall` for the legacy format
//! (examples/quantize/quantize.cpp `load_imatrix`), `in_sum2 / count` per
//! matrix for GGUF (newer tools/quantize, 1 where the count is 0).

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use tersor_gguf::{GgufError, GgufFile};

use crate::{QuantError, Result};

/// One weight matrix's statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct ImatrixEntry {
    /// Per input column, as the file stores it. Legacy `.dat` (`counts` is
    /// `None`): mean of x² over the tokens seen, times `ncall`. GGUF
    /// (`counts` is `Some`): the sum of x² (`in_sum2`), `n_mat` rows of
    /// columns.
    pub values: Vec<f32>,
    /// Legacy `.dat`: the number of matmul calls the values were collected
    /// over; the divisor llama-quantize uses. 0 for entries read from GGUF.
    pub ncall: u32,
    /// GGUF only: the tokens seen per matrix (`<name>.counts`, rounded to
    /// integers as llama.cpp does); the divisor of each row of `values`.
    pub counts: Option<Vec<f32>>,
}

impl ImatrixEntry {
    /// The per-column weights llama-quantize passes to `ggml_quantize_chunk`
    /// (for a stacked-expert entry, expert after expert).
    pub fn importance(&self) -> Vec<f32> {
        match &self.counts {
            None => {
                if self.ncall > 0 {
                    let n = self.ncall as f32;
                    self.values.iter().map(|v| v / n).collect()
                } else {
                    self.values.clone()
                }
            }
            Some(counts) => {
                let ne0 = self.values.len() / counts.len().max(1);
                let mut out = Vec::with_capacity(self.values.len());
                for (j, &c) in counts.iter().enumerate() {
                    let row = &self.values[j * ne0..(j + 1) * ne0];
                    if c > 0.0 {
                        out.extend(row.iter().map(|v| v / c));
                    } else {
                        out.extend(std::iter::repeat_n(1.0f32, ne0));
                    }
                }
                out
            }
        }
    }
}

/// An importance matrix: statistics per weight matrix (GGUF tensor name,
/// e.g. `blk.0.attn_q.weight`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imatrix {
    pub entries: BTreeMap<String, ImatrixEntry>,
    /// Chunks of calibration text processed (legacy trailer `last_chunk`,
    /// GGUF `imatrix.chunk_count`); 0 when the file does not say.
    pub chunks: usize,
    /// Calibration files named in the file (legacy: at most one).
    pub datasets: Vec<String>,
    /// Tokens per chunk (GGUF `imatrix.chunk_size`); legacy files do not
    /// store it.
    pub chunk_size: Option<u32>,
    /// Entry order as read from a legacy file (llama-imatrix writes its hash
    /// map's order); [`Imatrix::write_dat`] writes these names first, then
    /// any others sorted, so a file read and written back is byte-identical.
    pub file_order: Vec<String>,
}

fn file_err(path: &Path, msg: impl Into<String>) -> QuantError {
    QuantError::File {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn io_err(path: &Path, source: std::io::Error) -> QuantError {
    QuantError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A bounds-checked little-endian reader over a file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(file_err(
                self.path,
                format!(
                    "truncated: {what} needs {n} bytes at offset {} but only {} remain",
                    self.pos,
                    self.remaining()
                ),
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn i32(&mut self, what: &str) -> Result<i32> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A non-negative i32 count.
    fn count(&mut self, what: &str) -> Result<usize> {
        let at = self.pos;
        let v = self.i32(what)?;
        usize::try_from(v).map_err(|_| {
            file_err(
                self.path,
                format!("{what} at offset {at} is negative ({v})"),
            )
        })
    }

    fn string(&mut self, len: usize, what: &str) -> Result<String> {
        let at = self.pos;
        let b = self.take(len, what)?;
        let s = std::str::from_utf8(b)
            .map_err(|_| file_err(self.path, format!("{what} at offset {at} is not UTF-8")))?;
        if s.contains('\0') {
            return Err(file_err(
                self.path,
                format!("{what} at offset {at} contains a NUL byte"),
            ));
        }
        Ok(s.to_string())
    }
}

fn f32s_le(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn check_finite(path: &Path, name: &str, what: &str, v: &[f32]) -> Result<()> {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(file_err(
            path,
            format!("entry '{name}': {what} {i} is not finite ({})", v[i]),
        ));
    }
    Ok(())
}

impl Imatrix {
    /// Reads either format, telling them apart by the GGUF magic.
    pub fn read(path: &Path) -> Result<Imatrix> {
        let mut magic = [0u8; 4];
        let n = {
            let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
            let mut n = 0;
            while n < 4 {
                match std::io::Read::read(&mut f, &mut magic[n..]).map_err(|e| io_err(path, e))? {
                    0 => break,
                    k => n += k,
                }
            }
            n
        };
        if n == 4 && &magic == b"GGUF" {
            Self::read_gguf(path)
        } else {
            Self::read_dat(path)
        }
    }

    /// Reads a legacy `.dat` file (llama-imatrix at llama.cpp c392e509).
    ///
    /// Stricter than llama.cpp where it would read garbage: negative counts,
    /// duplicate names, non-finite values, names that are not UTF-8 or hold a
    /// NUL, a partial trailer and bytes after it are errors.
    pub fn read_dat(path: &Path) -> Result<Imatrix> {
        let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
        Self::parse_dat(&bytes, path)
    }

    /// [`Imatrix::read_dat`] on bytes in memory; `path` names them in errors.
    pub fn parse_dat(bytes: &[u8], path: &Path) -> Result<Imatrix> {
        let mut c = Cursor {
            bytes,
            pos: 0,
            path,
        };
        let n_entries = c.i32("entry count")?;
        if n_entries < 1 {
            return Err(file_err(
                path,
                format!("no data: entry count is {n_entries}"),
            ));
        }
        let n_entries = n_entries as usize;
        // Each entry takes at least 12 bytes (name length, ncall, nval) plus
        // one value: reject impossible counts before trusting them.
        if n_entries > c.remaining() / 16 {
            return Err(file_err(
                path,
                format!(
                    "entry count {n_entries} cannot fit in the {} bytes that follow",
                    c.remaining()
                ),
            ));
        }
        let mut im = Imatrix::default();
        for i in 0..n_entries {
            let len = c.count(&format!("name length of entry {i}"))?;
            let name = c.string(len, &format!("name of entry {i}"))?;
            let ncall = c.i32(&format!("ncall of entry '{name}'"))?;
            let ncall = u32::try_from(ncall)
                .map_err(|_| file_err(path, format!("entry '{name}': negative ncall {ncall}")))?;
            let nval = c.count(&format!("value count of entry '{name}'"))?;
            if nval < 1 {
                return Err(file_err(path, format!("entry '{name}' has no values")));
            }
            let nbytes = nval
                .checked_mul(4)
                .filter(|&b| b <= c.remaining())
                .ok_or_else(|| {
                    file_err(
                        path,
                        format!(
                        "truncated: entry '{name}' claims {nval} values but only {} bytes remain",
                        c.remaining()
                    ),
                    )
                })?;
            let values = f32s_le(c.take(nbytes, "values")?);
            check_finite(path, &name, "value", &values)?;
            if im.entries.contains_key(&name) {
                return Err(file_err(path, format!("entry '{name}' appears twice")));
            }
            im.file_order.push(name.clone());
            im.entries.insert(
                name,
                ImatrixEntry {
                    values,
                    ncall,
                    counts: None,
                },
            );
        }
        // "latest imatrix version contains the dataset filename at the end"
        if c.remaining() > 0 {
            im.chunks = c.count("chunk count")?;
            let len = c.count("dataset name length")?;
            let dataset = c.string(len, "dataset name")?;
            if !dataset.is_empty() {
                im.datasets.push(dataset);
            }
            if c.remaining() > 0 {
                return Err(file_err(
                    path,
                    format!("{} unexpected bytes after the dataset name", c.remaining()),
                ));
            }
        }
        Ok(im)
    }

    /// Reads the GGUF imatrix format of newer llama.cpp.
    pub fn read_gguf(path: &Path) -> Result<Imatrix> {
        let file = GgufFile::open(path).map_err(|e| match e {
            GgufError::Format { msg, .. } => file_err(path, msg),
            GgufError::Io { err, .. } => io_err(path, err),
            other => file_err(path, other.to_string()),
        })?;
        match file.get_str("general.type") {
            Some("imatrix") => {}
            Some(other) => {
                return Err(file_err(
                    path,
                    format!("general.type is '{other}', not 'imatrix'"),
                ))
            }
            None => return Err(file_err(path, "no general.type: not an imatrix GGUF file")),
        }
        let mut im = Imatrix::default();
        if let Some(v) = file.get("imatrix.datasets") {
            let list = v
                .as_string_array()
                .ok_or_else(|| file_err(path, "imatrix.datasets is not an array of strings"))?;
            im.datasets = list.into_iter().map(str::to_string).collect();
        }
        if let Some(v) = file.get("imatrix.chunk_count") {
            let n = v
                .as_u64()
                .ok_or_else(|| file_err(path, "imatrix.chunk_count is not an unsigned integer"))?;
            im.chunks = usize::try_from(n)
                .map_err(|_| file_err(path, format!("imatrix.chunk_count {n} is too large")))?;
        }
        if let Some(v) = file.get("imatrix.chunk_size") {
            let n = v
                .as_u32()
                .ok_or_else(|| file_err(path, "imatrix.chunk_size is not a u32"))?;
            im.chunk_size = Some(n);
        }

        // (in_sum2, counts) per matrix name, sorted as llama.cpp's std::map.
        let mut parts: BTreeMap<&str, [Option<&tersor_gguf::TensorInfo>; 2]> = BTreeMap::new();
        for t in file.tensors() {
            if let Some(base) = t.name.strip_suffix(".in_sum2") {
                parts.entry(base).or_default()[0] = Some(t);
            } else if let Some(base) = t.name.strip_suffix(".counts") {
                parts.entry(base).or_default()[1] = Some(t);
            }
            // ".in_sum" (mean activations) and anything else: not needed.
        }
        if parts.is_empty() {
            return Err(file_err(path, "no <name>.in_sum2 / <name>.counts tensors"));
        }
        for (name, [sums, counts]) in parts {
            let (Some(sums), Some(counts)) = (sums, counts) else {
                return Err(file_err(
                    path,
                    format!("mismatched sums and counts for '{name}'"),
                ));
            };
            for t in [sums, counts] {
                if t.ty != tersor_ggml::GgmlType::F32 {
                    return Err(file_err(
                        path,
                        format!("tensor '{}' is {}, expected F32", t.name, t.ty),
                    ));
                }
            }
            let values = f32s_le(file.tensor_data(sums));
            let cnt: Vec<f32> = f32s_le(file.tensor_data(counts));
            let (nval, nmat) = (values.len(), cnt.len());
            if nmat == 0 || nval == 0 || nval % nmat != 0 || sums.n_rows() as usize != nmat {
                return Err(file_err(
                    path,
                    format!(
                        "entry '{name}': {nval} sums do not form {nmat} matrices \
                         (in_sum2 shape {:?}, counts shape {:?})",
                        sums.dims, counts.dims
                    ),
                ));
            }
            check_finite(path, name, "sum", &values)?;
            check_finite(path, name, "count", &cnt)?;
            if let Some(c) = cnt.iter().find(|&&c| c < 0.0) {
                return Err(file_err(
                    path,
                    format!("entry '{name}': negative count {c}"),
                ));
            }
            // llama.cpp reads counts with std::lround.
            let cnt = cnt.into_iter().map(f32::round).collect();
            im.entries.insert(
                name.to_string(),
                ImatrixEntry {
                    values,
                    ncall: 0,
                    counts: Some(cnt),
                },
            );
        }
        Ok(im)
    }

    /// Builds an importance matrix from tersor's own calibration: per weight
    /// matrix, the sum of x² over the calibration tokens for each input
    /// column and the number of tokens.
    ///
    /// Stored as llama-imatrix would store it after `chunks` chunks of one
    /// matmul call each (`-c` = batch size): `ncall = chunks` (at least 1)
    /// and `value = (Σx² / n_tokens) × ncall`, so [`Imatrix::importance`] and
    /// llama-quantize both recover the mean of x².
    pub fn from_sums<S: Into<String>>(
        sums: impl IntoIterator<Item = (S, (Vec<f64>, u64))>,
        chunks: usize,
        dataset: Option<&str>,
    ) -> Result<Imatrix> {
        let ncall = u32::try_from(chunks.max(1))
            .ok()
            .filter(|&n| n <= i32::MAX as u32)
            .ok_or_else(|| QuantError::Unsupported(format!("{chunks} chunks is too many")))?;
        let mut im = Imatrix {
            chunks,
            datasets: dataset.map(|d| vec![d.to_string()]).unwrap_or_default(),
            ..Imatrix::default()
        };
        for (name, (sum, n_tokens)) in sums {
            let name: String = name.into();
            if n_tokens == 0 {
                return Err(QuantError::Shape(format!(
                    "imatrix entry '{name}' saw no tokens"
                )));
            }
            if sum.is_empty() {
                return Err(QuantError::Shape(format!(
                    "imatrix entry '{name}' has no columns"
                )));
            }
            if let Some(v) = sum.iter().find(|v| !v.is_finite() || **v < 0.0) {
                return Err(QuantError::NonFinite(format!(
                    "imatrix entry '{name}': sum of squares {v}"
                )));
            }
            let values: Vec<f32> = sum
                .iter()
                .map(|&s| ((s / n_tokens as f64) as f32) * ncall as f32)
                .collect();
            if values.iter().any(|v| !v.is_finite()) {
                return Err(QuantError::NonFinite(format!(
                    "imatrix entry '{name}': mean of squares overflows f32"
                )));
            }
            if im.entries.contains_key(&name) {
                return Err(QuantError::Shape(format!(
                    "imatrix entry '{name}' given twice"
                )));
            }
            im.entries.insert(
                name,
                ImatrixEntry {
                    values,
                    ncall,
                    counts: None,
                },
            );
        }
        Ok(im)
    }

    /// The per-column weights llama-quantize would use for `name`, if the
    /// matrix has an entry.
    pub fn importance(&self, name: &str) -> Option<Vec<f32>> {
        self.entries.get(name).map(ImatrixEntry::importance)
    }

    /// llama-quantize's lookup for a tensor of shape `ne` (ggml order):
    /// `None` when there is no entry ("did not find weights"), an error when
    /// the entry's length is not `ne[0] × ne[2]` ("imatrix size ... is
    /// different from tensor size"), except for `token_embd.weight`, which is
    /// then quantized without weights.
    pub fn importance_for_tensor(&self, name: &str, ne: &[u64]) -> Result<Option<Vec<f32>>> {
        let Some(entry) = self.entries.get(name) else {
            return Ok(None);
        };
        let want = ne.first().copied().unwrap_or(1) * ne.get(2).copied().unwrap_or(1);
        if entry.values.len() as u64 == want {
            Ok(Some(entry.importance()))
        } else if name == "token_embd.weight" {
            Ok(None)
        } else {
            Err(QuantError::Shape(format!(
                "imatrix size {} is different from tensor size {want} for {name}",
                entry.values.len()
            )))
        }
    }

    /// The legacy `.dat` bytes llama-imatrix (c392e509) would write.
    ///
    /// Entries read from GGUF are converted as newer llama-imatrix's
    /// `save_imatrix_legacy` does: `ncall = ⌈max count / chunk_size⌉`,
    /// `value = Σx² / count × ncall` (1 × ncall where the count is 0); that
    /// needs [`Imatrix::chunk_size`]. Of several datasets the last is kept.
    pub fn to_dat_bytes(&self) -> Result<Vec<u8>> {
        if self.entries.is_empty() {
            return Err(QuantError::Unsupported(
                "an imatrix file needs at least one entry (llama-quantize rejects empty ones)"
                    .into(),
            ));
        }
        let fit = |v: usize, what: &str| -> Result<i32> {
            i32::try_from(v)
                .map_err(|_| QuantError::Unsupported(format!("{what} {v} does not fit an i32")))
        };
        let listed: HashSet<&str> = self.file_order.iter().map(String::as_str).collect();
        let order = self
            .file_order
            .iter()
            .filter(|n| self.entries.contains_key(*n))
            .chain(self.entries.keys().filter(|n| !listed.contains(n.as_str())));
        let mut out = Vec::new();
        out.extend_from_slice(&fit(self.entries.len(), "entry count")?.to_le_bytes());
        let mut written = HashSet::new();
        for name in order {
            if !written.insert(name.as_str()) {
                continue;
            }
            let e = &self.entries[name];
            let (ncall, values) = self.legacy_values(name, e)?;
            if values.is_empty() {
                return Err(QuantError::Shape(format!(
                    "imatrix entry '{name}' has no values"
                )));
            }
            out.extend_from_slice(&fit(name.len(), "name length")?.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&fit(ncall as usize, "ncall")?.to_le_bytes());
            out.extend_from_slice(&fit(values.len(), "value count")?.to_le_bytes());
            for v in values.iter() {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out.extend_from_slice(&fit(self.chunks, "chunk count")?.to_le_bytes());
        let dataset = self.datasets.last().map(String::as_str).unwrap_or("");
        out.extend_from_slice(&fit(dataset.len(), "dataset name length")?.to_le_bytes());
        out.extend_from_slice(dataset.as_bytes());
        Ok(out)
    }

    fn legacy_values<'a>(
        &self,
        name: &str,
        e: &'a ImatrixEntry,
    ) -> Result<(u32, std::borrow::Cow<'a, [f32]>)> {
        let Some(counts) = &e.counts else {
            return Ok((e.ncall, std::borrow::Cow::Borrowed(&e.values)));
        };
        let chunk_size = self.chunk_size.filter(|&c| c > 0).ok_or_else(|| {
            QuantError::Unsupported(format!(
                "imatrix entry '{name}' holds GGUF token counts; converting it to the .dat \
                 format needs the chunk size (imatrix.chunk_size)"
            ))
        })?;
        let max = counts.iter().fold(0f32, |a, &b| a.max(b)) as u64;
        let ncall = max.div_ceil(chunk_size as u64);
        let ncall = u32::try_from(ncall)
            .map_err(|_| QuantError::Unsupported(format!("ncall {ncall} is too large")))?;
        let ne0 = e.values.len() / counts.len().max(1);
        let values = e
            .values
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = counts[i / ne0.max(1)];
                let (v, c) = if c == 0.0 { (1.0, 1.0) } else { (v, c) };
                (v / c) * ncall as f32
            })
            .collect();
        Ok((ncall, std::borrow::Cow::Owned(values)))
    }

    /// Writes the legacy `.dat` format atomically (a temporary file in the
    /// same directory, then a rename): byte-compatible with llama-imatrix,
    /// readable by llama-quantize `--imatrix`.
    pub fn write_dat(&self, path: &Path) -> Result<()> {
        let bytes = self.to_dat_bytes()?;
        write_atomic(path, &bytes)
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".imatrix-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| io_err(path, e))?;
    tmp.write_all(bytes).map_err(|e| io_err(path, e))?;
    tmp.as_file().sync_all().map_err(|e| io_err(path, e))?;
    tmp.persist(path).map_err(|e| io_err(path, e.error))?;
    Ok(())
}
