#!/usr/bin/env bash
# Every writer of output files leaves the complete file or nothing: a write that fails half-way
# (here: a file size limit, ulimit -f, with SIGXFSZ ignored so write(2) returns EFBIG) must
# exit non-zero naming the file and leave neither the target nor a temporary behind.
# Writers: llamoe-ep --dump-logits, llamoe-mkmodel, llamoe-convert (safetensors writer and
# index), bench_ops --json. A SIGKILL mid-write is covered for --dump-logits by
# test_failure_mpi.sh (O_TMPFILE: nothing named exists before the commit).
. "$(dirname "$0")/lib.sh"

# limited KB CMD...: runs CMD with files limited to KB kilobytes, stderr to $TMP/err through
# a pipe (the limit applies to regular files: the message must not be the write that fails).
limited() {
  local kb=$1; shift
  (trap '' XFSZ; ulimit -f "$kb"; exec "$@") 2>&1 >/dev/null | cat >"$TMP/err"
  return "${PIPESTATUS[0]}"
}

# expect_nothing NAME DIR PATTERN STATUS: a failed writer left no entry matching PATTERN.
expect_nothing() {
  local name=$1 dir=$2 pattern=$3 rc=$4
  local left; left=$(ls -A "$dir" | grep -E "$pattern" | tr '\n' ' ')
  if [ "$rc" -eq 0 ]; then bad "$name: exit status 0 despite the size limit"
  elif [ -n "$left" ]; then bad "$name: left $left"
  elif ! grep -Eq "$dir/${pattern#^}.*(File too large|write failed)|--dump-logits: write failed" "$TMP/err"; then
    bad "$name: no message naming the file and the failed write: $(head -c 300 "$TMP/err")"
  else ok "$name: exit $rc, nothing left ($(grep -m1 llamoe: "$TMP/err" | head -c 160))"; fi
}

# llamoe-ep --dump-logits: 40 rows of 512 floats = 80 KB, limit 16 KB. Under mpirun with the
# limit on the rank only: a singleton's own PMIx server would need files bigger than that.
mkdir -p "$TMP/ep"
mpi 1 bash -c 'trap "" XFSZ; ulimit -f 16; exec "$0" "$@"' "$B/llamoe-ep" -n 40 --bind none \
  --dump-logits "$TMP/ep/logits" >"$TMP/out" 2>"$TMP/err"
expect_nothing "llamoe-ep --dump-logits" "$TMP/ep" '^logits' $?
# and without the limit the file is there, whole
if "$B/llamoe-ep" -n 40 --bind none --dump-logits "$TMP/ep/logits" >"$TMP/out" 2>"$TMP/err" &&
   [ "$(stat -c %s "$TMP/ep/logits")" = $((40 * 512 * 4)) ] && [ "$(ls -A "$TMP/ep")" = logits ]; then
  ok "llamoe-ep --dump-logits without a limit: complete"
else bad "llamoe-ep --dump-logits without a limit: $(ls -l "$TMP/ep") $(head -c 200 "$TMP/err")"; fi

# llamoe-mkmodel: a few MB of weights, limit 256 KB (the config and tokenizer fit, weights not).
mkdir -p "$TMP/mk"
limited 256 "$B/llamoe-mkmodel" -o "$TMP/mk/m" --layers 2 --hidden 256 --ffn 512 --heads 4 --vocab 2000 \
  --dtype F32 --shards 2
expect_nothing "llamoe-mkmodel" "$TMP/mk" '^m' $?
if "$B/llamoe-mkmodel" -o "$TMP/mk/m" --layers 2 --hidden 256 --ffn 512 --heads 4 --vocab 2000 --dtype F32 --shards 2 \
     >"$TMP/out" 2>"$TMP/err" && [ "$(ls -A "$TMP/mk")" = m ] && [ -f "$TMP/mk/m/model.safetensors.index.json" ]; then
  ok "llamoe-mkmodel without a limit: complete"
else bad "llamoe-mkmodel without a limit: $(ls -A "$TMP/mk") $(head -c 200 "$TMP/err")"; fi

# llamoe-convert: the bundled model upcycled to 8 experts (several MB), limit 256 KB.
mkdir -p "$TMP/cv"
limited 256 "$B/llamoe-convert" -m "$MODEL" --moe upcycle:8:2 -o "$TMP/cv/out"
expect_nothing "llamoe-convert" "$TMP/cv" '^out' $?
if "$B/llamoe-convert" -m "$MODEL" --moe upcycle:8:2 -o "$TMP/cv/out" --shard-gb 0.002 >"$TMP/out" 2>"$TMP/err" &&
   [ "$(ls -A "$TMP/cv")" = out ] && "$B/llamoe-ep" -m "$TMP/cv/out" --ids 1,2 -n 2 --bind none >"$TMP/out" 2>"$TMP/err"; then
  ok "llamoe-convert without a limit: complete, loads"
else bad "llamoe-convert without a limit: $(ls -A "$TMP/cv") $(head -c 300 "$TMP/err")"; fi

# bench_ops --json: the JSON is small, so the limit is 0 KB (no byte may be written).
mkdir -p "$TMP/bo"
limited 0 "$B/bench_ops" --threads 1 --json "$TMP/bo/ops.json"
expect_nothing "bench_ops --json" "$TMP/bo" '^ops' $?
finish
