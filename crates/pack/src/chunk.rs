//! One chunk: up to [`crate::format::MAX_CHUNK`] bytes of one segment,
//! coded on its own so that chunks decode independently and in parallel.
//!
//! Payload: a codec byte, then
//! - `0` stored: the bytes as they are;
//! - `1` zstd: one zstd frame (generic data: headers, integers, k-quants);
//! - `2` planes: layout id, plane count,
//!   record count (u32), then per plane a codec byte
//!   (`0` raw, `1` constant, `2` rANS, `3` nibble rANS: the packed 4-bit
//!   plane of a Q4/Q5 layout only), a u32 length and the plane's bytes;
//!   then the tail (bytes after the last whole record), stored;
//! - `3` sparse: zero records as a bitmask, the others as a plane chunk.
//!
//! The encoder measures: each plane takes the smallest of its codings, and
//! the chunk falls back to stored when coding does not pay.

use crate::error::Corrupt;
use crate::planes::Layout;
use crate::rans::Spread;
use crate::{nibble, rans};

/// How the encoder should try to code a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Opaque bytes: zstd at this level, or stored.
    Generic { zstd_level: i32 },
    /// Byte planes of a known layout, each rANS-coded where that pays.
    Planes(Layout),
}

const STORED: u8 = 0;
const ZSTD: u8 = 1;
pub(crate) const PLANES: u8 = 2;
const SPARSE: u8 = 3;

const PLANE_RAW: u8 = 0;
const PLANE_CONST: u8 = 1;
const PLANE_RANS: u8 = 2;
const PLANE_NIBBLE: u8 = 3;

/// The nibble coder is taken over the byte coder for a packed 4-bit plane
/// unless its estimate is this much larger: with AVX-512 VBMI it decodes
/// such planes about 20 % faster (no table gather), and on the default
/// LM's Q4_1 quants it costs under 0.1 % more bytes (a byte's two nibbles
/// are nearly, not quite, independent).
const NIBBLE_SLACK: f64 = 0.005;

/// An encoded chunk and, for `--stats`, the order-0 entropy of its planes
/// in bits (what a static per-plane coder could at best reach).
pub struct Encoded {
    pub payload: Vec<u8>,
    pub entropy_bits: f64,
}

/// Codes `raw`. A plane is entropy-coded only when that saves at least
/// `min_gain` of its size: decoding a plane costs far more than copying
/// it, and a plane that saves less (the sign-and-top-mantissa byte of a
/// float saves ~0.4 %) buys too little for the time. `nibbles` lets the
/// packed 4-bit plane of a Q4/Q5 layout take the nibble coder.
pub fn encode(raw: &[u8], kind: Kind, min_gain: f64, nibbles: bool) -> Encoded {
    let (mut payload, entropy_bits) = match kind {
        Kind::Generic { zstd_level } => {
            let bound = rans::entropy_bits(&rans::histogram(raw));
            let mut p = vec![ZSTD];
            // Writing into a Vec cannot fail.
            p.extend(zstd::bulk::compress(raw, zstd_level).expect("zstd into memory"));
            (p, bound)
        }
        Kind::Planes(layout) => {
            let (planes, bound) = encode_planes(raw, layout, min_gain, nibbles);
            match encode_sparse(raw, layout, min_gain, nibbles) {
                Some(sparse) if sparse.len() < planes.len() => (sparse, bound),
                _ => (planes, bound),
            }
        }
    };
    if payload.len() > raw.len() + 1 {
        payload.clear();
        payload.push(STORED);
        payload.extend_from_slice(raw);
    }
    Encoded {
        payload,
        entropy_bits,
    }
}

fn encode_planes(raw: &[u8], layout: Layout, min_gain: f64, nibbles: bool) -> (Vec<u8>, f64) {
    let w = layout.record_size();
    let whole = raw.len() / w * w;
    let planes = layout.split(&raw[..whole]);
    let mut p = Vec::with_capacity(raw.len() / 2 + 64);
    p.extend_from_slice(&[PLANES, layout.id(), planes.len() as u8]);
    p.extend_from_slice(&((whole / w) as u32).to_le_bytes());
    let mut entropy = (raw.len() - whole) as f64 * 8.0;
    let nibble_plane = layout.nibble_plane().filter(|_| nibbles);
    for (i, plane) in planes.iter().enumerate() {
        entropy += encode_plane(plane, &mut p, min_gain, nibble_plane == Some(i));
    }
    p.extend_from_slice(&raw[whole..]);
    (p, entropy)
}

/// Appends one plane as `codec u8, len u32, bytes`: constant, rANS (over
/// bytes, or over nibbles where `nibbles` says the plane holds packed 4-bit
/// values) when that saves at least `min_gain` of it, else raw. Returns the
/// plane's order-0 entropy in bits.
fn encode_plane(plane: &[u8], p: &mut Vec<u8>, min_gain: f64, nibbles: bool) -> f64 {
    let counts = rans::histogram(plane);
    let distinct = counts.iter().filter(|&&c| c > 0).count();
    let start = p.len();
    p.extend_from_slice(&[0; 5]);
    if distinct == 1 {
        p[start] = PLANE_CONST;
        p.push(plane[0]);
    } else if distinct == 0 {
        p[start] = PLANE_RAW;
    } else {
        let table = rans::Table::from_counts(&counts);
        // Estimate first: encoding a plane that will not pay is wasted
        // time on the near-uniform mantissa planes of some tensors.
        let payload = table.cost_bits(&counts) / 8.0;
        let estimate = payload + 300.0;
        let nibble_table = if nibbles && plane.len().is_multiple_of(16) {
            let nibble_counts = nibble::histogram(&counts);
            nibble::Table::from_counts(&nibble_counts).filter(|t| {
                // Both with their tables and states.
                let bytes = payload
                    + (32 + distinct + 2 * table.freq.iter().filter(|&&f| f > 255).count()) as f64
                    + (rans::LANES * 4) as f64;
                let nibble = t.cost_bits(&nibble_counts) / 8.0 + (16 + nibble::LANES * 4) as f64;
                nibble <= bytes * (1.0 + NIBBLE_SLACK)
            })
        } else {
            None
        };
        let worth = plane.len() as f64 * (1.0 - min_gain);
        if let Some(t) = nibble_table {
            p[start] = PLANE_NIBBLE;
            t.write(p);
            nibble::encode(plane, &t, p);
        } else if estimate < worth {
            p[start] = PLANE_RANS;
            table.write(p);
            rans::encode(plane, &table, p);
        }
        if p[start] == PLANE_RAW || (p.len() - start - 5) as f64 >= worth {
            p.truncate(start + 5);
            p[start] = PLANE_RAW;
            p.extend_from_slice(plane);
        }
    }
    let len = (p.len() - start - 5) as u32;
    p[start + 1..start + 5].copy_from_slice(&len.to_le_bytes());
    rans::entropy_bits(&counts)
}

/// Zero records (all bytes zero: pruned weights, padding; `-0.0` is not
/// one) as a bitmask, the others as planes: `records u32`, the mask as one
/// plane (bit `i % 8` of byte `i / 8` set for a nonzero record), the
/// nonzero records as a plane chunk (`len u32` + payload), then the tail.
/// Tried when at least a tenth of the records are zero; kept when smaller.
fn encode_sparse(raw: &[u8], layout: Layout, min_gain: f64, nibbles: bool) -> Option<Vec<u8>> {
    let w = layout.record_size();
    let n = raw.len() / w;
    let whole = n * w;
    let is_zero = |rec: &[u8]| rec.iter().all(|&b| b == 0);
    // Count first: most chunks are dense, and building the mask and the
    // copy of the nonzero records would be wasted on them.
    let zeros = raw[..whole].chunks_exact(w).filter(|r| is_zero(r)).count();
    if zeros < n / 10 || n == 0 {
        return None;
    }
    let mut mask = vec![0u8; n.div_ceil(8)];
    let mut nonzero = Vec::with_capacity(whole - zeros * w);
    for (i, rec) in raw[..whole].chunks_exact(w).enumerate() {
        if !is_zero(rec) {
            mask[i / 8] |= 1 << (i % 8);
            nonzero.extend_from_slice(rec);
        }
    }
    let mut p = vec![SPARSE];
    p.extend_from_slice(&(n as u32).to_le_bytes());
    encode_plane(&mask, &mut p, min_gain, false);
    let (inner, _) = encode_planes(&nonzero, layout, min_gain, nibbles);
    p.extend_from_slice(&(inner.len() as u32).to_le_bytes());
    p.extend_from_slice(&inner);
    p.extend_from_slice(&raw[whole..]);
    Some(p)
}

/// The plane written by [`encode_plane`] at `body[pos..]`: its codec and
/// its bytes (which end at `pos + 5 + bytes.len()`).
fn plane_at(body: &[u8], pos: usize) -> Result<(u8, &[u8]), Corrupt> {
    let head = body
        .get(pos..pos + 5)
        .ok_or(Corrupt("plane header truncated"))?;
    let len = u32::from_le_bytes(head[1..5].try_into().unwrap()) as usize;
    let data = body
        .get(pos + 5..pos + 5 + len)
        .ok_or(Corrupt("plane data truncated"))?;
    Ok((head[0], data))
}

/// Decodes one plane written by [`encode_plane`] at `body[pos..]` into a
/// new buffer of `want` bytes; returns it and the position after it.
fn decode_plane_owned(body: &[u8], pos: usize, want: usize) -> Result<(Vec<u8>, usize), Corrupt> {
    let (codec, data) = plane_at(body, pos)?;
    let len = data.len();
    let out = match codec {
        PLANE_RAW if len == want => data.to_vec(),
        PLANE_CONST if len == 1 => vec![data[0]; want],
        PLANE_RANS => {
            let (table, t) = rans::Table::read(data)?;
            let mut buf = vec![0u8; want];
            rans::decode(&data[t..], &table, &mut buf)?;
            buf
        }
        _ => return Err(Corrupt("bad mask plane")),
    };
    Ok((out, pos + 5 + len))
}

fn decode_sparse(body: &[u8], out: &mut [u8]) -> Result<(), Corrupt> {
    let n = u32::from_le_bytes(
        body.get(..4)
            .ok_or(Corrupt("sparse chunk truncated"))?
            .try_into()
            .unwrap(),
    ) as usize;
    // The record size comes from the inner chunk's layout; bound `n` by
    // the output first so the mask allocation is bounded too.
    if n > out.len() {
        return Err(Corrupt("sparse chunk of the wrong record count"));
    }
    let (mask, pos) = decode_plane_owned(body, 4, n.div_ceil(8))?;
    if !n.is_multiple_of(8) && mask.last().is_some_and(|&b| b >> (n % 8) != 0) {
        return Err(Corrupt("sparse mask has bits past its records"));
    }
    let ilen = u32::from_le_bytes(
        body.get(pos..pos + 4)
            .ok_or(Corrupt("sparse chunk truncated"))?
            .try_into()
            .unwrap(),
    ) as usize;
    let inner = body
        .get(pos + 4..pos + 4 + ilen)
        .ok_or(Corrupt("sparse chunk truncated"))?;
    let layout = match inner {
        [PLANES, id, ..] => Layout::from_id(*id).ok_or(Corrupt("unknown plane layout"))?,
        _ => return Err(Corrupt("sparse chunk without plane data")),
    };
    let w = layout.record_size();
    if n != out.len() / w {
        return Err(Corrupt("sparse chunk of the wrong record count"));
    }
    let k: usize = mask.iter().map(|b| b.count_ones() as usize).sum();
    let mut nonzero = vec![0u8; k * w];
    decode(inner, &mut nonzero)?;
    let tail = &body[pos + 4 + ilen..];
    if tail.len() != out.len() - n * w {
        return Err(Corrupt("sparse chunk tail of the wrong length"));
    }
    let mut src = nonzero.chunks_exact(w);
    for (i, rec) in out[..n * w].chunks_exact_mut(w).enumerate() {
        if mask[i / 8] & (1 << (i % 8)) != 0 {
            rec.copy_from_slice(src.next().expect("mask count matches"));
        } else {
            rec.fill(0);
        }
    }
    out[n * w..].copy_from_slice(tail);
    Ok(())
}

/// Decodes `payload` into `out`, whose length (the chunk's raw length from
/// the index) the payload must fill exactly.
pub fn decode(payload: &[u8], out: &mut [u8]) -> Result<(), Corrupt> {
    let (&codec, body) = payload
        .split_first()
        .ok_or(Corrupt("empty chunk payload"))?;
    match codec {
        STORED => {
            if body.len() != out.len() {
                return Err(Corrupt("stored chunk of the wrong length"));
            }
            out.copy_from_slice(body);
            Ok(())
        }
        ZSTD => {
            let n = zstd::bulk::decompress_to_buffer(body, out)
                .map_err(|_| Corrupt("zstd frame does not decode"))?;
            if n != out.len() {
                return Err(Corrupt("zstd frame of the wrong length"));
            }
            Ok(())
        }
        PLANES => decode_planes(body, out),
        SPARSE => decode_sparse(body, out),
        _ => Err(Corrupt("unknown chunk codec")),
    }
}

fn decode_planes(body: &[u8], out: &mut [u8]) -> Result<(), Corrupt> {
    let [id, n_planes, r0, r1, r2, r3, ..] = *body else {
        return Err(Corrupt("plane chunk truncated"));
    };
    let layout = Layout::from_id(id).ok_or(Corrupt("unknown plane layout"))?;
    if n_planes as usize != layout.n_planes() {
        return Err(Corrupt("plane count does not match the layout"));
    }
    let w = layout.record_size();
    let n = out.len() / w;
    let whole = n * w;
    if u32::from_le_bytes([r0, r1, r2, r3]) as usize != n {
        return Err(Corrupt("plane chunk of the wrong record count"));
    }
    let mut pos = 6;
    // Decoded planes go to a per-thread scratch buffer reused across chunks
    // (fresh megabyte allocations would page-fault on every chunk); raw
    // planes are borrowed from the payload.
    // A layout's quant plane, when rANS-coded, is decoded straight into the
    // records (saving the merge a copy of most of the bytes).
    let in_place = layout.in_place_plane();
    let mut placed = false;
    SCRATCH.with_borrow_mut(|scratch| {
        let mut spans = [(false, 0usize, 0usize); MAX_PLANES];
        let mut used = 0usize;
        for (p, span) in spans.iter_mut().enumerate().take(layout.n_planes()) {
            let want = layout.plane_len(p, n);
            let (codec, data) = plane_at(body, pos)?;
            let len = data.len();
            match codec {
                PLANE_NIBBLE if layout.nibble_plane() != Some(p) => {
                    return Err(Corrupt("nibble codec on a plane that is not 4-bit"));
                }
                PLANE_RANS | PLANE_NIBBLE if n > 0 && in_place.is_some_and(|(q, ..)| q == p) => {
                    let (_, spread, at) = in_place.unwrap();
                    decode_coded_plane(codec, data, want, &mut out[at..whole], spread)?;
                    placed = true;
                }
                PLANE_RAW => {
                    if len != want {
                        return Err(Corrupt("raw plane of the wrong length"));
                    }
                    *span = (false, pos + 5, len);
                }
                PLANE_CONST | PLANE_RANS | PLANE_NIBBLE => {
                    if scratch.len() < used + want {
                        scratch.resize(used + want, 0);
                    }
                    let buf = &mut scratch[used..used + want];
                    if codec == PLANE_CONST {
                        if len != 1 {
                            return Err(Corrupt("constant plane of the wrong length"));
                        }
                        buf.fill(data[0]);
                    } else {
                        decode_coded_plane(codec, data, want, buf, Spread::CONTIGUOUS)?;
                    }
                    *span = (true, used, want);
                    used += want;
                }
                _ => return Err(Corrupt("unknown plane codec")),
            }
            pos += 5 + len;
        }
        let tail = &body[pos.min(body.len())..];
        if tail.len() != out.len() - whole {
            return Err(Corrupt("plane chunk tail of the wrong length"));
        }
        let mut planes: [&[u8]; MAX_PLANES] = [&[]; MAX_PLANES];
        for (p, &(dec, at, len)) in spans.iter().enumerate().take(layout.n_planes()) {
            planes[p] = if dec {
                &scratch[at..at + len]
            } else {
                &body[at..at + len]
            };
        }
        if placed {
            layout.merge_around_in_place(&planes[..layout.n_planes()], &mut out[..whole]);
        } else {
            layout.merge(&planes[..layout.n_planes()], &mut out[..whole]);
        }
        out[whole..].copy_from_slice(tail);
        Ok(())
    })
}

/// Decodes a rANS or nibble-rANS plane (table, then stream) of `n` bytes
/// into `out` at the positions `spread` gives.
fn decode_coded_plane(
    codec: u8,
    data: &[u8],
    n: usize,
    out: &mut [u8],
    spread: Spread,
) -> Result<(), Corrupt> {
    if codec == PLANE_RANS {
        let (table, t) = rans::Table::read(data)?;
        rans::decode_spread(&data[t..], &table, n, out, spread)
    } else {
        let (table, t) = nibble::Table::read(data)?;
        nibble::decode_spread(&data[t..], &table, n, out, spread)
    }
}

/// The most planes a layout has (Q5_1's six).
const MAX_PLANES: usize = 8;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips_including_tails_and_empty() {
        let floats: Vec<u8> = (0..10_001)
            .flat_map(|i| ((i as f32 * 0.37).sin() * 0.05).to_le_bytes())
            .chain([1, 2, 3])
            .collect();
        for kind in [
            Kind::Generic { zstd_level: 3 },
            Kind::Planes(Layout::F32),
            Kind::Planes(Layout::Bf16),
            Kind::Planes(Layout::F16),
            Kind::Planes(Layout::Bytes),
            Kind::Planes(Layout::for_ggml(tersor_ggml::GgmlType::Q4_1).unwrap()),
        ] {
            for len in [0usize, 1, 3, 21, 1000, floats.len()] {
                let raw = &floats[..len];
                let e = encode(raw, kind, 0.0, true);
                let mut out = vec![0u8; len];
                decode(&e.payload, &mut out).unwrap();
                assert_eq!(out, raw, "{kind:?} len {len}");
                // A wrong declared length is an error, not a short read.
                let mut longer = vec![0u8; len + 1];
                assert!(decode(&e.payload, &mut longer).is_err(), "{kind:?} {len}");
            }
        }
    }

    #[test]
    fn pruned_weights_take_the_sparse_codec_and_round_trip() {
        // 60 % zeros (a pruned layer), a -0.0 that must stay -0.0, and a
        // record count that is not a multiple of 8.
        let mut raw: Vec<u8> = (0..50_001u32)
            .flat_map(|i| {
                let keep = (i.wrapping_mul(2_654_435_761) >> 7) % 10 < 4;
                let x = if keep {
                    ((i as f32) * 0.7).sin() * 0.03
                } else {
                    0.0
                };
                x.to_le_bytes()
            })
            .collect();
        raw[8..12].copy_from_slice(&(-0.0f32).to_le_bytes());
        raw.push(7);
        let dense = encode_planes(&raw, Layout::F32, 0.0, true).0;
        let e = encode(&raw, Kind::Planes(Layout::F32), 0.0, true);
        assert_eq!(e.payload[0], SPARSE);
        assert!(
            e.payload.len() * 10 < dense.len() * 9,
            "{} vs {}",
            e.payload.len(),
            dense.len()
        );
        let mut out = vec![1u8; raw.len()];
        decode(&e.payload, &mut out).unwrap();
        assert_eq!(out, raw);
        // Dense data does not take it.
        let dense_raw: Vec<u8> = (0..5000)
            .flat_map(|i| (i as f32 + 0.5).to_le_bytes())
            .collect();
        assert_ne!(
            encode(&dense_raw, Kind::Planes(Layout::F32), 0.0, true).payload[0],
            SPARSE
        );
    }

    #[test]
    fn float_planes_beat_stored_on_smooth_weights() {
        let raw: Vec<u8> = (0..65_536)
            .flat_map(|i| (((i as f32) * 0.61).sin() * 0.02).to_le_bytes())
            .collect();
        let e = encode(&raw, Kind::Planes(Layout::F32), 0.0, true);
        assert!(e.payload.len() < raw.len() * 9 / 10, "{}", e.payload.len());
        assert!(e.entropy_bits / 8.0 < e.payload.len() as f64);
    }

    /// The plane codecs of a planes payload and where each sits, in plane
    /// order.
    fn plane_codecs(payload: &[u8]) -> Vec<(u8, usize)> {
        assert_eq!(payload[0], PLANES);
        let mut pos = 7;
        (0..payload[2])
            .map(|_| {
                let (codec, data) = plane_at(payload, pos).unwrap();
                let at = pos;
                pos += 5 + data.len();
                (codec, at)
            })
            .collect()
    }

    #[test]
    fn q4_quants_take_the_nibble_coder_and_damage_is_an_error() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let layout = Layout::for_ggml(tersor_ggml::GgmlType::Q4_1).unwrap();
        // block_q4_1 records: f16 d and m, then 16 bytes of bell-shaped
        // nibbles (as Q4_1 weights quantise), plus a 7-byte tail.
        let mut raw: Vec<u8> = (0..3000)
            .flat_map(|_| {
                let d = half::f16::from_f32(0.001 + rng.random::<f32>() * 0.01);
                let m = half::f16::from_f32(-7.5 * d.to_f32());
                let mut rec = [d.to_le_bytes(), m.to_le_bytes()].concat();
                rec.extend((0..16).map(|_| {
                    let mut nib = || {
                        let g: f32 = (0..4).map(|_| rng.random::<f32>()).sum::<f32>() - 2.0;
                        (7.5 + g * 5.0).round().clamp(0.0, 15.0) as u8
                    };
                    nib() | nib() << 4
                }));
                rec
            })
            .collect();
        raw.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7]);
        let with = encode(&raw, Kind::Planes(layout), 0.0, true).payload;
        let without = encode(&raw, Kind::Planes(layout), 0.0, false).payload;
        assert_eq!(plane_codecs(&with).last().unwrap().0, PLANE_NIBBLE);
        assert_eq!(plane_codecs(&without).last().unwrap().0, PLANE_RANS);
        assert!(with.len() as f64 <= without.len() as f64 * 1.01);
        for payload in [&with, &without] {
            let mut out = vec![0u8; raw.len()];
            decode(payload, &mut out).unwrap();
            assert_eq!(out, raw);
        }
        // Byte-aligned nibble planes only: a scale plane marked nibble is
        // refused.
        let mut bad = with.clone();
        let (_, at) = plane_codecs(&with)[..4]
            .iter()
            .copied()
            .find(|&(c, _)| c == PLANE_RANS)
            .unwrap();
        bad[at] = PLANE_NIBBLE;
        let mut out = vec![0u8; raw.len()];
        assert!(decode(&bad, &mut out).is_err());
        // Any flipped byte: an error or other bytes (the chunk crc's job),
        // never a panic.
        for i in 0..with.len() {
            let mut b = with.clone();
            b[i] ^= 0x21;
            assert!(decode(&b, &mut out).is_err() || out != raw, "flip at {i}");
        }
    }
}
