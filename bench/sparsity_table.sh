#!/usr/bin/env bash
# Non-uniform sparsity on the default LM: EvoPress over per-linear SparseGPT sparsities
# (`tersor compress --target-sparsity`) vs uniform SparseGPT, at TARGETS (default
# 0.5,0.6,0.7) of the block linears' weights. Writes bench/results/sparsity_table.md.
#
#   bench/sparsity_table.sh
#
# One `tersor compress --target-sparsity $TARGETS` run: the level database (every block
# linear pruned by SparseGPT to 0, 10 %, ..., 90 % on the reference's activations) and the
# per-linear KL table are shared by the targets; per target it scores uniform (every
# linear at the target, from the same database), DP over the per-linear errors and
# EvoPress (GENERATIONS, default 10, of 8 offspring; fitness: mean KL on CALIB_TOKENS,
# default 8192, calibration tokens, stages of 1/4/8 windows of 512), all in f32 in memory.
# The written EvoPress directories (f16) and the sequential uniform SparseGPT of
# `tersor prune` (each block calibrated on the pruned blocks before it, f16) are then
# scored the same way by `tersor eval --ref`: Botchan evaluation split, ctx 512, first
# CHUNKS (default 8) windows, against the f32 reference.
#
# A second run searches a mixed ladder (MIXED_LEVELS, default the sparsities above plus
# `drop`, the linear removed, and activation-aware SVD factors holding 30 / 50 / 70 % of
# a linear's parameters) under the same parameter budgets; its baselines are uniform
# SparseGPT, uniform ASVD (where the ratios bracket the target) and DP. A third run
# searches N:M patterns (NM_LEVELS, default dense, 3:4, 2:4 and 1:4 per linear) at 50 %
# against uniform 2:4. A fourth run adds `skip` to the sparsity ladder (SKIP_LEVELS):
# the search's units become the 60 attention and MLP sublayers, each at one sparsity on
# all its linears or skipped whole, under the same parameter budgets.
#
# No peer is needed. THREADS (default 2). Finished runs are reused from
# bench/out/sparsity_table (delete it to measure again).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out_dir="$root/bench/out/sparsity_table"
result="$root/bench/results/sparsity_table.md"
targets="${TARGETS:-0.5,0.6,0.7}"
threads="${THREADS:-2}"
calib_tokens="${CALIB_TOKENS:-8192}"
chunks="${CHUNKS:-8}"
generations="${GENERATIONS:-10}"
nm_levels="${NM_LEVELS:-0,3:4,2:4,1:4}"
mixed_levels="${MIXED_LEVELS:-0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,drop,lowrank:0.3,lowrank:0.5,lowrank:0.7}"
skip_levels="${SKIP_LEVELS:-0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,skip}"
mkdir -p "$out_dir" "$(dirname "$result")"

# shellcheck source=bench/lib.sh
source "$here/lib.sh"
tersor_setup

ref_ppl="$(ref_perplexity "$chunks")"
tag="t${targets//,/_}.g$generations.c$calib_tokens.e$chunks"
mixed_tag="$tag.mixed$(echo "$mixed_levels" | cksum | cut -d' ' -f1)"
nm_tag="t0.5.g$generations.c$calib_tokens.e$chunks.nm$(echo "$nm_levels" | cksum | cut -d' ' -f1)"
skip_tag="$tag.skip$(echo "$skip_levels" | cksum | cut -d' ' -f1)"

# One compress run per ladder (the default sparsities; the mixed ladder), and its
# written EvoPress models scored from their files.
run_ladder() {
    local tag="$1" targets="$2"; shift 2
    local j="$out_dir/$tag.json"
    if [[ ! -s "$j" ]]; then
        echo "tersor compress --target-sparsity $targets $*..." >&2
        local start
        start=$(date +%s)
        rm -rf "$out_dir/models.$tag"
        "$tersor" --threads "$threads" compress "$lm" --target-sparsity "$targets" --calib "$calib_text" \
            --calib-tokens "$calib_tokens" --ctx 512 --generations "$generations" "$@" \
            --eval "$eval_text" --eval-chunks "$chunks" -o "$out_dir/models.$tag" -q --report "$j.tmp" > /dev/null
        python3 - "$j.tmp" "$(( $(date +%s) - start ))" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
r["wall_seconds"] = int(sys.argv[2])
json.dump(r, open(sys.argv[1], "w"), indent=1)
EOF
        mv "$j.tmp" "$j"
    fi
    for t in ${targets//,/ }; do
        local pct evo_eval m
        pct="$(python3 -c "print(round($t * 100))")"
        evo_eval="$out_dir/$tag.evopress$pct.eval.json"
        if [[ ! -s "$evo_eval" ]]; then
            m="$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print([x["output"] for x in r["targets"] if round(x["target"]*100)==int(sys.argv[2])][0])' "$j" "$pct")"
            eval_against_reference "$m" "$chunks" "$evo_eval.tmp" && mv "$evo_eval.tmp" "$evo_eval"
        fi
    done
}
run_ladder "$tag" "$targets"
run_ladder "$mixed_tag" "$targets" --levels "$mixed_levels"
run_ladder "$nm_tag" 0.5 --levels "$nm_levels"
run_ladder "$skip_tag" "$targets" --levels "$skip_levels"
j="$out_dir/$tag.json"

# Sequential uniform SparseGPT (`tersor prune`), scored from its files.
for t in ${targets//,/ }; do
    pct="$(python3 -c "print(round($t * 100))")"
    seq="$out_dir/sparsegpt$pct.c$calib_tokens"
    if [[ ! -s "$seq.eval$chunks.json" ]]; then
        echo "tersor prune --sparsity $t --method sparsegpt..." >&2
        "$tersor" --threads "$threads" prune "$lm" --sparsity "$t" --method sparsegpt --calib "$calib_text" \
            --calib-tokens "$calib_tokens" -o "$seq" -q --json > "$seq.prune.json"
        eval_against_reference "$seq" "$chunks" "$seq.eval$chunks.json.tmp"
        mv "$seq.eval$chunks.json.tmp" "$seq.eval$chunks.json"
        rm -rf "$seq"
    fi
done

# A ladder run's table: every allocation scored in memory, EvoPress's written
# directory scored from its files, then the count of linears at each of EvoPress's levels.
ladder_rows() {
    echo "| target | allocation | scored | params removed | factored linears | dropped linears or skipped sublayers | calib KL | PPL | mean KLD | same top % |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
    python3 - "$out_dir/$1.json" "$out_dir" "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); out, tag = sys.argv[2:4]
for t in r["targets"]:
    pct = round(t["target"] * 100)
    for i, m in enumerate(t["methods"]):
        e = m["eval"]
        drops = sum(1 for l in m["levels"] if l in ("drop", "skip"))
        print(f"| {pct} % | {m['name']} (database) | f32, in memory | {m['sparsity']:.4f} | {m['factored']} | {drops} | {m['fitness']:.4f} "
              f"| {e['perplexity']:.2f} ± {e['perplexity_uncertainty']:.2f} | {e['kld_mean']:.4f} | {e['same_top_percent']:.1f} |")
        if i == 0:
            w = json.load(open(f"{out}/{tag}.evopress{pct}.eval.json"))["perplexity"]
            print(f"| {pct} % | evopress, written | f16 file, `tersor eval` | {m['sparsity']:.4f} | {m['factored']} | {drops} |  "
                  f"| {w['perplexity']:.2f} ± {w['perplexity_uncertainty']:.2f} | {w['kl']['kld_mean']:.4f} | {w['kl']['same_top_percent']:.1f} |")
print()
for t in r["targets"]:
    counts = {}
    for l in t["methods"][0]["levels"]:
        counts[l] = counts.get(l, 0) + 1
    print(f"EvoPress at {round(t['target'] * 100)} %, units per level: "
          + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + ".")
    print()
EOF
}

# One run's wall times: "$2, 2 cores: ...".
wall_times() {
    python3 - "$out_dir/$1.json" "$2" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
parts = [f"level database {r['seconds_build']:.0f} s", f"per-linear KL table {r['seconds_table']:.0f} s"]
for t in r["targets"]:
    parts.append(f"{round(t['target'] * 100)} %: baselines {t['seconds_baselines']:.0f} s, search {t['seconds_search']:.0f} s, evaluation {t['seconds_eval']:.0f} s")
print(f"{sys.argv[2]}, 2 cores: {'; '.join(parts)}; whole run {r['wall_seconds']} s.")
EOF
}

{
    echo "# Non-uniform sparsity: EvoPress vs uniform SparseGPT"
    echo
    table_header bench/sparsity_table.sh
    echo
    echo "Default LM (SmolLM2-135M-Instruct; reference: its f32 dequantized weights, perplexity $ref_ppl). Pruned: the 210 block linears. Level database: every linear pruned by SparseGPT (blocks of 128 columns, 1 % damping) to each sparsity of 0, 10 %, ..., 90 %, on the reference model's activations ($calib_tokens Botchan calibration tokens, ctx 512). Budget: the kept weights of the target applied to every linear; sparsity below is counted on the weights. Fitness: mean KL on the calibration windows, stages of 1/4/8 windows; EvoPress: $generations generations of 8 offspring from the better of uniform and DP. Evaluation: Botchan evaluation split, ctx 512, first $chunks windows, against the f32 reference."
    echo
    echo "| target | allocation | scored | linear sparsity | calib KL | PPL | mean KLD | same top % |"
    echo "|---|---|---|---:|---:|---:|---:|---:|"
    python3 - "$j" "$out_dir" "$tag" "$calib_tokens" "$chunks" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); out, tag, ct, ch = sys.argv[2:6]
for t in r["targets"]:
    pct = round(t["target"] * 100)
    rows = []
    for m in t["methods"]:
        e = m["eval"]
        rows.append((m["name"] + " (database)", "f32, in memory", m["sparsity"], f"{m['fitness']:.4f}",
                     e["perplexity"], e["perplexity_uncertainty"], e["kld_mean"], e["same_top_percent"]))
    evo = json.load(open(f"{out}/{tag}.evopress{pct}.eval.json"))["perplexity"]
    rows.insert(1, ("evopress, written", "f16 file, `tersor eval`", t["methods"][0]["sparsity"], "",
                    evo["perplexity"], evo["perplexity_uncertainty"], evo["kl"]["kld_mean"], evo["kl"]["same_top_percent"]))
    q = json.load(open(f"{out}/sparsegpt{pct}.c{ct}.prune.json"))
    s = json.load(open(f"{out}/sparsegpt{pct}.c{ct}.eval{ch}.json"))["perplexity"]
    rows.append(("uniform SparseGPT, sequential (`tersor prune`)", "f16 file, `tersor eval`", q["linear_sparsity"], "",
                 s["perplexity"], s["perplexity_uncertainty"], s["kl"]["kld_mean"], s["kl"]["same_top_percent"]))
    for name, how, sp, fit, p, pu, kl, top in rows:
        print(f"| {pct} % | {name} | {how} | {sp:.4f} | {fit} | {p:.2f} ± {pu:.2f} | {kl:.4f} | {top:.1f} |")
EOF
    echo
    echo "EvoPress's per-block sparsity (mean over the block's seven linears, blocks 0..29):"
    echo
    python3 - "$j" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
for t in r["targets"]:
    print(f"- {round(t['target'] * 100)} %: " + " ".join(f"{x:.2f}" for x in t["evopress_block_sparsity"]))
EOF
    echo
    wall_times "$tag" "Wall time"
    echo
    echo "## Mixed levels: sparsity, dropped linears and low rank under one parameter budget"
    echo
    echo "Ladder \`$mixed_levels\` for every linear (\`drop\`: the linear removed, which for o_proj / down_proj skips the sublayer; \`lowrank:R\`: activation-aware SVD, whitening by the Cholesky factor of XᵀX + 1 % damping, at the largest rank whose two factors hold at most R of the linear's parameters, costed as the factors). Budget: the same parameter counts as above; linear sparsity = parameters removed (zeros counted on the weights, factored linears by their factors' shapes). The written EvoPress directory stores factored linears as their two factors (f16) and runs them as two matmuls."
    echo
    ladder_rows "$mixed_tag"
    echo
    wall_times "$mixed_tag" "Mixed run wall time"
    echo
    echo "## N:M: EvoPress over per-linear N:M patterns vs uniform 2:4"
    echo
    echo "Ladder \`$nm_levels\` (N:M = at most N nonzeros in every M consecutive inputs of a row, SparseGPT) at 50 % of the parameters: uniform is 2:4 everywhere (from the same database); EvoPress may mix 3:4, 2:4, 1:4 and dense linears. Sequential uniform SparseGPT 2:4 (\`tersor prune\`) is in prune_table.md."
    echo
    ladder_rows "$nm_tag"
    wall_times "$nm_tag" "N:M run wall time"
    echo
    echo "## Skipped sublayers mixed with sparsity"
    echo
    echo "Ladder \`$skip_levels\`: with \`skip\` the search's units are the 60 sublayers (attention: q, k, v, o; MLP: gate, up, down), each at one SparseGPT sparsity on all its linears (the same database as the first run) or skipped whole (its residual branch adds nothing; a block whose two sublayers are skipped is left out of the written directory). Budget: the same parameter counts as above. Compare with the first run's per-linear EvoPress (finer units, no skips) and with \`tersor depth\` (skips only, depth_table.md)."
    echo
    ladder_rows "$skip_tag"
    wall_times "$skip_tag" "Skip run wall time"
} > "$result.tmp"
mv "$result.tmp" "$result"
echo "wrote $result" >&2
