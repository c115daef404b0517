#!/usr/bin/env python3
"""Record which ggml type llama.cpp's llama-quantize gives every tensor.

Regenerates crates/quant/tests/fixtures/llama_presets.json, the reference the
tersor-quant `preset` tests replay `tersor_quant::preset::plan` against.

For every model below, every preset in PRESETS, with and without an importance
matrix, it runs llama-quantize (llama.cpp commit c392e509), reads the output
back with the `gguf` Python package and records `general.file_type` and each
tensor's type in output order (or the error llama-quantize stopped with).
Output GGUFs are deleted as soon as they are read.

Models:
  smollm2      the default LM as F32 (hidden 576: most k-quants fall back);
               its imatrix is crates/quant/tests/fixtures/imatrix_smollm2_c128x2.dat
               (tools/llama_presets/gen_imatrix.sh).
  syn_gqa      synthetic llama, 256-aligned, 16 layers, n_gqa 4, separate
               output.weight, tensors written in an HF-like (unsorted) order.
  syn_tied     synthetic llama, 256-aligned, 8 layers, n_gqa 1, tied
               embeddings, tensors written in a shuffled order.
  syn_qwen2    synthetic qwen2 (biases), 4 layers, tied, ffn 272: ffn_down rows
               of 272 fit no 32-block type (k-quants fall back to F16, the
               legacy presets abort).
Synthetic weights are seeded random f32; their imatrix files are written here
in llama-imatrix's legacy .dat layout with seeded random values.

Usage (from the repository root; takes a few minutes on one thread):
  LLAMA_CPP_BIN=/path/to/llama.cpp/build/bin \\
  python3 tools/llama_presets/gen.py [--smollm PATH] [--work DIR]
"""

import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import gguf

LLAMA_CPP_COMMIT = "c392e5094deaf2d1a7c18683214f007fad3fe42b"

# The presets tersor mirrors (llama-quantize type names).
PRESETS = [
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
    "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L",
    "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
    "IQ4_NL", "F16", "BF16", "F32",
]

FIXTURE = "crates/quant/tests/fixtures/llama_presets.json"
SMOLLM_IMATRIX = "crates/quant/tests/fixtures/imatrix_smollm2_c128x2.dat"


def synthetic_tensors(cfg):
    """(name, numpy shape) in an HF-like order: embeddings, layers 0..n-1, head."""
    e, f, nl = cfg["n_embd"], cfg["n_ff"], cfg["n_layer"]
    hd = e // cfg["n_head"]
    kv = hd * cfg["n_head_kv"]
    out = [("token_embd.weight", (cfg["n_vocab"], e))]
    for i in range(nl):
        p = f"blk.{i}."
        out += [
            (p + "attn_norm.weight", (e,)),
            (p + "attn_q.weight", (e, e)),
            (p + "attn_k.weight", (kv, e)),
            (p + "attn_v.weight", (kv, e)),
        ]
        if cfg["arch"] == "qwen2":
            out += [
                (p + "attn_q.bias", (e,)),
                (p + "attn_k.bias", (kv,)),
                (p + "attn_v.bias", (kv,)),
            ]
        out += [
            (p + "attn_output.weight", (e, e)),
            (p + "ffn_norm.weight", (e,)),
            (p + "ffn_gate.weight", (f, e)),
            (p + "ffn_up.weight", (f, e)),
            (p + "ffn_down.weight", (e, f)),
        ]
    out.append(("output_norm.weight", (e,)))
    if not cfg["tied"]:
        out.append(("output.weight", (cfg["n_vocab"], e)))
    return out


SYNTHETIC = [
    dict(name="syn_gqa", arch="llama", n_embd=256, n_ff=512, n_layer=16, n_head=8,
         n_head_kv=2, n_vocab=512, tied=False, shuffle=False, seed=1),
    dict(name="syn_tied", arch="llama", n_embd=256, n_ff=768, n_layer=8, n_head=4,
         n_head_kv=4, n_vocab=512, tied=True, shuffle=True, seed=2),
    dict(name="syn_qwen2", arch="qwen2", n_embd=256, n_ff=272, n_layer=4, n_head=4,
         n_head_kv=4, n_vocab=512, tied=True, shuffle=False, seed=3),
]


def write_synthetic(cfg, path):
    rng = np.random.default_rng(cfg["seed"])
    arch = cfg["arch"]
    w = gguf.GGUFWriter(path, arch)
    w.add_name(cfg["name"])
    w.add_context_length(256)
    w.add_embedding_length(cfg["n_embd"])
    w.add_block_count(cfg["n_layer"])
    w.add_feed_forward_length(cfg["n_ff"])
    w.add_head_count(cfg["n_head"])
    w.add_head_count_kv(cfg["n_head_kv"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(cfg["n_embd"] // cfg["n_head"])
    w.add_vocab_size(cfg["n_vocab"])
    w.add_file_type(0)
    # a tiny byte-level gpt2 vocabulary: enough for llama.cpp's loader
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    toks = [f"<t{i}>" for i in range(cfg["n_vocab"])]
    w.add_token_list(toks)
    w.add_token_types([1] * cfg["n_vocab"])
    w.add_token_merges([])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    tensors = synthetic_tensors(cfg)
    if cfg["shuffle"]:
        random.Random(cfg["seed"]).shuffle(tensors)
    for name, shape in tensors:
        if len(shape) == 1:
            data = np.ones(shape, dtype=np.float32)
        else:
            data = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_legacy_imatrix(path, entries, chunks, dataset):
    """llama-imatrix's legacy .dat layout (examples/imatrix/imatrix.cpp save_imatrix)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(entries)))
        for name, ncall, values in entries:
            nb = name.encode()
            f.write(struct.pack("<i", len(nb)))
            f.write(nb)
            f.write(struct.pack("<ii", ncall, len(values)))
            f.write(np.asarray(values, dtype="<f4").tobytes())
        f.write(struct.pack("<i", chunks))
        d = dataset.encode()
        f.write(struct.pack("<i", len(d)))
        f.write(d)


def synthetic_imatrix(cfg, path):
    """Entries for every blk.* matrix, as llama-imatrix would collect them."""
    rng = np.random.default_rng(100 + cfg["seed"])
    entries = []
    for name, shape in synthetic_tensors(cfg):
        if name.startswith("blk.") and name.endswith(".weight") and len(shape) == 2:
            entries.append((name, 3, rng.uniform(0.1, 4.0, shape[1]) * 3))
    write_legacy_imatrix(path, entries, 3, "synthetic")


def model_record(path):
    r = gguf.GGUFReader(path)

    def u(key, default=None):
        f = r.fields.get(key)
        return default if f is None else int(f.contents())

    arch = r.fields["general.architecture"].contents()
    tensors = [
        [t.name, [int(x) for x in t.shape], gguf.GGMLQuantizationType(t.tensor_type).value]
        for t in r.tensors
    ]
    n_head = u(f"{arch}.attention.head_count")
    return dict(
        arch=arch,
        n_layer=u(f"{arch}.block_count"),
        n_head=n_head,
        n_head_kv=u(f"{arch}.attention.head_count_kv", n_head),
        n_expert=u(f"{arch}.expert_count", 0),
        tensors=tensors,
    )


def classify_error(text):
    if "Please do not use IQ1_S, IQ1_M, IQ2_S, IQ2_XXS, IQ2_XS or Q2_K_S" in text:
        return "needs_imatrix"
    if "Missing importance matrix for tensor" in text:
        return "missing_imatrix_for_tensor"
    if "Unsupported tensor size encountered" in text:
        return "unsupported_tensor_size"
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return "other: " + " | ".join(lines[-3:])


def run_preset(bindir, model, preset, imatrix, work):
    out = os.path.join(work, "out.gguf")
    cmd = [os.path.join(bindir, "llama-quantize")]
    if imatrix:
        cmd += ["--imatrix", imatrix]
    cmd += [model, out, preset, "1"]
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = bindir + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    t0 = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.time() - t0
    rec = dict(preset=preset, imatrix=bool(imatrix))
    if p.returncode != 0:
        rec["error"] = classify_error(p.stdout + "\n" + p.stderr)
        if os.path.exists(out):
            os.remove(out)
        return rec, None, dt
    r = gguf.GGUFReader(out)
    rec["file_type"] = int(r.fields["general.file_type"].contents())
    names = [t.name for t in r.tensors]
    rec["types"] = [gguf.GGMLQuantizationType(t.tensor_type).value for t in r.tensors]
    del r
    os.remove(out)
    return rec, names, dt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smollm", default="/work/peers/ref/smollm2-f32.gguf")
    ap.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--only", default=None, help="comma-separated model names (debugging)")
    args = ap.parse_args()
    bindir = os.environ.get("LLAMA_CPP_BIN")
    if not bindir:
        sys.exit("set LLAMA_CPP_BIN to the directory holding llama-quantize")
    work = args.work or tempfile.mkdtemp(prefix="llama_presets_")
    os.makedirs(work, exist_ok=True)

    models = [("smollm2", args.smollm, SMOLLM_IMATRIX)]
    for cfg in SYNTHETIC:
        path = os.path.join(work, cfg["name"] + ".gguf")
        write_synthetic(cfg, path)
        imat = os.path.join(work, cfg["name"] + ".imatrix.dat")
        synthetic_imatrix(cfg, imat)
        models.append((cfg["name"], path, imat))
    if args.only:
        keep = set(args.only.split(","))
        models = [m for m in models if m[0] in keep]

    fixture = dict(
        llama_cpp_commit=LLAMA_CPP_COMMIT,
        generator="tools/llama_presets/gen.py",
        note="types are ggml type ids in output_order; tensors are [name, ne (ggml order), type id] in input order",
        models=[],
    )
    for name, path, imat in models:
        rec = model_record(path)
        rec = dict(name=name, **rec)
        runs = []
        order = None
        for preset in PRESETS:
            for im in (None, imat):
                run, names, dt = run_preset(bindir, path, preset, im, work)
                print(f"{name:10s} {preset:7s} imatrix={run['imatrix']!s:5s} {dt:5.1f}s "
                      f"{run.get('error', 'ok')}", flush=True)
                if names is not None:
                    if order is None:
                        order = names
                    elif names != order:
                        sys.exit(f"{name}: output order differs between runs")
                runs.append(run)
        rec["output_order"] = order
        rec["runs"] = runs
        fixture["models"].append(rec)

    if args.work is None:
        shutil.rmtree(work)
    tmp = FIXTURE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")
    os.replace(tmp, FIXTURE)
    print(f"wrote {FIXTURE} ({os.path.getsize(FIXTURE)} bytes)")


if __name__ == "__main__":
    main()
