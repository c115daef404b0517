//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The folder holding the default assets: `$TERSOR_ASSETS`, else the shared
/// `<repo>/../shared/assets`, else tersor's asset cache (where `tersor fetch` puts
/// them).
///
/// Returns `None` (test skipped) only when `TERSOR_SKIP_ASSET_TESTS=1`; otherwise
/// missing assets fail the test with instructions.
pub fn assets() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        [
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "all-MiniLM-L6-v2/model.safetensors",
        ]
        .iter()
        .chain(&["botchan.txt", "botchan_calib.txt", "botchan_eval.txt"])
        .all(|f| dir.join(f).is_file())
    };
    let candidates: Vec<PathBuf> = match std::env::var_os("TERSOR_ASSETS") {
        Some(d) => vec![PathBuf::from(d)],
        None => [
            Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/assets")),
            tersor_assets::assets_dir().ok(),
        ]
        .into_iter()
        .flatten()
        .collect(),
    };
    if let Some(dir) = candidates.iter().find(|d| complete(d)) {
        return Some(dir.clone());
    }
    if std::env::var("TERSOR_SKIP_ASSET_TESTS").as_deref() == Ok("1") {
        eprintln!("skipping: assets not found in {candidates:?} (TERSOR_SKIP_ASSET_TESTS=1)");
        return None;
    }
    panic!(
        "test assets not found in {candidates:?}: fetch them with `tersor fetch` or set \
         TERSOR_ASSETS to the asset folder; set TERSOR_SKIP_ASSET_TESTS=1 to skip these tests"
    );
}

/// The default decoder.
pub const DEFAULT_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// A small deterministic generator (SplitMix64) for synthetic weights.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-scale, scale).
    pub fn uniform(&mut self, scale: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * u - 1.0) * scale
    }

    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(scale)).collect()
    }
}
