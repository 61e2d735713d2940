// The CPU backend object: its options, scratch buffers and ops table. Backend memory is host
// memory, so the memory ops are the C library's (counted, as a device backend's copies are)
// and sync has nothing to wait for.
#include "kernels/cpu/cpu_internal.h"

#include <omp.h>

typedef struct {
    int threads;
    struct { void *p; size_t cap; } scratch[CPU_SCRATCH_N];
    double t0;   // marks are nanoseconds since creation
} cpu_ctx;

static cpu_ctx *ctx_of(backend *be) { return be->ctx; }

int cpu_threads(backend *be) { return ctx_of(be)->threads; }

void *cpu_scratch(backend *be, int id, size_t bytes) {
    cpu_ctx *cx = ctx_of(be);
    CHECK(id >= 0 && id < CPU_SCRATCH_N);
    if (bytes > cx->scratch[id].cap) {
        free(cx->scratch[id].p);
        cx->scratch[id].cap = bytes + bytes / 4;   // some headroom: prefill chunks vary in size
        cx->scratch[id].p = xmalloc(cx->scratch[id].cap);
    }
    return cx->scratch[id].p;
}

void *cpu_thread_scratch(backend *be, int id, int threads, size_t per_thread) {
    char *p = cpu_scratch(be, id, (size_t)threads * cpu_thread_stride(per_thread) + 64);
    return p + (64 - (uintptr_t)p % 64) % 64;
}

// ---------------------------------------------------------------------------- memory
static void *cpu_alloc(backend *be, size_t bytes) { return xcalloc(bytes, 1); }
static void *cpu_try_alloc(backend *be, size_t bytes) { return calloc(bytes ? bytes : 1, 1); }
static void cpu_free(backend *be, void *p) { free(p); }

static void cpu_upload(backend *be, void *dst, const void *src, size_t bytes) {
    be->copies.uploads++;
    be->copies.bytes_up += bytes;
    if (bytes) memcpy(dst, src, bytes);
}

static void cpu_upload_2d(backend *be, void *dst, const void *src, size_t src_pitch, size_t row_bytes, size_t rows) {
    be->copies.uploads++;
    be->copies.bytes_up += row_bytes * rows;
    for (size_t r = 0; r < rows; r++) memcpy((char *)dst + r * row_bytes, (const char *)src + r * src_pitch, row_bytes);
}

static void cpu_download(backend *be, void *dst, const void *src, size_t bytes) {
    be->copies.downloads++;
    be->copies.bytes_down += bytes;
    if (bytes) memcpy(dst, src, bytes);
}

static void cpu_memset0(backend *be, void *dst, size_t bytes) { if (bytes) memset(dst, 0, bytes); }
static void cpu_sync(backend *be) {}

// ---------------------------------------------------------------------------- timing
static backend_mark cpu_mark(backend *be) {
    return (backend_mark)((now_seconds() - ctx_of(be)->t0) * 1e9);
}
static double cpu_seconds(backend *be, backend_mark a, backend_mark b) { return ((double)b - (double)a) * 1e-9; }

// ---------------------------------------------------------------------------- the object
static void cpu_destroy(backend *be) {
    cpu_ctx *cx = ctx_of(be);
    for (int i = 0; i < CPU_SCRATCH_N; i++) free(cx->scratch[i].p);
    free(cx);
    free(be);
}

backend *backend_cpu_new(const backend_options *o) {
    cpu_ctx *cx = xcalloc(1, sizeof *cx);
    cx->threads = o && o->threads > 0 ? o->threads : omp_get_num_procs();
    cx->t0 = now_seconds();
    backend *be = xcalloc(1, sizeof *be);
    *be = (backend){
        .name = "cpu",
        .ctx = cx,
        .destroy = cpu_destroy,
        .alloc = cpu_alloc,
        .try_alloc = cpu_try_alloc,
        .free = cpu_free,
        .upload = cpu_upload,
        .upload_2d = cpu_upload_2d,
        .download = cpu_download,
        .memset0 = cpu_memset0,
        .sync = cpu_sync,
        .mark = cpu_mark,
        .seconds = cpu_seconds,
        .embed = cpu_embed,
        .rmsnorm = cpu_rmsnorm,
        .matmul = cpu_matmul,
        .rope = cpu_rope,
        .kv_write = cpu_kv_write,
        .attention = cpu_attention,
        .swiglu = cpu_swiglu,
        .add = cpu_add,
        .gather_rows = cpu_gather_rows,
        .argmax = cpu_argmax,
        .router_topk = cpu_router_topk,
        .moe_plan = cpu_moe_plan,
        .moe_pack = cpu_moe_pack,
        .moe_group = cpu_moe_group,
        .expert_ffn = cpu_expert_ffn,
        .combine = cpu_combine,
        // the asynchronous copy hooks stay NULL: upload is a memcpy
    };
    return be;
}
