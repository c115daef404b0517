//! The evaluation traits implemented for `tersor-model`'s runtimes.

use tersor_model::{Bert, Llama, TextTokenizer};

use crate::{BoxError, CausalLm, LmTokenizer, SentenceEncoder};

impl CausalLm for Llama {
    fn vocab_size(&self) -> usize {
        Llama::vocab_size(self)
    }

    /// Runs the blocks on the whole windows but the final norm and the output
    /// projection (49152 x 576 for the default model) only on the rows that
    /// are scored, as llama-perplexity asks ggml for logits only at
    /// positions >= first.
    fn logits(&self, windows: &[&[u32]], from: usize) -> Result<Vec<f32>, BoxError> {
        let t = windows.first().map_or(0, |w| w.len());
        if from >= t {
            return Err(format!("logits from position {from} of windows of {t} tokens").into());
        }
        let mut h = self.embed_batch(windows)?;
        for layer in 0..self.n_layers() {
            h = self.block_forward(layer, &h, None)?;
        }
        let h = h.narrow(1, from, t - from)?.contiguous()?;
        Ok(self.head(&h)?.flatten_all()?.to_vec1::<f32>()?)
    }
}

impl LmTokenizer for TextTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>, BoxError> {
        Ok(TextTokenizer::encode(self, text, self.add_bos())?)
    }

    fn window_bos(&self) -> Option<u32> {
        // The tokenizer refuses add_bos without a BOS id when it is built.
        self.add_bos().then(|| self.bos_id()).flatten()
    }

    /// Length of `decode(tokens)`. The scored tokens of a window are one
    /// contiguous run of the text, so this is the byte length of that stretch
    /// of text, except that a multi-byte character split across the run's
    /// ends decodes to U+FFFD (3 bytes) in place of its bytes there.
    fn decoded_len(&self, tokens: &[u32]) -> Result<usize, BoxError> {
        Ok(self.decode(tokens)?.len())
    }
}

impl SentenceEncoder for Bert {
    fn embed(&self, sentences: &[&str]) -> Result<Vec<Vec<f32>>, BoxError> {
        Ok(Bert::embed(self, sentences)?)
    }
}
