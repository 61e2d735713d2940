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

// The exact combine: each output element accumulates fmaf(w_j, y_j, acc) from 0 over the
// token's experts in ascending logical expert index, the order docs/design.md promises; the
// backends must match it bitwise. Row of pair (t, j): the owner of its physical expert
// phys[t * k + j] (where it was computed): that owner's first returned row + its pair slot.
static void ref_combine(float *out, const float *y, const int32_t *expert, const int32_t *phys, const int32_t *pair_slot,
                        const float *w, const int64_t *ret_base, const int32_t *owner, int n, int k, int dim) {
    for (int t = 0; t < n; t++)
        for (int c = 0; c < dim; c++) {
            float acc = 0.0f;
            for (int e_prev = -1, done = 0; done < k; done++) {
                int j = -1;   // the next pair in ascending expert index
                for (int i = 0; i < k; i++)
                    if (expert[t * k + i] > e_prev && (j < 0 || expert[t * k + i] < expert[t * k + j])) j = i;
                e_prev = expert[t * k + j];
                int64_t row = ret_base[owner[phys[t * k + j]]] + pair_slot[t * k + j];
                acc = fmaf(w[t * k + j], y[(size_t)row * dim + c], acc);
            }
            out[(size_t)t * dim + c] = acc;
        }
}

// ---------------------------------------------------------------------------- MoE exchange
// Written from base/moe_wire.h and kernels/backend.h as counting definitions (how many come
// before), not as the scatter loops the kernels use.
// The copy of each pair's logical expert e: copy (i + salt) mod c of e's c copies
// (replica[start[e] ..]), i = how many earlier tokens have e among their experts.
static void ref_moe_assign(int32_t *phys, const int32_t *expert, int n, int k, int salt, const int32_t *start,
                           const int32_t *replica) {
    for (int t = 0; t < n; t++)
        for (int j = 0; j < k; j++) {
            int e = expert[t * k + j], before = 0, copies = start[e + 1] - start[e];
            for (int u = 0; u < t; u++)
                for (int i = 0; i < k; i++) before += expert[u * k + i] == e;
            phys[t * k + j] = replica[start[e] + (int)(((int64_t)before + salt) % copies)];
        }
}

// The plan over the pairs' physical experts phys[n * k] (S of them on P ranks).
static void ref_moe_plan(int32_t *counts, int32_t *row_slot, int32_t *pair_slot, const int32_t *phys, int n, int k,
                         const int32_t *owner, int S, int P) {
    memset(counts, 0, (size_t)(S + P) * sizeof(int32_t));
    for (int t = 0; t < n; t++)
        for (int j = 0; j < k; j++) {
            int p = phys[t * k + j], r = owner[p];
            counts[p]++;
            int first = 1, rows_before = 0, pairs_before = 0;
            for (int i = 0; i < j; i++) first &= owner[phys[t * k + i]] != r;
            for (int u = 0; u <= t; u++) {
                int visits = 0;
                for (int i = 0; i < k; i++) {
                    if (u == t && i == j) break;
                    if (owner[phys[u * k + i]] == r) { pairs_before++; visits = 1; }
                }
                if (u < t) rows_before += visits;
            }
            row_slot[t * k + j] = first ? rows_before : -1;
            pair_slot[t * k + j] = pairs_before;
            if (first) counts[S + r]++;
        }
}

// The message a rank sends peer r, written into msg (header, rows, pairs at pairs_at); expert:
// the pairs' physical experts.
static void ref_moe_message(uint8_t *msg, size_t pairs_at, int r, const float *x, const int32_t *expert, int n, int k,
                            int d, const int32_t *owner, const int32_t *local) {
    int32_t rows = 0, pairs = 0;
    for (int t = 0; t < n; t++) {
        int row = -1;
        for (int j = 0; j < k; j++) {
            if (owner[expert[t * k + j]] != r) continue;
            if (row < 0) {
                row = rows++;
                memcpy(msg + MOE_HEADER_BYTES + (size_t)row * d * sizeof(float), x + (size_t)t * d, (size_t)d * sizeof(float));
            }
            int32_t pair[2] = {row, local[expert[t * k + j]]};
            memcpy(msg + pairs_at + (size_t)pairs++ * MOE_PAIR_BYTES, pair, sizeof pair);
        }
    }
    int32_t header[4] = {rows, pairs, d, 0};
    memcpy(msg, header, sizeof header);
}

// Owner side: xe holds, for local expert 0, 1, ..., the rows of its pairs in (source, pair)
// order; ret_row[ret_base[s] + q] is the xe row of pair q of source s (-1 past its pairs).
static void ref_moe_group(float *xe, int64_t *offsets, int32_t *ret_row, const uint8_t *recv, const moe_layout *at,
                          const int64_t *ret_base, int n_src, int n_local, int d) {
    int64_t row = 0;
    offsets[0] = 0;
    for (int s = 0; s < n_src; s++)
        for (int64_t q = ret_base[s]; q < ret_base[s + 1]; q++) ret_row[q] = -1;
    for (int le = 0; le < n_local; le++) {
        for (int s = 0; s < n_src; s++) {
            const uint8_t *msg = recv + at->msg[s];
            int32_t header[4];
            memcpy(header, msg, sizeof header);
            for (int q = 0; q < header[1]; q++) {
                int32_t pair[2];
                memcpy(pair, msg + at->pairs[s] + (size_t)q * MOE_PAIR_BYTES, sizeof pair);
                if (pair[1] != le) continue;
                memcpy(xe + (size_t)row * d, msg + MOE_HEADER_BYTES + (size_t)pair[0] * d * sizeof(float), (size_t)d * sizeof(float));
                ret_row[ret_base[s] + q] = (int32_t)row++;
            }
        }
        offsets[le + 1] = row;
    }
}

static void ref_argmax(int32_t *out, const float *logits, int n, int vocab) {
    for (int i = 0; i < n; i++) {
        int best = 0;
        for (int j = 0; j < vocab; j++) if (logits[(size_t)i * vocab + j] > logits[(size_t)i * vocab + best]) best = j;
        out[i] = best;
    }
}
