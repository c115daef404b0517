//! Importance-weighted quantization and `BlockGrid`.
//!
//! * `quantize_weighted` against llama.cpp's `ggml_quantize_chunk` with and
//!   without an importance matrix, byte for byte, on the fixtures written by
//!   `tools/ggml_fixtures/gen_weighted.py` (`tests/fixtures/weighted/`):
//!   random rows with random weights, and real rows of the default model
//!   with llama-imatrix's weights.
//! * `BlockGrid` against the crate's decoder (itself checked against
//!   llama.cpp and gguf-py in `fixtures.rs`): decoded values bitwise, nearest
//!   codes against a brute force over every code.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use tersor_ggml::{
    dequantize_to_vec, quantize, quantize_weighted, quantize_weighted_par, BlockGrid, CodecError,
    GgmlType, WEIGHTED_TYPES,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/weighted")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (regenerate with tools/ggml_fixtures/gen_weighted.py)",
            path.display()
        )
    })
}

fn read_f32(path: &Path) -> Vec<f32> {
    let b = read(path);
    assert_eq!(b.len() % 4, 0, "{}", path.display());
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

struct Case {
    name: String,
    n_per_row: usize,
    n_rows: usize,
    types: Vec<GgmlType>,
    /// `<type name>.<bin|plain.bin>@<first bad block>` where llama.cpp wrote
    /// a non-finite scale.
    non_finite: Vec<String>,
}

fn manifest() -> Vec<Case> {
    let text = String::from_utf8(read(&fixtures().join("manifest.tsv"))).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 6, "bad manifest line {l:?}");
            Case {
                name: f[0].to_string(),
                n_per_row: f[1].parse().unwrap(),
                n_rows: f[2].parse().unwrap(),
                types: f[3]
                    .split(',')
                    .map(|t| GgmlType::from_name(t).unwrap_or_else(|| panic!("type {t}")))
                    .collect(),
                non_finite: match f[4] {
                    "-" => vec![],
                    s => s.split(',').map(str::to_string).collect(),
                },
            }
        })
        .collect()
}

/// Index of the first block whose decoding is not all finite.
fn first_non_finite_block(ty: GgmlType, bytes: &[u8]) -> Option<usize> {
    let n = bytes.len() / ty.type_size() * ty.block_size();
    let dec = dequantize_to_vec(ty, bytes, n).unwrap();
    dec.chunks_exact(ty.block_size())
        .position(|b| b.iter().any(|v| !v.is_finite()))
}

fn first_byte_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Every weighted type is covered with and without weights, on rows of 256
/// and 512 (k-quants) or 64 and 576 (32-element blocks), and on real rows
/// with real importance weights, so the comparison below cannot pass
/// vacuously.
#[test]
fn fixtures_cover_every_type() {
    let m = manifest();
    for ty in WEIGHTED_TYPES {
        let with =
            |pred: &dyn Fn(&Case) -> bool| m.iter().any(|c| c.types.contains(&ty) && pred(c));
        let lengths: &[usize] = if ty.block_size() == 256 {
            &[256, 512]
        } else {
            &[64, 576]
        };
        for &n in lengths {
            assert!(with(&|c| c.n_per_row == n), "{ty}: no rows of {n}");
        }
        assert!(with(&|c| c.name.starts_with("real_")), "{ty}: no real rows");
    }
}

/// `quantize_weighted` (serial and parallel) gives llama.cpp's bytes, with
/// the imatrix and without; where llama.cpp wrote a NaN scale, the crate
/// reports that block instead.
#[test]
fn quantize_weighted_matches_llama_cpp() {
    let mut compared = 0;
    let mut rejected = 0;
    for case in manifest() {
        let dir = fixtures().join(&case.name);
        let x = read_f32(&dir.join("input.f32"));
        let qw = read_f32(&dir.join("imatrix.f32"));
        assert_eq!(x.len(), case.n_per_row * case.n_rows, "{}", case.name);
        assert_eq!(qw.len(), case.n_per_row, "{}", case.name);
        for &ty in &case.types {
            for (suffix, weights) in [("bin", Some(&qw[..])), ("plain.bin", None)] {
                let file = format!("{}.{suffix}", ty.name());
                let label = format!("{} {file}", case.name);
                let want = read(&dir.join(&file));
                let got = quantize_weighted(ty, &x, case.n_per_row, weights);
                let got_par = quantize_weighted_par(ty, &x, case.n_per_row, weights);
                // (Debug strings: a NaN in an error would not compare equal.)
                assert_eq!(
                    format!("{got:?}"),
                    format!("{got_par:?}"),
                    "{label}: parallel"
                );
                match first_non_finite_block(ty, &want) {
                    None => {
                        let got = got.unwrap_or_else(|e| panic!("{label}: {e}"));
                        if let Some(i) = first_byte_difference(&got, &want) {
                            panic!(
                                "{label}: byte {i} (block {}) is {} but llama.cpp wrote {}",
                                i / ty.type_size(),
                                got[i],
                                want[i]
                            );
                        }
                        if weights.is_none() {
                            assert_eq!(got, quantize(ty, &x).unwrap(), "{label}");
                        }
                        compared += 1;
                    }
                    Some(block) => {
                        assert!(
                            case.non_finite.contains(&format!("{file}@{block}")),
                            "{label}: manifest does not list non-finite block {block}"
                        );
                        match got {
                            Err(CodecError::NonFiniteScale {
                                ty: t, block: b, ..
                            }) => {
                                assert_eq!((t, b), (ty, block), "{label}")
                            }
                            other => panic!("{label}: expected NonFiniteScale, got {other:?}"),
                        }
                        rejected += 1;
                    }
                }
            }
        }
    }
    // 6 cases: 3 with the 6 block-32 types only, 3 with all 11; each with
    // and without weights.
    assert_eq!(compared + rejected, 2 * (3 * 6 + 3 * 11));
    assert!(rejected <= 2, "{rejected} rejected encodings");
}

/// The weights change the result for every type but Q8_0 (which ignores
/// them), so the weighted path is really exercised. (Random rows: the f32
/// GGUF is the dequantized Q4_1 model, so its rows lie on Q4_1 grids and
/// re-quantize to Q4_1 identically with or without weights.)
#[test]
fn weights_change_the_encoding() {
    let case = manifest()
        .into_iter()
        .find(|c| c.name == "rand256")
        .expect("rand256 fixture");
    let dir = fixtures().join(&case.name);
    for ty in WEIGHTED_TYPES {
        let with = read(&dir.join(format!("{}.bin", ty.name())));
        let without = read(&dir.join(format!("{}.plain.bin", ty.name())));
        assert_eq!(with == without, ty == GgmlType::Q8_0, "{ty}");
    }
}

#[test]
fn bad_arguments_are_errors() {
    let x = vec![0.5f32; 512];
    let w = vec![1.0f32; 256];
    use CodecError::*;
    fn err(ty: GgmlType, x: &[f32], n: usize, w: Option<&[f32]>) -> CodecError {
        quantize_weighted(ty, x, n, w).unwrap_err()
    }
    assert!(matches!(
        err(GgmlType::F16, &x, 256, None),
        UnsupportedWeighted { .. }
    ));
    assert!(matches!(
        err(GgmlType::Q8K, &x, 256, None),
        UnsupportedWeighted { .. }
    ));
    assert!(matches!(
        err(GgmlType::Q4K, &x, 128, None),
        BadRowLength {
            n_per_row: 128,
            block_size: 256,
            ..
        }
    ));
    assert!(matches!(
        err(GgmlType::Q4_0, &x, 0, None),
        BadRowLength { n_per_row: 0, .. }
    ));
    assert!(matches!(
        err(GgmlType::IQ4NL, &x, 48, None),
        BadRowLength {
            n_per_row: 48,
            block_size: 32,
            ..
        }
    ));
    assert!(matches!(
        err(GgmlType::Q4_0, &x[..500], 64, None),
        NotWholeRows {
            n_elements: 500,
            n_per_row: 64
        }
    ));
    assert!(matches!(
        err(GgmlType::Q6K, &x, 256, Some(&w[..255])),
        WeightsLength {
            n_per_row: 256,
            actual: 255
        }
    ));
    for (bad, idx) in [(f32::NAN, 3), (f32::INFINITY, 7), (-1.0, 100)] {
        let mut w = w.clone();
        w[idx] = bad;
        match err(GgmlType::Q4K, &x, 256, Some(&w)) {
            BadWeight { index, .. } => assert_eq!(index, idx),
            e => panic!("{e:?}"),
        }
    }
    let mut y = x.clone();
    y[300] = f32::NAN;
    for weights in [None, Some(&w[..])] {
        assert!(matches!(
            err(GgmlType::Q3K, &y, 256, weights),
            NonFinite { index: 300, .. }
        ));
    }
    // Values beyond the fp16 range of the scale: llama.cpp would write an
    // infinite d, which llama-quantize rejects.
    let huge = vec![1e9f32; 32];
    assert!(matches!(
        err(GgmlType::Q8_0, &huge, 32, None),
        NonFiniteScale { block: 0, .. }
    ));
    // Errors name the problem.
    let msg = err(GgmlType::Q4K, &x, 256, Some(&w[..10])).to_string();
    assert!(msg.contains("10") && msg.contains("256"), "{msg}");
    // An empty input is zero rows.
    assert_eq!(
        quantize_weighted(GgmlType::Q4K, &[], 256, Some(&w)).unwrap(),
        Vec::<u8>::new()
    );
    // BlockGrid: one block exactly.
    assert!(matches!(
        BlockGrid::fit(GgmlType::Q4K, &x, None).unwrap_err(),
        BlockLength {
            expected: 256,
            actual: 512,
            ..
        }
    ));
    assert!(matches!(
        BlockGrid::from_block(GgmlType::Q4_0, &[0u8; 17]).unwrap_err(),
        LengthMismatch { .. }
    ));
    assert!(matches!(
        BlockGrid::from_block(GgmlType::Q8K, &[0u8; 292]).unwrap_err(),
        UnsupportedWeighted { .. }
    ));
}

// --------------------------------------------------------------------------
// BlockGrid

fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    // Box-Muller
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// A random block of `n` values: one of several distributions (Gaussian,
/// heavy-tailed, with zero runs, constant, positive-only, tiny).
fn random_block(rng: &mut ChaCha8Rng, n: usize, kind: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n).map(|_| gaussian(rng) * 0.05).collect();
    match kind % 6 {
        0 => {}
        1 => {
            for _ in 0..3 {
                let i = rng.random_range(0..n);
                x[i] *= 30.0;
            }
        }
        2 => {
            let s = rng.random_range(0..n / 16) * 16;
            x[s..s + 16].fill(0.0);
        }
        3 => {
            let c = gaussian(rng);
            x[..n / 2].fill(c);
        }
        4 => x.iter_mut().for_each(|v| *v = v.abs() + 0.01),
        _ => x.iter_mut().for_each(|v| *v *= 1e-4),
    }
    x
}

fn random_weights(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| (gaussian(rng) * 1.5).exp()).collect()
}

fn decode(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    dequantize_to_vec(ty, bytes, ty.block_size()).unwrap()
}

/// The decoded value of every code for every element: `table[c][i]`, by
/// decoding blocks whose every element holds code `c`.
fn code_table(g: &BlockGrid) -> Vec<(u8, Vec<f32>)> {
    let codes: Vec<u8> = if g.ty() == GgmlType::Q8_0 {
        (0..=255).collect()
    } else {
        (0..g.n_codes() as u8).collect()
    };
    codes
        .into_iter()
        .map(|c| {
            let mut h = g.clone();
            for i in 0..h.len() {
                h.set_code(i, c);
            }
            (c, decode(g.ty(), h.bytes()))
        })
        .collect()
}

fn blocks_per_type(ty: GgmlType) -> usize {
    if ty.block_size() == 256 {
        30
    } else {
        150
    }
}

/// `fit` is llama.cpp's quantizer on the block; the grid decodes to exactly
/// what the decoder gives for its bytes; rewriting every code with itself
/// changes nothing; `fit_row` matches the whole-row quantization.
#[test]
fn grid_fit_reproduces_the_quantizer() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for ty in WEIGHTED_TYPES {
        let n = ty.block_size();
        for k in 0..blocks_per_type(ty) {
            let x = random_block(&mut rng, n, k);
            let w = random_weights(&mut rng, n);
            for weights in [None, Some(&w[..])] {
                let label = format!("{ty} block {k} weights {}", weights.is_some());
                let g = BlockGrid::fit(ty, &x, weights).unwrap_or_else(|e| panic!("{label}: {e}"));
                assert_eq!(g.len(), n);
                let want = quantize_weighted(ty, &x, n, weights).unwrap();
                assert_eq!(g.bytes(), &want[..], "{label}");
                let dec = decode(ty, g.bytes());
                for (i, d) in dec.iter().enumerate() {
                    assert_eq!(g.value(i).to_bits(), d.to_bits(), "{label} element {i}");
                }
                let mut h = g.clone();
                for i in 0..n {
                    h.set_code(i, g.code(i));
                }
                assert_eq!(h, g, "{label}");
            }
        }
        // A row of 4 blocks (or 2 super-blocks) with row-wide weights.
        let row: Vec<f32> = (0..4 * 32.max(n / 2))
            .map(|_| gaussian(&mut rng) * 0.1)
            .collect();
        let w = random_weights(&mut rng, row.len());
        let grids = BlockGrid::fit_row(ty, &row, Some(&w)).unwrap();
        let bytes: Vec<u8> = grids.iter().flat_map(|g| g.bytes().to_vec()).collect();
        assert_eq!(
            bytes,
            quantize_weighted(ty, &row, row.len(), Some(&w)).unwrap(),
            "{ty}"
        );
    }
}

/// `nearest` returns a code whose decoded value is as near to the target as
/// any code's (brute force over all codes, decoded by `dequantize`), and
/// that value bitwise; after setting the chosen codes, decoding the block's
/// bytes gives those values.
#[test]
fn grid_nearest_is_the_exact_argmin() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for ty in WEIGHTED_TYPES {
        let n = ty.block_size();
        let mut checked = 0usize;
        for k in 0..blocks_per_type(ty) {
            let x = random_block(&mut rng, n, k);
            let w = random_weights(&mut rng, n);
            let weights = (k % 2 == 0).then_some(&w[..]);
            let mut g = BlockGrid::fit(ty, &x, weights).unwrap();
            let table = code_table(&g);
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            let mut chosen = Vec::with_capacity(n);
            for i in 0..n {
                // Targets: perturbed weights, far outside the grid, and the
                // exact midpoint of two codes' values (a tie).
                let target = match rng.random_range(0..8) {
                    0 => amax * 4.0 * if rng.random() { 1.0 } else { -1.0 },
                    1 => {
                        let a = table[rng.random_range(0..table.len())].1[i];
                        let b = table[rng.random_range(0..table.len())].1[i];
                        (a + b) / 2.0
                    }
                    _ => x[i] + gaussian(&mut rng) * 0.2 * amax,
                };
                let (code, value) = g.nearest(i, target);
                let dist = |v: f32| (v as f64 - target as f64).abs();
                let (_, col) = table
                    .iter()
                    .find(|(c, _)| *c == code)
                    .unwrap_or_else(|| panic!("{ty}: nearest returned invalid code {code}"));
                assert_eq!(
                    value.to_bits(),
                    col[i].to_bits(),
                    "{ty} block {k} element {i}"
                );
                let best = table
                    .iter()
                    .map(|(_, t)| dist(t[i]))
                    .fold(f64::INFINITY, f64::min);
                assert!(
                    dist(value) <= best,
                    "{ty} block {k} element {i}: target {target}, code {code} gives {value} \
                     but a code is {best} away"
                );
                chosen.push((code, value));
                checked += 1;
            }
            for (i, &(code, _)) in chosen.iter().enumerate() {
                g.set_code(i, code);
            }
            let dec = decode(ty, g.bytes());
            for (i, &(code, value)) in chosen.iter().enumerate() {
                assert_eq!(g.code(i), code);
                assert_eq!(
                    dec[i].to_bits(),
                    value.to_bits(),
                    "{ty} block {k} element {i}"
                );
                assert_eq!(g.value(i).to_bits(), value.to_bits());
            }
        }
        assert_eq!(checked, blocks_per_type(ty) * n, "{ty}");
    }
}

/// Arbitrary block bytes (finite scales): the grid reads the same scales
/// and codes as the decoder, and random codes written through `set_code`
/// decode to `value`.
#[test]
fn grid_reads_and_writes_any_block() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    // fp16 scale fields (ggml-common.h), kept finite.
    let fp16_fields = |ty: GgmlType| -> &'static [usize] {
        use GgmlType::*;
        match ty {
            Q4_1 | Q5_1 | Q4K | Q5K => &[0, 2],
            Q2K => &[80, 82],
            Q3K => &[108],
            Q6K => &[208],
            _ => &[0],
        }
    };
    for ty in WEIGHTED_TYPES {
        for _ in 0..20 {
            let mut bytes: Vec<u8> = (0..ty.type_size()).map(|_| rng.random()).collect();
            for &off in fp16_fields(ty) {
                let v = half::f16::from_f32(gaussian(&mut rng) * 0.01);
                bytes[off..off + 2].copy_from_slice(&v.to_bits().to_le_bytes());
            }
            let mut g = BlockGrid::from_block(ty, &bytes).unwrap();
            assert_eq!(g.bytes(), &bytes[..]);
            let dec = decode(ty, &bytes);
            for (i, d) in dec.iter().enumerate() {
                assert_eq!(g.value(i).to_bits(), d.to_bits(), "{ty} element {i}");
            }
            for i in 0..g.len() {
                let c = if ty == GgmlType::Q8_0 {
                    rng.random()
                } else {
                    rng.random_range(0..g.n_codes() as u8)
                };
                g.set_code(i, c);
            }
            let dec = decode(ty, g.bytes());
            for (i, d) in dec.iter().enumerate() {
                assert_eq!(g.value(i).to_bits(), d.to_bits(), "{ty} element {i}");
            }
            // Only the code bits changed: the scales read back the same.
            let h = BlockGrid::from_block(ty, g.bytes()).unwrap();
            assert_eq!(h, g, "{ty}");
        }
    }
}

/// A zero block: every code decodes alike, and `nearest` returns the code
/// of the zero level (or the smallest one for IQ4_NL) consistently.
#[test]
fn grid_of_a_zero_block() {
    for ty in WEIGHTED_TYPES {
        let x = vec![0f32; ty.block_size()];
        let mut g = BlockGrid::fit(ty, &x, None).unwrap();
        for i in 0..g.len() {
            let (c, v) = g.nearest(i, 0.3);
            assert_eq!(v, 0.0, "{ty}");
            g.set_code(i, c);
            let (c2, _) = g.nearest(i, f32::NAN);
            assert_eq!(c, c2);
        }
        let dec = decode(ty, g.bytes());
        assert!(dec.iter().all(|&v| v == 0.0), "{ty}");
    }
}
