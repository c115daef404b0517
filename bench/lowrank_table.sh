#!/usr/bin/env bash
# Low-rank factorisation of the default LM: truncated SVD vs activation-aware SVD
# (SVD-LLM whitening) at several parameter ratios. Writes bench/results/lowrank_table.md.
#
#   bench/lowrank_table.sh
#
# Each (RATIOS, default "0.9 0.8 0.6") × (METHODS, default "svd asvd") runs `tersor
# lowrank` (every block linear W [out, in] → A [out, r] · B [r, in], r the largest rank
# with r·(out + in) ≤ ratio·out·in; embedding and norms kept) to an f16 Hugging Face
# directory holding the factors, then `tersor eval --ref` against the f32 reference:
# perplexity and mean KL divergence on the Botchan evaluation split, ctx 512, first
# CHUNKS windows (default 8). Calibration (asvd): the Botchan calibration split,
# CALIB_TOKENS tokens (default 8192). THREADS (default 2). Finished rows are reused from
# bench/out/lowrank_table (delete it to measure again).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out_dir="$root/bench/out/lowrank_table"
result="$root/bench/results/lowrank_table.md"
ratios="${RATIOS:-0.9 0.8 0.6}"
methods="${METHODS:-svd asvd}"
threads="${THREADS:-2}"
calib_tokens="${CALIB_TOKENS:-8192}"
chunks="${CHUNKS:-8}"
mkdir -p "$out_dir" "$(dirname "$result")"

# shellcheck source=bench/lib.sh
source "$here/lib.sh"
tersor_setup
ref_ppl="$(ref_perplexity "$chunks")"

write_table() {
    {
        echo "# Low-rank factorisation of the default LM: SVD vs activation-aware SVD"
        echo
        table_header bench/lowrank_table.sh
        echo "Model: SmolLM2-135M-Instruct (the f32 dequantization of the Q4_1 GGUF is the reference; its PPL here: $ref_ppl)."
        echo "Factored: the 210 block linears, each at the largest rank r with r·(out + in) ≤ ratio·out·in (embedding and norms dense)."
        echo "\`linear params\`: the factors' parameters over the dense linears'. Output: f16 Hugging Face directory with the factors; tersor runs them as two matmuls."
        echo "Scoring: \`tersor eval --ref\` on the Botchan evaluation split, ctx 512, first $chunks windows, second half of each window scored."
        echo "Calibration (asvd): Botchan calibration split, $calib_tokens tokens in windows of 512; whitening by the Cholesky factor of XᵀX + 1% damping."
        echo
        echo "| ratio | method | linear params | factor s | PPL | mean KLD | same top % |"
        echo "|---|---|---:|---:|---:|---:|---:|"
        printf '%s\n' "${rows[@]}"
    } > "$result.tmp" && mv "$result.tmp" "$result"
}
rows=()
for r in $ratios; do
    for m in $methods; do
        tag="r$r.$m"
        out="$out_dir/$tag"
        if [[ -s "$out.c$chunks.row" ]]; then
            rows+=("$(cat "$out.c$chunks.row")"); write_table; continue
        fi
        "$tersor" --threads "$threads" lowrank "$lm" --ratio "$r" --method "$m" --calib "$calib_text" \
            --calib-tokens "$calib_tokens" -o "$out" -q --json > "$out_dir/$tag.lowrank.json"
        eval_against_reference "$out" "$chunks" "$out_dir/$tag.eval.json"
        row="$(python3 - "$out_dir/$tag.lowrank.json" "$out_dir/$tag.eval.json" "$r" "$m" <<'PY'
import json, sys
q = json.load(open(sys.argv[1])); e = json.load(open(sys.argv[2]))["perplexity"]
r, m = sys.argv[3], sys.argv[4]
kl = e["kl"]
print(f"| {r} | {m} | {q['linear_params'] / q['dense_linear_params']:.4f} | {q['seconds_factor']:.1f} "
      f"| {e['perplexity']:.3f} ± {e['perplexity_uncertainty']:.3f} | {kl['kld_mean']:.4f} | {kl['same_top_percent']:.1f} |")
PY
)"
        echo "$row" >&2
        echo "$row" > "$out.c$chunks.row"
        rows+=("$row")
        write_table
        rm -rf "$out"
    done
done
echo "wrote $result" >&2
