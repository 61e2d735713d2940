// The small ops: embedding lookup, swiglu, residual add, argmax. Each output element depends
// on its own inputs only, so batching cannot change it.
#include "kernels/cpu/cpu_internal.h"

void cpu_embed(backend *be, float *out, const weight_t *table, const int32_t *ids, int n) {
    size_t esize = dtype_size(table->dtype);
    for (int i = 0; i < n; i++) {
        CHECK(ids[i] >= 0 && ids[i] < table->rows);
        const char *row = (const char *)table->data + (size_t)ids[i] * (size_t)table->ld * esize;
        to_f32(out + (size_t)i * (size_t)table->cols, row, table->dtype, (size_t)table->cols);
    }
}

void cpu_swiglu(backend *be, float *out, const float *gate, const float *up, int64_t n) {
#pragma omp parallel for schedule(static) num_threads(cpu_threads(be)) if (n > 65536)
    for (int64_t i = 0; i < n; i++) out[i] = cpu_swiglu1(gate[i], up[i]);
}

void cpu_add(backend *be, float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] += y[i];
}

void cpu_argmax(backend *be, int32_t *out, const float *logits, int n, int vocab) {
    for (int i = 0; i < n; i++) {
        const float *l = logits + (size_t)i * vocab;
        int best = 0;
        for (int j = 1; j < vocab; j++)
            if (l[j] > l[best]) best = j;   // strictly greater: the lowest index wins ties
        out[i] = best;
    }
}

void cpu_gather_rows(backend *be, float *out, const float *x, const int32_t *rows, int n, int dim) {
    for (int i = 0; i < n; i++)
        if (rows[i] >= 0) memcpy(out + (size_t)i * dim, x + (size_t)rows[i] * dim, (size_t)dim * sizeof(float));
}
