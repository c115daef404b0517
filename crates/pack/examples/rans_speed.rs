//! Throughput of the rANS plane coder and the chunk codec on synthetic
//! planes (symbols per second), for tuning; the comparison with peers is
//! bench/pack_table.sh.
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tersor_pack::{chunk, planes::Layout, rans};

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
    let floats: Vec<u8> = (0..n / 4)
        .flat_map(|_| ((rng.random::<f32>() - 0.5) * 0.1).to_le_bytes())
        .collect();
    let e = chunk::encode(&floats, chunk::Kind::Planes(Layout::F32), 0.0);
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
