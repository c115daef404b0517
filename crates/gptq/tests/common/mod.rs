//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use half::f16;
use tersor_gptq::QuantizedLinear;

/// The folder holding the default assets: `$TERSOR_ASSETS`, else the shared
/// `<repo>/../shared/assets`, else tersor's asset cache. `None` (test skipped) only
/// when `TERSOR_SKIP_ASSET_TESTS=1`; otherwise missing assets fail the test.
pub fn assets() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["SmolLM2-135M-Instruct.Q4_1.gguf", "botchan_eval.txt"]
            .iter()
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

/// Whether `python3` with numpy can be run. Missing is a failure when `CI` is set,
/// otherwise a notice.
pub fn python_numpy_available() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("python3 with numpy is required in CI (pip install numpy)");
        }
        eprintln!("notice: python3 with numpy not found; skipping the GPTQ reference check");
    }
    ok
}

/// A small deterministic generator (SplitMix64).
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

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// `n` values uniform in [-scale, scale).
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| (2.0 * self.unit() - 1.0) * scale).collect()
    }

    /// A random permutation of `0..n` (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            p.swap(i, j);
        }
        p
    }
}

/// How to lay out the groups of a random layer.
#[derive(Clone, Copy, Debug)]
pub struct LayerSpec {
    pub bits: u8,
    pub out_features: usize,
    pub in_features: usize,
    /// `None` for per-channel.
    pub group_size: Option<usize>,
    pub sym: bool,
    /// Act-order: `g_idx[perm[i]] = i / group_size` for a random permutation.
    pub act_order: bool,
}

/// A random layer: uniform codes, zero points in `1..=maxq` (`2^(bits-1)` when
/// symmetric), fp16 scales spread over many binades (down to fp16 subnormals, so that
/// products exercise fp16 rounding), GPTQ-style `g_idx`.
pub fn random_layer(rng: &mut Rng, s: LayerSpec) -> QuantizedLinear {
    let maxq = (1u64 << s.bits) - 1;
    let gs = s.group_size.unwrap_or(s.in_features);
    let n_groups = s.in_features.div_ceil(gs);
    let codes = (0..s.out_features * s.in_features)
        .map(|_| rng.below(maxq + 1) as u8)
        .collect();
    let zeros = (0..n_groups * s.out_features)
        .map(|_| {
            if s.sym {
                1u8 << (s.bits - 1)
            } else {
                1 + rng.below(maxq) as u8
            }
        })
        .collect();
    let scales = (0..n_groups * s.out_features)
        .map(|_| {
            let e = -(rng.below(22) as i32) - 2;
            f16::from_f32((1.0 + rng.unit()) * 2f32.powi(e))
        })
        .collect();
    let g_idx = if s.act_order {
        let perm = rng.permutation(s.in_features);
        let mut g = vec![0u32; s.in_features];
        for (i, &p) in perm.iter().enumerate() {
            g[p] = (i / gs) as u32;
        }
        g
    } else {
        (0..s.in_features).map(|i| (i / gs) as u32).collect()
    };
    QuantizedLinear {
        bits: s.bits,
        out_features: s.out_features,
        in_features: s.in_features,
        codes,
        scales,
        zeros,
        g_idx,
    }
}
