#!/usr/bin/env bash
# Pruning the default LM: magnitude vs Wanda vs SparseGPT at 50/60/70 % unstructured and
# 2:4. Writes bench/results/prune_table.md.
#
#   bench/prune_table.sh
#
# Each (PATTERNS, default "0.5 0.6 0.7 2:4") × (METHODS, default "magnitude wanda
# sparsegpt") is pruned by `tersor prune` (block linears only; embedding and norms kept)
# to a dense f16 Hugging Face directory, then scored by `tersor eval --ref` against the
# f32 reference (the default LM dequantized): perplexity and mean KL divergence on the
# Botchan evaluation split, ctx 512, first CHUNKS windows (default 8), the protocol of
# bench/gptq_table.sh. Calibration (wanda, sparsegpt): the Botchan calibration split,
# CALIB_TOKENS tokens (default 8192), ctx 512. For the time column, one uniform GPTQ
# run (gptq:4:g128) on the same calibration is timed in the same call.
#
# No peer is needed. THREADS (default 2). Finished rows are reused from
# bench/out/prune_table (delete it to measure again).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out_dir="$root/bench/out/prune_table"
result="$root/bench/results/prune_table.md"
patterns="${PATTERNS:-0.5 0.6 0.7 2:4}"
methods="${METHODS:-magnitude wanda sparsegpt}"
threads="${THREADS:-2}"
calib_tokens="${CALIB_TOKENS:-8192}"
chunks="${CHUNKS:-8}"
mkdir -p "$out_dir" "$(dirname "$result")"

# shellcheck source=bench/lib.sh
source "$here/lib.sh"
tersor_setup

ref_ppl="$(ref_perplexity "$chunks")"

# GPTQ's wall time on the same calibration, for the time comparison.
gptq_secs_file="$out_dir/gptq_4_g128.c$calib_tokens.secs"
if [[ ! -s "$gptq_secs_file" ]]; then
    echo "timing tersor quantize gptq:4:g128..." >&2
    t0=$(date +%s.%N)
    "$tersor" --threads "$threads" quantize "$lm" --type gptq:4:g128 --method gptq --calib "$calib_text" \
        --calib-tokens "$calib_tokens" -o "$out_dir/gptq_4_g128" -q --json > "$out_dir/gptq_4_g128.json"
    python3 -c "import json; print('%.1f' % json.load(open('$out_dir/gptq_4_g128.json'))['seconds_calibrate_quantize'])" > "$gptq_secs_file"
    rm -rf "$out_dir/gptq_4_g128"
fi
gptq_secs="$(cat "$gptq_secs_file")"

write_table() {
    {
        echo "# Pruning the default LM: magnitude vs Wanda vs SparseGPT"
        echo
        table_header bench/prune_table.sh
        echo "Model: SmolLM2-135M-Instruct (the f32 dequantization of the Q4_1 GGUF is the reference; its PPL here: $ref_ppl)."
        echo "Pruned: the 210 block linears (embedding and norms dense). Output: dense f16 Hugging Face directory."
        echo "Scoring: \`tersor eval --ref\` on the Botchan evaluation split, ctx 512, first $chunks windows, second half of each window scored."
        echo "Calibration (wanda, sparsegpt): Botchan calibration split, $calib_tokens tokens in windows of 512."
        echo "\`sparse bpw\`: the whole model with the linears stored sparse (f16 values + 1-bit mask, or 2:4's 2 index bits per kept value) over all parameters."
        echo "\`prune s\`: wall seconds of calibration + pruning (\`seconds_prune\`); uniform GPTQ (gptq:4:g128) on the same calibration took $gptq_secs s in the same run."
        echo
        echo "| pattern | method | linear sparsity | sparse bpw | prune s | PPL | mean KLD | same top % |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|"
        printf '%s\n' "${rows[@]}"
    } > "$result.tmp" && mv "$result.tmp" "$result"
}
rows=()
for p in $patterns; do
    if [[ "$p" == *:* ]]; then arg=(--pattern "$p"); else arg=(--sparsity "$p"); fi
    for m in $methods; do
        tag="$(echo "$p.$m" | tr ':.' '__')"
        out="$out_dir/$tag"
        if [[ -s "$out.c$chunks.row" ]]; then
            rows+=("$(cat "$out.c$chunks.row")"); write_table; continue
        fi
        "$tersor" --threads "$threads" prune "$lm" "${arg[@]}" --method "$m" --calib "$calib_text" \
            --calib-tokens "$calib_tokens" -o "$out" -q --json > "$out_dir/$tag.prune.json"
        eval_against_reference "$out" "$chunks" "$out_dir/$tag.eval.json"
        row="$(python3 - "$out_dir/$tag.prune.json" "$out_dir/$tag.eval.json" "$p" "$m" <<'EOF'
import json, sys
q = json.load(open(sys.argv[1])); e = json.load(open(sys.argv[2]))["perplexity"]
p, m = sys.argv[3], sys.argv[4]
kl = e["kl"]
print(f"| {p} | {m} | {q['linear_sparsity']:.4f} | {q['sparse_bytes'] * 8 / q['params']:.3f} | {q['seconds_prune']:.1f} "
      f"| {e['perplexity']:.3f} ± {e['perplexity_uncertainty']:.3f} | {kl['kld_mean']:.4f} | {kl['same_top_percent']:.1f} |")
EOF
)"
        echo "$row" >&2
        echo "$row" > "$out.c$chunks.row"
        rows+=("$row")
        write_table
        rm -rf "$out"
    done
done

echo "wrote $result" >&2
