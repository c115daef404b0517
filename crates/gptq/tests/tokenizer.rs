//! The exported `tokenizer.json` of the default GGUF, loaded by the `tokenizers` crate,
//! tokenizes the evaluation text exactly as tersor-model's GGUF tokenizer (which is
//! checked against llama.cpp's `llama-tokenize`) does.

mod common;

use tersor_gguf::GgufFile;
use tersor_gptq::{tokenizer_files_from_gguf, tokenizer_json_from_gguf};
use tersor_model::TextTokenizer;
use tokenizers::Tokenizer;

#[test]
fn exported_tokenizer_matches_gguf_tokenizer_on_eval_text() {
    let Some(assets) = common::assets() else {
        return;
    };
    let gguf_path = assets.join(common::DEFAULT_GGUF);
    let gguf = GgufFile::open(&gguf_path).unwrap();
    let text = std::fs::read_to_string(assets.join("botchan_eval.txt")).unwrap();
    let reference = TextTokenizer::from_gguf(&gguf_path).unwrap();
    let want = reference.encode(&text, false).unwrap();
    assert!(want.len() > 20_000, "{} tokens", want.len());

    let json = tokenizer_json_from_gguf(&gguf).unwrap();
    let tok: Tokenizer = json.parse().unwrap();
    let got = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
    if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
        let lo = i.saturating_sub(5);
        panic!(
            "first difference at token {i}:\n exported {:?}\n gguf     {:?}",
            &got[lo..(i + 5).min(got.len())],
            &want[lo..(i + 5).min(want.len())]
        );
    }
    assert_eq!(got.len(), want.len());
    assert_eq!(tok.decode(&got, false).unwrap(), text);
    assert_eq!(tok.get_vocab_size(true), 49152);
    // Control tokens are parsed as single tokens, as llama.cpp does.
    let ids = tok.encode("<|im_start|>user", false).unwrap();
    assert_eq!(ids.get_ids()[0], tok.token_to_id("<|im_start|>").unwrap());

    // The directory files: tersor-model's HF loader takes BOS/EOS and add_bos from them.
    let files = tokenizer_files_from_gguf(&gguf).unwrap();
    assert_eq!(files.tokenizer_json, json);
    let dir = tempfile::tempdir().unwrap();
    files.write(dir.path()).unwrap();
    let hf = TextTokenizer::from_hf_dir(dir.path(), None, None).unwrap();
    assert_eq!(hf.bos_id(), Some(1));
    assert_eq!(hf.eos_id(), Some(2));
    assert!(!hf.add_bos());
    assert_eq!(hf.encode(&text, false).unwrap(), want);
    let cfg: serde_json::Value = serde_json::from_str(&files.tokenizer_config_json).unwrap();
    assert_eq!(cfg["bos_token"], reference_token(&gguf, 1));
    assert_eq!(cfg["add_bos_token"], false);
    assert_eq!(cfg["tokenizer_class"], "PreTrainedTokenizerFast");
    let map: serde_json::Value = serde_json::from_str(&files.special_tokens_map_json).unwrap();
    assert_eq!(map["eos_token"], reference_token(&gguf, 2));
}

fn reference_token(g: &GgufFile, id: usize) -> String {
    g.get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_string_array())
        .unwrap()[id]
        .to_string()
}

#[test]
fn unsupported_tokenizers_are_rejected_naming_the_file() {
    use tersor_gguf::{GgufWriter, Value};
    let build = |model: &str, pre: &str| {
        let mut w = GgufWriter::new(3, 32);
        w.add_metadata("general.architecture", Value::String("llama".into()));
        w.add_metadata("tokenizer.ggml.model", Value::String(model.into()));
        w.add_metadata("tokenizer.ggml.pre", Value::String(pre.into()));
        w.add_metadata(
            "tokenizer.ggml.tokens",
            Value::string_array(["a", "b", "ab"]),
        );
        w.add_metadata("tokenizer.ggml.merges", Value::string_array(["a b"]));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.gguf");
        w.write(&p, |_, _| Ok(())).unwrap();
        let g = GgufFile::open(&p).unwrap();
        (dir, tokenizer_json_from_gguf(&g).map_err(|e| e.to_string()))
    };
    let (_d, r) = build("llama", "default");
    let e = r.unwrap_err();
    assert!(e.contains("t.gguf") && e.contains("`llama`"), "{e}");
    let (_d, r) = build("gpt2", "klingon");
    let e = r.unwrap_err();
    assert!(e.contains("t.gguf") && e.contains("klingon"), "{e}");
    let (_d, r) = build("gpt2", "gpt2");
    let tok: Tokenizer = r.unwrap().parse().unwrap();
    assert_eq!(tok.encode("ab", false).unwrap().get_ids(), [2]);
}
