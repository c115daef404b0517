//! Importance-matrix files against llama.cpp's own.
//!
//! Fixtures (tools/llama_presets/):
//! - `imatrix_smollm2_c128x2.dat`: llama-imatrix (llama.cpp c392e509) on the
//!   default LM as F32, two 128-token chunks of botchan_calib.txt
//!   (gen_imatrix.sh);
//! - `imatrix_smollm2_layer0.gguf`: its layer-0 entries in newer llama.cpp's
//!   GGUF imatrix format, written with the `gguf` Python package
//!   (gen_imatrix_gguf.py).

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tersor_ggml::GgmlType;
use tersor_gguf::{GgufWriter, Value};
use tersor_quant::imatrix::{Imatrix, ImatrixEntry};
use tersor_quant::QuantError;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A named change to a file's bytes.
type Mutation = Box<dyn Fn(&mut Vec<u8>)>;
/// A GGUF tensor for `write_gguf`: name, ggml dims, type, F32 data.
type TensorSpec = (&'static str, Vec<u64>, GgmlType, Vec<f32>);
type MetaKv = (&'static str, Value);

const DAT: &str = "imatrix_smollm2_c128x2.dat";
const KINDS: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

#[test]
fn reads_llama_imatrix_output() {
    let im = Imatrix::read(&fixture(DAT)).unwrap();
    // 30 layers × 7 matrices; llama-imatrix does not collect output.weight
    // without --process-output, nor the token embedding (no matmul).
    assert_eq!(im.entries.len(), 210);
    assert_eq!(im.file_order.len(), 210);
    assert_eq!(im.chunks, 2);
    assert_eq!(im.datasets, vec!["/work/shared/assets/botchan_calib.txt"]);
    for l in 0..30 {
        for k in KINDS {
            let name = format!("blk.{l}.{k}.weight");
            let e = &im.entries[&name];
            assert_eq!(e.ncall, 2, "{name}: one call per 128-token chunk");
            assert_eq!(e.values.len(), if k == "ffn_down" { 1536 } else { 576 });
            assert!(e.counts.is_none());
            assert!(e.values.iter().all(|v| v.is_finite() && *v >= 0.0));
            // importance = stored value / ncall, as llama-quantize's load_imatrix.
            let imp = im.importance(&name).unwrap();
            for (a, v) in imp.iter().zip(&e.values) {
                assert_eq!(*a, v / 2.0);
            }
        }
        // Q, K and V read the same normalised input, as do gate and up: their
        // statistics must agree exactly.
        let get = |k: &str| im.entries[&format!("blk.{l}.{k}.weight")].values.clone();
        assert_eq!(get("attn_q"), get("attn_k"));
        assert_eq!(get("attn_q"), get("attn_v"));
        assert_eq!(get("ffn_gate"), get("ffn_up"));
        assert_ne!(get("attn_q"), get("attn_output"));
    }
}

#[test]
fn writes_back_byte_identical() {
    let path = fixture(DAT);
    let orig = std::fs::read(&path).unwrap();
    let im = Imatrix::read(&path).unwrap();
    assert_eq!(im.to_dat_bytes().unwrap(), orig);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("copy.dat");
    im.write_dat(&out).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), orig);
    // Only the output is left in the directory (the temporary was renamed).
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("copy.dat")]);

    // Dropping the file order writes sorted entries: same content.
    let mut sorted = im.clone();
    sorted.file_order.clear();
    let bytes = sorted.to_dat_bytes().unwrap();
    assert_eq!(bytes.len(), orig.len());
    let back = Imatrix::parse_dat(&bytes, Path::new("mem")).unwrap();
    assert_eq!(back.entries, im.entries);
}

#[test]
fn write_into_missing_dir_fails_cleanly() {
    let im = Imatrix::read(&fixture(DAT)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("no/such/dir/x.dat");
    let e = im.write_dat(&out).unwrap_err();
    assert!(matches!(e, QuantError::Io { .. }), "{e}");
    assert!(e.to_string().contains("x.dat"), "{e}");
    assert!(!out.exists());
    let e = Imatrix::default().to_dat_bytes().unwrap_err().to_string();
    assert!(e.contains("at least one entry"), "{e}");
}

/// Offset just past the last entry (where the optional trailer starts).
fn end_of_entries(bytes: &[u8]) -> usize {
    let rd = |o: usize| i32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) as usize;
    let mut o = 4;
    for _ in 0..rd(0) {
        let len = rd(o);
        o += 4 + len;
        let nval = rd(o + 4);
        o += 8 + 4 * nval;
    }
    o
}

#[test]
fn truncated_files_are_errors() {
    let orig = std::fs::read(fixture(DAT)).unwrap();
    let trailer = end_of_entries(&orig);
    let p = Path::new("/x/trunc.dat");
    let mut cuts: Vec<usize> = (0..200).collect();
    cuts.extend((200..orig.len()).step_by(997));
    cuts.extend(trailer.saturating_sub(8)..orig.len());
    for cut in cuts {
        let r = Imatrix::parse_dat(&orig[..cut], p);
        if cut == trailer {
            // A file without the trailer is the older layout: valid.
            let im = r.unwrap();
            assert_eq!((im.chunks, im.datasets.len()), (0, 0));
            assert_eq!(im.entries.len(), 210);
            continue;
        }
        if cut == orig.len() {
            continue;
        }
        let e = r.expect_err(&format!("cut at {cut}"));
        assert!(matches!(e, QuantError::File { .. }), "{e}");
        assert!(e.to_string().starts_with("/x/trunc.dat: "), "{e}");
    }
}

fn put_i32(b: &mut [u8], at: usize, v: i32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn corrupt_files_are_errors() {
    let orig = std::fs::read(fixture(DAT)).unwrap();
    let p = Path::new("bad.dat");
    let first_len = i32::from_le_bytes(orig[4..8].try_into().unwrap()) as usize;
    let ncall_at = 8 + first_len;
    let nval_at = ncall_at + 4;
    let values_at = nval_at + 4;
    let trailer = end_of_entries(&orig);
    let cases: Vec<(&str, Mutation)> = vec![
        ("no data", Box::new(|b| put_i32(b, 0, 0))),
        ("no data", Box::new(|b| put_i32(b, 0, -5))),
        ("cannot fit", Box::new(|b| put_i32(b, 0, i32::MAX))),
        ("negative", Box::new(|b| put_i32(b, 4, -1))),
        ("truncated", Box::new(|b| put_i32(b, 4, i32::MAX))),
        (
            "negative ncall",
            Box::new(move |b| put_i32(b, ncall_at, -2)),
        ),
        ("has no values", Box::new(move |b| put_i32(b, nval_at, 0))),
        ("negative", Box::new(move |b| put_i32(b, nval_at, -1))),
        ("claims", Box::new(move |b| put_i32(b, nval_at, i32::MAX))),
        (
            "not finite",
            Box::new(move |b| {
                b[values_at + 8..values_at + 12].copy_from_slice(&f32::NAN.to_le_bytes())
            }),
        ),
        (
            "not finite",
            Box::new(move |b| {
                b[values_at..values_at + 4].copy_from_slice(&f32::INFINITY.to_le_bytes())
            }),
        ),
        ("not UTF-8", Box::new(|b| b[9] = 0xff)),
        ("NUL", Box::new(|b| b[9] = 0)),
        (
            "unexpected bytes",
            Box::new(|b| b.extend_from_slice(&[1, 2, 3])),
        ),
        ("negative", Box::new(move |b| put_i32(b, trailer, -1))),
        (
            "truncated",
            Box::new(move |b| put_i32(b, trailer + 4, 1 << 20)),
        ),
        (
            "appears twice",
            Box::new(|b| {
                // Duplicate the first entry and bump the count.
                let n = i32::from_le_bytes(b[0..4].try_into().unwrap());
                let first_len = i32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
                let nval_at = 8 + first_len + 4;
                let nval = i32::from_le_bytes(b[nval_at..nval_at + 4].try_into().unwrap()) as usize;
                let entry = b[4..nval_at + 4 + 4 * nval].to_vec();
                b.splice(4..4, entry);
                put_i32(b, 0, n + 1);
            }),
        ),
    ];
    for (want, mutate) in cases {
        let mut b = orig.clone();
        mutate(&mut b);
        let e = Imatrix::parse_dat(&b, p).expect_err(want).to_string();
        assert!(
            e.starts_with("bad.dat: ") && e.contains(want),
            "want '{want}': {e}"
        );
    }

    // Seeded random damage never panics.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for _ in 0..300 {
        let mut b = orig.clone();
        for _ in 0..rng.random_range(1..4) {
            let at = if rng.random_bool(0.5) {
                rng.random_range(0..64)
            } else {
                rng.random_range(0..b.len())
            };
            b[at] = rng.random();
        }
        if rng.random_bool(0.3) {
            let keep = rng.random_range(0..b.len());
            b.truncate(keep);
        }
        let _ = Imatrix::parse_dat(&b, p);
    }

    let e = Imatrix::read(Path::new("/nonexistent/imatrix.dat")).unwrap_err();
    assert!(matches!(e, QuantError::Io { .. }) && e.to_string().contains("imatrix.dat"));
}

#[test]
fn from_sums_round_trips_through_dat() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let n_tokens = 1000u64;
    let mut sums = Vec::new();
    for (name, cols) in [("blk.0.attn_q.weight", 64), ("blk.0.ffn_down.weight", 160)] {
        let s: Vec<f64> = (0..cols)
            .map(|_| rng.random_range(0.0..3.0) * n_tokens as f64)
            .collect();
        sums.push((name.to_string(), (s, n_tokens)));
    }
    let im = Imatrix::from_sums(sums.clone(), 4, Some("calib.txt")).unwrap();
    assert_eq!(im.chunks, 4);
    assert_eq!(im.datasets, vec!["calib.txt"]);
    for (name, (s, n)) in &sums {
        let e = &im.entries[name];
        assert_eq!(e.ncall, 4);
        let imp = im.importance(name).unwrap();
        for (a, s) in imp.iter().zip(s) {
            let mean = (s / *n as f64) as f32;
            assert!(
                (a - mean).abs() <= mean * 2.0 * f32::EPSILON,
                "{a} vs {mean}"
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tersor.dat");
    im.write_dat(&path).unwrap();
    let back = Imatrix::read(&path).unwrap();
    assert_eq!(back.entries, im.entries);
    assert_eq!(
        (back.chunks, back.datasets.clone()),
        (4, vec!["calib.txt".to_string()])
    );
    // file layout: count, then entries in name order, then the trailer.
    let b = std::fs::read(&path).unwrap();
    assert_eq!(&b[0..4], &2i32.to_le_bytes());
    assert_eq!(&b[8..8 + 19], b"blk.0.attn_q.weight");
    assert!(b.ends_with(b"\x04\0\0\0\x09\0\0\0calib.txt"));

    // Bad input.
    let one = |s: Vec<f64>, n: u64| Imatrix::from_sums([("w", (s, n))], 1, None);
    assert!(matches!(one(vec![1.0], 0), Err(QuantError::Shape(_))));
    assert!(matches!(one(vec![], 5), Err(QuantError::Shape(_))));
    assert!(matches!(
        one(vec![f64::NAN], 5),
        Err(QuantError::NonFinite(_))
    ));
    assert!(matches!(one(vec![-1.0], 5), Err(QuantError::NonFinite(_))));
    assert!(matches!(one(vec![1e300], 1), Err(QuantError::NonFinite(_))));
}

#[test]
fn importance_for_tensor_mirrors_llama_quantize() {
    let im = Imatrix::read(&fixture(DAT)).unwrap();
    let got = im
        .importance_for_tensor("blk.3.ffn_down.weight", &[1536, 576])
        .unwrap();
    assert_eq!(got, im.importance("blk.3.ffn_down.weight"));
    assert_eq!(
        im.importance_for_tensor("token_embd.weight", &[576, 49152])
            .unwrap(),
        None
    );
    let e = im
        .importance_for_tensor("blk.3.ffn_down.weight", &[576, 1536])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("imatrix size 1536 is different from tensor size 576"),
        "{e}"
    );
    // A mismatched token embedding is quantized without weights.
    let mut im2 = im.clone();
    let e = im.entries["blk.0.attn_q.weight"].clone();
    im2.entries.insert("token_embd.weight".into(), e);
    assert_eq!(
        im2.importance_for_tensor("token_embd.weight", &[64, 10])
            .unwrap(),
        None
    );
}

#[test]
fn reads_gguf_imatrix() {
    let g = Imatrix::read(&fixture("imatrix_smollm2_layer0.gguf")).unwrap();
    let d = Imatrix::read(&fixture(DAT)).unwrap();
    assert_eq!(g.entries.len(), 7);
    assert_eq!(g.chunks, 2);
    assert_eq!(g.chunk_size, Some(128));
    assert_eq!(g.datasets, d.datasets);
    for (name, e) in &g.entries {
        assert_eq!(e.counts.as_deref(), Some(&[256.0f32][..]), "{name}");
        // in_sum2 / count = (v·128) / (2·128) = v / 2 exactly.
        assert_eq!(g.importance(name), d.importance(name), "{name}");
    }
    // Converted back to the legacy layout: ncall = ⌈256 / 128⌉ = 2 and the
    // stored values come back exactly.
    let bytes = g.to_dat_bytes().unwrap();
    let back = Imatrix::parse_dat(&bytes, Path::new("mem")).unwrap();
    for (name, e) in &back.entries {
        assert_eq!(e, &d.entries[name], "{name}");
    }
    let mut no_cs = g.clone();
    no_cs.chunk_size = None;
    let e = no_cs.to_dat_bytes().unwrap_err().to_string();
    assert!(e.contains("chunk size"), "{e}");
}

/// A GGUF imatrix with the given tensors (name, ggml dims, F32 data or
/// another type's zero bytes) and metadata.
fn write_gguf(path: &Path, meta: &[MetaKv], tensors: &[TensorSpec]) {
    let mut w = GgufWriter::new(3, 32);
    for (k, v) in meta {
        w.add_metadata(*k, v.clone());
    }
    for (n, dims, ty, _) in tensors {
        w.add_tensor(*n, dims.clone(), *ty).unwrap();
    }
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, dims, ty, v)| {
            if *ty == GgmlType::F32 {
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            } else {
                vec![0u8; ty.bytes_for(dims.iter().product()).unwrap() as usize]
            }
        })
        .collect();
    w.write(path, |i, out| {
        out.write_all(&data[i])?;
        Ok(())
    })
    .unwrap();
}

#[test]
fn gguf_imatrix_errors_and_experts() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.imatrix.gguf");
    let imeta = || vec![("general.type", Value::String("imatrix".into()))];
    let f32t = |n: &'static str, dims: Vec<u64>, v: Vec<f32>| (n, dims, GgmlType::F32, v);

    // Two experts: importance per expert; a zero count gives 1 (newer
    // llama-quantize).
    write_gguf(
        &p,
        &imeta(),
        &[
            f32t("e.weight.in_sum2", vec![2, 2], vec![4.0, 8.0, 5.0, 6.0]),
            f32t("e.weight.counts", vec![1, 2], vec![4.0, 0.0]),
        ],
    );
    let im = Imatrix::read(&p).unwrap();
    assert_eq!(im.importance("e.weight").unwrap(), vec![1.0, 2.0, 1.0, 1.0]);
    assert_eq!(im.chunks, 0);
    assert!(im.datasets.is_empty());

    let cases: Vec<(&str, Vec<MetaKv>, Vec<TensorSpec>)> = vec![
        (
            "mismatched sums and counts",
            imeta(),
            vec![f32t("a.weight.in_sum2", vec![4, 1], vec![1.0; 4])],
        ),
        (
            "expected F32",
            imeta(),
            vec![
                f32t("a.weight.in_sum2", vec![4, 1], vec![1.0; 4]),
                ("a.weight.counts", vec![1, 1], GgmlType::F16, vec![]),
            ],
        ),
        (
            "do not form",
            imeta(),
            vec![
                f32t("a.weight.in_sum2", vec![4, 1], vec![1.0; 4]),
                f32t("a.weight.counts", vec![1, 3], vec![1.0; 3]),
            ],
        ),
        (
            "not finite",
            imeta(),
            vec![
                f32t("a.weight.in_sum2", vec![2, 1], vec![1.0, f32::NAN]),
                f32t("a.weight.counts", vec![1, 1], vec![1.0]),
            ],
        ),
        (
            "negative count",
            imeta(),
            vec![
                f32t("a.weight.in_sum2", vec![2, 1], vec![1.0, 1.0]),
                f32t("a.weight.counts", vec![1, 1], vec![-3.0]),
            ],
        ),
        (
            "general.type is 'model'",
            vec![("general.type", Value::String("model".into()))],
            vec![f32t("a.weight", vec![2, 1], vec![1.0, 1.0])],
        ),
        (
            "no general.type",
            vec![],
            vec![f32t("a.weight", vec![2, 1], vec![1.0, 1.0])],
        ),
        (
            "no <name>.in_sum2",
            imeta(),
            vec![f32t("a.weight", vec![2, 1], vec![1.0, 1.0])],
        ),
        (
            "imatrix.datasets is not an array of strings",
            vec![
                ("general.type", Value::String("imatrix".into())),
                ("imatrix.datasets", Value::U32(3)),
            ],
            vec![
                f32t("a.weight.in_sum2", vec![2, 1], vec![1.0, 1.0]),
                f32t("a.weight.counts", vec![1, 1], vec![1.0]),
            ],
        ),
    ];
    for (want, meta, tensors) in cases {
        write_gguf(&p, &meta, &tensors);
        let e = Imatrix::read(&p).expect_err(want).to_string();
        assert!(
            e.contains(want) && e.contains("x.imatrix.gguf"),
            "want '{want}': {e}"
        );
    }

    // A truncated GGUF imatrix is reported by the GGUF reader, naming the file.
    let full = std::fs::read(fixture("imatrix_smollm2_layer0.gguf")).unwrap();
    for cut in [3, 10, 100, 2000, full.len() / 2] {
        std::fs::write(&p, &full[..cut]).unwrap();
        let e = Imatrix::read(&p).expect_err("truncated").to_string();
        assert!(e.contains("x.imatrix.gguf"), "{e}");
    }
}

#[test]
fn entry_importance_without_ncall() {
    // ncall 0 (never written by llama-imatrix): llama-quantize uses the
    // values unchanged.
    let e = ImatrixEntry {
        values: vec![3.0, 4.0],
        ncall: 0,
        counts: None,
    };
    assert_eq!(e.importance(), vec![3.0, 4.0]);
}
