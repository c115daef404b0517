//! Our GGUF tokenizer against llama.cpp's `llama-tokenize` ids (tests/fixtures/README.md).

mod common;

use std::path::Path;

use tersor_model::TextTokenizer;

fn reference(name: &str) -> Vec<u32> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .map(|l| l.trim().parse().expect("one integer per line"))
        .collect()
}

fn check(tok: &TextTokenizer, label: &str, text: &str, fixture: &str) {
    let ours = tok.encode(text, false).unwrap();
    let theirs = reference(fixture);
    if let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
        let lo = i.saturating_sub(5);
        panic!(
            "{label}: first difference at token {i}:\n ours     {:?}\n llama.cpp {:?}",
            &ours[lo..(i + 5).min(ours.len())],
            &theirs[lo..(i + 5).min(theirs.len())]
        );
    }
    assert_eq!(ours.len(), theirs.len(), "{label}: token counts differ");
    // Byte-level BPE is lossless.
    assert_eq!(
        tok.decode(&ours).unwrap(),
        text,
        "{label}: decode(encode(text)) != text"
    );
}

#[test]
fn default_gguf_tokenizer_matches_llama_tokenize() {
    let Some(assets) = common::assets() else {
        return;
    };
    let tok = TextTokenizer::from_gguf(&assets.join(common::DEFAULT_GGUF)).unwrap();
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert!(!tok.add_bos());
    assert_eq!(tok.vocab_size(), 49152);

    let read = |f: &str| std::fs::read_to_string(assets.join(f)).unwrap();
    check(
        &tok,
        "eval",
        &read("botchan_eval.txt"),
        "botchan_eval.llama-tokenize.txt",
    );
    check(
        &tok,
        "calib",
        &read("botchan_calib.txt"),
        "botchan_calib.llama-tokenize.txt",
    );
    let raw = std::fs::read(assets.join("botchan.txt")).unwrap();
    let head = std::str::from_utf8(&raw[..20_000]).unwrap();
    check(&tok, "head", head, "botchan_head20000.llama-tokenize.txt");

    // BOS on request; control tokens in the text are parsed as special tokens.
    let ids = tok.encode("<|im_start|>user", true).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(tok.decode(&ids[1..2]).unwrap(), "<|im_start|>");
    assert_eq!(tok.decode(&ids[1..]).unwrap(), "<|im_start|>user");
}
