//! Plain-text tables of the reports (the CLI prints them to stdout).

use crate::{EncoderReport, PerplexityReport};

/// A two-column box table.
fn table(title: &str, rows: &[(&str, String)]) -> String {
    let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    let line = format!("+-{}-+-{}-+\n", "-".repeat(w0), "-".repeat(w1));
    let mut s = format!("{title}\n{line}");
    for (k, v) in rows {
        s += &format!("| {k:<w0$} | {v:>w1$} |\n");
    }
    s += &line;
    s
}

impl PerplexityReport {
    /// The report as a text table.
    pub fn to_table(&self) -> String {
        let mut rows = vec![
            ("context (tokens)", self.ctx.to_string()),
            ("scoring", self.scoring.clone()),
            (
                "BOS per window",
                if self.add_bos { "yes" } else { "no" }.to_string(),
            ),
            ("text tokens", self.text_tokens.to_string()),
            ("windows", self.windows.to_string()),
            ("scored tokens", self.scored_tokens.to_string()),
            ("scored bytes", self.scored_bytes.to_string()),
            (
                "perplexity",
                format!(
                    "{:.4} ± {:.5}",
                    self.perplexity, self.perplexity_uncertainty
                ),
            ),
            ("bits per token", format!("{:.4}", self.bits_per_token)),
            ("bits per byte", format!("{:.4}", self.bits_per_byte)),
        ];
        if let Some(k) = &self.kl {
            rows.extend([
                (
                    "reference perplexity",
                    format!(
                        "{:.4} ± {:.5}",
                        k.reference_perplexity, k.reference_perplexity_uncertainty
                    ),
                ),
                (
                    "mean KLD (nats)",
                    format!("{:.6} ± {:.6}", k.kld_mean, k.kld_mean_uncertainty),
                ),
                ("median KLD", format!("{:.6}", k.kld_median)),
                ("99.0% KLD", format!("{:.6}", k.kld_p99)),
                ("maximum KLD", format!("{:.6}", k.kld_max)),
                (
                    "same top token",
                    format!(
                        "{:.3} ± {:.3} %",
                        k.same_top_percent, k.same_top_uncertainty_percent
                    ),
                ),
                ("RMS Δp", format!("{:.3} %", k.rms_p_diff_percent)),
            ]);
        }
        rows.extend([
            ("eval time (s)", format!("{:.2}", self.eval_seconds)),
            ("tokens / s", format!("{:.1}", self.tokens_per_second)),
        ]);
        table("perplexity (llama-perplexity scoring)", &rows)
    }
}

impl EncoderReport {
    /// The report as a text table.
    pub fn to_table(&self) -> String {
        let mut preview: String = self.min_sentence.chars().take(60).collect();
        if preview.len() < self.min_sentence.len() {
            preview.push('…');
        }
        table(
            "sentence embeddings vs reference",
            &[
                ("sentences", self.sentences.to_string()),
                ("dimension", self.dim.to_string()),
                ("mean cosine", format!("{:.6}", self.mean_cosine)),
                ("median cosine", format!("{:.6}", self.median_cosine)),
                ("min cosine", format!("{:.6}", self.min_cosine)),
                ("least similar", preview),
                ("eval time (s)", format!("{:.2}", self.eval_seconds)),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table("t", &[("a", "1".into()), ("long key", "12345".into())]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[1], "+----------+-------+");
        assert_eq!(lines[2], "| a        |     1 |");
        assert_eq!(lines[3], "| long key | 12345 |");
        assert!(lines[1..]
            .iter()
            .all(|l| l.chars().count() == lines[1].len()));
    }
}
