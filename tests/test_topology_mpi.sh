#!/bin/bash
# np 3 on this node: every rank reports its own line with the right local rank; on a node with
# fewer cores than ranks the lines say oversubscribed; --bind none binds nothing.
set -eu
: "${LLAMOE_BUILD:?}"
cores=$(nproc)
out=$(timeout 60 mpirun --oversubscribe -np 3 "$LLAMOE_BUILD/check_topology" cores | sort)
echo "$out"
for r in 0 1 2; do
    echo "$out" | grep -q "^rank $r/3 (local $r/3): core" || { echo "FAIL: no binding line for rank $r"; exit 1; }
done
if [ "$cores" -lt 3 ]; then
    [ "$(echo "$out" | grep -c 'oversubscribed: 3 ranks')" -eq 3 ] || { echo "FAIL: 3 ranks on $cores cores not marked oversubscribed"; exit 1; }
else
    ! echo "$out" | grep -q oversubscribed || { echo "FAIL: oversubscribed on $cores cores"; exit 1; }
fi
out=$(timeout 60 mpirun --oversubscribe -np 2 "$LLAMOE_BUILD/check_topology" none | sort)
echo "$out"
[ "$(echo "$out" | grep -c 'not bound (--bind none) threads=0')" -eq 2 ] || { echo "FAIL: --bind none"; exit 1; }
