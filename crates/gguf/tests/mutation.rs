//! Mutation corpus: truncations, bit and byte flips, random multi-byte damage
//! and hand-made adversarial headers, on a small synthetic file and on the
//! header of the default model. Every case must return Ok or an error naming
//! the file, never panic, and allocate at most a small multiple of the file
//! size (measured with a counting global allocator; this file holds a single
//! test so nothing else allocates concurrently).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tersor_gguf::{GgufFile, GgufWriter, Value};

struct CountingAlloc;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        CURRENT.fetch_sub(l.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new >= l.size() {
                let now = CURRENT.fetch_add(new - l.size(), Relaxed) + new - l.size();
                PEAK.fetch_max(now, Relaxed);
            } else {
                CURRENT.fetch_sub(l.size() - new, Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const NAME: &str = "/corpus/case.gguf";

/// Allowed peak allocation while parsing `len` bytes. Parsed metadata costs
/// at most `size_of::<Value>()` (32) bytes per byte of file for arrays of
/// 1-byte elements; strings, tensor infos and key-value entries cost less
/// per byte; plus the lookup tables. Nothing is sized from an unchecked field.
fn budget(len: usize) -> usize {
    48 * len + (64 << 10)
}

#[derive(Default)]
struct Stats {
    cases: usize,
    ok: usize,
    /// Peak allocation / input size, over inputs of at least 4 KiB (below
    /// that the constant part of the budget dominates).
    worst_ratio: f64,
}

fn check(bytes: &[u8], what: &dyn Fn() -> String, stats: &mut Stats) {
    let input = bytes.to_vec();
    let len = input.len();
    let base = CURRENT.load(Relaxed);
    PEAK.store(base, Relaxed);
    let r = catch_unwind(AssertUnwindSafe(move || {
        let r = GgufFile::from_bytes(input, NAME);
        // Use what was returned, as a caller would.
        if let Ok(f) = &r {
            for t in f.tensors() {
                assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes());
            }
            if f.file_size() < 65536 {
                let w = GgufWriter::from_file(f);
                // Offsets are repacked; names, shapes and types are kept.
                let key = |t: &tersor_gguf::TensorInfo| (t.name.clone(), t.dims.clone(), t.ty);
                assert!(w.tensors().iter().map(key).eq(f.tensors().iter().map(key)));
            }
            for (_, v) in f.metadata() {
                let _ = v.to_string();
            }
        }
        r.map(|_| ()).map_err(|e| e.to_string())
    }));
    // `len` bytes of the input were already counted in `base`... no: the
    // input Vec was allocated before `base` was read, so it is not counted.
    let used = PEAK.load(Relaxed).saturating_sub(base);
    stats.cases += 1;
    match r {
        Err(_) => panic!("panicked on {}", what()),
        Ok(Ok(())) => stats.ok += 1,
        Ok(Err(msg)) => assert!(
            msg.starts_with(NAME),
            "error does not name the file ({}): {msg}",
            what()
        ),
    }
    assert!(
        used <= budget(len),
        "{}: parsing {len} bytes allocated {used} bytes",
        what()
    );
    if len >= 4096 {
        stats.worst_ratio = stats.worst_ratio.max(used as f64 / len as f64);
    }
}

fn synthetic_bytes() -> (Vec<u8>, usize) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.gguf");
    common::write_synthetic(&p, 3, 32);
    let b = std::fs::read(&p).unwrap();
    let header = GgufFile::from_bytes(b.clone(), "s").unwrap().data_offset() as usize;
    (b, header)
}

/// Little-endian field builders for hand-made headers.
fn s(x: &str) -> Vec<u8> {
    [&(x.len() as u64).to_le_bytes()[..], x.as_bytes()].concat()
}
fn u32b(x: u32) -> Vec<u8> {
    x.to_le_bytes().to_vec()
}
fn u64b(x: u64) -> Vec<u8> {
    x.to_le_bytes().to_vec()
}
fn file(n_tensors: u64, n_kv: u64, body: &[Vec<u8>], data: usize) -> Vec<u8> {
    let mut b = [b"GGUF".to_vec(), u32b(3), u64b(n_tensors), u64b(n_kv)].concat();
    b.extend(body.concat());
    b.resize(b.len().div_ceil(32) * 32 + data, 0);
    b
}
fn tinfo(name: &str, dims: &[u64], n_dims: u32, ty: u32, off: u64) -> Vec<u8> {
    let mut b = [s(name), u32b(n_dims)].concat();
    dims.iter().for_each(|d| b.extend(u64b(*d)));
    b.extend(u32b(ty));
    b.extend(u64b(off));
    b
}

fn adversarial() -> Vec<(String, Vec<u8>)> {
    let kv_u32 = |k: &str, v: u32| [s(k), u32b(4), u32b(v)].concat();
    let mut v: Vec<(String, Vec<u8>)> = vec![
        ("huge tensor_count".into(), file(u64::MAX, 0, &[], 64)),
        ("huge kv_count".into(), file(0, u64::MAX, &[], 64)),
        (
            "large kv_count".into(),
            file(0, 1 << 20, &[kv_u32("a", 1)], 64),
        ),
        (
            "i64 negative counts".into(),
            file(1 << 63, 1 << 63, &[], 64),
        ),
        (
            "huge key length".into(),
            file(0, 1, &[u64b(u64::MAX), u32b(4), u32b(0)], 64),
        ),
        (
            "huge string value".into(),
            file(0, 1, &[s("k"), u32b(8), u64b(u64::MAX - 3)], 64),
        ),
        (
            "string len = rest+1".into(),
            file(0, 1, &[s("k"), u32b(8), u64b(40)], 8),
        ),
        (
            "huge u8 array".into(),
            file(0, 1, &[s("k"), u32b(9), u32b(0), u64b(u64::MAX)], 64),
        ),
        (
            "huge string array".into(),
            file(0, 1, &[s("k"), u32b(9), u32b(8), u64b(1 << 61)], 64),
        ),
        (
            "array of unknown type".into(),
            file(0, 1, &[s("k"), u32b(9), u32b(77), u64b(1)], 64),
        ),
        (
            "unknown kv type".into(),
            file(0, 1, &[s("k"), u32b(u32::MAX), u32b(0)], 64),
        ),
        (
            "n_dims 255".into(),
            file(1, 0, &[tinfo("t", &[1; 8], 255, 0, 0)], 64),
        ),
        (
            "n_dims u32::MAX".into(),
            file(1, 0, &[tinfo("t", &[], u32::MAX, 0, 0)], 64),
        ),
        (
            "dims overflow u64".into(),
            file(
                1,
                0,
                &[tinfo("t", &[1 << 40, 1 << 40, 1 << 40], 3, 0, 0)],
                64,
            ),
        ),
        (
            "dims product 2^64".into(),
            file(1, 0, &[tinfo("t", &[1 << 32, 1 << 32], 2, 0, 0)], 64),
        ),
        (
            "dim u64::MAX".into(),
            file(1, 0, &[tinfo("t", &[u64::MAX], 1, 0, 0)], 64),
        ),
        (
            "dim zero".into(),
            file(1, 0, &[tinfo("t", &[0], 1, 0, 0)], 64),
        ),
        (
            "offset past EOF".into(),
            file(1, 0, &[tinfo("t", &[4], 1, 0, 1 << 20)], 64),
        ),
        (
            "offset u64::MAX aligned".into(),
            file(1, 0, &[tinfo("t", &[4], 1, 0, !31u64)], 64),
        ),
        (
            "end past EOF".into(),
            file(1, 0, &[tinfo("t", &[32], 1, 0, 0)], 64),
        ),
        (
            "unknown ggml type".into(),
            file(1, 0, &[tinfo("t", &[4], 1, 4, 0)], 64),
        ),
        (
            "ggml type u32::MAX".into(),
            file(1, 0, &[tinfo("t", &[4], 1, u32::MAX, 0)], 64),
        ),
        ("huge tensor name".into(), file(1, 0, &[u64b(1 << 60)], 64)),
        (
            "alignment 0".into(),
            file(0, 1, &[kv_u32("general.alignment", 0)], 64),
        ),
        (
            "alignment 3".into(),
            file(0, 1, &[kv_u32("general.alignment", 3)], 64),
        ),
        (
            "alignment 2^31".into(),
            file(
                1,
                1,
                &[
                    kv_u32("general.alignment", 1 << 31),
                    tinfo("t", &[1], 1, 0, 0),
                ],
                64,
            ),
        ),
        (
            "alignment as string".into(),
            file(0, 1, &[s("general.alignment"), u32b(8), s("32")], 64),
        ),
    ];
    // Arrays nested 10 000 deep (must not overflow the stack).
    let mut deep = [s("k"), u32b(9)].concat();
    for _ in 0..10_000 {
        deep.extend(u32b(9));
        deep.extend(u64b(1));
    }
    v.push(("deep nesting".into(), file(0, 1, &[deep], 0)));
    // Version variants.
    for ver in [0u32, 1, 4, 3u32.swap_bytes(), 2u32.swap_bytes(), u32::MAX] {
        let mut b = file(0, 0, &[], 0);
        b[4..8].copy_from_slice(&ver.to_le_bytes());
        v.push((format!("version {ver:#x}"), b));
    }
    v
}

#[test]
fn mutation_corpus_never_panics_or_overallocates() {
    let t0 = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(0x6767_7566);
    let mut st = Stats::default();

    // 1. Hand-made adversarial headers: all must be errors.
    for (name, b) in adversarial() {
        let ok_before = st.ok;
        check(&b, &|| name.clone(), &mut st);
        assert_eq!(st.ok, ok_before, "adversarial case '{name}' was accepted");
    }

    // 2. The small synthetic file.
    let (b, header) = synthetic_bytes();
    check(&b, &|| "the intact synthetic file".into(), &mut st);
    assert_eq!(st.ok, 1);
    for len in 0..b.len() {
        check(
            &b[..len],
            &|| format!("synthetic truncated to {len}"),
            &mut st,
        );
    }
    let mut m = b.clone();
    for pos in 0..header {
        for bit in 0..8 {
            m[pos] ^= 1 << bit;
            check(
                &m,
                &|| format!("synthetic, bit {bit} of byte {pos} flipped"),
                &mut st,
            );
            m[pos] ^= 1 << bit;
        }
        for val in [0x00, 0xff, 0x7f, 0x80, rng.random()] {
            let old = std::mem::replace(&mut m[pos], val);
            check(
                &m,
                &|| format!("synthetic, byte {pos} set to {val:#x}"),
                &mut st,
            );
            m[pos] = old;
        }
    }
    for case in 0..2000 {
        let mut m = b.clone();
        let n = rng.random_range(1..=8);
        for _ in 0..n {
            let pos = rng.random_range(0..header);
            m[pos] = rng.random();
        }
        if rng.random_bool(0.3) {
            m.truncate(rng.random_range(0..m.len()));
        }
        check(
            &m,
            &|| format!("synthetic random damage case {case}"),
            &mut st,
        );
    }
    eprintln!(
        "synthetic: {} cases, {} ok, {:.2?}",
        st.cases,
        st.ok,
        t0.elapsed()
    );

    // 3. The default model: its header region truncated at many lengths, and
    // flips in a copy with the real header but only its first few tensors.
    let Some(path) = common::asset("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let real = GgufFile::open(&path).unwrap();
    let hdr = &real.bytes()[..real.data_offset() as usize];
    let t1 = Instant::now();
    let mut lens: Vec<usize> = (0..24).map(|_| rng.random_range(0..hdr.len())).collect();
    lens.extend([0, 4, 8, 16, 23, 24, 25, hdr.len() - 1, hdr.len()]);
    for len in lens {
        check(
            &hdr[..len],
            &|| format!("model header truncated to {len}"),
            &mut st,
        );
    }
    eprintln!("model header truncations: {:.2?}", t1.elapsed());
    let mut w = GgufWriter::new(real.version(), real.alignment());
    for (k, v) in real.metadata() {
        w.add_metadata(k.clone(), v.clone());
    }
    let keep: Vec<_> = real
        .tensors()
        .iter()
        .filter(|t| t.n_bytes() <= 4096)
        .take(3)
        .collect();
    for t in &keep {
        w.add_tensor(t.name.clone(), t.dims.clone(), t.ty).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.gguf");
    w.write(&small, |i, o| Ok(o.write_all(real.tensor_data(keep[i]))?))
        .unwrap();
    let sb = std::fs::read(&small).unwrap();
    let ok_before = st.ok;
    check(&sb, &|| "reduced model".into(), &mut st);
    assert_eq!(st.ok, ok_before + 1);
    let sh = GgufFile::from_bytes(sb.clone(), "x").unwrap().data_offset() as usize;
    let t1 = Instant::now();
    let mut positions: Vec<usize> = (0..48).collect(); // magic, counts, first keys
    positions.extend((sh - 120)..sh); // tensor infos and padding
    positions.extend((0..32).map(|_| rng.random_range(0..sh)));
    let mut m = sb.clone();
    for pos in positions {
        let bit = rng.random_range(0..8);
        m[pos] ^= 1 << bit;
        check(
            &m,
            &|| format!("reduced model, bit {bit} of byte {pos} flipped"),
            &mut st,
        );
        m[pos] ^= 1 << bit;
    }
    eprintln!("reduced model flips: {:.2?}", t1.elapsed());
    // An element of the tokens array replaced by invalid UTF-8 is kept raw.
    let pat = b"<|endoftext|>\x0c\0\0\0\0\0\0\0<|im_start|>";
    let tok = sb.windows(pat.len()).position(|w| w == pat).unwrap();
    let mut m = sb.clone();
    m[tok] = 0xff;
    let f = GgufFile::from_bytes(m, "x").unwrap();
    let toks = f.get("tokenizer.ggml.tokens").unwrap();
    assert_eq!(toks.as_string_array(), None);
    assert_eq!(toks.as_bytes_array().unwrap()[0], b"\xff|endoftext|>");
    assert!(matches!(
        &toks.as_array().unwrap().values[0],
        Value::RawString(_)
    ));

    eprintln!(
        "total: {} cases, {} ok, worst allocation {:.1}x the input, {:.2?}",
        st.cases,
        st.ok,
        st.worst_ratio,
        t0.elapsed()
    );
}
