//! Our BERT sentence embeddings against candle-transformers' `bert::BertModel` with
//! mean pooling (and the L2 normalisation `modules.json` asks for) done here.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tersor_model::{Bert, LinearKind, XtxAccumulator};
use tokenizers::{PaddingParams, Tokenizer};

/// ~20 sentences of varied length from the evaluation text.
fn sentences(text: &str) -> Vec<String> {
    text.split(['.', '!', '?'])
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| s.len() > 20)
        .step_by(7)
        .take(20)
        .collect()
}

#[test]
fn minilm_embeddings_match_candle_bert() {
    let Some(assets) = common::assets() else {
        return;
    };
    let dir = assets.join("all-MiniLM-L6-v2");
    let text = std::fs::read_to_string(assets.join("botchan_eval.txt")).unwrap();
    let owned = sentences(&text);
    assert_eq!(owned.len(), 20);
    let sents: Vec<&str> = owned.iter().map(String::as_str).collect();

    let bert = Bert::from_hf_dir(&dir).unwrap();
    // 22,713,728 tensors' elements in model.safetensors, less the unused pooler
    // (384 x 384 + 384) and the `position_ids` buffer (512).
    assert_eq!(bert.param_count(), 22_713_728 - 147_840 - 512);
    let info = tersor_model::load(&dir).unwrap().describe();
    assert_eq!(
        (info.arch.as_str(), info.kind, info.n_layers),
        ("bert", "encoder", 6)
    );
    assert!(bert.pooling().mean && bert.pooling().normalize);
    let ours = bert.embed(&sents).unwrap();
    assert_eq!(ours.len(), 20);
    assert!(ours.iter().all(|e| e.len() == 384));

    // Reference: candle's BertModel on the same (batch-padded) token ids.
    let cfg: Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    // SAFETY: the asset file is read-only and not modified while mapped.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let model = BertModel::load(vb, &cfg).unwrap();
    let mut tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    tok.with_padding(Some(PaddingParams::default())); // pad to the longest
    tok.with_truncation(None).unwrap();
    let enc = tok.encode_batch(sents.clone(), true).unwrap();
    let t = enc[0].get_ids().len();
    let ids: Vec<u32> = enc.iter().flat_map(|e| e.get_ids().to_vec()).collect();
    let mask: Vec<u32> = enc
        .iter()
        .flat_map(|e| e.get_attention_mask().to_vec())
        .collect();
    let ids = Tensor::from_vec(ids, (20, t), &Device::Cpu).unwrap();
    let mask = Tensor::from_vec(mask, (20, t), &Device::Cpu).unwrap();
    let hidden = model
        .forward(&ids, &ids.zeros_like().unwrap(), Some(&mask))
        .unwrap();
    let m = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
    let pooled = (hidden.broadcast_mul(&m).unwrap().sum(1).unwrap())
        .broadcast_div(&m.sum(1).unwrap())
        .unwrap();
    let pooled: Vec<Vec<f32>> = pooled.to_vec2().unwrap();

    let mut max_diff = 0f32;
    for (a, b) in ours.iter().zip(&pooled) {
        let norm = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        for (x, y) in a.iter().zip(b) {
            max_diff = max_diff.max((x - y / norm).abs());
        }
        let our_norm = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (our_norm - 1.0).abs() < 1e-5,
            "embedding not normalised: {our_norm}"
        );
    }
    println!(
        "MiniLM: max |ours - candle| over 20 normalised embeddings = {max_diff:.2e} (T = {t})"
    );
    assert!(max_diff < 1e-4, "max abs diff {max_diff}");

    // Batching must not change an embedding (padding is masked out).
    let single = bert.embed(&sents[3..4]).unwrap();
    let d = single[0]
        .iter()
        .zip(&ours[3])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d < 1e-5, "single vs batched embedding differ by {d}");

    // The calibration hook sees only real tokens: as many rows as mask entries.
    let mut acc = XtxAccumulator::new();
    bert.embed_hooked(&sents[..4], Some(&mut acc)).unwrap();
    let n_tokens: usize = enc[..4]
        .iter()
        .map(|e| e.get_attention_mask().iter().filter(|&&m| m == 1).count())
        .sum();
    assert_eq!(acc.get(5, LinearKind::Down).unwrap().n_samples, n_tokens);
    assert_eq!(
        acc.get(0, LinearKind::Down).unwrap().xtx.dims(),
        [1536, 1536]
    );
}
