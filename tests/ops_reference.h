// Naive references for the backend ops: plain loops, double accumulation, written from the
// documentation in kernels/backend.h and not from the kernels. test_ops.c compares against
// them by normalised error. Static, so each test program that includes this gets its own.
#pragma once
#include "kernels/backend.h"

#include <math.h>
#include <string.h>

static double ref_weight(const weight_t *w, int64_t r, int64_t c) {
    const char *p = (const char *)w->data + ((size_t)r * (size_t)w->ld + (size_t)c) * dtype_size(w->dtype);
    uint16_t h;
    switch (w->dtype) {
    case DT_F32: { float f; memcpy(&f, p, 4); return f; }
    case DT_BF16: memcpy(&h, p, 2); return bf16_to_f32(h);
    case DT_F16: memcpy(&h, p, 2); return f16_to_f32(h);
    }
    return 0;
}

static void ref_embed(float *out, const weight_t *t, const int32_t *ids, int n) {
    for (int i = 0; i < n; i++)
        for (int64_t c = 0; c < t->cols; c++) out[i * t->cols + c] = (float)ref_weight(t, ids[i], c);
}

static void ref_rmsnorm(float *out, const float *x, const float *w, int n, int dim, float eps) {
    for (int i = 0; i < n; i++) {
        double ss = 0;
        for (int j = 0; j < dim; j++) ss += (double)x[i * dim + j] * x[i * dim + j];
        double r = 1.0 / sqrt(ss / dim + eps);
        for (int j = 0; j < dim; j++) out[i * dim + j] = (float)(x[i * dim + j] * r * w[j]);
    }
}

static void ref_matmul(float *out, const float *x, const weight_t *w, int n) {
    for (int i = 0; i < n; i++)
        for (int64_t r = 0; r < w->rows; r++) {
            double s = 0;
            for (int64_t c = 0; c < w->cols; c++) s += (double)x[i * w->cols + c] * ref_weight(w, r, c);
            out[i * w->rows + r] = (float)s;
        }
}

static void ref_rope(float *x, int n, int n_heads, int head_dim, const int32_t *pos, const float *inv_freq) {
    int half = head_dim / 2;
    for (int i = 0; i < n; i++)
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)i * n_heads + h) * head_dim;
            for (int j = 0; j < half; j++) {
                double a = (double)pos[i] * inv_freq[j], x0 = v[j], x1 = v[j + half];
                v[j] = (float)(x0 * cos(a) - x1 * sin(a));
                v[j + half] = (float)(x1 * cos(a) + x0 * sin(a));
            }
        }
}

static void ref_attention(float *out, const float *q, const float *kc, const float *vc,
                          const int32_t *slot, const int32_t *pos, int n,
                          int n_heads, int n_kv_heads, int head_dim, int64_t slot_stride) {
    int kv_dim = n_kv_heads * head_dim, max_pos = 0;
    for (int i = 0; i < n; i++) max_pos = pos[i] > max_pos ? pos[i] : max_pos;
    double *s = malloc(sizeof(double) * (size_t)(max_pos + 1));
    for (int i = 0; i < n; i++) {
        for (int h = 0; h < n_heads; h++) {
            int g = h / (n_heads / n_kv_heads);
            const float *qh = q + ((size_t)i * n_heads + h) * head_dim;
            double m = -INFINITY, sum = 0;
            for (int p = 0; p <= pos[i]; p++) {
                const float *k = kc + slot[i] * slot_stride + (int64_t)p * kv_dim + g * head_dim;
                double d = 0;
                for (int j = 0; j < head_dim; j++) d += (double)qh[j] * k[j];
                s[p] = d / sqrt((double)head_dim);
                if (s[p] > m) m = s[p];
            }
            for (int p = 0; p <= pos[i]; p++) sum += (s[p] = exp(s[p] - m));
            for (int j = 0; j < head_dim; j++) {
                double o = 0;
                for (int p = 0; p <= pos[i]; p++)
                    o += s[p] * vc[slot[i] * slot_stride + (int64_t)p * kv_dim + g * head_dim + j];
                out[((size_t)i * n_heads + h) * head_dim + j] = (float)(o / sum);
            }
        }
    }
    free(s);
}

static double ref_silu(double g) { return g / (1.0 + exp(-g)); }

static void ref_swiglu(float *out, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = (float)(ref_silu(gate[i]) * up[i]);
}

static void ref_router_topk(int32_t *expert, float *weight, const float *logits, int n, int E, int k) {
    double p[256];
    int kept[256];
    for (int i = 0; i < n; i++) {
        double m = -INFINITY, sum = 0, ksum = 0;
        for (int e = 0; e < E; e++) if (logits[i * E + e] > m) m = logits[i * E + e];
        for (int e = 0; e < E; e++) sum += (p[e] = exp(logits[i * E + e] - m));
        for (int e = 0; e < E; e++) { p[e] /= sum; kept[e] = 0; }
        // The kept set: expert e is kept when fewer than k experts beat it (higher
        // probability, or equal probability and lower index).
        for (int e = 0; e < E; e++) {
            int beaten = 0;
            for (int f = 0; f < E; f++) beaten += p[f] > p[e] || (p[f] == p[e] && f < e);
            kept[e] = beaten < k;
        }
        for (int e = 0; e < E; e++) if (kept[e]) ksum += p[e];
        int j = 0;
        for (int e = 0; e < E; e++)
            if (kept[e]) { expert[i * k + j] = e; weight[i * k + j] = (float)(p[e] / ksum); j++; }
    }
}

static void ref_expert_ffn(float *out, const float *x, const int64_t *offsets, const expert_set *ex) {
    int64_t d = ex->w2[0].rows;
    for (int e = 0; e < ex->n_experts; e++) {
        int64_t ff = ex->w1[e].rows;
        double *h = malloc(sizeof(double) * (size_t)(ff ? ff : 1));
        for (int64_t t = offsets[e]; t < offsets[e + 1]; t++) {
            for (int64_t r = 0; r < ff; r++) {
                double g = 0, u = 0;
                for (int64_t c = 0; c < d; c++) {
                    g += (double)x[t * d + c] * ref_weight(&ex->w1[e], r, c);
                    u += (double)x[t * d + c] * ref_weight(&ex->w3[e], r, c);
                }
                h[r] = ref_silu(g) * u;
            }
            for (int64_t r = 0; r < d; r++) {
                double o = 0;
                for (int64_t c = 0; c < ff; c++) o += h[c] * ref_weight(&ex->w2[e], r, c);
                out[t * d + r] = (float)o;
            }
        }
        free(h);
    }
}

// The exact combine (docs/design.md): each token's expert outputs summed in ascending expert
// index, one fma per term from 0, in float. expert[t*k + j] names the expert of entry j; the
// reference puts the entries in expert order itself, so it does not take the op's order on trust.
static void ref_combine(float *out, const float *y, const int32_t *row, const float *w, const int32_t *expert,
                        int n, int k, int dim) {
    int order[64];
    CHECK(k <= 64);
    for (int t = 0; t < n; t++) {
        for (int j = 0; j < k; j++) order[j] = t * k + j;
        for (int j = 1; j < k; j++)   // insertion sort by expert index
            for (int i = j; i > 0 && expert[order[i]] < expert[order[i - 1]]; i--) {
                int o = order[i]; order[i] = order[i - 1]; order[i - 1] = o;
            }
        for (int c = 0; c < dim; c++) {
            float acc = 0.0f;
            for (int j = 0; j < k; j++) acc = fmaf(w[order[j]], y[(size_t)row[order[j]] * dim + c], acc);
            out[(size_t)t * dim + c] = acc;
        }
    }
}

static void ref_argmax(int32_t *out, const float *logits, int n, int vocab) {
    for (int i = 0; i < n; i++) {
        int best = 0;
        for (int j = 0; j < vocab; j++) if (logits[(size_t)i * vocab + j] > logits[(size_t)i * vocab + best]) best = j;
        out[i] = best;
    }
}
