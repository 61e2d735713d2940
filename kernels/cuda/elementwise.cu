// The small ops: embedding lookup, row gather, swiglu, residual add, argmax, and the narrowing
// of activations for cuBLAS. Each output element depends on its own inputs only, so
// batching cannot change it.
#include "kernels/cuda/cuda_common.cuh"

// Grid-stride launches: enough blocks to fill the GPU, each thread looping over the rest.
#define EW_THREADS 256
#define ew_grid(count) grid_capped(cx, (count), EW_THREADS)

// ---------------------------------------------------------------------------- embed, gather
__global__ void embed_kernel(float *out, const void *table, dtype_t dt, int64_t ld, int64_t cols,
                             const int32_t *ids, int64_t count) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = i / cols, c = i % cols;
        out[i] = load_w(table, dt, (int64_t)ids[t] * ld + c);
    }
}

void cuda_embed(backend *be, float *out, const weight_t *table, const int32_t *ids, int n) {
    cuda_ctx *cx = cuda_of(be);
    if (n <= 0) return;
    for (int i = 0; i < n; i++) CHECK(ids[i] >= 0 && ids[i] < table->rows);
    const int32_t *d_ids = (const int32_t *)cuda_args(cx, ids, (size_t)n * sizeof(int32_t));
    int64_t count = (int64_t)n * table->cols;
    embed_kernel<<<ew_grid(count), EW_THREADS, 0, cx->stream>>>(out, table->data, table->dtype, table->ld,
                                                                  table->cols, d_ids, count);
    cudaCheckLaunch();
}

// rows in device memory; a negative row leaves its output row as it is.
__global__ void gather_rows_kernel(float *out, const float *x, const int32_t *rows, int dim, int64_t count) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = i / dim, c = i % dim;
        int32_t r = rows[t];
        if (r >= 0) out[i] = x[(int64_t)r * dim + c];
    }
}

void cuda_gather_rows(backend *be, float *out, const float *x, const int32_t *rows, int n, int dim) {
    cuda_ctx *cx = cuda_of(be);
    if (n <= 0 || dim <= 0) return;
    int64_t count = (int64_t)n * dim;
    gather_rows_kernel<<<ew_grid(count), EW_THREADS, 0, cx->stream>>>(out, x, rows, dim, count);
    cudaCheckLaunch();
}

// ---------------------------------------------------------------------------- swiglu, add
// silu(g) * u as torch computes it: g / (1 + exp(-g)) * u, with the accurate expf.
__global__ void swiglu_kernel(float *out, const float *gate, const float *up, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float g = gate[i];
        out[i] = cuda_swiglu1(g, up[i]);
    }
}

void cuda_swiglu(backend *be, float *out, const float *gate, const float *up, int64_t n) {
    cuda_ctx *cx = cuda_of(be);
    if (n <= 0) return;
    swiglu_kernel<<<ew_grid(n), EW_THREADS, 0, cx->stream>>>(out, gate, up, n);
    cudaCheckLaunch();
}

__global__ void add_kernel(float *x, const float *y, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        x[i] += y[i];
}

void cuda_add(backend *be, float *x, const float *y, int64_t n) {
    cuda_ctx *cx = cuda_of(be);
    if (n <= 0) return;
    add_kernel<<<ew_grid(n), EW_THREADS, 0, cx->stream>>>(x, y, n);
    cudaCheckLaunch();
}

// ---------------------------------------------------------------------------- narrowing
__global__ void narrow_bf16_kernel(__nv_bfloat16 *dst, const float *src, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}
__global__ void narrow_f16_kernel(__half *dst, const float *src, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __float2half_rn(src[i]);
}

void cuda_narrow(cuda_ctx *cx, void *dst, dtype_t dt, const float *src, int64_t count) {
    if (count <= 0) return;
    if (dt == DT_BF16) narrow_bf16_kernel<<<ew_grid(count), EW_THREADS, 0, cx->stream>>>((__nv_bfloat16 *)dst, src, count);
    else if (dt == DT_F16) narrow_f16_kernel<<<ew_grid(count), EW_THREADS, 0, cx->stream>>>((__half *)dst, src, count);
    else cudaCheck(cudaMemcpyAsync(dst, src, (size_t)count * sizeof(float), cudaMemcpyDeviceToDevice, cx->stream));
    cudaCheckLaunch();
}

// ---------------------------------------------------------------------------- argmax
// One block per row; ties (and the reduction) keep the lowest index, like the CPU's strict >.
#define ARGMAX_THREADS 512
__global__ void argmax_kernel(int32_t *out, const float *logits, int vocab) {
    const float *l = logits + (int64_t)blockIdx.x * vocab;
    float best = -INFINITY;
    int bi = -1;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x)
        if (bi < 0 || l[j] > best) { best = l[j]; bi = j; }   // j ascends: a later equal value loses
    __shared__ float sv[ARGMAX_THREADS];
    __shared__ int si[ARGMAX_THREADS];
    sv[threadIdx.x] = best;
    si[threadIdx.x] = bi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float v = sv[threadIdx.x + s];
            int i = si[threadIdx.x + s];
            int cur = si[threadIdx.x];
            if (i >= 0 && (cur < 0 || v > sv[threadIdx.x] || (v == sv[threadIdx.x] && i < cur))) {
                sv[threadIdx.x] = v;
                si[threadIdx.x] = i;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = si[0] < 0 ? 0 : si[0];
}

// out is host memory: the caller reads it at once.
void cuda_argmax(backend *be, int32_t *out, const float *logits, int n, int vocab) {
    cuda_ctx *cx = cuda_of(be);
    if (n <= 0) return;
    int32_t *d_out = (int32_t *)cuda_scratch(cx, SCR_SMALL_OUT, (size_t)n * sizeof(int32_t));
    argmax_kernel<<<n, ARGMAX_THREADS, 0, cx->stream>>>(d_out, logits, vocab);
    cudaCheckLaunch();
    cuda_download_now(cx, out, d_out, (size_t)n * sizeof(int32_t));
}
