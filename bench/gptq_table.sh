#!/usr/bin/env bash
# GPTQ-format quantization of the default LM: RTN vs GPTQ vs AWQ+GPTQ at 4/3/2 bits.
# Writes bench/results/gptq_table.md.
#
#   bench/gptq_table.sh
#
# Each configuration (SPECS, default "gptq:4:g128 gptq:3:g128 gptq:3:g64 gptq:2:g64
# gptq:2:g64:asym"; GPTQModel's default is symmetric, the GPTQ paper's min-max grid asymmetric)
# is quantized by `tersor quantize` with each method (METHODS, default
# "rtn gptq awq+gptq"; rows already measured for other methods stay in the table) to a GPTQ checkpoint directory, then scored by `tersor eval`
# against the f32 reference (the default LM dequantized): perplexity and mean KL
# divergence on the Botchan evaluation split, ctx 512, first 32 windows (8,160
# scored tokens; CHUNKS changes the window count), llama-perplexity's protocol. Calibration: the Botchan calibration
# split, CALIB_TOKENS tokens (default 16384), ctx 512.
#
# No peer is needed (llama.cpp cannot run GPTQ checkpoints). THREADS (default 2).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out_dir="$root/bench/out/gptq_table"
result="$root/bench/results/gptq_table.md"
specs="${SPECS:-gptq:4:g128 gptq:3:g128 gptq:3:g64 gptq:2:g64 gptq:2:g64:asym}"
methods="${METHODS:-rtn gptq awq+gptq}"
threads="${THREADS:-2}"
calib_tokens="${CALIB_TOKENS:-16384}"
chunks="${CHUNKS:-32}"
mkdir -p "$out_dir" "$(dirname "$result")"

# shellcheck source=bench/lib.sh
source "$here/lib.sh"
tersor_setup

now() { date +%s.%N; }
ref_ppl="$(ref_perplexity "$chunks")"
write_table() {
    {
        echo "# GPTQ-format quantization of the default LM: RTN vs GPTQ vs AWQ+GPTQ"
        echo
        table_header bench/gptq_table.sh
        echo "Model: SmolLM2-135M-Instruct (the f32 dequantization of the Q4_1 GGUF is the reference; its PPL here: $ref_ppl)."
        echo "Scoring: \`tersor eval --ref\` on the Botchan evaluation split, ctx 512, first $chunks windows, second half of each window scored."
        echo "Calibration: Botchan calibration split, $calib_tokens tokens in windows of 512. Groups of 128 on 576-wide rows end with a group of 64."
        echo "bpw linear = bytes of qweight+qzeros+scales+g_idx of the 210 block linears × 8 / their parameters; bpw file = whole directory / all"
        echo "parameters (fp16 embedding and norms). Quantize times: wall seconds on a shared 2-core machine."
        echo
        echo "| spec | method | bpw linear | bpw file | bytes | quantize s | PPL | mean KLD | same top % |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
        printf '%s\n' "${rows[@]}"
    } > "$result.tmp" && mv "$result.tmp" "$result"
}
rows=()
# Every method's cached row is kept in the table; only the METHODS ones are computed.
for spec in $specs; do
    for m in rtn gptq awq+gptq; do
        tag="$(echo "$spec.$m" | tr ':+' '_p')"
        out="$out_dir/$tag"
        # Rows already measured are reused: delete bench/out/gptq_table to redo them.
        if [[ -s "$out.c$chunks.row" ]]; then
            rows+=("$(cat "$out.c$chunks.row")"); write_table; continue
        fi
        [[ " $methods " == *" $m "* ]] || continue
        t0="$(now)"
        # A finished checkpoint (same spec and method) is not quantized again.
        if [[ ! -s "$out/config.json" || ! -s "$out_dir/$tag.quantize.json" ]]; then
            "$tersor" --threads "$threads" quantize "$lm" --type "$spec" --method "$m" --calib "$calib_text" \
                --calib-tokens "$calib_tokens" -o "$out" -q --json > "$out_dir/$tag.quantize.json"
            python3 -c "print($(now) - $t0)" > "$out_dir/$tag.quantize.secs"
        fi
        t1="$(python3 -c "print($t0 + float(open('$out_dir/$tag.quantize.secs').read()))")"
        eval_against_reference "$out" "$chunks" "$out_dir/$tag.eval.json"
        row="$(python3 - "$out_dir/$tag.quantize.json" "$out_dir/$tag.eval.json" "$spec" "$m" "$t0" "$t1" <<'EOF'
import json, sys
q = json.load(open(sys.argv[1])); e = json.load(open(sys.argv[2]))["perplexity"]
spec, m, t0, t1 = sys.argv[3], sys.argv[4], float(sys.argv[5]), float(sys.argv[6])
kl = e["kl"]
print(f"| {spec} | {m} | {q['bpw_linear']:.3f} | {q['bpw_file']:.3f} | {q['file_bytes']} | {t1 - t0:.1f} "
      f"| {e['perplexity']:.3f} ± {e['perplexity_uncertainty']:.3f} | {kl['kld_mean']:.4f} | {kl['same_top_percent']:.1f} |")
EOF
)"
        echo "$row" >&2
        echo "$row" > "$out.c$chunks.row"
        rows+=("$row")
        write_table
    done
done

echo "wrote $result" >&2
