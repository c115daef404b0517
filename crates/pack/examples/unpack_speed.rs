//! Decode speed of one packed file in memory, many runs (for profiling):
//! `cargo run --release --example unpack_speed FILE [RUNS]`.
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("FILE");
    let runs: usize = args.next().map_or(10, |r| r.parse().expect("RUNS"));
    let bytes = std::fs::read(&path).expect("read");
    let (packed, _) = tersor_pack::pack_bytes("f", &bytes, &Default::default());
    let t = Instant::now();
    for _ in 0..runs {
        let a = tersor_pack::Archive::from_bytes(packed.as_slice(), "f").unwrap();
        let out = a.member_bytes(0).unwrap();
        assert_eq!(out.len(), bytes.len());
    }
    let s = t.elapsed().as_secs_f64() / runs as f64;
    println!("{:.0} MB/s", bytes.len() as f64 / s / 1e6);
}
