//! End-to-end: the default LM (SmolLM2-135M-Instruct Q4_1, evaluated as its
//! f32 dequantization) scored on Botchan must reproduce llama.cpp's
//! `llama-perplexity` on the F32 GGUF of the same weights, within 1%.
//!
//! The llama.cpp figures and the commands that produced them are in
//! `tests/fixtures/llama_perplexity.json`. These tests need the default
//! assets: they fail with a hint to fetch them, unless
//! `TERSOR_SKIP_ASSET_TESTS=1`.

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Value;
use tersor_eval::{perplexity, Lm, PerplexityConfig, PerplexityReport, Scoring};
use tersor_model::LoadedModel;

/// The default LM and the path of a Botchan split, or `None` when the assets
/// are missing and the caller asked to skip.
fn asset(text: fn() -> tersor_assets::Result<PathBuf>) -> Option<(&'static LoadedModel, PathBuf)> {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    let paths = tersor_assets::ensure_default_lm().and_then(|lm| Ok((lm, text()?)));
    let (lm, text) = match paths {
        Ok(p) => p,
        Err(e) if std::env::var("TERSOR_SKIP_ASSET_TESTS").as_deref() == Ok("1") => {
            eprintln!("skipping: default assets unavailable ({e})");
            return None;
        }
        Err(e) => panic!(
            "the default assets are unavailable: {e}\n\
             fetch them with `cargo run -p tersor -- fetch`, or set TERSOR_SKIP_ASSET_TESTS=1 to skip"
        ),
    };
    let model = MODEL.get_or_init(|| tersor_model::load(&lm).expect("load the default LM"));
    Some((model, text))
}

fn decoder(m: &LoadedModel) -> Lm<'_> {
    match m {
        LoadedModel::Decoder { model, tokenizer } => Lm { model, tokenizer },
        LoadedModel::Encoder(_) => panic!("the default LM loaded as an encoder"),
    }
}

/// The llama-perplexity run recorded for `text` in the fixture.
fn llama_cpp_run(text: &str) -> Value {
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/llama_perplexity.json")).unwrap();
    fixture["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["text"] == text)
        .unwrap_or_else(|| panic!("no llama.cpp run for {text} in the fixture"))
        .clone()
}

fn check_against_llama_cpp(text_name: &str, text: fn() -> tersor_assets::Result<PathBuf>) {
    let Some((model, path)) = asset(text) else {
        return;
    };
    let run = llama_cpp_run(text_name);
    let ctx = run["ctx"].as_u64().unwrap() as usize;
    let chunks = run["chunks"].as_u64().unwrap() as usize;
    let expected = run["ppl"].as_f64().unwrap();
    let cfg = PerplexityConfig {
        ctx,
        max_windows: Some(chunks),
        scoring: Scoring::SecondHalf,
        batch: 1,
    };
    let text = std::fs::read_to_string(&path).unwrap();
    let r: PerplexityReport =
        perplexity(decoder(model), None, &text, &cfg, &mut |_, _| {}).unwrap();
    eprintln!(
        "{text_name}: tersor {:.4} ± {:.4}, llama.cpp {expected}",
        r.perplexity, r.perplexity_uncertainty
    );
    assert!(!r.add_bos, "the default LM's add_bos_token is false");
    assert_eq!(r.windows, chunks);
    assert_eq!(r.scored_tokens, chunks * (ctx - 1 - ctx / 2));
    let rel = (r.perplexity - expected).abs() / expected;
    assert!(
        rel < 0.01,
        "perplexity {} is {:.3}% from llama.cpp's {expected}",
        r.perplexity,
        100.0 * rel
    );
    // llama.cpp's ± comes from the same per-token NLLs: it must agree as closely.
    let unc = run["uncertainty"].as_f64().unwrap();
    assert!(
        (r.perplexity_uncertainty - unc).abs() / unc < 0.03,
        "± {} vs {unc}",
        r.perplexity_uncertainty
    );
    assert!((r.bits_per_token - r.perplexity.log2()).abs() < 1e-12);
    // All of Botchan is ASCII: one byte per character, several per token.
    assert!(
        r.bits_per_byte > 0.5 && r.bits_per_byte < r.bits_per_token / 2.0,
        "{}",
        r.bits_per_byte
    );
}

#[test]
fn perplexity_matches_llama_cpp_on_botchan_eval() {
    check_against_llama_cpp("botchan_eval.txt", tersor_assets::botchan_eval);
}

#[test]
fn perplexity_matches_llama_cpp_on_botchan_calib() {
    check_against_llama_cpp("botchan_calib.txt", tersor_assets::botchan_calib);
}

#[test]
fn kl_of_the_model_from_a_second_copy_of_itself_is_zero() {
    let Some((model, path)) = asset(tersor_assets::botchan_eval) else {
        return;
    };
    let lm_path = tersor_assets::ensure_default_lm().unwrap();
    let reference = tersor_model::load(&lm_path).unwrap();
    let cfg = PerplexityConfig {
        ctx: 512,
        max_windows: Some(2),
        ..PerplexityConfig::default()
    };
    let text = std::fs::read_to_string(&path).unwrap();
    let r = perplexity(
        decoder(model),
        Some(decoder(&reference)),
        &text,
        &cfg,
        &mut |_, _| {},
    )
    .unwrap();
    let kl = r.kl.unwrap();
    assert_eq!(r.scored_tokens, 510);
    assert!(
        kl.kld_mean.abs() < 1e-9 && kl.kld_max.abs() < 1e-9,
        "{kl:?}"
    );
    assert_eq!(kl.same_top_percent, 100.0);
    assert!((kl.reference_perplexity - r.perplexity).abs() < 1e-6 * r.perplexity);
}
