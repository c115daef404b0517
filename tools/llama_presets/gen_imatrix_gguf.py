#!/usr/bin/env python3
"""Write crates/quant/tests/fixtures/imatrix_smollm2_layer0.gguf: the layer-0
entries of imatrix_smollm2_c128x2.dat in newer llama.cpp's GGUF imatrix format.

The conversion is the one newer llama-imatrix makes when it loads a legacy
file (`--in-file x.dat`, tools/imatrix/imatrix.cpp `load_imatrix_legacy`) and
saves GGUF (`save_imatrix`): with the chunk size c (-c 128 here),
    <name>.in_sum2 = stored values * c   (ggml shape [nval, 1], F32)
    <name>.counts  = ncall * c           (ggml shape [1, 1],    F32)
plus general.type = "imatrix", imatrix.datasets (array of strings),
imatrix.chunk_count and imatrix.chunk_size (u32), and no architecture key.
Written with the `gguf` Python package, independent of tersor.

Usage (from the repository root): python3 tools/llama_presets/gen_imatrix_gguf.py
"""

import os
import struct

import numpy as np
import gguf

SRC = "crates/quant/tests/fixtures/imatrix_smollm2_c128x2.dat"
DST = "crates/quant/tests/fixtures/imatrix_smollm2_layer0.gguf"
CHUNK_SIZE = 128


class IMatrixWriter(gguf.GGUFWriter):
    def add_architecture(self) -> None:
        pass  # imatrix files store no architecture


def read_legacy(path):
    b = open(path, "rb").read()
    (n,) = struct.unpack_from("<i", b, 0)
    o = 4
    entries = []
    for _ in range(n):
        (ln,) = struct.unpack_from("<i", b, o)
        o += 4
        name = b[o:o + ln].decode()
        o += ln
        ncall, nval = struct.unpack_from("<ii", b, o)
        o += 8
        vals = np.frombuffer(b, dtype="<f4", count=nval, offset=o).copy()
        o += 4 * nval
        entries.append((name, ncall, vals))
    chunks, dl = struct.unpack_from("<ii", b, o)
    o += 8
    dataset = b[o:o + dl].decode()
    assert o + dl == len(b)
    return entries, chunks, dataset


def main():
    entries, chunks, dataset = read_legacy(SRC)
    keep = sorted((e for e in entries if e[0].startswith("blk.0.")), key=lambda e: e[0])
    w = IMatrixWriter(path=DST + ".tmp", arch="")
    w.add_type(gguf.GGUFType.IMATRIX)
    w.add_array(gguf.Keys.IMatrix.DATASETS, [dataset])
    w.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, chunks)
    w.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, CHUNK_SIZE)
    for name, ncall, vals in keep:
        in_sum2 = (vals.astype(np.float32) * np.float32(CHUNK_SIZE)).reshape(1, -1)
        counts = np.array([[ncall * CHUNK_SIZE]], dtype=np.float32)
        w.add_tensor(name + ".in_sum2", in_sum2)
        w.add_tensor(name + ".counts", counts)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(DST + ".tmp", DST)
    print(f"wrote {DST} ({os.path.getsize(DST)} bytes, {len(keep)} entries)")


if __name__ == "__main__":
    main()
