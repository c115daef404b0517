//! Our packing and dequantization against an independent decoder:
//! `tools/gptq_reference/unpack.py`, a numpy transcription of GPTQModel's torch kernel
//! (unpacking with its shift tables, v1 zero correction, fp16 dequantization) and of
//! its `dynamic` resolution, reading the safetensors files on its own. Random layers at
//! 2, 3, 4 and 8 bits × group sizes 32, 64, 128 and per-channel × symmetric and
//! asymmetric × act-order on and off, mixed in one checkpoint by a `dynamic` config,
//! must decode to the same fp16 values bit for bit.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{python_numpy_available, random_layer, LayerSpec, Rng};
use half::f16;
use serde_json::json;
use tersor_gptq::{
    dequantize_module, scan_gptq_modules, DynamicAction, DynamicOverride, DynamicRule, FloatDtype,
    GptqWriter, QuantizationConfig, QuantizedLinear,
};
use tersor_safetensors::SafetensorsModel;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/gptq_reference/unpack.py")
}

/// A float16 `.npy` file (format 1.0 / 2.0, C order) as raw fp16 bits and its shape.
fn read_npy_f16(path: &Path) -> (Vec<usize>, Vec<u16>) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..6], b"\x93NUMPY", "{}", path.display());
    let (len, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        _ => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
    };
    let header = std::str::from_utf8(&b[start..start + len]).unwrap();
    assert!(header.contains("'descr': '<f2'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap();
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let data = b[start + len..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    (shape, data)
}

/// Name of the module for a layer spec (the `dynamic` rules key on it).
fn module_name(i: usize, s: &LayerSpec) -> String {
    let g = s.group_size.map_or("pc".to_string(), |g| g.to_string());
    format!(
        "blocks.{i}.b{}g{g}{}{}",
        s.bits,
        if s.sym { "s" } else { "a" },
        if s.act_order { "o" } else { "n" }
    )
}

#[test]
fn dequantized_weights_match_gptqmodel_reference_bitwise() {
    if !python_numpy_available() {
        return;
    }
    let mut rng = Rng::new(2024);
    let mut specs = Vec::new();
    for bits in [2u8, 3, 4, 8] {
        for gs in [Some(32), Some(64), Some(128), None] {
            for sym in [false, true] {
                for act_order in [false, true] {
                    let k = specs.len();
                    specs.push(LayerSpec {
                        bits,
                        out_features: if k % 3 == 0 { 64 } else { 32 },
                        // 320 = 2.5 groups of 128: a partial last group.
                        in_features: if k % 2 == 0 { 256 } else { 320 },
                        group_size: gs,
                        sym,
                        act_order,
                    });
                }
            }
        }
    }

    // Base settings, then one rule per module (bare regexes and `+:` keys alternate), a
    // skip rule, and a catch-all that only the last module reaches.
    let mut rules = vec![DynamicRule::new(r".*\.excluded$", DynamicAction::Skip).unwrap()];
    for (i, s) in specs.iter().enumerate() {
        let o = DynamicOverride {
            bits: Some(s.bits),
            group_size: Some(s.group_size.map_or(-1, |g| g as i64)),
            desc_act: Some(s.act_order),
            sym: Some(s.sym),
        };
        let name = module_name(i, s).replace('.', r"\.");
        rules.push(DynamicRule::new(&format!("{name}$"), DynamicAction::Override(o)).unwrap());
    }
    rules.push(
        DynamicRule::new(
            r"blocks\.",
            DynamicAction::Override(DynamicOverride {
                bits: Some(2),
                group_size: Some(64),
                ..Default::default()
            }),
        )
        .unwrap(),
    );
    let config = QuantizationConfig {
        bits: 4,
        group_size: 128,
        desc_act: false,
        sym: false,
        dynamic: rules,
        ..Default::default()
    };
    let mut w = GptqWriter::new(config.clone())
        .unwrap()
        .with_max_shard_bytes(256 << 10);
    let mut layers: Vec<(String, QuantizedLinear)> = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        layers.push((module_name(i, s), random_layer(&mut rng, *s)));
    }
    // Reached through the catch-all rule / through no rule at all (base settings).
    let catch_all = LayerSpec {
        bits: 2,
        out_features: 32,
        in_features: 192,
        group_size: Some(64),
        sym: false,
        act_order: false,
    };
    layers.push((
        "blocks.99.catchall".into(),
        random_layer(&mut rng, catch_all),
    ));
    let base = LayerSpec {
        bits: 4,
        group_size: Some(128),
        ..catch_all
    };
    layers.push(("base.linear".into(), random_layer(&mut rng, base)));
    for (name, l) in &layers {
        w.add_quantized(name, l).unwrap();
    }
    assert_eq!(config.resolve("blocks.99.catchall").unwrap().bits, 2);
    assert!(config.resolve("blocks.7.excluded").is_none());
    w.add_tensor(
        "blocks.7.excluded.weight",
        &[32, 32],
        &rng.vec(1024, 1.0),
        FloatDtype::F16,
    )
    .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gptq");
    w.write(&dir, &json!({"model_type": "test"})).unwrap();
    assert!(
        dir.join("model.safetensors.index.json").is_file(),
        "expected shards"
    );

    let out_dir = tmp.path().join("ref");
    let out = Command::new("python3")
        .arg(script())
        .arg(&dir)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "unpack.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), layers.len(), "{stdout}");

    // Our reading of the written directory, too.
    let st = SafetensorsModel::open(&dir).unwrap();
    let found = scan_gptq_modules(&st, &config).unwrap();
    assert_eq!(found.len(), layers.len());

    for (name, layer) in &layers {
        let ours: Vec<u16> = layer
            .dequantize()
            .unwrap()
            .into_iter()
            .map(|x| {
                let h = f16::from_f32(x);
                assert_eq!(
                    h.to_f32().to_bits(),
                    x.to_bits(),
                    "{name}: not an fp16 value"
                );
                h.to_bits()
            })
            .collect();
        let (shape, theirs) = read_npy_f16(&out_dir.join(format!("{name}.npy")));
        assert_eq!(shape, [layer.out_features, layer.in_features], "{name}");
        if let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
            panic!(
                "{name}: first difference at [{}, {}]: ours {} (0x{:04x}), reference {} (0x{:04x})",
                i / layer.in_features,
                i % layer.in_features,
                f16::from_bits(ours[i]),
                ours[i],
                f16::from_bits(theirs[i]),
                theirs[i]
            );
        }
        assert_eq!(ours.len(), theirs.len(), "{name}");
        let m = found.iter().find(|m| &m.module == name).unwrap();
        let read_back = dequantize_module(&st, m).unwrap();
        assert_eq!(read_back, layer.dequantize().unwrap(), "{name}: read back");
    }
}
