// MoE layers: building this rank's experts and router from a dense or Mixtral checkpoint,
// and the MoE FFN of one layer for one step (route, dispatch, grouped FFN, combine).
#pragma once
#include "runtime/expert_cache.h"
#include "runtime/model.h"
#include "parallel/comm.h"
#include "parallel/dispatch.h"

// Fills layers[l]: the dense FFN views, the router and this rank's experts for m->moe.
int moe_build_layer(model *m, int l, llamoe_err *err);
void moe_free_layer(model *m, layer_weights *L);

// Identity-mode slice of expert e of E over an FFN of width ffn: [start, start + width).
// Widths differ by at most one (the first ffn % E slices are one wider).
void identity_slice(int ffn, int E, int e, int *start, int *width);

// Per-step scratch and statistics of the MoE layers of one rank.
typedef struct {
    int max_tokens, n_experts, top_k, d;
    float *router_logits;      // [max_tokens, E]
    int32_t *expert;           // [max_tokens, k]
    float *weight;             // [max_tokens, k]
    int32_t *pair_row;         // [max_tokens, k]: identity 0..n*k-1
    float *y_pairs;            // [max_tokens, k, d]
    float *ye;                 // [rows received, d], grown as needed
    size_t ye_cap;             // rows
    moe_exchange *exchange;
    expert_cache *cache;       // memory mode (--expert-budget), or NULL; not owned
    int64_t *tokens_per_expert;   // [n_layers, E]: choices made by this rank's tokens
    size_t bytes_sent, bytes_recv;
    size_t dispatch_sent;         // of bytes_sent, the dispatch part (rows + metadata)
    int64_t rows_sent, rows_recv; // token rows dispatched to / received from other ranks
    double t_router, t_dispatch, t_experts, t_combine;   // seconds, accumulated
    // Device backends (be->device_memory; see docs/gpu.md). router_logits and y_pairs above
    // are then device memory; the dispatch packs rows on the host, so with several ranks the
    // rows are staged through these host/device buffers; one rank permutes on the device.
    const backend *be;
    float *xn_host;            // [max_tokens, d] host: the layer input, for the dispatch
    float *y_pairs_host;       // [max_tokens, k, d] host: what the combine brings home
    float *xe_dev, *ye_dev;    // [rows, d] device, grown with ye_cap
    size_t dev_cap;            // rows of xe_dev / ye_dev
    int32_t *perm;             // [max_tokens * k] one rank: xe row -> token, then pair -> ye row
} moe_state;

int moe_state_init(moe_state *s, const model *m, int max_tokens);
void moe_state_free(moe_state *s);

// out[n, d] = MoE FFN of layer l applied to xn[n, d]. Collective over c: every rank calls it
// for every layer in every step, with n = 0 when it has no tokens.
int moe_forward(const model *m, int l, moe_state *s, comm *c, const float *xn, int n, float *out);
