#!/usr/bin/env python3
"""Independent reference decoder for GPTQ v1 checkpoints (checkpoint_format "gptq").

A numpy transcription of GPTQModel's torch kernel, at GPTQModel commit
f4c327a17eb3e24524d5a97a3d682e3696ae6a28 (github.com/ModelCloud/GPTQModel):

- gptqmodel/nn_modules/qlinear/__init__.py
    PackableQuantLinear._init_wf_unsqueeze_buffers  (the `wf` shift tables)
    PackableQuantLinear.dequantize_weight           (unpacking, incl. the 3-bit fix-ups)
    PackableQuantLinear._dequantize_from_codes      (scales[g_idx] * (weight - zeros[g_idx]))
- gptqmodel/nn_modules/qlinear/torch.py
    TorchQuantLinear.__init__                       (dequant_dtype: int16 for 8 bits, else int8)
- gptqmodel/utils/model.py
    convert_gptq_v1_to_v2_format_module             (v1 zero points: + 1 per field)
- gptqmodel/utils/model_dequant.py
    _correct_gptq_v1_qzeros, _unpack_cols_3bit, _pack_cols_3bit (3-bit v1 correction)
- gptqmodel/quantization/config.py
    dynamic_get / _resolve_dynamic_override         (per-module `dynamic` overrides)

The weights are computed as the torch kernel computes them: fp16 scales times the int
difference of codes and zero points, an fp16 product, then transposed to the PyTorch
[out, in] layout.

The safetensors files are parsed here with json + numpy (no torch, no safetensors package).

Usage: unpack.py MODEL_DIR [--out DIR]
Prints one line per quantized module: `<module> <bits> <out>x<in> <sha256 of fp16 bytes>`;
with --out, also writes DIR/<module>.npy (float16, [out, in]).
"""

import argparse
import hashlib
import json
import os
import re
import struct
import sys

import numpy as np

DTYPES = {
    "F16": np.float16,
    "BF16": None,  # not needed for the quantized tensors
    "F32": np.float32,
    "F64": np.float64,
    "I8": np.int8,
    "I16": np.int16,
    "I32": np.int32,
    "I64": np.int64,
    "U8": np.uint8,
}


def read_safetensors(path):
    """Header + tensors of one safetensors file: {name: (dtype_str, shape, array|None)}."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"{path}: header length {n} exceeds the file")
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info["dtype"]
        shape = tuple(info["shape"])
        start, end = info["data_offsets"]
        if not (0 <= start <= end <= len(data) - base):
            raise ValueError(f"{path}: tensor {name} offsets out of range")
        np_dtype = DTYPES.get(dtype)
        arr = None
        if np_dtype is not None:
            arr = np.frombuffer(data, dtype=np.dtype(np_dtype).newbyteorder("<"),
                                count=int(np.prod(shape, dtype=np.int64)), offset=base + start)
            if arr.nbytes != end - start:
                raise ValueError(f"{path}: tensor {name} size mismatch")
            arr = arr.reshape(shape)
        out[name] = (dtype, shape, arr)
    return out


def read_model(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for fname in files:
        tensors.update(read_safetensors(os.path.join(model_dir, fname)))
    return tensors


def read_quant_config(model_dir):
    # json.load keeps object key order (dicts are ordered): `dynamic` order matters.
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    q = cfg.get("quantization_config")
    if q is None:
        with open(os.path.join(model_dir, "quantize_config.json")) as f:
            q = json.load(f)
    fmt = q.get("checkpoint_format") or q.get("format") or "gptq"
    method = q.get("quant_method") or q.get("method") or "gptq"
    if method != "gptq" or fmt != "gptq":
        raise ValueError(f"not a GPTQ v1 checkpoint: method={method} format={fmt}")
    return q


def dynamic_get(dynamic, module_name):
    """config.py `_resolve_dynamic_override`: first matching pattern (re.match, i.e.
    anchored at the start) in dict order; False for a `-:` pattern, None for no match."""
    if not dynamic:
        return None
    for pattern, overrides in dynamic.items():
        is_negative = pattern.startswith("-:")
        raw = pattern[2:] if pattern.startswith(("-:", "+:")) else pattern
        if re.match(raw, module_name):
            return False if is_negative else dict(overrides)
    return None


def module_settings(q, module):
    bits, group_size = q["bits"], q.get("group_size", 128)
    ov = dynamic_get(q.get("dynamic"), module)
    if ov is False:
        return None
    if ov:
        bits = ov.get("bits", bits)
        group_size = ov.get("group_size", group_size)
    return bits, group_size


# --- model_dequant.py: 3-bit column packing used by the v1 zero correction ---------------

def unpack_cols_3bit(packed):
    rows, cols = packed.shape
    assert cols % 3 == 0
    blocks = cols // 3
    words = packed.astype(np.int64).reshape(rows, blocks, 3)
    w0, w1, w2 = words[:, :, 0], words[:, :, 1], words[:, :, 2]
    unpacked = np.empty((rows, blocks, 32), dtype=np.int32)
    for idx in range(10):
        unpacked[:, :, idx] = (w0 >> (3 * idx)) & 0x7
    unpacked[:, :, 10] = ((w0 >> 30) & 0x3) | (((w1 >> 0) << 2) & 0x4)
    for idx in range(10):
        unpacked[:, :, 11 + idx] = (w1 >> (1 + 3 * idx)) & 0x7
    unpacked[:, :, 21] = ((w1 >> 31) & 0x1) | (((w2 >> 0) << 1) & 0x6)
    for idx in range(10):
        unpacked[:, :, 22 + idx] = (w2 >> (2 + 3 * idx)) & 0x7
    return unpacked.reshape(rows, blocks * 32)


def pack_cols_3bit(values):
    rows, cols = values.shape
    assert cols % 32 == 0
    blocks = cols // 32
    v = (values.astype(np.int64) & 0x7).reshape(rows, blocks, 32)
    mask32 = (1 << 32) - 1
    w0 = np.zeros((rows, blocks), dtype=np.int64)
    for idx in range(10):
        w0 |= v[:, :, idx] << (3 * idx)
    w0 |= v[:, :, 10] << 30
    w1 = (v[:, :, 10] >> 2) & 0x1
    for idx in range(10):
        w1 |= v[:, :, 11 + idx] << (1 + 3 * idx)
    w1 |= v[:, :, 21] << 31
    w2 = (v[:, :, 21] >> 1) & 0x3
    for idx in range(10):
        w2 |= v[:, :, 22 + idx] << (2 + 3 * idx)
    packed = np.stack((w0, w1, w2), axis=2).reshape(rows, blocks * 3)
    return (packed & mask32).astype(np.uint32).view(np.int32)


# --- utils/model.py: convert_gptq_v1_to_v2_format_module (pack_dtype int32) --------------

V1_OFFSET = {
    2: 0b01010101010101010101010101010101,
    4: 0b00010001000100010001000100010001,
    8: 0b00000001000000010000000100000001,
}


def v1_to_v2_qzeros(qzeros, bits):
    if bits == 3:
        # _correct_gptq_v1_qzeros: shift each decoded field, then repack.
        return pack_cols_3bit((unpack_cols_3bit(qzeros) + 1) & 0x7)
    # `module.qzeros.data += offset` on int32 words (wrapping).
    return (qzeros.view(np.uint32) + np.uint32(V1_OFFSET[bits])).view(np.int32)


# --- qlinear/__init__.py: PackableQuantLinear ---------------------------------------------

def wf_table(bits):
    """_init_wf_unsqueeze_buffers (pack_dtype_bits = 32)."""
    if bits in (2, 4, 8):
        return np.arange(0, 32, bits, dtype=np.int32).reshape(1, -1)
    if bits == 3:
        return np.array(
            [
                [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 0],
                [0, 1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31],
                [0, 2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 0],
            ],
            dtype=np.int32,
        ).reshape(1, 3, 12)
    raise ValueError(f"unsupported bits {bits}")


def dequantize_weight(qweight, qzeros, scales, g_idx, bits):
    """PackableQuantLinear.dequantize_weight + _dequantize_from_codes (num_itr = 1) on
    v2 zero points; returns the fp16 weight in [in, out] as the kernel does."""
    maxq = 2**bits - 1
    wf = wf_table(bits)
    dequant_dtype = np.int16 if bits == 8 else np.int8  # TorchQuantLinear.__init__
    if bits in (2, 4, 8):
        pack_factor = 32 // bits
        wf_unsqueeze_zero = wf[np.newaxis]  # wf.unsqueeze(0): (1, 1, pf)
        wf_unsqueeze_neg_one = wf[..., np.newaxis]  # wf.unsqueeze(-1): (1, pf, 1)
        zeros = np.broadcast_to(qzeros[:, :, np.newaxis],
                                qzeros.shape + (pack_factor,)) >> wf_unsqueeze_zero
        zeros = zeros.astype(dequant_dtype)
        zeros = (zeros & dequant_dtype(maxq)).reshape(scales.shape)
        weight = np.broadcast_to(qweight[:, np.newaxis, :],
                                 (qweight.shape[0], pack_factor, qweight.shape[1])) >> wf_unsqueeze_neg_one
        weight = weight.astype(dequant_dtype) & dequant_dtype(maxq)
    elif bits == 3:
        wf_unsqueeze_zero = wf[np.newaxis]  # (1, 1, 3, 12)
        wf_unsqueeze_neg_one = wf[..., np.newaxis]  # (1, 3, 12, 1)
        zeros = np.broadcast_to(
            qzeros.reshape(qzeros.shape[0], qzeros.shape[1] // 3, 3, 1),
            (qzeros.shape[0], qzeros.shape[1] // 3, 3, 12),
        )
        zeros = (zeros >> wf_unsqueeze_zero).copy()
        zeros[:, :, 0, 10] = (zeros[:, :, 0, 10] & 0x3) | ((zeros[:, :, 1, 0] << 2) & 0x4)
        zeros[:, :, 1, 11] = (zeros[:, :, 1, 11] & 0x1) | ((zeros[:, :, 2, 0] << 1) & 0x6)
        zeros = zeros & 0x7
        zeros = np.concatenate(
            [zeros[:, :, 0, :11], zeros[:, :, 1, 1:12], zeros[:, :, 2, 1:11]], axis=2
        ).reshape(scales.shape)

        weight = np.broadcast_to(
            qweight.reshape(qweight.shape[0] // 3, 3, 1, qweight.shape[1]),
            (qweight.shape[0] // 3, 3, 12, qweight.shape[1]),
        )
        weight = (weight >> wf_unsqueeze_neg_one) & 0x7
        weight[:, 0, 10] = (weight[:, 0, 10] & 0x3) | ((weight[:, 1, 0] << 2) & 0x4)
        weight[:, 1, 11] = (weight[:, 1, 11] & 0x1) | ((weight[:, 2, 0] << 1) & 0x6)
        weight = weight & 0x7
        weight = np.concatenate([weight[:, 0, :11], weight[:, 1, 1:12], weight[:, 2, 1:11]], axis=1)
    else:
        raise ValueError(f"unsupported bits {bits}")
    weight = weight.reshape(weight.shape[0] * weight.shape[1], weight.shape[2])

    g = g_idx.astype(np.int64)
    # torch: fp16 tensor * integer tensor -> fp16 product. The integer difference is
    # exact in fp16 (|q - z| <= 256), and numpy's fp16 multiply rounds the exact f32
    # product once, as the fp16 multiply does.
    diff = (weight - zeros[g]).astype(np.float16)
    return scales[g] * diff


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--out", help="write <module>.npy (float16 [out, in]) here")
    args = ap.parse_args()

    q = read_quant_config(args.model_dir)
    tensors = read_model(args.model_dir)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    modules = sorted(n[: -len(".qweight")] for n in tensors if n.endswith(".qweight"))
    if not modules:
        sys.exit(f"{args.model_dir}: no .qweight tensors")
    for m in modules:
        settings = module_settings(q, m)
        if settings is None:
            sys.exit(f"{m}: excluded by a dynamic `-:` rule but has a qweight")
        bits, group_size = settings
        arrays = {}
        for part, want in (("qweight", "I32"), ("qzeros", "I32"), ("scales", "F16"), ("g_idx", "I32")):
            dtype, _, arr = tensors[f"{m}.{part}"]
            if dtype != want:
                sys.exit(f"{m}.{part}: dtype {dtype}, expected {want}")
            arrays[part] = arr
        qweight, qzeros, scales, g_idx = (arrays[p] for p in ("qweight", "qzeros", "scales", "g_idx"))
        in_features, out_features = g_idx.shape[0], qweight.shape[1]
        n_groups = -(-in_features // (in_features if group_size == -1 else group_size))
        assert qweight.shape == (in_features * bits // 32, out_features), (m, qweight.shape)
        assert scales.shape == (n_groups, out_features), (m, scales.shape)
        assert qzeros.shape == (n_groups, out_features * bits // 32), (m, qzeros.shape)

        zeros_v2 = v1_to_v2_qzeros(qzeros, bits)
        w = dequantize_weight(qweight, zeros_v2, scales, g_idx, bits)  # [in, out]
        w = np.ascontiguousarray(w.T)  # [out, in]
        assert w.dtype == np.float16
        digest = hashlib.sha256(w.astype("<f2").tobytes()).hexdigest()
        print(f"{m} {bits} {out_features}x{in_features} {digest}")
        if args.out:
            np.save(os.path.join(args.out, f"{m}.npy"), w)


if __name__ == "__main__":
    main()
