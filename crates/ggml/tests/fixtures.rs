//! tersor-ggml against independent references.
//!
//! * `tests/fixtures/` (written by `tools/ggml_fixtures/gen.py`): inputs,
//!   reference encodings (gguf-py for BF16/Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, llama.cpp's
//!   `ggml_quantize_chunk` for F16/k-quants/IQ4_NL, `quantize_row_q8_K_ref`)
//!   and reference decodings (gguf-py, d·q for Q8_K; all cross-checked against
//!   llama.cpp's `to_float` when generated). Compared bit for bit.
//! * Closed-form error bounds on seeded random data.
//! * The default model: every tensor dequantized and hashed, against gguf-py's
//!   per-tensor SHA-256 in `tests/fixtures/model_checksums.tsv`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use tersor_ggml::{
    dequantize, dequantize_par, dequantize_to_vec, quantize, quantize_into, quantize_par,
    CodecError, GgmlType,
};

const CODEC_TYPES: [GgmlType; 15] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::IQ4NL,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::Q8K,
];

const QUANTIZED: [GgmlType; 12] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::IQ4NL,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::Q8K,
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (regenerate with tools/ggml_fixtures/gen.py)",
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

struct Entry {
    case: String,
    ty: GgmlType,
    n: usize,
    encoded_by: String,
    decoded_by: String,
}

impl Entry {
    fn dir(&self) -> PathBuf {
        fixtures().join(self.ty.name())
    }
    fn encoded(&self) -> Vec<u8> {
        read(&self.dir().join(format!("{}.bin", self.case)))
    }
    fn decoded(&self) -> Vec<f32> {
        read_f32(&self.dir().join(format!("{}.f32", self.case)))
    }
    fn input(&self) -> Vec<f32> {
        read_f32(&fixtures().join(format!("inputs/{}.f32", self.case)))
    }
    fn label(&self) -> String {
        format!("{} {}", self.ty, self.case)
    }
}

fn manifest() -> Vec<Entry> {
    let text = String::from_utf8(read(&fixtures().join("manifest.tsv"))).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 5, "bad manifest line {l:?}");
            Entry {
                case: f[0].to_string(),
                ty: GgmlType::from_name(f[1]).unwrap_or_else(|| panic!("type {}", f[1])),
                n: f[2].parse().unwrap(),
                encoded_by: f[3].to_string(),
                decoded_by: f[4].to_string(),
            }
        })
        .collect()
}

/// Index and values of the first element whose bit pattern differs.
fn first_bit_difference(a: &[f32], b: &[f32]) -> Option<(usize, f32, f32)> {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .position(|(x, y)| x.to_bits() != y.to_bits())
        .map(|i| (i, a[i], b[i]))
}

/// The fixtures cover every codec type, with real model rows and random
/// blocks, so the comparisons below cannot pass vacuously.
#[test]
fn fixtures_cover_every_type() {
    let m = manifest();
    for ty in CODEC_TYPES.iter().filter(|t| **t != GgmlType::F32) {
        let cases: Vec<&str> = m
            .iter()
            .filter(|e| e.ty == *ty)
            .map(|e| e.case.as_str())
            .collect();
        for want in ["gaussian", "real_ffn_down", "real_attn_q", "zero_blocks"] {
            assert!(cases.contains(&want), "{ty}: no {want} fixture");
        }
        if QUANTIZED.contains(ty) {
            assert!(cases.contains(&"random_blocks"), "{ty}: no random_blocks");
        }
    }
}

/// Decoding the reference bytes gives the reference floats bit for bit
/// (serial, parallel and to-vec paths).
#[test]
fn decoders_match_references() {
    for e in manifest() {
        let bytes = e.encoded();
        let want = e.decoded();
        assert_eq!(want.len(), e.n, "{}", e.label());

        let mut got = vec![f32::NAN; e.n];
        dequantize(e.ty, &bytes, &mut got).unwrap();
        if let Some((i, g, w)) = first_bit_difference(&got, &want) {
            panic!(
                "{} (reference {}): element {i} decodes to {g:e} ({:#010x}), expected {w:e} ({:#010x})",
                e.label(),
                e.decoded_by,
                g.to_bits(),
                w.to_bits()
            );
        }
        let mut par = vec![f32::NAN; e.n];
        dequantize_par(e.ty, &bytes, &mut par).unwrap();
        assert!(
            first_bit_difference(&par, &want).is_none(),
            "{} par",
            e.label()
        );
        let v = dequantize_to_vec(e.ty, &bytes, e.n).unwrap();
        assert!(
            first_bit_difference(&v, &want).is_none(),
            "{} vec",
            e.label()
        );
    }
}

/// Quantizing the reference inputs reproduces llama.cpp's / gguf-py's bytes
/// exactly, k-quants and IQ4_NL included.
#[test]
fn encoders_match_references() {
    let mut checked = 0;
    for e in manifest().iter().filter(|e| e.encoded_by != "random") {
        let x = e.input();
        let want = e.encoded();
        let got = quantize(e.ty, &x).unwrap();
        assert_eq!(got.len(), want.len(), "{}", e.label());
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            let bs = e.ty.type_size();
            panic!(
                "{} (reference {}): byte {i} (block {}, offset {}) is {:#04x}, expected {:#04x}",
                e.label(),
                e.encoded_by,
                i / bs,
                i % bs,
                got[i],
                want[i]
            );
        }
        assert_eq!(quantize_par(e.ty, &x).unwrap(), want, "{} par", e.label());
        checked += 1;
    }
    assert!(checked >= 9 * 14, "only {checked} encoder fixtures");
}

/// F32 is the identity; F16/BF16 round trips are exact on values they hold.
#[test]
fn float_round_trips() {
    let x = read_f32(&fixtures().join("inputs/gaussian.f32"));
    let bytes = quantize(GgmlType::F32, &x).unwrap();
    assert_eq!(bytes, bytemuck::cast_slice::<f32, u8>(&x));
    let back = dequantize_to_vec(GgmlType::F32, &bytes, x.len()).unwrap();
    assert!(first_bit_difference(&back, &x).is_none());

    for ty in [GgmlType::F16, GgmlType::BF16] {
        let once = dequantize_to_vec(ty, &quantize(ty, &x).unwrap(), x.len()).unwrap();
        let twice = dequantize_to_vec(ty, &quantize(ty, &once).unwrap(), x.len()).unwrap();
        assert!(first_bit_difference(&once, &twice).is_none(), "{ty}");
        // relative rounding error at most half an ulp: 2^-11 (F16), 2^-8 (BF16)
        let half_ulp = if ty == GgmlType::F16 {
            2f32.powi(-11)
        } else {
            2f32.powi(-8)
        };
        for (a, b) in x.iter().zip(&once) {
            assert!((a - b).abs() <= a.abs() * half_ulp, "{ty}: {a} -> {b}");
        }
    }
}

/// Quantize → dequantize on the real model rows stays close to the input
/// (a sanity check on top of the exact fixtures).
#[test]
fn real_rows_round_trip() {
    for case in ["real_ffn_down", "real_attn_q"] {
        let x = read_f32(&fixtures().join(format!("inputs/{case}.f32")));
        let rms = (x.iter().map(|v| (v * v) as f64).sum::<f64>() / x.len() as f64).sqrt();
        for ty in QUANTIZED {
            let y = dequantize_to_vec(ty, &quantize(ty, &x).unwrap(), x.len()).unwrap();
            let err = rel_rmse(&x, &y);
            assert!(err < 0.5, "{ty} {case}: relative RMSE {err} (rms {rms})");
        }
    }
}

#[test]
fn bad_lengths_are_errors() {
    use GgmlType::*;
    let x = vec![0.5f32; 256];
    let q = quantize(Q4K, &x).unwrap();
    assert_eq!(q.len(), 144);

    let mut out = vec![0f32; 256];
    assert!(matches!(
        dequantize(Q4K, &q[..143], &mut out),
        Err(CodecError::LengthMismatch {
            expected: 144,
            actual: 143,
            ..
        })
    ));
    assert!(matches!(
        dequantize(Q4K, &q, &mut out[..255]),
        Err(CodecError::NotWholeBlocks {
            n_elements: 255,
            block_size: 256,
            ..
        })
    ));
    assert!(matches!(
        dequantize(Q4K, &[q.clone(), q.clone()].concat(), &mut out),
        Err(CodecError::LengthMismatch { .. })
    ));
    assert!(matches!(
        dequantize_par(Q8_0, &[0u8; 33], &mut [0f32; 32]),
        Err(CodecError::LengthMismatch { .. })
    ));
    // A huge element count is rejected before anything is allocated.
    assert!(matches!(
        dequantize_to_vec(Q4_0, &[0u8; 18], usize::MAX / 64 * 32),
        Err(CodecError::LengthMismatch { .. }) | Err(CodecError::TooLarge { .. })
    ));
    assert!(matches!(
        quantize(Q4_0, &x[..33]),
        Err(CodecError::NotWholeBlocks { .. })
    ));
    assert!(matches!(
        quantize_par(Q6K, &x[..128]),
        Err(CodecError::NotWholeBlocks { .. })
    ));
    let mut small = vec![0u8; 10];
    assert!(matches!(
        quantize_into(Q8_0, &x[..32], &mut small),
        Err(CodecError::LengthMismatch { .. })
    ));
    for ty in [IQ2XXS, IQ4XS, Q8_1, TQ1_0, MXFP4, I32, F64] {
        let err = quantize(ty, &x).unwrap_err();
        assert!(matches!(err, CodecError::Unsupported { .. }), "{ty}: {err}");
        let err = dequantize(ty, &[0u8; 4096], &mut out).unwrap_err();
        assert!(matches!(err, CodecError::Unsupported { .. }), "{ty}: {err}");
    }
    // Messages name the type and the numbers.
    let msg = dequantize(Q4K, &q[..143], &mut out)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("Q4_K") && msg.contains("144") && msg.contains("143"),
        "{msg}"
    );
}

#[test]
fn non_finite_input_is_rejected_by_quantizers() {
    let mut x = vec![0.25f32; 512];
    x[300] = f32::NAN;
    for ty in QUANTIZED {
        for f in [quantize, quantize_par] {
            match f(ty, &x) {
                Err(CodecError::NonFinite { index: 300, .. }) => {}
                other => panic!("{ty}: {other:?}"),
            }
        }
    }
    x[300] = f32::NEG_INFINITY;
    assert!(matches!(
        quantize(GgmlType::Q8_0, &x),
        Err(CodecError::NonFinite { index: 300, .. })
    ));
    // Plain conversions carry NaN/inf through, as ggml does.
    let h = quantize(GgmlType::F16, &x).unwrap();
    let y = dequantize_to_vec(GgmlType::F16, &h, x.len()).unwrap();
    assert_eq!(y[300], f32::NEG_INFINITY);
}

// ---------------------------------------------------------------------------
// Property tests: closed-form error bounds on seeded random data.

/// Standard normal by Box–Muller.
fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Random test vectors: gaussian, heavy-tailed (gaussian / uniform), each
/// block at its own scale, and uniform; all within fp16 range.
fn random_inputs(seed: u64, n: usize) -> Vec<(&'static str, Vec<f32>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let g: Vec<f32> = (0..n).map(|_| gaussian(&mut rng)).collect();
    let heavy: Vec<f32> = (0..n)
        .map(|_| 0.01 * gaussian(&mut rng) / rng.random_range(0.02f32..1.0))
        .collect();
    let mut scaled = vec![0f32; n];
    for blk in scaled.chunks_mut(32) {
        let s = 10f32.powf(rng.random_range(-3.0..2.0));
        for v in blk {
            *v = s * gaussian(&mut rng);
        }
    }
    let uniform: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    vec![
        ("gaussian", g),
        ("heavy", heavy),
        ("scaled", scaled),
        ("uniform", uniform),
    ]
}

fn rel_rmse(x: &[f32], y: &[f32]) -> f64 {
    let se: f64 = x.iter().zip(y).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let ss: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (se / ss).sqrt()
}

/// Per-element worst case for the round-to-nearest block formats, from the
/// format definitions: half a step (a full step where llama.cpp clamps the
/// top level), plus what fp16 rounding of the stored scale and min can add
/// across the largest level. `r16(v)` bounds |fp16(v) − v|: half an ulp,
/// 2^-11 relative for normal values, 2^-25 absolute in the subnormal range.
#[test]
fn rtn_formats_error_is_within_half_a_step() {
    let r16 = |v: f32| v.abs() * 2f32.powi(-11) + 2f32.powi(-25);
    for (kind, x) in random_inputs(7, 8192) {
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q5_0,
            GgmlType::Q4_1,
            GgmlType::Q5_1,
            GgmlType::Q8K,
        ] {
            let y = dequantize_to_vec(ty, &quantize(ty, &x).unwrap(), x.len()).unwrap();
            for (xb, yb) in x.chunks(ty.block_size()).zip(y.chunks(ty.block_size())) {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                let min = xb.iter().fold(f32::MAX, |m, v| m.min(*v));
                let max = xb.iter().fold(f32::MIN, |m, v| m.max(*v));
                let bound = match ty {
                    // d = amax/127, |q| <= 127
                    GgmlType::Q8_0 => 0.5 * amax / 127.0 + 127.0 * r16(amax / 127.0),
                    // the same with an f32 scale
                    GgmlType::Q8K => 0.5 * amax / 127.0,
                    // d = max/-8 (-16): the extreme of the other sign is
                    // clamped to the top level, a full step away.
                    GgmlType::Q4_0 => amax / 8.0 + 8.0 * r16(amax / 8.0),
                    GgmlType::Q5_0 => amax / 16.0 + 16.0 * r16(amax / 16.0),
                    // d = (max-min)/15 (31), x = d*q + min
                    GgmlType::Q4_1 => {
                        let d = (max - min) / 15.0;
                        0.5 * d + 15.0 * r16(d) + r16(min)
                    }
                    GgmlType::Q5_1 => {
                        let d = (max - min) / 31.0;
                        0.5 * d + 31.0 * r16(d) + r16(min)
                    }
                    _ => unreachable!(),
                };
                // f32 rounding in the quantizer and decoder
                let bound = bound * 1.0001 + amax * 1e-6;
                for (a, b) in xb.iter().zip(yb) {
                    assert!(
                        (a - b).abs() <= bound,
                        "{ty} {kind}: {a} -> {b}, error {} > {bound}",
                        (a - b).abs()
                    );
                }
            }
        }
    }
}

/// Searched-scale formats: on gaussian data the relative RMSE stays within
/// 1.5× of a uniform quantizer's step/√12, with the step set by the
/// sub-block's range (≈ 2·2.2σ for 16 elements, 2·2.4σ for 32) and the
/// format's number of levels.
#[test]
fn searched_formats_error_is_bounded() {
    let uniform = |range_sigma: f64, levels: f64| range_sigma / (levels - 1.0) / 12f64.sqrt();
    let cases = [
        (GgmlType::Q2K, uniform(4.4, 4.0)),
        (GgmlType::Q3K, uniform(4.4, 8.0)),
        (GgmlType::Q4K, uniform(4.8, 16.0)),
        (GgmlType::Q5K, uniform(4.8, 32.0)),
        (GgmlType::Q6K, uniform(4.4, 64.0)),
        (GgmlType::IQ4NL, uniform(4.8, 16.0)),
    ];
    let inputs = random_inputs(11, 16384);
    let (_, g) = &inputs[0];
    for (ty, ideal) in cases {
        let y = dequantize_to_vec(ty, &quantize(ty, g).unwrap(), g.len()).unwrap();
        let err = rel_rmse(g, &y);
        eprintln!("{ty}: relative RMSE {err:.4} (uniform-quantizer estimate {ideal:.4})");
        assert!(
            err <= 1.5 * ideal,
            "{ty}: relative RMSE {err:.4} > 1.5 × {ideal:.4}"
        );
        assert!(err > 0.0, "{ty}: lossless on random data?");
    }
    // On every input kind the error falls as the bits per weight rise
    // (Q2_K > Q3_K > Q4_K > Q5_K > Q6_K > Q8_0), and the 4-bit searched
    // formats are no worse than plain round-to-nearest Q4_0.
    for (kind, x) in &inputs {
        let e = |ty| {
            let y = dequantize_to_vec(ty, &quantize(ty, x).unwrap(), x.len()).unwrap();
            rel_rmse(x, &y)
        };
        let (q2, q3, q4, q5, q6, q8) = (
            e(GgmlType::Q2K),
            e(GgmlType::Q3K),
            e(GgmlType::Q4K),
            e(GgmlType::Q5K),
            e(GgmlType::Q6K),
            e(GgmlType::Q8_0),
        );
        assert!(
            q2 > q3 && q3 > q4 && q4 > q5 && q5 > q6 && q6 > q8,
            "{kind}: errors not ordered by bits: {q2} {q3} {q4} {q5} {q6} {q8}"
        );
        assert!(
            e(GgmlType::Q4K) <= e(GgmlType::Q4_0) * 1.05,
            "{kind}: Q4_K vs Q4_0"
        );
        assert!(
            e(GgmlType::IQ4NL) <= e(GgmlType::Q4_0) * 1.05,
            "{kind}: IQ4_NL vs Q4_0"
        );
    }
}

/// Parallel and serial paths agree on inputs spanning many rayon tasks.
#[test]
fn parallel_matches_serial() {
    let (_, x) = random_inputs(3, 1 << 17).swap_remove(2);
    for ty in CODEC_TYPES {
        let q = quantize(ty, &x).unwrap();
        assert_eq!(quantize_par(ty, &x).unwrap(), q, "{ty}");
        let mut a = vec![0f32; x.len()];
        let mut b = vec![0f32; x.len()];
        dequantize(ty, &q, &mut a).unwrap();
        dequantize_par(ty, &q, &mut b).unwrap();
        assert!(first_bit_difference(&a, &b).is_none(), "{ty}");
    }
}

// ---------------------------------------------------------------------------
// The default model.

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The default model from the shared assets: `<repo>/../shared/assets`, then
/// `/work/shared/assets`. Missing is a failure unless TERSOR_SKIP_ASSET_TESTS=1.
fn model_path() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates = [
        repo.join("../shared/assets").join(MODEL),
        PathBuf::from("/work/shared/assets").join(MODEL),
    ];
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return Some(p.clone());
    }
    if std::env::var("TERSOR_SKIP_ASSET_TESTS").as_deref() == Ok("1") {
        eprintln!("skipping: {MODEL} not found and TERSOR_SKIP_ASSET_TESTS=1");
        return None;
    }
    panic!(
        "{MODEL} not found (looked in {:?}); run the asset fetch step first, \
         or set TERSOR_SKIP_ASSET_TESTS=1 to skip tests that need it",
        candidates
    );
}

/// Every tensor of the default model dequantizes to exactly gguf-py's f32
/// (SHA-256 of the little-endian bytes); sums are checked too so a mismatch
/// says how far off it is.
#[test]
fn default_model_dequantizes_like_gguf_py() {
    let Some(path) = model_path() else { return };
    let table = String::from_utf8(read(&fixtures().join("model_checksums.tsv"))).unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    let file_len = file.metadata().unwrap().len();
    let mut n_tensors = 0;
    let mut types = std::collections::BTreeSet::new();
    for line in table.lines() {
        if let Some(size) = line.strip_prefix("# file_size\t") {
            assert_eq!(
                size.parse::<u64>().unwrap(),
                file_len,
                "{}: not the model the checksums were made from",
                path.display()
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let (name, ty) = (f[0], GgmlType::from_name(f[1]).unwrap());
        let n: usize = f[2].parse().unwrap();
        let (offset, n_bytes): (u64, usize) = (f[3].parse().unwrap(), f[4].parse().unwrap());
        let (sum, sumsq): (f64, f64) = (f[5].parse().unwrap(), f[6].parse().unwrap());

        let mut data = vec![0u8; n_bytes];
        file.seek(SeekFrom::Start(offset)).unwrap();
        file.read_exact(&mut data).unwrap();
        let mut out = vec![0f32; n];
        dequantize_par(ty, &data, &mut out).unwrap_or_else(|e| panic!("{name}: {e}"));

        let s: f64 = out.iter().map(|&v| v as f64).sum();
        let s2: f64 = out.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let tol = |want: f64| 1e-9 * want.abs().max(1.0);
        assert!(
            (s - sum).abs() <= tol(sum),
            "{name}: sum {s} vs gguf-py {sum}"
        );
        assert!(
            (s2 - sumsq).abs() <= tol(sumsq),
            "{name}: sumsq {s2} vs {sumsq}"
        );
        let digest = Sha256::digest(bytemuck::cast_slice::<f32, u8>(&out));
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, f[7], "{name} ({ty}): f32 bytes differ from gguf-py's");
        n_tensors += 1;
        types.insert(ty);
    }
    // 30 layers × 9 tensors + token_embd + output_norm
    assert_eq!(n_tensors, 272);
    assert!(types.contains(&GgmlType::Q4_1) && types.contains(&GgmlType::Q8_0));
}
