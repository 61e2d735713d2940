// MoE construction: a layer's router and this rank's experts for the MoE mode (identity /
// upcycle / production slices and copies of the dense FFN, or a Mixtral checkpoint's own).
#include "runtime/moe_build.h"

#include <math.h>
#include <string.h>

#include "base/rng.h"

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

static value_stats *layer_stats(const layer_weights *L, value_stats st[3]) {
    st[0] = matrix_stats(&L->w_gate);
    st[1] = matrix_stats(&L->w_up);
    st[2] = matrix_stats(&L->w_down);
    return st;
}

// Logical expert e of layer l as host weights w1, w3, w2: views of the checkpoint (identity
// slices, upcycle copies, a Mixtral checkpoint's own tensors) or, for production, built into
// mem (expert_size bytes; st: the dense matrices' statistics).
static int expert_weights(const model *m, const layer_weights *L, int l, int e, const value_stats *st, uint8_t *mem,
                          weight_t w[3], llamoe_err *err) {
    int d = m->cfg.hidden_size, ffn = m->cfg.intermediate_size;
    switch (m->moe.kind) {
    case MOE_IDENTITY: {
        int start, width;
        identity_slice(ffn, m->moe.n_experts, e, &start, &width);
        w[0] = rows_view(L->w_gate, start, width);
        w[1] = rows_view(L->w_up, start, width);
        w[2] = cols_view(L->w_down, start, width);
        return 0;
    }
    case MOE_UPCYCLE:
        w[0] = L->w_gate; w[1] = L->w_up; w[2] = L->w_down;
        return 0;
    case MOE_PRODUCTION:
        build_drop_upcycled(L, st, m->moe.drop, rng_derive(m->moe.seed, (uint64_t)l, (uint64_t)e), mem, w);
        return 0;
    case MOE_CHECKPOINT: {
        const char *part[3] = {"w1", "w3", "w2"};
        char name[256];
        for (int j = 0; j < 3; j++) {
            snprintf(name, sizeof name, "model.layers.%d.block_sparse_moe.experts.%d.%s.weight", l, e, part[j]);
            int64_t rows = j == 2 ? d : ffn, cols = j == 2 ? ffn : d;
            if (model_find_matrix(m, name, rows, cols, &w[j], err) != 0) return -1;
        }
        return 0;
    }
    case MOE_DENSE: break;
    }
    return fail(err, "layer %d: dense layers have no experts", l);
}

// Bytes of one production expert (a packed copy of the dense FFN).
static size_t production_bytes(const layer_weights *L) {
    return matrix_bytes(&L->w_gate) + matrix_bytes(&L->w_up) + matrix_bytes(&L->w_down);
}

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

    // This rank's slots of the layer, each a logical expert (or a copy of one).
    int n_local = m->n_local_experts;
    const int32_t *holds = placement_layer(&m->placement, l) + m->first_expert;
    weight_t *host = xcalloc((size_t)n_local * 3, sizeof(weight_t));   // w1, w3, w2 per expert
    value_stats st[3];
    size_t expert_bytes = 0;
    if (m->moe.kind == MOE_PRODUCTION) {
        layer_stats(L, st);
        expert_bytes = production_bytes(L);
        L->expert_memory = xmalloc(expert_bytes * (size_t)n_local);
    }
    for (int i = 0; i < n_local; i++) {
        weight_t *w = &host[3 * i];
        uint8_t *mem = L->expert_memory ? (uint8_t *)L->expert_memory + expert_bytes * (size_t)i : NULL;
        if (expert_weights(m, L, l, holds[i], st, mem, w, err) != 0) { free(host); return -1; }
        for (int j = 0; j < 3; j++) m->expert_bytes += matrix_bytes(&w[j]);
    }
    L->w1 = xcalloc((size_t)n_local, sizeof(weight_t));
    L->w3 = xcalloc((size_t)n_local, sizeof(weight_t));
    L->w2 = xcalloc((size_t)n_local, sizeof(weight_t));
    // Memory mode keeps the host copies: they are the source the expert cache fetches from.
    int place = !m->experts_on_host;
    for (int i = 0; i < n_local; i++) {
        L->w1[i] = host[3 * i];
        L->w3[i] = host[3 * i + 1];
        L->w2[i] = place ? model_place_weight(m, host[3 * i + 2]) : host[3 * i + 2];
        if (place) model_place_gate_up(m, &L->w1[i], &L->w3[i]);
    }
    free(host);
    if (place && m->be->device_memory && L->expert_memory) { free(L->expert_memory); L->expert_memory = NULL; }
    L->experts = (expert_set){.n_experts = n_local, .w1 = L->w1, .w3 = L->w3, .w2 = L->w2};
    return 0;
}

void moe_free_layer(model *m, layer_weights *L) {
    backend *be = m->be;
    if (be->device_memory) {
        be->free(be, (void *)L->dense_gate.data);
        be->free(be, (void *)L->dense_up.data);
        be->free(be, (void *)L->dense_down.data);
        for (int i = 0; L->w1 && !m->experts_on_host && i < L->experts.n_experts; i++) {
            be->free(be, (void *)L->w1[i].data);   // gate and up: one allocation
            be->free(be, (void *)L->w2[i].data);
        }
        be->free(be, (void *)L->router.data);
    } else if (m->moe.kind == MOE_UPCYCLE || m->moe.kind == MOE_PRODUCTION) {
        free((void *)L->router.data);   // generated on the host
    }
    for (int i = 0; L->moved && i < L->experts.n_experts; i++)
        if (L->moved[i]) be->free(be, L->moved[i]);
    free(L->moved);
    free(L->w1);
    free(L->w3);
    free(L->w2);
    free(L->expert_memory);
}

// ---------------------------------------------------------------------------- moving experts
void moe_expert_shape(const model *m, int l, int e, weight_t w[3]) {
    const layer_weights *L = &m->layers[l];
    llamoe_err err;
    if (m->moe.kind == MOE_PRODUCTION) {   // a packed copy of the dense FFN
        const weight_t *src[3] = {&L->w_gate, &L->w_up, &L->w_down};
        for (int j = 0; j < 3; j++)
            w[j] = (weight_t){NULL, src[j]->dtype, src[j]->rows, src[j]->cols, src[j]->cols};
        return;
    }
    if (expert_weights(m, L, l, e, NULL, NULL, w, &err) != 0) die("%s", err.msg);   // checked at load
    for (int j = 0; j < 3; j++) {
        w[j].data = NULL;
        w[j].ld = w[j].cols;
    }
}

uint8_t *moe_expert_build(const model *m, int l, int e, size_t *bytes) {
    const layer_weights *L = &m->layers[l];
    weight_t w[3];
    moe_expert_shape(m, l, e, w);
    *bytes = matrix_bytes(&w[0]) + matrix_bytes(&w[1]) + matrix_bytes(&w[2]);
    uint8_t *out = xmalloc(*bytes ? *bytes : 1);
    llamoe_err err;
    if (m->moe.kind == MOE_PRODUCTION) {
        value_stats st[3];
        expert_weights(m, L, l, e, layer_stats(L, st), out, w, &err);   // packed in place
        return out;
    }
    if (expert_weights(m, L, l, e, NULL, NULL, w, &err) != 0) die("%s", err.msg);
    copy_matrix(out, &w[0]);
    copy_matrix(out + matrix_bytes(&w[0]), &w[1]);
    copy_matrix(out + matrix_bytes(&w[0]) + matrix_bytes(&w[1]), &w[2]);
    return out;
}

void moe_expert_alloc(const model *m, int l, int e, expert_blocks *b) {
    backend *be = m->be;
    moe_expert_shape(m, l, e, b->w);
    b->gate_up_bytes = matrix_bytes(&b->w[0]) + matrix_bytes(&b->w[1]);
    b->down_bytes = matrix_bytes(&b->w[2]);
    b->staging = NULL;
    if (be->device_memory) {   // the layout of a placed expert: gate and up in one allocation
        b->gate_up = be->alloc(be, b->gate_up_bytes);
        b->down = be->alloc(be, b->down_bytes);
    } else {
        b->gate_up = be->alloc(be, b->gate_up_bytes + b->down_bytes);
        b->down = b->gate_up + b->gate_up_bytes;
    }
}

void moe_expert_source(const model *m, int l, int i, expert_blocks *b) {
    const layer_weights *L = &m->layers[l];
    b->w[0] = L->w1[i];
    b->w[1] = L->w3[i];
    b->w[2] = L->w2[i];
    b->gate_up_bytes = matrix_bytes(&b->w[0]) + matrix_bytes(&b->w[1]);
    b->down_bytes = matrix_bytes(&b->w[2]);
    b->staging = NULL;
    if (m->be->device_memory) {   // placed: already in this layout
        b->gate_up = (uint8_t *)L->w1[i].data;
        b->down = (uint8_t *)L->w2[i].data;
        return;
    }
    // Host views may be strided or apart: packed into a staging copy.
    b->staging = xmalloc(b->gate_up_bytes + b->down_bytes + 1);
    copy_matrix(b->staging, &b->w[0]);
    copy_matrix(b->staging + matrix_bytes(&b->w[0]), &b->w[1]);
    copy_matrix(b->staging + b->gate_up_bytes, &b->w[2]);
    b->gate_up = b->staging;
    b->down = b->staging + b->gate_up_bytes;
}

void moe_expert_source_done(expert_blocks *b) {
    free(b->staging);
    b->staging = NULL;
}

void moe_expert_install(const model *m, int l, int i, expert_blocks *b) {
    backend *be = m->be;
    layer_weights *L = &m->layers[l];   // the model is const to the forward, its weights are not
    int n_local = L->experts.n_experts;
    size_t es = dtype_size(b->w[0].dtype);
    weight_t w1 = b->w[0], w3 = b->w[1], w2 = b->w[2];
    w1.data = b->gate_up;
    w3.data = b->gate_up + (size_t)w1.rows * w1.cols * es;
    w2.data = b->down;
    if (be->device_memory) {
        be->free(be, (void *)L->w1[i].data);
        be->free(be, (void *)L->w2[i].data);
    } else if (L->expert_memory) {
        // A production slot has its block (all production experts have one shape): the bytes
        // go there and the slot's views stay.
        size_t block = production_bytes(L);
        CHECK(b->gate_up_bytes + b->down_bytes == block);
        memcpy((uint8_t *)L->expert_memory + block * (size_t)i, b->gate_up, block);
        be->free(be, b->gate_up);
        b->gate_up = b->down = NULL;
        return;
    } else {
        if (!L->moved) L->moved = xcalloc((size_t)n_local, sizeof(void *));
        if (L->moved[i]) be->free(be, L->moved[i]);
        L->moved[i] = b->gate_up;
    }
    L->w1[i] = w1;
    L->w3[i] = w3;
    L->w2[i] = w2;
    b->gate_up = b->down = NULL;
}
