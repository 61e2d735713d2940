// The CUDA transports under mpirun: MPI carrying device buffers (comm_device_new: directly on a
// CUDA-aware MPI, else staged through pinned host memory; any number of ranks on one GPU) and
// NCCL (device buffers; one rank per GPU unless NCCL allows more), with uneven message sizes
// including empty ones, counts exchange and reductions. Rank 0 prints one line per check and a summary; exit status 1 on
// any mismatch.
//   mpirun -np P check_comm_cuda [mpi|nccl]
//   check_comm_cuda version          prints the NCCL version loaded ("nccl 2.30.1 23001")
#include <string.h>

#include "kernels/backend.h"
#include "kernels/cuda/backend_cuda.h"
#include "parallel/comm_cuda.h"

// Bytes rank s sends rank r: uneven, some zero.
static size_t msg_bytes(int s, int r) { return (size_t)((s * 7 + r * 3) % 5) * 1000 + (s == r ? 8 : 0); }
static unsigned char pattern(int s, int r, size_t i) { return (unsigned char)(s * 31 + r * 17 + i * 7); }

static int check_alltoallv(comm *c, backend *be, const char *what) {
    int P = c->size, me = c->rank, bad = 0;
    size_t *sb = xcalloc(P, sizeof(size_t)), *sd = xcalloc(P, sizeof(size_t));
    size_t *rb = xcalloc(P, sizeof(size_t)), *rd = xcalloc(P, sizeof(size_t)), st = 0, rt = 0;
    for (int p = 0; p < P; p++) {
        sb[p] = msg_bytes(me, p); sd[p] = st; st += sb[p];
        rb[p] = msg_bytes(p, me); rd[p] = rt; rt += rb[p];
    }
    unsigned char *hs = xmalloc(st + 1), *hr = xmalloc(rt + 1);
    for (int p = 0; p < P; p++)
        for (size_t i = 0; i < sb[p]; i++) hs[sd[p] + i] = pattern(me, p, i);
    void *ds = be->alloc(be, st + 1), *dr = be->alloc(be, rt + 1);
    be->upload(be, ds, hs, st);
    if (c->alltoallv(c, ds, sb, sd, dr, rb, rd) != 0) bad = 1;
    be->download(be, hr, dr, rt);
    for (int p = 0; p < P && !bad; p++)
        for (size_t i = 0; i < rb[p]; i++)
            if (hr[rd[p] + i] != pattern(p, me, i)) { bad = 1; break; }
    int64_t total[1] = {bad};
    c->allreduce_sum_i64(c, total, 1);
    if (me == 0) printf("%-44s %s\n", what, total[0] ? "FAIL" : "ok");
    be->free(be, ds); be->free(be, dr);
    free(hs); free(hr); free(sb); free(sd); free(rb); free(rd);
    return total[0] != 0;
}

static int check_small(comm *c, const char *what) {
    int P = c->size, me = c->rank;
    int64_t *send = xcalloc((size_t)P * 2, sizeof(int64_t)), *recv = xcalloc((size_t)P * 2, sizeof(int64_t));
    for (int p = 0; p < P; p++) { send[2 * p] = me * 100 + p; send[2 * p + 1] = -me; }
    int bad = c->exchange_counts(c, send, recv, 2) != 0;
    for (int p = 0; p < P; p++) bad |= recv[2 * p] != p * 100 + me || recv[2 * p + 1] != -p;
    double mx[1] = {(double)me};
    c->allreduce_max_f64(c, mx, 1);
    bad |= mx[0] != P - 1;
    c->barrier(c);
    int64_t total[1] = {bad};
    c->allreduce_sum_i64(c, total, 1);
    if (me == 0) printf("%-44s %s\n", what, total[0] ? "FAIL" : "ok");
    free(send); free(recv);
    return total[0] != 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "version")) {
        int v = comm_nccl_version();
        printf("nccl %d.%d.%d %d\n", v / 10000, v / 100 % 100, v % 100, v);
        return 0;
    }
    comm *mpi = comm_mpi_init(&argc, &argv);
    const char *which = argc > 1 ? argv[1] : "mpi";
    if (strcmp(which, "mpi") && strcmp(which, "nccl")) die("usage: check_comm_cuda [mpi|nccl]");
    int n_gpus = cuda_device_count();
    if (n_gpus == 0) {
        if (mpi->rank == 0) printf("check_comm_cuda: no CUDA device: skipped\n");
        mpi->free(mpi);
        return 77;
    }
    backend_options o = {.device = mpi->local_rank % n_gpus};
    llamoe_err err;
    backend *be = backend_cuda_new(&o, &err);
    if (!be) die("%s", err.msg);
    int failed = 0, passed = 0, P = mpi->size, b;
    char what[96];
    comm *c = !strcmp(which, "mpi") ? comm_device_new(mpi, backend_cuda_stream(be)) : comm_nccl_new(mpi, backend_cuda_stream(be));
    snprintf(what, sizeof what, "%s alltoallv (device), %d ranks", c->name, P);
    b = check_alltoallv(c, be, what);
    failed += b; passed += !b;
    snprintf(what, sizeof what, "%s counts/reductions, %d ranks", c->name, P);
    b = check_small(c, what);
    failed += b; passed += !b;
    if (c->rank == 0) printf("comm_cuda: %d passed, %d failed\n", passed, failed);
    c->free(c);   // frees the chain down to MPI (MPI_Finalize)
    backend_free(be);
    return failed ? 1 : 0;
}
