// The MoE forward: one path for every backend (moe.h). The order of the steps, and why the
// results do not depend on the number of ranks, is drawn in docs/design.md.
#include "runtime/moe.h"

#include <string.h>

#include "runtime/rebalance.h"

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
                       .placement = &m->placement, .max_tokens = max_tokens, .capacity = capacity,
                       .kind = kind, .identity = m->moe.kind == MOE_IDENTITY};
}

// The backend's copy of where the experts live: owner and local slot of every slot (the same
// in every layer), then each layer's copies of every logical expert.
static size_t map_entries(const moe_state *s) {
    return 2 * (size_t)s->n_physical + (size_t)s->n_layers * ((size_t)s->n_experts + 1 + (size_t)s->n_physical);
}

void moe_maps_upload(moe_state *s) {
    int E = s->n_experts, S = s->n_physical, L = s->n_layers;
    size_t per_layer = (size_t)E + 1 + (size_t)S;
    int32_t *host = xmalloc(map_entries(s) * sizeof(int32_t));
    for (int p = 0; p < S; p++) {
        host[p] = placement_owner(&s->slots, p);
        host[S + p] = p - placement_first(&s->slots, host[p]);
    }
    for (int l = 0; l < L; l++) {
        int32_t *at = host + 2 * (size_t)S + (size_t)l * per_layer;
        placement_replicas(&s->table, l, at, at + E + 1);
    }
    s->be->upload(s->be, s->map_memory, host, map_entries(s) * sizeof(int32_t));
    free(host);
    for (int l = 0; l < L; l++) {
        const int32_t *at = s->map_memory + 2 * (size_t)S + (size_t)l * per_layer;
        s->maps[l] = (moe_map){.owner = s->map_memory, .local = s->map_memory + S, .replica_start = at,
                               .replica = at + E + 1, .n_experts = S, .n_ranks = s->n_ranks, .n_logical = E};
    }
}

void moe_state_init(moe_state *s, backend *be, const moe_shape *sh) {
    memset(s, 0, sizeof *s);
    int E = sh->n_experts, k = sh->top_k, d = sh->d, P = sh->n_ranks, max_tokens = sh->max_tokens;
    llamoe_err err;
    if (P > MOE_MAX_RANKS) die("expert parallelism over %d ranks: at most %d are supported", P, MOE_MAX_RANKS);
    if (sh->placement) {
        const placement_table *t = sh->placement;
        CHECK(t->n_layers == sh->n_layers && t->n_logical == E && t->n_ranks == P);
        placement_table_copy(&s->table, t);
    } else if (placement_table_contiguous(&s->table, sh->n_layers, E, P, &err) != 0) {
        die("%s", err.msg);
    }
    int S = s->table.n_physical;
    if (placement_init(&s->slots, S, P, &err) != 0) die("%s", err.msg);
    s->be = be;
    s->max_tokens = max_tokens;
    s->n_experts = E;
    s->n_physical = S;
    s->top_k = k;
    s->d = d;
    s->rank = sh->rank;
    s->n_ranks = P;
    s->n_local = placement_count(&s->slots, sh->rank);
    s->n_layers = sh->n_layers;
    s->capacity = sh->capacity < max_tokens ? sh->capacity : max_tokens;
    s->kind = sh->kind;
    s->exchange = moe_exchange_new(&s->slots, sh->rank, d, k, max_tokens, s->capacity);

    s->maps = xcalloc((size_t)s->n_layers, sizeof(moe_map));
    s->map_memory = backend_buffer(be, map_entries(s), sizeof(int32_t));
    moe_maps_upload(s);

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
    s->pair_expert = backend_buffer(be, pairs, sizeof(int32_t));
    s->counts = backend_buffer(be, (size_t)S + P, sizeof(int32_t));
    s->counts_host = xcalloc((size_t)S + P, sizeof(int32_t));
    s->row_slot = backend_buffer(be, pairs, sizeof(int32_t));
    s->pair_slot = backend_buffer(be, pairs, sizeof(int32_t));
    s->tally = backend_buffer(be, (size_t)s->n_layers * (S + P), sizeof(int64_t));

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
    s->stats.pairs_to = xcalloc((size_t)s->n_layers * P, sizeof(int64_t));
}

void moe_state_free(moe_state *s) {
    backend *be = s->be;
    if (!be) return;
    void *bufs[] = {s->map_memory, s->router_logits, s->expert, s->weight, s->id_expert, s->id_weight,
                    s->pair_expert, s->counts, s->row_slot, s->pair_slot, s->tally, s->send, s->recv, s->xe,
                    s->ye, s->offsets, s->ret_row, s->ret_send, s->ret_recv};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) be->free(be, bufs[i]);
    free(s->maps);
    placement_table_free(&s->table);
    free(s->counts_host);
    free(s->marks);
    free(s->stats.tokens_per_expert);
    free(s->stats.rows_to);
    free(s->stats.pairs_to);
    free(s->stats.step_pairs);
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
    s->step++;
    // A row of the per-step balance log, filled by the layers of this step.
    moe_stats *st = &s->stats;
    if (st->n_steps == s->step_pairs_cap) {
        s->step_pairs_cap = s->step_pairs_cap ? 2 * s->step_pairs_cap : 64;
        st->step_pairs = xrealloc(st->step_pairs, (size_t)s->step_pairs_cap * s->n_layers * sizeof(int64_t));
    }
    int64_t *row = st->step_pairs + (size_t)st->n_steps++ * s->n_layers;
    for (int l = 0; l < s->n_layers; l++) row[l] = -1;
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
    int S = s->n_physical, k = s->top_k, d = s->d, P = s->n_ranks;
    const moe_map *map = &s->maps[l];
    CHECK(n >= 0 && n <= s->max_tokens && l >= 0 && l < s->n_layers);
    if (be->device_memory && c->mem != COMM_MEM_DEVICE)
        die("layer %d: the MoE exchange moves %s memory, but the %s communicator carries host memory",
            l, be->name, c->name);
    backend_mark *mk = s->marks + (size_t)l * MOE_MARKS;
    mk[1] = be->mark(be);
    if (!s->routed) mk[0] = mk[1];   // called alone: no routing time
    s->routed = 0;
    llamoe_err err;

    // Plan and dispatch: each pair goes to one copy of its expert (dealt round the copies from
    // where this rank and step start), each token's row once to every rank computing a pair.
    int salt = (int)(((int64_t)s->rank + s->step) % (1 << 30));
    be->moe_plan(be, s->counts, s->row_slot, s->pair_slot, s->pair_expert, s->tally + (size_t)l * (S + P), expert, n,
                 k, salt, map);
    const moe_exchange_plan *plan;
    if (s->fixed_step) {
        plan = moe_exchange_plan_fixed(s->exchange);
        s->stats.layer_steps_fixed++;
    } else {
        // The one copy to the host of a layer: the counts that size the exchange.
        be->download(be, s->counts_host, s->counts, (size_t)(S + P) * sizeof(int32_t));
        if (s->cache) expert_cache_routed(s->cache, l, s->counts_host);   // may prefetch
        if (moe_exchange_plan_counts(s->exchange, c, s->counts_host, 0, &plan, &err) != 0)
            die("layer %d: %s", l, err.msg);
        s->stats.layer_steps_counts++;
        if (s->stats.n_steps > 0) s->stats.step_pairs[(size_t)(s->stats.n_steps - 1) * s->n_layers + l] = plan->rows_owned;
    }
    be->moe_pack(be, s->send, &plan->send, xn, s->pair_expert, s->row_slot, s->pair_slot, s->counts, n, k, d, map);
    if (moe_exchange_dispatch(s->exchange, c, plan, s->send, s->recv, &err) != 0) die("layer %d: %s", l, err.msg);
    be->moe_group(be, s->xe, s->offsets, s->ret_row, s->recv, &plan->recv, plan->owner_ret, P, s->n_local, d);
    mk[2] = be->mark(be);

    experts(ctx, s, plan);
    mk[3] = be->mark(be);

    // Combine: every (token, expert) output comes home in fp32 and is summed there in
    // ascending expert order, whatever rank computed it.
    be->gather_rows(be, s->ret_send, s->ye, s->ret_row, (int)plan->owner_ret[P], d);
    if (moe_exchange_combine(s->exchange, c, plan, s->ret_send, s->ret_recv, &err) != 0) die("layer %d: %s", l, err.msg);
    if (n > 0) be->combine(be, out, s->ret_recv, s->pair_expert, s->pair_slot, weight, plan->home_ret, n, k, d, map);
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
    // Between steps, before any expert of this one runs: a new placement every N steps.
    if (l == 0 && s->rebalance_every > 0 && s->step > 1 && (s->step - 1) % s->rebalance_every == 0)
        moe_rebalance(m, s, c);

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
    int E = s->n_experts, S = s->n_physical, P = s->n_ranks, L = s->n_layers;
    be->memset0(be, s->tally, (size_t)L * (S + P) * sizeof(int64_t));
    moe_stats *st = &s->stats;
    memset(st->tokens_per_expert, 0, (size_t)L * E * sizeof(int64_t));
    memset(st->rows_to, 0, (size_t)P * sizeof(int64_t));
    memset(st->pairs_to, 0, (size_t)L * P * sizeof(int64_t));
    *st = (moe_stats){.tokens_per_expert = st->tokens_per_expert, .rows_to = st->rows_to, .pairs_to = st->pairs_to,
                      .step_pairs = st->step_pairs};
    moe_exchange_traffic(s->exchange, &s->traffic_base);
}

void moe_tally_fold(moe_state *s, int64_t *window) {
    backend *be = s->be;
    int E = s->n_experts, S = s->n_physical, P = s->n_ranks;
    size_t n = (size_t)s->n_layers * (S + P);
    int64_t *tally = xmalloc(n * sizeof(int64_t));
    be->download(be, tally, s->tally, n * sizeof(int64_t));
    be->memset0(be, s->tally, n * sizeof(int64_t));
    moe_stats *st = &s->stats;
    for (int l = 0; l < s->n_layers; l++) {
        const int64_t *t = tally + (size_t)l * (S + P);
        const int32_t *holds = placement_layer(&s->table, l);
        for (int p = 0; p < S; p++) {
            st->tokens_per_expert[(size_t)l * E + holds[p]] += t[p];
            st->pairs_to[(size_t)l * P + placement_owner(&s->slots, p)] += t[p];
            if (window) window[(size_t)l * E + holds[p]] += t[p];
        }
        for (int r = 0; r < P; r++) st->rows_to[r] += t[S + r];
    }
    free(tally);
}

void moe_stats_fetch(moe_state *s) {
    moe_tally_fold(s, NULL);
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
