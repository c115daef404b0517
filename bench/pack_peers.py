#!/usr/bin/env python3
"""Lossless-packing peers for bench/pack_table.sh: ZipNN, zstd and the order-0 entropy bound.

    pack_peers.py convert MODEL.safetensors OUT_DIR
        Writes OUT_DIR/model.bf16.safetensors (round to nearest even on the f32 bits) and
        OUT_DIR/model.f16.safetensors (numpy astype(float16)); only F32 tensors are converted.
        Prints the two paths, one a line.

    pack_peers.py measure [--threads 1,2] [--runs 3] [--tools zipnn,zstd] FILE...
        Prints one JSON object: tool versions, the files, one result per (tool, threads, file)
        with ratio = compressed / original and compress / decompress speeds in MB/s (10^6 B/s
        of uncompressed data, in memory, best and median of RUNS), and the entropy bound per
        file. --tools zipnn (or zstd) runs only those peers.

Every round trip is checked byte for byte (outside the timed region).
"""
import argparse
import importlib.metadata
import json
import os
import statistics
import struct
import sys
import time

import numpy as np

CHUNK = 256 * 1024  # bytes per entropy-bound table, as in REFERENCE.md
FLOAT_WIDTH = {"F32": 4, "BF16": 2, "F16": 2}  # safetensors float dtypes -> byte planes
ZIPNN_DTYPE = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


# --- safetensors --------------------------------------------------------------------------------

def read_safetensors(path):
    """(header dict, offset of the data section, raw file bytes)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), 8 + n, raw


def tensors(header):
    """(name, info) of every tensor, in data order."""
    items = [(k, v) for k, v in header.items() if k != "__metadata__"]
    return sorted(items, key=lambda kv: kv[1]["data_offsets"][0])


def write_safetensors(path, header_meta, named):
    """named: list of (name, dtype, shape, bytes). Header padded with spaces to a multiple of 8."""
    header, off = {}, 0
    if header_meta is not None:
        header["__metadata__"] = header_meta
    for name, dtype, shape, data in named:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for _, _, _, data in named:
            f.write(data)
    os.replace(tmp, path)


def f32_to_bf16_bits(a):
    """f32 array -> bf16 bits (uint16), round to nearest even; NaNs stay (quiet) NaNs."""
    bits = a.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def convert(src, out_dir):
    header, base, raw = read_safetensors(src)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for tag, dtype in (("bf16", "BF16"), ("f16", "F16")):
        named = []
        for name, info in tensors(header):
            lo, hi = info["data_offsets"]
            data = raw[base + lo : base + hi]
            if info["dtype"] == "F32":
                a = np.frombuffer(data, dtype="<f4")
                conv = f32_to_bf16_bits(a) if dtype == "BF16" else a.astype("<f2")
                named.append((name, dtype, info["shape"], conv.tobytes()))
            else:  # int64 position_ids etc. are left as they are
                named.append((name, info["dtype"], info["shape"], data))
        path = os.path.join(out_dir, f"model.{tag}.safetensors")
        write_safetensors(path, header.get("__metadata__"), named)
        paths.append(path)
    print("\n".join(paths))


# --- file kinds ---------------------------------------------------------------------------------

def file_kind(path, raw):
    """'F32' / 'BF16' / 'F16' for a safetensors file (its dominant float dtype by bytes), 'GGUF'."""
    if raw[:4] == b"GGUF":
        return "GGUF"
    header, _, _ = read_safetensors(path)
    by_dtype = {}
    for _, info in tensors(header):
        lo, hi = info["data_offsets"]
        by_dtype[info["dtype"]] = by_dtype.get(info["dtype"], 0) + hi - lo
    floats = {d: n for d, n in by_dtype.items() if d in FLOAT_WIDTH}
    if not floats:
        raise SystemExit(f"{path}: no F32/BF16/F16 tensor")
    return max(floats, key=floats.get)


# --- entropy bound ------------------------------------------------------------------------------

def plane_entropy_bits(planes):
    """Order-0 entropy (bits, total) of each column of a (n, planes) uint8 array, summed."""
    total = 0.0
    n = planes.shape[0]
    for p in range(planes.shape[1]):
        counts = np.bincount(planes[:, p], minlength=256)
        counts = counts[counts > 0].astype(np.float64)
        total += -(counts * np.log2(counts / n)).sum()
    return total


def entropy_bound(path, raw):
    """Per-plane order-0 bound with new tables every 256 KiB of each float tensor's bytes,
    as a ratio to the file size; the header and non-float tensors count at full size."""
    header, base, _ = read_safetensors(path)
    bits = 8.0 * base  # length prefix + JSON header
    for _, info in tensors(header):
        lo, hi = info["data_offsets"]
        width = FLOAT_WIDTH.get(info["dtype"])
        if width is None:
            bits += 8.0 * (hi - lo)
            continue
        data = np.frombuffer(raw, dtype=np.uint8, count=hi - lo, offset=base + lo)
        for c in range(0, len(data), CHUNK):  # CHUNK is a multiple of every width
            bits += plane_entropy_bits(data[c : c + CHUNK].reshape(-1, width))
    return bits / 8.0 / len(raw)


# --- timing -------------------------------------------------------------------------------------

def measure(data, compress, decompress, runs):
    """(compressed size, {compress/decompress MB/s: best and median of `runs` round trips})."""
    ct, dt, size = [], [], None
    # One untimed round trip first (tersor's --bench decodes once untimed too): on a VM that
    # hands freed memory back to its host, the first touch of a large fresh buffer costs more
    # than decoding into it.
    decompress(compress(bytearray(data)))
    for _ in range(runs):
        # A fresh copy every run: ZipNN's float32/bfloat16 paths reorder bits of their input
        # buffer in place (even of a `bytes` object).
        src = bytearray(data)
        t0 = time.perf_counter()
        packed = compress(src)
        t1 = time.perf_counter()
        out = decompress(packed)
        t2 = time.perf_counter()
        if bytes(out) != data:
            raise SystemExit("round trip mismatch")
        del src
        size = len(packed)
        ct.append(t1 - t0)
        dt.append(t2 - t1)
        del packed, out
    mb = len(data) / 1e6
    # Best of the runs (the one least disturbed on a shared machine), as tersor reports it.
    return size, {
        "compress_mb_s": mb / min(ct),
        "decompress_mb_s": mb / min(dt),
        "compress_mb_s_median": mb / statistics.median(ct),
        "decompress_mb_s_median": mb / statistics.median(dt),
        "runs": runs,
    }


def zipnn_codec(kind, threads):
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit, imported by zipnn
    import zipnn

    # The whole file as bytes (input_format "byte", as ZipNN's file scripts do; the header and
    # the int64 tensor go through the same path), bytearray_dtype = the file's float type. The
    # GGUF has none: ZipNN's byte mode needs a float dtype, and "float16" (two byte planes, no
    # bit reordering) is its best there (0.9517 vs 0.963 for float32, 0.991 for bfloat16).
    z = zipnn.ZipNN(input_format="byte", bytearray_dtype=ZIPNN_DTYPE.get(kind, "float16"),
                    threads=threads)
    return z.compress, z.decompress


def zstd_codec(level):
    import zstandard

    c = zstandard.ZstdCompressor(level=level)  # single thread; frame records the content size
    d = zstandard.ZstdDecompressor()
    return c.compress, d.decompress


def run_measure(files, threads, runs, tools):
    import zstandard

    out = {
        "versions": {
            "zipnn": importlib.metadata.version("zipnn"),
            "zstandard": zstandard.__version__,
            "libzstd": ".".join(map(str, zstandard.ZSTD_VERSION)),
            "numpy": np.__version__,
            "python": sys.version.split()[0],
        },
        "files": [],
        "results": [],
    }
    for path in files:
        with open(path, "rb") as f:
            raw = f.read()
        kind = file_kind(path, raw)
        bound = entropy_bound(path, raw) if kind in FLOAT_WIDTH else None
        out["files"].append({"path": path, "kind": kind, "bytes": len(raw), "bound": bound})
        print(f"{os.path.basename(path)} ({kind}, {len(raw)} B): bound {bound}", file=sys.stderr)
        codecs = []
        if "zipnn" in tools:
            codecs += [("zipnn", t, lambda t=t: zipnn_codec(kind, t)) for t in threads]
        if "zstd" in tools:
            codecs += [(f"zstd-{lv}", 1, lambda lv=lv: zstd_codec(lv)) for lv in (3, 19)]
        for tool, t, make in codecs:
            size, speeds = measure(raw, *make(), runs)
            row = {"tool": tool, "threads": t, "path": path, "ratio": size / len(raw), **speeds}
            out["results"].append(row)
            cs, ds = speeds["compress_mb_s"], speeds["decompress_mb_s"]
            print(f"  {tool} t{t}: {row['ratio']:.4f} ({cs:.1f} -> {ds:.1f} MB/s, best of {runs})",
                  file=sys.stderr)
    json.dump(out, sys.stdout, indent=1)
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert")
    c.add_argument("src")
    c.add_argument("out_dir")
    m = sub.add_parser("measure")
    m.add_argument("--threads", default="1,2", help="ZipNN thread counts, comma-separated")
    m.add_argument("--runs", type=int, default=3)
    m.add_argument("--tools", default="zipnn,zstd", help="peers to run, comma-separated")
    m.add_argument("files", nargs="+")
    a = ap.parse_args()
    if a.cmd == "convert":
        convert(a.src, a.out_dir)
    else:
        run_measure(a.files, [int(t) for t in a.threads.split(",")], a.runs, a.tools.split(","))


if __name__ == "__main__":
    main()
