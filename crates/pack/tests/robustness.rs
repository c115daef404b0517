//! The decoder against damaged and hostile input (a seeded mutation corpus
//! that CI runs on every change): every truncation, every single flipped
//! byte, random multi-byte damage (of a safetensors pack and of a Q4_1
//! GGUF pack with nibble-coded quants), and well-checksummed but
//! adversarial indexes must give an error — never a panic, a hang, a huge allocation
//! or wrong bytes.

use tersor_pack::format::{self, ChunkEntry, Index, Member, MemberKind, Segment};
use tersor_pack::{Archive, PackOptions};

/// A small pack with every codec in it: a safetensors header (zstd), f32
/// and bf16 planes (rANS), an I64 tensor (generic), a constant plane and a
/// pruned tensor (the sparse codec).
fn sample() -> (Vec<u8>, Vec<u8>) {
    let mut rng = tersor_testkit::Rng::new(11);
    let f32s: Vec<u8> = (0..600)
        .flat_map(|_| rng.uniform(0.1).to_le_bytes())
        .collect();
    let bf16s: Vec<u8> = (0..500)
        .flat_map(|_| half::bf16::from_f32(rng.uniform(0.02)).to_le_bytes())
        .collect();
    let sparse: Vec<u8> = (0..256)
        .flat_map(|i| {
            let x = if i % 5 < 3 { 0.0 } else { rng.uniform(0.05) };
            x.to_le_bytes()
        })
        .collect();
    let tensors: [(&str, &str, Vec<u8>); 5] = [
        ("a", "F32", f32s),
        ("b", "BF16", bf16s),
        ("c", "I64", vec![3u8; 32]),
        ("s", "F32", sparse),
        ("z", "F32", vec![0u8; 256]),
    ];
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, bytes) in &tensors {
        let width = if *dtype == "BF16" {
            2
        } else if *dtype == "I64" {
            8
        } else {
            4
        };
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": [bytes.len() / width],
                               "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend_from_slice(bytes);
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&header);
    file.extend(data);
    // Every plane that gains at all is coded, so rANS streams and tables
    // are part of what gets damaged.
    let opts = PackOptions {
        chunk_size: 1024,
        min_gain: 0.0,
        ..PackOptions::default()
    };
    let (packed, _) = tersor_pack::pack_bytes("sample.safetensors", &file, &opts);
    (file, packed)
}

/// A small Q4_1 GGUF whose quants take the nibble coder (format version 2's
/// plane codec), beside its scale planes (rANS) and header (zstd).
fn gguf_sample() -> (Vec<u8>, Vec<u8>) {
    let mut rng = tersor_testkit::Rng::new(12);
    let dir = tersor_testkit::TempDir::new("robust-gguf");
    let path = dir.path().join("q4_1.gguf");
    let mut w = tersor_gguf::GgufWriter::new(3, 32);
    w.add_metadata(
        "general.architecture",
        tersor_gguf::Value::String("llama".into()),
    );
    w.add_tensor("w", vec![512, 32], tersor_gguf::GgmlType::Q4_1)
        .unwrap();
    // block_q4_1: f16 d and m, then 16 bytes of bell-shaped nibbles.
    let blocks: Vec<u8> = (0..512)
        .flat_map(|_| {
            let d = half::f16::from_f32(0.002 + rng.uniform(0.001).abs());
            let m = half::f16::from_f32(-7.5 * d.to_f32());
            let mut nib = || {
                let g: f32 = (0..4).map(|_| rng.uniform(0.5)).sum();
                (7.5 + g * 5.0).round().clamp(0.0, 15.0) as u8
            };
            let qs: Vec<u8> = (0..16).map(|_| nib() | nib() << 4).collect();
            [d.to_le_bytes().to_vec(), m.to_le_bytes().to_vec(), qs].concat()
        })
        .collect();
    w.write(&path, |_, out| {
        out.write_all(&blocks)?;
        Ok(())
    })
    .unwrap();
    let file = std::fs::read(&path).unwrap();
    let (packed, _) = tersor_pack::pack_bytes("q4_1.gguf", &file, &PackOptions::default());
    let bytes_opts = PackOptions {
        nibbles: false,
        ..PackOptions::default()
    };
    let (as_bytes, _) = tersor_pack::pack_bytes("q4_1.gguf", &file, &bytes_opts);
    assert_ne!(
        packed.len(),
        as_bytes.len(),
        "the quants took the byte coder"
    );
    (file, packed)
}

fn decode(bytes: &[u8]) -> Result<Vec<u8>, tersor_pack::PackError> {
    let a = Archive::from_bytes(bytes, "t.tsp")?;
    Ok(a.read_all()?.remove(0).1)
}

#[test]
fn the_sample_decodes_and_uses_every_codec() {
    let (file, packed) = sample();
    assert_eq!(decode(&packed).unwrap(), file);
    let a = Archive::from_bytes(packed.as_slice(), "t").unwrap();
    let codecs: std::collections::BTreeSet<u8> = a.index().members[0]
        .segments
        .iter()
        .flat_map(|s| &s.chunks)
        .map(|c| packed[c.offset as usize])
        .collect();
    for c in [1, 2, 3] {
        assert!(codecs.contains(&c), "codec {c} missing: {codecs:?}");
    }
}

#[test]
fn the_gguf_sample_decodes() {
    let (file, packed) = gguf_sample();
    assert_eq!(decode(&packed).unwrap(), file);
}

#[test]
fn every_truncation_is_an_error() {
    for (_, packed) in [sample(), gguf_sample()] {
        for n in 0..packed.len() {
            assert!(
                decode(&packed[..n]).is_err(),
                "truncated to {n} bytes decoded"
            );
        }
    }
}

#[test]
fn every_single_flipped_byte_is_reported() {
    for (_, packed) in [sample(), gguf_sample()] {
        for i in 0..packed.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut b = packed.clone();
                b[i] ^= mask;
                assert!(
                    decode(&b).is_err(),
                    "flip {mask:#x} at byte {i} of {} went unnoticed",
                    packed.len()
                );
            }
        }
    }
}

#[test]
fn random_damage_is_an_error() {
    random_damage(&sample().1);
    random_damage(&gguf_sample().1);
}

fn random_damage(packed: &[u8]) {
    let mut rng = tersor_testkit::Rng::new(99);
    for _ in 0..3000 {
        let mut b = packed.to_vec();
        for _ in 0..1 + rng.below(8) {
            let i = rng.below(b.len() as u64) as usize;
            b[i] = rng.next_u64() as u8;
        }
        if b != packed {
            assert!(decode(&b).is_err());
        }
        // Random garbage of random length, with and without the magic.
        let n = rng.below(400) as usize;
        let mut g: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
        if n >= 16 && rng.below(2) == 0 {
            g[..16].copy_from_slice(&format::header());
        }
        assert!(decode(&g).is_err());
    }
}

/// Rebuilds a pack around a hand-made index, with valid checksums, so that
/// only the index's own rules stand in the way.
fn with_index(chunks: &[u8], index: &Index) -> Vec<u8> {
    let mut f = format::header().to_vec();
    f.extend_from_slice(chunks);
    let ib = index.to_bytes();
    let off = f.len() as u64;
    f.extend_from_slice(&ib);
    f.extend_from_slice(&format::footer(off, &ib));
    f
}

fn member(len: u64, chunks: Vec<ChunkEntry>) -> Member {
    Member {
        name: "m".into(),
        kind: MemberKind::Other,
        len,
        crc: 0,
        segments: vec![Segment {
            name: String::new(),
            layout: 0,
            offset: 0,
            len,
            chunks,
        }],
    }
}

#[test]
fn adversarial_indexes_are_rejected_before_allocating() {
    let payload = [0u8, 1, 2, 3];
    let chunk = |raw_len: u32| ChunkEntry {
        offset: format::HEADER_LEN,
        packed_len: payload.len() as u32,
        raw_len,
        packed_crc: crc32fast::hash(&payload),
        raw_crc: 0,
    };
    // A chunk claiming more than MAX_CHUNK, or a member larger than its
    // chunks, or chunks that do not tile the file.
    let cases = [
        Index {
            is_dir: false,
            members: vec![member(u32::MAX as u64, vec![chunk(u32::MAX)])],
        },
        Index {
            is_dir: false,
            members: vec![member(1 << 40, vec![chunk(3)])],
        },
        Index {
            is_dir: false,
            members: vec![member(
                6,
                vec![
                    chunk(3),
                    ChunkEntry {
                        offset: format::HEADER_LEN,
                        ..chunk(3)
                    },
                ],
            )],
        },
        Index {
            is_dir: false,
            members: vec![],
        },
        Index {
            is_dir: true,
            members: vec![Member {
                name: "../escape".into(),
                ..member(3, vec![chunk(3)])
            }],
        },
    ];
    for index in &cases {
        let f = with_index(&payload, index);
        let e = decode(&f).expect_err("adversarial index accepted");
        assert!(e.to_string().contains("corrupt"), "{e}");
    }
    // A count field of u32::MAX with nothing behind it: parsed lazily, fails
    // on the first missing byte.
    let mut ib = vec![0u8];
    ib.extend_from_slice(&u32::MAX.to_le_bytes());
    let mut f = format::header().to_vec();
    let off = f.len() as u64;
    f.extend_from_slice(&ib);
    f.extend_from_slice(&format::footer(off, &ib));
    assert!(decode(&f).is_err());
}
