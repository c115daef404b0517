//! Helpers shared by the integration tests.
#![allow(dead_code, unused_imports)]

use half::f16;
use tersor_gptq::QuantizedLinear;

pub use tersor_testkit::{assets, Rng, DEFAULT_GGUF};

/// Whether `python3` with numpy can be run (a failure under CI, else a notice).
pub fn python_numpy_available() -> bool {
    tersor_testkit::python_has(&["numpy"])
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
