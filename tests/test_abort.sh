#!/bin/bash
# One rank that die()s mid-collective ends the whole job within 10 s, non-zero, and its
# message names it ("llamoe: rank 2: ..."), never a hang.
set -u
: "${LLAMOE_BUILD:?}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for victim in 2 0; do
    start=$(date +%s%N)
    timeout 10 mpirun --oversubscribe -np 3 "$LLAMOE_BUILD/check_abort" $victim >"$log" 2>&1
    rc=$?
    ms=$(( ($(date +%s%N) - start) / 1000000 ))   # bash arithmetic: bc is not on a fresh Debian
    if [ $rc -eq 0 ]; then echo "FAIL: victim $victim: mpirun exited 0"; cat "$log"; exit 1; fi
    if [ $rc -eq 124 ]; then echo "FAIL: victim $victim: no exit within 10 s (hang)"; cat "$log"; exit 1; fi
    if ! grep -q "^llamoe: rank $victim: injected failure in the middle of a collective" "$log"; then
        echo "FAIL: victim $victim: no 'llamoe: rank $victim: ...' line"; cat "$log"; exit 1
    fi
    if grep -q "returned without" "$log"; then echo "FAIL: a collective completed without the dead rank"; cat "$log"; exit 1; fi
    echo "ok: rank $victim died: mpirun exit $rc after ${ms} ms"
done
