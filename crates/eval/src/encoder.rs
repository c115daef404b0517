//! Sentence-encoder evaluation: how close a model's sentence embeddings are
//! to a reference's, by cosine similarity.

use std::time::Instant;

use serde::Serialize;

use crate::{EvalError, SentenceEncoder};

/// Settings of an encoder evaluation.
#[derive(Clone, Debug)]
pub struct EncoderConfig {
    /// Embed at most this many sentences (the first ones of the text).
    pub max_sentences: Option<usize>,
    /// Sentences per model call.
    pub batch: usize,
    /// Sentences with fewer words are skipped.
    pub min_words: usize,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            max_sentences: None,
            batch: 32,
            min_words: 3,
        }
    }
}

/// The figures of an encoder evaluation.
#[derive(Clone, Debug, Serialize)]
pub struct EncoderReport {
    pub sentences: usize,
    pub dim: usize,
    /// Mean over sentences of cos(model embedding, reference embedding).
    pub mean_cosine: f64,
    pub median_cosine: f64,
    pub min_cosine: f64,
    /// The sentence with the lowest similarity.
    pub min_sentence: String,
    pub eval_seconds: f64,
}

/// Split a text into sentences: a sentence ends at `.`, `!` or `?`, possibly
/// followed by closing quotes or brackets, when whitespace (or the end of the
/// text) comes next. Runs of whitespace (hard line wraps) become one space;
/// sentences of fewer than `min_words` words are dropped. Abbreviations such
/// as "Mr." end a sentence too: the rule is simple on purpose, since the same
/// sentences go to the model and to the reference.
pub fn split_sentences(text: &str, min_words: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut flush = |cur: &mut String| {
        let s = cur.split_whitespace().collect::<Vec<_>>().join(" ");
        if s.split(' ').filter(|w| !w.is_empty()).count() >= min_words.max(1) {
            out.push(s);
        }
        cur.clear();
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        cur.push(c);
        i += 1;
        if matches!(c, '.' | '!' | '?') {
            // Keep further terminators and closing quotes/brackets: `?!`, `."`, `.)`.
            while i < chars.len()
                && matches!(
                    chars[i],
                    '.' | '!' | '?' | '"' | '\'' | ')' | ']' | '\u{201d}' | '\u{2019}'
                )
            {
                cur.push(chars[i]);
                i += 1;
            }
            if i == chars.len() || chars[i].is_whitespace() {
                flush(&mut cur);
            }
        }
    }
    flush(&mut cur);
    out
}

/// Cosine similarity in f64; `None` when either vector has zero norm.
pub(crate) fn cosine(a: &[f32], b: &[f32]) -> Option<f64> {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    (aa > 0.0 && bb > 0.0).then(|| ab / (aa.sqrt() * bb.sqrt()))
}

/// Embed the sentences of `text` with `model` and `reference` and compare.
/// `progress(done, total)` is called after each batch.
pub fn encoder_similarity(
    model: &dyn SentenceEncoder,
    reference: &dyn SentenceEncoder,
    text: &str,
    cfg: &EncoderConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EncoderReport, EvalError> {
    if cfg.batch == 0 {
        return Err(EvalError::Config("batch must be at least 1".into()));
    }
    if cfg.max_sentences == Some(0) {
        return Err(EvalError::Config("max sentences must be at least 1".into()));
    }
    let mut sentences = split_sentences(text, cfg.min_words);
    if let Some(m) = cfg.max_sentences {
        sentences.truncate(m);
    }
    if sentences.is_empty() {
        return Err(EvalError::NoSentences {
            min_words: cfg.min_words,
        });
    }
    let total = sentences.len();
    let t0 = Instant::now();
    let mut sims = Vec::with_capacity(total);
    let mut dim = None;
    progress(0, total);
    for (bi, chunk) in sentences.chunks(cfg.batch).enumerate() {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let a = model.embed(&refs).map_err(EvalError::model("model"))?;
        let b = reference
            .embed(&refs)
            .map_err(EvalError::model("reference"))?;
        for (name, e) in [("model", &a), ("reference", &b)] {
            if e.len() != refs.len() {
                return Err(EvalError::Shape {
                    model: name,
                    got: e.len(),
                    expected: refs.len(),
                    what: "embeddings, one per sentence".into(),
                });
            }
        }
        for (k, (x, y)) in a.iter().zip(&b).enumerate() {
            let sentence = bi * cfg.batch + k;
            let bad = |model: &'static str, problem: String| EvalError::Embedding {
                model,
                sentence,
                problem,
            };
            let d = *dim.get_or_insert(x.len());
            for (name, e) in [("model", x), ("reference", y)] {
                if e.len() != d || d == 0 {
                    return Err(bad(
                        name,
                        format!("has dimension {}, expected {d}", e.len()),
                    ));
                }
                if e.iter().any(|v| !v.is_finite()) {
                    return Err(bad(name, "is not finite".into()));
                }
            }
            let c = cosine(x, y)
                .ok_or_else(|| bad("model or reference", "is the zero vector".into()))?;
            sims.push(c);
        }
        progress((bi * cfg.batch + chunk.len()).min(total), total);
    }
    let (imin, &min) = sims
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .expect("at least one sentence");
    let mut sorted = sims.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(EncoderReport {
        sentences: total,
        dim: dim.unwrap_or(0),
        mean_cosine: sims.iter().sum::<f64>() / total as f64,
        median_cosine: crate::stats::median(&sorted),
        min_cosine: min,
        min_sentence: sentences[imin].clone(),
        eval_seconds: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxError;

    #[test]
    fn sentences_split_on_terminators_followed_by_space() {
        let text = "It was a dark night.  The wind\nhowled loudly!  Who is there? \"I am here,\" he said. \
                    Mr. Smith came. e.g.this stays together. Ok.\n\nThe end of it all";
        let s = split_sentences(text, 3);
        assert_eq!(
            s,
            vec![
                "It was a dark night.",
                "The wind howled loudly!",
                "Who is there?",
                "\"I am here,\" he said.",
                // "Mr.", "Smith came." and "Ok." are too short.
                "e.g.this stays together.",
                "The end of it all",
            ]
        );
        assert_eq!(split_sentences("  \n ", 1), Vec::<String>::new());
        assert_eq!(
            split_sentences("Yes.\" No!) Hm?", 1),
            vec!["Yes.\"", "No!)", "Hm?"]
        );
    }

    /// Embeds a sentence as (word count, letter count, 1), optionally rotated.
    struct Toy {
        turn: f32,
    }

    impl SentenceEncoder for Toy {
        fn embed(&self, s: &[&str]) -> Result<Vec<Vec<f32>>, BoxError> {
            Ok(s.iter()
                .map(|s| {
                    let (w, l) = (s.split(' ').count() as f32, s.len() as f32);
                    let (c, si) = (self.turn.cos(), self.turn.sin());
                    vec![c * w - si * l, si * w + c * l, 1.0]
                })
                .collect())
        }
    }

    #[test]
    fn identical_encoders_have_cosine_one() {
        let text = "One two three. Four five six seven. Eight nine ten eleven twelve.";
        let r = encoder_similarity(
            &Toy { turn: 0.0 },
            &Toy { turn: 0.0 },
            text,
            &EncoderConfig::default(),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(r.sentences, 3);
        assert_eq!(r.dim, 3);
        assert!((r.mean_cosine - 1.0).abs() < 1e-12 && (r.min_cosine - 1.0).abs() < 1e-12);
    }

    #[test]
    fn cosine_matches_the_closed_form() {
        // Rotating the first two coordinates by θ: cos = (|u|² cos θ + 1) / (|u|² + 1)
        // with u = (words, letters).
        let text = "One two three. Four five six seven.";
        let theta = 0.5f32;
        let cfg = EncoderConfig {
            batch: 1,
            ..Default::default()
        };
        let r = encoder_similarity(
            &Toy { turn: theta },
            &Toy { turn: 0.0 },
            text,
            &cfg,
            &mut |_, _| {},
        )
        .unwrap();
        let expect = |w: f64, l: f64| {
            let n2 = w * w + l * l;
            (n2 * f64::from(theta).cos() + 1.0) / (n2 + 1.0)
        };
        let (a, b) = (expect(3.0, 14.0), expect(4.0, 20.0));
        assert!(
            (r.mean_cosine - (a + b) / 2.0).abs() < 1e-6,
            "{} vs {}",
            r.mean_cosine,
            (a + b) / 2.0
        );
        assert!((r.min_cosine - a.min(b)).abs() < 1e-6);
        assert_eq!(
            r.min_sentence,
            if a < b {
                "One two three."
            } else {
                "Four five six seven."
            }
        );
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 2.0]), Some(0.0));
        assert_eq!(cosine(&[0.0, 0.0], &[0.0, 2.0]), None);
    }

    #[test]
    fn max_sentences_caps_and_empty_text_is_an_error() {
        let text = "A b c. D e f. G h i. J k l.";
        let cfg = EncoderConfig {
            max_sentences: Some(2),
            ..Default::default()
        };
        let mut calls = Vec::new();
        let r = encoder_similarity(
            &Toy { turn: 0.0 },
            &Toy { turn: 0.0 },
            text,
            &cfg,
            &mut |d, t| calls.push((d, t)),
        )
        .unwrap();
        assert_eq!(r.sentences, 2);
        assert_eq!(calls.last(), Some(&(2, 2)));
        let err = encoder_similarity(
            &Toy { turn: 0.0 },
            &Toy { turn: 0.0 },
            "hi. yo.",
            &EncoderConfig::default(),
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(matches!(err, EvalError::NoSentences { min_words: 3 }));
    }

    #[test]
    fn bad_embeddings_are_errors() {
        struct Bad(Vec<f32>);
        impl SentenceEncoder for Bad {
            fn embed(&self, s: &[&str]) -> Result<Vec<Vec<f32>>, BoxError> {
                Ok(vec![self.0.clone(); s.len()])
            }
        }
        let text = "One two three.";
        let cfg = EncoderConfig::default();
        let ok = Bad(vec![1.0, 2.0, 3.0]);
        for bad in [vec![1.0, 2.0], vec![f32::NAN, 1.0, 1.0], vec![0.0; 3]] {
            let e = encoder_similarity(&Bad(bad), &ok, text, &cfg, &mut |_, _| {});
            assert!(
                matches!(e, Err(EvalError::Embedding { sentence: 0, .. })),
                "{e:?}"
            );
        }
    }
}
