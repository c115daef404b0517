//! Throughput of the rANS plane coder and the chunk codec on synthetic
//! planes (symbols per second), for tuning; the comparison with peers is
//! bench/pack_table.sh.
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tersor_pack::{chunk, nibble, planes::Layout, rans};

fn main() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let n = 1 << 20;
    let skew: Vec<u8> = (0..n)
        .map(|_| 120 + (rng.random::<u32>().trailing_zeros() as u8).min(20))
        .collect();
    let uni: Vec<u8> = (0..n)
        .map(|_| rng.random::<u8>() & 0xfe | (rng.random::<u8>() % 3 == 0) as u8)
        .collect();
    for (name, data) in [("skewed", &skew), ("near-uniform", &uni)] {
        let table = rans::Table::from_counts(&rans::histogram(data));
        let mut buf = Vec::new();
        let t = Instant::now();
        for _ in 0..10 {
            buf.clear();
            rans::encode(data, &table, &mut buf);
        }
        let enc = t.elapsed().as_secs_f64() / 10.0;
        let mut out = vec![0u8; n];
        let t = Instant::now();
        for _ in 0..10 {
            rans::decode(&buf, &table, &mut out).unwrap();
        }
        let dec = t.elapsed().as_secs_f64() / 10.0;
        assert_eq!(&out, data);
        println!(
            "{name:>13}: {:.3} bits/sym, encode {:.0} Msym/s, decode {:.0} Msym/s",
            buf.len() as f64 * 8.0 / n as f64,
            n as f64 / enc / 1e6,
            n as f64 / dec / 1e6
        );
    }
    // Q4-like quant bytes (two nibbles from a rounded bell): the byte coder
    // against the nibble coder, each with every decoder this CPU runs.
    let mut nib = || {
        let g: f64 = (0..4).map(|_| rng.random::<f64>()).sum::<f64>() - 2.0;
        (7.5 + g * 5.0).round().clamp(0.0, 15.0) as u8
    };
    let q4: Vec<u8> = (0..n).map(|_| nib() | nib() << 4).collect();
    let counts = rans::histogram(&q4);
    let table = rans::Table::from_counts(&counts);
    let mut buf = Vec::new();
    rans::encode(&q4, &table, &mut buf);
    let ntable = nibble::Table::from_counts(&nibble::histogram(&counts)).unwrap();
    let mut nbuf = Vec::new();
    nibble::encode(&q4, &ntable, &mut nbuf);
    println!(
        "q4 quants: bytes coder {:.4} of raw, nibble coder {:.4}; decode MB/s, best of 3 × 10:",
        buf.len() as f64 / n as f64,
        nbuf.len() as f64 / n as f64
    );
    let mut out = vec![0u8; n];
    let mut best = |f: &mut dyn FnMut(&mut [u8])| {
        let mut s = f64::INFINITY;
        for _ in 0..3 {
            let t = Instant::now();
            for _ in 0..10 {
                f(&mut out);
            }
            s = s.min(t.elapsed().as_secs_f64() / 10.0);
        }
        assert_eq!(out, q4);
        n as f64 / s / 1e6
    };
    for (i, name) in rans::decoders().iter().enumerate() {
        let mbs = best(&mut |o| rans::decode_using(i, &buf, &table, o).unwrap());
        println!("  bytes  {name:>10}: {mbs:.0}");
    }
    for (i, name) in nibble::decoders().iter().enumerate() {
        let mbs = best(&mut |o| nibble::decode_using(i, &nbuf, &ntable, o).unwrap());
        println!("  nibble {name:>10}: {mbs:.0}");
    }
    let floats: Vec<u8> = (0..n / 4)
        .flat_map(|_| ((rng.random::<f32>() - 0.5) * 0.1).to_le_bytes())
        .collect();
    let e = chunk::encode(&floats, chunk::Kind::Planes(Layout::F32), 0.0, true);
    let mut out = vec![0u8; floats.len()];
    let t = Instant::now();
    for _ in 0..10 {
        chunk::decode(&e.payload, &mut out).unwrap();
    }
    let dec = t.elapsed().as_secs_f64() / 10.0;
    println!(
        "f32 chunk: ratio {:.4}, decode {:.0} MB/s",
        e.payload.len() as f64 / floats.len() as f64,
        floats.len() as f64 / dec / 1e6
    );
}
