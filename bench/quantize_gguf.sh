#!/usr/bin/env bash
# tersor quantize vs llama-quantize on identical tensor types: quality (mean KL
# divergence to the F32 reference, perplexity) and time. Writes
# bench/results/quantize_gguf.md.
#
#   LLAMA_CPP_BIN=/path/to/llama.cpp/build/bin bench/quantize_gguf.sh
#
# For each preset (PRESETS, default "Q2_K Q3_K_M IQ4_NL Q4_K_M"):
#   llama-quantize            (no imatrix)            vs tersor --method rtn
#   llama-quantize --imatrix  (llama-imatrix, calib)  vs tersor --method imatrix --imatrix (same file)
#   tersor --method gptq, tersor --method awq+gptq    (tersor's own calibration)
# Every file is scored by the same tool, llama-perplexity (-c 512 --chunks 32 on the
# Botchan evaluation split, KL divergence against the F32 model's logits), as the
# reference figures in ../shared/REFERENCE.md were. The input of both quantizers is
# the F32 GGUF converted from the default LM by llama-quantize.
#
# Environment: LLAMA_CPP_BIN (required); PRESETS; THREADS (default 2);
# CALIB_TOKENS (tersor's calibration tokens, default 16384); IMATRIX (an existing
# llama-imatrix file for the calibration split; made with llama-imatrix -c 512 when unset).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out_dir="$root/bench/out/quantize_gguf"
result="$root/bench/results/quantize_gguf.md"
presets="${PRESETS:-Q2_K Q3_K_M IQ4_NL Q4_K_M}"
threads="${THREADS:-2}"
calib_tokens="${CALIB_TOKENS:-16384}"

if [[ -z "${LLAMA_CPP_BIN:-}" ]]; then
    echo "error: set LLAMA_CPP_BIN to the directory holding llama.cpp's llama-quantize, llama-imatrix and llama-perplexity" >&2
    exit 2
fi
for tool in llama-perplexity llama-quantize llama-imatrix; do
    [[ -x "$LLAMA_CPP_BIN/$tool" ]] || { echo "error: $LLAMA_CPP_BIN/$tool is missing" >&2; exit 2; }
done
export LD_LIBRARY_PATH="$LLAMA_CPP_BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
mkdir -p "$out_dir" "$(dirname "$result")"

echo "building tersor (release)..." >&2
(cd "$root" && cargo build --release -p tersor >&2)
tersor="$root/target/release/tersor"
paths_json="$("$tersor" fetch --json)"
path_of() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$paths_json" "$1"; }
q41="$(path_of lm)"
eval_text="$(path_of botchan_eval)"
calib_text="$(path_of botchan_calib)"

f32="$out_dir/f32.gguf"
if [[ ! -s "$f32" ]]; then
    "$LLAMA_CPP_BIN/llama-quantize" --allow-requantize "$q41" "$f32.tmp" F32 > "$out_dir/f32.log" 2>&1
    mv "$f32.tmp" "$f32"
fi
imatrix="${IMATRIX:-$out_dir/imatrix.dat}"
if [[ ! -s "$imatrix" ]]; then
    echo "llama-imatrix on the calibration split (a few minutes)..." >&2
    "$LLAMA_CPP_BIN/llama-imatrix" -m "$f32" -f "$calib_text" -c 512 -t "$threads" -o "$imatrix" > "$out_dir/imatrix.log" 2>&1
fi
kld_base="$out_dir/kld_base.bin"
if [[ ! -s "$kld_base" ]]; then
    echo "reference logits (llama-perplexity --kl-divergence-base)..." >&2
    "$LLAMA_CPP_BIN/llama-perplexity" -m "$f32" -f "$eval_text" -c 512 --chunks 32 -t "$threads" \
        --kl-divergence-base "$kld_base" > "$out_dir/kld_base.log" 2>&1
fi

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
# Mean KLD, PPL and "same top" from a llama-perplexity --kl-divergence log.
score() {
    local gguf="$1" log="$2"
    "$LLAMA_CPP_BIN/llama-perplexity" -m "$gguf" -f "$eval_text" -c 512 --chunks 32 -t "$threads" \
        --kl-divergence-base "$kld_base" --kl-divergence > "$log" 2>&1
    python3 - "$log" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
ppl = re.search(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)", t).group(1)
kld = re.search(r"Mean\s+KLD:\s*([0-9.]+)", t).group(1)
top = re.search(r"Same top p:\s*([0-9.]+)", t).group(1)
print(ppl, kld, top)
EOF
}
# Tensor types (shares of parameters) and data bytes of a GGUF, read with gguf-py.
types_of() {
    python3 - "$1" <<'EOF'
import sys, collections
from gguf import GGUFReader
r = GGUFReader(sys.argv[1])
c = collections.Counter(); tot = 0; data = 0
for t in r.tensors:
    n = int(t.n_elements); c[t.tensor_type.name] += n; tot += n; data += int(t.n_bytes)
print(data, ", ".join(f"{k} {100*v/tot:.1f}%" for k, v in c.most_common()))
EOF
}

rows=()
for p in $presets; do
    for variant in llama tersor-rtn llama-imatrix tersor-imatrix tersor-gptq tersor-awq+gptq; do
        out="$out_dir/$p.$variant.gguf"
        log="$out_dir/$p.$variant.quantize.log"
        t0="$(now)"
        case "$variant" in
            llama) "$LLAMA_CPP_BIN/llama-quantize" "$f32" "$out" "$p" "$threads" > "$log" 2>&1 ;;
            llama-imatrix) "$LLAMA_CPP_BIN/llama-quantize" --imatrix "$imatrix" "$f32" "$out" "$p" "$threads" > "$log" 2>&1 ;;
            tersor-rtn) "$tersor" --threads "$threads" quantize "$f32" --type "$p" --method rtn -o "$out" -q > "$log" 2>&1 ;;
            tersor-imatrix) "$tersor" --threads "$threads" quantize "$f32" --type "$p" --method imatrix --imatrix "$imatrix" -o "$out" -q > "$log" 2>&1 ;;
            tersor-*) m="${variant#tersor-}"
                "$tersor" --threads "$threads" quantize "$f32" --type "$p" --method "$m" --calib "$calib_text" \
                    --calib-tokens "$calib_tokens" -o "$out" -q > "$log" 2>&1 ;;
        esac
        t1="$(now)"
        read -r data types < <(types_of "$out")
        bytes="$(stat -c %s "$out")"
        # tersor rtn / imatrix are checked byte-identical to llama-quantize below, so
        # only the distinct files are scored (each scoring is a 16k-token run).
        case "$variant" in
            llama|tersor-rtn|tersor-imatrix) ppl="(= llama)"; kld="-"; top="-" ;;
            *) read -r ppl kld top < <(score "$out" "$out_dir/$p.$variant.kld.log") ;;
        esac
        [[ "$variant" == llama ]] && ppl="see REFERENCE.md"
        echo "$p $variant: $bytes B, KLD $kld, PPL $ppl, $(secs "$t0" "$t1") s" >&2
        rows+=("| $p | $variant | $bytes | $data | $(secs "$t0" "$t1") | $ppl | $kld | $top | $types |")
    done
    # Same bytes as llama.cpp? (tersor rtn / imatrix reproduce llama-quantize's rounding)
    for pair in "llama tersor-rtn" "llama-imatrix tersor-imatrix"; do
        set -- $pair
        if python3 - "$out_dir/$p.$1.gguf" "$out_dir/$p.$2.gguf" <<'EOF'
import sys
from gguf import GGUFReader
a, b = GGUFReader(sys.argv[1]), GGUFReader(sys.argv[2])
ta = {t.name: bytes(t.data.tobytes()) for t in a.tensors}
tb = {t.name: bytes(t.data.tobytes()) for t in b.tensors}
sys.exit(0 if ta == tb else 1)
EOF
        then rows+=("| $p | $2 = $1 | tensor data byte-identical | | | | | | |")
        else rows+=("| $p | $2 ≠ $1 | tensor data DIFFERS | | | | | | |")
        fi
    done
done

{
    echo "# tersor quantize vs llama-quantize (GGUF, identical tensor types)"
    echo
    echo "Generated by \`bench/quantize_gguf.sh\` on $(date -u +%Y-%m-%d) ($(nproc) cores, load before: $(cut -d' ' -f1-3 /proc/loadavg)); llama.cpp $(cd "$LLAMA_CPP_BIN" && git -C ../.. rev-parse --short HEAD 2>/dev/null || echo '?')."
    echo "Input: the default LM as F32 GGUF. Scoring: llama-perplexity -c 512 --chunks 32 on the Botchan evaluation split,"
    echo "mean KL divergence from the F32 model (8,160 scored tokens). llama imatrix: llama-imatrix -c 512 on the calibration split;"
    echo "tersor gptq/awq+gptq: tersor's own calibration on the same split ($calib_tokens tokens, ctx 512). Threads: $threads."
    echo
    echo "| preset | quantizer | file bytes | tensor bytes | quantize s | PPL | mean KLD | same top % | tensor types |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---|"
    printf '%s\n' "${rows[@]}"
} > "$result"
echo "wrote $result" >&2
