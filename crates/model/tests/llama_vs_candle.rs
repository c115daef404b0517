//! Our f32 decoder against candle-transformers' `quantized_llama` on the default GGUF.
//!
//! Two references, both run token by token with candle's KV cache and compared
//! position by position with our full-sequence logits:
//!
//! - candle with `CANDLE_DEQUANTIZE_ALL=1`: every weight dequantized to f32 and f32
//!   activations, i.e. the same reference model computed by an independent
//!   implementation. Differences are f32 rounding only.
//! - candle as shipped: quantized weights with activations quantized to 8 bits
//!   inside the matmuls (llama.cpp's `vec_dot_q4_1_q8_1`), so logits differ more;
//!   every argmax disagreement must be a near tie in our logits.

mod common;

use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use tersor_model::{LoadedModel, TextTokenizer};

/// Sequence length: we run all of it in one forward pass.
const N: usize = 256;
/// Positions compared with candle's quantized run, from the start (candle's Q4_1
/// dot product is scalar code, so this reference is slow: keep it short).
const N_QUANT: usize = 32;
/// The f32 comparison feeds candle the first `F32_PROMPT` tokens as one prompt
/// and then steps one token at a time, comparing positions `F32_PROMPT - 1..N`
/// (single-token steps with f32 weights are memory-bound).
const F32_PROMPT: usize = 224;

fn candle_model(path: &std::path::Path) -> ModelWeights {
    let mut file = std::fs::File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap()
}

/// candle's logits for positions `start..ids.len()`: the prefix `..=start` as one
/// prompt, then one token at a time.
fn candle_logits(m: &mut ModelWeights, ids: &[u32], start: usize) -> Vec<Vec<f32>> {
    let step = |m: &mut ModelWeights, toks: &[u32], pos: usize| -> Vec<f32> {
        let x = Tensor::new(toks, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        m.forward(&x, pos)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let mut out = vec![step(m, &ids[..=start], 0)];
    for pos in start + 1..ids.len() {
        out.push(step(m, &ids[pos..=pos], pos));
    }
    out
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

struct Cmp {
    max_diff: f32,
    mean_max_diff: f64,
    agree: usize,
    n: usize,
    /// Largest gap, in our logits, between our top token and candle's top token
    /// where the two disagree.
    worst_tie_gap: f32,
}

fn compare(ours: &[Vec<f32>], theirs: &[Vec<f32>]) -> Cmp {
    let mut c = Cmp {
        max_diff: 0.0,
        mean_max_diff: 0.0,
        agree: 0,
        n: ours.len(),
        worst_tie_gap: 0.0,
    };
    for (a, b) in ours.iter().zip(theirs) {
        assert!(a.iter().all(|v| v.is_finite()), "non-finite logits");
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        c.max_diff = c.max_diff.max(d);
        c.mean_max_diff += d as f64 / ours.len() as f64;
        let (ta, tb) = (argmax(a), argmax(b));
        if ta == tb {
            c.agree += 1;
        } else {
            c.worst_tie_gap = c.worst_tie_gap.max(a[ta] - a[tb]);
        }
    }
    c
}

#[test]
fn logits_match_candle_llama() {
    let Some(assets) = common::assets() else {
        return;
    };
    let path = assets.join(common::DEFAULT_GGUF);
    let tok = TextTokenizer::from_gguf(&path).unwrap();
    let text = std::fs::read_to_string(assets.join("botchan_eval.txt")).unwrap();
    let ids = tok.encode(&text, false).unwrap();
    let ids = &ids[..N];

    let t0 = Instant::now();
    let loaded = tersor_model::load(&path).unwrap();
    let info = loaded.describe();
    // llama.cpp reports 134,515,008 parameters for this model (tied output).
    assert_eq!(
        (info.arch.as_str(), info.kind, info.format),
        ("llama", "decoder", "gguf")
    );
    assert_eq!(
        (info.n_layers, info.hidden_size, info.vocab_size),
        (30, 576, 49152)
    );
    assert_eq!(info.param_count, 134_515_008);
    let LoadedModel::Decoder { model: ours, .. } = loaded else {
        panic!("expected a decoder")
    };
    let ours: Vec<Vec<f32>> = ours.forward(ids).unwrap().to_vec2().unwrap();
    println!("ours: {:.1} s", t0.elapsed().as_secs_f64());

    // 1. candle with its quantized matmuls (8-bit activations).
    let t0 = Instant::now();
    let q = candle_logits(&mut candle_model(&path), &ids[..N_QUANT], 0);
    let cq = compare(&ours[..N_QUANT], &q);
    println!(
        "vs candle quantized ({:.1} s): max |dlogit| {:.4}, mean per-position max {:.4}, \
         argmax agreement {}/{}, largest disagreement gap {:.4}",
        t0.elapsed().as_secs_f64(),
        cq.max_diff,
        cq.mean_max_diff,
        cq.agree,
        cq.n,
        cq.worst_tie_gap
    );

    // 2. candle with every weight dequantized to f32. The switch is read once per
    // thread, so the model is built and run on a fresh thread after setting it
    // (this is the only test in this binary: no other thread reads the environment).
    std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    let t0 = Instant::now();
    let owned = ids.to_vec();
    let f =
        std::thread::spawn(move || candle_logits(&mut candle_model(&path), &owned, F32_PROMPT - 1))
            .join()
            .unwrap();
    let cf = compare(&ours[F32_PROMPT - 1..], &f);
    println!(
        "vs candle f32 ({:.1} s): max |dlogit| {:.2e}, mean per-position max {:.2e}, \
         argmax agreement {}/{}",
        t0.elapsed().as_secs_f64(),
        cf.max_diff,
        cf.mean_max_diff,
        cf.agree,
        cf.n
    );

    // Same model, independent implementation: f32 rounding only.
    assert_eq!(cf.agree, cf.n, "argmax differs from candle's f32 run");
    assert!(
        cf.max_diff < 1e-3,
        "max |dlogit| vs candle f32 = {}",
        cf.max_diff
    );
    // 8-bit activations: bounded differences, disagreements only at near ties.
    // (Measured over all 256 positions: max |dlogit| 1.47, mean per-position max
    // 0.60, argmax agreement 250/256, largest disagreement gap 0.24.)
    assert!(
        cq.max_diff < 3.0,
        "max |dlogit| vs candle quantized = {}",
        cq.max_diff
    );
    assert!(
        cq.agree * 100 >= 90 * cq.n,
        "argmax agreement {}/{}",
        cq.agree,
        cq.n
    );
    assert!(
        cq.worst_tie_gap < 0.5,
        "candle's top token is {} below ours in our logits",
        cq.worst_tie_gap
    );
}
