//! Cross-check with the independent reference reader, gguf-py's `GGUFReader`:
//! files we write parse there to the same fields, tensor names, shapes, types,
//! offsets and data; and the default model reads the same in both.

mod common;

use std::path::Path;

use serde_json::{json, Value as J};
use tersor_gguf::{GgufFile, Value, ValueType};

/// Dumps what gguf-py sees as JSON. Strings are given as hex of their bytes
/// (gguf-py's `contents()` would fail on non-UTF-8 strings), arrays as
/// gguf-py's flattened leaves plus the declared element type and length.
const SCRIPT: &str = r#"
import json, sys, zlib
from gguf import GGUFReader, GGUFValueType
r = GGUFReader(sys.argv[1])
def leaf(part, t):
    if t == GGUFValueType.STRING:
        return bytes(part).hex()
    return part.tolist()[0]
fields = {}
for name, f in r.fields.items():
    if name.startswith('GGUF.'):
        continue
    d = {'types': [int(t) for t in f.types]}
    if f.types[0] == GGUFValueType.ARRAY:
        d['elem'] = int(f.parts[3][0])
        d['len'] = int(f.parts[4][0])
        d['leaves'] = [leaf(f.parts[i], f.types[-1]) for i in f.data]
    else:
        d['leaves'] = [leaf(f.parts[f.data[0]], f.types[0])]
    fields[name] = d
tensors = [{'name': t.name, 'dims': [int(x) for x in t.shape], 'type': int(t.tensor_type),
            'n_bytes': int(t.n_bytes), 'offset': int(t.data_offset),
            'crc': zlib.crc32(t.data.tobytes())} for t in r.tensors]
print(json.dumps({'version': int(r.fields['GGUF.version'].parts[0][0]), 'alignment': int(r.alignment),
                  'data_offset': int(r.data_offset), 'keys': list(fields), 'fields': fields,
                  'tensors': tensors}))
"#;

fn gguf_py(path: &Path) -> J {
    let out = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(path)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "gguf-py failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, e) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *e = c;
    }
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

/// gguf-py's `types` list: the type, then for arrays the types of the first
/// element, recursively (nothing for an empty array).
fn py_types(v: &Value, out: &mut Vec<u32>) {
    out.push(v.value_type().id());
    if let Value::Array(a) = v {
        if let Some(first) = a.values.first() {
            py_types(first, out);
        }
    }
}

fn py_leaves(v: &Value, out: &mut Vec<J>) {
    match v {
        Value::U8(x) => out.push(json!(x)),
        Value::I8(x) => out.push(json!(x)),
        Value::U16(x) => out.push(json!(x)),
        Value::I16(x) => out.push(json!(x)),
        Value::U32(x) => out.push(json!(x)),
        Value::I32(x) => out.push(json!(x)),
        Value::U64(x) => out.push(json!(x)),
        Value::I64(x) => out.push(json!(x)),
        Value::F32(x) => out.push(json!(*x as f64)),
        Value::F64(x) => out.push(json!(x)),
        Value::Bool(x) => out.push(json!(x)),
        Value::String(_) | Value::RawString(_) => {
            let hex: String = v
                .as_bytes()
                .unwrap()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            out.push(json!(hex))
        }
        Value::Array(a) => a.values.iter().for_each(|e| py_leaves(e, out)),
    }
}

fn ours(f: &GgufFile, with_crc: bool) -> J {
    let mut fields = serde_json::Map::new();
    for (k, v) in f.metadata() {
        let mut types = Vec::new();
        py_types(v, &mut types);
        let mut leaves = Vec::new();
        py_leaves(v, &mut leaves);
        let mut d = json!({ "types": types, "leaves": leaves });
        if let Value::Array(a) = v {
            d["elem"] = json!(a.elem_type.id());
            d["len"] = json!(a.values.len());
        }
        fields.insert(k.clone(), d);
    }
    let tensors: Vec<J> = f
        .tensors()
        .iter()
        .map(|t| {
            json!({
                "name": t.name, "dims": t.dims, "type": t.ty.id(), "n_bytes": t.n_bytes(),
                "offset": f.data_offset() + t.offset,
                "crc": if with_crc { crc32(f.tensor_data(t)) } else { 0 },
            })
        })
        .collect();
    json!({
        "version": f.version(), "alignment": f.alignment(), "data_offset": f.data_offset(),
        "keys": f.metadata().iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        "fields": fields, "tensors": tensors,
    })
}

fn compare(ours: &J, py: &J) {
    for k in ["version", "alignment", "data_offset", "keys"] {
        assert_eq!(ours[k], py[k], "{k}");
    }
    for (k, v) in ours["fields"].as_object().unwrap() {
        assert_eq!(v, &py["fields"][k], "field {k}");
    }
    assert_eq!(
        ours["fields"].as_object().unwrap().len(),
        py["fields"].as_object().unwrap().len()
    );
    assert_eq!(ours["tensors"], py["tensors"]);
}

#[test]
fn synthetic_files_match_gguf_py() {
    if !common::python_gguf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (version, alignment) in [(3, 32), (2, 64)] {
        let p = dir.path().join(format!("v{version}.gguf"));
        common::write_synthetic(&p, version, alignment);
        let f = GgufFile::open(&p).unwrap();
        // The synthetic file really has every value type, nested and empty arrays.
        let types: std::collections::HashSet<u32> = f
            .metadata()
            .iter()
            .map(|(_, v)| v.value_type().id())
            .collect();
        assert_eq!(types.len(), ValueType::ALL.len());
        let py = gguf_py(&p);
        compare(&ours(&f, true), &py);
        // Sanity: the nested array reached gguf-py with the element types we wrote.
        assert_eq!(py["fields"]["t.arr_nested"]["types"], json!([9, 9, 5]));
        assert_eq!(py["fields"]["t.arr_empty_u32"]["elem"], json!(4));
        assert_eq!(py["fields"]["t.raw_str"]["leaves"], json!(["8061fffe"]));
        assert_eq!(py["tensors"][3]["type"], json!(12)); // Q4_K
    }
}

#[test]
fn default_model_matches_gguf_py() {
    let Some(path) = common::asset("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    if !common::python_gguf_available() {
        return;
    }
    let f = GgufFile::open(&path).unwrap();
    let py = gguf_py(&path);
    compare(&ours(&f, true), &py);
    assert_eq!(py["tensors"].as_array().unwrap().len(), 272);
}
