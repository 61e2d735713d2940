// rmsnorm: out = x / sqrt(mean(x^2) + eps) * w, one block per row. The sum of squares has a
// fixed order (per-thread strided sums, then a fixed tree), so a row's result does not depend
// on the batch around it.
#include "kernels/cuda/cuda_common.cuh"

#define RMS_THREADS 256

__global__ void rmsnorm_kernel(float *out, const float *x, const float *w, int dim, float eps) {
    const float *xi = x + (int64_t)blockIdx.x * dim;
    float *oi = out + (int64_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) ss = fmaf(xi[j], xi[j], ss);
    ss = warp_sum(ss);
    __shared__ float part[RMS_THREADS / WARP_LANES];
    if (threadIdx.x % WARP_LANES == 0) part[threadIdx.x / WARP_LANES] = ss;
    __syncthreads();
    float total = 0.0f;
    for (int i = 0; i < RMS_THREADS / WARP_LANES; i++) total += part[i];
    float scale = 1.0f / sqrtf(total / (float)dim + eps);
    for (int j = threadIdx.x; j < dim; j += blockDim.x) oi[j] = xi[j] * scale * w[j];   // as Hugging Face: (x * r) * w
}

// out may alias x (the final norm runs in place): each block reads its row before writing it.
void cuda_rmsnorm(backend *be, float *out, const float *x, const float *w, int n, int dim, float eps) {
    cuda_ctx *cx = cuda_of(be);
    if (n <= 0) return;
    rmsnorm_kernel<<<n, RMS_THREADS, 0, cx->stream>>>(out, x, w, dim, eps);
    cudaCheckLaunch();
}
