//! Mutation corpus: truncations, bit and byte flips, random damage and
//! hand-made adversarial headers. Every case must return Ok or an error
//! naming the file, never panic, and never allocate more than a small
//! multiple of the header size (counting global allocator; a single test in
//! this file so nothing else allocates concurrently).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tersor_safetensors::{write_safetensors, Dtype, SafetensorsModel};

struct CountingAlloc;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = CURRENT.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(now, Relaxed);
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            grew(l.size());
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
                grew(new - l.size());
            } else {
                CURRENT.fetch_sub(l.size() - new, Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const NAME: &str = "/corpus/case.safetensors";

#[derive(Default)]
struct Stats {
    cases: usize,
    ok: usize,
    max_alloc: usize,
}

/// Parses `bytes`; the peak allocation must stay within a multiple of the
/// JSON header actually present (the data section is never copied), so a
/// huge length field cannot drive an allocation.
fn check(bytes: Vec<u8>, what: &dyn Fn() -> String, st: &mut Stats) {
    let header_len = bytes.len().min(bytes.get(..8).map_or(0, |b| {
        u64::from_le_bytes(b.try_into().unwrap()).min(usize::MAX as u64) as usize
    }));
    let small = bytes.len() < (1 << 20);
    let base = CURRENT.load(Relaxed);
    PEAK.store(base, Relaxed);
    let r = catch_unwind(AssertUnwindSafe(move || {
        let r = SafetensorsModel::from_bytes(bytes, NAME);
        if let Ok(m) = &r {
            for n in m.names() {
                let info = m.info(n).unwrap();
                let (_, _, raw) = m.raw(n).unwrap();
                assert_eq!(raw.len(), info.n_bytes);
                if small {
                    let _ = m.to_f32(n);
                }
            }
        }
        r.map(|_| ()).map_err(|e| e.to_string())
    }));
    let used = PEAK.load(Relaxed).saturating_sub(base);
    st.cases += 1;
    st.max_alloc = st.max_alloc.max(used);
    match r {
        Err(_) => panic!("panicked on {}", what()),
        Ok(Ok(())) => st.ok += 1,
        Ok(Err(m)) => assert!(
            m.starts_with(NAME),
            "error does not name the file ({}): {m}",
            what()
        ),
    }
    // to_f32 of small files allocates 4 bytes per data byte at most.
    let budget = 64 * header_len + if small { 8 << 20 } else { 256 << 10 };
    assert!(
        used <= budget,
        "{}: allocated {used} bytes (budget {budget})",
        what()
    );
}

/// A file from a raw header string and `data` bytes of data section.
fn raw(header: &str, data: usize) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.resize(b.len() + data, 0);
    b
}

fn adversarial() -> Vec<(&'static str, Vec<u8>)> {
    let t = |name: &str, dtype: &str, shape: &str, s: u64, e: u64| {
        format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{s},{e}]}}"#)
    };
    let h = |entries: &[String]| format!("{{{}}}", entries.join(","));
    let mut v = vec![
        ("empty file", vec![]),
        ("7 bytes", vec![1; 7]),
        (
            "header length u64::MAX",
            [u64::MAX.to_le_bytes().to_vec(), b"{}".to_vec()].concat(),
        ),
        (
            "header length 2^63",
            [(1u64 << 63).to_le_bytes().to_vec(), b"{}".to_vec()].concat(),
        ),
        (
            "header length = file + 1",
            [3u64.to_le_bytes().to_vec(), b"{}".to_vec()].concat(),
        ),
        (
            "header length 0",
            [0u64.to_le_bytes().to_vec(), b"{}".to_vec()].concat(),
        ),
        (
            "offsets past EOF",
            raw(&h(&[t("a", "F32", "[4]", 0, 16)]), 8),
        ),
        (
            "end offset huge",
            raw(&h(&[t("a", "U8", "[4]", 0, u64::MAX)]), 8),
        ),
        (
            "overlap",
            raw(
                &h(&[t("a", "F32", "[2]", 0, 8), t("b", "F32", "[2]", 4, 12)]),
                12,
            ),
        ),
        (
            "gap",
            raw(
                &h(&[t("a", "F32", "[1]", 0, 4), t("b", "F32", "[1]", 8, 12)]),
                12,
            ),
        ),
        ("end < start", raw(&h(&[t("a", "F32", "[0]", 8, 4)]), 8)),
        (
            "dtype/shape mismatch",
            raw(&h(&[t("a", "F32", "[3]", 0, 8)]), 8),
        ),
        (
            "shape overflow",
            raw(&h(&[t("a", "F32", "[4294967296,4294967296,16]", 0, 8)]), 8),
        ),
        ("negative dim", raw(&h(&[t("a", "F32", "[-1]", 0, 4)]), 4)),
        ("float dim", raw(&h(&[t("a", "F32", "[1.5]", 0, 4)]), 4)),
        (
            "unknown dtype",
            raw(&h(&[t("a", "F128", "[1]", 0, 16)]), 16),
        ),
        (
            "sub-byte odd count",
            raw(&h(&[t("a", "F4", "[3]", 0, 2)]), 2),
        ),
        ("trailing data", raw(&h(&[t("a", "U8", "[2]", 0, 2)]), 5)),
        (
            "metadata not strings",
            raw(r#"{"__metadata__":{"a":1}}"#, 0),
        ),
        ("header not an object", raw("[1,2,3]", 0)),
        ("header not JSON", raw("{\"a\":", 0)),
        (
            "duplicate key, different offsets",
            raw(
                &h(&[t("a", "U8", "[2]", 0, 2), t("a", "U8", "[2]", 2, 4)]),
                4,
            ),
        ),
        (
            "deep JSON nesting",
            raw(
                &format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
                0,
            ),
        ),
        (
            "deep nesting in metadata",
            raw(
                &format!("{{\"__metadata__\":{}}}", "{\"a\":".repeat(50_000)),
                0,
            ),
        ),
    ];
    let mut bad_utf8 = raw(&h(&[t("a", "U8", "[2]", 0, 2)]), 2);
    bad_utf8[10] = 0xff;
    v.push(("non-UTF-8 header", bad_utf8));
    v
}

#[test]
fn mutation_corpus_never_panics_or_overallocates() {
    let t0 = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(0x5afe_7e45);
    let mut st = Stats::default();

    for (name, b) in adversarial() {
        let ok = st.ok;
        check(b, &|| name.to_string(), &mut st);
        assert_eq!(st.ok, ok, "adversarial case '{name}' was accepted");
    }

    // A small valid file with several dtypes and metadata.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.safetensors");
    let data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![
        (
            "w.bf16".into(),
            Dtype::BF16,
            vec![4, 3],
            common::bytes(1, 24),
        ),
        ("w.f16".into(), Dtype::F16, vec![5], common::bytes(2, 10)),
        ("w.f32".into(), Dtype::F32, vec![2, 2], common::bytes(3, 16)),
        ("ids".into(), Dtype::I64, vec![3], common::bytes(4, 24)),
        ("mask".into(), Dtype::Bool, vec![3], vec![0, 1, 1]),
    ];
    let refs: Vec<_> = data
        .iter()
        .map(|(n, d, s, b)| (n.clone(), *d, s.clone(), b.as_slice()))
        .collect();
    let meta = [("format".to_string(), "pt".to_string())]
        .into_iter()
        .collect();
    write_safetensors(&p, &refs, Some(&meta)).unwrap();
    let b = std::fs::read(&p).unwrap();
    let header = 8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    check(b.clone(), &|| "intact file".into(), &mut st);
    assert_eq!(st.ok, 1);
    for len in 0..b.len() {
        check(
            b[..len].to_vec(),
            &|| format!("truncated to {len}"),
            &mut st,
        );
    }
    for pos in 0..header {
        for bit in 0..8 {
            let mut m = b.clone();
            m[pos] ^= 1 << bit;
            check(m, &|| format!("bit {bit} of byte {pos} flipped"), &mut st);
        }
        for val in [0x00, 0xff, b'"', b'9', b'{', rng.random()] {
            let mut m = b.clone();
            m[pos] = val;
            check(m, &|| format!("byte {pos} set to {val:#x}"), &mut st);
        }
    }
    for case in 0..2000 {
        let mut m = b.clone();
        for _ in 0..rng.random_range(1..=6) {
            let pos = rng.random_range(0..header);
            m[pos] = rng.random();
        }
        if rng.random_bool(0.3) {
            m.truncate(rng.random_range(0..m.len()));
        }
        check(m, &|| format!("random damage case {case}"), &mut st);
    }
    eprintln!(
        "synthetic: {} cases, {} ok, {:.2?}",
        st.cases,
        st.ok,
        t0.elapsed()
    );

    // The real MiniLM header over a zero data section of the right size
    // (allocated zeroed, so cheap): truncations and flips of the header.
    let Some(dir) = common::asset("all-MiniLM-L6-v2") else {
        return;
    };
    let real = std::fs::read(dir.join("model.safetensors")).unwrap();
    let rh = 8 + u64::from_le_bytes(real[..8].try_into().unwrap()) as usize;
    let total = real.len();
    let with_header = |h: &[u8]| {
        let mut v = vec![0u8; total];
        v[..h.len()].copy_from_slice(h);
        v
    };
    check(
        with_header(&real[..rh]),
        &|| "real header, zero data".into(),
        &mut st,
    );
    for _ in 0..32 {
        let len = rng.random_range(0..rh);
        check(
            real[..len].to_vec(),
            &|| format!("real header truncated to {len}"),
            &mut st,
        );
    }
    for _ in 0..48 {
        let pos = rng.random_range(0..rh);
        let bit = rng.random_range(0..8);
        let mut h = real[..rh].to_vec();
        h[pos] ^= 1 << bit;
        check(
            with_header(&h),
            &|| format!("real header, bit {bit} of byte {pos} flipped"),
            &mut st,
        );
    }
    eprintln!(
        "total: {} cases, {} ok, max allocation {} bytes, {:.2?}",
        st.cases,
        st.ok,
        st.max_alloc,
        t0.elapsed()
    );
}
