// rmsnorm: out = x / sqrt(mean(x^2) + eps) * w, per row. The sum of squares is cpu_dot's
// fixed 16-lane scheme, so a row's result does not depend on the batch around it.
#include "kernels/cpu/cpu_internal.h"

void cpu_rmsnorm(backend *be, float *out, const float *x, const float *w, int n, int dim, float eps) {
#pragma omp parallel for schedule(static) num_threads(cpu_threads(be)) if ((int64_t)n * dim > 65536)
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * dim;
        float *oi = out + (size_t)i * dim;
        float ss = cpu_dot(xi, xi, dim);
        float scale = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int j = 0; j < dim; j++) oi[j] = xi[j] * scale * w[j];   // as Hugging Face: (x * r) * w
    }
}
