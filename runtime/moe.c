// The MoE forward: one path for every backend (moe.h). The order of the steps, and why the
// results do not depend on the number of ranks, is drawn in docs/design.md.
#include "runtime/moe.h"

#include <string.h>

#define MOE_MARKS 5   // route | dispatch (plan, pack, exchange, group) | experts | combine |

static void *backend_buffer(backend *be, size_t count, size_t size) {
    size_t bytes;
    CHECK(mul_ok(count ? count : 1, size, &bytes));
    return be->alloc(be, bytes);
}

// ---------------------------------------------------------------------------- lifecycle
moe_shape moe_shape_of(const model *m, int max_tokens, int capacity, moe_exchange_kind kind) {
    return (moe_shape){.n_experts = m->moe.n_experts, .top_k = m->moe.top_k, .d = m->cfg.hidden_size,
                       .n_layers = m->cfg.n_layers, .rank = m->rank, .n_ranks = m->n_ranks,
                       .max_tokens = max_tokens, .capacity = capacity, .kind = kind,
                       .identity = m->moe.kind == MOE_IDENTITY};
}

void moe_state_init(moe_state *s, backend *be, const moe_shape *sh) {
    memset(s, 0, sizeof *s);
    int E = sh->n_experts, k = sh->top_k, d = sh->d, P = sh->n_ranks, max_tokens = sh->max_tokens;
    llamoe_err err;
    if (P > MOE_MAX_RANKS) die("expert parallelism over %d ranks: at most %d are supported", P, MOE_MAX_RANKS);
    expert_placement p;
    if (placement_init(&p, E, P, &err) != 0) die("%s", err.msg);
    s->be = be;
    s->max_tokens = max_tokens;
    s->n_experts = E;
    s->top_k = k;
    s->d = d;
    s->rank = sh->rank;
    s->n_ranks = P;
    s->n_local = placement_count(&p, sh->rank);
    s->n_layers = sh->n_layers;
    s->capacity = sh->capacity < max_tokens ? sh->capacity : max_tokens;
    s->kind = sh->kind;
    s->exchange = moe_exchange_new(&p, sh->rank, d, k, max_tokens, s->capacity);

    // The expert map, on the host and the backend.
    s->owner_host = xmalloc((size_t)E * sizeof(int32_t));
    int32_t *local = xmalloc((size_t)E * sizeof(int32_t));
    for (int e = 0; e < E; e++) {
        s->owner_host[e] = placement_owner(&p, e);
        local[e] = e - placement_first(&p, s->owner_host[e]);
    }
    int32_t *owner_dev = backend_buffer(be, (size_t)E, sizeof(int32_t)), *local_dev = backend_buffer(be, (size_t)E, sizeof(int32_t));
    be->upload(be, owner_dev, s->owner_host, (size_t)E * sizeof(int32_t));
    be->upload(be, local_dev, local, (size_t)E * sizeof(int32_t));
    free(local);
    s->map = (moe_map){.owner = owner_dev, .local = local_dev, .n_experts = E, .n_ranks = P};

    size_t pairs = (size_t)max_tokens * (size_t)k;
    if (sh->identity) {
        // Identity sends every token to every expert with weight exactly 1: a constant route.
        CHECK(k == E);
        int32_t *ids = xmalloc(pairs * sizeof(int32_t));
        float *ones = xmalloc(pairs * sizeof(float));
        for (size_t i = 0; i < pairs; i++) {
            ids[i] = (int32_t)(i % (size_t)E);
            ones[i] = 1.0f;
        }
        s->id_expert = backend_buffer(be, pairs, sizeof(int32_t));
        s->id_weight = backend_buffer(be, pairs, sizeof(float));
        be->upload(be, s->id_expert, ids, pairs * sizeof(int32_t));
        be->upload(be, s->id_weight, ones, pairs * sizeof(float));
        free(ids);
        free(ones);
    } else {
        s->router_logits = backend_buffer(be, (size_t)max_tokens * E, sizeof(float));
        s->expert = backend_buffer(be, pairs, sizeof(int32_t));
        s->weight = backend_buffer(be, pairs, sizeof(float));
    }
    s->counts = backend_buffer(be, (size_t)E + P, sizeof(int32_t));
    s->counts_host = xcalloc((size_t)E + P, sizeof(int32_t));
    s->row_slot = backend_buffer(be, pairs, sizeof(int32_t));
    s->pair_slot = backend_buffer(be, pairs, sizeof(int32_t));
    s->tally = backend_buffer(be, (size_t)s->n_layers * (E + P), sizeof(int64_t));

    moe_exchange_sizes z;
    moe_exchange_max_sizes(s->exchange, &z);
    s->send = backend_buffer(be, z.dispatch_send, 1);
    s->recv = backend_buffer(be, z.dispatch_recv, 1);
    s->xe = backend_buffer(be, (size_t)z.owner_rows * d, sizeof(float));
    s->ye = backend_buffer(be, (size_t)z.owner_rows * d, sizeof(float));
    s->offsets = backend_buffer(be, (size_t)s->n_local + 1, sizeof(int64_t));
    s->ret_row = backend_buffer(be, (size_t)z.combine_send_rows, sizeof(int32_t));
    s->ret_send = backend_buffer(be, (size_t)z.combine_send_rows * d, sizeof(float));
    s->ret_recv = backend_buffer(be, (size_t)z.combine_recv_rows * d, sizeof(float));

    s->marks = xcalloc((size_t)s->n_layers * MOE_MARKS, sizeof(backend_mark));
    s->stats.tokens_per_expert = xcalloc((size_t)s->n_layers * E, sizeof(int64_t));
    s->stats.rows_to = xcalloc((size_t)P, sizeof(int64_t));
}

void moe_state_free(moe_state *s) {
    backend *be = s->be;
    if (!be) return;
    void *bufs[] = {(void *)s->map.owner, (void *)s->map.local, s->router_logits, s->expert, s->weight,
                    s->id_expert, s->id_weight, s->counts, s->row_slot, s->pair_slot, s->tally, s->send,
                    s->recv, s->xe, s->ye, s->offsets, s->ret_row, s->ret_send, s->ret_recv};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) be->free(be, bufs[i]);
    free(s->owner_host);
    free(s->counts_host);
    free(s->marks);
    free(s->stats.tokens_per_expert);
    free(s->stats.rows_to);
    moe_exchange_free(s->exchange);
    memset(s, 0, sizeof *s);
}

// ---------------------------------------------------------------------------- steps
void moe_step_begin(moe_state *s, int max_tokens_any, int decode_only) {
    int fits = s->capacity > 0 && !s->cache && max_tokens_any <= s->capacity;
    // The fixed plan saves the host its synchronisation (what a GPU needs) at the cost of
    // moving full capacities: auto takes it for decode steps on device backends only.
    int auto_fixed = s->kind == MOE_EXCHANGE_AUTO && decode_only && s->be->device_memory;
    s->fixed_step = fits && (s->kind == MOE_EXCHANGE_FIXED || auto_fixed);
    s->marked = 0;
}

void moe_step_end(moe_state *s) {
    backend *be = s->be;
    for (int l = 0; l < s->marked; l++) {
        const backend_mark *mk = s->marks + (size_t)l * MOE_MARKS;
        s->stats.t_router += be->seconds(be, mk[0], mk[1]);
        s->stats.t_dispatch += be->seconds(be, mk[1], mk[2]);
        s->stats.t_experts += be->seconds(be, mk[2], mk[3]);
        s->stats.t_combine += be->seconds(be, mk[3], mk[4]);
    }
    s->marked = 0;
}

// ---------------------------------------------------------------------------- forward
void moe_exchange_layer(moe_state *s, comm *c, int l, const float *xn, int n, const int32_t *expert,
                        const float *weight, moe_experts_fn experts, void *ctx, float *out) {
    backend *be = s->be;
    int E = s->n_experts, k = s->top_k, d = s->d, P = s->n_ranks;
    CHECK(n >= 0 && n <= s->max_tokens && l >= 0 && l < s->n_layers);
    if (be->device_memory && c->mem != COMM_MEM_DEVICE)
        die("layer %d: the MoE exchange moves %s memory, but the %s communicator carries host memory",
            l, be->name, c->name);
    backend_mark *mk = s->marks + (size_t)l * MOE_MARKS;
    mk[1] = be->mark(be);
    if (!s->routed) mk[0] = mk[1];   // called alone: no routing time
    s->routed = 0;
    llamoe_err err;

    // Plan and dispatch: each token's row travels once to every rank owning one of its experts.
    be->moe_plan(be, s->counts, s->row_slot, s->pair_slot, s->tally + (size_t)l * (E + P), expert, n, k, &s->map);
    const moe_exchange_plan *plan;
    if (s->fixed_step) {
        plan = moe_exchange_plan_fixed(s->exchange);
        s->stats.layer_steps_fixed++;
    } else {
        // The one copy to the host of a layer: the counts that size the exchange.
        be->download(be, s->counts_host, s->counts, (size_t)(E + P) * sizeof(int32_t));
        if (s->cache) expert_cache_routed(s->cache, l, s->counts_host);   // may prefetch
        if (moe_exchange_plan_counts(s->exchange, c, s->counts_host, 0, &plan, &err) != 0)
            die("layer %d: %s", l, err.msg);
        s->stats.layer_steps_counts++;
    }
    be->moe_pack(be, s->send, &plan->send, xn, expert, s->row_slot, s->pair_slot, s->counts, n, k, d, &s->map);
    if (moe_exchange_dispatch(s->exchange, c, plan, s->send, s->recv, &err) != 0) die("layer %d: %s", l, err.msg);
    be->moe_group(be, s->xe, s->offsets, s->ret_row, s->recv, &plan->recv, plan->owner_ret, P, s->n_local, d);
    mk[2] = be->mark(be);

    experts(ctx, s, plan);
    mk[3] = be->mark(be);

    // Combine: every (token, expert) output comes home in fp32 and is summed there in
    // ascending expert order, whatever rank computed it.
    be->gather_rows(be, s->ret_send, s->ye, s->ret_row, (int)plan->owner_ret[P], d);
    if (moe_exchange_combine(s->exchange, c, plan, s->ret_send, s->ret_recv, &err) != 0) die("layer %d: %s", l, err.msg);
    if (n > 0) be->combine(be, out, s->ret_recv, expert, s->pair_slot, weight, plan->home_ret, n, k, d, &s->map);
    mk[4] = be->mark(be);
    if (l + 1 > s->marked) s->marked = l + 1;
}

typedef struct {
    const model *m;
    int l;
} layer_experts;

// The grouped expert FFN of a layer over the rows this rank received.
static void run_experts(void *ctx, moe_state *s, const moe_exchange_plan *plan) {
    const layer_experts *x = ctx;
    backend *be = s->be;
    if (s->cache) {
        // Memory mode (counts plan only): the experts with rows, resident in the pool, in
        // groups that fit it; offsets index the whole layer's rows.
        expert_set set;
        int first;
        for (expert_cache_begin(s->cache, x->l, plan->expert_offsets); expert_cache_next(s->cache, &set, &first);)
            be->expert_ffn(be, s->ye, s->xe, s->offsets + first, plan->expert_offsets + first, plan->rows_owned, &set);
        return;
    }
    be->expert_ffn(be, s->ye, s->xe, s->offsets, plan->fixed ? NULL : plan->expert_offsets, plan->rows_owned,
                   &x->m->layers[x->l].experts);
}

void moe_forward(const model *m, int l, moe_state *s, comm *c, const float *xn, int n, float *out) {
    backend *be = m->be;
    const layer_weights *L = &m->layers[l];
    backend_mark *mk = s->marks + (size_t)l * MOE_MARKS;

    // Route: each token's k experts in ascending order, with their weights.
    mk[0] = be->mark(be);
    const int32_t *expert = s->id_expert;
    const float *weight = s->id_weight;
    if (m->moe.kind != MOE_IDENTITY) {
        if (n > 0) {
            be->matmul(be, s->router_logits, xn, &L->router, n);
            be->router_topk(be, s->expert, s->weight, s->router_logits, n, s->n_experts, s->top_k);
        }
        expert = s->expert;
        weight = s->weight;
    }
    s->routed = 1;
    layer_experts x = {m, l};
    moe_exchange_layer(s, c, l, xn, n, expert, weight, run_experts, &x, out);
}

// ---------------------------------------------------------------------------- statistics
void moe_stats_reset(moe_state *s) {
    backend *be = s->be;
    int E = s->n_experts, P = s->n_ranks;
    be->memset0(be, s->tally, (size_t)s->n_layers * (E + P) * sizeof(int64_t));
    int64_t *tpe = s->stats.tokens_per_expert, *rows_to = s->stats.rows_to;
    memset(tpe, 0, (size_t)s->n_layers * E * sizeof(int64_t));
    memset(rows_to, 0, (size_t)P * sizeof(int64_t));
    s->stats = (moe_stats){.tokens_per_expert = tpe, .rows_to = rows_to};
    moe_exchange_traffic(s->exchange, &s->traffic_base);
}

void moe_stats_fetch(moe_state *s) {
    backend *be = s->be;
    int E = s->n_experts, P = s->n_ranks;
    size_t n = (size_t)s->n_layers * (E + P);
    int64_t *tally = xmalloc(n * sizeof(int64_t));
    be->download(be, tally, s->tally, n * sizeof(int64_t));
    memset(s->stats.rows_to, 0, (size_t)P * sizeof(int64_t));
    for (int l = 0; l < s->n_layers; l++) {
        const int64_t *t = tally + (size_t)l * (E + P);
        memcpy(s->stats.tokens_per_expert + (size_t)l * E, t, (size_t)E * sizeof(int64_t));
        for (int r = 0; r < P; r++) s->stats.rows_to[r] += t[E + r];
    }
    free(tally);
    moe_traffic now;
    moe_exchange_traffic(s->exchange, &now);
    const moe_traffic *b = &s->traffic_base;
    s->stats.traffic = (moe_traffic){
        .dispatch_sent = now.dispatch_sent - b->dispatch_sent,
        .dispatch_recv = now.dispatch_recv - b->dispatch_recv,
        .combine_sent = now.combine_sent - b->combine_sent,
        .combine_recv = now.combine_recv - b->combine_recv,
        .local = now.local - b->local,
        .exchanges_counts = now.exchanges_counts - b->exchanges_counts,
        .exchanges_fixed = now.exchanges_fixed - b->exchanges_fixed,
    };
}
