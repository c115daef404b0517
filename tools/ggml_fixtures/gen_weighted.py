#!/usr/bin/env python3
"""Generate the importance-weighted quantization fixtures for crates/ggml.

Usage, from the repository root:

    LIBGGML=/path/to/llama.cpp/build/bin/libggml-base.so \
        python3 tools/ggml_fixtures/gen_weighted.py

Writes crates/ggml/tests/fixtures/weighted/ (and nothing else):

  manifest.tsv            one line per case: n_per_row, n_rows, where the
                          rows and the importance weights come from
  <case>/input.f32        n_rows * n_per_row little-endian f32, row-major
  <case>/imatrix.f32      n_per_row f32: one importance weight per column
  <case>/<type>.bin       ggml_quantize_chunk(type, input, dst, 0, n_rows,
                          n_per_row, imatrix)
  <case>/<type>.plain.bin the same with imatrix = NULL

for every type of TYPES whose block size divides n_per_row. The reference is
llama.cpp's own `ggml_quantize_chunk` from libggml-base (called through
ctypes), i.e. `quantize_q4_0(..., quant_weights)` and friends: the
`quantize_row_*_impl` functions with an importance matrix, the `_ref`
quantizers (IQ4_NL: its impl) without one. Every encoding is also decoded
with llama.cpp's `to_float`; encodings with a non-finite block (which
llama-quantize's ggml_validate_row_data would reject) are listed in the
manifest's non_finite_blocks column as <file>@<first bad block>.

Inputs:
  * seeded random rows (numpy), one distribution per row (Gaussian,
    heavy-tailed, zero blocks and sub-blocks, constants, tiny values, mixed
    magnitudes, values on a coarse grid, a single huge outlier), with random
    positive importance weights (log-normal; one case with some zero
    columns, as an imatrix has for channels never activated);
  * real rows of the default model's f32 GGUF (read with the `gguf`
    package) with the matching entry of llama-imatrix's output for that
    model on botchan_calib.txt (legacy .dat format, divided by the number of
    calls as llama-quantize's `load_imatrix` does). That GGUF is the
    dequantized Q4_1 model, so for Q4_1 these rows lie on the grid and
    re-quantize identically with or without weights.

The script only loads an existing llama.cpp build and existing files; it
never builds or runs llama.cpp's tools. Environment:
  LIBGGML         path to libggml-base.so (required)
  TERSOR_F32_GGUF f32 GGUF of SmolLM2-135M-Instruct
                  (default /work/peers/ref/smollm2-f32.gguf)
  TERSOR_IMATRIX  llama-imatrix .dat for that model
                  (default /work/peers/ref/imatrix_botchan_calib.dat)
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen import F32P, Ggml, block_info  # noqa: E402  (the ctypes binding)

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "crates" / "ggml" / "tests" / "fixtures" / "weighted"

TYPES = {
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
}


def quantize_chunk(ggml: Ggml, t: T, x: np.ndarray, n_per_row: int,
                   imatrix: np.ndarray | None) -> bytes:
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    bs, ts = block_info(t)
    assert n_per_row % bs == 0 and x.size % n_per_row == 0
    nrows = x.size // n_per_row
    dst = np.zeros(x.size // bs * ts, dtype=np.uint8)
    qw = None
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        assert imatrix.size == n_per_row
        qw = imatrix.ctypes.data_as(F32P)
    n = ggml.lib.ggml_quantize_chunk(
        int(t), x.ctypes.data_as(F32P), dst.ctypes.data, 0, nrows, n_per_row, qw)
    assert n == dst.size, (t, n, dst.size)
    return dst.tobytes()


# --------------------------------------------------------------------------
# inputs


def random_row(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "gaussian":
        return rng.standard_normal(n) * 0.02
    if kind == "heavy_tailed":  # Student-t, 2 degrees of freedom
        return rng.standard_t(2, n) * 0.05
    if kind == "zero_blocks":
        z = rng.standard_normal(n) * 0.1
        z[32:64] = 0.0  # a zero 32-block
        z[n - 16:] = 0.0  # a zero 16-element sub-block
        if n >= 512:
            z[256:512] = 0.0  # a zero super-block
        return z
    if kind == "constant":
        c = np.full(n, 0.75)
        c[n // 2:] = -3.0
        c[:16] = 0.0
        return c
    if kind == "tiny":
        t = rng.standard_normal(n) * 1e-6
        t[:32] = rng.standard_normal(32) * 1e-17  # below GROUP_MAX_EPS
        return t
    if kind == "mixed_magnitudes":  # each 32-block its own scale
        mags = 10.0 ** rng.uniform(-4, 2, n // 32)
        return rng.standard_normal(n) * np.repeat(mags, 32)
    if kind == "grid":  # many exact rounding ties
        return rng.integers(-16, 17, n) * 0.25
    if kind == "outlier":
        o = rng.standard_normal(n) * 0.01
        o[rng.integers(n)] = 3.0
        return o
    raise ValueError(kind)


KINDS = ["gaussian", "heavy_tailed", "zero_blocks", "constant", "tiny",
         "mixed_magnitudes", "grid", "outlier"]


def random_case(n_per_row: int, n_rows: int, first_kind: int, rng: np.random.Generator,
                zero_weights: bool) -> tuple[np.ndarray, np.ndarray, str]:
    kinds = [KINDS[(first_kind + i) % len(KINDS)] for i in range(n_rows)]
    x = np.concatenate([random_row(k, n_per_row, rng) for k in kinds])
    w = rng.lognormal(0.0, 1.5, n_per_row)
    what = "log-normal(0, 1.5) weights"
    if zero_weights:
        w[rng.choice(n_per_row, n_per_row // 8, replace=False)] = 0.0
        w[64:96] = 0.0  # a whole 32-block (and two 16-sub-blocks)
        what += ", 1/8 of the columns and columns 64..96 0"
    return x, w, f"random rows ({', '.join(kinds)}); {what}"


def load_imatrix(path: Path) -> dict[str, np.ndarray]:
    """llama-imatrix's legacy .dat, as llama-quantize's load_imatrix reads
    it: per entry the summed squared activations divided by the call
    count (in float32)."""
    b = path.read_bytes()
    off = 0

    def take(fmt: str):
        nonlocal off
        v = struct.unpack_from(fmt, b, off)
        off += struct.calcsize(fmt)
        return v

    (n,) = take("<i")
    out = {}
    for _ in range(n):
        (ln,) = take("<i")
        name = b[off:off + ln].decode()
        off += ln
        ncall, nval = take("<ii")
        v = np.frombuffer(b, dtype="<f4", count=nval, offset=off).copy()
        off += 4 * nval
        if ncall > 0:
            v = (v / np.float32(ncall)).astype(np.float32)
        out[name] = v
    return out


def real_case(reader: gguf.GGUFReader, imatrix: dict[str, np.ndarray], name: str,
              rows: list[int]) -> tuple[np.ndarray, np.ndarray, str]:
    t = next(t for t in reader.tensors if t.name == name)
    assert t.tensor_type == T.F32, name
    w = np.asarray(t.data, dtype=np.float32)
    x = np.concatenate([w[r] for r in rows])
    qw = imatrix[name]
    assert qw.size == w.shape[1], (name, qw.size, w.shape)
    return x, qw, f"{name} rows {rows} of the f32 GGUF; llama-imatrix weights (botchan_calib)"


# --------------------------------------------------------------------------


def main() -> None:
    lib_path = os.environ.get("LIBGGML")
    if not lib_path:
        sys.exit("set LIBGGML to a llama.cpp build's libggml-base.so; this script does not build llama.cpp")
    f32_gguf = Path(os.environ.get("TERSOR_F32_GGUF", "/work/peers/ref/smollm2-f32.gguf"))
    imatrix_path = Path(os.environ.get("TERSOR_IMATRIX", "/work/peers/ref/imatrix_botchan_calib.dat"))
    for p in (f32_gguf, imatrix_path):
        if not p.is_file():
            sys.exit(f"not found: {p}")
    ggml = Ggml(lib_path)
    rng = np.random.default_rng(20250221)
    reader = gguf.GGUFReader(str(f32_gguf))
    imatrix = load_imatrix(imatrix_path)

    cases = {
        "rand64": random_case(64, 8, 0, rng, False),
        "rand256": random_case(256, 8, 0, rng, False),
        "rand512": random_case(512, 4, 4, rng, True),
        "rand576": random_case(576, 4, 0, rng, True),
        "real_attn_q": real_case(reader, imatrix, "blk.3.attn_q.weight", [0, 7, 300, 575]),
        "real_ffn_down": real_case(reader, imatrix, "blk.28.ffn_down.weight", [0, 411]),
    }

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    manifest = ["# case\tn_per_row\tn_rows\ttypes\tnon_finite_blocks\tsource"]
    for case, (x, qw, what) in cases.items():
        x = x.astype(np.float32)
        qw = qw.astype(np.float32)
        n_per_row = qw.size
        assert x.size % n_per_row == 0
        d = OUT / case
        d.mkdir()
        (d / "input.f32").write_bytes(x.astype("<f4").tobytes())
        (d / "imatrix.f32").write_bytes(qw.astype("<f4").tobytes())
        names = []
        nonfinite = []
        for t, tname in TYPES.items():
            if n_per_row % block_info(t)[0] != 0:
                continue
            for suffix, imat in (("bin", qw), ("plain.bin", None)):
                enc = quantize_chunk(ggml, t, x, n_per_row, imat)
                dec = ggml.dequantize(t, enc).reshape(-1, block_info(t)[0])
                bad = np.nonzero(~np.isfinite(dec).all(axis=1))[0]
                if bad.size:
                    # llama-quantize would reject this output
                    # (ggml_validate_row_data); the crate must report it.
                    nonfinite.append(f"{tname}.{suffix}@{bad[0]}")
                (d / f"{tname}.{suffix}").write_bytes(enc)
            names.append(tname)
        manifest.append(f"{case}\t{n_per_row}\t{x.size // n_per_row}\t{','.join(names)}\t"
                        f"{','.join(nonfinite) or '-'}\t{what}")

    (OUT / "manifest.tsv").write_text("\n".join(manifest) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {len(cases)} cases to {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
