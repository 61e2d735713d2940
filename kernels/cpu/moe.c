// MoE ops: router top-k, the route plan, packing and grouping of the exchange's messages, the
// grouped expert FFN and the combine that sums each token's expert outputs in a fixed order.
#include "kernels/cpu/cpu_internal.h"

#include <omp.h>

// ---------------------------------------------------------------------------- router
// Softmax over E logits (max-subtracted, summed in expert order), top k by probability with
// ties to the lower index (as torch.topk on Mixtral's softmax), renormalised over the kept
// ones, written in ascending expert order.
void cpu_router_topk(backend *be, int32_t *expert, float *weight, const float *logits, int n, int n_experts, int k) {
    CHECK(k >= 1 && k <= n_experts);
    float *p = cpu_scratch(be, CPU_SCRATCH_ROUTER, (size_t)n_experts * (sizeof(float) + 1));
    unsigned char *kept = (unsigned char *)(p + n_experts);
    for (int i = 0; i < n; i++) {
        const float *l = logits + (size_t)i * n_experts;
        float m = l[0], sum = 0.0f;
        for (int e = 1; e < n_experts; e++) m = l[e] > m ? l[e] : m;
        for (int e = 0; e < n_experts; e++) {
            p[e] = expf(l[e] - m);
            sum += p[e];
        }
        for (int e = 0; e < n_experts; e++) {
            p[e] /= sum;
            kept[e] = 0;
        }
        for (int j = 0; j < k; j++) {   // k passes: E and k are small
            int best = -1;
            for (int e = 0; e < n_experts; e++)
                if (!kept[e] && (best < 0 || p[e] > p[best])) best = e;
            kept[best] = 1;
        }
        float ksum = 0.0f;
        for (int e = 0; e < n_experts; e++)
            if (kept[e]) ksum += p[e];
        int j = 0;
        for (int e = 0; e < n_experts; e++)
            if (kept[e]) {
                expert[(size_t)i * k + j] = e;
                weight[(size_t)i * k + j] = p[e] / ksum;
                j++;
            }
    }
}


// ---------------------------------------------------------------------------- expert FFN
// Work is a flat list of (expert, block of output rows) items shared by all threads, in two
// phases: gate/up blocks (each item also applies silu(g) * u to its block), then down
// blocks. Every element is a cpu_matmul_rows dot product, so results do not depend on how
// many tokens each expert got, on threads or on the item order. Blocks are CPU_MATMUL_ROWS
// rows, or CPU_MATMUL_ROWS_MANY for an expert with several tokens and many rows
// (cpu_matmul_chunk).
#define FFN_ROW_CHUNK CPU_MATMUL_ROWS   // the shortest block: bounds the item count

typedef struct { int e; int64_t r0, r1; } ffn_item;

static int64_t add_items(ffn_item *items, int64_t count, int e, int64_t rows, int64_t tokens, int threads) {
    int64_t chunk = cpu_matmul_chunk(rows, tokens, threads);
    for (int64_t r = 0; r < rows; r += chunk)
        items[count++] = (ffn_item){e, r, r + chunk < rows ? r + chunk : rows};
    return count;
}

// Offsets are host memory here, so the host copy (if any) and max_rows add nothing.
void cpu_expert_ffn(backend *be, float *out, const float *x, const int64_t *offsets,
                    const int64_t *offsets_host, int64_t max_rows, const expert_set *ex) {
    int E = ex->n_experts;
    if (E <= 0 || offsets[E] <= offsets[0]) return;
    int64_t d = ex->w2[0].rows;
    // g (gate, then the activation) and u per expert: [tokens of e, ff of e], packed.
    // Scratch: hoff[E + 1] then the up and down item lists (at most one item per 40 rows of
    // each expert), sized before they are filled.
    int64_t max_items = 0;
    for (int e = 0; e < E; e++)
        max_items += (ex->w1[e].rows + FFN_ROW_CHUNK - 1) / FFN_ROW_CHUNK + (d + FFN_ROW_CHUNK - 1) / FFN_ROW_CHUNK;
    size_t hoff_bytes = ((size_t)E + 1) * sizeof(size_t);
    hoff_bytes = (hoff_bytes + sizeof(ffn_item) - 1) / sizeof(ffn_item) * sizeof(ffn_item);
    uint8_t *items = cpu_scratch(be, CPU_SCRATCH_FFN_ITEMS, hoff_bytes + ((size_t)max_items + 2) * sizeof(ffn_item));
    size_t *hoff = (size_t *)items;
    int64_t n_up = 0, n_down = 0;
    hoff[0] = 0;
    for (int e = 0; e < E; e++) {
        int64_t ne = offsets[e + 1] - offsets[e], ff = ex->w1[e].rows;
        CHECK(ne >= 0);
        CHECK(ex->w1[e].cols == d && ex->w3[e].cols == d && ex->w3[e].rows == ff);
        CHECK(ex->w2[e].rows == d && ex->w2[e].cols == ff);
        hoff[e + 1] = hoff[e] + (size_t)ne * (size_t)ff;
        if (ne > 0) {
            n_up += (ff + FFN_ROW_CHUNK - 1) / FFN_ROW_CHUNK;
            n_down += (d + FFN_ROW_CHUNK - 1) / FFN_ROW_CHUNK;
        }
    }
    float *g = cpu_scratch(be, CPU_SCRATCH_FFN_G, hoff[E] * sizeof(float));
    float *u = cpu_scratch(be, CPU_SCRATCH_FFN_U, hoff[E] * sizeof(float));
    ffn_item *up = (ffn_item *)(items + hoff_bytes), *down = up + n_up + 1;
    int threads = cpu_threads(be);
    n_up = n_down = 0;
    for (int e = 0; e < E; e++) {
        if (offsets[e + 1] == offsets[e]) continue;
        n_up = add_items(up, n_up, e, ex->w1[e].rows, offsets[e + 1] - offsets[e], threads);
        n_down = add_items(down, n_down, e, d, offsets[e + 1] - offsets[e], threads);
    }

    char *scratch = cpu_thread_scratch(be, CPU_SCRATCH_FFN_MATMUL, threads, CPU_MATMUL_SCRATCH);
#pragma omp parallel num_threads(threads)
    {
        void *mine = scratch + (size_t)omp_get_thread_num() * cpu_thread_stride(CPU_MATMUL_SCRATCH);
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < n_up; it++) {
            ffn_item w = up[it];
            int64_t ne = offsets[w.e + 1] - offsets[w.e], ff = ex->w1[w.e].rows;
            const float *xe = x + (size_t)offsets[w.e] * (size_t)d;
            float *ge = g + hoff[w.e] + w.r0, *ue = u + hoff[w.e] + w.r0;
            cpu_matmul_rows(ge, ff, xe, d, ne, &ex->w1[w.e], w.r0, w.r1, mine);
            cpu_matmul_rows(ue, ff, xe, d, ne, &ex->w3[w.e], w.r0, w.r1, mine);
            for (int64_t t = 0; t < ne; t++)
                for (int64_t r = 0; r < w.r1 - w.r0; r++)
                    ge[t * ff + r] = cpu_swiglu1(ge[t * ff + r], ue[t * ff + r]);
        }
        // (the implicit barrier: every activation is ready before the down projections)
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < n_down; it++) {
            ffn_item w = down[it];
            int64_t ne = offsets[w.e + 1] - offsets[w.e], ff = ex->w1[w.e].rows;
            cpu_matmul_rows(out + (size_t)offsets[w.e] * (size_t)d + w.r0, d, g + hoff[w.e], ff, ne,
                            &ex->w2[w.e], w.r0, w.r1, mine);
        }
    }
}

// ---------------------------------------------------------------------------- combine
// o += w * y contracts to one fma per term (-ffp-contract=fast), from 0, in j order.
void cpu_combine(backend *be, float *out, const float *y, const int32_t *expert, const int32_t *pair_slot,
                 const float *weight, const int64_t *ret_base, int n, int k, int dim, const moe_map *map) {
#pragma omp parallel for schedule(static) num_threads(cpu_threads(be)) if ((int64_t)n * k * dim > 65536)
    for (int t = 0; t < n; t++) {
        float *o = out + (size_t)t * dim;
        for (int c = 0; c < dim; c++) o[c] = 0.0f;
        for (int j = 0; j < k; j++) {
            size_t p = (size_t)t * k + j;
            float w = weight[p];
            const float *yr = y + (size_t)(ret_base[map->owner[expert[p]]] + pair_slot[p]) * dim;
            for (int c = 0; c < dim; c++) o[c] += w * yr[c];
        }
    }
}
