//! Synthetic files: every value type round-trips, v2 reads, the writer's
//! checks and atomicity, and clear reader errors.

mod common;

use std::path::Path;

use tersor_gguf::{GgmlType, GgufError, GgufFile, GgufWriter, Value, ValueType};

fn read(path: &Path) -> GgufFile {
    GgufFile::open(path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_value_type_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    for (version, alignment) in [(3, 32), (2, 32), (3, 64), (3, 1), (2, 256)] {
        let p = dir.path().join(format!("v{version}_a{alignment}.gguf"));
        let data = common::write_synthetic(&p, version, alignment);
        let f = read(&p);
        assert_eq!(f.version(), version);
        assert_eq!(f.alignment(), alignment);
        assert_eq!(f.data_offset() % alignment, 0);
        let mut expect = common::all_values();
        if alignment != 32 {
            expect.insert(
                0,
                ("general.alignment".into(), Value::U32(alignment as u32)),
            );
        }
        assert_eq!(f.metadata(), &expect[..]);
        let tensors = common::all_tensors();
        assert_eq!(f.tensors().len(), tensors.len());
        for (i, (t, (name, dims, ty))) in f.tensors().iter().zip(&tensors).enumerate() {
            assert_eq!((&t.name, &t.dims, t.ty), (name, dims, *ty));
            assert_eq!(t.offset % alignment, 0);
            assert_eq!(f.tensor_data(t), &data[i][..], "tensor {name}");
            assert_eq!(f.tensor(name), Some(t));
        }
        // Rewriting what was read reproduces the file byte for byte.
        let p2 = dir.path().join("rewrite.gguf");
        GgufWriter::from_file(&f)
            .write(&p2, |i, o| Ok(o.write_all(f.tensor_data(&f.tensors()[i]))?))
            .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&p2).unwrap());
        // from_bytes agrees with open.
        let g = GgufFile::from_bytes(std::fs::read(&p).unwrap(), "mem.gguf").unwrap();
        assert_eq!(g.metadata(), f.metadata());
        assert_eq!(g.tensors(), f.tensors());
    }
}

#[test]
fn value_accessors() {
    let vals: std::collections::HashMap<String, Value> = common::all_values().into_iter().collect();
    assert_eq!(vals["t.u8"].as_u64(), Some(200));
    assert_eq!(vals["t.i8"].as_u64(), None);
    assert_eq!(vals["t.i8"].as_i64(), Some(-100));
    assert_eq!(vals["t.u64"].as_i64(), None);
    assert_eq!(vals["t.u32"].as_u32(), Some(4_000_000_000));
    assert_eq!(vals["t.f32"].as_f64(), Some(1.5e-5f32 as f64));
    assert_eq!(vals["t.bool_t"].as_bool(), Some(true));
    assert_eq!(vals["t.str"].as_str(), Some("héllo wörld ✓"));
    assert_eq!(vals["t.raw_str"].as_str(), None);
    assert_eq!(
        vals["t.raw_str"].as_bytes(),
        Some(&[0x80, b'a', 0xff, 0xfe][..])
    );
    assert_eq!(
        vals["t.arr_str"].as_string_array(),
        Some(vec!["a", "", "ünïcode", "<|im_start|>"])
    );
    assert_eq!(vals["t.arr_u32"].as_string_array(), None);
    assert_eq!(
        vals["t.arr_i32"].as_i64_array(),
        Some(vec![-1, i32::MAX as i64, 3])
    );
    assert_eq!(vals["t.arr_f32"].as_f32_array(), Some(vec![0.25, -1e30]));
    let nested = vals["t.arr_nested"].as_array().unwrap();
    assert_eq!(nested.elem_type, ValueType::Array);
    assert_eq!(nested.values[0].as_i64_array(), Some(vec![1, 2]));
    assert_eq!(
        vals["t.arr_empty_u32"].as_array().unwrap().elem_type,
        ValueType::U32
    );
    assert_eq!(
        format!("{}", vals["t.arr_i32"]),
        "[i32; 3] [-1, 2147483647, 3]"
    );
    assert_eq!(format!("{}", vals["t.str"]), "\"héllo wörld ✓\"");
}

#[test]
fn add_metadata_replaces_in_place_and_alignment_key_relayouts() {
    let mut w = GgufWriter::new(3, 32);
    w.add_metadata("a", Value::U32(1));
    w.add_metadata("b", Value::U32(2));
    w.add_metadata("a", Value::String("x".into()));
    let keys: Vec<_> = w.metadata().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a", "b"]);
    assert_eq!(w.get("a"), Some(&Value::String("x".into())));

    w.add_tensor("t0", vec![3], GgmlType::F32).unwrap(); // 12 bytes
    w.add_tensor("t1", vec![1], GgmlType::F32).unwrap();
    assert_eq!(w.tensors()[1].offset, 32);
    w.add_metadata("general.alignment", Value::U32(16));
    assert_eq!((w.alignment(), w.tensors()[1].offset), (16, 16));
    w.set_tensor_type("t0", GgmlType::F16).unwrap(); // 6 bytes
    assert_eq!(w.tensors()[1].offset, 16);
    assert_eq!(w.data_size(), 32);
    w.remove_metadata("general.alignment");
    assert_eq!((w.alignment(), w.tensors()[1].offset), (32, 32));
    assert!(w.set_tensor_type("t0", GgmlType::Q4_0).is_err()); // 3 % 32 != 0
    assert!(w.set_tensor_type("nope", GgmlType::F32).is_err());
}

#[test]
fn add_tensor_rejects_what_llama_cpp_rejects() {
    let mut w = GgufWriter::new(3, 32);
    w.add_tensor("a", vec![32, 2], GgmlType::Q4_0).unwrap();
    let cases: Vec<(&str, Vec<u64>, GgmlType, &str)> = vec![
        ("a", vec![32], GgmlType::Q4_0, "duplicate tensor name 'a'"),
        (
            "b",
            vec![33],
            GgmlType::Q4_0,
            "not a multiple of the block size 32",
        ),
        ("c", vec![1, 1, 1, 1, 1], GgmlType::F32, "has 5 dimensions"),
        (
            "d",
            vec![4, 0],
            GgmlType::F32,
            "dimension 1 has invalid size 0",
        ),
        (
            "e",
            vec![1 << 62, 4],
            GgmlType::F32,
            "more than 2^63-1 elements",
        ),
        ("f", vec![u64::MAX], GgmlType::F32, "invalid size"),
    ];
    for (name, dims, ty, msg) in cases {
        let e = w.add_tensor(name, dims, ty).unwrap_err().to_string();
        assert!(e.contains(msg), "{e}");
    }
    let long = "x".repeat(64);
    let e = w
        .add_tensor(long, vec![1], GgmlType::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at most 63"), "{e}");
    assert_eq!(w.tensors().len(), 1);
}

/// A failing write leaves neither the output nor a temporary file, and does
/// not touch an existing output.
#[test]
fn failed_writes_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    std::fs::write(&out, b"previous contents").unwrap();
    let check = |e: GgufError, msg: &str| {
        let s = e.to_string();
        assert!(s.contains(msg), "{s}");
        assert!(s.contains(&out.display().to_string()), "{s}");
        assert_eq!(std::fs::read(&out).unwrap(), b"previous contents");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    };
    // Too few bytes.
    let (w, data) = common::synthetic(3, 32);
    let e = w
        .write(&out, |i, o| {
            Ok(o.write_all(&data[i][..data[i].len() - (i == 3) as usize])?)
        })
        .unwrap_err();
    check(
        e,
        "tensor 'blk.0.ffn_up.weight' (q4_K [256, 2]) must be 288 bytes but 287 were written",
    );
    // Too many bytes: refused by the counting writer at once.
    let (w, data) = common::synthetic(3, 32);
    let e = w
        .write(&out, |i, o| {
            o.write_all(&data[i])?;
            if i == 2 {
                o.write_all(&[0])?;
            }
            Ok(())
        })
        .unwrap_err();
    check(
        e,
        "writing data of tensor 'blk.0.attn_q.weight': tensor data longer than its 80 bytes",
    );
    // The callback fails.
    let (w, _) = common::synthetic(3, 32);
    let e = w
        .write(&out, |_, _| {
            Err(GgufError::Message("source went away".into()))
        })
        .unwrap_err();
    check(e, "source went away");
    // Invalid writer state.
    let e = GgufWriter::new(1, 32)
        .write(&out, |_, _| Ok(()))
        .unwrap_err();
    check(e, "cannot write GGUF version 1");
    let e = GgufWriter::new(3, 48)
        .write(&out, |_, _| Ok(()))
        .unwrap_err();
    check(e, "alignment 48 is not a nonzero power of two");
    let mut w = GgufWriter::new(3, 32);
    w.add_metadata("general.alignment", Value::U64(64));
    check(
        w.write(&out, |_, _| Ok(())).unwrap_err(),
        "general.alignment is Some(U64(64))",
    );
    let mut w = GgufWriter::new(3, 32);
    w.add_metadata(
        "mixed",
        Value::array(ValueType::U32, vec![Value::U32(1), Value::I32(2)]),
    );
    check(
        w.write(&out, |_, _| Ok(())).unwrap_err(),
        "metadata key 'mixed': array of u32 holds a i32 at index 1",
    );
    // Output directory missing: error names it.
    let e = GgufWriter::new(3, 32)
        .write(&dir.path().join("no/such/x.gguf"), |_, _| Ok(()))
        .unwrap_err();
    assert!(e.to_string().contains("no/such"), "{e}");
}

/// Header bytes of a minimal file (no tensors) with the given kv section.
fn raw_file(version: u32, n_tensors: u64, kvs: &[u8], n_kv: u64, tail: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b.extend_from_slice(kvs);
    b.extend_from_slice(tail);
    let padded = b.len().div_ceil(32) * 32;
    b.resize(padded, 0);
    b
}

fn kv(key: &str, ty: u32, value: &[u8]) -> Vec<u8> {
    let mut b = (key.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(key.as_bytes());
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(value);
    b
}

fn err(bytes: Vec<u8>) -> String {
    let e = GgufFile::from_bytes(bytes, "/x/model.gguf")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("/x/model.gguf: "), "{e}");
    e
}

#[test]
fn reader_errors_are_clear() {
    // Minimal valid file.
    let ok = raw_file(3, 0, &kv("a", 4, &7u32.to_le_bytes()), 1, &[]);
    let f = GgufFile::from_bytes(ok.clone(), "x").unwrap();
    assert_eq!(f.get("a"), Some(&Value::U32(7)));

    let mut bad = ok.clone();
    bad[0] = b'X';
    assert!(err(bad).contains("not a GGUF file"));
    assert!(err(raw_file(1, 0, &[], 0, &[])).contains("version 1 is no longer supported"));
    assert!(err(raw_file(4, 0, &[], 0, &[])).contains("unsupported GGUF version 4"));
    let be = raw_file(3u32.swap_bytes(), 0, &[], 0, &[]);
    assert!(err(be).contains("big-endian"));
    assert!(err(raw_file(3, 0, &[], 1 << 40, &[])).contains("claims 1099511627776 key-value pairs"));
    assert!(err(raw_file(3, u64::MAX, &[], u64::MAX, &[])).contains("need at least"));
    let dup = [kv("a", 4, &[0; 4]), kv("a", 4, &[0; 4])].concat();
    assert!(err(raw_file(3, 0, &dup, 2, &[])).contains("duplicate metadata key 'a'"));
    assert!(err(raw_file(3, 0, &kv("a", 13, &[]), 1, &[])).contains("unknown value type 13"));
    assert!(err(raw_file(3, 0, &kv("b", 7, &[2]), 1, &[])).contains("bool with byte value 2"));
    let huge_str = kv("s", 8, &(1u64 << 50).to_le_bytes());
    assert!(err(raw_file(3, 0, &huge_str, 1, &[])).contains("claims 1125899906842624 bytes"));
    let huge_arr = kv(
        "s",
        9,
        &[&4u32.to_le_bytes()[..], &(1u64 << 40).to_le_bytes()].concat(),
    );
    let e = err(raw_file(3, 0, &huge_arr, 1, &[]));
    assert!(
        e.contains("'s'") && e.contains("claims 1099511627776 elements"),
        "{e}"
    );
    let mut bad_key = (2u64).to_le_bytes().to_vec();
    bad_key.extend_from_slice(&[0xff, 0xfe]);
    bad_key.extend_from_slice(&[4, 0, 0, 0, 0, 0, 0, 0]);
    assert!(err(raw_file(3, 0, &bad_key, 1, &[])).contains("is not valid UTF-8"));
    // Array nesting deeper than the limit.
    let mut deep = Vec::new();
    for _ in 0..20 {
        deep.extend_from_slice(&9u32.to_le_bytes());
        deep.extend_from_slice(&1u64.to_le_bytes());
    }
    deep.extend_from_slice(&4u32.to_le_bytes());
    deep.extend_from_slice(&0u64.to_le_bytes());
    assert!(err(raw_file(3, 0, &kv("d", 9, &deep), 1, &[])).contains("nests arrays deeper"));
    // Alignment.
    for (a, msg) in [
        (0u32, "must be a nonzero power of two"),
        (3, "must be a nonzero power of two"),
    ] {
        let f = raw_file(3, 0, &kv("general.alignment", 4, &a.to_le_bytes()), 1, &[]);
        assert!(err(f).contains(msg));
    }
    let f = raw_file(
        3,
        0,
        &kv("general.alignment", 10, &32u64.to_le_bytes()),
        1,
        &[],
    );
    assert!(err(f).contains("general.alignment has type u64, it must be u32"));
    // Truncated inside the header padding.
    let mut t = ok.clone();
    t.truncate(t.len() - 1);
    assert!(err(t).contains("inside the padding after the header"));
}

/// One tensor's info entry.
fn ti(name: &str, dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut b = (name.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b
}

#[test]
fn tensor_info_errors_are_clear() {
    let file = |infos: &[Vec<u8>], data: usize| {
        let mut b = raw_file(3, infos.len() as u64, &[], 0, &infos.concat());
        b.resize(b.len() + data, 0);
        b
    };
    let ok = file(&[ti("a", &[8], 0, 0), ti("b", &[32], 8, 32)], 96);
    let f = GgufFile::from_bytes(ok, "x").unwrap();
    assert_eq!(f.tensor("b").unwrap().n_bytes(), 34);

    let e = err(file(&[ti("blk.0.attn_q.weight", &[64, 64], 0, 0)], 100));
    assert!(
        e.contains(
            "tensor 'blk.0.attn_q.weight' data [96..16480) lies outside the file (size 196)"
        ),
        "{e}"
    );
    assert!(err(file(&[ti("a", &[8], 0, 0), ti("a", &[8], 0, 32)], 64))
        .contains("duplicate tensor name 'a'"));
    assert!(err(file(&[ti("a", &[16], 0, 0), ti("b", &[8], 0, 32)], 96)).contains("overlap"));
    assert!(err(file(&[ti("a", &[8], 0, 8)], 64)).contains("not a multiple of the alignment 32"));
    assert!(err(file(&[ti("a", &[8], 4, 0)], 64)).contains("unknown ggml type id 4"));
    assert!(err(file(&[ti("a", &[8], 999, 0)], 64)).contains("unknown ggml type id 999"));
    assert!(err(file(&[ti("a", &[8], 2, 0)], 64)).contains("not a multiple of the block size 32"));
    assert!(
        err(file(&[ti("a", &[1 << 32, 1 << 32], 0, 0)], 64)).contains("more than 2^63-1 elements")
    );
    assert!(err(file(&[ti("a", &[u64::MAX], 0, 0)], 64)).contains("invalid size"));
    let e = err(file(&[ti("a", &[1, 1, 1, 1, 1], 0, 0)], 64));
    assert!(e.contains("tensor 'a' has 5 dimensions"), "{e}");
    let e = err(file(&[ti("a", &[1], 0, u64::MAX - 31)], 64));
    assert!(e.contains("lies outside the file"), "{e}");
    let e = err(file(&[ti(&"n".repeat(64), &[1], 0, 0)], 64));
    assert!(e.contains("llama.cpp allows at most 63"), "{e}");
}
