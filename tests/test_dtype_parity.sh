#!/usr/bin/env bash
# The same synthetic model saved as one F32 file (values rounded to bf16) and as three BF16
# shards with an index must give bitwise-identical logits: weights widen exactly and the
# kernels sum the same way whatever the dtype. Llama 3 rope scaling on, GQA 4:1.
. "$(dirname "$0")/lib.sh"
MK="$B/llamoe-mkmodel"
common="--hidden 256 --ffn 896 --layers 2 --heads 8 --kv-heads 2 --vocab 1000 --max-pos 4096 --rope-llama3 --seed 11"
"$MK" -o "$TMP/f32" $common --dtype F32 --bf16-values >/dev/null 2>&1 || bad "mkmodel F32"
"$MK" -o "$TMP/bf16" $common --dtype BF16 --shards 3 >/dev/null 2>&1 || bad "mkmodel BF16 sharded"
[ -f "$TMP/bf16/model.safetensors.index.json" ] && ok "BF16 model is sharded with an index" || bad "no index file"
for mode in dense identity:8 upcycle:8:2; do
  "$B/llamoe-ep" -m "$TMP/f32" --moe $mode --ids 1,20,300,4,55 -n 24 --dump-logits "$TMP/a" --json >"$TMP/ja" 2>"$TMP/err" || bad "$mode F32: $(cat "$TMP/err")"
  "$B/llamoe-ep" -m "$TMP/bf16" --moe $mode --ids 1,20,300,4,55 -n 24 --dump-logits "$TMP/b" --json >"$TMP/jb" 2>"$TMP/err" || bad "$mode BF16: $(cat "$TMP/err")"
  if [ -s "$TMP/a" ] && cmp -s "$TMP/a" "$TMP/b"; then
    ok "$mode: F32 single file and BF16 3 shards give identical logits ($(stat -c %s "$TMP/a") bytes)"
  else
    bad "$mode: F32 and BF16 logits differ"
  fi
done
# The synthetic init must make greedy decoding meaningful: report the top-1 margins.
python3 - "$TMP/a" 1000 <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read(); V = int(sys.argv[2]); n = len(data) // (4 * V)
margins = []
for r in range(n):
    row = sorted(struct.unpack_from(f"<{V}f", data, 4 * V * r), reverse=True)
    margins.append(row[0] - row[1])
margins.sort()
print(f"top-1 margin over {n} steps: min {margins[0]:.3f}, median {margins[n // 2]:.3f}")
PY
finish
