//! tersor-eval: quality measurements for language models and sentence encoders.
//!
//! * [`perplexity`] scores a text the way llama.cpp's `llama-perplexity` does
//!   (same tokenisation, windows, BOS rule, scored positions and accumulation),
//!   so its figure can be held against llama.cpp's. With a reference model it
//!   also reports the KL divergence from the reference and how often both pick
//!   the same top token, as `llama-perplexity --kl-divergence` does.
//! * [`encoder_similarity`] embeds the sentences of a text with a model and a
//!   reference and reports how close the embeddings are (cosine similarity).
//!
//! The evaluation code only sees the small traits below ([`CausalLm`],
//! [`LmTokenizer`], [`SentenceEncoder`]), so it is tested on toy models with
//! closed-form answers; [`models`] implements them for `tersor-model`'s types.

mod encoder;
mod lm;
pub mod models;
mod report;
mod stats;

pub use encoder::{encoder_similarity, split_sentences, EncoderConfig, EncoderReport};
pub use lm::{perplexity, KlReport, Lm, PerplexityConfig, PerplexityReport, Scoring};

/// Error type the model traits return: whatever the model's own error is.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A causal language model seen as a function from token windows to logits.
pub trait CausalLm: Sync {
    /// Number of logits per position.
    fn vocab_size(&self) -> usize;

    /// Next-token logits for positions `from..T` of every window.
    ///
    /// All windows have the same length `T` and `from < T`. The result is
    /// row-major `[windows.len(), T - from, vocab_size()]`: row `p - from` of
    /// window `b` holds the model's prediction for the token after
    /// `windows[b][p]`. Only the rows that are scored are asked for, so an
    /// implementation may skip the output projection of the others.
    fn logits(&self, windows: &[&[u32]], from: usize) -> Result<Vec<f32>, BoxError>;
}

/// The tokeniser that goes with a [`CausalLm`].
pub trait LmTokenizer {
    /// Tokenise the whole text once, with a leading BOS exactly when the model
    /// asks for one (GGUF `tokenizer.ggml.add_bos_token`), as llama.cpp's
    /// `common_tokenize(ctx, text, add_special = true)`.
    fn encode(&self, text: &str) -> Result<Vec<u32>, BoxError>;

    /// `Some(bos)` when the model adds BOS: llama-perplexity then puts BOS in
    /// the first position of every window.
    fn window_bos(&self) -> Option<u32>;

    /// Byte length of the UTF-8 text the tokens decode to (special tokens
    /// decode to nothing). Used for bits per byte.
    fn decoded_len(&self, tokens: &[u32]) -> Result<usize, BoxError>;
}

/// A sentence-embedding model.
pub trait SentenceEncoder: Sync {
    /// One embedding per sentence, all of the same dimension.
    fn embed(&self, sentences: &[&str]) -> Result<Vec<Vec<f32>>, BoxError>;
}

/// Why an evaluation could not produce a figure.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(
        "the text tokenizes to only {n_tokens} tokens, but perplexity with a context of {ctx} \
         needs at least {needed} tokens (2 x ctx, as llama-perplexity); use a longer text or a smaller --ctx"
    )]
    TextTooShort {
        n_tokens: usize,
        ctx: usize,
        needed: usize,
    },
    #[error("invalid evaluation settings: {0}")]
    Config(String),
    #[error("{model} failed: {source}")]
    Model {
        model: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("{model} returned {got} values, expected {expected} ({what})")]
    Shape {
        model: &'static str,
        got: usize,
        expected: usize,
        what: String,
    },
    #[error("{model} produced a non-finite {what} in window {window} at position {position}")]
    NonFinite {
        model: &'static str,
        what: &'static str,
        window: usize,
        position: usize,
    },
    #[error(
        "token id {token} at text position {position} is outside the vocabulary ({vocab} tokens)"
    )]
    TokenOutOfRange {
        token: u32,
        position: usize,
        vocab: usize,
    },
    #[error("the reference has a vocabulary of {reference} tokens but the model has {model}: KL divergence needs the same vocabulary")]
    VocabMismatch { model: usize, reference: usize },
    #[error("the reference tokenizes the text differently from the model (first difference at token {position}): KL divergence needs the same tokenizer")]
    TokenMismatch { position: usize },
    #[error("the text has no sentence of at least {min_words} words to embed")]
    NoSentences { min_words: usize },
    #[error("{model}'s embedding of sentence {sentence} {problem}")]
    Embedding {
        model: &'static str,
        sentence: usize,
        problem: String,
    },
}

impl EvalError {
    pub(crate) fn model(model: &'static str) -> impl FnOnce(BoxError) -> EvalError {
        move |source| EvalError::Model { model, source }
    }
}
