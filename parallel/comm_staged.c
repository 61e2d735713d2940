// The staging decorator: a transport carrying the other kind of memory (see comm_cuda.h).
// Copies run on the stream given at creation (the CUDA backend's), so a device buffer written by a kernel is read
// after the kernel, and every call returns with its outputs in place.
#ifdef LLAMOE_CUDA
#include "parallel/comm_cuda.h"
#include "base/cuda_check.h"

typedef struct {
    comm *inner;
    int to_device;            // 1: inner takes device buffers (outer ones are host)
    void *send, *recv;        // staging buffers in inner's memory
    size_t send_cap, recv_cap;
    cudaStream_t stream;      // copies are ordered with the kernels on this stream
    char name[32];
} staged_impl;

static void stage_reserve(staged_impl *s, void **buf, size_t *cap, size_t bytes) {
    if (bytes <= *cap) return;
    cudaStream_t st = s->stream;
    cudaCheck(cudaStreamSynchronize(st));
    if (*buf) cudaCheck(s->to_device ? cudaFree(*buf) : cudaFreeHost(*buf));
    *buf = NULL;
    size_t c = bytes + bytes / 4;
    if (s->to_device) cudaCheck(cudaMalloc(buf, c));
    else cudaCheck(cudaHostAlloc(buf, c, cudaHostAllocDefault));
    *cap = c;
}

// outer -> stage and stage -> outer: device<->pinned host, or host<->device.
static void copy_in(staged_impl *s, void *stage, const void *outer, size_t bytes) {
    if (!bytes) return;
    cudaStream_t st = s->stream;
    cudaCheck(cudaMemcpyAsync(stage, outer, bytes, s->to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost, st));
    cudaCheck(cudaStreamSynchronize(st));   // MPI reads the host stage now; NCCL is ordered anyway
}
static void copy_out(staged_impl *s, void *outer, const void *stage, size_t bytes) {
    if (!bytes) return;
    cudaStream_t st = s->stream;
    cudaCheck(cudaMemcpyAsync(outer, stage, bytes, s->to_device ? cudaMemcpyDeviceToHost : cudaMemcpyHostToDevice, st));
    cudaCheck(cudaStreamSynchronize(st));   // the stage is reused by the next call
}

static size_t extent(const size_t *bytes, const size_t *displ, int P) {
    size_t e = 0;
    for (int p = 0; p < P; p++)
        if (bytes[p] && displ[p] + bytes[p] > e) e = displ[p] + bytes[p];
    return e;
}

static int staged_alltoallv(comm *c, const void *send, const size_t *send_bytes, const size_t *send_displ,
                            void *recv, const size_t *recv_bytes, const size_t *recv_displ) {
    staged_impl *s = c->impl;
    size_t se = extent(send_bytes, send_displ, c->size), re = extent(recv_bytes, recv_displ, c->size);
    stage_reserve(s, &s->send, &s->send_cap, se ? se : 1);
    stage_reserve(s, &s->recv, &s->recv_cap, re ? re : 1);
    copy_in(s, s->send, send, se);
    int rc = s->inner->alltoallv(s->inner, s->send, send_bytes, send_displ, s->recv, recv_bytes, recv_displ);
    if (rc) return rc;
    copy_out(s, recv, s->recv, re);
    return 0;
}

static int staged_bcast(comm *c, void *buf, size_t bytes, int root) {
    staged_impl *s = c->impl;
    stage_reserve(s, &s->send, &s->send_cap, bytes ? bytes : 1);
    if (c->rank == root) copy_in(s, s->send, buf, bytes);
    int rc = s->inner->bcast(s->inner, s->send, bytes, root);
    if (rc) return rc;
    copy_out(s, buf, s->send, bytes);
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
    if (s->to_device) { cudaFree(s->send); cudaFree(s->recv); }
    else { cudaFreeHost(s->send); cudaFreeHost(s->recv); }
    comm *inner = s->inner;
    free(s);
    free(c);
    inner->free(inner);
}

comm *comm_staged_new(comm *inner, void *stream) {
    comm *c = xcalloc(1, sizeof *c);
    staged_impl *s = xcalloc(1, sizeof *s);
    s->inner = inner;
    s->stream = (cudaStream_t)stream;
    s->to_device = inner->mem == COMM_MEM_DEVICE;
    snprintf(s->name, sizeof s->name, "%s+staged", inner->name);
    c->name = s->name;
    c->rank = inner->rank;
    c->size = inner->size;
    c->local_rank = inner->local_rank;
    c->local_size = inner->local_size;
    c->mem = s->to_device ? COMM_MEM_HOST : COMM_MEM_DEVICE;
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
