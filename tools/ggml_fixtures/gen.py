#!/usr/bin/env python3
"""Generate the reference fixtures for crates/ggml (tersor-ggml).

Usage, from the repository root:

    LIBGGML=/path/to/llama.cpp/build/bin/libggml-base.so python3 tools/ggml_fixtures/gen.py

Writes crates/ggml/tests/fixtures/ (all but weighted/, which
gen_weighted.py writes):

  manifest.tsv          one line per (case, type): what each file holds and
                        which implementation produced it
  inputs/<case>.f32     little-endian f32 inputs (seeded numpy, and rows of
                        the default model dequantized by gguf-py)
  <type>/<case>.bin     the encoding of the input (or random block bytes for
                        the decode-only "random_blocks" case)
  <type>/<case>.f32     the reference decoding of <type>/<case>.bin
  model_checksums.tsv   per-tensor SHA-256 / sum / sum of squares of gguf-py's
                        f32 dequantization of the default model (checked
                        against ggml's to_float), with each tensor's absolute
                        file offset and byte length

References:
  decode  gguf.quants.dequantize (gguf-py) for every type it supports; d*q in
          float32 for Q8_K (gguf-py lacks it). Every decoding is also checked
          against llama.cpp's own to_float (ggml_get_type_traits(t)->to_float,
          dequantize_row_q8_K for Q8_K) from libggml-base; any difference
          aborts the script.
  encode  gguf.quants.quantize for BF16, Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 (also
          checked against ggml_quantize_chunk; a difference aborts);
          llama.cpp's ggml_quantize_chunk(type, src, dst, 0, 1, n, NULL) for
          F16, the k-quants and IQ4_NL; quantize_row_q8_K_ref for Q8_K.

The script only loads an existing llama.cpp build; it never builds one.
Environment:
  LIBGGML       path to libggml-base.so (required)
  TERSOR_MODEL  path to SmolLM2-135M-Instruct.Q4_1.gguf (default:
                <repo>/../shared/assets/SmolLM2-135M-Instruct.Q4_1.gguf)
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T
from gguf import quants

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "crates" / "ggml" / "tests" / "fixtures"
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Types under test, with their ggml names (as GgmlType::name in the crate).
TYPES = {
    T.F16: "f16",
    T.BF16: "bf16",
    T.Q4_0: "q4_0",
    T.Q4_1: "q4_1",
    T.Q5_0: "q5_0",
    T.Q5_1: "q5_1",
    T.Q8_0: "q8_0",
    T.IQ4_NL: "iq4_nl",
    T.Q2_K: "q2_K",
    T.Q3_K: "q3_K",
    T.Q4_K: "q4_K",
    T.Q5_K: "q5_K",
    T.Q6_K: "q6_K",
    T.Q8_K: "q8_K",
}
GGUFPY_ENCODERS = {T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0}
QUANTIZED = set(TYPES) - {T.F16, T.BF16}

# Byte offsets of the fp16 scale fields in each block (ggml-common.h), used to
# make random blocks decode to finite numbers.
FP16_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.IQ4_NL: [0],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}


def block_info(t: T) -> tuple[int, int]:
    return gguf.GGML_QUANT_SIZES[t]


# --------------------------------------------------------------------------
# llama.cpp through ctypes


class InitParams(ctypes.Structure):
    _fields_ = [
        ("mem_size", ctypes.c_size_t),
        ("mem_buffer", ctypes.c_void_p),
        ("no_alloc", ctypes.c_bool),
    ]


class TypeTraits(ctypes.Structure):
    # struct ggml_type_traits (ggml.h)
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


ROW_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
F32P = ctypes.POINTER(ctypes.c_float)


class Ggml:
    def __init__(self, path: str):
        self.lib = lib = ctypes.CDLL(path)
        lib.ggml_init.argtypes = [InitParams]
        lib.ggml_init.restype = ctypes.c_void_p
        lib.ggml_free.argtypes = [ctypes.c_void_p]
        # ggml_init fills the fp16 -> fp32 lookup table that the quantizers'
        # requantization steps read (GGML_FP16_TO_FP32); without it every
        # fp16 would read back as 0.
        self.ctx = lib.ggml_init(InitParams(1 << 20, None, True))
        if not self.ctx:
            sys.exit("ggml_init failed")
        lib.ggml_quantize_chunk.argtypes = [
            ctypes.c_int, F32P, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
            ctypes.c_int64, F32P,
        ]
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
        lib.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
        lib.quantize_row_q8_K_ref.argtypes = [F32P, ctypes.c_void_p, ctypes.c_int64]
        lib.dequantize_row_q8_K.argtypes = [ctypes.c_void_p, F32P, ctypes.c_int64]

    def quantize(self, t: T, x: np.ndarray) -> bytes:
        x = np.ascontiguousarray(x, dtype=np.float32)
        bs, ts = block_info(t)
        assert x.size % bs == 0
        dst = np.zeros(x.size // bs * ts, dtype=np.uint8)
        if t == T.Q8_K:
            # Not a storage type: ggml_quantize_chunk has no case for it.
            self.lib.quantize_row_q8_K_ref(x.ctypes.data_as(F32P), dst.ctypes.data, x.size)
        else:
            n = self.lib.ggml_quantize_chunk(
                int(t), x.ctypes.data_as(F32P), dst.ctypes.data, 0, 1, x.size, None)
            assert n == dst.size, (t, n, dst.size)
        return dst.tobytes()

    def dequantize(self, t: T, data: bytes) -> np.ndarray:
        bs, ts = block_info(t)
        assert len(data) % ts == 0
        n = len(data) // ts * bs
        src = np.frombuffer(data, dtype=np.uint8).copy()
        out = np.zeros(n, dtype=np.float32)
        if t == T.Q8_K:
            self.lib.dequantize_row_q8_K(src.ctypes.data, out.ctypes.data_as(F32P), n)
        else:
            fn = self.lib.ggml_get_type_traits(int(t)).contents.to_float
            assert fn, f"no to_float for {t.name}"
            ROW_FN(fn)(src.ctypes.data, out.ctypes.data, n)
        return out


# --------------------------------------------------------------------------
# references


def ref_encode(t: T, x: np.ndarray, ggml: Ggml) -> tuple[bytes, str]:
    c = ggml.quantize(t, x)
    if t in GGUFPY_ENCODERS:
        py = quants.quantize(x.reshape(1, -1), t).tobytes()
        if py != c:
            bad = next(i for i in range(len(c)) if c[i] != py[i])
            sys.exit(f"gguf-py and ggml disagree encoding {t.name} (first byte {bad})")
        return py, "gguf-py"
    return c, "ggml"


def ref_decode(t: T, data: bytes, ggml: Ggml) -> tuple[np.ndarray, str]:
    bs, ts = block_info(t)
    if t == T.Q8_K:
        blocks = np.frombuffer(data, dtype=np.uint8).reshape(-1, ts)
        d = blocks[:, :4].copy().view(np.float32)
        q = blocks[:, 4:4 + 256].copy().view(np.int8).astype(np.float32)
        py = (d * q).reshape(-1).astype(np.float32)
        src = "closed-form"
    else:
        py = quants.dequantize(np.frombuffer(data, dtype=np.uint8), t).reshape(-1)
        src = "gguf-py"
    c = ggml.dequantize(t, data)
    if py.view(np.uint32).tobytes() != c.view(np.uint32).tobytes():
        diff = np.nonzero(py.view(np.uint32) != c.view(np.uint32))[0]
        sys.exit(f"{src} and ggml disagree decoding {t.name} at {len(diff)} elements, "
                 f"first {diff[0]}: {py[diff[0]]!r} vs {c[diff[0]]!r}")
    return py.astype(np.float32), src


# --------------------------------------------------------------------------
# inputs


def synthetic_cases(rng: np.random.Generator) -> dict[str, np.ndarray]:
    cases: dict[str, np.ndarray] = {}
    cases["gaussian"] = rng.standard_normal(1024)
    # Student-t with 2 degrees of freedom: occasional huge outliers.
    cases["heavy_tailed"] = rng.standard_t(2, 1024) * 0.05

    z = rng.standard_normal(512) * 0.1
    z[:256] = 0.0  # a whole super-block of zeros
    z[256 + 64:256 + 96] = 0.0  # one zero 32-block
    z[256 + 160:256 + 176] = 0.0  # one zero 16-element sub-block
    cases["zero_blocks"] = z

    c = np.empty(512)
    c[:256] = 0.75  # constant positive super-block
    c[256:] = -3.0  # constant negative super-block...
    c[256 + 32:256 + 64] = 1.5  # ...with a constant positive 32-block
    c[256 + 128:256 + 144] = 0.0  # and a zero sub-block
    cases["constant_blocks"] = c

    t = rng.standard_normal(512) * 1e-6
    t[128:160] *= 1e-6  # ~1e-12
    t[192:224] = rng.standard_normal(32) * 1e-17  # below GROUP_MAX_EPS (1e-15)
    t[256:] = rng.standard_normal(256) * 1e-3
    cases["tiny"] = t

    # each 32-block its own magnitude (1e-4 .. 1e3), some with one outlier
    mags = 10.0 ** rng.uniform(-4, 3, 32)
    m = rng.standard_normal(1024) * np.repeat(mags, 32)
    for b in rng.choice(32, 8, replace=False):
        m[32 * b + rng.integers(32)] *= 100.0
    cases["mixed_magnitudes"] = m

    # values on a coarse grid: many exact rounding ties inside the quantizers
    cases["grid"] = rng.integers(-16, 17, 512) * 0.25
    return cases


def float_specials(rng: np.random.Generator) -> np.ndarray:
    """Conversion edge cases for F16/BF16 (not quantized types)."""
    f16_max = 65504.0
    vals = [
        0.0, -0.0, 1.0, -1.0, f16_max, -f16_max, 65519.99, 65520.0, 1e6, -1e6,
        np.inf, -np.inf,
        2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26, 2.0 ** -14, 2.0 ** -14 - 2.0 ** -24,
        1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11,  # fp16 ties
        1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8,  # bf16 ties
        np.finfo(np.float32).max, np.finfo(np.float32).tiny, 1e-45, -1e-45,
        3.4e38, 1e-40,
    ]
    x = np.array(vals, dtype=np.float32)
    rest = (rng.standard_normal(256 - x.size) * 10.0 ** rng.uniform(-8, 6, 256 - x.size))
    return np.concatenate([x, rest.astype(np.float32)])


def real_rows(model: Path) -> dict[str, np.ndarray]:
    reader = gguf.GGUFReader(str(model))
    by_name = {t.name: t for t in reader.tensors}
    out = {}
    for name, rows, key in [
        ("blk.0.ffn_down.weight", [0, 300], "real_ffn_down"),
        ("blk.5.attn_q.weight", [0, 1, 100, 575], "real_attn_q"),
    ]:
        t = by_name[name]
        w = quants.dequantize(t.data, t.tensor_type)
        out[key] = np.concatenate([w[r] for r in rows])
    return out


def random_blocks(t: T, rng: np.random.Generator) -> bytes:
    """Arbitrary block bytes with finite scales: exercises every bit field."""
    bs, ts = block_info(t)
    n_blocks = 8 if bs == 32 else 4
    raw = rng.integers(0, 256, (n_blocks, ts), dtype=np.uint8)
    if t == T.Q8_K:
        d = (rng.standard_normal(n_blocks) * 0.01).astype(np.float32)
        raw[:, :4] = d.view(np.uint8).reshape(n_blocks, 4)
    else:
        for off in FP16_FIELDS[t]:
            v = (rng.standard_normal(n_blocks) * 10.0 ** rng.uniform(-4, 0, n_blocks))
            raw[:, off:off + 2] = v.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return raw.tobytes()


# --------------------------------------------------------------------------
# model checksums


def model_checksums(model: Path, ggml: Ggml) -> list[str]:
    """gguf-py's dequantization of every tensor, checked against ggml's
    to_float for every non-F32 tensor."""
    reader = gguf.GGUFReader(str(model))
    lines = [
        f"# per-tensor checksums of gguf-py {gguf_version()} dequantization to f32 of {MODEL_NAME}",
        f"# file_size\t{model.stat().st_size}",
        "# name\ttype\tn_elements\toffset\tn_bytes\tsum_f64\tsumsq_f64\tsha256_f32le",
    ]
    for t in reader.tensors:
        w = quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        assert w.size == t.n_elements
        if t.tensor_type != T.F32:
            c = ggml.dequantize(t.tensor_type, t.data.tobytes())
            if c.view(np.uint32).tobytes() != w.view(np.uint32).tobytes():
                sys.exit(f"gguf-py and ggml disagree dequantizing {t.name}")
        w64 = w.astype(np.float64)
        digest = hashlib.sha256(w.astype("<f4").tobytes()).hexdigest()
        lines.append("\t".join([
            t.name, TYPE_NAMES[t.tensor_type], str(t.n_elements), str(t.data_offset),
            str(t.n_bytes), repr(float(w64.sum())), repr(float((w64 * w64).sum())), digest,
        ]))
    return lines


TYPE_NAMES = {T.F32: "f32", **TYPES}


def gguf_version() -> str:
    from importlib.metadata import version
    return version("gguf")


# --------------------------------------------------------------------------


def main() -> None:
    lib_path = os.environ.get("LIBGGML")
    if not lib_path:
        sys.exit("set LIBGGML to a llama.cpp build's libggml-base.so "
                 "(e.g. <llama.cpp>/build/bin/libggml-base.so); this script does not build llama.cpp")
    model = Path(os.environ.get(
        "TERSOR_MODEL", REPO.parent / "shared" / "assets" / MODEL_NAME))
    if not model.is_file():
        sys.exit(f"model not found: {model} (set TERSOR_MODEL or run the asset fetch step)")
    ggml = Ggml(lib_path)
    rng = np.random.default_rng(20250220)

    cases = synthetic_cases(rng)
    cases.update(real_rows(model))
    cases = {k: v.astype(np.float32) for k, v in cases.items()}
    specials = float_specials(rng)

    if OUT.exists():
        # weighted/ belongs to gen_weighted.py: keep it.
        for p in OUT.iterdir():
            if p.name != "weighted":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    (OUT / "inputs").mkdir(parents=True)
    manifest = ["# case\ttype\tn_elements\tencoded_by\tdecoded_by"]

    def emit(case: str, t: T, enc: bytes, enc_src: str):
        dec, dec_src = ref_decode(t, enc, ggml)
        d = OUT / TYPES[t]
        d.mkdir(exist_ok=True)
        (d / f"{case}.bin").write_bytes(enc)
        (d / f"{case}.f32").write_bytes(dec.astype("<f4").tobytes())
        manifest.append(f"{case}\t{TYPES[t]}\t{dec.size}\t{enc_src}\t{dec_src}")

    for case, x in cases.items():
        assert x.size % 256 == 0, case
        (OUT / "inputs" / f"{case}.f32").write_bytes(x.astype("<f4").tobytes())
        for t in TYPES:
            enc, src = ref_encode(t, x, ggml)
            emit(case, t, enc, src)

    (OUT / "inputs" / "float_specials.f32").write_bytes(specials.astype("<f4").tobytes())
    for t in (T.F16, T.BF16):
        enc, src = ref_encode(t, specials, ggml)
        if t == T.F16:
            # gguf-py has no F16 encoder of its own beyond numpy's cast:
            # check that too.
            assert enc == specials.astype(np.float16).tobytes()
        emit("float_specials", t, enc, src)
    # NaN through F16 and BF16: ggml writes 0x7E00 (F16) and forces a quiet
    # NaN keeping the top payload bits (BF16; gguf-py mirrors it).
    nan = np.array([np.nan, -np.nan] + [1.0] * 30, dtype=np.float32)
    nan.view(np.uint32)[2] = 0x7F800001  # signalling NaN
    nan.view(np.uint32)[3] = 0xFFC12345  # NaN with payload
    (OUT / "inputs" / "nan.f32").write_bytes(nan.astype("<f4").tobytes())
    for t in (T.F16, T.BF16):
        enc, src = ref_encode(t, nan, ggml)
        emit("nan", t, enc, src)

    for t in QUANTIZED:
        emit("random_blocks", t, random_blocks(t, rng), "random")

    (OUT / "manifest.tsv").write_text("\n".join(manifest) + "\n")
    (OUT / "model_checksums.tsv").write_text("\n".join(model_checksums(model, ggml)) + "\n")

    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {len(manifest) - 1} fixtures to {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
