#!/usr/bin/env bash
# Memory mode (--expert-budget) never changes results: for each MoE mode, on 1 and 3 ranks,
# with budgets from "everything" down to one expert, with every prefetch and both eviction
# policies, the logits are bitwise those of throughput mode and the tokens the same; a batch
# with chunked prefill too. File-backed experts give their pages back (madvise), heap ones
# never. Bad budgets are one clear line and a non-zero exit.
. "$(dirname "$0")/lib.sh"
IDS=1,403,407,261,378
EP="$B/llamoe-ep"
L=5   # layers of the bundled model

# Slot size (one expert, MiB) and slot count from a run's JSON.
cache_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["expert_cache"][sys.argv[2]])' "$1" "$2"; }
mib() { python3 -c "import sys; print(repr(float(sys.argv[1]) * float(sys.argv[2])))" "$1" "$2"; }

# A Mixtral-layout checkpoint (experts read straight from the file) to cover MOE_CHECKPOINT.
if "$B/llamoe-convert" -m "$MODEL" --moe production:8:2 -o "$TMP/mixtral" >"$TMP/conv.out" 2>&1; then
  cp "$MODEL/tokenizer.json" "$TMP/mixtral/" 2>/dev/null
  ok "converted the bundled model to a production:8:2 Mixtral checkpoint"
else
  bad "llamoe-convert: $(tail -1 "$TMP/conv.out")"
fi

for mode in production:8:2 upcycle:8:2 identity:8 identity:5 checkpoint; do
  if [ "$mode" = checkpoint ]; then args=(-m "$TMP/mixtral"); else args=(--moe "$mode"); fi
  mpi 1 "$EP" --ids $IDS -n 24 "${args[@]}" --dump-logits "$TMP/ref" --json >"$TMP/ref.json" 2>"$TMP/err" ||
    { bad "$mode throughput mode: $(cat "$TMP/err")"; continue; }
  for np in 1 3; do
    # Everything resident (a budget far above the experts) tells the slot size.
    mpi "$np" "$EP" --ids $IDS -n 24 "${args[@]}" --expert-budget 100000 --dump-logits "$TMP/all" --json >"$TMP/all.json" 2>"$TMP/err" ||
      { bad "$mode np $np budget all: $(cat "$TMP/err")"; continue; }
    slot=$(cache_field "$TMP/all.json" slot_mib)
    slots=$(cache_field "$TMP/all.json" slots)   # over all ranks: every expert of every layer
    cmp -s "$TMP/ref" "$TMP/all" && ok "$mode np $np budget above all experts ($slots slots): logits bitwise equal" ||
      bad "$mode np $np budget above all experts: logits differ from throughput mode"
    per_rank=$(( (slots + np - 1) / np ))
    one_per_layer=$(mib "$slot" $L)
    budgets="$(mib "$slot" "$per_rank") $(mib "$slot" $((per_rank / 2))) $one_per_layer $(mib "$slot" 2) $slot"
    for budget in $budgets; do
      for pf in router none prev-layer prev-token; do
        for ev in layer-lru lru; do
          # Every prefetch and policy at the small budgets on one rank, for the modes whose
          # experts differ (production, checkpoint); the defaults everywhere else.
          full=0
          case "$mode" in production:*|checkpoint) [ "$np" = 1 ] && [ "$budget" = "$slot" -o "$budget" = "$one_per_layer" ] && full=1 ;; esac
          if [ "$pf/$ev" != router/layer-lru ] && [ $full = 0 ]; then continue; fi
          out="$TMP/l.$np.$pf.$ev"
          if mpi "$np" "$EP" --ids $IDS -n 24 "${args[@]}" --expert-budget "$budget" --expert-prefetch $pf --expert-evict $ev \
                --dump-logits "$out" --json >"$out.json" 2>"$TMP/err"; then
            if cmp -s "$TMP/ref" "$out" && [ "$(json_field "$TMP/ref.json" generated_ids)" = "$(json_field "$out.json" generated_ids)" ]; then
              ok "$mode np $np budget $(printf %.4f "$budget") MiB ($(cache_field "$out.json" slots) slots, $ev, prefetch $pf): logits bitwise equal"
            else
              bad "$mode np $np budget $budget $pf $ev: logits or tokens differ from throughput mode"
            fi
          else
            bad "$mode np $np budget $budget $pf $ev: $(cat "$TMP/err")"
          fi
        done
      done
    done
    # Page release: file-backed experts (views of the checkpoint) give pages back; production
    # experts live on the heap and must not (MADV_DONTNEED would zero them).
    if [ "$np" = 1 ]; then
      mpi 1 "$EP" --ids $IDS -n 24 "${args[@]}" --expert-budget "$slot" --json >"$TMP/rel.json" 2>/dev/null
      released=$(cache_field "$TMP/rel.json" bytes_released)
      case "$mode" in
        production:*) [ "$released" = 0 ] && ok "$mode: heap experts never released" || bad "$mode: released $released bytes of heap experts" ;;
        *) [ "$released" -gt 0 ] && ok "$mode: $released bytes of checkpoint pages released after copies" || bad "$mode: no pages released" ;;
      esac
    fi
  done
done

# A batch of prompts on 3 ranks with a tiny step budget (chunked prefill, several sequences
# per step) at one expert per rank: the same tokens as throughput mode.
python3 - "$MODEL/expected.json" "$TMP/prompts.txt" <<'PY'
import json, sys
cases = json.load(open(sys.argv[1]))["cases"]
open(sys.argv[2], "w").write("".join(",".join(map(str, c["prompt_ids"])) + "\n" for c in cases))
PY
mpi 3 "$EP" --prompts "$TMP/prompts.txt" -n 32 --moe production:8:2 --step-tokens 3 --json >"$TMP/b0" 2>"$TMP/err"
mpi 3 "$EP" --prompts "$TMP/prompts.txt" -n 32 --moe production:8:2 --step-tokens 3 --json --expert-budget 0.13 \
  --expert-prefetch prev-token >"$TMP/b1" 2>>"$TMP/err"
if [ -s "$TMP/b0" ] && [ -s "$TMP/b1" ] && [ "$(json_field "$TMP/b0" results)" = "$(json_field "$TMP/b1" results)" ]; then
  ok "batch of 5 prompts, 3 ranks, step budget 3, one expert per rank: same tokens as throughput mode"
else
  bad "batch in memory mode differs: $(cat "$TMP/err")"
fi

# Bad input: one line naming the flag and the sizes, non-zero exit, on 1 and 3 ranks.
expect_error() {   # np, pattern, args...
  local np=$1 pattern=$2; shift 2
  if mpi "$np" "$EP" --ids $IDS -n 2 "$@" >"$TMP/out" 2>"$TMP/err"; then
    bad "np $np $*: accepted"
  elif grep -q -- "$pattern" "$TMP/err"; then
    ok "np $np $*: $(grep -m1 -- "$pattern" "$TMP/err")"
  else
    bad "np $np $*: $(head -3 "$TMP/err")"
  fi
}
for np in 1 3; do
  expect_error $np "^llamoe: .*--expert-budget 0.05 MiB: 0.050 MiB is below one expert (0.129 MiB" --moe production:8:2 --expert-budget 0.05
done
expect_error 1 "^llamoe: --expert-budget 0: expected a size in MiB above 0" --expert-budget 0
expect_error 1 "^llamoe: --expert-budget 12x: expected a size in MiB" --expert-budget 12x
expect_error 1 "^llamoe: --expert-budget -3: expected a size in MiB" --expert-budget -3
expect_error 1 "^llamoe: --expert-prefetch soon: expected none, router, prev-layer or prev-token" --expert-budget 1 --expert-prefetch soon
expect_error 1 "^llamoe: --expert-evict fifo: expected lru or layer-lru" --expert-budget 1 --expert-evict fifo
expect_error 1 "^llamoe: --expert-budget 1: the model runs dense" --moe dense --expert-budget 1
finish
