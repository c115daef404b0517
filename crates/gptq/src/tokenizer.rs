//! Hugging Face tokenizer files from a GGUF file's `tokenizer.ggml.*` metadata, so a
//! checkpoint converted from GGUF can be loaded by `transformers` / vLLM.
//!
//! Only byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`) are supported.
//! The tokenizer reproduces llama.cpp's `llm_tokenizer_bpe` (src/llama-vocab.cpp): the
//! BPE model from `tokenizer.ggml.tokens` / `tokenizer.ggml.merges`; a pre-tokenizer
//! that applies, one after the other, the regular expressions llama.cpp uses for
//! `tokenizer.ggml.pre` (each match and each gap between matches becoming a piece, as
//! `unicode_regex_split` does), then maps bytes to GPT-2's printable alphabet; the
//! ByteLevel decoder; and control / user-defined tokens (token types 3 / 4) as added
//! tokens matched before BPE (llama.cpp's `tokenizer_st_partition`). It is the same
//! construction as `tersor-model`'s GGUF tokenizer, serialized by the `tokenizers`
//! crate so the JSON is exactly what that library (and Python `tokenizers`) reads.

use std::path::Path;

use serde_json::{json, Map, Value};
use tersor_gguf::GgufFile;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::error::{GptqError, Result};
use crate::write::{atomic_write, GptqWriter};

/// llama.cpp's `llama_token_type`: control tokens.
const TOKEN_CONTROL: i64 = 3;
/// llama.cpp's `llama_token_type`: user-defined tokens.
const TOKEN_USER_DEFINED: i64 = 4;
/// llama.cpp's `llama_token_type`: the unknown token (special, like control).
const TOKEN_UNKNOWN: i64 = 2;

/// GPT-2's regex as llama.cpp applies it (`unicode_regex_split_custom_gpt2` also
/// splits trailing whitespace, hence the final `\s+`).
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// `LLAMA_VOCAB_PRE_TYPE_LLAMA3` (the regex of Llama 3's tokenizer.json).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// `LLAMA_VOCAB_PRE_TYPE_QWEN2`: Llama 3's with single digits.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regex sequence of llama.cpp's `llm_tokenizer_bpe` for a `tokenizer.ggml.pre`
/// value and whether it sets `ignore_merges` (`llama_vocab::impl::load`).
fn pre_regexes(pre: &str) -> Option<(Vec<&'static str>, bool)> {
    Some(match pre {
        "gpt-2" | "gpt2" | "phi-2" | "roberta-bpe" | "mpt" | "olmo" | "jais" => {
            (vec![GPT2_REGEX], false)
        }
        // LLAMA_VOCAB_PRE_TYPE_SMOLLM / STARCODER / REFACT / ...: digits split first.
        "smollm" | "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" => {
            (vec![r"\p{N}", GPT2_REGEX], false)
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" => {
            (vec![LLAMA3_REGEX], true)
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" | "stablelm2" => (vec![QWEN2_REGEX], false),
        // LLAMA_VOCAB_PRE_TYPE_DEFAULT (also llama.cpp's choice when `pre` is missing).
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

/// The `tokenizer.ggml.*` metadata needed for the export.
struct Vocab {
    pre: String,
    tokens: Vec<String>,
    types: Vec<i64>,
    merges: Vec<String>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
    context_length: Option<u64>,
}

fn read_vocab(g: &GgufFile) -> Result<Vocab> {
    let err = |msg: String| GptqError::format(g.path(), msg);
    let model = g
        .get_str("tokenizer.ggml.model")
        .ok_or_else(|| err("no tokenizer in the metadata (`tokenizer.ggml.model`)".into()))?;
    if model != "gpt2" {
        return Err(err(format!(
            "tokenizer model `{model}` cannot be exported (only gpt2, byte-level BPE)"
        )));
    }
    let strings = |key: &str| -> Result<Vec<String>> {
        match g.get(key) {
            None => Ok(Vec::new()),
            Some(v) => v
                .as_string_array()
                .map(|a| a.into_iter().map(str::to_string).collect())
                .ok_or_else(|| err(format!("`{key}` is not an array of UTF-8 strings"))),
        }
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let n = tokens.len();
    if n == 0 {
        return Err(err("tokenizer.ggml.tokens is missing or empty".into()));
    }
    let types = match g.get("tokenizer.ggml.token_type") {
        None => Vec::new(),
        Some(v) => v
            .as_i64_array()
            .ok_or_else(|| err("`tokenizer.ggml.token_type` is not an integer array".into()))?,
    };
    if !types.is_empty() && types.len() != n {
        return Err(err(format!(
            "tokenizer.ggml.token_type has {} entries for {n} tokens",
            types.len()
        )));
    }
    let id = |key: &str| -> Result<Option<u32>> {
        match g.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u32() {
                Some(i) if (i as usize) < n => Ok(Some(i)),
                _ => Err(err(format!("`{key}` = {v:?} is not a token id below {n}"))),
            },
        }
    };
    let flag = |key: &str| -> Result<Option<bool>> {
        match g.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| err(format!("`{key}` is not a boolean"))),
        }
    };
    let pre = g
        .get_str("tokenizer.ggml.pre")
        .unwrap_or("default")
        .to_string();
    // llama.cpp's default for BPE: add BOS only for the Llama 3 family.
    let default_add_bos = matches!(
        pre.as_str(),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3"
    );
    let bos = id("tokenizer.ggml.bos_token_id")?;
    let add_bos = flag("tokenizer.ggml.add_bos_token")?.unwrap_or(default_add_bos);
    if add_bos && bos.is_none() {
        return Err(err(
            "add_bos_token is set but there is no BOS token id".into()
        ));
    }
    let eos = id("tokenizer.ggml.eos_token_id")?;
    let add_eos = flag("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    if add_eos && eos.is_none() {
        return Err(err(
            "add_eos_token is set but there is no EOS token id".into()
        ));
    }
    let context_length = g
        .get_str("general.architecture")
        .and_then(|a| g.get_u64(&format!("{a}.context_length")));
    Ok(Vocab {
        merges: strings("tokenizer.ggml.merges")?,
        unk: id("tokenizer.ggml.unknown_token_id")?,
        pad: id("tokenizer.ggml.padding_token_id")?,
        chat_template: g.get_str("tokenizer.chat_template").map(str::to_string),
        pre,
        tokens,
        types,
        bos,
        eos,
        add_bos,
        add_eos,
        context_length,
    })
}

fn build(v: &Vocab, path: &Path) -> Result<Tokenizer> {
    let err = |msg: String| GptqError::format(path, msg);
    let (regexes, ignore_merges) = pre_regexes(&v.pre).ok_or_else(|| {
        err(format!(
            "pre-tokenizer `{}` is not supported (supported: gpt-2, smollm, llama-bpe, qwen2, \
             default and their llama.cpp aliases)",
            v.pre
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
        .map_err(|e| err(format!("cannot build the BPE model: {e}")))?;

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
    pieces.push(ByteLevel::new(false, false, false).into());

    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(Sequence::new(pieces)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    let ty = |i: usize| v.types.get(i).copied().unwrap_or(1);
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (i, t) in v.tokens.iter().enumerate() {
        match ty(i) {
            TOKEN_CONTROL | TOKEN_UNKNOWN => special.push(AddedToken::from(t.clone(), true)),
            TOKEN_USER_DEFINED => user.push(AddedToken::from(t.clone(), false)),
            _ => {}
        }
    }
    tok.add_special_tokens(&special);
    tok.add_tokens(&user);

    // BOS / EOS the way `transformers` adds them: a template post-processor.
    if v.add_bos || v.add_eos {
        let name = |id: Option<u32>| id.map(|i| v.tokens[i as usize].clone());
        let (bos, eos) = (
            name(v.bos).filter(|_| v.add_bos),
            name(v.eos).filter(|_| v.add_eos),
        );
        let wrap = |seq: &str, type_id: u32| {
            let mut parts = Vec::new();
            if let Some(b) = &bos {
                parts.push(format!("{b}:{type_id}"));
            }
            parts.push(format!("{seq}:{type_id}"));
            if let Some(e) = &eos {
                parts.push(format!("{e}:{type_id}"));
            }
            parts.join(" ")
        };
        let mut specials = Vec::new();
        if let (Some(b), Some(id)) = (&bos, v.bos) {
            specials.push((b.clone(), id));
        }
        if let (Some(e), Some(id)) = (&eos, v.eos) {
            if bos.as_deref() != Some(e) {
                specials.push((e.clone(), id));
            }
        }
        let single = wrap("$A", 0);
        let pair = format!("{single} {}", wrap("$B", 1));
        let post = TemplateProcessing::builder()
            .try_single(single)
            .and_then(|b| b.try_pair(pair))
            .map_err(|e| err(format!("cannot build the BOS/EOS template: {e}")))?
            .special_tokens(specials)
            .build()
            .map_err(|e| err(format!("cannot build the BOS/EOS template: {e}")))?;
        tok.with_post_processor(Some(post));
    }
    Ok(tok)
}

/// `tokenizer.json` for the byte-level BPE tokenizer in a GGUF file's metadata (see
/// the module docs). Errors name the file: not a `gpt2` tokenizer, an unknown
/// `tokenizer.ggml.pre`, malformed metadata.
pub fn tokenizer_json_from_gguf(gguf: &GgufFile) -> Result<String> {
    let v = read_vocab(gguf)?;
    build(&v, gguf.path())?
        .to_string(true)
        .map_err(|e| GptqError::format(gguf.path(), format!("cannot serialize tokenizer: {e}")))
}

/// The three tokenizer files of a Hugging Face model directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HfTokenizerFiles {
    /// `tokenizer.json`.
    pub tokenizer_json: String,
    /// `tokenizer_config.json`: BOS/EOS/UNK/PAD strings, `add_bos_token`,
    /// `add_eos_token`, the chat template, `PreTrainedTokenizerFast`.
    pub tokenizer_config_json: String,
    /// `special_tokens_map.json`.
    pub special_tokens_map_json: String,
}

/// `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` for the
/// tokenizer of a GGUF file.
pub fn tokenizer_files_from_gguf(gguf: &GgufFile) -> Result<HfTokenizerFiles> {
    let v = read_vocab(gguf)?;
    let tok = build(&v, gguf.path())?;
    let tokenizer_json = tok
        .to_string(true)
        .map_err(|e| GptqError::format(gguf.path(), format!("cannot serialize tokenizer: {e}")))?;
    let name = |id: Option<u32>| id.map(|i| Value::String(v.tokens[i as usize].clone()));
    let mut special_map = Map::new();
    for (key, id) in [
        ("bos_token", v.bos),
        ("eos_token", v.eos),
        ("unk_token", v.unk),
        ("pad_token", v.pad),
    ] {
        if let Some(s) = name(id) {
            special_map.insert(key.into(), s);
        }
    }
    let mut added = Map::new();
    for (i, t) in v.tokens.iter().enumerate() {
        let ty = v.types.get(i).copied().unwrap_or(1);
        if matches!(ty, TOKEN_CONTROL | TOKEN_UNKNOWN | TOKEN_USER_DEFINED) {
            added.insert(
                i.to_string(),
                json!({
                    "content": t,
                    "lstrip": false,
                    "normalized": false,
                    "rstrip": false,
                    "single_word": false,
                    "special": ty != TOKEN_USER_DEFINED,
                }),
            );
        }
    }
    let mut cfg = special_map.clone();
    cfg.insert("add_bos_token".into(), v.add_bos.into());
    cfg.insert("add_eos_token".into(), v.add_eos.into());
    cfg.insert("added_tokens_decoder".into(), Value::Object(added));
    cfg.insert("clean_up_tokenization_spaces".into(), false.into());
    cfg.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
    if let Some(n) = v.context_length {
        cfg.insert("model_max_length".into(), n.into());
    }
    if let Some(t) = &v.chat_template {
        cfg.insert("chat_template".into(), t.clone().into());
    }
    let pretty = |m: Map<String, Value>| {
        serde_json::to_string_pretty(&Value::Object(m)).expect("JSON of strings")
    };
    Ok(HfTokenizerFiles {
        tokenizer_json,
        tokenizer_config_json: pretty(cfg),
        special_tokens_map_json: pretty(special_map),
    })
}

impl HfTokenizerFiles {
    /// Queues the three files in a [`GptqWriter`] (written before `config.json`).
    pub fn add_to(&self, w: &mut GptqWriter) -> Result<()> {
        for (name, text) in self.files() {
            w.add_file(name, text.to_string())?;
        }
        Ok(())
    }

    /// Writes the three files into `dir` (each atomically).
    pub fn write(&self, dir: &Path) -> Result<()> {
        for (name, text) in self.files() {
            atomic_write(&dir.join(name), text.as_bytes())?;
        }
        Ok(())
    }

    fn files(&self) -> [(&'static str, &str); 3] {
        [
            ("tokenizer.json", &self.tokenizer_json),
            ("tokenizer_config.json", &self.tokenizer_config_json),
            ("special_tokens_map.json", &self.special_tokens_map_json),
        ]
    }
}
