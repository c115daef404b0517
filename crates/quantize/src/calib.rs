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

/// Block-by-block calibration for the jobs that compress block `l` on the outputs of the
/// already-compressed blocks before it (GPTQ's, SparseGPT's and SVD-LLM's "sequential"
/// mode): the hidden states of every window, advanced one block at a time.
pub(crate) struct Sequential {
    /// `[windows, ctx, hidden]` batches; empty when the job needs no calibration.
    hidden: Vec<candle_core::Tensor>,
    /// Calibration windows in use (0 when disabled).
    pub windows: usize,
}

impl Sequential {
    /// Tokenizes and embeds the calibration text in batches of `batch` windows, or
    /// does nothing when `enabled` is false.
    pub fn start(
        enabled: bool,
        model: &tersor_model::Llama,
        tokenizer: &TextTokenizer,
        cfg: &CalibConfig,
        batch: usize,
        progress: &(dyn Fn(crate::Event) + Sync),
    ) -> Result<Self> {
        let mut hidden = Vec::new();
        let mut windows = 0;
        if enabled {
            let cal = Calibration::load(cfg, tokenizer)?;
            windows = cal.windows.len();
            progress(crate::Event::Calibrated {
                windows,
                tokens: cal.n_tokens(),
            });
            for chunk in cal.windows.chunks(batch.max(1)) {
                let refs: Vec<&[u32]> = chunk.iter().map(|w| w.as_slice()).collect();
                hidden.push(model.embed_batch(&refs)?);
            }
        }
        Ok(Sequential { hidden, windows })
    }

    /// `XᵀX` per input site of block `l` on the current hidden states (`None` when
    /// disabled).
    pub fn stats(
        &self,
        model: &tersor_model::Llama,
        l: usize,
    ) -> Result<Option<[crate::SiteStats; 4]>> {
        if self.windows == 0 {
            return Ok(None);
        }
        let mut col = crate::Collector::new(1, false);
        for h in &self.hidden {
            model.block_forward(l, h, Some(&mut col))?;
        }
        Ok(Some(col.into_stats()))
    }

    /// Runs block `l` as it is now (compressed) on the hidden states: the inputs of
    /// block `l + 1`.
    pub fn advance(&mut self, model: &tersor_model::Llama, l: usize) -> Result<()> {
        if self.windows > 0 && l + 1 < model.n_layers() {
            for h in self.hidden.iter_mut() {
                *h = model.block_forward(l, h, None)?;
            }
        }
        Ok(())
    }
}
