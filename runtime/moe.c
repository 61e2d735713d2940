// MoE construction (identity / upcycle / production / Mixtral checkpoint) and the MoE FFN.
#include "runtime/moe.h"

#include <math.h>
#include <string.h>

#include "base/rng.h"

// ---------------------------------------------------------------------------- construction
void identity_slice(int ffn, int E, int e, int *start, int *width) {
    int base = ffn / E, extra = ffn % E;
    *start = e * base + (e < extra ? e : extra);
    *width = base + (e < extra);
}

// A view of rows [r0, r0 + n) of w.
static weight_t rows_view(weight_t w, int64_t r0, int64_t n) {
    w.data = (const uint8_t *)w.data + (size_t)(r0 * w.ld) * dtype_size(w.dtype);
    w.rows = n;
    return w;
}

// A view of columns [c0, c0 + n) of w (rows keep their stride ld).
static weight_t cols_view(weight_t w, int64_t c0, int64_t n) {
    w.data = (const uint8_t *)w.data + (size_t)c0 * dtype_size(w.dtype);
    w.cols = n;
    return w;
}

typedef struct { double mean, std; } value_stats;

static value_stats matrix_stats(const weight_t *w) {
    double sum = 0, sum2 = 0;
    float *row = xmalloc((size_t)w->cols * sizeof(float));
    for (int64_t r = 0; r < w->rows; r++) {
        to_f32(row, (const uint8_t *)w->data + (size_t)(r * w->ld) * dtype_size(w->dtype), w->dtype, (size_t)w->cols);
        for (int64_t c = 0; c < w->cols; c++) { sum += row[c]; sum2 += (double)row[c] * row[c]; }
    }
    free(row);
    double n = (double)w->rows * (double)w->cols, mean = sum / n;
    double var = sum2 / n - mean * mean;
    return (value_stats){mean, sqrt(var > 0 ? var : 0)};
}

static void store_value(void *base, dtype_t t, size_t i, float v) {
    if (t == DT_F32) ((float *)base)[i] = v;
    else ((uint16_t *)base)[i] = t == DT_BF16 ? f32_to_bf16(v) : f32_to_f16(v);
}

// Copies w into packed memory at dst (same dtype).
static void copy_matrix(void *dst, const weight_t *w) {
    size_t row_bytes = (size_t)w->cols * dtype_size(w->dtype);
    for (int64_t r = 0; r < w->rows; r++)
        memcpy((uint8_t *)dst + (size_t)r * row_bytes,
               (const uint8_t *)w->data + (size_t)(r * w->ld) * dtype_size(w->dtype), row_bytes);
}

// Drop-Upcycling (Nakamura et al., 2025): a copy of the dense FFN in which a fraction `drop`
// of the intermediate neurons (a gate row, an up row and a down column each) is re-drawn
// from a normal with the dense matrix's mean and std, so experts start diverse.
static void build_drop_upcycled(const layer_weights *L, const value_stats st[3], float drop,
                                uint64_t seed, uint8_t *mem, weight_t out[3]) {
    const weight_t *src[3] = {&L->w_gate, &L->w_up, &L->w_down};
    for (int i = 0; i < 3; i++) {
        out[i] = (weight_t){.data = mem, .dtype = src[i]->dtype, .rows = src[i]->rows,
                            .cols = src[i]->cols, .ld = src[i]->cols};
        copy_matrix(mem, src[i]);
        mem += (size_t)(src[i]->rows * src[i]->cols) * dtype_size(src[i]->dtype);
    }
    int64_t ffn = L->w_gate.rows, d = L->w_gate.cols;
    int64_t n_drop = (int64_t)llround((double)drop * (double)ffn);
    int32_t *perm = xmalloc((size_t)ffn * sizeof(int32_t));
    for (int64_t i = 0; i < ffn; i++) perm[i] = (int32_t)i;
    rng_t rng = {seed};
    for (int64_t i = 0; i < n_drop; i++) {   // partial Fisher-Yates: the first n_drop are chosen
        int64_t j = i + (int64_t)(rng_next(&rng) % (uint64_t)(ffn - i));
        int32_t t = perm[i]; perm[i] = perm[j]; perm[j] = t;
        int64_t neuron = perm[i];
        for (int64_t c = 0; c < d; c++) {
            store_value((void *)out[0].data, out[0].dtype, (size_t)(neuron * d + c), (float)(st[0].mean + st[0].std * rng_normal(&rng)));
            store_value((void *)out[1].data, out[1].dtype, (size_t)(neuron * d + c), (float)(st[1].mean + st[1].std * rng_normal(&rng)));
            store_value((void *)out[2].data, out[2].dtype, (size_t)(c * ffn + neuron), (float)(st[2].mean + st[2].std * rng_normal(&rng)));
        }
    }
    free(perm);
}

static size_t matrix_bytes(const weight_t *w) { return (size_t)(w->rows * w->cols) * dtype_size(w->dtype); }

int moe_build_layer(model *m, int l, llamoe_err *err) {
    const llama_config *c = &m->cfg;
    layer_weights *L = &m->layers[l];
    int d = c->hidden_size, ffn = c->intermediate_size, E = m->moe.n_experts;
    char name[256];

    if (m->moe.kind != MOE_CHECKPOINT) {
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate_proj.weight", l);
        if (model_find_matrix(m, name, ffn, d, &L->w_gate, err) != 0) return -1;
        snprintf(name, sizeof name, "model.layers.%d.mlp.up_proj.weight", l);
        if (model_find_matrix(m, name, ffn, d, &L->w_up, err) != 0) return -1;
        snprintf(name, sizeof name, "model.layers.%d.mlp.down_proj.weight", l);
        if (model_find_matrix(m, name, d, ffn, &L->w_down, err) != 0) return -1;
    }
    if (m->moe.kind == MOE_DENSE) {
        L->dense_gate = model_place_weight(m, L->w_gate);
        L->dense_up = model_place_weight(m, L->w_up);
        L->dense_down = model_place_weight(m, L->w_down);
        m->weight_bytes += matrix_bytes(&L->w_gate) + matrix_bytes(&L->w_up) + matrix_bytes(&L->w_down);
        return 0;
    }

    // Router: a Mixtral checkpoint's gate, or a seeded random one (upcycle, production).
    // Identity has none: every expert is active with weight exactly 1.
    if (m->moe.kind == MOE_CHECKPOINT) {
        snprintf(name, sizeof name, "model.layers.%d.block_sparse_moe.gate.weight", l);
        if (model_find_matrix(m, name, E, d, &L->router, err) != 0) return -1;
        L->router = model_place_weight(m, L->router);
    } else if (m->moe.kind != MOE_IDENTITY) {
        // std 1/sqrt(d) keeps router logits O(1) for unit-RMS inputs: softmax neither flat nor one-hot.
        float *host = xmalloc((size_t)E * d * sizeof(float));
        rng_t rng = {rng_derive(m->moe.seed, 0x726f75746572ull, (uint64_t)l)};
        for (size_t i = 0; i < (size_t)E * d; i++) host[i] = (float)(rng_normal(&rng) / sqrt((double)d));
        L->router = (weight_t){.data = host, .dtype = DT_F32, .rows = E, .cols = d, .ld = d};
        weight_t placed = model_place_weight(m, L->router);
        if (placed.data != host) free(host);
        L->router = placed;
    }

    int n_local = m->n_local_experts;
    weight_t *host = xcalloc((size_t)n_local * 3, sizeof(weight_t));   // w1, w3, w2 per expert
    value_stats st[3];
    size_t expert_bytes = 0;
    if (m->moe.kind == MOE_PRODUCTION) {
        st[0] = matrix_stats(&L->w_gate);
        st[1] = matrix_stats(&L->w_up);
        st[2] = matrix_stats(&L->w_down);
        expert_bytes = matrix_bytes(&L->w_gate) + matrix_bytes(&L->w_up) + matrix_bytes(&L->w_down);
        L->expert_memory = xmalloc(expert_bytes * (size_t)n_local);
    }
    for (int i = 0; i < n_local; i++) {
        int e = m->first_expert + i;
        weight_t *w = &host[3 * i];
        switch (m->moe.kind) {
        case MOE_IDENTITY: {
            int start, width;
            identity_slice(ffn, E, e, &start, &width);
            w[0] = rows_view(L->w_gate, start, width);
            w[1] = rows_view(L->w_up, start, width);
            w[2] = cols_view(L->w_down, start, width);
            break;
        }
        case MOE_UPCYCLE:
            w[0] = L->w_gate; w[1] = L->w_up; w[2] = L->w_down;
            break;
        case MOE_PRODUCTION:
            build_drop_upcycled(L, st, m->moe.drop, rng_derive(m->moe.seed, (uint64_t)l, (uint64_t)e),
                                (uint8_t *)L->expert_memory + expert_bytes * (size_t)i, w);
            break;
        case MOE_CHECKPOINT: {
            const char *part[3] = {"w1", "w3", "w2"};
            for (int j = 0; j < 3; j++) {
                snprintf(name, sizeof name, "model.layers.%d.block_sparse_moe.experts.%d.%s.weight", l, e, part[j]);
                int64_t rows = j == 2 ? d : ffn, cols = j == 2 ? ffn : d;
                if (model_find_matrix(m, name, rows, cols, &w[j], err) != 0) { free(host); return -1; }
            }
            break;
        }
        case MOE_DENSE: break;
        }
        for (int j = 0; j < 3; j++) m->expert_bytes += matrix_bytes(&w[j]);
    }
    L->w1 = xcalloc((size_t)n_local, sizeof(weight_t));
    L->w3 = xcalloc((size_t)n_local, sizeof(weight_t));
    L->w2 = xcalloc((size_t)n_local, sizeof(weight_t));
    // Memory mode keeps the host copies: they are the source the expert cache fetches from.
    int place = !m->experts_on_host;
    for (int i = 0; i < n_local; i++) {
        L->w1[i] = place ? model_place_weight(m, host[3 * i]) : host[3 * i];
        L->w3[i] = place ? model_place_weight(m, host[3 * i + 1]) : host[3 * i + 1];
        L->w2[i] = place ? model_place_weight(m, host[3 * i + 2]) : host[3 * i + 2];
    }
    free(host);
    if (place && m->be->device_memory && L->expert_memory) { free(L->expert_memory); L->expert_memory = NULL; }
    L->experts = (expert_set){.n_experts = n_local, .w1 = L->w1, .w3 = L->w3, .w2 = L->w2};
    return 0;
}

void moe_free_layer(model *m, layer_weights *L) {
    const backend *be = m->be;
    if (be->device_memory) {
        be->free((void *)L->dense_gate.data);
        be->free((void *)L->dense_up.data);
        be->free((void *)L->dense_down.data);
        for (int i = 0; L->w1 && !m->experts_on_host && i < L->experts.n_experts; i++) {
            be->free((void *)L->w1[i].data);
            be->free((void *)L->w3[i].data);
            be->free((void *)L->w2[i].data);
        }
        be->free((void *)L->router.data);
    } else if (m->moe.kind == MOE_UPCYCLE || m->moe.kind == MOE_PRODUCTION) {
        free((void *)L->router.data);   // generated on the host
    }
    free(L->w1);
    free(L->w3);
    free(L->w2);
    free(L->expert_memory);
}

// ---------------------------------------------------------------------------- forward
// Buffers the ops read or write: backend memory (host memory on the CPU backend).
static void *state_alloc(const backend *be, size_t bytes) {
    return be->device_memory ? be->alloc(bytes) : xmalloc(bytes);
}
static void state_free(const backend *be, void *p) {
    if (be && be->device_memory) be->free(p);
    else free(p);
}

int moe_state_init(moe_state *s, const model *m, int max_tokens) {
    memset(s, 0, sizeof *s);
    int E = m->moe.n_experts, k = m->moe.top_k, d = m->cfg.hidden_size;
    s->max_tokens = max_tokens;
    s->n_experts = E;
    s->top_k = k;
    s->d = d;
    size_t pairs = (size_t)max_tokens * (size_t)k;
    s->be = m->be;
    s->router_logits = state_alloc(m->be, (size_t)max_tokens * (size_t)E * sizeof(float));
    s->expert = xmalloc(pairs * sizeof(int32_t));
    s->weight = xmalloc(pairs * sizeof(float));
    s->pair_row = xmalloc(pairs * sizeof(int32_t));
    for (size_t i = 0; i < pairs; i++) s->pair_row[i] = (int32_t)i;
    s->y_pairs = state_alloc(m->be, pairs * (size_t)d * sizeof(float));
    if (m->be->device_memory) {
        s->xn_host = xmalloc((size_t)max_tokens * (size_t)d * sizeof(float));
        s->y_pairs_host = xmalloc(pairs * (size_t)d * sizeof(float));
        s->perm = xmalloc(2 * pairs * sizeof(int32_t));
    }
    s->tokens_per_expert = xcalloc((size_t)m->cfg.n_layers * (size_t)E, sizeof(int64_t));
    expert_placement p;
    llamoe_err err;
    if (placement_init(&p, E, m->n_ranks, &err) != 0) die("%s", err.msg);
    CHECK(placement_first(&p, m->rank) == m->first_expert && placement_count(&p, m->rank) == m->n_local_experts);
    s->exchange = moe_exchange_new(&p, m->rank, d);
    // ye at its worst case now rather than grown in a step: every rank's max_tokens tokens,
    // each choosing up to min(k, local experts) of ours.
    int per_token = k < m->n_local_experts ? k : m->n_local_experts;
    s->ye_cap = (size_t)m->n_ranks * (size_t)max_tokens * (size_t)per_token;
    s->ye = xmalloc((s->ye_cap ? s->ye_cap : 1) * (size_t)d * sizeof(float));
    return 0;
}

void moe_state_free(moe_state *s) {
    state_free(s->be, s->router_logits);
    free(s->expert);
    free(s->weight);
    free(s->pair_row);
    state_free(s->be, s->y_pairs);
    if (s->be && s->be->device_memory) {
        free(s->xn_host);
        free(s->y_pairs_host);
        free(s->perm);
        s->be->free(s->xe_dev);
        s->be->free(s->ye_dev);
    }
    free(s->ye);
    free(s->tokens_per_expert);
    if (s->exchange) moe_exchange_free(s->exchange);
    memset(s, 0, sizeof *s);
}

// ---------------------------------------------------------------------------- forward, device
// Device backends (CUDA; docs/gpu.md). The dispatch packs rows on the host, so with several
// ranks the layer input goes down to the host, the rows this rank receives go up for its
// experts, their outputs down for the combine, and the (token, expert) outputs up for the
// weighted sum; the transport must carry host memory (MPI, or NCCL behind comm_staged_new).
// With one rank the exchange is a permutation of the same rows in the same order (by
// expert, then token), done on the device by gather_rows: no activation crosses the bus, and
// the results are the same bits as the staged path's.
static void grow_device_rows(moe_state *s, int64_t rows) {
    if ((size_t)rows <= s->dev_cap) return;
    s->be->free(s->xe_dev);
    s->be->free(s->ye_dev);
    s->dev_cap = (size_t)rows + (size_t)rows / 2;
    s->xe_dev = s->be->alloc(s->dev_cap * (size_t)s->d * sizeof(float));
    s->ye_dev = s->be->alloc(s->dev_cap * (size_t)s->d * sizeof(float));
}

// Adds one layer-step's phase times, and the exchange's traffic when rows went through it.
static void moe_account(moe_state *s, int exchanged, double t0, double t1, double t2, double t3, double t4) {
    if (exchanged) {
        moe_traffic traffic;
        moe_exchange_traffic(s->exchange, &traffic);
        s->bytes_sent += traffic.bytes_sent;
        s->bytes_recv += traffic.bytes_recv;
        s->dispatch_sent += traffic.dispatch_sent;
        s->rows_sent += traffic.rows_sent;
        s->rows_recv += traffic.rows_recv;
    }
    s->t_router += t1 - t0;
    s->t_dispatch += t2 - t1;
    s->t_experts += t3 - t2;
    s->t_combine += t4 - t3;
}

static int moe_forward_device(const model *m, int l, moe_state *s, comm *c, const float *xn, int n, float *out,
                              double t0, double t1) {
    const backend *be = m->be;
    const layer_weights *L = &m->layers[l];
    int E = s->n_experts, k = s->top_k, d = s->d;
    size_t row_bytes = (size_t)d * sizeof(float);
    double t2, t3;
    if (c->size == 1) {
        CHECK(m->n_local_experts == E && m->first_expert == 0);
        int64_t M = (int64_t)n * k, *offsets = xcalloc((size_t)E + 1, sizeof(int64_t));
        int32_t *rows = s->perm, *src = s->perm + (size_t)s->max_tokens * k;
        for (int64_t i = 0; i < M; i++) offsets[s->expert[i] + 1]++;
        for (int e = 0; e < E; e++) offsets[e + 1] += offsets[e];
        int64_t *cur = xmalloc((size_t)E * sizeof(int64_t));
        memcpy(cur, offsets, (size_t)E * sizeof(int64_t));
        for (int64_t i = 0; i < M; i++) {   // pairs in (token, expert) order: stable by token
            int64_t at = cur[s->expert[i]]++;
            rows[at] = (int32_t)(i / k);
            src[i] = (int32_t)at;
        }
        free(cur);
        grow_device_rows(s, M);
        be->gather_rows(s->xe_dev, xn, rows, (int)M, d);
        t2 = now_seconds();
        be->expert_ffn(s->ye_dev, s->xe_dev, offsets, &L->experts);
        t3 = now_seconds();
        be->gather_rows(s->y_pairs, s->ye_dev, src, (int)M, d);
        free(offsets);
    } else {
        if (c->mem != COMM_MEM_HOST)
            die("layer %d: the MoE exchange packs rows on the host and needs a transport carrying host memory "
                "(MPI, or NCCL through comm_staged_new), not %s", l, c->name);
        const float *xe;
        const int64_t *offsets;
        int64_t rows;
        llamoe_err err;
        if (n > 0) be->download(s->xn_host, xn, (size_t)n * row_bytes);
        if (moe_dispatch(s->exchange, c, s->xn_host, n, s->expert, k, &xe, &offsets, &rows, &err) != 0)
            die("layer %d: dispatch: %s", l, err.msg);
        t2 = now_seconds();
        CHECK((size_t)rows <= s->ye_cap);   // ye is sized for the worst case at init
        grow_device_rows(s, rows);
        be->upload(s->xe_dev, xe, (size_t)rows * row_bytes);
        be->expert_ffn(s->ye_dev, s->xe_dev, offsets, &L->experts);
        be->download(s->ye, s->ye_dev, (size_t)rows * row_bytes);
        t3 = now_seconds();
        if (moe_combine(s->exchange, c, s->ye, s->y_pairs_host, &err) != 0) die("layer %d: combine: %s", l, err.msg);
        if (n > 0) be->upload(s->y_pairs, s->y_pairs_host, (size_t)n * k * row_bytes);
    }
    if (n > 0) be->combine(out, s->y_pairs, s->pair_row, s->weight, n, k, d);
    moe_account(s, c->size > 1, t0, t1, t2, t3, now_seconds());
    return 0;
}

int moe_forward(const model *m, int l, moe_state *s, comm *c, const float *xn, int n, float *out) {
    const backend *be = m->be;
    const layer_weights *L = &m->layers[l];
    int E = s->n_experts, k = s->top_k, d = s->d;
    CHECK(n <= s->max_tokens);

    // Route: identity sends every token to every expert with weight exactly 1.
    double t0 = now_seconds();
    if (m->moe.kind == MOE_IDENTITY) {
        for (int t = 0; t < n; t++)
            for (int e = 0; e < E; e++) {
                s->expert[t * k + e] = e;
                s->weight[t * k + e] = 1.0f;
            }
    } else if (n > 0) {
        be->matmul(s->router_logits, xn, &L->router, n);
        be->router_topk(s->expert, s->weight, s->router_logits, n, E, k);
    }
    int64_t *counts = s->tokens_per_expert + (size_t)l * E;
    for (int i = 0; i < n * k; i++) counts[s->expert[i]]++;
    if (s->cache) expert_cache_routed(s->cache, l, s->expert, n, k);   // may prefetch
    double t1 = now_seconds();
    if (be->device_memory) return moe_forward_device(m, l, s, c, xn, n, out, t0, t1);   // CUDA

    // Dispatch: each token travels once to every rank owning one of its experts.
    const float *xe;
    const int64_t *offsets;
    int64_t rows;
    llamoe_err err;
    if (moe_dispatch(s->exchange, c, xn, n, s->expert, k, &xe, &offsets, &rows, &err) != 0)
        die("layer %d: dispatch: %s", l, err.msg);
    double t2 = now_seconds();

    CHECK((size_t)rows <= s->ye_cap);   // ye is sized for the worst case at init
    if (s->cache) {
        // Memory mode: the experts with rows, resident in the pool, in groups that fit it.
        expert_set set;
        int first;
        for (expert_cache_begin(s->cache, l, offsets); expert_cache_next(s->cache, &set, &first);)
            be->expert_ffn(s->ye, xe, offsets + first, &set);
    } else {
        be->expert_ffn(s->ye, xe, offsets, &L->experts);
    }
    double t3 = now_seconds();

    // Combine: every (token, expert) output comes home in fp32 and is summed in expert order.
    if (moe_combine(s->exchange, c, s->ye, s->y_pairs, &err) != 0) die("layer %d: combine: %s", l, err.msg);
    if (n > 0) be->combine(out, s->y_pairs, s->pair_row, s->weight, n, k, d);
    moe_account(s, 1, t0, t1, t2, t3, now_seconds());
    return 0;
}
