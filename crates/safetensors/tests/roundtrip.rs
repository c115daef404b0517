//! Writing and reading back: a sharded bf16 checkpoint, a mixed-dtype file,
//! exact f16/bf16 conversion, and the index consistency checks.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use tersor_safetensors::{
    bytes_to_f32, write_safetensors, write_sharded, Dtype, SafetensorsModel, INDEX_FILE,
};

type Owned = (String, Dtype, Vec<usize>, Vec<u8>);

fn refs(v: &[Owned]) -> Vec<(String, Dtype, Vec<usize>, &[u8])> {
    v.iter()
        .map(|(n, d, s, b)| (n.clone(), *d, s.clone(), b.as_slice()))
        .collect()
}

/// A small bf16 "checkpoint" with varied shapes, including a scalar and an
/// empty tensor.
fn bf16_checkpoint() -> Vec<Owned> {
    let shapes: Vec<(&str, Vec<usize>)> = vec![
        ("model.embed_tokens.weight", vec![100, 16]),
        ("model.layers.0.self_attn.q_proj.weight", vec![16, 16]),
        ("model.layers.0.self_attn.k_proj.weight", vec![8, 16]),
        ("model.layers.0.mlp.up_proj.weight", vec![40, 16]),
        ("model.layers.0.mlp.down_proj.weight", vec![16, 40]),
        ("model.layers.0.input_layernorm.weight", vec![16]),
        ("model.layers.1.mlp.up_proj.weight", vec![40, 16]),
        ("model.norm.weight", vec![16]),
        ("lm_head.weight", vec![100, 16]),
        ("scale", vec![]),
        ("empty", vec![0, 16]),
    ];
    shapes
        .into_iter()
        .enumerate()
        .map(|(i, (n, s))| {
            let count: usize = s.iter().product();
            // Finite bf16 values: random bits with the exponent kept below 0xff.
            let raw = common::bytes(i as u64 + 7, count * 2);
            let data: Vec<u8> = raw
                .chunks_exact(2)
                .flat_map(|b| {
                    let v = u16::from_le_bytes([b[0], b[1]]) & 0xbfff; // exponent < 0x80
                    v.to_le_bytes()
                })
                .collect();
            (n.to_string(), Dtype::BF16, s, data)
        })
        .collect()
}

#[test]
fn sharded_bf16_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let ck = bf16_checkpoint();
    write_sharded(dir.path(), &refs(&ck), 4000).unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(INDEX_FILE)).unwrap()).unwrap();
    let total: usize = ck.iter().map(|t| t.3.len()).sum();
    assert_eq!(index["metadata"]["total_size"], total);
    let files: std::collections::BTreeSet<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    let n = files.len();
    assert!(n >= 3, "expected several shards, got {n}");
    for (k, f) in files.iter().enumerate() {
        assert_eq!(*f, format!("model-{:05}-of-{n:05}.safetensors", k + 1));
    }
    // Each shard holds at most max_shard_bytes of tensor data.
    for f in &files {
        let shard = SafetensorsModel::open(&dir.path().join(f)).unwrap();
        let bytes: usize = shard
            .names()
            .iter()
            .map(|t| shard.info(t).unwrap().n_bytes)
            .sum();
        assert!(bytes <= 4000, "{f}: {bytes} bytes");
    }
    // Only the shards and the index are in the directory (no temp files).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), n + 1);

    for opened in [dir.path().to_path_buf(), dir.path().join(INDEX_FILE)] {
        let m = SafetensorsModel::open(&opened).unwrap();
        assert_eq!(m.len(), ck.len());
        assert_eq!(m.shard_paths().len(), n);
        assert_eq!(m.metadata().unwrap()["format"], "pt");
        for (name, dtype, shape, data) in &ck {
            let (d, s, raw) = m.raw(name).unwrap();
            assert_eq!((d, &s, raw), (*dtype, shape, data.as_slice()), "{name}");
            let f = m.to_f32(name).unwrap();
            let want: Vec<f32> = data
                .chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                .collect();
            assert_eq!(f, want, "{name}");
            let shard = m.info(name).unwrap().shard;
            assert_eq!(
                index["weight_map"][name],
                shard.file_name().unwrap().to_string_lossy().as_ref()
            );
        }
    }
    // An independent reader agrees.
    if common::python_numpy_available() {
        let m = SafetensorsModel::open(dir.path()).unwrap();
        common::compare_with_python(&m, &common::python_sums(&dir.path().join(INDEX_FILE)));
    }
}

#[test]
fn single_file_mixed_dtypes_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mixed.safetensors");
    let f32s: Vec<u8> = [1.5f32, -2.25, 3e-40, f32::MAX]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let f64s: Vec<u8> = [0.1f64, -1e300]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let f16s: Vec<u8> = [0x3c00u16, 0x0001, 0xfbff]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let tensors: Vec<Owned> = vec![
        ("a.f32".into(), Dtype::F32, vec![2, 2], f32s),
        ("b.f64".into(), Dtype::F64, vec![2], f64s),
        ("c.f16".into(), Dtype::F16, vec![3], f16s),
        (
            "d.i64".into(),
            Dtype::I64,
            vec![1],
            7i64.to_le_bytes().to_vec(),
        ),
        ("e.u8".into(), Dtype::U8, vec![3, 1], vec![1, 2, 3]),
        ("f.bool".into(), Dtype::Bool, vec![2], vec![0, 1]),
        (
            "g.i32".into(),
            Dtype::I32,
            vec![],
            (-5i32).to_le_bytes().to_vec(),
        ),
        ("h.f8".into(), Dtype::F8E4M3, vec![2], vec![0x38, 0xb8]),
        ("i.f4".into(), Dtype::F4, vec![2, 2], vec![0x12, 0x34]),
    ];
    let meta = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        ("k".into(), "v".into()),
    ]);
    write_safetensors(&p, &refs(&tensors), Some(&meta)).unwrap();
    let m = SafetensorsModel::open(&p).unwrap();
    assert_eq!(m.metadata(), Some(&meta));
    for (name, dtype, shape, data) in &tensors {
        assert_eq!(
            m.raw(name).unwrap(),
            (*dtype, shape.clone(), data.as_slice())
        );
    }
    assert_eq!(m.to_f32("a.f32").unwrap(), [1.5, -2.25, 3e-40, f32::MAX]);
    assert_eq!(
        m.to_f32("b.f64").unwrap(),
        [0.1f64 as f32, f32::NEG_INFINITY]
    );
    assert_eq!(m.to_f32("c.f16").unwrap(), [1.0, 2f32.powi(-24), -65504.0]);
    let e = m.to_f32("h.f8").unwrap_err().to_string();
    assert!(e.contains("tensor 'h.f8' has dtype F8_E4M3"), "{e}");
    let e = m.to_f32("i.f4").unwrap_err().to_string();
    assert!(e.contains("tensor 'i.f4' has dtype F4"), "{e}");
    // The reference crate reads what we wrote, and every tensor's data is
    // aligned to its element size, as that crate's serializer arranges.
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), tensors.len());
    let data_start = bytes.as_ptr() as usize + 8 + n;
    for (name, dtype, shape, data) in &tensors {
        let v = st.tensor(name).unwrap();
        assert_eq!((v.shape(), v.data()), (&shape[..], &data[..]), "{name}");
        let off = v.data().as_ptr() as usize - data_start;
        assert_eq!(off % dtype.bits().div_ceil(8), 0, "{name}");
    }
}

/// f16 and bf16 to f32 are exact: checked against the closed-form value of
/// every one of the 65 536 bit patterns.
#[test]
fn half_conversions_are_exact() {
    fn f16_value(h: u16) -> f64 {
        let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
        let e = ((h >> 10) & 0x1f) as i32;
        let m = (h & 0x3ff) as f64;
        match e {
            0 => sign * m * 2f64.powi(-24),
            31 if m == 0.0 => sign * f64::INFINITY,
            31 => f64::NAN,
            _ => sign * (1.0 + m / 1024.0) * 2f64.powi(e - 15),
        }
    }
    fn bf16_value(h: u16) -> f64 {
        let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
        let e = ((h >> 7) & 0xff) as i32;
        let m = (h & 0x7f) as f64;
        match e {
            0 => sign * m * 2f64.powi(-133),
            255 if m == 0.0 => sign * f64::INFINITY,
            255 => f64::NAN,
            _ => sign * (1.0 + m / 128.0) * 2f64.powi(e - 127),
        }
    }
    let all: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
    for (dtype, value) in [
        (Dtype::F16, f16_value as fn(u16) -> f64),
        (Dtype::BF16, bf16_value),
    ] {
        let got = bytes_to_f32(dtype, &all).unwrap();
        for (h, g) in (0..=u16::MAX).zip(got) {
            let want = value(h);
            if want.is_nan() {
                assert!(g.is_nan(), "{dtype} {h:#06x}");
            } else {
                assert_eq!(g as f64, want, "{dtype} {h:#06x}");
                assert_eq!(
                    g.is_sign_negative(),
                    h & 0x8000 != 0,
                    "{dtype} {h:#06x} sign"
                );
            }
        }
    }
    assert_eq!(bytes_to_f32(Dtype::F16, &[0; 3]), None);
    assert_eq!(bytes_to_f32(Dtype::I32, &[0; 4]), None);
    assert_eq!(bytes_to_f32(Dtype::F4, &[0; 4]), None);
}

/// Writes the bf16 checkpoint in 3 shards.
fn write_ck(dir: &Path) {
    write_sharded(dir, &refs(&bf16_checkpoint()), 4000).unwrap();
    assert!(dir.join("model-00003-of-00003.safetensors").exists());
}

fn edit_index(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let p = dir.join(INDEX_FILE);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(v["weight_map"].as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

fn open_err(p: &Path) -> String {
    SafetensorsModel::open(p).unwrap_err().to_string()
}

#[test]
fn index_inconsistencies_are_errors() {
    let idx = |d: &tempfile::TempDir| d.path().join(INDEX_FILE);
    // Mapped to the wrong shard.
    let d = tempfile::tempdir().unwrap();
    write_ck(d.path());
    edit_index(d.path(), |wm| {
        wm.insert(
            "lm_head.weight".into(),
            "model-00001-of-00003.safetensors".into(),
        );
    });
    let e = open_err(&idx(&d));
    assert!(
        e.contains("index maps tensor 'lm_head.weight' to") && e.contains("but it is in"),
        "{e}"
    );
    assert!(e.starts_with(&idx(&d).display().to_string()), "{e}");
    // Listed tensor that no shard has.
    let d = tempfile::tempdir().unwrap();
    write_ck(d.path());
    edit_index(d.path(), |wm| {
        wm.insert("ghost".into(), "model-00001-of-00003.safetensors".into());
    });
    assert!(open_err(&idx(&d)).contains("maps tensor 'ghost' to"));
    // Tensor in a shard but not in the index.
    let d = tempfile::tempdir().unwrap();
    write_ck(d.path());
    edit_index(d.path(), |wm| {
        wm.remove("scale");
    });
    assert!(open_err(&idx(&d)).contains("tensor 'scale' in"));
    // Missing shard file: the error names it.
    let d = tempfile::tempdir().unwrap();
    write_ck(d.path());
    std::fs::remove_file(d.path().join("model-00002-of-00003.safetensors")).unwrap();
    assert!(open_err(&idx(&d)).contains("model-00002-of-00003.safetensors: No such file"));
    // Shard name escaping the directory.
    let d = tempfile::tempdir().unwrap();
    write_ck(d.path());
    edit_index(d.path(), |wm| {
        wm.insert("scale".into(), "../model-00001-of-00003.safetensors".into());
    });
    assert!(open_err(&idx(&d)).contains("must be a plain file name"));
    // The same tensor in two shards.
    let d = tempfile::tempdir().unwrap();
    write_ck(d.path());
    let extra = d.path().join("model-00005-of-00005.safetensors");
    write_safetensors(
        &extra,
        &[("scale".into(), Dtype::F32, vec![], &[0u8; 4][..])],
        None,
    )
    .unwrap();
    edit_index(d.path(), |wm| {
        wm.insert("dummy".into(), "model-00005-of-00005.safetensors".into());
    });
    let e = open_err(&idx(&d));
    assert!(e.contains("tensor 'scale' is in two shards"), "{e}");
    // Not an index at all.
    let d = tempfile::tempdir().unwrap();
    std::fs::write(idx(&d), b"{\"metadata\": {}}").unwrap();
    assert!(open_err(&idx(&d)).contains("not a safetensors index"));
    // Directory with nothing usable.
    let d = tempfile::tempdir().unwrap();
    assert!(open_err(d.path()).contains("no .safetensors file or index"));
}

#[test]
fn writer_rejects_bad_input_and_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x.safetensors");
    let err = |t: &[(String, Dtype, Vec<usize>, &[u8])]| {
        write_safetensors(&p, t, None).unwrap_err().to_string()
    };
    let e = err(&[("a".into(), Dtype::F32, vec![2, 3], &[0u8; 20][..])]);
    assert!(
        e.contains("tensor 'a': F32 [2, 3] needs 24 bytes but 20 were given"),
        "{e}"
    );
    let e = err(&[
        ("a".into(), Dtype::F32, vec![1], &[0u8; 4][..]),
        ("a".into(), Dtype::F32, vec![1], &[0u8; 4][..]),
    ]);
    assert!(e.contains("duplicate tensor name 'a'"), "{e}");
    let e = err(&[("__metadata__".into(), Dtype::U8, vec![1], &[0u8][..])]);
    assert!(e.contains("cannot be a tensor name"), "{e}");
    let e = err(&[("a".into(), Dtype::U8, vec![usize::MAX, 2], &[0u8][..])]);
    assert!(e.contains("impossible number of bytes"), "{e}");
    let e = write_sharded(d.path(), &[], 0).unwrap_err().to_string();
    assert!(e.contains("max_shard_bytes must be positive"), "{e}");
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    // Output directory missing: the error names it, nothing is created.
    let e = write_safetensors(&d.path().join("no/x.safetensors"), &[], None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("/no"), "{e}");
}

#[test]
fn reader_errors_are_clear() {
    let raw = |header: &str, data: usize| {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.resize(b.len() + data, 0);
        b
    };
    let err = |b: Vec<u8>| {
        let e = SafetensorsModel::from_bytes(b, "/m/x.safetensors")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/m/x.safetensors: "), "{e}");
        e
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![1, 2, 3], "file is 3 bytes, too short"),
        (
            [u64::MAX.to_le_bytes().to_vec(), b"{}".to_vec()].concat(),
            "header length field says 18446744073709551615 bytes but only 2 bytes follow it",
        ),
        (
            raw(r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, 8),
            "tensor data ends at byte 16 of the data section, past the end of the file (data section is 8 bytes",
        ),
        (
            raw(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, 12),
            "tensor 'b' has data_offsets that do not start where the previous tensor ends",
        ),
        (
            raw(r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, 8),
            "tensor 'a' is F32 with shape [3] (12 bytes) but its data_offsets [0, 8] span 8 bytes",
        ),
        (
            raw(r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#, 5),
            "the tensors cover 2 bytes but the data section is 5 bytes",
        ),
        (raw(r#"{"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}"#, 16), "invalid safetensors JSON header"),
        (raw("{\"\u{ff}\":1}", 0).into_iter().map(|b| if b == 0xc3 { 0xff } else { b }).collect(), "JSON header is not valid UTF-8"),
    ];
    for (b, msg) in cases {
        let e = err(b);
        assert!(e.contains(msg), "{e}\nexpected: {msg}");
    }
}
