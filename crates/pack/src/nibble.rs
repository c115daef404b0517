//! Static order-0 rANS over the nibbles of packed 4-bit quants (the `qs`
//! bytes of llama.cpp's `block_q4_0`, `block_q4_1`, `block_iq4_nl`, and
//! the low nibbles of `block_q5_0` / `block_q5_1`): the
//! byte coder of [`crate::rans`] with a sixteen-symbol alphabet at 7-bit
//! precision, so that a decoder finds each symbol with register permutes
//! instead of a table gather.
//!
//! Why: those bytes are near-uniform (7.7 bits of order-0 entropy per
//! byte on the default LM), so coding them saves little but costs a
//! gather per byte, the byte decoder's bound. A table over 128 slots fits
//! in two zmm registers, where a byte permute (`vpermi2b`, AVX-512 VBMI)
//! looks sixteen lanes up at once. The byte's two nibbles are coded as two
//! symbols; they are nearly independent (on the default LM's Q4_1 quants
//! the order-0 nibble bound is 0.1 % above the byte bound) and 7-bit
//! frequencies, balanced by marginal cost, add another 0.04 %. Without
//! VBMI the decoder falls back to gathers (AVX2) or scalar lookups, two per
//! byte, and is slower than the byte coder's.
//!
//! Symbol order: the plane (a multiple of 16 bytes) is taken 16 bytes at
//! a time, the low nibbles of those bytes, then their high nibbles; symbol
//! `k` belongs to lane `k % LANES`. A 128-lane step thus decodes the low
//! and high nibbles of 64 bytes in eight vectors that pair up into four
//! 16-byte stores. Stream layout, renormalisation and the end-state check
//! are the byte coder's.

use crate::error::Corrupt;
use crate::rans::{
    check_end, encode_lanes, read_states, renorm_checked, renorm_lanes, EncSymbol, Spread, RANS_L,
};

/// Interleaved states: eight zmm vectors. The permute-and-multiply chain
/// needs more of them in flight than the byte decoder's gathers: on Zen 4,
/// 128 lanes decoded about a sixth faster than 64, and 256 spilled
/// registers and were slower again.
pub const LANES: usize = 128;

/// Probability precision: frequencies sum to 128.
pub const PROB_BITS: u32 = 7;
pub const PROB_SCALE: u32 = 1 << PROB_BITS;

/// A quantised nibble distribution: `freq[s]` over 16 symbols summing to
/// [`PROB_SCALE`], every occurring symbol at least 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub freq: [u8; 16],
}

/// Nibble histogram of a plane (both nibbles of every byte).
pub fn histogram(byte_counts: &[u64; 256]) -> [u64; 16] {
    let mut h = [0u64; 16];
    for (b, &c) in byte_counts.iter().enumerate() {
        h[b & 15] += c;
        h[b >> 4] += c;
    }
    h
}

impl Table {
    /// Quantises a nibble histogram: frequencies rounded, then balanced
    /// one slot at a time where that costs the fewest bits (at 128 slots a
    /// cruder quantisation, flooring, cost 0.35 % on the default LM). `None`
    /// with fewer than two distinct nibbles.
    pub fn from_counts(counts: &[u64; 16]) -> Option<Table> {
        let total: u64 = counts.iter().sum();
        if counts.iter().filter(|&&c| c > 0).count() < 2 {
            return None;
        }
        let mut freq = [0u32; 16];
        for s in 0..16 {
            if counts[s] > 0 {
                let f = (counts[s] as f64 * PROB_SCALE as f64 / total as f64).round();
                freq[s] = (f as u32).clamp(1, PROB_SCALE - 1);
            }
        }
        let bits = |c: u64, f: u32| c as f64 * (f as f64).log2();
        loop {
            let sum: u32 = freq.iter().sum();
            if sum == PROB_SCALE {
                break;
            }
            // The symbol whose frequency change gains the most (or, taking
            // a slot away, loses the least) coded bits.
            let best = (0..16)
                .filter(|&s| counts[s] > 0 && (sum < PROB_SCALE || freq[s] > 1))
                .max_by(|&a, &b| {
                    let d = |s: usize| {
                        if sum < PROB_SCALE {
                            bits(counts[s], freq[s] + 1) - bits(counts[s], freq[s])
                        } else {
                            bits(counts[s], freq[s] - 1) - bits(counts[s], freq[s])
                        }
                    };
                    d(a).total_cmp(&d(b)).then(b.cmp(&a))
                })
                .expect("two symbols can always be balanced");
            if sum < PROB_SCALE {
                freq[best] += 1;
            } else {
                freq[best] -= 1;
            }
        }
        Some(Table {
            freq: freq.map(|f| f as u8),
        })
    }

    /// Bits this table spends coding `counts` (the payload, not the table).
    pub fn cost_bits(&self, counts: &[u64; 16]) -> f64 {
        counts
            .iter()
            .zip(&self.freq)
            .filter(|(&c, _)| c > 0)
            .map(|(&c, &f)| c as f64 * (PROB_BITS as f64 - (f as f64).log2()))
            .sum()
    }

    /// Serialises as the 16 frequencies, one byte each.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.freq);
    }

    /// Parses what [`Table::write`] wrote; returns the table and the bytes
    /// used. Rejects tables that do not sum to [`PROB_SCALE`].
    pub fn read(buf: &[u8]) -> Result<(Table, usize), Corrupt> {
        let freq: [u8; 16] = buf
            .get(..16)
            .ok_or(Corrupt("nibble table truncated"))?
            .try_into()
            .unwrap();
        if freq.iter().map(|&f| f as u32).sum::<u32>() != PROB_SCALE {
            return Err(Corrupt("nibble table does not sum to the scale"));
        }
        Ok((Table { freq }, 16))
    }

    fn cumulative(&self) -> [u32; 17] {
        let mut cum = [0u32; 17];
        for s in 0..16 {
            cum[s + 1] = cum[s] + self.freq[s] as u32;
        }
        cum
    }
}

/// The nibble of symbol `k`: (byte index, shift).
#[inline(always)]
fn nibble_at(k: usize) -> (usize, u32) {
    ((k >> 5) * 16 + (k & 15), (k & 16) as u32 >> 2)
}

/// Encodes `data` (a multiple of 16 bytes) with `table`, which must give
/// every nibble of `data` a nonzero frequency; appends the stream to `out`.
pub fn encode(data: &[u8], table: &Table, out: &mut Vec<u8>) {
    assert!(data.len().is_multiple_of(16), "nibble plane of odd length");
    let cum = table.cumulative();
    let mut syms = [EncSymbol::default(); 16];
    for s in 0..16 {
        if table.freq[s] > 0 {
            syms[s] = EncSymbol::new(cum[s], table.freq[s] as u32, PROB_BITS);
        }
    }
    let backwards = (0..data.len() * 2).rev().map(|k| {
        let (b, shift) = nibble_at(k);
        let s = ((data[b] >> shift) & 15) as usize;
        debug_assert!(table.freq[s] > 0, "symbol missing from table");
        &syms[s]
    });
    encode_lanes::<LANES>(data.len() * 2, backwards, out);
}

/// What a decoder needs of a table, per slot: the symbol, its frequency
/// and the slot's offset within the symbol's range, packed as
/// `sym | freq << 8 | offset << 16` (for lookups and gathers) and as three
/// byte tables (for byte permutes).
struct DecodeTable {
    entry: [u32; PROB_SCALE as usize],
    sym: [u8; PROB_SCALE as usize],
    freq: [u8; PROB_SCALE as usize],
    offset: [u8; PROB_SCALE as usize],
}

impl DecodeTable {
    fn new(table: &Table) -> DecodeTable {
        let mut t = DecodeTable {
            entry: [0; PROB_SCALE as usize],
            sym: [0; PROB_SCALE as usize],
            freq: [0; PROB_SCALE as usize],
            offset: [0; PROB_SCALE as usize],
        };
        let mut slot = 0usize;
        for (s, &f) in table.freq.iter().enumerate() {
            // `read` checked the sum, so the slots end at PROB_SCALE.
            for k in 0..f {
                t.entry[slot] = s as u32 | (f as u32) << 8 | (k as u32) << 16;
                (t.sym[slot], t.freq[slot], t.offset[slot]) = (s as u8, f, k);
                slot += 1;
            }
        }
        t
    }

    /// One decoding step on state `x`: the symbol and the next state,
    /// before renormalisation.
    #[inline(always)]
    fn step(&self, x: u32) -> (u8, u32) {
        let e = self.entry[(x & (PROB_SCALE - 1)) as usize];
        (e as u8, ((e >> 8) & 0xff) * (x >> PROB_BITS) + (e >> 16))
    }
}

/// Decodes `n` bytes (a multiple of 16) from `stream` into `out` at the
/// positions `spread` gives. Panics if the last of them lies past `out`.
pub fn decode_spread(
    stream: &[u8],
    table: &Table,
    n: usize,
    out: &mut [u8],
    spread: Spread,
) -> Result<(), Corrupt> {
    decode_with(fastest(), stream, table, n, out, spread)
}

/// Decodes `out.len()` bytes (a multiple of 16) from `stream`.
pub fn decode(stream: &[u8], table: &Table, out: &mut [u8]) -> Result<(), Corrupt> {
    decode_spread(stream, table, out.len(), out, Spread::CONTIGUOUS)
}

/// A bulk decoder (see `rans::Fast`): decodes whole 64-symbol steps while
/// a step's worst case fits in the words left; returns the bytes done,
/// the states and the word position. Unsafe: it writes unchecked at
/// `spread.at(i)` for `i < n`, and the SIMD form needs its CPU features.
type Fast = unsafe fn(
    &mut [u8],
    usize,
    Spread,
    [u32; LANES],
    &DecodeTable,
    &[u8],
) -> (usize, [u32; LANES], usize);

fn available() -> Vec<(&'static str, Fast)> {
    let mut v: Vec<(&'static str, Fast)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512vbmi")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("popcnt")
    {
        v.push(("avx512vbmi", vbmi::decode_fast));
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("popcnt")
    {
        v.push(("avx2", avx2::decode_fast));
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
    if !n.is_multiple_of(16) {
        return Err(Corrupt("nibble plane of odd length"));
    }
    assert!(
        n == 0 || spread.at(n - 1) < out.len(),
        "nibble output too short"
    );
    let (x, words) = read_states::<LANES>(stream)?;
    let dt = DecodeTable::new(table);
    // SAFETY: `fast` comes from `available()`, so the CPU has its features;
    // positions below `n` lie in `out` (asserted above).
    let (done, mut x, mut pos) = unsafe { fast(out, n, spread, x, &dt, words) };
    // The checked tail, symbol by symbol: a low nibble sets its byte, the
    // high nibble (16 symbols later) completes it.
    for k in done * 2..n * 2 {
        let j = k % LANES;
        let (s, v) = dt.step(x[j]);
        x[j] = renorm_checked(v, words, &mut pos)?;
        let (b, shift) = nibble_at(k);
        let at = spread.at(b);
        out[at] = if shift == 0 { s } else { out[at] | s << 4 };
    }
    check_end(&x, pos, words)
}

/// The scalar bulk decoder.
#[inline(never)]
fn decode_fast(
    out: &mut [u8],
    n: usize,
    spread: Spread,
    mut x: [u32; LANES],
    dt: &DecodeTable,
    words: &[u8],
) -> (usize, [u32; LANES], usize) {
    let n_words = words.len() / 2;
    let mut pos = 0usize;
    let mut done = 0usize;
    while done + LANES / 2 <= n && pos + LANES <= n_words {
        let mut g = [0u8; LANES];
        let mut v = [0u32; LANES];
        for j in 0..LANES {
            (g[j], v[j]) = dt.step(x[j]);
        }
        let k = renorm_lanes(&v, &mut x, words, pos);
        for half in 0..LANES / 32 {
            let at = spread.at(done + half * 16);
            for i in 0..16 {
                out[at + i] = g[half * 32 + i] | g[half * 32 + 16 + i] << 4;
            }
        }
        pos += k;
        done += LANES / 2;
    }
    (done, x, pos)
}

#[cfg(target_arch = "x86_64")]
mod vbmi {
    //! Sixteen lanes per zmm vector. A slot's symbol, frequency and offset
    //! each come from a two-register byte permute over a 128-slot table
    //! (`vpermi2b`); three independent permutes keep the state's dependency
    //! chain short (a symbol-then-`vpermd` lookup was 6 % slower).
    //! Renormalisation is the byte decoder's (`vpexpandd` hands the words
    //! to the lanes).
    use super::{DecodeTable, Spread, LANES, PROB_BITS, PROB_SCALE, RANS_L};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX-512F, BW, VBMI and POPCNT.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,popcnt")]
    pub(super) unsafe fn decode_fast(
        out: &mut [u8],
        n: usize,
        spread: Spread,
        x: [u32; LANES],
        dt: &DecodeTable,
        words: &[u8],
    ) -> (usize, [u32; LANES], usize) {
        const V: usize = LANES / 16;
        let n_words = words.len() / 2;
        let mut st = [_mm512_setzero_si512(); V];
        for (v, s) in st.iter_mut().enumerate() {
            *s = _mm512_loadu_si512(x.as_ptr().add(v * 16) as *const __m512i);
        }
        let sym_lo = _mm512_loadu_si512(dt.sym.as_ptr() as *const __m512i);
        let sym_hi = _mm512_loadu_si512(dt.sym.as_ptr().add(64) as *const __m512i);
        let f_lo = _mm512_loadu_si512(dt.freq.as_ptr() as *const __m512i);
        let f_hi = _mm512_loadu_si512(dt.freq.as_ptr().add(64) as *const __m512i);
        let o_lo = _mm512_loadu_si512(dt.offset.as_ptr() as *const __m512i);
        let o_hi = _mm512_loadu_si512(dt.offset.as_ptr().add(64) as *const __m512i);
        let slot_mask = _mm512_set1_epi32((PROB_SCALE - 1) as i32);
        let low = _mm512_set1_epi32(RANS_L as i32);
        // Byte 0 of every dword: the permute's other bytes are zeroed.
        const BYTE0: u64 = 0x1111_1111_1111_1111;
        let mut pos = 0usize;
        let mut done = 0usize;
        while done + LANES / 2 <= n && pos + LANES <= n_words {
            let mut sym = [_mm512_setzero_si512(); V];
            for (s, sym) in st.iter_mut().zip(sym.iter_mut()) {
                let slot = _mm512_and_si512(*s, slot_mask);
                *sym = _mm512_maskz_permutex2var_epi8(BYTE0, sym_lo, slot, sym_hi);
                let freq = _mm512_maskz_permutex2var_epi8(BYTE0, f_lo, slot, f_hi);
                let bias = _mm512_maskz_permutex2var_epi8(BYTE0, o_lo, slot, o_hi);
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
            }
            for half in 0..LANES / 32 {
                let bytes =
                    _mm512_or_si512(sym[2 * half], _mm512_slli_epi32::<4>(sym[2 * half + 1]));
                _mm_storeu_si128(
                    out.as_mut_ptr().add(spread.at(done + half * 16)) as *mut __m128i,
                    _mm512_cvtepi32_epi8(bytes),
                );
            }
            done += LANES / 2;
        }
        let mut xo = [0u32; LANES];
        for (v, s) in st.iter().enumerate() {
            _mm512_storeu_si512(xo.as_mut_ptr().add(v * 16) as *mut __m512i, *s);
        }
        (done, xo, pos)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! Eight lanes per AVX2 vector, for CPUs without VBMI: the byte
    //! decoder's form (`rans::avx2`) with a gather from the 128-entry
    //! table. Four vectors (the low and high nibbles of 16 bytes) pack
    //! into one 16-byte store.
    use super::{DecodeTable, Spread, LANES, PROB_BITS, PROB_SCALE, RANS_L};
    use crate::rans::avx2::PERM;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2 and POPCNT.
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn decode_fast(
        out: &mut [u8],
        n: usize,
        spread: Spread,
        x: [u32; LANES],
        dt: &DecodeTable,
        words: &[u8],
    ) -> (usize, [u32; LANES], usize) {
        const V: usize = LANES / 8;
        let n_words = words.len() / 2;
        let mut st = [_mm256_setzero_si256(); V];
        for (v, s) in st.iter_mut().enumerate() {
            *s = _mm256_loadu_si256(x.as_ptr().add(v * 8) as *const __m256i);
        }
        let slot_mask = _mm256_set1_epi32((PROB_SCALE - 1) as i32);
        let byte = _mm256_set1_epi32(0xff);
        let low = _mm256_set1_epi32(RANS_L as i32);
        // After the packs, dwords 0, 4, 1, 5 hold the 16 bytes in order.
        let join = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let mut pos = 0usize;
        let mut done = 0usize;
        while done + LANES / 2 <= n && pos + LANES <= n_words {
            for q in 0..V / 4 {
                let mut e = [_mm256_setzero_si256(); 4];
                let mut m = [0usize; 4];
                for (j, e) in e.iter_mut().enumerate() {
                    let s = &mut st[4 * q + j];
                    *e = _mm256_i32gather_epi32::<4>(
                        dt.entry.as_ptr() as *const i32,
                        _mm256_and_si256(*s, slot_mask),
                    );
                    let freq = _mm256_and_si256(_mm256_srli_epi32::<8>(*e), byte);
                    *s = _mm256_add_epi32(
                        _mm256_mullo_epi32(freq, _mm256_srli_epi32::<{ PROB_BITS as i32 }>(*s)),
                        _mm256_srli_epi32::<16>(*e),
                    );
                    // States stay below 2^31, so the signed compare is exact.
                    let need = _mm256_cmpgt_epi32(low, *s);
                    m[j] = _mm256_movemask_ps(_mm256_castsi256_ps(need)) as usize;
                }
                for (j, &m) in m.iter().enumerate() {
                    let s = &mut st[4 * q + j];
                    let w = _mm256_cvtepu16_epi32(_mm_loadu_si128(
                        words.as_ptr().add(pos * 2) as *const __m128i
                    ));
                    let idx = _mm256_loadu_si256(PERM[m].as_ptr() as *const __m256i);
                    let w = _mm256_permutevar8x32_epi32(w, idx);
                    let renorm = _mm256_or_si256(_mm256_slli_epi32::<16>(*s), w);
                    *s = _mm256_blendv_epi8(*s, renorm, _mm256_cmpgt_epi32(low, *s));
                    pos += m.count_ones() as usize;
                }
                // e[0], e[1]: the low nibbles of bytes 0..8 and 8..16;
                // e[2], e[3]: their high nibbles.
                let b = |j: usize| _mm256_and_si256(e[j], byte);
                let lo = _mm256_packus_epi32(b(0), b(1));
                let hi = _mm256_packus_epi32(b(2), b(3));
                let bytes = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hi));
                let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(bytes, bytes), join);
                _mm_storeu_si128(
                    out.as_mut_ptr().add(spread.at(done + q * 16)) as *mut __m128i,
                    _mm256_castsi256_si128(bytes),
                );
            }
            done += LANES / 2;
        }
        let mut xo = [0u32; LANES];
        for (v, s) in st.iter().enumerate() {
            _mm256_storeu_si256(xo.as_mut_ptr().add(v * 8) as *mut __m256i, *s);
        }
        (done, xo, pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn encoded(data: &[u8]) -> (Table, Vec<u8>) {
        let table = Table::from_counts(&histogram(&crate::rans::histogram(data))).unwrap();
        let mut stream = Vec::new();
        encode(data, &table, &mut stream);
        (table, stream)
    }

    /// Q4-like bytes: two nibbles from a rounded normal.
    fn q4_bytes(rng: &mut ChaCha8Rng, n: usize) -> Vec<u8> {
        let mut nib = || {
            let g: f64 = (0..4).map(|_| rng.random::<f64>()).sum::<f64>() - 2.0;
            (7.5 + g * 5.0).round().clamp(0.0, 15.0) as u8
        };
        (0..n).map(|_| nib() | nib() << 4).collect()
    }

    #[test]
    fn every_decoder_round_trips_and_spreads_into_records() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        // Lengths around the 32-byte step leave checked tails.
        for n_runs in [1usize, 2, 3, 4, 5, 63, 64, 65, 701] {
            // Contiguous, then the quants of Q4_0, Q4_1, Q5_0 and Q5_1 blocks.
            for (run, stride) in [(16, 16), (16, 18), (16, 20), (16, 22), (16, 24)] {
                let n = n_runs * 16;
                let data = q4_bytes(&mut rng, n);
                let (table, stream) = encoded(&data);
                let mut tb = Vec::new();
                table.write(&mut tb);
                assert_eq!(Table::read(&tb).unwrap(), (table.clone(), 16));
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
    }

    #[test]
    fn coded_size_is_close_to_the_nibble_entropy() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let data = q4_bytes(&mut rng, 200_000);
        let h = histogram(&crate::rans::histogram(&data));
        let bound = crate::rans::entropy_bits(&{
            let mut c = [0u64; 256];
            c[..16].copy_from_slice(&h);
            c
        }) / 8.0;
        let (table, stream) = encoded(&data);
        // 7-bit frequencies balanced by cost: within 0.2 % of the order-0
        // bound (plus the 256 bytes of states).
        assert!(
            (stream.len() as f64) < bound * 1.002 + 300.0,
            "{} vs {bound}",
            stream.len()
        );
        assert!(table.cost_bits(&h) / 8.0 < bound * 1.002);
        // A rare nibble keeps a slot of its own.
        let mut rare = vec![0x55u8; 4096];
        rare[100] = 0x5f;
        let (table, stream) = encoded(&rare);
        assert_eq!(table.freq[15], 1);
        let mut out = vec![0u8; rare.len()];
        decode(&stream, &table, &mut out).unwrap();
        assert_eq!(out, rare);
    }

    #[test]
    fn corrupt_streams_and_tables_are_errors_not_panics() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let data = q4_bytes(&mut rng, 4096);
        let (table, stream) = encoded(&data);
        let mut out = vec![0u8; data.len()];
        for cut in [0, 5, 255, 256, 257, stream.len() - 1] {
            assert!(decode(&stream[..cut], &table, &mut out).is_err());
        }
        let mut detected = 0;
        for i in 0..stream.len() {
            let mut b = stream.clone();
            b[i] ^= 0x10;
            if decode(&b, &table, &mut out).is_err() || out != data {
                detected += 1;
            }
        }
        assert_eq!(detected, stream.len());
        assert!(Table::read(&[8u8; 15]).is_err());
        assert!(Table::read(&[9u8; 16]).is_err());
        // Odd lengths are refused, not mis-decoded.
        assert!(decode(&stream, &table, &mut out[..100]).is_err());
    }
}
