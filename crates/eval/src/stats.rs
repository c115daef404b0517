//! Per-position scoring (log-softmax, KL divergence) and the summary
//! statistics llama.cpp's perplexity tool prints.

/// Negative log-likelihood of `tok` under `softmax(logits)`, computed exactly as
/// llama.cpp's `log_softmax(n_vocab, logits, tok)` in
/// `examples/perplexity/perplexity.cpp`: the maximum in f32, `expf(x - max)`
/// in f32 summed in f64, and `-(x[tok] - max - log(sum))` in f64.
///
/// `None` when a logit is NaN or infinite.
pub(crate) fn nll_llama(logits: &[f32], tok: usize) -> Option<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return None;
    }
    let mut sum_exp = 0.0f64;
    for &x in logits {
        sum_exp += f64::from((x - max).exp());
    }
    if !sum_exp.is_finite() {
        return None;
    }
    Some(-(f64::from(logits[tok] - max) - sum_exp.ln()))
}

/// Index of the first largest logit (llama.cpp keeps the first on ties).
pub(crate) fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate().skip(1) {
        if x > logits[best] {
            best = i;
        }
    }
    best
}

/// What one scored position contributes to the comparison with a reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct KlPoint {
    /// KL(P_ref || P_model) in nats.
    pub kld: f64,
    /// NLL of the target token under the reference.
    pub nll_ref: f64,
    /// Both distributions have the same most likely token.
    pub same_top: bool,
    /// p_model(target) - p_ref(target), llama.cpp's "Δp".
    pub p_diff: f64,
}

/// `ln Σ exp(x)` in f64, filling `exps` with `exp(x_i - max)`. `None` when a
/// value is not finite.
fn log_sum_exp(x: &[f32], exps: &mut Vec<f64>) -> Option<f64> {
    let max = f64::from(x.iter().copied().fold(f32::NEG_INFINITY, f32::max));
    if !max.is_finite() {
        return None;
    }
    exps.clear();
    exps.extend(x.iter().map(|&v| (f64::from(v) - max).exp()));
    let sum: f64 = exps.iter().sum();
    sum.is_finite().then(|| max + sum.ln())
}

/// KL(P_ref || P_model) = Σ p_ref (log p_ref − log p_model) for one position,
/// with both log-softmaxes in f64 (llama.cpp's `--kl-divergence` compares
/// against 16-bit quantised reference log-probabilities; here the reference is
/// evaluated alongside, so nothing is quantised).
///
/// `buf` is scratch space reused across calls. `None` when a logit is not finite.
pub(crate) fn kl_point(
    model: &[f32],
    reference: &[f32],
    tok: usize,
    buf: &mut Vec<f64>,
) -> Option<KlPoint> {
    debug_assert_eq!(model.len(), reference.len());
    let lse_model = log_sum_exp(model, buf)?;
    let lse_ref = log_sum_exp(reference, buf)?;
    // buf now holds exp(y_i - max_y); p_ref_i = buf_i * exp(max_y - lse_ref).
    let max_ref = f64::from(reference.iter().copied().fold(f32::NEG_INFINITY, f32::max));
    let scale = (max_ref - lse_ref).exp();
    let mut kld = 0.0f64;
    for ((&e, &y), &x) in buf.iter().zip(reference).zip(model) {
        let p_ref = e * scale;
        if p_ref > 0.0 {
            let log_p_ref = f64::from(y) - lse_ref;
            let log_p_model = f64::from(x) - lse_model;
            kld += p_ref * (log_p_ref - log_p_model);
        }
    }
    if !kld.is_finite() {
        return None;
    }
    let log_p_model_tok = f64::from(model[tok]) - lse_model;
    let log_p_ref_tok = f64::from(reference[tok]) - lse_ref;
    Some(KlPoint {
        kld,
        nll_ref: -log_p_ref_tok,
        same_top: argmax(model) == argmax(reference),
        p_diff: log_p_model_tok.exp() - log_p_ref_tok.exp(),
    })
}

/// Mean of a sample and the standard error of that mean from its sums, as the
/// `mean_and_uncertainty` lambda in llama.cpp's `kl_divergence()`:
/// `sqrt((Σx²/n − mean²) / (n − 1))`, 0 when that is not defined.
pub(crate) fn mean_and_uncertainty(sum: f64, sum2: f64, count: usize) -> (f64, f64) {
    if count == 0 {
        return (0.0, 0.0);
    }
    let n = count as f64;
    let mean = sum / n;
    let var = sum2 / n - mean * mean;
    let err = if var > 0.0 && count > 1 {
        (var / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, err)
}

/// Percentile of sorted values with linear interpolation between neighbours,
/// as the `percentile` lambda in llama.cpp's `kl_divergence()`.
pub(crate) fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    if fraction <= 0.0 {
        return sorted[0];
    }
    if fraction >= 1.0 {
        return sorted[sorted.len() - 1];
    }
    let p = fraction * (sorted.len() - 1) as f64;
    let ip = p as usize;
    let t = p - ip as f64;
    (1.0 - t) * sorted[ip] + t * sorted[(ip + 1).min(sorted.len() - 1)]
}

/// Median of sorted values (mean of the two middle ones for an even count).
pub(crate) fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    match (n, n % 2) {
        (0, _) => f64::NAN,
        (_, 0) => 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]),
        _ => sorted[n / 2],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_of_uniform_logits_is_ln_v() {
        let v = 1000;
        let logits = vec![3.25f32; v];
        let nll = nll_llama(&logits, 17).unwrap();
        assert!((nll - (v as f64).ln()).abs() < 1e-12, "{nll}");
    }

    #[test]
    fn nll_rejects_non_finite() {
        assert!(nll_llama(&[0.0, f32::NAN, 1.0], 0).is_none());
        assert!(nll_llama(&[0.0, f32::INFINITY], 0).is_none());
    }

    #[test]
    fn kl_of_known_distributions() {
        // P_ref = (1/2, 1/4, 1/4), P_model = (1/4, 1/2, 1/4):
        // KL = 1/2 ln 2 + 1/4 ln(1/2) + 0 = 1/4 ln 2.
        let reference = [0.5f64.ln() as f32, 0.25f64.ln() as f32, 0.25f64.ln() as f32];
        let model = [0.25f64.ln() as f32, 0.5f64.ln() as f32, 0.25f64.ln() as f32];
        let mut buf = Vec::new();
        let k = kl_point(&model, &reference, 2, &mut buf).unwrap();
        assert!((k.kld - 0.25 * 2f64.ln()).abs() < 1e-7, "{}", k.kld);
        assert!(!k.same_top);
        assert!((k.nll_ref - 4f64.ln()).abs() < 1e-7);
        assert!(k.p_diff.abs() < 1e-7);
        // Logits are defined up to a constant: shifting one side changes nothing.
        let shifted: Vec<f32> = model.iter().map(|x| x + 7.0).collect();
        let k2 = kl_point(&shifted, &reference, 2, &mut buf).unwrap();
        assert!((k2.kld - k.kld).abs() < 1e-6);
    }

    #[test]
    fn kl_of_a_distribution_with_itself_is_zero() {
        let x: Vec<f32> = (0..5000)
            .map(|i| ((i * 7919) % 1013) as f32 * 0.01)
            .collect();
        let mut buf = Vec::new();
        let k = kl_point(&x, &x, 3, &mut buf).unwrap();
        assert_eq!(k.kld, 0.0);
        assert!(k.same_top);
        assert_eq!(k.p_diff, 0.0);
    }

    #[test]
    fn percentiles_interpolate_like_llama_cpp() {
        let v: Vec<f64> = (0..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 0.995), 99.5);
        assert_eq!(median(&v), 50.0);
        assert_eq!(median(&[1.0, 2.0, 4.0, 8.0]), 3.0);
        assert_eq!(percentile(&[5.0], 0.99), 5.0);
    }

    #[test]
    fn uncertainty_is_the_standard_error() {
        // Values 1, 2, 3, 4: mean 2.5, population variance 1.25, SE sqrt(1.25/3).
        let (m, e) = mean_and_uncertainty(10.0, 30.0, 4);
        assert_eq!(m, 2.5);
        assert!((e - (1.25f64 / 3.0).sqrt()).abs() < 1e-15);
        assert_eq!(mean_and_uncertainty(0.0, 0.0, 0), (0.0, 0.0));
    }
}
