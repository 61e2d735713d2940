// Shared by the CUDA kernels: error checks, the backend context (stream, cuBLASLt handle,
// scratch), the ring that carries small host index arrays to the device, and device helpers.
//
// Conventions of the CUDA backend (see docs/gpu.md):
//   - Every op is asynchronous on one stream (cuda_stream()); only download, sync and the ops
//     whose outputs are host arrays (router_topk, argmax) wait for it.
//   - Activations are float32 in device memory, as in the ops table; weights stay in their
//     checkpoint dtype (BF16, F16 or F32) and are widened in registers. GEMMs through cuBLASLt
//     narrow the activations to the weights' dtype first (fp32 accumulation and fp32 output).
//   - Index arrays (ids, slot, pos, rows, expert, weight, offsets) are host memory, copied by
//     cuda_args() through a pinned ring.
#pragma once

#include <cublasLt.h>
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
// next synchronising call, with that call's name).
#define cudaCheckLaunch() cuda_check_rt(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

static inline void cuda_check_blas(cublasStatus_t s, const char *call, const char *file, int line) {
    if (s != CUBLAS_STATUS_SUCCESS) die("%s:%d: %s failed: cuBLAS status %d", file, line, call, (int)s);
}

// ---------------------------------------------------------------------------- context
cudaStream_t cuda_stream(void);
int cuda_sm_count(void);
cublasLtHandle_t cuda_lt(void);

// Copies `bytes` of host memory to the device through the pinned ring and returns the device
// copy, valid for kernels issued on cuda_stream() before the ring wraps (several MiB later).
// The same bytes asked again soon after get the same device copy without a new transfer
// (the per-layer pos/slot/inv_freq arrays of one step).
const void *cuda_args(const void *host, size_t bytes);

// Device scratch that grows on demand and is kept (contents not preserved across growth).
// One buffer per slot; a slot's buffer is reused by the next op that asks for it, which is
// safe because all ops run in order on one stream.
enum {
    SCR_ACT16,      // activations narrowed to bf16/f16 for cuBLASLt
    SCR_ACT16_B,    // the expert FFN's narrowed hidden activations
    SCR_FFN_G,      // expert FFN gate output (fp32)
    SCR_FFN_U,      // expert FFN up output (fp32)
    SCR_FFN_H,      // small-batch expert FFN hidden activations (fp32)
    SCR_ATT,        // attention split-KV partials
    SCR_SMALL_OUT,  // router/argmax results before they go to the host
    SCR_COUNT
};
void *cuda_scratch(int slot, size_t bytes);

// Copies device -> host and waits for it (results the host reads at once).
void cuda_download_now(void *host, const void *dev, size_t bytes);

// ---------------------------------------------------------------------------- ops
// The entries of the ops table, one group per .cu file (documented in kernels/backend.h).
void cuda_embed(float *out, const weight_t *table, const int32_t *ids, int n);
void cuda_gather_rows(float *out, const float *x, const int32_t *rows, int n, int dim);
void cuda_rmsnorm(float *out, const float *x, const float *w, int n, int dim, float eps);
void cuda_matmul(float *out, const float *x, const weight_t *w, int n);
void cuda_rope(float *x, int n, int n_heads, int head_dim, const int32_t *pos, const float *inv_freq);
void cuda_kv_write(float *k_cache, float *v_cache, const float *k, const float *v,
                   const int32_t *slot, const int32_t *pos, int n, int kv_dim, int64_t slot_stride);
void cuda_attention(float *out, const float *q, const float *k_cache, const float *v_cache,
                    const int32_t *slot, const int32_t *pos, int n,
                    int n_heads, int n_kv_heads, int head_dim, int64_t slot_stride);
void cuda_swiglu(float *out, const float *gate, const float *up, int64_t n);
void cuda_add(float *x, const float *y, int64_t n);
void cuda_argmax(int32_t *out, const float *logits, int n, int vocab);
void cuda_router_topk(int32_t *expert, float *weight, const float *logits, int n, int n_experts, int k);
void cuda_expert_ffn(float *out, const float *x, const int64_t *offsets, const expert_set *experts);
void cuda_combine(float *out, const float *y, const int32_t *row, const float *weight, int n, int k, int dim);

// ---------------------------------------------------------------------------- GEMM helpers
// (matmul.cu) Shared by matmul and the expert FFN.

// out[t * ldo + r] = x[t * ldx, :] . W[r, :] for t < n (n <= GEMV_MAX_TOKENS), r < rows:
// the bandwidth-bound kernel. With swiglu_up set, out = silu(W x) * (W_up x) instead (the
// gate and up projections of an FFN in one pass). A job list runs in one launch.
#define GEMV_MAX_TOKENS 8
typedef struct {
    const void *w, *w_up;        // weights [rows, cols] with row stride ld (w_up: same shape, ld_up)
    int64_t ld, ld_up, rows, cols;
    const float *x;              // token t's input at x + t * ldx
    int64_t ldx;
    float *out;                  // token t's row r at out[t * ldo + r]
    int64_t ldo;
    int n;                       // tokens, 1 .. GEMV_MAX_TOKENS
    int ksplit;                  // warps per row (1, 2 or 4): a function of rows only
    int vec;                     // 16-byte loads (alignment allows them)
    int first_block;             // first block of this job in the launch
} gemv_job;
// Fills the shape-dependent fields of a job (ksplit, vec); returns the blocks it needs.
int gemv_job_prepare(gemv_job *j, dtype_t dt);
// Runs jobs (all with weights of dtype dt; with swiglu, all have w_up) in as few launches as
// possible; first_block is set here.
void gemv_run(gemv_job *jobs, int n_jobs, dtype_t dt, int swiglu);

// out[t * ldo + r] = act[t * lda, :] . W[r, :] through cuBLASLt, act in W's dtype (bf16/f16
// narrowed activations, or float32 for F32 weights), fp32 accumulation and output. Matmul
// descriptors, layouts and the heuristic's algorithm are cached per shape.
void lt_gemm(float *out, int64_t ldo, const void *act, int64_t lda, const weight_t *w, int64_t n);
// dst[i] = src[i] narrowed to dt (BF16/F16; F32 is a copy) for count values.
void cuda_narrow(void *dst, dtype_t dt, const float *src, int64_t count);

// ---------------------------------------------------------------------------- device helpers
#define WARP 32

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
