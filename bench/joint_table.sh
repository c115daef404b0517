#!/usr/bin/env bash
# SparseGPT jointly with GPTQ-grid quantization (`tersor prune --quantize`) on the default
# LM, beside dense GPTQ at about the same payload. Writes bench/results/joint_table.md.
#
#   bench/joint_table.sh
#
# Each ROWS entry (default "0:gptq:4:g128 0:gptq:3:g128 0.5:gptq:4:g128 2:4:gptq:4:g128",
# PATTERN:SPEC; pattern 0 = nothing pruned, which is GPTQ itself) is pruned and quantized
# by `tersor prune --method sparsegpt --quantize SPEC` (block linears only) to a dense f16
# Hugging Face directory (the grid's values are exact in f16), then scored by
# `tersor eval --ref` against the f32 reference on the Botchan evaluation split, ctx 512,
# first CHUNKS windows (default 8), the protocol of bench/prune_table.sh and
# bench/gptq_table.sh. Calibration: the Botchan calibration split, CALIB_TOKENS tokens
# (default 8192), ctx 512.
#
# Then one search mixing them: `tersor compress --format dense --target-bpw TARGET_BPW`
# (default 3.0) over LEVELS (default tersor's: gptq:3:g128, gptq:4:g128 and SparseGPT at
# 50/60/70 % jointly with gptq:4:g128), every level costed by its payload; uniform (the
# costliest single level that fits, topped up on the same grid), DP over the per-linear
# errors and EvoPress (GENERATIONS, default 10), scored in memory, and EvoPress's
# written directory scored by `tersor eval --ref` as above; once per database
# calibration in DB_INPUTS (default "reference sequential").
#
# No peer is needed. THREADS (default 2). Finished rows are reused from
# bench/out/joint_table (delete it to measure again).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out_dir="$root/bench/out/joint_table"
result="$root/bench/results/joint_table.md"
specs="${ROWS:-0:gptq:4:g128 0:gptq:3:g128 0.5:gptq:4:g128 2:4:gptq:4:g128}"
threads="${THREADS:-2}"
calib_tokens="${CALIB_TOKENS:-8192}"
chunks="${CHUNKS:-8}"
target_bpw="${TARGET_BPW:-3.0}"
generations="${GENERATIONS:-10}"
levels="${LEVELS:-}"
db_inputs="${DB_INPUTS:-reference sequential}"
mkdir -p "$out_dir" "$(dirname "$result")"

# shellcheck source=bench/lib.sh
source "$here/lib.sh"
tersor_setup

ref_ppl="$(ref_perplexity "$chunks")"

write_table() {
    {
        echo "# SparseGPT jointly with quantization of the kept weights"
        echo
        table_header bench/joint_table.sh
        echo "Model: SmolLM2-135M-Instruct (the f32 dequantization of the Q4_1 GGUF is the reference; its PPL here: $ref_ppl)."
        echo "Job: \`tersor prune --method sparsegpt --quantize SPEC\` on the 210 block linears (embedding and norms dense f16): SparseGPT's"
        echo "joint mode, every kept weight rounded onto the GPTQ grid in the same pass and its error compensated. Pattern 0 prunes nothing: that is GPTQ"
        echo "(the solver equals tersor's GPTQ weight for weight, a unit test), so those rows should match bench/results/gptq_table.md's gptq rows."
        echo "Scoring: \`tersor eval --ref\` on the Botchan evaluation split, ctx 512, first $chunks windows, second half of each window scored."
        echo "Calibration: Botchan calibration split, $calib_tokens tokens in windows of 512."
        echo "\`payload bpw\`: bits of the 210 linears stored sparse (kept values at the grid's bits + a 1-bit mask, or 2:4's 2 index bits per"
        echo "kept value; dense when that is smaller) plus every group's fp16 scale and zero point, over their parameters. The GPTQ checkpoint"
        echo "format adds a 32-bit g_idx per input column (gptq_table's \`bpw linear\`: 4.214 and 3.206 for the dense rows)."
        echo
        echo "| pattern | grid | zeros | payload bpw | prune s | PPL | mean KLD | same top % |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|"
        printf '%s\n' "${rows[@]}"
        if [[ -n "${mixed_rows:-}" ]]; then
            echo
            echo "## Mixed with bit-widths: \`tersor compress --format dense --target-bpw $target_bpw\`"
            echo
            printf '%s\n' "${mixed_rows%$'\n\n'}"
        fi
    } > "$result.tmp" && mv "$result.tmp" "$result"
}
rows=()
for row in $specs; do
    p="${row%%:gptq:*}"
    spec="gptq:${row#*:gptq:}"
    if [[ "$p" == *:* ]]; then arg=(--pattern "$p"); else arg=(--sparsity "$p"); fi
    tag="$(echo "$p.$spec" | tr ':.' '__')"
    out="$out_dir/$tag"
    if [[ -s "$out.c$chunks.row" ]]; then
        rows+=("$(cat "$out.c$chunks.row")"); write_table; continue
    fi
    "$tersor" --threads "$threads" prune "$lm" "${arg[@]}" --method sparsegpt --quantize "$spec" \
        --calib "$calib_text" --calib-tokens "$calib_tokens" -o "$out" -q --json > "$out_dir/$tag.prune.json"
    eval_against_reference "$out" "$chunks" "$out_dir/$tag.eval.json"
    line="$(python3 - "$out_dir/$tag.prune.json" "$out_dir/$tag.eval.json" "$p" "$spec" <<'PY'
import json, sys
q = json.load(open(sys.argv[1])); e = json.load(open(sys.argv[2]))["perplexity"]
p, spec = sys.argv[3], sys.argv[4]
kl = e["kl"]
bits = sum(l["sparse_bytes"] for l in q["linears"]) * 8 / q["linear_params"]
print(f"| {p} | {spec} | {q['linear_sparsity']:.4f} | {bits:.3f} | {q['seconds_prune']:.1f} "
      f"| {e['perplexity']:.3f} ± {e['perplexity_uncertainty']:.3f} | {kl['kld_mean']:.4f} | {kl['same_top_percent']:.1f} |")
PY
)"
    echo "$line" >&2
    echo "$line" > "$out.c$chunks.row"
    rows+=("$line")
    write_table
    rm -rf "$out"
done

# The search over the levels above mixed, at one payload budget, once per database
# calibration (DB_INPUTS).
mixed_rows=""
for inputs in $db_inputs; do
    mixed_tag="bpw$target_bpw.g$generations.c$calib_tokens.e$chunks.$inputs.l$(echo "$levels" | cksum | cut -d' ' -f1)"
    j="$out_dir/$mixed_tag.json"
    models="$out_dir/mixed.$mixed_tag"
    if [[ ! -s "$j" ]]; then
        echo "tersor compress --format dense --target-bpw $target_bpw --db-inputs $inputs..." >&2
        start=$(date +%s)
        rm -rf "$models"
        level_args=()
        if [[ -n "$levels" ]]; then level_args=(--levels "$levels"); fi
        "$tersor" --threads "$threads" compress "$lm" --format dense --target-bpw "$target_bpw" "${level_args[@]}" \
            --db-inputs "$inputs" --calib "$calib_text" --calib-tokens "$calib_tokens" --ctx 512 \
            --generations "$generations" --eval "$eval_text" --eval-chunks "$chunks" -o "$models" -q \
            --report "$j.tmp" > /dev/null
        eval_against_reference "$models" "$chunks" "$out_dir/$mixed_tag.written.json"
        python3 - "$j.tmp" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r["wall_seconds"] = int(sys.argv[2])
json.dump(r, open(sys.argv[1], "w"), indent=1)
PY
        mv "$j.tmp" "$j"
        rm -rf "$models"
    fi
    mixed_rows+="$(python3 - "$j" "$out_dir/$mixed_tag.written.json" <<'PY'
import json, sys
from collections import Counter
r = json.load(open(sys.argv[1])); w = json.load(open(sys.argv[2]))["perplexity"]
t = r["targets"][0]
how = {"reference": "each linear's on the reference model's activations (compressed on its own)",
       "sequential": "each level's on the model whose earlier blocks are at that level (as the rows above)"}[r["db_inputs"]]
print(f"### Database calibrated `{r['db_inputs']}`")
print()
print("Levels: " + ", ".join(r["levels"]) + f", {how}. "
      f"Database {r['seconds_build']:.0f} s, per-linear KL table {r['seconds_table']:.0f} s, "
      f"baselines {t['seconds_baselines']:.0f} s, search {t['seconds_search']:.0f} s ({len(t['curve'])} generations), "
      f"wall {r['wall_seconds']} s. Fitness: mean KL on the last stage's {r['fitness_tokens'][-1]} calibration tokens.")
print()
print("| allocation | scored | payload bpw | params removed | calib KL | PPL | mean KLD | same top % |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for i, m in enumerate(t["methods"]):
    e = m["eval"]
    print(f"| {m['name']} (database) | f32, in memory | {m['bpw']:.3f} | {m['sparsity']:.4f} | {m['fitness']:.4f} "
          f"| {e['perplexity']:.2f} ± {e['perplexity_uncertainty']:.2f} | {e['kld_mean']:.4f} | {e['same_top_percent']:.1f} |")
    if i == 0:
        print(f"| evopress, written | f16 file, `tersor eval` | {m['bpw']:.3f} | {m['sparsity']:.4f} |  "
              f"| {w['perplexity']:.2f} ± {w['perplexity_uncertainty']:.2f} | {w['kl']['kld_mean']:.4f} | {w['kl']['same_top_percent']:.1f} |")
print()
for m in t["methods"]:
    c = Counter(m["levels"])
    print(f"- {m['name']}: " + ", ".join(f"{n} × {l}" for l, n in sorted(c.items(), key=lambda x: -x[1])))
print()
PY
)"$'\n\n'
    write_table
done

echo "wrote $result" >&2
