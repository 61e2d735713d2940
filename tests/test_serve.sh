#!/usr/bin/env bash
# llamoe-serve over HTTP, checked by tests/serve_client.py (python3's standard library):
# completions and chat, streamed and not; 8 concurrent requests get llamoe-ep's tokens at 1 and
# 3 ranks; a client leaving mid-stream frees its slot; a flood past the queue gets 429 while
# every accepted request completes; bad requests get clean errors and the server runs on;
# SIGTERM ends a running stream properly and every rank exits 0. Servers listen on free
# loopback ports, live at most 4 minutes (timeout), and are killed on every exit path.
. "$(dirname "$0")/lib.sh"
CLIENT=(python3 "$S/tests/serve_client.py")
SERVERS=()

cleanup() {
  local tp mp
  for tp in "${SERVERS[@]}"; do kill -TERM "$tp" 2>/dev/null; done   # timeout passes it to mpirun
  sleep 0.3
  for tp in "${SERVERS[@]}"; do
    for mp in $(pgrep -P "$tp"); do pkill -KILL -P "$mp"; kill -KILL "$mp"; done 2>/dev/null
    kill -KILL "$tp" 2>/dev/null
  done
  rm -rf "$TMP"
}
trap cleanup EXIT

# start_server NAME NP ARGS: sets PORT, PID (rank 0) and TP (the timeout wrapping mpirun).
start_server() {
  local name=$1 np=$2
  shift 2
  timeout -k 5 240 mpirun --oversubscribe -np "$np" "$B/llamoe-serve" --port 0 "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" &
  TP=$!
  SERVERS+=("$TP")
  for _ in $(seq 900); do   # 90 s: sanitizer builds load slowly
    grep -q "listening on" "$TMP/$name.out" && break
    kill -0 "$TP" 2>/dev/null || break
    sleep 0.1
  done
  PORT=$(sed -n 's/.*127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$TMP/$name.out")
  PID=$(sed -n 's/.*pid \([0-9]*\)).*/\1/p' "$TMP/$name.out")
  [ -n "$PORT" ] && [ -n "$PID" ] && return 0
  bad "$name: the server did not start: $(head -c 300 "$TMP/$name.err")"
  return 1
}

# Waits up to $2 seconds for the server wrapped by timeout $1 to end; RC: its exit status.
wait_exit() {
  for _ in $(seq $(($2 * 10))); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$1" 2>/dev/null; then RC="still running"; else wait "$1"; RC=$?; fi
}

# One group of client checks; its ok/FAIL lines count in the tally.
client() {
  local out rc
  out=$(timeout 180 "${CLIENT[@]}" "$@" 2>&1)
  rc=$?
  echo "$out"
  passed=$((passed + $(grep -c '^ok ' <<<"$out")))
  failed=$((failed + $(grep -c '^FAIL' <<<"$out")))
  if [ $rc -ne 0 ] && ! grep -q '^FAIL' <<<"$out"; then bad "client $1 ended with status $rc"; fi
}

"${CLIENT[@]}" refs "$B/llamoe-ep" "$MODEL" "$TMP/refs.json" 2>"$TMP/refs.err" ||
  bad "llamoe-ep references: $(tail -3 "$TMP/refs.err")"

# Bad command lines: one line naming the flag, non-zero exit (one process, no mpirun: faster).
for args in "--port 99999" "--kv-slots 0" "--ctx 100000" "--host localhost" "--queue" "--served-model-name x --bogus"; do
  read -r -a a <<<"$args"
  if timeout 60 "$B/llamoe-serve" "${a[@]}" >/dev/null 2>"$TMP/err"; then bad "llamoe-serve $args: accepted"
  elif grep -q "^llamoe: --" "$TMP/err"; then ok "llamoe-serve $args: $(grep -m1 '^llamoe: --' "$TMP/err")"
  else bad "llamoe-serve $args: $(head -c 200 "$TMP/err")"; fi
done

# One rank: everything, then SIGTERM to rank 0 cuts a long stream after --drain 0.2 s.
if start_server one 1 --kv-slots 4 --queue 4 --drain 0.2; then
  if timeout 60 "$B/llamoe-serve" --port "$PORT" >/dev/null 2>"$TMP/err"; then
    bad "a second server on port $PORT started"
  else
    grep -q "cannot listen there" "$TMP/err" && ok "port $PORT in use: $(grep -m1 'cannot listen' "$TMP/err")" ||
      bad "port in use: $(head -c 200 "$TMP/err")"
  fi
  client basics "$PORT"
  client errors "$PORT" 512
  client completion "$PORT"
  client match "$PORT" "$TMP/refs.json" "1 rank"
  client disconnect "$PORT"
  client flood "$PORT" 24 8
  client alive "$PORT"
  client sigterm "$PORT" "$PID" 400 abort
  wait_exit "$TP" 20
  if [ "$RC" = 0 ] && grep -q "stopped" "$TMP/one.err"; then ok "1 rank: SIGTERM: the server stops and exits 0"
  else bad "1 rank: SIGTERM: exit status $RC: $(tail -3 "$TMP/one.err")"; fi
fi

# Three ranks (two KV slots each: 8 requests queue and join as others finish); SIGTERM to rank
# 0 lets the running stream finish (--drain 5 s).
if start_server three 3 --kv-slots 2 --queue 8; then
  client match "$PORT" "$TMP/refs.json" "3 ranks"
  client disconnect "$PORT"
  client alive "$PORT"
  client sigterm "$PORT" "$PID" 60 length
  wait_exit "$TP" 20
  if [ "$RC" = 0 ]; then ok "3 ranks: SIGTERM to rank 0: every rank exits 0"
  else bad "3 ranks: SIGTERM: exit status $RC: $(tail -3 "$TMP/three.err")"; fi
fi

# Chat needs a Llama 3 tokenizer: a tiny random model with the bundled one, dense on 2 ranks
# (its untied random LM head samples every script, so streamed text splits characters). SIGTERM to
# mpirun: it ends the job itself, so only a proper end of the stream and no process left are
# checked (Open MPI then exits non-zero whatever the ranks do).
if "$B/llamoe-mkmodel" -o "$TMP/chat" --hidden 64 --ffn 128 --layers 2 --heads 4 --kv-heads 2 --vocab 128256 \
     --max-pos 1024 --dtype BF16 --tokenizer "$S/models/llama3-tokenizer/tokenizer.json" >/dev/null 2>"$TMP/mk.err" &&
   "${CLIENT[@]}" chat-refs "$B/llamoe-ep" "$TMP/chat" "$TMP/chat.json" 2>"$TMP/refs.err"; then
  if start_server chat 2 -m "$TMP/chat" --moe dense --kv-slots 2; then
    client chat "$PORT" "$TMP/chat.json"
    MP=$(pgrep -P "$TP")
    client sigterm "$PORT" "$MP" 1000 abort
    wait_exit "$TP" 10
    if [ "$RC" != "still running" ] && ! pgrep -f "$TMP/chat" >/dev/null; then ok "SIGTERM to mpirun: every process ends"
    else bad "SIGTERM to mpirun: $RC; left: $(pgrep -af "$TMP/chat")"; fi
  fi
else
  bad "chat model or references: $(tail -3 "$TMP/mk.err" "$TMP/refs.err")"
fi
finish
