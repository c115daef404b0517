//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use tersor_gguf::{GgmlType, GgufWriter, Value, ValueType};

/// Path of a default asset (`/work/shared/assets` next to the checkout).
/// A missing asset fails the test, unless `TERSOR_SKIP_ASSET_TESTS=1`, in
/// which case `None` is returned and the caller skips.
pub fn asset(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/assets")
        .join(name);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("TERSOR_SKIP_ASSET_TESTS").as_deref() == Ok("1") {
        eprintln!(
            "skipping: asset {} missing (TERSOR_SKIP_ASSET_TESTS=1)",
            p.display()
        );
        return None;
    }
    panic!(
        "asset {} is missing: run the asset fetch (tersor-assets) first, \
         or set TERSOR_SKIP_ASSET_TESTS=1 to skip tests that need it",
        p.display()
    );
}

/// Whether `python3` with the `gguf` package can be run. Missing is a failure
/// when `CI` is set, otherwise a notice.
pub fn python_gguf_available() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import gguf, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("python3 with the `gguf` package is required in CI (pip install gguf numpy)");
        }
        eprintln!(
            "notice: python3 with the `gguf` package not found; skipping the gguf-py cross-check"
        );
    }
    ok
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG state.
pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// One scalar of every value type, arrays of every element type (including
/// an empty array, nested arrays and an empty nested array), plus a
/// non-UTF-8 string.
pub fn all_values() -> Vec<(String, Value)> {
    use Value as V;
    let arr = |t: ValueType, v: Vec<Value>| V::array(t, v);
    vec![
        ("general.architecture".into(), V::String("llama".into())),
        ("t.u8".into(), V::U8(200)),
        ("t.i8".into(), V::I8(-100)),
        ("t.u16".into(), V::U16(60000)),
        ("t.i16".into(), V::I16(-30000)),
        ("t.u32".into(), V::U32(4_000_000_000)),
        ("t.i32".into(), V::I32(-2_000_000_000)),
        ("t.f32".into(), V::F32(1.5e-5)),
        ("t.bool_t".into(), V::Bool(true)),
        ("t.bool_f".into(), V::Bool(false)),
        ("t.str".into(), V::String("héllo wörld ✓".into())),
        ("t.str_empty".into(), V::String(String::new())),
        ("t.u64".into(), V::U64(u64::MAX - 7)),
        ("t.i64".into(), V::I64(i64::MIN + 3)),
        ("t.f64".into(), V::F64(-2.5e300)),
        (
            "t.arr_u8".into(),
            arr(ValueType::U8, vec![V::U8(0), V::U8(255)]),
        ),
        (
            "t.arr_i8".into(),
            arr(ValueType::I8, vec![V::I8(-128), V::I8(127)]),
        ),
        (
            "t.arr_u16".into(),
            arr(ValueType::U16, vec![V::U16(1), V::U16(65535)]),
        ),
        (
            "t.arr_i16".into(),
            arr(ValueType::I16, vec![V::I16(-32768), V::I16(5)]),
        ),
        (
            "t.arr_u32".into(),
            arr(ValueType::U32, vec![V::U32(7), V::U32(u32::MAX)]),
        ),
        (
            "t.arr_i32".into(),
            arr(
                ValueType::I32,
                vec![V::I32(-1), V::I32(i32::MAX), V::I32(3)],
            ),
        ),
        (
            "t.arr_f32".into(),
            arr(ValueType::F32, vec![V::F32(0.25), V::F32(-1e30)]),
        ),
        (
            "t.arr_bool".into(),
            arr(
                ValueType::Bool,
                vec![V::Bool(true), V::Bool(false), V::Bool(true)],
            ),
        ),
        (
            "t.arr_str".into(),
            Value::string_array(["a", "", "ünïcode", "<|im_start|>"]),
        ),
        (
            "t.arr_u64".into(),
            arr(ValueType::U64, vec![V::U64(u64::MAX)]),
        ),
        (
            "t.arr_i64".into(),
            arr(ValueType::I64, vec![V::I64(i64::MIN), V::I64(0)]),
        ),
        (
            "t.arr_f64".into(),
            arr(ValueType::F64, vec![V::F64(1.0 / 3.0)]),
        ),
        ("t.arr_empty_u32".into(), arr(ValueType::U32, vec![])),
        ("t.arr_empty_str".into(), arr(ValueType::String, vec![])),
        (
            "t.arr_nested".into(),
            arr(
                ValueType::Array,
                vec![
                    arr(ValueType::I32, vec![V::I32(1), V::I32(2)]),
                    arr(ValueType::I32, vec![]),
                    arr(ValueType::I32, vec![V::I32(-3)]),
                ],
            ),
        ),
        (
            "t.arr_nested_str".into(),
            arr(
                ValueType::Array,
                vec![
                    Value::string_array(["x", "yz"]),
                    Value::string_array(Vec::<String>::new()),
                ],
            ),
        ),
        ("t.arr_empty_nested".into(), arr(ValueType::Array, vec![])),
        (
            "t.raw_str".into(),
            V::RawString(vec![0x80, b'a', 0xff, 0xfe]),
        ),
    ]
}

/// Tensors of several ggml types (name, dims, type).
pub fn all_tensors() -> Vec<(String, Vec<u64>, GgmlType)> {
    vec![
        ("token_embd.weight".into(), vec![64, 3], GgmlType::Q8_0),
        ("blk.0.attn_norm.weight".into(), vec![64], GgmlType::F32),
        ("blk.0.attn_q.weight".into(), vec![64, 2], GgmlType::Q4_1),
        ("blk.0.ffn_up.weight".into(), vec![256, 2], GgmlType::Q4K),
        ("blk.0.ffn_down.weight".into(), vec![32, 5], GgmlType::F16),
        ("blk.0.bf16".into(), vec![8, 2, 3], GgmlType::BF16),
        ("blk.0.q6k".into(), vec![256], GgmlType::Q6K),
        ("blk.0.i32.4d".into(), vec![2, 3, 1, 2], GgmlType::I32),
        ("scalar".into(), vec![], GgmlType::F32),
        ("blk.0.q4_0".into(), vec![32, 1], GgmlType::Q4_0),
    ]
}

/// A writer with `all_values()` and `all_tensors()`, and each tensor's data.
pub fn synthetic(version: u32, alignment: u64) -> (GgufWriter, Vec<Vec<u8>>) {
    let mut w = GgufWriter::new(version, alignment);
    for (k, v) in all_values() {
        w.add_metadata(k, v);
    }
    for (name, dims, ty) in all_tensors() {
        w.add_tensor(name, dims, ty).unwrap();
    }
    let data = w
        .tensors()
        .iter()
        .enumerate()
        .map(|(i, t)| bytes(i as u64 + 1, t.n_bytes() as usize))
        .collect();
    (w, data)
}

/// `synthetic()` written to `path`.
pub fn write_synthetic(path: &std::path::Path, version: u32, alignment: u64) -> Vec<Vec<u8>> {
    let (w, data) = synthetic(version, alignment);
    let d = data.clone();
    w.write(path, move |i, out| {
        out.write_all(&d[i])?;
        Ok(())
    })
    .unwrap();
    data
}
