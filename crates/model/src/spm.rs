//! SentencePiece-style tokenization of GGUF `"llama"` vocabularies, as llama.cpp does it.
//!
//! llama.cpp does not run SentencePiece itself: `llm_tokenizer_spm_session`
//! (src/llama-vocab.cpp) splits the text into UTF-8 characters and repeatedly merges
//! the adjacent pair whose concatenation is a vocabulary token with the highest
//! score (ties: leftmost pair), then emits each remaining piece, falling back to
//! `<0xXX>` byte tokens for characters outside the vocabulary. Before that, special
//! tokens are cut out of the text (`tokenizer_st_partition`), a space is prepended
//! to each text fragment that starts the input or follows a special token (when
//! `add_space_prefix`), and spaces become `▁` (U+2581).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use crate::tokenizer::{token_type, GgufVocab};

/// SentencePiece tokenizer over a GGUF vocabulary (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct SpmTokenizer {
    tokens: Vec<String>,
    types: Vec<i32>,
    scores: Vec<f32>,
    ids: HashMap<String, u32>,
    /// Token id of each byte's `<0xXX>` token (unk if the vocabulary lacks it).
    byte_ids: [Option<u32>; 256],
    unk: Option<u32>,
    /// Special-token strings, longest first (llama.cpp's `cache_special_tokens` order).
    specials: Vec<(String, u32)>,
    add_space_prefix: bool,
}

/// A candidate merge of symbols `left` and `right` (llama.cpp's `llm_bigram_spm`).
#[derive(Debug, PartialEq)]
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    len: usize,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// A piece of the text being merged: byte range `start..start+len`, linked list.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl SpmTokenizer {
    pub(crate) fn new(v: &GgufVocab, ty: &dyn Fn(usize) -> i32) -> Result<Self, String> {
        let n = v.tokens.len();
        if !v.scores.is_empty() && v.scores.len() != n {
            return Err(format!(
                "tokenizer.ggml.scores has {} entries for {n} tokens",
                v.scores.len()
            ));
        }
        let mut ids = HashMap::with_capacity(n);
        for (i, t) in v.tokens.iter().enumerate() {
            // llama.cpp keeps the last id of a duplicated string.
            ids.insert(t.clone(), i as u32);
        }
        let mut byte_ids = [None; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = ids.get(&format!("<0x{b:02X}>")).copied();
        }
        let mut specials: Vec<(String, u32)> = (0..n)
            .filter(|&i| {
                matches!(
                    ty(i),
                    token_type::CONTROL | token_type::UNKNOWN | token_type::USER_DEFINED
                ) && !v.tokens[i].is_empty()
            })
            .map(|i| (v.tokens[i].clone(), i as u32))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Ok(Self {
            tokens: v.tokens.clone(),
            types: (0..n).map(ty).collect(),
            scores: if v.scores.is_empty() {
                vec![0.0; n]
            } else {
                v.scores.clone()
            },
            ids,
            byte_ids,
            unk: v.unk_id,
            specials,
            add_space_prefix: v.add_space_prefix.unwrap_or(true),
        })
    }

    pub(crate) fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Append the ids of `text` to `out` (no BOS/EOS).
    pub(crate) fn encode(&self, text: &str, out: &mut Vec<u32>) {
        let mut prev_special = true;
        for frag in self.partition(text) {
            match frag {
                Fragment::Special(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(s) => {
                    let mut t = String::with_capacity(s.len() + 3);
                    if self.add_space_prefix && prev_special {
                        t.push(' ');
                    }
                    t.push_str(s);
                    let t = t.replace(' ', "\u{2581}");
                    self.encode_piece(&t, out);
                    prev_special = false;
                }
            }
        }
    }

    /// Cut special-token strings out of `text`, one special token at a time, longest first.
    fn partition<'a>(&self, text: &'a str) -> Vec<Fragment<'a>> {
        let mut frags = vec![Fragment::Text(text)];
        for (s, id) in &self.specials {
            let mut next = Vec::with_capacity(frags.len());
            for f in frags {
                match f {
                    Fragment::Text(t) if t.contains(s.as_str()) => {
                        let mut rest = t;
                        while let Some(pos) = rest.find(s.as_str()) {
                            if pos > 0 {
                                next.push(Fragment::Text(&rest[..pos]));
                            }
                            next.push(Fragment::Special(*id));
                            rest = &rest[pos + s.len()..];
                        }
                        if !rest.is_empty() {
                            next.push(Fragment::Text(rest));
                        }
                    }
                    other => next.push(other),
                }
            }
            frags = next;
        }
        frags
    }

    /// Greedy highest-score bigram merging over one escaped text fragment.
    fn encode_piece(&self, text: &str, out: &mut Vec<u32>) {
        let mut syms: Vec<Symbol> = Vec::new();
        for (start, ch) in text.char_indices() {
            let i = syms.len();
            syms.push(Symbol {
                start,
                len: ch.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            });
            if i > 0 {
                syms[i - 1].next = Some(i);
            }
        }
        if syms.is_empty() {
            return;
        }
        let mut queue = BinaryHeap::new();
        let try_add = |queue: &mut BinaryHeap<Bigram>, syms: &[Symbol], l: usize, r: usize| {
            let len = syms[l].len + syms[r].len;
            let piece = &text[syms[l].start..syms[l].start + len];
            if let Some(&id) = self.ids.get(piece) {
                queue.push(Bigram {
                    left: l,
                    right: r,
                    score: self.scores[id as usize],
                    len,
                });
            }
        };
        for i in 1..syms.len() {
            try_add(&mut queue, &syms, i - 1, i);
        }
        while let Some(bg) = queue.pop() {
            let (l, r) = (bg.left, bg.right);
            // Stale entry: one side was merged since the bigram was queued.
            if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != bg.len {
                continue;
            }
            syms[l].len += syms[r].len;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            if let Some(n) = syms[r].next {
                syms[n].prev = Some(l);
            }
            if let Some(p) = syms[l].prev {
                try_add(&mut queue, &syms, p, l);
            }
            if let Some(n) = syms[l].next {
                try_add(&mut queue, &syms, l, n);
            }
        }
        let mut i = Some(0);
        while let Some(k) = i {
            let s = syms[k];
            let piece = &text[s.start..s.start + s.len];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                // Merged pieces are always tokens; only single characters can be
                // missing, and they fall back to their UTF-8 bytes.
                None => out.extend(
                    piece
                        .bytes()
                        .filter_map(|b| self.byte_ids[b as usize].or(self.unk)),
                ),
            }
            i = s.next;
        }
    }

    pub(crate) fn decode(&self, ids: &[u32]) -> Result<String, String> {
        let mut bytes = Vec::new();
        for &id in ids {
            let t = self.tokens.get(id as usize).ok_or_else(|| {
                format!("token id {id} out of range ({} tokens)", self.tokens.len())
            })?;
            if self.types[id as usize] == token_type::BYTE {
                if let Some(b) = t
                    .strip_prefix("<0x")
                    .and_then(|h| h.strip_suffix('>'))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    bytes.push(b);
                    continue;
                }
            }
            bytes.extend_from_slice(t.replace('\u{2581}', " ").as_bytes());
        }
        let mut s = String::from_utf8_lossy(&bytes).into_owned();
        if self.add_space_prefix && s.starts_with(' ') {
            s.remove(0);
        }
        Ok(s)
    }
}

#[derive(Clone, Copy, Debug)]
enum Fragment<'a> {
    Text(&'a str),
    Special(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> GgufVocab {
        // A toy SentencePiece vocabulary: <unk>, <s>, </s>, bytes, then pieces with scores.
        let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
        let mut types = vec![
            token_type::UNKNOWN,
            token_type::CONTROL,
            token_type::CONTROL,
        ];
        let mut scores = vec![0.0, 0.0, 0.0];
        for b in 0..256u32 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(token_type::BYTE);
            scores.push(0.0);
        }
        for (p, s) in [
            ("\u{2581}", -1.0),
            ("a", -2.0),
            ("b", -2.0),
            ("c", -2.0),
            ("ab", -1.5),
            ("bc", -0.5),
            ("\u{2581}a", -0.8),
            ("\u{2581}abc", -0.1),
        ] {
            tokens.push(p.to_string());
            types.push(token_type::NORMAL);
            scores.push(s);
        }
        GgufVocab {
            model: "llama".into(),
            tokens,
            token_types: types,
            scores,
            bos_id: Some(1),
            eos_id: Some(2),
            unk_id: Some(0),
            ..Default::default()
        }
    }

    fn id(v: &GgufVocab, s: &str) -> u32 {
        v.tokens.iter().position(|t| t == s).unwrap() as u32
    }

    #[test]
    fn merges_by_score_and_falls_back_to_bytes() {
        let v = vocab();
        let ty = |i: usize| v.token_types[i];
        let t = SpmTokenizer::new(&v, &ty).unwrap();
        let mut out = Vec::new();
        // "▁ab": bigrams ▁a (-0.8) and ab (-1.5): ▁a wins, and "▁ab" is not a token.
        t.encode("ab", &mut out);
        assert_eq!(out, vec![id(&v, "\u{2581}a"), id(&v, "b")]);
        // "▁abc": bc (-0.5) merges first, then ▁a, then ▁a+bc = ▁abc is a token.
        out.clear();
        t.encode("abc", &mut out);
        assert_eq!(out, vec![id(&v, "\u{2581}abc")]);
        // "é" is not in the vocabulary: two byte tokens for its UTF-8 encoding.
        out.clear();
        t.encode("é</s>a", &mut out);
        assert_eq!(
            out,
            vec![
                id(&v, "\u{2581}"),
                3 + 0xC3,
                3 + 0xA9,
                2,
                id(&v, "\u{2581}a")
            ]
        );
        assert_eq!(t.decode(&out).unwrap(), "é</s> a");
    }
}
