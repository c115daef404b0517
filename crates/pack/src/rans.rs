//! Static order-0 rANS over bytes (Duda, "Asymmetric numeral systems", 2013;
//! the word-renormalised, interleaved form of Giesen's `ryg_rans`).
//!
//! One frequency table per coded plane, quantised to `PROB_BITS` bits;
//! `LANES` states interleaved over one 16-bit word stream so that the
//! decoder's dependency chains overlap in the CPU. Symbol `i` belongs to lane
//! `i % LANES`; the encoder walks the symbols backwards so the decoder reads
//! the words forwards.
//!
//! Stream layout: `LANES` final states (u32 LE each), then the words (u16 LE).
//! The decoder checks that it ends in the encoder's initial state with every
//! word consumed, so a corrupt stream is reported rather than returned.

use crate::error::Corrupt;

/// Probability precision: frequencies sum to 4096. The decode table (4096
/// u32 entries, 16 KiB) stays in L1.
pub const PROB_BITS: u32 = 12;
pub const PROB_SCALE: u32 = 1 << PROB_BITS;
/// Interleaved states: four AVX2 vectors of eight, enough independent
/// chains to hide the gather and multiply latencies.
pub const LANES: usize = 64;
/// Lower bound of the state interval [L, L << 16). 2^15 keeps states below
/// 2^31, where the encoder's reciprocal division is exact.
pub(crate) const RANS_L: u32 = 1 << 15;

/// A quantised byte distribution: `freq[s]` over 256 symbols summing to
/// [`PROB_SCALE`], every occurring symbol at least 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub freq: [u16; 256],
}

impl Table {
    /// Quantises a histogram. Needs at least two distinct symbols (one
    /// symbol is a constant plane, coded as such by the caller).
    pub fn from_counts(counts: &[u64; 256]) -> Table {
        let total: u64 = counts.iter().sum();
        debug_assert!(counts.iter().filter(|&&c| c > 0).count() >= 2);
        let mut freq = [0u16; 256];
        let mut sum: i64 = 0;
        for s in 0..256 {
            if counts[s] > 0 {
                let f = ((counts[s] as u128 * PROB_SCALE as u128) / total as u128).max(1) as i64;
                freq[s] = f as u16;
                sum += f;
            }
        }
        // Move the rounding error onto symbols, largest first, never taking
        // a symbol below 1 nor above PROB_SCALE - 1 (two symbols at least).
        let mut order: Vec<usize> = (0..256).filter(|&s| counts[s] > 0).collect();
        order.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
        let mut diff = PROB_SCALE as i64 - sum;
        while diff != 0 {
            let mut moved = false;
            for &s in &order {
                if diff > 0 && freq[s] < (PROB_SCALE - 1) as u16 {
                    freq[s] += 1;
                    diff -= 1;
                    moved = true;
                } else if diff < 0 && freq[s] > 1 {
                    freq[s] -= 1;
                    diff += 1;
                    moved = true;
                }
                if diff == 0 {
                    break;
                }
            }
            assert!(
                moved,
                "a table of two or more symbols can always be balanced"
            );
        }
        Table { freq }
    }

    /// Bits this table spends coding `counts` (the payload, not the table).
    pub fn cost_bits(&self, counts: &[u64; 256]) -> f64 {
        counts
            .iter()
            .zip(&self.freq)
            .filter(|(&c, _)| c > 0)
            .map(|(&c, &f)| c as f64 * (PROB_BITS as f64 - (f as f64).log2()))
            .sum()
    }

    /// Serialises as a presence bitmap (32 bytes) and, per present symbol,
    /// `freq - 1` as one byte below 255 or 255 followed by a u16.
    pub fn write(&self, out: &mut Vec<u8>) {
        let mut bitmap = [0u8; 32];
        for s in 0..256 {
            if self.freq[s] > 0 {
                bitmap[s / 8] |= 1 << (s % 8);
            }
        }
        out.extend_from_slice(&bitmap);
        for s in 0..256 {
            let f = self.freq[s];
            if f > 0 {
                let v = f - 1;
                if v < 255 {
                    out.push(v as u8);
                } else {
                    out.push(255);
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }

    /// Parses what [`Table::write`] wrote; returns the table and the bytes
    /// used. Rejects tables that do not sum to [`PROB_SCALE`].
    pub fn read(buf: &[u8]) -> Result<(Table, usize), Corrupt> {
        let bitmap = buf.get(..32).ok_or(Corrupt("rANS table truncated"))?;
        let mut pos = 32;
        let mut freq = [0u16; 256];
        let mut sum = 0u32;
        for s in 0..256 {
            if bitmap[s / 8] & (1 << (s % 8)) != 0 {
                let b = *buf.get(pos).ok_or(Corrupt("rANS table truncated"))?;
                pos += 1;
                let v = if b < 255 {
                    b as u16
                } else {
                    let w = buf
                        .get(pos..pos + 2)
                        .ok_or(Corrupt("rANS table truncated"))?;
                    pos += 2;
                    u16::from_le_bytes([w[0], w[1]])
                };
                let f = v as u32 + 1;
                if f >= PROB_SCALE {
                    return Err(Corrupt("rANS table has a frequency out of range"));
                }
                freq[s] = f as u16;
                sum += f;
            }
        }
        if sum != PROB_SCALE {
            return Err(Corrupt("rANS table does not sum to the scale"));
        }
        Ok((Table { freq }, pos))
    }

    fn cumulative(&self) -> [u32; 257] {
        let mut cum = [0u32; 257];
        for s in 0..256 {
            cum[s + 1] = cum[s] + self.freq[s] as u32;
        }
        cum
    }
}

/// Histogram of a byte plane.
pub fn histogram(data: &[u8]) -> [u64; 256] {
    // Four sub-histograms break the store-to-load dependency on runs of
    // one symbol (the exponent plane is mostly a handful of values).
    let mut h = [[0u64; 256]; 4];
    let mut it = data.chunks_exact(4);
    for c in &mut it {
        h[0][c[0] as usize] += 1;
        h[1][c[1] as usize] += 1;
        h[2][c[2] as usize] += 1;
        h[3][c[3] as usize] += 1;
    }
    for &b in it.remainder() {
        h[0][b as usize] += 1;
    }
    let mut out = [0u64; 256];
    for (s, o) in out.iter_mut().enumerate() {
        *o = h[0][s] + h[1][s] + h[2][s] + h[3][s];
    }
    out
}

/// Order-0 entropy of a histogram in bits (the bound a static coder can
/// approach, table cost not counted).
pub fn entropy_bits(counts: &[u64; 256]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let t = total as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| -(c as f64) * (c as f64 / t).log2())
        .sum()
}

/// ryg_rans's encoder symbol: division by `freq` as a multiply and shift
/// (exact for states below 2^31).
#[derive(Clone, Copy, Default)]
pub(crate) struct EncSymbol {
    x_max: u32,
    rcp_freq: u32,
    bias: u32,
    cmpl_freq: u32,
    rcp_shift: u32,
}

impl EncSymbol {
    /// The symbol starting at `start` with frequency `freq`, at
    /// `prob_bits` bits of precision.
    pub(crate) fn new(start: u32, freq: u32, prob_bits: u32) -> EncSymbol {
        let scale = 1 << prob_bits;
        let x_max = ((RANS_L >> prob_bits) << 16) * freq;
        let cmpl_freq = scale - freq;
        if freq < 2 {
            EncSymbol {
                x_max,
                rcp_freq: !0,
                bias: start + scale - 1,
                cmpl_freq,
                rcp_shift: 0,
            }
        } else {
            let mut shift = 0;
            while freq > (1u32 << shift) {
                shift += 1;
            }
            EncSymbol {
                x_max,
                rcp_freq: (1u64 << (shift + 31)).div_ceil(freq as u64) as u32,
                bias: start,
                cmpl_freq,
                rcp_shift: shift - 1,
            }
        }
    }
}

/// Encodes `data` with `table` (which must give every byte of `data` a
/// nonzero frequency), appending the stream to `out`.
pub fn encode(data: &[u8], table: &Table, out: &mut Vec<u8>) {
    let cum = table.cumulative();
    let mut syms = [EncSymbol::default(); 256];
    for s in 0..256 {
        if table.freq[s] > 0 {
            syms[s] = EncSymbol::new(cum[s], table.freq[s] as u32, PROB_BITS);
        }
    }
    let backwards = data.iter().rev().map(|&b| {
        debug_assert!(table.freq[b as usize] > 0, "symbol missing from table");
        &syms[b as usize]
    });
    encode_lanes::<LANES>(data.len(), backwards, out);
}

/// The interleaved encoder shared by the byte and nibble coders: the `n`
/// symbols come last first (so that the decoder reads forwards), symbol
/// `i` going to state `i % L`; appends the `L` final states and the words.
/// (An iterator, not an index: indexing the plane from here cost a bounds
/// check per symbol, a fifth of the encoder's speed.)
#[inline(always)]
pub(crate) fn encode_lanes<'s, const L: usize>(
    n: usize,
    backwards: impl Iterator<Item = &'s EncSymbol>,
    out: &mut Vec<u8>,
) {
    let mut state = [RANS_L; L];
    // Words come out last-first; collect and reverse once. At most one
    // word per symbol. Written branch-free: on near-uniform planes a
    // branch on the flush would mispredict half the time.
    let mut words = vec![0u16; n];
    let mut n_words = 0usize;
    for (i, s) in (0..n).rev().zip(backwards) {
        let x = &mut state[i % L];
        let flush = (*x >= s.x_max) as u32;
        words[n_words] = *x as u16;
        n_words += flush as usize;
        *x >>= flush << 4;
        let q = ((*x as u64 * s.rcp_freq as u64) >> 32) as u32 >> s.rcp_shift;
        *x = *x + s.bias + q * s.cmpl_freq;
    }
    out.reserve(L * 4 + n_words * 2);
    for x in state {
        out.extend_from_slice(&x.to_le_bytes());
    }
    for w in words[..n_words].iter().rev() {
        out.extend_from_slice(&w.to_le_bytes());
    }
}

/// Decode table entry: symbol (bits 0..8), frequency (8..20) and the slot's
/// offset within the symbol's range (20..32).
fn decode_table(table: &Table) -> Vec<u32> {
    // Built per plane and chunk (a few per 768 KiB), so it is written to
    // vectorise: one arithmetic run per symbol, no zero-fill first.
    let mut t = Vec::with_capacity(PROB_SCALE as usize);
    for (s, &f) in table.freq.iter().enumerate() {
        let base = s as u32 | (f as u32) << 8;
        t.extend((0..f as u32).map(|k| base + (k << 20)));
    }
    debug_assert_eq!(t.len(), PROB_SCALE as usize);
    t
}

/// Where the decoder writes symbol `i`: `out[(i / run) * stride + i % run]`.
///
/// `run == stride` is a contiguous plane. A record field, such as the 16
/// quant bytes of each 20-byte `block_q4_1`, has `run` = the field's length
/// and `stride` = the record's: the decoder then writes the field in place
/// and the merge has one plane fewer to copy. `run` is a power of two of at
/// least 16, so a SIMD store (8 or 16 symbols at a multiple of 16) never
/// straddles two runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spread {
    shift: u32,
    stride: usize,
}

impl Spread {
    /// A contiguous plane.
    pub const CONTIGUOUS: Spread = Spread {
        shift: 4,
        stride: 16,
    };

    /// Runs of `run` symbols `stride` bytes apart; `None` unless `run` is a
    /// power of two ≥ 16 and `stride ≥ run`.
    pub fn new(run: usize, stride: usize) -> Option<Spread> {
        (run.is_power_of_two() && run >= 16 && stride >= run).then(|| Spread {
            shift: run.trailing_zeros(),
            stride,
        })
    }

    #[inline(always)]
    pub(crate) fn at(self, i: usize) -> usize {
        (i >> self.shift) * self.stride + (i & ((1 << self.shift) - 1))
    }
}

/// Decodes `out.len()` symbols from `stream` (as written by [`encode`]).
pub fn decode(stream: &[u8], table: &Table, out: &mut [u8]) -> Result<(), Corrupt> {
    decode_spread(stream, table, out.len(), out, Spread::CONTIGUOUS)
}

/// Decodes `n` symbols from `stream` into `out` at the positions `spread`
/// gives. Panics if the last of them lies past `out`.
pub fn decode_spread(
    stream: &[u8],
    table: &Table,
    n: usize,
    out: &mut [u8],
    spread: Spread,
) -> Result<(), Corrupt> {
    decode_with(fastest(), stream, table, n, out, spread)
}

/// A bulk decoder: `decode_fast` or one of its SIMD forms. Unsafe to call:
/// it writes unchecked at `spread.at(i)` for `i < n`, and the SIMD forms
/// need their CPU features.
type Fast = unsafe fn(
    &mut [u8],
    usize,
    Spread,
    [u32; LANES],
    &[u32; PROB_SCALE as usize],
    &[u8],
) -> (usize, [u32; LANES], usize);

/// The bulk decoders this CPU runs, fastest first (the scalar one last).
fn available() -> Vec<(&'static str, Fast)> {
    let mut v: Vec<(&'static str, Fast)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("popcnt") {
        if std::arch::is_x86_feature_detected!("avx512f") {
            v.push(("avx512", avx512::decode_fast));
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            v.push(("avx2", avx2::decode_fast));
        }
    }
    v.push(("scalar", decode_fast));
    v
}

/// The names of the bulk decoders this CPU runs, fastest first (the one
/// `decode` uses first), for benchmarks.
pub fn decoders() -> Vec<&'static str> {
    available().into_iter().map(|(name, _)| name).collect()
}

/// [`decode`] with decoder `i` of [`decoders`] (benchmarks; panics if
/// there is no such decoder).
pub fn decode_using(i: usize, stream: &[u8], table: &Table, out: &mut [u8]) -> Result<(), Corrupt> {
    let n = out.len();
    decode_with(available()[i].1, stream, table, n, out, Spread::CONTIGUOUS)
}

fn fastest() -> Fast {
    static FASTEST: std::sync::OnceLock<Fast> = std::sync::OnceLock::new();
    *FASTEST.get_or_init(|| available()[0].1)
}

fn decode_with(
    fast: Fast,
    stream: &[u8],
    table: &Table,
    n: usize,
    out: &mut [u8],
    spread: Spread,
) -> Result<(), Corrupt> {
    // The fast loops write unchecked: every position they write is at most
    // `spread.at(n - 1)`, checked here.
    assert!(
        n == 0 || spread.at(n - 1) < out.len(),
        "rANS output too short"
    );
    let (x, words) = read_states::<LANES>(stream)?;
    let dt = decode_table(table);
    let dt: &[u32; PROB_SCALE as usize] = dt.as_slice().try_into().unwrap();
    // SAFETY: `fast` comes from `available()`, so the CPU has its features;
    // positions below `n` lie in `out` (asserted above).
    let (done, mut x, mut pos) = unsafe { fast(out, n, spread, x, dt, words) };
    decode_checked(out, done..n, spread, &mut x, dt, words, &mut pos)?;
    check_end(&x, pos, words)
}

/// A stream's `L` initial states (each in `[RANS_L, RANS_L << 16)`) and
/// its words (an even number of bytes).
pub(crate) fn read_states<const L: usize>(stream: &[u8]) -> Result<([u32; L], &[u8]), Corrupt> {
    let head = stream
        .get(..L * 4)
        .ok_or(Corrupt("rANS stream shorter than its states"))?;
    let mut x = [0u32; L];
    for (j, xj) in x.iter_mut().enumerate() {
        *xj = u32::from_le_bytes(head[j * 4..j * 4 + 4].try_into().unwrap());
        if !(RANS_L..(RANS_L << 16)).contains(xj) {
            return Err(Corrupt("rANS state out of range"));
        }
    }
    let words = &stream[L * 4..];
    if !words.len().is_multiple_of(2) {
        return Err(Corrupt("rANS stream of odd length"));
    }
    Ok((x, words))
}

/// The end check: every state back at the encoder's initial `RANS_L` and
/// every word consumed, or the stream is corrupt.
pub(crate) fn check_end(x: &[u32], pos: usize, words: &[u8]) -> Result<(), Corrupt> {
    if pos != words.len() / 2 || x.iter().any(|&v| v != RANS_L) {
        return Err(Corrupt("rANS stream does not end where it should"));
    }
    Ok(())
}

/// Decodes whole groups while a group's worst case (one word per lane)
/// fits in the words left, with no bounds checks in the loop and the
/// states in registers; returns the bytes done, the states and the word
/// position.
#[inline(never)]
fn decode_fast(
    out: &mut [u8],
    n: usize,
    spread: Spread,
    mut x: [u32; LANES],
    dt: &[u32; PROB_SCALE as usize],
    words: &[u8],
) -> (usize, [u32; LANES], usize) {
    let mask = PROB_SCALE - 1;
    let n_words = words.len() / 2;
    let mut pos = 0usize;
    let mut done = 0usize;
    while done + LANES <= n && pos + LANES <= n_words {
        let mut g = [0u8; LANES];
        // Symbols and next states first (independent across lanes), then
        // the renormalisation, whose word position runs through the lanes.
        let mut v = [0u32; LANES];
        for j in 0..LANES {
            let e = dt[(x[j] & mask) as usize];
            g[j] = e as u8;
            v[j] = ((e >> 8) & 0xfff) * (x[j] >> PROB_BITS) + (e >> 20);
        }
        let k = renorm_lanes(&v, &mut x, words, pos);
        for (p, piece) in g.chunks_exact(16).enumerate() {
            let at = spread.at(done + p * 16);
            out[at..at + 16].copy_from_slice(piece);
        }
        pos += k;
        done += LANES;
    }
    (done, x, pos)
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    //! The same decoder as `decode_fast`, eight lanes per AVX2 vector: a
    //! gather for the table lookup, a compare for the renormalisation, and
    //! a permutation (chosen by the compare's bit mask) that hands the next
    //! words to the lanes that need one, in lane order, as the scalar
    //! decoder reads them (Giesen, "Interleaved entropy coders", 2014).
    use super::{Spread, LANES, PROB_BITS, PROB_SCALE, RANS_L};
    use std::arch::x86_64::*;

    /// `PERM[m][l]`: for a need-mask `m`, which of the eight loaded words
    /// lane `l` takes (the count of needing lanes before it).
    pub(crate) const PERM: [[u32; 8]; 256] = {
        let mut t = [[0u32; 8]; 256];
        let mut m = 0;
        while m < 256 {
            let mut l = 0;
            let mut k = 0;
            while l < 8 {
                t[m][l] = k;
                if m & (1 << l) != 0 {
                    k += 1;
                }
                l += 1;
            }
            m += 1;
        }
        t
    };

    /// # Safety
    /// The CPU must support AVX2 and POPCNT (a hardware popcount keeps
    /// the word position off the critical path).
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn decode_fast(
        out: &mut [u8],
        n: usize,
        spread: Spread,
        x: [u32; LANES],
        dt: &[u32; PROB_SCALE as usize],
        words: &[u8],
    ) -> (usize, [u32; LANES], usize) {
        const V: usize = LANES / 8;
        let n_words = words.len() / 2;
        let mut st = [_mm256_setzero_si256(); V];
        for (v, s) in st.iter_mut().enumerate() {
            *s = _mm256_loadu_si256(x.as_ptr().add(v * 8) as *const __m256i);
        }
        let mask = _mm256_set1_epi32((PROB_SCALE - 1) as i32);
        let fmask = _mm256_set1_epi32(0xfff);
        let low = _mm256_set1_epi32(RANS_L as i32);
        let byte = _mm256_set1_epi32(0xff);
        // After two packs, dword d of the 32 symbols of four vectors holds
        // vector d % 4's symbols 0..4 (d < 4) or 4..8 (d ≥ 4).
        let join = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let mut pos = 0usize;
        let mut done = 0usize;
        while done + LANES <= n && pos + LANES <= n_words {
            // Every lane's table lookup and next state first: the eight
            // gathers are independent, and only the renormalisation below
            // runs through the word position. `st` holds the states before
            // renormalisation in between (more arrays would spill).
            let mut m = [0usize; V];
            for q in 0..V / 4 {
                let mut e = [_mm256_setzero_si256(); 4];
                for (j, e) in e.iter_mut().enumerate() {
                    let s = &mut st[4 * q + j];
                    *e = _mm256_i32gather_epi32::<4>(
                        dt.as_ptr() as *const i32,
                        _mm256_and_si256(*s, mask),
                    );
                    let freq = _mm256_and_si256(_mm256_srli_epi32::<8>(*e), fmask);
                    let bias = _mm256_srli_epi32::<20>(*e);
                    *s = _mm256_add_epi32(
                        _mm256_mullo_epi32(freq, _mm256_srli_epi32::<{ PROB_BITS as i32 }>(*s)),
                        bias,
                    );
                    // States stay below 2^31, so the signed compare is exact.
                    let need = _mm256_cmpgt_epi32(low, *s);
                    m[4 * q + j] = _mm256_movemask_ps(_mm256_castsi256_ps(need)) as usize;
                }
                // The 32 symbols (byte 0 of each entry): two packs and one
                // permutation.
                let b = |j: usize| _mm256_and_si256(e[j], byte);
                let lo = _mm256_packus_epi32(b(0), b(1));
                let hi = _mm256_packus_epi32(b(2), b(3));
                let sym = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(lo, hi), join);
                let at = done + q * 32;
                _mm_storeu_si128(
                    out.as_mut_ptr().add(spread.at(at)) as *mut __m128i,
                    _mm256_castsi256_si128(sym),
                );
                _mm_storeu_si128(
                    out.as_mut_ptr().add(spread.at(at + 16)) as *mut __m128i,
                    _mm256_extracti128_si256::<1>(sym),
                );
            }
            for (s, &m) in st.iter_mut().zip(&m) {
                let w = _mm256_cvtepu16_epi32(_mm_loadu_si128(
                    words.as_ptr().add(pos * 2) as *const __m128i
                ));
                let idx = _mm256_loadu_si256(PERM[m].as_ptr() as *const __m256i);
                let w = _mm256_permutevar8x32_epi32(w, idx);
                let renorm = _mm256_or_si256(_mm256_slli_epi32::<16>(*s), w);
                *s = _mm256_blendv_epi8(*s, renorm, _mm256_cmpgt_epi32(low, *s));
                pos += m.count_ones() as usize;
            }
            done += LANES;
        }
        let mut xo = [0u32; LANES];
        for (v, s) in st.iter().enumerate() {
            _mm256_storeu_si256(xo.as_mut_ptr().add(v * 8) as *mut __m256i, *s);
        }
        (done, xo, pos)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! The AVX2 decoder's sixteen-lane form: `vpexpandd` hands the loaded
    //! words to the needing lanes in order, no permutation table needed.
    use super::{Spread, LANES, PROB_BITS, PROB_SCALE, RANS_L};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX-512F and POPCNT.
    #[target_feature(enable = "avx512f,popcnt")]
    pub(super) unsafe fn decode_fast(
        out: &mut [u8],
        n: usize,
        spread: Spread,
        x: [u32; LANES],
        dt: &[u32; PROB_SCALE as usize],
        words: &[u8],
    ) -> (usize, [u32; LANES], usize) {
        const V: usize = LANES / 16;
        let n_words = words.len() / 2;
        let mut st = [_mm512_setzero_si512(); V];
        for (v, s) in st.iter_mut().enumerate() {
            *s = _mm512_loadu_si512(x.as_ptr().add(v * 16) as *const __m512i);
        }
        let mask = _mm512_set1_epi32((PROB_SCALE - 1) as i32);
        let fmask = _mm512_set1_epi32(0xfff);
        let low = _mm512_set1_epi32(RANS_L as i32);
        let mut pos = 0usize;
        let mut done = 0usize;
        while done + LANES <= n && pos + LANES <= n_words {
            for s in st.iter_mut() {
                let e = _mm512_i32gather_epi32::<4>(
                    _mm512_and_si512(*s, mask),
                    dt.as_ptr() as *const i32,
                );
                _mm_storeu_si128(
                    out.as_mut_ptr().add(spread.at(done)) as *mut __m128i,
                    _mm512_cvtepi32_epi8(e),
                );
                let freq = _mm512_and_si512(_mm512_srli_epi32::<8>(e), fmask);
                let bias = _mm512_srli_epi32::<20>(e);
                let v = _mm512_add_epi32(
                    _mm512_mullo_epi32(freq, _mm512_srli_epi32::<{ PROB_BITS }>(*s)),
                    bias,
                );
                let need = _mm512_cmplt_epu32_mask(v, low);
                let w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(
                    words.as_ptr().add(pos * 2) as *const __m256i
                ));
                let w = _mm512_maskz_expand_epi32(need, w);
                *s = _mm512_or_si512(_mm512_mask_slli_epi32::<16>(v, need, v), w);
                pos += need.count_ones() as usize;
                done += 16;
            }
        }
        let mut xo = [0u32; LANES];
        for (v, s) in st.iter().enumerate() {
            _mm512_storeu_si512(xo.as_mut_ptr().add(v * 16) as *mut __m512i, *s);
        }
        (done, xo, pos)
    }
}

/// The bulk decoders' renormalisation, shared by the byte and nibble
/// coders: lane `j` of `v` (states after a step) takes the next word when
/// below `RANS_L`, in lane order, from the `L` words at `pos` (which the
/// caller has checked exist); the result goes to `x`. Returns the words
/// taken. Branch-free: a ~50 % branch on the near-uniform planes would
/// mispredict constantly.
#[inline(always)]
pub(crate) fn renorm_lanes<const L: usize>(
    v: &[u32; L],
    x: &mut [u32; L],
    words: &[u8],
    pos: usize,
) -> usize {
    const { assert!(L.is_power_of_two()) };
    let w: &[[u8; 2]; L] = words[pos * 2..(pos + L) * 2]
        .as_chunks::<2>()
        .0
        .try_into()
        .unwrap();
    let mut k = 0usize;
    for j in 0..L {
        let need = (v[j] < RANS_L) as u32;
        // `k` < L always (at most one word per lane); the mask lets the
        // compiler see it.
        let word = u16::from_le_bytes(w[k & (L - 1)]) as u32;
        x[j] = (v[j] << (need << 4)) | (word & need.wrapping_neg());
        k += need as usize;
    }
    k
}

/// The checked decoders' renormalisation: `v` takes the word at `*pos`
/// when below `RANS_L`, or the stream is truncated.
#[inline(always)]
pub(crate) fn renorm_checked(v: u32, words: &[u8], pos: &mut usize) -> Result<u32, Corrupt> {
    if v >= RANS_L {
        return Ok(v);
    }
    let w = words
        .get(*pos * 2..*pos * 2 + 2)
        .ok_or(Corrupt("rANS stream truncated"))?;
    *pos += 1;
    Ok((v << 16) | u16::from_le_bytes([w[0], w[1]]) as u32)
}

/// Symbols lane by lane, each word read bounds-checked.
fn decode_checked(
    out: &mut [u8],
    symbols: std::ops::Range<usize>,
    spread: Spread,
    x: &mut [u32; LANES],
    dt: &[u32; PROB_SCALE as usize],
    words: &[u8],
    pos: &mut usize,
) -> Result<(), Corrupt> {
    for i in symbols {
        let j = i % LANES;
        let e = dt[(x[j] & (PROB_SCALE - 1)) as usize];
        out[spread.at(i)] = e as u8;
        let v = ((e >> 8) & 0xfff) * (x[j] >> PROB_BITS) + (e >> 20);
        x[j] = renorm_checked(v, words, pos)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn roundtrip(data: &[u8]) -> usize {
        let counts = histogram(data);
        let table = Table::from_counts(&counts);
        let mut buf = Vec::new();
        encode(data, &table, &mut buf);
        let mut tb = Vec::new();
        table.write(&mut tb);
        let (t2, used) = Table::read(&tb).unwrap();
        assert_eq!(used, tb.len());
        assert_eq!(t2, table);
        let mut out = vec![0u8; data.len()];
        decode(&buf, &t2, &mut out).unwrap();
        assert_eq!(out, data);
        buf.len()
    }

    #[test]
    fn roundtrips_skewed_uniform_and_short_inputs() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for n in [2usize, 3, 7, 8, 9, 15, 16, 17, 1000, 65_537] {
            // Skewed: geometric-ish around a mode, like an exponent plane.
            let skew: Vec<u8> = (0..n)
                .map(|i| {
                    if i < 2 {
                        i as u8
                    } else {
                        120 + (rng.random::<u32>().trailing_zeros() as u8).min(20)
                    }
                })
                .collect();
            roundtrip(&skew);
            let uni: Vec<u8> = (0..n)
                .map(|i| if i < 2 { i as u8 } else { rng.random() })
                .collect();
            roundtrip(&uni);
        }
        // A very rare symbol beside a dominant one: frequency floor of 1.
        let mut rare = vec![5u8; 100_000];
        rare[777] = 6;
        roundtrip(&rare);
    }

    #[test]
    fn coded_size_is_close_to_the_entropy() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let data: Vec<u8> = (0..200_000)
            .map(|_| (rng.random::<u32>().trailing_zeros() as u8).min(30))
            .collect();
        let h = entropy_bits(&histogram(&data)) / 8.0;
        let size = roundtrip(&data) as f64;
        // A geometric source has entropy 2 bits; rANS at 12-bit precision
        // should be within 1 % of it (plus 32 bytes of states).
        assert!((h - 50_000.0).abs() < 500.0, "entropy {h}");
        assert!(size < h * 1.01 + 40.0, "size {size} vs entropy {h}");
    }

    #[test]
    fn every_decoder_spreads_symbols_into_records() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        // Lengths around the fast loops' group size leave checked tails.
        for n_runs in [0usize, 1, 3, 4, 5, 63, 64, 65, 700] {
            for (run, stride) in [(16, 16), (16, 20), (32, 34), (16, 22)] {
                let n = n_runs * run;
                let data: Vec<u8> = (0..n).map(|_| (rng.random::<u8>() % 13) * 7).collect();
                let counts = histogram(&data);
                if counts.iter().filter(|&&c| c > 0).count() < 2 {
                    continue;
                }
                let table = Table::from_counts(&counts);
                let mut stream = Vec::new();
                encode(&data, &table, &mut stream);
                let spread = Spread::new(run, stride).unwrap();
                let mut want = vec![0xa5u8; n_runs * stride];
                for (i, &b) in data.iter().enumerate() {
                    want[i / run * stride + i % run] = b;
                }
                for (_, fast) in available() {
                    let mut out = vec![0xa5u8; n_runs * stride];
                    decode_with(fast, &stream, &table, n, &mut out, spread).unwrap();
                    assert_eq!(out, want, "n={n} run={run} stride={stride}");
                }
            }
        }
        assert!(Spread::new(8, 16).is_none() && Spread::new(24, 24).is_none());
        assert!(Spread::new(32, 16).is_none());
    }

    #[test]
    fn corrupt_streams_are_errors_not_panics() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let data: Vec<u8> = (0..5000).map(|_| rng.random::<u8>() & 0x1f).collect();
        let table = Table::from_counts(&histogram(&data));
        let mut buf = Vec::new();
        encode(&data, &table, &mut buf);
        let mut out = vec![0u8; data.len()];
        for cut in [0, 5, 31, 32, 33, buf.len() - 1] {
            assert!(decode(&buf[..cut], &table, &mut out).is_err());
        }
        let mut detected = 0;
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x10;
            if decode(&b, &table, &mut out).is_err() || out != data {
                detected += 1;
            }
        }
        assert_eq!(detected, buf.len());
    }
}
