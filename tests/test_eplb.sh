#!/usr/bin/env bash
# Expert load balancing never changes a logit: with a balanced placement (redundant copies of
# the heavy experts, from a measured load profile) and with rebalancing every few steps
# (experts moving between ranks while generating, every arrival checked against the local
# build), at 1, 2 and 3 ranks (3 does not divide 8 + 2 slots), in upcycle, production, a
# converted Mixtral checkpoint and memory mode, the logits are bitwise the pinned ones
# (tests/data/logits). The balanced placement lowers the ranks' imbalance on the profile it
# was made from; --write-load-profile writes what --stats counts; the placement is in the
# JSON report and --verbose; bad profiles and placements are one line before any step.
. "$(dirname "$0")/lib.sh"
EP="$B/llamoe-ep"
PINNED="$S/tests/data/logits"
printf '%s\n' "Once upon a time" "1,403,407,261,378" "The cat sat" "Lily and Ben went to the park" >"$TMP/prompts"

check() {   # name produced expected
  if [ -s "$2" ] && cmp -s "$2" "$3"; then ok "$1: logits bitwise equal"
  else bad "$1: logits differ ($(cmp "$2" "$3" 2>&1 | head -c 120))"; fi
}
field() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): d=d[k]
print(d)' "$1" "$2"; }

# A Mixtral-layout checkpoint (experts read from the file) for the checkpoint mode.
"$B/llamoe-convert" -m "$MODEL" --moe production:8:2 -o "$TMP/mixtral" >/dev/null 2>"$TMP/err" ||
  bad "llamoe-convert: $(cat "$TMP/err")"
cp "$MODEL/tokenizer.json" "$TMP/mixtral/"
mpi 1 "$EP" -m "$TMP/mixtral" -n 24 --dump-logits "$TMP/mixtral.f32" >/dev/null 2>&1 || bad "mixtral reference run"

for mode in upcycle:8:2 production:8:2 mixtral; do
  if [ "$mode" = mixtral ]; then args=(-m "$TMP/mixtral"); ref="$TMP/mixtral.f32"
  else args=(--moe "$mode"); ref="$PINNED/${mode//:/_}.f32"; fi
  # The load profile of a batch of prompts, then the same prompt with placements made from it.
  mpi 1 "$EP" "${args[@]}" -n 24 --prompts "$TMP/prompts" --write-load-profile "$TMP/prof.json" --stats --json \
    >"$TMP/stats.json" 2>"$TMP/err" || { bad "$mode profile run: $(head -c 300 "$TMP/err")"; continue; }
  # One rank has nothing to move: the balanced placement and the rebalancing in one run.
  mpi 1 "$EP" "${args[@]}" -n 24 --placement balanced --load-profile "$TMP/prof.json" --rebalance 3 \
    --dump-logits "$TMP/one" >/dev/null 2>"$TMP/err" && check "$mode np 1 balanced, rebalancing every 3 steps" "$TMP/one" "$ref" ||
    bad "$mode np 1 balanced: $(head -c 300 "$TMP/err")"
  for np in 2 3; do
    mpi $np "$EP" "${args[@]}" -n 24 --placement balanced --redundant-experts 2 --load-profile "$TMP/prof.json" \
      --dump-logits "$TMP/bal" >/dev/null 2>"$TMP/err" && check "$mode np $np balanced, 2 copies per layer" "$TMP/bal" "$ref" ||
      bad "$mode np $np balanced: $(head -c 300 "$TMP/err")"
    mpi $np "$EP" "${args[@]}" -n 24 --placement balanced --redundant-experts 2 --rebalance 3 --rebalance-check \
      --dump-logits "$TMP/reb" --json >"$TMP/reb.json" 2>"$TMP/err" &&
      check "$mode np $np rebalancing every 3 steps ($(field "$TMP/reb.json" rebalance.experts_moved) experts moved, each checked)" "$TMP/reb" "$ref" ||
      bad "$mode np $np rebalancing: $(head -c 300 "$TMP/err")"
  done
done

# The profile holds what --stats counted (summed over ranks: the same on 1 and 3 ranks).
python3 - "$TMP/prof.json" "$TMP/stats.json" <<'PY' && ok "--write-load-profile: the tokens per expert of --stats, with the model's shape" || bad "--write-load-profile contents"
import json, sys
p, s = (json.load(open(f)) for f in sys.argv[1:])
assert p["format"] == "llamoe-load-profile" and p["layers"] == 5 and p["experts"] == 8, p
assert p["tokens_per_expert"] == s["tokens_per_expert"]
PY

# Memory mode moves host copies and refreshes the cache; a batch over 3 ranks.
mpi 3 "$EP" --moe production:8:2 -n 24 --expert-budget 0.5 --placement balanced --redundant-experts 3 --rebalance 2 \
  --rebalance-check --dump-logits "$TMP/mem" >/dev/null 2>"$TMP/err" &&
  check "production:8:2 np 3 memory mode, rebalancing every 2 steps" "$TMP/mem" "$PINNED/production_8_2.f32" ||
  bad "memory mode rebalancing: $(head -c 300 "$TMP/err")"
mpi 3 "$EP" --moe upcycle:8:2 -n 24 --prompts "$TMP/prompts" --placement balanced --redundant-experts 4 --rebalance 2 \
  --dump-logits "$TMP/batch" >/dev/null 2>"$TMP/err" &&
  check "upcycle:8:2 np 3 batch of 4 prompts, rebalancing every 2 steps" "$TMP/batch" "$PINNED/upcycle_8_2.f32" ||
  bad "batch rebalancing: $(head -c 300 "$TMP/err")"

# Balance: on the batch whose profile it was made from, production:16:2 on 3 ranks.
mpi 1 "$EP" --moe production:16:2 -n 16 --prompts "$TMP/prompts" --write-load-profile "$TMP/p16.json" >/dev/null 2>&1
mpi 3 "$EP" --moe production:16:2 -n 16 --prompts "$TMP/prompts" --json >"$TMP/c16.json" 2>/dev/null
mpi 3 "$EP" --moe production:16:2 -n 16 --prompts "$TMP/prompts" --placement balanced --redundant-experts 3 \
  --load-profile "$TMP/p16.json" --json --verbose >"$TMP/b16.json" 2>"$TMP/b16.err"
if python3 - "$TMP/c16.json" "$TMP/b16.json" <<'PY'
import json, sys
c, b = (json.load(open(f)) for f in sys.argv[1:])
assert c["results"] == b["results"], "other tokens"
ci, bi = c["balance"]["imbalance_worst_layer"], b["balance"]["imbalance_worst_layer"]
print(f"production:16:2 np 3: worst-layer rank imbalance contiguous {ci:.3f}, balanced with 3 copies {bi:.3f}")
assert bi < ci, (ci, bi)
p = b["placement"]
assert p["format"] == "llamoe-placement" and p["redundant"] == 3 and len(p["slots"]) == 5
assert [len(r) for r in p["slots"][0]] == [7, 6, 6], p["slots"][0]
PY
then ok "balanced placement: lower rank imbalance than contiguous, same tokens; placement in the report"
else bad "balanced placement: no better than contiguous, or report fields missing"; fi
[ "$(grep -c '^ *[0-9]*: .* -> ' "$TMP/b16.err")" -eq 5 ] && ok "--verbose prints the placement of every layer with its imbalance on the profile" ||
  bad "--verbose placement table: $(head -c 300 "$TMP/b16.err")"

# The report's placement read back as a placement file gives the same logits.
python3 -c 'import json,sys; json.dump(json.load(open(sys.argv[1]))["placement"], open(sys.argv[2], "w"))' \
  "$TMP/b16.json" "$TMP/place.json"
mpi 3 "$EP" --moe production:16:2 -n 16 --prompts "$TMP/prompts" --placement "$TMP/place.json" --json >"$TMP/f16.json" 2>"$TMP/err" &&
  [ "$(field "$TMP/f16.json" results)" = "$(field "$TMP/b16.json" results)" ] &&
  [ "$(field "$TMP/f16.json" balance.imbalance_worst_layer)" = "$(field "$TMP/b16.json" balance.imbalance_worst_layer)" ] &&
  ok "--placement FILE (the report's placement) runs as the placement it was" || bad "--placement FILE: $(head -c 300 "$TMP/err")"

# Bad input: one line naming the file and field, non-zero exit, before any step (no logits file).
bad_case() {   # what expected-substring np args...
  local what=$1 want=$2 np=$3; shift 3
  rm -f "$TMP/none"
  if mpi "$np" "$EP" "$@" --dump-logits "$TMP/none" >"$TMP/out" 2>"$TMP/err"; then bad "$what: accepted"
  elif [ -e "$TMP/none" ]; then bad "$what: a logits file was written"
  elif grep -q -- "$want" "$TMP/err"; then ok "$what: $(grep -m1 -- "$want" "$TMP/err")"
  else bad "$what: $(head -c 300 "$TMP/err")"; fi
}
bad_case "profile for another model (16 experts)" "experts is 16, but the model has 8" 3 --moe production:8:2 \
  --placement balanced --load-profile "$TMP/p16.json"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["layers"]=4; d["tokens_per_expert"]=d["tokens_per_expert"][:4]; json.dump(d, open(sys.argv[2], "w"))' \
  "$TMP/prof.json" "$TMP/p4.json"
bad_case "profile with other layers" "layers is 4, but the model has 5" 2 --moe production:8:2 --placement balanced \
  --load-profile "$TMP/p4.json"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["tokens_per_expert"][2][3]=-5; json.dump(d, open(sys.argv[2], "w"))' \
  "$TMP/prof.json" "$TMP/pneg.json"
bad_case "negative count" "tokens_per_expert\[2\]\[3\] is -5" 1 --moe production:8:2 --placement balanced --load-profile "$TMP/pneg.json"
printf '{"format": "llamoe-load-profile", "layers": 5' >"$TMP/trunc.json"
bad_case "truncated profile" "trunc.json: malformed JSON" 1 --moe production:8:2 --placement balanced --load-profile "$TMP/trunc.json"
python3 - "$TMP/place.json" "$TMP/lost.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
ranks = d["slots"][1]
alone = next(e for e in range(16) if sum(r.count(e) for r in ranks) == 1)   # an expert with one slot
r = next(i for i, rs in enumerate(ranks) if alone in rs)
other = next(e for e in range(16) if e != alone and e not in ranks[r])
ranks[r][ranks[r].index(alone)] = other                                       # ... now gone
json.dump(d, open(sys.argv[2], "w"))
PY
bad_case "placement that loses an expert" "lost.json: layer 1: expert [0-9]* has no slot (the placement loses it)" 3 \
  --moe production:16:2 --placement "$TMP/lost.json"
bad_case "placement for 3 ranks on 2" "ranks is 3, but the job has 2 ranks" 2 --moe production:16:2 --placement "$TMP/place.json"
bad_case "too many copies" "at most 8 (one copy of each expert per rank)" 2 --moe upcycle:8:2 --placement balanced --redundant-experts 9
bad_case "copies without balancing" "--redundant-experts 2: copies are placed by --placement balanced" 1 --moe upcycle:8:2 --redundant-experts 2
bad_case "profile without balancing" "only --placement balanced reads a load profile" 1 --moe upcycle:8:2 --load-profile "$TMP/prof.json"
bad_case "missing placement file" "nosuch.json" 1 --moe upcycle:8:2 --placement "$TMP/nosuch.json"
bad_case "dense model" "the model runs dense" 1 --moe dense --rebalance 4
finish
