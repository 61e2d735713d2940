// The CPU backend's ops table. Backend memory is host memory, so the memory ops are the C
// library's and sync has nothing to wait for.
#include "kernels/cpu/cpu_internal.h"

#include <omp.h>

// ---------------------------------------------------------------------------- threads
static int n_threads = 0;   // 0: every core of this process's binding

void backend_cpu_set_threads(int n) { n_threads = n > 0 ? n : 0; }

int cpu_threads(void) { return n_threads > 0 ? n_threads : omp_get_num_procs(); }

// ---------------------------------------------------------------------------- scratch
static struct { void *p; size_t cap; } scratch[CPU_SCRATCH_N];

void *cpu_scratch(int id, size_t bytes) {
    CHECK(id >= 0 && id < CPU_SCRATCH_N);
    if (bytes > scratch[id].cap) {
        free(scratch[id].p);
        scratch[id].cap = bytes + bytes / 4;   // some headroom: prefill chunks vary in size
        scratch[id].p = xmalloc(scratch[id].cap);
    }
    return scratch[id].p;
}

void *cpu_thread_scratch(int id, int threads, size_t per_thread) {
    char *p = cpu_scratch(id, (size_t)threads * cpu_thread_stride(per_thread) + 64);
    return p + (64 - (uintptr_t)p % 64) % 64;
}

// ---------------------------------------------------------------------------- memory
static void *cpu_alloc(size_t bytes) { return xcalloc(bytes, 1); }
static void *cpu_try_alloc(size_t bytes) { return calloc(bytes ? bytes : 1, 1); }
static void cpu_free(void *p) { free(p); }
static void cpu_copy(void *dst, const void *src, size_t bytes) { if (bytes) memcpy(dst, src, bytes); }
static void cpu_sync(void) {}

// ---------------------------------------------------------------------------- the table
static const backend cpu_backend = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .sync = cpu_sync,
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .matmul = cpu_matmul,
    .rope = cpu_rope,
    .kv_write = cpu_kv_write,
    .attention = cpu_attention,
    .swiglu = cpu_swiglu,
    .add = cpu_add,
    .router_topk = cpu_router_topk,
    .gather_rows = cpu_gather_rows,
    .expert_ffn = cpu_expert_ffn,
    .combine = cpu_combine,
    .argmax = cpu_argmax,
    .try_alloc = cpu_try_alloc,   // the async copy hooks stay NULL: upload is a memcpy
};

const backend *backend_cpu(void) { return &cpu_backend; }
