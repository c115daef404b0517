//! `tersor eval`: quality of a model on a text.
//!
//! A decoder gets llama-perplexity's perplexity (and, with `--ref`, the KL
//! divergence from the reference); an encoder gets the cosine similarity of
//! its sentence embeddings to the reference's.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use tersor_eval::{EncoderConfig, Lm, PerplexityConfig, Scoring};
use tersor_model::LoadedModel;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Model to evaluate: a GGUF file or a Hugging Face directory (default:
    /// the default LM, fetched on first use).
    #[arg(value_name = "MODEL")]
    model: Option<PathBuf>,

    /// Text to evaluate on (default: the evaluation split of Botchan).
    #[arg(long, value_name = "FILE")]
    text: Option<PathBuf>,

    /// Reference model: report the KL divergence from it (decoders, same
    /// tokenizer) or the cosine similarity to it (encoders; required).
    #[arg(long = "ref", value_name = "MODEL")]
    reference: Option<PathBuf>,

    /// Window length in tokens (llama-perplexity -c).
    #[arg(long, default_value_t = 512, value_name = "N")]
    ctx: usize,

    /// Evaluate at most N windows (llama-perplexity --chunks).
    #[arg(long, alias = "chunks", value_name = "N")]
    max_windows: Option<usize>,

    /// Which predictions of each window are scored: `half` = the second half,
    /// as llama-perplexity; `full` = all of them.
    #[arg(long, value_enum, default_value_t = ScoringArg::Half)]
    scoring: ScoringArg,

    /// Sliding windows every S tokens, the last S predictions of each scored
    /// (llama-perplexity --ppl-stride).
    #[arg(long, value_name = "S", conflicts_with = "scoring")]
    stride: Option<usize>,

    /// Windows (decoders) or sentences (encoders) per model call [default: 1 / 32].
    #[arg(long, value_name = "N")]
    batch: Option<usize>,

    /// Encoders: embed at most N sentences.
    #[arg(long, value_name = "N")]
    max_sentences: Option<usize>,

    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,

    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScoringArg {
    Half,
    Full,
}

fn load(path: &Path, what: &str) -> anyhow::Result<LoadedModel> {
    tersor_model::load(path).with_context(|| format!("cannot load the {what} {}", path.display()))
}

/// A progress bar on stderr, hidden when stderr is not a terminal or with --quiet.
fn progress_bar(quiet: bool, unit: &'static str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} [{{elapsed_precise}}] {{bar:40}} {{pos}}/{{len}} {unit} (eta {{eta}})"
        ))
        .expect("valid progress template"),
    );
    bar
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let model_path = crate::model_or_default(args.model.clone())?;
    let text_path = match &args.text {
        Some(p) => p.clone(),
        None => {
            tersor_assets::botchan_eval().context("cannot obtain the default evaluation text")?
        }
    };
    let text = std::fs::read_to_string(&text_path)
        .with_context(|| format!("cannot read the text {}", text_path.display()))?;
    let model = load(&model_path, "model")?;
    let reference_path = args.reference.clone().map(crate::open_model).transpose()?;
    let reference = reference_path
        .as_ref()
        .map(|p| load(p, "reference"))
        .transpose()?;

    let mut out = serde_json::Map::new();
    // The path as given (a pack file's name, not its temporary unpacking).
    let shown = args
        .model
        .clone()
        .unwrap_or_else(|| model_path.to_path_buf());
    out.insert("model".into(), shown.display().to_string().into());
    out.insert(
        "reference".into(),
        args.reference
            .as_ref()
            .map_or(Value::Null, |p| p.display().to_string().into()),
    );
    out.insert("text".into(), text_path.display().to_string().into());

    let table = match (&model, &reference) {
        (LoadedModel::Decoder { model, tokenizer }, r) => {
            let reference = match r {
                None => None,
                Some(LoadedModel::Decoder { model, tokenizer }) => Some(Lm { model, tokenizer }),
                Some(LoadedModel::Encoder(_)) => {
                    bail!("the model is a decoder but the reference is an encoder: they cannot be compared")
                }
            };
            let cfg = PerplexityConfig {
                ctx: args.ctx,
                max_windows: args.max_windows,
                scoring: match (args.stride, args.scoring) {
                    (Some(s), _) => Scoring::Stride(s),
                    (None, ScoringArg::Half) => Scoring::SecondHalf,
                    (None, ScoringArg::Full) => Scoring::Full,
                },
                batch: args.batch.unwrap_or(1),
            };
            let bar = progress_bar(args.quiet, "windows");
            let report = tersor_eval::perplexity(
                Lm { model, tokenizer },
                reference,
                &text,
                &cfg,
                &mut |done, total| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                },
            )
            .with_context(|| format!("cannot evaluate on {}", text_path.display()))?;
            bar.finish_and_clear();
            out.insert("kind".into(), "decoder".into());
            out.insert("perplexity".into(), serde_json::to_value(&report)?);
            report.to_table()
        }
        (LoadedModel::Encoder(model), Some(LoadedModel::Encoder(reference))) => {
            let cfg = EncoderConfig {
                max_sentences: args.max_sentences,
                batch: args.batch.unwrap_or(32),
                ..EncoderConfig::default()
            };
            let bar = progress_bar(args.quiet, "sentences");
            let report = tersor_eval::encoder_similarity(model, reference, &text, &cfg, &mut |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            })
            .with_context(|| format!("cannot evaluate on {}", text_path.display()))?;
            bar.finish_and_clear();
            out.insert("kind".into(), "encoder".into());
            out.insert("embeddings".into(), serde_json::to_value(&report)?);
            report.to_table()
        }
        (LoadedModel::Encoder(_), Some(LoadedModel::Decoder { .. })) => {
            bail!("the model is an encoder but the reference is a decoder: they cannot be compared")
        }
        (LoadedModel::Encoder(_), None) => bail!(
            "{} is a sentence encoder: it is evaluated against a reference encoder, pass --ref MODEL",
            model_path.display()
        ),
    };

    if args.json {
        println!("{}", serde_json::to_string_pretty(&Value::Object(out))?);
    } else {
        println!("model: {}", model_path.display());
        if let Some(r) = &args.reference {
            println!("reference: {}", r.display());
        }
        println!("text: {}\n", text_path.display());
        print!("{table}");
    }
    Ok(())
}
