// The NCCL communicator (device buffers): set up from an id broadcast over the boot
// communicator (MPI), all-to-all-v as grouped ncclSend/ncclRecv, counts and reductions through
// NCCL on the device. Every NCCL call goes on the stream given at creation (the CUDA backend's). See comm_cuda.h.
#ifdef LLAMOE_CUDA
#include "parallel/comm_cuda.h"
#include "base/cuda_check.h"

#include <nccl.h>
#include <string.h>

// ---------------------------------------------------------------------------- errors
#define ncclCheck(call) nccl_check((call), #call, __FILE__, __LINE__)
static void nccl_check(ncclResult_t r, const char *call, const char *file, int line) {
    if (r != ncclSuccess) die("%s:%d: %s failed: %s", file, line, call, ncclGetErrorString(r));
}

typedef struct {
    comm *boot;
    ncclComm_t nc;
    cudaStream_t stream;
    void *scratch;            // device copies of host count/reduction arrays
    size_t scratch_cap;
} nccl_impl;

static void *scratch(nccl_impl *m, size_t bytes) {
    if (bytes > m->scratch_cap) {
        cudaCheck(cudaStreamSynchronize(m->stream));
        cudaCheck(cudaFree(m->scratch));
        m->scratch_cap = bytes < 4096 ? 4096 : bytes;
        cudaCheck(cudaMalloc(&m->scratch, m->scratch_cap));
    }
    return m->scratch;
}

// ---------------------------------------------------------------------------- all-to-all-v
// One NCCL group of a send and a receive per peer with data (zero-byte pairs are left out on
// both sides alike, since recv_bytes[p] equals what p sends). The own share is a device copy.
static int nccl_alltoallv(comm *c, const void *send, const size_t *send_bytes, const size_t *send_displ,
                          void *recv, const size_t *recv_bytes, const size_t *recv_displ) {
    nccl_impl *m = c->impl;
    if (send_bytes[c->rank] != recv_bytes[c->rank])
        die("comm nccl: alltoallv: rank %d sends itself %zu bytes but expects %zu", c->rank, send_bytes[c->rank], recv_bytes[c->rank]);
    if (send_bytes[c->rank])
        cudaCheck(cudaMemcpyAsync((char *)recv + recv_displ[c->rank], (const char *)send + send_displ[c->rank],
                                  send_bytes[c->rank], cudaMemcpyDeviceToDevice, m->stream));
    ncclCheck(ncclGroupStart());
    for (int i = 1; i < c->size; i++) {
        int to = (c->rank + i) % c->size, from = (c->rank - i + c->size) % c->size;
        if (send_bytes[to])
            ncclCheck(ncclSend((const char *)send + send_displ[to], send_bytes[to], ncclInt8, to, m->nc, m->stream));
        if (recv_bytes[from])
            ncclCheck(ncclRecv((char *)recv + recv_displ[from], recv_bytes[from], ncclInt8, from, m->nc, m->stream));
    }
    ncclCheck(ncclGroupEnd());
    return 0;
}

// ---------------------------------------------------------------------------- small collectives
// Host arrays in and out: through device scratch and NCCL, then back (waits).
static int nccl_exchange_counts(comm *c, const int64_t *send, int64_t *recv, int n) {
    nccl_impl *m = c->impl;
    size_t per = (size_t)n * sizeof(int64_t), all = per * (size_t)c->size;
    char *d = scratch(m, 2 * all);
    cudaCheck(cudaMemcpyAsync(d, send, all, cudaMemcpyHostToDevice, m->stream));
    ncclCheck(ncclGroupStart());
    for (int p = 0; p < c->size; p++) {
        ncclCheck(ncclSend(d + (size_t)p * per, (size_t)n, ncclInt64, p, m->nc, m->stream));
        ncclCheck(ncclRecv(d + all + (size_t)p * per, (size_t)n, ncclInt64, p, m->nc, m->stream));
    }
    ncclCheck(ncclGroupEnd());
    cudaCheck(cudaMemcpyAsync(recv, d + all, all, cudaMemcpyDeviceToHost, m->stream));
    cudaCheck(cudaStreamSynchronize(m->stream));
    return 0;
}

static int nccl_allreduce(comm *c, void *vals, int n, ncclDataType_t t, size_t es, ncclRedOp_t op) {
    nccl_impl *m = c->impl;
    size_t bytes = (size_t)n * es;
    void *d = scratch(m, bytes);
    cudaCheck(cudaMemcpyAsync(d, vals, bytes, cudaMemcpyHostToDevice, m->stream));
    ncclCheck(ncclAllReduce(d, d, (size_t)n, t, op, m->nc, m->stream));
    cudaCheck(cudaMemcpyAsync(vals, d, bytes, cudaMemcpyDeviceToHost, m->stream));
    cudaCheck(cudaStreamSynchronize(m->stream));
    return 0;
}
static int nccl_sum_i64(comm *c, int64_t *v, int n) { return nccl_allreduce(c, v, n, ncclInt64, sizeof(int64_t), ncclSum); }
static int nccl_max_f64(comm *c, double *v, int n) { return nccl_allreduce(c, v, n, ncclFloat64, sizeof(double), ncclMax); }

static int nccl_bcast(comm *c, void *buf, size_t bytes, int root) {
    nccl_impl *m = c->impl;
    if (bytes) ncclCheck(ncclBroadcast(buf, buf, bytes, ncclInt8, root, m->nc, m->stream));
    return 0;
}

static int nccl_barrier(comm *c) {
    int64_t one = 1;
    nccl_sum_i64(c, &one, 1);   // waits for the stream: everything before it is done here
    return 0;
}

static void nccl_abort(comm *c, int code) {
    nccl_impl *m = c->impl;
    ncclCommAbort(m->nc);   // frees this rank from any pending NCCL operation
    m->boot->abort(m->boot, code);
    exit(code);
}

static void nccl_free(comm *c) {
    nccl_impl *m = c->impl;
    cudaCheck(cudaStreamSynchronize(m->stream));
    ncclCheck(ncclCommDestroy(m->nc));
    cudaFree(m->scratch);
    comm *boot = m->boot;
    free(m);
    free(c);
    boot->free(boot);
}

// die() of any rank ends the job through the boot communicator's handler (MPI_Abort), which
// also ends ranks blocked in NCCL; the handler stays as comm_mpi_init installed it.
int comm_nccl_version(void) {
    int version = 0;
    ncclCheck(ncclGetVersion(&version));
    return version;
}

comm *comm_nccl_new(comm *boot, void *stream) {
    if (boot->mem != COMM_MEM_HOST) die("comm nccl: the boot communicator must carry host memory");
    int version = comm_nccl_version(), n_gpus = 0;
    cudaCheck(cudaGetDeviceCount(&n_gpus));
    // Several ranks per GPU: NCCL 2.30 and later allow it when asked; earlier ones refuse.
    if (boot->local_size > n_gpus) {
        const char *multi = getenv("NCCL_MULTI_RANK_GPU_ENABLE");
        if (version < 23000)
            die("comm nccl: %d ranks on this node share %d GPU(s), which NCCL %d.%d refuses (\"Duplicate GPU detected\"); "
                "use --transport mpi for several ranks per GPU, or NCCL 2.30 or later", boot->local_size, n_gpus,
                version / 10000, version / 100 % 100);
        if (!multi || strcmp(multi, "1") != 0)
            die("comm nccl: %d ranks on this node share %d GPU(s): NCCL %d.%d allows it with NCCL_MULTI_RANK_GPU_ENABLE=1 "
                "(mpirun -x NCCL_MULTI_RANK_GPU_ENABLE=1)", boot->local_size, n_gpus, version / 10000, version / 100 % 100);
    }
    comm *c = xcalloc(1, sizeof *c);
    nccl_impl *m = xcalloc(1, sizeof *m);
    m->boot = boot;
    m->stream = (cudaStream_t)stream;
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (boot->rank == 0) ncclCheck(ncclGetUniqueId(&id));
    if (boot->bcast(boot, &id, sizeof id, 0) != 0) die("comm nccl: broadcasting the NCCL id failed");
    ncclCheck(ncclCommInitRank(&m->nc, boot->size, id, boot->rank));

    c->name = "nccl";
    c->rank = boot->rank;
    c->size = boot->size;
    c->local_rank = boot->local_rank;
    c->local_size = boot->local_size;
    c->mem = COMM_MEM_DEVICE;
    c->impl = m;
    c->alltoallv = nccl_alltoallv;
    c->exchange_counts = nccl_exchange_counts;
    c->allreduce_sum_i64 = nccl_sum_i64;
    c->allreduce_max_f64 = nccl_max_f64;
    c->bcast = nccl_bcast;
    c->barrier = nccl_barrier;
    c->abort = nccl_abort;
    c->free = nccl_free;
    return c;
}
#endif
