//! Pure-Rust checks of the GPTQ layout: hand-computed words, pack → unpack identity
//! (3-bit boundary fields included), fp16 dequantization, and errors on bad input.

mod common;

use common::{random_layer, LayerSpec, Rng};
use half::f16;
use tersor_gptq::{PackedLinear, QuantizedLinear, Shaped};

fn layer(bits: u8, out: usize, inp: usize, codes: Vec<u8>, zero: u8) -> QuantizedLinear {
    QuantizedLinear {
        bits,
        out_features: out,
        in_features: inp,
        codes,
        scales: vec![f16::from_f32(0.5); out],
        zeros: vec![zero; out],
        g_idx: vec![0; inp],
    }
}

/// 4 bits, [8 out, 8 in]: word `o` of qweight is `sum_j codes[o, j] << 4j`; a zero
/// point of 8 is stored as 7 in every nibble.
#[test]
fn four_bit_words_by_hand() {
    let codes: Vec<u8> = (0..64).map(|k| (k * 3 % 16) as u8).collect();
    let p = layer(4, 8, 8, codes.clone(), 8).pack().unwrap();
    assert_eq!(p.qweight_shape(), [1, 8]);
    assert_eq!(p.qzeros_shape(), [1, 1]);
    for o in 0..8 {
        let want = (0..8).fold(0u32, |w, j| w | u32::from(codes[o * 8 + j]) << (4 * j));
        assert_eq!(p.qweight[o] as u32, want, "output {o}");
    }
    assert_eq!(p.qzeros, vec![0x7777_7777]);
    assert_eq!(p.g_idx, vec![0; 8]);
}

/// 3 bits, one run of 32 inputs with every code 7: three all-ones words; with only
/// value 10 (the field split 2 + 1 across words 0/1) set, bits 30, 31 of word 0 and bit
/// 0 of word 1; with only value 21 (split 1 + 2), bit 31 of word 1 and bits 0, 1 of
/// word 2.
#[test]
fn three_bit_boundary_fields_by_hand() {
    let one_run = |set: &[usize]| {
        let codes = (0..32 * 32)
            .map(|k| if set.contains(&(k % 32)) { 7 } else { 0 })
            .collect();
        layer(3, 32, 32, codes, 4).pack().unwrap()
    };
    let all = one_run(&(0..32).collect::<Vec<_>>());
    assert_eq!(all.qweight_shape(), [3, 32]);
    assert!(all.qweight.iter().all(|&w| w == -1));
    let p = one_run(&[10]);
    assert_eq!(
        (
            p.qweight[0] as u32,
            p.qweight[32] as u32,
            p.qweight[64] as u32
        ),
        (0xC000_0000, 1, 0)
    );
    let p = one_run(&[21]);
    assert_eq!(
        (
            p.qweight[0] as u32,
            p.qweight[32] as u32,
            p.qweight[64] as u32
        ),
        (0, 0x8000_0000, 3)
    );
    // Zero points: 32 outputs of zero 4 store 3 = 0b011 in each field.
    let want: Vec<i32> = {
        let mut w = [0u64; 2];
        // stream of 96 bits: 3 at bit 3k.
        let mut bits = 0u128;
        for k in 0..32 {
            bits |= 3u128 << (3 * k);
        }
        w[0] = bits as u64;
        w[1] = (bits >> 64) as u64;
        vec![
            w[0] as u32 as i32,
            (w[0] >> 32) as u32 as i32,
            w[1] as u32 as i32,
        ]
    };
    assert_eq!(p.qzeros, want);
}

#[test]
fn pack_unpack_identity_all_widths() {
    let mut rng = Rng::new(7);
    for bits in [2u8, 3, 4, 8] {
        for (out, inp, gs, sym, act) in [
            (32, 32, None, false, false),
            (64, 96, Some(32), false, true),
            (32, 160, Some(64), true, true),
            (96, 128, Some(128), false, false),
            (32, 256, Some(48), false, true),
        ] {
            let spec = LayerSpec {
                bits,
                out_features: out,
                in_features: inp,
                group_size: gs,
                sym,
                act_order: act,
            };
            let q = random_layer(&mut rng, spec);
            let p = q.pack().unwrap();
            assert_eq!(p.qweight.len(), inp * bits as usize / 32 * out, "{spec:?}");
            assert_eq!(p.unpack().unwrap(), q, "{spec:?}");
            // The same through the checkpoint-tensor constructor.
            let p2 = PackedLinear::from_tensors(
                bits,
                Shaped {
                    shape: p.qweight_shape().to_vec(),
                    data: p.qweight.clone(),
                },
                Shaped {
                    shape: p.qzeros_shape().to_vec(),
                    data: p.qzeros.clone(),
                },
                Shaped {
                    shape: p.scales_shape().to_vec(),
                    data: p.scales.clone(),
                },
                Shaped {
                    shape: vec![inp],
                    data: p.g_idx.clone(),
                },
            )
            .unwrap();
            assert_eq!(p2, p);
            let w = p2.dequantize().unwrap();
            assert_eq!(w, q.dequantize().unwrap());
        }
    }
}

/// Extreme codes and zero points (all 0 / all maxq, zero 1 / maxq) survive packing.
#[test]
fn extreme_values_round_trip() {
    for bits in [2u8, 3, 4, 8] {
        let maxq = ((1u32 << bits) - 1) as u8;
        for (code, zero) in [(0, 1), (maxq, maxq), (maxq, 1), (0, maxq)] {
            let q = layer(bits, 32, 64, vec![code; 32 * 64], zero);
            let p = q.pack().unwrap();
            assert_eq!(
                p.unpack().unwrap(),
                q,
                "bits {bits} code {code} zero {zero}"
            );
        }
    }
}

/// `fp16(scale * (q - zero))`, checked against products worked out by hand.
#[test]
fn dequantize_rounds_like_fp16() {
    let mut q = layer(
        8,
        4,
        4,
        vec![0, 1, 255, 200, 9, 9, 9, 9, 0, 0, 0, 0, 7, 7, 7, 7],
        9,
    );
    // 0.1 in fp16 is 0.0999755859375; times -9 = -0.8997802734375 = -1842.75 * 2^-11,
    // and fp16 values near 0.9 are spaced 2^-11 apart: it rounds to -1843 * 2^-11.
    q.scales = vec![f16::from_f32(0.1); 4];
    let w = q.dequantize().unwrap();
    let s = f16::from_f32(0.1).to_f32();
    assert_eq!(s, 0.099_975_586);
    assert_eq!(w[0], -0.899_902_34);
    assert_eq!(w[1], f16::from_f32(s * -8.0).to_f32());
    assert_eq!(w[2], f16::from_f32(s * 246.0).to_f32());
    assert_eq!(w[4..8], [0.0; 4]);
    assert_eq!(w[12], f16::from_f32(s * -2.0).to_f32());
    // A product beyond fp16 range is an error, not infinity.
    q.scales = vec![f16::from_f32(60000.0); 4];
    let e = q.dequantize().unwrap_err().to_string();
    assert!(e.contains("overflows fp16"), "{e}");
}

#[test]
fn invalid_layers_are_rejected() {
    let base = layer(4, 8, 8, vec![1; 64], 8);
    let err = |q: QuantizedLinear| q.pack().unwrap_err().to_string();
    let mut q = base.clone();
    q.bits = 5;
    assert!(err(q).contains("5-bit"));
    let mut q = base.clone();
    q.codes[3] = 16;
    assert!(err(q).contains("code 16"));
    let mut q = base.clone();
    q.zeros[0] = 0;
    assert!(err(q).contains("zero point 0"));
    let mut q = base.clone();
    q.zeros[0] = 16;
    assert!(err(q).contains("zero point 16"));
    let mut q = base.clone();
    q.g_idx[2] = 1;
    assert!(err(q).contains("g_idx[2] = 1"));
    let mut q = base.clone();
    q.codes.pop();
    assert!(err(q).contains("codes has 63"));
    let mut q = base.clone();
    q.scales[1] = f16::NAN;
    assert!(err(q).contains("not finite"));
    // 3 bits needs multiples of 32; 4 bits multiples of 8.
    let q = layer(3, 8, 8, vec![1; 64], 4);
    assert!(err(q).contains("multiple of 32"));
    let q = layer(4, 8, 12, vec![1; 96], 8);
    assert!(err(q).contains("in_features = 12"));
}

#[test]
fn bad_checkpoint_tensors_are_rejected() {
    let p = layer(4, 8, 16, vec![3; 128], 8).pack().unwrap();
    let sh = |shape: &[usize], data: &[i32]| Shaped {
        shape: shape.to_vec(),
        data: data.to_vec(),
    };
    let scales = || Shaped {
        shape: vec![1, 8],
        data: p.scales.clone(),
    };
    let build = |qw: Shaped<i32>, qz: Shaped<i32>, sc: Shaped<f16>, g: Shaped<i32>| {
        PackedLinear::from_tensors(4, qw, qz, sc, g)
            .and_then(|p| p.unpack())
            .unwrap_err()
            .to_string()
    };
    let (qw, qz, g) = (&p.qweight, &p.qzeros, &p.g_idx);
    // qweight rows must be in * bits / 32.
    let e = build(sh(&[1, 16], qw), sh(&[1, 1], qz), scales(), sh(&[16], g));
    assert!(e.contains("qweight has 1 rows"), "{e}");
    // Shape and data length disagree.
    let e = build(sh(&[2, 9], qw), sh(&[1, 1], qz), scales(), sh(&[16], g));
    assert!(e.contains("does not match"), "{e}");
    let e = build(sh(&[2, 8], qw), sh(&[1, 2], qz), scales(), sh(&[16], g));
    assert!(e.contains("qzeros"), "{e}");
    let e = build(sh(&[2, 8], qw), sh(&[1, 1], qz), scales(), sh(&[4, 4], g));
    assert!(e.contains("1-D"), "{e}");
    // Negative group index.
    let mut g2 = g.clone();
    g2[5] = -1;
    let e = build(sh(&[2, 8], qw), sh(&[1, 1], qz), scales(), sh(&[16], &g2));
    assert!(e.contains("g_idx[5] = -1"), "{e}");
    // A stored zero field of 15 (zero point 0 in v1) is ambiguous.
    let e = build(
        sh(&[2, 8], qw),
        sh(&[1, 1], &[0x7777_77F7]),
        scales(),
        sh(&[16], g),
    );
    assert!(
        e.contains("group 0, output 1") && e.contains("zero point 0"),
        "{e}"
    );
    // A hand-built PackedLinear with inconsistent lengths.
    let mut bad = p.clone();
    bad.qweight.pop();
    assert!(bad.unpack().unwrap_err().to_string().contains("qweight"));
}
