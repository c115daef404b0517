//! Decode speed of one packed file in memory, best and median of many runs
//! (for profiling):
//! `cargo run --release --example unpack_speed FILE [RUNS]`.
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("FILE");
    let runs: usize = args.next().map_or(10, |r| r.parse().expect("RUNS"));
    let bytes = std::fs::read(&path).expect("read");
    let (packed, _) = tersor_pack::pack_bytes("f", &bytes, &Default::default());
    let mut secs: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            let a = tersor_pack::Archive::from_bytes(packed.as_slice(), "f").unwrap();
            let out = a.member_bytes(0).unwrap();
            assert_eq!(out.len(), bytes.len());
            t.elapsed().as_secs_f64()
        })
        .collect();
    secs.sort_by(f64::total_cmp);
    let mbs = |s: f64| bytes.len() as f64 / s / 1e6;
    println!(
        "best {:.0} MB/s, median {:.0} MB/s",
        mbs(secs[0]),
        mbs(secs[runs / 2])
    );
}
