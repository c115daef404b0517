//! Layer-wise forward and calibration hooks on a tiny random decoder.

mod common;

use candle_core::{DType, Tensor};
use common::Rng;
use tersor_model::{
    ActivationHook, LinearKind, Llama, LlamaConfig, RopeScaling, RopeStyle, TensorMap,
    TensorNaming, XtxAccumulator,
};

fn tiny_config(rope_style: RopeStyle, attention_bias: bool) -> LlamaConfig {
    LlamaConfig {
        arch: "llama".into(),
        vocab_size: 61,
        hidden_size: 32,
        intermediate_size: 48,
        n_layers: 3,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_style,
        rope_scaling: RopeScaling::None,
        attention_bias,
        tie_embeddings: true,
        sliding_window: None,
    }
}

/// Random weights for `c` with GGUF names.
fn tiny_weights(c: &LlamaConfig, seed: u64) -> TensorMap {
    let mut rng = Rng::new(seed);
    let n = TensorNaming::Gguf;
    let mut m = TensorMap::new("tiny");
    let (d, f, q, kv) = (
        c.hidden_size,
        c.intermediate_size,
        c.n_heads * c.head_dim,
        c.n_kv_heads * c.head_dim,
    );
    m.insert_vec(
        n.embed(),
        rng.vec(c.vocab_size * d, 1.0),
        &[c.vocab_size, d],
    )
    .unwrap();
    let norm: Vec<f32> = (0..d).map(|_| 1.0 + rng.uniform(0.2)).collect();
    m.insert_vec(n.final_norm(), norm, &[d]).unwrap();
    for l in 0..c.n_layers {
        for name in [n.attn_norm(l), n.ffn_norm(l)] {
            let w: Vec<f32> = (0..d).map(|_| 1.0 + rng.uniform(0.2)).collect();
            m.insert_vec(name, w, &[d]).unwrap();
        }
        for (kind, out, inp) in [
            (LinearKind::Q, q, d),
            (LinearKind::K, kv, d),
            (LinearKind::V, kv, d),
            (LinearKind::O, d, q),
            (LinearKind::Gate, f, d),
            (LinearKind::Up, f, d),
            (LinearKind::Down, d, f),
        ] {
            let s = 1.0 / (inp as f32).sqrt();
            m.insert_vec(
                n.linear(l, kind, "weight"),
                rng.vec(out * inp, s),
                &[out, inp],
            )
            .unwrap();
        }
        if c.attention_bias {
            for (kind, out) in [(LinearKind::Q, q), (LinearKind::K, kv), (LinearKind::V, kv)] {
                m.insert_vec(n.linear(l, kind, "bias"), rng.vec(out, 0.1), &[out])
                    .unwrap();
            }
        }
    }
    m
}

fn tiny_model(rope_style: RopeStyle, attention_bias: bool) -> Llama {
    let c = tiny_config(rope_style, attention_bias);
    Llama::from_weights(c.clone(), &tiny_weights(&c, 7), TensorNaming::Gguf).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn tokens(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| (rng.next_u64() % 61) as u32).collect()
}

#[test]
fn blockwise_forward_equals_full_forward() {
    for (style, bias) in [
        (RopeStyle::Interleaved, false),
        (RopeStyle::HalfSplit, true),
    ] {
        let m = tiny_model(style, bias);
        let toks = tokens(19, 1);
        let full = m.forward(&toks).unwrap();
        assert_eq!(full.dims(), [19, 61]);
        let mut h = m.embed(&toks).unwrap();
        for i in 0..m.n_layers() {
            h = m.block_forward(i, &h, None).unwrap();
        }
        let step = m.head(&h).unwrap().squeeze(0).unwrap();
        assert_eq!(max_abs_diff(&full, &step), 0.0);
    }
}

#[test]
fn batch_forward_equals_single_forward_and_is_causal() {
    let m = tiny_model(RopeStyle::Interleaved, false);
    let a = tokens(17, 2);
    let b = tokens(17, 3);
    let batch = m.forward_batch(&[&a, &b]).unwrap();
    assert_eq!(batch.dims(), [2, 17, 61]);
    for (i, s) in [&a, &b].into_iter().enumerate() {
        let single = m.forward(s).unwrap();
        let d = max_abs_diff(&batch.get(i).unwrap(), &single);
        assert!(d < 1e-5, "sequence {i}: batch vs single max diff {d}");
    }
    // Causality: logits at position p depend only on tokens 0..=p.
    let prefix = m.forward(&a[..9]).unwrap();
    let d = max_abs_diff(&prefix, &m.forward(&a).unwrap().narrow(0, 0, 9).unwrap());
    assert!(d < 1e-5, "prefix logits changed by later tokens: {d}");
    // Mismatched lengths and out-of-range ids are errors, not panics.
    assert!(m.forward_batch(&[&a, &b[..3]]).is_err());
    assert!(m.forward(&[61]).is_err());
    assert!(m.forward(&[]).is_err());
}

/// Records every hook call.
#[derive(Default)]
struct Recorder(Vec<(usize, LinearKind, Tensor)>);

impl ActivationHook for Recorder {
    fn on_linear_input(
        &mut self,
        layer: usize,
        kind: LinearKind,
        x: &Tensor,
    ) -> tersor_model::Result<()> {
        self.0.push((layer, kind, x.clone()));
        Ok(())
    }
}

#[test]
fn xtx_accumulator_equals_direct_gram_matrix() {
    let m = tiny_model(RopeStyle::HalfSplit, true);
    let seqs = [tokens(13, 4), tokens(11, 5)];
    let mut acc = XtxAccumulator::new();
    let mut rec = Recorder::default();
    for s in &seqs {
        let hooked = m.forward_hooked(s, &mut acc).unwrap();
        assert_eq!(max_abs_diff(&hooked, &m.forward(s).unwrap()), 0.0);
        m.forward_hooked(s, &mut rec).unwrap();
    }
    assert_eq!(
        rec.0.len(),
        2 * 3 * 7,
        "one call per linear per layer per sequence"
    );
    for layer in 0..3 {
        for kind in LinearKind::ALL {
            // Direct X^T X in f64 from the recorded inputs of both sequences.
            let xs: Vec<Tensor> = rec
                .0
                .iter()
                .filter(|(l, k, _)| *l == layer && *k == kind)
                .map(|(_, _, x)| x.clone())
                .collect();
            let x = Tensor::cat(&xs, 0).unwrap().to_dtype(DType::F64).unwrap();
            let (n, d) = x.dims2().unwrap();
            let want: Vec<Vec<f64>> = {
                let rows: Vec<Vec<f64>> = x.to_vec2().unwrap();
                (0..d)
                    .map(|i| {
                        (0..d)
                            .map(|j| rows.iter().map(|r| r[i] * r[j]).sum())
                            .collect()
                    })
                    .collect()
            };
            let got = acc.get(layer, kind).unwrap();
            assert_eq!(got.n_samples, n);
            assert_eq!(n, 24);
            let got: Vec<Vec<f64>> = got.xtx.to_vec2().unwrap();
            for i in 0..d {
                for j in 0..d {
                    let (g, w) = (got[i][j], want[i][j]);
                    assert!(
                        (g - w).abs() <= 1e-9 * (1.0 + w.abs()),
                        "layer {layer} {kind} [{i},{j}]: {g} vs {w}"
                    );
                }
            }
        }
    }
    // Expected widths: the Down input is the MLP hidden size, O's the attention width.
    assert_eq!(acc.get(0, LinearKind::Down).unwrap().xtx.dims(), [48, 48]);
    assert_eq!(acc.get(0, LinearKind::O).unwrap().xtx.dims(), [32, 32]);
    // A layer-restricted accumulator keeps only its layers.
    let mut one = XtxAccumulator::for_layers(1..2).with_kinds(&[LinearKind::Down]);
    m.forward_hooked(&seqs[0], &mut one).unwrap();
    assert_eq!(one.keys().collect::<Vec<_>>(), vec![(1, LinearKind::Down)]);
}

#[test]
fn set_linear_weight_changes_the_output() {
    let mut m = tiny_model(RopeStyle::Interleaved, false);
    let toks = tokens(8, 6);
    let before = m.forward(&toks).unwrap();
    let w = m.linear_weight(1, LinearKind::Down).unwrap().clone();
    assert_eq!(w.dims(), [32, 48]);
    // Same weight back: identical output; zeroed weight: different output.
    m.set_linear_weight(1, LinearKind::Down, w.clone()).unwrap();
    assert_eq!(max_abs_diff(&before, &m.forward(&toks).unwrap()), 0.0);
    m.set_linear_weight(1, LinearKind::Down, w.zeros_like().unwrap())
        .unwrap();
    assert!(max_abs_diff(&before, &m.forward(&toks).unwrap()) > 1e-3);
    // Wrong shape or layer: error.
    assert!(m
        .set_linear_weight(1, LinearKind::Down, w.t().unwrap())
        .is_err());
    assert!(m.set_linear_weight(3, LinearKind::Down, w).is_err());
}
