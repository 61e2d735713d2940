#!/usr/bin/env bash
# llamoe-mkmodel: the same seed written as F32 (bf16-representable values, one file) and as
# BF16 (3 shards + index) holds bit-identical weights, whatever the thread count; the values
# have the documented scales; --tokenizer writes files that transformers reads as Llama 3's;
# bad arguments fail with one line and leave nothing.
set -u
mk="$LLAMOE_BUILD/llamoe-mkmodel"
eq="$LLAMOE_BUILD/check_st_equal"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
ok()  { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }

run_ok() {   # name, args...
  local name=$1; shift
  if "$mk" "$@" 2>"$tmp/err"; then ok; else bad "$name: $(cat "$tmp/err")"; fi
}
run_bad() {  # name, expected message substring, args...
  local name=$1 want=$2; shift 2
  if "$mk" "$@" 2>"$tmp/err"; then bad "$name: exited 0"
  elif ! grep -qF -- "$want" "$tmp/err"; then bad "$name: message $(cat "$tmp/err"), wanted $want"
  else ok; fi
}

# Parity: F32 --bf16-values vs BF16 sharded, also with llama3 rope and a tied head.
run_ok f32 -o "$tmp/f32" --dtype F32 --bf16-values --seed 7
run_ok bf16 -o "$tmp/bf16" --dtype BF16 --shards 3 --seed 7
if "$eq" "$tmp/f32" "$tmp/bf16"; then ok; else bad "F32 and BF16 models differ"; fi
[ -f "$tmp/bf16/model.safetensors.index.json" ] && [ -f "$tmp/bf16/model-00003-of-00003.safetensors" ] && ok || bad "shard files"
run_ok f32_tied -o "$tmp/f32t" --dtype F32 --bf16-values --seed 9 --tie --rope-llama3 --layers 3 --hidden 96 --heads 6 --kv-heads 2 --vocab 300
run_ok bf16_tied -o "$tmp/bf16t" --dtype BF16 --shards 5 --seed 9 --tie --rope-llama3 --layers 3 --hidden 96 --heads 6 --kv-heads 2 --vocab 300
if "$eq" "$tmp/f32t" "$tmp/bf16t"; then ok; else bad "tied F32 and BF16 models differ"; fi
grep -q '"rope_type": "llama3"' "$tmp/f32t/config.json" && grep -q '"tie_word_embeddings": true' "$tmp/f32t/config.json" && ok || bad "tied config"

# Without --bf16-values F32 keeps full precision, so the two must differ; another seed differs too.
run_ok f32_full -o "$tmp/f32full" --dtype F32 --seed 7
if "$eq" "$tmp/f32full" "$tmp/bf16" >/dev/null 2>&1; then bad "full-precision F32 equals BF16"; else ok; fi
run_ok seed8 -o "$tmp/seed8" --dtype BF16 --seed 8
if "$eq" "$tmp/seed8" "$tmp/bf16" >/dev/null 2>&1; then bad "seeds 7 and 8 give the same model"; else ok; fi
# Same seed, same bytes.
run_ok again -o "$tmp/f32b" --dtype F32 --bf16-values --seed 7
cmp -s "$tmp/f32/model.safetensors" "$tmp/f32b/model.safetensors" && ok || bad "not reproducible"

# The thread count changes nothing: tensors of many chunks (the embedding: 66M values, 131 MB,
# a shard of its own, so write-behind runs too), 3 shards, 1 and 3 generator threads.
threads_args="--dtype BF16 --shards 3 --seed 4 --layers 1 --hidden 512 --ffn 640 --heads 8 --vocab 128256"
run_ok threads1 -o "$tmp/th1" --threads 1 $threads_args
run_ok threads3 -o "$tmp/th3" --threads 3 $threads_args
same=1
for f in "$tmp"/th1/*; do
  cmp -s "$f" "$tmp/th3/$(basename "$f")" || { same=0; bad "--threads 1 and 3 differ in $(basename "$f")"; }
done
[ "$same" = 1 ] && ok
rm -rf "$tmp/th1" "$tmp/th3"

# The values: every projection has std 1/sqrt(fan_in), the untied embedding 1, the LM head
# 8/sqrt(hidden), norms 1; means near 0, nothing beyond the bound of 2 sqrt(3) std.
if python3 - "$tmp/f32full/model.safetensors" <<'PY' 2>"$tmp/err"; then ok; else bad "value statistics: $(cat "$tmp/err")"; fi
import json, math, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n]); data = raw[8 + n:]
hidden = hdr["model.norm.weight"]["shape"][0]
for name, t in hdr.items():
    if name == "__metadata__": continue
    b, e = t["data_offsets"]
    v = struct.unpack(f"<{(e - b) // 4}f", data[b:e])
    if name.endswith("norm.weight"):
        assert all(x == 1.0 for x in v), name; continue
    want = 1.0 if "embed" in name else 8 / math.sqrt(hidden) if "lm_head" in name else 1 / math.sqrt(t["shape"][1])
    mean = sum(v) / len(v); std = math.sqrt(sum((x - mean) ** 2 for x in v) / len(v))
    assert abs(std / want - 1) < 6 / math.sqrt(len(v)) + 1e-3, (name, std, want)
    assert abs(mean) < 6 * want / math.sqrt(len(v)), (name, mean)
    assert max(abs(x) for x in v) <= 2 * math.sqrt(3) * want * 1.0001, name
PY

# --tokenizer: tokenizer.json copied, tokenizer_config.json and special_tokens_map.json
# written for it with the model's bos and eos and its context length.
run_ok tok -o "$tmp/tok" --tokenizer "$LLAMOE_SRC/models/stories260k/tokenizer.json"
cmp -s "$tmp/tok/tokenizer.json" "$LLAMOE_SRC/models/stories260k/tokenizer.json" && ok || bad "tokenizer copy"
l3tok="$LLAMOE_SRC/models/llama3-tokenizer/tokenizer.json"
run_ok tok_l3 -o "$tmp/tok3" --preset llama3.1-8b --layers 1 --hidden 64 --ffn 128 --heads 4 --kv-heads 1 --dtype BF16 \
  --tokenizer "$l3tok"
if python3 - "$tmp/tok" "$tmp/tok3" <<'PY' 2>"$tmp/err"; then ok; else bad "tokenizer files: $(cat "$tmp/err")"; fi
import json, sys
for d, bos, eos, ctx, chat in ((sys.argv[1], "<s>", "</s>", 512, False),
                               (sys.argv[2], "<|begin_of_text|>", "<|end_of_text|>", 131072, True)):
    c = json.load(open(d + "/tokenizer_config.json")); m = json.load(open(d + "/special_tokens_map.json"))
    assert (c["bos_token"], c["eos_token"], m["bos_token"], m["eos_token"]) == (bos, eos, bos, eos), (d, c["bos_token"], c["eos_token"], m)
    assert c["model_max_length"] == ctx and c["tokenizer_class"] == "PreTrainedTokenizerFast", d
    assert ("chat_template" in c) == chat, d
    assert c["added_tokens_decoder"]["1" if bos == "<s>" else "128000"]["content"] == bos, d
PY
# What a client sees: transformers' AutoTokenizer (when installed) reads the Llama 3 files:
# BOS 128000 and nothing past the 128256-token vocabulary.
if python3 -c 'import transformers' 2>/dev/null; then
  if python3 - "$tmp/tok3" <<'PY' 2>"$tmp/err"; then ok; else bad "AutoTokenizer: $(tail -3 "$tmp/err")"; fi
from transformers import AutoTokenizer
import sys
t = AutoTokenizer.from_pretrained(sys.argv[1])
ids = t("Hello world")["input_ids"]
assert ids == [128000, 9906, 1917], ids
assert len(t) == 128256 and t.bos_token_id == 128000 and t.eos_token_id == 128001, (len(t), t.bos_token_id, t.eos_token_id)
PY
else
  echo "AutoTokenizer check: SKIPPED (no transformers)"
fi
run_ok preset8b -o "$tmp/p8b" --preset llama3.1-8b --layers 1 --hidden 256 --ffn 512 --vocab 1000
for kv in '"num_attention_heads": 32' '"num_key_value_heads": 8' '"head_dim": 8' '"rope_type": "llama3"' \
          '"original_max_position_embeddings": 8192' '"max_position_embeddings": 131072' '"rope_theta": 500000.0'; do
  grep -qF "$kv" "$tmp/p8b/config.json" && ok || bad "8B preset config lacks $kv"
done

# Bad arguments: non-zero exit, a message, and no directory or temporary left behind.
run_bad exists "already exists" -o "$tmp/f32"
run_ok force -o "$tmp/f32" --force --seed 3
run_bad no_out "-o DIR is required"
run_bad zero_hidden "--hidden" -o "$tmp/x" --hidden 0
run_bad heads_divide "not a multiple of --heads" -o "$tmp/x" --hidden 64 --heads 3
run_bad kv_divide "num_key_value_heads" -o "$tmp/x" --heads 4 --kv-heads 3
run_bad dtype "--dtype" -o "$tmp/x" --dtype I8
run_bad shards_zero "--shards" -o "$tmp/x" --shards 0
run_bad shards_many "more than the" -o "$tmp/x" --shards 1000
run_bad preset "--preset: expected tiny or llama3.1-8b, got 'gpt2'" -o "$tmp/x" --preset gpt2
run_bad number "--layers: expected an integer in [1, 1073741824], got '2x'" -o "$tmp/x" --layers 2x
run_bad seed_negative "--seed: expected an integer" -o "$tmp/x" --seed -1
run_bad seed_suffix "--seed: expected an integer" -o "$tmp/x" --seed 12abc
run_bad seed_empty "--seed: expected an integer" -o "$tmp/x" --seed ""
run_bad threads_zero "--threads: expected an integer in [1, 4096], got '0'" -o "$tmp/x" --threads 0
run_bad theta "--rope-theta: expected a number" -o "$tmp/x" --rope-theta 0.5
run_bad missing_value "--shards: missing value" -o "$tmp/x" --shards
run_bad flag_value "--force=1: takes no value" -o "$tmp/x" --force=1
run_bad positional "extra: unexpected argument" -o "$tmp/x" extra
run_bad tok_too_big "more than the model's vocabulary of 512" -o "$tmp/x" --tokenizer "$l3tok"
run_bad tok_no_bos "has no token 128000 (the model's bos_token_id)" -o "$tmp/x" --preset llama3.1-8b --layers 1 \
  --hidden 64 --ffn 128 --heads 4 --kv-heads 1 --tokenizer "$LLAMOE_SRC/models/stories260k/tokenizer.json"
run_bad huge_layers "num_hidden_layers" -o "$tmp/x" --layers 100000
run_bad tokenizer "--tokenizer" -o "$tmp/x" --tokenizer "$tmp/nope.json"
run_bad unknown_option "--frobnicate: unknown option (see --help)" -o "$tmp/x" --frobnicate
ls "$tmp" | grep -q -e '^x' -e '\.tmp\.' -e '\.old\.' && bad "left behind: $(ls "$tmp")" || ok
# Every error above is one line on stderr.
"$mk" -o "$tmp/x" --layers 2x 2>"$tmp/err"; [ "$(wc -l <"$tmp/err")" = 1 ] && ok || bad "error is not one line: $(cat "$tmp/err")"
"$mk" -o "$tmp/x" --frobnicate 2>"$tmp/err"; [ "$(wc -l <"$tmp/err")" = 1 ] && ok || bad "error is not one line: $(cat "$tmp/err")"
# --force replaces a model directory, never a tree; -o with a trailing slash names the directory.
mkdir -p "$tmp/tree/sub"
run_bad force_tree "holds more than files" -o "$tmp/tree" --force
[ -d "$tmp/tree/sub" ] && ok || bad "--force removed a tree"
run_ok slash -o "$tmp/slash/"
[ -f "$tmp/slash/config.json" ] && ! ls "$tmp/slash" | grep -q tmp && ok || bad "trailing slash: $(ls -R "$tmp/slash")"
"$mk" -h >"$tmp/out" 2>&1 && grep -q "^usage: llamoe-mkmodel" "$tmp/out" && ok || bad "-h"

echo "mkmodel: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
