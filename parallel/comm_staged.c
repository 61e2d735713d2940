// Device buffers over a host transport (MPI): see comm_cuda.h. A rank's own share is a copy
// on the device; the peers' shares go straight to a CUDA-aware MPI, or through pinned host
// buffers otherwise. Copies run on the stream given at creation (the CUDA backend's), so a
// buffer a kernel wrote is read after the kernel, and every call returns with its outputs in
// place.
#ifdef LLAMOE_CUDA
#include "parallel/comm_cuda.h"
#include "base/cuda_check.h"

#include <string.h>

typedef struct {
    comm *inner;
    int direct;               // inner reads and writes device memory itself (CUDA-aware MPI)
    void *send, *recv;        // pinned host staging buffers
    size_t send_cap, recv_cap;
    size_t *peer_send, *peer_recv;   // [P] the byte counts without the own share
    cudaStream_t stream;
    char name[32];
} staged_impl;

static void stage_reserve(staged_impl *s, void **buf, size_t *cap, size_t bytes) {
    if (bytes <= *cap) return;
    cudaCheck(cudaStreamSynchronize(s->stream));
    if (*buf) cudaCheck(cudaFreeHost(*buf));
    *buf = NULL;
    size_t c = bytes + bytes / 4;
    cudaCheck(cudaHostAlloc(buf, c, cudaHostAllocDefault));
    *cap = c;
}

static size_t extent(const size_t *bytes, const size_t *displ, int P) {
    size_t e = 0;
    for (int p = 0; p < P; p++)
        if (bytes[p] && displ[p] + bytes[p] > e) e = displ[p] + bytes[p];
    return e;
}

// Copies the peers' parts (not this rank's) between a device buffer and its host stage.
static void copy_peers(staged_impl *s, char *dst, const char *src, const size_t *bytes, const size_t *displ,
                       int P, int self, enum cudaMemcpyKind kind) {
    for (int p = 0; p < P; p++)
        if (p != self && bytes[p])
            cudaCheck(cudaMemcpyAsync(dst + displ[p], src + displ[p], bytes[p], kind, s->stream));
}

static int staged_alltoallv(comm *c, const void *send, const size_t *send_bytes, const size_t *send_displ,
                            void *recv, const size_t *recv_bytes, const size_t *recv_displ) {
    staged_impl *s = c->impl;
    int P = c->size, me = c->rank;
    if (send_bytes[me] != recv_bytes[me])
        die("comm %s: alltoallv: rank %d sends itself %zu bytes but expects %zu", c->name, me, send_bytes[me], recv_bytes[me]);
    if (send_bytes[me])
        cudaCheck(cudaMemcpyAsync((char *)recv + recv_displ[me], (const char *)send + send_displ[me], send_bytes[me],
                                  cudaMemcpyDeviceToDevice, s->stream));
    if (P == 1) return 0;
    memcpy(s->peer_send, send_bytes, (size_t)P * sizeof(size_t));
    memcpy(s->peer_recv, recv_bytes, (size_t)P * sizeof(size_t));
    s->peer_send[me] = s->peer_recv[me] = 0;
    if (s->direct) {
        cudaCheck(cudaStreamSynchronize(s->stream));   // MPI reads what the kernels wrote
        return s->inner->alltoallv(s->inner, send, s->peer_send, send_displ, recv, s->peer_recv, recv_displ);
    }
    stage_reserve(s, &s->send, &s->send_cap, extent(s->peer_send, send_displ, P) + 1);
    stage_reserve(s, &s->recv, &s->recv_cap, extent(s->peer_recv, recv_displ, P) + 1);
    copy_peers(s, s->send, send, s->peer_send, send_displ, P, me, cudaMemcpyDeviceToHost);
    cudaCheck(cudaStreamSynchronize(s->stream));       // MPI reads the host stage now
    int rc = s->inner->alltoallv(s->inner, s->send, s->peer_send, send_displ, s->recv, s->peer_recv, recv_displ);
    if (rc) return rc;
    copy_peers(s, recv, s->recv, s->peer_recv, recv_displ, P, me, cudaMemcpyHostToDevice);
    cudaCheck(cudaStreamSynchronize(s->stream));       // the stage is reused by the next call
    return 0;
}

static int staged_bcast(comm *c, void *buf, size_t bytes, int root) {
    staged_impl *s = c->impl;
    if (s->direct) {
        cudaCheck(cudaStreamSynchronize(s->stream));
        return s->inner->bcast(s->inner, buf, bytes, root);
    }
    stage_reserve(s, &s->send, &s->send_cap, bytes + 1);
    if (c->rank == root && bytes) cudaCheck(cudaMemcpyAsync(s->send, buf, bytes, cudaMemcpyDeviceToHost, s->stream));
    cudaCheck(cudaStreamSynchronize(s->stream));
    int rc = s->inner->bcast(s->inner, s->send, bytes, root);
    if (rc) return rc;
    if (bytes) cudaCheck(cudaMemcpyAsync(buf, s->send, bytes, cudaMemcpyHostToDevice, s->stream));
    cudaCheck(cudaStreamSynchronize(s->stream));
    return 0;
}

static int staged_exchange_counts(comm *c, const int64_t *send, int64_t *recv, int n) {
    staged_impl *s = c->impl;
    return s->inner->exchange_counts(s->inner, send, recv, n);
}
static int staged_sum_i64(comm *c, int64_t *v, int n) { staged_impl *s = c->impl; return s->inner->allreduce_sum_i64(s->inner, v, n); }
static int staged_max_f64(comm *c, double *v, int n) { staged_impl *s = c->impl; return s->inner->allreduce_max_f64(s->inner, v, n); }
static int staged_barrier(comm *c) { staged_impl *s = c->impl; return s->inner->barrier(s->inner); }
static void staged_abort(comm *c, int code) {
    staged_impl *s = c->impl;
    s->inner->abort(s->inner, code);
    exit(code);   // abort does not return; this covers a transport that would
}

static void staged_free(comm *c) {
    staged_impl *s = c->impl;
    cudaStreamSynchronize(s->stream);
    cudaFreeHost(s->send);
    cudaFreeHost(s->recv);
    free(s->peer_send);
    free(s->peer_recv);
    comm *inner = s->inner;
    free(s);
    free(c);
    inner->free(inner);
}

comm *comm_device_new(comm *inner, void *stream) {
    if (inner->mem != COMM_MEM_HOST) die("comm %s: already carries device memory", inner->name);
    comm *c = xcalloc(1, sizeof *c);
    staged_impl *s = xcalloc(1, sizeof *s);
    s->inner = inner;
    s->direct = comm_mpi_cuda_aware(inner);
    s->stream = (cudaStream_t)stream;
    s->peer_send = xcalloc((size_t)inner->size, sizeof(size_t));
    s->peer_recv = xcalloc((size_t)inner->size, sizeof(size_t));
    snprintf(s->name, sizeof s->name, "%s+%s", inner->name, s->direct ? "cuda-aware" : "staged");
    c->name = s->name;
    c->rank = inner->rank;
    c->size = inner->size;
    c->local_rank = inner->local_rank;
    c->local_size = inner->local_size;
    c->mem = COMM_MEM_DEVICE;
    c->impl = s;
    c->alltoallv = staged_alltoallv;
    c->exchange_counts = staged_exchange_counts;
    c->allreduce_sum_i64 = staged_sum_i64;
    c->allreduce_max_f64 = staged_max_f64;
    c->bcast = staged_bcast;
    c->barrier = staged_barrier;
    c->abort = staged_abort;
    c->free = staged_free;
    return c;
}
#endif
