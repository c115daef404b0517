//! Calibration windows: the token sequences whose activations drive imatrix, GPTQ and
//! AWQ.
//!
//! The text is tokenized once and cut into consecutive windows of `ctx` tokens, as
//! `llama-imatrix` does (`-c ctx`): when the model adds BOS, the first token of every
//! window is replaced by BOS. A text shorter than one window is an error, never a
//! silently empty calibration.

use std::path::{Path, PathBuf};

use tersor_model::TextTokenizer;

use crate::error::{QuantizeError, Result};

/// Calibration settings (`--calib`, `--calib-tokens`, `--ctx`).
#[derive(Clone, Debug)]
pub struct CalibConfig {
    /// The text file (the default is the Botchan calibration split).
    pub path: PathBuf,
    /// At most this many tokens are used (whole windows only).
    pub max_tokens: usize,
    /// Window length in tokens.
    pub ctx: usize,
}

/// Tokenized calibration windows, each exactly `ctx` tokens.
#[derive(Clone, Debug)]
pub struct Calibration {
    pub windows: Vec<Vec<u32>>,
    pub ctx: usize,
    /// Tokens in the whole text (before cutting to `max_tokens`).
    pub text_tokens: usize,
}

impl Calibration {
    pub fn n_tokens(&self) -> usize {
        self.windows.len() * self.ctx
    }

    /// Read and tokenize the calibration text.
    pub fn load(cfg: &CalibConfig, tok: &TextTokenizer) -> Result<Self> {
        let text = std::fs::read_to_string(&cfg.path).map_err(|e| QuantizeError::Calibration {
            path: cfg.path.clone(),
            msg: format!("cannot read it as UTF-8 text: {e}"),
        })?;
        Self::from_text(&text, &cfg.path, cfg, tok)
    }

    pub fn from_text(
        text: &str,
        path: &Path,
        cfg: &CalibConfig,
        tok: &TextTokenizer,
    ) -> Result<Self> {
        let bad = |msg: String| QuantizeError::Calibration {
            path: path.to_path_buf(),
            msg,
        };
        if cfg.ctx < 2 {
            return Err(bad(format!("--ctx {} is too small", cfg.ctx)));
        }
        let tokens = tok
            .encode(text, false)
            .map_err(|e| bad(format!("tokenization failed: {e}")))?;
        let n_windows = (tokens.len() / cfg.ctx).min(cfg.max_tokens / cfg.ctx);
        if n_windows == 0 {
            return Err(bad(format!(
                "{} tokens, fewer than one window of --ctx {} (with --calib-tokens {}); give a longer text or a smaller --ctx",
                tokens.len(),
                cfg.ctx,
                cfg.max_tokens
            )));
        }
        let bos = if tok.add_bos() { tok.bos_id() } else { None };
        let windows = tokens
            .chunks_exact(cfg.ctx)
            .take(n_windows)
            .map(|w| {
                let mut w = w.to_vec();
                if let Some(b) = bos {
                    w[0] = b;
                }
                w
            })
            .collect();
        Ok(Calibration {
            windows,
            ctx: cfg.ctx,
            text_tokens: tokens.len(),
        })
    }
}
