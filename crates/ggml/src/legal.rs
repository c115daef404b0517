//! Which types a row of a given length may take, and what llama.cpp
//! substitutes when it may not.

use crate::GgmlType;

/// Whether a tensor whose rows hold `row_len` elements can be stored as `ty`:
/// ggml packs each row into whole blocks, so `row_len` must be a multiple of
/// the block size (1 for F32/F16/BF16, 32 for Q4_0…Q8_0/IQ4_NL, 256 for the
/// k-quants and most IQ types). This is the check llama.cpp's
/// `llama_tensor_get_type` (src/llama-quant.cpp) makes on `ne[0]`.
pub fn is_legal(ty: GgmlType, row_len: usize) -> bool {
    row_len % ty.block_size() == 0
}

/// llama.cpp's fallback for a type that does not fit the row length, or
/// `None` where llama.cpp gives up ("Unsupported tensor size encountered").
///
/// Mirrors the `convert_incompatible_tensor` switch at the end of
/// `llama_tensor_get_type` (src/llama-quant.cpp):
///
/// | requested                                              | fallback |
/// |--------------------------------------------------------|----------|
/// | TQ1_0, TQ2_0                                           | Q4_0     |
/// | IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M, Q2_K, Q3_K, IQ4_XS | IQ4_NL |
/// | Q4_K                                                   | Q5_0     |
/// | Q5_K                                                   | Q5_1     |
/// | Q6_K                                                   | Q8_0     |
/// | anything else                                          | error    |
///
/// and if the fallback's block size still does not divide the row, F16.
/// A type that already fits is returned unchanged.
///
/// Not covered here: llama.cpp also forces Q8_0 for `output.weight` (or a
/// tied `token_embd.weight`) whose rows do not fit the requested type; that
/// is a per-tensor policy for the caller, not a property of the type.
pub fn llama_fallback_type(ty: GgmlType, row_len: usize) -> Option<GgmlType> {
    use GgmlType::*;
    if is_legal(ty, row_len) {
        return Some(ty);
    }
    let fallback = match ty {
        TQ1_0 | TQ2_0 => Q4_0,
        IQ2XXS | IQ2XS | IQ2S | IQ3XXS | IQ3S | IQ1S | IQ1M | Q2K | Q3K | IQ4XS => IQ4NL,
        Q4K => Q5_0,
        Q5K => Q5_1,
        Q6K => Q8_0,
        _ => return None,
    };
    Some(if is_legal(fallback, row_len) {
        fallback
    } else {
        F16
    })
}

/// The type a tensor with rows of `row_len` elements gets when `ty` is
/// requested: `ty` itself if it fits, else llama.cpp's fallback
/// ([`llama_fallback_type`]), which becomes F16 when the fallback does not fit
/// either.
///
/// Where llama.cpp has no fallback and aborts (a 32-block type such as Q4_0
/// on a row that is not a multiple of 32), this returns F16 — the same last
/// resort llama.cpp uses when a fallback does not fit — so callers always get
/// a storable type; use [`llama_fallback_type`] to detect that case.
pub fn fallback_type(ty: GgmlType, row_len: usize) -> GgmlType {
    llama_fallback_type(ty, row_len).unwrap_or(GgmlType::F16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType::*;

    #[test]
    fn legal_rows() {
        assert!(is_legal(Q4K, 1536));
        assert!(!is_legal(Q4K, 576));
        assert!(is_legal(Q4_0, 576));
        assert!(!is_legal(Q4_0, 33));
        assert!(is_legal(F16, 33));
        assert!(is_legal(BF16, 1));
    }

    /// The table in llama-quant.cpp, on the default model's row lengths
    /// (576 = 2.25·256 = 18·32; 1536 = 6·256) and an odd 100.
    #[test]
    fn llama_quant_fallbacks() {
        let cases = [
            (Q2K, 576, IQ4NL),
            (Q3K, 576, IQ4NL),
            (IQ4XS, 576, IQ4NL),
            (IQ2XXS, 576, IQ4NL),
            (IQ1M, 576, IQ4NL),
            (Q4K, 576, Q5_0),
            (Q5K, 576, Q5_1),
            (Q6K, 576, Q8_0),
            (TQ2_0, 576, Q4_0),
            (Q4K, 1536, Q4K),
            (Q6K, 1536, Q6K),
            (Q4_0, 576, Q4_0),
            (F32, 100, F32),
            // fallback does not fit a 100-element row either → F16
            (Q2K, 100, F16),
            (Q4K, 100, F16),
            (Q6K, 100, F16),
            (TQ1_0, 100, F16),
        ];
        for (ty, n, want) in cases {
            assert_eq!(fallback_type(ty, n), want, "{ty} on rows of {n}");
            assert_eq!(
                llama_fallback_type(ty, n),
                Some(want),
                "{ty} on rows of {n}"
            );
            assert!(is_legal(fallback_type(ty, n), n));
        }
        // llama.cpp throws for these; fallback_type still gives a storable type.
        assert_eq!(llama_fallback_type(Q4_0, 100), None);
        assert_eq!(llama_fallback_type(Q8_0, 100), None);
        assert_eq!(fallback_type(Q4_0, 100), F16);
    }

    #[test]
    fn every_type_has_a_storable_fallback() {
        for ty in GgmlType::ALL {
            for n in [1, 31, 32, 100, 576, 1536, 4096, 49152] {
                assert!(is_legal(fallback_type(ty, n), n), "{ty} {n}");
            }
        }
    }
}
