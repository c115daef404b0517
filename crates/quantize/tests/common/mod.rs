//! Helpers shared by the job tests.

use std::path::Path;

use tersor_model::{Llama, LoadedModel, TextTokenizer};

/// A decoder and its tokenizer from a GGUF file or an HF directory.
pub fn decoder(p: &Path) -> (Llama, TextTokenizer) {
    match tersor_model::load(p).unwrap() {
        LoadedModel::Decoder { model, tokenizer } => (model, tokenizer),
        _ => panic!("{} is not a decoder", p.display()),
    }
}

/// Output KL of a compressed tiny model against the original on `text` (mean over
/// positions of KL(p_ref || p_model), 8 windows of 128 tokens), with tersor-eval.
pub fn kl_to_reference(model: &Path, reference: &Path, text: &Path) -> f64 {
    let (m, t) = decoder(model);
    let (r, rt) = decoder(reference);
    let text = std::fs::read_to_string(text).unwrap();
    let cfg = tersor_eval::PerplexityConfig {
        ctx: 128,
        max_windows: Some(8),
        scoring: tersor_eval::Scoring::Full,
        batch: 4,
    };
    let lm = |model, tokenizer| tersor_eval::Lm { model, tokenizer };
    let rep = tersor_eval::perplexity(lm(&m, &t), Some(lm(&r, &rt)), &text, &cfg, &mut |_, _| {})
        .unwrap();
    rep.kl.unwrap().kld_mean
}
