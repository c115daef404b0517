//! The default embedding model (all-MiniLM-L6-v2, f32 safetensors).

mod common;

use tersor_safetensors::{Dtype, SafetensorsModel};

#[test]
fn reads_minilm() {
    let Some(dir) = common::asset("all-MiniLM-L6-v2") else {
        return;
    };
    let m = SafetensorsModel::open(&dir).unwrap();
    let file = dir.join("model.safetensors");
    assert_eq!(m.path(), file);
    assert_eq!(m.shard_paths(), vec![file.as_path()]);
    let direct = SafetensorsModel::open(&file).unwrap();
    assert_eq!(direct.names(), m.names());

    assert_eq!(m.len(), 104);
    let names = m.names();
    assert!(names.windows(2).all(|w| w[0] < w[1]), "names sorted");
    let shape = |n: &str| m.info(n).unwrap_or_else(|| panic!("missing {n}")).shape;
    assert_eq!(shape("embeddings.word_embeddings.weight"), [30522, 384]);
    assert_eq!(shape("embeddings.position_embeddings.weight"), [512, 384]);
    assert_eq!(
        shape("encoder.layer.0.attention.self.query.weight"),
        [384, 384]
    );
    assert_eq!(
        shape("encoder.layer.5.intermediate.dense.weight"),
        [1536, 384]
    );
    assert_eq!(m.info("embeddings.position_ids").unwrap().dtype, Dtype::I64);
    assert_eq!(
        m.metadata().unwrap().get("format").map(String::as_str),
        Some("pt")
    );
    // Parameter count from the asset README (all tensors, incl. position_ids).
    let params: usize = names
        .iter()
        .map(|n| shape(n).iter().product::<usize>())
        .sum();
    assert_eq!(params, 22_713_728);

    for n in &names {
        let info = m.info(n).unwrap();
        let (dtype, shape, raw) = m.raw(n).unwrap();
        assert_eq!((dtype, &shape), (info.dtype, &info.shape));
        assert_eq!(raw.len(), info.n_bytes);
        if dtype == Dtype::F32 {
            let v = m.to_f32(n).unwrap();
            assert_eq!(v.len(), shape.iter().product::<usize>());
            assert!(v.iter().all(|x| x.is_finite()), "{n} has non-finite values");
        }
    }
    let e = m.to_f32("embeddings.position_ids").unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors: tensor 'embeddings.position_ids' has dtype I64"),
        "{e}"
    );
    let e = m.raw("nope").unwrap_err().to_string();
    assert!(
        e.ends_with("model.safetensors: no tensor named 'nope'"),
        "{e}"
    );
}

#[test]
fn minilm_matches_python_reader() {
    let Some(dir) = common::asset("all-MiniLM-L6-v2") else {
        return;
    };
    if !common::python_numpy_available() {
        return;
    }
    let file = dir.join("model.safetensors");
    let m = SafetensorsModel::open(&file).unwrap();
    common::compare_with_python(&m, &common::python_sums(&file));
}
