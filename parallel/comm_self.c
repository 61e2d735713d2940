// The one-process communicator: every collective over one rank is a copy or nothing. Lets the
// dispatch/combine path and the tools run without mpirun, through exactly the same calls.
#include "parallel/comm.h"
#include "base/common.h"

#include <string.h>

static int self_alltoallv(comm *c, const void *send, const size_t *send_bytes, const size_t *send_displ,
                          void *recv, const size_t *recv_bytes, const size_t *recv_displ) {
    if (c->mem != COMM_MEM_HOST) die("comm self: device buffers need the CUDA build");
    if (send_bytes[0] != recv_bytes[0])
        die("comm self: alltoallv sends %zu bytes but expects %zu", send_bytes[0], recv_bytes[0]);
    if (send_bytes[0]) memmove((char *)recv + recv_displ[0], (const char *)send + send_displ[0], send_bytes[0]);
    return 0;
}

static int self_exchange_counts(comm *c, const int64_t *send, int64_t *recv, int n) {
    if (n > 0) memmove(recv, send, (size_t)n * sizeof *send);
    return 0;
}

static int self_allreduce_sum_i64(comm *c, int64_t *vals, int n) { return 0; }
static int self_allreduce_max_f64(comm *c, double *vals, int n) { return 0; }
static int self_bcast(comm *c, void *buf, size_t bytes, int root) { return root == 0 ? 0 : -1; }
static int self_barrier(comm *c) { return 0; }
static _Noreturn void self_abort(comm *c, int code) { exit(code); }
static void self_free(comm *c) { free(c); }

comm *comm_self(void) {
    comm *c = xcalloc(1, sizeof *c);
    c->name = "self";
    c->rank = 0;
    c->size = 1;
    c->local_rank = 0;
    c->local_size = 1;
    c->mem = COMM_MEM_HOST;
    c->alltoallv = self_alltoallv;
    c->exchange_counts = self_exchange_counts;
    c->allreduce_sum_i64 = self_allreduce_sum_i64;
    c->allreduce_max_f64 = self_allreduce_max_f64;
    c->bcast = self_bcast;
    c->bcast_idle = self_bcast;
    c->barrier = self_barrier;
    c->abort = self_abort;
    c->free = self_free;
    return c;
}
