// Under mpirun: the last rank die()s while the others wait in an all-to-all-v it never joins.
// The job must end on every rank, non-zero, with "llamoe: rank N: injected failure" on stderr.
// Optional argv[1]: the failing rank (default: the last).
#include "parallel/comm.h"
#include "base/common.h"

#include <time.h>

int main(int argc, char **argv) {
    comm *c = comm_mpi_init(&argc, &argv);
    int victim = argc > 1 ? atoi(argv[1]) : c->size - 1;
    c->barrier(c);
    if (c->rank == victim) {
        struct timespec ts = {0, 200 * 1000 * 1000};   // let the others block in the collective first
        nanosleep(&ts, NULL);
        die("injected failure in the middle of a collective");
    }
    size_t P = (size_t)c->size, bytes[64], displ[64];
    char send[64], recv[64];
    for (size_t p = 0; p < P; p++) { bytes[p] = 1; displ[p] = p; }
    c->alltoallv(c, send, bytes, displ, recv, bytes, displ);
    fprintf(stderr, "check_abort: rank %d: the all-to-all returned without rank %d\n", c->rank, victim);
    comm_free(c);
    return 0;
}
