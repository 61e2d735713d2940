#!/usr/bin/env bash
# llamoe-tokenize on both bundled tokenizers: ids for known cases, --decode, and bad input
# (non-zero exit with exactly one line on stderr). ctest sets LLAMOE_BUILD and LLAMOE_SRC.
set -u
bin="${LLAMOE_BUILD:?}/llamoe-tokenize"
src="${LLAMOE_SRC:?}"
stories="$src/models/stories260k"
llama3="$src/models/llama3-tokenizer"
[ -f "$llama3/tokenizer.json" ] || llama3="$src/../shared/models/llama3-tokenizer"
passed=0 failed=0 skipped=0
err=$(mktemp)
trap 'rm -f "$err"' EXIT

expect() {   # expect NAME WANT CMD...: stdout must equal WANT, exit 0
    local name=$1 want=$2; shift 2
    local got
    got=$("$@" 2>"$err")
    if [ $? -eq 0 ] && [ "$got" = "$want" ]; then passed=$((passed + 1))
    else failed=$((failed + 1)); echo "FAIL: $name: got '$got', want '$want'; stderr: $(cat "$err")"; fi
}

expect_error() {   # expect_error NAME CMD...: non-zero exit, one line on stderr, nothing on stdout
    local name=$1; shift
    local out
    out=$("$@" 2>"$err")
    local rc=$? lines
    lines=$(wc -l <"$err")
    if [ $rc -ne 0 ] && [ "$lines" -eq 1 ] && [ -z "$out" ]; then passed=$((passed + 1))
    else failed=$((failed + 1)); echo "FAIL: $name: rc $rc, $lines stderr lines, stdout '$out'"; fi
}

# stories260k (also the default -m)
expect "stories default model" "1 403 407 261 378" "$bin" "Once upon a time"
expect "stories -m" "1 403 407 261 378" "$bin" -m "$stories" "Once upon a time"
expect "stories --no-special" "403 407 261 378" "$bin" -m "$stories" --no-special "Once upon a time"
expect "stories empty text" "1" "$bin" -m "$stories" ""
expect "stories stdin" "1 403 407 261 378" bash -c "printf 'Once upon a time' | '$bin' -m '$stories' -"
expect "stories byte fallback" "1 410 465 457 425 420 421 422 410 456 425 309" \
    bash -c "'$bin' -m '$stories' '“Curly quotes” and' | cut -d' ' -f1-12"
expect "stories decode" "Once upon a time" "$bin" -m "$stories" --decode 403 407 261 378
expect "stories decode specials kept" "<s> Once upon a time" "$bin" -m "$stories" --decode 1 403 407 261 378

# Llama 3
if [ -f "$llama3/tokenizer.json" ]; then
    expect "llama3 hello" "128000 9906 11 1917 0" "$bin" -m "$llama3" "Hello, world!"
    expect "llama3 specials" "128000 128000 9906 128009" "$bin" -m "$llama3" "<|begin_of_text|>Hello<|eot_id|>"
    expect "llama3 --no-special" "9906 11 1917 0" "$bin" -m "$llama3" --no-special "Hello, world!"
    expect "llama3 digits" "4513 10961 16474 15" "$bin" -m "$llama3" --no-special "1234567890"
    expect "llama3 decode" "<|begin_of_text|>Hello, world!" "$bin" -m "$llama3" --decode 128000 9906 11 1917 0
    expect_error "llama3 id out of range" "$bin" -m "$llama3" --decode 128256
else
    skipped=$((skipped + 1)); echo "llama3: SKIPPED (no tokenizer.json)"
fi

# bad input
expect_error "missing model dir" "$bin" -m "$src/models/does-not-exist" "hi"
expect_error "id out of range" "$bin" -m "$stories" --decode 1 512
expect_error "negative id" "$bin" -m "$stories" --decode -- -1
expect_error "id not a number" "$bin" -m "$stories" --decode 12x
expect_error "invalid UTF-8" "$bin" -m "$stories" $'ab\xff'
expect_error "unknown option" "$bin" --frobnicate "hi"
expect_error "no text" "$bin" -m "$stories"
expect_error "two texts" "$bin" -m "$stories" a b
expect_error "missing -m value" "$bin" "hi" -m
expect_error "--decode without ids" "$bin" --decode
expect "options after the text" "403 407 261 378" "$bin" "Once upon a time" --no-special -m "$stories"
expect "id range in the message" "llamoe: --decode: expected an integer in [0, 511], got '512'" \
    bash -c "'$bin' -m '$stories' --decode 1 512 2>&1; true"
expect "--help on stdout" "usage: llamoe-tokenize [-m DIR] [--no-special] TEXT|-" bash -c "'$bin' --help | head -1"
bad=$(mktemp -d)
printf '{"model": {"type": "Unigram", "vocab": []}}' >"$bad/tokenizer.json"
expect_error "unsupported model" "$bin" -m "$bad" "hi"
printf '{"model": {' >"$bad/tokenizer.json"
expect_error "malformed tokenizer.json" "$bin" -m "$bad" "hi"
rm -rf "$bad"

echo "tokenize_cli: $passed passed, $failed failed, $skipped skipped"
[ $failed -eq 0 ]
