#!/usr/bin/env bash
# Decode and prefill throughput and peak memory of llamoe-ep on the bundled model and on a
# Llama 3.1 8B-shaped synthetic model with 2 layers (BF16, real vocabulary and widths), for
# dense and the MoE modes (the MoE overhead versus dense). One rank, all cores.
#   bench/generate.sh [--build DIR] [--out DIR] [--quick]
# Writes OUT/generate.json and OUT/generate.md (a markdown table).
set -euo pipefail
cd "$(dirname "$0")/.."
build=build out=docs/bench/generate quick=0
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "usage: bench/generate.sh [--build DIR] [--out DIR] [--quick]" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
big=${LLAMOE_BENCH_8B_DIR:-$work/llama8b-2l}
if [ "$quick" = 0 ] && [ ! -d "$big" ]; then
  echo "bench: writing the 8B-shaped 2-layer model (about 3 GB) to $big" >&2
  "$build/llamoe-mkmodel" -o "$big" --preset llama3.1-8b --layers 2 --dtype BF16 --seed 1 >&2
fi
prompt512=$(python3 -c 'import random; r=random.Random(1); print(",".join(["1"]+[str(r.randrange(3,500)) for _ in range(511)]))')
prompt512_big=$(python3 -c 'import random; r=random.Random(1); print(",".join(["128000"]+[str(r.randrange(1000,120000)) for _ in range(511)]))')

models="stories260k:models/stories260k:$prompt512"
[ "$quick" = 0 ] && models="$models llama3.1-8b-2layers:$big:$prompt512_big"
modes="dense identity:8 upcycle:8:2 production:8:2"
n_decode=$([ "$quick" = 1 ] && echo 8 || echo 32)
echo "[" > "$out/generate.json"
first=1
for entry in $models; do
  name=${entry%%:*}; rest=${entry#*:}; dir=${rest%%:*}; prompt=${rest#*:}
  for mode in $modes; do
    # Decode: a short prompt, n tokens. Prefill: a 512-token prompt, one new token.
    dec=$("$build/llamoe-ep" -m "$dir" --moe "$mode" --ids "${prompt:0:40}" -n "$n_decode" --json)
    pre=$("$build/llamoe-ep" -m "$dir" --moe "$mode" --ids "$prompt" -n 1 --step-tokens 512 --json)
    [ $first = 1 ] || echo "," >> "$out/generate.json"
    first=0
    python3 - "$name" "$mode" "$dec" "$pre" "$(nproc)" >> "$out/generate.json" <<'PY'
import json, sys
name, mode, dec, pre, cores = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5])
print(json.dumps({"model": name, "moe": mode, "threads": cores,
  "decode_tok_s": dec["timings"]["decode_tok_s"], "decode_ms_per_token": 1000 / dec["timings"]["decode_tok_s"],
  "prefill_tokens": pre["timings"]["prefill_tokens"], "prefill_tok_s": pre["timings"]["prefill_tok_s"],
  "peak_rss_mb": max(dec["timings"]["peak_rss_mb_max_rank"], pre["timings"]["peak_rss_mb_max_rank"]),
  "expert_weights_mb": dec["per_rank_max"]["expert_weights_mb"]}))
PY
    echo "bench: $name $mode done" >&2
  done
done
echo "]" >> "$out/generate.json"
python3 - "$out/generate.json" > "$out/generate.md" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
base = {(r["model"]): r for r in rows if r["moe"] == "dense"}
print("| model | mode | decode tok/s | ms/token | vs dense | prefill tok/s (512) | vs dense | peak RSS MiB |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    b = base[r["model"]]
    print(f"| {r['model']} | {r['moe']} | {r['decode_tok_s']:.1f} | {r['decode_ms_per_token']:.2f} | "
          f"{r['decode_tok_s'] / b['decode_tok_s']:.2f}x | {r['prefill_tok_s']:.1f} | {r['prefill_tok_s'] / b['prefill_tok_s']:.2f}x | {r['peak_rss_mb']:.0f} |")
PY
cat "$out/generate.md"
