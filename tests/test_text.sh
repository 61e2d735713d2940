#!/usr/bin/env bash
# Text in, text out with both tokenizers: llamoe-ep -p encodes as llamoe-tokenize does,
# streams exactly the decoded text, and --chat wraps the prompt in the Llama 3 header format.
. "$(dirname "$0")/lib.sh"
EP="$B/llamoe-ep"

# Bundled model (SentencePiece-style BPE): the streamed text is the prompt plus the decoded ids.
"$EP" -p "Once upon a time" -n 48 --moe dense >"$TMP/stream" 2>/dev/null
"$EP" -p "Once upon a time" -n 48 --moe dense --json >"$TMP/json" 2>/dev/null
python3 - "$TMP/stream" "$TMP/json" "$MODEL/expected.json" <<'PY' && ok "stories260k: -p streams the expected continuation" || bad "stories260k streamed text"
import json, sys
stream = open(sys.argv[1], encoding="utf-8").read()
j = json.load(open(sys.argv[2])); case = json.load(open(sys.argv[3]))["cases"][0]
assert j["prompt_ids"] == case["prompt_ids"], j["prompt_ids"]
assert j["generated_ids"] == case["greedy_ids"]
assert stream == case["full_text"] + "\n", repr(stream[-80:])
PY

# Llama 3 tokenizer on a small synthetic model with the real vocabulary size.
"$B/llamoe-mkmodel" -o "$TMP/l3" --hidden 64 --ffn 128 --layers 1 --heads 4 --kv-heads 1 --vocab 128256 \
  --max-pos 8192 --rope-llama3 --dtype BF16 --tokenizer "$S/models/llama3-tokenizer/tokenizer.json" >/dev/null 2>&1
want=$("$B/llamoe-tokenize" -m "$TMP/l3" "The capital of France is")
"$EP" -m "$TMP/l3" -p "The capital of France is" -n 8 --json >"$TMP/j" 2>"$TMP/err"
got=$(python3 -c 'import json,sys; print(" ".join(map(str, json.load(open(sys.argv[1]))["prompt_ids"])))' "$TMP/j" 2>/dev/null)
[ -n "$want" ] && [ "$want" = "$got" ] && ok "llama3: -p ids = llamoe-tokenize ids ($got)" || bad "llama3 prompt ids: want '$want' got '$got' $(cat "$TMP/err")"
"$EP" -m "$TMP/l3" -p "Hi" --chat -n 4 --json >"$TMP/c" 2>"$TMP/err"
python3 - "$TMP/c" <<'PY' && ok "--chat wraps the prompt in the Llama 3 header format" || bad "--chat prompt ids $(cat "$TMP/err")"
import json, sys
ids = json.load(open(sys.argv[1]))["prompt_ids"]
# <|begin_of_text|> <|start_header_id|> user <|end_header_id|> \n\n Hi <|eot_id|> <|start_header_id|> assistant <|end_header_id|> \n\n
assert ids[0] == 128000 and ids[1] == 128006 and ids[3] == 128007, ids
assert 128009 in ids and ids[-2] == 128007, ids
PY
# Streaming equals the whole decode, also across tokens that split a UTF-8 character.
"$EP" -m "$TMP/l3" -p "Ünïcödé 🦙 text" -n 32 --temp 1.5 --seed 3 >"$TMP/s" 2>/dev/null
"$EP" -m "$TMP/l3" -p "Ünïcödé 🦙 text" -n 32 --temp 1.5 --seed 3 --json >"$TMP/j" 2>/dev/null
python3 - "$TMP/s" "$TMP/j" <<'PY' && ok "llama3: streamed text equals the decoded text" || bad "llama3 streaming differs"
import json, sys
s = open(sys.argv[1], "rb").read().decode("utf-8")
j = json.load(open(sys.argv[2]))
assert s.startswith("Ünïcödé 🦙 text"), s[:40]
assert s == "Ünïcödé 🦙 text" + j["text"] + "\n", (s[-60:], j["text"][-60:])
PY
finish
