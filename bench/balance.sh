#!/usr/bin/env bash
# Expert load balancing on the bundled model: for production:16:2 and production:8:2, the
# load profile of a batch of 16 prompts (one rank), then the same batch on 2, 3 and 4 ranks
# with the contiguous placement, with balanced placements of R = 0, P and 2P redundant
# experts made from that profile, and with rebalancing every 8 steps (R = P, starting from
# the same load for every expert). Every run's logits are compared with the one-rank run's
# (bitwise); the rank imbalance of each layer (max / mean of the pairs each rank's experts
# computed, over the run and step by step) is read from the JSON report, and the imbalance
# each placement promises on the profile from build/bench_balance.
#   bench/balance.sh [BUILD_DIR] [OUT_DIR]     (default build, docs/bench/balance)
# Writes OUT_DIR/balance.json (every run's figures) and OUT_DIR/balance.md (the table), with
# the load profiles and bench_balance's expectations beside them. About 2 minutes on 2 cores.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
B=$(cd "${1:-$SRC/build}" && pwd)
OUT=${2:-$SRC/docs/bench/balance}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cd "$SRC"                      # the model by its path in the repository (files name it)
MODEL=models/stories260k
N_NEW=32
cat >"$TMP/prompts" <<'EOF'
Once upon a time
The cat sat
Lily and Ben went to the park
One day, a little boy named Tim
There was a big red ball
The sun was shining and the birds
Mom said it was time for bed
A small dog found a bone
Sara liked to draw pictures of
In the garden there was a tree
The old man walked to the shop
Tom and his sister saw a frog
It was a cold and rainy day
The princess looked out of the window
A little bird could not fly
Max wanted to build a big tower
EOF
ep() { local np=$1; shift; timeout 900 mpirun --oversubscribe -np "$np" "$B/llamoe-ep" -m $MODEL --prompts "$TMP/prompts" -n $N_NEW --json "$@"; }
runs="$TMP/runs.jsonl"
: >"$runs"
record() {   # mode P placement R file logits
  python3 - "$1" "$2" "$3" "$4" "$5" "$6" "$TMP/ref-$1" "$(uptime | sed 's/.*load average: //')" >>"$runs" <<'PY'
import json, sys, filecmp
mode, P, placement, R, path, logits, ref, load = sys.argv[1:]
j = json.load(open(path))
b = j["balance"]
print(json.dumps({"mode": mode, "ranks": int(P), "placement": placement, "redundant": int(R),
                  "imbalance_worst_layer": b["imbalance_worst_layer"], "imbalance_mean": b["imbalance_mean"],
                  "step_imbalance_worst_layer": b["step_imbalance_worst_layer"], "step_imbalance_mean": b["step_imbalance_mean"],
                  "layers": [{k: l[k] for k in ("rank_pairs", "imbalance", "step_imbalance", "worst_step_imbalance")} for l in b["layers"]],
                  "bytes_sent": j["bytes_sent"], "forward_s_max_rank": j["per_rank_max"]["forward_s"],
                  "experts_s_max_rank": j["per_rank_max"]["experts_s"], "combine_s_max_rank": j["per_rank_max"]["combine_s"],
                  "steps": j["timings"]["steps"], "rebalance": j.get("rebalance"),
                  "logits_bitwise": filecmp.cmp(logits, ref, shallow=False), "load_average": load}))
PY
}

for mode in production:16:2 production:8:2; do
  echo "balance: $mode, profile on one rank" >&2
  ep 1 --moe "$mode" --write-load-profile "$OUT/profile-${mode//:/_}.json" --dump-logits "$TMP/ref-$mode" >"$TMP/j" 2>"$TMP/err" ||
    { cat "$TMP/err" >&2; exit 1; }
  record "$mode" 1 contiguous 0 "$TMP/j" "$TMP/ref-$mode"
  "$B/bench_balance" -m "$MODEL" --load-profile "$OUT/profile-${mode//:/_}.json" --ranks 2,3,4,8 --redundant 0,P,2P \
    --json "$OUT/expected-${mode//:/_}.json" >/dev/null
  for P in 2 3 4; do
    echo "balance: $mode on $P ranks" >&2
    ep $P --moe "$mode" --dump-logits "$TMP/l" >"$TMP/j" 2>"$TMP/err" || { cat "$TMP/err" >&2; exit 1; }
    record "$mode" $P contiguous 0 "$TMP/j" "$TMP/l"
    for R in 0 $P $((2 * P)); do
      ep $P --moe "$mode" --placement balanced --redundant-experts $R --load-profile "$OUT/profile-${mode//:/_}.json" \
        --dump-logits "$TMP/l" >"$TMP/j" 2>"$TMP/err" || { cat "$TMP/err" >&2; exit 1; }
      record "$mode" $P balanced $R "$TMP/j" "$TMP/l"
    done
    ep $P --moe "$mode" --placement balanced --redundant-experts $P --rebalance 8 --dump-logits "$TMP/l" >"$TMP/j" 2>"$TMP/err" ||
      { cat "$TMP/err" >&2; exit 1; }
    record "$mode" $P rebalance-8 $P "$TMP/j" "$TMP/l"
  done
done

# The machine as the figures name it (MACHINE overrides what /proc/cpuinfo says).
machine=${MACHINE:-"$(nproc)-core $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"}
python3 - "$runs" "$OUT" "$(nproc)" "$machine" <<'PY'
import glob, json, os, sys, time
runs = [json.loads(l) for l in open(sys.argv[1])]
out, cores, cpu = sys.argv[2], sys.argv[3], sys.argv[4]
expected = {}
for f in glob.glob(os.path.join(out, "expected-*.json")):
    mode = os.path.basename(f)[len("expected-"):-len(".json")].replace("_", ":")
    for p in json.load(open(f))["points"]:
        expected[(mode, p["ranks"], p["redundant"])] = p
json.dump({"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cores": int(cores), "machine": cpu, "runs": runs,
           "expected": [dict(mode=k[0], **v) for k, v in sorted(expected.items())]},
          open(os.path.join(out, "balance.json"), "w"), indent=1)
loads = [float(r["load_average"].split(",")[0]) for r in runs]
L = [f"Measured by `bench/balance.sh` on {time.strftime('%Y-%m-%d')}: {cpu}, shared with other work "
     f"(1-minute load average {min(loads):.1f} to {max(loads):.1f} during the runs; each run's in balance.json); "
     "16 prompts, 32 new tokens each, the bundled stories260k model. Step times are the slowest rank's, per step; "
     "P = 3 and 4 are oversubscribed, and all of them are noisy here: they are not speed figures.", ""]
L.append("| mode | P | placement | R | expected worst / mean | measured worst / mean | step by step worst / mean | MB sent | step ms | logits |")
L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for r in runs:
    if r["ranks"] == 1:
        continue
    e = expected.get((r["mode"], r["ranks"], r["redundant"]))
    if r["placement"] == "contiguous":
        e = expected.get((r["mode"], r["ranks"], 0))
        exp = f'{max(e["contiguous"]):.3f} / {sum(e["contiguous"]) / len(e["contiguous"]):.3f}' if e else ""
    elif r["placement"] == "balanced" and e:
        exp = f'{max(e["balanced"]):.3f} / {sum(e["balanced"]) / len(e["balanced"]):.3f}'
    else:
        exp = "–"
    reb = r.get("rebalance")
    place = r["placement"] + (f' ({reb["experts_moved"]} moved)' if reb else "")
    L.append(f'| {r["mode"]} | {r["ranks"]} | {place} | {r["redundant"]} | {exp} | '
             f'{r["imbalance_worst_layer"]:.3f} / {r["imbalance_mean"]:.3f} | '
             f'{r["step_imbalance_worst_layer"]:.3f} / {r["step_imbalance_mean"]:.3f} | {r["bytes_sent"] / 1e6:.2f} | '
             f'{1e3 * r["forward_s_max_rank"] / max(1, r["steps"]):.2f} | {"bitwise" if r["logits_bitwise"] else "DIFFER"} |')
open(os.path.join(out, "balance.md"), "w").write("\n".join(L) + "\n")
print("\n".join(L))
PY
