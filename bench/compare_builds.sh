#!/usr/bin/env bash
# Two builds of llamoe-ep side by side on the same model and machine: decode and prefill
# tokens/s per MoE mode, the builds interleaved round by round (so load changes hit both),
# medians over the rounds and the ratio new / old. One rank, the same threads for both.
#   bench/compare_builds.sh OLD_BUILD NEW_BUILD MODEL_DIR [--modes dense,upcycle:8:2]
#                           [--rounds 5] [--decode 32] [--prefill 512] [--threads N] [--json FILE]
# MODEL_DIR: for example `llamoe-mkmodel --preset llama3.1-8b --layers 2 --dtype BF16 -o DIR`.
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,8p' "$0"; exit 2; }
old=$1 new=$2 model=$3
shift 3
modes=dense,upcycle:8:2 rounds=5 n_decode=32 n_prefill=512 threads=$(nproc) json=""
while [ $# -gt 0 ]; do
  case $1 in
    --modes) modes=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --decode) n_decode=$2; shift 2 ;;
    --prefill) n_prefill=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --json) json=$2; shift 2 ;;
    *) echo "compare_builds: unknown option $1" >&2; exit 2 ;;
  esac
done
for b in "$old" "$new"; do [ -x "$b/llamoe-ep" ] || { echo "compare_builds: $b/llamoe-ep is missing" >&2; exit 1; }; done
[ -f "$model/config.json" ] || { echo "compare_builds: $model/config.json is missing" >&2; exit 1; }
vocab=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["vocab_size"])' "$model/config.json")
ids=$(python3 -c 'import random,sys; r=random.Random(1); v=int(sys.argv[1]); n=int(sys.argv[2]); print(",".join(str(r.randrange(3, v)) for _ in range(n)))' "$vocab" "$n_prefill")
short=$(echo "$ids" | cut -d, -f1-8)
raw=$(mktemp)
trap 'rm -f "$raw"' EXIT
echo "# compare_builds: old $old, new $new, model $model, $threads threads, $rounds rounds, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for r in $(seq 1 "$rounds"); do
  for mode in ${modes//,/ }; do
    for side in old new; do
      b=$old; [ $side = new ] && b=$new
      dec=$("$b/llamoe-ep" -m "$model" --moe "$mode" --ids "$short" -n "$n_decode" --threads "$threads" --bind none --json)
      pre=$("$b/llamoe-ep" -m "$model" --moe "$mode" --ids "$ids" -n 1 --step-tokens "$n_prefill" --threads "$threads" --bind none --json)
      python3 -c 'import json,sys; d=json.loads(sys.argv[4]); p=json.loads(sys.argv[5]); print(sys.argv[1], sys.argv[2], sys.argv[3], d["timings"]["decode_tok_s"], p["timings"]["prefill_tok_s"])' \
        "$r" "$mode" "$side" "$dec" "$pre" >> "$raw"
    done
  done
  echo "compare_builds: round $r of $rounds done (load $(cut -d' ' -f1 /proc/loadavg))" >&2
done
python3 - "$raw" "$json" "$old" "$new" "$model" "$threads" <<'PY'
import json, statistics, sys
raw, out, old, new, model, threads = sys.argv[1:7]
rows = [l.split() for l in open(raw)]
res = []
print(f"| mode | decode tok/s old | new | new/old | prefill tok/s old | new | new/old |")
print(f"|---|---:|---:|---:|---:|---:|---:|")
for mode in dict.fromkeys(r[1] for r in rows):
    med = {(side, k): statistics.median(float(r[3 + k]) for r in rows if r[1] == mode and r[2] == side)
           for side in ("old", "new") for k in (0, 1)}
    d, p = med[("new", 0)] / med[("old", 0)], med[("new", 1)] / med[("old", 1)]
    print(f"| {mode} | {med[('old', 0)]:.2f} | {med[('new', 0)]:.2f} | {d:.3f} | {med[('old', 1)]:.1f} | {med[('new', 1)]:.1f} | {p:.3f} |")
    res.append({"mode": mode, "decode_tok_s_old": med[("old", 0)], "decode_tok_s_new": med[("new", 0)], "decode_ratio": d,
                "prefill_tok_s_old": med[("old", 1)], "prefill_tok_s_new": med[("new", 1)], "prefill_ratio": p})
if out:
    json.dump({"old": old, "new": new, "model": model, "threads": int(threads), "rounds": len(rows) // max(1, 2 * len(res)),
               "results": res}, open(out, "w"), indent=1)
PY
