#!/usr/bin/env bash
# The bundled model's logits are pinned (tests/data/logits/README.md): dense and every MoE mode
# give bitwise the logits of the committed dumps at 1 and 3 ranks, in memory mode
# (--expert-budget), and with the prompt batched with three others over 3 ranks.
. "$(dirname "$0")/lib.sh"
EP="$B/llamoe-ep"
PINNED="$S/tests/data/logits"
# The default prompt (llamoe-ep's, as in the dumps) first, three others after it.
printf '%s\n' "Once upon a time" "1,403,407,261,378" "The cat sat" "Lily and Ben went to the park" >"$TMP/prompts"

check() {   # name file: compares a dump with the pinned one
  if cmp -s "$2" "$3"; then ok "$1: bitwise equal to the pinned logits"
  else bad "$1: differs from $(basename "$3") ($(cmp "$2" "$3" 2>&1 | head -c 120))"; fi
}

for mode in dense identity:8 upcycle:8:2 production:8:2; do
  ref="$PINNED/${mode//:/_}.f32"
  [ -s "$ref" ] || { bad "$mode: $ref missing"; continue; }
  mpi 1 "$EP" --moe "$mode" -n 24 --dump-logits "$TMP/np1" >/dev/null 2>"$TMP/err" && check "$mode np 1" "$TMP/np1" "$ref" ||
    bad "$mode np 1: $(head -c 300 "$TMP/err")"
  mpi 3 "$EP" --moe "$mode" -n 24 --dump-logits "$TMP/np3" >/dev/null 2>"$TMP/err" && check "$mode np 3" "$TMP/np3" "$ref" ||
    bad "$mode np 3: $(head -c 300 "$TMP/err")"
  mpi 3 "$EP" --moe "$mode" -n 24 --prompts "$TMP/prompts" --dump-logits "$TMP/batch" >/dev/null 2>"$TMP/err" &&
    check "$mode np 3, batch of 4 prompts" "$TMP/batch" "$ref" || bad "$mode batch: $(head -c 300 "$TMP/err")"
  if [ "$mode" != dense ]; then
    mpi 3 "$EP" --moe "$mode" -n 24 --expert-budget 1 --dump-logits "$TMP/bud" >/dev/null 2>"$TMP/err" &&
      check "$mode np 3 --expert-budget 1" "$TMP/bud" "$ref" || bad "$mode budget: $(head -c 300 "$TMP/err")"
  fi
done
finish
