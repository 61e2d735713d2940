#!/usr/bin/env bash
# llamoe-convert writes Mixtral-layout checkpoints that the runtime loads directly and that
# give exactly the tokens of the on-the-fly conversion; production mode shows uneven loads
# and is reproducible; a Mixtral checkpoint whose experts disagree in shape is refused.
. "$(dirname "$0")/lib.sh"
IDS=1,403,407,261,378
for mode in identity:8 upcycle:8:2 production:8:2 identity:7; do
  if ! "$B/llamoe-convert" -m "$MODEL" --moe $mode -o "$TMP/$mode" 2>"$TMP/err"; then
    bad "convert $mode: $(cat "$TMP/err")"; continue
  fi
  "$B/llamoe-ep" --moe $mode --ids $IDS -n 48 --json --dump-logits "$TMP/fly" >"$TMP/j1" 2>/dev/null
  "$B/llamoe-ep" -m "$TMP/$mode" --ids $IDS -n 48 --json --dump-logits "$TMP/disk" >"$TMP/j2" 2>/dev/null
  if [ "$(json_field "$TMP/j1" generated_ids)" = "$(json_field "$TMP/j2" generated_ids)" ] && [ -s "$TMP/j1" ]; then
    same=$(cmp -s "$TMP/fly" "$TMP/disk" && echo "logits bitwise equal" || echo "logits differ in rounding")
    ok "$mode: converted checkpoint gives the on-the-fly tokens ($same)"
  else
    bad "$mode: converted checkpoint gives other tokens"
  fi
  # The converted checkpoint is expert-parallel like any other.
  mpi 3 "$B/llamoe-ep" -m "$TMP/$mode" --ids $IDS -n 48 --json >"$TMP/j3" 2>/dev/null
  [ "$(json_field "$TMP/j2" generated_ids)" = "$(json_field "$TMP/j3" generated_ids)" ] &&
    ok "$mode: converted checkpoint on 3 ranks gives the same tokens" || bad "$mode: 3 ranks differ"
done
# identity:8 and upcycle:8:2 must be exact: same logits bit for bit (E a power of two).
for mode in identity:8 upcycle:8:2; do
  "$B/llamoe-ep" --moe $mode --ids $IDS -n 16 --dump-logits "$TMP/a" >/dev/null 2>&1
  "$B/llamoe-ep" -m "$TMP/$mode" --ids $IDS -n 16 --dump-logits "$TMP/b" >/dev/null 2>&1
  cmp -s "$TMP/a" "$TMP/b" && ok "$mode: converted logits bitwise equal to on-the-fly" || bad "$mode: converted logits differ"
done

# production:8:2: uneven expert loads, same seed -> same tokens, other seed -> other routing.
"$B/llamoe-ep" --moe production:8:2 --ids $IDS -n 48 --stats --json >"$TMP/p1" 2>/dev/null
"$B/llamoe-ep" --moe production:8:2 --ids $IDS -n 48 --stats --json >"$TMP/p2" 2>/dev/null
"$B/llamoe-ep" --moe production:8:2 --ids $IDS -n 48 --stats --json --seed 99 >"$TMP/p3" 2>/dev/null
python3 - "$TMP/p1" "$TMP/p2" "$TMP/p3" <<'PY' && ok "production:8:2: uneven loads, reproducible with a seed, seed-dependent" || bad "production:8:2 stats"
import json, sys
a, b, c = (json.load(open(p)) for p in sys.argv[1:])
assert a["generated_ids"] == b["generated_ids"], "same seed, other tokens"
assert a["tokens_per_expert"] == b["tokens_per_expert"]
assert a["tokens_per_expert"] != c["tokens_per_expert"], "routing ignores the seed"
worst = max(max(l) * len(l) / sum(l) for l in a["tokens_per_expert"])
print(f"production:8:2 worst layer imbalance (max/mean) {worst:.2f}")
assert worst > 1.2, worst
PY

# A Mixtral checkpoint whose expert tensors disagree in shape: expert 3's w1 loses a row.
python3 - "$TMP/upcycle:8:2/model.safetensors" "$TMP/bad.safetensors" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n]); data = raw[8 + n:]
meta = hdr.pop("__metadata__", None)
out, blobs, off = {}, [], 0
for name, t in sorted(hdr.items(), key=lambda kv: kv[1]["data_offsets"][0]):
    b, e = t["data_offsets"]; blob = data[b:e]
    if name == "model.layers.1.block_sparse_moe.experts.3.w1.weight":
        t["shape"][0] -= 1; blob = blob[: len(blob) - t["shape"][1] * 4 * (1 if t["dtype"] == "F32" else 0) - t["shape"][1] * 2 * (t["dtype"] != "F32")]
    t["data_offsets"] = [off, off + len(blob)]; off += len(blob); blobs.append(blob); out[name] = t
if meta: out["__metadata__"] = meta
h = json.dumps(out).encode(); h += b" " * (-len(h) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
PY
cp -r "$TMP/upcycle:8:2" "$TMP/badmix" && mv "$TMP/bad.safetensors" "$TMP/badmix/model.safetensors"
if "$B/llamoe-ep" -m "$TMP/badmix" --ids $IDS -n 2 >"$TMP/out" 2>"$TMP/err"; then
  bad "mismatched expert shapes accepted"
elif grep -q "experts.3.w1.weight" "$TMP/err" && [ "$(wc -l <"$TMP/err")" -eq 1 ]; then
  ok "mismatched expert shape: $(cat "$TMP/err")"
else
  bad "mismatched expert shape: $(cat "$TMP/err")"
fi
# --moe on a Mixtral checkpoint is refused; an existing output directory is not overwritten.
"$B/llamoe-ep" -m "$TMP/identity:8" --moe upcycle:8:2 --ids $IDS >/dev/null 2>"$TMP/err" && bad "--moe on Mixtral accepted" ||
  { grep -q "cannot be applied to a Mixtral checkpoint" "$TMP/err" && ok "--moe on a Mixtral checkpoint refused" || bad "$(cat "$TMP/err")"; }
"$B/llamoe-convert" -m "$MODEL" --moe identity:8 -o "$TMP/identity:8" 2>"$TMP/err" && bad "convert overwrote a directory" ||
  { grep -q "already exists" "$TMP/err" && ok "convert refuses to overwrite" || bad "$(cat "$TMP/err")"; }
# The tokenizer's files travel with the weights (transformers and llama.cpp read all three);
# --force replaces an earlier output.
"$B/llamoe-mkmodel" -o "$TMP/tokm" --tokenizer "$MODEL/tokenizer.json" >/dev/null 2>&1 || bad "mkmodel with a tokenizer"
for run in first again; do
  "$B/llamoe-convert" -m "$TMP/tokm" --moe upcycle:4:2 -o "$TMP/tokc" --force 2>"$TMP/err" || bad "convert ($run): $(cat "$TMP/err")"
done
same=ok
for f in tokenizer.json tokenizer_config.json special_tokens_map.json generation_config.json; do
  cmp -s "$TMP/tokm/$f" "$TMP/tokc/$f" || same="$f differs or is missing"
done
[ "$same" = ok ] && ok "tokenizer, its config and special tokens map copied" || bad "$same"
# Bad numbers: one line naming the flag and the value, nothing written.
bad_args() {   # EXPECTED, then the arguments
  local want=$1; shift
  if "$B/llamoe-convert" -m "$MODEL" -o "$TMP/never" "$@" >"$TMP/out" 2>"$TMP/err"; then bad "$*: exited 0"
  elif [ "$(wc -l <"$TMP/err")" = 1 ] && grep -qF -- "$want" "$TMP/err" && [ ! -e "$TMP/never" ]; then ok "$*: $(cat "$TMP/err")"
  else bad "$*: $(cat "$TMP/err") (wanted '$want')"; fi
}
bad_args "--seed: expected an integer in [0, 18446744073709551615], got '12abc'" --moe upcycle:8:2 --seed 12abc
bad_args "--seed: expected an integer" --moe upcycle:8:2 --seed -1
bad_args "--seed: expected an integer" --moe upcycle:8:2 --seed ""
bad_args "--drop: expected a number in [0, 1], got '1.5x'" --moe production:8:2 --drop 1.5x
bad_args "--drop: expected a number in [0, 1], got '-0.1'" --moe production:8:2 --drop -0.1
bad_args "--shard-gb: expected a number in (0, 1e+06], got '0'" --moe upcycle:8:2 --shard-gb 0
bad_args "--frobnicate: unknown option" --moe upcycle:8:2 --frobnicate
bad_args "--moe: missing value" --moe
ls "$TMP" | grep -q '\.tmp\.' && bad "temporary directories left behind" || ok "no temporary directories left"
finish
