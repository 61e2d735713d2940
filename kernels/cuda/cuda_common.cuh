// Shared by the CUDA kernels: error checks, the backend object's state (cuda_ctx: device,
// stream, cuBLAS handles, scratch, the pinned ring that carries small host arrays to the
// device), and device helpers.
//
// Conventions of the CUDA backend (see docs/gpu.md):
//   - Every op is asynchronous on the backend's stream; only download, sync, argmax (whose
//     output is a host array) and the timing queries wait for it.
//   - Activations are float32 in device memory, as in the ops table; weights stay in their
//     checkpoint dtype (BF16, F16 or F32) and are widened in registers. GEMMs through cuBLAS
//     narrow the activations to the weights' dtype first (fp32 accumulation and fp32 output).
//   - Host index arrays of the dense ops (ids, slot, pos) are copied by cuda_args() through
//     a pinned ring; the MoE ops take theirs in device memory, and per-rank tables by value.
//   - One CUDA backend per process: the device is made current when the backend is created.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

// base/common.h is C11: _Noreturn is spelt [[noreturn]] in C++.
#define _Noreturn [[noreturn]]
extern "C" {
#include "kernels/backend.h"
}
#include "base/cuda_check.h"
#undef _Noreturn
#include "kernels/cuda/backend_cuda.h"

// ---------------------------------------------------------------------------- errors
// One macro per library, each naming the call, file and line, then dying through die() (so
// that under MPI one failing rank ends the job); cudaCheck is base/cuda_check.h's.
#define cublasCheck(call) cuda_check_blas((call), #call, __FILE__, __LINE__)
// A kernel launch: catches bad configurations at once (asynchronous faults surface at the
// next synchronising call, with that call's name; CUDA_LAUNCH_BLOCKING=1 names the kernel).
#define cudaCheckLaunch() cuda_check_rt(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

static inline void cuda_check_blas(cublasStatus_t s, const char *call, const char *file, int line) {
    if (s != CUBLAS_STATUS_SUCCESS) die("%s:%d: %s failed: %s (%d)", file, line, call, cublasGetStatusString(s), (int)s);
}

// ---------------------------------------------------------------------------- the context
// Device scratch that grows on demand and is kept (contents not preserved across growth).
// One buffer per slot; a slot's buffer is reused by the next op that asks for it, which is
// safe because all ops run in order on one stream.
enum {
    SCR_ACT16,      // activations narrowed to bf16/f16 for cuBLAS
    SCR_ACT16_B,    // the expert FFN's narrowed hidden activations
    SCR_FFN_GU,     // expert FFN gate and up outputs (fp32)
    SCR_FFN_H,      // small-batch expert FFN hidden activations (fp32)
    SCR_ATT,        // attention split-KV partials
    SCR_SMALL_OUT,  // argmax results before they go to the host
    SCR_MOE,        // moe_group's per-source histograms and bases
    SCR_COUNT
};

// The ranks' first returned rows, passed to the MoE kernels by value.
typedef struct { int64_t v[MOE_MAX_RANKS + 1]; } rank_table;

// silu(g) * u, the one expression of every SwiGLU kernel (the CPU's is cpu_swiglu1).
static __device__ __forceinline__ float cuda_swiglu1(float g, float u) { return g / (1.0f + expf(-g)) * u; }

enum { EXPERT_GEMM_GROUPED, EXPERT_GEMM_LOOP, EXPERT_GEMM_GEMV };

#define RING_PARTS 4
#define ARG_CACHE 16
#define COPY_TICKETS 256
#define MARKS 4096

typedef struct {
    size_t bytes, offset;    // where the copy sits in the ring (bytes = 0: empty)
    uint64_t epoch;          // ring epoch (parts entered) when it was written
} arg_entry;

typedef struct lt_plans lt_plans;   // matmul.cu: cuBLASLt descriptors cached per shape

typedef struct {
    int device, sm_count;
    cudaStream_t stream;
    cublasLtHandle_t lt;
    cublasHandle_t blas;
    lt_plans *plans;
    int expert_gemm;         // EXPERT_GEMM_*
    int grouped_ok;          // 1: cublasGemmGroupedBatchedEx took bf16 in, fp32 out; -1: it
                             // refused (the loop runs instead); 0: not tried yet
    // ring: pinned host memory mirrored on the device, in RING_PARTS parts; an event per part
    // marks the last copy out of it, waited for before the host writes that part again
    char *ring_host, *ring_dev;
    size_t ring_head;        // next free byte, inside part ring_part
    int ring_part;
    uint64_t ring_epoch;
    cudaEvent_t part_done[RING_PARTS];
    arg_entry cache[ARG_CACHE];
    int cache_next;
    void *big_args;          // argument arrays too big for a ring part (rare): a grown buffer
    size_t big_args_cap;
    void *scratch[SCR_COUNT];
    size_t scratch_cap[SCR_COUNT];
    size_t att_smem_allowed; // dynamic shared memory the attention kernel may use
    // memory mode's copy stream; tickets are events (a ring of them)
    cudaStream_t copy_stream;
    cudaEvent_t ticket[COPY_TICKETS];
    uint64_t next_ticket;
    // timing marks: a ring of events
    cudaEvent_t mark[MARKS];
    uint64_t next_mark;
    char description[256];
} cuda_ctx;

static inline cuda_ctx *cuda_of(backend *be) { return (cuda_ctx *)be->ctx; }

// Copies `bytes` of host memory to the device through the pinned ring and returns the device
// copy, valid for kernels issued on the stream before the ring wraps (several MiB later).
// The same bytes asked again soon after get the same device copy without a new transfer
// (the per-layer pos/slot/inv_freq arrays of one step).
const void *cuda_args(cuda_ctx *cx, const void *host, size_t bytes);
void *cuda_scratch(cuda_ctx *cx, int slot, size_t bytes);
// Copies device -> host and waits for it (results the host reads at once).
void cuda_download_now(cuda_ctx *cx, void *host, const void *dev, size_t bytes);

// ---------------------------------------------------------------------------- ops
// The entries of the ops table, one group per .cu file (documented in kernels/backend.h).
void cuda_embed(backend *be, float *out, const weight_t *table, const int32_t *ids, int n);
void cuda_gather_rows(backend *be, float *out, const float *x, const int32_t *rows, int n, int dim);
void cuda_rmsnorm(backend *be, float *out, const float *x, const float *w, int n, int dim, float eps);
void cuda_matmul(backend *be, float *out, const float *x, const weight_t *w, int n);
void cuda_rope(backend *be, float *x, int n, int n_heads, int head_dim, const int32_t *pos, const float *inv_freq);
void cuda_kv_write(backend *be, float *k_cache, float *v_cache, const float *k, const float *v,
                   const int32_t *slot, const int32_t *pos, int n, int kv_dim, int64_t slot_stride);
void cuda_attention(backend *be, float *out, const float *q, const float *k_cache, const float *v_cache,
                    const int32_t *slot, const int32_t *pos, int n,
                    int n_heads, int n_kv_heads, int head_dim, int64_t slot_stride);
void cuda_swiglu(backend *be, float *out, const float *gate, const float *up, int64_t n);
void cuda_add(backend *be, float *x, const float *y, int64_t n);
void cuda_argmax(backend *be, int32_t *out, const float *logits, int n, int vocab);
void cuda_router_topk(backend *be, int32_t *expert, float *weight, const float *logits, int n, int n_experts, int k);
void cuda_moe_plan(backend *be, int32_t *counts, int32_t *row_slot, int32_t *pair_slot, int32_t *pair_expert,
                   int64_t *tally, const int32_t *expert, int n, int k, int salt, const moe_map *map);
void cuda_moe_pack(backend *be, void *send, const moe_layout *at, const float *x, const int32_t *expert,
                   const int32_t *row_slot, const int32_t *pair_slot, const int32_t *counts,
                   int n, int k, int d, const moe_map *map);
void cuda_moe_group(backend *be, float *xe, int64_t *offsets, int32_t *ret_row, const void *recv,
                    const moe_layout *at, const int64_t *ret_base, int n_src, int n_local, int d);
void cuda_expert_ffn(backend *be, float *out, const float *x, const int64_t *offsets, const int64_t *offsets_host,
                     int64_t max_rows, const expert_set *experts);
void cuda_combine(backend *be, float *out, const float *y, const int32_t *expert, const int32_t *pair_slot,
                  const float *weight, const int64_t *ret_base, int n, int k, int dim, const moe_map *map);

// ---------------------------------------------------------------------------- GEMM helpers
// (matmul.cu) Shared by matmul and the expert FFN.

// out[t * ldo + r] = x[t * ldx, :] . W[r, :] for t < n (n <= GEMV_MAX_TOKENS), r < rows:
// the bandwidth-bound kernel. With swiglu_up set, out = silu(W x) * (W_up x) instead (the
// gate and up projections of an FFN in one pass). A job list runs in one launch.
// With count set (device memory), the job's token count is *count read by the kernel, any
// number of tokens in chunks of GEMV_MAX_TOKENS (the fixed-capacity exchange: the host does
// not know it); x and out then start at row *row0 (device memory too).
#define GEMV_MAX_TOKENS 8
typedef struct {
    const void *w, *w_up;        // weights [rows, cols] with row stride ld (w_up: same shape, ld_up)
    int64_t ld, ld_up, rows, cols;
    const float *x;              // token t's input at x + t * ldx
    int64_t ldx;
    float *out;                  // token t's row r at out[t * ldo + r]
    int64_t ldo;
    int n;                       // tokens, 1 .. GEMV_MAX_TOKENS (ignored with count)
    const int64_t *row0, *row1;  // device: tokens are rows *row0 .. *row1 - 1 of x and out
    int ksplit;                  // warps per row (1, 2 or 4): a function of rows only
    int vec;                     // 16-byte loads (alignment allows them)
    int first_block;             // first block of this job in the launch
} gemv_job;
// Fills the shape-dependent fields of a job (ksplit, vec); returns the blocks it needs.
int gemv_job_prepare(gemv_job *j, dtype_t dt);
// Runs jobs (all with weights of dtype dt; with swiglu, all have w_up) in as few launches as
// possible; first_block is set here.
void gemv_run(cuda_ctx *cx, gemv_job *jobs, int n_jobs, dtype_t dt, int swiglu);

// out[t * ldo + r] = act[t * lda, :] . W[r, :] through cuBLASLt, act in W's dtype (bf16/f16
// narrowed activations, or float32 for F32 weights), fp32 accumulation and output. Matmul
// descriptors, layouts and the heuristic's algorithm are cached per shape.
void lt_gemm(cuda_ctx *cx, float *out, int64_t ldo, const void *act, int64_t lda, const weight_t *w, int64_t n);
lt_plans *lt_plans_new(void);
void lt_plans_free(lt_plans *p);
// dst[i] = src[i] narrowed to dt (BF16/F16; F32 is a copy) for count values.
void cuda_narrow(cuda_ctx *cx, void *dst, dtype_t dt, const float *src, int64_t count);
cudaDataType_t cuda_type(dtype_t dt);

// ---------------------------------------------------------------------------- device helpers
#define WARP_LANES 32

static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// One weight element as float32 (exact for every dtype).
static __device__ __forceinline__ float load_w(const void *w, dtype_t dt, int64_t i) {
    if (dt == DT_BF16) return __uint_as_float((uint32_t)((const uint16_t *)w)[i] << 16);
    if (dt == DT_F16) return __half2float(((const __half *)w)[i]);
    return ((const float *)w)[i];
}

static inline unsigned grid_for(int64_t count, int threads) {
    int64_t g = (count + threads - 1) / threads;
    return (unsigned)(g < 1 ? 1 : g > 0x7fffffff ? 0x7fffffff : g);
}
// A grid-stride launch: enough blocks to fill the device, no more.
static inline unsigned grid_capped(const cuda_ctx *cx, int64_t count, int threads) {
    unsigned g = grid_for(count, threads), cap = (unsigned)cx->sm_count * 16;
    return g < cap ? g : cap;
}
