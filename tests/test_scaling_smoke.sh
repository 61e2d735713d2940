#!/usr/bin/env bash
# bench/scaling.py --quick: the files are produced and well-formed (CSV and JSON parse, the
# expected columns and keys are there, every MoE point with P > 1 moved bytes), the link model
# is sourced and validated, --remodel keeps the measured file. PNGs are checked only when
# gnuplot is installed. No timing is asserted.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
OUT="$TMP/scaling"

# llamoe-ep --warmup (added for this benchmark): same tokens as without it, and the JSON has
# the step count, the per-rank minimum and the dispatch/rows traffic split.
mpi 2 "$B/llamoe-ep" --ids 1,403,407 -n 6 --json >"$TMP/w0" 2>&1 &&
  mpi 2 "$B/llamoe-ep" --ids 1,403,407 -n 6 --warmup 3 --json >"$TMP/w3" 2>&1 || true
if python3 - "$TMP/w0" "$TMP/w3" <<'PY'
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
assert a["generated_ids"] == b["generated_ids"], "tokens differ with --warmup"
assert b["timings"]["steps"] == 6 and b["timings"]["decode_tokens"] == 5, b["timings"]
for k in ("dispatch_bytes_sent", "rows_sent", "rows_recv"):
    assert k in b["per_rank_min"] and k in b["per_rank_max"], k
assert b["per_rank_min"]["forward_s"] <= b["per_rank_max"]["forward_s"]
PY
then ok "llamoe-ep --warmup: same tokens, statistics of the timed run only"
else bad "llamoe-ep --warmup: $(head -c 300 "$TMP/w3")"
fi

if timeout 120 "$S/bench/scaling.py" --quick --out "$OUT" --build "$B" >"$TMP/log" 2>&1; then
  ok "bench/scaling.py --quick ran ($(grep -o 'done in [0-9]* s' "$TMP/log"))"
else
  bad "bench/scaling.py --quick failed: $(tail -5 "$TMP/log")"
fi

for f in scaling.csv scaling.json model.csv model.json scaling.md; do
  if [ -s "$OUT/$f" ]; then ok "$f written"; else bad "$f missing or empty"; fi
done

if python3 - "$OUT" <<'PY'
import csv, json, sys
out = sys.argv[1]
rows = list(csv.DictReader(open(f"{out}/scaling.csv")))
need = ["phase", "load", "ranks", "mode", "cores_per_rank", "oversubscribed", "step_ms", "tok_s",
        "attention_ms", "router_ms", "dispatch_ms", "experts_ms", "combine_ms", "bytes_sent_rank",
        "bytes_recv_rank", "expert_imbalance", "rank_imbalance", "peak_rss_mb"]
missing = [c for c in need if c not in rows[0]]
assert not missing, f"scaling.csv lacks {missing}"
assert {r["phase"] for r in rows} == {"decode", "prefill"}, "both phases"
assert {r["mode"] for r in rows} >= {"dense", "identity:8", "upcycle:8:2", "production:8:2"}, "all modes"
for r in rows:
    float(r["step_ms"]), float(r["tok_s"])
    if r["mode"] != "dense" and int(r["ranks"]) > 1:
        assert float(r["bytes_sent_rank"]) > 0, f"no traffic: {r}"
j = json.load(open(f"{out}/scaling.json"))
assert len(j["points"]) == len(rows) and j["meta"]["machine"]["cores"] >= 1
m = json.load(open(f"{out}/model.json"))
assert m["model"]["label"] == "MODELLED" and "alpha_s" in m["model"]["cpu_fit"]
preds = list(csv.DictReader(open(f"{out}/model.csv")))
assert preds and max(int(p["ranks"]) for p in preds) == 64, "predictions up to P = 64"
assert all(p["label"] == "MODELLED" for p in preds)
for c in ("cpu_step_ms", "cpu_efficiency", "h100_8b_step_ms", "h100_8b_a2a_reduced_ms", "h100_8b_a2a_host_ms",
          "h100_8b_a2a_device_bf16_ms", "h100_8b_a2a_fixed_ms", "h100_8b_bytes_busiest_step"):
    assert c in preds[0], c
PY
then ok "CSV and JSON parse with the expected columns; predictions reach P = 64, labelled MODELLED"
else bad "CSV/JSON content"
fi

# The links come from bench/published_a2a.json: every constant and point is sourced, the
# validation covers NCCL and DeepEP inside and across nodes, every miss says why, and the two
# data paths are both computed with the headline one named.
if python3 - "$OUT" <<'PY'
import json, sys
m = json.load(open(f"{sys.argv[1]}/model.json"))["model"]
pub, val = m["published"], m["validation"]
for name, c in pub["constants"].items():
    assert pub["sources"][c["source"]]["url"].startswith("https://"), name
    assert c["hardware"] and c["message"] and c["measured"], name
assert {v["role"] for v in val} == {"fit", "check"}
libs = {(v["library"].split()[0], v["ranks"] > 8) for v in val if v["role"] == "check"}
assert {("NCCL", False), ("NCCL", True), ("DeepEP", False), ("DeepEP", True)} <= libs, libs
for v in val:
    assert v["url"].startswith("https://") and v["bytes"] > 0 and v["modelled_s"] > 0, v["id"]
    assert v["within_25"] == (abs(v["rel_err"]) <= 0.25), v["id"]
    assert v["within_25"] or v["gap"], f'{v["id"]}: {100 * v["rel_err"]:+.0f} % and no reason given'
assert m["headline_path"] in m["data_paths"] and {"device", "host"} <= set(m["data_paths"])
assert 0 < m["links"]["a_node"] < m["links"]["a_net"] and m["links"]["b_inter"] < m["links"]["b_intra"]
PY
then ok "links fitted to sourced published points; validation covers NCCL and DeepEP in and across nodes; misses explained"
else bad "published links / validation content"
fi

# A malformed published file is a one-line error naming the file and the field.
python3 - "$S/bench" "$TMP/pub.json" >"$TMP/pub.out" 2>&1 <<'PY'
import json, sys
sys.path.insert(0, sys.argv[1])
import scaling_model as sm
pub = json.load(open(sm.PUBLISHED))
del pub["points"][3]["role"]
json.dump(pub, open(sys.argv[2], "w"))
try:
    sm.load_published(sys.argv[2])
except ValueError as e:
    print(e)
PY
if grep -q "pub.json: points\[3\] (.*): missing field 'role'" "$TMP/pub.out"; then ok "bad published file: $(cat "$TMP/pub.out")"
else bad "bad published file not reported: $(cat "$TMP/pub.out")"
fi

# --remodel redoes the model from the measured JSON and leaves the measured files alone.
sum0=$(md5sum <"$OUT/scaling.json")
if timeout 120 "$S/bench/scaling.py" --remodel --out "$OUT" --docs none >"$TMP/remodel.log" 2>&1 &&
   [ "$(md5sum <"$OUT/scaling.json")" = "$sum0" ] && grep -q "redone from its scaling.json" "$OUT/scaling.md"; then
  ok "--remodel: model redone, scaling.json unchanged"
else
  bad "--remodel: $(tail -3 "$TMP/remodel.log")"
fi

if grep -q "MODELLED" "$OUT/scaling.md" && grep -q "| phase | load | mode | P |" "$OUT/scaling.md" &&
   grep -q "^\*\*Validation.\*\*" "$OUT/scaling.md" && grep -q "host-staged" "$OUT/scaling.md"; then
  ok "markdown section has the measured table, the validation and both data paths"
else
  bad "scaling.md content"
fi

if command -v gnuplot >/dev/null; then
  for f in decode_breakdown.png prefill_breakdown.png bytes.png model_efficiency.png a2a_validation.png; do
    if [ "$(head -c 4 "$OUT/$f" 2>/dev/null | od -An -c | tr -d ' ')" = "211PNG" ]; then ok "$f is a PNG"
    else bad "$f missing or not a PNG"
    fi
  done
else
  echo "skip PNG checks: gnuplot not installed"
fi
finish
