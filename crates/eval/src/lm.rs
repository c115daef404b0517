//! Perplexity (and KL divergence from a reference) of a causal LM on a text,
//! scored as llama.cpp's `llama-perplexity` scores it
//! (`examples/perplexity/perplexity.cpp`, functions `perplexity()`,
//! `perplexity_v2()` and `kl_divergence()`).

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::stats::{kl_point, mean_and_uncertainty, median, nll_llama, percentile, KlPoint};
use crate::{CausalLm, EvalError, LmTokenizer};

/// Which positions of each window are scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scoring {
    /// llama-perplexity's default: non-overlapping windows of `ctx` tokens;
    /// the logits at positions `ctx/2 ..= ctx-2` are scored against the token
    /// that follows, so every scored token has at least `ctx/2` tokens of
    /// context. `ctx - 1 - ctx/2` tokens per window (255 for ctx 512).
    SecondHalf,
    /// Non-overlapping windows of `ctx` tokens, every prediction scored:
    /// positions `0 ..= ctx-2` against the next token (`ctx - 1` per window).
    /// Early positions have little context, so this is higher than
    /// `SecondHalf`.
    Full,
    /// llama-perplexity `--ppl-stride S` (`perplexity_v2`): windows of `ctx`
    /// tokens starting every `S` tokens, the last `S` predictions of each
    /// (positions `ctx-S-1 ..= ctx-2`) scored. One difference from llama.cpp:
    /// when the model adds BOS, BOS really is the first token of each window
    /// here (`perplexity_v2` substitutes it only after the window has been
    /// evaluated, so it has no effect there).
    Stride(usize),
}

impl Scoring {
    /// A short name for reports.
    pub fn name(&self) -> String {
        match self {
            Scoring::SecondHalf => "second-half".to_string(),
            Scoring::Full => "full".to_string(),
            Scoring::Stride(s) => format!("stride {s}"),
        }
    }
}

/// Settings of a perplexity run.
#[derive(Clone, Debug)]
pub struct PerplexityConfig {
    /// Window length in tokens (llama-perplexity `-c`).
    pub ctx: usize,
    /// Evaluate at most this many windows (llama-perplexity `--chunks`).
    pub max_windows: Option<usize>,
    pub scoring: Scoring,
    /// Windows per model call.
    pub batch: usize,
}

impl Default for PerplexityConfig {
    fn default() -> Self {
        PerplexityConfig {
            ctx: 512,
            max_windows: None,
            scoring: Scoring::SecondHalf,
            batch: 1,
        }
    }
}

/// A model together with its tokenizer.
#[derive(Clone, Copy)]
pub struct Lm<'a> {
    pub model: &'a dyn CausalLm,
    pub tokenizer: &'a dyn LmTokenizer,
}

/// The figures of a perplexity run.
#[derive(Clone, Debug, Serialize)]
pub struct PerplexityReport {
    pub ctx: usize,
    pub scoring: String,
    /// BOS was put first in every window (the model's `add_bos_token`).
    pub add_bos: bool,
    /// Tokens in the whole text (with the leading BOS when the model adds one).
    pub text_tokens: usize,
    pub windows: usize,
    /// Tokens whose likelihood was scored.
    pub scored_tokens: usize,
    /// Byte length of the scored tokens decoded back to text (per window, the
    /// contiguous run of scored tokens is decoded and its UTF-8 length taken).
    pub scored_bytes: usize,
    /// exp(mean NLL) over the scored tokens.
    pub perplexity: f64,
    /// llama.cpp's "±": PPL × standard error of the mean NLL.
    pub perplexity_uncertainty: f64,
    /// Mean negative log-likelihood per scored token, in nats.
    pub nll_mean: f64,
    /// Mean NLL in bits: log2(perplexity).
    pub bits_per_token: f64,
    /// Total NLL of the scored tokens in bits divided by `scored_bytes`.
    pub bits_per_byte: f64,
    /// Wall time of the window loop (model calls and scoring), in seconds.
    pub eval_seconds: f64,
    /// Window tokens run through the model per second (`windows × ctx / eval_seconds`).
    pub tokens_per_second: f64,
    /// Comparison with the reference model, when one was given.
    pub kl: Option<KlReport>,
}

/// KL divergence statistics, as `llama-perplexity --kl-divergence` prints them.
#[derive(Clone, Debug, Serialize)]
pub struct KlReport {
    /// Perplexity of the reference on the same scored tokens.
    pub reference_perplexity: f64,
    pub reference_perplexity_uncertainty: f64,
    /// Mean over scored tokens of KL(P_ref || P_model), in nats.
    pub kld_mean: f64,
    pub kld_mean_uncertainty: f64,
    pub kld_median: f64,
    /// 99th percentile (llama.cpp's "99.0% KLD").
    pub kld_p99: f64,
    pub kld_max: f64,
    /// Percentage of scored positions where both models' most likely token is
    /// the same (llama.cpp's "Same top p").
    pub same_top_percent: f64,
    pub same_top_uncertainty_percent: f64,
    /// RMS over scored tokens of p_model(token) - p_ref(token), in percent
    /// (llama.cpp's "RMS Δp").
    pub rms_p_diff_percent: f64,
}

/// The windows of a run and the positions scored in each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub ctx: usize,
    /// First text index of each window.
    pub starts: Vec<usize>,
    /// The logits at window positions `from..to` are scored, against the text
    /// token at `start + position + 1`.
    pub from: usize,
    pub to: usize,
}

impl Plan {
    pub(crate) fn new(n_tokens: usize, cfg: &PerplexityConfig) -> Result<Plan, EvalError> {
        let ctx = cfg.ctx;
        if ctx < 4 {
            return Err(EvalError::Config(format!(
                "context {ctx} is too small (at least 4 tokens)"
            )));
        }
        if cfg.batch == 0 {
            return Err(EvalError::Config("batch must be at least 1".into()));
        }
        if cfg.max_windows == Some(0) {
            return Err(EvalError::Config("max windows must be at least 1".into()));
        }
        // Both llama.cpp's perplexity() and perplexity_v2() refuse texts shorter
        // than two windows.
        if n_tokens < 2 * ctx {
            return Err(EvalError::TextTooShort {
                n_tokens,
                ctx,
                needed: 2 * ctx,
            });
        }
        let (step, n_max, from) = match cfg.scoring {
            // perplexity(): n_chunk_max = tokens / n_ctx, first = n_ctx / 2.
            Scoring::SecondHalf => (ctx, n_tokens / ctx, ctx / 2),
            Scoring::Full => (ctx, n_tokens / ctx, 0),
            // perplexity_v2(): n_chunk_max = (tokens - ctx + stride - 1) / stride,
            // scored j = n_ctx - stride - 1 .. n_ctx - 2.
            Scoring::Stride(s) => {
                if s == 0 || s >= ctx {
                    return Err(EvalError::Config(format!(
                        "stride {s} must be between 1 and ctx - 1 = {}",
                        ctx - 1
                    )));
                }
                (s, (n_tokens - ctx).div_ceil(s), ctx - s - 1)
            }
        };
        let n = cfg.max_windows.map_or(n_max, |m| m.min(n_max));
        Ok(Plan {
            ctx,
            starts: (0..n).map(|w| w * step).collect(),
            from,
            to: ctx - 1,
        })
    }

    pub(crate) fn scored_per_window(&self) -> usize {
        self.to - self.from
    }
}

/// One scored token, for tests of which positions are scored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ScoredToken {
    pub window: usize,
    pub position: usize,
    pub target: u32,
    pub nll: f64,
}

/// Perplexity of `lm` on `text`, and with `reference` the KL divergence of
/// `lm` from it, as llama-perplexity computes them.
///
/// As llama.cpp reading `-f FILE`, one trailing newline is dropped; the text
/// is then tokenised once. `progress(done, total)` is called after each batch
/// of windows.
pub fn perplexity(
    lm: Lm<'_>,
    reference: Option<Lm<'_>>,
    text: &str,
    cfg: &PerplexityConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PerplexityReport, EvalError> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    let tokens = lm
        .tokenizer
        .encode(text)
        .map_err(EvalError::model("model tokenizer"))?;
    if let Some(r) = reference {
        let (vm, vr) = (lm.model.vocab_size(), r.model.vocab_size());
        if vm != vr {
            return Err(EvalError::VocabMismatch {
                model: vm,
                reference: vr,
            });
        }
        let ref_tokens = r
            .tokenizer
            .encode(text)
            .map_err(EvalError::model("reference tokenizer"))?;
        if ref_tokens != tokens {
            let position = tokens
                .iter()
                .zip(&ref_tokens)
                .position(|(a, b)| a != b)
                .unwrap_or(tokens.len().min(ref_tokens.len()));
            return Err(EvalError::TokenMismatch { position });
        }
    }
    let bos = lm.tokenizer.window_bos();
    score_tokens(
        lm.model,
        reference.map(|r| r.model),
        &tokens,
        bos,
        cfg,
        &mut |t| lm.tokenizer.decoded_len(t),
        progress,
        &mut |_| {},
    )
}

/// Running sums, in the order llama.cpp keeps them.
#[derive(Default)]
struct Sums {
    count: usize,
    nll: f64,
    nll2: f64,
    nll_ref: f64,
    nll_ref2: f64,
    kld: f64,
    kld2: f64,
    p_diff2: f64,
    p_diff4: f64,
    same_top: usize,
    kld_values: Vec<f64>,
}

/// The window loop on already tokenised text.
#[allow(clippy::too_many_arguments)]
pub(crate) fn score_tokens(
    model: &dyn CausalLm,
    reference: Option<&dyn CausalLm>,
    tokens: &[u32],
    bos: Option<u32>,
    cfg: &PerplexityConfig,
    decoded_len: &mut dyn FnMut(&[u32]) -> Result<usize, crate::BoxError>,
    progress: &mut dyn FnMut(usize, usize),
    on_token: &mut dyn FnMut(ScoredToken),
) -> Result<PerplexityReport, EvalError> {
    let vocab = model.vocab_size();
    if vocab == 0 {
        return Err(EvalError::Config(
            "the model has an empty vocabulary".into(),
        ));
    }
    if let Some((position, &token)) = tokens
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= vocab)
    {
        return Err(EvalError::TokenOutOfRange {
            token,
            position,
            vocab,
        });
    }
    if let Some(b) = bos.filter(|&b| b as usize >= vocab) {
        return Err(EvalError::Config(format!(
            "BOS token {b} is outside the vocabulary ({vocab} tokens)"
        )));
    }
    let plan = Plan::new(tokens.len(), cfg)?;
    let ctx = plan.ctx;
    let rows = ctx - plan.from; // logits rows asked for per window
    let total = plan.starts.len();
    let mut sums = Sums::default();
    let mut scored_bytes = 0usize;

    let t0 = Instant::now();
    progress(0, total);
    for (batch_index, batch_starts) in plan.starts.chunks(cfg.batch).enumerate() {
        let first_window = batch_index * cfg.batch;
        // The windows as the model sees them: BOS replaces the first token
        // when the model adds BOS (perplexity(): `tokens[seq_start] = bos`).
        let windows: Vec<Vec<u32>> = batch_starts
            .iter()
            .map(|&s| {
                let mut w = tokens[s..s + ctx].to_vec();
                if let Some(b) = bos {
                    w[0] = b;
                }
                w
            })
            .collect();
        let refs: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
        let expected = refs.len() * rows * vocab;
        let what = || format!("{} windows x {rows} positions x {vocab} logits", refs.len());
        let logits = model
            .logits(&refs, plan.from)
            .map_err(EvalError::model("model"))?;
        if logits.len() != expected {
            return Err(EvalError::Shape {
                model: "model",
                got: logits.len(),
                expected,
                what: what(),
            });
        }
        let ref_logits = match reference {
            Some(r) => {
                let l = r
                    .logits(&refs, plan.from)
                    .map_err(EvalError::model("reference"))?;
                if l.len() != expected {
                    return Err(EvalError::Shape {
                        model: "reference",
                        got: l.len(),
                        expected,
                        what: what(),
                    });
                }
                Some(l)
            }
            None => None,
        };

        for (b, &start) in batch_starts.iter().enumerate() {
            let window = first_window + b;
            let (from, v) = (plan.from, vocab);
            let row = move |p: usize| -> std::ops::Range<usize> {
                let r = b * rows + (p - from);
                r * v..(r + 1) * v
            };
            // process_logits(): logits at position p against tokens[start + p + 1].
            let points: Vec<(f64, Option<KlPoint>)> = (plan.from..plan.to)
                .into_par_iter()
                .map_init(Vec::new, |buf, p| {
                    let target = tokens[start + p + 1] as usize;
                    let non_finite = |model| EvalError::NonFinite {
                        model,
                        what: "logit",
                        window,
                        position: p,
                    };
                    let x = &logits[row(p)];
                    let nll = nll_llama(x, target).ok_or_else(|| non_finite("model"))?;
                    let kl = match &ref_logits {
                        Some(rl) => Some(
                            kl_point(x, &rl[row(p)], target, buf)
                                .ok_or_else(|| non_finite("reference"))?,
                        ),
                        None => None,
                    };
                    Ok((nll, kl))
                })
                .collect::<Result<_, EvalError>>()?;

            for (p, (nll, kl)) in (plan.from..plan.to).zip(points) {
                sums.count += 1;
                sums.nll += nll;
                sums.nll2 += nll * nll;
                if let Some(k) = kl {
                    sums.nll_ref += k.nll_ref;
                    sums.nll_ref2 += k.nll_ref * k.nll_ref;
                    sums.kld += k.kld;
                    sums.kld2 += k.kld * k.kld;
                    let d2 = k.p_diff * k.p_diff;
                    sums.p_diff2 += d2;
                    sums.p_diff4 += d2 * d2;
                    sums.same_top += usize::from(k.same_top);
                    sums.kld_values.push(k.kld);
                }
                on_token(ScoredToken {
                    window,
                    position: p,
                    target: tokens[start + p + 1],
                    nll,
                });
            }
            let scored = &tokens[start + plan.from + 1..start + plan.to + 1];
            scored_bytes += decoded_len(scored).map_err(EvalError::model("model tokenizer"))?;
        }
        progress((first_window + batch_starts.len()).min(total), total);
    }
    let eval_seconds = t0.elapsed().as_secs_f64();

    debug_assert_eq!(sums.count, total * plan.scored_per_window());
    let count = sums.count;
    // perplexity(): nll /= count; ppl = exp(nll); ± = ppl * sqrt((nll2/count - nll²)/(count-1)).
    let (nll_mean, nll_err) = mean_and_uncertainty(sums.nll, sums.nll2, count);
    let ppl = nll_mean.exp();
    let ln2 = std::f64::consts::LN_2;
    let kl = reference.map(|_| {
        let (ref_mean, ref_err) = mean_and_uncertainty(sums.nll_ref, sums.nll_ref2, count);
        let (kld_mean, kld_err) = mean_and_uncertainty(sums.kld, sums.kld2, count);
        let (p_diff_mse, _) = mean_and_uncertainty(sums.p_diff2, sums.p_diff4, count);
        let mut v = std::mem::take(&mut sums.kld_values);
        v.sort_by(f64::total_cmp);
        let same = sums.same_top as f64 / count as f64;
        let same_err = if count > 1 {
            (same * (1.0 - same) / (count - 1) as f64).sqrt()
        } else {
            0.0
        };
        KlReport {
            reference_perplexity: ref_mean.exp(),
            reference_perplexity_uncertainty: ref_mean.exp() * ref_err,
            kld_mean,
            kld_mean_uncertainty: kld_err,
            kld_median: median(&v),
            kld_p99: percentile(&v, 0.99),
            kld_max: v.last().copied().unwrap_or(f64::NAN),
            same_top_percent: 100.0 * same,
            same_top_uncertainty_percent: 100.0 * same_err,
            rms_p_diff_percent: 100.0 * p_diff_mse.sqrt(),
        }
    });
    Ok(PerplexityReport {
        ctx,
        scoring: cfg.scoring.name(),
        add_bos: bos.is_some(),
        text_tokens: tokens.len(),
        windows: total,
        scored_tokens: count,
        scored_bytes,
        perplexity: ppl,
        perplexity_uncertainty: ppl * nll_err,
        nll_mean,
        bits_per_token: nll_mean / ln2,
        bits_per_byte: if scored_bytes > 0 {
            sums.nll / ln2 / scored_bytes as f64
        } else {
            f64::NAN
        },
        eval_seconds,
        tokens_per_second: (total * ctx) as f64 / eval_seconds.max(1e-9),
        kl,
    })
}

#[cfg(test)]
mod tests;
