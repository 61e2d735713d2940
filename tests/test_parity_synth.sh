#!/usr/bin/env bash
# The parity test on a synthetic model with Llama 3.1 8B's proportions (FFN = 3.5 x hidden,
# head_dim 128, GQA 4:1, llama3 rope scaling, BF16 weights), fewer and narrower layers so
# that CI can afford 64 greedy steps per mode. FFN 3584 = 2^9 * 7, like 14336 = 2^11 * 7.
. "$(dirname "$0")/lib.sh"
"$B/llamoe-mkmodel" -o "$TMP/m" --hidden 1024 --ffn 3584 --layers 4 --heads 8 --kv-heads 2 --head-dim 128 \
  --vocab 32000 --max-pos 131072 --rope-llama3 --dtype BF16 --seed 5 >/dev/null 2>&1 || bad "mkmodel"
if "$B/test_parity" "$S" -m "$TMP/m" --steps 64 --ids 1,450,1234,31337,7,99 \
     --modes identity:1,identity:2,identity:4,identity:8,identity:7,identity:12,upcycle:8:2 | tee "$TMP/out"; then
  ok "synthetic 8B-proportioned model: every mode within tolerance, identical greedy tokens"
else
  bad "synthetic 8B-proportioned model parity"
fi
finish
