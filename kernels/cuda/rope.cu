// rope: Hugging Face rotate-half. In each head, x[j] and x[j + head_dim/2] turn by the angle
// pos * inv_freq[j], in fp32 as transformers does (float position times float inverse
// frequency, then the accurate sincosf). inv_freq is host memory (the model keeps it there).
#include "kernels/cuda/cuda_common.cuh"

__global__ void rope_kernel(float *x, const int32_t *pos, const float *inv_freq, int n_heads, int head_dim, int64_t count) {
    int half = head_dim / 2;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x) {
        int j = (int)(i % half);
        int64_t th = i / half;                 // token * n_heads + head
        int64_t t = th / n_heads;
        float s, c;
        sincosf((float)pos[t] * inv_freq[j], &s, &c);
        float *v = x + th * head_dim;
        float x0 = v[j], x1 = v[j + half];
        v[j] = x0 * c - x1 * s;
        v[j + half] = x1 * c + x0 * s;
    }
}

void cuda_rope(backend *be, float *x, int n, int n_heads, int head_dim, const int32_t *pos, const float *inv_freq) {
    cuda_ctx *cx = cuda_of(be);
    if (n <= 0) return;
    int half = head_dim / 2;
    const int32_t *d_pos = (const int32_t *)cuda_args(cx, pos, (size_t)n * sizeof(int32_t));
    const float *d_freq = (const float *)cuda_args(cx, inv_freq, (size_t)half * sizeof(float));
    int64_t count = (int64_t)n * n_heads * half;
    rope_kernel<<<grid_capped(cx, count, 256), 256, 0, cx->stream>>>(x, d_pos, d_freq, n_heads, head_dim, count);
    cudaCheckLaunch();
}
