#!/bin/bash
# Dispatch -> fake experts -> combine under mpirun for np 1..4, bitwise against each rank's own
# expectation (tests/check_dispatch.c); then np 3 again with 1000-byte MPI messages, so every
# row travels split over several chunks (the large-message path, without gigabytes); 61 bytes
# also splits floats across chunks.
set -eu
: "${LLAMOE_BUILD:?}"
for np in 1 2 3 4; do
    timeout 120 mpirun --oversubscribe -np $np "$LLAMOE_BUILD/check_dispatch" 1234
done
timeout 120 mpirun --oversubscribe -np 2 "$LLAMOE_BUILD/check_dispatch" 99
LLAMOE_MPI_CHUNK_BYTES=1000 timeout 120 mpirun --oversubscribe -x LLAMOE_MPI_CHUNK_BYTES -np 3 "$LLAMOE_BUILD/check_dispatch" 1234
LLAMOE_MPI_CHUNK_BYTES=61 timeout 120 mpirun --oversubscribe -x LLAMOE_MPI_CHUNK_BYTES -np 4 "$LLAMOE_BUILD/check_dispatch" 5
