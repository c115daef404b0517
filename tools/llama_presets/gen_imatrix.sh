#!/usr/bin/env bash
# Regenerates crates/quant/tests/fixtures/imatrix_smollm2_c128x2.dat: the
# importance matrix llama.cpp's llama-imatrix (legacy .dat format, llama.cpp
# commit c392e509) computes for the default LM (as F32) on two 128-token
# chunks of botchan_calib.txt. The tersor-quant imatrix tests read it and write
# it back byte for byte; gen.py uses it for the "with imatrix" preset runs.
#
# Usage (from the repository root):
#   LLAMA_CPP_BIN=/path/to/llama.cpp/build/bin \
#   MODEL_F32=/path/to/smollm2-f32.gguf \
#   CALIB=/path/to/botchan_calib.txt \
#   tools/llama_presets/gen_imatrix.sh
#
# MODEL_F32 is the default LM dequantized to F32
# (`llama-quantize --allow-requantize SmolLM2-135M-Instruct.Q4_1.gguf OUT F32`).
# The dataset name stored at the end of the file is the -f argument as given,
# so pass the same CALIB path to reproduce the file byte for byte.
set -euo pipefail

: "${LLAMA_CPP_BIN:?set LLAMA_CPP_BIN to the directory holding llama-imatrix}"
MODEL_F32=${MODEL_F32:-/work/peers/ref/smollm2-f32.gguf}
CALIB=${CALIB:-/work/shared/assets/botchan_calib.txt}
OUT=${OUT:-crates/quant/tests/fixtures/imatrix_smollm2_c128x2.dat}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

LD_LIBRARY_PATH="$LLAMA_CPP_BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    "$LLAMA_CPP_BIN/llama-imatrix" -m "$MODEL_F32" -f "$CALIB" \
    -c 128 --chunks 2 -t 1 -o "$tmp/imatrix.dat" >"$tmp/log.txt" 2>&1 || {
        tail -n 30 "$tmp/log.txt" >&2
        exit 1
    }
mv "$tmp/imatrix.dat" "$OUT"
echo "wrote $OUT ($(stat -c %s "$OUT") bytes)"
