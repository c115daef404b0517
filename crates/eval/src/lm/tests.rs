//! Closed-form checks of the perplexity / KL code on toy models.

use std::sync::Mutex;

use super::*;
use crate::BoxError;

/// Every logit 0: every token has probability 1/V.
struct Uniform {
    vocab: usize,
}

impl CausalLm for Uniform {
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn logits(&self, windows: &[&[u32]], from: usize) -> Result<Vec<f32>, BoxError> {
        Ok(vec![
            0.0;
            windows.len() * (windows[0].len() - from) * self.vocab
        ])
    }
}

/// Peeks at the window: at position p it gives logit `a(p)` to the token that
/// really follows in the window, `w[p + 1]`, and 0 to the others. So the
/// scored token at position p has probability e^a / (e^a + V - 1), and the
/// test can tell which rows were scored against which tokens.
struct Peek {
    vocab: usize,
    a: fn(usize) -> f32,
}

impl CausalLm for Peek {
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn logits(&self, windows: &[&[u32]], from: usize) -> Result<Vec<f32>, BoxError> {
        let mut out = Vec::new();
        for w in windows {
            for p in from..w.len() {
                let mut row = vec![0.0f32; self.vocab];
                if p + 1 < w.len() {
                    row[w[p + 1] as usize] = (self.a)(p);
                }
                out.extend(row);
            }
        }
        Ok(out)
    }
}

/// NLL of the right token under `Peek` with logit `a`.
fn peek_nll(a: f32, vocab: usize) -> f64 {
    let a = f64::from(a);
    (vocab as f64 - 1.0 + a.exp()).ln() - a
}

/// Records the windows it is given.
struct Recorder<'a> {
    inner: &'a dyn CausalLm,
    calls: Mutex<Vec<(Vec<Vec<u32>>, usize)>>,
}

impl CausalLm for Recorder<'_> {
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn logits(&self, windows: &[&[u32]], from: usize) -> Result<Vec<f32>, BoxError> {
        self.calls
            .lock()
            .unwrap()
            .push((windows.iter().map(|w| w.to_vec()).collect(), from));
        self.inner.logits(windows, from)
    }
}

/// Returns whatever it was built with, whatever it is asked.
struct Fixed(usize, Vec<f32>);

impl CausalLm for Fixed {
    fn vocab_size(&self) -> usize {
        self.0
    }
    fn logits(&self, _: &[&[u32]], _: usize) -> Result<Vec<f32>, BoxError> {
        Ok(self.1.clone())
    }
}

/// One token per byte, BOS = 256 when `bos` is set.
struct Bytes {
    bos: bool,
}

impl LmTokenizer for Bytes {
    fn encode(&self, text: &str) -> Result<Vec<u32>, BoxError> {
        let mut t: Vec<u32> = self.bos.then_some(256).into_iter().collect();
        t.extend(text.bytes().map(u32::from));
        Ok(t)
    }
    fn window_bos(&self) -> Option<u32> {
        self.bos.then_some(256)
    }
    fn decoded_len(&self, tokens: &[u32]) -> Result<usize, BoxError> {
        Ok(tokens.iter().filter(|&&t| t < 256).count())
    }
}

/// A token sequence with no 0 (so a uniform model's argmax, token 0, is never right).
fn toy_tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|i| 1 + (i * 7919 % (vocab - 1)) as u32)
        .collect()
}

fn cfg(ctx: usize, scoring: Scoring) -> PerplexityConfig {
    PerplexityConfig {
        ctx,
        max_windows: None,
        scoring,
        batch: 1,
    }
}

fn run(
    model: &dyn CausalLm,
    reference: Option<&dyn CausalLm>,
    tokens: &[u32],
    bos: Option<u32>,
    cfg: &PerplexityConfig,
) -> Result<(PerplexityReport, Vec<ScoredToken>), EvalError> {
    let mut scored = Vec::new();
    let r = score_tokens(
        model,
        reference,
        tokens,
        bos,
        cfg,
        &mut |t| Ok(t.len()),
        &mut |_, _| {},
        &mut |s| scored.push(s),
    )?;
    Ok((r, scored))
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs()
}

#[test]
fn uniform_logits_give_perplexity_equal_to_the_vocabulary() {
    for vocab in [2usize, 300, 49152] {
        let tokens = toy_tokens(200, vocab);
        let (r, _) = run(
            &Uniform { vocab },
            None,
            &tokens,
            None,
            &cfg(32, Scoring::SecondHalf),
        )
        .unwrap();
        assert!(
            close(r.perplexity, vocab as f64, 1e-12),
            "{} vs {vocab}",
            r.perplexity
        );
        assert!(close(r.bits_per_token, (vocab as f64).log2(), 1e-12));
        assert!(r.perplexity_uncertainty < 1e-6 * r.perplexity);
        // 200 / 32 = 6 windows, 32 - 1 - 16 = 15 scored tokens each.
        assert_eq!((r.windows, r.scored_tokens, r.text_tokens), (6, 90, 200));
    }
}

#[test]
fn perplexity_is_one_over_the_probability_of_the_right_token() {
    let vocab = 100;
    for p in [0.3f64, 0.9] {
        // e^a / (e^a + V - 1) = p.
        let a = (p * (vocab as f64 - 1.0) / (1.0 - p)).ln() as f32;
        let model = Peek {
            vocab,
            a: if p < 0.5 {
                |_| (0.3f64 * 99.0 / 0.7).ln() as f32
            } else {
                |_| (0.9f64 * 99.0 / 0.1).ln() as f32
            },
        };
        assert_eq!((model.a)(0), a);
        let tokens = toy_tokens(500, vocab);
        let (r, _) = run(&model, None, &tokens, None, &cfg(64, Scoring::SecondHalf)).unwrap();
        assert!(
            close(r.perplexity, 1.0 / p, 1e-6),
            "{} vs {}",
            r.perplexity,
            1.0 / p
        );
        assert!(close(r.nll_mean, peek_nll(a, vocab), 1e-6));
    }
}

/// The (window, position, target) triples llama.cpp's perplexity() scores:
/// for chunk i, `process_logits` over `tokens + start + first` with
/// `n_ctx - 1 - first` tokens, i.e. logits j in first..n_ctx-1 against
/// tokens[i*n_ctx + j + 1].
fn llama_cpp_second_half(
    n_tokens: usize,
    ctx: usize,
    n_chunks: Option<usize>,
) -> Vec<(usize, usize, usize)> {
    let n_chunk_max = n_tokens / ctx;
    let n_chunk = n_chunks.map_or(n_chunk_max, |c| c.min(n_chunk_max));
    let first = ctx / 2;
    let mut v = Vec::new();
    for i in 0..n_chunk {
        for j in first..ctx - 1 {
            v.push((i, j, i * ctx + j + 1));
        }
    }
    v
}

#[test]
fn second_half_scores_exactly_llama_cpp_positions() {
    let vocab = 50;
    // Position-dependent confidence, so a shifted or missing row changes the total.
    let model = Peek {
        vocab,
        a: |p| 0.1 * p as f32,
    };
    for (n, ctx, chunks) in [
        (100usize, 16usize, None),
        (100, 17, None),
        (1000, 64, Some(3)),
        (128, 64, None),
    ] {
        let tokens = toy_tokens(n, vocab);
        let mut c = cfg(ctx, Scoring::SecondHalf);
        c.max_windows = chunks;
        let (r, scored) = run(&model, None, &tokens, None, &c).unwrap();
        let expected = llama_cpp_second_half(n, ctx, chunks);
        let got: Vec<(usize, usize, usize)> = scored
            .iter()
            .map(|s| (s.window, s.position, s.window * ctx + s.position + 1))
            .collect();
        assert_eq!(got, expected, "n {n} ctx {ctx}");
        for s in &scored {
            assert_eq!(s.target, tokens[s.window * ctx + s.position + 1]);
            assert!((s.nll - peek_nll(0.1 * s.position as f32, vocab)).abs() < 1e-6);
        }
        let total: f64 = expected
            .iter()
            .map(|&(_, j, _)| peek_nll(0.1 * j as f32, vocab))
            .sum();
        assert!(close(r.nll_mean, total / expected.len() as f64, 1e-6));
        assert_eq!(r.scored_tokens, expected.len());
    }
}

#[test]
fn full_scoring_scores_every_prediction() {
    let vocab = 50;
    let tokens = toy_tokens(100, vocab);
    let (r, scored) = run(
        &Uniform { vocab },
        None,
        &tokens,
        None,
        &cfg(16, Scoring::Full),
    )
    .unwrap();
    let expected: Vec<(usize, usize)> = (0..6).flat_map(|w| (0..15).map(move |p| (w, p))).collect();
    let got: Vec<(usize, usize)> = scored.iter().map(|s| (s.window, s.position)).collect();
    assert_eq!(got, expected);
    assert_eq!(r.scored_tokens, 90);
}

#[test]
fn stride_scoring_follows_perplexity_v2() {
    let vocab = 50;
    let (n, ctx, stride) = (100usize, 16usize, 5usize);
    let tokens = toy_tokens(n, vocab);
    let recorder = Recorder {
        inner: &Uniform { vocab },
        calls: Mutex::new(Vec::new()),
    };
    let (_, scored) = run(
        &recorder,
        None,
        &tokens,
        None,
        &cfg(ctx, Scoring::Stride(stride)),
    )
    .unwrap();
    // perplexity_v2(): n_chunk = (n - ctx + stride - 1) / stride, start = i*stride,
    // j in n_ctx - stride - 1 .. n_ctx - 1 against tokens[start + j + 1].
    #[allow(clippy::manual_div_ceil)] // spelled as in perplexity_v2
    let n_chunk = (n - ctx + stride - 1) / stride;
    let mut expected = Vec::new();
    for i in 0..n_chunk {
        for j in ctx - stride - 1..ctx - 1 {
            expected.push((i, j, tokens[i * stride + j + 1]));
        }
    }
    let got: Vec<(usize, usize, u32)> = scored
        .iter()
        .map(|s| (s.window, s.position, s.target))
        .collect();
    assert_eq!(got, expected);
    // Every token after the first window's context is scored exactly once.
    let targets: Vec<usize> = scored
        .iter()
        .map(|s| s.window * stride + s.position + 1)
        .collect();
    assert_eq!(
        targets,
        (ctx - stride..ctx - stride + targets.len()).collect::<Vec<_>>()
    );
    let calls = recorder.calls.lock().unwrap();
    assert_eq!(calls.len(), n_chunk);
    for (i, (w, from)) in calls.iter().enumerate() {
        assert_eq!(w[0], tokens[i * stride..i * stride + ctx]);
        assert_eq!(*from, ctx - stride - 1);
    }
}

#[test]
fn windows_get_bos_first_when_the_model_adds_bos() {
    let vocab = 257;
    let tokenizer = Bytes { bos: true };
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(4);
    let tokens = tokenizer.encode(&text).unwrap();
    let recorder = Recorder {
        inner: &Uniform { vocab },
        calls: Mutex::new(Vec::new()),
    };
    let mut c = cfg(32, Scoring::SecondHalf);
    c.batch = 2;
    let r = perplexity(
        Lm {
            model: &recorder,
            tokenizer: &tokenizer,
        },
        None,
        &text,
        &c,
        &mut |_, _| {},
    )
    .unwrap();
    assert!(r.add_bos);
    assert_eq!(r.windows, tokens.len() / 32);
    let calls = recorder.calls.lock().unwrap();
    let windows: Vec<&Vec<u32>> = calls.iter().flat_map(|(w, _)| w).collect();
    assert_eq!(windows.len(), r.windows);
    for (i, w) in windows.iter().enumerate() {
        assert_eq!(w[0], 256);
        assert_eq!(w[1..], tokens[i * 32 + 1..(i + 1) * 32]);
    }
    assert!(calls.iter().all(|(_, from)| *from == 16));
}

#[test]
fn bits_per_byte_counts_the_bytes_of_the_scored_tokens() {
    let vocab = 257;
    let tokenizer = Bytes { bos: false };
    let text = format!(
        "{}\n",
        "Botchan went to Shikoku to teach mathematics. ".repeat(10)
    );
    let lm = Lm {
        model: &Uniform { vocab },
        tokenizer: &tokenizer,
    };
    let r = perplexity(
        lm,
        None,
        &text,
        &cfg(64, Scoring::SecondHalf),
        &mut |_, _| {},
    )
    .unwrap();
    // One trailing newline is dropped, as llama.cpp does when reading -f.
    assert_eq!(r.text_tokens, text.len() - 1);
    assert_eq!(r.scored_bytes, r.scored_tokens);
    assert!(close(r.bits_per_byte, (vocab as f64).log2(), 1e-12));

    // A tokenizer whose tokens are two bytes each halves bits per byte.
    struct TwoBytes;
    impl LmTokenizer for TwoBytes {
        fn encode(&self, text: &str) -> Result<Vec<u32>, BoxError> {
            Bytes { bos: false }.encode(text)
        }
        fn window_bos(&self) -> Option<u32> {
            None
        }
        fn decoded_len(&self, tokens: &[u32]) -> Result<usize, BoxError> {
            Ok(2 * tokens.len())
        }
    }
    let lm = Lm {
        model: &Uniform { vocab },
        tokenizer: &TwoBytes,
    };
    let r2 = perplexity(
        lm,
        None,
        &text,
        &cfg(64, Scoring::SecondHalf),
        &mut |_, _| {},
    )
    .unwrap();
    assert!(close(r2.bits_per_byte, r.bits_per_byte / 2.0, 1e-12));
}

#[test]
fn a_text_shorter_than_two_windows_is_refused_with_the_counts() {
    let tokens = toy_tokens(1023, 50);
    let err = run(
        &Uniform { vocab: 50 },
        None,
        &tokens,
        None,
        &cfg(512, Scoring::SecondHalf),
    )
    .unwrap_err();
    assert!(matches!(
        err,
        EvalError::TextTooShort {
            n_tokens: 1023,
            ctx: 512,
            needed: 1024
        }
    ));
    let msg = err.to_string();
    assert!(
        msg.contains("only 1023 tokens") && msg.contains("at least 1024"),
        "{msg}"
    );
    // Exactly two windows is enough.
    let tokens = toy_tokens(1024, 50);
    let (r, _) = run(
        &Uniform { vocab: 50 },
        None,
        &tokens,
        None,
        &cfg(512, Scoring::SecondHalf),
    )
    .unwrap();
    assert_eq!(r.windows, 2);
}

#[test]
fn bad_settings_are_refused() {
    let tokens = toy_tokens(1000, 50);
    let m = Uniform { vocab: 50 };
    for c in [
        cfg(2, Scoring::SecondHalf),
        cfg(64, Scoring::Stride(0)),
        cfg(64, Scoring::Stride(64)),
        PerplexityConfig {
            batch: 0,
            ..cfg(64, Scoring::SecondHalf)
        },
        PerplexityConfig {
            max_windows: Some(0),
            ..cfg(64, Scoring::SecondHalf)
        },
    ] {
        assert!(
            matches!(run(&m, None, &tokens, None, &c), Err(EvalError::Config(_))),
            "{c:?}"
        );
    }
    let mut bad = tokens.clone();
    bad[7] = 50;
    assert!(matches!(
        run(&m, None, &bad, None, &cfg(64, Scoring::SecondHalf)),
        Err(EvalError::TokenOutOfRange {
            token: 50,
            position: 7,
            vocab: 50
        })
    ));
}

#[test]
fn batching_does_not_change_the_figures() {
    let vocab = 64;
    let model = Peek {
        vocab,
        a: |p| (p % 5) as f32,
    };
    let tokens = toy_tokens(700, vocab);
    let mut c = cfg(32, Scoring::SecondHalf);
    let (r1, s1) = run(&model, Some(&Uniform { vocab }), &tokens, None, &c).unwrap();
    c.batch = 4; // 21 windows: the last batch is partial
    let (r4, s4) = run(&model, Some(&Uniform { vocab }), &tokens, None, &c).unwrap();
    assert_eq!(s1, s4);
    assert_eq!(r1.perplexity, r4.perplexity);
    assert_eq!(r1.kl.unwrap().kld_mean, r4.kl.unwrap().kld_mean);
}

#[test]
fn kl_of_a_model_from_itself_is_zero() {
    let vocab = 64;
    let model = Peek {
        vocab,
        a: |p| 0.2 * p as f32,
    };
    let tokens = toy_tokens(300, vocab);
    let (r, _) = run(
        &model,
        Some(&model),
        &tokens,
        None,
        &cfg(32, Scoring::SecondHalf),
    )
    .unwrap();
    let kl = r.kl.unwrap();
    assert_eq!(
        (kl.kld_mean, kl.kld_max, kl.kld_p99, kl.kld_median),
        (0.0, 0.0, 0.0, 0.0)
    );
    assert_eq!(kl.same_top_percent, 100.0);
    assert_eq!(kl.rms_p_diff_percent, 0.0);
    // The reference NLL is computed in f64, the model's with llama.cpp's expf.
    assert!(close(kl.reference_perplexity, r.perplexity, 1e-6));
}

#[test]
fn kl_from_a_known_reference_matches_the_closed_form() {
    // Reference: probability 1/2 on the right token, 1/(2(V-1)) on each other.
    // Model: uniform. KL(ref || model) = ln V - H(ref)
    //   = ln V + 1/2 ln(1/2) + 1/2 ln(1/(2(V-1))).
    let vocab = 100usize;
    let reference = Peek {
        vocab,
        a: |_| 99f32.ln(),
    };
    let tokens = toy_tokens(640, vocab);
    let (r, _) = run(
        &Uniform { vocab },
        Some(&reference),
        &tokens,
        None,
        &cfg(64, Scoring::SecondHalf),
    )
    .unwrap();
    let v = vocab as f64;
    let expected = v.ln() + 0.5 * 0.5f64.ln() + 0.5 * (1.0 / (2.0 * (v - 1.0))).ln();
    let kl = r.kl.unwrap();
    assert!(
        close(kl.kld_mean, expected, 1e-6),
        "{} vs {expected}",
        kl.kld_mean
    );
    assert!(close(kl.kld_p99, expected, 1e-6) && close(kl.kld_max, expected, 1e-6));
    assert!(close(kl.kld_median, expected, 1e-6));
    // The uniform model's top token is token 0, never a target here.
    assert_eq!(kl.same_top_percent, 0.0);
    assert!(close(kl.reference_perplexity, 2.0, 1e-6));
    assert!(close(r.perplexity, v, 1e-12));
    // Δp = 1/V - 1/2 at every position.
    assert!(close(kl.rms_p_diff_percent, 100.0 * (0.5 - 1.0 / v), 1e-6));
}

#[test]
fn reference_must_share_vocabulary_and_tokenization() {
    let text = "a".repeat(200);
    let t = Bytes { bos: false };
    let lm = Lm {
        model: &Uniform { vocab: 257 },
        tokenizer: &t,
    };
    let other = Lm {
        model: &Uniform { vocab: 300 },
        tokenizer: &t,
    };
    let c = cfg(32, Scoring::SecondHalf);
    let err = perplexity(lm, Some(other), &text, &c, &mut |_, _| {}).unwrap_err();
    assert!(matches!(
        err,
        EvalError::VocabMismatch {
            model: 257,
            reference: 300
        }
    ));
    let t_bos = Bytes { bos: true };
    let with_bos = Lm {
        model: &Uniform { vocab: 257 },
        tokenizer: &t_bos,
    };
    let err = perplexity(lm, Some(with_bos), &text, &c, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, EvalError::TokenMismatch { position: 0 }));
}

#[test]
fn bad_model_output_is_an_error_not_a_figure() {
    let tokens = toy_tokens(200, 10);
    let c = cfg(32, Scoring::SecondHalf);
    let short = Fixed(10, vec![0.0; 16 * 10 - 1]);
    let err = run(&short, None, &tokens, None, &c).unwrap_err();
    assert!(
        matches!(
            err,
            EvalError::Shape {
                got: 159,
                expected: 160,
                ..
            }
        ),
        "{err}"
    );
    let mut nan = vec![0.0; 16 * 10];
    nan[5 * 10 + 3] = f32::NAN;
    let err = run(&Fixed(10, nan.clone()), None, &tokens, None, &c).unwrap_err();
    assert!(
        matches!(
            err,
            EvalError::NonFinite {
                model: "model",
                window: 0,
                position: 21,
                ..
            }
        ),
        "{err}"
    );
    let err = run(
        &Uniform { vocab: 10 },
        Some(&Fixed(10, nan)),
        &tokens,
        None,
        &c,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            EvalError::NonFinite {
                model: "reference",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn progress_reaches_the_total() {
    let tokens = toy_tokens(1000, 10);
    let mut seen = Vec::new();
    let c = PerplexityConfig {
        batch: 3,
        ..cfg(100, Scoring::SecondHalf)
    };
    score_tokens(
        &Uniform { vocab: 10 },
        None,
        &tokens,
        None,
        &c,
        &mut |t| Ok(t.len()),
        &mut |d, t| seen.push((d, t)),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(seen, vec![(0, 10), (3, 10), (6, 10), (9, 10), (10, 10)]);
}
