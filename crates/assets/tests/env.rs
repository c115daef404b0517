//! Environment variables that choose the cache and shared folders. One test
//! in its own binary, since it changes the process environment.

use std::path::PathBuf;

#[test]
fn environment_selects_cache_and_shared_folders() {
    let home = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    // SAFETY-free in edition 2021; no other thread runs in this binary.
    std::env::set_var("TERSOR_HOME", home.path());
    std::env::set_var("TERSOR_SHARED_ASSETS", shared.path());
    std::env::remove_var("TERSOR_NO_SHARED");
    assert_eq!(
        tersor_assets::assets_dir().unwrap(),
        home.path().join("assets")
    );
    assert_eq!(
        tersor_assets::shared_assets_dir(),
        Some(PathBuf::from(shared.path()))
    );
    std::env::set_var("TERSOR_NO_SHARED", "1");
    assert_eq!(tersor_assets::shared_assets_dir(), None);

    std::env::remove_var("TERSOR_HOME");
    std::env::set_var("XDG_CACHE_HOME", home.path());
    assert_eq!(
        tersor_assets::assets_dir().unwrap(),
        home.path().join("tersor").join("assets")
    );
    std::env::remove_var("XDG_CACHE_HOME");
    std::env::set_var("HOME", home.path());
    assert_eq!(
        tersor_assets::assets_dir().unwrap(),
        home.path().join(".cache").join("tersor").join("assets")
    );
    std::env::remove_var("HOME");
    assert!(matches!(
        tersor_assets::assets_dir(),
        Err(tersor_assets::Error::NoCacheDir)
    ));
}
