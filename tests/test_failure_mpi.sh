#!/usr/bin/env bash
# One rank of `mpirun -np 3 llamoe-ep` fails (LLAMOE_FAULT, runtime/fault.h, or a real kill -9
# from here): every rank must exit, mpirun non-zero, within 10 s of the failure, with a
# message that names the rank and the cause; --dump-logits must leave no file, half or whole.
. "$(dirname "$0")/lib.sh"
EP="$B/llamoe-ep"
ARGS=(-n 40 --bind none)   # 40 tokens: the faults at steps 1-3 happen mid-generation

# run NAME FAULT EXPECT_REGEX...: runs the job with LLAMOE_FAULT=FAULT and checks status,
# time and that stderr matches every regex.
run() {
  local name=$1 fault=$2; shift 2
  local start rc ms
  rm -f "$TMP"/logits*
  start=$(date +%s%N)
  LLAMOE_FAULT=$fault timeout 30 mpirun --oversubscribe -np 3 "$EP" "${ARGS[@]}" --dump-logits "$TMP/logits" \
    >"$TMP/out" 2>"$TMP/err"
  rc=$?
  ms=$(( ($(date +%s%N) - start) / 1000000 ))   # bash arithmetic: no bc on a fresh Debian
  check "$name" "$rc" "$ms" "$@"
}

check() {
  local name=$1 rc=$2 ms=$3; shift 3
  local why=""
  [ "$rc" -eq 0 ] && why="$why exit status 0;"
  [ "$rc" -eq 124 ] && why="$why still running after 30 s;"
  [ "$ms" -lt 10000 ] || why="$why took ${ms} ms;"
  for re in "$@"; do grep -Eq -- "$re" "$TMP/err" || why="$why no line matching '$re';"; done
  local left; left=$(ls "$TMP" | grep '^logits' | tr '\n' ' ')
  [ -n "$left" ] && why="$why left $left;"
  if [ -z "$why" ]; then ok "$name: mpirun exit $rc after ${ms} ms"
  else bad "$name:$why stderr: $(head -c 600 "$TMP/err")"; fi
}

# The baseline the faults break: the same job succeeds and writes the logits file whole
# (40 rows x 512 floats).
rm -f "$TMP"/logits*
if timeout 60 mpirun --oversubscribe -np 3 "$EP" "${ARGS[@]}" --dump-logits "$TMP/logits" >"$TMP/out" 2>"$TMP/err" &&
   [ "$(stat -c %s "$TMP/logits" 2>/dev/null)" = $((40 * 512 * 4)) ] && [ -z "$(ls "$TMP" | grep '^logits.')" ]; then
  ok "no fault: exit 0, logits file complete"
else
  bad "no fault: $(head -c 300 "$TMP/err") $(ls -l "$TMP")"
fi

# die() on the failing rank: MPI_Abort ends the others.
run "rank 1 cannot open its model" 1:open \
  '^llamoe: rank 1: .*\(LLAMOE_FAULT open\)/config.json: cannot open: No such file'
# (Open MPI's "MPI_ABORT was invoked on rank N" banner is not checked: when the ranks are
# already gone mpirun sometimes skips it. The rank's own line is what names rank and cause.)
run "rank 2 out of memory at load" 2:oom '^llamoe: rank 2: out of memory allocating [0-9]+ bytes'
run "rank 1 out of memory at step 3" 1:oom:3 '^llamoe: rank 1: out of memory allocating [0-9]+ bytes'
run "rank 0 out of memory at step 2" 0:oom:2 '^llamoe: rank 0: out of memory allocating [0-9]+ bytes'
# A rank that exits without MPI_Finalize, or is killed: mpirun notices and ends the others.
run "rank 2 exits at step 3" 2:exit:3 '^llamoe: rank 2: LLAMOE_FAULT: injecting an exit' \
  'Process name: \[\[[0-9]+,[0-9]+\],2\]' 'Exit code: +3'
run "rank 1 SIGKILLs itself at step 2" 1:kill:2 'process rank 1 with PID [0-9]+ on node .* exited on signal 9'

# A real kill -9 from outside, mid-generation: rank 0 stalls at step 3 (so the job is certainly
# in the middle of generating, ranks 1 and 2 waiting in a collective), and this script kills
# rank 1, found among mpirun's children by its OMPI_COMM_WORLD_RANK.
rm -f "$TMP"/logits*
LLAMOE_FAULT=0:stall:3 timeout 60 mpirun --oversubscribe -np 3 "$EP" "${ARGS[@]}" --dump-logits "$TMP/logits" \
  >"$TMP/out" 2>"$TMP/err" &
job=$!
victim=""
for _ in $(seq 100); do   # at most 10 s for the job to reach the stall
  if grep -q "injecting a 60 s stall" "$TMP/err" 2>/dev/null; then
    for mp in $(pgrep -P "$job"); do
      for p in $(pgrep -P "$mp"); do
        tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx OMPI_COMM_WORLD_RANK=1 && victim=$p
      done
    done
    break
  fi
  sleep 0.1
done
if [ -z "$victim" ]; then
  kill "$job" 2>/dev/null
  wait "$job"
  bad "kill -9: rank 1 not found (stderr: $(head -c 300 "$TMP/err"))"
else
  start=$(date +%s%N)
  kill -9 "$victim"
  wait "$job"
  rc=$?
  ms=$(( ($(date +%s%N) - start) / 1000000 ))   # bash arithmetic: no bc on a fresh Debian
  check "kill -9 of rank 1 (pid $victim) while rank 0 stalls" "$rc" "$ms" \
    'process rank 1 with PID [0-9]+ on node .* exited on signal 9'   # Open MPI 4.1 prints PID 0 here
fi

# A malformed LLAMOE_FAULT is an error, not ignored.
if LLAMOE_FAULT=1:frobnicate timeout 30 mpirun --oversubscribe -np 3 "$EP" "${ARGS[@]}" >"$TMP/out" 2>"$TMP/err"; then
  bad "malformed LLAMOE_FAULT accepted"
elif grep -q "unknown fault frobnicate" "$TMP/err"; then ok "malformed LLAMOE_FAULT refused"
else bad "malformed LLAMOE_FAULT: $(head -c 300 "$TMP/err")"; fi
finish
