#!/usr/bin/env bash
# Lossless packing: `tersor pack` vs ZipNN, zstd -3 / -19 and the per-plane order-0 entropy
# bound, all measured in the same run. Writes bench/results/pack_table.md.
#
#   bench/pack_table.sh
#
# Files: all-MiniLM-L6-v2 model.safetensors (f32), its bf16 (round to nearest even) and f16
# conversions (written to bench/out/pack/ by pack_peers.py; int64 position_ids left as is),
# and the default LM's GGUF (SmolLM2-135M-Instruct Q4_1).
# Ratio = compressed / original; speeds in MB/s (10^6 B/s) of uncompressed data, in memory,
# best of ROUNDS (default 4) × RUNS (default 3) runs after one untimed round trip, compress →
# decompress (the medians are in the JSON files under bench/out/pack).
#
# Peers (bench/pack_peers.py) run from a venv made on first use in bench/out/pack/venv
# (pip: zipnn numpy zstandard; zipnn pulls in torch). tersor figures come from
# `$TERSOR pack FILE --bench --runs RUNS --threads N --json` (one JSON object on stdout).
#
# Environment: TERSOR (default target/release/tersor, built if missing), MINILM_DIR and GGUF
# (default: the paths `tersor fetch --json` gives), THREADS (default "1 2"), RUNS (default 3),
# ROUNDS (default 4).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out_dir="$root/bench/out/pack"
venv="$out_dir/venv"
result="$root/bench/results/pack_table.md"
threads_list="${THREADS:-1 2}"
runs="${RUNS:-3}"
rounds="${ROUNDS:-4}"
mkdir -p "$out_dir" "$(dirname "$result")"

# shellcheck source=bench/lib.sh
source "$here/lib.sh"  # asset_path

# tersor: built (release) only when TERSOR is not given and the binary is missing.
tersor="${TERSOR:-$root/target/release/tersor}"
if [[ -z "${TERSOR:-}" && ! -x "$tersor" ]]; then
    echo "building tersor (release)..." >&2
    (cd "$root" && cargo build --release -p tersor >&2)
fi

# Assets: MINILM_DIR / GGUF, else where `tersor fetch` puts them.
if [[ -z "${MINILM_DIR:-}" || -z "${GGUF:-}" ]]; then
    paths_json="$("$tersor" fetch --json)"
fi
minilm_dir="${MINILM_DIR:-$(asset_path "$paths_json" encoder_dir)}"
gguf="${GGUF:-$(asset_path "$paths_json" lm)}"

# The peers' venv (made once; reinstalled if an import fails).
py="$venv/bin/python"
[[ -x "$py" ]] || python3 -m venv "$venv"
if ! "$py" -c 'import zipnn, zstandard, numpy' 2>/dev/null; then
    echo "installing zipnn, numpy, zstandard into $venv..." >&2
    "$venv/bin/pip" install -q zipnn numpy zstandard >&2
fi

# The bf16 / f16 conversions.
"$py" "$here/pack_peers.py" convert "$minilm_dir/model.safetensors" "$out_dir" > "$out_dir/converted.txt"
mapfile -t converted < "$out_dir/converted.txt"
files=("$minilm_dir/model.safetensors" "${converted[@]}" "$gguf")

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"

read -ra threads <<< "$threads_list"

# ROUNDS rounds; in each, per file, tersor's runs and ZipNN's back to back (zstd too in
# the first round only: zstd -19 takes minutes), so that both see the same machine state
# (the cores are shared; a whole tersor pass then a whole peer pass would compare
# different moments). The order alternates: tersor first in odd rounds, ZipNN first in
# even ones, so that neither always inherits what the other left behind (freed memory
# the host must hand back, warm caches). Each tool's speed is its best run over all
# rounds. tersor.tsv lists threads, file and JSON output.
: > "$out_dir/tersor.tsv"
peer_jsons=()
run_tersor() {  # FILE ROUND
    for t in "${threads[@]}"; do
        j="$out_dir/tersor.$(basename "$1").t$t.r$2.json"
        echo "round $2/$rounds: tersor pack $(basename "$1") --threads $t" >&2
        "$tersor" pack "$1" --bench --runs "$runs" --threads "$t" --json > "$j"
        printf '%s\t%s\t%s\n' "$t" "$1" "$j" >> "$out_dir/tersor.tsv"
    done
}
run_peers() {  # FILE ROUND TOOLS
    pj="$out_dir/peers.$(basename "$1").r$2.json"
    echo "round $2/$rounds: $3 on $(basename "$1")" >&2
    "$py" "$here/pack_peers.py" measure --threads "$(IFS=,; echo "${threads[*]}")" --runs "$runs" \
        --tools "$3" "$1" > "$pj"
    peer_jsons+=("$pj")
}
for round in $(seq 1 "$rounds"); do
    tools=zipnn
    [[ $round == 1 ]] && tools=zipnn,zstd
    for f in "${files[@]}"; do
        if (( round % 2 == 1 )); then
            run_tersor "$f" "$round"
            run_peers "$f" "$round" "$tools"
        else
            run_peers "$f" "$round" "$tools"
            run_tersor "$f" "$round"
        fi
    done
done
# One peers.json: the versions once, each file once, and per (tool, threads,
# file) the best speeds over the rounds (the medians: the median of the
# rounds' medians).
"$py" - "${peer_jsons[@]}" > "$out_dir/peers.json" <<'EOF'
import json, statistics, sys
parts = [json.load(open(p)) for p in sys.argv[1:]]
out = {"versions": parts[0]["versions"], "files": [], "results": []}
seen, runs = set(), {}
for p in parts:
    for f in p["files"]:
        if f["path"] not in seen:
            seen.add(f["path"])
            out["files"].append(f)
    for r in p["results"]:
        runs.setdefault((r["tool"], r["threads"], r["path"]), []).append(r)
for rs in runs.values():
    if len({r["ratio"] for r in rs}) != 1:
        sys.exit(f"{rs[0]['tool']} on {rs[0]['path']}: the ratio differs between rounds")
    row = dict(rs[0], rounds=len(rs))
    for k in ("compress_mb_s", "decompress_mb_s"):
        row[k] = max(r[k] for r in rs)
        row[k + "_median"] = statistics.median(r[k + "_median"] for r in rs)
    out["results"].append(row)
json.dump(out, sys.stdout, indent=1)
EOF

load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
tersor_version="$("$tersor" --version 2>/dev/null || echo "tersor (version unknown)")"
commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
[[ -z "$(git -C "$root" status --porcelain 2>/dev/null)" ]] || commit="$commit+dirty"
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
header="Generated by \`bench/pack_table.sh\` on $(date -u '+%Y-%m-%d %H:%M') UTC; $(nproc) cores ($cpu), load $load_before at start, $load_after at end; $tersor_version (commit $commit)"

# Markdown: one row per (tool, threads), one column per file, then tersor vs ZipNN.
"$py" - "$out_dir/peers.json" "$out_dir/tersor.tsv" "$runs" "$rounds" "$header" > "$result.tmp" <<'EOF'
import json, os, re, statistics, sys

peers = json.load(open(sys.argv[1]))
runs, rounds, header = sys.argv[3], sys.argv[4], sys.argv[5]
files = peers["files"]
v = peers["versions"]

def label(f):
    mb = f"{f['bytes'] / 1e6:.1f} MB"
    if f["kind"] != "GGUF":
        return f"{f['kind']} ({mb})"
    m = re.search(r"\.(Q\w+|F16|F32|BF16)\.gguf$", f["path"], re.I)
    return f"{m.group(1) + ' ' if m else ''}GGUF ({mb})"

def speed(x):
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}"

def cell(r):
    return f"{r['ratio']:.4f} ({speed(r['compress_mb_s'])}→{speed(r['decompress_mb_s'])})"

# rows[(tool, threads)][path] = result
rows = {}
for r in peers["results"]:
    rows.setdefault((r["tool"], r["threads"]), {})[r["path"]] = r
tersor = {}
vm = {}
for line in open(sys.argv[2]):
    t, path, j = line.rstrip("\n").split("\t")
    r = json.load(open(j))
    missing = {"original_bytes", "packed_bytes", "ratio", "compress_mb_s", "decompress_mb_s",
               "compress_mb_s_median", "decompress_mb_s_median"} - r.keys()
    if missing:
        sys.exit(f"{j}: missing {sorted(missing)}")
    if r["original_bytes"] != os.path.getsize(path):
        sys.exit(f"{j}: original_bytes {r['original_bytes']} != size of {path}")
    tersor.setdefault(int(t), {}).setdefault(path, []).append(r)
    # Kernel events during tersor's decode runs (pack --bench reads /proc/vmstat).
    for k, d in r.get("decompress_vm_events", {}).items():
        events = vm.setdefault(k, {})
        events[path] = events.get(path, 0) + d
# Best over the rounds, as for the peers.
for by_path in tersor.values():
    for path, rs in by_path.items():
        if len({r["packed_bytes"] for r in rs}) != 1:
            sys.exit(f"tersor on {path}: the packed size differs between rounds")
        row = dict(rs[0])
        for k in ("compress_mb_s", "decompress_mb_s"):
            row[k] = max(r[k] for r in rs)
            row[k + "_median"] = statistics.median(r[k + "_median"] for r in rs)
        by_path[path] = row
threads = sorted(tersor)

def plural(t):
    return f"{t} thread{'s' if t != 1 else ''}"

print("# Lossless packing: tersor vs ZipNN, zstd and the order-0 entropy bound")
print()
print(header + f"; zipnn {v['zipnn']}, zstandard {v['zstandard']} (libzstd {v['libzstd']}), "
      f"numpy {v['numpy']}, Python {v['python']}.")
print()
print("Files: all-MiniLM-L6-v2 `model.safetensors` (f32), its bf16 and f16 conversions (round to "
      "nearest even; the int64 `position_ids` tensor left as is), and the default LM's GGUF. "
      "Ratio = compressed / original; speeds in MB/s (10^6 B/s) of uncompressed data, in memory, "
      f"best of {rounds} rounds × {runs} runs, compress → decompress. The cores are shared, so "
      "speeds vary: in each round every file's tersor and ZipNN runs come back to back (tersor "
      "first in odd rounds, ZipNN first in even ones), so both see the same load, and the best "
      "run is the one least disturbed (zstd ran in the first round only). Each tool first makes "
      "one untimed round trip: a VM that hands freed memory back to its host (free page "
      "reporting) makes the first touch of a large fresh buffer cost more than decoding into "
      "it, and an untimed first run keeps that out of both tools' figures alike.")
print()
print("| tool | " + " | ".join(label(f) for f in files) + " |")
print("|---|" + "---|" * len(files))
order = [("tersor", t) for t in threads] + [("zipnn", t) for t in threads] + [("zstd-3", 1), ("zstd-19", 1)]
for tool, t in order:
    if tool == "tersor":
        name, row = f"tersor, {plural(t)}", tersor[t]
    elif tool == "zipnn":
        name, row = f"zipnn {v['zipnn']}, {plural(t)}", rows[(tool, t)]
    else:
        name, row = f"zstd -{tool.split('-')[1]}, 1 thread", rows[(tool, t)]
    print(f"| {name} | " + " | ".join(cell(row[f["path"]]) for f in files) + " |")
print("| order-0 bound (byte planes, new tables every 256 KiB) | "
      + " | ".join("—" if f["bound"] is None else f"{f['bound']:.4f}" for f in files) + " |")
print()
print("ZipNN: `ZipNN(input_format=\"byte\", bytearray_dtype=…, threads=N)` on the whole file in memory, "
      "bytearray_dtype = float32 / bfloat16 / float16 for the safetensors files, float16 (two byte "
      "planes, no bit reordering: its best option) for the GGUF; its input is copied before each run "
      "(ZipNN reorders float32/bfloat16 input in place). zstd: python `zstandard`, one frame, single "
      "thread. tersor: `tersor pack FILE --bench --runs N --threads T --json` (its own in-memory timing). "
      "Bound: each float tensor split into byte planes (4 for f32, 2 for bf16/f16), order-0 entropy "
      "of each plane per 256 KiB of the tensor's bytes, summed; header and non-float tensors at full "
      "size; model cost not counted; none for the GGUF.")
print()
print("## tersor vs ZipNN")
print()
print("Same run as above: tersor's ratio minus ZipNN's (negative = tersor smaller), and tersor's "
      "decompression speed ÷ ZipNN's at the same thread count: best run ÷ best run, and, for the "
      "spread, median ÷ median (the median of each round's median).")
print()
print("| | " + " | ".join(label(f) for f in files) + " |")
print("|---|" + "---:|" * len(files))
for t in threads:
    z = rows[("zipnn", t)]
    print(f"| ratio − ZipNN's, {plural(t)} | "
          + " | ".join(f"{tersor[t][f['path']]['ratio'] - z[f['path']]['ratio']:+.4f}" for f in files) + " |")
    print(f"| decompress speed ÷ ZipNN's, {plural(t)} | "
          + " | ".join(f"{tersor[t][f['path']]['decompress_mb_s'] / z[f['path']]['decompress_mb_s']:.2f}×"
                       for f in files) + " |")
    print(f"| (medians) decompress speed ÷ ZipNN's, {plural(t)} | "
          + " | ".join(f"{tersor[t][f['path']]['decompress_mb_s_median'] / z[f['path']]['decompress_mb_s_median']:.2f}×"
                       for f in files) + " |")
if vm:
    print()
    print("Kernel events during tersor's decode runs, all rounds and thread counts (`/proc/vmstat` "
          "deltas; tersor advises its output buffer for transparent huge pages, and with THP defrag "
          "`madvise` a fault there may compact memory synchronously: `compact_stall`):")
    print()
    print("| event | " + " | ".join(label(f) for f in files) + " |")
    print("|---|" + "---:|" * len(files))
    for k in sorted(vm):
        print(f"| {k} | " + " | ".join(str(vm[k].get(f["path"], "—")) for f in files) + " |")
EOF
mv "$result.tmp" "$result"
echo "wrote $result" >&2
