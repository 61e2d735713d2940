#!/usr/bin/env bash
# Throughput mode versus memory mode on the CPU: tokens/s, peak RSS, hit rate and bytes moved
# against the expert budget, from every expert resident down to one expert per layer (and
# one in all), for decode and prefill; then what each prefetch predictor and eviction policy
# buys at the small budgets, and what releasing checkpoint pages (madvise) does to RSS.
#
#   bench/offload/run.sh [BUILD_DIR]      (default build; about 4 minutes on 2 cores)
#
# Environment: OUT (results, default docs/bench/offload), WORK (models, default
# /tmp/llamoe-offload-bench), THREADS (default 2), QUICK=1 (fewer points, for a smoke run),
# EP_ARGS (extra llamoe-ep arguments, e.g. "--backend cuda" from tests/gpu/gpu_check.sh).
# Writes OUT/results.csv, OUT/results.json, OUT/results.md and OUT/offload.png (gnuplot if
# present; skipped with a note otherwise).
#
# The model: a synthetic Llama (hidden 1024, FFN 3584, 4 layers, 16 heads / 4 KV heads, vocab
# 8192, BF16) converted to a production:8:2 Mixtral checkpoint, so experts are distinct
# tensors in the file (as in a served MoE) and dominate memory: 32 experts x 21 MiB = 672 MiB
# of 725 MiB. Upcycle mode would be misleading here: its experts alias one dense FFN, so
# throughput mode touches each layer's FFN once while a pool holds E copies.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$(cd "${1:-$SRC/build}" && pwd)
OUT=${OUT:-$SRC/docs/bench/offload}
WORK=${WORK:-/tmp/llamoe-offload-bench}
THREADS=${THREADS:-2}
QUICK=${QUICK:-0}
read -r -a EP_EXTRA <<< "${EP_ARGS:-}"
EP="$BUILD/llamoe-ep"
mkdir -p "$OUT" "$WORK"

DENSE="$WORK/dense" MOE="$WORK/production-8-2"
if [ ! -f "$MOE/config.json" ]; then
  "$BUILD/llamoe-mkmodel" -o "$DENSE" --hidden 1024 --ffn 3584 --layers 4 --heads 16 --kv-heads 4 \
    --vocab 8192 --max-pos 2048 --dtype BF16 --seed 7 --force >&2
  "$BUILD/llamoe-convert" -m "$DENSE" --moe production:8:2 --seed 1234 -o "$MOE" --force >&2
fi
# Prompts: fixed pseudo-random ids. Decode: 8 prompt tokens, 64 new. Prefill: 256 tokens, 1 new.
ids() { python3 -c "import sys; n=int(sys.argv[1]); print(','.join(str((i * 2654435761) % 8000 + 100) for i in range(n)))" "$1"; }
DEC_IDS=$(ids 8) PRE_IDS=$(ids 256)
DEC_N=64
[ "$QUICK" = 1 ] && DEC_N=16

RAW="$WORK/raw.jsonl"
: >"$RAW"
run() {   # label, phase, args...
  local label=$1 phase=$2; shift 2
  local a=(--ids "$DEC_IDS" -n $DEC_N)
  [ "$phase" = prefill ] && a=(--ids "$PRE_IDS" -n 1)
  local t0=$(date +%s.%N)
  "$EP" -m "$MOE" "${a[@]}" --json --bind none --threads "$THREADS" ${EP_EXTRA[@]+"${EP_EXTRA[@]}"} "$@" >"$WORK/run.json"
  python3 - "$WORK/run.json" "$label" "$phase" "$*" >>"$RAW" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
j["label"], j["phase"], j["args"] = sys.argv[2], sys.argv[3], sys.argv[4]
print(json.dumps(j))
PY
  printf '%-34s %-7s %6.1fs\n' "$label" "$phase" "$(python3 -c 'import sys, time; print(time.time() - float(sys.argv[1]))' "$t0")" >&2
}

SLOT=21   # MiB: one expert, w1 + w3 + w2 (3 x 1024 x 3584 x 2 bytes = 21 MiB exactly)
budgets="32 24 16 8 4 1"          # slots: all, 3/4, 1/2, 2 per layer, 1 per layer, one
[ "$QUICK" = 1 ] && budgets="32 4"

# Warm the page cache so the first point does not pay for reading the file from disk.
cat "$MOE"/*.safetensors >/dev/null

# 1. The curve: throughput mode, then memory mode at each budget (defaults: router prefetch,
#    layer-lru; page release on).
for phase in decode prefill; do
  run "throughput" $phase
  for s in $budgets; do run "memory $s slots" $phase --expert-budget $((s * SLOT)); done
done
# 2. Predictors and policies where they matter: 1 and 2 experts per layer (decode).
pf_budgets="4 8"
[ "$QUICK" = 1 ] && pf_budgets="4"
for s in $pf_budgets; do
  for ev in layer-lru lru; do
    for pf in none router prev-layer prev-token; do
      [ "$ev/$pf" = layer-lru/router ] && continue   # already in the curve
      run "memory $s slots $ev $pf" decode --expert-budget $((s * SLOT)) --expert-evict $ev --expert-prefetch $pf
    done
  done
done
# 3. Page release off: the copies' sources stay resident.
run "memory 4 slots madvise off" decode --expert-budget $((4 * SLOT)) --expert-madvise off

# Timings mean little on a loaded machine: the report states the load it ran under.
LOADAVG="$(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores" python3 "$SRC/bench/offload/report.py" "$RAW" "$OUT" "$SLOT"
if command -v gnuplot >/dev/null; then
  gnuplot -e "csv='$OUT/results.csv'; out='$OUT/offload.png'" "$SRC/bench/offload/plot.gp" && echo "wrote $OUT/offload.png" >&2
else
  echo "gnuplot not found: no plot (results.csv and results.md are complete)" >&2
fi
