//! Text tokenizers: from GGUF metadata (reproducing llama.cpp's tokenization) or
//! from a Hugging Face `tokenizer.json`.
//!
//! GGUF byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`) become a
//! `tokenizers::Tokenizer`: the BPE model from `tokenizer.ggml.tokens` and
//! `tokenizer.ggml.merges`, and a pre-tokenizer that splits text with the regular
//! expressions llama.cpp's `llm_tokenizer_bpe` (src/llama-vocab.cpp) applies for
//! `tokenizer.ggml.pre`, one after the other, each match and each gap between
//! matches becoming a piece (llama.cpp's `unicode_regex_split`). SentencePiece
//! vocabularies (`"llama"`) are tokenized by [`crate::spm`], which follows
//! llama.cpp's `llm_tokenizer_spm_session`.

use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};
use crate::spm::SpmTokenizer;

/// llama.cpp's `llama_token_type` values stored in `tokenizer.ggml.token_type`.
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// The `tokenizer.ggml.*` metadata of a GGUF file.
#[derive(Clone, Debug, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE) or `llama` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name (BPE only).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (empty if absent: all normal).
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.scores` (SentencePiece; empty if absent).
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.merges` (`"left right"` strings, BPE).
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece).
    pub add_space_prefix: Option<bool>,
}

/// GPT-2's pre-tokenizer regex (the one llama.cpp implements by hand in
/// `unicode_regex_split_custom_gpt2`, including the final `\s+`).
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's pre-tokenizer regex (llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's pre-tokenizer regex (llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2`): Llama 3's
/// with single digits.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regex sequence llama.cpp's `llm_tokenizer_bpe` uses for a `tokenizer.ggml.pre`
/// value, and whether it sets `ignore_merges`. `None` for names this crate does not know.
fn bpe_pre_regexes(pre: &str) -> Option<(Vec<&'static str>, bool)> {
    Some(match pre {
        "gpt-2" | "gpt2" | "phi-2" | "roberta-bpe" | "mpt" | "olmo" | "jais" => {
            (vec![GPT2_REGEX], false)
        }
        // LLAMA_VOCAB_PRE_TYPE_SMOLLM (and STARCODER, REFACT, ...): single digits first.
        "smollm" | "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" => {
            (vec![r"\p{N}", GPT2_REGEX], false)
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" => {
            (vec![LLAMA3_REGEX], true)
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" | "stablelm2" => (vec![QWEN2_REGEX], false),
        // LLAMA_VOCAB_PRE_TYPE_DEFAULT (also used by llama.cpp when `pre` is missing).
        "default" => (
            vec![
                r"[\p{P}\$\+<=>\^~\|]+",
                GPT2_REGEX,
                r"\p{N}+",
                r"[0-9][0-9][0-9]",
            ],
            false,
        ),
        _ => return None,
    })
}

#[derive(Clone, Debug)]
enum Inner {
    Hf(Box<Tokenizer>),
    Spm(Box<SpmTokenizer>),
}

/// A text tokenizer with the model's BOS/EOS conventions.
#[derive(Clone, Debug)]
pub struct TextTokenizer {
    inner: Inner,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    source: PathBuf,
}

impl TextTokenizer {
    /// Build the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    /// `path` names the file in error messages.
    pub fn from_gguf_vocab(v: &GgufVocab, path: &Path) -> Result<Self> {
        let err = |msg: String| Error::Tokenizer {
            path: path.to_path_buf(),
            msg,
        };
        let n = v.tokens.len();
        if n == 0 {
            return Err(err("tokenizer.ggml.tokens is missing or empty".into()));
        }
        if !v.token_types.is_empty() && v.token_types.len() != n {
            return Err(err(format!(
                "tokenizer.ggml.token_type has {} entries for {n} tokens",
                v.token_types.len()
            )));
        }
        for (what, id) in [("bos", v.bos_id), ("eos", v.eos_id), ("unk", v.unk_id)] {
            if let Some(id) = id {
                if id as usize >= n {
                    return Err(err(format!(
                        "{what} token id {id} out of range ({n} tokens)"
                    )));
                }
            }
        }
        let ty = |i: usize| v.token_types.get(i).copied().unwrap_or(token_type::NORMAL);
        let inner = match v.model.as_str() {
            "gpt2" => Inner::Hf(Box::new(build_gguf_bpe(v, &ty, &err)?)),
            "llama" => Inner::Spm(Box::new(SpmTokenizer::new(v, &ty).map_err(err)?)),
            other => {
                return Err(err(format!(
                    "tokenizer model `{other}` is not supported (supported: gpt2, llama)"
                )))
            }
        };
        // llama.cpp's defaults when `add_bos_token` is absent: SentencePiece adds BOS,
        // BPE adds it only for the Llama 3 family.
        let default_add_bos = match v.model.as_str() {
            "llama" => true,
            _ => matches!(
                v.pre.as_deref(),
                Some("llama3" | "llama-v3" | "llama-bpe" | "falcon3")
            ),
        };
        let add_bos = v.add_bos.unwrap_or(default_add_bos);
        if add_bos && v.bos_id.is_none() {
            return Err(err(
                "add_bos_token is set but there is no BOS token id".into()
            ));
        }
        Ok(Self {
            inner,
            bos: v.bos_id,
            eos: v.eos_id,
            add_bos,
            source: path.to_path_buf(),
        })
    }

    /// Load `tokenizer.json` with explicit special-token conventions.
    pub fn from_file(
        path: &Path,
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos: bool,
    ) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::Tokenizer {
                path: path.to_path_buf(),
                msg: "tokenizer file not found".into(),
            });
        }
        let tok = Tokenizer::from_file(path).map_err(|e| Error::Tokenizer {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        Ok(Self {
            inner: Inner::Hf(Box::new(tok)),
            bos,
            eos,
            add_bos,
            source: path.to_path_buf(),
        })
    }

    /// Load `dir/tokenizer.json`, taking BOS/EOS from `tokenizer_config.json`
    /// (`bos_token`, `eos_token`, `add_bos_token`) or, failing that, from the
    /// token ids given (usually `config.json`'s `bos_token_id`/`eos_token_id`).
    /// Without an explicit `add_bos_token`, BOS is added when the tokenizer's own
    /// post-processor would add it.
    pub fn from_hf_dir(dir: &Path, bos_id: Option<u32>, eos_id: Option<u32>) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        let mut t = Self::from_file(&tj, bos_id, eos_id, false)?;
        let Inner::Hf(hf) = &t.inner else {
            unreachable!("from_file builds a Hugging Face tokenizer")
        };
        let cfg_path = dir.join("tokenizer_config.json");
        let mut add_bos = None;
        if cfg_path.is_file() {
            let cfg = crate::hf::read_json(&cfg_path)?;
            let token_id = |key: &str| -> Option<u32> {
                let v = cfg.get(key)?;
                let s = v.as_str().or_else(|| v.get("content")?.as_str())?;
                hf.token_to_id(s)
            };
            if let Some(id) = token_id("bos_token") {
                t.bos = Some(id);
            }
            if let Some(id) = token_id("eos_token") {
                t.eos = Some(id);
            }
            add_bos = cfg.get("add_bos_token").and_then(|v| v.as_bool());
        }
        t.add_bos = match add_bos {
            Some(b) => b,
            None => match t.bos {
                Some(bos) => {
                    let enc = hf.encode("a", true).map_err(|e| Error::Tokenizer {
                        path: tj.clone(),
                        msg: e.to_string(),
                    })?;
                    enc.get_ids().first() == Some(&bos)
                }
                None => false,
            },
        };
        if t.add_bos && t.bos.is_none() {
            return Err(Error::Tokenizer {
                path: cfg_path,
                msg: "add_bos_token is set but there is no BOS token".into(),
            });
        }
        Ok(t)
    }

    /// Token ids of `text`, with BOS in front when `add_bos` is true. Special-token
    /// strings in the text (e.g. `<|im_start|>`) become their ids, as with
    /// llama.cpp's `llama-tokenize` (which parses special tokens by default); no
    /// other special token (EOS, post-processor templates) is added.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if add_bos {
            ids.push(self.bos.ok_or_else(|| Error::Tokenizer {
                path: self.source.clone(),
                msg: "BOS requested but the tokenizer has no BOS token".into(),
            })?);
        }
        match &self.inner {
            Inner::Hf(t) => {
                let enc = t.encode_fast(text, false).map_err(|e| Error::Tokenizer {
                    path: self.source.clone(),
                    msg: e.to_string(),
                })?;
                ids.extend_from_slice(enc.get_ids());
            }
            Inner::Spm(t) => t.encode(text, &mut ids),
        }
        Ok(ids)
    }

    /// Text of `ids` (special tokens included as text).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.inner {
            Inner::Hf(t) => t.decode(ids, false).map_err(|e| Error::Tokenizer {
                path: self.source.clone(),
                msg: e.to_string(),
            }),
            Inner::Spm(t) => t.decode(ids).map_err(|msg| Error::Tokenizer {
                path: self.source.clone(),
                msg,
            }),
        }
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether the model expects BOS at the start of a sequence (GGUF
    /// `tokenizer.ggml.add_bos_token`, HF `add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Number of tokens, added tokens included.
    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Inner::Hf(t) => t.get_vocab_size(true),
            Inner::Spm(t) => t.vocab_size(),
        }
    }

    /// Where the tokenizer came from.
    pub fn source(&self) -> &Path {
        &self.source
    }
}

/// Byte-level BPE from GGUF metadata, with llama.cpp's pre-tokenizer for `pre`.
fn build_gguf_bpe(
    v: &GgufVocab,
    ty: &dyn Fn(usize) -> i32,
    err: &dyn Fn(String) -> Error,
) -> Result<Tokenizer> {
    let pre = v.pre.as_deref().unwrap_or("default");
    let (regexes, ignore_merges) = bpe_pre_regexes(pre).ok_or_else(|| {
        err(format!(
            "pre-tokenizer `{pre}` is not supported (supported: gpt-2, smollm, llama-bpe, qwen2, \
             default and their llama.cpp aliases)"
        ))
    })?;

    let mut vocab = tokenizers::models::bpe::Vocab::default();
    for (i, t) in v.tokens.iter().enumerate() {
        if vocab.insert(t.clone(), i as u32).is_some() {
            return Err(err(format!(
                "token {t:?} appears twice in tokenizer.ggml.tokens"
            )));
        }
    }
    let mut merges = Vec::with_capacity(v.merges.len());
    for m in &v.merges {
        let (a, b) = m.split_once(' ').ok_or_else(|| {
            err(format!(
                "merge {m:?} is not two tokens separated by a space"
            ))
        })?;
        merges.push((a.to_string(), b.to_string()));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| err(format!("cannot build BPE model: {e}")))?;

    let mut pieces: Vec<PreTokenizerWrapper> = Vec::new();
    for r in regexes {
        let split = Split::new(
            SplitPattern::Regex(r.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| err(format!("bad pre-tokenizer regex {r:?}: {e}")))?;
        pieces.push(split.into());
    }
    // Map bytes to GPT-2's printable characters after the regex splits.
    pieces.push(ByteLevel::new(false, false, false).into());

    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(Sequence::new(pieces)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    // Control and user-defined tokens are matched as whole strings before BPE
    // (llama.cpp's `tokenizer_st_partition`).
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (i, t) in v.tokens.iter().enumerate() {
        match ty(i) {
            token_type::CONTROL | token_type::UNKNOWN => {
                special.push(AddedToken::from(t.clone(), true))
            }
            token_type::USER_DEFINED => user.push(AddedToken::from(t.clone(), false)),
            _ => {}
        }
    }
    tok.add_special_tokens(&special);
    tok.add_tokens(&user);
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GPT-2 byte-level alphabet plus "12", "123" (with merges) and "abc" (no merges).
    fn vocab(pre: &str) -> GgufVocab {
        let mut tokens: Vec<String> = ByteLevel::alphabet()
            .into_iter()
            .map(String::from)
            .collect();
        tokens.sort();
        tokens.extend(["12", "123", "abc", "<|end|>"].map(String::from));
        let n = tokens.len();
        let mut token_types = vec![token_type::NORMAL; n];
        token_types[n - 1] = token_type::CONTROL;
        GgufVocab {
            model: "gpt2".into(),
            pre: Some(pre.into()),
            tokens,
            token_types,
            merges: vec!["1 2".into(), "12 3".into()],
            bos_id: Some((n - 1) as u32),
            eos_id: Some((n - 1) as u32),
            ..Default::default()
        }
    }

    fn pieces(pre: &str, text: &str) -> Vec<String> {
        let v = vocab(pre);
        let t = TextTokenizer::from_gguf_vocab(&v, Path::new("test.gguf")).unwrap();
        t.encode(text, false)
            .unwrap()
            .iter()
            .map(|&id| v.tokens[id as usize].clone())
            .collect()
    }

    #[test]
    fn pre_tokenizers_follow_llama_cpp() {
        // smollm / qwen2: every digit is its own piece, so no digit merges apply.
        assert_eq!(pieces("smollm", "123"), ["1", "2", "3"]);
        assert_eq!(pieces("qwen2", "123"), ["1", "2", "3"]);
        // gpt-2 and llama3 keep digit runs (llama3: up to 3) together.
        assert_eq!(pieces("gpt-2", "123"), ["123"]);
        assert_eq!(pieces("llama-bpe", "1234"), ["123", "4"]);
        // llama3 sets ignore_merges: a whole piece in the vocabulary is one token.
        assert_eq!(pieces("llama-bpe", "abc"), ["abc"]);
        assert_eq!(pieces("gpt-2", "abc"), ["a", "b", "c"]);
        // Control tokens are parsed in the text.
        assert_eq!(pieces("gpt-2", "1<|end|>2"), ["1", "<|end|>", "2"]);
    }

    #[test]
    fn bos_defaults_and_errors() {
        let p = Path::new("m.gguf");
        // llama3 adds BOS by default, gpt-2 does not; metadata overrides both.
        assert!(TextTokenizer::from_gguf_vocab(&vocab("llama-bpe"), p)
            .unwrap()
            .add_bos());
        assert!(!TextTokenizer::from_gguf_vocab(&vocab("gpt-2"), p)
            .unwrap()
            .add_bos());
        let mut v = vocab("gpt-2");
        v.add_bos = Some(true);
        let t = TextTokenizer::from_gguf_vocab(&v, p).unwrap();
        assert!(t.add_bos());
        assert_eq!(t.encode("1", true).unwrap()[0], t.bos_id().unwrap());

        let err = |v: GgufVocab| {
            TextTokenizer::from_gguf_vocab(&v, p)
                .unwrap_err()
                .to_string()
        };
        let msg = err(vocab("klingon"));
        assert!(msg.contains("m.gguf") && msg.contains("klingon"), "{msg}");
        let mut v = vocab("gpt-2");
        v.model = "bert".into();
        assert!(err(v).contains("`bert`"));
        let mut v = vocab("gpt-2");
        v.bos_id = Some(100_000);
        assert!(err(v).contains("out of range"));
        let mut v = vocab("gpt-2");
        v.merges.push("nospace".into());
        assert!(err(v).contains("nospace"));
        let msg =
            TextTokenizer::from_file(Path::new("/nonexistent/tokenizer.json"), None, None, false)
                .unwrap_err()
                .to_string();
        assert!(msg.contains("/nonexistent/tokenizer.json"), "{msg}");
    }
}
