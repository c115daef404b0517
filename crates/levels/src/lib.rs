//! tersor-levels: the level database of `tersor compress`.
//!
//! For every compressible tensor the database holds a set of *levels*: compressed
//! versions of it, each with its exact byte cost in the output file, a few error
//! figures, and the payload the output writer copies. The allocation search only
//! sees names and costs; the fitness evaluator decodes payloads into weights.
//!
//! On disk (`--db DIR`):
//!
//! ```text
//! DIR/manifest.json    version, the key of the inputs it was built from, every tensor's
//!                      shape and levels (kind, cost, errors, payload offset, length),
//!                      and the SHA-256 of every data file
//! DIR/t00042.bin       the payloads of tensor 42, one after the other (64-byte aligned)
//! ```
//!
//! Data files are written atomically before the manifest names them, so an
//! interrupted build keeps every finished tensor and resumes after it. A database
//! built from other inputs (a different model, calibration text, method or level
//! set: a different key) is never reused. Opening checks every offset against the
//! file it points into and every file against its hash, so a damaged database is an
//! error naming the file, not a wrong model.

mod kind;
pub mod payload;

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use kind::LevelKind;
pub use tersor_quantize::Payload;

/// Format version of `manifest.json`.
pub const VERSION: u32 = 1;
const ALIGN: u64 = 64;

/// Errors of the level database; all name the file involved.
#[derive(Debug, thiserror::Error)]
pub enum LevelsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("level database {}: {msg}", path.display())]
    Corrupt { path: PathBuf, msg: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = LevelsError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LevelsError + '_ {
    move |source| LevelsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One level of one tensor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Level {
    pub kind: LevelKind,
    /// Bytes of the tensor in the output at this level.
    pub bytes: u64,
    /// Relative output error on the calibration activations:
    /// `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)` with `H = XᵀX`.
    pub output_error: f64,
    /// Mean KL divergence of the model with only this tensor at this level, when
    /// measured (the per-layer errors of the dynamic-programming baseline).
    #[serde(default)]
    pub kl: Option<f64>,
    /// Payload position in the tensor's data file.
    pub offset: u64,
    pub len: u64,
}

/// A tensor and its levels, ordered by increasing cost.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TensorLevels {
    /// The tensor's name in the output (GGUF naming for GGUF outputs).
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    /// Data file, relative to the database directory.
    pub file: String,
    pub sha256: String,
    pub levels: Vec<Level>,
}

impl TensorLevels {
    pub fn params(&self) -> u64 {
        (self.rows * self.cols) as u64
    }
}

/// `manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// Identifies the inputs (model, calibration, method, level set): a database
    /// is reused only for the same key.
    pub key: String,
    /// Human-readable description of those inputs.
    pub inputs: serde_json::Value,
    pub tensors: Vec<TensorLevels>,
}

/// A level to add: its kind, cost, output error and payload.
pub struct NewLevel {
    pub kind: LevelKind,
    pub bytes: u64,
    pub output_error: f64,
    pub payload: Payload,
}

/// Builds or resumes a database.
pub struct DbBuilder {
    dir: PathBuf,
    manifest: Manifest,
}

impl DbBuilder {
    /// Open `dir` for building with inputs `key`. Tensors a previous build with the
    /// same key finished are kept; anything else in the database is discarded.
    pub fn create(dir: &Path, key: &str, inputs: serde_json::Value) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut manifest = Manifest {
            version: VERSION,
            key: key.to_string(),
            inputs,
            tensors: Vec::new(),
        };
        if dir.join("manifest.json").is_file() {
            match LevelDb::open(dir) {
                Ok(db) if db.manifest.key == key => manifest.tensors = db.manifest.tensors,
                // Other inputs or a damaged database: start over.
                _ => {}
            }
        }
        let b = DbBuilder {
            dir: dir.to_path_buf(),
            manifest,
        };
        b.remove_strays()?;
        b.save()?;
        Ok(b)
    }

    /// Whether `name` is already in the database.
    pub fn has(&self, name: &str) -> bool {
        self.manifest.tensors.iter().any(|t| t.name == name)
    }

    /// The weights of `name` at `kind` when that level is stored (a database being
    /// resumed), `None` when it is not (the tensor is not built yet, or the kind was
    /// dropped for a more accurate level of the same cost).
    pub fn values(&self, name: &str, kind: &LevelKind) -> Result<Option<Vec<f32>>> {
        let Some(t) = self.manifest.tensors.iter().find(|t| t.name == name) else {
            return Ok(None);
        };
        let Some(lv) = t.levels.iter().find(|l| &l.kind == kind) else {
            return Ok(None);
        };
        let path = self.dir.join(&t.file);
        let data = std::fs::read(&path).map_err(io(&path))?;
        let corrupt = |msg: String| LevelsError::Corrupt {
            path: path.clone(),
            msg: format!("{name} {kind}: {msg}"),
        };
        let bytes = usize::try_from(lv.offset)
            .ok()
            .zip(usize::try_from(lv.len).ok())
            .and_then(|(o, n)| data.get(o..o.checked_add(n)?))
            .ok_or_else(|| corrupt("payload outside the data file".into()))?;
        let p = payload::from_bytes(kind, t.rows, t.cols, bytes).map_err(corrupt)?;
        Ok(Some(
            p.dequantize(t.rows, t.cols)
                .map_err(|e| corrupt(e.to_string()))?,
        ))
    }

    /// Store `name`'s levels (sorted here by cost) and record them in the manifest.
    pub fn add(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        mut levels: Vec<NewLevel>,
    ) -> Result<()> {
        if self.has(name) {
            return Err(LevelsError::Invalid(format!(
                "{name} is already in the database"
            )));
        }
        if levels.is_empty() {
            return Err(LevelsError::Invalid(format!("{name}: no levels")));
        }
        levels.sort_by_key(|l| l.bytes);
        let file = format!("t{:05}.bin", self.manifest.tensors.len());
        let path = self.dir.join(&file);
        let mut data = Vec::new();
        let mut out = Vec::with_capacity(levels.len());
        for l in levels {
            let bytes = payload::to_bytes(&l.kind, &l.payload)
                .map_err(|m| LevelsError::Invalid(format!("{name}: {m}")))?;
            let offset = data.len() as u64;
            data.extend_from_slice(&bytes);
            data.resize(data.len().next_multiple_of(ALIGN as usize), 0);
            out.push(Level {
                kind: l.kind,
                bytes: l.bytes,
                output_error: l.output_error,
                kl: None,
                offset,
                len: bytes.len() as u64,
            });
        }
        atomic_write(&path, &data)?;
        self.manifest.tensors.push(TensorLevels {
            name: name.to_string(),
            rows,
            cols,
            file,
            sha256: hex::encode(Sha256::digest(&data)),
            levels: out,
        });
        self.save()
    }

    /// Finish: the database, opened and verified.
    pub fn finish(self) -> Result<LevelDb> {
        self.save()?;
        LevelDb::open(&self.dir)
    }

    fn save(&self) -> Result<()> {
        save_manifest(&self.dir, &self.manifest)
    }

    /// Delete data files the manifest does not name (from an older build).
    fn remove_strays(&self) -> Result<()> {
        let keep: HashSet<&str> = self
            .manifest
            .tensors
            .iter()
            .map(|t| t.file.as_str())
            .collect();
        for e in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let e = e.map_err(io(&self.dir))?;
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('t') && name.ends_with(".bin") && !keep.contains(name.as_str()) {
                std::fs::remove_file(e.path()).map_err(io(&e.path()))?;
            }
        }
        Ok(())
    }
}

/// An opened, verified database; payloads are memory-mapped.
pub struct LevelDb {
    dir: PathBuf,
    manifest: Manifest,
    maps: Vec<Mmap>,
}

impl LevelDb {
    /// Open `dir`, checking the manifest against every data file.
    pub fn open(dir: &Path) -> Result<Self> {
        let mpath = dir.join("manifest.json");
        let text = std::fs::read_to_string(&mpath).map_err(io(&mpath))?;
        let corrupt = |msg: String| LevelsError::Corrupt {
            path: mpath.clone(),
            msg,
        };
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| corrupt(format!("bad manifest: {e}")))?;
        if manifest.version != VERSION {
            return Err(corrupt(format!(
                "version {} (this tersor reads version {VERSION})",
                manifest.version
            )));
        }
        let mut maps = Vec::with_capacity(manifest.tensors.len());
        for t in &manifest.tensors {
            if t.file.contains('/') || t.file.contains('\\') || t.file.starts_with('.') {
                return Err(corrupt(format!(
                    "{}: bad data file name {:?}",
                    t.name, t.file
                )));
            }
            let p = dir.join(&t.file);
            let f = File::open(&p).map_err(io(&p))?;
            // SAFETY: the database files are written once (atomically) and never
            // modified in place; a concurrent writer replaces them by rename.
            let map = unsafe { Mmap::map(&f) }.map_err(io(&p))?;
            let bad = |msg: String| LevelsError::Corrupt {
                path: p.clone(),
                msg,
            };
            if hex::encode(Sha256::digest(&map[..])) != t.sha256 {
                return Err(bad(format!("{}: checksum mismatch (damaged file)", t.name)));
            }
            let mut last = 0;
            for l in &t.levels {
                let end = l
                    .offset
                    .checked_add(l.len)
                    .filter(|&e| e <= map.len() as u64);
                if end.is_none() {
                    return Err(bad(format!(
                        "{} {}: payload beyond the end of the file",
                        t.name, l.kind
                    )));
                }
                if l.bytes < last {
                    return Err(bad(format!("{}: levels not ordered by cost", t.name)));
                }
                last = l.bytes;
            }
            maps.push(map);
        }
        Ok(LevelDb {
            dir: dir.to_path_buf(),
            manifest,
            maps,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn key(&self) -> &str {
        &self.manifest.key
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn tensors(&self) -> &[TensorLevels] {
        &self.manifest.tensors
    }

    /// Index of a tensor by name.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.manifest.tensors.iter().position(|t| t.name == name)
    }

    /// The raw payload bytes of tensor `t` at level `l`.
    pub fn payload_bytes(&self, t: usize, l: usize) -> &[u8] {
        let lv = &self.manifest.tensors[t].levels[l];
        &self.maps[t][lv.offset as usize..(lv.offset + lv.len) as usize]
    }

    /// The payload of tensor `t` at level `l`.
    pub fn payload(&self, t: usize, l: usize) -> Result<Payload> {
        let ti = &self.manifest.tensors[t];
        payload::from_bytes(
            &ti.levels[l].kind,
            ti.rows,
            ti.cols,
            self.payload_bytes(t, l),
        )
        .map_err(|msg| LevelsError::Corrupt {
            path: self.dir.join(&ti.file),
            msg: format!("{}: {msg}", ti.name),
        })
    }

    /// The weights `[rows, cols]` of tensor `t` at level `l`, as the output decodes them.
    pub fn values(&self, t: usize, l: usize) -> Result<Vec<f32>> {
        let ti = &self.manifest.tensors[t];
        self.payload(t, l)?
            .dequantize(ti.rows, ti.cols)
            .map_err(|e| LevelsError::Corrupt {
                path: self.dir.join(&ti.file),
                msg: format!("{} {}: {e}", ti.name, ti.levels[l].kind),
            })
    }

    /// Record per-level KL figures (`kl[t][l]`) and save the manifest.
    pub fn set_kl(&mut self, kl: &[Vec<f64>]) -> Result<()> {
        if kl.len() != self.manifest.tensors.len()
            || kl
                .iter()
                .zip(&self.manifest.tensors)
                .any(|(k, t)| k.len() != t.levels.len())
        {
            return Err(LevelsError::Invalid(
                "KL table does not match the levels".into(),
            ));
        }
        for (t, k) in self.manifest.tensors.iter_mut().zip(kl) {
            for (l, &v) in t.levels.iter_mut().zip(k) {
                l.kl = Some(v);
            }
        }
        save_manifest(&self.dir, &self.manifest)
    }
}

fn save_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    let text = serde_json::to_string_pretty(m)
        .map_err(|e| LevelsError::Invalid(format!("manifest: {e}")))?;
    atomic_write(&dir.join("manifest.json"), text.as_bytes())
}

/// Write `bytes` to `path` through a temporary file in the same directory, fsynced,
/// then renamed into place: `path` is either untouched or complete.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    // A bare file name has an empty parent: the current directory.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
    tmp.write_all(bytes).map_err(io(path))?;
    tmp.as_file().sync_all().map_err(io(path))?;
    tmp.persist(path).map_err(|e| LevelsError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;
    use tersor_ggml::GgmlType;

    fn ggml_level(ty: GgmlType, w: &[f32], rows: usize, cols: usize) -> NewLevel {
        let bytes = tersor_ggml::quantize(ty, w).unwrap();
        let kind = LevelKind::Ggml(ty);
        NewLevel {
            kind,
            bytes: kind.bytes(rows, cols).unwrap(),
            output_error: 0.0,
            payload: Payload::Ggml { ty, bytes },
        }
    }

    fn weights(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.1)
            .collect()
    }

    #[test]
    fn build_open_decode_resume() {
        let dir = tempfile::tempdir().unwrap();
        let (rows, cols) = (4, 64);
        let w = weights(rows * cols);
        let mut b = DbBuilder::create(dir.path(), "k1", serde_json::json!({})).unwrap();
        b.add(
            "a",
            rows,
            cols,
            vec![
                ggml_level(GgmlType::Q8_0, &w, rows, cols),
                ggml_level(GgmlType::Q4_0, &w, rows, cols),
            ],
        )
        .unwrap();
        let gptq = Payload::Gptq {
            bits: 4,
            group_size: 32,
            sym: true,
            codes: (0..rows * cols).map(|i| (i % 16) as u8).collect(),
            scales: (0..rows * 2)
                .map(|i| f16::from_f32(0.01 * (i + 1) as f32))
                .collect(),
            zeros: vec![8; rows * 2],
            g_idx: (0..cols as u32).map(|c| c / 32).collect(),
        };
        let gk = LevelKind::Gptq {
            bits: 4,
            group_size: 32,
            sym: true,
        };
        let expect = gptq.dequantize(rows, cols).unwrap();
        b.add(
            "b",
            rows,
            cols,
            vec![NewLevel {
                kind: gk,
                bytes: gk.bytes(rows, cols).unwrap(),
                output_error: 0.5,
                payload: gptq,
            }],
        )
        .unwrap();
        drop(b);

        let db = LevelDb::open(dir.path()).unwrap();
        assert_eq!(db.tensors().len(), 2);
        // Sorted by cost: Q4_0 (18 B per 32) before Q8_0 (34 B per 32).
        let a = &db.tensors()[0];
        assert_eq!(a.levels[0].kind, LevelKind::Ggml(GgmlType::Q4_0));
        assert_eq!(a.levels[0].bytes, (rows * cols / 32 * 18) as u64);
        let v = db.values(0, 0).unwrap();
        let direct = tersor_ggml::dequantize_to_vec(
            GgmlType::Q4_0,
            &tersor_ggml::quantize(GgmlType::Q4_0, &w).unwrap(),
            rows * cols,
        )
        .unwrap();
        assert_eq!(v, direct);
        let vb = db.values(1, 0).unwrap();
        assert_eq!(
            vb.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            expect.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );

        // Same key: finished tensors are kept.
        let b = DbBuilder::create(dir.path(), "k1", serde_json::json!({})).unwrap();
        assert!(b.has("a") && b.has("b"));
        // Another key: start over.
        let b = DbBuilder::create(dir.path(), "k2", serde_json::json!({})).unwrap();
        assert!(!b.has("a"));
        let db = b.finish().unwrap();
        assert!(db.tensors().is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn damage_is_reported_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (rows, cols) = (2, 32);
        let w = weights(rows * cols);
        let mut b = DbBuilder::create(dir.path(), "k", serde_json::json!({})).unwrap();
        b.add(
            "a",
            rows,
            cols,
            vec![ggml_level(GgmlType::Q8_0, &w, rows, cols)],
        )
        .unwrap();
        drop(b);
        let f = dir.path().join("t00000.bin");
        let mut bytes = std::fs::read(&f).unwrap();
        bytes[3] ^= 1;
        std::fs::write(&f, &bytes).unwrap();
        let e = LevelDb::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("t00000.bin") && e.contains("checksum"), "{e}");

        // A manifest pointing past the end of a file.
        std::fs::write(&f, &bytes[..10]).unwrap();
        let m = dir.path().join("manifest.json");
        let mut man: Manifest =
            serde_json::from_str(&std::fs::read_to_string(&m).unwrap()).unwrap();
        man.tensors[0].sha256 = hex::encode(Sha256::digest(&bytes[..10]));
        std::fs::write(&m, serde_json::to_string(&man).unwrap()).unwrap();
        let e = LevelDb::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("beyond the end"), "{e}");

        std::fs::write(&m, "{").unwrap();
        let e = LevelDb::open(dir.path()).err().unwrap().to_string();
        assert!(
            e.contains("manifest.json") && e.contains("bad manifest"),
            "{e}"
        );
    }
}
