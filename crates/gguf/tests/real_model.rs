//! The default model: header contents, and a byte-identical rewrite.

mod common;

use tersor_gguf::{GgmlType, GgufFile, GgufWriter, Value, ValueType};

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[test]
fn reads_default_model_header() {
    let Some(path) = common::asset(MODEL) else {
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    // gguf-py lists 36 fields: 3 pseudo fields (GGUF.version, GGUF.tensor_count,
    // GGUF.kv_count) + the 33 key-value pairs stored in the file.
    assert_eq!(f.metadata().len(), 33);
    assert_eq!(f.tensors().len(), 272);
    assert_eq!(f.file_size(), std::fs::metadata(&path).unwrap().len());
    assert_eq!(f.data_offset() % 32, 0);

    assert_eq!(f.metadata()[0].0, "general.architecture");
    assert_eq!(f.get_str("general.architecture"), Some("llama"));
    let u = |k: &str| {
        f.get(k)
            .unwrap_or_else(|| panic!("missing {k}"))
            .as_u64()
            .unwrap()
    };
    assert_eq!(u("llama.block_count"), 30);
    assert_eq!(u("llama.embedding_length"), 576);
    assert_eq!(u("llama.feed_forward_length"), 1536);
    assert_eq!(u("llama.attention.head_count"), 9);
    assert_eq!(u("llama.attention.head_count_kv"), 3);
    assert_eq!(u("llama.rope.dimension_count"), 64);
    assert_eq!(u("llama.vocab_size"), 49152);
    assert_eq!(u("tokenizer.ggml.bos_token_id"), 1);
    assert_eq!(u("tokenizer.ggml.eos_token_id"), 2);
    assert!(matches!(f.get("llama.block_count"), Some(Value::U32(30))));
    assert_eq!(f.get_f32("llama.rope.freq_base"), Some(100000.0));
    assert_eq!(
        f.get_f32("llama.attention.layer_norm_rms_epsilon"),
        Some(1e-5)
    );
    assert_eq!(f.get_str("tokenizer.ggml.model"), Some("gpt2"));
    assert_eq!(f.get_str("tokenizer.ggml.pre"), Some("smollm"));
    assert_eq!(
        f.get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool),
        Some(false)
    );

    // Every token is valid UTF-8 (so no RawString appears in this model).
    let tokens = f
        .get("tokenizer.ggml.tokens")
        .unwrap()
        .as_string_array()
        .unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(
        &tokens[..3],
        &["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    );
    let types = f.get("tokenizer.ggml.token_type").unwrap();
    assert_eq!(types.as_array().unwrap().elem_type, ValueType::I32);
    assert_eq!(types.as_i64_array().unwrap().len(), 49152);
    let merges = f
        .get("tokenizer.ggml.merges")
        .unwrap()
        .as_string_array()
        .unwrap();
    assert_eq!(merges.len(), 48900);
    assert_eq!(merges[0], "Ġ t");
    fn no_raw(v: &Value) -> bool {
        match v {
            Value::RawString(_) => false,
            Value::Array(a) => a.values.iter().all(no_raw),
            _ => true,
        }
    }
    assert!(f.metadata().iter().all(|(_, v)| no_raw(v)));

    // Tensors: 210 Q4_1 matrices, token_embd Q8_0, 61 F32 norms, no output.weight.
    let count = |ty| f.tensors().iter().filter(|t| t.ty == ty).count();
    assert_eq!(count(GgmlType::Q4_1), 210);
    assert_eq!(count(GgmlType::Q8_0), 1);
    assert_eq!(count(GgmlType::F32), 61);
    assert!(f.tensor("output.weight").is_none());
    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.dims, vec![576, 49152]);
    assert_eq!(emb.ty, GgmlType::Q8_0);
    assert_eq!((emb.row_len(), emb.n_rows()), (576, 49152));
    assert_eq!(emb.n_bytes(), 49152 * 576 / 32 * 34);
    assert_eq!(f.tensor_data(emb).len() as u64, emb.n_bytes());
    assert_eq!(
        f.tensor("blk.0.ffn_down.weight").unwrap().dims,
        vec![1536, 576]
    );
    assert_eq!(
        f.tensor("blk.29.attn_k.weight").unwrap().dims,
        vec![576, 192]
    );
    // Parameter count from the asset README.
    let params: u64 = f.tensors().iter().map(|t| t.n_elements()).sum();
    assert_eq!(params, 134_515_008);
    // The tensors tile the data section exactly, last one ending at EOF.
    let last = f.tensors().iter().max_by_key(|t| t.offset).unwrap();
    assert_eq!(
        f.data_offset() + last.offset + last.n_bytes(),
        f.file_size()
    );
}

#[test]
fn rewrite_is_byte_identical() {
    let Some(path) = common::asset(MODEL) else {
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    let w = GgufWriter::from_file(&f);
    for (a, b) in w.tensors().iter().zip(f.tensors()) {
        assert_eq!(a, b, "recomputed tensor info differs");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("copy.gguf");
    w.write(&out, |i, o| {
        // Stream in pieces, as a converter would.
        for chunk in f.tensor_data(&f.tensors()[i]).chunks(100_000) {
            o.write_all(chunk)?;
        }
        Ok(())
    })
    .unwrap();
    let a = std::fs::read(&path).unwrap();
    let b = std::fs::read(&out).unwrap();
    assert_eq!(a.len(), b.len());
    if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
        panic!("rewrite differs from the original first at byte {i}");
    }
    // Only the output is left in the directory (the temp file was renamed).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
