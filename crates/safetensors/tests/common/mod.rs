//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Path of a default asset. A missing asset fails the test unless
/// `TERSOR_SKIP_ASSET_TESTS=1`, in which case `None` is returned.
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

/// Whether `python3` with numpy can be run. Missing is a failure when `CI`
/// is set, otherwise a notice.
pub fn python_numpy_available() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("python3 with numpy is required in CI");
        }
        eprintln!("notice: python3 with numpy not found; skipping the Python cross-check");
    }
    ok
}

/// An independent reader: plain `json` + numpy, following the format spec
/// (8-byte LE header length, JSON header, data offsets relative to the end of
/// the header). For a file or an index, prints per tensor: dtype, shape, the
/// file name, the f64 sum and the f64 sum of absolute values.
const SCRIPT: &str = r#"
import json, os, struct, sys
import numpy as np
path = sys.argv[1]
if path.endswith('.json'):
    wm = json.load(open(path))['weight_map']
    d = os.path.dirname(path)
    files = sorted(set(wm.values()))
    paths = [os.path.join(d, f) for f in files]
else:
    paths = [path]
NP = {'F32': '<f4', 'F64': '<f8', 'F16': '<f2', 'I64': '<i8', 'I32': '<i4', 'I16': '<i2',
      'I8': 'i1', 'U8': 'u1', 'BOOL': 'u1', 'U16': '<u2', 'U32': '<u4', 'U64': '<u8'}
out = {}
for p in paths:
    with open(p, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    for name, t in header.items():
        if name == '__metadata__':
            continue
        s, e = t['data_offsets']
        raw = data[s:e]
        if t['dtype'] == 'BF16':
            a = (np.frombuffer(raw, '<u2').astype(np.uint32) << 16).view('<f4')
        else:
            a = np.frombuffer(raw, NP[t['dtype']])
        a = a.astype(np.float64)
        out[name] = {'dtype': t['dtype'], 'shape': t['shape'], 'file': os.path.basename(p),
                     'sum': float(a.sum()), 'abs': float(np.abs(a).sum())}
print(json.dumps(out))
"#;

pub fn python_sums(path: &Path) -> serde_json::Value {
    let out = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(path)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Compares our view of `m` with the Python reader's: same tensors, dtypes,
/// shapes, files, and per-tensor sums equal up to summation-order rounding.
pub fn compare_with_python(m: &tersor_safetensors::SafetensorsModel, py: &serde_json::Value) {
    let py = py.as_object().unwrap();
    assert_eq!(py.len(), m.len());
    for name in m.names() {
        let p = &py[name];
        let info = m.info(name).unwrap();
        assert_eq!(p["dtype"], info.dtype.name(), "{name}");
        assert_eq!(p["shape"], serde_json::json!(info.shape), "{name}");
        assert_eq!(
            p["file"],
            info.shard.file_name().unwrap().to_string_lossy().as_ref(),
            "{name}"
        );
        let vals: Vec<f64> = match m.to_f32(name) {
            Ok(v) => v.into_iter().map(f64::from).collect(),
            Err(_) => {
                let (dtype, _, raw) = m.raw(name).unwrap();
                assert_eq!(dtype, tersor_safetensors::Dtype::I64, "{name}");
                raw.chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect()
            }
        };
        let sum: f64 = vals.iter().sum();
        let abs: f64 = vals.iter().map(|v| v.abs()).sum();
        let (ps, pa) = (p["sum"].as_f64().unwrap(), p["abs"].as_f64().unwrap());
        let tol = 1e-9 * pa.max(1.0);
        assert!((sum - ps).abs() <= tol, "{name}: sum {sum} vs python {ps}");
        assert!(
            (abs - pa).abs() <= tol,
            "{name}: abs sum {abs} vs python {pa}"
        );
    }
}

/// Deterministic pseudo-random bytes (xorshift).
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
