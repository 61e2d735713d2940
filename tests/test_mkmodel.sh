#!/usr/bin/env bash
# llamoe-mkmodel: the same seed written as F32 (bf16-representable values, one file) and as
# BF16 (3 shards + index) holds bit-identical weights; bad arguments fail and leave nothing.
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

# Tokenizer copy and the 8B preset's config (tiny layer count and vocab so it stays small).
run_ok tok -o "$tmp/tok" --tokenizer "$LLAMOE_SRC/models/stories260k/tokenizer.json"
cmp -s "$tmp/tok/tokenizer.json" "$LLAMOE_SRC/models/stories260k/tokenizer.json" && ok || bad "tokenizer copy"
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
run_bad preset "unknown preset" -o "$tmp/x" --preset gpt2
run_bad number "--layers" -o "$tmp/x" --layers 2x
run_bad huge_layers "num_hidden_layers" -o "$tmp/x" --layers 100000
run_bad tokenizer "--tokenizer" -o "$tmp/x" --tokenizer "$tmp/nope.json"
run_bad unknown_option "unrecognized" -o "$tmp/x" --frobnicate
ls "$tmp" | grep -q -e '^x' -e '\.tmp\.' -e '\.old\.' && bad "left behind: $(ls "$tmp")" || ok

echo "mkmodel: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
