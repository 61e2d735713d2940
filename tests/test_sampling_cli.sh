#!/usr/bin/env bash
# llamoe-ep's sampling flags on the bundled model: --seed makes sampled tokens reproducible
# (same seed, same tokens; another seed, other tokens), and --temp 0 is greedy whatever the
# seed and --top-p: exactly the greedy ids of models/stories260k/expected.json (llama2.c run.c).
# The distribution itself is tested by test_sampling.
. "$(dirname "$0")/lib.sh"
IDS=1,403,407,261,378   # expected.json case 0, "Once upon a time"
EP="$B/llamoe-ep"

run() {   # run NAME ARGS...: generated ids of one run into $TMP/NAME
  local name=$1; shift
  if "$EP" --ids $IDS -n 24 --json "$@" >"$TMP/$name.json" 2>"$TMP/$name.err"; then
    json_field "$TMP/$name.json" generated_ids >"$TMP/$name"
  else
    bad "llamoe-ep $*: $(head -c 300 "$TMP/$name.err")"
    echo "failed: $*" >"$TMP/$name"
  fi
}

for mode in dense upcycle:8:2; do
  run a --moe $mode --temp 1 --top-p 0.9 --seed 5
  run b --moe $mode --temp 1 --top-p 0.9 --seed 5
  run c --moe $mode --temp 1 --top-p 0.9 --seed 6
  if cmp -s "$TMP/a" "$TMP/b"; then ok "$mode --temp 1 --top-p 0.9: --seed 5 twice gives the same tokens"
  else bad "$mode: --seed 5 twice gives other tokens: $(cat "$TMP/a") vs $(cat "$TMP/b")"; fi
  if ! cmp -s "$TMP/a" "$TMP/c"; then ok "$mode: --seed 6 gives other tokens than --seed 5"
  else bad "$mode: --seed 5 and --seed 6 give the same tokens: $(cat "$TMP/a")"; fi

  python3 -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["cases"][0]["greedy_ids"][:24]))' \
    "$MODEL/expected.json" >"$TMP/greedy"
  run g1 --moe $mode --temp 0 --seed 5
  run g2 --moe $mode --temp 0 --seed 6 --top-p 0.5
  if cmp -s "$TMP/g1" "$TMP/greedy" && cmp -s "$TMP/g2" "$TMP/greedy"; then
    ok "$mode --temp 0: llama2.c's greedy tokens, whatever --seed and --top-p"
  else
    bad "$mode --temp 0: $(cat "$TMP/g1") / $(cat "$TMP/g2"), want $(cat "$TMP/greedy")"
  fi
  if ! cmp -s "$TMP/a" "$TMP/greedy"; then ok "$mode --temp 1 samples (not the greedy tokens)"
  else bad "$mode --temp 1 gave exactly the greedy tokens"; fi
done
finish
