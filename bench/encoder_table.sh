#!/usr/bin/env bash
# The encoder path: all-MiniLM-L6-v2 pruned to 50 % (magnitude, Wanda, SparseGPT)
# and quantized to 4 bits (RTN and GPTQ onto gptq:4:g128), scored by the mean cosine
# similarity of its sentence embeddings to the original's. Writes
# bench/results/encoder_table.md.
#
#   bench/encoder_table.sh
#
# Each row is one `tersor prune` / `tersor quantize` run on the f32 encoder (its six
# linears per layer; embeddings and norms kept), written as a sentence-transformers
# directory, then `tersor eval OUT --ref ENCODER` on the sentences of the Botchan
# evaluation split (SENTENCES, default all). Calibration (wanda, sparsegpt, gptq): the
# sentences of the Botchan calibration split, up to CALIB_TOKENS real tokens (default
# 16384), the encoder re-run once per layer (sequential).
#
# No peer is needed. THREADS (default 2). Finished rows are reused from
# bench/out/encoder_table (delete it to measure again).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out_dir="$root/bench/out/encoder_table"
result="$root/bench/results/encoder_table.md"
threads="${THREADS:-2}"
calib_tokens="${CALIB_TOKENS:-16384}"
sentences="${SENTENCES:-}"
mkdir -p "$out_dir" "$(dirname "$result")"

# shellcheck source=bench/lib.sh
source "$here/lib.sh"
tersor_setup
encoder="$(asset_path "$("$tersor" fetch --json)" encoder_dir)"
max_sentences=()
[[ -n "$sentences" ]] && max_sentences=(--max-sentences "$sentences")

# row NAME KIND ARGS...: compress (prune|quantize) and evaluate; reuses finished rows.
rows=()
row() {
    local name="$1" kind="$2"
    shift 2
    local dir="$out_dir/$name" sj="$out_dir/$name.summary.json" ej="$out_dir/$name.eval.json"
    if [[ ! -s "$ej" ]]; then
        echo "$kind $name..." >&2
        "$tersor" --threads "$threads" "$kind" "$encoder" "$@" --calib "$calib_text" \
            --calib-tokens "$calib_tokens" -o "$dir" -q --json > "$sj"
        "$tersor" --threads "$threads" eval "$dir" --ref "$encoder" --text "$eval_text" \
            "${max_sentences[@]}" -q --json > "$ej"
        rm -rf "$dir"
    fi
    rows+=("$name")
}

row magnitude-50 prune --sparsity 0.5 --method magnitude
row wanda-50 prune --sparsity 0.5 --method wanda
row sparsegpt-50 prune --sparsity 0.5 --method sparsegpt
row rtn-4bit quantize --type gptq:4:g128 --method rtn
row gptq-4bit quantize --type gptq:4:g128 --method gptq

header="$(table_header bench/encoder_table.sh)"
python3 - "$out_dir" "$header" "$calib_tokens" "${rows[@]}" > "$result.tmp" <<'EOF'
import json, sys
out_dir, header, calib_tokens, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
print("# all-MiniLM-L6-v2: pruning and 4-bit quantization, cosine similarity to the original\n")
print(header + "\n")
first = json.load(open(f"{out_dir}/{names[0]}.eval.json"))["embeddings"]
print(f"Mean / median / minimum cosine similarity of each sentence embedding to the f32 "
      f"original's, over the {first['sentences']} sentences (≥ 3 words) of the Botchan "
      f"evaluation split. Calibration: Botchan calibration split, up to {calib_tokens} "
      "tokens, sequential (layer l calibrated on the outputs of the compressed layers "
      "before it). Only the 36 linears are compressed (embeddings, norms, biases kept). "
      "Sparsity: of those linears' weights. 4-bit rows: weights rounded onto gptq:4:g128 "
      "(128-column groups, f16 scales, 4-bit zeros) and stored dequantized; bpw: the GPTQ "
      "format's bits per linear weight.\n")
print("| method | linears | sparsity | bpw | mean cos | median cos | min cos | time (s) |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for n in names:
    s = json.load(open(f"{out_dir}/{n}.summary.json"))
    e = json.load(open(f"{out_dir}/{n}.eval.json"))["embeddings"]
    bpw = f"{s['bpw_linear']:.3f}" if s.get("bpw_linear") is not None else "—"
    print(f"| {n} | {s['op']} | {s['linear_sparsity']:.4f} | {bpw} | {e['mean_cosine']:.4f} "
          f"| {e['median_cosine']:.4f} | {e['min_cosine']:.4f} | {s['seconds']:.1f} |")
EOF
mv "$result.tmp" "$result"
echo "wrote $result" >&2
