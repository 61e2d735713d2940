// The CUDA backend's ops table, its context (device, stream, cuBLASLt handle), device memory,
// the pinned ring that carries host index arrays to the device, and the scratch buffers.
#include "kernels/cuda/cuda_common.cuh"

#include <stdio.h>
#include <stdlib.h>

// ---------------------------------------------------------------------------- context
// Started by the first backend_cuda() on the device current at that moment.
#define RING_BYTES ((size_t)8 << 20)
#define RING_PARTS 4
#define RING_ALIGN 256
#define ARG_CACHE 16

typedef struct {
    size_t bytes, offset;    // where the copy sits in the ring (bytes = 0: empty)
    uint64_t epoch;          // ring epoch (parts entered) when it was written
} arg_entry;

static struct {
    int started, device, sm_count;
    cudaStream_t stream;
    cublasLtHandle_t lt;
    // ring: pinned host memory mirrored on the device, in RING_PARTS parts; an event per part
    // marks the last copy out of it, waited for before the host writes that part again
    char *ring_host, *ring_dev;
    size_t ring_head;        // next free byte, inside part ring_part
    int ring_part;
    uint64_t ring_epoch;
    cudaEvent_t part_done[RING_PARTS];
    arg_entry cache[ARG_CACHE];
    int cache_next;
    // large argument arrays that do not fit a ring part (rare): a grown device buffer
    void *big_args;
    size_t big_args_cap;
    void *scratch[SCR_COUNT];
    size_t scratch_cap[SCR_COUNT];
    char description[256];
} ctx;

static void start(void) {
    if (ctx.started) return;
    cudaCheck(cudaGetDevice(&ctx.device));
    cudaCheck(cudaDeviceGetAttribute(&ctx.sm_count, cudaDevAttrMultiProcessorCount, ctx.device));
    cudaCheck(cudaStreamCreateWithFlags(&ctx.stream, cudaStreamNonBlocking));
    cublasCheck(cublasLtCreate(&ctx.lt));
    cudaCheck(cudaHostAlloc((void **)&ctx.ring_host, RING_BYTES, cudaHostAllocDefault));
    cudaCheck(cudaMalloc((void **)&ctx.ring_dev, RING_BYTES));
    for (int i = 0; i < RING_PARTS; i++) cudaCheck(cudaEventCreateWithFlags(&ctx.part_done[i], cudaEventDisableTiming));
    const char *g = getenv("LLAMOE_CUDA_GROUPED");
    if (g && *g && backend_cuda_set_grouped(g) != 0) die("LLAMOE_CUDA_GROUPED=%s: expected auto, lt or gemv", g);
    ctx.started = 1;
}

cudaStream_t cuda_stream(void) { return ctx.stream; }
int cuda_sm_count(void) { return ctx.sm_count; }
cublasLtHandle_t cuda_lt(void) { return ctx.lt; }
void *backend_cuda_stream(void) { start(); return (void *)ctx.stream; }

// ---------------------------------------------------------------------------- argument ring
// The ring is written part by part. Entering a part records the event of the part left and
// waits for the event of the part entered (its last copies to the device are done), so the
// host never overwrites pinned bytes a pending copy still reads; on the device side every
// reader of a ring copy is ordered before the copy that overwrites it (one stream).
const void *cuda_args(const void *host, size_t bytes) {
    if (bytes == 0) return NULL;
    // A recent identical upload is reused while its part has not been entered again.
    for (int i = 0; i < ARG_CACHE; i++) {
        arg_entry *e = &ctx.cache[i];
        if (e->bytes == bytes && ctx.ring_epoch < e->epoch + RING_PARTS &&
            !memcmp(ctx.ring_host + e->offset, host, bytes))
            return ctx.ring_dev + e->offset;
    }
    size_t part = RING_BYTES / RING_PARTS;
    size_t need = (bytes + RING_ALIGN - 1) / RING_ALIGN * RING_ALIGN;
    if (need > part) {
        // Too big for the ring (not expected for index arrays): a synchronous copy.
        if (bytes > ctx.big_args_cap) {
            cudaCheck(cudaStreamSynchronize(ctx.stream));
            cudaCheck(cudaFree(ctx.big_args));
            ctx.big_args_cap = bytes + bytes / 2;
            cudaCheck(cudaMalloc(&ctx.big_args, ctx.big_args_cap));
        }
        cudaCheck(cudaStreamSynchronize(ctx.stream));   // earlier readers of the buffer are done
        cudaCheck(cudaMemcpyAsync(ctx.big_args, host, bytes, cudaMemcpyHostToDevice, ctx.stream));
        cudaCheck(cudaStreamSynchronize(ctx.stream));
        return ctx.big_args;
    }
    if (ctx.ring_head + need > (size_t)(ctx.ring_part + 1) * part) {
        cudaCheck(cudaEventRecord(ctx.part_done[ctx.ring_part], ctx.stream));
        ctx.ring_part = (ctx.ring_part + 1) % RING_PARTS;
        ctx.ring_epoch++;
        cudaCheck(cudaEventSynchronize(ctx.part_done[ctx.ring_part]));
        ctx.ring_head = (size_t)ctx.ring_part * part;
    }
    size_t at = ctx.ring_head;
    memcpy(ctx.ring_host + at, host, bytes);
    cudaCheck(cudaMemcpyAsync(ctx.ring_dev + at, ctx.ring_host + at, bytes, cudaMemcpyHostToDevice, ctx.stream));
    ctx.cache[ctx.cache_next] = (arg_entry){bytes, at, ctx.ring_epoch};
    ctx.cache_next = (ctx.cache_next + 1) % ARG_CACHE;
    ctx.ring_head = at + need;
    return ctx.ring_dev + at;
}

// ---------------------------------------------------------------------------- scratch
void *cuda_scratch(int slot, size_t bytes) {
    if (bytes > ctx.scratch_cap[slot]) {
        cudaCheck(cudaStreamSynchronize(ctx.stream));   // a kernel may still read the old one
        cudaCheck(cudaFree(ctx.scratch[slot]));
        size_t cap = bytes + bytes / 4;
        cudaCheck(cudaMalloc(&ctx.scratch[slot], cap));
        ctx.scratch_cap[slot] = cap;
    }
    return ctx.scratch[slot];
}

void cuda_download_now(void *host, const void *dev, size_t bytes) {
    if (!bytes) return;
    cudaCheck(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, ctx.stream));
    cudaCheck(cudaStreamSynchronize(ctx.stream));
}

// ---------------------------------------------------------------------------- memory ops
static void *cu_alloc(size_t bytes) {
    if (!bytes) return NULL;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) die("cudaMalloc of %zu bytes (%.2f GiB) failed: %s", bytes, bytes / 1073741824.0, cudaGetErrorString(e));
    cudaCheck(cudaMemsetAsync(p, 0, bytes, ctx.stream));
    return p;
}

// For memory mode's pool: NULL when the device is full, so the caller can say what it asked for.
static void *cu_try_alloc(size_t bytes) {
    void *p = NULL;
    if (!bytes) return NULL;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    return p;
}

// ---------------------------------------------------------------------------- copy stream
// Memory mode's asynchronous expert copies run on a second stream; tickets are events. The
// ring of events is reused: waiting on a ticket whose event was recorded again later waits
// for that later point, which is longer than needed but never too short.
#define COPY_TICKETS 256
static struct {
    cudaStream_t stream;
    cudaEvent_t event[COPY_TICKETS];
    uint64_t next;
} copy;

static uint64_t record_ticket(cudaStream_t s) {
    if (!copy.stream) {
        cudaCheck(cudaStreamCreateWithFlags(&copy.stream, cudaStreamNonBlocking));
        for (int i = 0; i < COPY_TICKETS; i++) cudaCheck(cudaEventCreateWithFlags(&copy.event[i], cudaEventDisableTiming));
        copy.next = 1;
    }
    uint64_t t = copy.next++;
    cudaCheck(cudaEventRecord(copy.event[t % COPY_TICKETS], s));
    return t;
}

static uint64_t cu_upload_async(void *dst, const void *src, size_t bytes) {
    if (!copy.stream) record_ticket(ctx.stream);   // creates the stream
    cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, copy.stream));
    return record_ticket(copy.stream);
}

static void cu_compute_wait(uint64_t t) {
    if (t) cudaCheck(cudaStreamWaitEvent(ctx.stream, copy.event[t % COPY_TICKETS], 0));
}

static uint64_t cu_compute_fence(void) { return record_ticket(ctx.stream); }

static void cu_copy_wait(uint64_t t) {
    if (t && copy.stream) cudaCheck(cudaStreamWaitEvent(copy.stream, copy.event[t % COPY_TICKETS], 0));
}

static void cu_free(void *p) {
    if (p) cudaCheck(cudaFree(p));   // synchronises the device: no kernel still uses p
}

// From pageable memory cudaMemcpyAsync returns once src has been staged, so the caller may
// reuse src; from pinned memory it would not, so then it waits.
static void cu_upload(void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, ctx.stream));
    cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, src) == cudaSuccess && a.type == cudaMemoryTypeHost)
        cudaCheck(cudaStreamSynchronize(ctx.stream));
    else
        (void)cudaGetLastError();   // pageable memory is not an error
}

static void cu_download(void *dst, const void *src, size_t bytes) { cuda_download_now(dst, src, bytes); }

static void cu_sync(void) { cudaCheck(cudaStreamSynchronize(ctx.stream)); }

// ---------------------------------------------------------------------------- device queries
extern "C" int cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

extern "C" void cuda_select_device(int device) {
    if (ctx.started && device != ctx.device) die("cuda_select_device(%d): the backend already runs on device %d", device, ctx.device);
    cudaCheck(cudaSetDevice(device));
}

extern "C" int cuda_device_pci_bus_id(int device, char *buf, int len) {
    return cudaDeviceGetPCIBusId(buf, len, device) == cudaSuccess ? 0 : -1;
}

extern "C" const char *cuda_device_description(void) {
    int dev = 0, drv = 0, rt = 0;
    cudaCheck(cudaGetDevice(&dev));
    cudaDeviceProp p;
    cudaCheck(cudaGetDeviceProperties(&p, dev));
    cudaCheck(cudaDriverGetVersion(&drv));
    cudaCheck(cudaRuntimeGetVersion(&rt));
    snprintf(ctx.description, sizeof ctx.description, "%.120s, sm_%d%d, %d SMs, %.1f GiB, driver API %d.%d, runtime %d.%d",
             p.name, p.major, p.minor, p.multiProcessorCount, p.totalGlobalMem / 1073741824.0, drv / 1000,
             drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
    return ctx.description;
}

extern "C" double cuda_device_peak_bandwidth(void) {
    int dev = 0, clock_khz = 0, bus_bits = 0;
    cudaCheck(cudaGetDevice(&dev));
    // DDR: two transfers per clock. Both attributes exist on CUDA 12 and 13.
    if (cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return 2.0 * clock_khz * 1e3 * (bus_bits / 8.0);
}

// ---------------------------------------------------------------------------- the table
static const backend cuda_backend = {
    .name = "cuda",
    .device_memory = 1,
    .alloc = cu_alloc,
    .free = cu_free,
    .upload = cu_upload,
    .download = cu_download,
    .sync = cu_sync,
    .embed = cuda_embed,
    .rmsnorm = cuda_rmsnorm,
    .matmul = cuda_matmul,
    .rope = cuda_rope,
    .kv_write = cuda_kv_write,
    .attention = cuda_attention,
    .swiglu = cuda_swiglu,
    .add = cuda_add,
    .router_topk = cuda_router_topk,
    .gather_rows = cuda_gather_rows,
    .expert_ffn = cuda_expert_ffn,
    .combine = cuda_combine,
    .argmax = cuda_argmax,
    .try_alloc = cu_try_alloc,
    .upload_async = cu_upload_async,
    .compute_wait = cu_compute_wait,
    .compute_fence = cu_compute_fence,
    .copy_wait = cu_copy_wait,
};

extern "C" const backend *backend_cuda(void) {
    start();
    return &cuda_backend;
}
