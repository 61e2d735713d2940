#!/usr/bin/env bash
# Expert parallelism: 1 rank versus P ranks must give bitwise-identical logits and identical
# tokens (the exact combine sums each token's expert outputs in expert order on its home
# rank), for every MoE mode; a batch of prompts spread over the ranks gives each prompt the
# tokens it gets alone; placement errors are clear.
. "$(dirname "$0")/lib.sh"
IDS=1,403,407,261,378
EP="$B/llamoe-ep"

for mode in upcycle:8:2 identity:8 production:8:2 identity:5 upcycle:6:6; do
  mpi 1 "$EP" --ids $IDS -n 24 --moe "$mode" --dump-logits "$TMP/l1" --json >"$TMP/j1" 2>"$TMP/e1" ||
    { bad "$mode np 1: $(cat "$TMP/e1")"; continue; }
  for np in 2 3 4; do
    if mpi "$np" "$EP" --ids $IDS -n 24 --moe "$mode" --dump-logits "$TMP/l$np" --json >"$TMP/j$np" 2>"$TMP/e$np"; then
      if cmp -s "$TMP/l1" "$TMP/l$np" && [ "$(json_field "$TMP/j1" generated_ids)" = "$(json_field "$TMP/j$np" generated_ids)" ]; then
        ok "$mode: np $np logits bitwise equal to np 1 ($(stat -c %s "$TMP/l1") bytes)"
      else
        bad "$mode: np $np differs from np 1"
      fi
    else
      bad "$mode np $np: $(cat "$TMP/e$np")"
    fi
  done
done

# The same on a synthetic model (BF16, GQA 4:1, llama3 rope, FFN not a multiple of 8):
# np 1 versus np 2, 3 and 4, prompt in chunks of 5 tokens.
"$B/llamoe-mkmodel" -o "$TMP/syn" --hidden 128 --ffn 344 --layers 3 --heads 8 --kv-heads 2 --vocab 700 \
  --max-pos 2048 --rope-llama3 --dtype BF16 --seed 9 >/dev/null 2>&1 || bad "mkmodel synthetic"
SIDS=1,17,230,44,5,600,91,12,8,300,77
for mode in identity:8 upcycle:8:2 production:8:2; do
  mpi 1 "$EP" -m "$TMP/syn" --ids $SIDS -n 20 --moe "$mode" --step-tokens 5 --dump-logits "$TMP/s1" >/dev/null 2>&1
  for np in 2 3 4; do
    mpi "$np" "$EP" -m "$TMP/syn" --ids $SIDS -n 20 --moe "$mode" --step-tokens 5 --dump-logits "$TMP/s$np" >/dev/null 2>"$TMP/err"
    if [ -s "$TMP/s1" ] && cmp -s "$TMP/s1" "$TMP/s$np"; then ok "synthetic $mode: np $np logits bitwise equal to np 1"
    else bad "synthetic $mode: np $np differs from np 1 $(head -c 200 "$TMP/err")"; fi
  done
done

# Data-parallel attention: the expected.json prompts as a batch on 3 ranks, in input order,
# each equal to its own single-prompt run; also with a tiny step budget (chunked prefill).
python3 - "$MODEL/expected.json" "$TMP/prompts.txt" <<'PY'
import json, sys
cases = json.load(open(sys.argv[1]))["cases"]
open(sys.argv[2], "w").write("".join(",".join(map(str, c["prompt_ids"])) + "\n" for c in cases))
PY
for np in 1 3; do
  for step in 256 3; do
    if mpi "$np" "$EP" --prompts "$TMP/prompts.txt" -n 48 --moe upcycle:8:2 --step-tokens $step --json >"$TMP/batch" 2>"$TMP/err"; then
      if python3 - "$MODEL/expected.json" "$TMP/batch" <<'PY'
import json, sys
cases = json.load(open(sys.argv[1]))["cases"]
got = json.load(open(sys.argv[2]))["results"]
assert len(got) == len(cases), (len(got), len(cases))
for c, g in zip(cases, got):
    assert g["prompt_ids"] == c["prompt_ids"], "order"
    assert g["generated_ids"] == c["greedy_ids"], (c["prompt"], g["generated_ids"][:8])
PY
      then ok "batch of 5 prompts on $np rank(s), step budget $step: every prompt gives its expected tokens"
      else bad "batch on $np rank(s), step budget $step: wrong tokens"
      fi
    else
      bad "batch on $np rank(s): $(cat "$TMP/err")"
    fi
  done
done

# Sampling is reproducible and independent of the number of ranks.
mpi 1 "$EP" --ids $IDS -n 16 --temp 0.9 --top-p 0.9 --seed 7 --json >"$TMP/s1" 2>/dev/null
mpi 3 "$EP" --ids $IDS -n 16 --temp 0.9 --top-p 0.9 --seed 7 --json >"$TMP/s3" 2>/dev/null
if [ -s "$TMP/s1" ] && [ "$(json_field "$TMP/s1" generated_ids)" = "$(json_field "$TMP/s3" generated_ids)" ]; then
  ok "seeded sampling: np 1 and np 3 agree"
else
  bad "seeded sampling differs between np 1 and np 3"
fi

# More ranks than experts: a clear error from every rank, non-zero exit.
if mpi 3 "$EP" --ids $IDS --moe identity:2 >"$TMP/out" 2>"$TMP/err"; then
  bad "identity:2 on 3 ranks was accepted"
elif grep -q "cannot place 2 experts on 3 ranks" "$TMP/err"; then
  ok "identity:2 on 3 ranks: $(grep -m1 'cannot place' "$TMP/err")"
else
  bad "identity:2 on 3 ranks: $(cat "$TMP/err")"
fi

# --verbose: each rank reports its binding, experts and memory.
if mpi 3 "$EP" --ids $IDS -n 2 --verbose >"$TMP/out" 2>"$TMP/err" && [ "$(grep -c '; experts [0-9]*\.\.[0-9]* of' "$TMP/err")" -eq 3 ]; then
  ok "--verbose prints one line per rank"
else
  bad "--verbose: $(cat "$TMP/err")"
fi
finish
