#!/usr/bin/env bash
# The GPU check's own plumbing, without a GPU (tests/gpu/gpu_check.sh --cpu-only on this
# build): with one op forced to fail, every other op case still runs and reports, the steps
# after it still run, and the summary and the log are complete.
. "$(dirname "$0")/lib.sh"
OUT=$TMP/out
LLAMOE_WORK=$TMP/work timeout 600 bash "$S/tests/gpu/gpu_check.sh" "$OUT" --cpu-only --build "$B" --force-fail combine \
  --steps ops,copies,ranks --budget 300 >"$TMP/log" 2>&1 || bad "gpu_check.sh exited $?: $(tail -5 "$TMP/log")"
[ -s "$OUT/summary.json" ] && ok "summary.json written" || bad "no summary.json"
tail -n 20 "$OUT/gpu_check.log" | grep -q "gpu_check done" && ok "the log is complete" || bad "the log lacks its end"
cases=$(grep -cvE '^\s*(#|$)' "$S/tests/data/ops_cases.txt")
python3 - "$OUT/summary.json" "$cases" >"$TMP/check" 2>&1 <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
steps = {x["step"]: x["status"] for x in s["steps"]}
ops = s["results"]["ops"]
want = int(sys.argv[2])
failed = sorted({c["op"] for c in ops["cases"] if not c["ok"]})
ran = [c for c in ops["cases"] if c["op"] != "invariance"]
problems = []
if steps.get("ops") != "fail": problems.append(f"ops step {steps.get('ops')}, expected fail")
if failed != ["combine"]: problems.append(f"failed ops {failed}, expected only combine")
if len(ran) != want: problems.append(f"{len(ran)} op cases reported, the table has {want}")
for name in ("copies", "ranks"):
    if steps.get(name) != "ok": problems.append(f"{name} step {steps.get(name)} after the failing one")
if steps.get("perf8b") != "skipped": problems.append("a step outside --steps ran")
print("; ".join(problems) or f"ops: {len(ran)} cases reported, only combine failed; later steps ok")
sys.exit(1 if problems else 0)
PY
if [ $? -eq 0 ]; then ok "$(cat "$TMP/check")"; else bad "$(cat "$TMP/check")"; fi
finish
