// The MoE FFN of one layer for one step, the same path on every backend: route (router
// top-k, or identity's every expert), plan (the backend's route plan), pack, dispatch (the
// exchange), group by local expert, grouped expert FFN, return exchange, combine. Every
// activation stays in backend memory; the host sees the route counts once per layer (the
// counts plan), or nothing at all (the fixed-capacity plan of decode steps). docs/design.md
// draws it.
#pragma once
#include "parallel/comm.h"
#include "parallel/dispatch.h"
#include "parallel/placement.h"
#include "runtime/expert_cache.h"
#include "runtime/model.h"

// Rebalancing while serving (runtime/rebalance.h): what it did since the last reset.
typedef struct {
    int64_t rebalances;           // placements computed (every --rebalance N steps)
    int64_t layers_changed;       // layers whose placement changed
    int64_t experts_moved;        // slots of this rank refilled with another expert
    int64_t experts_checked;      // of those, compared with the local build (--rebalance-check)
    size_t bytes_sent, bytes_recv;   // expert weights through the communicator, other ranks
    size_t bytes_local;           // ... and from this rank to itself
    double seconds;               // wall time of the rebalances on this rank
} moe_rebalance_stats;

// What the MoE layers of one rank did since the last moe_stats_reset.
typedef struct {
    double t_router, t_dispatch, t_experts, t_combine;   // seconds of backend work
    int64_t *tokens_per_expert;   // [n_layers * E]: pairs this rank's tokens sent to each
                                  // logical expert
    int64_t *rows_to;             // [n_ranks]: token rows this rank sent to each rank (all layers)
    int64_t *pairs_to;            // [n_layers * n_ranks]: pairs this rank's tokens sent to each
                                  // rank (summed over the ranks: each rank's expert load)
    // Pairs this rank's experts computed in each layer of each step, [n_steps * n_layers];
    // -1 for a layer-step of the fixed plan, whose counts the host never sees.
    int64_t *step_pairs;
    int n_steps;
    moe_traffic traffic;          // bytes of the all-to-alls (moe_exchange_traffic, since reset)
    int64_t layer_steps_counts, layer_steps_fixed;   // MoE layer-steps by exchange plan
    moe_rebalance_stats rebalance;
} moe_stats;

typedef enum {
    MOE_EXCHANGE_AUTO,     // on a device backend the fixed plan for decode steps that fit it,
                           // else counts
    MOE_EXCHANGE_COUNTS,   // always the counts plan
    MOE_EXCHANGE_FIXED,    // the fixed plan for every step that fits it (prefill chunks too)
} moe_exchange_kind;

// Per-step scratch and statistics of the MoE layers of one rank. Buffers are backend memory
// unless named _host.
typedef struct {
    int max_tokens, n_experts, top_k, d, rank, n_ranks, n_local, n_layers;
    int n_physical;               // S: the logical experts and their redundant copies
    int capacity;                 // tokens per rank of the fixed plan (0: none)
    moe_exchange_kind kind;
    backend *be;
    expert_placement slots;       // the S slots in blocks over the ranks
    placement_table table;        // the logical expert of every slot of every layer (owned)
    moe_map *maps;                // [n_layers] where each layer's experts live
    int32_t *map_memory;          // backend: owner[S], local[S], then per layer
                                  // replica_start[E + 1] and replica[S] (owned)
    float *router_logits;         // [max_tokens, E]
    int32_t *expert;              // [max_tokens, k] router choices
    float *weight;                // [max_tokens, k]
    int32_t *id_expert;           // identity: [max_tokens, E] every expert, weight 1
    float *id_weight;
    int32_t *pair_expert;         // [max_tokens, k] the physical expert of each pair
    int32_t *counts;              // [S + P] the route plan's counts
    int32_t *counts_host;
    int32_t *row_slot, *pair_slot;   // [max_tokens, k]
    int64_t *tally;               // [n_layers, S + P] route counts summed since the last fold
    int step;                     // steps since init: with the rank, where each rank starts
                                  // dealing tokens over an expert's copies (moe_plan's salt)
    int rebalance_every;          // rebalance every N steps (0: never; runtime/rebalance.h)
    int rebalance_check;          // compare each expert that arrives with the local build
    int step_pairs_cap;           // steps stats.step_pairs has room for
    void *send, *recv;            // dispatch messages
    float *xe, *ye;               // [rows, d] the experts' input and output
    int64_t *offsets;             // [n_local + 1] rows of each local expert
    int32_t *ret_row;             // [combine rows] xe row of each pair to return
    float *ret_send, *ret_recv;   // combine messages
    moe_exchange *exchange;
    expert_cache *cache;          // memory mode (--expert-budget), or NULL; not owned
    int fixed_step;               // this step uses the fixed plan (moe_step_begin)
    backend_mark *marks;          // [n_layers, 5] phase boundaries of this step's layers
    int marked;                   // layers of this step with marks
    int routed;                   // moe_forward routed the layer now in the exchange
    moe_traffic traffic_base;     // the exchange's traffic at the last reset
    moe_stats stats;
} moe_state;

// The shape of the MoE layers of one rank.
typedef struct {
    int n_experts, top_k, d, n_layers;
    int rank, n_ranks;            // experts placed in contiguous blocks (parallel/placement.h)
    const placement_table *placement;   // the slots and the logical expert each holds, per
                                        // layer; NULL: the logical experts themselves
    int max_tokens;               // per step on this rank
    int capacity;                 // tokens per rank the fixed plan holds (0: the counts plan always)
    moe_exchange_kind kind;
    int identity;                 // every token to every expert with weight 1 (no router)
} moe_shape;

void moe_state_init(moe_state *s, backend *be, const moe_shape *shape);
// The shape of model m's MoE layers on its rank.
moe_shape moe_shape_of(const model *m, int max_tokens, int capacity, moe_exchange_kind kind);
void moe_state_free(moe_state *s);

// Before a step: max_tokens_any is the most tokens any rank has in this step, decode_only
// whether every rank only decodes (both agreed over the ranks by the caller). Chooses the
// exchange plan of the step's layers.
void moe_step_begin(moe_state *s, int max_tokens_any, int decode_only);
// After a step: adds the layers' backend time (waits for the backend's work).
void moe_step_end(moe_state *s);

// out[n, d] = MoE FFN of layer l applied to xn[n, d]. Collective over c: every rank calls it
// for every layer in every step, with n = 0 when it has no tokens.
void moe_forward(const model *m, int l, moe_state *s, comm *c, const float *xn, int n, float *out);

// The exchange of a layer without its router and experts (moe_forward's middle, for tests and
// benchmarks of the exchange alone): this rank's tokens xn[n, d] with their experts and weights
// [n * k] (backend memory, each token's experts ascending) go to the experts' owners, where
// `experts` computes s->ye from s->xe (rows by local expert: s->offsets on the backend,
// plan->expert_offsets on the host for the counts plan), and come back summed into out.
typedef void (*moe_experts_fn)(void *ctx, moe_state *s, const moe_exchange_plan *plan);
void moe_exchange_layer(moe_state *s, comm *c, int l, const float *xn, int n, const int32_t *expert,
                        const float *weight, moe_experts_fn experts, void *ctx, float *out);

// Statistics: reset zeroes them (the backend tally too); fetch brings the backend's tally
// into stats.tokens_per_expert, stats.pairs_to and stats.rows_to (one download).
void moe_stats_reset(moe_state *s);
void moe_stats_fetch(moe_state *s);
// Downloads the tally, adds it into the statistics (folded from slots to logical experts with
// the current placement), and zeroes it; window (may be NULL) gets this rank's pairs per
// logical expert [n_layers * E] since the last fold added. Before the placement changes.
void moe_tally_fold(moe_state *s, int64_t *window);
// Uploads the maps of the placement in s->table (after it changed).
void moe_maps_upload(moe_state *s);
