#!/usr/bin/env bash
# Depth pruning of the default LM: EvoPress over attention / MLP sublayer drops vs dropping
# the last blocks and a per-sublayer importance ranking, at 10 % and 20 % of the blocks'
# parameters removed. Writes bench/results/depth_table.md.
#
#   bench/depth_table.sh
#
# One `tersor depth --drop-blocks N` per N in DROPS (default "3 6" of the 30 blocks). The
# fitness is the mean KL to the reference on the Botchan calibration split (CALIB_TOKENS,
# default 8192, ctx 512; selection stages 1,4,8 windows), GENERATIONS (default 12)
# generations of 8 offspring. Every method is then scored by tersor's evaluator on the
# Botchan evaluation split, ctx 512, first CHUNKS windows (default 8): perplexity and mean
# KL against the f32 reference, the protocol of the other bench tables. EvoPress's model is
# also written (`-o`, f16) and scored from disk with `tersor eval --ref`.
#
# No peer is needed. THREADS (default 2). Finished rows are reused from
# bench/out/depth_table (delete it to measure again; rows without a written model are not reused).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out_dir="$root/bench/out/depth_table"
result="$root/bench/results/depth_table.md"
drops="${DROPS:-3 6}"
threads="${THREADS:-2}"
calib_tokens="${CALIB_TOKENS:-8192}"
chunks="${CHUNKS:-8}"
generations="${GENERATIONS:-12}"
mkdir -p "$out_dir" "$(dirname "$result")"

# shellcheck source=bench/lib.sh
source "$here/lib.sh"
tersor_setup

ref_ppl="$(ref_perplexity "$chunks")"

for n in $drops; do
    j="$out_dir/drop$n.g$generations.c$calib_tokens.e$chunks.w.json"
    if [[ ! -s "$j" ]]; then
        echo "tersor depth --drop-blocks $n..." >&2
        start=$(date +%s)
        "$tersor" --threads "$threads" depth "$lm" --drop-blocks "$n" --calib "$calib_text" \
            --calib-tokens "$calib_tokens" --ctx 512 --generations "$generations" \
            --eval "$eval_text" --eval-chunks "$chunks" -q --report "$j.tmp" \
            -o "$out_dir/drop$n.model" > /dev/null
        wall=$(( $(date +%s) - start ))
        # The written model (f16, dropped blocks left out), scored as a file.
        eval_against_reference "$out_dir/drop$n.model" "$chunks" "$j.written.json"
        python3 - "$j.tmp" "$wall" "$j.written.json" "$out_dir/drop$n.model/config.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
r["wall_seconds"] = int(sys.argv[2])
r["written_eval"] = json.load(open(sys.argv[3]))
r["written_layers"] = json.load(open(sys.argv[4]))["num_hidden_layers"]
json.dump(r, open(sys.argv[1], "w"), indent=1)
EOF
        rm -rf "$out_dir/drop$n.model"
        mv "$j.tmp" "$j"
    fi
done

{
    echo "# Depth pruning: EvoPress vs dropping the last blocks"
    echo
    table_header bench/depth_table.sh
    echo
    echo "Default LM (SmolLM2-135M-Instruct, 30 blocks; reference: its f32 dequantized weights, perplexity $ref_ppl). A sublayer (attention: q, k, v, o; MLP: gate, up, down) is dropped by zeroing its output projection, which is exactly skipping it (test \`zeroed_output_projections_skip_the_block_exactly\`). The budget is the parameters of N whole blocks; EvoPress and the importance ranking may drop any mix of attention and MLP sublayers that removes at least that many. Fitness: mean KL on $calib_tokens calibration tokens (ctx 512), $generations generations of 8 offspring, selection on 1/4/8 windows, started from the better baseline. Evaluation: Botchan evaluation split, ctx 512, first $chunks windows, tersor's evaluator against the f32 reference."
    echo
    echo "| blocks removed | method | params removed | calib KL | PPL | mean KLD | dropped sublayers |"
    echo "|---|---|---:|---:|---:|---:|---|"
    for n in $drops; do
        python3 - "$out_dir/drop$n.g$generations.c$calib_tokens.e$chunks.w.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
pct = 100 * r["drop_blocks"] / r["n_blocks"]
for m in r["methods"]:
    e = m["eval"]
    print(f"| {r['drop_blocks']} of {r['n_blocks']} ({pct:.0f} %) | {m['name']} | {m['params_removed'] / 1e6:.2f} M "
          f"| {m['fitness']:.4f} | {e['perplexity']:.2f} | {e['kld_mean']:.4f} | {' '.join(m['dropped'])} |")
EOF
    done
    echo
    echo "EvoPress's model as written by \`tersor depth -o\` (Hugging Face directory, f16; blocks that lose both sublayers left out, a lone dropped sublayer stored with a zero output projection), loaded from disk and scored by \`tersor eval --ref\` on the same windows:"
    echo
    echo "| blocks removed | layers in the file | blocks left out | lone sublayers zeroed | bytes | PPL | mean KLD |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for n in $drops; do
        python3 - "$out_dir/drop$n.g$generations.c$calib_tokens.e$chunks.w.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
o, e = r["output"], r["written_eval"]["perplexity"]
print(f"| {r['drop_blocks']} of {r['n_blocks']} | {r['written_layers']} | {len(o['blocks_removed'])} | "
      f"{len(o['sublayers_zeroed'])} | {o['bytes']} | {e['perplexity']:.2f} | {e['kl']['kld_mean']:.4f} |")
EOF
    done
    echo
    printf 'Wall time, 2 cores:'
    for n in $drops; do
        python3 - "$out_dir/drop$n.g$generations.c$calib_tokens.e$chunks.w.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f" {r['drop_blocks']} blocks: search {r['seconds_search']:.0f} s, whole run {r['wall_seconds']} s;", end="")
EOF
    done
    echo
} > "$result.tmp"
mv "$result.tmp" "$result"
echo "wrote $result" >&2
