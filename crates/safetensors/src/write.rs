//! Atomic writers for single files and sharded checkpoints.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::{Dtype, StError};

/// File name of the index of a sharded checkpoint (Hugging Face convention).
pub const INDEX_FILE: &str = "model.safetensors.index.json";

const MAX_HEADER: usize = 100_000_000;

/// Checks names and sizes; `what` names the output in messages.
fn validate(tensors: &[(String, Dtype, Vec<usize>, &[u8])], what: &Path) -> Result<(), StError> {
    let mut seen = HashSet::with_capacity(tensors.len());
    for (name, dtype, shape, data) in tensors {
        if name == "__metadata__" {
            return Err(StError::format(
                what,
                "'__metadata__' cannot be a tensor name",
            ));
        }
        if !seen.insert(name.as_str()) {
            return Err(StError::format(
                what,
                format!("duplicate tensor name '{name}'"),
            ));
        }
        let want = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| dtype.bytes_for(n));
        if want != Some(data.len()) {
            return Err(StError::format(
                what,
                format!(
                    "tensor '{name}': {dtype} {shape:?} needs {} bytes but {} were given",
                    want.map_or("an impossible number of".to_string(), |w| w.to_string()),
                    data.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Writes `path` through a temporary file in the same directory: fsync,
/// rename, then (best effort) fsync of the directory. On error the temporary
/// file is removed and `path` is untouched.
fn atomic_write(
    path: &Path,
    body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), StError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| StError::format(path, "output path has no file name"))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", file_name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| StError::io(dir, e))?;
    let io_err = |e: io::Error| StError::io(tmp.path(), e);
    // tempfile creates 0600 files; give the output the usual mode.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(io_err)?;
    }
    let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
    body(&mut w).map_err(io_err)?;
    w.flush().map_err(io_err)?;
    drop(w);
    tmp.as_file().sync_all().map_err(io_err)?;
    tmp.persist(path).map_err(|e| StError::io(path, e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes one safetensors file atomically. Tensors are laid out as the
/// `safetensors` crate's `serialize` does (by dtype, widest first, then by
/// name, so every tensor is aligned to its element size) and the header is
/// produced by that crate's serializer, padded with spaces to 8 bytes.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Dtype, Vec<usize>, &[u8])],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<(), StError> {
    validate(tensors, path)?;
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        let (ta, tb) = (&tensors[a], &tensors[b]);
        tb.1.to_st().cmp(&ta.1.to_st()).then(ta.0.cmp(&tb.0))
    });
    let mut infos = Vec::with_capacity(order.len());
    let mut off = 0usize;
    for &i in &order {
        let (name, dtype, shape, data) = &tensors[i];
        infos.push((
            name.clone(),
            safetensors::tensor::TensorInfo {
                dtype: dtype.to_st(),
                shape: shape.clone(),
                data_offsets: (off, off + data.len()),
            },
        ));
        off += data.len();
    }
    let meta: Option<HashMap<String, String>> =
        metadata.map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    let header = safetensors::tensor::Metadata::new(meta, infos)
        .map_err(|e| StError::format(path, format!("cannot build header: {e}")))?;
    let mut json = serde_json::to_vec(&header)
        .map_err(|e| StError::format(path, format!("cannot serialize header: {e}")))?;
    json.resize(json.len().next_multiple_of(8), b' ');
    if json.len() > MAX_HEADER {
        return Err(StError::format(
            path,
            format!(
                "header would be {} bytes, over the safetensors limit of {MAX_HEADER}",
                json.len()
            ),
        ));
    }
    atomic_write(path, |w| {
        w.write_all(&(json.len() as u64).to_le_bytes())?;
        w.write_all(&json)?;
        for &i in &order {
            w.write_all(tensors[i].3)?;
        }
        Ok(())
    })
}

/// Writes a sharded checkpoint into `dir` (created if missing):
/// `model-00001-of-0000N.safetensors`, ... and `model.safetensors.index.json`
/// (`{"metadata": {"total_size": …}, "weight_map": {name: file}}`), the
/// layout `transformers`' `save_pretrained` produces. Tensors are packed in
/// the given order; a shard is closed when the next tensor would take it over
/// `max_shard_bytes` of data (a larger tensor gets a shard of its own). Each
/// shard's `__metadata__` is `{"format": "pt"}` as `transformers` expects.
/// Every file is written atomically, the index last; if a shard fails, the
/// shards already written by this call are removed.
pub fn write_sharded(
    dir: &Path,
    tensors: &[(String, Dtype, Vec<usize>, &[u8])],
    max_shard_bytes: u64,
) -> Result<(), StError> {
    let index_path = dir.join(INDEX_FILE);
    validate(tensors, &index_path)?;
    if max_shard_bytes == 0 {
        return Err(StError::format(
            &index_path,
            "max_shard_bytes must be positive",
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| StError::io(dir, e))?;

    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut size = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        let n = t.3.len() as u64;
        match groups.last_mut() {
            Some(g) if size + n <= max_shard_bytes => {
                g.push(i);
                size += n;
            }
            _ => {
                groups.push(vec![i]);
                size = n;
            }
        }
    }
    if groups.is_empty() {
        groups.push(Vec::new());
    }
    let n_shards = groups.len();
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let mut weight_map = BTreeMap::new();
    let mut written: Vec<PathBuf> = Vec::new();
    for (k, g) in groups.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", k + 1, n_shards);
        let part: Vec<_> = g.iter().map(|&i| tensors[i].clone()).collect();
        let p = dir.join(&file);
        if let Err(e) = write_safetensors(&p, &part, Some(&meta)) {
            for w in &written {
                let _ = std::fs::remove_file(w);
            }
            return Err(e);
        }
        written.push(p);
        for &i in g {
            weight_map.insert(tensors[i].0.clone(), file.clone());
        }
    }
    let total: u64 = tensors.iter().map(|t| t.3.len() as u64).sum();
    let index = serde_json::json!({
        "metadata": { "total_size": total },
        "weight_map": weight_map,
    });
    let text = serde_json::to_string_pretty(&index).expect("JSON of strings and numbers");
    atomic_write(&index_path, |w| {
        w.write_all(text.as_bytes())?;
        w.write_all(b"\n")
    })
}
