// rope: Hugging Face rotate-half. In each head, x[j] and x[j + head_dim/2] turn by the angle
// pos * inv_freq[j], computed in fp32 as transformers does (float positions times float
// inverse frequencies, then cos and sin).
#include "kernels/cpu/cpu_internal.h"

void cpu_rope(backend *be, float *x, int n, int n_heads, int head_dim, const int32_t *pos, const float *inv_freq) {
    int half = head_dim / 2;
#pragma omp parallel for schedule(static) num_threads(cpu_threads(be)) if (n > 1)
    for (int i = 0; i < n; i++) {
        // cos and sin once per token, shared by its heads (the stack keeps head_dim <= 1024).
        float c[512], s[512];
        CHECK(half <= 512);
        for (int j = 0; j < half; j++) {
            float a = (float)pos[i] * inv_freq[j];
            c[j] = cosf(a);
            s[j] = sinf(a);
        }
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)i * n_heads + h) * head_dim;
            for (int j = 0; j < half; j++) {
                float x0 = v[j], x1 = v[j + half];
                v[j] = x0 * c[j] - x1 * s[j];
                v[j + half] = x1 * c[j] + x0 * s[j];
            }
        }
    }
}
