// The CUDA backend object: its context (device, stream, cuBLAS handles), device memory and
// copies, timing marks, the pinned ring that carries host index arrays to the device, the
// scratch buffers, memory mode's copy stream, and the ops table.
#include "kernels/cuda/cuda_common.cuh"

#include <stdio.h>
#include <stdlib.h>

#define RING_BYTES ((size_t)8 << 20)
#define RING_ALIGN 256

// ---------------------------------------------------------------------------- argument ring
// The ring is written part by part. Entering a part records the event of the part left and
// waits for the event of the part entered (its last copies to the device are done), so the
// host never overwrites pinned bytes a pending copy still reads; on the device side every
// reader of a ring copy is ordered before the copy that overwrites it (one stream).
const void *cuda_args(cuda_ctx *cx, const void *host, size_t bytes) {
    if (bytes == 0) return NULL;
    // A recent identical upload is reused while its part has not been entered again.
    for (int i = 0; i < ARG_CACHE; i++) {
        arg_entry *e = &cx->cache[i];
        if (e->bytes == bytes && cx->ring_epoch < e->epoch + RING_PARTS && !memcmp(cx->ring_host + e->offset, host, bytes))
            return cx->ring_dev + e->offset;
    }
    size_t part = RING_BYTES / RING_PARTS;
    size_t need = (bytes + RING_ALIGN - 1) / RING_ALIGN * RING_ALIGN;
    if (need > part) {
        // Too big for the ring (not expected for index arrays): a synchronous copy.
        cudaCheck(cudaStreamSynchronize(cx->stream));   // earlier readers of the buffer are done
        if (bytes > cx->big_args_cap) {
            cudaCheck(cudaFree(cx->big_args));
            cx->big_args_cap = bytes + bytes / 2;
            cudaCheck(cudaMalloc(&cx->big_args, cx->big_args_cap));
        }
        cudaCheck(cudaMemcpyAsync(cx->big_args, host, bytes, cudaMemcpyHostToDevice, cx->stream));
        cudaCheck(cudaStreamSynchronize(cx->stream));
        return cx->big_args;
    }
    if (cx->ring_head + need > (size_t)(cx->ring_part + 1) * part) {
        cudaCheck(cudaEventRecord(cx->part_done[cx->ring_part], cx->stream));
        cx->ring_part = (cx->ring_part + 1) % RING_PARTS;
        cx->ring_epoch++;
        cudaCheck(cudaEventSynchronize(cx->part_done[cx->ring_part]));
        cx->ring_head = (size_t)cx->ring_part * part;
    }
    size_t at = cx->ring_head;
    memcpy(cx->ring_host + at, host, bytes);
    cudaCheck(cudaMemcpyAsync(cx->ring_dev + at, cx->ring_host + at, bytes, cudaMemcpyHostToDevice, cx->stream));
    cx->cache[cx->cache_next] = (arg_entry){bytes, at, cx->ring_epoch};
    cx->cache_next = (cx->cache_next + 1) % ARG_CACHE;
    cx->ring_head = at + need;
    return cx->ring_dev + at;
}

// ---------------------------------------------------------------------------- scratch
void *cuda_scratch(cuda_ctx *cx, int slot, size_t bytes) {
    if (bytes > cx->scratch_cap[slot]) {
        cudaCheck(cudaStreamSynchronize(cx->stream));   // a kernel may still read the old one
        cudaCheck(cudaFree(cx->scratch[slot]));
        size_t cap = bytes + bytes / 4;
        cudaCheck(cudaMalloc(&cx->scratch[slot], cap));
        cx->scratch_cap[slot] = cap;
    }
    return cx->scratch[slot];
}

void cuda_download_now(cuda_ctx *cx, void *host, const void *dev, size_t bytes) {
    if (!bytes) return;
    cudaCheck(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, cx->stream));
    cudaCheck(cudaStreamSynchronize(cx->stream));
}

// ---------------------------------------------------------------------------- memory ops
static void *cu_alloc(backend *be, size_t bytes) {
    if (!bytes) return NULL;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) die("cudaMalloc of %zu bytes (%.2f GiB) failed: %s", bytes, bytes / 1073741824.0, cudaGetErrorString(e));
    cudaCheck(cudaMemsetAsync(p, 0, bytes, cuda_of(be)->stream));
    return p;
}

// For memory mode's pool: NULL when the device is full, so the caller can say what it asked for.
static void *cu_try_alloc(backend *be, size_t bytes) {
    void *p = NULL;
    if (!bytes) return NULL;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    return p;
}

static void cu_free(backend *be, void *p) {
    if (p) cudaCheck(cudaFree(p));   // synchronises the device: no kernel still uses p
}

// From pageable memory cudaMemcpyAsync returns once src has been staged, so the caller may
// reuse src; from pinned memory it would not, so then it waits.
static void wait_if_pinned(cuda_ctx *cx, const void *src) {
    cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, src) == cudaSuccess && a.type == cudaMemoryTypeHost)
        cudaCheck(cudaStreamSynchronize(cx->stream));
    else
        (void)cudaGetLastError();   // pageable memory is not an error
}

static void cu_upload(backend *be, void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    cuda_ctx *cx = cuda_of(be);
    be->copies.uploads++;
    be->copies.bytes_up += bytes;
    cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cx->stream));
    wait_if_pinned(cx, src);
}

// A strided weight view in one 2-D copy (an identity slice of down_proj: one call, not one
// per row).
static void cu_upload_2d(backend *be, void *dst, const void *src, size_t src_pitch, size_t row_bytes, size_t rows) {
    if (!rows || !row_bytes) return;
    cuda_ctx *cx = cuda_of(be);
    be->copies.uploads++;
    be->copies.bytes_up += row_bytes * rows;
    cudaCheck(cudaMemcpy2DAsync(dst, row_bytes, src, src_pitch, row_bytes, rows, cudaMemcpyHostToDevice, cx->stream));
    wait_if_pinned(cx, src);
}

static void cu_download(backend *be, void *dst, const void *src, size_t bytes) {
    be->copies.downloads++;
    be->copies.bytes_down += bytes;
    cuda_download_now(cuda_of(be), dst, src, bytes);
}

static void cu_memset0(backend *be, void *dst, size_t bytes) {
    if (bytes) cudaCheck(cudaMemsetAsync(dst, 0, bytes, cuda_of(be)->stream));
}

static void cu_sync(backend *be) { cudaCheck(cudaStreamSynchronize(cuda_of(be)->stream)); }

// ---------------------------------------------------------------------------- timing
// Marks are events on the stream, from a ring: a mark must be read (seconds) before MARKS
// later marks reuse its event (a step's forward records a few hundred).
static backend_mark cu_mark(backend *be) {
    cuda_ctx *cx = cuda_of(be);
    uint64_t m = cx->next_mark++;
    cudaCheck(cudaEventRecord(cx->mark[m % MARKS], cx->stream));
    return m;
}

static double cu_seconds(backend *be, backend_mark a, backend_mark b) {
    cuda_ctx *cx = cuda_of(be);
    CHECK(b >= a && cx->next_mark - a <= MARKS);
    float ms = 0;
    cudaCheck(cudaEventSynchronize(cx->mark[b % MARKS]));
    cudaCheck(cudaEventElapsedTime(&ms, cx->mark[a % MARKS], cx->mark[b % MARKS]));
    return ms * 1e-3;
}

// ---------------------------------------------------------------------------- copy stream
// Memory mode's asynchronous expert copies run on a second stream; tickets are events. The
// ring of events is reused: waiting on a ticket whose event was recorded again later waits
// for that later point, which is longer than needed but never too short.
static uint64_t record_ticket(cuda_ctx *cx, cudaStream_t s) {
    uint64_t t = cx->next_ticket++;
    cudaCheck(cudaEventRecord(cx->ticket[t % COPY_TICKETS], s));
    return t;
}

static uint64_t cu_upload_async(backend *be, void *dst, const void *src, size_t bytes) {
    cuda_ctx *cx = cuda_of(be);
    be->copies.uploads++;
    be->copies.bytes_up += bytes;
    cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cx->copy_stream));
    return record_ticket(cx, cx->copy_stream);
}

static void cu_compute_wait(backend *be, uint64_t t) {
    cuda_ctx *cx = cuda_of(be);
    if (t) cudaCheck(cudaStreamWaitEvent(cx->stream, cx->ticket[t % COPY_TICKETS], 0));
}

static uint64_t cu_compute_fence(backend *be) {
    cuda_ctx *cx = cuda_of(be);
    return record_ticket(cx, cx->stream);
}

static void cu_copy_wait(backend *be, uint64_t t) {
    cuda_ctx *cx = cuda_of(be);
    if (t) cudaCheck(cudaStreamWaitEvent(cx->copy_stream, cx->ticket[t % COPY_TICKETS], 0));
}

// ---------------------------------------------------------------------------- device queries
extern "C" int cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

extern "C" int cuda_device_pci_bus_id(int device, char *buf, int len) {
    return cudaDeviceGetPCIBusId(buf, len, device) == cudaSuccess ? 0 : -1;
}

static const char *const expert_gemm_names[] = {"grouped", "loop", "gemv"};

extern "C" const char *backend_cuda_description(backend *be) {
    cuda_ctx *cx = cuda_of(be);
    int drv = 0, rt = 0;
    cudaDeviceProp p;
    cudaCheck(cudaGetDeviceProperties(&p, cx->device));
    cudaCheck(cudaDriverGetVersion(&drv));
    cudaCheck(cudaRuntimeGetVersion(&rt));
    const char *gemm = expert_gemm_names[cx->expert_gemm];
    if (cx->expert_gemm == EXPERT_GEMM_GROUPED && cx->grouped_ok < 0) gemm = "loop (the grouped GEMM refused bf16 in, fp32 out)";
    snprintf(cx->description, sizeof cx->description,
             "%.100s, sm_%d%d, %d SMs, %.1f GiB, driver API %d.%d, runtime %d.%d, cuBLAS %d, expert GEMM %s", p.name,
             p.major, p.minor, p.multiProcessorCount, p.totalGlobalMem / 1073741824.0, drv / 1000, drv % 1000 / 10,
             rt / 1000, rt % 1000 / 10, (int)cublasLtGetVersion(), gemm);
    return cx->description;
}

extern "C" double backend_cuda_peak_bandwidth(backend *be) {
    int clock_khz = 0, bus_bits = 0, dev = cuda_of(be)->device;
    // DDR: two transfers per clock. Both attributes exist on CUDA 12 and 13.
    if (cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return 2.0 * clock_khz * 1e3 * (bus_bits / 8.0);
}

extern "C" void *backend_cuda_stream(backend *be) { return (void *)cuda_of(be)->stream; }

// ---------------------------------------------------------------------------- the object
static void cu_destroy(backend *be) {
    cuda_ctx *cx = cuda_of(be);
    cudaStreamSynchronize(cx->stream);
    cudaStreamSynchronize(cx->copy_stream);
    for (int i = 0; i < SCR_COUNT; i++) cudaFree(cx->scratch[i]);
    cudaFree(cx->big_args);
    cudaFree(cx->ring_dev);
    cudaFreeHost(cx->ring_host);
    for (int i = 0; i < RING_PARTS; i++) cudaEventDestroy(cx->part_done[i]);
    for (int i = 0; i < COPY_TICKETS; i++) cudaEventDestroy(cx->ticket[i]);
    for (int i = 0; i < MARKS; i++) cudaEventDestroy(cx->mark[i]);
    lt_plans_free(cx->plans);
    cublasLtDestroy(cx->lt);
    cublasDestroy(cx->blas);
    cudaStreamDestroy(cx->copy_stream);
    cudaStreamDestroy(cx->stream);
    free(cx);
    free(be);
}

extern "C" backend *backend_cuda_new(const backend_options *o, llamoe_err *err) {
    int n = cuda_device_count(), device = o ? o->device : 0;
    if (n == 0) { fail(err, "no CUDA device is visible"); return NULL; }
    if (device < 0 || device >= n) { fail(err, "device %d: %d device(s) are visible", device, n); return NULL; }
    int gemm = EXPERT_GEMM_GROUPED;
    const char *g = o ? o->expert_gemm : NULL;
    if (g && !strcmp(g, "loop")) gemm = EXPERT_GEMM_LOOP;
    else if (g && !strcmp(g, "gemv")) gemm = EXPERT_GEMM_GEMV;
    else if (g && strcmp(g, "grouped")) { fail(err, "expert GEMM %s: expected grouped, loop or gemv", g); return NULL; }

    cuda_ctx *cx = (cuda_ctx *)xcalloc(1, sizeof *cx);
    cx->device = device;
    cx->expert_gemm = gemm;
    cx->att_smem_allowed = 48 << 10;
    cudaCheck(cudaSetDevice(device));
    cudaCheck(cudaDeviceGetAttribute(&cx->sm_count, cudaDevAttrMultiProcessorCount, device));
    cudaCheck(cudaStreamCreateWithFlags(&cx->stream, cudaStreamNonBlocking));
    cudaCheck(cudaStreamCreateWithFlags(&cx->copy_stream, cudaStreamNonBlocking));
    cublasCheck(cublasLtCreate(&cx->lt));
    cublasCheck(cublasCreate(&cx->blas));
    cublasCheck(cublasSetStream(cx->blas, cx->stream));
    cx->plans = lt_plans_new();
    cudaCheck(cudaHostAlloc((void **)&cx->ring_host, RING_BYTES, cudaHostAllocDefault));
    cudaCheck(cudaMalloc((void **)&cx->ring_dev, RING_BYTES));
    for (int i = 0; i < RING_PARTS; i++) cudaCheck(cudaEventCreateWithFlags(&cx->part_done[i], cudaEventDisableTiming));
    for (int i = 0; i < COPY_TICKETS; i++) cudaCheck(cudaEventCreateWithFlags(&cx->ticket[i], cudaEventDisableTiming));
    for (int i = 0; i < MARKS; i++) cudaCheck(cudaEventCreate(&cx->mark[i]));
    cx->next_ticket = 1;

    backend *be = (backend *)xcalloc(1, sizeof *be);
    be->name = "cuda";
    be->device_memory = 1;
    be->ctx = cx;
    be->destroy = cu_destroy;
    be->alloc = cu_alloc;
    be->try_alloc = cu_try_alloc;
    be->free = cu_free;
    be->upload = cu_upload;
    be->upload_2d = cu_upload_2d;
    be->download = cu_download;
    be->memset0 = cu_memset0;
    be->sync = cu_sync;
    be->mark = cu_mark;
    be->seconds = cu_seconds;
    be->embed = cuda_embed;
    be->rmsnorm = cuda_rmsnorm;
    be->matmul = cuda_matmul;
    be->rope = cuda_rope;
    be->kv_write = cuda_kv_write;
    be->attention = cuda_attention;
    be->swiglu = cuda_swiglu;
    be->add = cuda_add;
    be->gather_rows = cuda_gather_rows;
    be->argmax = cuda_argmax;
    be->router_topk = cuda_router_topk;
    be->moe_plan = cuda_moe_plan;
    be->moe_pack = cuda_moe_pack;
    be->moe_group = cuda_moe_group;
    be->expert_ffn = cuda_expert_ffn;
    be->combine = cuda_combine;
    be->upload_async = cu_upload_async;
    be->compute_wait = cu_compute_wait;
    be->compute_fence = cu_compute_fence;
    be->copy_wait = cu_copy_wait;
    return be;
}
