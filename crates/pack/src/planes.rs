//! Byte-plane layouts: how a chunk's bytes are split into planes whose
//! bytes share a distribution (ZipNN's byte grouping, Hershcovitch et al.
//! 2024; DFloat11's exponent separation, Zhang et al. 2025).
//!
//! Floats are split at the exponent: the exponent byte alone in one plane,
//! the sign with the top mantissa bits in the next, the remaining mantissa
//! bytes after. GGUF blocks are split by field: scales apart from quants.

/// A plane layout, identified in the stream by [`Layout::id`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One plane: int8, fp8, or any byte tensor.
    Bytes,
    /// IEEE half: [sign | exponent | 2 mantissa bits], [8 mantissa bits].
    F16,
    /// bfloat16: [exponent], [sign | 7 mantissa bits].
    Bf16,
    /// IEEE single: [exponent], [sign | top 7 mantissa bits], then the two
    /// low mantissa bytes.
    F32,
    /// Fixed-size records whose byte positions are grouped into planes
    /// (llama.cpp block types; the groups follow `block_q4_1` etc.).
    Record(RecordLayout),
}

/// A record of `size` bytes; plane `g` holds bytes `groups[g]` of every
/// record, record after record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordLayout {
    pub id: u8,
    pub size: usize,
    pub groups: &'static [(usize, usize)],
    /// `Some((p, base))`: plane `p` (a one-byte group) is stored as its
    /// difference from plane `base`, after flipping its sign bit. For Q4_1
    /// and Q5_1 the min `m` is close to −7.5 × the scale `d`, so the high
    /// byte of `m` (sign, exponent, two mantissa bits) is well predicted by
    /// that of `d`: on the default LM the difference has 2.25 bits of
    /// entropy against 3.03 for the byte itself.
    pub delta: Option<(usize, usize)>,
    /// The last plane holds packed 4-bit values (`qs` of the Q4 and Q5
    /// blocks), which the nibble coder may take (`crate::nibble`).
    pub nibbles: bool,
}

// Groups follow ggml-common.h: `block_q4_0 { ggml_half d; uint8_t qs[16]; }`
// and its siblings; each f16 scale byte gets its own plane.
const Q4_0: RecordLayout = RecordLayout {
    id: 10,
    size: 18,
    groups: &[(0, 1), (1, 2), (2, 18)],
    delta: None,
    nibbles: true,
};
const Q4_1: RecordLayout = RecordLayout {
    id: 11,
    size: 20,
    groups: &[(0, 1), (1, 2), (2, 3), (3, 4), (4, 20)],
    delta: Some((3, 1)),
    nibbles: true,
};
const Q5_0: RecordLayout = RecordLayout {
    id: 12,
    size: 22,
    groups: &[(0, 1), (1, 2), (2, 6), (6, 22)],
    delta: None,
    nibbles: true,
};
const Q5_1: RecordLayout = RecordLayout {
    id: 13,
    size: 24,
    groups: &[(0, 1), (1, 2), (2, 3), (3, 4), (4, 8), (8, 24)],
    delta: Some((3, 1)),
    nibbles: true,
};
const Q8_0: RecordLayout = RecordLayout {
    id: 14,
    size: 34,
    groups: &[(0, 1), (1, 2), (2, 34)],
    delta: None,
    nibbles: false,
};
const RECORDS: [RecordLayout; 5] = [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0];

impl Layout {
    pub fn id(self) -> u8 {
        match self {
            Layout::Bytes => 1,
            Layout::F16 => 2,
            Layout::Bf16 => 3,
            Layout::F32 => 4,
            Layout::Record(r) => r.id,
        }
    }

    pub fn from_id(id: u8) -> Option<Layout> {
        Some(match id {
            1 => Layout::Bytes,
            2 => Layout::F16,
            3 => Layout::Bf16,
            4 => Layout::F32,
            _ => Layout::Record(*RECORDS.iter().find(|r| r.id == id)?),
        })
    }

    /// The layout of a GGUF tensor type, if it has one.
    pub fn for_ggml(ty: tersor_ggml::GgmlType) -> Option<Layout> {
        use tersor_ggml::GgmlType as T;
        Some(match ty {
            T::F32 => Layout::F32,
            T::F16 => Layout::F16,
            T::BF16 => Layout::Bf16,
            T::I8 => Layout::Bytes,
            // IQ4_NL's block is Q4_0's: an f16 scale and 16 bytes of nibbles.
            T::Q4_0 | T::IQ4NL => Layout::Record(Q4_0),
            T::Q4_1 => Layout::Record(Q4_1),
            T::Q5_0 => Layout::Record(Q5_0),
            T::Q5_1 => Layout::Record(Q5_1),
            T::Q8_0 => Layout::Record(Q8_0),
            _ => return None,
        })
    }

    /// The layout of a safetensors dtype string, if it has one.
    pub fn for_safetensors(dtype: &str) -> Option<Layout> {
        Some(match dtype {
            "F32" => Layout::F32,
            "F16" => Layout::F16,
            "BF16" => Layout::Bf16,
            "F8_E4M3" | "F8_E5M2" | "I8" | "U8" => Layout::Bytes,
            _ => return None,
        })
    }

    /// Bytes per record: whole records are split, a shorter tail is stored.
    pub fn record_size(self) -> usize {
        match self {
            Layout::Bytes => 1,
            Layout::F16 | Layout::Bf16 => 2,
            Layout::F32 => 4,
            Layout::Record(r) => r.size,
        }
    }

    pub fn n_planes(self) -> usize {
        match self {
            Layout::Bytes => 1,
            Layout::F16 | Layout::Bf16 => 2,
            Layout::F32 => 4,
            Layout::Record(r) => r.groups.len(),
        }
    }

    /// The plane that the decoder may write straight into the records, and
    /// its spread (see [`crate::rans::Spread`]) and offset in a record: the
    /// quants of a block type, a field whose length is a power of two ≥ 16.
    pub fn in_place_plane(self) -> Option<(usize, crate::rans::Spread, usize)> {
        let Layout::Record(r) = self else { return None };
        let p = r.groups.len() - 1;
        let (a, b) = r.groups[p];
        crate::rans::Spread::new(b - a, r.size).map(|sp| (p, sp, a))
    }

    /// The plane of packed 4-bit values, if the layout has one.
    pub fn nibble_plane(self) -> Option<usize> {
        match self {
            Layout::Record(r) if r.nibbles => Some(r.groups.len() - 1),
            _ => None,
        }
    }

    /// Bytes of plane `p` for `n` records.
    pub fn plane_len(self, p: usize, n: usize) -> usize {
        match self {
            Layout::Record(r) => (r.groups[p].1 - r.groups[p].0) * n,
            _ => n,
        }
    }

    /// Splits whole records into planes; `data.len()` must be a multiple of
    /// the record size.
    pub fn split(self, data: &[u8]) -> Vec<Vec<u8>> {
        let w = self.record_size();
        debug_assert_eq!(data.len() % w, 0);
        let n = data.len() / w;
        let mut planes: Vec<Vec<u8>> = (0..self.n_planes())
            .map(|p| Vec::with_capacity(self.plane_len(p, n)))
            .collect();
        match self {
            Layout::Bytes => planes[0].extend_from_slice(data),
            Layout::F16 => {
                let (a, b) = two(&mut planes);
                for c in data.chunks_exact(2) {
                    a.push(c[1]);
                    b.push(c[0]);
                }
            }
            Layout::Bf16 => {
                let (a, b) = two(&mut planes);
                for c in data.chunks_exact(2) {
                    let v = u16::from_le_bytes([c[0], c[1]]);
                    a.push((v >> 7) as u8);
                    b.push(((v >> 8) & 0x80) as u8 | (v & 0x7f) as u8);
                }
            }
            Layout::F32 => {
                let [e, s, m1, m0] = &mut planes[..] else {
                    unreachable!()
                };
                for c in data.chunks_exact(4) {
                    let v = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    e.push((v >> 23) as u8);
                    s.push(((v >> 24) & 0x80) as u8 | ((v >> 16) & 0x7f) as u8);
                    m1.push(c[1]);
                    m0.push(c[0]);
                }
            }
            Layout::Record(r) => {
                for rec in data.chunks_exact(r.size) {
                    for (p, &(a, b)) in r.groups.iter().enumerate() {
                        planes[p].extend_from_slice(&rec[a..b]);
                    }
                }
                if let Some((p, base)) = r.delta {
                    let (lo, hi) = planes.split_at_mut(p);
                    for (v, &b) in hi[0].iter_mut().zip(&lo[base]) {
                        *v = (*v ^ 0x80).wrapping_sub(b);
                    }
                }
            }
        }
        planes
    }

    /// Inverse of [`Layout::split`]: writes `out.len() / record_size`
    /// records. The planes' lengths must match (checked by the caller).
    pub fn merge(self, planes: &[&[u8]], out: &mut [u8]) {
        self.merge_some(planes, out, false)
    }

    /// [`Layout::merge`] of every plane but [`Layout::in_place_plane`],
    /// which the decoder has already written into `out`.
    pub fn merge_around_in_place(self, planes: &[&[u8]], out: &mut [u8]) {
        debug_assert!(self.in_place_plane().is_some());
        self.merge_some(planes, out, true)
    }

    fn merge_some(self, planes: &[&[u8]], out: &mut [u8], skip_last: bool) {
        let w = self.record_size();
        let n = out.len() / w;
        let np = self.n_planes() - skip_last as usize;
        debug_assert!((0..np).all(|p| planes[p].len() == self.plane_len(p, n)));
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present (checked just above).
            return unsafe { merge_avx2(self, planes, out, skip_last) };
        }
        merge_any(self, planes, out, skip_last)
    }
}

/// The merge loops compiled for AVX2, where they vectorise twice as wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn merge_avx2(layout: Layout, planes: &[&[u8]], out: &mut [u8], skip_last: bool) {
    merge_any(layout, planes, out, skip_last)
}

/// Zipped iterators rather than indexing, so that the loops have no
/// bounds checks and vectorise. `skip_last`: the last plane of a record
/// layout is already in place.
#[inline(always)]
fn merge_any(layout: Layout, planes: &[&[u8]], out: &mut [u8], skip_last: bool) {
    match layout {
        Layout::Bytes => out.copy_from_slice(planes[0]),
        Layout::F16 => {
            for ((c, &a), &b) in out.chunks_exact_mut(2).zip(planes[0]).zip(planes[1]) {
                c[0] = b;
                c[1] = a;
            }
        }
        Layout::Bf16 => {
            for ((c, &e), &s) in out.chunks_exact_mut(2).zip(planes[0]).zip(planes[1]) {
                let v = ((s as u16 & 0x80) << 8) | (e as u16) << 7 | (s as u16 & 0x7f);
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        Layout::F32 => {
            let it = out
                .chunks_exact_mut(4)
                .zip(planes[0])
                .zip(planes[1])
                .zip(planes[2])
                .zip(planes[3]);
            for ((((c, &e), &s), &m1), &m0) in it {
                let (e, s) = (e as u32, s as u32);
                let v =
                    (s & 0x80) << 24 | e << 23 | (s & 0x7f) << 16 | (m1 as u32) << 8 | m0 as u32;
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        Layout::Record(r) => match r.id {
            // One pass per record for the common blocks (the generic path
            // makes one pass per plane).
            10 if skip_last => merge_scale_quants::<18, 2, false>(out, planes, None),
            10 => merge_scale_quants::<18, 2, true>(out, planes, None),
            11 if skip_last => merge_scale_quants::<20, 4, false>(out, planes, r.delta),
            11 => merge_scale_quants::<20, 4, true>(out, planes, r.delta),
            14 if skip_last => merge_scale_quants::<34, 2, false>(out, planes, None),
            14 => merge_scale_quants::<34, 2, true>(out, planes, None),
            _ => {
                let np = r.groups.len() - skip_last as usize;
                for (p, &(a, b)) in r.groups[..np].iter().enumerate() {
                    match b - a {
                        1 => scatter::<1>(out, r.size, a, planes[p]),
                        4 => scatter::<4>(out, r.size, a, planes[p]),
                        16 => scatter::<16>(out, r.size, a, planes[p]),
                        len => {
                            for (rec, src) in out
                                .chunks_exact_mut(r.size)
                                .zip(planes[p].chunks_exact(len))
                            {
                                rec[a..b].copy_from_slice(src);
                            }
                        }
                    }
                }
                if let Some((p, base)) = r.delta {
                    let at = r.groups[p].0;
                    for (rec, &b) in out.chunks_exact_mut(r.size).zip(planes[base]) {
                        rec[at] = rec[at].wrapping_add(b) ^ 0x80;
                    }
                }
            }
        },
    }
}

/// A block of `NS` one-byte scale planes followed by `Q` quant bytes
/// (Q4_0, Q4_1, Q8_0; `S` = `NS + Q`), with the Q4_1 delta undone on the
/// way; the quants are copied too when `QUANTS` (otherwise the decoder
/// wrote them in place).
#[inline(always)]
fn merge_scale_quants<const S: usize, const NS: usize, const QUANTS: bool>(
    out: &mut [u8],
    planes: &[&[u8]],
    delta: Option<(usize, usize)>,
) {
    let q = S - NS;
    let n = out.len() / S;
    // The plane slices, cut to `n`, as locals: read through `planes` they
    // would be reloaded after every store to `out` (which might alias them
    // as far as the compiler knows), and the cut lets it drop bounds checks.
    let sc: [&[u8]; NS] = std::array::from_fn(|j| &planes[j][..n]);
    let quants = if QUANTS { &planes[NS][..n * q] } else { &[] };
    let (dp, db) = delta.unwrap_or((0, 0));
    for (k, rec) in out.chunks_exact_mut(S).enumerate() {
        // Assembled in a register: byte stores to a stack array then read
        // back as one word would stall store forwarding.
        let mut v = 0u32;
        for (j, plane) in sc.iter().enumerate() {
            v |= (plane[k] as u32) << (8 * j);
        }
        if delta.is_some() {
            let b = ((v >> (8 * dp)) as u8).wrapping_add((v >> (8 * db)) as u8) ^ 0x80;
            v = (v & !(0xff << (8 * dp))) | (b as u32) << (8 * dp);
        }
        rec[..NS].copy_from_slice(&v.to_le_bytes()[..NS]);
        if QUANTS {
            rec[NS..].copy_from_slice(&quants[k * q..k * q + q]);
        }
    }
}

/// Copies `L`-byte pieces of `plane` to offset `at` of each `size`-byte
/// record of `out` (a fixed-size move per record, no memcpy call).
#[inline(always)]
fn scatter<const L: usize>(out: &mut [u8], size: usize, at: usize, plane: &[u8]) {
    for (rec, src) in out.chunks_exact_mut(size).zip(plane.chunks_exact(L)) {
        let dst: &mut [u8; L] = (&mut rec[at..at + L]).try_into().unwrap();
        dst.copy_from_slice(src);
    }
}

fn two(planes: &mut [Vec<u8>]) -> (&mut Vec<u8>, &mut Vec<u8>) {
    let (a, b) = planes.split_at_mut(1);
    (&mut a[0], &mut b[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_layouts() -> Vec<Layout> {
        let mut v = vec![Layout::Bytes, Layout::F16, Layout::Bf16, Layout::F32];
        v.extend(RECORDS.iter().map(|&r| Layout::Record(r)));
        v
    }

    #[test]
    fn split_then_merge_is_the_identity_and_ids_round_trip() {
        for l in all_layouts() {
            assert_eq!(Layout::from_id(l.id()), Some(l));
            let n = 37 * l.record_size();
            let data: Vec<u8> = (0..n).map(|i| (i * 131 + 7) as u8).collect();
            let planes = l.split(&data);
            let refs: Vec<&[u8]> = planes.iter().map(|p| p.as_slice()).collect();
            let mut out = vec![0u8; n];
            l.merge(&refs, &mut out);
            assert_eq!(out, data, "{l:?}");
        }
    }

    #[test]
    fn float_planes_hold_the_exponent() {
        // 1.5f32 = 0x3FC00000: exponent 127, sign 0, top mantissa 0x40.
        let planes = Layout::F32.split(&1.5f32.to_le_bytes());
        assert_eq!((planes[0][0], planes[1][0]), (127, 0x40));
        // -1.5 in bf16 = 0xBFC0: exponent 127, sign bit and mantissa 0x40.
        let planes = Layout::Bf16.split(&0xBFC0u16.to_le_bytes());
        assert_eq!((planes[0][0], planes[1][0]), (127, 0xC0));
    }
}
